//! The OpenAI Realtime API's JSON events (GA names), as our WebSocket speaks them: [`ClientEvent`]s we
//! read with [`parse_client_event`], [`ServerEvent`]s we send, and the objects they carry ([`Session`],
//! [`Item`], [`Response`], [`Usage`]). Field names and nesting follow the official `openai` SDK's
//! `types/realtime/` models. voxgate's extensions ride in extra fields only, never by renaming: `words`
//! and `speaker` on input transcriptions, `voxgate` (model and stage latencies) on responses; all are
//! omitted when unset, so a stock client sees the plain protocol.
//!
//! Pure data: no I/O. Parsing never panics; every failure is an [`EventError`] that names the problem, the
//! offending parameter when it can be found, and the client's `event_id` when it could be read, ready to
//! become a Realtime `error` event ([`EventError::to_server_event`]).

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::audio::{AudioError, AudioFormat, REALTIME_PCM_RATE_HZ};
use crate::llm::ids::random_suffix;

/// Longest piece of client input (an unknown event type, a serde message quoting a value) an error repeats.
const ECHO_CHARS_MAX: usize = 200;

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

// ---------------------------------------------------------------------------------------------------
// Client events
// ---------------------------------------------------------------------------------------------------

/// An event from the client. Each variant wraps a struct holding the optional client `event_id` and the
/// event's fields (the two large ones boxed, so the enum stays small on the audio path). Read one with
/// [`parse_client_event`], which names the failing field on error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    #[serde(rename = "session.update")]
    SessionUpdate(Box<SessionUpdate>),
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioBufferAppend(InputAudioBufferAppend),
    #[serde(rename = "input_audio_buffer.commit")]
    InputAudioBufferCommit(BareEvent),
    #[serde(rename = "input_audio_buffer.clear")]
    InputAudioBufferClear(BareEvent),
    #[serde(rename = "conversation.item.create")]
    ConversationItemCreate(ConversationItemCreate),
    #[serde(rename = "conversation.item.retrieve")]
    ConversationItemRetrieve(ItemIdEvent),
    #[serde(rename = "conversation.item.truncate")]
    ConversationItemTruncate(ConversationItemTruncate),
    #[serde(rename = "conversation.item.delete")]
    ConversationItemDelete(ItemIdEvent),
    #[serde(rename = "response.create")]
    ResponseCreate(Box<ResponseCreate>),
    #[serde(rename = "response.cancel")]
    ResponseCancel(ResponseCancel),
    #[serde(rename = "output_audio_buffer.clear")]
    OutputAudioBufferClear(BareEvent),
}

/// Every client event `type` this server understands.
pub const CLIENT_EVENT_TYPES: [&str; 11] = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
];

impl ClientEvent {
    /// The wire `type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            ClientEvent::SessionUpdate(_) => "session.update",
            ClientEvent::InputAudioBufferAppend(_) => "input_audio_buffer.append",
            ClientEvent::InputAudioBufferCommit(_) => "input_audio_buffer.commit",
            ClientEvent::InputAudioBufferClear(_) => "input_audio_buffer.clear",
            ClientEvent::ConversationItemCreate(_) => "conversation.item.create",
            ClientEvent::ConversationItemRetrieve(_) => "conversation.item.retrieve",
            ClientEvent::ConversationItemTruncate(_) => "conversation.item.truncate",
            ClientEvent::ConversationItemDelete(_) => "conversation.item.delete",
            ClientEvent::ResponseCreate(_) => "response.create",
            ClientEvent::ResponseCancel(_) => "response.cancel",
            ClientEvent::OutputAudioBufferClear(_) => "output_audio_buffer.clear",
        }
    }

    /// The client's `event_id`, if it gave one; errors about this event should carry it.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            ClientEvent::SessionUpdate(e) => e.event_id.as_deref(),
            ClientEvent::InputAudioBufferAppend(e) => e.event_id.as_deref(),
            ClientEvent::InputAudioBufferCommit(e) | ClientEvent::InputAudioBufferClear(e) | ClientEvent::OutputAudioBufferClear(e) => {
                e.event_id.as_deref()
            }
            ClientEvent::ConversationItemCreate(e) => e.event_id.as_deref(),
            ClientEvent::ConversationItemRetrieve(e) | ClientEvent::ConversationItemDelete(e) => e.event_id.as_deref(),
            ClientEvent::ConversationItemTruncate(e) => e.event_id.as_deref(),
            ClientEvent::ResponseCreate(e) => e.event_id.as_deref(),
            ClientEvent::ResponseCancel(e) => e.event_id.as_deref(),
        }
    }
}

