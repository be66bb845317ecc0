//! The Anthropic adapter against the fake Messages API over real loopback HTTP.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use voxgate::llm::error::ProviderError;
use voxgate::llm::providers::anthropic::Anthropic;
use voxgate::llm::providers::{EventStream, HttpSettings};
use voxgate::llm::types::{ChatRequest, Event, FinishReason, Usage};
use voxgate::secret::Secret;

use crate::support::{self, vendors::anthropic as fake};

async fn provider() -> (Anthropic, support::Recorder) {
    let (base_url, recorder) = fake::start().await;
    let settings = HttpSettings::new(base_url, Some(Secret::new("test-key")), reqwest::Client::new());
    (Anthropic::new(settings), recorder)
}

fn request(extra: Value) -> ChatRequest {
    let mut v = json!({"model": "voice", "messages": [{"role": "user", "content": "Hi"}]});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

fn weather_tools() -> Value {
    json!([
        {"type":"function","function":{"name":"get_weather","description":"Current weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
        {"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{"tz":{"type":"string"}}}}}
    ])
}

/// Every item of the stream: the events before the first error, and that error.
async fn collect(mut stream: EventStream) -> (Vec<Event>, Option<ProviderError>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn text(events: &[Event]) -> String {
    events.iter().filter_map(|e| if let Event::Text(t) = e { Some(t.as_str()) } else { None }).collect()
}

/// Tool calls as (index, id, name, arguments joined).
fn tool_calls(events: &[Event]) -> Vec<(u32, String, String, String)> {
    let mut calls: Vec<(u32, String, String, String)> = Vec::new();
    for e in events {
        match e {
            Event::ToolCallStart { index, id, name } => calls.push((*index, id.clone(), name.clone(), String::new())),
            Event::ToolCallArgs { index, arguments } => {
                assert!(!arguments.is_empty(), "empty argument fragment");
                let call = calls.iter_mut().find(|c| c.0 == *index).expect("arguments before their call started");
                call.3.push_str(arguments);
            }
            _ => {}
        }
    }
    calls
}

fn finish(events: &[Event]) -> Vec<FinishReason> {
    events.iter().filter_map(|e| if let Event::Finish(f) = e { Some(*f) } else { None }).collect()
}

fn usage(events: &[Event]) -> Vec<Usage> {
    events.iter().filter_map(|e| if let Event::Usage(u) = e { Some(*u) } else { None }).collect()
}

/// The fake's usage (input 8, cache write 3, cache read 2, output 4) in our convention.
const FAKE_USAGE: Usage = Usage { input_tokens: 13, output_tokens: 4, cached_input_tokens: 2, cache_write_tokens: 3, reasoning_tokens: 0 };

async fn send_err(model: &str, stream: bool) -> ProviderError {
    let (p, _rec) = provider().await;
    match p.send(&request(json!({})), model, stream).await {
        Ok(_) => panic!("{model}: expected an HTTP error"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn text_streams_with_headers_and_usage() {
    let (p, rec) = provider().await;
    let (events, err) = collect(p.send(&request(json!({})), "text", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), "Hello, world!");
    assert!(events.iter().filter(|e| matches!(e, Event::Text(_))).count() >= 3, "text should arrive in pieces");
    assert_eq!(finish(&events), vec![FinishReason::Stop]);
    assert_eq!(usage(&events), vec![FAKE_USAGE]);
    assert_eq!(events.last(), Some(&Event::Usage(FAKE_USAGE)));

    let r = rec.last();
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some("test-key"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["model"], "text");
    assert_eq!(r.body["max_tokens"], 4096);
}

#[tokio::test]
async fn text_without_streaming() {
    let (p, rec) = provider().await;
    let (events, err) = collect(p.send(&request(json!({"max_tokens": 50})), "text", false).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events, vec![Event::Text("Hello, world!".into()), Event::Finish(FinishReason::Stop), Event::Usage(FAKE_USAGE)]);
    let r = rec.last();
    assert!(r.body.get("stream").is_none(), "non-streaming requests must not carry stream");
    assert_eq!(r.body["max_tokens"], 50);
}

#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    // A proxy mounted under a prefix: the fake only answers /v1/messages, so a prefix that is
    // dropped or doubled shows up as a 404.
    let (base_url, rec) = fake::start().await;
    let settings = HttpSettings::new(format!("{base_url}/"), None, reqwest::Client::new());
    let (events, _) = collect(Anthropic::new(settings).send(&request(json!({})), "text", false).await.unwrap()).await;
    assert_eq!(text(&events), "Hello, world!");
    assert_eq!(rec.last().header("x-api-key"), None, "no key configured, no header sent");
}

#[tokio::test]
async fn one_tool_call_streams() {
    let (p, rec) = provider().await;
    let req = request(json!({"tools": weather_tools(), "tool_choice": "auto"}));
    let (events, err) = collect(p.send(&req, "tool", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 1);
    let (index, id, name, args) = &calls[0];
    assert_eq!((*index, id.as_str(), name.as_str()), (0, "toolu_01", "get_weather"));
    assert_eq!(serde_json::from_str::<Value>(args).unwrap(), json!({"city": "Paris"}));
    assert_eq!(finish(&events), vec![FinishReason::ToolCalls]);

    let body = rec.last().body;
    assert_eq!(body["tool_choice"], json!({"type": "auto"}));
    assert_eq!(body["tools"][0]["name"], "get_weather");
    assert_eq!(body["tools"][0]["input_schema"]["properties"]["city"]["type"], "string");
    assert!(body["tools"][0].get("function").is_none(), "tools must use Anthropic's shape");
}

#[tokio::test]
async fn two_tools_get_tool_indexes_0_and_1() {
    let (p, _rec) = provider().await;
    let req = request(json!({"tools": weather_tools()}));
    for stream in [true, false] {
        let (events, err) = collect(p.send(&req, "two_tools", stream).await.unwrap()).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(text(&events), "Let me check.");
        let calls = tool_calls(&events);
        // Content blocks 1 and 2 (block 0 is the text) are tool calls 0 and 1.
        assert_eq!(calls.iter().map(|c| (c.0, c.2.as_str())).collect::<Vec<_>>(), vec![(0, "get_weather"), (1, "get_time")]);
        assert_eq!(serde_json::from_str::<Value>(&calls[0].3).unwrap(), json!({"city": "Paris"}));
        assert_eq!(serde_json::from_str::<Value>(&calls[1].3).unwrap(), json!({"tz": "CET"}));
        assert_ne!(calls[0].1, calls[1].1, "tool call ids must differ");
        assert_eq!(finish(&events), vec![FinishReason::ToolCalls], "stream={stream}");
        assert_eq!(usage(&events), vec![FAKE_USAGE], "stream={stream}");
    }
}

#[tokio::test]
async fn tool_results_round_trip_in_one_user_message() {
    let (p, rec) = provider().await;
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "voice",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_01", "content": "18 C, sunny"},
            {"role": "tool", "tool_call_id": "toolu_02", "content": "12:00"}
        ],
        "tools": weather_tools()
    }))
    .unwrap();
    let (events, err) = collect(p.send(&req, "text", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), "Hello, world!");

    let r = rec.last();
    assert_eq!(r.header("x-api-key"), Some("test-key"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    let body = r.body;
    assert_eq!(body["system"], "You are a weather bot.");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages.iter().all(|m| m["role"] != "system" && m["role"] != "tool"));
    assert_eq!(messages[0], json!({"role": "user", "content": "Weather and time in Paris?"}));
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {"tz": "CET"}}
        ]})
    );
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C, sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": "12:00"}
        ]})
    );
}

