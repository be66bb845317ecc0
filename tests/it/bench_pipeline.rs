//! `voxgate bench pipeline`, briefly, over both transports: two sessions speak the fixture to a
//! voxgate child with fake engines, and every session is answered with no input frame dropped, so
//! the figures in docs/benchmarks.md come from a bench that works. Timing is not asserted here: that
//! is what the benchmark itself is for.

use std::process::Command;

fn cells(line: &str) -> Vec<&str> {
    line.trim().trim_matches('|').split('|').map(str::trim).collect()
}

/// The cells of the Markdown table row that starts with `first`.
fn row<'a>(report: &'a str, first: &str) -> Vec<&'a str> {
    report.lines().find(|l| l.starts_with(&format!("| {first}"))).map(cells).unwrap_or_else(|| panic!("no row {first} in:\n{report}"))
}

/// The cells of the first row of the table whose header starts with `first`.
fn first_row_under<'a>(report: &'a str, first: &str) -> Vec<&'a str> {
    let mut lines = report.lines().skip_while(|l| !l.starts_with(&format!("| {first}")));
    lines.nth(2).map(cells).unwrap_or_else(|| panic!("no table {first} in:\n{report}"))
}

#[test]
fn bench_pipeline_answers_every_session_over_realtime_and_twilio() {
    for transport in ["realtime", "twilio"] {
        // 6 s: the second session starts 3 s in and hears its answer (6.5 s of fixture, then 0.4 s) by the end;
        // a Realtime turn is counted at `response.done`, after the answer has played, so the first session's only.
        let output = Command::new(env!("CARGO_BIN_EXE_voxgate"))
            .args(["bench", "pipeline", "--sessions", "2", "--seconds", "6", "--transport", transport])
            .env("VOXGATE_LOG", "warn")
            .output()
            .expect("voxgate runs");
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{transport}: {report}\n{}", String::from_utf8_lossy(&output.stderr));

        let summary = report.lines().find(|l| l.starts_with("sessions connected")).unwrap_or_else(|| panic!("{report}"));
        assert!(
            summary.starts_with("sessions connected 2/2, answered (audio received) 2, closed by the server 0,"),
            "{transport}: {summary}"
        );
        assert!(summary.contains("turns timed out 0,") && summary.ends_with("error events 0"), "{transport}: {summary}");

        let overhead = row(&report, "**overhead, client clock**");
        assert!(overhead[1].parse::<u64>().expect("a turn count") >= 1, "{transport}: {overhead:?}");
        let mic = row(&report, "client: last voiced frame sent → first audio received");
        assert!(mic[1].parse::<u64>().expect("a turn count") >= 1, "{transport}: {mic:?}");
        let audio = first_row_under(&report, "input frames sent");
        assert_eq!(audio[1], "0", "{transport}: input frames dropped, {audio:?}");
        assert!(audio[2].parse::<u64>().expect("an output count") > 0, "{transport}: {audio:?}");
        // Twilio reports no turns: the server's clock has no row there.
        let server_rows = report.lines().filter(|l| l.starts_with("| **overhead, server clock**")).count();
        assert_eq!(server_rows, usize::from(transport == "realtime"), "{transport}: {report}");
    }
}

#[test]
fn bench_pipeline_speaks_a_wav_that_has_no_sidecar() {
    // The fixture's audio under another name, with no transcript beside it: the last voiced sample is
    // found in the audio, and the fake STT hears the fixture's transcript.
    let dir = std::env::temp_dir().join(format!("voxgate-bench-wav-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("unheard.wav");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/audio/table_booking.wav"), &wav).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["bench", "pipeline", "--sessions", "1", "--seconds", "6"])
        .arg("--wav")
        .arg(&wav)
        .env("VOXGATE_LOG", "warn")
        .output()
        .expect("voxgate runs");
    let _ = std::fs::remove_dir_all(&dir);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    // The sidecar's last word ends at 5 786 ms; the audio's last voiced 10 ms window ends at 5 790.
    assert!(report.contains("`unheard.wav` (6486 ms, last voiced sample at 5790 ms)"), "{report}");
    let mic = row(&report, "client: last voiced frame sent → first audio received");
    assert!(mic[1].parse::<u64>().expect("a turn count") >= 1, "{mic:?}");
}

#[test]
fn bench_pipeline_hears_and_speaks_through_hosted_style_vendors() {
    // `--stt-vendor`: the child hears through its Deepgram adapter, one WebSocket per call to a fake
    // vendor in the bench process; `--tts-vendor`: it speaks through its OpenAI adapter, a request
    // per chunk to a fake `/v1/audio/speech`. Every session is still answered with no input frame
    // dropped.
    let output = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["bench", "pipeline", "--sessions", "2", "--seconds", "6", "--stt-vendor", "--tts-vendor"])
        .env("VOXGATE_LOG", "warn")
        .output()
        .expect("voxgate runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary = report.lines().find(|l| l.starts_with("sessions connected")).unwrap_or_else(|| panic!("{report}"));
    assert!(summary.starts_with("sessions connected 2/2, answered (audio received) 2,"), "{summary}");
    assert!(summary.contains("turns timed out 0,") && summary.ends_with("error events 0"), "{summary}");
    let audio = first_row_under(&report, "input frames sent");
    assert_eq!(audio[1], "0", "input frames dropped, {audio:?}");
    let vendor = report.lines().find(|l| l.starts_with("STT: the Deepgram adapter")).unwrap_or_else(|| panic!("{report}"));
    assert!(!vendor.contains("(0 transcripts"), "{vendor}");
    assert!(report.lines().any(|l| l.starts_with("TTS: the OpenAI adapter")), "{report}");
}

#[test]
fn bench_pipeline_speaks_through_the_elevenlabs_websocket() {
    // `--tts-vendor elevenlabs`: the child speaks through its ElevenLabs adapter, one
    // `stream-input` WebSocket per answer with alignment, and every session is still answered.
    let output = Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["bench", "pipeline", "--sessions", "1", "--seconds", "4", "--tts-vendor", "elevenlabs"])
        .env("VOXGATE_LOG", "warn")
        .output()
        .expect("voxgate runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary = report.lines().find(|l| l.starts_with("sessions connected")).unwrap_or_else(|| panic!("{report}"));
    assert!(summary.starts_with("sessions connected 1/1, answered (audio received) 1,"), "{summary}");
    assert!(summary.contains("turns timed out 0,") && summary.ends_with("error events 0"), "{summary}");
    assert!(report.lines().any(|l| l.starts_with("TTS: the ElevenLabs adapter")), "{report}");
}
