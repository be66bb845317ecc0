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

use super::{BoxFuture, SpeechToText, SttError, Transcript, Utterance};
use crate::llm::breaker::Breaker;
use crate::metrics::Metrics;

/// Frames queued for one engine's utterance (as the session queues them).
const QUEUE_FRAMES: usize = 1024;

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

    /// A call over the list; `first` (an entry or an engine name) moves that engine to the front.
    fn call(&self, first: Option<&str>) -> FallbackCall {
        let engines = self.slots.iter().map(|_| None).collect();
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        if let Some(i) = first.and_then(|name| self.slots.iter().position(|s| s.label == name || s.engine.knows(name))) {
            order.retain(|&j| j != i);
            order.insert(0, i);
        }
        let name = self.slots[order[0]].engine.name().to_string();
        let state = Mutex::new(CallState { engines, order, at: 0 });
        FallbackCall { inner: Arc::new(CallInner { name, slots: self.slots.clone(), metrics: self.metrics.clone(), state }) }
    }
}

impl SpeechToText for FallbackStt {
    fn name(&self) -> &str {
        &self.name
    }

    fn transcribe(&self, utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        self.call(None).transcribe(utterance, partials)
    }

    fn for_call(&self, first: Option<&str>) -> Option<Arc<dyn SpeechToText>> {
        Some(Arc::new(self.call(first)))
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
        let engine = state.engines[i].get_or_insert_with(|| slot.engine.for_call(None).unwrap_or_else(|| slot.engine.clone())).clone();
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
            // The utterance's audio so far, for the engine that takes it over.
            let mut heard: Vec<Vec<i16>> = Vec::new();
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
                for frame in &heard {
                    let _ = tx.try_send(frame.clone());
                }
                let (part_tx, mut part_rx) = mpsc::channel(8);
                let pause = utterance.pause.clone().or_else(|| Some(watch::channel(None).1));
                let work =
                    engine.transcribe(Utterance { start_ms: utterance.start_ms, ordinal: utterance.ordinal, audio: rx, pause }, part_tx);
                tokio::pin!(work);
                let mut tx = audio_open.then_some(tx);
                let result = loop {
                    tokio::select! {
                        frame = utterance.audio.recv(), if tx.is_some() => match frame {
                            Some(frame) => {
                                if let Some(tx) = &tx {
                                    let _ = tx.try_send(frame.clone());
                                }
                                heard.push(frame);
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
