//! Deepgram Aura text-to-speech over its WebSocket (`{base}/v1/speak?model=…&encoding=linear16&
//! sample_rate=24000`, `Authorization: Token KEY`). One socket per response: each chunk goes in as
//! `{"type":"Speak"}` then `{"type":"Flush"}`, its audio comes back as binary frames of raw PCM and
//! ends at `Flushed`; the response's end sends `{"type":"Close"}`. A chunk abandoned half-way
//! (the fallback list gave up waiting for it) sends `Clear` and drops every audio frame until
//! `Cleared`, so the next chunk starts clean. No word alignment. Deepgram allows 20 flushes a
//! minute per socket; past that it warns, and a chunk then ends after [`QUIET_MS`] without audio.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::vendor::{pcm16_samples, send_frames, Vendor, VendorSocket};
use super::{synthesize_by_speaking, BoxFuture, Chunk, Spoken, TextToSpeech, TtsError};

pub const RATE_HZ: u32 = 24_000;
pub const DEFAULT_MODEL: &str = "aura-2-thalia-en";
/// Without `Flushed`, a chunk is over after this long with no message after its audio.
const QUIET_MS: u64 = 1_500;

pub struct DeepgramTts {
    vendor: Vendor,
    /// The Aura model, which is the voice (`aura-2-thalia-en`).
    model: String,
    sockets: Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>,
}

struct Job {
    text: String,
    out: mpsc::Sender<Spoken>,
    done: oneshot::Sender<Result<(), TtsError>>,
}

impl DeepgramTts {
    pub fn new(vendor: Vendor, voice: Option<String>) -> Result<DeepgramTts, String> {
        let model = voice.unwrap_or_else(|| DEFAULT_MODEL.to_string());
        if !super::vendor::url_safe(&model) {
            return Err(format!("tts: provider {:?}: an Aura model name is letters, digits, '-' and '_'", vendor.id));
        }
        Ok(DeepgramTts { vendor, model, sockets: Arc::default() })
    }
}

impl TextToSpeech for DeepgramTts {
    fn name(&self) -> &str {
        &self.vendor.id
    }

    fn rate_hz(&self) -> u32 {
        RATE_HZ
    }

    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        synthesize_by_speaking(self, text, voice, audio)
    }

    fn speak(&self, chunk: Chunk, out: mpsc::Sender<Spoken>) -> BoxFuture<Result<(), TtsError>> {
        let vendor = self.vendor.clone();
        let sockets = self.sockets.clone();
        let model = vendor.voice(chunk.voice.clone(), &self.model);
        Box::pin(async move {
            if !super::vendor::url_safe(&model) {
                return Err(vendor.error("bad_request", "an Aura model name is letters, digits, '-' and '_'"));
            }
            let id = chunk.context.id().to_string();
            let existing = sockets.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
            let jobs = match existing {
                Some(jobs) => jobs,
                None => {
                    let key = vendor.key().map_err(|m| vendor.error("unauthorized", m))?.expose().to_string();
                    let url = vendor.ws_url(&format!("/v1/speak?model={model}&encoding=linear16&sample_rate={RATE_HZ}"));
                    let socket = vendor.connect(&url, &[("authorization", format!("Token {key}"))]).await?;
                    let (tx, rx) = mpsc::channel(1);
                    sockets.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), tx.clone());
                    let ended = chunk.context.ended().clone();
                    let (vendor, sockets) = (vendor.clone(), sockets.clone());
                    tokio::spawn(async move {
                        Socket { vendor, socket, clearing: false }.run(rx, ended).await;
                        sockets.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    });
                    tx
                }
            };
            let (done, result) = oneshot::channel();
            let closed = || vendor.error("closed", "the socket of this answer is closed");
            jobs.send(Job { text: chunk.text, out, done }).await.map_err(|_| closed())?;
            result.await.unwrap_or_else(|_| Err(closed()))
        })
    }
}

struct Socket {
    vendor: Vendor,
    socket: VendorSocket,
    /// `Clear` was sent: audio until `Cleared` belongs to an abandoned chunk.
    clearing: bool,
}

/// What one vendor message is, as far as a chunk cares.
enum Heard {
    Audio(Vec<u8>),
    Flushed,
    Nothing,
    Failed(TtsError),
}

