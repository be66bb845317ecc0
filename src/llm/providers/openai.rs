//! OpenAI Chat Completions, and every OpenAI-compatible host (Groq, Together, vLLM, Ollama,
//! llama.cpp server): this is how Llama models are reached. `base_url` ends in `/v1`; we add
//! `/chat/completions`.
//!
//! Host quirks tolerated: a usage chunk with `choices: null`, whole tool arguments in the first
//! delta (never appended twice), the id repeated on every fragment, `delta.reasoning`, a missing
//! `[DONE]` after a finish reason, and vLLM's `{"object":"error"}` frames.

use std::collections::HashMap;
use std::marker::PhantomData;

use reqwest::header::{HeaderMap, AUTHORIZATION};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::http::{self, decode_sse, SseDecoder};
use super::{EventStream, HttpSettings};
use crate::llm::error::ProviderError;
use crate::llm::sse::SseEvent;
use crate::llm::types::{ChatRequest, Event, FinishReason, Message, ResponseFormat, Stop, StreamOptions, Tool, ToolChoice, Usage};

pub struct OpenAi {
    settings: HttpSettings,
}

impl OpenAi {
    pub fn new(settings: HttpSettings) -> Self {
        OpenAi { settings }
    }

    pub async fn send(&self, request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<EventStream, ProviderError> {
        let body = RequestBody::new(request, upstream_model, stream);
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.settings.api_key {
            headers.insert(AUTHORIZATION, http::header_value(&format!("Bearer {}", key.expose()))?);
        }
        let url = self.settings.endpoint("/chat/completions")?;
        let response = http::post_json(&self.settings, url, headers, &body, parse_error).await?;
        if stream {
            Ok(decode_sse(response, StreamDecoder::default()))
        } else {
            Ok(http::whole_body(response, decode_completion_body))
        }
    }
}

/// The request as the vendor wants it: our own fields minus the gateway-only ones, with the
/// upstream model name, and usage always requested when streaming. Serialised straight from the
/// client's request (no JSON tree in between).
#[derive(Serialize)]
pub struct RequestBody<'a> {
    model: &'a str,
    messages: &'a [Message],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [Tool]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

impl<'a> RequestBody<'a> {
    pub fn new(request: &'a ChatRequest, upstream_model: &'a str, stream: bool) -> Self {
        // Every field named (no `..`): a field added to `ChatRequest` must be decided on here.
        let ChatRequest {
            model: _,
            models: _,
            messages,
            stream: _,
            stream_options: _,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            max_tokens,
            max_completion_tokens,
            temperature,
            top_p,
            stop,
            n,
            seed,
            user,
        } = request;
        let mut body = RequestBody {
            model: upstream_model,
            messages,
            stream,
            stream_options: stream.then_some(StreamOptions { include_usage: true }),
            tools: tools.as_deref(),
            tool_choice: tool_choice.as_ref(),
            parallel_tool_calls: *parallel_tool_calls,
            response_format: response_format.as_ref(),
            max_tokens: *max_tokens,
            max_completion_tokens: *max_completion_tokens,
            temperature: *temperature,
            top_p: *top_p,
            stop: stop.as_ref(),
            n: *n,
            seed: *seed,
            user: user.as_deref(),
        };
        if is_reasoning_model(upstream_model) {
            // OpenAI's reasoning models answer 400 to `max_tokens` and to sampling settings.
            body.max_completion_tokens = body.max_completion_tokens.or(body.max_tokens.take());
            body.temperature = None;
            body.top_p = None;
        }
        body
    }
}

/// OpenAI's reasoning models (o-series, GPT-5 family) take `max_completion_tokens` only and no
/// sampling settings.
fn is_reasoning_model(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    m.starts_with("gpt-5") && !m.starts_with("gpt-5-chat") || ["o1", "o3", "o4"].iter().any(|p| m == *p || m.starts_with(&format!("{p}-")))
}

/// OpenAI error bodies: `{"error":{"message","type","param","code"}}`; vLLM sometimes sends
/// `{"object":"error","message":…}`.
pub fn parse_error(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = value.get("error").filter(|e| e.is_object()).unwrap_or(&value);
    let message = err.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| http::short(body));
    let mut code = err.get("code").and_then(Value::as_str).or_else(|| err.get("type").and_then(Value::as_str)).map(str::to_string);
    // vLLM and other hosts say it only in words ("This model's maximum context length is …").
    if status == 400 && crate::llm::error::says_context_too_long(&message) {
        code = Some(crate::llm::error::CONTEXT_LENGTH_EXCEEDED.to_string());
    }
    let quota = [err.get("code"), err.get("type")]
        .iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .any(|c| matches!(c, "insufficient_quota" | "billing_hard_limit_reached" | "billing_not_active" | "access_terminated"));
    ProviderError::Http { status, message, code, retry_after: http::retry_after(headers), quota }
}