#[tokio::test]
async fn json_mode_comes_back_as_text() {
    let (p, rec) = provider().await;
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]});
    let req = request(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}));
    for stream in [true, false] {
        let (events, err) = collect(p.send(&req, "json", stream).await.unwrap()).await;
        assert!(err.is_none(), "{err:?}");
        assert!(tool_calls(&events).is_empty(), "JSON mode must not surface as a tool call: {events:?}");
        assert_eq!(serde_json::from_str::<Value>(&text(&events)).unwrap(), json!({"answer": 42}));
        assert_eq!(finish(&events), vec![FinishReason::Stop]);

        let body = rec.last().body;
        assert_eq!(body["tool_choice"], json!({"type": "tool", "name": "json"}));
        assert_eq!(body["tools"], json!([{"name": "json", "description": body["tools"][0]["description"], "input_schema": schema}]));
    }
    // json_object: the same, with an open object schema.
    let (events, _) = collect(p.send(&request(json!({"response_format": {"type": "json_object"}})), "json", true).await.unwrap()).await;
    assert_eq!(text(&events), "{\"answer\":42}");
    assert_eq!(rec.last().body["tools"][0]["input_schema"], json!({"type": "object"}));
}

#[tokio::test]
async fn usage_is_normalised_not_double_counted() {
    let (p, _rec) = provider().await;
    for stream in [true, false] {
        let (events, _) = collect(p.send(&request(json!({})), "text", stream).await.unwrap()).await;
        let u = usage(&events);
        assert_eq!(u.len(), 1, "usage exactly once (stream={stream})");
        // input 8 + cache write 3 + cache read 2; output is message_delta's 4, not 1 + 4.
        assert_eq!(u[0], FAKE_USAGE, "stream={stream}");
    }
}

