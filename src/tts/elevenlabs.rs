//! ElevenLabs text-to-speech over the `stream-input` WebSocket
//! (`{base}/v1/text-to-speech/{voice_id}/stream-input?model_id=…&output_format=pcm_24000&
//! sync_alignment=true`: alignment with every audio message; key in
//! the `xi-api-key` header). One socket per response: it opens with `{"text":" "}` on the first
//! chunk, each chunk goes in as `{"text": "… ", "flush": true}`, `{"text":" "}` keeps it open while
//! the model writes, and `{"text":""}` ends it when the response is over; a cut response closes it.
//!
//! Audio comes back base64 in JSON with `alignment` (characters, `charStartTimesMs`,
//! `charDurationsMs`, older spelling `charsDurationsMs`) in ms relative to each message; word ends
//! are counted on from the message's place in the chunk's audio. A chunk is over when the alignment
//! has covered all its non-blank characters (or, without alignment, at `isFinal` or after
//! [`QUIET_MS`] of quiet after its audio). Errors come as `{"message", "error", "code"}` and a close
//! with 1008.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::vendor::{pcm16_samples, send_frames, Vendor, VendorSocket};
use super::{synthesize_by_speaking, BoxFuture, Chunk, Spoken, TextToSpeech, TtsError, WordEnd};

pub const RATE_HZ: u32 = 24_000;
pub const DEFAULT_MODEL: &str = "eleven_flash_v2_5";
/// ElevenLabs' long-standing default voice ("Rachel").
pub const DEFAULT_VOICE: &str = "21m00Tcm4TlvDq8ikWAM";
/// Idle time after which `{"text":" "}` keeps the socket open (the vendor closes after 20 s).
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Without alignment, a chunk is over after this long with no message after its audio.
const QUIET_MS: u64 = 1_500;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct ElevenLabsTts {
    vendor: Vendor,
    voice: String,
    model: String,
    /// The socket of each response being spoken, by context id (its task removes it when it ends).
    contexts: Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>,
}

/// One chunk for a response's socket.
struct Job {
    text: String,
    out: mpsc::Sender<Spoken>,
    done: oneshot::Sender<Result<(), TtsError>>,
}

impl ElevenLabsTts {
    /// `voice`: a voice id, or `MODEL/VOICE_ID` to choose the model too.
    pub fn new(vendor: Vendor, voice: Option<String>) -> Result<ElevenLabsTts, String> {
        let (model, voice) = match voice.as_deref().and_then(|v| v.split_once('/')) {
            Some((m, v)) => (m.to_string(), v.to_string()),
            None => (DEFAULT_MODEL.to_string(), voice.unwrap_or_else(|| DEFAULT_VOICE.to_string())),
        };
        if !super::vendor::url_safe(&voice) || !super::vendor::url_safe(&model) {
            return Err(format!("tts: provider {:?}: voice and model ids are letters, digits, '-' and '_'", vendor.id));
        }
        Ok(ElevenLabsTts { vendor, voice, model, contexts: Arc::default() })
    }
}

