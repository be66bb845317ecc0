//! Metering end to end: sessions billed by the ledger and queried over HTTP, and a server killed with
//! SIGKILL whose open sessions come back exactly once as `recovered`, billed to their last checkpoint.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str) -> (Ws, String) {
    let url = format!("{}/v1/realtime?model=default", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    let created = next(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    (ws, id)
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("an event").expect("open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            _ => continue,
        }
    }
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
