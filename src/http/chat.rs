//! `POST /v1/chat/completions`: validate the body, run it through the gateway, and answer as a
//! `chat.completion` object or as an SSE stream of `chat.completion.chunk`s ending in `[DONE]`.
//! A failure after content has been streamed is sent in-band as `data: {"error":…}` with no
//! `[DONE]`, so clients cannot mistake a broken answer for a finished one (an upstream that
//! ends without a finish reason is such a failure). A client that leaves a streamed answer
//! unread for the route's `idle_ms_max` loses it: the upstream is dropped and the request is
//! recorded as cancelled.

// ApiError is large but only built on the error path, once per refused request.
#![allow(clippy::result_large_err)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;
use serde_json::{json, Value};

use std::sync::Arc;

use super::error::ApiError;
use super::keys::{Budget, KeyState, Limited};
use super::{Caller, Shared};
use crate::llm::router::Answer;
use crate::llm::types::{ChatRequest, Completion, Content, Event, Message, ToolCall, ToolChoice, Usage};

pub async fn completions(State(state): State<Shared>, Extension(caller): Extension<Caller>, headers: HeaderMap, body: Body) -> Response {
    let key = caller.key.clone();
    let mut response = match handle(state, caller, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Some(key) = key.filter(|k| k.has_gateway_limits()) {
        rate_limit_headers(&key, response.headers_mut());
    }
    response
}

async fn handle(state: Shared, caller: Caller, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!("Content-Type must be application/json (got {:?}).", content_type),
        )
        .code("unsupported_media_type"));
    }
    let limit = state.body_limit_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
        .code("request_too_large")
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    let request = parse_request(&bytes)?;

    if let Some(key) = &caller.key {
        key.try_request().map_err(|limited| {
            state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "rate_limited")]);
            rate_limited(key, &limited)
        })?;
    }
    // Charged with the answer's tokens when it ends or is dropped (usage is known only then).
    let charge = TokenCharge { key: caller.key.clone(), tokens: 0 };
    let answer = state.gateway.start(&request, &caller.name).await.map_err(ApiError::from)?;
    if request.stream {
        let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
        Ok(stream_response(answer, include_usage, charge))
    } else {
        whole_response(answer, charge).await
    }
}

/// OpenAI's 429 for a key over its own limit: type `requests` or `tokens`, code `rate_limit_exceeded`,
/// and `Retry-After` in whole seconds.
fn rate_limited(key: &KeyState, limited: &Limited) -> ApiError {
    let kind = if limited.kind == "tokens" { "tokens" } else { "requests" };
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, kind, limited.message(key.name())).code("rate_limit_exceeded");
    e.retry_after_s = Some(limited.retry_after_s());
    e
}

/// OpenAI's `x-ratelimit-*` headers for the key's per-minute limits, as they stand when the headers
/// are written: after a whole answer (its tokens charged), but before a stream's tokens are known.
fn rate_limit_headers(key: &KeyState, headers: &mut HeaderMap) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    let budgets: [(Option<Budget>, [&'static str; 3]); 2] = [
        (key.requests_budget(), ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"]),
        (key.tokens_budget(), ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]),
    ];
    for (budget, [limit, remaining, reset]) in budgets {
        if let Some(b) = budget {
            put(limit, b.limit.to_string());
            put(remaining, b.remaining.to_string());
            put(reset, reset_text(b.reset));
        }
    }
}

/// A reset time as OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
fn reset_text(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let text = format!("{:.3}", d.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The tokens (input + output, as in `usage.total_tokens`) a request is charged against its key's
/// tokens-per-minute limit, on drop: when the answer ended, failed, or the client went away.
struct TokenCharge {
    key: Option<Arc<KeyState>>,
    tokens: u64,
}

impl TokenCharge {
    fn set(&mut self, usage: &Usage) {
        self.tokens = usage.input_tokens.saturating_add(usage.output_tokens);
    }
}

impl Drop for TokenCharge {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            if self.tokens > 0 {
                key.record_tokens(self.tokens);
            }
        }
    }
}

fn meta_headers(answer: &Answer) -> Vec<(&'static str, HeaderValue)> {
    let mut out = Vec::new();
    if let Ok(v) = HeaderValue::from_str(&answer.model) {
        out.push(("x-voxgate-model", v));
    }
    if let Ok(v) = HeaderValue::from_str(&answer.attempts_header()) {
        out.push(("x-voxgate-attempts", v));
    }
    out
}

/// `usage` as OpenAI writes it.
#[derive(Serialize)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
    completion_tokens_details: ReasoningTokens,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

impl UsageBody {
    fn new(u: &Usage) -> Self {
        UsageBody {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.input_tokens.saturating_add(u.output_tokens),
            prompt_tokens_details: CachedTokens { cached_tokens: u.cached_input_tokens },
            completion_tokens_details: ReasoningTokens { reasoning_tokens: u.reasoning_tokens },
        }
    }
}

/// `usage` as OpenAI writes it; an estimate (the upstream never sent its count) says so in an
/// extra field, `"estimated": true`.
fn usage_json(u: &Usage, estimated: bool) -> Value {
    let mut v = json!(UsageBody::new(u));
    if estimated {
        v["estimated"] = Value::Bool(true);
    }
    v
}

/// A non-streaming answer: a `chat.completion` object, written straight from these fields.
/// `None` in an `Option<()>` is written as `null`.
#[derive(Serialize)]
struct CompletionBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: [ChoiceBody<'a>; 1],
    usage: UsageBody,
}

#[derive(Serialize)]
struct ChoiceBody<'a> {
    index: u32,
    message: MessageBody<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<&'a ToolCall>,
}

