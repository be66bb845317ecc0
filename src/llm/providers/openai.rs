//! OpenAI Chat Completions, and every OpenAI-compatible host (Groq, Together, vLLM, Ollama,
//! llama.cpp server): this is how Llama models are reached. `base_url` ends in `/v1`; we add
//! `/chat/completions`.
//!
//! Host quirks tolerated: a usage chunk with `choices: null`, whole tool arguments in the first
//! delta (never appended twice), the id repeated on every fragment, `delta.reasoning`, a missing
//! `[DONE]` after a finish reason, and vLLM's `{"object":"error"}` frames.

use std::collections::HashMap;

use reqwest::header::{HeaderMap, AUTHORIZATION};
use serde_json::{json, Value};

use super::http::{self, decode_sse, SseDecoder};
use super::{EventStream, HttpSettings};
use crate::llm::error::ProviderError;
use crate::llm::sse::SseEvent;
use crate::llm::types::{ChatRequest, Event, FinishReason, Usage};

pub struct OpenAi {
    settings: HttpSettings,
}

impl OpenAi {
    pub fn new(settings: HttpSettings) -> Self {
        OpenAi { settings }
    }

    pub async fn send(&self, request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<EventStream, ProviderError> {
        let body = request_body(request, upstream_model, stream)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.settings.api_key {
            headers.insert(AUTHORIZATION, http::header_value(&format!("Bearer {}", key.expose()))?);
        }
        let url = self.settings.endpoint("/chat/completions")?;
        let response = http::post_json(&self.settings, url, headers, &body, parse_error).await?;
        if stream {
            Ok(decode_sse(response, StreamDecoder::default()))
        } else {
            let value = http::read_json(response).await?;
            let events = decode_completion(&value)?;
            Ok(Box::pin(futures::stream::iter(events.into_iter().map(Ok))))
        }
    }
}

/// The request as the vendor wants it: our own fields minus the gateway-only ones, with the
/// upstream model name, and usage always requested when streaming.
pub fn request_body(request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<Value, ProviderError> {
    let mut body = serde_json::to_value(request).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    let Some(obj) = body.as_object_mut() else {
        return Err(ProviderError::Invalid("request is not an object".into()));
    };
    obj.remove("models");
    obj.insert("model".into(), json!(upstream_model));
    obj.insert("stream".into(), json!(stream));
    if stream {
        obj.insert("stream_options".into(), json!({"include_usage": true}));
    } else {
        obj.remove("stream_options");
    }
    if is_reasoning_model(upstream_model) {
        // OpenAI's reasoning models answer 400 to `max_tokens` and to sampling settings.
        if let Some(v) = obj.remove("max_tokens") {
            obj.entry("max_completion_tokens").or_insert(v);
        }
        obj.remove("temperature");
        obj.remove("top_p");
    }
    Ok(body)
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

/// A whole `chat.completion` object as events.
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
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
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
