//! An ordered list of engines that speaks as one: the first engine speaks each chunk, and the rest
//! take over when it fails, so a caller hears no vendor error while any engine can still speak.
//!
//! Rules, per chunk of a response:
//! - an error before the chunk's first audio, or no first audio within `ttfb_ms_max` (every engine
//!   but the last has this deadline): the chunk goes to the next engine;
//! - an error after its first audio: the chunk ends where its audio stopped, and the rest of the
//!   answer continues on the next engine from the next chunk (the response's [`TtsContext`] keeps
//!   where it is);
//! - each vendor has a breaker (the gateway's, [`crate::llm::breaker`]): after `breaker_failures`
//!   failures in a row it is skipped for `breaker_cooldown_ms`, then probed with one chunk; when
//!   every breaker is open the last engine is tried anyway;
//! - only when every engine failed does the chunk fail (the session reports `tts_failed`).
//!
//! Each move to the next engine counts in `voxgate_speech_fallbacks_total{stage="tts",from,reason}`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, Chunk, Spoken, TextToSpeech, TtsError};
use crate::llm::breaker::{Breaker, Permit};
use crate::metrics::Metrics;

/// One engine of the list, by its configured name, with its vendor's breaker.
pub struct Member {
    pub name: String,
    pub engine: Arc<dyn TextToSpeech>,
    pub breaker: Arc<Breaker>,
}

/// Engines in order; see the module doc for the rules.
pub struct FallbackTts {
    members: Arc<[Member]>,
    ttfb: Duration,
    metrics: Arc<Metrics>,
}

impl FallbackTts {
    /// `members` must not be empty.
    pub fn new(members: Vec<Member>, ttfb: Duration, metrics: Arc<Metrics>) -> FallbackTts {
        assert!(!members.is_empty(), "a fallback list needs an engine");
        FallbackTts { members: members.into(), ttfb, metrics }
    }
}