async fn whole_response(mut answer: Answer, mut charge: TokenCharge) -> Result<Response, ApiError> {
    let mut completion = Completion::default();
    while let Some(event) = answer.next().await {
        match event {
            Ok(e) => completion.push(&e),
            Err(e) => {
                if let Some((usage, _)) = answer.booked_usage() {
                    charge.set(&usage);
                }
                // Nothing has reached the client yet, but the serving model is fixed: report it.
                let mut api =
                    ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", format!("model {} failed mid-answer: {e}", answer.model))
                        .code(e.kind());
                api.attempts = Some(answer.attempts_header());
                return Err(api);
            }
        }
    }
    // What the answer was booked at: the upstream's count, or an estimate when it sent none.
    let (usage, estimated) = answer.booked_usage().unwrap_or((completion.usage.unwrap_or_default(), false));
    charge.set(&usage);
    let tool_calls: Vec<_> = completion.tool_calls.iter().filter(|c| !c.id.is_empty()).collect();
    let content = if completion.text.is_empty() && !tool_calls.is_empty() { None } else { Some(completion.text.as_str()) };
    let body = CompletionBody {
        id: &answer.id,
        object: "chat.completion",
        created: answer.created,
        model: &answer.model,
        system_fingerprint: None,
        choices: [ChoiceBody {
            index: 0,
            message: MessageBody { role: "assistant", content, refusal: None, tool_calls },
            logprobs: None,
            // The gateway only completes answers that carry a finish reason.
            finish_reason: completion.finish_reason.map_or("stop", |f| f.as_str()),
        }],
        usage: UsageBody::new(&usage),
    };
    let mut response = if estimated {
        let mut v = json!(body);
        v["usage"] = usage_json(&usage, true);
        (StatusCode::OK, axum::Json(v)).into_response()
    } else {
        (StatusCode::OK, axum::Json(body)).into_response()
    };
    for (k, v) in meta_headers(&answer) {
        response.headers_mut().insert(k, v);
    }
    Ok(response)
}

/// Where the SSE writer is.
enum Phase {
    Start,
    Body,
    Ended,
}

struct StreamState {
    answer: Answer,
    include_usage: bool,
    phase: Phase,
    charge: TokenCharge,
}

