//! Decoding throughput of each vendor's stream format (SSE parsing plus the provider's decoder),
//! over the fixtures in `fixtures/sse/`. Plain timing, no framework:
//! `cargo bench --bench sse_decode` prints microseconds per stream and MB/s.

use std::time::Instant;

use voxgate::llm::providers::http::SseDecoder;
use voxgate::llm::providers::{anthropic, gemini, openai};
use voxgate::llm::sse::SseParser;

fn run(name: &str, file: &str, make: impl Fn() -> Box<dyn SseDecoder>) {
    let bytes = std::fs::read(format!("{}/fixtures/sse/{file}", env!("CARGO_MANIFEST_DIR"))).expect("fixture");
    let iterations = 20_000;
    let mut events = 0usize;
    let started = Instant::now();
    for _ in 0..iterations {
        let mut parser = SseParser::new();
        let mut decoder = make();
        for piece in bytes.chunks(1460) {
            for ev in parser.push(piece).expect("valid fixture") {
                events += decoder.event(ev).expect("valid fixture").len();
            }
        }
        events += decoder.end().map(|e| e.len()).unwrap_or(0);
    }
    let elapsed = started.elapsed();
    let per_stream_us = elapsed.as_secs_f64() * 1e6 / iterations as f64;
    let mb_s = bytes.len() as f64 * iterations as f64 / elapsed.as_secs_f64() / 1e6;
    println!("{name:<10} {:>6} bytes  {per_stream_us:>7.2} µs/stream  {mb_s:>7.1} MB/s  ({} events)", bytes.len(), events / iterations);
}

fn main() {
    run("openai", "openai_text_then_tool.sse", || Box::new(openai::StreamDecoder::default()));
    run("anthropic", "anthropic_text_then_two_tools.sse", || Box::new(anthropic::StreamDecoder::new(false)));
    run("gemini", "gemini_text_then_call.sse", || Box::new(gemini::StreamDecoder::default()));
}
