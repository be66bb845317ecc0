//! Metering against a real server whose ledger runs on a manual clock, so billed seconds are exact:
//! a thousand one-second sessions opened and closed at once over `/v1/realtime`, and a Twilio call
//! billed from its WebSocket's opening rather than its `start` frame.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use voxgate::metering::ManualClock;

use crate::support::{self, FAKE_ECHO};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// 2026-11-24T10:00:00Z, on the ledger's clock.
const T0_MS: i64 = 1_795_514_400_000;

fn config() -> String {
    format!(
        r#"{FAKE_ECHO}[routes.default]
models = ["echo"]
[stt]
engine = "fake"
[tts]
engine = "fake"
[metering]
checkpoint_ms = 200
"#
    )
}

/// voxgate on a loopback port, built as `Server::bind` builds it but with its ledger on `clock`.
async fn start_with_clock(clock: Arc<ManualClock>) -> (String, Arc<voxgate::http::AppState>) {
    support::start_voxgate_on_clock(&config(), "clock", clock).await
}

async fn next_text(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("an event").expect("open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Opens a Realtime session and returns it with its id (its record is open once `session.created` arrives).
async fn open_session(url: String) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    let created = next_text(&mut ws).await;
    assert_eq!(created["type"], "session.created", "{created}");
    (ws, created["session"]["id"].as_str().unwrap().to_string())
}

/// Closes from the client side and reads until the server's side is closed too.
async fn close(mut ws: Ws) {
    ws.close(None).await.expect("close frame sent");
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Every session that started in 2026, once none of them is open (polled: the final records are
/// written by the ledger's own thread as each session ends).
async fn all_closed(base: &str, expected: usize) -> Value {
    let client = reqwest::Client::new();
    let mut last = Value::Null;
    for _ in 0..600 {
        last = client.get(format!("{base}/v1/sessions?from=2026-01-01&to=2027-01-01")).send().await.unwrap().json().await.unwrap();
        let rows = last["data"].as_array().unwrap();
        if rows.len() >= expected && rows.iter().all(|r| r["open"] == false) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = last["data"].as_array().map_or(0, |rows| rows.iter().filter(|r| r["open"] == true).count());
    panic!("sessions still open after 30 s: {open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_one_second_sessions_opened_and_closed_at_once_leave_exactly_a_thousand_records() {
    const SESSIONS: usize = 1_000;
    // The client's and the server's end of every socket, the ledger and the runtime.
    crate::support::raise_open_files_limit(2 * SESSIONS as u64 + 256);
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (base, state) = start_with_clock(clock.clone()).await;
    let url = format!("{}/v1/realtime?model=default", base.replace("http://", "ws://"));

    // All open at once (at most 100 handshakes in flight), all at T0 on the ledger's clock.
    let sessions: Vec<(Ws, String)> =
        futures::stream::iter(0..SESSIONS).map(|_| open_session(url.clone())).buffer_unordered(100).collect().await;
    assert_eq!(state.session_slots.available_permits(), 0, "all {SESSIONS} sessions are open together");
    let opened: HashSet<String> = sessions.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(opened.len(), SESSIONS, "session ids are unique");

    // One second later, all close at once.
    clock.advance_ms(1_000);
    futures::future::join_all(sessions.into_iter().map(|(ws, _)| close(ws))).await;

    let list = all_closed(&base, SESSIONS).await;
    let rows = list["data"].as_array().unwrap();
    assert_eq!(rows.len(), SESSIONS, "exactly one record per session");
    let recorded: HashSet<String> = rows.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(recorded, opened, "every session's record, each once");
    for r in rows {
        assert_eq!((r["started_ms"].as_i64(), r["ended_ms"].as_i64()), (Some(T0_MS), Some(T0_MS + 1_000)), "{r}");
        assert_eq!(r["billed_seconds"], 1, "{r}");
        assert_eq!(r["amount_usd"], "0.001250000000", "{r}");
        assert_eq!(r["close_reason"], "client_closed", "{r}");
        assert_eq!(r["protocol"], "realtime", "{r}");
    }
    assert_eq!(list["total_billed_seconds"], SESSIONS, "{}", list["total_billed_seconds"]);
    assert_eq!(list["total_amount_usd"], "1.250000000000");
    assert!(
        support::eventually(|| state.session_slots.available_permits() == SESSIONS).await,
        "every session slot is free again: {}",
        state.session_slots.available_permits()
    );
}

#[tokio::test]
async fn a_twilio_call_is_billed_from_its_websockets_opening_not_its_start_frame() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (base, _) = start_with_clock(clock.clone()).await;
    let url = format!("{}/v1/phone/twilio", base.replace("http://", "ws://"));
    let (mut call, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    // Twilio sends `connected` and `start` a while after the socket opens.
    clock.advance_ms(2_500);
    call.send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string())).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"model": "default"}}});
    call.send(Message::text(start.to_string())).await.unwrap();
    let client = reqwest::Client::new();
    let mut open = Value::Null;
    for _ in 0..200 {
        open = client.get(format!("{base}/v1/sessions?from=2026-01-01")).send().await.unwrap().json().await.unwrap();
        if !open["data"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let record = &open["data"][0];
    assert_eq!(record["protocol"], "twilio", "{open}");
    assert_eq!(record["open"], true, "{record}");
    assert_eq!(record["started_ms"], T0_MS, "billed from the WebSocket's opening, not from `start`: {record}");

    clock.advance_ms(3_000);
    call.send(Message::text(json!({"event": "stop", "sequenceNumber": "2", "streamSid": "MZ1"}).to_string())).await.unwrap();
    close(call).await;
    let list = all_closed(&base, 1).await;
    let record = &list["data"][0];
    assert_eq!((record["started_ms"].as_i64(), record["ended_ms"].as_i64()), (Some(T0_MS), Some(T0_MS + 5_500)), "{record}");
    // 5.5 s from the socket's opening: 6 started seconds (3 if it were billed from `start`).
    assert_eq!(record["billed_seconds"], 6, "{record}");
    assert_eq!(record["amount_usd"], "0.007500000000", "{record}");
    assert_eq!(record["close_reason"], "client_closed", "{record}");
}