impl StreamState {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let mut c = json!({
            "id": self.answer.id,
            "object": "chat.completion.chunk",
            "created": self.answer.created,
            "model": self.answer.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    }

    /// The frames for one step, or `None` when the body is over.
    async fn step(&mut self) -> Option<String> {
        match self.phase {
            Phase::Start => {
                self.phase = Phase::Body;
                return Some(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Phase::Ended => return None,
            Phase::Body => {}
        }
        loop {
            match self.answer.next().await {
                Some(Ok(event)) => {
                    let delta = match event {
                        Event::Text(t) if t.is_empty() => continue,
                        Event::Text(t) => json!({"content": t}),
                        Event::ToolCallStart { index, id, name } => {
                            json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]})
                        }
                        Event::ToolCallArgs { index, arguments } => {
                            json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
                        }
                        Event::Finish(reason) => return Some(self.chunk(json!({}), Some(reason.as_str()))),
                        // Sent at the end, as booked (the upstream's or an estimate).
                        Event::Usage(_) => continue,
                    };
                    return Some(self.chunk(delta, None));
                }
                Some(Err(e)) => {
                    self.phase = Phase::Ended;
                    if let Some((usage, _)) = self.answer.booked_usage() {
                        self.charge.set(&usage);
                    }
                    let err = json!({"error": {
                        "message": format!("model {} failed mid-answer: {e}", self.answer.model),
                        "type": "upstream_error",
                        "param": null,
                        "code": e.kind(),
                    }});
                    return Some(format!("data: {err}\n\n"));
                }
                None => {
                    // The answer ended with its finish reason (the gateway turns an end
                    // without one into an error, above).
                    self.phase = Phase::Ended;
                    let mut out = String::new();
                    let (usage, estimated) = self.answer.booked_usage().unwrap_or_default();
                    self.charge.set(&usage);
                    if self.include_usage {
                        let u = json!({
                            "id": self.answer.id,
                            "object": "chat.completion.chunk",
                            "created": self.answer.created,
                            "model": self.answer.model,
                            "system_fingerprint": null,
                            "choices": [],
                            "usage": usage_json(&usage, estimated),
                        });
                        out.push_str(&format!("data: {u}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                    return Some(out);
                }
            }
        }
    }
}

fn stream_response(answer: Answer, include_usage: bool, charge: TokenCharge) -> Response {
    let headers = meta_headers(&answer);
    let idle = answer.idle();
    let state = StreamState { answer, include_usage, phase: Phase::Start, charge };
    // One frame in flight: the writer takes the next one from the upstream only once the client
    // has taken the last. A client that stops reading holds the frame; after `idle_ms_max` the
    // writer gives up, which drops the Answer and with it the upstream connection (recorded as
    // cancelled). When the client goes away, hyper drops the body, and the writer sees it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(write_frames(state, tx, idle));
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|frame| (Ok::<Bytes, std::convert::Infallible>(frame), rx)) },
        );
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    for (k, v) in headers {
        response.headers_mut().insert(k, v);
    }
    response
}

/// Moves an answer's frames to the response body, one at a time, until the answer ends, the
/// client goes away, or the client leaves a frame unread for `idle`.
async fn write_frames(mut state: StreamState, tx: tokio::sync::mpsc::Sender<Bytes>, idle: std::time::Duration) {
    loop {
        let permit = match tokio::time::timeout(idle, tx.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!(
                    model = %state.answer.model,
                    idle_ms = idle.as_millis() as u64,
                    "the client stopped reading the stream; dropping the upstream"
                );
                return;
            }
        };
        let frame = tokio::select! {
            frame = state.step() => frame,
            () = tx.closed() => return,
        };
        match frame {
            Some(frame) => permit.send(Bytes::from(frame)),
            None => return,
        }
    }
}

/// Parse and check a request body, with errors that say which field is wrong and how.
/// Well-formed bodies take one typed parse; only a body that fails it is walked as a JSON
/// value to say precisely what is wrong.
pub fn parse_request(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    match serde_json::from_slice::<ChatRequest>(bytes) {
        Ok(request) if !request.model.is_empty() && !request.messages.is_empty() => {
            check_messages(&request.messages)?;
            check_request(request)
        }
        _ => diagnose(bytes),
    }
}

fn check_messages(messages: &[Message]) -> Result<(), ApiError> {
    messages.iter().enumerate().try_for_each(|(i, m)| check_message(i, m))
}

