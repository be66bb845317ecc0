//! `bench pipeline --stt-vendor` and `--tts-vendor`: hosted-style speech vendors in the bench
//! process.
//!
//! `--stt-vendor`: a speech-to-text vendor, so the
//! server under load hears through its Deepgram adapter over a real WebSocket per call instead of
//! the in-process fake. It speaks Deepgram's live format as far as the adapter uses it: binary PCM
//! in; an interim `Results` each second of an utterance; on `Finalize`, after the bench's STT latency, one final `Results` (`from_finalize`) with the
//! utterance's words in seconds of the audio received; `KeepAlive` taken; `CloseStream` answered
//! with `Metadata` and a close. The same latency as the in-process fake, so the two runs differ
//! only by the adapter and its socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

/// Which hosted TTS adapter `--tts-vendor` speaks through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsVendor {
    Openai,
    Elevenlabs,
}

impl std::str::FromStr for TtsVendor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "openai" => Ok(TtsVendor::Openai),
            "elevenlabs" => Ok(TtsVendor::Elevenlabs),
            _ => Err(format!("unknown TTS vendor {s:?}: openai or elevenlabs")),
        }
    }
}

#[derive(Clone)]
struct Vendor {
    words: Arc<Vec<String>>,
    latency: Duration,
    precise: bool,
    finals: Arc<AtomicU64>,
}

/// A running fake vendor: its address and how many transcripts it sent.
pub struct FakeDeepgram {
    pub addr: SocketAddr,
    finals: Arc<AtomicU64>,
}

impl FakeDeepgram {
    pub fn finals(&self) -> u64 {
        self.finals.load(Ordering::Relaxed)
    }
}

/// Starts the vendor on loopback; every utterance is heard as `text`, `latency` after `Finalize`.
pub async fn start(text: &str, latency: Duration, precise: bool) -> anyhow::Result<FakeDeepgram> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let finals = Arc::new(AtomicU64::new(0));
    let vendor =
        Vendor { words: Arc::new(text.split_whitespace().map(str::to_string).collect()), latency, precise, finals: finals.clone() };
    let router = axum::Router::new().route("/v1/listen", get(upgrade)).with_state(vendor);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(FakeDeepgram { addr, finals })
}

async fn upgrade(State(vendor): State<Vendor>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve(vendor, socket))
}

