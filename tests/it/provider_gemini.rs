//! The Gemini adapter against the fake Gemini API over real loopback HTTP.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use voxgate::llm::error::ProviderError;
use voxgate::llm::providers::gemini::Gemini;
use voxgate::llm::providers::{EventStream, HttpSettings};
use voxgate::llm::types::{ChatRequest, Event, FinishReason, Usage};
use voxgate::secret::Secret;

use crate::support::{self, vendors::gemini};

fn provider(base_url: &str) -> Gemini {
    Gemini::new(HttpSettings::new(base_url, Some(Secret::new("test-key")), reqwest::Client::new()))
}

fn ask(text: &str) -> ChatRequest {
    serde_json::from_value(json!({"model": "voice", "messages": [{"role": "user", "content": text}]})).unwrap()
}

fn with_weather_tool(mut request: ChatRequest) -> ChatRequest {
    request.tools = serde_json::from_value(json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}}]))
    .unwrap();
    request
}

/// Every item of the stream, stopping at the first error.
async fn collect(mut stream: EventStream) -> (Vec<Event>, Option<ProviderError>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => events.push(event),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

async fn run(scenario: &str, request: &ChatRequest, stream: bool) -> Vec<Event> {
    let (base, _rec) = gemini::start().await;
    let events = provider(&base).send(request, scenario, stream).await.unwrap();
    let (events, err) = collect(events).await;
    assert!(err.is_none(), "{scenario}: {err:?}");
    events
}

fn text_of(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// (index, id, name, arguments) of every tool call.
fn calls_of(events: &[Event]) -> Vec<(u32, String, String, Value)> {
    let mut calls: Vec<(u32, String, String, String)> = Vec::new();
    for e in events {
        match e {
            Event::ToolCallStart { index, id, name } => calls.push((*index, id.clone(), name.clone(), String::new())),
            Event::ToolCallArgs { index, arguments } => {
                let call = calls.iter_mut().find(|c| c.0 == *index).expect("args before start");
                call.3.push_str(arguments);
            }
            _ => {}
        }
    }
    calls.into_iter().map(|(i, id, name, args)| (i, id, name, serde_json::from_str(&args).unwrap())).collect()
}

const FAKE_USAGE: Usage = Usage { input_tokens: 10, output_tokens: 7, cached_input_tokens: 2, cache_write_tokens: 0, reasoning_tokens: 3 };

#[tokio::test]
async fn streamed_text_arrives_whole_with_one_final_usage() {
    let (base, rec) = gemini::start().await;
    let stream = provider(&base).send(&ask("Hi"), "text", true).await.unwrap();
    let (events, err) = collect(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "Hello, world!", "thought summaries must not leak");
    let n = events.len();
    assert_eq!(events[n - 2], Event::Finish(FinishReason::Stop));
    assert_eq!(events[n - 1], Event::Usage(FAKE_USAGE));
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Usage(_))).count(), 1);

    let r = rec.last();
    assert_eq!(r.path, "/v1beta/models/text:streamGenerateContent");
    assert_eq!(r.query, "alt=sse");
    assert_eq!(r.header("x-goog-api-key"), Some("test-key"));
    assert!(!r.query.contains("key") && !r.path.contains("test-key"), "key leaked into URL");
    assert_eq!(r.body["contents"], json!([{"role": "user", "parts": [{"text": "Hi"}]}]));
}

#[tokio::test]
async fn one_shot_text_uses_generate_content() {
    let (base, rec) = gemini::start().await;
    let stream = provider(&base).send(&ask("Hi"), "text", false).await.unwrap();
    let (events, err) = collect(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events,
        vec![
            Event::Text("Hello".into()),
            Event::Text(", wor".into()),
            Event::Text("ld!".into()),
            Event::Finish(FinishReason::Stop),
            Event::Usage(FAKE_USAGE),
        ]
    );
    let r = rec.last();
    assert_eq!(r.path, "/v1beta/models/text:generateContent");
    assert_eq!(r.query, "");
    assert_eq!(r.header("x-goog-api-key"), Some("test-key"));
}

