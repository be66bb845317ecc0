//! The recorded-shape vendor streams in `fixtures/sse/` decode to the same kind of answer:
//! text, then tool calls with dense indexes, a finish reason, and normalised usage.

use voxgate::llm::providers::http::SseDecoder;
use voxgate::llm::providers::{anthropic, gemini, openai};
use voxgate::llm::sse::SseParser;
use voxgate::llm::types::{Completion, FinishReason, Usage};

/// Decode `path` as it would arrive in 13-byte reads.
fn decode(path: &str, mut decoder: impl SseDecoder) -> Completion {
    let bytes = std::fs::read(format!("{}/fixtures/sse/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut parser = SseParser::new();
    let mut c = Completion::default();
    for piece in bytes.chunks(13) {
        for ev in parser.push(piece).unwrap() {
            for e in decoder.event(ev).unwrap() {
                c.push(&e);
            }
        }
    }
    if let Some(ev) = parser.finish() {
        for e in decoder.event(ev).unwrap() {
            c.push(&e);
        }
    }
    for e in decoder.end().expect("the fixture is a complete answer") {
        c.push(&e);
    }
    c
}

#[test]
fn openai_fixture() {
    let c = decode("openai_text_then_tool.sse", openai::StreamDecoder::default());
    assert_eq!(c.text, "Sure, let me look that up for you. ");
    assert_eq!(c.tool_calls.len(), 1);
    assert_eq!(c.tool_calls[0].function.name, "get_weather");
    assert_eq!(c.tool_calls[0].function.arguments, r#"{"city": "Paris", "units": "c"}"#);
    assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(c.usage, Some(Usage { input_tokens: 120, output_tokens: 31, cached_input_tokens: 64, ..Usage::default() }));
}

#[test]
fn anthropic_fixture() {
    let c = decode("anthropic_text_then_two_tools.sse", anthropic::StreamDecoder::new(false));
    assert_eq!(c.text, "Let me check both for you. ");
    let names: Vec<&str> = c.tool_calls.iter().map(|t| t.function.name.as_str()).collect();
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_eq!(c.tool_calls[1].function.arguments, r#"{"tz":"CET"}"#);
    assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
    // 400 fresh + 100 written + 2000 read; output is message_delta's total, not added to 1.
    assert_eq!(
        c.usage,
        Some(Usage { input_tokens: 2500, output_tokens: 58, cached_input_tokens: 2000, cache_write_tokens: 100, reasoning_tokens: 0 })
    );
}

#[test]
fn gemini_fixture() {
    let c = decode("gemini_text_then_call.sse", gemini::StreamDecoder::default());
    assert_eq!(c.text, "Checking the weather in Paris now.");
    assert_eq!(c.tool_calls.len(), 1);
    assert!(c.tool_calls[0].id.starts_with("call_"));
    let args: serde_json::Value = serde_json::from_str(&c.tool_calls[0].function.arguments).unwrap();
    assert_eq!(args, serde_json::json!({"city": "Paris", "units": "c"}));
    assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(c.usage.map(|u| (u.input_tokens, u.output_tokens, u.cached_input_tokens)), Some((90, 20, 32)));
}
