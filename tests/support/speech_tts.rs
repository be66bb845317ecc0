//! Fake text-to-speech vendors, each speaking its vendor's wire format on loopback, and recording
//! what the client sent (the request or upgrade with its headers and query, then every message).
//!
//! Every fake makes the same audio for a text: a quiet tone, [`MS_PER_CHAR`] ms per non-blank
//! character, at the rate the client asked for. Vendors that align words put [`LEAD_MS`] of silence
//! before each text's words and say where each word ends ([`heard_words`] is the transcript a cut
//! at some ms keeps). The scenario is the voice the client asks for:
//! - `ok` (or any other voice): audio, then the vendor's end;
//! - `rate_limited`: 429 on the request or the upgrade;
//! - `unauthorized`: the vendor's refusal of a bad key;
//! - `stall`: accepted, then nothing before the first audio;
//! - `cut`: some audio of the first text, then the connection breaks;
//! - `malformed`: messages that are not the vendor's (bad JSON, unknown types), then nothing.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::support::{recorded, spawn, Recorded, Recorder};

/// Audio per non-blank character of text.
pub const MS_PER_CHAR: u32 = 20;
/// Silence before the words of each text, in the vendors that align words: a cut early in a chunk
/// has heard no word of it, where an estimate from the chunk's length would keep some.
pub const LEAD_MS: f64 = 400.0;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The audio for `text` at `rate_hz`, as PCM16 little-endian bytes.
pub fn pcm_for(text: &str, rate_hz: u32) -> Vec<u8> {
    let chars = text.chars().filter(|c| !c.is_whitespace()).count() as u64;
    let samples = chars * u64::from(MS_PER_CHAR) * u64::from(rate_hz) / 1000;
    (0..samples)
        .flat_map(|i| {
            let s = ((i as f64 * 220.0 * std::f64::consts::TAU / rate_hz as f64).sin() * 2000.0) as i16;
            s.to_le_bytes()
        })
        .collect()
}

/// The words of `text` whose audio (as the aligning fakes make it) ends by `heard_ms`, joined by
/// the text's own spacing.
pub fn heard_words(text: &str, heard_ms: f64) -> String {
    let mut end_ms = LEAD_MS;
    let mut kept = 0;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            continue;
        }
        end_ms += f64::from(MS_PER_CHAR);
        let word_ends = text[i + c.len_utf8()..].chars().next().is_none_or(char::is_whitespace);
        if word_ends && end_ms <= heard_ms + 0.5 {
            kept = i + c.len_utf8();
        }
    }
    text[..kept].to_string()
}

