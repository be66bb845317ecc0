//! Text-to-speech: text chunks in, audio frames out. The [`chunker`] cuts a token stream at clause and
//! sentence boundaries so speech starts after the first clause rather than the whole answer.
//! [`build`] makes the engines `[tts]` names: one alone, or a [`fallback::FallbackTts`] list.
//!
//! # The seam: one call per chunk, one context per response
//! A response is spoken chunk by chunk: [`TextToSpeech::speak`] takes one [`Chunk`] and resolves when
//! that chunk's audio is all out. Every chunk of one response carries the same [`TtsContext`], so a
//! vendor that takes text as a stream (ElevenLabs stream-input, Cartesia contexts with
//! `continue: true`) keeps one vendor context, and its prosody, across the chunks of an answer: the
//! adapter opens it on the first chunk, sends each later chunk into it, and closes (or cancels) it
//! when the context ends ([`TtsContext::ended`]: the response finished or was cut). Deepgram keeps
//! one socket per answer by it; chunk engines (Piper, espeak-ng, the fake, OpenAI's HTTP endpoint)
//! ignore it.
//!
//! Per chunk and not a per-response stream because everything around an engine already thinks in
//! chunks: the session releases a chunk's text as its audio starts, the fallback list moves a chunk
//! (or the rest of the answer from the next chunk) to another engine, and the `tts_timeout_ms`
//! deadline is per chunk. A stream would have to rebuild those chunk boundaries from the vendor's
//! alignment, which not every vendor sends.
//!
//! What comes back is [`Spoken`]: audio that carries its own rate (engines in one fallback list may
//! speak at different rates; the session resamples each frame from its rate), the words' end times
//! where the vendor aligns them (barge-in then cuts the transcript at the last word played), and the
//! name of the engine that spoke.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::engine::{absent, Lazy};
use crate::llm::breaker::Breaker;
use crate::metrics::Metrics;
use config::{TtsConfig, TtsEngineConfig};
use espeak::EspeakTts;
use fake::{FakeTts, FakeTtsSettings};
use fallback::{FallbackTts, Member};

pub mod cartesia;
pub mod chunker;
pub mod config;
pub mod deepgram;
pub mod elevenlabs;
pub mod espeak;
pub mod fake;
pub mod fallback;
pub mod openai;
#[cfg(feature = "embedded-tts")]
pub mod piper;
pub mod vendor;

/// Why an engine could not speak.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TtsError {
    #[error("text-to-speech engine failed: {0}")]
    Engine(String),
    #[error("text-to-speech engine is not available: {0}")]
    Unavailable(String),
    /// A hosted vendor failed; `reason` is a stable label, `message` never holds a key.
    #[error("{vendor}: {message}")]
    Vendor { vendor: String, reason: &'static str, message: String },
}

impl TtsError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TtsError::Engine(_) => "engine",
            TtsError::Unavailable(_) => "unavailable",
            TtsError::Vendor { reason, .. } => reason,
        }
    }
}

/// A boxed future, so engines can be held as `Arc<dyn TextToSpeech>`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What an engine hands back while it speaks one chunk, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Spoken {
    /// The engine (by its configured name) that speaks this chunk; sent before its first audio by a
    /// fallback list, so the session knows who served.
    Engine(String),
    /// Mono PCM16 at `rate_hz`.
    Audio { samples: Vec<i16>, rate_hz: u32 },
    /// Where words of this chunk end in its audio, from the vendor's alignment; may come in pieces.
    Words(Vec<WordEnd>),
}

/// A word of a chunk ends `end_ms` into the chunk's audio, after the first `chars` non-blank
/// characters of the chunk's text (counting non-blank characters survives the vendor's spacing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WordEnd {
    pub chars: usize,
    pub end_ms: f64,
}

/// The speech of one response, shared by its chunks: adapters that keep a vendor context per answer
/// key it by [`TtsContext::id`] and close it once [`TtsContext::ended`] fires.
#[derive(Debug, Clone)]
pub struct TtsContext {
    id: Arc<str>,
    ended: CancellationToken,
    /// The place in a fallback list's order (for this response's voice) its chunks start from,
    /// past an engine that failed mid-answer.
    first_engine: Arc<std::sync::atomic::AtomicUsize>,
}

