//! Anthropic Messages API (`POST {base}/v1/messages`, headers `x-api-key` and
//! `anthropic-version: 2023-06-01`). `base_url` is `https://api.anthropic.com` or a proxy with a
//! path prefix; we add `/v1/messages`.
//!
//! Mapping notes:
//! - System and developer messages go to the top-level `system` field, joined by blank lines.
//!   Consecutive messages of the same role are merged (Anthropic requires alternation), and
//!   consecutive `tool` messages become one user message of `tool_result` blocks.
//! - A user message's `name` (a speaker label, `speaker_A`, or a text app's participant) has no
//!   field in the Messages API: its first text block starts with `NAME: ` instead
//!   ([`name_prefixed`]), so each speaker stays labelled when consecutive user messages merge.
//!   A message without `name` is sent exactly as before.
//! - Tool-call indexes count tool calls only; Anthropic's content-block indexes also count text
//!   blocks, so the decoders keep their own counter (LiteLLM #5231, Portkey #1275).
//! - Usage follows our [`Usage`] convention: `input_tokens` includes cache reads and writes.
//!   `message_delta` usage is cumulative, so it replaces `message_start`'s, never adds to it.
//! - **JSON mode.** Anthropic has no `response_format`. For `json_schema` (or `json_object`,
//!   with schema `{"type":"object"}`) we add a tool named `json` whose `input_schema` is the
//!   schema and force it with `tool_choice {"type":"tool","name":"json"}`. The model's input for
//!   that tool is turned back into plain `Text` events, because the client asked for JSON text,
//!   not a tool call; the finish reason is then `stop`. When the client also offers its own tools
//!   with `tool_choice` auto, the `json` tool joins them under `{"type":"any"}`, so the model
//!   either calls one of the client's tools or answers in JSON. A client tool named `json` cannot
//!   be combined with JSON mode and is rejected as [`ProviderError::Invalid`].
//! - A tool call without arguments gets `{}` as its arguments (what OpenAI sends), never an empty
//!   string that a client would fail to parse.

use std::collections::HashMap;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use super::http::{self, decode_sse, SseDecoder};
use super::{name_prefixed, EventStream, HttpSettings};
use crate::llm::error::ProviderError;
use crate::llm::sse::SseEvent;
use crate::llm::types::{ChatRequest, Content, Event, FinishReason, Message, ResponseFormat, ToolChoice, Usage};

/// The API version we speak.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; used when the client gave no limit.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;
/// The name of the forced tool that carries a JSON-mode answer.
pub const JSON_TOOL_NAME: &str = "json";

pub struct Anthropic {
    settings: HttpSettings,
}

impl Anthropic {
    pub fn new(settings: HttpSettings) -> Self {
        Anthropic { settings }
    }

    pub async fn send(&self, request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<EventStream, ProviderError> {
        let body = request_body(request, upstream_model, stream)?;
        let json_tool = uses_json_tool(&body);
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.settings.api_key {
            headers.insert(HeaderName::from_static("x-api-key"), http::header_value(key.expose())?);
        }
        headers.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(API_VERSION));
        let url = self.settings.endpoint("/v1/messages")?;
        let response = http::post_json(&self.settings, url, headers, &body, parse_error).await?;
        if stream {
            Ok(decode_sse(response, StreamDecoder::new(json_tool)))
        } else {
            Ok(http::whole_body(response, move |body| decode_message(&http::parse_json(body)?, json_tool)))
        }
    }
}

/// True when `body` (built by [`request_body`]) carries the JSON-mode tool, so that a `tool_use`
/// named [`JSON_TOOL_NAME`] in the answer is JSON text.
fn uses_json_tool(body: &Value) -> bool {
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| tools.iter().any(|t| t.get("name").and_then(Value::as_str) == Some(JSON_TOOL_NAME)))
}

