//! Cartesia text-to-speech over its WebSocket (`{base}/tts/websocket`, key in the `X-API-Key` header
//! with `Cartesia-Version`, so no URL carries it). One socket per response at a time, and one
//! `context_id` for its chunks: each goes in with `continue: true` (prosody carries across the answer) and
//! `max_buffer_delay_ms: 0`, so the vendor flushes it and answers `flush_done`; the response's end
//! sends an empty transcript with `continue: false` (and once the vendor says `done`, the socket
//! waits in a small idle pool for the next response, saving its handshake), a cut one
//! `cancel: true`, and then the socket closes. A pooled socket the vendor closed meanwhile is found
//! out by the first chunk sent on it, which then goes out again on a new socket.
//!
//! Audio is raw `pcm_s16le` at 24 kHz in base64 `chunk` messages; `add_timestamps` brings
//! `word_timestamps` in seconds from the start of the context, turned into word ends in each
//! chunk. A context expires a second after its last audio, so a chunk that comes later starts a
//! new one; messages of any other context than the current are dropped. Errors come in two shapes
//! (`{"type":"error","error":…}` before 2025, `title`/`message`/`error_code` after), both with a
//! `status_code`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::vendor::{pcm16_samples, send_frames, status_reason, word_ends, Vendor, VendorSocket};
use super::{synthesize_by_speaking, BoxFuture, Chunk, Spoken, TextToSpeech, TtsError};

pub const RATE_HZ: u32 = 24_000;
pub const API_VERSION: &str = "2025-04-16";
pub const DEFAULT_MODEL: &str = "sonic-3";
pub const DEFAULT_VOICE: &str = "a0e99841-438c-4a64-b679-ae501e7d6091";
/// A context expires 1 s after its last audio; past this a chunk starts a new context.
const CONTEXT_REUSE_MS: u64 = 800;
/// Without `flush_done`, a chunk is over after this long with no message after its audio.
const QUIET_MS: u64 = 1_500;
/// Idle sockets kept for the next responses, and for how long (the vendor closes idle sockets
/// after 60 s by one report, 5 min by another).
const IDLE_SOCKETS_MAX: usize = 8;
const IDLE_KEEP: Duration = Duration::from_secs(50);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct CartesiaTts {
    vendor: Vendor,
    voice: String,
    model: String,
    sockets: Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>,
    /// Sockets whose response ended cleanly, with when they went idle.
    idle: Arc<Mutex<Vec<(Instant, VendorSocket)>>>,
}

struct Job {
    text: String,
    voice: String,
    out: mpsc::Sender<Spoken>,
    done: oneshot::Sender<Outcome>,
}

/// How a chunk ended on a socket.
enum Outcome {
    Done(Result<(), TtsError>),
    /// The socket came from the idle pool and was dead before anything was heard on it: nothing was
    /// spoken, and the chunk may go out again on a new socket.
    Stale,
}

impl CartesiaTts {
    /// `voice`: a voice id, or `MODEL/VOICE_ID` to choose the model too.
    pub fn new(vendor: Vendor, voice: Option<String>) -> Result<CartesiaTts, String> {
        let (model, voice) = match voice.as_deref().and_then(|v| v.split_once('/')) {
            Some((m, v)) => (m.to_string(), v.to_string()),
            None => (DEFAULT_MODEL.to_string(), voice.unwrap_or_else(|| DEFAULT_VOICE.to_string())),
        };
        Ok(CartesiaTts { vendor, voice, model, sockets: Arc::default(), idle: Arc::default() })
    }
}