impl TtsContext {
    /// A new context (its id unique in the process) and the guard that ends it when dropped (the
    /// response holds it while it speaks).
    pub fn new() -> (TtsContext, DropGuard) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ended = CancellationToken::new();
        let context = TtsContext { id: format!("voxgate-{n}").into(), ended: ended.clone(), first_engine: Default::default() };
        (context, ended.drop_guard())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where a fallback list starts this response's next chunk.
    pub fn first_engine(&self) -> usize {
        self.first_engine.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the rest of the response to place `i` of a fallback list's order (never back).
    pub fn set_first_engine(&self, i: usize) {
        self.first_engine.fetch_max(i, std::sync::atomic::Ordering::Relaxed);
    }

    /// Cancelled when the response is over (finished, failed or cut): no more chunks will come.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }
}

/// One chunk of a response to speak.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub text: String,
    /// The engine's default voice when `None`.
    pub voice: Option<String>,
    pub context: TtsContext,
}

/// A text-to-speech engine, shared by every session.
pub trait TextToSpeech: Send + Sync + 'static {
    /// Engine name for logs.
    fn name(&self) -> &str;

    /// Sample rate of the mono PCM16 audio this engine makes.
    fn rate_hz(&self) -> u32;

    /// Speaks `text` with `voice` (the engine's default when `None`), sending audio frames on `audio`
    /// as they are made, and resolves when the last frame is sent. Dropping the future abandons the
    /// work; a closed `audio` channel ends it early with `Ok`.
    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>>;

    /// Speaks one chunk of a response, sending what it makes on `out` and resolving when the chunk's
    /// last audio is sent. Dropping the future abandons the chunk; a closed `out` ends it with `Ok`.
    /// The default speaks the chunk alone through [`TextToSpeech::synthesize`] at [`Self::rate_hz`];
    /// engines with a per-answer context or word alignment speak natively.
    fn speak(&self, chunk: Chunk, out: mpsc::Sender<Spoken>) -> BoxFuture<Result<(), TtsError>> {
        let rate_hz = self.rate_hz();
        let (audio, mut frames) = mpsc::channel::<Vec<i16>>(8);
        let synth = self.synthesize(chunk.text, chunk.voice, audio);
        Box::pin(async move {
            let forward = async move {
                while let Some(samples) = frames.recv().await {
                    if out.send(Spoken::Audio { samples, rate_hz }).await.is_err() {
                        break; // dropping `frames` ends the engine's work too
                    }
                }
            };
            let (result, ()) = tokio::join!(synth, forward);
            result
        })
    }

    /// Loads whatever the engine loads lazily, now. Most engines have nothing to load.
    fn warm_up(&self) -> BoxFuture<Result<(), TtsError>> {
        Box::pin(async { Ok(()) })
    }
}

/// [`TextToSpeech::synthesize`] for an engine that speaks natively: `text` alone in a context of
/// its own, audio only (at the engine's [`TextToSpeech::rate_hz`]).
pub fn synthesize_by_speaking(
    engine: &dyn TextToSpeech,
    text: String,
    voice: Option<String>,
    audio: mpsc::Sender<Vec<i16>>,
) -> BoxFuture<Result<(), TtsError>> {
    let (context, end_context) = TtsContext::new();
    let (tx, mut spoken) = mpsc::channel(8);
    let speak = engine.speak(Chunk { text, voice, context }, tx);
    Box::pin(async move {
        let _end_context = end_context;
        let forward = async move {
            while let Some(s) = spoken.recv().await {
                if let Spoken::Audio { samples, .. } = s {
                    if audio.send(samples).await.is_err() {
                        break;
                    }
                }
            }
        };
        let (result, ()) = tokio::join!(speak, forward);
        result
    })
}

/// A voice loaded on first use ([`Lazy`]); a failure is kept and reported by every later call. Its
/// rate must be known before loading (read from the voice's metadata).
pub struct LazyTts {
    engine: Lazy<dyn TextToSpeech, TtsError>,
    rate_hz: u32,
}

impl TextToSpeech for LazyTts {
    fn name(&self) -> &str {
        self.engine.name()
    }

    fn rate_hz(&self) -> u32 {
        self.rate_hz
    }

    fn warm_up(&self) -> BoxFuture<Result<(), TtsError>> {
        let engine = self.engine.get();
        Box::pin(async move { engine.await.map(|_| ()) })
    }

    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        let (engine, rate_hz) = (self.engine.get(), self.rate_hz);
        Box::pin(async move {
            let engine = engine.await?;
            if engine.rate_hz() != rate_hz {
                return Err(TtsError::Engine(format!("engine speaks at {} Hz, announced {rate_hz} Hz", engine.rate_hz())));
            }
            engine.synthesize(text, voice, audio).await
        })
    }
}