impl TextToSpeech for ElevenLabsTts {
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
        let contexts = self.contexts.clone();
        let voice = vendor.voice(chunk.voice.clone(), &self.voice);
        let model = self.model.clone();
        Box::pin(async move {
            if !super::vendor::url_safe(&voice) {
                return Err(vendor.error("bad_request", "a voice id is letters, digits, '-' and '_'"));
            }
            let id = chunk.context.id().to_string();
            let existing = contexts.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
            let jobs = match existing {
                Some(jobs) => jobs,
                None => {
                    let key = vendor.key().map_err(|m| vendor.error("unauthorized", m))?.expose().to_string();
                    let url = vendor.ws_url(&format!(
                        "/v1/text-to-speech/{voice}/stream-input?model_id={model}&output_format=pcm_{RATE_HZ}&sync_alignment=true"
                    ));
                    let mut socket = vendor.connect(&url, &[("xi-api-key", key)]).await?;
                    let open = json!({"text": " ", "voice_settings": {"stability": 0.5, "similarity_boost": 0.75}});
                    socket
                        .send(Message::text(open.to_string()))
                        .await
                        .map_err(|_| vendor.error("closed", "the socket closed at its first message"))?;
                    let (tx, rx) = mpsc::channel(1);
                    contexts.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), tx.clone());
                    let ended = chunk.context.ended().clone();
                    let (vendor, contexts) = (vendor.clone(), contexts.clone());
                    tokio::spawn(async move {
                        run_socket(&vendor, socket, rx, ended).await;
                        contexts.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
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

/// The socket of one response: chunks in, until the response ends (then `{"text":""}`) or the
/// socket fails. Anything that leaves the socket unsure (an error, a chunk abandoned half-spoken)
/// closes it; the next chunk of the response opens a new one.
async fn run_socket(vendor: &Vendor, mut socket: VendorSocket, mut jobs: mpsc::Receiver<Job>, ended: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = ended.cancelled() => {
                // The response is over: end the input, and let the vendor close.
                let _ = socket.send(Message::text(json!({"text": ""}).to_string())).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), async { while socket.next().await.is_some() {} }).await;
                break;
            }
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let (result, keep) = chunk(vendor, &mut socket, &job.text, &job.out, &ended).await;
                let _ = job.done.send(result);
                if !keep {
                    let _ = socket.close(None).await;
                    break;
                }
            }
            () = tokio::time::sleep(KEEPALIVE) => {
                if socket.send(Message::text(json!({"text": " "}).to_string())).await.is_err() {
                    break;
                }
            }
            msg = socket.next() => {
                // Between chunks only the vendor's end or an error can come; either ends the socket.
                match msg {
                    Some(Ok(Message::Text(t))) if serde_json::from_str::<Value>(&t).is_ok_and(|v| v.get("audio").is_some()) => {}
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => break,
                }
            }
        }
    }
}

/// Speaks one chunk on the socket. Returns its result and whether the socket can take the next.
async fn chunk(
    vendor: &Vendor,
    socket: &mut VendorSocket,
    text: &str,
    out: &mpsc::Sender<Spoken>,
    ended: &tokio_util::sync::CancellationToken,
) -> (Result<(), TtsError>, bool) {
    let mut text = text.to_string();
    if !text.ends_with(char::is_whitespace) {
        text.push(' '); // each piece of input ends with a space
    }
    let chars_total = text.chars().filter(|c| !c.is_whitespace()).count();
    if chars_total == 0 {
        return (Ok(()), true);
    }
    if socket.send(Message::text(json!({"text": text, "flush": true}).to_string())).await.is_err() {
        return (Err(vendor.error("closed", "the socket closed")), false);
    }
    let mut words = WordCounter::default();
    let mut carry = None;
    let mut audio_ms = 0.0;
    let mut bad_in_a_row = 0;
    loop {
        let have_audio = audio_ms > 0.0;
        let quiet = async move {
            if have_audio {
                tokio::time::sleep(Duration::from_millis(QUIET_MS)).await
            } else {
                std::future::pending().await
            }
        };
        let msg = tokio::select! {
            msg = socket.next() => msg,
            () = ended.cancelled() => return (Ok(()), false),
            () = out.closed() => return (Ok(()), false),
            () = quiet => return (Ok(()), true),
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                let why = if code == 1008 { "vendor_error" } else { "closed" };
                return (Err(vendor.error(why, format!("the vendor closed the socket ({code} {reason})"))), false);
            }
            Some(Ok(_)) => {
                if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "a binary message") {
                    return (Err(e), false);
                }
                continue;
            }
            Some(Err(_)) | None => return (Err(vendor.error("closed", "the socket broke")), false),
        };
        let message: Value = match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "a message that is not a JSON object") {
                    return (Err(e), false);
                }
                continue;
            }
        };
        if let Some(error) = message.get("error").filter(|e| !e.is_null()) {
            let what = error.as_str().unwrap_or("error");
            let detail = message["message"].as_str().unwrap_or_default();
            let reason = match what {
                "invalid_api_key" | "unauthorized" => "unauthorized",
                "quota_exceeded" => "quota",
                "rate_limited" | "too_many_concurrent_requests" | "system_busy" => "rate_limited",
                _ => "vendor_error",
            };
            return (Err(vendor.error(reason, format!("{what}: {detail}"))), false);
        }
        let audio = match message.get("audio") {
            Some(Value::String(a)) => match B64.decode(a) {
                Ok(bytes) => Some(bytes),
                Err(_) => {
                    if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "audio that is not base64") {
                        return (Err(e), false);
                    }
                    continue;
                }
            },
            Some(Value::Null) | None => None,
            Some(_) => {
                if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "audio that is not a string") {
                    return (Err(e), false);
                }
                continue;
            }
        };
        let is_final = message["isFinal"].as_bool() == Some(true);
        if audio.is_none() && !is_final {
            // `{"audio": null, "isFinal": null, …}` says nothing and is no error; a message with
            // none of the fields of this API is not one of its messages.
            let known = ["audio", "isFinal", "alignment", "normalizedAlignment"].iter().any(|k| message.get(k).is_some());
            if !known {
                if let Err(e) = vendor.bad_message(&mut bad_in_a_row, "a message with none of audio, isFinal or alignment") {
                    return (Err(e), false);
                }
            }
            continue;
        }
        bad_in_a_row = 0;
        let message_start_ms = audio_ms;
        if let Some(bytes) = audio {
            let samples = pcm16_samples(&mut carry, &bytes);
            audio_ms += samples.len() as f64 * 1000.0 / f64::from(RATE_HZ);
            if send_frames(out, samples, RATE_HZ).await.is_err() {
                return (Ok(()), false);
            }
        }
        if let Some(alignment) = message.get("alignment").filter(|a| a.is_object()) {
            let ends = words.read(alignment, message_start_ms, chars_total);
            if !ends.is_empty() && out.send(Spoken::Words(ends)).await.is_err() {
                return (Ok(()), false);
            }
        }
        if words.seen >= chars_total {
            return (Ok(()), true);
        }
        if is_final {
            // The vendor ended the stream: this socket takes no more text.
            return (Ok(()), false);
        }
    }
}