/// The Messages API request for `request`.
pub fn request_body(request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<Value, ProviderError> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(ProviderError::Invalid("Anthropic returns one answer per request; n > 1 is not supported".into()));
    }
    let (system, messages) = map_messages(&request.messages)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("max_tokens".into(), json!(request.max_output_tokens().unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)));
    if let Some(system) = system {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = request.temperature {
        // OpenAI accepts 0..=2, Anthropic 0..=1: clamp so a fallback from an OpenAI model does
        // not turn a valid request into a 400.
        body.insert("temperature".into(), json!(t.min(1.0)));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    let stops = request.stop_sequences();
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), json!(stops));
    }
    if let Some(user) = request.user.as_deref().filter(|u| !u.is_empty()) {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some((tools, choice)) = map_tools(request)? {
        body.insert("tools".into(), Value::Array(tools));
        body.insert("tool_choice".into(), choice);
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

/// One Anthropic message being built: a role and its content blocks.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

/// System text (joined) and the alternating `messages` array.
fn map_messages(messages: &[Message]) -> Result<(Option<String>, Vec<Value>), ProviderError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for message in messages {
        let (role, blocks) = match message {
            Message::System { content, .. } => {
                let text = content.text();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Message::User { content, name } => ("user", named_text_blocks(content, name.as_deref())),
            Message::Assistant { content, tool_calls, .. } => {
                let mut blocks = content.as_ref().map(text_blocks).unwrap_or_default();
                for call in tool_calls.iter().flatten() {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.function.name,
                        "input": parse_arguments(&call.function.name, &call.function.arguments)?,
                    }));
                }
                ("assistant", blocks)
            }
            Message::Tool { content, tool_call_id } => {
                let mut block = json!({"type": "tool_result", "tool_use_id": tool_call_id});
                let text = content.text();
                if !text.is_empty() {
                    block["content"] = json!(text);
                }
                ("user", vec![block])
            }
        };
        // Anthropic rejects empty content; an empty message carries nothing anyway.
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    let messages = turns.into_iter().map(turn_json).collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, messages))
}

fn turn_json(mut turn: Turn) -> Value {
    // `tool_result` blocks must come first in a user message.
    turn.blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
    // A lone text block is sent as a plain string.
    if let [only] = turn.blocks.as_slice() {
        if only.get("type").and_then(Value::as_str) == Some("text") {
            return json!({"role": turn.role, "content": only["text"]});
        }
    }
    json!({"role": turn.role, "content": turn.blocks})
}

/// Non-empty text parts as `text` blocks (Anthropic rejects empty text blocks).
fn text_blocks(content: &Content) -> Vec<Value> {
    let texts: Vec<&str> = match content {
        Content::Text(s) => vec![s.as_str()],
        Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
    };
    texts.into_iter().filter(|t| !t.is_empty()).map(|t| json!({"type": "text", "text": t})).collect()
}

/// A user message's text blocks with its `name` (Anthropic has no field for it) written before the
/// first: `speaker_A: …` (see [`name_prefixed`]). Each message keeps its own label when consecutive
/// user messages merge into one Anthropic turn.
fn named_text_blocks(content: &Content, name: Option<&str>) -> Vec<Value> {
    let mut blocks = text_blocks(content);
    if let Some(first) = blocks.first_mut() {
        if let Some(text) = first["text"].as_str() {
            let labelled = name_prefixed(name, text);
            first["text"] = json!(labelled);
        }
    }
    blocks
}

/// An assistant tool call's arguments as the `input` object Anthropic wants.
fn parse_arguments(name: &str, arguments: &str) -> Result<Value, ProviderError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    let value: Value = serde_json::from_str(arguments).map_err(|e| {
        ProviderError::Invalid(format!(
            "the arguments of the earlier call to tool `{name}` are not valid JSON ({e}); Anthropic needs them as an object"
        ))
    })?;
    if !value.is_object() {
        return Err(ProviderError::Invalid(format!(
            "the arguments of the earlier call to tool `{name}` are JSON but not an object; Anthropic needs an object"
        )));
    }
    Ok(value)
}

