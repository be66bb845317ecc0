//! `[stt] engines`: an ordered list of engines, the first used and the rest its fallbacks, the
//! gateway's promise for speech input.
//!
//! Each call keeps the audio of the utterance being transcribed. When the engine serving it fails
//! (it could not connect in time, it errs or closes mid-call, it stalls: see `stream.rs`), the next
//! engine takes the utterance over from its first frame, so no word the caller said is lost, and
//! serves the rest of the call. Each engine has a breaker as the gateway's providers do: after
//! consecutive failures it is skipped for a while by every call, then probed. The client sees a
//! failure only when the last engine fails too; `/metrics` counts each fallback
//! (`voxgate_speech_fallbacks_total{stage="stt"}`), and each transcript names the engine that
//! made it.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::{BoxFuture, CallOptions, SpeechToText, SttError, Transcript, Utterance};
use crate::llm::breaker::Breaker;
use crate::metrics::Metrics;

/// Frames queued for one engine's utterance (as the session queues them).
const QUEUE_FRAMES: usize = 1024;

/// The most of an utterance kept for the engine that takes it over: its last minute (2 MB). A
/// longer utterance (a client that never commits) is handed over from a minute before.
const REPLAY_MAX_SAMPLES: usize = 60 * super::STT_RATE_HZ as usize;

/// An engine of the list with its breaker.
pub struct Slot {
    /// The list's entry that names it (`dg:nova-3`, `embedded`).
    pub label: String,
    pub engine: Arc<dyn SpeechToText>,
    pub breaker: Breaker,
}

/// The list, shared by every session.
pub struct FallbackStt {
    name: String,
    slots: Arc<[Slot]>,
    metrics: Arc<Metrics>,
}

impl FallbackStt {
    pub fn new(slots: Vec<Slot>, metrics: Arc<Metrics>) -> FallbackStt {
        let name = slots.first().map_or_else(String::new, |s| s.engine.name().to_string());
        FallbackStt { name, slots: slots.into(), metrics }
    }

    /// A call over the list; `call.first` (an entry or an engine name) moves that engine to the front.
    fn call(&self, call: &CallOptions) -> FallbackCall {
        let first = call.first.as_deref();
        let engines = self.slots.iter().map(|_| None).collect();
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        if let Some(i) = first.and_then(|name| self.slots.iter().position(|s| s.label == name || s.engine.knows(name))) {
            order.retain(|&j| j != i);
            order.insert(0, i);
        }
        let name = self.slots[order[0]].engine.name().to_string();
        let state = Mutex::new(CallState { engines, order, at: 0, options: call.clone() });
        FallbackCall { inner: Arc::new(CallInner { name, slots: self.slots.clone(), metrics: self.metrics.clone(), state }) }
    }
}

impl SpeechToText for FallbackStt {
    fn name(&self) -> &str {
        &self.name
    }

    fn transcribe(&self, utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        self.call(&CallOptions::default()).transcribe(utterance, partials)
    }

    fn for_call(&self, call: &CallOptions) -> Option<Arc<dyn SpeechToText>> {
        Some(Arc::new(self.call(call)))
    }

    fn ends_turns(&self) -> bool {
        // A fallback that cannot end turns would leave the caller's turn open forever.
        self.slots.iter().all(|s| s.engine.ends_turns())
    }

    fn knows(&self, name: &str) -> bool {
        self.slots.iter().any(|s| s.label == name || s.engine.knows(name))
    }

    fn warm_up(&self) -> BoxFuture<Result<(), SttError>> {
        // Warm every engine: a fallback must be ready when it is needed.
        let warming: Vec<_> = self.slots.iter().map(|s| s.engine.warm_up()).collect();
        Box::pin(async move {
            let mut first = None;
            for w in warming {
                if let Err(e) = w.await {
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), Err)
        })
    }
}

struct CallState {
    /// Each engine's handle for this call, made when first needed.
    engines: Vec<Option<Arc<dyn SpeechToText>>>,
    /// The engines in the order this call tries them.
    order: Vec<usize>,
    /// The place in `order` of the engine serving the call.
    at: usize,
    options: CallOptions,
}

/// One call's view of the list.
pub struct FallbackCall {
    inner: Arc<CallInner>,
}

struct CallInner {
    name: String,
    slots: Arc<[Slot]>,
    metrics: Arc<Metrics>,
    state: Mutex<CallState>,
}

impl CallInner {
    /// The engine at place `at` of this call's order, and its slot.
    fn engine(&self, at: usize) -> (Arc<dyn SpeechToText>, &Slot) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let i = state.order[at];
        let slot = &self.slots[i];
        let options = CallOptions { first: None, ..state.options.clone() };
        let engine = state.engines[i].get_or_insert_with(|| slot.engine.for_call(&options).unwrap_or_else(|| slot.engine.clone())).clone();
        (engine, slot)
    }

    fn at(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).at
    }

    fn serve_from(&self, i: usize) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).at = i;
    }
}