/// Streaming decoder for `chat.completion.chunk` frames.
#[derive(Default)]
pub struct StreamDecoder {
    /// Upstream tool-call index → our dense index.
    indexes: HashMap<u64, u32>,
    /// Our index → the call's id.
    ids: Vec<String>,
    finished: bool,
    done: bool,
}

impl SseDecoder for StreamDecoder {
    fn event(&mut self, event: SseEvent) -> Result<Vec<Event>, ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| ProviderError::stream(format!("malformed chunk from upstream: {e}")))?;
        if let Some(err) = in_band_error(&chunk) {
            return Err(err);
        }
        let mut out = Vec::new();
        if let Some(choices) = chunk.get("choices").and_then(Value::as_array) {
            // n=1: only the first choice matters.
            if let Some(choice) = choices.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0) {
                if let Some(delta) = choice.get("delta") {
                    self.delta(delta, &mut out);
                }
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    self.finished = true;
                    out.push(Event::Finish(map_finish(reason)));
                }
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            out.push(Event::Usage(map_usage(usage)));
        }
        Ok(out)
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn end(&mut self) -> Result<Vec<Event>, ProviderError> {
        if self.finished {
            Ok(Vec::new())
        } else if self.done {
            Err(ProviderError::stream("upstream sent [DONE] without a finish reason (truncated answer)"))
        } else {
            Err(ProviderError::stream("upstream closed the stream before finishing"))
        }
    }
}

impl StreamDecoder {
    fn delta(&mut self, delta: &Value, out: &mut Vec<Event>) {
        for field in ["content", "refusal"] {
            if let Some(text) = delta.get(field).and_then(Value::as_str) {
                if !text.is_empty() {
                    out.push(Event::Text(text.to_string()));
                }
            }
        }
        let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) else { return };
        for call in calls {
            let function = call.get("function");
            let id = call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
            let index = self.our_index(call.get("index").and_then(Value::as_u64), id);
            let index = match index {
                Some(i) => i,
                None => {
                    let ours = self.ids.len() as u32;
                    let id = id.map(str::to_string).unwrap_or_else(|| format!("call_{}", crate::llm::ids::random_suffix()));
                    if let Some(up) = call.get("index").and_then(Value::as_u64) {
                        self.indexes.insert(up, ours);
                    }
                    self.ids.push(id.clone());
                    let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
                    out.push(Event::ToolCallStart { index: ours, id, name: name.to_string() });
                    ours
                }
            };
            if let Some(args) = function.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
                if !args.is_empty() {
                    out.push(Event::ToolCallArgs { index, arguments: args.to_string() });
                }
            }
        }
    }

    /// Which of our calls a fragment continues, or `None` for a new call. Hosts differ: some
    /// repeat the id on every fragment, some omit `index`; a new id always starts a new call.
    fn our_index(&self, upstream: Option<u64>, id: Option<&str>) -> Option<u32> {
        let known = match upstream {
            Some(up) => self.indexes.get(&up).copied(),
            None => self.ids.len().checked_sub(1).map(|i| i as u32),
        }?;
        match id {
            Some(id) if self.ids[known as usize] != id => None,
            _ => Some(known),
        }
    }
}

