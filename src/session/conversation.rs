//! A session's conversation: the ordered items (user speech and text, assistant answers, tool calls
//! and their outputs) and how they become chat messages for the gateway.

use crate::llm::ids::random_suffix;
use crate::llm::providers::name_prefixed;
use crate::llm::types::{Content as ChatContent, FunctionCall, Message, ToolCall};
use crate::stt::Word;

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
    /// The words of a transcribed user audio item (times from the start of the session's input
    /// audio, confidences); empty for everything else.
    pub words: Vec<Word>,
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
    #[error("the item holds {bytes} bytes of text, over the conversation's limit of {max} bytes ([realtime] max_history_bytes)")]
    TooLarge { bytes: usize, max: usize },
}

impl Entry {
    /// What the entry holds in text (item, speaker, words, spoken timeline), in bytes: what the
    /// history budget counts. Each word and timeline chunk also counts a fixed 32 for its numbers.
    pub fn size_bytes(&self) -> usize {
        const PER_PART: usize = 32;
        let words: usize = self.words.iter().map(|w| w.text.len() + PER_PART).sum();
        let spoken: usize = self
            .spoken
            .as_ref()
            .map_or(0, |s| s.timeline.iter().map(|said| said.text.len() + PER_PART + said.words.len() * PER_PART).sum::<usize>());
        item_bytes(&self.item) + self.speaker.as_ref().map_or(0, String::len) + words + spoken
    }
}

/// The text an item carries, in bytes.
pub fn item_bytes(item: &Item) -> usize {
    let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
    match item {
        Item::Message(m) => {
            text(&m.id)
                + m.content
                    .iter()
                    .map(|part| match part {
                        Content::InputText { text } | Content::OutputText { text } => text.len(),
                        Content::InputAudio { transcript } | Content::OutputAudio { transcript } => {
                            transcript.as_ref().map_or(0, String::len)
                        }
                    })
                    .sum::<usize>()
        }
        Item::FunctionCall(c) => text(&c.id) + text(&c.call_id) + c.name.len() + c.arguments.len(),
        Item::FunctionCallOutput(o) => text(&o.id) + o.call_id.len() + o.output.len(),
    }
}

/// The default of `[realtime] max_history_bytes`.
pub const DEFAULT_MAX_HISTORY_BYTES: usize = 256 * 1024;

/// The items of one session, oldest first, at most `max_items` and `max_bytes` (see
/// [`Entry::size_bytes`]): beyond either, the oldest items are dropped first, system messages
/// last, and a tool's output goes with the call it answers. A request is rendered within the same
/// budget even when items grew after they were added (transcripts arrive later).
#[derive(Debug)]
pub struct Conversation {
    entries: Vec<Entry>,
    max_items: usize,
    max_bytes: usize,
}

impl Conversation {
    pub fn new(max_items: usize) -> Self {
        Conversation { entries: Vec::new(), max_items: max_items.max(1), max_bytes: DEFAULT_MAX_HISTORY_BYTES }
    }

    /// The same with a budget of `max_bytes` for the items' text.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The text the items hold now, in bytes.
    pub fn size_bytes(&self) -> usize {
        self.entries.iter().map(Entry::size_bytes).sum()
    }

    /// Which entries fit the budgets: the oldest non-system entries go first, then (if system
    /// messages alone are over) the oldest system ones; a tool output whose call went goes too.
    fn kept(&self) -> Vec<bool> {
        let mut keep = vec![true; self.entries.len()];
        let mut count = self.entries.len();
        let mut bytes = self.size_bytes();
        let is_system = |e: &Entry| matches!(&e.item, Item::Message(m) if m.role == Role::System);
        for system_pass in [false, true] {
            for (i, entry) in self.entries.iter().enumerate() {
                if count <= self.max_items && bytes <= self.max_bytes {
                    break;
                }
                if keep[i] && is_system(entry) == system_pass {
                    keep[i] = false;
                    count -= 1;
                    bytes -= entry.size_bytes();
                }
            }
        }
        // An output without its call is refused by the vendors: drop the outputs of dropped calls.
        let dropped_calls: Vec<&str> = self
            .entries
            .iter()
            .zip(&keep)
            .filter_map(|(e, &k)| match &e.item {
                Item::FunctionCall(c) if !k => c.call_id.as_deref(),
                _ => None,
            })
            .collect();
        if !dropped_calls.is_empty() {
            for (entry, k) in self.entries.iter().zip(keep.iter_mut()) {
                if matches!(&entry.item, Item::FunctionCallOutput(o) if dropped_calls.contains(&o.call_id.as_str())) {
                    *k = false;
                }
            }
        }
        keep
    }

