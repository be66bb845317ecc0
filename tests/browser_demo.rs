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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_charts_from_a_few_sessions() {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    let dir = env!("CARGO_MANIFEST_DIR");
    let port = free_port();
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_voxgate"))
            .current_dir(dir)
            .args(["serve", "--config", "tests/browser/voxgate.toml", "--listen", &format!("127.0.0.1:{port}")])
            .env("VOXGATE_LEDGER", std::env::temp_dir().join(format!("voxgate-dashboard-{}.sqlite", std::process::id())))
            .env("VOXGATE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("voxgate starts"),
    );
    let driver_port = free_port();
    let _driver = Killed(
        Command::new(&driver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    wait_for_port(port, "voxgate");
    wait_for_port(driver_port, "chromedriver");

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

    let wd = format!("http://127.0.0.1:{driver_port}");
    let profile = std::env::temp_dir().join(format!("voxgate-chromium-dash-{}", std::process::id()));
    let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
            format!("--user-data-dir={}", profile.display()), "--window-size=1200,1000"]}}}});
    let created: Value = http.post(format!("{wd}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
    let session = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {created}")).to_string();
    let base = format!("{wd}/session/{session}");
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
    let screenshot: Value = http.get(format!("{base}/screenshot")).send().await.unwrap().json().await.unwrap();
    let artifacts = std::path::Path::new(dir).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = base64::engine::general_purpose::STANDARD.decode(screenshot["value"].as_str().unwrap_or_default()).unwrap_or_default();
    std::fs::write(artifacts.join("dashboard.png"), &png).unwrap();
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
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    let dir = env!("CARGO_MANIFEST_DIR");

    let port = free_port();
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_voxgate"))
            .current_dir(dir)
            .args(["serve", "--config", "tests/browser/voxgate.toml", "--listen", &format!("127.0.0.1:{port}")])
            .env("VOXGATE_LEDGER", std::env::temp_dir().join(format!("voxgate-test-ledger-{}-{}.sqlite", std::process::id(), line!())))
            .env("VOXGATE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("voxgate starts"),
    );
    let driver_port = free_port();
    let _driver = Killed(
        Command::new(&driver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    wait_for_port(port, "voxgate");
    wait_for_port(driver_port, "chromedriver");

    let wd = format!("http://127.0.0.1:{driver_port}");
    let http = reqwest::Client::new();
    let profile = std::env::temp_dir().join(format!("voxgate-chromium-{}", std::process::id()));
    let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
    "binary": chromium,
    "args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        format!("--user-data-dir={}", profile.display()),
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        format!("--use-file-for-fake-audio-capture={dir}/fixtures/audio/table_booking.wav"),
        "--autoplay-policy=no-user-gesture-required", "--window-size=1100,900"
    ]}}}});
    let created: Value = http.post(format!("{wd}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
    let session = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {created}")).to_string();
    let base = format!("{wd}/session/{session}");
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
    let screenshot: Value = http.get(format!("{base}/screenshot")).send().await.unwrap().json().await.unwrap();
    let artifacts = std::path::Path::new(dir).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = base64::engine::general_purpose::STANDARD.decode(screenshot["value"].as_str().unwrap_or_default()).unwrap_or_default();
    std::fs::write(artifacts.join("demo-after-one-turn.png"), &png).unwrap();
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
