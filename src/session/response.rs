//! One response's work, off the session actor: the gateway call (with its fallback), the chunker, and
//! text-to-speech, each reporting to the actor on one bounded channel. Cancelling the response's
//! token drops the upstream stream and the TTS work at once.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audio::Resampler;
use crate::llm::router::Gateway;
use crate::llm::types::{ChatRequest, Event, FinishReason, Usage};
use crate::tts::chunker::Chunker;
use crate::tts::{Chunk, Spoken, TextToSpeech, TtsContext, WordEnd};

/// What a response task tells the session actor, in order.
#[derive(Debug)]
pub enum ResponseMsg {
    /// The gateway committed to a model (after any fallback).
    Model {
        model: String,
        ttft_ms: f64,
    },
    /// Answer text as the model writes it.
    Text(String),
    ToolCallStart {
        index: u32,
        call_id: String,
        name: String,
    },
    ToolCallArgs {
        index: u32,
        arguments: String,
    },
    Finish(FinishReason),
    Usage(Usage),
    /// A chunk of text about to be spoken; its audio follows.
    Speak(String),
    /// Audio at the client's output rate, and its length.
    Audio {
        /// Mono PCM at the speech's `rate_hz`.
        samples: Vec<i16>,
        ms: f64,
    },
    /// Where words of the chunk being spoken end in its audio (vendor alignment), after its audio.
    Words(Vec<WordEnd>),
    /// The TTS engine that speaks the chunks from here on (sent when it changes).
    TtsEngine(String),
    /// First text handed to TTS to its first audio, once per response.
    TtsFirstAudio {
        ttfb_ms: f64,
    },
    /// The model or TTS failed; `code` is stable for clients and metrics.
    Failed {
        code: &'static str,
        message: String,
    },
    /// Every piece of the response has been sent.
    Done,
}

/// Speech settings of a response with audio output.
pub struct Speech {
    pub tts: Arc<dyn TextToSpeech>,
    pub voice: Option<String>,
    /// The rate the client's output format plays at; the engine's audio is resampled to it.
    pub rate_hz: u32,
    /// Longest the engine may take over one chunk.
    pub timeout: std::time::Duration,
}

/// Everything one response needs.
pub struct ResponseJob {
    pub gateway: Arc<Gateway>,
    pub request: ChatRequest,
    pub key: String,
    pub speech: Option<Speech>,
    /// Messages are tagged with the response's number so stale ones are ignored after a cancel.
    pub seq: u64,
    pub tx: mpsc::Sender<(u64, ResponseMsg)>,
    pub cancel: CancellationToken,
}

impl ResponseJob {
    /// Runs the response to its end or its cancellation.
    pub async fn run(self) {
        let cancelled = super::cancellation_signal(&self.cancel);
        tokio::select! {
            _ = cancelled => {}
            _ = self.work() => {}
        }
    }

    async fn work(self) {
        let tx = Tagged { seq: self.seq, tx: self.tx.clone() };
        let began = Instant::now();
        let mut answer = match self.gateway.start_in_session(&self.request, &self.key).await {
            Ok(a) => a,
            Err(e) => {
                tx.send(ResponseMsg::Failed { code: "llm_failed", message: e.to_string() }).await;
                tx.send(ResponseMsg::Done).await;
                return;
            }
        };
        // The gateway has seen the first content by now (or the stream's end): that is the TTFT.
        tx.send(ResponseMsg::Model { model: answer.model.clone(), ttft_ms: ms_since(began) }).await;

        let (chunk_tx, chunk_rx) = mpsc::channel::<String>(16);
        let speaking = self.speech.is_some();
        let llm = async {
            let mut chunker = Chunker::new();
            let mut chunks = Vec::new();
            while let Some(event) = answer.next().await {
                match event {
                    Ok(Event::Text(t)) => {
                        if speaking {
                            chunker.push(&t, &mut chunks);
                            for c in chunks.drain(..) {
                                let _ = chunk_tx.send(c).await;
                            }
                        }
                        tx.send(ResponseMsg::Text(t)).await;
                    }
                    Ok(Event::ToolCallStart { index, id, name }) => tx.send(ResponseMsg::ToolCallStart { index, call_id: id, name }).await,
                    Ok(Event::ToolCallArgs { index, arguments }) => tx.send(ResponseMsg::ToolCallArgs { index, arguments }).await,
                    Ok(Event::Finish(r)) => tx.send(ResponseMsg::Finish(r)).await,
                    Ok(Event::Usage(u)) => tx.send(ResponseMsg::Usage(u)).await,
                    Err(e) => {
                        tx.send(ResponseMsg::Failed { code: "llm_stream_failed", message: e.to_string() }).await;
                        return;
                    }
                }
            }
            if let Some(rest) = chunker.finish() {
                let _ = chunk_tx.send(rest).await;
            }
            // `chunk_tx` drops here, which ends the speaker's loop.
            drop(chunk_tx);
        };
        let speaker = async {
            if let Some(speech) = self.speech {
                speak(speech, chunk_rx, tx.clone()).await;
            }
        };
        // Both run inside this future: cancelling the response drops the upstream stream and the TTS work.
        tokio::join!(llm, speaker);
        tx.send(ResponseMsg::Done).await;
    }
}