impl Socket {
    async fn send(&mut self, v: Value) -> bool {
        self.socket.send(Message::text(v.to_string())).await.is_ok()
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<Job>, ended: CancellationToken) {
        let mut bad_in_a_row = 0;
        loop {
            tokio::select! {
                () = ended.cancelled() => {
                    let _ = self.send(json!({"type": "Close"})).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), async { while self.socket.next().await.is_some() {} }).await;
                    break;
                }
                job = jobs.recv() => {
                    let Some(job) = job else { break };
                    let (result, keep) = self.chunk(&job, &ended).await;
                    let _ = job.done.send(result);
                    if !keep {
                        let _ = self.socket.close(None).await;
                        break;
                    }
                }
                msg = self.socket.next() => match self.read(msg, &mut bad_in_a_row) {
                    Heard::Failed(_) => break,
                    _ => {} // between chunks: stale audio is dropped
                }
            }
        }
    }

    /// Reads one message; audio while clearing is dropped, `Cleared` ends the clearing.
    fn read(&mut self, msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>, bad_in_a_row: &mut u32) -> Heard {
        let vendor = &self.vendor;
        match msg {
            Some(Ok(Message::Binary(bytes))) if self.clearing => {
                let _ = bytes;
                Heard::Nothing
            }
            Some(Ok(Message::Binary(bytes))) => {
                *bad_in_a_row = 0;
                Heard::Audio(bytes.to_vec())
            }
            Some(Ok(Message::Text(t))) => {
                let Ok(message @ Value::Object(_)) = serde_json::from_str::<Value>(&t) else {
                    return match vendor.bad_message(bad_in_a_row, "a message that is not a JSON object") {
                        Ok(()) => Heard::Nothing,
                        Err(e) => Heard::Failed(e),
                    };
                };
                match message["type"].as_str().unwrap_or_default() {
                    "Metadata" => Heard::Nothing,
                    "Flushed" if !self.clearing => {
                        *bad_in_a_row = 0;
                        Heard::Flushed
                    }
                    "Flushed" => Heard::Nothing,
                    "Cleared" => {
                        self.clearing = false;
                        Heard::Nothing
                    }
                    "Warning" => {
                        let description = message["description"].as_str().unwrap_or_default();
                        tracing::warn!(vendor = %vendor.id, warning = %vendor.redact(description), "text-to-speech vendor warning");
                        Heard::Nothing
                    }
                    "Error" => {
                        let description = message["description"].as_str().or(message["message"].as_str()).unwrap_or("error");
                        Heard::Failed(vendor.error("vendor_error", description))
                    }
                    other => match vendor.bad_message(bad_in_a_row, &format!("a message of type {other:?}")) {
                        Ok(()) => Heard::Nothing,
                        Err(e) => Heard::Failed(e),
                    },
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Heard::Nothing,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                let why = if code == 1008 || code == 1011 { "vendor_error" } else { "closed" };
                Heard::Failed(vendor.error(why, format!("the vendor closed the socket ({code} {reason})")))
            }
            Some(Err(_)) | None => Heard::Failed(vendor.error("closed", "the socket broke")),
        }
    }

    async fn chunk(&mut self, job: &Job, ended: &CancellationToken) -> (Result<(), TtsError>, bool) {
        if job.text.trim().is_empty() {
            return (Ok(()), true);
        }
        if !(self.send(json!({"type": "Speak", "text": job.text})).await && self.send(json!({"type": "Flush"})).await) {
            return (Err(self.vendor.error("closed", "the socket closed")), false);
        }
        let out = &job.out;
        let mut carry = None;
        let mut have_audio = false;
        let mut bad_in_a_row = 0;
        loop {
            let quiet = async move {
                if have_audio {
                    tokio::time::sleep(Duration::from_millis(QUIET_MS)).await
                } else {
                    std::future::pending().await
                }
            };
            let msg = tokio::select! {
                msg = self.socket.next() => msg,
                () = ended.cancelled() => return (Ok(()), false),
                () = out.closed() => {
                    // Abandoned: drop what the vendor still has for this chunk, keep the socket.
                    self.clearing = true;
                    let sent = self.send(json!({"type": "Clear"})).await;
                    return (Ok(()), sent);
                }
                () = quiet => return (Ok(()), true),
            };
            match self.read(msg, &mut bad_in_a_row) {
                Heard::Audio(bytes) => {
                    have_audio = true;
                    if send_frames(out, pcm16_samples(&mut carry, &bytes), RATE_HZ).await.is_err() {
                        self.clearing = true;
                        let sent = self.send(json!({"type": "Clear"})).await;
                        return (Ok(()), sent);
                    }
                }
                Heard::Flushed => return (Ok(()), true),
                Heard::Nothing => {}
                Heard::Failed(e) => return (Err(e), false),
            }
        }
    }
}
