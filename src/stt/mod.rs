//! Speech-to-text: audio of one user utterance in, partial and final transcripts out (words with
//! timings, confidence, speaker). Turn detection (the energy VAD) lives here too, because it reads the
//! same audio; the session decides what a turn means. [`build`] makes the engine `[stt]` names.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::engine::{absent, Lazy};
use crate::llm::breaker::Breaker;
use crate::llm::config::ProviderKind;
use crate::metrics::Metrics;
use config::SttConfig;

pub mod assemblyai;
pub mod config;
pub mod deepgram;
#[cfg(feature = "embedded-stt")]
pub mod embedded;
pub mod fake;
pub mod fallback;
pub mod openai;
pub mod stream;
pub mod vad;
pub mod wer;

/// Sample rate of the audio every STT engine receives (mono PCM16). Transports resample to it.
pub const STT_RATE_HZ: u32 = 16_000;

/// One recognised word. Times count from the start of the session's input audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// 0.0 to 1.0.
    pub confidence: f32,
}

/// What an engine heard in one utterance, so far (partial) or in the end (final).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transcript {
    pub text: String,
    pub words: Vec<Word>,
    /// The speaker's label when the engine tells speakers apart.
    pub speaker: Option<String>,
    /// Mean word confidence, 0.0 to 1.0.
    pub confidence: f32,
    /// The engine that made it, when a fallback list chose among several.
    pub engine: Option<String>,
}

/// One utterance to transcribe: audio frames (mono PCM16 at [`STT_RATE_HZ`]) arrive on `audio` as the
/// user speaks; the channel closes when the utterance ends (VAD stop or manual commit).
pub struct Utterance {
    /// Where the utterance's first sample sits in the session's input audio, in ms.
    pub start_ms: u64,
    /// The utterance's number in its session, from 0 (scripted fakes pick their line by it).
    pub ordinal: u32,
    pub audio: mpsc::Receiver<Vec<i16>>,
    /// Where the speaker has paused, when the session's VAD reports pauses: `Some(n)` once the first
    /// `n` samples of the utterance end in a pause, `None` again if speech resumes. The value when
    /// `audio` closes is final: `Some(n)` then means nothing voiced came after sample `n`, so an
    /// engine may answer with a transcript of those samples it started at the pause.
    pub pause: Option<watch::Receiver<Option<u64>>>,
}

/// Why an engine could not transcribe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SttError {
    #[error("speech-to-text engine failed: {0}")]
    Engine(String),
    #[error("speech-to-text engine is not available: {0}")]
    Unavailable(String),
    #[error("speech-to-text engine stalled: {0}")]
    Stalled(String),
}

impl SttError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SttError::Engine(_) => "engine",
            SttError::Unavailable(_) => "unavailable",
            SttError::Stalled(_) => "stalled",
        }
    }
}

/// A boxed future, so engines can be held as `Arc<dyn SpeechToText>`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A speech-to-text engine, shared by every session.
pub trait SpeechToText: Send + Sync + 'static {
    /// Engine name for logs and `response.voxgate`.
    fn name(&self) -> &str;

    /// Transcribes one utterance. Reads `utterance.audio` until it closes, may send partial
    /// transcripts on `partials` (dropped when full: partials are advisory), and resolves to the final
    /// transcript. Dropping the future abandons the work.
    fn transcribe(&self, utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>>;

    /// Loads whatever the engine loads lazily, now. Most engines have nothing to load.
    fn warm_up(&self) -> BoxFuture<Result<(), SttError>> {
        Box::pin(async { Ok(()) })
    }

    /// The engine one call uses for all its utterances, when it keeps state for the call (a
    /// vendor's socket, which engine of a fallback list serves); `None`: the shared engine serves
    /// every call. `first`: the engine of a fallback list the call asked for by name, if any.
    fn for_call(&self, first: Option<&str>) -> Option<Arc<dyn SpeechToText>> {
        let _ = first;
        None
    }

    /// Whether `name` picks an engine of this one (a fallback list's entry, or the engine itself).
    fn knows(&self, name: &str) -> bool {
        name == self.name()
    }
}

/// An engine loaded on first use; a failure is kept and reported by every later call.
impl SpeechToText for Lazy<dyn SpeechToText, SttError> {
    fn name(&self) -> &str {
        Lazy::name(self)
    }

    fn warm_up(&self) -> BoxFuture<Result<(), SttError>> {
        let engine = self.get();
        Box::pin(async move { engine.await.map(|_| ()) })
    }

