//! What a session tells its transport: [`Event`]s in the order they happen, and [`Outbound::Close`]
//! when the session ends the connection. Events carry the session's own types (items, transcripts,
//! PCM audio, typed errors); a transport maps them onto its wire format, with its own event ids,
//! indexes and encodings.

use crate::audio::AudioFormat;
use crate::llm::types::Usage;
use crate::metering::Amount;
use crate::stt::Transcript;

use super::conversation::Item;
use super::settings::Settings;
use super::RateBudget;

/// What the session hands the transport.
#[derive(Debug)]
pub enum Outbound {
    Event(Box<Event>),
    /// Close the connection.
    Close(CloseReason),
}

/// Why a call ends other than by the client's own close or a server shutdown: the session's
/// reasons (it sends [`Outbound::Close`] with them) and the transport's (it records them in the
/// call's [`super::Peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client left too many events, or too many bytes, unread, or one message unsent past its deadline.
    ClientNotReading,
    /// The client answered no ping within the pong deadline: its network is gone.
    PeerUnresponsive,
    /// The client sent nothing (Realtime: no event; Twilio: no media) for the idle limit.
    Idle,
    /// The call reached `max_session_ms`.
    MaxDuration,
}

impl CloseReason {
    /// The ledger's `close_reason` and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientNotReading => "client_not_reading",
            CloseReason::PeerUnresponsive => "peer_unresponsive",
            CloseReason::Idle => "idle_timeout",
            CloseReason::MaxDuration => "max_duration",
        }
    }

    /// Whether the call is billed to the client's last sign of life (it vanished or went silent)
    /// rather than to the moment it ended (a live client the server closed).
    pub fn bills_to_last_heard(self) -> bool {
        matches!(self, CloseReason::PeerUnresponsive | CloseReason::Idle)
    }
}

/// Something that happened in the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The settings in force: once when the session opens (`created`), then after each accepted change.
    Settings {
        session_id: String,
        settings: Box<Settings>,
        created: bool,
    },
    /// A client command was refused, or something failed that the client should know of.
    Error(SessionError),
    /// The caller started speaking; `item_id` will hold the utterance.
    SpeechStarted {
        item_id: String,
        audio_start_ms: u64,
    },
    SpeechStopped {
        item_id: String,
        audio_end_ms: u64,
    },
    /// An utterance was committed to the conversation as `item_id`.
    InputCommitted {
        item_id: String,
        previous_item_id: Option<String>,
    },
    InputCleared,
    /// More of an utterance's transcript: `delta` extends what was sent before.
    TranscriptPartial {
        item_id: String,
        delta: String,
        transcript: Transcript,
    },
    TranscriptFinal {
        item_id: String,
        transcript: Transcript,
    },
    /// An utterance could not be transcribed; `code` is the engine's error kind.
    TranscriptFailed {
        item_id: String,
        code: String,
        message: String,
    },
    /// An item joined the conversation after `previous_item_id`.
    ItemAdded {
        item: Item,
        previous_item_id: Option<String>,
    },
    /// An item of the conversation is complete.
    ItemDone {
        item: Item,
        previous_item_id: Option<String>,
    },
    ItemRetrieved {
        item: Item,
    },
    ItemDeleted {
        item_id: String,
    },
    /// A spoken item was cut to what the caller heard.
    ItemTruncated {
        item_id: String,
        audio_end_ms: u64,
    },
    /// A response began.
    ResponseStarted {
        response_id: String,
        audio: bool,
        metadata: Option<serde_json::Value>,
    },
    /// A response produced an item (its message or a tool call). `conversation` is set when the item
    /// also joined the conversation at the same moment.
    OutputItemAdded {
        response_id: String,
        item: Item,
        conversation: Option<Joined>,
    },
    /// A response's item is finished (status, final text or arguments). Conversation events for it,
    /// if any, follow as their own events.
    OutputItemDone {
        response_id: String,
        item: Item,
    },
    /// Text of an answer that is not spoken.
    TextDelta {
        response_id: String,
        item_id: String,
        delta: String,
    },
    /// The text of the audio that follows, as each chunk starts playing.
    SpokenText {
        response_id: String,
        item_id: String,
        delta: String,
    },
    /// Audio of an answer: mono PCM, paced at real time, at the rate of `format`: the output format
    /// in force when its response started, which the transport encodes it in (a change of format
    /// takes effect from the next response).
    Audio {
        response_id: String,
        item_id: String,
        samples: Vec<i16>,
        format: AudioFormat,
    },
    AudioStarted {
        response_id: String,
    },
    /// The caller has heard all of a response's audio.
    AudioStopped {
        response_id: String,
    },
    /// Audio not yet heard was dropped (barge-in or the client's request): a transport empties its
    /// own buffers too.
    AudioCleared {
        response_id: String,
    },
    /// More of a tool call's arguments.
    ToolCallDelta {
        response_id: String,
        item_id: String,
        call_id: String,
        delta: String,
    },
    ResponseDone(Box<ResponseSummary>),
    /// The key's per-minute limits as they stand.
    RateLimits(Vec<RateBudget>),
}