/// An event with no fields but its id: `input_audio_buffer.commit`, `input_audio_buffer.clear`,
/// `output_audio_buffer.clear`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BareEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// `session.update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub session: Session,
}

/// `input_audio_buffer.append`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputAudioBufferAppend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Base64 audio in the session's input format.
    pub audio: String,
}

/// `conversation.item.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationItemCreate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Insert after this item; `root` for the start, absent for the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_item_id: Option<String>,
    pub item: Item,
}

/// `conversation.item.retrieve` and `conversation.item.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemIdEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub item_id: String,
}

/// `conversation.item.truncate`: cut an assistant audio item to what the user heard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationItemTruncate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub item_id: String,
    pub content_index: u32,
    pub audio_end_ms: u64,
}

/// `response.create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseCreate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Overrides of the session's settings for this response only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseParams>,
}

/// `response.create`'s `response` (`RealtimeResponseCreateParams`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseParams {
    /// `auto` (the default) adds the output to the conversation; `none` answers out of band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ResponseConversation>,
    /// Items to answer instead of the conversation (with `conversation: "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<Item>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<FunctionTool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<Modality>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxOutputTokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<ResponseAudio>,
    /// Up to 16 string pairs, echoed on the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// `response.conversation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseConversation {
    #[serde(rename = "auto")]
    Auto,
    /// `"none"`: an out-of-band response, not added to the conversation.
    #[serde(rename = "none")]
    OutOfBand,
}

/// `response.cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseCancel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The response to cancel; the one in progress when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------------
// Parsing client events
// ---------------------------------------------------------------------------------------------------

/// Why a client event could not be read. Each maps to a Realtime `error` event carrying the client's
/// `event_id` when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not a JSON object.
    #[error("invalid JSON: {message}")]
    InvalidJson { message: String },
    /// No `type`, or `type` is not a string.
    #[error("missing required parameter: 'type' (a string)")]
    MissingType { event_id: Option<String> },
    /// A `type` this server does not know.
    #[error("unknown event type {event_type:?}; supported: {}", CLIENT_EVENT_TYPES.join(", "))]
    UnknownType { event_type: String, event_id: Option<String> },
    /// A required field is absent.
    #[error("missing required parameter: '{param}' in {event_type}")]
    MissingField { event_type: &'static str, param: String, event_id: Option<String> },
    /// A field has the wrong JSON type (a string where a number belongs …).
    #[error("wrong type{} in {event_type}: {message}", param_suffix(.param))]
    WrongType { event_type: &'static str, param: Option<String>, message: String, event_id: Option<String> },
    /// A field has the right type but a value we do not accept (unknown enum value, negative count …).
    #[error("invalid value{} in {event_type}: {message}", param_suffix(.param))]
    InvalidValue { event_type: &'static str, param: Option<String>, message: String, event_id: Option<String> },
}

fn param_suffix(param: &Option<String>) -> String {
    param.as_ref().map(|p| format!(" for '{p}'")).unwrap_or_default()
}

impl EventError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::InvalidJson { .. } => "invalid_json",
            EventError::MissingType { .. } => "missing_type",
            EventError::UnknownType { .. } => "unknown_type",
            EventError::MissingField { .. } => "missing_field",
            EventError::WrongType { .. } => "wrong_type",
            EventError::InvalidValue { .. } => "invalid_value",
        }
    }

    /// The offending client event's `event_id`, when it could be read.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            EventError::InvalidJson { .. } => None,
            EventError::MissingType { event_id }
            | EventError::UnknownType { event_id, .. }
            | EventError::MissingField { event_id, .. }
            | EventError::WrongType { event_id, .. }
            | EventError::InvalidValue { event_id, .. } => event_id.as_deref(),
        }
    }

    /// The offending parameter as a path (`type`, `item.call_id`, `session.audio.input.format.rate`).
    pub fn param(&self) -> Option<&str> {
        match self {
            EventError::InvalidJson { .. } => None,
            EventError::MissingType { .. } | EventError::UnknownType { .. } => Some("type"),
            EventError::MissingField { param, .. } => Some(param),
            EventError::WrongType { param, .. } | EventError::InvalidValue { param, .. } => param.as_deref(),
        }
    }

    /// The Realtime error code: OpenAI's names where it has them.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::InvalidJson { .. } => "invalid_json",
            EventError::MissingType { .. } | EventError::MissingField { .. } => "missing_required_parameter",
            EventError::WrongType { .. } => "invalid_type",
            EventError::UnknownType { .. } | EventError::InvalidValue { .. } => "invalid_value",
        }
    }

    /// The `error` object for the client: an `invalid_request_error`.
    pub fn to_realtime_error(&self) -> RealtimeError {
        RealtimeError {
            error_type: "invalid_request_error".to_string(),
            code: Some(self.code().to_string()),
            message: self.to_string(),
            param: self.param().map(str::to_string),
            event_id: self.event_id().map(str::to_string),
        }
    }

    /// The `error` event to send, with a fresh server `event_id`.
    pub fn to_server_event(&self) -> ServerEvent {
        ServerEvent::Error { event_id: new_event_id(), error: self.to_realtime_error() }
    }
}