    fn transcribe(&self, utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        let engine = self.get();
        Box::pin(async move { engine.await?.transcribe(utterance, partials).await })
    }
}

/// Consecutive failures after which a vendor is skipped by every call, and for how long (the
/// gateway's defaults).
const BREAKER_FAILURES: u32 = 3;
const BREAKER_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(30);

/// The streaming engine of a `[providers.NAME]` vendor.
fn vendor_engine(vendor: &config::VendorConfig, metrics: &Arc<Metrics>) -> stream::VendorStt {
    let p = vendor.provider.clone();
    let (kind, model) = (p.kind, vendor.model.clone());
    let make: Arc<stream::MakeProtocol> = Arc::new(move || -> Box<dyn stream::Protocol> {
        let (base_url, api_key) = (p.base_url.clone(), p.api_key.clone());
        match kind {
            ProviderKind::Assemblyai => {
                let model = model.clone().unwrap_or_else(|| assemblyai::DEFAULT_MODEL.into());
                Box::new(assemblyai::AssemblyAi::new(base_url, api_key, model, p.diarize))
            }
            ProviderKind::Openai => {
                Box::new(openai::OpenAiStt::new(base_url, api_key, model.clone().unwrap_or_else(|| openai::DEFAULT_MODEL.into())))
            }
            // Validation lets only speech-to-text kinds through: the rest is Deepgram.
            _ => Box::new(deepgram::Deepgram {
                base_url,
                api_key,
                model: model.clone().unwrap_or_else(|| deepgram::DEFAULT_MODEL.into()),
                diarize: p.diarize,
            }),
        }
    });
    stream::VendorStt::new(vendor.provider.id.clone(), vendor.limits, metrics.clone(), make)
}

/// The engine `config` names (`None`: sessions take text only); the embedded one loads from
/// `models_dir` on first use. A scripted fake whose files cannot be read, or an engine named in the
/// config that cannot run, is an error; the default engine is left out instead, with a warning
/// that says what to do.
pub fn build(config: &SttConfig, models_dir: &Path, metrics: &Arc<Metrics>) -> Result<Option<Arc<dyn SpeechToText>>, String> {
    match config {
        SttConfig::None => Ok(None),
        SttConfig::Vendor(vendor) => Ok(Some(Arc::new(vendor_engine(vendor, metrics)))),
        SttConfig::Chain(engines) => {
            let mut slots = Vec::new();
            for (label, engine) in engines {
                // A built-in engine of the list that cannot run is an error, as any named engine is.
                let Some(engine) = build(engine, models_dir, metrics)? else { continue };
                slots.push(fallback::Slot { label: label.clone(), engine, breaker: Breaker::new(BREAKER_FAILURES, BREAKER_COOLDOWN) });
            }
            Ok(Some(Arc::new(fallback::FallbackStt::new(slots, metrics.clone()))))
        }
        SttConfig::Fake { script, transcripts, latency_ms, precise_timing } => {
            let mut lines = Vec::new();
            for path in script {
                lines.extend(fake::Sidecar::load(path).map_err(|e| format!("stt.script: {e}"))?.utterances);
            }
            lines.extend(transcripts.iter().map(|t| fake::ScriptedUtterance::from_text(t)));
            Ok(Some(Arc::new(fake::FakeStt::new(lines, *latency_ms).with_precise_timing(*precise_timing))))
        }
        SttConfig::Embedded { explicit, workers, partial_interval_ms } => {
            let without = "voice sessions take text only";
            #[cfg(feature = "embedded-stt")]
            {
                let dir = crate::models::whisper_model_dir(models_dir);
                if !dir.join("model.bin").is_file() {
                    let message = format!("the speech-to-text model is not in {}: run `voxgate models fetch`", dir.display());
                    return absent(*explicit, message, without);
                }
                let (workers, partial_interval_ms) = (*workers, *partial_interval_ms);
                let engine = Lazy::new("whisper-tiny-en", SttError::Unavailable, move || {
                    let settings = embedded::WhisperSettings { workers, partial_interval_ms, ..Default::default() };
                    Ok(Arc::new(embedded::WhisperStt::load(&dir, settings)?) as Arc<dyn SpeechToText>)
                });
                Ok(Some(Arc::new(engine)))
            }
            #[cfg(not(feature = "embedded-stt"))]
            {
                let _ = (workers, partial_interval_ms, models_dir);
                absent(*explicit, "this voxgate was built without the embedded-stt feature".into(), without)
            }
        }
    }
}