#[tokio::test]
async fn rate_limit_is_retryable_after_two_seconds() {
    let e = send_err("rate_limited", true).await;
    assert!(e.is_retryable());
    assert_eq!(e.kind(), "rate_limited");
    match e {
        ProviderError::Http { status, code, retry_after, quota, .. } => {
            assert_eq!(status, 429);
            assert_eq!(code.as_deref(), Some("rate_limit_error"));
            assert_eq!(retry_after, Some(Duration::from_secs(2)));
            assert!(!quota);
        }
        other => panic!("expected HTTP error, got {other:?}"),
    }
}

#[tokio::test]
async fn overloaded_529_is_retryable() {
    for stream in [true, false] {
        let e = send_err("overloaded", stream).await;
        assert!(e.is_retryable());
        assert_eq!(e.kind(), "overloaded");
        assert!(matches!(&e, ProviderError::Http { status: 529, code: Some(c), .. } if c == "overloaded_error"), "{e:?}");
    }
}

#[tokio::test]
async fn bad_request_and_unauthorized_are_not_retryable() {
    let e = send_err("bad_request", true).await;
    assert!(!e.is_retryable());
    assert!(
        matches!(&e, ProviderError::Http { status: 400, code: Some(c), message, .. }
        if c == "invalid_request_error" && message.contains("alternate")),
        "{e:?}"
    );
    let e = send_err("unauthorized", false).await;
    assert!(!e.is_retryable());
    assert!(matches!(&e, ProviderError::Http { status: 401, code: Some(c), .. } if c == "authentication_error"), "{e:?}");
}

#[tokio::test]
async fn quota_errors_are_not_retryable() {
    for scenario in ["quota", "spend_limit", "credit_balance"] {
        let e = send_err(scenario, true).await;
        assert!(!e.is_retryable(), "{scenario}: {e:?}");
        assert_eq!(e.kind(), "quota", "{scenario}");
    }
}

#[tokio::test]
async fn stall_hangs_until_the_caller_gives_up() {
    let (p, _rec) = provider().await;
    let mut stream = p.send(&request(json!({})), "stall", true).await.unwrap();
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(next.is_err(), "a stalled stream must not yield anything: {next:?}");

    let mut stream = p.send(&request(json!({})), "stall_after_content", true).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), Event::Text("Hel".into()));
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(next.is_err(), "nothing after Hel: {next:?}");
}

#[tokio::test]
async fn dropping_a_stalled_stream_closes_the_upstream_body() {
    let (p, rec) = provider().await;
    let mut stream = p.send(&request(json!({})), "stall_after_content", true).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), Event::Text("Hel".into()));
    drop(stream);
    assert!(support::eventually(|| rec.dropped_early() == 1).await, "upstream body was not dropped");
}

#[tokio::test]
async fn cut_stream_is_an_error_not_a_short_answer() {
    let (p, _rec) = provider().await;
    let (events, err) = collect(p.send(&request(json!({})), "cut", true).await.unwrap()).await;
    assert_eq!(text(&events), "Hel");
    assert!(finish(&events).is_empty());
    let err = err.expect("a cut stream must end in an error");
    assert!(matches!(err, ProviderError::Stream { .. }), "{err:?}");
    assert!(err.is_retryable());

    // Non-streaming: a body cut half-way is an error too (read once the headers are in).
    let whole = p.send(&request(json!({})), "cut", false).await.unwrap();
    assert!(collect(whole).await.1.is_some());
}

#[tokio::test]
async fn malformed_frame_is_an_error() {
    let (p, _rec) = provider().await;
    let (events, err) = collect(p.send(&request(json!({})), "malformed", true).await.unwrap()).await;
    assert!(events.is_empty(), "{events:?}");
    let err = err.expect("a malformed frame must end in an error");
    assert!(matches!(&err, ProviderError::Stream { message, .. } if message.contains("malformed")), "{err:?}");

    let whole = p.send(&request(json!({})), "malformed", false).await.unwrap();
    let e = collect(whole).await.1.expect("malformed body");
    assert!(matches!(e, ProviderError::Stream { .. }), "{e:?}");
}

