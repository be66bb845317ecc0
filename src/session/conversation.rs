//! A session's conversation: the ordered items (user speech and text, assistant answers, tool calls
//! and their outputs) and how they become chat messages for the gateway.

use crate::llm::ids::random_suffix;
use crate::llm::types::{Content as ChatContent, FunctionCall, Message, ToolCall};

/// A fresh conversation item id (`item_…`).
pub fn new_item_id() -> String {
    format!("item_{}", random_suffix())
}

/// A fresh response id (`resp_…`).
pub fn new_response_id() -> String {
    format!("resp_{}", random_suffix())
}

/// A conversation item: a message, a tool call the model asked for, or a tool's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Message(MessageItem),
    FunctionCall(FunctionCallItem),
    FunctionCallOutput(FunctionCallOutputItem),
}

impl Item {
    /// The item's id, when it has one (a client may leave it out; the conversation fills it in).
    pub fn id(&self) -> Option<&str> {
        match self {
            Item::Message(m) => m.id.as_deref(),
            Item::FunctionCall(c) => c.id.as_deref(),
            Item::FunctionCallOutput(o) => o.id.as_deref(),
        }
    }
}

/// A message: who wrote it and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageItem {
    pub id: Option<String>,
    pub status: Option<ItemStatus>,
    pub role: Role,
    pub content: Vec<Content>,
}

/// The model asks for a tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCallItem {
    pub id: Option<String>,
    pub status: Option<ItemStatus>,
    pub call_id: Option<String>,
    pub name: String,
    /// JSON text of the arguments.
    pub arguments: String,
}

/// The client's answer to a tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCallOutputItem {
    pub id: Option<String>,
    pub status: Option<ItemStatus>,
    pub call_id: String,
    pub output: String,
}

/// A message's author.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// An item's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

/// One part of a message. Users and system give input, the assistant output; audio parts carry
/// their transcript (the audio itself is never kept in the conversation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    InputText {
        text: String,
    },
    /// `None` until transcribed.
    InputAudio {
        transcript: Option<String>,
    },
    OutputText {
        text: String,
    },
    OutputAudio {
        transcript: Option<String>,
    },
}

/// One item with what the session knows beside it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub item: Item,
    /// Who spoke a user audio item, when the STT engine tells speakers apart.
    pub speaker: Option<String>,
    /// For an assistant item that was spoken: where each chunk of its transcript starts in its audio.
    pub spoken: Option<Spoken>,
}

/// The audio of a spoken assistant item, as far as truncation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spoken {
    /// Each chunk (where it starts, its text, its word times if aligned), in order.
    pub timeline: Vec<super::playback::Said>,
    /// Where the last chunk's audio ends (sent or not).
    pub total_ms: f64,
    /// How much audio was sent to the client: truncation is clamped to it.
    pub sent_ms: f64,
}

/// Why an item could not be inserted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    #[error("no item with id {0:?} in the conversation")]
    NoSuchItem(String),
    #[error("an item with id {0:?} is already in the conversation")]
    DuplicateId(String),
}

/// The items of one session, oldest first, at most `max_items` (the oldest are dropped).
#[derive(Debug)]
pub struct Conversation {
    entries: Vec<Entry>,
    max_items: usize,
}

impl Conversation {
    pub fn new(max_items: usize) -> Self {
        Conversation { entries: Vec::new(), max_items: max_items.max(1) }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last_id(&self) -> Option<String> {
        self.entries.last().and_then(|e| e.item.id().map(str::to_string))
    }

    /// Inserts `item` (its id filled in when missing) after `previous_item_id` (`root` for the start,
    /// `None` for the end). Returns the id of the item before it, as events report it.
    pub fn insert(
        &mut self,
        mut item: Item,
        previous_item_id: Option<&str>,
        speaker: Option<String>,
    ) -> Result<(Item, Option<String>), ConversationError> {
        let id = match item.id() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                let id = new_item_id();
                set_id(&mut item, id.clone());
                id
            }
        };
        if self.position(&id).is_some() {
            return Err(ConversationError::DuplicateId(id));
        }
        let at = match previous_item_id {
            None => self.entries.len(),
            Some("root") => 0,
            Some(prev) => self.position(prev).ok_or_else(|| ConversationError::NoSuchItem(prev.to_string()))? + 1,
        };
        let previous = if at == 0 { None } else { self.entries[at - 1].item.id().map(str::to_string) };
        self.entries.insert(at, Entry { item: item.clone(), speaker, spoken: None });
        if self.entries.len() > self.max_items {
            let excess = self.entries.len() - self.max_items;
            self.entries.drain(..excess);
        }
        Ok((item, previous))
    }

    pub fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.item.id() == Some(id))
    }

    /// The id of the item at `index`.
    pub fn id_at(&self, index: usize) -> Option<String> {
        self.entries.get(index).and_then(|e| e.item.id().map(str::to_string))
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.item.id() == Some(id))
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.item.id() == Some(id))
    }

    pub fn delete(&mut self, id: &str) -> bool {
        match self.position(id) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Whether the model asked for the tool call `call_id` in this conversation.
    pub fn has_call(&self, call_id: &str) -> bool {
        self.entries.iter().any(|e| matches!(&e.item, Item::FunctionCall(c) if c.call_id.as_deref() == Some(call_id)))
    }

    /// The conversation as chat messages, after an optional system prompt. Consecutive function calls
    /// become one assistant message with several tool calls; user speech carries its speaker as `name`.
    pub fn to_messages(&self, instructions: Option<&str>) -> Vec<Message> {
        let mut messages = Vec::with_capacity(self.entries.len() + 1);
        if let Some(text) = instructions.filter(|t| !t.trim().is_empty()) {
            messages.push(Message::system(text));
        }
        for entry in &self.entries {
            items_to_messages(entry, &mut messages);
        }
        messages
    }
}