/// `type` and `event_id` of an event, read without building the rest (audio payloads are skipped, not copied).
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type", default)]
    event_type: Option<Value>,
    #[serde(default)]
    event_id: Option<Value>,
}

/// Reads one client event from a WebSocket text frame. Never panics; on failure says what class of
/// problem it was, which parameter (best effort, as a path), and the client's `event_id` when readable.
pub fn parse_client_event(text: &str) -> Result<ClientEvent, EventError> {
    if !text.trim_start().starts_with('{') {
        let message = match serde_json::from_str::<Value>(text) {
            Err(e) => e.to_string(),
            Ok(_) => "an event must be a JSON object".to_string(),
        };
        return Err(EventError::InvalidJson { message });
    }
    let head = match serde_json::from_str::<Head>(text) {
        Ok(head) => head,
        // Valid JSON the fast path refused (e.g. a duplicate `type`): read it the slow way.
        Err(e) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(mut map)) => Head { event_type: map.remove("type"), event_id: map.remove("event_id") },
            Ok(_) => return Err(EventError::InvalidJson { message: "an event must be a JSON object".to_string() }),
            Err(_) => return Err(EventError::InvalidJson { message: e.to_string() }),
        },
    };
    let event_id = match head.event_id {
        Some(Value::String(id)) => Some(id),
        _ => None,
    };
    let event_type = match head.event_type {
        Some(Value::String(t)) => t,
        _ => return Err(EventError::MissingType { event_id }),
    };
    let Some(&event_type) = CLIENT_EVENT_TYPES.iter().find(|t| **t == event_type) else {
        return Err(EventError::UnknownType { event_type: truncate_chars(&event_type, ECHO_CHARS_MAX), event_id });
    };
    let result = match event_type {
        "session.update" => serde_json::from_str(text).map(ClientEvent::SessionUpdate),
        "input_audio_buffer.append" => serde_json::from_str(text).map(ClientEvent::InputAudioBufferAppend),
        "input_audio_buffer.commit" => serde_json::from_str(text).map(ClientEvent::InputAudioBufferCommit),
        "input_audio_buffer.clear" => serde_json::from_str(text).map(ClientEvent::InputAudioBufferClear),
        "conversation.item.create" => serde_json::from_str(text).map(ClientEvent::ConversationItemCreate),
        "conversation.item.retrieve" => serde_json::from_str(text).map(ClientEvent::ConversationItemRetrieve),
        "conversation.item.truncate" => serde_json::from_str(text).map(ClientEvent::ConversationItemTruncate),
        "conversation.item.delete" => serde_json::from_str(text).map(ClientEvent::ConversationItemDelete),
        "response.create" => serde_json::from_str(text).map(ClientEvent::ResponseCreate),
        "response.cancel" => serde_json::from_str(text).map(ClientEvent::ResponseCancel),
        _ => serde_json::from_str(text).map(ClientEvent::OutputAudioBufferClear),
    };
    result.map_err(|e| classify(text, event_type, event_id, &e))
}

