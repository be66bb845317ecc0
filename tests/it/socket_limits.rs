//! The limits of a voice connection, over real loopback WebSockets with the server's default
//! settings, in paused time, with the ledger on a clock that follows tokio's (so what a call is
//! billed can be compared to when its client was last heard from): a client that never reads is
//! closed at the outbound byte bound and leaves nothing behind; a peer that stops answering pings
//! is closed within a minute and billed to its last sign of life; a Twilio stream whose media stops
//! is ended; an idle Realtime client is closed; a call that reaches `max_session_ms` gets an `error`
//! and a close.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use voxgate::metering::ledger::{SessionQuery, SessionRecord};

use crate::support::{self, Ws, FAKE_ECHO};

/// 2026-12-01T00:00:00Z, on the ledger's clock, when the test starts.
const T0_MS: i64 = 1_796_083_200_000;

/// The ledger's clock: `T0_MS` plus tokio's time since the test started (paused, it moves only when
/// the runtime has nothing to do). The ledger reads it on its own thread too, so it reads the test
/// runtime's clock through its handle.
struct TokioClock(Instant, tokio::runtime::Handle);

impl voxgate::metering::Clock for TokioClock {
    fn now_unix_ms(&self) -> i64 {
        let _runtime = self.1.enter();
        T0_MS + self.0.elapsed().as_millis() as i64
    }
}

/// The ledger's time of `at`.
fn ledger_ms(start: Instant, at: Instant) -> i64 {
    T0_MS + (at - start).as_millis() as i64
}

fn config() -> String {
    format!(
        r#"{FAKE_ECHO}[routes.default]
models = ["echo"]
[stt]
engine = "fake"
[tts]
engine = "fake"
"#
    )
}

/// voxgate on a loopback port with the default `[realtime]` limits and its ledger on `TokioClock`.
async fn start() -> (String, Arc<voxgate::http::AppState>, Instant) {
    let started = Instant::now();
    let clock = Arc::new(TokioClock(started, tokio::runtime::Handle::current()));
    let (base, state) = support::start_voxgate_on_clock(&config(), "socket-limits", clock).await;
    (base.replace("http://", "ws://"), state, started)
}

async fn connect(url: String) -> Ws {
    // TCP_NODELAY: small frames must not wait on Nagle (real time) while the test's clock is paused.
    tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects").0
}

async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string())).await.expect("send");
}