fn in_band_error(chunk: &Value) -> Option<ProviderError> {
    let err = if let Some(e) = chunk.get("error").filter(|e| !e.is_null()) {
        e
    } else if chunk.get("object").and_then(Value::as_str) == Some("error") {
        chunk
    } else {
        return None;
    };
    let message = err.get("message").and_then(Value::as_str).unwrap_or("upstream sent an error mid-stream").to_string();
    let code = err.get("code").and_then(Value::as_str).or_else(|| err.get("type").and_then(Value::as_str)).map(str::to_string);
    Some(ProviderError::Stream { message, code })
}

/// A whole `chat.completion` body as events. Well-formed answers take one typed parse; a body
/// that parse refuses (an error object, a field of an unexpected type, a repeated key) is read as
/// a JSON value by [`decode_completion`], which decides it exactly as before.
pub fn decode_completion_body(body: &[u8]) -> Result<Vec<Event>, ProviderError> {
    match decode_typed(body) {
        Some(events) => events,
        None => decode_completion(&http::parse_json(body)?),
    }
}

/// The typed parse, or `None` when the body needs the lenient path.
fn decode_typed(body: &[u8]) -> Option<Result<Vec<Event>, ProviderError>> {
    match serde_json::from_slice::<Obj<CompletionWire>>(body) {
        Ok(Obj(wire)) if wire.error.is_none() && wire.object != Some("error") => Some(wire.events()),
        _ => None,
    }
}

/// `T` read only from a JSON object. Serde's derived structs also accept an array (fields by
/// position), which the lenient path would ignore; this keeps the typed path to objects.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Fields(PhantomData)).map(Obj)
    }
}

/// The parts of a `chat.completion` we read; unknown fields are ignored.
#[derive(Deserialize, Default)]
#[serde(default)]
struct CompletionWire<'a> {
    error: Option<IgnoredAny>,
    #[serde(borrow)]
    object: Option<&'a str>,
    choices: Option<Vec<Obj<ChoiceWire<'a>>>>,
    usage: Option<Obj<UsageWire>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChoiceWire<'a> {
    message: Option<Obj<MessageWire>>,
    #[serde(borrow)]
    finish_reason: Option<&'a str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MessageWire {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<Obj<ToolCallWire>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ToolCallWire {
    id: Option<String>,
    function: Option<Obj<FunctionWire>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FunctionWire {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UsageWire {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Obj<CachedWire>>,
    completion_tokens_details: Option<Obj<ReasoningWire>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CachedWire {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReasoningWire {
    reasoning_tokens: Option<u64>,
}

impl CompletionWire<'_> {
    /// The same events [`decode_completion`] makes of the same answer.
    fn events(self) -> Result<Vec<Event>, ProviderError> {
        let Some(Obj(choice)) = self.choices.and_then(|c| c.into_iter().next()) else {
            return Err(ProviderError::stream("response has no choices"));
        };
        let message = choice.message.map(|Obj(m)| m).unwrap_or_default();
        let mut out = Vec::new();
        for text in [message.content, message.refusal].into_iter().flatten() {
            if !text.is_empty() {
                out.push(Event::Text(text));
            }
        }
        for (i, Obj(call)) in message.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let index = i as u32;
            let id = call.id.unwrap_or_else(|| format!("call_{}", crate::llm::ids::random_suffix()));
            let function = call.function.map(|Obj(f)| f).unwrap_or_default();
            out.push(Event::ToolCallStart { index, id, name: function.name.unwrap_or_default() });
            if let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) {
                out.push(Event::ToolCallArgs { index, arguments });
            }
        }
        out.push(Event::Finish(map_finish(choice.finish_reason.unwrap_or("stop"))));
        if let Some(Obj(usage)) = self.usage {
            let n = |v: Option<u64>| v.unwrap_or(0).min(crate::llm::types::USAGE_TOKENS_MAX);
            out.push(Event::Usage(Usage {
                input_tokens: n(usage.prompt_tokens),
                output_tokens: n(usage.completion_tokens),
                cached_input_tokens: n(usage.prompt_tokens_details.and_then(|Obj(d)| d.cached_tokens)),
                cache_write_tokens: 0,
                reasoning_tokens: n(usage.completion_tokens_details.and_then(|Obj(d)| d.reasoning_tokens)),
            }));
        }
        Ok(out)
    }
}

