//! The gateway's request and response types. They follow OpenAI Chat Completions field for field,
//! because that is what text clients send over HTTP and what the voice session builds in process.
//! Unknown request fields are accepted and ignored, as OpenAI-compatible hosts do.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A chat completion request (`POST /v1/chat/completions` body).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// A route name or a model id from the catalog.
    pub model: String,
    /// OpenRouter convention: an explicit ordered fallback list; overrides the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ChatRequest {
    /// The output token limit, whichever of the two OpenAI names the client used.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Stop sequences as a list (OpenAI accepts a string or an array).
    pub fn stop_sequences(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    /// True when the request asks for tools and does not forbid them.
    pub fn tools_enabled(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| !t.is_empty()) && !matches!(&self.tool_choice, Some(ToolChoice::Mode(m)) if m == "none")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One conversation message, tagged by `role`. `developer` is OpenAI's newer name for `system`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    #[serde(alias = "developer")]
    System {
        content: Content,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    User {
        content: Content,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Assistant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Content>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool_calls: Option<Vec<ToolCall>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Tool {
        content: Content,
        tool_call_id: String,
    },
}

impl Message {
    pub fn system(text: impl Into<String>) -> Self {
        Message::System { content: Content::Text(text.into()), name: None }
    }
    pub fn user(text: impl Into<String>) -> Self {
        Message::User { content: Content::Text(text.into()), name: None }
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Message::Assistant { content: Some(Content::Text(text.into())), tool_calls: None, name: None }
    }
    pub fn role(&self) -> &'static str {
        match self {
            Message::System { .. } => "system",
            Message::User { .. } => "user",
            Message::Assistant { .. } => "assistant",
            Message::Tool { .. } => "tool",
        }
    }
}

/// Message content: a plain string or a list of typed parts. Only text parts are supported;
/// the HTTP layer rejects other part types before a provider sees them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// All text parts joined; non-text parts contribute nothing.
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join(""),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionDef,
}

fn function_kind() -> String {
    "function".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `"none" | "auto" | "required"` or `{"type":"function","function":{"name":…}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named {
        #[serde(rename = "type", default = "function_kind")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

/// A finished tool call as it appears in an assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text, exactly as the model wrote them.
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Why generation ended, in OpenAI's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Token usage normalised across providers.
///
/// `input_tokens` follows OpenAI's meaning: every prompt token, including the ones read from or
/// written to a prompt cache. `cached_input_tokens` (cache reads) and `cache_write_tokens` are
/// subsets of it. Providers that report cache tokens separately (Anthropic) add them in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

/// The most tokens a vendor's usage is taken to say in one count (about 4.3 billion): providers
/// cap what they read to it, so the counts they add up and every sum over requests and keys stay
/// far from overflowing `u64`.
pub const USAGE_TOKENS_MAX: u64 = u32::MAX as u64;

/// One piece of a model's answer, the same for every provider. A provider's stream yields these
/// in order; a tool call starts with `ToolCallStart` (id and name) and continues with
/// `ToolCallArgs` fragments for the same `index`. `index` counts tool calls only (0, 1, 2 …),
/// never content blocks.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    ToolCallStart { index: u32, id: String, name: String },
    ToolCallArgs { index: u32, arguments: String },
    Finish(FinishReason),
    Usage(Usage),
}

impl Event {
    /// Content is what the client sees as the answer: text or a tool call. Fallback is allowed
    /// only until the first content event has been handed on.
    pub fn is_content(&self) -> bool {
        match self {
            Event::Text(t) => !t.is_empty(),
            Event::ToolCallStart { .. } | Event::ToolCallArgs { .. } => true,
            Event::Finish(_) | Event::Usage(_) => false,
        }
    }
}

/// A whole answer assembled from events: what a non-streaming client receives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
}

impl Completion {
    pub fn push(&mut self, event: &Event) {
        match event {
            Event::Text(t) => self.text.push_str(t),
            Event::ToolCallStart { index, id, name } => {
                let i = *index as usize;
                if self.tool_calls.len() <= i {
                    self.tool_calls.resize_with(i + 1, || ToolCall {
                        id: String::new(),
                        kind: function_kind(),
                        function: FunctionCall { name: String::new(), arguments: String::new() },
                    });
                }
                self.tool_calls[i].id = id.clone();
                self.tool_calls[i].function.name = name.clone();
            }
            Event::ToolCallArgs { index, arguments } => {
                if let Some(call) = self.tool_calls.get_mut(*index as usize) {
                    call.function.arguments.push_str(arguments);
                }
            }
            Event::Finish(r) => self.finish_reason = Some(*r),
            Event::Usage(u) => self.usage = Some(*u),
        }
    }
}
