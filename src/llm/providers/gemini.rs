//! Google Gemini through the Generative Language API: `models/{m}:generateContent` and
//! `models/{m}:streamGenerateContent?alt=sse`. `base_url` is the host (and any path prefix); we
//! add `/v1beta/…`. The key travels in `x-goog-api-key`, never in the URL.
//!
//! Schemas are sent as JSON Schema, unchanged: tool parameters as `parametersJsonSchema` and the
//! `json_schema` response format as `responseJsonSchema`. The older `parameters`/`responseSchema`
//! fields take an OpenAPI 3.0 subset that rejects keys OpenAI clients send (`additionalProperties`,
//! `$schema`), and rewriting schemas key by key loses meaning; the JSON Schema fields accept the
//! whole document and ignore what they do not support (ai.google.dev API reference,
//! `FunctionDeclaration.parametersJsonSchema`, `GenerationConfig.responseJsonSchema`).
//!
//! Gemini has no message `name`: a user message's name (a speaker label, `speaker_A`, or a text
//! app's participant) starts its text part as `NAME: ` ([`name_prefixed`]); consecutive user
//! messages merge into one turn as separate parts, each with its own label. A message without
//! `name` is sent exactly as before.
//!
//! Gemini differs from OpenAI in ways the decoder absorbs: there is no `[DONE]` (a stream is
//! complete only if a `finishReason` arrived before the body ended), function calls arrive whole
//! and without ids (we make them, and report `tool_calls` where Gemini says `STOP`), usage is
//! repeated on every frame (the last one counts), and thinking is billed as output.
//!
//! Gemini 3 rejects a history whose function calls lack a `thoughtSignature`. Our message types
//! cannot carry the signature the model sent, so replayed function calls carry Google's documented
//! placeholder instead (see [`PLACEHOLDER_THOUGHT_SIGNATURE`]). Only the first candidate is read.

use std::collections::HashMap;

use reqwest::header::{HeaderMap, HeaderName};
use serde_json::{json, Map, Value};

use super::http::{self, decode_sse, SseDecoder};
use super::{name_prefixed, EventStream, HttpSettings};
use crate::llm::error::{parse_google_duration, ProviderError};
use crate::llm::sse::SseEvent;
use crate::llm::types::{ChatRequest, Content, Event, FinishReason, Message, ResponseFormat, ToolChoice, Usage};

const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Google's documented stand-in for a thought signature we do not have (history written by
/// another model or, here, signatures our OpenAI-shaped messages cannot carry). It tells Gemini 3
/// to skip signature validation for that step instead of answering 400.
pub const PLACEHOLDER_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

pub struct Gemini {
    settings: HttpSettings,
}

impl Gemini {
    pub fn new(settings: HttpSettings) -> Self {
        Gemini { settings }
    }

    pub async fn send(&self, request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<EventStream, ProviderError> {
        let body = request_body(request)?;
        let model = model_id(upstream_model)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.settings.api_key {
            headers.insert(API_KEY_HEADER, http::header_value(key.expose())?);
        }
        let path = if stream {
            format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("/v1beta/models/{model}:generateContent")
        };
        let url = self.settings.endpoint(&path)?;
        let response = http::post_json(&self.settings, url, headers, &body, parse_error).await?;
        if stream {
            Ok(decode_sse(response, StreamDecoder::default()))
        } else {
            Ok(http::whole_body(response, |body| decode_response(&http::parse_json(body)?)))
        }
    }
}

/// The model id as it goes into the URL path. A `models/` prefix (as Google's own listings write
/// it) is dropped; anything that could change the URL's shape is refused.
fn model_id(upstream_model: &str) -> Result<&str, ProviderError> {
    let model = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
    let safe = !model.is_empty() && model.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if safe {
        Ok(model)
    } else {
        Err(ProviderError::Invalid(format!("Gemini model id {model:?} may only contain letters, digits, '-', '.' and '_'")))
    }
}

/// The `generateContent` request body (the same for the streaming method; the model is in the URL).
pub fn request_body(request: &ChatRequest) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    let (system, contents) = conversation(&request.messages)?;
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    body.insert("contents".into(), Value::Array(contents));