/// Only text parts; a tool result names its call.
fn check_message(i: usize, message: &Message) -> Result<(), ApiError> {
    let content = match message {
        Message::System { content, .. } | Message::User { content, .. } | Message::Tool { content, .. } => Some(content),
        Message::Assistant { content, .. } => content.as_ref(),
    };
    if let Some(Content::Parts(parts)) = content {
        if let Some(p) = parts.iter().find(|p| p.kind != "text") {
            return Err(ApiError::invalid(
                format!("`messages[{i}].content` has a part of type {:?}; voxgate supports text parts only.", p.kind),
                Some(&format!("messages[{i}].content")),
            )
            .code("unsupported_content"));
        }
    }
    if let Message::Tool { tool_call_id, .. } = message {
        if tool_call_id.is_empty() {
            return Err(ApiError::invalid(
                format!("`messages[{i}].tool_call_id` must name the tool call this result answers."),
                Some(&format!("messages[{i}].tool_call_id")),
            ));
        }
    }
    Ok(())
}

/// The slow path: find and name what is wrong in a body the typed parse refused.
fn diagnose(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!("We could not parse the JSON body of your request ({e}). The body must be a JSON object."), None)
            .code("invalid_json")
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::invalid("The request body must be a JSON object.", None).code("invalid_json"));
    };
    match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::invalid("You must provide a model parameter (a model id or a route name).", Some("model"))
                .code("missing_required_parameter"));
        }
        Some(_) => return Err(ApiError::invalid("`model` must be a string.", Some("model")).code("invalid_type")),
    }
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid("`messages` must not be empty: send at least one message.", Some("messages")).code("empty_array"));
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("Missing required parameter: `messages`.", Some("messages")).code("missing_required_parameter"))
        }
        Some(_) => return Err(ApiError::invalid("`messages` must be an array of message objects.", Some("messages")).code("invalid_type")),
    };
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str);
        match role {
            Some("system" | "developer" | "user" | "assistant" | "tool") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("Invalid value {other:?} for `{param}.role`: use system, developer, user, assistant or tool."),
                    Some(&format!("{param}.role")),
                )
                .code("invalid_value"));
            }
            None => {
                return Err(
                    ApiError::invalid(format!("`{param}` must be an object with a string `role`."), Some(&param)).code("invalid_type")
                )
            }
        }
        let message: Message = serde_json::from_value(m.clone()).map_err(|e| {
            ApiError::invalid(format!("`{param}` is not a valid {} message: {e}.", role.unwrap_or("")), Some(&param)).code("invalid_type")
        })?;
        check_message(i, &message)?;
    }
    let request: ChatRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::invalid(format!("The request does not match the chat completions schema: {e}."), None).code("invalid_type")
    })?;
    check_request(request)
}