/// A whole `chat.completion` object, already read as a JSON value, as events: the lenient path,
/// where a field of an unexpected type counts as absent.
pub fn decode_completion(value: &Value) -> Result<Vec<Event>, ProviderError> {
    if let Some(err) = in_band_error(value) {
        return Err(err);
    }
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| ProviderError::stream("response has no choices"))?;
    let message = choice.get("message").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    for field in ["content", "refusal"] {
        if let Some(text) = message.get(field).and_then(Value::as_str) {
            if !text.is_empty() {
                out.push(Event::Text(text.to_string()));
            }
        }
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (i, call) in calls.iter().enumerate() {
            let index = i as u32;
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{}", crate::llm::ids::random_suffix()));
            let function = call.get("function");
            let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default().to_string();
            let args = function.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or_default().to_string();
            out.push(Event::ToolCallStart { index, id, name });
            if !args.is_empty() {
                out.push(Event::ToolCallArgs { index, arguments: args });
            }
        }
    }
    let reason = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    out.push(Event::Finish(map_finish(reason)));
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        out.push(Event::Usage(map_usage(usage)));
    }
    Ok(out)
}

fn map_finish(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// OpenAI `prompt_tokens` already includes cached tokens, which is our own convention.
fn map_usage(usage: &Value) -> Usage {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0).min(crate::llm::types::USAGE_TOKENS_MAX);
    Usage {
        input_tokens: n(usage.get("prompt_tokens")),
        output_tokens: n(usage.get("completion_tokens")),
        cached_input_tokens: n(usage.pointer("/prompt_tokens_details/cached_tokens")),
        cache_write_tokens: 0,
        reasoning_tokens: n(usage.pointer("/completion_tokens_details/reasoning_tokens")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request_body(request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<Value, ProviderError> {
        serde_json::to_value(RequestBody::new(request, upstream_model, stream)).map_err(|e| ProviderError::Invalid(e.to_string()))
    }

    /// How the body was built before it was typed: the request as a JSON value, then edited.
    fn request_body_as_value(request: &ChatRequest, upstream_model: &str, stream: bool) -> Value {
        let mut body = serde_json::to_value(request).unwrap();
        let obj = body.as_object_mut().unwrap();
        obj.remove("models");
        obj.insert("model".into(), json!(upstream_model));
        obj.insert("stream".into(), json!(stream));
        if stream {
            obj.insert("stream_options".into(), json!({"include_usage": true}));
        } else {
            obj.remove("stream_options");
        }
        if is_reasoning_model(upstream_model) {
            if let Some(v) = obj.remove("max_tokens") {
                obj.entry("max_completion_tokens").or_insert(v);
            }
            obj.remove("temperature");
            obj.remove("top_p");
        }
        body
    }

    #[test]
    fn typed_body_matches_the_edited_value() {
        let rich = json!({
            "model": "voice", "models": ["a", "b"], "stream": true, "stream_options": {"include_usage": false},
            "messages": [
                {"role": "developer", "content": "be brief", "name": "ops"},
                {"role": "user", "content": [{"type": "text", "text": "hi \"there\" \u{e9}"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
            "max_tokens": 50, "max_completion_tokens": 40, "temperature": 0.2, "top_p": 0.9, "stop": ["x", "y"],
            "n": 1, "seed": -3, "user": "u"
        });
        let plain =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7, "temperature": 1.5, "stop": "z"});
        for request in [rich, plain] {
            let request: ChatRequest = serde_json::from_value(request).unwrap();
            for model in ["gpt-4.1-mini", "gpt-5-mini", "o3", "meta-llama/Llama-3.3-70B"] {
                for stream in [false, true] {
                    assert_eq!(
                        request_body(&request, model, stream).unwrap(),
                        request_body_as_value(&request, model, stream),
                        "{model} {stream}"
                    );
                }
            }
        }
    }

    #[test]
    fn typed_completion_decodes_as_the_value_path_does() {
        // Typed or not, every body decodes to what the lenient value path makes of it.
        let bodies = [
            r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#,
            r#"{"choices":[{"message":{"content":null,"refusal":"no","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},{"id":"c2","function":{"name":"g","arguments":""}}]},"finish_reason":"tool_calls","logprobs":null,"extra":{"x":[1,2]}}],"usage":{"prompt_tokens":5,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}},"system_fingerprint":"fp","service_tier":"default"}"#,
            r#"{"choices":[{"message":{"content":"a"},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"message":{"content":"a"},"finish_reason":"length"},{"message":{"content":"b"}}]}"#,
            r#"{"choices":[{"finish_reason":"content_filter"}]}"#,
            r#"{"choices":[{"message":null}]}"#,
            r#"{"choices":[{"message":{"content":"a","reasoning":"hmm"}}],"usage":{"prompt_tokens":1,"completion_tokens_details":null}}"#,
            // Refused by the typed parse, decided by the value path:
            r#"{"choices":[{"message":{"content":"a"}}],"usage":[12,3]}"#,
            r#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":1.0,"completion_tokens":-1}}"#,
            r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"}]}}]}"#,
            r#"{"choices":[{"message":"a","finish_reason":7}]}"#,
            r#"{"choices":[{"message":{"content":"a"},"finish_reason":"st\u006fp"}]}"#,
            r#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"choices":[{"message":{"content":"a"}}],"error":{"message":"boom","code":"x"}}"#,
            r#"{"object":"error","message":"boom","choices":[{"message":{"content":"a"}}]}"#,
            r#"{"choices":null,"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[]}"#,
            r#"{"choices":{"0":{"message":{"content":"a"}}}}"#,
            r#"[[{"message":{"content":"a"}}]]"#,
            r#"{}"#,
        ];
        for body in bodies {
            let value: Value = serde_json::from_str(body).unwrap();
            let expected = decode_completion(&value).map_err(|e| e.to_string());
            assert_eq!(decode_completion_body(body.as_bytes()).map_err(|e| e.to_string()), expected, "{body}");
        }
        assert!(decode_typed(bodies[0].as_bytes()).is_some() && decode_typed(bodies[1].as_bytes()).is_some());
        assert!(decode_typed(bodies[7].as_bytes()).is_none(), "an array is not an object");
        let e = decode_completion_body(b"{not json").unwrap_err();
        assert!(e.to_string().contains("malformed response body"));
    }

    #[test]
    fn typed_completion_names_tool_calls_without_an_id() {
        let ev = decode_completion_body(br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"f"}}]}}]}"#).unwrap();
        assert!(matches!(&ev[0], Event::ToolCallStart { index: 0, id, name } if id.starts_with("call_") && id.len() == 29 && name == "f"));
        assert_eq!(ev[1..], [Event::Finish(FinishReason::Stop)]);
    }

    fn feed(decoder: &mut StreamDecoder, frames: &[&str]) -> Vec<Event> {
        let mut out = Vec::new();
        for f in frames {
            out.extend(decoder.event(SseEvent { event: None, data: f.to_string() }).unwrap());
        }
        out
    }

    #[test]
    fn usage_chunk_with_null_choices_is_read() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}],"usage":null}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
                r#"{"choices":null,"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#,
                "[DONE]",
            ],
        );
        assert_eq!(
            ev,
            vec![
                Event::Text("Hi".into()),
                Event::Finish(FinishReason::Stop),
                Event::Usage(Usage { input_tokens: 12, output_tokens: 3, cached_input_tokens: 4, ..Usage::default() }),
            ]
        );
        assert!(d.is_done());
    }

    #[test]
    fn whole_arguments_in_first_delta_are_not_doubled() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"arguments":""}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            ],
        );
        assert_eq!(
            ev,
            vec![
                Event::ToolCallStart { index: 0, id: "call_1".into(), name: "f".into() },
                Event::ToolCallArgs { index: 0, arguments: "{\"a\":1}".into() },
                Event::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn cut_stream_is_an_error_and_finished_stream_is_not() {
        let mut d = StreamDecoder::default();
        feed(&mut d, &[r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#]);
        assert!(d.end().is_err());
        let mut d = StreamDecoder::default();
        feed(&mut d, &[r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":"stop"}]}"#]);
        assert!(d.end().is_ok());
    }

    #[test]
    fn done_without_a_finish_reason_is_a_truncated_answer() {
        let mut d = StreamDecoder::default();
        feed(&mut d, &[r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#, "[DONE]"]);
        assert!(d.is_done());
        let e = d.end().unwrap_err();
        assert!(e.to_string().contains("[DONE] without a finish reason"), "{e}");
    }

    #[test]
    fn in_band_errors_end_the_stream() {
        let mut d = StreamDecoder::default();
        let e = d.event(SseEvent { event: None, data: r#"{"object":"error","message":"boom"}"#.into() }).unwrap_err();
        assert!(matches!(e, ProviderError::Stream { .. }));
        let e = d.event(SseEvent { event: None, data: "{not json".into() }).unwrap_err();
        assert!(e.to_string().contains("malformed"));
    }

    #[test]
    fn quota_429_is_not_retryable_but_rate_limit_is() {
        let h = HeaderMap::new();
        let q = parse_error(
            429,
            &h,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert!(!q.is_retryable());
        let r = parse_error(429, &h, r#"{"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}"#);
        assert!(r.is_retryable());
    }

    #[test]
    fn body_asks_for_usage_and_names_the_upstream_model() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "voice", "models": ["a"], "messages": [{"role":"user","content":"hi"}]
        }))
        .unwrap();
        let body = request_body(&req, "gpt-4.1-mini", true).unwrap();
        assert_eq!(body["model"], "gpt-4.1-mini");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("models").is_none());
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_and_no_sampling() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role":"user","content":"hi"}], "max_tokens": 50, "temperature": 0.2
        }))
        .unwrap();
        let body = request_body(&req, "gpt-5-mini", true).unwrap();
        assert_eq!(body["max_completion_tokens"], 50);
        assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
        let body = request_body(&req, "gpt-4.1-mini", true).unwrap();
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["temperature"], 0.2);
        assert!(is_reasoning_model("o4-mini") && !is_reasoning_model("gpt-4o") && !is_reasoning_model("llama-3.3-70b"));
    }

    #[test]
    fn fragments_without_index_and_new_ids_make_dense_calls() {
        let mut d = StreamDecoder::default();
        let ev = feed(
            &mut d,
            &[
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":":1}"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"refusal":"no"},"finish_reason":"tool_calls"}]}"#,
            ],
        );
        assert_eq!(
            ev,
            vec![
                Event::ToolCallStart { index: 0, id: "a".into(), name: "f".into() },
                Event::ToolCallArgs { index: 0, arguments: "{\"x\"".into() },
                Event::ToolCallArgs { index: 0, arguments: ":1}".into() },
                Event::ToolCallStart { index: 1, id: "b".into(), name: "g".into() },
                Event::ToolCallArgs { index: 1, arguments: "{}".into() },
                Event::Text("no".into()),
                Event::Finish(FinishReason::ToolCalls),
            ]
        );
    }
}