/// A gauge or counter's value in the server's `/metrics` text (0 when absent).
fn metric(state: &voxgate::http::AppState, series: &str) -> f64 {
    let page = state.gateway.accounts.metrics.render();
    page.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// The only session in the ledger, once it is closed (waiting in paused time up to `within`).
async fn closed_session(state: &voxgate::http::AppState, within: Duration) -> SessionRecord {
    let deadline = Instant::now() + within;
    loop {
        let all = state.ledger.sessions(SessionQuery { from_ms: 0, to_ms: i64::MAX, key_id: None }).await.unwrap();
        assert!(all.len() <= 1, "{all:?}");
        if let Some(record) = all.into_iter().next().filter(|r| r.ended_ms.is_some()) {
            return record;
        }
        assert!(Instant::now() < deadline, "the session is still open after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The close frame that ends `ws` (text events before it are kept), reading as a live client does:
/// its pings are answered as they arrive.
async fn read_to_close(ws: &mut Ws, within: Duration) -> (Vec<Value>, Option<(u16, String)>) {
    let mut events = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await.unwrap_or_else(|_| panic!("no close within {within:?}")) {
            Some(Ok(Message::Text(t))) => events.push(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(frame))) => return (events, frame.map(|f| (u16::from(f.code), f.reason.to_string()))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (events, None),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_closed_at_the_byte_bound_and_leaves_nothing_behind() {
    let (base, state, _) = start().await;
    let mut ws = connect(format!("{base}/v1/realtime")).await;
    // The one event this client reads; then it only writes.
    let Some(Ok(Message::Text(first))) = ws.next().await else { panic!("session.created") };
    assert!(first.contains("session.created"), "{first}");
    let bound = 4.0 * 1024.0 * 1024.0;

    // 200 items of 200 KB: each is echoed twice (`conversation.item.added` and `.done`, as the
    // Realtime API does), 80 MB for a client that reads none of it.
    let text = "a".repeat(200 * 1024);
    for i in 0..200 {
        let item = json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}});
        if ws.send(Message::text(item.to_string())).await.is_err() {
            break;
        }
        let queued = metric(&state, "voxgate_outbound_queued_bytes ");
        assert!(queued <= bound, "{queued} bytes queued after {i} items");
        if metric(&state, "voxgate_realtime_sessions_active ") == 0.0 {
            break;
        }
    }
    let record = closed_session(&state, Duration::from_secs(60)).await;
    assert_eq!(record.close_reason.as_deref(), Some("client_not_reading"), "{record:?}");
    assert_eq!(metric(&state, r#"voxgate_errors_total{kind="client_not_reading"} "#), 1.0);
    // The writer is gone with the session (the count drops after the writer task has ended), and
    // so is everything it held.
    let gone = async {
        while metric(&state, "voxgate_realtime_sessions_active ") != 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the session and its writer end");
    assert_eq!(metric(&state, "voxgate_outbound_queued_bytes "), 0.0);
    // The server closed the socket: reading it now reaches its end.
    let (_, close) = read_to_close(&mut ws, Duration::from_secs(10)).await;
    if let Some((code, reason)) = close {
        assert_eq!((code, reason.as_str()), (1008, "client is not reading events"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_answering_pings_is_closed_within_a_minute_and_billed_to_its_last_sign_of_life() {
    let (base, state, started) = start().await;
    let mut ws = connect(format!("{base}/v1/realtime")).await;
    let created = support::next_event(&mut ws).await;
    let session_id = created["session"]["id"].as_str().unwrap().to_string();
    // Five seconds in, the client sends its last event and reads the answer; then its network vanishes:
    // the socket stays open, nothing is read or sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    send(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    assert_eq!(support::next_event(&mut ws).await["type"], "input_audio_buffer.cleared");
    let last_heard = Instant::now();

    tokio::time::sleep(Duration::from_secs(60)).await;
    let record = state.ledger.session(&session_id).await.unwrap().expect("the session is in the ledger");
    assert_eq!(record.close_reason.as_deref(), Some("peer_unresponsive"), "closed within a minute: {record:?}");
    let ended_ms = record.ended_ms.unwrap();
    // Billed to the last thing heard (the client's event, or the pong right after it), not to the
    // moment the silence was noticed (40 s later).
    assert!(ended_ms >= ledger_ms(started, last_heard) - 1_000 && ended_ms <= ledger_ms(started, last_heard) + 1_000, "{record:?}");
    assert!((5..=6).contains(&record.billed_seconds), "{record:?}");
    assert_eq!(metric(&state, r#"voxgate_errors_total{kind="peer_unresponsive"} "#), 1.0);
    assert_eq!(metric(&state, "voxgate_realtime_sessions_active "), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_cut_without_a_close_is_billed_to_its_last_sign_of_life() {
    let (base, state, started) = start().await;
    let mut ws = connect(format!("{base}/v1/realtime")).await;
    support::next_event(&mut ws).await;
    send(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    assert_eq!(support::next_event(&mut ws).await["type"], "input_audio_buffer.cleared");
    let last_heard = Instant::now();
    // Fifteen quiet seconds (before the first ping), then the TCP connection is cut: no close frame.
    tokio::time::sleep(Duration::from_secs(15)).await;
    drop(ws);

    let record = closed_session(&state, Duration::from_secs(10)).await;
    assert_eq!(record.close_reason.as_deref(), Some("client_closed"), "{record:?}");
    assert!((record.ended_ms.unwrap() - ledger_ms(started, last_heard)).abs() <= 1_000, "{record:?}");
    assert_eq!(record.billed_seconds, 1, "{record:?}");
}

#[tokio::test(start_paused = true)]
async fn a_twilio_stream_whose_media_stops_is_ended_and_billed_to_its_last_frame() {
    let (base, state, started) = start().await;
    let mut ws = connect(format!("{base}/v1/phone/twilio")).await;
    send(&mut ws, json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})).await;
    send(
        &mut ws,
        json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}}}),
    )
    .await;
    // Three seconds of silence at the carrier's pace, then the media stops (the socket stays open).
    let silence = base64::engine::general_purpose::STANDARD.encode([0xffu8; 160]);
    for n in 0..150 {
        send(
            &mut ws,
            json!({"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": n.to_string(), "payload": silence}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_media = Instant::now();

    let (_, close) = read_to_close(&mut ws, Duration::from_secs(60)).await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1000, "{reason}");
    assert!(reason.contains("nothing received for 10 s"), "{reason}");
    let record = closed_session(&state, Duration::from_secs(10)).await;
    assert_eq!(record.close_reason.as_deref(), Some("idle_timeout"), "{record:?}");
    // Nothing was heard after the last media frame (the first ping would have gone out at 20 s).
    let ended_ms = record.ended_ms.unwrap();
    assert!((ended_ms - ledger_ms(started, last_media)).abs() <= 1_000, "{record:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_realtime_client_is_told_and_closed() {
    let (base, state, started) = start().await;
    let mut ws = connect(format!("{base}/v1/realtime")).await;
    // The client reads (and so answers pings) but sends nothing.
    let (events, close) = read_to_close(&mut ws, Duration::from_secs(400)).await;
    let closed_at = Instant::now();
    let (code, reason) = close.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1000, "idle: nothing received for 300 s"));
    let error = events.iter().rev().find(|e| e["type"] == "error").expect("an error event before the close");
    assert_eq!(error["error"]["code"], "idle_timeout", "{error}");
    let idle = closed_at - started;
    assert!(idle >= Duration::from_secs(300) && idle < Duration::from_secs(301), "closed after {idle:?}");
    let record = closed_session(&state, Duration::from_secs(10)).await;
    assert_eq!(record.close_reason.as_deref(), Some("idle_timeout"), "{record:?}");
}

#[tokio::test(start_paused = true)]
async fn a_call_that_reaches_max_session_ms_gets_an_error_and_a_close() {
    let (base, state, started) = start().await;
    let mut ws = connect(format!("{base}/v1/realtime")).await;
    let four_hours = Duration::from_secs(4 * 3600);
    // A client that stays: it reads everything (pings included) and speaks up every minute.
    let mut last_error = None;
    let mut speak_at = Instant::now() + Duration::from_secs(60);
    let close = loop {
        assert!(started.elapsed() <= four_hours + Duration::from_secs(60), "still open after {:?}", started.elapsed());
        match tokio::time::timeout_at(speak_at, ws.next()).await {
            Err(_) => {
                send(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
                speak_at += Duration::from_secs(60);
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                let event: Value = serde_json::from_str(&t).unwrap();
                if event["type"] == "error" {
                    last_error = Some(event);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.expect("a close frame with a code"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("the socket ended without a close: {other:?}"),
        }
    };
    assert!(started.elapsed() >= four_hours && started.elapsed() < four_hours + Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!((u16::from(close.code), close.reason.as_str()), (1000, "the session reached its maximum length of 14400 s"));
    let error = last_error.expect("an error event before the close");
    assert_eq!(error["error"]["code"], "session_expired", "{error}");
    let record = closed_session(&state, Duration::from_secs(10)).await;
    assert_eq!(record.close_reason.as_deref(), Some("max_duration"), "{record:?}");
    assert!((4 * 3600..=4 * 3600 + 1).contains(&record.billed_seconds), "{record:?}");
}