/// `tools` and `tool_choice`, or `None` when the request offers no tools (or `tool_choice`
/// is `none`) and asks for no JSON mode.
fn map_tools(request: &ChatRequest) -> Result<Option<(Vec<Value>, Value)>, ProviderError> {
    let mut tools: Vec<Value> = Vec::new();
    if request.tools_enabled() {
        for tool in request.tools.iter().flatten() {
            let f = &tool.function;
            let mut t = json!({
                "name": f.name,
                "input_schema": f.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = f.description.as_deref().filter(|d| !d.is_empty()) {
                t["description"] = json!(d);
            }
            tools.push(t);
        }
    }
    let client_tools = !tools.is_empty();
    let json_schema = match &request.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => Some(json_schema.schema.clone().unwrap_or_else(|| json!({"type": "object"}))),
        Some(ResponseFormat::JsonObject) => Some(json!({"type": "object"})),
        Some(ResponseFormat::Text) | None => None,
    };
    let mut choice = match (&request.tool_choice, client_tools) {
        (_, false) => None,
        (None, true) => Some(json!({"type": "auto"})),
        (Some(ToolChoice::Mode(mode)), true) => match mode.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            // `none` leaves the tools out entirely (`tools_enabled` is false), so this is unreachable.
            other => return Err(ProviderError::Invalid(format!("unknown tool_choice `{other}`"))),
        },
        (Some(ToolChoice::Named { function, .. }), true) => Some(json!({"type": "tool", "name": function.name})),
    };
    if let Some(schema) = json_schema {
        if tools.iter().any(|t| t["name"] == JSON_TOOL_NAME) {
            return Err(ProviderError::Invalid(format!(
                "a tool named `{JSON_TOOL_NAME}` cannot be combined with response_format on Anthropic (JSON mode uses that name)"
            )));
        }
        let answer_tool = json!({
            "name": JSON_TOOL_NAME,
            "description": "Respond with a JSON value that matches this schema.",
            "input_schema": schema,
        });
        match choice.as_ref().and_then(|c| c["type"].as_str()) {
            // The model must call something anyway (required or a named tool): JSON mode has no turn.
            Some("any") | Some("tool") => {}
            // Client tools on auto: call one of them, or answer in JSON.
            Some(_) => {
                tools.push(answer_tool);
                choice = Some(json!({"type": "any"}));
            }
            None => {
                tools.push(answer_tool);
                choice = Some(json!({"type": "tool", "name": JSON_TOOL_NAME}));
            }
        }
    }
    let Some(mut choice) = choice else {
        return Ok(None);
    };
    if request.parallel_tool_calls == Some(false) {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Ok(Some((tools, choice)))
}

/// Anthropic error bodies: `{"type":"error","error":{"type","message","details"?},"request_id"}`.
/// `code` is `error.type`. Quota (never retried): 402 / `billing_error`, a spend limit
/// (`error.details.error_code` `enforced_spend_limit_reached`, on 429 or 400), or a message about
/// the credit balance or billing.
pub fn parse_error(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = value.get("error").filter(|e| e.is_object());
    let message = err.and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| http::short(body));
    let mut code = err.and_then(|e| e.get("type")).and_then(Value::as_str).map(str::to_string);
    if matches!(status, 400 | 413) && crate::llm::error::says_context_too_long(&message) {
        code = Some(crate::llm::error::CONTEXT_LENGTH_EXCEEDED.to_string());
    }
    let detail_code = err.and_then(|e| e.pointer("/details/error_code")).and_then(Value::as_str);
    let lower = message.to_ascii_lowercase();
    let quota = status == 402
        || matches!(code.as_deref(), Some("billing_error" | "payment_required"))
        || detail_code == Some("enforced_spend_limit_reached")
        || (matches!(status, 400 | 403 | 429)
            && ["credit balance", "spend limit", "billing", "out of extra usage"].iter().any(|s| lower.contains(s)));
    ProviderError::Http { status, message, code, retry_after: http::retry_after(headers), quota }
}

/// What a content block of the answer turns into.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Text,
    /// A client tool call with our tool-call index, and whether any arguments were sent yet.
    Tool {
        index: u32,
        has_args: bool,
    },
    /// The JSON-mode tool: its input is the answer text.
    JsonText {
        has_text: bool,
    },
    /// Thinking, server tools and block types we do not know: dropped.
    Ignored,
}

/// Token counts as Anthropic reports them, before normalisation.
#[derive(Debug, Clone, Copy, Default)]
struct RawUsage {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl RawUsage {
    /// Overwrite the counts present in `usage`; Anthropic's counts are cumulative totals.
    fn update(&mut self, usage: &Value) {
        let n = |key: &str| usage.get(key).and_then(Value::as_u64).map(|v| v.min(crate::llm::types::USAGE_TOKENS_MAX));
        if let Some(v) = n("input_tokens") {
            self.input = v;
        }
        if let Some(v) = n("cache_creation_input_tokens") {
            self.cache_creation = v;
        }
        if let Some(v) = n("cache_read_input_tokens") {
            self.cache_read = v;
        }
        if let Some(v) = n("output_tokens") {
            self.output = v;
        }
    }

    fn normalised(self) -> Usage {
        Usage {
            input_tokens: self.input + self.cache_creation + self.cache_read,
            output_tokens: self.output,
            cached_input_tokens: self.cache_read,
            cache_write_tokens: self.cache_creation,
            reasoning_tokens: 0,
        }
    }
}

/// Streaming decoder for Messages API events.
#[derive(Default)]
pub struct StreamDecoder {
    /// The request carried the JSON-mode tool.
    json_tool: bool,
    /// Content-block index → what it becomes.
    blocks: HashMap<u64, Block>,
    /// Tool calls started so far (the next tool-call index).
    tool_calls: u32,
    usage: RawUsage,
    finished: bool,
    done: bool,
}

impl StreamDecoder {
    /// `json_tool`: the request carried the JSON-mode tool (see the module doc).
    pub fn new(json_tool: bool) -> Self {
        StreamDecoder { json_tool, ..Self::default() }
    }

