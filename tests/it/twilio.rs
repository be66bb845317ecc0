//! A test client that speaks Twilio Media Streams against `/v1/phone/twilio`: μ-law fixture audio in,
//! μ-law replies with a mark after each chunk, `clear` on barge-in, and the assistant's history cut
//! to what the echoed marks say the caller heard. Fake STT and TTS, the fake OpenAI vendor behind the
//! gateway (so the model's requests, history included, can be read back). Tests of timing serve the
//! call in this process over an in-memory socket, where paused time is exact.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use voxgate::session::{SessionStart, VoiceEngines};
use voxgate::transport::twilio::{self, Admit, Admitted};

use crate::support::{self, start_voxgate, vendors, Recorder, FAKE_ECHO};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn setup() -> (String, Recorder, std::sync::Arc<voxgate::http::AppState>) {
    let (vendor_url, recorder) = vendors::openai::start().await;
    let vendor = support::vendor_long(&vendor_url);
    let config = format!(
        r#"
{vendor}[routes.phone]
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
    let mut down = voxgate::audio::Resampler::new(16_000, 8_000).unwrap();
    down.process(&pcm16k, &mut pcm8k);
    pcm8k.extend(vec![0i16; trailing_silence_ms * 8]);
    let ulaw: Vec<u8> = pcm8k.iter().map(|&s| voxgate::audio::ulaw_encode(s)).collect();
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

// Real time: the reply is paced at real time and the marks are echoed as it plays (about a second).
#[tokio::test]
async fn the_history_keeps_exactly_the_chunks_whose_marks_came_back() {
    let (base, recorder, _) = setup().await;
    let mut ws = connect(&base).await;
    send(&mut ws, start_frame("MZ6", "phone")).await;
    send_audio(&mut ws, "MZ6", &ulaw_frames("table_booking", 1_000), 1).await;

    // The caller hears the first 600 ms ("Certainly. ": 10 characters at 60 ms) and no more: only
    // the first 30 marks come back. Listen on until 1.2 s were sent, so that the session's own
    // clock says more than a second played.
    let (mut media, mut marks, mut held) = (0usize, 0usize, Vec::new());
    while media < 60 {
        let f = next(&mut ws).await.expect("call open");
        match f["event"].as_str().unwrap() {
            "media" => media += 1,
            "mark" => {
                marks += 1;
                if marks <= 30 {
                    send(&mut ws, json!({"event": "mark", "streamSid": "MZ6", "mark": {"name": f["mark"]["name"]}})).await;
                } else {
                    held.push(f["mark"]["name"].clone());
                }
            }
            other => panic!("unexpected {other}: {f}"),
        }
    }
    // The caller talks over the agent, faster than real time (the worst case for the session's
    // queue: the whole utterance and its trailing silence may wait there behind the barge-in).
    send_audio(&mut ws, "MZ6", &ulaw_frames("opening_hours", 1_000), 1_000).await;
    loop {
        let f = next(&mut ws).await.expect("call open");
        match f["event"].as_str().unwrap() {
            "clear" => break,
            "media" => media += 1,
            "mark" => {
                marks += 1;
                held.push(f["mark"]["name"].clone());
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(media, marks, "every chunk sent has its mark");
    // As Twilio does on `clear`: every pending mark comes back, though none of that audio played.
    for name in held {
        send(&mut ws, json!({"event": "mark", "streamSid": "MZ6", "mark": {"name": name}})).await;
    }

    assert!(support::eventually(|| recorder.count() == 2).await, "the second turn reached the model");
    let request = recorder.last().body;
    let messages = request["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{request}");
    let kept = messages[1]["content"].as_str().unwrap();
    // Exactly the 30 echoed chunks: the first sentence, though 1.2 s and more had been sent.
    assert_eq!(kept.trim(), vendors::openai::LONG[0].trim(), "{request}");
    let sent_chars = media * 20 / 60;
    assert!(kept.chars().filter(|c| !c.is_whitespace()).count() < sent_chars, "kept {kept:?} of {media} frames sent");
    send(&mut ws, json!({"event": "stop", "streamSid": "MZ6"})).await;
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

async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a frame within 20 s") {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
            // Reply audio may still be on its way when the call is closed.
            Some(Ok(Message::Text(_))) => continue,
            other => panic!("expected a close with a code, got {other:?}"),
        }
    }
}

// Real time: the session's end waits for the ledger, which works on its own thread.
#[tokio::test]
async fn bad_input_before_the_call_starts_closes_with_a_code_and_a_reason() {
    let (base, _, state) = setup().await;
    let mut wrong_format = start_frame("MZ4", "phone");
    wrong_format["start"]["mediaFormat"]["encoding"] = json!("audio/l16");
    let cases = [
        (
            Message::text(json!({"event": "media", "streamSid": "MZ3", "media": {"payload": "AAAA"}}).to_string()),
            1002,
            "`media` arrived before `start`",
        ),
        (Message::text(json!({"type": "session.update"}).to_string()), 1003, "not a Twilio Media Streams frame: no `event` field"),
        (Message::text("hello"), 1003, "not a Twilio Media Streams frame: expected value"),
        (Message::binary(vec![0u8; 160]), 1003, "not a Twilio Media Streams frame: a binary frame"),
        (Message::text(wrong_format.to_string()), 1003, "media format audio/l16 at 8000 Hz, 1 channel(s) is not supported"),
        (Message::text(start_frame("MZ5", "no-such-route").to_string()), 1008, "refused: model \"no-such-route\" is not a route or model"),
    ];
    for (frame, code, reason) in cases {
        let mut ws = connect(&base).await;
        ws.send(frame).await.unwrap();
        let (got_code, got_reason) = expect_close(&mut ws).await;
        assert_eq!(got_code, code, "{got_reason}");
        assert!(got_reason.starts_with(reason), "{got_reason:?} should start with {reason:?}");
    }
    // None of them became a session.
    let sessions: Value = reqwest::get(format!("{base}/v1/sessions")).await.unwrap().json().await.unwrap();
    assert_eq!(sessions["data"].as_array().unwrap().len(), 0, "{sessions}");
    assert!(state.sessions.is_empty());
}

// Real time: the session's end waits for the ledger, which works on its own thread.
#[tokio::test]
async fn bad_input_mid_call_closes_the_call_with_a_reason_and_the_session_is_billed() {
    let (base, _, state) = setup().await;
    let cases = [
        (
            json!({"event": "media", "streamSid": "MZ7", "media": {"payload": "***not base64***"}}),
            1007,
            "invalid base64 in `media.payload`: ",
        ),
        (
            json!({"event": "media", "streamSid": "MZ-other", "media": {"payload": "AAAA"}}),
            1002,
            "`media` for unknown stream id \"MZ-other\"; this call's is \"MZ7\"",
        ),
        (json!({"event": "mark", "streamSid": "MZ-other", "mark": {"name": "x"}}), 1002, "`mark` for unknown stream id \"MZ-other\""),
        (json!({"event": "dtmf", "streamSid": "MZ-other", "dtmf": {"digit": "1"}}), 1002, "`dtmf` for unknown stream id \"MZ-other\""),
        (json!({"type": "input_audio_buffer.append", "audio": "AAAA"}), 1003, "not a Twilio Media Streams frame: no `event` field"),
        (
            json!({"event": "media", "streamSid": "MZ7", "media": {"track": "inbound"}}),
            1003,
            "malformed `media` frame: missing field `payload`",
        ),
        (start_frame("MZ7", "phone"), 1002, "a second `start` in one call"),
    ];
    let silence = B64.encode([0xffu8; 160]);
    for (frame, code, reason) in &cases {
        let mut ws = connect(&base).await;
        send(&mut ws, start_frame("MZ7", "phone")).await;
        // The call is up and takes audio; then the bad frame.
        for n in 0..5 {
            send(
                &mut ws,
                json!({"event": "media", "streamSid": "MZ7", "media": {"track": "inbound", "chunk": n.to_string(), "payload": silence}}),
            )
            .await;
        }
        send(&mut ws, frame.clone()).await;
        let (got_code, got_reason) = expect_close(&mut ws).await;
        assert_eq!(got_code, *code, "{got_reason}");
        assert!(got_reason.starts_with(reason), "{got_reason:?} should start with {reason:?}");
    }
    // An event Twilio may add one day is not bad input: the call goes on and answers a key press.
    let mut ws = connect(&base).await;
    send(&mut ws, start_frame("MZ8", "phone")).await;
    send(&mut ws, json!({"event": "transcription", "streamSid": "MZ8", "transcription": {}})).await;
    send(&mut ws, json!({"event": "dtmf", "streamSid": "MZ8", "dtmf": {"digit": "1"}})).await;
    assert_eq!(next(&mut ws).await.expect("the call goes on")["event"], "media");
    drop(ws);

    // Every call's session ended, and the ledger billed each one, as a caller who left.
    assert!(support::eventually(|| state.sessions.is_empty()).await, "every call's tasks ended");
    let mut records = Vec::new();
    for _ in 0..100 {
        let sessions: Value = reqwest::get(format!("{base}/v1/sessions")).await.unwrap().json().await.unwrap();
        records = sessions["data"].as_array().unwrap().clone();
        if records.len() == cases.len() + 1 && records.iter().all(|r| r["open"] == false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records.len(), cases.len() + 1, "{records:?}");
    for r in &records {
        assert_eq!(r["protocol"], "twilio", "{r}");
        assert_eq!(r["open"], false, "{r}");
        assert_eq!(r["close_reason"], "client_closed", "{r}");
        assert!(r["billed_seconds"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["amount_usd"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{r}");
    }
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "voxgate_realtime_sessions_active 0"), "{metrics}");
}

// Real time: the fake vendor answers over loopback.
#[tokio::test]
async fn custom_parameters_choose_the_instructions_and_the_voice() {
    let (base, recorder, _) = setup().await;
    let mut ws = connect(&base).await;
    let mut start = start_frame("MZ9", "phone");
    // The fake TTS speaks a 1 kHz tone for this voice (220 Hz otherwise).
    start["start"]["customParameters"] = json!({"model": "phone", "instructions": "Answer like a pirate.", "voice": "hz-1000"});
    send(&mut ws, start).await;
    send(&mut ws, json!({"event": "dtmf", "streamSid": "MZ9", "dtmf": {"digit": "4"}})).await;
    assert!(support::eventually(|| recorder.count() == 1).await);
    let request = recorder.last().body;
    assert_eq!(request["model"], "long", "the route of the `model` parameter: {request}");
    assert_eq!(request["messages"][0], json!({"role": "system", "content": "Answer like a pirate."}), "{request}");
    assert!(request["messages"][1]["content"].as_str().unwrap().contains("pressed 4"), "{request}");

    let mut audio = Vec::new();
    while audio.len() < 25 * 160 {
        let f = next(&mut ws).await.expect("call open");
        if f["event"] == "media" {
            audio.extend(B64.decode(f["media"]["payload"].as_str().unwrap()).unwrap());
        }
    }
    let pcm: Vec<i16> = audio.iter().map(|&b| voxgate::audio::ulaw_decode(b)).collect();
    let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let hz = crossings as f64 / 2.0 / (pcm.len() as f64 / 8_000.0);
    assert!((900.0..1_100.0).contains(&hz), "the reply is a {hz:.0} Hz tone: not the call's voice");
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

/// The call's end of an in-memory WebSocket: what the test sends arrives as the call's frames, and
/// what the call sends goes to the test.
struct Socket {
    from_test: UnboundedReceiver<Result<axum::extract::ws::Message, Infallible>>,
    to_test: UnboundedSender<axum::extract::ws::Message>,
}

impl Stream for Socket {
    type Item = Result<axum::extract::ws::Message, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.from_test.poll_next_unpin(cx)
    }
}

impl Sink<axum::extract::ws::Message> for Socket {
    type Error = futures::channel::mpsc::SendError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.to_test.poll_ready_unpin(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: axum::extract::ws::Message) -> Result<(), Self::Error> {
        self.to_test.start_send_unpin(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.to_test.poll_flush_unpin(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.to_test.poll_close_unpin(cx)
    }
}

/// A call served in this process on fake engines (the fake echo model), unmetered.
struct LocalCall {
    to_call: UnboundedSender<Result<axum::extract::ws::Message, Infallible>>,
    from_call: UnboundedReceiver<axum::extract::ws::Message>,
    engines: Arc<VoiceEngines>,
}

fn local_config() -> String {
    format!(
        r#"{FAKE_ECHO}[routes.default]
models = ["echo"]
[stt]
engine = "fake"
script = ["fixtures/audio/table_booking.json"]
latency_ms = 40
[tts]
engine = "fake"
ttfb_ms = 20
"#
    )
}

/// The session's `output_lead_ms` by default: how far outbound audio may run ahead of real time.
const LEAD_MS: i64 = 100;

impl LocalCall {
    fn start(stream_sid: &str) -> LocalCall {
        let config = voxgate::config::Config::from_toml(&local_config(), &|_| None).expect("test config is valid");
        assert_eq!(i64::try_from(config.realtime.output_lead_ms).unwrap(), LEAD_MS);
        let gateway = Arc::new(voxgate::llm::router::Gateway::new(&config).unwrap());
        let engines = Arc::new(VoiceEngines::from_config(&config, gateway).unwrap());
        let admit: Admit = Arc::new(|params: HashMap<String, String>| {
            Box::pin(async move {
                let route = params.get("model").cloned().unwrap_or_else(|| "default".into());
                Ok(Admitted {
                    session: SessionStart { session_id: "sess_local".into(), route, key: "test".into(), limits: None },
                    meter: None,
                })
            })
        });
        let (to_call, from_test) = unbounded();
        let (to_test, from_call) = unbounded();
        tokio::spawn(twilio::serve(Socket { from_test, to_test }, engines.clone(), admit, tokio_util::sync::CancellationToken::new()));
        let call = LocalCall { to_call, from_call, engines };
        call.send(start_frame(stream_sid, "default"));
        call
    }

    fn send(&self, v: Value) {
        self.to_call.unbounded_send(Ok(axum::extract::ws::Message::Text(v.to_string().into()))).unwrap();
    }

    /// The call's next text frame; `None` once it closed. A call that goes quiet fails the test (in
    /// paused time at once) instead of hanging it.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.from_call.next()).await.expect("a frame within 60 s");
            match message? {
                axum::extract::ws::Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                axum::extract::ws::Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// A counter of the call's metrics, 0 when it was never counted.
    fn counter(&self, series: &str) -> f64 {
        let text = self.engines.gateway.accounts.metrics.render();
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }
}

// Paused time: the actor's playback clock decides when each frame leaves.
#[tokio::test(start_paused = true)]
async fn outbound_media_is_paced_at_real_time() {
    let mut call = LocalCall::start("MZ10");
    // The reply to a key press: "You said: (The caller pressed 7 on the phone keypad.)", 2.6 s of speech.
    call.send(json!({"event": "dtmf", "streamSid": "MZ10", "dtmf": {"digit": "7"}}));
    let mut sent_at = Vec::new();
    while sent_at.len() < 120 {
        let f = call.next().await.expect("call open");
        if f["event"] == "media" {
            sent_at.push(tokio::time::Instant::now());
        }
    }
    let first = sent_at[0];
    for (k, at) in sent_at.iter().enumerate() {
        let at_ms = i64::try_from(at.duration_since(first).as_millis()).unwrap();
        let audio_ms = 20 * k as i64;
        // Never ahead of the caller's ear by more than the lead and one delta's later frames (a
        // delta carries up to 60 ms): a `clear` silences the caller at once.
        assert!(audio_ms - at_ms <= LEAD_MS + 40, "frame {k} ({audio_ms} ms into the reply) left at {at_ms} ms");
        // Never behind it: no gaps.
        assert!(at_ms <= audio_ms, "frame {k} ({audio_ms} ms into the reply) left late, at {at_ms} ms");
    }
    // 2.4 s of audio took 2.3 s to send, not a burst.
    assert!(sent_at[119].duration_since(first) >= Duration::from_millis(119 * 20 - 100));
}

// Paused time: the burst arrives at one instant; only the session's own pace can make room.
#[tokio::test(start_paused = true)]
async fn a_burst_of_caller_audio_waits_for_the_session_instead_of_being_dropped() {
    let mut call = LocalCall::start("MZ11");
    let frames = ulaw_frames("table_booking", 1_000);
    assert!(frames.len() > 256 + 50, "more audio than the session's queue holds: {} frames", frames.len());
    for (n, f) in frames.iter().enumerate() {
        call.send(
            json!({"event": "media", "streamSid": "MZ11", "media": {"track": "inbound", "chunk": n.to_string(), "payload": B64.encode(f)}}),
        );
    }
    // The whole utterance was heard: its reply comes back.
    loop {
        let f = call.next().await.expect("call open");
        if f["event"] == "media" {
            break;
        }
    }
    assert_eq!(call.counter("voxgate_audio_frames_dropped_total{stage=\"input\"}"), 0.0, "no frame of the burst was dropped");
    call.send(json!({"event": "stop", "streamSid": "MZ11"}));
    while call.next().await.is_some() {}
}
