//! The server events this server sends ([`ServerEvent`]).

use serde::{Deserialize, Serialize};

use super::*;

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
        /// Extension: the engine that heard it (hosted vendors and fallback lists). Omitted when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        engine: Option<String>,
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
        /// Extension: the engine that heard it (hosted vendors and fallback lists). Omitted when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        engine: Option<String>,
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