    fn block_start(&mut self, ev: &Value, out: &mut Vec<Event>) -> Result<(), ProviderError> {
        let index = block_index(ev)?;
        let content = ev.get("content_block").unwrap_or(&Value::Null);
        let block = match content.get("type").and_then(Value::as_str) {
            Some("text") => {
                push_text(content.get("text"), out);
                Block::Text
            }
            Some("tool_use") => {
                let name = content.get("name").and_then(Value::as_str).unwrap_or_default();
                // Anthropic starts with `input: {}` and streams the input; a proxy may send it whole.
                let input = content.get("input").filter(|i| i.as_object().is_some_and(|o| !o.is_empty()));
                if self.json_tool && name == JSON_TOOL_NAME {
                    if let Some(input) = input {
                        out.push(Event::Text(input.to_string()));
                    }
                    Block::JsonText { has_text: input.is_some() }
                } else {
                    let tool_index = self.tool_calls;
                    self.tool_calls += 1;
                    out.push(Event::ToolCallStart { index: tool_index, id: tool_id(content), name: name.to_string() });
                    if let Some(input) = input {
                        out.push(Event::ToolCallArgs { index: tool_index, arguments: input.to_string() });
                    }
                    Block::Tool { index: tool_index, has_args: input.is_some() }
                }
            }
            _ => Block::Ignored,
        };
        self.blocks.insert(index, block);
        Ok(())
    }

    fn block_delta(&mut self, ev: &Value, out: &mut Vec<Event>) -> Result<(), ProviderError> {
        let index = block_index(ev)?;
        let Some(block) = self.blocks.get_mut(&index) else {
            return Err(ProviderError::stream(format!("upstream sent a delta for content block {index}, which never started")));
        };
        let delta = ev.get("delta").unwrap_or(&Value::Null);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") if *block == Block::Text => push_text(delta.get("text"), out),
            Some("input_json_delta") => {
                let part = delta.get("partial_json").and_then(Value::as_str).unwrap_or_default();
                if part.is_empty() {
                    return Ok(());
                }
                match block {
                    Block::Tool { index, has_args } => {
                        *has_args = true;
                        out.push(Event::ToolCallArgs { index: *index, arguments: part.to_string() });
                    }
                    Block::JsonText { has_text } => {
                        *has_text = true;
                        out.push(Event::Text(part.to_string()));
                    }
                    Block::Text | Block::Ignored => {}
                }
            }
            // thinking_delta, signature_delta, citations_delta and future delta types.
            _ => {}
        }
        Ok(())
    }

    fn block_stop(&mut self, ev: &Value, out: &mut Vec<Event>) -> Result<(), ProviderError> {
        let index = block_index(ev)?;
        match self.blocks.get_mut(&index) {
            Some(Block::Tool { index, has_args: has_args @ false }) => {
                *has_args = true;
                out.push(Event::ToolCallArgs { index: *index, arguments: "{}".into() });
            }
            Some(Block::JsonText { has_text: has_text @ false }) => {
                *has_text = true;
                out.push(Event::Text("{}".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

impl SseDecoder for StreamDecoder {
    fn event(&mut self, event: SseEvent) -> Result<Vec<Event>, ProviderError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let ev: Value = serde_json::from_str(data).map_err(|e| ProviderError::stream(format!("malformed event from upstream: {e}")))?;
        // The payload's `type` is authoritative; the SSE event name is the fallback.
        let kind = ev.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or_default();
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                if let Some(usage) = ev.pointer("/message/usage") {
                    self.usage.update(usage);
                }
            }
            "content_block_start" => self.block_start(&ev, &mut out)?,
            "content_block_delta" => self.block_delta(&ev, &mut out)?,
            "content_block_stop" => self.block_stop(&ev, &mut out)?,
            "message_delta" => {
                if let Some(usage) = ev.get("usage") {
                    self.usage.update(usage);
                }
                if let Some(reason) = ev.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    if !self.finished {
                        self.finished = true;
                        out.push(Event::Finish(map_stop_reason(reason, self.tool_calls)));
                    }
                }
            }
            "message_stop" => {
                self.done = true;
                if !self.finished {
                    // A complete message without a stop reason: still say it finished, or
                    // agents wait for a finish reason forever (Bifrost #1821).
                    self.finished = true;
                    out.push(Event::Finish(map_stop_reason("end_turn", self.tool_calls)));
                }
                out.push(Event::Usage(self.usage.normalised()));
            }
            "error" => return Err(in_band_error(&ev)),
            // ping, and event types added after this was written.
            _ => {}
        }
        Ok(out)
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn end(&mut self) -> Result<Vec<Event>, ProviderError> {
        if self.done {
            Ok(Vec::new())
        } else {
            Err(ProviderError::stream("upstream closed the stream before message_stop"))
        }
    }
}

fn block_index(ev: &Value) -> Result<u64, ProviderError> {
    ev.get("index").and_then(Value::as_u64).ok_or_else(|| ProviderError::stream("upstream sent a content block event without an index"))
}

fn push_text(text: Option<&Value>, out: &mut Vec<Event>) {
    if let Some(t) = text.and_then(Value::as_str).filter(|t| !t.is_empty()) {
        out.push(Event::Text(t.to_string()));
    }
}

fn tool_id(block: &Value) -> String {
    block
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("toolu_{}", crate::llm::ids::random_suffix()))
}

/// `{"type":"error","error":{"type","message"}}` as a stream error.
fn in_band_error(ev: &Value) -> ProviderError {
    let err = ev.get("error");
    let message = err.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("upstream sent an error mid-stream").to_string();
    let code = err.and_then(|e| e.get("type")).and_then(Value::as_str).map(str::to_string);
    ProviderError::Stream { message, code }
}

/// `stop_reason` in OpenAI's words. `tool_use` means `tool_calls` only when a client tool was
/// called; the JSON-mode tool alone is a plain answer.
fn map_stop_reason(reason: &str, client_tool_calls: u32) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" if client_tool_calls > 0 => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn, tool_use for the JSON tool, unknown reasons.
        _ => FinishReason::Stop,
    }
}

