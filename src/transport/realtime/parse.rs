//! Reading a client event: [`parse_client_event`] never panics; every failure is an [`EventError`]
//! that names the problem, the offending parameter as a path when it can be found, and the client's
//! `event_id` when it could be read, ready to become a Realtime `error` event.

use serde::de;
use serde::Deserialize;
use serde_json::Value;

use super::*;

/// Longest piece of client input (an unknown event type, a serde message quoting a value) an error repeats.
const ECHO_CHARS_MAX: usize = 200;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::AudioFormat;

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
