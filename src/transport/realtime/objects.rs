//! The objects Realtime events carry ([`Session`], [`Item`], [`Response`], [`Usage`], errors) and the
//! ids the server hands out. Field names and nesting follow the official `openai` SDK's
//! `types/realtime/` models; voxgate's extensions ride in extra fields only, never by renaming
//! (`words` and `speaker` on input transcriptions, `voxgate` on sessions and responses), omitted when unset.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::audio::{AudioError, AudioFormat, REALTIME_PCM_RATE_HZ};
use crate::llm::ids::random_suffix;

// ---------------------------------------------------------------------------------------------------
// Identifiers
// ---------------------------------------------------------------------------------------------------

/// A fresh server `event_id` (`event_` + 24 alphanumerics), unique within the process.
pub fn new_event_id() -> String {
    format!("event_{}", random_suffix())
}

/// A fresh conversation item id (`item_…`).
pub fn new_item_id() -> String {
    format!("item_{}", random_suffix())
}

/// A fresh response id (`resp_…`).
pub fn new_response_id() -> String {
    format!("resp_{}", random_suffix())
}

/// A fresh session id (`sess_…`).
pub fn new_session_id() -> String {
    format!("sess_{}", random_suffix())
}

/// A fresh function-call id (`call_…`).
pub fn new_call_id() -> String {
    format!("call_{}", random_suffix())
}

// ---------------------------------------------------------------------------------------------------
// Shared objects
// ---------------------------------------------------------------------------------------------------

/// Reads a field that may be absent (outer `None`: leave unchanged) or `null` (`Some(None)`: turn off),
/// as `audio.input.turn_detection` and `audio.input.transcription` in `session.update`.
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Session configuration: what a client sends in `session.update` and what the server reports in
/// `session.created` / `session.updated` (the SDK's `RealtimeSessionCreateRequest`). Every field is
/// optional on input; fields this server does not model (`include`, `prompt`, `tracing`, `truncation`,
/// `noise_reduction` …) are accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// `realtime` (the SDK always sends it) or `transcription`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub session_type: Option<SessionType>,
    /// Server-assigned id (`sess_…`); only in server events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `realtime.session` in server events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The route or model serving the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Unix seconds; only in server events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// `["audio"]` or `["text"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<Modality>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<SessionAudio>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<FunctionTool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxOutputTokens>,
    /// Extension: voxgate's own session settings. Omitted from server events while every one of
    /// them is at its default, so standard sessions look exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voxgate: Option<VoxgateSession>,
}

/// Extension on [`Session`] (`session.voxgate`). Unknown fields inside it are ignored, as in `session`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VoxgateSession {
    /// How the user's spoken turns are written for the model: `text` (the default), `speaker` or
    /// `detailed` (docs/protocol.md, Extensions). Kept as text here; the mapper checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_rendering: Option<String>,
}

/// `session.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionType {
    Realtime,
    Transcription,
}

/// One output modality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Text,
    Audio,
}

/// `session.audio`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionAudio {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<AudioInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<AudioOutput>,
}

/// `session.audio.input`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormatSpec>,
    /// Absent: unchanged; `Some(None)` (JSON `null`): no turn detection, the client commits by hand.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_or_null")]
    pub turn_detection: Option<Option<TurnDetection>>,
    /// Absent: unchanged; `Some(None)` (JSON `null`): no input transcription.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_or_null")]
    pub transcription: Option<Option<InputTranscription>>,
}

/// `session.audio.output`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormatSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<Voice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
}

/// An audio format as the wire spells it: `{"type": "audio/pcm", "rate": 24000}`, `{"type": "audio/pcmu"}`,
/// `{"type": "audio/pcma"}`. Kept as text here; [`AudioFormatSpec::to_audio_format`] validates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioFormatSpec {
    #[serde(rename = "type")]
    pub format_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

impl AudioFormatSpec {
    /// The codec this names, or why it is not one we speak.
    pub fn to_audio_format(&self) -> Result<AudioFormat, AudioError> {
        format_from_wire(&self.format_type, self.rate)
    }
}

/// Longest client-supplied format name an error message repeats.
const FORMAT_ECHO_CHARS_MAX: usize = 64;

/// Reads a Realtime API format: the GA `{"type": "audio/pcm", "rate": 24000}` (`audio/pcmu` and
/// `audio/pcma` carry no rate) or the legacy beta strings `pcm16`, `g711_ulaw`, `g711_alaw`.
/// A rate, when given, must be the format's only rate: 24000 for PCM, 8000 for G.711.
pub fn format_from_wire(format_type: &str, rate_hz: Option<u32>) -> Result<AudioFormat, AudioError> {
    let (format, name) = match format_type {
        "audio/pcm" | "pcm16" => (AudioFormat::REALTIME_PCM, "audio/pcm"),
        "audio/pcmu" | "g711_ulaw" => (AudioFormat::Pcmu, "audio/pcmu"),
        "audio/pcma" | "g711_alaw" => (AudioFormat::Pcma, "audio/pcma"),
        _ => return Err(AudioError::UnsupportedFormat { format_type: format_type.chars().take(FORMAT_ECHO_CHARS_MAX).collect() }),
    };
    match rate_hz {
        Some(rate_hz) if rate_hz != format.rate_hz() => {
            Err(AudioError::UnsupportedRate { format: name, rate_hz, expected_hz: format.rate_hz() })
        }
        _ => Ok(format),
    }
}