    /// Drops what is over the budgets (see [`Conversation::kept`]).
    fn trim(&mut self) {
        let keep = self.kept();
        if keep.iter().all(|&k| k) {
            return;
        }
        let mut keep = keep.into_iter();
        self.entries.retain(|_| keep.next().unwrap_or(true));
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
        let bytes = item_bytes(&item) + speaker.as_ref().map_or(0, String::len);
        if bytes > self.max_bytes {
            return Err(ConversationError::TooLarge { bytes, max: self.max_bytes });
        }
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
        self.entries.insert(at, Entry { item: item.clone(), speaker, words: Vec::new(), spoken: None });
        self.trim();
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

    /// The conversation as chat messages, after an optional system prompt, user turns as plain text
    /// ([`TranscriptRendering::Text`]). See [`Conversation::to_messages_rendered`].
    pub fn to_messages(&self, instructions: Option<&str>) -> Vec<Message> {
        self.to_messages_rendered(instructions, TranscriptRendering::Text)
    }

    /// The conversation as chat messages, after an optional system prompt. Consecutive function calls
    /// become one assistant message with several tool calls; user speech is written as `rendering` says.
    pub fn to_messages_rendered(&self, instructions: Option<&str>, rendering: TranscriptRendering) -> Vec<Message> {
        let mut messages = Vec::with_capacity(self.entries.len() + 1);
        if let Some(text) = instructions.filter(|t| !t.trim().is_empty()) {
            messages.push(Message::system(text));
        }
        // Items may have grown since they were added (transcripts, words): a request stays in budget.
        let keep = self.kept();
        for (entry, _) in self.entries.iter().zip(keep).filter(|(_, k)| *k) {
            items_to_messages(entry, rendering, &mut messages);
        }
        messages
    }
}

/// How a user's spoken turn is written for the model: a session setting. Typed user text (no
/// speaker, no words) is the same in every rendering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TranscriptRendering {
    /// The transcript; the speaker, when the engine tells speakers apart, as the message's `name`
    /// (`speaker_A`), which providers without that field write as `speaker_A: ` before the text.
    #[default]
    Text,
    /// `speaker_A: the transcript` in the text itself, for every provider alike (no `name`).
    Speaker,
    /// `[00:01.4-00:03.9] speaker_A: book a [table?] for two`: where the turn lies in the session's
    /// input audio (minutes:seconds.tenths, first word's start to last word's end), the speaker,
    /// and the words, those with confidence below [`LOW_CONFIDENCE_BELOW`] as `[word?]`. Without
    /// word times it falls back to [`TranscriptRendering::Speaker`].
    Detailed,
}

/// A word whose confidence is below this is marked `[word?]` in [`TranscriptRendering::Detailed`].
pub const LOW_CONFIDENCE_BELOW: f32 = 0.5;

