//! `voxgate bench gateway`, briefly: the benchmark behind the gateway's overhead figures runs
//! end to end (fake upstream, voxgate as a child, both load steps) and every request it sends
//! succeeds, so the figures in docs/benchmarks.md come from a bench that works. Timing is not
//! asserted here: that is what the benchmark itself is for.

use std::process::Command;

/// The cells of the Markdown table row that starts with `first` (and, when given, `second`).
fn row<'a>(report: &'a str, first: &str, second: Option<&str>) -> Vec<&'a str> {
    report
        .lines()
        .map(|l| l.trim().trim_matches('|').split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first) && second.is_none_or(|s| cells.get(1) == Some(&s)))
        .unwrap_or_else(|| panic!("no row {first} {second:?} in:\n{report}"))
}

#[test]
fn bench_gateway_sends_every_request_evenly_and_through_both_paths() {
    for pacing in [None, Some("--tokio-timers")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_voxgate"));
        command.args(["bench", "gateway", "--rates", "200", "--seconds", "1"]).env("VOXGATE_LOG", "warn");
        command.args(pacing);
        let output = command.output().expect("voxgate runs");
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));

        let spacing = if pacing.is_some() { "released on tokio's 1 ms ticks" } else { "evenly spaced" };
        assert!(report.contains(spacing), "{report}");
        for path in ["direct", "via voxgate"] {
            let cells = row(&report, "200", Some(path));
            assert_eq!(cells[2], "200", "sent, {path}: {cells:?}");
            assert_eq!(cells[3], "200", "ok, {path}: {cells:?}");
            let p99: f64 = cells[7].parse().expect("a p99 in ms");
            assert!(p99 > 0.0, "{cells:?}");

            let throughput = row(&report, path, None);
            let ok: u64 = throughput[1].parse().expect("a request count");
            assert!(ok > 0, "closed loop, {path}: {throughput:?}");
            assert_eq!(throughput[2], "0", "failed, {path}: {throughput:?}");
        }
        // The rate's rows: both paths' latencies, the overhead, then voxgate's and the generator's CPU.
        let widths: Vec<usize> =
            report.lines().filter(|l| l.starts_with("| 200 |")).map(|l| l.trim().trim_matches('|').split('|').count()).collect();
        assert_eq!(widths, [8, 8, 3, 4], "{report}");
        assert!(report.contains("load generator + fake upstream CPU per request"), "{report}");
        assert!(report.lines().any(|l| l.starts_with("voxgate peak resident memory") && l.ends_with(" MB")), "{report}");
    }
}