/// The GA Realtime API name of a format. The rate is not part of it: only 24 kHz PCM is valid there.
pub fn format_name(format: AudioFormat) -> &'static str {
    match format {
        AudioFormat::Pcm16 { .. } => "audio/pcm",
        AudioFormat::Pcmu => "audio/pcmu",
        AudioFormat::Pcma => "audio/pcma",
    }
}

impl From<AudioFormat> for AudioFormatSpec {
    fn from(format: AudioFormat) -> Self {
        let rate = match format {
            AudioFormat::Pcm16 { .. } => Some(REALTIME_PCM_RATE_HZ),
            AudioFormat::Pcmu | AudioFormat::Pcma => None,
        };
        AudioFormatSpec { format_type: format_name(format).to_string(), rate }
    }
}

/// `audio.input.turn_detection` when not `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetection {
    ServerVad(ServerVad),
    /// Accepted so a client asking for it gets a clear answer from the session; not modelled further.
    SemanticVad(SemanticVad),
    /// Extension: the speech-to-text vendor ends the caller's turns (docs/speech.md).
    Vendor(VendorTurns),
}

/// `{"type": "vendor", …}`: the hosted speech-to-text vendor's end of turn ends the caller's turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VendorTurns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_response: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt_response: Option<bool>,
}

/// `{"type": "server_vad", …}`: voice activity detection with fixed thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerVad {
    /// Activation threshold, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_padding_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_duration_ms: Option<u32>,
    /// Start a response when a turn ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_response: Option<bool>,
    /// Barge-in: cancel the response in flight when the user starts speaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt_response: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

/// `{"type": "semantic_vad", …}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SemanticVad {
    /// `low`, `medium`, `high` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eagerness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_response: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt_response: Option<bool>,
}

/// `audio.input.transcription`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTranscription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// ISO-639-1 code, e.g. `en`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// `audio.output.voice`: a voice name (`alloy`, `marin`, or one of ours) or `{"id": "voice_…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Voice {
    Name(String),
    Id { id: String },
}

/// A function the model may call. MCP tools are not supported and fail to parse with a clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionTool {
    /// Always `function` (the default when a client leaves it out).
    #[serde(rename = "type", default)]
    pub tool_type: FunctionType,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// The literal `"function"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionType {
    #[default]
    Function,
}

/// `tool_choice`: a mode or one named function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(ToolChoiceMode),
    Function {
        #[serde(rename = "type")]
        tool_type: FunctionType,
        name: String,
    },
}

/// `none`, `auto` or `required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoiceMode {
    None,
    Auto,
    Required,
}

/// `max_output_tokens`: a count, or `"inf"` for the model's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxOutputTokens {
    Limit(u32),
    Inf,
}

impl Serialize for MaxOutputTokens {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxOutputTokens::Limit(n) => serializer.serialize_u32(*n),
            MaxOutputTokens::Inf => serializer.serialize_str("inf"),
        }
    }
}

impl<'de> Deserialize<'de> for MaxOutputTokens {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MaxTokensVisitor;
        impl Visitor<'_> for MaxTokensVisitor {
            type Value = MaxOutputTokens;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive integer or \"inf\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match u32::try_from(v) {
                    Ok(n) if n > 0 => Ok(MaxOutputTokens::Limit(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "inf" => Ok(MaxOutputTokens::Inf),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(MaxTokensVisitor)
    }
}

/// A conversation item (the SDK's `ConversationItem` union, minus the MCP kinds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message(MessageItem),
    FunctionCall(FunctionCallItem),
    FunctionCallOutput(FunctionCallOutputItem),
}

impl Item {
    /// The item's id, when it has one (clients may leave it out; the server fills it in).
    pub fn id(&self) -> Option<&str> {
        match self {
            Item::Message(m) => m.id.as_deref(),
            Item::FunctionCall(c) => c.id.as_deref(),
            Item::FunctionCallOutput(o) => o.id.as_deref(),
        }
    }
}

/// `{"type": "message", "role": …, "content": […]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    pub role: Role,
    pub content: Vec<ContentPart>,
}

/// `{"type": "function_call", …}`: the model asks for a tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    pub name: String,
    /// JSON text of the arguments.
    pub arguments: String,
}

/// `{"type": "function_call_output", …}`: the client's answer to a tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallOutputItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    pub call_id: String,
    pub output: String,
}

/// A message's author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// An item's (or a response's output item's) progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

/// One part of a message's `content`. Users and system send `input_*`, the assistant `output_*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    InputText {
        text: String,
    },
    InputAudio {
        /// Base64 audio in the session's input format (clients may send it; the server never echoes it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
        /// `null` until transcribed.
        #[serde(default)]
        transcript: Option<String>,
    },
    OutputText {
        text: String,
    },
    OutputAudio {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
        #[serde(default)]
        transcript: Option<String>,
    },
}

