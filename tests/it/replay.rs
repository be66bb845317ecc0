//! `voxgate replay` on a fixture: the binary runs the recording through the whole pipeline (fake
//! engines, fake echo model) and reports the transcript, the answer, the timeline, and the reply WAV.

use std::process::Command;

use serde_json::Value;

#[test]
fn replay_prints_transcript_answer_timeline_and_writes_the_reply() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("voxgate-replay-{}.wav", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .current_dir(dir)
        .args([
            "replay",
            "fixtures/audio/table_booking.wav",
            "--config",
            "tests/replay/voxgate.toml",
            "--model",
            "voice",
            "--json",
            "--out",
        ])
        .arg(&out)
        .env("VOXGATE_LOG", "warn")
        .output()
        .expect("voxgate runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(&stdout).expect("--json prints JSON");

    let sidecar: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/fixtures/audio/table_booking.json")).unwrap()).unwrap();
    let said = sidecar["utterances"][0]["text"].as_str().unwrap();
    assert_eq!(report["transcripts"], serde_json::json!([said]));
    assert_eq!(report["answers"], serde_json::json!([format!("You said: {said}")]));
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");

    let events: Vec<&str> = report["timeline"].as_array().unwrap().iter().map(|m| m["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["speech_started", "speech_stopped", "transcript", "response_created", "first_audio", "response_done", "audio_ended"]
    );
    let times: Vec<f64> = report["timeline"].as_array().unwrap().iter().map(|m| m["t_ms"].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let latency = &report["responses"][0]["latency_ms"];
    for stage in ["stt", "llm_ttft", "tts_ttfb", "voice_to_voice"] {
        assert!(latency[stage].as_f64().is_some(), "{stage} missing: {latency}");
    }
    assert_eq!(report["responses"][0]["model"], "echo");

    // The reply: 24 kHz mono PCM16, as long as the fake TTS makes it (60 ms per non-blank character).
    let reader = hound::WavReader::open(&out).expect("reply WAV written");
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 24_000, 16));
    let chars = format!("You said: {said}").chars().filter(|c| !c.is_whitespace()).count() as f64;
    let seconds = reader.duration() as f64 / 24_000.0;
    assert!((seconds - chars * 0.060).abs() < 0.1, "reply {seconds} s for {chars} characters");
    assert!(!out.with_extension("wav.partial").exists());
    let _ = std::fs::remove_file(&out);
}

#[test]
fn replay_explains_a_bad_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["replay", "Cargo.toml", "--config", "tests/replay/voxgate.toml", "--model", "voice"])
        .output()
        .expect("voxgate runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read Cargo.toml"), "{stderr}");
}
