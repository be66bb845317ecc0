//! The embedded provider against the real SmolLM2-135M-Instruct model, offline.
//!
//! The model must be fetched first (`voxgate models fetch`, into `$VOXGATE_MODELS_DIR` or
//! `./models`). A missing model FAILS these tests with that instruction; they never skip.
//! Each test has its own provider (its own worker), so the tests can run in parallel.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use voxgate::llm::error::ProviderError;
use voxgate::llm::providers::embedded::Embedded;
use voxgate::llm::providers::EventStream;
use voxgate::llm::types::{ChatRequest, Event, FinishReason, FunctionDef, Message, ResponseFormat, Stop, Tool, Usage};

fn model_path() -> PathBuf {
    let dir = voxgate::models::default_models_dir();
    let path = voxgate::models::llm_model_path(&dir);
    assert!(
        path.is_file(),
        "the embedded model is missing at {}: run `voxgate models fetch` first \
         (the models folder is $VOXGATE_MODELS_DIR, else ./models)",
        path.display()
    );
    path
}

fn provider() -> Embedded {
    let p = Embedded::new(model_path());
    p.check().expect("check() agrees the model is there");
    p
}

fn chat(messages: Vec<Message>) -> ChatRequest {
    ChatRequest { model: "smollm2-135m-instruct".into(), messages, ..ChatRequest::default() }
}

async fn collect(stream: EventStream) -> Vec<Event> {
    tokio::time::timeout(Duration::from_secs(120), stream.map(|e| e.expect("no error event")).collect())
        .await
        .expect("the answer finishes within two minutes")
}

fn texts(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// The events end with exactly one Finish followed by one Usage; returns both.
fn ending(events: &[Event]) -> (FinishReason, Usage) {
    match events {
        [.., Event::Finish(f), Event::Usage(u)] => {
            assert_eq!(events.iter().filter(|e| matches!(e, Event::Finish(_))).count(), 1);
            (*f, *u)
        }
        other => panic!("expected the stream to end with Finish then Usage, got {other:?}"),
    }
}

#[tokio::test]
async fn answers_offline_with_text_finish_and_usage() {
    let llm = provider();
    let req = chat(vec![
        Message::system("You are a helpful assistant. Answer in one short sentence."),
        Message::user("What is the capital of France?"),
    ]);
    let events = collect(llm.send(&req, "smollm2-135m-instruct", false).await.unwrap()).await;
    let text = texts(&events);
    assert_eq!(text.len(), 1, "without streaming the answer is one Text event: {events:?}");
    assert!(!text[0].trim().is_empty());
    assert!(text[0].contains("Paris"), "greedy SmolLM2 knows this one: {:?}", text[0]);
    let (finish, usage) = ending(&events);
    assert_eq!(finish, FinishReason::Stop);
    assert!(usage.input_tokens > 10, "{usage:?}");
    assert!(usage.output_tokens > 0, "{usage:?}");

    // Greedy decoding is deterministic: the same question gets the same answer.
    let again = collect(llm.send(&req, "smollm2-135m-instruct", false).await.unwrap()).await;
    assert_eq!(texts(&again), text);
    assert_eq!(llm.stats().jobs_completed, 2);
}

#[tokio::test]
async fn streaming_yields_several_text_events() {
    let llm = provider();
    let req = chat(vec![Message::user("Tell me about the sea in three sentences.")]);
    let events = collect(llm.send(&req, "smollm2-135m-instruct", true).await.unwrap()).await;
    let text = texts(&events);
    assert!(text.len() >= 5, "one event per decoded piece, got {}", text.len());
    assert!(text.iter().all(|t| !t.is_empty()));
    let (_, usage) = ending(&events);
    assert!(usage.output_tokens as usize >= text.len(), "{usage:?} for {} pieces", text.len());
}

#[tokio::test]
async fn max_tokens_limits_output_and_finishes_with_length() {
    let llm = provider();
    let mut req = chat(vec![Message::user("Write a long story about a dragon who learns to sing.")]);
    req.max_tokens = Some(5);
    let events = collect(llm.send(&req, "smollm2-135m-instruct", true).await.unwrap()).await;
    let (finish, usage) = ending(&events);
    assert_eq!(finish, FinishReason::Length);
    assert!(usage.output_tokens <= 5 && usage.output_tokens > 0, "{usage:?}");
    assert!(!texts(&events).concat().is_empty());
}

#[tokio::test]
async fn dropping_the_stream_stops_generation_and_frees_the_worker() {
    let llm = provider();
    let mut long = chat(vec![Message::user("Count from 1 to 1000, separated by commas.")]);
    long.max_tokens = Some(1000);
    let mut stream = llm.send(&long, "smollm2-135m-instruct", true).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(Event::Text(_)))), "{first:?}");
    drop(stream); // the client went away (barge-in)

    // The single worker takes the next request: it would wait behind 1000 tokens otherwise.
    let mut short = chat(vec![Message::user("Say hello.")]);
    short.max_tokens = Some(8);
    let events = collect(llm.send(&short, "smollm2-135m-instruct", true).await.unwrap()).await;
    let (_, usage) = ending(&events);

    let stats = llm.stats();
    assert_eq!(stats.jobs_cancelled, 1, "the first request was abandoned, not finished: {stats:?}");
    assert_eq!(stats.jobs_completed, 1, "{stats:?}");
    let first_job_tokens = stats.output_tokens_total - usage.output_tokens;
    // At most the event buffer (64) can run ahead of a consumer; 1000 were asked for.
    assert!(first_job_tokens <= 70, "generation went on after the drop: {first_job_tokens} tokens");
}

