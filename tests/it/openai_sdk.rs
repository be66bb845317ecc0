//! The official `openai` Python SDK against the real `voxgate` binary (`voxgate serve`), as a
//! user would run it. `.ci/run` installs the SDK; without it this test fails and says so.

use std::process::Command;
use std::time::Duration;

#[test]
fn the_openai_python_sdk_works_against_voxgate() {
    let probe = Command::new("python3").args(["-c", "import openai"]).output().expect("python3 is needed for this test");
    assert!(probe.status.success(), "the openai Python package is missing: run `python3 -m pip install openai` (.ci/run does)");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut server = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["serve", "--config", &format!("{dir}/tests/sdk/voxgate.toml"), "--listen", &format!("127.0.0.1:{port}")])
        .env("VOXGATE_LEDGER", std::env::temp_dir().join(format!("voxgate-test-ledger-{}-{}.sqlite", std::process::id(), port)))
        .env("VOXGATE_API_KEY", "vk-sdk-test")
        .env("VOXGATE_LOG", "warn")
        .spawn()
        .expect("voxgate starts");
    let mut ready = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = format!("http://127.0.0.1:{port}/v1");
    let output = ready.then(|| {
        let chat = Command::new("python3")
            .args([&format!("{dir}/tests/sdk/openai_sdk_check.py"), &base, "vk-sdk-test"])
            .output()
            .expect("python3 runs");
        let realtime = Command::new("python3")
            .args([&format!("{dir}/tests/sdk/realtime_check.py"), &base, "vk-sdk-test", &format!("{dir}/fixtures/audio/table_booking.wav")])
            .output()
            .expect("python3 runs");
        (chat, realtime)
    });
    let _ = server.kill();
    let _ = server.wait();
    let (chat, realtime) = output.expect("voxgate did not start listening");
    let stdout = String::from_utf8_lossy(&chat.stdout);
    let stderr = String::from_utf8_lossy(&chat.stderr);
    assert!(chat.status.success(), "SDK checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("openai SDK checks passed"), "{stdout}");
    let stdout = String::from_utf8_lossy(&realtime.stdout);
    let stderr = String::from_utf8_lossy(&realtime.stderr);
    assert!(
        realtime.status.success(),
        "realtime SDK checks failed (pip install 'openai[realtime]' brings the websockets package):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("realtime SDK checks passed"), "{stdout}");
}

/// The SDK's realtime client holds a spoken turn while the server hears and speaks through hosted
/// vendors: a fake Deepgram (`tests/support/speech_stt.rs`, one WebSocket for the call) and a fake
/// ElevenLabs (`tests/support/speech_tts.rs`), on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_realtime_client_holds_a_turn_on_a_hosted_speech_vendor() {
    use crate::support::speech_stt::{booking_script, start, Flavour};

    let deepgram = start(Flavour::Deepgram, booking_script()).await;
    let (elevenlabs, voice_log) = crate::support::speech_tts::elevenlabs::start().await;
    let dir = env!("CARGO_MANIFEST_DIR");
    // Generous limits: this checks the SDK's view of a turn, and the whole suite's embedded engines
    // may be loading the machine beside it.
    let base_config = std::fs::read_to_string(format!("{dir}/tests/sdk/voxgate.toml")).unwrap();
    let (before_stt, _) = base_config.split_once("[stt]").expect("the SDK config has an [stt] section");
    let config = format!(
        "{before_stt}[providers.dg]\nkind = \"deepgram\"\nbase_url = \"{}\"\napi_key = \"dg-sdk-test\"\n\
         [providers.el]\nkind = \"elevenlabs\"\nbase_url = \"{elevenlabs}\"\napi_key = \"el-sdk-test\"\n\
         [stt]\nengines = [\"dg\"]\nstall_ms_max = 60000\n[tts]\nengines = [\"el\"]\nttfb_ms_max = 60000\n\
         [realtime]\nstt_timeout_ms = 60000\ntts_timeout_ms = 60000\n",
        deepgram.url
    );
    let temp = crate::support::temp_dir("sdk-vendor");
    let config_path = temp.join("voxgate.toml");
    std::fs::write(&config_path, config).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["serve", "--config", config_path.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .env("VOXGATE_LEDGER", temp.join("ledger.sqlite"))
        .env("VOXGATE_API_KEY", "vk-sdk-test")
        .env("VOXGATE_LOG", "warn")
        .spawn()
        .expect("voxgate starts");
    let mut ready = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = format!("http://127.0.0.1:{port}/v1");
    let realtime = ready.then(|| {
        tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .args([
                    &format!("{dir}/tests/sdk/realtime_check.py"),
                    &base,
                    "vk-sdk-test",
                    &format!("{dir}/fixtures/audio/table_booking.wav"),
                ])
                .output()
                .expect("python3 runs")
        })
    });
    let realtime = match realtime {
        Some(run) => Some(run.await.unwrap()),
        None => None,
    };
    let _ = server.kill();
    let _ = server.wait();
    let realtime = realtime.expect("voxgate did not start listening");
    let stdout = String::from_utf8_lossy(&realtime.stdout);
    let stderr = String::from_utf8_lossy(&realtime.stderr);
    assert!(realtime.status.success(), "realtime SDK checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("heard: 'book a table for two'"), "the vendor's words: {stdout}");
    let connections = deepgram.connections();
    assert_eq!(connections.len(), 1, "one socket for the call");
    assert_eq!(connections[0].header("authorization"), Some("Token dg-sdk-test"));
    // The answer was spoken by the vendor, with the key in its header.
    let upgrades = crate::support::speech_tts::upgrades(&voice_log);
    assert!(!upgrades.is_empty() && upgrades.iter().all(|u| u.header("xi-api-key") == Some("el-sdk-test")), "{upgrades:?}");
}
