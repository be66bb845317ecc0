//! The client events this server reads ([`ClientEvent`], one struct per event).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

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
