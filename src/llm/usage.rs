//! Usage and cost: exact list-price arithmetic with zero markup, and an in-memory book of
//! requests, tokens, cost, fallbacks, errors and latency percentiles per API key and model.
//!
//! Money is integer picodollars (1e-12 USD): a price in micro-dollars per million tokens times a
//! token count is exactly that unit, so sums never drift. Dollars appear only when displayed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::config::ModelConfig;
use super::types::Usage;

/// Cost of `usage` at `model`'s list prices, in picodollars.
///
/// Prompt tokens split three ways: fresh input at the input price, cache reads at the cached
/// price, cache writes at the cache-write price (both subsets of `input_tokens`, see [`Usage`]).
/// Output tokens (reasoning included, as vendors bill them) at the output price.
pub fn cost_picousd(usage: &Usage, model: &ModelConfig) -> u128 {
    let cached = usage.cached_input_tokens.min(usage.input_tokens);
    let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
    let fresh = usage.input_tokens - cached - written; // cannot underflow: both are capped above
    fresh as u128 * model.input as u128
        + cached as u128 * model.cached_input as u128
        + written as u128 * model.cache_write as u128
        + usage.output_tokens as u128 * model.output as u128
}

pub fn picousd_to_usd(p: u128) -> f64 {
    p as f64 / 1e12
}

/// How a gateway request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    /// The client went away (or the voice turn was interrupted) before the answer ended.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One finished gateway request, as recorded.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    /// The model that served, or the requested name when nothing served.
    pub model: String,
    pub outcome: Outcome,
    pub usage: Usage,
    pub cost_picousd: u128,
    pub fell_back: bool,
    pub ttft: Option<Duration>,
    pub latency: Duration,
    /// `usage` is voxgate's estimate: the upstream never reported its count.
    pub usage_estimated: bool,
}

/// Characters per token in an estimate: the usual rule of thumb for English with BPE tokenizers.
pub const CHARS_PER_TOKEN_ESTIMATE: usize = 4;

/// Tokens in `chars` characters of text, rounded up, for an answer whose upstream never sent
/// its usage (the count is billed, so a cut must not make it free).
pub fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(CHARS_PER_TOKEN_ESTIMATE) as u64
}

const SAMPLES_MAX: usize = 10_000;

/// The most recent latency samples (bounded), for percentiles.
#[derive(Debug, Default, Clone)]
struct Samples(VecDeque<f64>);

impl Samples {
    fn push(&mut self, ms: f64) {
        if self.0.len() == SAMPLES_MAX {
            self.0.pop_front();
        }
        self.0.push_back(ms);
    }

    fn percentiles(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.0.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles { p50: at(0.50), p95: at(0.95), p99: at(0.99) })
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Default)]
struct Row {
    requests: u64,
    errors: u64,
    cancelled: u64,
    fallbacks: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_tokens: u64,
    cost_picousd: u128,
    ttft_ms: Samples,
    latency_ms: Samples,
}

impl Row {
    fn snapshot(&self) -> Row {
        Row { ttft_ms: self.ttft_ms.clone(), latency_ms: self.latency_ms.clone(), ..*self }
    }
}

/// One row of `GET /v1/usage`.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub fallbacks: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    pub ttft_ms: Option<Percentiles>,
    pub latency_ms: Option<Percentiles>,
}

/// Usage per (key, model), kept in memory for the life of the process. Two levels so that
/// recording into an existing row looks up by `&str` and allocates nothing.
#[derive(Debug, Default)]
pub struct UsageBook {
    rows: Mutex<BTreeMap<String, BTreeMap<String, Row>>>,
}