#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    let (base, rec) = gemini::start().await;
    let events = provider(&format!("{base}/proxy/")).send(&ask("Hi"), "models/text", true).await.unwrap();
    let (events, err) = collect(events).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "Hello, world!");
    assert_eq!(rec.last().path, "/proxy/v1beta/models/text:streamGenerateContent");
}

#[tokio::test]
async fn tool_call_gets_an_id_and_a_tool_calls_finish() {
    let request = with_weather_tool(ask("Weather in Paris?"));
    for stream in [true, false] {
        let events = run("tool", &request, stream).await;
        let calls = calls_of(&events);
        assert_eq!(calls.len(), 1, "stream={stream}: {events:?}");
        let (index, id, name, args) = &calls[0];
        assert_eq!((*index, name.as_str()), (0, "get_weather"));
        assert!(id.starts_with("call_") && id.len() > 10, "{id}");
        assert_eq!(args, &json!({"city": "Paris"}));
        assert!(events.contains(&Event::Finish(FinishReason::ToolCalls)), "stream={stream}");
        assert!(!events.contains(&Event::Finish(FinishReason::Stop)));
    }
}

#[tokio::test]
async fn two_tool_calls_are_indexed_zero_and_one() {
    let request = with_weather_tool(ask("Weather and time in Paris?"));
    for stream in [true, false] {
        let events = run("two_tools", &request, stream).await;
        assert_eq!(text_of(&events), "Let me check.");
        let calls = calls_of(&events);
        assert_eq!(calls.len(), 2, "stream={stream}: {events:?}");
        assert_eq!((calls[0].0, calls[0].2.as_str()), (0, "get_weather"));
        assert_eq!(calls[0].3, json!({"city": "Paris"}));
        assert_eq!((calls[1].0, calls[1].2.as_str()), (1, "get_time"));
        assert_eq!(calls[1].3, json!({"tz": "CET"}));
        assert_ne!(calls[0].1, calls[1].1, "ids must differ");
        assert!(events.contains(&Event::Finish(FinishReason::ToolCalls)));
    }
}

#[tokio::test]
async fn tool_result_round_trip_names_the_function() {
    let (base, rec) = gemini::start().await;
    let gemini = provider(&base);
    let mut first = with_weather_tool(ask("Weather in Paris?"));
    first.tool_choice = Some(serde_json::from_value(json!("required")).unwrap());
    let (events, err) = collect(gemini.send(&first, "tool", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    let (_, id, name, args) = calls_of(&events).remove(0);

    let second: ChatRequest = serde_json::from_value(json!({
        "model": "voice",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}}]},
            {"role": "tool", "tool_call_id": id, "content": "{\"temp_c\": 18, \"sky\": \"clear\"}"}
        ],
        "tools": first.tools,
        "tool_choice": "auto"
    }))
    .unwrap();
    let (events, err) = collect(gemini.send(&second, "text", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "Hello, world!");

    let requests = rec.all();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
    let body = &requests[1].body;
    assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "You are a weather bot."}]}));
    let contents = body["contents"].as_array().unwrap();
    let roles: Vec<&str> = contents.iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user"]);
    let call = &contents[1]["parts"][0];
    assert_eq!(call["functionCall"], json!({"name": "get_weather", "args": {"city": "Paris"}}));
    assert!(call["thoughtSignature"].is_string(), "Gemini 3 needs a signature: {call}");
    assert_eq!(contents[2]["parts"], json!([{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18, "sky": "clear"}}}]));
    let declaration = &body["tools"][0]["functionDeclarations"][0];
    assert_eq!(declaration["name"], "get_weather");
    assert_eq!(declaration["parametersJsonSchema"]["required"], json!(["city"]));
    assert_eq!(body["toolConfig"]["functionCallingConfig"], json!({"mode": "AUTO"}));
    for r in &requests {
        assert_eq!(r.header("x-goog-api-key"), Some("test-key"));
        assert_eq!(r.query, "alt=sse");
    }
}