#[tokio::test]
async fn midstream_error_event_carries_its_type() {
    let (p, _rec) = provider().await;
    let (events, err) = collect(p.send(&request(json!({})), "midstream_error", true).await.unwrap()).await;
    assert_eq!(events, vec![Event::Text("Hel".into())]);
    match err.expect("an in-band error must end the stream in an error") {
        ProviderError::Stream { code, message } => {
            assert_eq!(code.as_deref(), Some("overloaded_error"));
            assert_eq!(message, "Overloaded");
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_tool_arguments_fail_before_sending() {
    let (p, rec) = provider().await;
    let req: ChatRequest = serde_json::from_value(json!({"model": "voice", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "18 C"}
    ]}))
    .unwrap();
    let e = p.send(&req, "text", true).await.err().expect("invalid arguments");
    assert!(matches!(&e, ProviderError::Invalid(m) if m.contains("get_weather")), "{e:?}");
    assert_eq!(rec.count(), 0, "nothing must reach the vendor");
}

/// A conversation with two speakers, then a message without a name: what a voice session sends.
fn two_speakers(names: bool) -> ChatRequest {
    let name = |n: &str| if names { json!(n) } else { Value::Null };
    let mut v = json!({
        "model": "voice",
        "messages": [
            {"role": "system", "content": "You take restaurant bookings."},
            {"role": "user", "name": name("speaker_A"), "content": "Hi, I'm calling about my reservation."},
            {"role": "user", "name": name("speaker_B"), "content": "Could we move it to eight o'clock?"},
            {"role": "assistant", "content": "Of course."},
            {"role": "user", "content": "Thanks."},
            {"role": "user", "name": name("speaker_A"), "content": [{"type": "text", "text": "And a high chair,"}, {"type": "text", "text": "please."}]}
        ]
    });
    for m in v["messages"].as_array_mut().unwrap() {
        if m["name"].is_null() {
            m.as_object_mut().unwrap().remove("name");
        }
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn user_names_become_labels_that_survive_merging() {
    let (p, rec) = provider().await;
    let (events, err) = collect(p.send(&two_speakers(true), "text", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), "Hello, world!");
    let body = rec.last().body;
    assert_eq!(
        body["messages"],
        json!([
            // Two speakers in a row merge into one user turn; each block keeps its speaker.
            {"role": "user", "content": [
                {"type": "text", "text": "speaker_A: Hi, I'm calling about my reservation."},
                {"type": "text", "text": "speaker_B: Could we move it to eight o'clock?"}
            ]},
            {"role": "assistant", "content": "Of course."},
            // The label goes before the first text part of a message only; a nameless message is as sent.
            {"role": "user", "content": [
                {"type": "text", "text": "Thanks."},
                {"type": "text", "text": "speaker_A: And a high chair,"},
                {"type": "text", "text": "please."}
            ]}
        ])
    );
    assert_eq!(body["system"], "You take restaurant bookings.");
}

#[tokio::test]
async fn messages_without_names_are_sent_as_before() {
    let (p, rec) = provider().await;
    let (_, err) = collect(p.send(&two_speakers(false), "text", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    let expected = json!([
        {"role": "user", "content": [
            {"type": "text", "text": "Hi, I'm calling about my reservation."},
            {"type": "text", "text": "Could we move it to eight o'clock?"}
        ]},
        {"role": "assistant", "content": "Of course."},
        {"role": "user", "content": [
            {"type": "text", "text": "Thanks."},
            {"type": "text", "text": "And a high chair,"},
            {"type": "text", "text": "please."}
        ]}
    ]);
    assert_eq!(rec.last().body["messages"], expected);
    // Byte for byte, as the adapter sent nameless messages before it carried names.
    let built = voxgate::llm::providers::anthropic::request_body(&two_speakers(false), "text", true).unwrap();
    assert_eq!(
        serde_json::to_string(&built).unwrap(),
        concat!(
            r#"{"max_tokens":4096,"messages":[{"content":[{"text":"Hi, I'm calling about my reservation.","type":"text"},"#,
            r#"{"text":"Could we move it to eight o'clock?","type":"text"}],"role":"user"},{"content":"Of course.","role":"assistant"},"#,
            r#"{"content":[{"text":"Thanks.","type":"text"},{"text":"And a high chair,","type":"text"},{"text":"please.","type":"text"}],"role":"user"}],"#,
            r#""model":"text","stream":true,"system":"You take restaurant bookings."}"#
        )
    );
}