impl TextToSpeech for CartesiaTts {
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
        let (sockets, idle) = (self.sockets.clone(), self.idle.clone());
        let voice = vendor.voice(chunk.voice.clone(), &self.voice);
        let model = self.model.clone();
        Box::pin(async move {
            let id = chunk.context.id().to_string();
            let closed = || vendor.error("closed", "the socket of this answer is closed");
            // A second pass only after a pooled socket turned out dead; it never takes one again.
            for may_reuse in [true, false] {
                let existing = sockets.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
                let mut reused = false;
                let jobs = match existing {
                    Some(jobs) => jobs,
                    None => {
                        let pooled = if may_reuse { take_idle(&idle) } else { None };
                        reused = pooled.is_some();
                        let socket = match pooled {
                            Some(socket) => socket,
                            None => {
                                let key = vendor.key().map_err(|m| vendor.error("unauthorized", m))?.expose().to_string();
                                let headers = [("x-api-key", key), ("cartesia-version", API_VERSION.to_string())];
                                vendor.connect(&vendor.ws_url("/tts/websocket"), &headers).await?
                            }
                        };
                        let (tx, rx) = mpsc::channel(1);
                        sockets.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), tx.clone());
                        let ended = chunk.context.ended().clone();
                        let (vendor, sockets, idle, model, id) = (vendor.clone(), sockets.clone(), idle.clone(), model.clone(), id.clone());
                        tokio::spawn(async move {
                            let s = Socket {
                                vendor,
                                socket,
                                model,
                                context_base: id.clone(),
                                generation: 0,
                                context_id: None,
                                last_audio: None,
                                reused,
                                heard: false,
                            };
                            let reusable = s.run(rx, ended).await;
                            sockets.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                            if let Some(socket) = reusable {
                                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                                if idle.len() < IDLE_SOCKETS_MAX {
                                    idle.push((Instant::now(), socket));
                                }
                            }
                        });
                        tx
                    }
                };
                let (done, result) = oneshot::channel();
                let job = Job { text: chunk.text.clone(), voice: voice.clone(), out: out.clone(), done };
                let outcome = match jobs.send(job).await {
                    Ok(()) => result.await.ok(),
                    Err(_) => None,
                };
                match outcome {
                    Some(Outcome::Done(r)) => return r,
                    // A pooled socket that died before it took the job (its task saw the close
                    // first) spoke nothing either.
                    Some(Outcome::Stale) | None if reused => {
                        let mut sockets = sockets.lock().unwrap_or_else(|p| p.into_inner());
                        if sockets.get(&id).is_some_and(|s| s.same_channel(&jobs)) {
                            sockets.remove(&id);
                        }
                    }
                    Some(Outcome::Stale) | None => return Err(closed()),
                }
            }
            Err(closed())
        })
    }
}

/// An idle socket young enough to still be open, if any (older ones are dropped).
fn take_idle(idle: &Mutex<Vec<(Instant, VendorSocket)>>) -> Option<VendorSocket> {
    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
    idle.retain(|(since, _)| since.elapsed() < IDLE_KEEP);
    idle.pop().map(|(_, socket)| socket)
}

/// One response's socket and its context.
struct Socket {
    vendor: Vendor,
    socket: VendorSocket,
    model: String,
    context_base: String,
    generation: u32,
    /// The context in use, and the audio it has made so far (timestamps count from its start).
    context_id: Option<(String, f64)>,
    last_audio: Option<Instant>,
    /// Taken from the idle pool, and nothing heard on it since.
    reused: bool,
    heard: bool,
}