impl SpeechToText for FallbackCall {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn transcribe(&self, mut utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        let call = self.inner.clone();
        Box::pin(async move {
            // The utterance's audio so far (its last minute), for the engine that takes it over,
            // and how much of its start no longer is.
            let mut heard: std::collections::VecDeque<Vec<i16>> = std::collections::VecDeque::new();
            let (mut kept, mut dropped) = (0usize, 0u64);
            let mut audio_open = true;
            let mut last_error = None;
            let mut i = call.at();
            while i < call.slots.len() {
                let (engine, slot) = call.engine(i);
                let last = i + 1 == call.slots.len();
                // A broken engine is skipped, unless it is the last one left.
                let permit = slot.breaker.try_acquire();
                if permit.is_none() && !last {
                    i += 1;
                    continue;
                }
                let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
                // The replay in one-second pieces, so a long utterance fits the queue.
                let replay: Vec<i16> = heard.iter().flatten().copied().collect();
                for piece in replay.chunks(super::STT_RATE_HZ as usize) {
                    let _ = tx.try_send(piece.to_vec());
                }
                let start_ms = utterance.start_ms + dropped * 1000 / u64::from(super::STT_RATE_HZ);
                let (part_tx, mut part_rx) = mpsc::channel(8);
                let pause = utterance.pause.clone().or_else(|| Some(watch::channel(None).1));
                let work = engine.transcribe(Utterance { start_ms, ordinal: utterance.ordinal, audio: rx, pause }, part_tx);
                tokio::pin!(work);
                let mut tx = audio_open.then_some(tx);
                let result = loop {
                    tokio::select! {
                        frame = utterance.audio.recv(), if tx.is_some() => match frame {
                            Some(frame) => {
                                if let Some(tx) = &tx {
                                    let _ = tx.try_send(frame.clone());
                                }
                                kept += frame.len();
                                heard.push_back(frame);
                                while kept > REPLAY_MAX_SAMPLES {
                                    let Some(old) = heard.pop_front() else { break };
                                    kept -= old.len();
                                    dropped += old.len() as u64;
                                }
                            }
                            None => {
                                audio_open = false;
                                tx = None;
                            }
                        },
                        Some(mut t) = part_rx.recv() => {
                            t.engine = Some(engine.name().to_string());
                            let _ = partials.try_send(t);
                        }
                        result = &mut work => break result,
                    }
                };
                match result {
                    Ok(mut transcript) => {
                        // Partials read in the same poll as the final still reach the session first.
                        while let Ok(mut t) = part_rx.try_recv() {
                            t.engine = Some(engine.name().to_string());
                            let _ = partials.try_send(t);
                        }
                        slot.breaker.record_success();
                        call.serve_from(i);
                        transcript.engine = Some(engine.name().to_string());
                        return Ok(transcript);
                    }
                    Err(e) => {
                        slot.breaker.record_failure();
                        if !last {
                            let next = call.engine(i + 1).0.name().to_string();
                            tracing::warn!(engine = %engine.name(), next = %next, error = %e, "speech-to-text engine failed; the next one takes over");
                            call.metrics
                                .inc("voxgate_speech_fallbacks_total", &[("stage", "stt"), ("from", engine.name()), ("reason", e.kind())]);
                        }
                        last_error = Some(e);
                        i += 1;
                    }
                }
            }
            Err(last_error.unwrap_or_else(|| SttError::Unavailable("no speech-to-text engine is configured".into())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails once it has heard `fail_after` samples; otherwise reports what it heard, as text.
    struct Probe {
        name: &'static str,
        fail_after: Option<usize>,
    }

    impl SpeechToText for Probe {
        fn name(&self) -> &str {
            self.name
        }

        fn transcribe(&self, mut utterance: Utterance, _partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
            let fail_after = self.fail_after;
            Box::pin(async move {
                let mut heard = 0;
                while let Some(frame) = utterance.audio.recv().await {
                    heard += frame.len();
                    if fail_after.is_some_and(|n| heard >= n) {
                        return Err(SttError::Engine("cut".into()));
                    }
                }
                Ok(Transcript { text: format!("{heard} samples from {} ms", utterance.start_ms), ..Transcript::default() })
            })
        }
    }

    fn list(first_fails_after: usize) -> FallbackStt {
        let slot = |name: &'static str, fail_after: Option<usize>| Slot {
            label: name.to_string(),
            engine: Arc::new(Probe { name, fail_after }),
            breaker: Breaker::new(3, std::time::Duration::from_secs(30)),
        };
        FallbackStt::new(vec![slot("first", Some(first_fails_after)), slot("second", None)], Arc::new(Metrics::default()))
    }

    async fn transcribe(stt: &FallbackStt, seconds: usize) -> Transcript {
        let (tx, rx) = mpsc::channel(8);
        let (partials, _p) = mpsc::channel(8);
        let work = tokio::spawn(
            stt.for_call(&CallOptions::default())
                .unwrap()
                .transcribe(Utterance { start_ms: 1_000, ordinal: 0, audio: rx, pause: None }, partials),
        );
        for _ in 0..seconds * 50 {
            tx.send(vec![0; 320]).await.unwrap();
        }
        drop(tx);
        work.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn the_next_engine_hears_the_utterance_from_its_first_frame() {
        // The first engine fails 2 s in; the second hears all 5 s, from the utterance's start.
        let t = transcribe(&list(32_000), 5).await;
        assert_eq!((t.text.as_str(), t.engine.as_deref()), ("80000 samples from 1000 ms", Some("second")));
    }

    #[tokio::test]
    async fn an_utterance_longer_than_a_minute_is_handed_over_from_its_last_minute() {
        // The first engine fails 70 s in: the second gets the last minute, and knows where it begins.
        let t = transcribe(&list(70 * 16_000), 71).await;
        // "N samples from S ms": where the hand-over begins depends on when the failure is seen
        // (a frame or two after 70 s); it always ends where the utterance ends, 72 s in.
        let words: Vec<&str> = t.text.split(' ').collect();
        let (samples, start_ms): (u64, u64) = (words[0].parse().unwrap(), words[3].parse().unwrap());
        assert_eq!(start_ms + samples / 16, 72_000, "{}", t.text);
        assert!((11_000..=11_100).contains(&start_ms), "a minute before the failure: {}", t.text);
    }
}