    if let Some(tools) = request.tools.as_ref().filter(|t| !t.is_empty()) {
        let mut declarations = Vec::with_capacity(tools.len());
        for tool in tools {
            if tool.kind != "function" {
                return Err(ProviderError::Invalid(format!("Gemini supports only function tools, not {:?}", tool.kind)));
            }
            let mut declaration = json!({ "name": tool.function.name });
            if let Some(description) = &tool.function.description {
                declaration["description"] = json!(description);
            }
            if let Some(parameters) = &tool.function.parameters {
                declaration["parametersJsonSchema"] = parameters.clone();
            }
            declarations.push(declaration);
        }
        body.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
        if let Some(choice) = &request.tool_choice {
            body.insert("toolConfig".into(), tool_config(choice)?);
        }
    }

    let generation = generation_config(request);
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

/// System text for `systemInstruction`, and the turns for `contents`.
fn conversation(messages: &[Message]) -> Result<(Vec<Value>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Gemini's functionResponse names the function; our tool messages name the call.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for message in messages {
        match message {
            Message::System { content, .. } => system.extend(text_parts(content)),
            Message::User { content, name } => push_turn(&mut contents, "user", named_text_parts(content, name.as_deref())),
            Message::Assistant { content, tool_calls, .. } => {
                let mut parts = content.as_ref().map(text_parts).unwrap_or_default();
                for call in tool_calls.iter().flatten() {
                    let args = call_arguments(&call.function.name, &call.function.arguments)?;
                    call_names.insert(&call.id, &call.function.name);
                    parts.push(json!({ "functionCall": { "name": call.function.name, "args": args } }));
                }
                push_turn(&mut contents, "model", parts);
            }
            Message::Tool { content, tool_call_id } => {
                let name = call_names.get(tool_call_id.as_str()).ok_or_else(|| {
                    ProviderError::Invalid(format!("tool message answers call {tool_call_id:?}, which no earlier assistant message made"))
                })?;
                let text = content.text();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => json!({ "result": text }),
                };
                let part = json!({ "functionResponse": { "name": name, "response": response } });
                push_turn(&mut contents, "user", vec![part]);
            }
        }
    }
    for turn in &mut contents {
        sign_first_function_call(turn);
    }
    Ok((system, contents))
}

fn text_parts(content: &Content) -> Vec<Value> {
    let text = content.text();
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "text": text })]
    }
}

/// A user message's text part with its `name` (Gemini has no field for it) written first:
/// `speaker_A: …` (see [`name_prefixed`]). Consecutive user messages merge into one turn as
/// separate parts, so each keeps its own label.
fn named_text_parts(content: &Content, name: Option<&str>) -> Vec<Value> {
    let text = content.text();
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "text": name_prefixed(name, &text) })]
    }
}

/// Append `parts` as a turn, merging into the previous turn when it has the same role (Gemini
/// wants user and model turns to alternate; consecutive tool results become one turn).
fn push_turn(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut().filter(|t| t["role"] == role) {
        if let Some(existing) = last["parts"].as_array_mut() {
            existing.extend(parts);
            return;
        }
    }
    contents.push(json!({ "role": role, "parts": parts }));
}

/// Gemini 3 validates the signature of the first function call in each model step.
fn sign_first_function_call(turn: &mut Value) {
    if turn["role"] != "model" {
        return;
    }
    let Some(parts) = turn["parts"].as_array_mut() else {
        return;
    };
    if let Some(first) = parts.iter_mut().find(|p| p.get("functionCall").is_some()) {
        if first.get("thoughtSignature").is_none() {
            first["thoughtSignature"] = json!(PLACEHOLDER_THOUGHT_SIGNATURE);
        }
    }
}

