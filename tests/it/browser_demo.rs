//! The demo page at `/` in real headless Chromium, driven over WebDriver (chromedriver, plain HTTP from
//! this test: no browser-automation crate). Chromium's fake microphone plays a fixture WAV; the page
//! must show the user's transcript and the agent's reply, and play the reply's audio. A screenshot
//! after the turn is kept in `target/test-artifacts/`. `.ci/setup` installs chromium and chromium-driver.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find_program(names: &[&str]) -> String {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] {
            let path = format!("{dir}/{name}");
            if std::path::Path::new(&path).exists() {
                return path;
            }
        }
    }
    panic!("none of {names:?} is installed: run ./.ci/setup (it installs Debian's chromium and chromium-driver)");
}

/// voxgate (fake engines, its own ledger) and chromedriver, each killed when dropped.
pub(crate) struct Stack {
    pub(crate) port: u16,
    wd: String,
    chromium: String,
    _server: Killed,
    _driver: Killed,
}

fn start_stack(what: &str) -> Stack {
    start_stack_with(what, "tests/browser/voxgate.toml")
}

/// [`start_stack`] with another config file (a path from the crate's root, or absolute).
pub(crate) fn start_stack_with(what: &str, config: &str) -> Stack {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    let port = free_port();
    let server = Killed(
        Command::new(env!("CARGO_BIN_EXE_voxgate"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--config", config, "--listen", &format!("127.0.0.1:{port}")])
            .env("VOXGATE_LEDGER", std::env::temp_dir().join(format!("voxgate-{what}-{}.sqlite", std::process::id())))
            .env("VOXGATE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("voxgate starts"),
    );
    let driver_port = free_port();
    let driver = Killed(
        Command::new(&driver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    wait_for_port(port, "voxgate");
    wait_for_port(driver_port, "chromedriver");
    Stack { port, wd: format!("http://127.0.0.1:{driver_port}"), chromium, _server: server, _driver: driver }
}

impl Stack {
    /// A headless Chromium session with the flags this machine's closed network needs, plus `extra`;
    /// returns the WebDriver session's base URL and the profile folder to remove afterwards.
    pub(crate) async fn browser(&self, http: &reqwest::Client, what: &str, extra: &[String]) -> (String, std::path::PathBuf) {
        let profile = std::env::temp_dir().join(format!("voxgate-chromium-{what}-{}", std::process::id()));
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra.iter().cloned());
        let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": self.chromium, "args": args}}}});
        let created: Value = http.post(format!("{}/session", self.wd)).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {created}")).to_string();
        (format!("{}/session/{session}", self.wd), profile)
    }
}

/// Saves a screenshot of the WebDriver session as `target/test-artifacts/NAME` and returns its bytes.
async fn screenshot(http: &reqwest::Client, base: &str, name: &str) -> Vec<u8> {
    let shot: Value = http.get(format!("{base}/screenshot")).send().await.unwrap().json().await.unwrap();
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = base64::engine::general_purpose::STANDARD.decode(shot["value"].as_str().unwrap_or_default()).unwrap_or_default();
    std::fs::write(artifacts.join(name), &png).unwrap();
    png
}

/// One realtime session with one text turn, closed.
async fn one_session(port: u16, text: &str) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://127.0.0.1:{port}/v1/realtime?model=default");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let item = json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}});
    ws.send(Message::text(item.to_string())).await.unwrap();
    ws.send(Message::text(json!({"type": "response.create", "response": {"output_modalities": ["text"]}}).to_string())).await.unwrap();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            if serde_json::from_str::<Value>(&t).unwrap()["type"] == "response.done" {
                break;
            }
        }
    }
    ws.close(None).await.unwrap();
}

/// A standalone gateway request; returns its HTTP status.
async fn one_request(http: &reqwest::Client, port: u16, model: &str) -> u16 {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    http.post(format!("http://127.0.0.1:{port}/v1/chat/completions")).json(&body).send().await.unwrap().status().as_u16()
}

/// Waits until the ledger holds `sessions` closed sessions and `requests` standalone requests.
async fn ledger_holds(http: &reqwest::Client, port: u16, sessions: u64, requests: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let usage: Value = http.get(format!("http://127.0.0.1:{port}/v1/usage?group_by=key")).send().await.unwrap().json().await.unwrap();
        if usage["data"][0]["sessions"] == sessions && usage["data"][0]["requests"] == requests {
            return;
        }
        assert!(Instant::now() < deadline, "the ledger does not hold {sessions} sessions and {requests} requests: {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every chart of the dashboard, by its `data-chart` name.
const CHARTS: [&str; 8] = ["days", "gatewayRequests", "gatewayCost", "models", "keys", "latency", "fallbacks", "errors"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_charts_from_a_few_sessions_and_gateway_requests_and_refreshes() {
    let stack = start_stack("dashboard");
    let port = stack.port;

    // A few sessions with a turn each, and a few standalone requests: two that succeed, one that
    // falls back from the failing model, one that fails.
    let http = reqwest::Client::new();
    for i in 0..3 {
        one_session(port, &format!("turn {i}")).await;
    }
    assert_eq!(one_request(&http, port, "echo").await, 200);
    assert_eq!(one_request(&http, port, "echo").await, 200);
    assert_eq!(one_request(&http, port, "fallback").await, 200);
    assert_eq!(one_request(&http, port, "broken").await, 502, "an upstream failure with nowhere to fall back");
    // Closed sessions reach the ledger as they close.
    ledger_holds(&http, port, 3, 4).await;

    let (base, profile) = stack.browser(&http, "dashboard", &["--window-size=1200,1700".to_string()]).await;
    http.post(format!("{base}/url")).json(&json!({"url": format!("http://127.0.0.1:{port}/dashboard")})).send().await.unwrap();
    let dashboard = || async {
        let v: Value = http
            .post(format!("{base}/execute/sync"))
            .json(&json!({"script": "return Object.assign({requestsShown: document.getElementById('k-requests').textContent}, window.voxgateDashboard);", "args": []}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["value"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let state = dashboard().await;
        if CHARTS.iter().all(|c| state["drawn"][*c].as_u64().unwrap_or(0) > 0) || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let png = screenshot(&http, &base, "dashboard.png").await;
    assert!(png.starts_with(b"\x89PNG"));
    assert!(state["errors"].as_array().is_some_and(|e| e.is_empty()), "{state}");
    for chart in CHARTS {
        assert!(state["drawn"][chart].as_u64().unwrap_or(0) > 0, "chart {chart} is empty: {state}");
    }
    // Cost by model: the gateway's models (a bar each for the ledger and the metrics), not the
    // flat-rate sessions grouped by protocol.
    assert!(state["drawn"]["models"].as_u64().unwrap() >= 2, "{state}");
    assert_eq!(state["totals"]["sessions"], 3, "{state}");
    assert_eq!(state["totals"]["requests"], 4, "{state}");
    assert_eq!(state["requestsShown"], "4", "{state}");

    // New data while the page is open: the live refresh picks it up.
    let refreshes = state["refreshes"].as_u64().unwrap();
    one_session(port, "one more").await;
    assert_eq!(one_request(&http, port, "echo").await, 200);
    ledger_holds(&http, port, 4, 5).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let state = dashboard().await;
        let fresh = state["refreshes"].as_u64().unwrap_or(0) > refreshes && state["totals"]["requests"] == 5;
        if fresh || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    screenshot(&http, &base, "dashboard-refreshed.png").await;
    let _ = http.delete(&base).send().await;
    let _ = std::fs::remove_dir_all(&profile);
    assert_eq!(state["totals"]["sessions"], 4, "the refresh shows the new session: {state}");
    assert_eq!(state["totals"]["requests"], 5, "the refresh shows the new request: {state}");
    assert_eq!(state["requestsShown"], "5", "{state}");
    assert!(state["errors"].as_array().is_some_and(|e| e.is_empty()), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_hears_the_microphone_and_plays_the_answer() {
    let stack = start_stack("demo");
    let (port, dir) = (stack.port, env!("CARGO_MANIFEST_DIR"));
    let http = reqwest::Client::new();
    let extra = [
        "--use-fake-ui-for-media-stream".to_string(),
        "--use-fake-device-for-media-stream".to_string(),
        format!("--use-file-for-fake-audio-capture={dir}/fixtures/audio/table_booking.wav"),
        "--autoplay-policy=no-user-gesture-required".to_string(),
        "--window-size=1100,900".to_string(),
    ];
    let (base, profile) = stack.browser(&http, "demo", &extra).await;
    let script = |code: &str| json!({"script": code, "args": []});

    http.post(format!("{base}/url")).json(&json!({"url": format!("http://127.0.0.1:{port}/")})).send().await.unwrap();
    let clicked: Value = http
        .post(format!("{base}/execute/sync"))
        .json(&script("document.getElementById('start').click(); return true;"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(clicked["value"], true, "{clicked}");

    // One whole turn: the user's words, the agent's words, and the agent's audio played.
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let read = "return Object.assign({shown: {turnRows: [...document.querySelectorAll('#turns tr')].map((tr) => [...tr.cells].map((c) => c.textContent)), \
                    meter: document.getElementById('meter').textContent}}, window.voxgate);";
        let v: Value = http.post(format!("{base}/execute/sync")).json(&script(read)).send().await.unwrap().json().await.unwrap();
        let state = v["value"].clone();
        let done = state["userFinal"].as_array().is_some_and(|a| !a.is_empty())
            && state["agentFinal"].as_array().is_some_and(|a| !a.is_empty())
            && state["playedMs"].as_f64().unwrap_or(0.0) > 200.0;
        if done || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let png = screenshot(&http, &base, "demo-after-one-turn.png").await;
    let _ = http.delete(&base).send().await;
    let _ = std::fs::remove_dir_all(&profile);

    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    assert!(page["errors"].as_array().is_some_and(|e| e.is_empty()), "page errors: {page}");
    let heard = page["userFinal"][0].as_str().unwrap_or_else(|| panic!("no user transcript on the page: {page}"));
    assert!(heard.contains("book a table"), "{heard:?}");
    let said = page["agentFinal"][0].as_str().unwrap_or_else(|| panic!("no agent reply on the page: {page}"));
    assert_eq!(said, format!("You said: {heard}"));
    assert!(page["playedMs"].as_f64().unwrap() > 200.0, "the reply was not played: {page}");
    assert_eq!(page["turns"][0]["model"], "echo");

    // What the page shows for the turn: its row of stage latencies, and the session's running cost.
    let shown = page["shown"].clone();
    let row: Vec<&str> = shown["turnRows"][0]
        .as_array()
        .unwrap_or_else(|| panic!("no turn row on the page: {page}"))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(row.len(), 7, "{row:?}");
    assert_eq!((row[0], row[1]), ("1", "echo"), "{row:?}");
    // The fake microphone loops its file: the caller may start over while the reply still plays.
    assert!(["completed", "cancelled"].contains(&row[6]), "{row:?}");
    for (stage, cell) in ["stt", "llm ttft", "tts ttfb", "voice-to-voice"].iter().zip(&row[2..6]) {
        assert!(cell.parse::<u64>().is_ok(), "the {stage} latency is not shown as milliseconds: {row:?}");
    }
    let meter = shown["meter"].as_str().unwrap();
    let billed: u64 = meter
        .strip_prefix("Session so far: ")
        .and_then(|m| m.split(" s billed, $").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no running cost on the page: {meter:?}"));
    let amount: f64 = meter.rsplit('$').next().unwrap().parse().unwrap();
    assert!(billed >= 1 && amount > 0.0, "{meter:?}");
}