impl UsageBook {
    pub fn record(&self, r: &Record) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if !rows.contains_key(&r.key) {
            rows.insert(r.key.clone(), BTreeMap::new());
        }
        let by_model = rows.get_mut(&r.key).expect("inserted above");
        if !by_model.contains_key(&r.model) {
            by_model.insert(r.model.clone(), Row::default());
        }
        let row = by_model.get_mut(&r.model).expect("inserted above");
        row.requests += 1;
        match r.outcome {
            Outcome::Ok => {}
            Outcome::Error => row.errors += 1,
            Outcome::Cancelled => row.cancelled += 1,
        }
        if r.fell_back {
            row.fallbacks += 1;
        }
        row.input_tokens = row.input_tokens.saturating_add(r.usage.input_tokens);
        row.output_tokens = row.output_tokens.saturating_add(r.usage.output_tokens);
        row.cached_input_tokens = row.cached_input_tokens.saturating_add(r.usage.cached_input_tokens);
        row.cache_write_tokens = row.cache_write_tokens.saturating_add(r.usage.cache_write_tokens);
        row.cost_picousd = row.cost_picousd.saturating_add(r.cost_picousd);
        if let Some(t) = r.ttft {
            row.ttft_ms.push(t.as_secs_f64() * 1000.0);
        }
        if r.outcome == Outcome::Ok {
            row.latency_ms.push(r.latency.as_secs_f64() * 1000.0);
        }
    }

    pub fn rows(&self) -> Vec<UsageRow> {
        // Copy under the lock, sort for percentiles outside it: recording never waits on a report.
        let copied: Vec<((String, String), Row)> = {
            let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            rows.iter().flat_map(|(key, models)| models.iter().map(|(model, r)| ((key.clone(), model.clone()), r.snapshot()))).collect()
        };
        copied
            .into_iter()
            .map(|((key, model), r)| UsageRow {
                key,
                model,
                requests: r.requests,
                errors: r.errors,
                cancelled: r.cancelled,
                fallbacks: r.fallbacks,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cached_input_tokens: r.cached_input_tokens,
                cache_write_tokens: r.cache_write_tokens,
                cost_usd: picousd_to_usd(r.cost_picousd),
                ttft_ms: r.ttft_ms.percentiles(),
                latency_ms: r.latency_ms.percentiles(),
            })
            .collect()
    }

    /// Total cost over every row, in picodollars.
    pub fn total_picousd(&self) -> u128 {
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).values().flat_map(|m| m.values()).map(|r| r.cost_picousd).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(input: f64, output: f64, cached: f64, write: f64) -> ModelConfig {
        let m = |v: f64| (v * 1e6).round() as u64;
        ModelConfig {
            id: "m".into(),
            provider: "p".into(),
            upstream: "m".into(),
            input: m(input),
            output: m(output),
            cached_input: m(cached),
            cache_write: m(write),
        }
    }

    #[test]
    fn one_million_tokens_cost_the_list_price() {
        let m = model(0.40, 1.60, 0.10, 0.40);
        let u = Usage { input_tokens: 1_000_000, output_tokens: 1_000_000, ..Usage::default() };
        assert_eq!(cost_picousd(&u, &m), 2_000_000_000_000); // $2.00 exactly
    }

    #[test]
    fn anthropic_cache_reads_and_writes_are_priced_apart() {
        // claude-sonnet-4-5: $3 in, $15 out, $0.30 cache read, $3.75 cache write.
        let m = model(3.0, 15.0, 0.30, 3.75);
        // 1000 fresh + 9000 read + 2000 written prompt tokens, 500 output.
        let u =
            Usage { input_tokens: 12_000, output_tokens: 500, cached_input_tokens: 9_000, cache_write_tokens: 2_000, reasoning_tokens: 0 };
        let expected_usd = (1000.0 * 3.0 + 9000.0 * 0.30 + 2000.0 * 3.75 + 500.0 * 15.0) / 1e6;
        assert_eq!(picousd_to_usd(cost_picousd(&u, &m)), expected_usd);
        // LiteLLM #11789: pricing cache reads as input would cost ~7x more on that part.
        let naive = Usage { cached_input_tokens: 0, cache_write_tokens: 0, ..u };
        assert!(cost_picousd(&naive, &m) > cost_picousd(&u, &m));
    }

    #[test]
    fn cost_is_additive_over_requests() {
        // Property: the cost of the sum equals the sum of the costs (no rounding per request).
        let m = model(0.15, 0.60, 0.075, 0.15);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % 5000
        };
        let mut total = Usage::default();
        let mut sum = 0u128;
        for _ in 0..1000 {
            let input = next() + 1;
            let u = Usage { input_tokens: input, output_tokens: next(), cached_input_tokens: next() % input, ..Usage::default() };
            sum += cost_picousd(&u, &m);
            total.input_tokens += u.input_tokens;
            total.output_tokens += u.output_tokens;
            total.cached_input_tokens += u.cached_input_tokens;
        }
        assert_eq!(cost_picousd(&total, &m), sum);
    }

    #[test]
    fn estimates_round_up() {
        assert_eq!((estimate_tokens(0), estimate_tokens(1), estimate_tokens(4), estimate_tokens(5)), (0, 1, 1, 2));
    }

    #[test]
    fn percentiles_and_grouping() {
        let book = UsageBook::default();
        for i in 1..=100u64 {
            book.record(&Record {
                key: "k".into(),
                model: "m".into(),
                outcome: if i % 10 == 0 { Outcome::Error } else { Outcome::Ok },
                usage: Usage { input_tokens: 1, output_tokens: 2, ..Usage::default() },
                cost_picousd: 5,
                fell_back: i % 2 == 0,
                ttft: Some(Duration::from_millis(i)),
                latency: Duration::from_millis(i * 2),
                usage_estimated: false,
            });
        }
        let rows = book.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.requests, r.errors, r.fallbacks, r.output_tokens), (100, 10, 50, 200));
        let t = r.ttft_ms.unwrap();
        assert_eq!((t.p50, t.p95, t.p99), (50.0, 95.0, 99.0));
        assert_eq!(book.total_picousd(), 500);
    }
}