/// A tool call's arguments (JSON text) as the object Gemini wants in `args`.
fn call_arguments(name: &str, arguments: &str) -> Result<Value, ProviderError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(object @ Value::Object(_)) => Ok(object),
        Ok(_) => Err(ProviderError::Invalid(format!("arguments of tool call {name:?} must be a JSON object for Gemini"))),
        Err(e) => Err(ProviderError::Invalid(format!("arguments of tool call {name:?} are not valid JSON: {e}"))),
    }
}

/// `tool_choice` as `toolConfig.functionCallingConfig`: required and a named function both
/// force a call (`ANY`); a name also limits which function.
fn tool_config(choice: &ToolChoice) -> Result<Value, ProviderError> {
    let config = match choice {
        ToolChoice::Mode(mode) => match mode.as_str() {
            "auto" => json!({ "mode": "AUTO" }),
            "required" => json!({ "mode": "ANY" }),
            "none" => json!({ "mode": "NONE" }),
            other => return Err(ProviderError::Invalid(format!("unknown tool_choice {other:?}"))),
        },
        ToolChoice::Named { function, .. } => {
            json!({ "mode": "ANY", "allowedFunctionNames": [function.name] })
        }
    };
    Ok(json!({ "functionCallingConfig": config }))
}

fn generation_config(request: &ChatRequest) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(max) = request.max_output_tokens() {
        config.insert("maxOutputTokens".into(), json!(max));
    }
    if let Some(t) = request.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        config.insert("topP".into(), json!(p));
    }
    let stop = request.stop_sequences();
    if !stop.is_empty() {
        config.insert("stopSequences".into(), json!(stop));
    }
    if let Some(seed) = request.seed {
        config.insert("seed".into(), json!(seed));
    }
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            config.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = &json_schema.schema {
                config.insert("responseJsonSchema".into(), schema.clone());
            }
        }
    }
    config
}

/// Gemini error bodies: `{"error":{"code","message","status","details":[…]}}` (wrapped in an
/// array by the non-SSE streaming method). `code` becomes the `status` string.
///
/// - `retry_after` comes from a `google.rpc.RetryInfo` detail, else the `Retry-After` header.
/// - A daily quota (`QuotaFailure` with a `quotaId` containing `PerDay`) will not clear in
///   seconds: a quota error, so the router opens the breaker and moves to another provider
///   without waiting.
/// - Billing not enabled (outside 429) is a quota error: no other attempt at this key can work.
/// - A key Google calls invalid or expired (400 with `ErrorInfo` reason `API_KEY_INVALID`) gets
///   the code `invalid_api_key`: a credential error like a 401. Other 400/403s are classified by
///   their status alone.
pub fn parse_error(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let mut value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Value::Array(items) = &mut value {
        value = if items.is_empty() { Value::Null } else { items.swap_remove(0) };
    }
    let err = value.get("error").filter(|e| e.is_object()).unwrap_or(&Value::Null);
    let message = err.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| http::short(body));
    let mut code = err.get("status").and_then(Value::as_str).map(str::to_string);
    if status == 400 && crate::llm::error::says_context_too_long(&message) {
        code = Some(crate::llm::error::CONTEXT_LENGTH_EXCEEDED.to_string());
    }
    let details = err.get("details").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let of_type =
        |kind: &'static str| details.iter().filter(move |d| d.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(kind)));

    let per_day = of_type("google.rpc.QuotaFailure")
        .filter_map(|d| d.get("violations").and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
        .any(|id| id.contains("PerDay"));
    let retry_delay =
        of_type("google.rpc.RetryInfo").filter_map(|d| d.get("retryDelay").and_then(Value::as_str)).find_map(parse_google_duration);
    let retry_after = if per_day { None } else { retry_delay.or_else(|| http::retry_after(headers)) };

    let billing_reason =
        of_type("google.rpc.ErrorInfo").filter_map(|d| d.get("reason").and_then(Value::as_str)).any(|r| r.contains("BILLING"));
    // A 429's message also mentions "billing details"; only outside 429 does it mean "not enabled".
    let quota = per_day || status != 429 && (billing_reason || message.to_ascii_lowercase().contains("billing"));
    if of_type("google.rpc.ErrorInfo").filter_map(|d| d.get("reason").and_then(Value::as_str)).any(|r| r == "API_KEY_INVALID") {
        code = Some(crate::llm::error::INVALID_API_KEY.to_string());
    }

    ProviderError::Http { status, message, code, retry_after, quota }
}