fn items_to_messages(entry: &Entry, messages: &mut Vec<Message>) {
    match &entry.item {
        Item::Message(m) => {
            let text = message_text(&m.content);
            if text.is_empty() {
                return;
            }
            let message = match m.role {
                Role::System => Message::system(text),
                Role::User => Message::User { content: ChatContent::Text(text), name: entry.speaker.as_deref().map(speaker_name) },
                Role::Assistant => Message::assistant(text),
            };
            messages.push(message);
        }
        Item::FunctionCall(c) => {
            let call = ToolCall {
                id: c.call_id.clone().unwrap_or_default(),
                kind: "function".to_string(),
                function: FunctionCall { name: c.name.clone(), arguments: c.arguments.clone() },
            };
            if let Some(Message::Assistant { tool_calls: Some(calls), .. }) = messages.last_mut() {
                calls.push(call);
            } else {
                messages.push(Message::Assistant { content: None, tool_calls: Some(vec![call]), name: None });
            }
        }
        Item::FunctionCallOutput(o) => {
            messages.push(Message::Tool { content: ChatContent::Text(o.output.clone()), tool_call_id: o.call_id.clone() })
        }
    }
}

/// A chat `name` allows letters, digits, `_` and `-` only.
fn speaker_name(speaker: &str) -> String {
    let name: String = speaker.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(64).collect();
    format!("speaker_{name}")
}

/// The text of a message's parts: typed text and audio transcripts, joined by spaces.
pub fn message_text(content: &[Content]) -> String {
    let mut out = String::new();
    for part in content {
        let text = match part {
            Content::InputText { text } | Content::OutputText { text } => Some(text.as_str()),
            Content::InputAudio { transcript } | Content::OutputAudio { transcript } => transcript.as_deref(),
        };
        if let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(t);
        }
    }
    out
}

fn set_id(item: &mut Item, id: String) {
    match item {
        Item::Message(m) => m.id = Some(id),
        Item::FunctionCall(c) => c.id = Some(id),
        Item::FunctionCallOutput(o) => o.id = Some(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Item {
        Item::Message(MessageItem { id: None, status: None, role: Role::User, content: vec![Content::InputText { text: text.into() }] })
    }

    #[test]
    fn items_get_ids_and_keep_their_order() {
        let mut c = Conversation::new(10);
        let (a, prev) = c.insert(user("one"), None, None).unwrap();
        assert!(prev.is_none());
        let (b, prev) = c.insert(user("two"), None, None).unwrap();
        assert_eq!(prev.as_deref(), a.id());
        let (_, prev) = c.insert(user("zero"), Some("root"), None).unwrap();
        assert!(prev.is_none());
        let (_, prev) = c.insert(user("one and a half"), a.id(), None).unwrap();
        assert_eq!(prev.as_deref(), a.id());
        let texts: Vec<String> =
            c.to_messages(None).iter().map(|m| serde_json::to_value(m).unwrap()["content"].as_str().unwrap().to_string()).collect();
        assert_eq!(texts, ["zero", "one", "one and a half", "two"]);
        assert_eq!(c.insert(user("x"), Some("nope"), None).unwrap_err(), ConversationError::NoSuchItem("nope".into()));
        assert!(matches!(c.insert(b.clone(), None, None), Err(ConversationError::DuplicateId(_))));
        assert!(c.delete(b.id().unwrap()));
        assert!(!c.delete(b.id().unwrap()));
    }

    #[test]
    fn history_is_bounded() {
        let mut c = Conversation::new(3);
        for i in 0..10 {
            c.insert(user(&i.to_string()), None, None).unwrap();
        }
        assert_eq!(c.len(), 3);
        let m = c.to_messages(None);
        assert_eq!(serde_json::to_value(&m[0]).unwrap()["content"], "7");
    }

    #[test]
    fn tool_calls_and_outputs_become_chat_messages() {
        let mut c = Conversation::new(10);
        c.insert(user("weather?"), None, Some("A".into())).unwrap();
        for (id, name) in [("call_1", "weather"), ("call_2", "time")] {
            let call = FunctionCallItem { id: None, status: None, call_id: Some(id.into()), name: name.into(), arguments: "{}".into() };
            c.insert(Item::FunctionCall(call), None, None).unwrap();
        }
        c.insert(
            Item::FunctionCallOutput(FunctionCallOutputItem { id: None, status: None, call_id: "call_1".into(), output: "sunny".into() }),
            None,
            None,
        )
        .unwrap();
        assert!(c.has_call("call_2"));
        assert!(!c.has_call("call_3"));
        let v = serde_json::to_value(c.to_messages(Some("Be brief."))).unwrap();
        assert_eq!(v[0], serde_json::json!({"role": "system", "content": "Be brief."}));
        assert_eq!(v[1]["name"], "speaker_A");
        assert_eq!(v[2]["role"], "assistant");
        assert_eq!(v[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(v[3], serde_json::json!({"role": "tool", "content": "sunny", "tool_call_id": "call_1"}));
    }

    #[test]
    fn audio_transcripts_are_the_message_text() {
        let parts = vec![Content::InputAudio { transcript: Some(" book a table ".into()) }, Content::InputAudio { transcript: None }];
        assert_eq!(message_text(&parts), "book a table");
    }
}