/// How one engine's attempt at a chunk ended.
enum Attempt {
    /// All its audio is out.
    Spoken,
    /// Failed before any audio: the chunk may go to the next engine.
    Before(&'static str, String),
    /// Failed after some audio: the chunk is over, the next chunk goes to the next engine.
    After(&'static str, String),
    /// The session stopped listening.
    Gone,
}

impl TextToSpeech for FallbackTts {
    fn name(&self) -> &str {
        &self.members[0].name
    }

    fn rate_hz(&self) -> u32 {
        self.members[0].engine.rate_hz()
    }

    fn warm_up(&self) -> BoxFuture<Result<(), TtsError>> {
        let members = self.members.clone();
        Box::pin(async move {
            // Every engine loads what it loads lazily; a fallback that cannot load is a warning.
            for m in members.iter() {
                if let Err(e) = m.engine.warm_up().await {
                    tracing::warn!(engine = %m.name, error = %e, "text-to-speech engine failed to load");
                }
            }
            Ok(())
        })
    }

    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        // Chunk by chunk, one rate: only the first engine (whose rate this list announces).
        self.members[0].engine.synthesize(text, voice, audio)
    }

    fn speak(&self, chunk: Chunk, out: mpsc::Sender<Spoken>) -> BoxFuture<Result<(), TtsError>> {
        let (members, ttfb, metrics) = (self.members.clone(), self.ttfb, self.metrics.clone());
        Box::pin(async move {
            let n = members.len();
            let first = chunk.context.first_engine().min(n - 1);
            let (order, lead_voice) = plan(&members, chunk.voice.as_deref());
            let mut failures = String::new();
            let mut attempted = false;
            for (place, &i) in order.iter().enumerate().skip(first) {
                let m = &members[i];
                let last = place == n - 1;
                let permit = match m.breaker.try_acquire() {
                    Some(p) => p,
                    None if last && !attempted => Permit { probe: false },
                    None => {
                        let _ = write!(failures, "{}: skipped, breaker open; ", m.name);
                        fell_back(&metrics, &m.name, "breaker_open");
                        continue;
                    }
                };
                attempted = true;
                let voice = if place == 0 { lead_voice.clone() } else { None };
                let attempt = Chunk { text: chunk.text.clone(), voice, context: chunk.context.clone() };
                let deadline = (!last).then_some(ttfb);
                match attempt_chunk(m, attempt, &out, deadline).await {
                    Attempt::Spoken => {
                        m.breaker.record_success();
                        return Ok(());
                    }
                    Attempt::Gone => {
                        m.breaker.release(permit);
                        return Ok(());
                    }
                    Attempt::Before(reason, message) => {
                        m.breaker.record_failure();
                        tracing::warn!(engine = %m.name, reason, %message, "text-to-speech engine failed before its first audio");
                        let _ = write!(failures, "{}: {message}; ", m.name);
                        if !last {
                            fell_back(&metrics, &m.name, reason);
                        }
                    }
                    Attempt::After(reason, message) => {
                        m.breaker.record_failure();
                        tracing::warn!(engine = %m.name, reason, %message, "text-to-speech engine failed while speaking");
                        if last {
                            return Err(TtsError::Engine(format!("{}: {message}", m.name)));
                        }
                        fell_back(&metrics, &m.name, reason);
                        chunk.context.set_first_engine(place + 1);
                        return Ok(());
                    }
                }
            }
            let failures = failures.trim_end_matches("; ");
            Err(TtsError::Engine(format!("every text-to-speech engine failed ({failures})")))
        })
    }
}

/// The order in which the engines try a chunk, and the voice the first of them speaks with, from
/// the voice a session asked for: `NAME` or `NAME:VOICE` naming an engine of the list puts it first
/// (with that voice, or its configured one), the others following in their order; any other voice
/// goes to the first engine (voices are vendor-specific, so fallbacks keep their own).
fn plan(members: &[Member], voice: Option<&str>) -> (Vec<usize>, Option<String>) {
    let in_order = || (0..members.len()).collect::<Vec<_>>();
    let Some(voice) = voice.filter(|v| !v.is_empty()) else { return (in_order(), None) };
    let (name, own) = match voice.split_once(':') {
        Some((name, own)) => (name, Some(own.to_string()).filter(|v| !v.is_empty())),
        None => (voice, None),
    };
    match members.iter().position(|m| m.name == name) {
        Some(chosen) => {
            let mut order = vec![chosen];
            order.extend((0..members.len()).filter(|&i| i != chosen));
            (order, own)
        }
        None => (in_order(), Some(voice.to_string())),
    }
}

fn fell_back(metrics: &Metrics, from: &str, reason: &str) {
    metrics.inc("voxgate_speech_fallbacks_total", &[("stage", "tts"), ("from", from), ("reason", reason)]);
}

/// One engine speaks the chunk, its output forwarded to `out` (its name first, before its first
/// audio). `deadline`: longest wait for the first audio.
async fn attempt_chunk(m: &Member, chunk: Chunk, out: &mpsc::Sender<Spoken>, deadline: Option<Duration>) -> Attempt {
    let (tx, mut rx) = mpsc::channel::<Spoken>(8);
    let speak = m.engine.speak(chunk, tx);
    tokio::pin!(speak);
    let first_audio_by = deadline.map(|d| tokio::time::Instant::now() + d);
    let mut audio_started = false;
    // Anything before the first audio (alignment, names) waits for it.
    let mut held: Vec<Spoken> = Vec::new();
    let mut result: Option<Result<(), TtsError>> = None;
    loop {
        let timer = async {
            match first_audio_by.filter(|_| !audio_started) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            biased;
            s = rx.recv() => s,
            r = &mut speak, if result.is_none() => {
                result = Some(r);
                continue;
            }
            () = timer => {
                return Attempt::Before("ttfb_timeout", format!("no audio within {} ms", deadline.unwrap_or_default().as_millis()));
            }
        };
        let Some(spoken) = next else {
            // The engine is done sending: its result says how it ended.
            let r = match result.take() {
                Some(r) => r,
                None => speak.await,
            };
            return match (r, audio_started) {
                // A chunk may have nothing to say (punctuation alone): no audio is no failure.
                (Ok(()), _) => Attempt::Spoken,
                (Err(e), false) => Attempt::Before(e.kind(), e.to_string()),
                (Err(e), true) => Attempt::After(e.kind(), e.to_string()),
            };
        };
        match spoken {
            Spoken::Engine(_) => continue, // a list inside a list: this list names its own members
            Spoken::Audio { .. } if !audio_started => {
                audio_started = true;
                for s in std::iter::once(Spoken::Engine(m.name.clone())).chain(held.drain(..)).chain(std::iter::once(spoken)) {
                    if out.send(s).await.is_err() {
                        return Attempt::Gone;
                    }
                }
            }
            s if !audio_started => held.push(s),
            s => {
                if out.send(s).await.is_err() {
                    return Attempt::Gone;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tts::fake::{FakeTts, FakeTtsSettings};
    use crate::tts::TtsContext;

    /// An engine scripted per chunk: fails before audio, stalls, or fails after one frame.
    struct Scripted {
        name: &'static str,
        rate_hz: u32,
        script: std::sync::Mutex<std::collections::VecDeque<&'static str>>,
        calls: std::sync::atomic::AtomicUsize,
        voices: std::sync::Mutex<Vec<Option<String>>>,
    }

    impl Scripted {
        fn new(name: &'static str, rate_hz: u32, script: &[&'static str]) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                rate_hz,
                script: std::sync::Mutex::new(script.iter().copied().collect()),
                calls: Default::default(),
                voices: Default::default(),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl TextToSpeech for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        fn rate_hz(&self) -> u32 {
            self.rate_hz
        }
        fn synthesize(&self, _: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.voices.lock().unwrap().push(voice);
            let step = self.script.lock().unwrap().pop_front().unwrap_or("ok");
            Box::pin(async move {
                match step {
                    "error" => Err(TtsError::Engine("vendor said no".into())),
                    "stall" => std::future::pending().await,
                    "silent" => Ok(()),
                    "cut" => {
                        let _ = audio.send(vec![1; 160]).await;
                        Err(TtsError::Engine("socket closed mid-answer".into()))
                    }
                    _ => {
                        for _ in 0..3 {
                            let _ = audio.send(vec![1; 160]).await;
                        }
                        Ok(())
                    }
                }
            })
        }
    }

    fn list(engines: &[(&str, Arc<dyn TextToSpeech>)], metrics: &Arc<Metrics>) -> FallbackTts {
        let members = engines
            .iter()
            .map(|(name, engine)| Member {
                name: name.to_string(),
                engine: engine.clone(),
                breaker: Arc::new(Breaker::new(2, Duration::from_secs(30))),
            })
            .collect();
        FallbackTts::new(members, Duration::from_millis(2000), metrics.clone())
    }

    /// Speaks one chunk; returns what came out and the result.
    async fn say(tts: &FallbackTts, context: &TtsContext, text: &str) -> (Vec<Spoken>, Result<(), TtsError>) {
        say_with(tts, context, text, None).await
    }

    async fn say_with(tts: &FallbackTts, context: &TtsContext, text: &str, voice: Option<&str>) -> (Vec<Spoken>, Result<(), TtsError>) {
        let (tx, mut rx) = mpsc::channel(64);
        let chunk = Chunk { text: text.into(), voice: voice.map(str::to_string), context: context.clone() };
        let result = tts.speak(chunk, tx).await;
        let mut out = Vec::new();
        while let Ok(s) = rx.try_recv() {
            out.push(s);
        }
        (out, result)
    }

    fn engines_of(out: &[Spoken]) -> Vec<String> {
        out.iter().filter_map(|s| if let Spoken::Engine(n) = s { Some(n.clone()) } else { None }).collect()
    }

    fn fallbacks(metrics: &Metrics) -> String {
        metrics.render().lines().filter(|l| l.starts_with("voxgate_speech_fallbacks_total{")).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_before_audio_moves_the_chunk_to_the_next_engine() {
        let metrics = Arc::new(Metrics::default());
        let a = Scripted::new("a", 16_000, &["error"]);
        let b = Scripted::new("b", 24_000, &[]);
        let tts = list(&[("cartesia", a.clone()), ("openai", b.clone())], &metrics);
        let (context, _end) = TtsContext::new();
        let (out, result) = say(&tts, &context, "Hello there. ").await;
        result.unwrap();
        assert_eq!(engines_of(&out), ["openai"]);
        // The audio is the second engine's, at its own rate.
        assert!(out.iter().all(|s| !matches!(s, Spoken::Audio { rate_hz, .. } if *rate_hz != 24_000)));
        assert_eq!(out.iter().filter(|s| matches!(s, Spoken::Audio { .. })).count(), 3);
        assert!(fallbacks(&metrics).contains(r#"stage="tts",from="cartesia",reason="engine"} 1"#), "{}", fallbacks(&metrics));
        // The next chunk tries the first engine again: it failed before audio, not mid-answer.
        let (out, _) = say(&tts, &context, "Next. ").await;
        assert_eq!(engines_of(&out), ["cartesia"]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_first_audio_within_the_deadline_moves_the_chunk_on() {
        let metrics = Arc::new(Metrics::default());
        let a = Scripted::new("a", 16_000, &["stall"]);
        let b = Scripted::new("b", 16_000, &[]);
        let tts = list(&[("elevenlabs", a), ("embedded", b)], &metrics);
        let (context, _end) = TtsContext::new();
        let began = tokio::time::Instant::now();
        let (out, result) = say(&tts, &context, "Hi. ").await;
        result.unwrap();
        assert_eq!(engines_of(&out), ["embedded"]);
        assert_eq!(began.elapsed(), Duration::from_millis(2000), "the deadline, not more");
        assert!(fallbacks(&metrics).contains(r#"stage="tts",from="elevenlabs",reason="ttfb_timeout"} 1"#), "{}", fallbacks(&metrics));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_after_audio_ends_the_chunk_and_the_answer_goes_on_on_the_next_engine() {
        let metrics = Arc::new(Metrics::default());
        let a = Scripted::new("a", 16_000, &["cut", "ok"]);
        let b = Scripted::new("b", 16_000, &[]);
        let tts = list(&[("cartesia", a.clone()), ("deepgram", b.clone())], &metrics);
        let (context, _end) = TtsContext::new();
        let (out, result) = say(&tts, &context, "First chunk. ").await;
        result.unwrap();
        assert_eq!(engines_of(&out), ["cartesia"]);
        assert_eq!(out.iter().filter(|s| matches!(s, Spoken::Audio { .. })).count(), 1, "the chunk ends where its audio stopped");
        assert_eq!(b.calls(), 0, "the cut chunk is not spoken again");
        let (out, _) = say(&tts, &context, "Second chunk. ").await;
        assert_eq!(engines_of(&out), ["deepgram"]);
        assert_eq!(a.calls(), 1, "the rest of the answer stays on the next engine");
        // A new response starts from the first engine again.
        let (next, _end) = TtsContext::new();
        let (out, _) = say(&tts, &next, "New answer. ").await;
        assert_eq!(engines_of(&out), ["cartesia"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_skips_its_vendor_until_the_cooldown_then_probes() {
        let metrics = Arc::new(Metrics::default());
        let a = Scripted::new("a", 16_000, &["error", "error"]);
        let b: Arc<dyn TextToSpeech> = Arc::new(FakeTts::new(FakeTtsSettings::default()));
        let tts = list(&[("cartesia", a.clone()), ("fake", b)], &metrics);
        for _ in 0..2 {
            let (context, _end) = TtsContext::new();
            say(&tts, &context, "Hi. ").await.1.unwrap();
        }
        // Two failures opened the breaker: the vendor is not asked.
        let (context, _end) = TtsContext::new();
        let (out, result) = say(&tts, &context, "Hi. ").await;
        result.unwrap();
        assert_eq!((engines_of(&out), a.calls()), (vec!["fake".to_string()], 2));
        assert!(fallbacks(&metrics).contains(r#"stage="tts",from="cartesia",reason="breaker_open"} 1"#), "{}", fallbacks(&metrics));
        // After the cooldown one chunk probes it, and its success closes the breaker.
        tokio::time::advance(Duration::from_secs(31)).await;
        let (out, _) = say(&tts, &context, "Hi. ").await;
        assert_eq!((engines_of(&out), a.calls()), (vec!["cartesia".to_string()], 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_voice_naming_an_engine_puts_it_first_and_other_voices_go_to_the_first_engine() {
        let metrics = Arc::new(Metrics::default());
        let a = Scripted::new("a", 16_000, &[]);
        let b = Scripted::new("b", 16_000, &["error"]);
        let tts = list(&[("cartesia", a.clone()), ("deepgram", b.clone())], &metrics);
        let (context, _end) = TtsContext::new();
        // "deepgram:aura-2-luna-en": Deepgram first with that voice; it fails, Cartesia follows
        // with its own voice.
        let (out, result) = say_with(&tts, &context, "Hi. ", Some("deepgram:aura-2-luna-en")).await;
        result.unwrap();
        assert_eq!(engines_of(&out), ["cartesia"]);
        assert_eq!(b.voices.lock().unwrap().clone(), [Some("aura-2-luna-en".to_string())]);
        assert_eq!(a.voices.lock().unwrap().clone(), [None]);
        // A name alone: that engine first with its configured voice.
        let (out, _) = say_with(&tts, &context, "Hi. ", Some("deepgram")).await;
        assert_eq!(engines_of(&out), ["deepgram"]);
        assert_eq!(b.voices.lock().unwrap().last().cloned(), Some(None));
        // Any other voice is the first engine's.
        let (out, _) = say_with(&tts, &context, "Hi. ", Some("a0e99841")).await;
        assert_eq!(engines_of(&out), ["cartesia"]);
        assert_eq!(a.voices.lock().unwrap().last().cloned(), Some(Some("a0e99841".to_string())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_with_nothing_to_say_is_not_a_failure() {
        let metrics = Arc::new(Metrics::default());
        let a = Scripted::new("a", 16_000, &["silent"]);
        let b = Scripted::new("b", 16_000, &[]);
        let tts = list(&[("cartesia", a), ("openai", b.clone())], &metrics);
        let (context, _end) = TtsContext::new();
        let (out, result) = say(&tts, &context, "... ").await;
        result.unwrap();
        assert!(out.is_empty());
        assert_eq!((b.calls(), fallbacks(&metrics)), (0, String::new()));
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_engine_fails_the_chunk_fails_naming_each() {
        let metrics = Arc::new(Metrics::default());
        let a = Scripted::new("a", 16_000, &["error"]);
        let b = Scripted::new("b", 16_000, &["error"]);
        let tts = list(&[("cartesia", a), ("openai", b)], &metrics);
        let (context, _end) = TtsContext::new();
        let (out, result) = say(&tts, &context, "Hi. ").await;
        assert!(out.is_empty());
        let err = result.unwrap_err().to_string();
        assert!(err.contains("cartesia: ") && err.contains("openai: "), "{err}");
        // Only moves to a next engine count as fallbacks.
        assert_eq!(fallbacks(&metrics).lines().count(), 1, "{}", fallbacks(&metrics));
    }
}