async fn serve(vendor: Vendor, mut socket: WebSocket) {
    // Samples received, and where the utterance being heard began.
    let (mut received, mut began) = (0u64, 0u64);
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Binary(audio) => {
                received += audio.len() as u64 / 2;
                // An interim result each second of an utterance, as `interim_results=true` gives.
                let second = 16_000;
                if (received - began) / second > (received - began - audio.len() as u64 / 2) / second {
                    let interim = serde_json::json!({"type": "Results", "is_final": false, "speech_final": false,
                        "channel": {"alternatives": [{"transcript": "", "words": []}]}});
                    if socket.send(Message::Text(interim.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
            Message::Text(text) if text.contains("\"Finalize\"") => {
                crate::fake_clock::wait(vendor.latency, vendor.precise).await;
                let (from, to) = (began as f64 / 16_000.0, received as f64 / 16_000.0);
                let step = (to - from) / vendor.words.len().max(1) as f64;
                let words: Vec<serde_json::Value> = vendor
                    .words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        let start = from + step * i as f64;
                        serde_json::json!({"word": w, "punctuated_word": w, "start": start, "end": start + step, "confidence": 0.9})
                    })
                    .collect();
                let results = serde_json::json!({"type": "Results", "is_final": true, "speech_final": false, "from_finalize": true,
                    "channel": {"alternatives": [{"transcript": vendor.words.join(" "), "confidence": 0.9, "words": words}]}});
                began = received;
                if socket.send(Message::Text(results.to_string().into())).await.is_err() {
                    return;
                }
                vendor.finals.fetch_add(1, Ordering::Relaxed);
            }
            Message::Text(text) if text.contains("\"CloseStream\"") => {
                let metadata = serde_json::json!({"type": "Metadata", "request_id": "bench", "duration": received as f64 / 16_000.0});
                let _ = socket.send(Message::Text(metadata.to_string().into())).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

/// `--tts-vendor`: OpenAI's `POST /v1/audio/speech` with `response_format: "pcm"`, so the server
/// speaks through its OpenAI adapter, one request per chunk: after `ttfb`, the chunk's audio (24 kHz
/// PCM16, 60 ms of a quiet tone per non-blank character, as the in-process fake makes) in 20 ms
/// pieces of a chunked body.
pub async fn start_tts(ttfb: Duration, precise: bool) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route("/v1/audio/speech", axum::routing::post(speech)).with_state((ttfb, precise));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

async fn speech(State((ttfb, precise)): State<(Duration, bool)>, body: axum::body::Bytes) -> Response {
    let text =
        serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["input"].as_str().map(str::to_string)).unwrap_or_default();
    let ms = (text.chars().filter(|c| !c.is_whitespace()).count() as u64 * 60).max(20);
    let samples = (ms * 24) as usize;
    let pcm: Vec<u8> = (0..samples).flat_map(|i| (((i as f64 * 0.0576).sin() * 2_000.0) as i16).to_le_bytes()).collect();
    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> =
        pcm.chunks(960).map(|c| Ok(axum::body::Bytes::copy_from_slice(c))).collect();
    crate::fake_clock::wait(ttfb, precise).await;
    Response::builder()
        .header("content-type", "audio/pcm")
        .body(axum::body::Body::from_stream(futures::stream::iter(pieces)))
        .unwrap_or_default()
}

/// `--tts-vendor elevenlabs`: ElevenLabs' `stream-input` WebSocket, so the server speaks through
/// its ElevenLabs adapter, one socket per answer. Each text the adapter sends with `flush` is
/// spoken after `ttfb`: 60 ms of a quiet tone per non-blank character (24 kHz PCM16, base64 in
/// JSON), one message per character with its `alignment` (a blank character's alignment goes with
/// the next), as the vendor's `sync_alignment` does. `{"text": ""}` ends the input: the fake sends
/// `isFinal` and closes.
pub async fn start_tts_ws(ttfb: Duration, precise: bool) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route("/v1/text-to-speech/{voice}/stream-input", get(tts_ws_upgrade)).with_state((ttfb, precise));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

async fn tts_ws_upgrade(State((ttfb, precise)): State<(Duration, bool)>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| tts_ws_serve(socket, ttfb, precise))
}

async fn tts_ws_serve(mut socket: WebSocket, ttfb: Duration, precise: bool) {
    use base64::Engine as _;
    const SAMPLES_PER_CHAR: usize = 60 * 24;
    let tone: Vec<u8> = (0..SAMPLES_PER_CHAR).flat_map(|i| (((i as f64 * 0.0576).sin() * 2_000.0) as i16).to_le_bytes()).collect();
    let audio = base64::engine::general_purpose::STANDARD.encode(&tone);
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else { continue };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let said = value["text"].as_str().unwrap_or(" ");
        if said.is_empty() {
            let _ = socket.send(Message::Text(serde_json::json!({"isFinal": true}).to_string().into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        if value["flush"] != true || said.trim().is_empty() {
            continue; // the opening space and keep-alives
        }
        crate::fake_clock::wait(ttfb, precise).await;
        let mut blanks = String::new();
        for c in said.chars() {
            if c.is_whitespace() {
                blanks.push(c);
                continue;
            }
            let mut chars: Vec<String> = blanks.drain(..).map(String::from).collect();
            let mut starts = vec![0.0; chars.len()];
            let mut durations = vec![0.0; chars.len()];
            chars.push(c.to_string());
            starts.push(0.0);
            durations.push(60.0);
            let message = serde_json::json!({"audio": audio, "isFinal": null, "normalizedAlignment": null,
                "alignment": {"chars": chars, "charStartTimesMs": starts, "charDurationsMs": durations}});
            if socket.send(Message::Text(message.to_string().into())).await.is_err() {
                return;
            }
        }
    }
}