/// The `part` of `response.content_part.added` / `.done` (typed `text` or `audio` there, unlike items).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponsePart {
    Text {
        text: String,
    },
    Audio {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
        transcript: String,
    },
}

/// A response (`response.created`, `response.done`): the SDK's `RealtimeResponse`, plus the optional
/// `voxgate` extension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: String,
    /// Always `realtime.response`.
    pub object: String,
    pub status: ResponseStatus,
    /// Why a response ended other than `completed`; `null` otherwise.
    #[serde(default)]
    pub status_details: Option<StatusDetails>,
    #[serde(default)]
    pub output: Vec<Item>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<Modality>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxOutputTokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<ResponseAudio>,
    /// `null` until the response is done.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The client's `response.create` metadata, echoed.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Extension: which model served and how long each stage took. Omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voxgate: Option<VoxgateResponseInfo>,
}

impl Response {
    /// An empty response in progress, as `response.created` reports it.
    pub fn in_progress(id: impl Into<String>) -> Self {
        Response {
            id: id.into(),
            object: "realtime.response".to_string(),
            status: ResponseStatus::InProgress,
            status_details: None,
            output: Vec::new(),
            conversation_id: None,
            output_modalities: None,
            max_output_tokens: None,
            audio: None,
            usage: None,
            metadata: None,
            voxgate: None,
        }
    }
}

/// `response.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    InProgress,
    Completed,
    Cancelled,
    Incomplete,
    Failed,
}

/// `response.status_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetails {
    /// The final status again (`completed`, `cancelled`, `incomplete`, `failed`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub status_type: Option<ResponseStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<StatusReason>,
    /// Set when the status is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
}

/// Why a response was cancelled (`turn_detected`, `client_cancelled`) or is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusReason {
    TurnDetected,
    ClientCancelled,
    MaxOutputTokens,
    ContentFilter,
}

/// `response.status_details.error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusError {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `response.audio`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseAudio {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ResponseAudioOutput>,
}

/// `response.audio.output`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseAudioOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormatSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<Voice>,
}

/// Token usage of one response (`RealtimeResponseUsage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub total_tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub input_token_details: InputTokenDetails,
    #[serde(default)]
    pub output_token_details: OutputTokenDetails,
}

/// `usage.input_token_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokenDetails {
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens_details: Option<CachedTokensDetails>,
}

/// `usage.input_token_details.cached_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedTokensDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
}

/// `usage.output_token_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokenDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
}

/// Extension on [`Response`] (`response.voxgate`): the model that served and stage latencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoxgateResponseInfo {
    /// The model that served the response (after any fallback), as the gateway names it; absent when
    /// no model answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The text-to-speech engine that spoke the last chunk (after any fallback), by its `[tts]`
    /// name; absent without speech.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_engine: Option<String>,
    #[serde(default)]
    pub latency_ms: StageLatencies,
    /// The session's meter so far: what it costs at its flat rate up to this response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<MeterInfo>,
}

/// Extension (`response.voxgate.meter`): the session's billed time and amount so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterInfo {
    /// Per started second since the session opened.
    pub billed_seconds: u64,
    /// USD at the session's flat rate, unrounded (e.g. `0.011250000000`); round to the cent only for display.
    pub amount_usd: String,
}

/// Milliseconds per stage of one response; a stage that did not run is omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageLatencies {
    /// End of user speech to the final transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt: Option<f64>,
    /// LLM request to its first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ttft: Option<f64>,
    /// First text handed to TTS to its first audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_ttfb: Option<f64>,
    /// End of user speech to the first agent audio sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_to_voice: Option<f64>,
}

/// Extension on input transcription events: one recognised word with its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    pub text: String,
    /// From the start of the session's input audio.
    pub start_ms: u64,
    pub end_ms: u64,
    /// 0.0 to 1.0.
    pub confidence: f64,
}

/// `usage` of `conversation.item.input_audio_transcription.completed`: tokens or seconds of audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TranscriptionUsage {
    Tokens { input_tokens: u64, output_tokens: u64, total_tokens: u64 },
    Duration { seconds: f64 },
}

/// `rate_limits.updated` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// `requests` or `tokens`.
    pub name: String,
    pub limit: u64,
    pub remaining: u64,
    pub reset_seconds: f64,
}

/// The `error` object of an `error` event (`RealtimeError`). `code`, `param` and `event_id` are sent as
/// `null` when unknown, as the OpenAI server does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeError {
    /// `invalid_request_error` or `server_error`.
    #[serde(rename = "type")]
    pub error_type: String,
    #[serde(default)]
    pub code: Option<String>,
    pub message: String,
    /// The offending parameter, e.g. `item.content[0].text`.
    #[serde(default)]
    pub param: Option<String>,
    /// The client event that caused the error.
    #[serde(default)]
    pub event_id: Option<String>,
}

impl RealtimeError {
    /// A `server_error` with no parameter or client event attached.
    pub fn server(code: impl Into<String>, message: impl Into<String>) -> Self {
        RealtimeError {
            error_type: "server_error".to_string(),
            code: Some(code.into()),
            message: message.into(),
            param: None,
            event_id: None,
        }
    }
}