/// Word ends from ElevenLabs' character alignment, across the messages of one chunk.
#[derive(Default)]
struct WordCounter {
    /// Non-blank characters aligned so far.
    seen: usize,
    /// The end of the last non-blank character, while its word may go on in the next message.
    pending_end_ms: Option<f64>,
}

impl WordCounter {
    /// The word ends `alignment` completes; times relative to the message, which starts
    /// `offset_ms` into the chunk's audio. The chunk's last word ends with its last character.
    fn read(&mut self, alignment: &Value, offset_ms: f64, chars_total: usize) -> Vec<WordEnd> {
        let list = |k: &str| alignment.get(k).and_then(Value::as_array);
        let (Some(chars), Some(starts)) = (list("chars"), list("charStartTimesMs")) else { return Vec::new() };
        let durations = list("charDurationsMs").or_else(|| list("charsDurationsMs"));
        let mut ends = Vec::new();
        for (i, c) in chars.iter().enumerate() {
            let c = c.as_str().unwrap_or(" ");
            if c.trim().is_empty() {
                if let Some(end_ms) = self.pending_end_ms.take() {
                    ends.push(WordEnd { chars: self.seen, end_ms });
                }
                continue;
            }
            let start = starts.get(i).and_then(Value::as_f64).unwrap_or(0.0);
            let duration = durations.and_then(|d| d.get(i)).and_then(Value::as_f64).unwrap_or(0.0);
            self.seen += c.chars().filter(|c| !c.is_whitespace()).count();
            self.pending_end_ms = Some(offset_ms + start + duration);
        }
        if self.seen >= chars_total {
            if let Some(end_ms) = self.pending_end_ms.take() {
                ends.push(WordEnd { chars: self.seen, end_ms });
            }
        }
        ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_across_messages_gives_word_ends_in_the_chunk() {
        let mut w = WordCounter::default();
        // "Hi the" then "re you": a word split across two messages.
        let first =
            json!({"chars": ["H","i"," ","t","h","e"], "charStartTimesMs": [0,50,100,100,150,200], "charDurationsMs": [50,50,0,50,50,50]});
        assert_eq!(w.read(&first, 0.0, 10), vec![WordEnd { chars: 2, end_ms: 100.0 }]);
        let second =
            json!({"chars": ["r","e"," ","y","o","u"], "charStartTimesMs": [0,40,80,80,90,100], "charsDurationsMs": [40,40,0,10,10,10]});
        assert_eq!(w.read(&second, 250.0, 10), vec![WordEnd { chars: 7, end_ms: 330.0 }, WordEnd { chars: 10, end_ms: 360.0 }]);
        // A malformed alignment gives nothing, and no panic.
        assert!(WordCounter::default().read(&json!({"chars": 3}), 0.0, 1).is_empty());
    }
}