/// Checks on a typed request: values in range, tools and tool choice consistent.
fn check_request(request: ChatRequest) -> Result<ChatRequest, ApiError> {
    if let Some(n) = request.n {
        if n != 1 {
            return Err(ApiError::invalid("voxgate returns one choice per request: `n` must be 1.", Some("n")).code("unsupported_value"));
        }
    }
    if let Some(t) = request.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(
                ApiError::invalid(format!("`temperature` is {t}; it must be between 0 and 2."), Some("temperature")).code("invalid_value")
            );
        }
    }
    if let Some(p) = request.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid(format!("`top_p` is {p}; it must be between 0 and 1."), Some("top_p")).code("invalid_value"));
        }
    }
    if request.max_output_tokens() == Some(0) {
        return Err(ApiError::invalid("`max_tokens` must be at least 1.", Some("max_tokens")).code("invalid_value"));
    }
    let tools = request.tools.as_deref().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid(
                format!("`tools[{i}].type` is {:?}; only \"function\" tools are supported.", t.kind),
                Some(&format!("tools[{i}].type")),
            )
            .code("invalid_value"));
        }
        if t.function.name.is_empty() {
            return Err(ApiError::invalid(
                format!("`tools[{i}].function.name` must not be empty."),
                Some(&format!("tools[{i}].function.name")),
            )
            .code("invalid_value"));
        }
    }
    match &request.tool_choice {
        None => {}
        Some(ToolChoice::Mode(m)) if m == "required" && tools.is_empty() => {
            return Err(
                ApiError::invalid("`tool_choice` is \"required\" but no `tools` were given.", Some("tool_choice")).code("invalid_value")
            );
        }
        Some(ToolChoice::Mode(m)) if matches!(m.as_str(), "none" | "auto" | "required") => {}
        Some(ToolChoice::Mode(m)) => {
            return Err(ApiError::invalid(
                format!("`tool_choice` {m:?} is not one of none, auto, required, or a named function."),
                Some("tool_choice"),
            )
            .code("invalid_value"));
        }
        Some(ToolChoice::Named { function, .. }) if !tools.iter().any(|t| t.function.name == function.name) => {
            return Err(ApiError::invalid(
                format!("`tool_choice` names function {:?}, which is not in `tools`.", function.name),
                Some("tool_choice"),
            )
            .code("invalid_value"));
        }
        Some(ToolChoice::Named { .. }) => {}
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse_request(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn typed_completion_body_is_the_json_it_replaced() {
        let call = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: crate::llm::types::FunctionCall { name: "f".into(), arguments: "{\"a\":1}".into() },
        };
        let usage = Usage { input_tokens: 5, output_tokens: 3, cached_input_tokens: 2, cache_write_tokens: 1, reasoning_tokens: 1 };
        for (text, calls) in [("Hello \"you\"", vec![]), ("", vec![&call]), ("both", vec![&call])] {
            let body = CompletionBody {
                id: "chatcmpl-x",
                object: "chat.completion",
                created: 7,
                model: "m",
                system_fingerprint: None,
                choices: [ChoiceBody {
                    index: 0,
                    message: MessageBody {
                        role: "assistant",
                        content: if text.is_empty() && !calls.is_empty() { None } else { Some(text) },
                        refusal: None,
                        tool_calls: calls.clone(),
                    },
                    logprobs: None,
                    finish_reason: "tool_calls",
                }],
                usage: UsageBody::new(&usage),
            };
            let mut message = json!({
                "role": "assistant",
                "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
                "refusal": null,
            });
            if !calls.is_empty() {
                message["tool_calls"] = json!(calls);
            }
            let before = json!({
                "id": "chatcmpl-x", "object": "chat.completion", "created": 7, "model": "m", "system_fingerprint": null,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {
                    "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                    "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1},
                },
            });
            let written: Value = serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
            assert_eq!(written, before);
        }
    }

    #[test]
    fn bad_bodies_get_errors_that_name_the_field() {
        assert_eq!(err("{nope").code.as_deref(), Some("invalid_json"));
        assert_eq!(err("[1]").code.as_deref(), Some("invalid_json"));
        assert_eq!(err(r#"{"messages":[{"role":"user","content":"x"}]}"#).param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":"m"}"#).param.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"model":"m","messages":[]}"#).param.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"model":"m","messages":"hi"}"#).param.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#).param.as_deref(), Some("messages[0].role"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).param.as_deref(), Some("messages[0]"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#).param.as_deref(), Some("n"));
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#).param.as_deref(),
            Some("temperature")
        );
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#).status, StatusCode::BAD_REQUEST);
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#).param.as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}"#)
                .param
                .as_deref(),
            Some("tool_choice")
        );
    }

    #[test]
    fn good_bodies_parse_with_unknown_fields_ignored() {
        let r = parse_request(
            br#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"store":false,"metadata":{"a":"b"},"max_completion_tokens":5,"stop":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.max_output_tokens(), Some(5));
        assert_eq!(r.stop_sequences(), vec!["x"]);
        assert!(matches!(r.messages[0], Message::System { .. }));
    }

    #[test]
    fn no_body_makes_the_parser_panic() {
        // Mutate a rich valid body byte by byte (deterministic pseudo-random): every result is
        // either a request or an error object, never a panic.
        let valid = br#"{"model":"m","stream":true,"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"tool_choice":"auto","response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}},"stop":["a"],"max_tokens":5}"#;
        assert!(parse_request(valid).is_ok());
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"{}[]\":,0123456789.-eEtrufalsn \\\x00\xff";
        for _ in 0..20_000 {
            let mut body = valid.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % body.len() as u64) as usize;
                match next() % 3 {
                    0 => body[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        body.remove(at);
                    }
                    _ => body.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
            }
            if let Err(e) = parse_request(&body) {
                assert_eq!(e.status, StatusCode::BAD_REQUEST);
                assert!(!e.message.is_empty());
            }
        }
    }
}