/// Speaks each chunk in turn: announces its text, then streams its audio converted to the output
/// format. The chunks share one [`TtsContext`], which ends when this returns or is dropped.
async fn speak(speech: Speech, mut chunks: mpsc::Receiver<String>, tx: Tagged) {
    let out_hz = speech.rate_hz;
    // (engine rate, its resampler): engines of a fallback list may speak at different rates.
    let mut resampler: Option<(u32, Option<Resampler>)> = None;
    let mut first_audio_pending = true;
    let mut engine: Option<String> = None;
    let (context, _end_context) = TtsContext::new();
    while let Some(text) = chunks.recv().await {
        let (out_tx, mut out_rx) = mpsc::channel::<Spoken>(8);
        let began = Instant::now();
        let chunk = Chunk { text: text.clone(), voice: speech.voice.clone(), context: context.clone() };
        let synth = speech.tts.speak(chunk, out_tx);
        tx.send(ResponseMsg::Speak(text)).await;
        // The deadline is on the engine, not on delivery: sending waits while the session's playback
        // queue is full, which for a long chunk is most of its audio's length.
        let frames = async {
            loop {
                let spoken = match tokio::time::timeout(speech.timeout, out_rx.recv()).await {
                    Ok(Some(spoken)) => spoken,
                    Ok(None) => return Ok(()),
                    Err(_) => return Err(()),
                };
                let (frame, engine_hz) = match spoken {
                    Spoken::Audio { samples, rate_hz } => (samples, rate_hz),
                    Spoken::Words(words) => {
                        tx.send(ResponseMsg::Words(words)).await;
                        continue;
                    }
                    Spoken::Engine(name) => {
                        if engine.as_deref() != Some(name.as_str()) {
                            engine = Some(name.clone());
                            tx.send(ResponseMsg::TtsEngine(name)).await;
                        }
                        continue;
                    }
                };
                if engine.is_none() {
                    // An engine alone (no fallback list) does not name itself per chunk.
                    engine = Some(speech.tts.name().to_string());
                    tx.send(ResponseMsg::TtsEngine(speech.tts.name().to_string())).await;
                }
                if first_audio_pending {
                    first_audio_pending = false;
                    tx.send(ResponseMsg::TtsFirstAudio { ttfb_ms: ms_since(began) }).await;
                }
                if resampler.as_ref().is_none_or(|(hz, _)| *hz != engine_hz) {
                    let r = if engine_hz == out_hz { None } else { Resampler::new(engine_hz, out_hz).ok() };
                    resampler = Some((engine_hz, r));
                }
                let samples = match resampler.as_mut().and_then(|(_, r)| r.as_mut()) {
                    Some(r) => {
                        let mut out = Vec::with_capacity(frame.len() * out_hz as usize / engine_hz.max(1) as usize + 16);
                        r.process(&frame, &mut out);
                        out
                    }
                    None => frame,
                };
                let ms = samples.len() as f64 * 1000.0 / out_hz as f64;
                tx.send(ResponseMsg::Audio { samples, ms }).await;
            }
        };
        // A stalled engine ends `frames` with an error, and dropping `synth` then stops the engine.
        let result = async {
            tokio::pin!(synth);
            tokio::pin!(frames);
            tokio::select! {
                r = &mut synth => match r {
                    // Synthesis is done: deliver what it left in the channel.
                    Ok(()) => (&mut frames).await.map_err(|()| None),
                    Err(e) => Err(Some(e)),
                },
                r = &mut frames => match r {
                    // The channel closed: the engine is finishing.
                    Ok(()) => synth.await.map_err(Some),
                    Err(()) => Err(None),
                },
            }
        }
        .await;
        let failure = match result {
            Ok(()) => continue,
            Err(Some(e)) => e.to_string(),
            Err(None) => format!(
                "text-to-speech engine {} gave no audio for {} ms while speaking one chunk",
                speech.tts.name(),
                speech.timeout.as_millis()
            ),
        };
        tx.send(ResponseMsg::Failed { code: "tts_failed", message: failure }).await;
        return;
    }
}

#[derive(Clone)]
struct Tagged {
    seq: u64,
    tx: mpsc::Sender<(u64, ResponseMsg)>,
}

impl Tagged {
    /// Sends in order; when the session is gone the message has nowhere to go, and the
    /// response's token ends the work.
    async fn send(&self, msg: ResponseMsg) {
        let _ = self.tx.send((self.seq, msg)).await;
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