impl Socket {
    /// Serves the response's chunks; returns the socket when it ended cleanly and can serve another.
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>, ended: CancellationToken) -> Option<VendorSocket> {
        let mut voice = String::new();
        loop {
            tokio::select! {
                () = ended.cancelled() => {
                    // The response is over: close its context and wait for the vendor's `done`.
                    let Some((context_id, _)) = self.context_id.clone() else { return Some(self.socket) };
                    let end = self.request(&context_id, "", &voice, false);
                    let _ = self.socket.send(Message::text(end.to_string())).await;
                    let done = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(Message::Text(t))) = self.socket.next().await {
                            if serde_json::from_str::<Value>(&t).is_ok_and(|v| v["type"] == "done" && v["context_id"] == context_id.as_str()) {
                                return true;
                            }
                        }
                        false
                    })
                    .await;
                    if done == Ok(true) {
                        return Some(self.socket);
                    }
                    let _ = self.socket.close(None).await;
                    return None;
                }
                job = jobs.recv() => {
                    let Some(job) = job else { break };
                    voice = job.voice.clone();
                    let (result, keep) = self.chunk(&job, &ended).await;
                    let _ = job.done.send(result);
                    if !keep {
                        if let Some((context_id, _)) = &self.context_id {
                            let cancel = json!({"context_id": context_id, "cancel": true});
                            let _ = self.socket.send(Message::text(cancel.to_string())).await;
                        }
                        let _ = self.socket.close(None).await;
                        break;
                    }
                }
                msg = self.socket.next() => match msg {
                    // Between chunks: late messages of the context are dropped; a close ends the socket.
                    Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                    _ => break,
                }
            }
        }
        None
    }

    fn request(&self, context_id: &str, transcript: &str, voice: &str, more: bool) -> Value {
        json!({
            "model_id": self.model,
            "transcript": transcript,
            "voice": {"mode": "id", "id": voice},
            "language": "en",
            "context_id": context_id,
            "continue": more,
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE_HZ},
            "add_timestamps": true,
            "max_buffer_delay_ms": 0,
        })
    }

    /// Speaks one chunk in the response's context (a new one when it has expired). Returns how it
    /// ended and whether the socket can take the next chunk.
    async fn chunk(&mut self, job: &Job, ended: &CancellationToken) -> (Outcome, bool) {
        let (result, keep) = self.speak_chunk(job, ended).await;
        let stale = self.reused && !self.heard && matches!(&result, Err(e) if e.kind() == "closed");
        if stale {
            tracing::debug!(vendor = %self.vendor.id, "an idle socket was closed by the vendor; opening a new one");
            return (Outcome::Stale, false);
        }
        (Outcome::Done(result), keep)
    }

    async fn speak_chunk(&mut self, job: &Job, ended: &CancellationToken) -> (Result<(), TtsError>, bool) {
        let vendor = self.vendor.clone();
        if job.text.trim().is_empty() {
            return (Ok(()), true);
        }
        let expired = self.last_audio.is_some_and(|t| t.elapsed() > Duration::from_millis(CONTEXT_REUSE_MS));
        if self.context_id.is_none() || expired {
            self.generation += 1;
            self.context_id = Some((format!("{}-{}", self.context_base, self.generation), 0.0));
        }
        let Some((context_id, context_ms)) = self.context_id.clone() else { return (Ok(()), false) };
        let request = self.request(&context_id, &job.text, &job.voice, true);
        if self.socket.send(Message::text(request.to_string())).await.is_err() {
            return (Err(vendor.error("closed", "the socket closed")), false);
        }
        let out = &job.out;
        let mut carry = None;
        let mut chunk_ms = 0.0;
        let mut chars = 0;
        let mut bad_in_a_row = 0;
        loop {
            let have_audio = chunk_ms > 0.0;
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
                () = out.closed() => return (Ok(()), false),
                () = quiet => break,
            };
            if matches!(msg, Some(Ok(Message::Text(_) | Message::Binary(_)))) {
                self.heard = true;
            }
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                    return (Err(vendor.error("closed", format!("the vendor closed the socket ({code} {reason})"))), false);
                }
                Some(Ok(_)) => {
                    if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "a binary message") {
                        return (Err(e), false);
                    }
                    continue;
                }
                Some(Err(_)) | None => return (Err(vendor.error("closed", "the socket broke")), false),
            };
            let Ok(message @ Value::Object(_)) = serde_json::from_str::<Value>(&text) else {
                if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "a message that is not a JSON object") {
                    return (Err(e), false);
                }
                continue;
            };
            let kind = message["type"].as_str().unwrap_or_default();
            if kind == "error" {
                let status = message["status_code"].as_u64().unwrap_or(0) as u16;
                let detail = message["message"].as_str().or(message["error"].as_str()).or(message["title"].as_str()).unwrap_or("error");
                let code = message["error_code"].as_str().unwrap_or_default();
                let reason = if status == 0 { "vendor_error" } else { status_reason(status) };
                return (Err(vendor.error(reason, format!("{status} {code} {detail}"))), false);
            }
            if message.get("context_id").and_then(Value::as_str).is_some_and(|c| c != context_id) {
                continue; // an earlier (expired or cancelled) context: dropped
            }
            match kind {
                "chunk" => {
                    let Some(Ok(bytes)) = message["data"].as_str().map(|d| B64.decode(d)) else {
                        if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "a chunk without base64 data") {
                            return (Err(e), false);
                        }
                        continue;
                    };
                    let samples = pcm16_samples(&mut carry, &bytes);
                    chunk_ms += samples.len() as f64 * 1000.0 / f64::from(RATE_HZ);
                    self.last_audio = Some(Instant::now());
                    if send_frames(out, samples, RATE_HZ).await.is_err() {
                        return (Ok(()), false);
                    }
                }
                "timestamps" => {
                    let w = &message["word_timestamps"];
                    let (Some(words), Some(ends)) = (w["words"].as_array(), w["end"].as_array()) else {
                        if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "timestamps without words and ends") {
                            return (Err(e), false);
                        }
                        continue;
                    };
                    let pairs = words.iter().zip(ends).filter_map(|(w, e)| Some((w.as_str()?, e.as_f64()? * 1000.0 - context_ms)));
                    let found = word_ends(&mut chars, pairs);
                    if !found.is_empty() && out.send(Spoken::Words(found)).await.is_err() {
                        return (Ok(()), false);
                    }
                }
                "phoneme_timestamps" => {}
                "flush_done" => break,
                "done" => {
                    // The context is over (it expired): the next chunk starts a new one.
                    self.context_id = None;
                    self.finish(chunk_ms);
                    return (Ok(()), true);
                }
                _ => {
                    if let Err(e) = vendor.bad_message(&mut bad_in_a_row, &format!("a message of type {kind:?}")) {
                        return (Err(e), false);
                    }
                    continue;
                }
            }
            bad_in_a_row = 0;
        }
        self.finish(chunk_ms);
        (Ok(()), true)
    }

    /// The chunk's audio joins its context's timeline.
    fn finish(&mut self, chunk_ms: f64) {
        if let Some((_, context_ms)) = self.context_id.as_mut() {
            *context_ms += chunk_ms;
        }
    }
}
