//! A small Prometheus registry: counters, gauges and histograms keyed by name and labels,
//! rendered in the text exposition format. Every metric is declared in [`METRICS`] (and listed
//! in `docs/metrics.md`); label values are model, provider and outcome names, never secrets.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// (name, kind, help) of every metric voxgate exports.
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("voxgate_gateway_requests_total", Kind::Counter, "Gateway requests by model that served (or requested name) and outcome."),
    ("voxgate_gateway_attempts_total", Kind::Counter, "Upstream attempts by provider, model and result (ok or an error kind)."),
    ("voxgate_gateway_fallbacks_total", Kind::Counter, "Moves to the next model, by the error kind that caused them."),
    ("voxgate_gateway_tokens_total", Kind::Counter, "Tokens by model and kind (input, output, cached_input, cache_write)."),
    ("voxgate_gateway_cost_usd_total", Kind::Counter, "List-price cost in USD by model (zero markup)."),
    ("voxgate_gateway_ttft_seconds", Kind::Histogram, "Time from request to first content token, by model that served."),
    ("voxgate_gateway_request_duration_seconds", Kind::Histogram, "Time from request to end of answer, by model that served."),
    ("voxgate_gateway_breaker_open", Kind::Gauge, "1 while a provider's circuit breaker is open, by provider."),
    ("voxgate_http_requests_total", Kind::Counter, "HTTP requests by route and status code."),
    ("voxgate_realtime_sessions_active", Kind::Gauge, "Voice sessions open now."),
    (
        "voxgate_outbound_queued_bytes",
        Kind::Gauge,
        "Bytes of server messages waiting for voice clients to take them, over all sessions (in 64 KiB steps).",
    ),
    ("voxgate_barge_ins_total", Kind::Counter, "Responses cut short because the caller started speaking."),
    ("voxgate_session_seconds_billed_total", Kind::Counter, "Seconds billed to closed voice sessions (per started second)."),
    (
        "voxgate_errors_total",
        Kind::Counter,
        "Errors reported to a client or that refused work, by kind (ledger_unavailable, too_many_sessions, session_limit, rate_limited, bad_client_event, client_not_reading, peer_unresponsive, idle_timeout, max_duration, stt_failed, llm_failed, tts_failed).",
    ),
    ("voxgate_speech_fallbacks_total", Kind::Counter, "Moves to the next speech engine of a fallback list, by stage (stt, tts), engine left and reason."),
    ("voxgate_speech_vendor_failures_total", Kind::Counter, "Speech vendor streams that failed, by stage and engine."),
    ("voxgate_speech_vendor_bad_messages_total", Kind::Counter, "Speech vendor messages that could not be read, by stage and engine."),
    ("voxgate_audio_frames_dropped_total", Kind::Counter, "Audio frames dropped because a stage's queue was full, by stage (input, stt)."),
    (
        "voxgate_turn_latency_seconds",
        Kind::Histogram,
        "Per-turn latency by stage: stt (end of speech to final transcript), llm_ttft, tts_ttfb, voice_to_voice (end of user speech to first agent audio).",
    ),
];

const BUCKETS_S: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Values keyed by metric name, then by rendered label text (`model="a",outcome="ok"`).
#[derive(Debug, Default)]
struct Inner {
    values: BTreeMap<&'static str, HashMap<String, f64>>,
    histograms: BTreeMap<&'static str, HashMap<String, Histogram>>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

thread_local! {
    /// Scratch space for label text: a lookup of an existing series allocates nothing.
    static LABELS: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Render `labels` into `out` (cleared first), escaping `\`, `"` and newlines in values.
fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    out.clear();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Run `f` on the series `labels` of `map`, creating it with `new` when it does not exist.
fn with_series<T>(map: &mut HashMap<String, T>, labels: &[(&str, &str)], new: impl FnOnce() -> T, f: impl FnOnce(&mut T)) {
    LABELS.with(|buf| {
        let mut buf = buf.borrow_mut();
        write_labels(&mut buf, labels);
        match map.get_mut(buf.as_str()) {
            Some(v) => f(v),
            None => {
                let mut v = new();
                f(&mut v);
                map.insert(buf.clone(), v);
            }
        }
    });
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], v: f64) {
        let mut inner = self.lock();
        with_series(inner.values.entry(name).or_default(), labels, || 0.0, |x| *x += v);
    }

    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }

    pub fn set(&self, name: &'static str, labels: &[(&str, &str)], v: f64) {
        let mut inner = self.lock();
        with_series(inner.values.entry(name).or_default(), labels, || 0.0, |x| *x = v);
    }

    pub fn observe(&self, name: &'static str, labels: &[(&str, &str)], seconds: f64) {
        let mut inner = self.lock();
        let new = || Histogram { counts: vec![0; BUCKETS_S.len()], ..Histogram::default() };
        with_series(inner.histograms.entry(name).or_default(), labels, new, |h| {
            for (i, b) in BUCKETS_S.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        });
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let kind_text = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind_text}");
            if *kind == Kind::Histogram {
                let mut series: Vec<_> = inner.histograms.get(name).into_iter().flatten().collect();
                series.sort_by(|a, b| a.0.cmp(b.0));
                for (labels, h) in series {
                    let sep = if labels.is_empty() { "" } else { "," };
                    for (i, b) in BUCKETS_S.iter().enumerate() {
                        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", h.counts[i]);
                    }
                    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
                    let braced = braced(labels);
                    let _ = writeln!(out, "{name}_sum{braced} {}", h.sum);
                    let _ = writeln!(out, "{name}_count{braced} {}", h.count);
                }
            } else {
                let mut series: Vec<_> = inner.values.get(name).into_iter().flatten().collect();
                series.sort_by(|a, b| a.0.cmp(b.0));
                for (labels, v) in series {
                    let _ = writeln!(out, "{name}{} {v}", braced(labels));
                }
            }
        }
        out
    }
}

/// `{labels}`, or nothing for a series without labels (Prometheus writes `name 3`, not `name{} 3`).
fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../docs/metrics.md");
        for (name, _, _) in METRICS {
            assert!(doc.contains(&format!("`{name}`")), "{name} is missing from docs/metrics.md");
        }
    }

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.inc("voxgate_gateway_requests_total", &[("model", "a\"b"), ("outcome", "ok")]);
        m.inc("voxgate_gateway_requests_total", &[("model", "a\"b"), ("outcome", "ok")]);
        m.observe("voxgate_gateway_ttft_seconds", &[("model", "m")], 0.02);
        let text = m.render();
        assert!(text.contains("voxgate_gateway_requests_total{model=\"a\\\"b\",outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("voxgate_gateway_ttft_seconds_bucket{model=\"m\",le=\"0.025\"} 1"), "{text}");
        assert!(text.contains("voxgate_gateway_ttft_seconds_bucket{model=\"m\",le=\"0.01\"} 0"), "{text}");
        assert!(text.contains("voxgate_gateway_ttft_seconds_count{model=\"m\"} 1"), "{text}");
    }
}