/// The engines `config` names (`None`: sessions answer in text only): one engine alone, or a
/// [`FallbackTts`] over several. The Piper voice loads from `models_dir` on first use. An engine
/// named in the config that cannot run is an error; the default voice falls back to espeak-ng, or is
/// left out, with a warning that says what to do.
pub fn build(config: &TtsConfig, models_dir: &Path, metrics: &Arc<Metrics>) -> Result<Option<Arc<dyn TextToSpeech>>, String> {
    let mut members = Vec::with_capacity(config.engines.len());
    // One breaker per vendor, shared by its entries (two voices of one vendor fail together).
    let mut breakers: HashMap<String, Arc<Breaker>> = HashMap::new();
    for engine in &config.engines {
        let Some(built) = build_one(engine, models_dir, metrics)? else { continue };
        let name = engine.name().to_string();
        let breaker = breakers
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Breaker::new(config.breaker_failures, Duration::from_millis(config.breaker_cooldown_ms))))
            .clone();
        members.push(Member { name, engine: built, breaker });
    }
    Ok(match members.len() {
        0 => None,
        1 => members.pop().map(|m| m.engine),
        _ => Some(Arc::new(FallbackTts::new(members, Duration::from_millis(config.ttfb_ms_max), metrics.clone()))),
    })
}

fn build_one(engine: &TtsEngineConfig, models_dir: &Path, metrics: &Arc<Metrics>) -> Result<Option<Arc<dyn TextToSpeech>>, String> {
    match engine {
        TtsEngineConfig::Fake { ttfb_ms, ms_per_char, precise_timing } => Ok(Some(Arc::new(FakeTts::new(FakeTtsSettings {
            ttfb_ms: *ttfb_ms,
            ms_per_char: *ms_per_char,
            precise_timing: *precise_timing,
            ..FakeTtsSettings::default()
        })))),
        TtsEngineConfig::Espeak { voice } => Ok(Some(Arc::new(EspeakTts::new(voice).map_err(|e| format!("tts: {e}"))?))),
        TtsEngineConfig::Embedded { explicit, workers } => match piper(models_dir, *workers) {
            Ok(engine) => Ok(Some(engine)),
            Err(message) if *explicit => Err(message),
            Err(message) => match EspeakTts::new("en-us") {
                Ok(espeak) => {
                    tracing::warn!("{message}; speaking with espeak-ng instead");
                    Ok(Some(Arc::new(espeak)))
                }
                Err(e) => absent(false, format!("{message}, and espeak-ng cannot run either ({e})"), "voice sessions answer in text only"),
            },
        },
        TtsEngineConfig::Vendor { provider, voice } => vendor::build(provider, voice.clone(), metrics.clone()).map(Some),
    }
}

/// The Piper voice, loaded lazily, or why it cannot be.
fn piper(models_dir: &Path, workers: usize) -> Result<Arc<dyn TextToSpeech>, String> {
    #[cfg(feature = "embedded-tts")]
    {
        let voice = crate::models::piper_voice_path(models_dir);
        let library = crate::models::onnxruntime_path(models_dir);
        for path in [&voice, &library] {
            if !path.is_file() {
                return Err(format!("the text-to-speech voice file {} is missing: run `voxgate models fetch`", path.display()));
            }
        }
        // The rate is announced before the voice loads; the voice's own metadata has it.
        let meta = voice.with_extension("onnx.json");
        let rate_hz = std::fs::read_to_string(&meta)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["audio"]["sample_rate"].as_u64())
            .ok_or_else(|| format!("cannot read the sample rate from {}: run `voxgate models fetch`", meta.display()))?;
        let engine = Lazy::new("piper-en-us-joe-medium", TtsError::Unavailable, move || {
            Ok(Arc::new(piper::PiperTts::load(&voice, &library, workers)?) as Arc<dyn TextToSpeech>)
        });
        Ok(Arc::new(LazyTts { engine, rate_hz: rate_hz as u32 }))
    }
    #[cfg(not(feature = "embedded-tts"))]
    {
        let _ = (models_dir, workers);
        Err("this voxgate was built without the embedded-tts feature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lazy_voice_speaks_at_its_announced_rate_or_not_at_all() {
        let fake = || Ok(Arc::new(FakeTts::new(FakeTtsSettings::default())) as Arc<dyn TextToSpeech>);
        let voice = LazyTts { engine: Lazy::new("voice", TtsError::Unavailable, fake), rate_hz: 24_000 };
        assert_eq!((voice.name(), voice.rate_hz()), ("voice", 24_000));
        let (audio, mut frames) = mpsc::channel(64);
        voice.synthesize("Hi.".into(), None, audio).await.unwrap();
        assert!(frames.recv().await.is_some());

        let wrong = LazyTts { engine: Lazy::new("voice", TtsError::Unavailable, fake), rate_hz: 22_050 };
        let (audio, _frames) = mpsc::channel(64);
        let err = wrong.synthesize("Hi.".into(), None, audio).await.unwrap_err();
        assert!(matches!(&err, TtsError::Engine(m) if m.contains("announced 22050 Hz")), "{err}");
    }
}