#[tokio::test]
async fn stop_sequence_ends_the_answer_before_it() {
    let llm = provider();
    let mut req = chat(vec![Message::user("Tell me about the moon.")]);
    req.max_tokens = Some(40);
    let unstopped = collect(llm.send(&req, "smollm2-135m-instruct", false).await.unwrap()).await;
    let full = texts(&unstopped).concat();
    // Greedy decoding repeats itself, so a stop sequence taken from the middle of this answer
    // must cut the same answer right before it. " word" spans several pieces on purpose.
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() >= 8, "the model answers at some length: {full:?}");
    let stop = format!(" {}", words[5]);
    let expected = &full[..full.find(&stop).unwrap()];

    req.stop = Some(Stop::Many(vec!["never appears".into(), stop.clone()]));
    let events = collect(llm.send(&req, "smollm2-135m-instruct", true).await.unwrap()).await;
    let (finish, _) = ending(&events);
    assert_eq!(finish, FinishReason::Stop);
    assert_eq!(texts(&events).concat(), expected, "cut before {stop:?} in {full:?}");
}

#[tokio::test]
async fn json_mode_returns_a_json_object() {
    let llm = provider();
    let mut req = chat(vec![Message::user("Give the name and age of a person called Ann who is 30, as JSON.")]);
    req.response_format = Some(ResponseFormat::JsonObject);
    req.max_tokens = Some(120);
    let events = collect(llm.send(&req, "smollm2-135m-instruct", false).await.unwrap()).await;
    let text = texts(&events).concat();
    let (finish, _) = ending(&events);
    assert_eq!(finish, FinishReason::Stop, "the grammar closes the object: {text:?}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert!(value.is_object(), "{value}");
}

#[tokio::test]
async fn tools_are_ignored_and_answered_as_text() {
    let llm = provider();
    let mut req = chat(vec![Message::user("What's the weather in Paris?")]);
    req.tools = Some(vec![Tool {
        kind: "function".into(),
        function: FunctionDef {
            name: "get_weather".into(),
            description: Some("Weather for a city".into()),
            parameters: Some(serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}})),
            strict: None,
        },
    }]);
    req.max_tokens = Some(30);
    let events = collect(llm.send(&req, "smollm2-135m-instruct", true).await.unwrap()).await;
    assert!(!texts(&events).concat().is_empty());
    assert!(!events.iter().any(|e| matches!(e, Event::ToolCallStart { .. } | Event::ToolCallArgs { .. })));
    let (finish, _) = ending(&events);
    assert_ne!(finish, FinishReason::ToolCalls);
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_invalid() {
    let llm = provider();
    let req = chat(vec![Message::user("word ".repeat(5000))]);
    match llm.send(&req, "smollm2-135m-instruct", true).await {
        Err(ProviderError::Invalid(msg)) => assert!(msg.contains("context"), "{msg}"),
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(_) => panic!("expected Invalid, got a stream"),
    }
    // The worker is still fine afterwards.
    let mut ok = chat(vec![Message::user("Hi!")]);
    ok.max_tokens = Some(4);
    let events = collect(llm.send(&ok, "smollm2-135m-instruct", true).await.unwrap()).await;
    assert!(ending(&events).1.output_tokens > 0);
}

#[tokio::test]
async fn the_next_turn_of_a_conversation_computes_only_what_is_new() {
    let llm = provider();
    let mut messages = vec![
        Message::system("You are a helpful assistant. Answer in one short sentence."),
        Message::user("What is the capital of France?"),
    ];
    let first = collect(llm.send(&chat(messages.clone()), "smollm2-135m-instruct", false).await.unwrap()).await;
    let (_, first_usage) = ending(&first);
    assert_eq!(llm.stats().prompt_tokens_reused, 0, "nothing to reuse on the first request");
    messages.push(Message::assistant(texts(&first).concat()));
    messages.push(Message::user("And what is the capital of Italy?"));
    let second = collect(llm.send(&chat(messages), "smollm2-135m-instruct", false).await.unwrap()).await;
    let (finish, second_usage) = ending(&second);
    assert_eq!(finish, FinishReason::Stop);
    assert!(!texts(&second).concat().trim().is_empty());
    // The whole first prompt (and usually its answer) was already in the context.
    let reused = llm.stats().prompt_tokens_reused;
    assert!(reused >= first_usage.input_tokens, "reused {reused} of a first prompt of {}", first_usage.input_tokens);
    assert!(reused < second_usage.input_tokens, "reused {reused} of {}", second_usage.input_tokens);
}