/// Turns a serde error on a syntactically valid event into an [`EventError`].
fn classify(text: &str, event_type: &'static str, event_id: Option<String>, err: &serde_json::Error) -> EventError {
    if !err.is_data() {
        return EventError::InvalidJson { message: err.to_string() };
    }
    let message = data_message(err);
    let scope = error_scope(text, err);
    if let Some(field) = between(&message, "missing field `", "`") {
        let param = locate_missing(text, &scope, field).unwrap_or_else(|| join_path(&scope, field));
        let param = truncate_chars(&param, ECHO_CHARS_MAX);
        return EventError::MissingField { event_type, param, event_id };
    }
    let param = locate_value(text, &scope, &message).map(|p| truncate_chars(&p, ECHO_CHARS_MAX));
    let message = truncate_chars(&message, ECHO_CHARS_MAX);
    if message.starts_with("invalid type:") {
        EventError::WrongType { event_type, param, message, event_id }
    } else {
        EventError::InvalidValue { event_type, param, message, event_id }
    }
}

/// serde's message without serde_json's ` at line L column C` suffix.
fn data_message(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match full.strip_suffix(&suffix) {
        Some(message) => message.to_string(),
        None => full,
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

// Where an error is. serde_json reports the position where the error left the innermost JSON value it was
// reading; internally tagged and untagged enums buffer their value first, so that position is the end
// of a value that *contains* the offending one (or the offending value itself). We find that value's
// path by scanning the text, then narrow it with what serde's message says (the field name, the bad
// value), searching only inside it.

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The path of the innermost value the error position falls in (empty: the whole event).
fn error_scope(text: &str, err: &serde_json::Error) -> Vec<Seg> {
    if err.line() == 0 {
        return Vec::new();
    }
    let line_start = if err.line() == 1 {
        Some(0)
    } else {
        text.bytes().enumerate().filter(|(_, b)| *b == b'\n').nth(err.line() - 2).map(|(i, _)| i + 1)
    };
    // The column counts bytes consumed on the line, so the last byte read is one before it.
    let Some(mut target) = line_start.map(|s| (s + err.column()).saturating_sub(1)) else {
        return Vec::new();
    };
    // serde_json reports a map or list of the wrong type before reading it: the last byte read is then the
    // `:`, `,`, `[` or blank before the offending value, so point at that value instead.
    let bytes = text.as_bytes();
    if matches!(bytes.get(target), Some(b':' | b',' | b'[' | b' ' | b'\t' | b'\n' | b'\r')) {
        target += 1;
        while matches!(bytes.get(target), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            target += 1;
        }
    }
    let mut scanner = Scanner { bytes, at: 0, target, found: None, depth: 0 };
    scanner.value(&mut Vec::new());
    scanner.found.unwrap_or_default()
}

/// A minimal scanner over JSON already known to be valid: finds the innermost value spanning `target`.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    target: usize,
    found: Option<Vec<Seg>>,
    depth: usize,
}

impl Scanner<'_> {
    /// serde_json refuses deeper documents, so a deeper one never reaches the scanner; the guard is belt and braces.
    const DEPTH_MAX: usize = 256;

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Skips a string starting at `"`, returning its raw bytes (with quotes).
    fn string(&mut self) -> &[u8] {
        let start = self.at;
        self.at += 1;
        while let Some(b) = self.peek() {
            self.at += 1;
            match b {
                b'\\' => self.at += 1,
                b'"' => break,
                _ => {}
            }
        }
        let end = self.at.min(self.bytes.len());
        &self.bytes[start..end]
    }

    fn value(&mut self, path: &mut Vec<Seg>) {
        self.skip_ws();
        let start = self.at;
        self.depth += 1;
        match self.peek() {
            None => {}
            Some(b'{') if self.depth <= Self::DEPTH_MAX => {
                self.at += 1;
                loop {
                    self.skip_ws();
                    match self.peek() {
                        None => break,
                        Some(b'}') => {
                            self.at += 1;
                            break;
                        }
                        Some(b'"') => {
                            let key = serde_json::from_slice::<String>(self.string()).unwrap_or_default();
                            self.skip_ws();
                            if self.peek() == Some(b':') {
                                self.at += 1;
                            }
                            path.push(Seg::Key(key));
                            self.value(path);
                            path.pop();
                        }
                        Some(_) => self.at += 1, // `,` (or anything unexpected: keep moving)
                    }
                }
            }
            Some(b'[') if self.depth <= Self::DEPTH_MAX => {
                self.at += 1;
                let mut index = 0;
                loop {
                    self.skip_ws();
                    match self.peek() {
                        None => break,
                        Some(b']') => {
                            self.at += 1;
                            break;
                        }
                        Some(b',') => {
                            self.at += 1;
                            index += 1;
                        }
                        Some(_) => {
                            let before = self.at;
                            path.push(Seg::Index(index));
                            self.value(path);
                            path.pop();
                            if self.at == before {
                                self.at += 1;
                            }
                        }
                    }
                }
            }
            Some(b'"') => {
                self.string();
            }
            Some(_) => {
                while !matches!(self.peek(), None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')) {
                    self.at += 1;
                }
            }
        }
        self.depth -= 1;
        if self.found.is_none() && start <= self.target && self.target < self.at {
            self.found = Some(path.clone());
        }
    }
}

