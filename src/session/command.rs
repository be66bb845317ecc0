//! What a transport tells a session: [`Command`]s, each with the client's own reference for it
//! ([`Inbound::reply_to`]) so an error can name the command that caused it.

use tokio::sync::oneshot;

use super::conversation::Item;
use super::settings::{SettingsUpdate, Tool, ToolChoice};

/// A command and the client's reference for it.
#[derive(Debug)]
pub struct Inbound {
    pub command: Command,
    /// Given back on any [`super::SessionError`] the command causes (a Realtime client's `event_id`).
    pub reply_to: Option<String>,
}

impl From<Command> for Inbound {
    fn from(command: Command) -> Inbound {
        Inbound { command, reply_to: None }
    }
}

/// What a client asks of the session.
#[derive(Debug)]
pub enum Command {
    /// Caller audio: mono PCM at `rate_hz`, in arrival order.
    Audio {
        samples: Vec<i16>,
        rate_hz: u32,
    },
    /// End the caller's turn now (without turn detection, or to force it).
    Commit,
    /// Drop the caller's audio not yet committed.
    ClearInput,
    /// Change settings. `applied`, when given, hears whether the whole update took effect (a transport
    /// that decodes audio by a setting waits for it before decoding more).
    Configure {
        update: Box<SettingsUpdate>,
        applied: Option<oneshot::Sender<bool>>,
    },
    /// Add an item after `previous_item_id` (`root`: at the start; `None`: at the end).
    AddItem {
        item: Item,
        previous_item_id: Option<String>,
    },
    RetrieveItem {
        item_id: String,
    },
    DeleteItem {
        item_id: String,
    },
    /// The caller heard the first `ms` of a spoken item's audio: cut it (and its transcript) there.
    Heard {
        item_id: String,
        ms: u64,
    },
    /// Answer now, with these overrides.
    CreateResponse(Box<ResponseOverrides>),
    /// Stop the response in progress (only `response_id`, when given).
    Cancel {
        response_id: Option<String>,
    },
    /// Stop the audio the caller has not heard yet (and the response producing it).
    ClearOutput,
    /// Answered on `done` once every command before it has been handled (and its events sent): a
    /// transport that answers some client input itself puts its answer in order this way.
    Sync {
        done: oneshot::Sender<()>,
    },
}

/// One response's departures from the session's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseOverrides {
    /// Answer without adding to the conversation.
    pub out_of_band: bool,
    /// Answer these items instead of the conversation. A message with an id and no content refers to
    /// the conversation's item of that id.
    pub input: Option<Vec<Item>>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    /// Spoken (`true`) or text only.
    pub audio_out: Option<bool>,
    /// `Some(None)`: the model's own limit.
    pub max_output_tokens: Option<Option<u32>>,
    /// Given back on the response.
    pub metadata: Option<serde_json::Value>,
}