/// Word timestamps as Cartesia sends them: words with start and end in seconds from `offset_ms`.
pub fn word_seconds(text: &str, offset_ms: f64) -> (Vec<String>, Vec<f64>, Vec<f64>) {
    let (mut words, mut starts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
    let mut t = offset_ms + LEAD_MS;
    for w in text.split_whitespace() {
        let d = w.chars().count() as f64 * f64::from(MS_PER_CHAR);
        words.push(w.to_string());
        starts.push(t / 1000.0);
        ends.push((t + d) / 1000.0);
        t += d;
    }
    (words, starts, ends)
}

/// A WebSocket message the fake received, recorded after its upgrade.
fn ws_recorded(path: &str, text: &str) -> Recorded {
    Recorded {
        path: format!("{path}#message"),
        query: String::new(),
        headers: Vec::new(),
        body: serde_json::from_str(text).unwrap_or(Value::String(text.to_string())),
    }
}

/// The messages (not the upgrades) a WebSocket fake received, in order.
pub fn messages(recorder: &Recorder) -> Vec<Value> {
    recorder.all().into_iter().filter(|r| r.path.ends_with("#message")).map(|r| r.body).collect()
}

/// The requests or upgrades a fake received.
pub fn upgrades(recorder: &Recorder) -> Vec<Recorded> {
    recorder.all().into_iter().filter(|r| !r.path.ends_with("#message")).collect()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

fn json_response(status: u16, body: Value) -> Response {
    Response::builder().status(status).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

// -------------------------------------------------------------------------------------------------
// OpenAI: POST /v1/audio/speech, raw 24 kHz PCM in a chunked body
// -------------------------------------------------------------------------------------------------

pub mod openai {
    use super::*;

    /// Start the fake; returns its base URL (ending in `/v1`, as the SDK's) and its recorder.
    pub async fn start() -> (String, Recorder) {
        let recorder = Recorder::default();
        let app = axum::Router::new().route("/v1/audio/speech", axum::routing::post(handle)).with_state(recorder.clone());
        let addr: SocketAddr = spawn(app).await;
        (format!("http://{addr}/v1"), recorder)
    }

    fn error(status: u16, code: &str, message: &str) -> Response {
        json_response(status, json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}))
    }

    async fn handle(State(rec): State<Recorder>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let r = recorded(&uri, &headers, &body);
        rec.record(r.clone());
        if r.body["response_format"] != "pcm" {
            return error(400, "invalid_value", "this fake speaks pcm only");
        }
        let text = r.body["input"].as_str().unwrap_or_default().to_string();
        let pcm = pcm_for(&text, 24_000);
        match r.body["voice"].as_str().unwrap_or("ok") {
            "rate_limited" => error(429, "rate_limit_exceeded", "Rate limit reached for requests"),
            "unauthorized" => error(401, "invalid_api_key", "Incorrect API key provided"),
            "stall" => Response::new(Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())),
            "cut" => {
                let head = Bytes::copy_from_slice(&pcm[..pcm.len().min(4_801)]);
                // The break comes a moment after the audio, so the audio is on the wire first.
                let stream = futures::stream::iter(vec![Ok(head), Err(std::io::Error::other("cut"))]).then(|item| async move {
                    if item.is_err() {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    item
                });
                Response::new(Body::from_stream(stream))
            }
            _ => {
                // Odd-sized pieces: a sample is split across reads.
                let pieces: Vec<Result<Bytes, std::io::Error>> = pcm.chunks(1_001).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
                Response::new(Body::from_stream(futures::stream::iter(pieces)))
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// WebSocket helpers
// -------------------------------------------------------------------------------------------------

/// What a WebSocket fake's handler gets: the upgrade, recorded, and the scenario.
async fn upgrade<F, Fut>(ws: WebSocketUpgrade, rec: Recorder, uri: Uri, headers: HeaderMap, refuse: Option<Response>, run: F) -> Response
where
    F: FnOnce(WebSocket, Recorder, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let r = recorded(&uri, &headers, &Bytes::new());
    let path = r.path.clone();
    rec.record(r);
    if let Some(refusal) = refuse {
        return refusal;
    }
    ws.on_upgrade(move |socket| run(socket, rec, path)).into_response()
}

/// The next text message from the client (recorded), `None` when the socket closed.
async fn recv_text(socket: &mut WebSocket, rec: &Recorder, path: &str) -> Option<String> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(t)) => {
                rec.record(ws_recorded(path, t.as_str()));
                return Some(t.to_string());
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn send_json(socket: &mut WebSocket, v: Value) -> bool {
    socket.send(Message::text(v.to_string())).await.is_ok()
}

// -------------------------------------------------------------------------------------------------
// ElevenLabs: WebSocket stream-input, base64 audio with character alignment
// -------------------------------------------------------------------------------------------------

pub mod elevenlabs {
    use super::*;

    /// Start the fake; returns its base URL (`http://…`, as a test config writes it) and its recorder.
    pub async fn start() -> (String, Recorder) {
        let recorder = Recorder::default();
        let app =
            axum::Router::new().route("/v1/text-to-speech/{voice}/stream-input", axum::routing::get(handle)).with_state(recorder.clone());
        let addr: SocketAddr = spawn(app).await;
        (format!("http://{addr}"), recorder)
    }

    async fn handle(ws: WebSocketUpgrade, State(rec): State<Recorder>, uri: Uri, headers: HeaderMap) -> Response {
        let voice = uri.path().split('/').nth(3).unwrap_or("ok").to_string();
        let rate: u32 = query_param(uri.query().unwrap_or_default(), "output_format")
            .and_then(|f| f.strip_prefix("pcm_").and_then(|r| r.parse().ok()))
            .unwrap_or(0);
        let refuse = match voice.as_str() {
            "rate_limited" => Some(json_response(429, json!({"detail": {"status": "too_many_concurrent_requests"}}))),
            _ if rate == 0 => Some(json_response(422, json!({"detail": "output_format must be pcm_*"}))),
            _ => None,
        };
        let key = headers.get("xi-api-key").and_then(|k| k.to_str().ok()).unwrap_or_default().to_string();
        upgrade(ws, rec, uri, headers, refuse, move |socket, rec, path| session(socket, rec, path, voice, rate, key)).await
    }

    /// ElevenLabs' alignment of `text` whose audio starts `lead_ms` into the message: characters
    /// with start times and durations (spaces take no time), in ms relative to the message.
    fn alignment(text: &str, lead_ms: f64, durations_field: &str) -> Value {
        let (mut chars, mut starts, mut durations) = (Vec::new(), Vec::new(), Vec::new());
        let mut t = lead_ms;
        for c in text.chars() {
            let d = if c.is_whitespace() { 0.0 } else { f64::from(MS_PER_CHAR) };
            chars.push(c.to_string());
            starts.push(t);
            durations.push(d);
            t += d;
        }
        json!({"chars": chars, "charStartTimesMs": starts, durations_field: durations})
    }

    async fn session(mut socket: WebSocket, rec: Recorder, path: String, voice: String, rate: u32, key: String) {
        // The first message opens the stream with a single space.
        let Some(first) = recv_text(&mut socket, &rec, &path).await else { return };
        let first: Value = serde_json::from_str(&first).unwrap_or_default();
        if first["text"] != " " {
            let _ =
                send_json(&mut socket, json!({"message": "the first message must be a space", "error": "invalid_request", "code": 1008}))
                    .await;
            let _ =
                socket.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: 1008, reason: "bad first message".into() }))).await;
            return;
        }
        match voice.as_str() {
            "unauthorized" => {
                let message = format!("Invalid API key: {key}");
                let _ = send_json(&mut socket, json!({"message": message, "error": "invalid_api_key", "code": 1008})).await;
                let _ =
                    socket.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: 1008, reason: "Invalid API key".into() }))).await;
                return;
            }
            "stall" => {
                while recv_text(&mut socket, &rec, &path).await.is_some() {}
                return;
            }
            _ => {}
        }
        loop {
            let Some(msg) = recv_text(&mut socket, &rec, &path).await else { return };
            let msg: Value = serde_json::from_str(&msg).unwrap_or_default();
            let text = msg["text"].as_str().unwrap_or_default().to_string();
            if text.is_empty() {
                // End of input: the rest, then isFinal, then close.
                let _ = send_json(&mut socket, json!({"isFinal": true})).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            if text == " " {
                continue; // keepalive
            }
            if voice == "malformed" {
                let _ = socket.send(Message::text("{not json")).await;
                let _ = send_json(&mut socket, json!({"surprise": 1})).await;
                let _ = send_json(&mut socket, json!({"audio": 42})).await;
                let _ = send_json(&mut socket, json!({"audio": "%%% not base64"})).await;
                let _ = socket.send(Message::Binary(Bytes::from_static(b"\x00\x01"))).await;
                continue;
            }
            // Two audio messages per text: the first with LEAD_MS of silence before its words, the
            // second's alignment relative to its own start (and spelled the older way).
            let words: Vec<&str> = text.split_inclusive(char::is_whitespace).collect();
            let (head, tail) = (words[..words.len() / 2].concat(), words[words.len() / 2..].concat());
            let mut first_pcm = vec![0u8; (LEAD_MS as u32 * rate / 1000 * 2) as usize];
            first_pcm.extend(pcm_for(&head, rate));
            let first =
                json!({"audio": B64.encode(&first_pcm), "isFinal": null, "alignment": alignment(&head, LEAD_MS, "charDurationsMs")});
            let second = json!({"audio": B64.encode(pcm_for(&tail, rate)), "isFinal": null,
                "alignment": alignment(&tail, 0.0, "charsDurationsMs"), "normalizedAlignment": null});
            if voice == "cut" {
                let _ = send_json(&mut socket, first).await;
                return; // the connection drops without a close
            }
            if !(send_json(&mut socket, first).await && send_json(&mut socket, second).await) {
                return;
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Cartesia: WebSocket /tts/websocket, contexts, base64 chunks, word timestamps in seconds
// -------------------------------------------------------------------------------------------------

pub mod cartesia {
    use std::collections::HashMap;

    use super::*;

    /// Start the fake; returns its base URL and its recorder. Under `/busy` (a base URL ending in
    /// it) every upgrade is refused with 429. A socket idle for [`IDLE_CLOSE`] is closed (the real
    /// vendor waits a minute or more).
    pub async fn start() -> (String, Recorder) {
        let recorder = Recorder::default();
        let app = axum::Router::new()
            .route("/tts/websocket", axum::routing::get(handle))
            .route("/busy/tts/websocket", axum::routing::get(busy))
            .with_state(recorder.clone());
        let addr: SocketAddr = spawn(app).await;
        (format!("http://{addr}"), recorder)
    }

    async fn busy(ws: WebSocketUpgrade, State(rec): State<Recorder>, uri: Uri, headers: HeaderMap) -> Response {
        let refuse = json_response(429, json!({"error": "Too many concurrent connections"}));
        upgrade(ws, rec, uri, headers, Some(refuse), |_, _, _| async {}).await
    }

    async fn handle(ws: WebSocketUpgrade, State(rec): State<Recorder>, uri: Uri, headers: HeaderMap) -> Response {
        let refuse = headers.get("x-api-key").is_none().then(|| json_response(401, json!({"error": "no API key"})));
        let key = headers.get("x-api-key").and_then(|k| k.to_str().ok()).unwrap_or_default().to_string();
        upgrade(ws, rec, uri, headers, refuse, move |socket, rec, path| session(socket, rec, path, key)).await
    }

    pub const IDLE_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

    async fn session(mut socket: WebSocket, rec: Recorder, path: String, key: String) {
        // Audio made so far per context: timestamps count from a context's start.
        let mut context_ms: HashMap<String, f64> = HashMap::new();
        loop {
            let Ok(text) = tokio::time::timeout(IDLE_CLOSE, recv_text(&mut socket, &rec, &path)).await else {
                let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: 1000, reason: "idle".into() }))).await;
                return;
            };
            let Some(text) = text else { return };
            let msg: Value = serde_json::from_str(&text).unwrap_or_default();
            let context_id = msg["context_id"].as_str().unwrap_or_default().to_string();
            if msg["cancel"] == true {
                continue;
            }
            let transcript = msg["transcript"].as_str().unwrap_or_default().to_string();
            if transcript.is_empty() && msg["continue"] == false {
                let _ = send_json(&mut socket, json!({"type": "done", "done": true, "status_code": 206, "context_id": context_id})).await;
                continue;
            }
            let format = &msg["output_format"];
            let rate = format["sample_rate"].as_u64().unwrap_or(0) as u32;
            if format["container"] != "raw" || format["encoding"] != "pcm_s16le" || rate == 0 {
                let error = json!({"type": "error", "done": true, "title": "Invalid output format", "message": "raw pcm_s16le only",
                    "error_code": "invalid_output_format", "status_code": 400, "context_id": context_id});
                let _ = send_json(&mut socket, error).await;
                continue;
            }
            match msg["voice"]["id"].as_str().unwrap_or("ok") {
                "rate_limited" => {
                    let error = json!({"type": "error", "done": true, "title": "Too many requests", "message": "Concurrency limit reached",
                        "error_code": "rate_limited", "status_code": 429, "context_id": context_id});
                    let _ = send_json(&mut socket, error).await;
                    continue;
                }
                "unauthorized" => {
                    // The older error shape, echoing the key as a careless vendor might.
                    let error = json!({"type": "error", "done": true, "error": format!("Invalid API key {key}"), "status_code": 401});
                    let _ = send_json(&mut socket, error).await;
                    continue;
                }
                "stall" => continue,
                "malformed" => {
                    let _ = socket.send(Message::text("{not json")).await;
                    let _ = send_json(&mut socket, json!({"type": "surprise", "context_id": context_id})).await;
                    let _ = send_json(&mut socket, json!({"type": "chunk", "data": 42, "context_id": context_id})).await;
                    let _ = send_json(&mut socket, json!({"type": "timestamps", "word_timestamps": "x", "context_id": context_id})).await;
                    let _ = send_json(&mut socket, json!([1, 2, 3])).await;
                    continue;
                }
                _ => {}
            }
            let offset = *context_ms.get(&context_id).unwrap_or(&0.0);
            let mut pcm = vec![0u8; (LEAD_MS as u32 * rate / 1000 * 2) as usize];
            pcm.extend(pcm_for(&transcript, rate));
            let length_ms = (pcm.len() / 2) as f64 * 1000.0 / f64::from(rate);
            context_ms.insert(context_id.clone(), offset + length_ms);
            let half = (pcm.len() / 2) & !1;
            let chunk = |bytes: &[u8]| json!({"type": "chunk", "data": B64.encode(bytes), "done": false, "status_code": 206, "step_time": 12, "context_id": context_id});
            if msg["voice"]["id"] == "cut" {
                let _ = send_json(&mut socket, chunk(&pcm[..half])).await;
                return; // the connection drops without a close
            }
            let (words, starts, ends) = word_seconds(&transcript, offset);
            let stamps = json!({"type": "timestamps", "done": false, "status_code": 206, "context_id": context_id,
                "word_timestamps": {"words": words, "start": starts, "end": ends}});
            let flushed = json!({"type": "flush_done", "done": false, "flush_done": true, "flush_id": 1, "status_code": 206, "context_id": context_id});
            let phonemes = json!({"type": "phoneme_timestamps", "done": false, "context_id": context_id, "phoneme_timestamps": {"phonemes": [], "start": [], "end": []}});
            for m in [chunk(&pcm[..half]), stamps, phonemes, chunk(&pcm[half..]), flushed] {
                if !send_json(&mut socket, m).await {
                    return;
                }
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Deepgram Aura: WebSocket /v1/speak, Speak/Flush/Clear/Close in, binary PCM and JSON out
// -------------------------------------------------------------------------------------------------

pub mod deepgram {
    use super::*;

    /// Start the fake; returns its base URL and its recorder. The scenario is the `model`.
    pub async fn start() -> (String, Recorder) {
        let recorder = Recorder::default();
        let app = axum::Router::new().route("/v1/speak", axum::routing::get(handle)).with_state(recorder.clone());
        let addr: SocketAddr = spawn(app).await;
        (format!("http://{addr}"), recorder)
    }

    async fn handle(ws: WebSocketUpgrade, State(rec): State<Recorder>, uri: Uri, headers: HeaderMap) -> Response {
        let query = uri.query().unwrap_or_default().to_string();
        let model = query_param(&query, "model").unwrap_or_default();
        let rate: u32 = query_param(&query, "sample_rate").and_then(|r| r.parse().ok()).unwrap_or(24_000);
        let err = |status: u16, code: &str, message: &str| {
            json_response(status, json!({"err_code": code, "err_msg": message, "request_id": "r-1"}))
        };
        let refuse = match model.as_str() {
            "rate_limited" => Some(err(429, "TOO_MANY_REQUESTS", "Too many requests")),
            "unauthorized" => Some(err(401, "INVALID_AUTH", "Invalid credentials")),
            _ if query_param(&query, "encoding").as_deref() != Some("linear16") => Some(err(400, "Bad Request", "encoding")),
            _ => None,
        };
        upgrade(ws, rec, uri, headers, refuse, move |socket, rec, path| session(socket, rec, path, model, rate)).await
    }

    async fn session(mut socket: WebSocket, rec: Recorder, path: String, model: String, rate: u32) {
        let metadata = json!({"type": "Metadata", "request_id": "r-1", "model_name": model, "model_version": "1", "model_uuid": "u", "additional_model_uuids": []});
        if !send_json(&mut socket, metadata).await {
            return;
        }
        let mut text = String::new();
        let mut sequence = 0;
        while let Some(msg) = recv_text(&mut socket, &rec, &path).await {
            let msg: Value = serde_json::from_str(&msg).unwrap_or_default();
            match msg["type"].as_str().unwrap_or_default() {
                "Speak" => text.push_str(msg["text"].as_str().unwrap_or_default()),
                "Flush" => {
                    let pcm = pcm_for(&std::mem::take(&mut text), rate);
                    match model.as_str() {
                        "stall" => continue,
                        "malformed" => {
                            let _ = socket.send(Message::text("{not json")).await;
                            let _ = send_json(&mut socket, json!({"type": "Surprise"})).await;
                            let _ = send_json(&mut socket, json!({"flushed": true})).await;
                            let _ = send_json(&mut socket, json!("Flushed")).await;
                            let _ = send_json(&mut socket, json!({"type": 7})).await;
                            continue;
                        }
                        "cut" => {
                            let _ = socket.send(Message::Binary(Bytes::copy_from_slice(&pcm[..pcm.len() / 2]))).await;
                            return;
                        }
                        // The audio comes a second late: a client that gave up and sent Clear gets
                        // it anyway, before Cleared (frames already in flight).
                        "slow" => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                        _ => {}
                    }
                    // Frames of odd sizes, then Flushed.
                    for piece in pcm.chunks(4_001) {
                        if socket.send(Message::Binary(Bytes::copy_from_slice(piece))).await.is_err() {
                            return;
                        }
                    }
                    let _ = send_json(&mut socket, json!({"type": "Flushed", "sequence_id": sequence})).await;
                    sequence += 1;
                }
                "Clear" => {
                    text.clear();
                    let _ = send_json(&mut socket, json!({"type": "Cleared", "sequence_id": sequence})).await;
                }
                "Close" => {
                    let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: 1000, reason: "".into() }))).await;
                    return;
                }
                _ => {
                    let _ = send_json(&mut socket, json!({"type": "Warning", "description": "unknown message", "code": "UNKNOWN"})).await;
                }
            }
        }
    }
}
