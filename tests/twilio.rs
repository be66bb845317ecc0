//! A test client that speaks Twilio Media Streams against `/v1/phone/twilio`: μ-law fixture audio in,
//! μ-law replies with a mark after each chunk, `clear` on barge-in, and the assistant's history cut
//! to what the echoed marks say the caller heard. Fake STT and TTS, the fake OpenAI vendor behind the
//! gateway (so the model's requests, history included, can be read back).

mod support;

use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{start_voxgate, vendors, Recorder};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn setup() -> (String, Recorder, std::sync::Arc<voxgate::http::AppState>) {
    let (vendor_url, recorder) = vendors::openai::start().await;
    let config = format!(
        r#"
[providers.vendor]
kind = "openai"
base_url = "{vendor_url}"
[[models]]
id = "vendor-long"
provider = "vendor"
upstream = "long"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[routes.phone]
models = ["vendor-long"]
[stt]
engine = "fake"
script = ["fixtures/audio/table_booking.json", "fixtures/audio/opening_hours.json"]
latency_ms = 40
[tts]
engine = "fake"
ttfb_ms = 20
"#
    );
    let (base, state) = start_voxgate(&config, &[]).await;
    (base, recorder, state)
}

async fn connect(base: &str) -> Ws {
    let url = format!("{}/v1/phone/twilio", base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects").0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

fn start_frame(stream_sid: &str, model: &str) -> Value {
    json!({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
        "accountSid": "AC1", "streamSid": stream_sid, "callSid": "CA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"model": model}}})
}

/// A fixture as a phone line carries it: μ-law at 8 kHz in 20 ms (160-byte) frames.
fn ulaw_frames(stem: &str, trailing_silence_ms: usize) -> Vec<Vec<u8>> {
    let mut reader = hound::WavReader::open(format!("{}/fixtures/audio/{stem}.wav", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let pcm16k: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let mut pcm8k = Vec::new();
    let mut down = voxgate::transport::audio::Resampler::new(16_000, 8_000).unwrap();
    down.process(&pcm16k, &mut pcm8k);
    pcm8k.extend(vec![0i16; trailing_silence_ms * 8]);
    let ulaw: Vec<u8> = pcm8k.iter().map(|&s| voxgate::transport::audio::ulaw_encode(s)).collect();
    ulaw.chunks(160).map(<[u8]>::to_vec).collect()
}

/// Sends the frames faster than real time but in bursts the server's input queue (256 events) takes:
/// a real carrier sends one every 20 ms, and a full queue drops audio by design.
async fn send_audio(ws: &mut Ws, stream_sid: &str, frames: &[Vec<u8>], first_chunk: usize) {
    for (i, f) in frames.iter().enumerate() {
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = first_chunk + i;
        send(
            ws,
            json!({"event": "media", "sequenceNumber": (n + 2).to_string(), "streamSid": stream_sid,
            "media": {"track": "inbound", "chunk": n.to_string(), "timestamp": (n * 20).to_string(), "payload": B64.encode(f)}}),
        )
        .await;
    }
}

async fn next(ws: &mut Ws) -> Option<Value> {
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a frame within 20 s") {
        Some(Ok(Message::Text(t))) => Some(serde_json::from_str(&t).unwrap()),
        Some(Ok(Message::Close(_))) | None => None,
        Some(Ok(_)) => Box::pin(next(ws)).await,
        Some(Err(e)) => panic!("socket error: {e}"),
    }
}

// Real time: the reply is paced at real time and the marks are echoed as it plays (about a second).
#[tokio::test]
async fn a_call_gets_ulaw_back_barges_in_gets_clear_and_history_keeps_what_was_heard() {
    let (base, recorder, _) = setup().await;
    let mut ws = connect(&base).await;
    send(&mut ws, json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})).await;
    send(&mut ws, start_frame("MZ1", "phone")).await;
    send_audio(&mut ws, "MZ1", &ulaw_frames("table_booking", 1_000), 1).await;

    // The reply: media then its mark, every time; echo each mark as Twilio does once the audio played.
    let (mut media, mut marks, mut pending_mark) = (0usize, 0usize, false);
    // Let about 800 ms play: more than the first chunk ("Certainly. ", 600 ms of fake speech).
    while media < 40 {
        let f = next(&mut ws).await.expect("call open");
        assert_eq!(f["streamSid"], "MZ1", "{f}");
        match f["event"].as_str().unwrap() {
            "media" => {
                assert!(!pending_mark, "two media frames without a mark between them");
                let payload = B64.decode(f["media"]["payload"].as_str().unwrap()).unwrap();
                assert_eq!(payload.len(), 160, "20 ms of μ-law at 8 kHz");
                media += 1;
                pending_mark = true;
            }
            "mark" => {
                assert!(pending_mark, "a mark without media before it");
                pending_mark = false;
                marks += 1;
                send(&mut ws, json!({"event": "mark", "streamSid": "MZ1", "sequenceNumber": "0", "mark": {"name": f["mark"]["name"]}}))
                    .await;
            }
            other => panic!("unexpected {other}: {f}"),
        }
    }
    // The caller talks over the agent.
    let barge = ulaw_frames("opening_hours", 1_000);
    send_audio(&mut ws, "MZ1", &barge, 1_000).await;
    loop {
        let f = next(&mut ws).await.expect("call open");
        match f["event"].as_str().unwrap() {
            "clear" => break,
            "media" => media += 1,
            "mark" => {
                marks += 1;
                send(&mut ws, json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": f["mark"]["name"]}})).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(media, marks, "every chunk sent has its mark");
    let heard_ms = media * 20;

    // The second turn's request to the model carries the first answer cut to what was heard.
    assert!(support::eventually(|| recorder.count() == 2).await, "the second turn reached the model");
    let request = recorder.last().body;
    let messages = request["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{request}");
    let full: String = vendors::openai::LONG.concat();
    let kept = messages[1]["content"].as_str().unwrap();
    assert!(full.starts_with(kept) && kept.len() < full.len() / 2, "kept {kept:?}");
    // About one character per 60 ms of fake speech was heard: the cut follows the marks, not the whole answer.
    let kept_chars = kept.chars().filter(|c| !c.is_whitespace()).count();
    assert!(kept_chars <= heard_ms / 60 + 12, "kept {kept_chars} characters for {heard_ms} ms heard");
    send(&mut ws, json!({"event": "stop", "sequenceNumber": "9999", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}}))
        .await;
    // The call ends cleanly.
    while next(&mut ws).await.is_some() {}
}

#[tokio::test(start_paused = true)]
async fn dtmf_reaches_the_conversation() {
    let (base, recorder, _) = setup().await;
    let mut ws = connect(&base).await;
    send(&mut ws, start_frame("MZ2", "phone")).await;
    send(&mut ws, json!({"event": "dtmf", "streamSid": "MZ2", "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "7"}}))
        .await;
    assert!(support::eventually(|| recorder.count() == 1).await);
    let request = recorder.last().body;
    assert!(request["messages"][0]["content"].as_str().unwrap().contains("pressed 7"), "{request}");
    let f = next(&mut ws).await.unwrap();
    assert_eq!(f["event"], "media");
}

// Real time: the session's end waits for the ledger, which works on its own thread.
#[tokio::test]
async fn bad_input_closes_cleanly_with_a_reason() {
    let (base, _, state) = setup().await;
    // Media before start.
    let mut ws = connect(&base).await;
    send(&mut ws, json!({"event": "media", "streamSid": "MZ3", "media": {"payload": "AAAA"}})).await;
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert!(frame.reason.contains("before `start`"), "{frame:?}"),
        other => panic!("expected a close, got {other:?}"),
    }
    // Not Twilio at all.
    let mut ws = connect(&base).await;
    send(&mut ws, json!({"type": "session.update"})).await;
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert!(frame.reason.contains("Twilio"), "{frame:?}"),
        other => panic!("expected a close, got {other:?}"),
    }
    // A wrong media format.
    let mut ws = connect(&base).await;
    let mut start = start_frame("MZ4", "phone");
    start["start"]["mediaFormat"]["encoding"] = json!("audio/l16");
    send(&mut ws, start).await;
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert!(frame.reason.contains("not supported"), "{frame:?}"),
        other => panic!("expected a close, got {other:?}"),
    }
    // Invalid base64 and an unknown stream id mid-call: logged and skipped, the call goes on.
    let mut ws = connect(&base).await;
    send(&mut ws, start_frame("MZ5", "phone")).await;
    send(&mut ws, json!({"event": "media", "streamSid": "MZ5", "media": {"payload": "***not base64***"}})).await;
    send(&mut ws, json!({"event": "media", "streamSid": "MZ-other", "media": {"payload": "AAAA"}})).await;
    send(&mut ws, json!({"event": "mark", "streamSid": "MZ5", "mark": {"name": "never-sent"}})).await;
    send(&mut ws, json!({"event": "dtmf", "streamSid": "MZ5", "dtmf": {"digit": "1"}})).await;
    let f = next(&mut ws).await.expect("the call goes on and answers the key press");
    assert_eq!(f["event"], "media");
    drop(ws);
    assert!(support::eventually(|| state.sessions.is_empty()).await, "every call's tasks ended");
}

#[tokio::test]
async fn twiml_points_the_call_at_the_stream() {
    let (base, _, _) = setup().await;
    let client = reqwest::Client::new();
    let r = client.post(format!("{base}/v1/phone/twilio/twiml?model=phone&voice=fake")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/xml"));
    let host = base.trim_start_matches("http://");
    let body = r.text().await.unwrap();
    assert!(body.contains(&format!("<Stream url=\"wss://{host}/v1/phone/twilio\">")), "{body}");
    assert!(body.contains("<Parameter name=\"model\" value=\"phone\"/>"), "{body}");
    let r = client.post(format!("{base}/v1/phone/twilio/twiml")).header("x-forwarded-proto", "http").send().await.unwrap();
    assert!(r.text().await.unwrap().contains(&format!("ws://{host}/v1/phone/twilio")));
}
