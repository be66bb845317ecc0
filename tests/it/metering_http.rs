//! Metering end to end: sessions billed by the ledger and queried over HTTP, and a server killed with
//! SIGKILL whose open sessions come back exactly once as `recovered`, billed to their last checkpoint.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, events_until as until, next_event as next, Ws, FAKE_ECHO};

async fn connect(base: &str) -> (Ws, String) {
    let url = format!("{}/v1/realtime?model=default", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    let created = next(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    (ws, id)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn sessions_are_billed_recorded_and_queried() {
    let config = std::fs::read_to_string(format!("{}/tests/metering/voxgate.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (base, _) = support::start_voxgate(&config, &[]).await;
    let (mut ws, id) = connect(&base).await;
    ws.send(Message::text(json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}).to_string())).await.unwrap();
    ws.send(Message::text(json!({"type": "response.create", "response": {"output_modalities": ["text"]}}).to_string())).await.unwrap();
    let done = loop {
        let e = next(&mut ws).await;
        if e["type"] == "response.done" {
            break e;
        }
    };
    // The live meter rides on response.done.
    let meter = &done["response"]["voxgate"]["meter"];
    assert!(meter["billed_seconds"].as_u64().unwrap() >= 1, "{meter}");
    assert!(meter["amount_usd"].as_str().unwrap().starts_with("0.00"), "{meter}");
    ws.close(None).await.unwrap();
    drop(ws);

    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        async move { client.get(path).send().await.unwrap() }
    };
    // The record is written when the session closes.
    let mut record = Value::Null;
    for _ in 0..100 {
        record = get(format!("{base}/v1/sessions/{id}")).await.json().await.unwrap();
        if record["open"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(record["close_reason"], "client_closed", "{record}");
    assert_eq!(record["protocol"], "realtime");
    assert_eq!(record["key"], "anonymous");
    assert_eq!(record["turns"], 1);
    assert!(record["input_tokens"].as_u64().unwrap() > 0, "{record}");
    let seconds = record["billed_seconds"].as_u64().unwrap();
    assert!(seconds >= 1);
    // $4.50 an hour is $0.00125 a second, rounded to the cent only for display.
    assert_eq!(record["amount_usd"].as_str().unwrap().parse::<f64>().unwrap(), seconds as f64 * 0.00125);
    let (started, ended) = (record["started_ms"].as_i64().unwrap(), record["ended_ms"].as_i64().unwrap());
    assert_eq!(seconds as i64, ((ended - started).max(1) + 999) / 1000);

    let missing = get(format!("{base}/v1/sessions/sess_nope")).await;
    assert_eq!(missing.status(), 404);

    let list: Value = get(format!("{base}/v1/sessions?from=2020-01-01&key=anonymous")).await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().iter().filter(|s| s["id"] == id.as_str()).count(), 1);
    let csv =
        client.get(format!("{base}/v1/sessions?from=2020-01-01")).header("accept", "text/csv").send().await.unwrap().text().await.unwrap();
    assert!(csv.starts_with("id,key,protocol,"), "{csv}");
    assert!(csv.contains(&id));

    // A standalone request is recorded per request; usage groups sessions and requests.
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let by_key: Value = get(format!("{base}/v1/usage?group_by=key")).await.json().await.unwrap();
    let row = &by_key["data"][0];
    assert_eq!(row["group"], "anonymous", "{by_key}");
    assert_eq!(row["sessions"], 1);
    assert_eq!(row["billed_seconds"], seconds);
    assert_eq!(row["requests"], 1, "{by_key}");
    let by_model: Value = get(format!("{base}/v1/usage?group_by=model")).await.json().await.unwrap();
    let groups: Vec<&str> = by_model["data"].as_array().unwrap().iter().map(|r| r["group"].as_str().unwrap()).collect();
    assert!(groups.contains(&"echo") && groups.contains(&"session:realtime"), "{groups:?}");
    let by_day: Value = get(format!("{base}/v1/usage?group_by=day")).await.json().await.unwrap();
    assert_eq!(by_day["data"].as_array().unwrap().len(), 1, "{by_day}");
    assert!(by_day["data"][0]["group"].as_str().unwrap().starts_with("20"), "{by_day}");
    let csv = client.get(format!("{base}/v1/usage?group_by=key")).header("accept", "text/csv").send().await.unwrap().text().await.unwrap();
    assert!(csv.starts_with("group,sessions,billed_seconds"), "{csv}");

    // Malformed parameters say what is wrong.
    for (query, param) in
        [("group_by=week", "group_by"), ("from=yesterday", "from"), ("from=2026-01-02&to=2026-01-01", "to"), ("colour=red", "colour")]
    {
        let r = get(format!("{base}/v1/usage?{query}")).await;
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(port: u16, ledger: &std::path::Path) -> Server {
    let dir = env!("CARGO_MANIFEST_DIR");
    let child = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .current_dir(dir)
        .args(["serve", "--config", "tests/metering/voxgate.toml", "--listen", &format!("127.0.0.1:{port}")])
        .env("VOXGATE_LEDGER", ledger)
        .env("VOXGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("voxgate starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "voxgate did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

#[tokio::test]
async fn a_server_killed_with_sigkill_bills_its_open_sessions_once_as_recovered() {
    let dir = support::temp_dir("sigkill");
    let ledger = dir.join("ledger.sqlite");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(port, &ledger);

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&base).await);
    }
    // One closes normally before the crash.
    let (mut closed_ws, closed_id) = open.pop().unwrap();
    closed_ws.close(None).await.unwrap();
    drop(closed_ws);
    // Several checkpoints (every 200 ms) pass while the others are open.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let killed_at = now_ms();
    server.0.kill().unwrap(); // SIGKILL: no shutdown, no final write
    server.0.wait().unwrap();
    drop(open);

    let _server = spawn_server(port, &ledger);
    let client = reqwest::Client::new();
    let list: Value = client.get(format!("{base}/v1/sessions?from=2020-01-01")).send().await.unwrap().json().await.unwrap();
    let sessions = list["data"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "every session exactly once: {list}");
    for s in sessions {
        assert_eq!(s["open"], false, "{s}");
        let (started, ended) = (s["started_ms"].as_i64().unwrap(), s["ended_ms"].as_i64().unwrap());
        assert_eq!(s["billed_seconds"].as_i64().unwrap(), ((ended - started).max(1) + 999) / 1000, "{s}");
        if s["id"] == closed_id.as_str() {
            assert_eq!(s["close_reason"], "client_closed", "{s}");
        } else {
            assert_eq!(s["close_reason"], "recovered", "{s}");
            // Billed up to the last checkpoint: never after the kill, at most one interval (plus scheduling slack) before it.
            assert!(ended <= killed_at, "ended {ended} after the kill at {killed_at}");
            assert!(ended >= killed_at - 200 - 300, "ended {ended}, more than a checkpoint before the kill at {killed_at}");
        }
    }
}

#[tokio::test]
async fn malformed_query_parameters_get_an_openai_error_naming_them() {
    let config = std::fs::read_to_string(format!("{}/tests/metering/voxgate.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (base, _) = support::start_voxgate(&config, &[]).await;
    let client = reqwest::Client::new();
    let cases: &[(&str, &str, &str)] = &[
        // (path and query, the param named, the code)
        ("/v1/sessions?from=2026-02-31", "from", "invalid_value"),
        ("/v1/sessions?to=2026-04-31T10:00Z", "to", "invalid_value"),
        ("/v1/sessions?from=2025-02-29", "from", "invalid_value"),
        ("/v1/sessions?from=yesterday", "from", "invalid_value"),
        ("/v1/sessions?from=", "from", "invalid_value"),
        ("/v1/sessions?from=2026-01-02&to=2026-01-01", "to", "invalid_value"),
        ("/v1/sessions?colour=red", "colour", "invalid_value"),
        ("/v1/sessions?key=%zz", "key", "invalid_query"),
        ("/v1/sessions?key=%ff", "key", "invalid_query"),
        ("/v1/sessions?from=1&from=2", "from", "invalid_query"),
        ("/v1/sessions/%ff", "id", "invalid_value"),
        ("/v1/usage?from=2026-02-31", "from", "invalid_value"),
        ("/v1/usage?group_by=week", "group_by", "invalid_value"),
        ("/v1/usage?group_by=%e9", "group_by", "invalid_query"),
        ("/v1/usage?to=2026-13-01", "to", "invalid_value"),
        ("/v1/phone/twilio/twiml?model=%zz", "model", "invalid_query"),
    ];
    for (path, param, code) in cases {
        let request = if path.contains("twiml") { client.post(format!("{base}{path}")) } else { client.get(format!("{base}{path}")) };
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(content_type.starts_with("application/json"), "{path}: {content_type}");
        let body: Value = r.json().await.unwrap();
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error", "{path}: {body}");
        assert_eq!(error["param"], *param, "{path}: {body}");
        assert_eq!(error["code"], *code, "{path}: {body}");
        assert!(error["message"].as_str().unwrap().contains(param), "the message names {param}: {body}");
    }
    // The same parameters, well formed, are answered (a leap day, a percent-encoded time).
    for path in ["/v1/sessions?from=2024-02-29&to=2024-03-01T00%3A00Z&key=anonymous", "/v1/usage?from=2024-02-29&group_by=day"] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["data"], json!([]), "{path}: {body}");
    }
}

/// A fixture WAV (16 kHz mono) as 24 kHz PCM16 in 100 ms `input_audio_buffer.append` events.
fn fixture_appends(stem: &str, silence_ms: usize) -> Vec<String> {
    use base64::Engine as _;
    let path = format!("{}/fixtures/audio/{stem}.wav", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rate = reader.spec().sample_rate;
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let mut pcm24 = Vec::new();
    let mut r = voxgate::audio::Resampler::new(rate, 24_000).unwrap();
    r.process(&samples, &mut pcm24);
    r.flush(&mut pcm24);
    pcm24.extend(std::iter::repeat_n(0i16, silence_ms * 24));
    pcm24
        .chunks(2_400)
        .map(|chunk| {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            json!({"type": "input_audio_buffer.append", "audio": base64::engine::general_purpose::STANDARD.encode(bytes)}).to_string()
        })
        .collect()
}

/// `name{labels} value` lines of a Prometheus text page, by `name{labels}`.
fn samples(page: &str) -> std::collections::HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap())))
        .collect()
}

async fn closed_record(base: &str, id: &str) -> Value {
    for _ in 0..400 {
        let record: Value = reqwest::get(format!("{base}/v1/sessions/{id}")).await.unwrap().json().await.unwrap();
        if record["open"] == false {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("session {id} was not closed");
}

#[tokio::test(start_paused = true)]
async fn metrics_move_after_one_session_with_a_barge_in() {
    let config = &format!(
        r#"{FAKE_ECHO}[routes.default]
models = ["echo"]
[stt]
engine = "fake"
script = ["fixtures/audio/table_booking.json", "fixtures/audio/opening_hours.json"]
latency_ms = 40
[tts]
engine = "fake"
ttfb_ms = 25
ms_per_char = 20
"#
    );
    let (base, state) = support::start_voxgate(config, &[]).await;
    let page = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let before = samples(&page);
    assert_eq!(before.get("voxgate_barge_ins_total"), None, "{page}");
    assert_eq!(before.get("voxgate_session_seconds_billed_total"), None, "{page}");

    let (mut ws, id) = connect(&base).await;
    // One bad client event: an error event, counted, and the session goes on.
    ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "error");
    for append in fixture_appends("table_booking", 1_000) {
        ws.send(Message::text(append)).await.unwrap();
    }
    until(&mut ws, "response.output_audio.delta").await;
    for _ in 0..10 {
        next(&mut ws).await;
    }
    // The caller talks over the agent.
    for append in fixture_appends("opening_hours", 0) {
        ws.send(Message::text(append)).await.unwrap();
    }
    let events = until(&mut ws, "response.done").await;
    assert_eq!(events.last().unwrap()["response"]["status"], "cancelled", "{:?}", events.last());
    ws.close(None).await.unwrap();
    drop(ws);
    let record = closed_record(&base, &id).await;

    let page = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let after = samples(&page);
    let get = |name: &str| after.get(name).copied().unwrap_or_else(|| panic!("{name} is missing from:\n{page}"));
    assert_eq!(get("voxgate_barge_ins_total"), 1.0);
    // Counted with the session's own clock as it closes, a moment before the ledger's final record.
    let billed = record["billed_seconds"].as_f64().unwrap();
    let counted = get("voxgate_session_seconds_billed_total");
    assert!(counted >= 1.0 && counted <= billed && billed - counted <= 1.0, "counted {counted}, billed {billed}");
    for stage in ["stt", "llm_ttft", "tts_ttfb", "voice_to_voice"] {
        let count = get(&format!("voxgate_turn_latency_seconds_count{{stage=\"{stage}\"}}"));
        assert!(count >= 1.0, "{stage}: {count}");
        assert_eq!(get(&format!("voxgate_turn_latency_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}}")), count, "{stage}");
    }
    assert_eq!(get("voxgate_errors_total{kind=\"bad_client_event\"}"), 1.0);
    assert_eq!(after.get("voxgate_errors_total{kind=\"rate_limited\"}"), None, "only what happened is counted");
    // The gauge drops when the socket's tasks have ended, just after the record is written.
    assert!(
        support::eventually(|| state.gateway.accounts.metrics.render().contains("voxgate_realtime_sessions_active 0\n")).await,
        "{}",
        state.gateway.accounts.metrics.render()
    );
}

#[tokio::test]
async fn a_ledger_that_cannot_be_written_refuses_new_sessions_and_lets_running_ones_finish() {
    use voxgate::metering::ledger::Fault;
    let config = std::fs::read_to_string(format!("{}/tests/metering/voxgate.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (base, state) = support::start_voxgate(&config, &[]).await;
    let (mut running, running_id) = connect(&base).await;

    // A real SQLite error on the live connection: every write fails as on a read-only file.
    state.ledger.inject_fault(Fault::ReadOnly).await.unwrap();
    let url = format!("{}/v1/realtime?model=default", base.replace("http://", "ws://"));
    let refused = tokio_tungstenite::connect_async_with_config(url.clone(), None, true).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal, got {:?}", refused.map(|_| "an open socket"));
    };
    assert_eq!(response.status(), 503);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "ledger_unavailable", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot record new sessions") && message.contains("read-only"), "{message}");

    // A phone call is refused too: Twilio's protocol has no error message, so a close 1008 says why.
    let twilio = format!("{}/v1/phone/twilio", base.replace("http://", "ws://"));
    let (mut call, _) = tokio_tungstenite::connect_async_with_config(twilio, None, true).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"model": "default"}}});
    call.send(Message::text(start.to_string())).await.unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), call.next()).await.expect("a close").expect("a frame").expect("ok") {
            Message::Close(frame) => break frame.expect("a close frame with a reason"),
            _ => continue,
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("cannot record new sessions"), "{}", close.reason);

    // The session that was already running finishes normally.
    running.send(Message::text(json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}).to_string())).await.unwrap();
    running.send(Message::text(json!({"type": "response.create", "response": {"output_modalities": ["text"]}}).to_string())).await.unwrap();
    let done = until(&mut running, "response.done").await;
    assert_eq!(done.last().unwrap()["response"]["status"], "completed");
    running.close(None).await.unwrap();
    drop(running);
    // Its final record is kept (fallback file and memory) and answered while the ledger is read-only.
    let record = closed_record(&base, &running_id).await;
    assert_eq!(record["close_reason"], "client_closed", "{record}");
    assert_eq!(record["turns"], 1, "{record}");

    let page = state.gateway.accounts.metrics.render();
    assert!(page.contains("voxgate_errors_total{kind=\"ledger_unavailable\"} 2\n"), "{page}");

    // Writable again (the kept record is retried at the checkpoint): new sessions are admitted, the
    // finished one is listed once, closed, and the refused ones left no record.
    state.ledger.inject_fault(Fault::None).await.unwrap();
    state.ledger.checkpoint().await.unwrap();
    let (_again, again_id) = connect(&base).await;
    let list: Value = reqwest::get(format!("{base}/v1/sessions?from=2020-01-01")).await.unwrap().json().await.unwrap();
    let rows = list["data"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&running_id.as_str()) && ids.contains(&again_id.as_str()), "{list}");
    let finished = rows.iter().find(|s| s["id"] == running_id.as_str()).unwrap();
    assert_eq!((finished["open"].as_bool(), finished["close_reason"].as_str()), (Some(false), Some("client_closed")), "{finished}");
}