/// Decoder for `streamGenerateContent?alt=sse` frames; also reads a whole `generateContent`
/// answer, which has the shape of one frame.
#[derive(Default)]
pub struct StreamDecoder {
    /// Index of the next function call (counts calls only, across frames).
    next_call: u32,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl SseDecoder for StreamDecoder {
    fn event(&mut self, event: SseEvent) -> Result<Vec<Event>, ProviderError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let frame: Value = serde_json::from_str(data).map_err(|e| ProviderError::stream(format!("malformed frame from upstream: {e}")))?;
        self.frame(&frame)
    }

    /// Gemini never says "done"; the body's end is the end.
    fn is_done(&self) -> bool {
        false
    }

    fn end(&mut self) -> Result<Vec<Event>, ProviderError> {
        let Some(mut reason) = self.finish else {
            return Err(ProviderError::stream("upstream ended the answer without a finishReason"));
        };
        if reason == FinishReason::Stop && self.next_call > 0 {
            reason = FinishReason::ToolCalls;
        }
        let mut out = vec![Event::Finish(reason)];
        out.extend(self.usage.take().map(Event::Usage));
        Ok(out)
    }
}

impl StreamDecoder {
    fn frame(&mut self, frame: &Value) -> Result<Vec<Event>, ProviderError> {
        if let Some(err) = frame.get("error").filter(|e| !e.is_null()) {
            let message = err.get("message").and_then(Value::as_str).unwrap_or("upstream sent an error mid-stream").to_string();
            let code = err.get("status").and_then(Value::as_str).map(str::to_string);
            return Err(ProviderError::Stream { message, code });
        }
        let mut out = Vec::new();
        let candidate = frame
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0));
        if let Some(candidate) = candidate {
            let parts = candidate.pointer("/content/parts").and_then(Value::as_array);
            for part in parts.into_iter().flatten() {
                self.part(part, &mut out);
            }
            if let Some(reason) =
                candidate.get("finishReason").and_then(Value::as_str).filter(|r| !r.is_empty() && *r != "FINISH_REASON_UNSPECIFIED")
            {
                self.finish = Some(map_finish(reason));
            }
        } else if frame.pointer("/promptFeedback/blockReason").and_then(Value::as_str).is_some() {
            // The prompt itself was blocked: no candidate will come.
            self.finish = Some(FinishReason::ContentFilter);
        }
        if let Some(usage) = frame.get("usageMetadata").filter(|u| u.is_object()) {
            self.usage = Some(map_usage(usage));
        }
        Ok(out)
    }

    fn part(&mut self, part: &Value, out: &mut Vec<Event>) {
        // Thought summaries are not part of the answer.
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            if !text.is_empty() {
                out.push(Event::Text(text.to_string()));
            }
        }
        if let Some(call) = part.get("functionCall") {
            let index = self.next_call;
            self.next_call += 1;
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let args = call.get("args").filter(|a| !a.is_null()).cloned().unwrap_or_else(|| json!({}));
            let id = format!("call_{}", crate::llm::ids::random_suffix());
            out.push(Event::ToolCallStart { index, id, name });
            out.push(Event::ToolCallArgs { index, arguments: args.to_string() });
        }
    }
}

/// A whole `generateContent` answer as events.
pub fn decode_response(value: &Value) -> Result<Vec<Event>, ProviderError> {
    let mut decoder = StreamDecoder::default();
    let mut out = decoder.frame(value)?;
    out.extend(decoder.end()?);
    Ok(out)
}