fn path_string(path: &[Seg]) -> Option<String> {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn join_path(scope: &[Seg], field: &str) -> String {
    match path_string(scope) {
        Some(p) => format!("{p}.{field}"),
        None => field.to_string(),
    }
}

fn value_at<'v>(root: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    path.iter().try_fold(root, |v, seg| match seg {
        Seg::Key(k) => v.get(k.as_str()),
        Seg::Index(i) => v.get(*i),
    })
}

/// Depth-first over `value` (children before parents, in document order), calling `hit` until it accepts.
fn find_path(value: &Value, path: &mut Vec<Seg>, hit: &dyn Fn(&Value) -> bool) -> Option<Vec<Seg>> {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Seg::Key(k.clone()));
                let found = find_path(v, path, hit);
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                let found = find_path(v, path, hit);
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
        }
        _ => {}
    }
    hit(value).then(|| path.clone())
}

/// The innermost object within the scope that lacks `field`, as `path.field`.
fn locate_missing(text: &str, scope: &[Seg], field: &str) -> Option<String> {
    let root: Value = serde_json::from_str(text).ok()?;
    let mut path = scope.to_vec();
    let found = find_path(value_at(&root, scope)?, &mut path, &|v: &Value| v.as_object().is_some_and(|m| !m.contains_key(field)))?;
    Some(join_path(&found, field))
}

/// The value serde complained about: the scope itself if it is a scalar, otherwise the first value in it
/// that matches serde's description (`string "zero"`, `integer `5``, the name of an unknown variant).
fn locate_value(text: &str, scope: &[Seg], message: &str) -> Option<String> {
    let root: Value = serde_json::from_str(text).ok()?;
    let scoped = value_at(&root, scope)?;
    if !(scoped.is_object() || scoped.is_array()) {
        return path_string(scope);
    }
    let unknown_variant = between(message, "unknown variant `", "`");
    let hit = |v: &Value| match (unknown_variant, v) {
        (Some(name), Value::String(s)) => s == name,
        (Some(_), _) => false,
        (None, v) => unexpected(v).is_some_and(|d| {
            message.starts_with(&format!("invalid type: {d}, expected")) || message.starts_with(&format!("invalid value: {d}, expected"))
        }),
    };
    let mut path = scope.to_vec();
    match find_path(scoped, &mut path, &hit) {
        Some(found) => path_string(&found),
        None => path_string(scope),
    }
}

