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
struct Stack {
    port: u16,
    wd: String,
    chromium: String,
    _server: Killed,
    _driver: Killed,
}

fn start_stack(what: &str) -> Stack {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    let port = free_port();
    let server = Killed(
        Command::new(env!("CARGO_BIN_EXE_voxgate"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--config", "tests/browser/voxgate.toml", "--listen", &format!("127.0.0.1:{port}")])
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
    async fn browser(&self, http: &reqwest::Client, what: &str, extra: &[String]) -> (String, std::path::PathBuf) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_charts_from_a_few_sessions() {
    let stack = start_stack("dashboard");
    let port = stack.port;

    // A few sessions with a turn each, and a standalone request.
    let http = reqwest::Client::new();
    for i in 0..3 {
        let url = format!("ws://127.0.0.1:{port}/v1/realtime?model=default");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let item = json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": format!("turn {i}")}]}});
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
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Closed sessions reach the ledger as they close.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let usage: Value = http.get(format!("http://127.0.0.1:{port}/v1/usage?group_by=key")).send().await.unwrap().json().await.unwrap();
        if usage["data"][0]["sessions"] == 3 && usage["data"][0]["requests"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "sessions not in the ledger: {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (base, profile) = stack.browser(&http, "dashboard", &["--window-size=1200,1000".to_string()]).await;
    http.post(format!("{base}/url")).json(&json!({"url": format!("http://127.0.0.1:{port}/dashboard")})).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let v: Value = http
            .post(format!("{base}/execute/sync"))
            .json(&json!({"script": "return window.voxgateDashboard;", "args": []}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let state = v["value"].clone();
        let drawn = &state["drawn"];
        if ["days", "models", "keys", "latency"].iter().all(|c| drawn[*c].as_u64().unwrap_or(0) > 0) || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let png = screenshot(&http, &base, "dashboard.png").await;
    let _ = http.delete(&base).send().await;
    let _ = std::fs::remove_dir_all(&profile);
    assert!(png.starts_with(b"\x89PNG"));
    assert!(state["errors"].as_array().is_some_and(|e| e.is_empty()), "{state}");
    for chart in ["days", "models", "keys", "latency"] {
        assert!(state["drawn"][chart].as_u64().unwrap_or(0) > 0, "chart {chart} is empty: {state}");
    }
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
        let v: Value =
            http.post(format!("{base}/execute/sync")).json(&script("return window.voxgate;")).send().await.unwrap().json().await.unwrap();
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
}