fn items_to_messages(entry: &Entry, rendering: TranscriptRendering, messages: &mut Vec<Message>) {
    match &entry.item {
        Item::Message(m) => {
            let text = message_text(&m.content);
            if text.is_empty() {
                return;
            }
            let message = match m.role {
                Role::System => Message::system(text),
                Role::User => user_message(entry, text, rendering),
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

/// A user message as `rendering` writes it (see [`TranscriptRendering`]).
fn user_message(entry: &Entry, text: String, rendering: TranscriptRendering) -> Message {
    let speaker = entry.speaker.as_deref().map(speaker_name);
    let (text, name) = match rendering {
        TranscriptRendering::Text => (text, speaker),
        TranscriptRendering::Speaker => (name_prefixed(speaker.as_deref(), &text), None),
        TranscriptRendering::Detailed => match detailed_words(&entry.words) {
            Some((span, words)) => (format!("{span} {}", name_prefixed(speaker.as_deref(), &words)), None),
            None => (name_prefixed(speaker.as_deref(), &text), None),
        },
    };
    Message::User { content: ChatContent::Text(text), name }
}

/// `[start-end]` of the words and the words with the unsure ones marked, or `None` without words.
fn detailed_words(words: &[Word]) -> Option<(String, String)> {
    let words: Vec<&Word> = words.iter().filter(|w| !w.text.trim().is_empty()).collect();
    let (first, last) = (words.first()?, words.last()?);
    let span = format!("[{}-{}]", clock(first.start_ms), clock(last.end_ms));
    let mut text = String::new();
    for word in words {
        if !text.is_empty() {
            text.push(' ');
        }
        let w = word.text.trim();
        if word.confidence < LOW_CONFIDENCE_BELOW {
            text.push('[');
            text.push_str(w);
            text.push_str("?]");
        } else {
            text.push_str(w);
        }
    }
    Some((span, text))
}

/// `mm:ss.t`, rounded to the nearest tenth of a second; minutes go past 59 in long sessions.
fn clock(ms: u64) -> String {
    let tenths = (ms + 50) / 100;
    format!("{:02}:{:02}.{}", tenths / 600, tenths % 600 / 10, tenths % 10)
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

    fn system(text: &str) -> Item {
        Item::Message(MessageItem { id: None, status: None, role: Role::System, content: vec![Content::InputText { text: text.into() }] })
    }

    fn contents(c: &Conversation) -> Vec<String> {
        c.to_messages(None).iter().map(|m| serde_json::to_value(m).unwrap()["content"].as_str().unwrap_or("").to_string()).collect()
    }

    #[test]
    fn history_is_bounded_in_bytes_oldest_first_system_last() {
        let mut c = Conversation::new(200).with_max_bytes(1_000);
        c.insert(system(&"s".repeat(100)), None, None).unwrap();
        for i in 0..20 {
            c.insert(user(&format!("{i:02}{}", "x".repeat(98))), None, None).unwrap();
        }
        assert!(c.size_bytes() <= 1_000, "{}", c.size_bytes());
        let texts = contents(&c);
        assert!(texts[0].starts_with('s'), "the system message stays: {texts:?}");
        // The newest items, in order, as many as fit beside it (each also counts its id).
        let kept: Vec<&str> = texts[1..].iter().map(|t| &t[..2]).collect();
        let first = 20 - kept.len();
        let want: Vec<String> = (first..20).map(|i| format!("{i:02}")).collect();
        assert_eq!(kept, want, "{texts:?}");
        assert!(kept.len() >= 6, "{texts:?}");
        // One item over the whole budget is refused, and nothing is dropped for it.
        let err = c.insert(user(&"y".repeat(1_001)), None, None).unwrap_err();
        assert_eq!(err, ConversationError::TooLarge { bytes: 1_001, max: 1_000 });
        assert_eq!(contents(&c), texts);
    }

    #[test]
    fn a_request_stays_in_budget_when_items_grow_after_they_are_added() {
        let mut c = Conversation::new(200).with_max_bytes(1_000);
        for i in 0..3 {
            c.insert(user(&format!("typed {i}")), None, None).unwrap();
        }
        let audio = Item::Message(MessageItem {
            id: None,
            status: None,
            role: Role::User,
            content: vec![Content::InputAudio { transcript: None }],
        });
        let (audio, _) = c.insert(audio, None, None).unwrap();
        // The transcript arrives later, long enough to push the typed items out of the request.
        let Item::Message(m) = &mut c.get_mut(audio.id().unwrap()).unwrap().item else { unreachable!() };
        m.content = vec![Content::InputAudio { transcript: Some("w".repeat(900)) }];
        let texts = contents(&c);
        assert!(texts.last().unwrap().starts_with('w'), "{texts:?}");
        assert!(!texts.contains(&"typed 0".to_string()) && !texts.contains(&"typed 1".to_string()), "{texts:?}");
        assert!(texts.iter().map(String::len).sum::<usize>() <= 1_000);
    }

    #[test]
    fn a_tool_output_goes_with_its_call() {
        let mut c = Conversation::new(200).with_max_bytes(300);
        let call =
            FunctionCallItem { id: None, status: None, call_id: Some("call_1".into()), name: "f".into(), arguments: "a".repeat(150) };
        c.insert(Item::FunctionCall(call), None, None).unwrap();
        let output = FunctionCallOutputItem { id: None, status: None, call_id: "call_1".into(), output: "ok".into() };
        c.insert(Item::FunctionCallOutput(output), None, None).unwrap();
        c.insert(user(&"u".repeat(150)), None, None).unwrap();
        let v = serde_json::to_value(c.to_messages(None)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "no tool message without its call: {v}");
        assert_eq!(v[0]["role"], "user");
        assert!(!c.has_call("call_1"));
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

    /// A transcribed user audio item with its speaker and words (text, start, end, confidence).
    fn spoken(c: &mut Conversation, speaker: Option<&str>, words: &[(&str, u64, u64, f32)]) {
        let text = words.iter().map(|w| w.0).collect::<Vec<_>>().join(" ");
        let item = Item::Message(MessageItem {
            id: None,
            status: None,
            role: Role::User,
            content: vec![Content::InputAudio { transcript: Some(text) }],
        });
        let (item, _) = c.insert(item, None, speaker.map(str::to_string)).unwrap();
        c.get_mut(item.id().unwrap()).unwrap().words =
            words.iter().map(|&(text, start_ms, end_ms, confidence)| Word { text: text.into(), start_ms, end_ms, confidence }).collect();
    }

    /// Speaker A unsure of "table", then speaker B without words, then typed text, then speech
    /// from an engine that does not tell speakers apart.
    fn booking() -> Conversation {
        let mut c = Conversation::new(10);
        spoken(
            &mut c,
            Some("A"),
            &[
                ("book", 3_150, 3_400, 0.93),
                ("a", 3_400, 3_480, 0.9),
                ("table", 3_480, 3_900, 0.41),
                ("for", 3_900, 4_100, 0.88),
                ("two", 4_100, 4_460, 0.5),
            ],
        );
        let (item, _) = c
            .insert(
                Item::Message(MessageItem {
                    id: None,
                    status: None,
                    role: Role::User,
                    content: vec![Content::InputAudio { transcript: Some("at eight".into()) }],
                }),
                None,
                Some("B".into()),
            )
            .unwrap();
        assert!(c.get(item.id().unwrap()).unwrap().words.is_empty());
        c.insert(user("typed, no speaker"), None, None).unwrap();
        spoken(&mut c, None, &[("thanks", 61_049, 3_723_400, 0.2)]);
        c
    }

    fn user_turns(c: &Conversation, rendering: TranscriptRendering) -> Vec<serde_json::Value> {
        serde_json::to_value(c.to_messages_rendered(Some("Be brief."), rendering)).unwrap().as_array().unwrap()[1..].to_vec()
    }

    #[test]
    fn text_rendering_is_the_transcript_with_the_speaker_as_name() {
        let c = booking();
        assert_eq!(
            user_turns(&c, TranscriptRendering::Text),
            [
                serde_json::json!({"role": "user", "name": "speaker_A", "content": "book a table for two"}),
                serde_json::json!({"role": "user", "name": "speaker_B", "content": "at eight"}),
                serde_json::json!({"role": "user", "content": "typed, no speaker"}),
                serde_json::json!({"role": "user", "content": "thanks"}),
            ]
        );
        // The default, and what `to_messages` has always done.
        assert_eq!(TranscriptRendering::default(), TranscriptRendering::Text);
        assert_eq!(
            serde_json::to_value(c.to_messages(Some("Be brief."))).unwrap().as_array().unwrap()[1..],
            user_turns(&c, TranscriptRendering::Text)
        );
    }

    #[test]
    fn speaker_rendering_writes_the_speaker_into_the_text() {
        assert_eq!(
            user_turns(&booking(), TranscriptRendering::Speaker),
            [
                serde_json::json!({"role": "user", "content": "speaker_A: book a table for two"}),
                serde_json::json!({"role": "user", "content": "speaker_B: at eight"}),
                serde_json::json!({"role": "user", "content": "typed, no speaker"}),
                serde_json::json!({"role": "user", "content": "thanks"}),
            ]
        );
    }

    #[test]
    fn detailed_rendering_adds_the_span_and_marks_unsure_words() {
        assert_eq!(
            user_turns(&booking(), TranscriptRendering::Detailed),
            [
                // 0.41 is below the threshold, 0.5 is not.
                serde_json::json!({"role": "user", "content": "[00:03.2-00:04.5] speaker_A: book a [table?] for two"}),
                // No words: the speaker rendering.
                serde_json::json!({"role": "user", "content": "speaker_B: at eight"}),
                serde_json::json!({"role": "user", "content": "typed, no speaker"}),
                // No speaker; minutes go past 59.
                serde_json::json!({"role": "user", "content": "[01:01.0-62:03.4] [thanks?]"}),
            ]
        );
        assert_eq!(clock(0), "00:00.0");
        assert_eq!(clock(3_599_960), "60:00.0");
    }

    #[test]
    fn audio_transcripts_are_the_message_text() {
        let parts = vec![Content::InputAudio { transcript: Some(" book a table ".into()) }, Content::InputAudio { transcript: None }];
        assert_eq!(message_text(&parts), "book a table");
    }
}