#[tokio::test]
async fn json_mode_asks_for_json_and_gets_it() {
    let (base, rec) = gemini::start().await;
    let mut request = ask("The answer?");
    request.response_format = Some(
        serde_json::from_value(json!({"type": "json_schema", "json_schema": {"name": "answer",
            "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}}}))
        .unwrap(),
    );
    let (events, err) = collect(provider(&base).send(&request, "json", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    let answer: Value = serde_json::from_str(&text_of(&events)).unwrap();
    assert_eq!(answer, json!({"answer": 42}));
    let config = &rec.last().body["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseJsonSchema"]["required"], json!(["answer"]));
}

async fn send_error(scenario: &str, stream: bool) -> ProviderError {
    let (base, _rec) = gemini::start().await;
    match provider(&base).send(&ask("Hi"), scenario, stream).await {
        Ok(_) => panic!("{scenario}: expected an error status"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn rate_limit_is_retryable_after_the_retry_delay() {
    for stream in [true, false] {
        let e = send_error("rate_limited", stream).await;
        let ProviderError::Http { status, code, retry_after, quota, .. } = &e else { panic!("{e:?}") };
        assert_eq!(*status, 429);
        assert_eq!(code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(*retry_after, Some(Duration::from_secs(2)));
        assert!(!quota);
        assert!(e.is_retryable());
        assert_eq!(e.kind(), "rate_limited");
    }
}

#[tokio::test]
async fn daily_quota_fails_over_without_a_wait() {
    let e = send_error("quota", true).await;
    let ProviderError::Http { status, retry_after, quota, .. } = &e else { panic!("{e:?}") };
    assert_eq!(*status, 429);
    assert_eq!(*retry_after, None, "a daily quota will not clear in 22 s");
    assert!(quota, "a daily quota is a quota error: the router moves to another provider");
    assert_eq!(e.verdict(), voxgate::llm::error::Verdict::OtherProvider);
}

#[tokio::test]
async fn overload_is_retryable() {
    let e = send_error("overloaded", true).await;
    assert!(matches!(&e, ProviderError::Http { status: 503, code: Some(c), .. } if c == "UNAVAILABLE"), "{e:?}");
    assert!(e.is_retryable());
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let e = send_error("bad_request", true).await;
    assert!(matches!(&e, ProviderError::Http { status: 400, code: Some(c), .. } if c == "INVALID_ARGUMENT"), "{e:?}");
    assert!(!e.is_retryable());
    let e = send_error("unauthorized", false).await;
    assert!(matches!(&e, ProviderError::Http { status: 401, .. }), "{e:?}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn stalled_stream_hangs_until_dropped() {
    let (base, rec) = gemini::start().await;
    let gemini = provider(&base);

    let mut stream = gemini.send(&ask("Hi"), "stall", true).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(waited.is_err(), "a stall must hang, not end: {waited:?}");
    drop(stream);
    assert!(support::eventually(|| rec.dropped_early() == 1).await, "upstream body not released");

    let mut stream = gemini.send(&ask("Hi"), "stall_after_content", true).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    assert_eq!(first.unwrap().unwrap(), Event::Text("Hel".into()));
    let waited = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(waited.is_err(), "a stall must hang, not end: {waited:?}");
    drop(stream);
    assert!(support::eventually(|| rec.dropped_early() == 2).await);

    // The one-shot method can stall too: its body never ends (the headers came).
    let mut stream = gemini.send(&ask("Hi"), "stall", false).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err());
}

#[tokio::test]
async fn cut_stream_is_an_error_not_an_end() {
    for stream in [true, false] {
        let (base, _rec) = gemini::start().await;
        let result = provider(&base).send(&ask("Hi"), "cut", stream).await;
        let err = match result {
            Ok(events) => {
                let (events, err) = collect(events).await;
                // A whole answer is decoded only once all of it arrived: nothing of a cut one.
                let expected = if stream { vec![Event::Text("Hel".into())] } else { vec![] };
                assert_eq!(events, expected);
                err.expect("a cut stream must end with an error")
            }
            Err(e) => e,
        };
        assert!(matches!(err, ProviderError::Stream { .. }), "stream={stream}: {err:?}");
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn clean_end_without_finish_reason_is_an_error() {
    let (base, _rec) = gemini::start().await;
    let stream = provider(&base).send(&ask("Hi"), "closed_early", true).await.unwrap();
    let (events, err) = collect(stream).await;
    assert_eq!(events, vec![Event::Text("Hel".into())]);
    let err = err.expect("a body that ends before a finishReason is incomplete");
    assert!(matches!(err, ProviderError::Stream { .. }), "{err:?}");
    assert!(err.to_string().contains("finishReason"), "{err}");
}

#[tokio::test]
async fn malformed_frame_is_an_error() {
    for stream in [true, false] {
        let (base, _rec) = gemini::start().await;
        let result = provider(&base).send(&ask("Hi"), "malformed", stream).await;
        let err = match result {
            Ok(events) => {
                let (events, err) = collect(events).await;
                assert!(events.is_empty(), "{events:?}");
                err.expect("a malformed frame must end with an error")
            }
            Err(e) => e,
        };
        assert!(matches!(err, ProviderError::Stream { .. }), "stream={stream}: {err:?}");
        assert!(err.to_string().contains("malformed"), "{err}");
    }
}

#[tokio::test]
async fn midstream_error_frame_is_an_error() {
    let (base, _rec) = gemini::start().await;
    let stream = provider(&base).send(&ask("Hi"), "midstream_error", true).await.unwrap();
    let (events, err) = collect(stream).await;
    assert_eq!(events, vec![Event::Text("Hel".into())]);
    let err = err.expect("the error frame must surface");
    assert!(matches!(&err, ProviderError::Stream { code: Some(c), .. } if c == "UNAVAILABLE"), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn requests_gemini_cannot_express_fail_before_sending() {
    let (base, rec) = gemini::start().await;
    let gemini = provider(&base);
    let orphan: ChatRequest = serde_json::from_value(json!({"model": "voice", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}))
    .unwrap();
    assert!(matches!(gemini.send(&orphan, "text", true).await, Err(ProviderError::Invalid(_))));
    assert!(matches!(gemini.send(&ask("Hi"), "text?key=1", true).await, Err(ProviderError::Invalid(_))));
    assert_eq!(rec.count(), 0);
}

/// A conversation with two speakers, then a message without a name: what a voice session sends.
fn two_speakers(names: bool) -> ChatRequest {
    let mut v = json!({
        "model": "voice",
        "messages": [
            {"role": "system", "content": "You take restaurant bookings."},
            {"role": "user", "name": "speaker_A", "content": "Hi, I'm calling about my reservation."},
            {"role": "user", "name": "speaker_B", "content": "Could we move it to eight o'clock?"},
            {"role": "assistant", "content": "Of course."},
            {"role": "user", "content": "Thanks."},
            {"role": "user", "name": "speaker_A", "content": [{"type": "text", "text": "And a high chair,"}, {"type": "text", "text": " please."}]}
        ]
    });
    if !names {
        for m in v["messages"].as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("name");
        }
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn user_names_become_labels_that_survive_merging() {
    let (base, rec) = gemini::start().await;
    let (events, err) = collect(provider(&base).send(&two_speakers(true), "text", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "Hello, world!");
    let body = rec.last().body;
    assert_eq!(
        body["contents"],
        json!([
            // Two speakers in a row merge into one user turn; each part keeps its speaker.
            {"role": "user", "parts": [
                {"text": "speaker_A: Hi, I'm calling about my reservation."},
                {"text": "speaker_B: Could we move it to eight o'clock?"}
            ]},
            {"role": "model", "parts": [{"text": "Of course."}]},
            // A nameless message is as sent; a message's text parts are one part, labelled once.
            {"role": "user", "parts": [{"text": "Thanks."}, {"text": "speaker_A: And a high chair, please."}]}
        ])
    );
    assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "You take restaurant bookings."}]}));
}

#[tokio::test]
async fn messages_without_names_are_sent_as_before() {
    let (base, rec) = gemini::start().await;
    let (_, err) = collect(provider(&base).send(&two_speakers(false), "text", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        rec.last().body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Hi, I'm calling about my reservation."}, {"text": "Could we move it to eight o'clock?"}]},
            {"role": "model", "parts": [{"text": "Of course."}]},
            {"role": "user", "parts": [{"text": "Thanks."}, {"text": "And a high chair, please."}]}
        ])
    );
}