fn map_finish(reason: &str) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// `promptTokenCount` already includes cached tokens (our convention); thinking is billed as
/// output, so it is added to `candidatesTokenCount`.
fn map_usage(usage: &Value) -> Usage {
    let n = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0).min(crate::llm::types::USAGE_TOKENS_MAX);
    let thoughts = n("thoughtsTokenCount");
    Usage {
        input_tokens: n("promptTokenCount"),
        output_tokens: n("candidatesTokenCount") + thoughts,
        cached_input_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn feed(decoder: &mut StreamDecoder, frames: &[&str]) -> Vec<Event> {
        let mut out = Vec::new();
        for f in frames {
            let event = SseEvent { event: None, data: f.to_string() };
            out.extend(decoder.event(event).unwrap());
        }
        out.extend(decoder.end().unwrap());
        out
    }

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn text_frames_become_text_then_finish_then_one_usage() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[
                r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}"#,
                r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":7}}"#,
            ],
        );
        assert_eq!(
            ev,
            vec![
                Event::Text("Hel".into()),
                Event::Text("lo".into()),
                Event::Finish(FinishReason::Stop),
                Event::Usage(Usage { input_tokens: 5, output_tokens: 2, ..Usage::default() }),
            ]
        );
    }

    #[test]
    fn thought_parts_are_not_answer_text() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[r#"{"candidates":[{"content":{"parts":[{"text":"Let me think","thought":true},{"text":"Hi"}]},"finishReason":"STOP"}]}"#],
        );
        assert_eq!(ev, vec![Event::Text("Hi".into()), Event::Finish(FinishReason::Stop)]);
    }

    #[test]
    fn whole_function_call_gets_an_id_its_args_and_a_tool_calls_finish() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[
                r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"c2ln"}]},"finishReason":"STOP","index":0}]}"#,
            ],
        );
        assert_eq!(ev.len(), 3, "{ev:?}");
        let Event::ToolCallStart { index, id, name } = &ev[0] else { panic!("{ev:?}") };
        assert_eq!((*index, name.as_str()), (0, "get_weather"));
        assert!(id.starts_with("call_") && id.len() > "call_".len(), "{id}");
        let Event::ToolCallArgs { index, arguments } = &ev[1] else { panic!("{ev:?}") };
        assert_eq!(*index, 0);
        assert_eq!(serde_json::from_str::<Value>(arguments).unwrap(), json!({"city":"Paris"}));
        assert_eq!(ev[2], Event::Finish(FinishReason::ToolCalls));
    }

    #[test]
    fn function_calls_are_indexed_across_frames_with_distinct_ids() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"Checking."}]}}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]}}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_time","args":{"tz":"CET"}}}]},"finishReason":"STOP"}]}"#,
            ],
        );
        let starts: Vec<(u32, String, String)> = ev
            .iter()
            .filter_map(|e| match e {
                Event::ToolCallStart { index, id, name } => Some((*index, id.clone(), name.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!((starts[0].0, starts[0].2.as_str()), (0, "get_weather"));
        assert_eq!((starts[1].0, starts[1].2.as_str()), (1, "get_time"));
        assert_ne!(starts[0].1, starts[1].1);
        assert!(ev.contains(&Event::ToolCallArgs { index: 1, arguments: r#"{"tz":"CET"}"#.into() }));
        assert_eq!(ev.last(), Some(&Event::Finish(FinishReason::ToolCalls)));
    }

    #[test]
    fn usage_counts_cached_input_and_bills_thoughts_as_output() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":1,"totalTokenCount":101}}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"b"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":8,"cachedContentTokenCount":60,"thoughtsTokenCount":12,"totalTokenCount":120}}"#,
            ],
        );
        let usages: Vec<&Event> = ev.iter().filter(|e| matches!(e, Event::Usage(_))).collect();
        assert_eq!(
            usages,
            vec![&Event::Usage(Usage {
                input_tokens: 100,
                output_tokens: 20,
                cached_input_tokens: 60,
                cache_write_tokens: 0,
                reasoning_tokens: 12,
            })]
        );
        assert_eq!(ev.last(), usages.last().copied());
    }

    #[test]
    fn upper_case_finish_reasons_map_to_openai_ones() {
        for (gemini, ours) in [
            ("STOP", FinishReason::Stop),
            ("MAX_TOKENS", FinishReason::Length),
            ("SAFETY", FinishReason::ContentFilter),
            ("RECITATION", FinishReason::ContentFilter),
            ("BLOCKLIST", FinishReason::ContentFilter),
            ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
            ("SPII", FinishReason::ContentFilter),
            ("LANGUAGE", FinishReason::Stop),
            ("OTHER", FinishReason::Stop),
            ("MALFORMED_FUNCTION_CALL", FinishReason::Stop),
        ] {
            let frame = json!({"candidates":[{"content":{"parts":[]},"finishReason":gemini}]});
            let mut d = StreamDecoder::default();
            let ev = feed(&mut d, &[&frame.to_string()]);
            assert_eq!(ev, vec![Event::Finish(ours)], "{gemini}");
        }
    }

    #[test]
    fn blocked_prompt_finishes_as_content_filter() {
        let mut d = StreamDecoder::default();
        let ev =
            feed(&mut d, &[r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}}"#]);
        assert_eq!(ev, vec![Event::Finish(FinishReason::ContentFilter), Event::Usage(Usage { input_tokens: 7, ..Usage::default() }),]);
    }

    #[test]
    fn ending_without_a_finish_reason_is_a_cut() {
        let mut d = StreamDecoder::default();
        let ev = d.event(SseEvent { event: None, data: r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}]}"#.into() }).unwrap();
        assert_eq!(ev, vec![Event::Text("Hel".into())]);
        assert!(!d.is_done());
        let err = d.end().unwrap_err();
        assert!(matches!(err, ProviderError::Stream { .. }), "{err:?}");
        assert!(err.is_retryable());
    }

    #[test]
    fn error_frames_and_malformed_frames_end_the_stream() {
        let mut d = StreamDecoder::default();
        let e = d
            .event(SseEvent {
                event: None,
                data: r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#.into(),
            })
            .unwrap_err();
        let ProviderError::Stream { message, code } = &e else { panic!("{e:?}") };
        assert_eq!(message, "The model is overloaded.");
        assert_eq!(code.as_deref(), Some("UNAVAILABLE"));
        let e = d.event(SseEvent { event: None, data: r#"{"candidates":[{"content":"#.into() }).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }

    #[test]
    fn whole_response_decodes_like_one_frame() {
        let ev = decode_response(&json!({
            "candidates":[{"content":{"role":"model","parts":[{"text":"Hi "},{"functionCall":{"name":"f","args":{}}}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2,"totalTokenCount":5}
        }))
        .unwrap();
        assert_eq!(ev[0], Event::Text("Hi ".into()));
        assert!(matches!(&ev[1], Event::ToolCallStart { index: 0, name, .. } if name == "f"));
        assert_eq!(ev[2], Event::ToolCallArgs { index: 0, arguments: "{}".into() });
        assert_eq!(ev[3], Event::Finish(FinishReason::ToolCalls));
        assert!(matches!(ev[4], Event::Usage(Usage { input_tokens: 3, output_tokens: 2, .. })));
        assert!(decode_response(&json!({"candidates":[]})).is_err());
    }

    const RATE_LIMITED: &str = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[
        {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
        {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"22s"}]}}"#;

    #[test]
    fn retry_info_sets_retry_after_and_wins_over_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from_static("5"));
        let e = parse_error(429, &headers, RATE_LIMITED);
        let ProviderError::Http { status, code, retry_after, quota, .. } = &e else { panic!("{e:?}") };
        assert_eq!(*status, 429);
        assert_eq!(code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(*retry_after, Some(Duration::from_secs(22)));
        assert!(!quota);
        assert!(e.is_retryable());
        assert_eq!(e.kind(), "rate_limited");
        // Without RetryInfo the header is used.
        let e = parse_error(503, &headers, r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#);
        assert!(matches!(e, ProviderError::Http { retry_after: Some(d), .. } if d == Duration::from_secs(5)));
    }

    #[test]
    fn daily_quota_fails_over_without_waiting() {
        let body = RATE_LIMITED.replace("PerMinute", "PerDay");
        let e = parse_error(429, &HeaderMap::new(), &body);
        let ProviderError::Http { retry_after, quota, .. } = &e else { panic!("{e:?}") };
        assert_eq!(*retry_after, None);
        assert!(quota, "a daily quota moves to another provider");
        assert_eq!(e.verdict(), crate::llm::error::Verdict::OtherProvider);
    }

    #[test]
    fn billing_not_enabled_is_quota_but_a_bad_key_is_just_its_status() {
        let h = HeaderMap::new();
        let billing = parse_error(
            400,
            &h,
            r#"{"error":{"code":400,"message":"Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio.","status":"FAILED_PRECONDITION"}}"#,
        );
        assert!(matches!(billing, ProviderError::Http { quota: true, .. }));
        assert_eq!(billing.kind(), "quota");
        assert!(!billing.is_retryable());

        let key = parse_error(
            400,
            &h,
            r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
        );
        assert!(matches!(&key, ProviderError::Http { quota: false, code: Some(c), .. } if c == "invalid_api_key"));
        assert!(!key.is_retryable());
        assert_eq!(key.verdict(), crate::llm::error::Verdict::OtherProvider, "a bad key is a credential error");
        assert_eq!(key.kind(), "unauthorized");

        // Array-wrapped bodies and non-JSON bodies still give a status and a message.
        let wrapped = parse_error(403, &h, r#"[{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}]"#);
        assert!(
            matches!(&wrapped, ProviderError::Http { code: Some(c), message, .. } if c == "PERMISSION_DENIED" && message == "Permission denied")
        );
        let html = parse_error(502, &h, "<html>Bad Gateway</html>");
        assert!(matches!(&html, ProviderError::Http { message, code: None, .. } if message.contains("Bad Gateway")));
    }

    #[test]
    fn system_messages_become_system_instruction_and_assistant_is_model() {
        let body = request_body(&request(json!({
            "model": "m",
            "messages": [
                {"role":"system","content":"Be brief."},
                {"role":"developer","content":"Speak French."},
                {"role":"user","content":"Hi"},
                {"role":"user","content":[{"type":"text","text":"there"}]},
                {"role":"assistant","content":"Bonjour"},
                {"role":"user","content":"Thanks"}
            ]
        })))
        .unwrap();
        assert_eq!(body["systemInstruction"], json!({"parts":[{"text":"Be brief."},{"text":"Speak French."}]}));
        assert_eq!(
            body["contents"],
            json!([
                {"role":"user","parts":[{"text":"Hi"},{"text":"there"}]},
                {"role":"model","parts":[{"text":"Bonjour"}]},
                {"role":"user","parts":[{"text":"Thanks"}]}
            ])
        );
        assert!(body.get("tools").is_none());
        assert!(body.get("generationConfig").is_none());
    }

    #[test]
    fn tool_results_name_their_function_and_share_one_turn() {
        let body = request_body(&request(json!({
            "model": "m",
            "messages": [
                {"role":"user","content":"Weather and time in Paris?"},
                {"role":"assistant","content":null,"tool_calls":[
                    {"id":"call_a","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                    {"id":"call_b","type":"function","function":{"name":"get_time","arguments":""}}
                ]},
                {"role":"tool","tool_call_id":"call_b","content":"12:00"},
                {"role":"tool","tool_call_id":"call_a","content":"{\"temp_c\":18}"}
            ]
        })))
        .unwrap();
        assert_eq!(
            body["contents"],
            json!([
                {"role":"user","parts":[{"text":"Weather and time in Paris?"}]},
                {"role":"model","parts":[
                    {"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":PLACEHOLDER_THOUGHT_SIGNATURE},
                    {"functionCall":{"name":"get_time","args":{}}}
                ]},
                {"role":"user","parts":[
                    {"functionResponse":{"name":"get_time","response":{"result":"12:00"}}},
                    {"functionResponse":{"name":"get_weather","response":{"temp_c":18}}}
                ]}
            ])
        );
    }

    #[test]
    fn unusable_tool_history_is_an_invalid_request() {
        let unknown = request_body(&request(json!({
            "model": "m",
            "messages": [{"role":"user","content":"x"},{"role":"tool","tool_call_id":"call_nope","content":"1"}]
        })));
        assert!(matches!(unknown, Err(ProviderError::Invalid(m)) if m.contains("call_nope")));
        for args in ["{\"city\":", "[1,2]"] {
            let bad = request_body(&request(json!({
                "model": "m",
                "messages": [{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":args}}]}]
            })));
            assert!(matches!(bad, Err(ProviderError::Invalid(_))), "{args}");
        }
    }

    #[test]
    fn tools_and_tool_choice_map_to_declarations_and_calling_modes() {
        let tools = json!([{"type":"function","function":{"name":"get_weather","description":"Weather by city",
            "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}}]);
        let cases = [
            (json!("auto"), json!({"mode":"AUTO"})),
            (json!("required"), json!({"mode":"ANY"})),
            (json!("none"), json!({"mode":"NONE"})),
            (json!({"type":"function","function":{"name":"get_weather"}}), json!({"mode":"ANY","allowedFunctionNames":["get_weather"]})),
        ];
        for (choice, mode) in cases {
            let body = request_body(&request(json!({
                "model":"m","messages":[{"role":"user","content":"x"}],"tools":tools,"tool_choice":choice
            })))
            .unwrap();
            assert_eq!(body["toolConfig"]["functionCallingConfig"], mode);
            let declaration = &body["tools"][0]["functionDeclarations"][0];
            assert_eq!(declaration["name"], "get_weather");
            assert_eq!(declaration["description"], "Weather by city");
            assert_eq!(declaration["parametersJsonSchema"], tools[0]["function"]["parameters"]);
            assert!(declaration.get("parameters").is_none());
        }
        let no_choice = request_body(&request(json!({"model":"m","messages":[{"role":"user","content":"x"}],"tools":tools}))).unwrap();
        assert!(no_choice.get("toolConfig").is_none());
        let bad = request_body(&request(json!({
            "model":"m","messages":[{"role":"user","content":"x"}],"tools":tools,"tool_choice":"sometimes"
        })));
        assert!(matches!(bad, Err(ProviderError::Invalid(_))));
    }

    #[test]
    fn generation_settings_and_json_modes() {
        let schema = json!({"type":"object","properties":{"answer":{"type":"integer"}},"required":["answer"],"additionalProperties":false});
        let body = request_body(&request(json!({
            "model":"m","messages":[{"role":"user","content":"x"}],
            "max_tokens": 100, "max_completion_tokens": 50, "temperature": 0.2, "top_p": 0.9, "stop": "END", "seed": 7,
            "response_format": {"type":"json_schema","json_schema":{"name":"a","schema":schema}}
        })))
        .unwrap();
        assert_eq!(
            body["generationConfig"],
            json!({"maxOutputTokens":50,"temperature":0.2,"topP":0.9,"stopSequences":["END"],"seed":7,
                   "responseMimeType":"application/json","responseJsonSchema":schema})
        );
        let body = request_body(&request(json!({
            "model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}
        })))
        .unwrap();
        assert_eq!(body["generationConfig"], json!({"responseMimeType":"application/json"}));
    }

    #[test]
    fn model_ids_cannot_reshape_the_url() {
        assert_eq!(model_id("gemini-2.5-flash").unwrap(), "gemini-2.5-flash");
        assert_eq!(model_id("models/gemini-2.5-pro").unwrap(), "gemini-2.5-pro");
        for bad in ["", "a/b", "x?key=1", "m:generateContent#", "../v1"] {
            assert!(model_id(bad).is_err(), "{bad}");
        }
    }
}