/// How serde describes a scalar in an error message.
fn unexpected(v: &Value) -> Option<String> {
    let d = match v {
        // serde_json says `null` where serde would say `unit value`.
        Value::Null => "null".to_string(),
        Value::Bool(b) => de::Unexpected::Bool(*b).to_string(),
        Value::String(s) => de::Unexpected::Str(s).to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => de::Unexpected::Unsigned(u).to_string(),
            (_, Some(i), _) => de::Unexpected::Signed(i).to_string(),
            (_, _, Some(f)) => de::Unexpected::Float(f).to_string(),
            _ => return None,
        },
        Value::Array(_) | Value::Object(_) => return None,
    };
    Some(d)
}

// ---------------------------------------------------------------------------------------------------
// Server events
// ---------------------------------------------------------------------------------------------------

/// An event the server sends. Every variant carries the server's `event_id` ([`new_event_id`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "error")]
    Error { event_id: String, error: RealtimeError },
    #[serde(rename = "session.created")]
    SessionCreated { event_id: String, session: Session },
    #[serde(rename = "session.updated")]
    SessionUpdated { event_id: String, session: Session },

    #[serde(rename = "input_audio_buffer.speech_started")]
    InputAudioBufferSpeechStarted { event_id: String, audio_start_ms: u64, item_id: String },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    InputAudioBufferSpeechStopped { event_id: String, audio_end_ms: u64, item_id: String },
    #[serde(rename = "input_audio_buffer.committed")]
    InputAudioBufferCommitted { event_id: String, previous_item_id: Option<String>, item_id: String },
    #[serde(rename = "input_audio_buffer.cleared")]
    InputAudioBufferCleared { event_id: String },

    #[serde(rename = "conversation.item.added")]
    ConversationItemAdded { event_id: String, previous_item_id: Option<String>, item: Item },
    #[serde(rename = "conversation.item.done")]
    ConversationItemDone { event_id: String, previous_item_id: Option<String>, item: Item },
    #[serde(rename = "conversation.item.retrieved")]
    ConversationItemRetrieved { event_id: String, item: Item },
    #[serde(rename = "conversation.item.input_audio_transcription.delta")]
    InputAudioTranscriptionDelta {
        event_id: String,
        item_id: String,
        content_index: u32,
        delta: String,
        /// Extension: words recognised so far in this delta. Omitted when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        words: Option<Vec<Word>>,
        /// Extension: the speaker's label, when the engine diarises. Omitted when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speaker: Option<String>,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    InputAudioTranscriptionCompleted {
        event_id: String,
        item_id: String,
        content_index: u32,
        transcript: String,
        usage: TranscriptionUsage,
        /// Extension: the transcript's words with timings. Omitted when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        words: Option<Vec<Word>>,
        /// Extension: the speaker's label. Omitted when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speaker: Option<String>,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    InputAudioTranscriptionFailed { event_id: String, item_id: String, content_index: u32, error: RealtimeError },
    #[serde(rename = "conversation.item.truncated")]
    ConversationItemTruncated { event_id: String, item_id: String, content_index: u32, audio_end_ms: u64 },
    #[serde(rename = "conversation.item.deleted")]
    ConversationItemDeleted { event_id: String, item_id: String },

    #[serde(rename = "response.created")]
    ResponseCreated { event_id: String, response: Response },
    #[serde(rename = "response.done")]
    ResponseDone { event_id: String, response: Response },
    #[serde(rename = "response.output_item.added")]
    ResponseOutputItemAdded { event_id: String, response_id: String, output_index: u32, item: Item },
    #[serde(rename = "response.output_item.done")]
    ResponseOutputItemDone { event_id: String, response_id: String, output_index: u32, item: Item },
    #[serde(rename = "response.content_part.added")]
    ResponseContentPartAdded {
        event_id: String,
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        part: ResponsePart,
    },
    #[serde(rename = "response.content_part.done")]
    ResponseContentPartDone {
        event_id: String,
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        part: ResponsePart,
    },
    #[serde(rename = "response.output_audio.delta")]
    ResponseOutputAudioDelta {
        event_id: String,
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        /// Base64 audio in the session's output format.
        delta: String,
    },
    #[serde(rename = "response.output_audio.done")]
    ResponseOutputAudioDone { event_id: String, response_id: String, item_id: String, output_index: u32, content_index: u32 },
    #[serde(rename = "response.output_audio_transcript.delta")]
    ResponseOutputAudioTranscriptDelta {
        event_id: String,
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        delta: String,
    },
    #[serde(rename = "response.output_audio_transcript.done")]
    ResponseOutputAudioTranscriptDone {
        event_id: String,
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        transcript: String,
    },
    #[serde(rename = "response.output_text.delta")]
    ResponseOutputTextDelta { event_id: String, response_id: String, item_id: String, output_index: u32, content_index: u32, delta: String },
    #[serde(rename = "response.output_text.done")]
    ResponseOutputTextDone { event_id: String, response_id: String, item_id: String, output_index: u32, content_index: u32, text: String },
    #[serde(rename = "response.function_call_arguments.delta")]
    ResponseFunctionCallArgumentsDelta {
        event_id: String,
        response_id: String,
        item_id: String,
        output_index: u32,
        call_id: String,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    ResponseFunctionCallArgumentsDone {
        event_id: String,
        response_id: String,
        item_id: String,
        output_index: u32,
        call_id: String,
        name: String,
        arguments: String,
    },

    #[serde(rename = "output_audio_buffer.started")]
    OutputAudioBufferStarted { event_id: String, response_id: String },
    #[serde(rename = "output_audio_buffer.stopped")]
    OutputAudioBufferStopped { event_id: String, response_id: String },
    #[serde(rename = "output_audio_buffer.cleared")]
    OutputAudioBufferCleared { event_id: String, response_id: String },

    #[serde(rename = "rate_limits.updated")]
    RateLimitsUpdated { event_id: String, rate_limits: Vec<RateLimit> },
}

impl ServerEvent {
    /// An `error` event with a fresh `event_id`.
    pub fn error(error: RealtimeError) -> Self {
        ServerEvent::Error { event_id: new_event_id(), error }
    }

    /// The wire `type`, for logs and metric labels.
    pub fn event_type(&self) -> &'static str {
        match self {
            ServerEvent::Error { .. } => "error",
            ServerEvent::SessionCreated { .. } => "session.created",
            ServerEvent::SessionUpdated { .. } => "session.updated",
            ServerEvent::InputAudioBufferSpeechStarted { .. } => "input_audio_buffer.speech_started",
            ServerEvent::InputAudioBufferSpeechStopped { .. } => "input_audio_buffer.speech_stopped",
            ServerEvent::InputAudioBufferCommitted { .. } => "input_audio_buffer.committed",
            ServerEvent::InputAudioBufferCleared { .. } => "input_audio_buffer.cleared",
            ServerEvent::ConversationItemAdded { .. } => "conversation.item.added",
            ServerEvent::ConversationItemDone { .. } => "conversation.item.done",
            ServerEvent::ConversationItemRetrieved { .. } => "conversation.item.retrieved",
            ServerEvent::InputAudioTranscriptionDelta { .. } => "conversation.item.input_audio_transcription.delta",
            ServerEvent::InputAudioTranscriptionCompleted { .. } => "conversation.item.input_audio_transcription.completed",
            ServerEvent::InputAudioTranscriptionFailed { .. } => "conversation.item.input_audio_transcription.failed",
            ServerEvent::ConversationItemTruncated { .. } => "conversation.item.truncated",
            ServerEvent::ConversationItemDeleted { .. } => "conversation.item.deleted",
            ServerEvent::ResponseCreated { .. } => "response.created",
            ServerEvent::ResponseDone { .. } => "response.done",
            ServerEvent::ResponseOutputItemAdded { .. } => "response.output_item.added",
            ServerEvent::ResponseOutputItemDone { .. } => "response.output_item.done",
            ServerEvent::ResponseContentPartAdded { .. } => "response.content_part.added",
            ServerEvent::ResponseContentPartDone { .. } => "response.content_part.done",
            ServerEvent::ResponseOutputAudioDelta { .. } => "response.output_audio.delta",
            ServerEvent::ResponseOutputAudioDone { .. } => "response.output_audio.done",
            ServerEvent::ResponseOutputAudioTranscriptDelta { .. } => "response.output_audio_transcript.delta",
            ServerEvent::ResponseOutputAudioTranscriptDone { .. } => "response.output_audio_transcript.done",
            ServerEvent::ResponseOutputTextDelta { .. } => "response.output_text.delta",
            ServerEvent::ResponseOutputTextDone { .. } => "response.output_text.done",
            ServerEvent::ResponseFunctionCallArgumentsDelta { .. } => "response.function_call_arguments.delta",
            ServerEvent::ResponseFunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            ServerEvent::OutputAudioBufferStarted { .. } => "output_audio_buffer.started",
            ServerEvent::OutputAudioBufferStopped { .. } => "output_audio_buffer.stopped",
            ServerEvent::OutputAudioBufferCleared { .. } => "output_audio_buffer.cleared",
            ServerEvent::RateLimitsUpdated { .. } => "rate_limits.updated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_innermost_value() {
        let text = r#"{"a": {"b": [1, "xy", {"c": true}]}, "d": 2}"#;
        let at = |needle: &str| text.find(needle).unwrap();
        let mut s = Scanner { bytes: text.as_bytes(), at: 0, target: at("xy"), found: None, depth: 0 };
        s.value(&mut Vec::new());
        assert_eq!(path_string(&s.found.unwrap()).as_deref(), Some("a.b[1]"));
        let mut s = Scanner { bytes: text.as_bytes(), at: 0, target: at("true"), found: None, depth: 0 };
        s.value(&mut Vec::new());
        assert_eq!(path_string(&s.found.unwrap()).as_deref(), Some("a.b[2].c"));
        let mut s = Scanner { bytes: text.as_bytes(), at: 0, target: at("}]"), found: None, depth: 0 };
        s.value(&mut Vec::new());
        assert_eq!(path_string(&s.found.unwrap()).as_deref(), Some("a.b[2]"));
    }

    #[test]
    fn scanner_survives_garbage() {
        for text in ["", "{", "[", "\"", "{\"a\"", "{\"a\":", "[1,", "{\"a\\", "}}}", "{[}]"] {
            for target in 0..=text.len() + 1 {
                let mut s = Scanner { bytes: text.as_bytes(), at: 0, target, found: None, depth: 0 };
                s.value(&mut Vec::new());
            }
        }
    }

    #[test]
    fn formats_from_realtime_names() {
        let pcm = AudioFormat::Pcm16 { rate_hz: 24_000 };
        assert_eq!(format_from_wire("audio/pcm", None), Ok(pcm));
        assert_eq!(format_from_wire("audio/pcm", Some(24_000)), Ok(pcm));
        assert_eq!(format_from_wire("pcm16", None), Ok(pcm));
        assert_eq!(format_from_wire("audio/pcmu", None), Ok(AudioFormat::Pcmu));
        assert_eq!(format_from_wire("g711_ulaw", Some(8_000)), Ok(AudioFormat::Pcmu));
        assert_eq!(format_from_wire("audio/pcma", None), Ok(AudioFormat::Pcma));
        assert_eq!(format_from_wire("g711_alaw", None), Ok(AudioFormat::Pcma));
        for format in [pcm, AudioFormat::Pcmu, AudioFormat::Pcma] {
            assert_eq!(format_from_wire(format_name(format), None), Ok(format));
        }
        assert_eq!((pcm.rate_hz(), pcm.bytes_per_sample()), (24_000, 2));
        assert_eq!((AudioFormat::Pcmu.rate_hz(), AudioFormat::Pcma.bytes_per_sample()), (8_000, 1));

        let err = format_from_wire("audio/pcm", Some(16_000)).unwrap_err();
        assert_eq!(err.kind(), "unsupported_rate");
        assert!(err.to_string().contains("16000"), "{err}");
        assert_eq!(format_from_wire("audio/pcmu", Some(16_000)).unwrap_err().kind(), "unsupported_rate");
        let err = format_from_wire(&"x".repeat(10_000), None).unwrap_err();
        assert_eq!(err.kind(), "unsupported_format");
        assert!(err.to_string().len() < 300, "{err}");
        assert_eq!(format_from_wire("audio/PCM", None).unwrap_err().kind(), "unsupported_format");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("hé", 2), "hé");
    }
}