/// A whole (non-streaming) `message` object as events. `json_tool`: the request carried the
/// JSON-mode tool.
pub fn decode_message(value: &Value, json_tool: bool) -> Result<Vec<Event>, ProviderError> {
    if value.get("type").and_then(Value::as_str) == Some("error") {
        return Err(in_band_error(value));
    }
    let content = value.get("content").and_then(Value::as_array).ok_or_else(|| ProviderError::stream("response has no content array"))?;
    let mut out = Vec::new();
    let mut tool_calls = 0u32;
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => push_text(block.get("text"), &mut out),
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or_default();
                let input = block.get("input").filter(|i| !i.is_null()).cloned().unwrap_or_else(|| json!({}));
                if json_tool && name == JSON_TOOL_NAME {
                    out.push(Event::Text(input.to_string()));
                } else {
                    let index = tool_calls;
                    tool_calls += 1;
                    out.push(Event::ToolCallStart { index, id: tool_id(block), name: name.to_string() });
                    out.push(Event::ToolCallArgs { index, arguments: input.to_string() });
                }
            }
            _ => {}
        }
    }
    let reason = value.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    out.push(Event::Finish(map_stop_reason(reason, tool_calls)));
    let mut usage = RawUsage::default();
    if let Some(u) = value.get("usage") {
        usage.update(u);
    }
    out.push(Event::Usage(usage.normalised()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(data: Value) -> SseEvent {
        let name = data["type"].as_str().map(str::to_string);
        SseEvent { event: name, data: data.to_string() }
    }

    fn feed(decoder: &mut StreamDecoder, frames: Vec<Value>) -> Vec<Event> {
        let mut out = Vec::new();
        for f in frames {
            out.extend(decoder.event(ev(f)).unwrap());
        }
        out
    }

    fn message_start(usage: Value) -> Value {
        json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],
            "model":"claude","stop_reason":null,"stop_sequence":null,"usage":usage}})
    }

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn text_then_two_tools_count_tool_indexes_separately() {
        let mut d = StreamDecoder::new(false);
        let events = feed(
            &mut d,
            vec![
                message_start(json!({"input_tokens":20,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1})),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                json!({"type":"ping"}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"get_weather","input":{}}}),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}),
                json!({"type":"content_block_stop","index":1}),
                json!({"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"get_time","input":{}}}),
                json!({"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"tz\":\"CET\"}"}}),
                json!({"type":"content_block_stop","index":2}),
                json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":40}}),
                json!({"type":"message_stop"}),
            ],
        );
        assert_eq!(
            events,
            vec![
                Event::Text("Let me check.".into()),
                Event::ToolCallStart { index: 0, id: "toolu_a".into(), name: "get_weather".into() },
                Event::ToolCallArgs { index: 0, arguments: "{\"city\":".into() },
                Event::ToolCallArgs { index: 0, arguments: "\"Paris\"}".into() },
                Event::ToolCallStart { index: 1, id: "toolu_b".into(), name: "get_time".into() },
                Event::ToolCallArgs { index: 1, arguments: "{\"tz\":\"CET\"}".into() },
                Event::Finish(FinishReason::ToolCalls),
                Event::Usage(Usage { input_tokens: 20, output_tokens: 40, ..Usage::default() }),
            ]
        );
        assert!(d.is_done());
        assert!(d.end().unwrap().is_empty());
    }

    #[test]
    fn cache_tokens_are_added_to_input_and_reported_apart() {
        let mut d = StreamDecoder::new(false);
        let events = feed(
            &mut d,
            vec![
                message_start(json!({"input_tokens":8,"cache_creation_input_tokens":3,"cache_read_input_tokens":2,"output_tokens":1})),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}),
                json!({"type":"message_stop"}),
            ],
        );
        let usage = Usage { input_tokens: 13, output_tokens: 4, cached_input_tokens: 2, cache_write_tokens: 3, reasoning_tokens: 0 };
        assert_eq!(events.last(), Some(&Event::Usage(usage)));
        // Usage is reported exactly once.
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Usage(_))).count(), 1);
    }

    #[test]
    fn message_delta_usage_replaces_the_interim_count() {
        // Two message_delta events (server tools send several): each is a cumulative total.
        let mut d = StreamDecoder::new(false);
        let events = feed(
            &mut d,
            vec![
                message_start(json!({"input_tokens":100,"output_tokens":10})),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":30}}),
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":100,"cache_read_input_tokens":null,"output_tokens":47}}),
                json!({"type":"message_stop"}),
            ],
        );
        let finishes: Vec<_> = events.iter().filter(|e| matches!(e, Event::Finish(_))).collect();
        assert_eq!(finishes, vec![&Event::Finish(FinishReason::Stop)]);
        assert_eq!(events.last(), Some(&Event::Usage(Usage { input_tokens: 100, output_tokens: 47, ..Usage::default() })));
    }

    #[test]
    fn stop_reasons_map_to_openai_finish_reasons() {
        assert_eq!(map_stop_reason("end_turn", 0), FinishReason::Stop);
        assert_eq!(map_stop_reason("stop_sequence", 0), FinishReason::Stop);
        assert_eq!(map_stop_reason("max_tokens", 0), FinishReason::Length);
        assert_eq!(map_stop_reason("tool_use", 1), FinishReason::ToolCalls);
        assert_eq!(map_stop_reason("refusal", 0), FinishReason::ContentFilter);
        // The JSON-mode tool alone is an answer, not a tool call.
        assert_eq!(map_stop_reason("tool_use", 0), FinishReason::Stop);

        let mut d = StreamDecoder::new(false);
        let events = feed(
            &mut d,
            vec![
                message_start(json!({"input_tokens":1,"output_tokens":1})),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}),
            ],
        );
        assert_eq!(
            events,
            vec![
                Event::ToolCallStart { index: 0, id: "toolu_1".into(), name: "f".into() },
                // A call without arguments still gets parseable arguments.
                Event::ToolCallArgs { index: 0, arguments: "{}".into() },
                Event::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn thinking_and_unknown_events_are_ignored() {
        let mut d = StreamDecoder::new(false);
        let events = feed(
            &mut d,
            vec![
                message_start(json!({"input_tokens":1,"output_tokens":1})),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"some_future_event","x":1}),
                json!({"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"ok"}}),
            ],
        );
        assert_eq!(events, vec![Event::Text("ok".into())]);
    }

    #[test]
    fn json_tool_input_becomes_text() {
        let mut d = StreamDecoder::new(true);
        let events = feed(
            &mut d,
            vec![
                message_start(json!({"input_tokens":5,"output_tokens":1})),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_j","name":"json","input":{}}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"answer\""}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":":42}"}}),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":6}}),
                json!({"type":"message_stop"}),
            ],
        );
        assert_eq!(
            events,
            vec![
                Event::Text("{\"answer\"".into()),
                Event::Text(":42}".into()),
                Event::Finish(FinishReason::Stop),
                Event::Usage(Usage { input_tokens: 5, output_tokens: 6, ..Usage::default() }),
            ]
        );
        let whole = json!({"id":"msg_1","type":"message","role":"assistant","stop_reason":"tool_use",
            "content":[{"type":"tool_use","id":"toolu_j","name":"json","input":{"answer":42}}],
            "usage":{"input_tokens":5,"output_tokens":6}});
        assert_eq!(decode_message(&whole, true).unwrap()[0], Event::Text("{\"answer\":42}".into()));
        // Without JSON mode the same block is a real tool call.
        assert!(matches!(decode_message(&whole, false).unwrap()[0], Event::ToolCallStart { .. }));
    }

    #[test]
    fn in_band_error_event_ends_the_stream_with_its_type() {
        let mut d = StreamDecoder::new(false);
        feed(&mut d, vec![message_start(json!({"input_tokens":1,"output_tokens":1}))]);
        let e = d.event(ev(json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}))).unwrap_err();
        match e {
            ProviderError::Stream { message, code } => {
                assert_eq!(message, "Overloaded");
                assert_eq!(code.as_deref(), Some("overloaded_error"));
            }
            other => panic!("expected a stream error, got {other:?}"),
        }
    }

    #[test]
    fn stream_cut_before_message_stop_is_an_error() {
        let mut d = StreamDecoder::new(false);
        feed(
            &mut d,
            vec![
                message_start(json!({"input_tokens":1,"output_tokens":1})),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}),
            ],
        );
        assert!(matches!(d.end(), Err(ProviderError::Stream { .. })));
        // Even after the stop reason, a stream without message_stop is incomplete.
        let mut d = StreamDecoder::new(false);
        feed(&mut d, vec![json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}})]);
        assert!(d.end().is_err());
    }

    #[test]
    fn malformed_frames_and_orphan_deltas_are_stream_errors() {
        let mut d = StreamDecoder::new(false);
        let e = d.event(SseEvent { event: Some("content_block_delta".into()), data: "{\"type\":".into() }).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
        let e = d
            .event(ev(json!({"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{}"}})))
            .unwrap_err();
        assert!(matches!(e, ProviderError::Stream { .. }));
    }

    #[test]
    fn error_bodies_are_classified() {
        let mut h = HeaderMap::new();
        let overloaded =
            parse_error(529, &h, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#);
        assert!(overloaded.is_retryable());
        assert_eq!(overloaded.kind(), "overloaded");
        assert!(
            matches!(&overloaded, ProviderError::Http { code: Some(c), message, .. } if c == "overloaded_error" && message == "Overloaded")
        );

        let billing = parse_error(402, &h, r#"{"type":"error","error":{"type":"billing_error","message":"Payment required"}}"#);
        assert!(!billing.is_retryable());
        assert_eq!(billing.kind(), "quota");

        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("2"));
        let limited = parse_error(
            429,
            &h,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
        );
        assert!(limited.is_retryable());
        assert!(matches!(limited, ProviderError::Http { retry_after: Some(d), quota: false, .. } if d == Duration::from_secs(2)));

        let spend = parse_error(
            429,
            &h,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Your organization has reached its monthly limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#,
        );
        assert!(!spend.is_retryable());
        assert_eq!(spend.kind(), "quota");

        let credit = parse_error(
            400,
            &HeaderMap::new(),
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
        );
        assert!(matches!(credit, ProviderError::Http { quota: true, .. }));

        let bad = parse_error(
            400,
            &HeaderMap::new(),
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
        );
        assert!(!bad.is_retryable());
        assert!(matches!(bad, ProviderError::Http { quota: false, .. }));

        // A body that is not Anthropic's JSON (a proxy's HTML page) still gives a message.
        let html = parse_error(502, &HeaderMap::new(), "<html>Bad gateway</html>");
        assert!(matches!(html, ProviderError::Http { code: None, ref message, .. } if message.contains("Bad gateway")));
    }

    #[test]
    fn messages_map_to_alternating_turns_with_top_level_system() {
        let r = req(json!({
            "model": "m",
            "messages": [
                {"role":"system","content":"Be brief."},
                {"role":"developer","content":"Use metric units."},
                {"role":"user","content":"Weather and time in Paris?"},
                {"role":"assistant","content":"","tool_calls":[
                    {"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                    {"id":"toolu_2","type":"function","function":{"name":"get_time","arguments":""}}]},
                {"role":"tool","tool_call_id":"toolu_1","content":"18 C"},
                {"role":"tool","tool_call_id":"toolu_2","content":"12:00"},
                {"role":"user","content":"Thanks."},
                {"role":"user","content":[{"type":"text","text":"And tomorrow?"}]}
            ],
            "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u1"
        }));
        let body = request_body(&r, "claude-x", true).unwrap();
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["stream"], true);
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["system"], "Be brief.\n\nUse metric units.");
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["metadata"], json!({"user_id":"u1"}));
        assert!(body.get("tools").is_none());
        assert_eq!(
            body["messages"],
            json!([
                {"role":"user","content":"Weather and time in Paris?"},
                {"role":"assistant","content":[
                    {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}},
                    {"type":"tool_use","id":"toolu_2","name":"get_time","input":{}}]},
                {"role":"user","content":[
                    {"type":"tool_result","tool_use_id":"toolu_1","content":"18 C"},
                    {"type":"tool_result","tool_use_id":"toolu_2","content":"12:00"},
                    {"type":"text","text":"Thanks."},
                    {"type":"text","text":"And tomorrow?"}]}
            ])
        );
        let plain = request_body(&req(json!({"model":"m","messages":[{"role":"user","content":"hi"}]})), "c", false).unwrap();
        assert_eq!(plain["max_tokens"], DEFAULT_MAX_OUTPUT_TOKENS);
        assert!(plain.get("stream").is_none());
        assert!(plain.get("system").is_none());
    }

    #[test]
    fn invalid_tool_arguments_are_rejected_clearly() {
        let r = req(json!({"model":"m","messages":[
            {"role":"user","content":"hi"},
            {"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{oops"}}]}
        ]}));
        let e = request_body(&r, "c", false).unwrap_err();
        assert!(matches!(&e, ProviderError::Invalid(m) if m.contains("`f`") && m.contains("not valid JSON")), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn tool_choice_maps_and_none_leaves_tools_out() {
        let base = json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
                     {"type":"function","function":{"name":"get_time"}}]});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            request_body(&req(v), "c", false).unwrap()
        };
        let auto = with(json!({}));
        assert_eq!(auto["tool_choice"], json!({"type":"auto"}));
        assert_eq!(
            auto["tools"],
            json!([{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}},
                   {"name":"get_time","input_schema":{"type":"object"}}])
        );
        assert_eq!(with(json!({"tool_choice":"auto"}))["tool_choice"], json!({"type":"auto"}));
        assert_eq!(with(json!({"tool_choice":"required"}))["tool_choice"], json!({"type":"any"}));
        assert_eq!(
            with(json!({"tool_choice":{"type":"function","function":{"name":"get_time"}}}))["tool_choice"],
            json!({"type":"tool","name":"get_time"})
        );
        let none = with(json!({"tool_choice":"none"}));
        assert!(none.get("tools").is_none() && none.get("tool_choice").is_none());
        assert_eq!(with(json!({"parallel_tool_calls":false}))["tool_choice"], json!({"type":"auto","disable_parallel_tool_use":true}));
    }

    #[test]
    fn json_mode_forces_the_json_tool() {
        let schema = json!({"type":"object","properties":{"answer":{"type":"integer"}},"required":["answer"]});
        let r = req(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"a","schema":schema}}}));
        let body = request_body(&r, "c", false).unwrap();
        assert_eq!(body["tool_choice"], json!({"type":"tool","name":"json"}));
        assert_eq!(body["tools"][0]["name"], "json");
        assert_eq!(body["tools"][0]["input_schema"], schema);
        assert!(uses_json_tool(&body));

        let r = req(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}));
        let body = request_body(&r, "c", false).unwrap();
        assert_eq!(body["tools"][0]["input_schema"], json!({"type":"object"}));
        assert_eq!(body["tool_choice"], json!({"type":"tool","name":"json"}));

        // With client tools on auto, the model may call one of them or answer in JSON.
        let r = req(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"},
            "tools":[{"type":"function","function":{"name":"f"}}]}));
        let body = request_body(&r, "c", false).unwrap();
        assert_eq!(body["tool_choice"], json!({"type":"any"}));
        assert_eq!(body["tools"].as_array().unwrap().len(), 2);

        let plain = request_body(&req(json!({"model":"m","messages":[{"role":"user","content":"hi"}]})), "c", false).unwrap();
        assert!(!uses_json_tool(&plain));
    }

    #[test]
    fn non_streaming_message_decodes_to_the_same_events() {
        let msg = json!({"id":"msg_1","type":"message","role":"assistant","model":"claude","stop_reason":"tool_use",
            "content":[{"type":"text","text":"Let me check."},
                       {"type":"tool_use","id":"toolu_a","name":"get_weather","input":{"city":"Paris"}},
                       {"type":"tool_use","id":"toolu_b","name":"get_time","input":{"tz":"CET"}}],
            "usage":{"input_tokens":8,"cache_creation_input_tokens":0,"cache_read_input_tokens":2,"output_tokens":4}});
        assert_eq!(
            decode_message(&msg, false).unwrap(),
            vec![
                Event::Text("Let me check.".into()),
                Event::ToolCallStart { index: 0, id: "toolu_a".into(), name: "get_weather".into() },
                Event::ToolCallArgs { index: 0, arguments: "{\"city\":\"Paris\"}".into() },
                Event::ToolCallStart { index: 1, id: "toolu_b".into(), name: "get_time".into() },
                Event::ToolCallArgs { index: 1, arguments: "{\"tz\":\"CET\"}".into() },
                Event::Finish(FinishReason::ToolCalls),
                Event::Usage(Usage { input_tokens: 10, output_tokens: 4, cached_input_tokens: 2, ..Usage::default() }),
            ]
        );
    }
}
