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
        let audio = first_row_under(&report, "input frames sent");
        assert_eq!(audio[1], "0", "{transport}: input frames dropped, {audio:?}");
        assert!(audio[2].parse::<u64>().expect("an output count") > 0, "{transport}: {audio:?}");
        // Twilio reports no turns: the server's clock has no row there.
        let server_rows = report.lines().filter(|l| l.starts_with("| **overhead, server clock**")).count();
        assert_eq!(server_rows, usize::from(transport == "realtime"), "{transport}: {report}");
    }
}
