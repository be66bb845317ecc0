//! `voxgate serve` with no config file and no keys answers chat completions offline with the
//! embedded model, and without the model it tells the user what to run.

use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the real binary in an empty folder (so no ./voxgate.toml is found) on a free port.
fn serve(models_dir: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cwd = std::env::temp_dir().join(format!("voxgate-offline-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&cwd).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("VOXGATE_LEDGER", std::env::temp_dir().join(format!("voxgate-test-ledger-{}-{}.sqlite", std::process::id(), port)))
        .current_dir(&cwd)
        .env("VOXGATE_MODELS_DIR", models_dir)
        .env("VOXGATE_LOG", "warn")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .spawn()
        .expect("voxgate starts");
    let mut child = child;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Server(child, port);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("voxgate exited before listening ({status}); its stderr is above");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("voxgate did not start listening");
}

fn models_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let dir = std::env::var_os("VOXGATE_MODELS_DIR").map(std::path::PathBuf::from).unwrap_or(dir);
    assert!(voxgate::models::llm_model_path(&dir).is_file(), "the embedded model is missing: run `voxgate models fetch` first");
    dir
}

#[tokio::test]
async fn default_server_answers_offline_with_the_embedded_model() {
    let server = serve(&models_dir());
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", server.1);
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .json(&json!({"model": "default", "max_tokens": 12, "messages": [{"role": "user", "content": "What is the capital of France?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-voxgate-model"], "smollm2-135m-instruct");
    let v: Value = r.json().await.unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0 && v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");

    let r = client
        .post(&url)
        .json(&json!({"model": "smollm2-135m-instruct", "stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi."}]}))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.matches("\"content\":").count() >= 3, "several content deltas: {body}");
}

#[tokio::test]
async fn without_the_model_the_error_says_what_to_run() {
    let empty = std::env::temp_dir().join(format!("voxgate-no-models-{}", std::process::id()));
    let server = serve(&empty);
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/chat/completions", server.1))
        .json(&json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error());
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("voxgate models fetch"), "{msg}");
}