/// An output item that also joined the conversation, after this item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub previous_item_id: Option<String>,
}

/// A finished response.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseSummary {
    pub id: String,
    pub status: ResponseStatus,
    /// Its items in order, final.
    pub output: Vec<Item>,
    pub audio: bool,
    pub usage: Option<Usage>,
    pub metadata: Option<serde_json::Value>,
    /// The model that served (after any fallback); `None` when none answered.
    pub model: Option<String>,
    /// The TTS engine that spoke the last chunk (after any fallback); `None` without speech.
    pub tts_engine: Option<String>,
    pub latencies: Latencies,
    /// The session's meter so far, when it is metered.
    pub meter: Option<MeterReading>,
}

/// How a response ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseStatus {
    Completed,
    Cancelled(CancelReason),
    /// Cut at the output token limit.
    Incomplete,
    /// `code` names the stage (`llm_failed`, `llm_stream_failed`, `tts_failed`).
    Failed {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The caller spoke over the answer.
    TurnDetected,
    ClientCancelled,
}

/// Milliseconds per stage of one response; `None` for a stage that did not run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latencies {
    /// End of user speech to the final transcript.
    pub stt: Option<f64>,
    pub llm_ttft: Option<f64>,
    /// First text handed to TTS to its first audio.
    pub tts_ttfb: Option<f64>,
    /// End of user speech to the first agent audio sent.
    pub voice_to_voice: Option<f64>,
}

/// A session's billed time and amount so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterReading {
    pub billed_seconds: u64,
    pub amount: Amount,
}

/// A refused command or a failure the client should know of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    pub kind: ErrorKind,
    pub message: String,
    /// The setting or field the error is about.
    pub setting: Option<Setting>,
    /// The reference the client gave the command that failed ([`super::Inbound::reply_to`]).
    pub reply_to: Option<String>,
}

impl SessionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> SessionError {
        SessionError { kind, message: message.into(), setting: None, reply_to: None }
    }

    pub fn concerning(mut self, setting: Setting) -> SessionError {
        self.setting = Some(setting);
        self
    }
}

/// What kind of error: a closed set, so transports map each to their own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A value the session does not accept.
    InvalidValue,
    TtsUnavailable,
    SttUnavailable,
    /// Commit with no audio since the last turn.
    InputEmpty,
    ItemNotFound,
    /// A tool output for a call the model never made.
    UnknownCallId,
    ResponseAlreadyActive,
    NoActiveResponse,
    /// The key's per-minute limit (`requests` or `tokens`) refused a model call.
    RateLimited {
        limit: &'static str,
    },
    /// The call reached `max_session_ms` and ends.
    SessionExpired,
    /// The client sent nothing for the idle limit and the call ends.
    IdleTimeout,
}

/// The setting or command field an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Model,
    OutputModalities,
    TurnThreshold,
    TurnType,
    /// The audio of an audio command.
    Audio,
    /// An added item's id, call id or content.
    ItemId,
    ItemCallId,
    ItemContent,
    /// Where an item was to be inserted.
    PreviousItemId,
    /// A response's own output modalities.
    ResponseOutputModalities,
}
