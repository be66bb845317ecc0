//! Server-sent events: an incremental parser that accepts bytes as they arrive (an event may be
//! split across any number of TCP reads). Bytes only: reading them off a response is
//! `providers::http`'s job.

use bytes::BytesMut;

use super::error::ProviderError;

/// One SSE event: the `event:` name (if any) and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Longest event we accept before calling the stream malformed (protects memory).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Incremental SSE parser (WHATWG rules for `data`, `event`, comments and blank-line dispatch;
/// `\n`, `\r\n` and `\r` line ends).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    /// How much of `buf` is known to hold no line end (so long lines are scanned once).
    scanned: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; returns every event completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, ProviderError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let Some(found) = self.buf[self.scanned..].iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.scanned = self.buf.len();
                break;
            };
            let pos = self.scanned + found;
            // A lone '\r' at the very end may be the first half of "\r\n": wait for more.
            if self.buf[pos] == b'\r' && pos + 1 == self.buf.len() {
                self.scanned = pos;
                break;
            }
            self.scanned = 0;
            let line = self.buf.split_to(pos);
            let skip = if self.buf[0] == b'\r' && self.buf.get(1) == Some(&b'\n') { 2 } else { 1 };
            let _ = self.buf.split_to(skip);
            let line = std::str::from_utf8(&line).map_err(|_| ProviderError::stream("stream frame is not valid UTF-8"))?;
            if let Some(ev) = self.line(line) {
                out.push(ev);
            }
        }
        if self.buffered_len() > MAX_EVENT_BYTES {
            return Err(ProviderError::stream("stream event larger than 4 MiB"));
        }
        Ok(out)
    }

    /// Bytes held for an event not yet complete (the unterminated line, the data lines so far, the
    /// event's name): at most [`MAX_EVENT_BYTES`] after a `push` that succeeded. Public for the fuzz tests.
    #[doc(hidden)]
    pub fn buffered_len(&self) -> usize {
        self.buf.len() + self.data.len() + self.event.as_ref().map_or(0, String::len)
    }

    /// The stream ended: dispatch a final event that lacked its blank line, if any.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            self.scanned = 0;
            let rest = self.buf.split();
            if let Ok(line) = std::str::from_utf8(&rest) {
                let line = line.to_string();
                if let Some(ev) = self.line(&line) {
                    return Some(ev);
                }
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields do not matter to us
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent { event, data: std::mem::take(&mut self.data) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c).unwrap());
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn events_split_anywhere_parse_the_same() {
        let text = b"event: message_start\ndata: {\"a\":1}\n\n: comment\r\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        let whole = parse_all(&[text]);
        assert_eq!(
            whole,
            vec![
                SseEvent { event: Some("message_start".into()), data: "{\"a\":1}".into() },
                SseEvent { event: None, data: "x\ny".into() },
                SseEvent { event: None, data: "[DONE]".into() },
            ]
        );
        for split in 1..text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(parse_all(&[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_before_the_buffer_grows_much_past_it() {
        let mut p = SseParser::new();
        p.push(b"data: ").unwrap();
        let piece = vec![b'a'; 64 * 1024];
        let mut pushed = 0;
        let err = loop {
            match p.push(&piece) {
                Ok(events) => {
                    assert!(events.is_empty());
                    pushed += piece.len();
                    assert!(pushed <= MAX_EVENT_BYTES, "{pushed} bytes taken without an error");
                }
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
        // Many data lines of one event count together.
        let mut p = SseParser::new();
        let line = [b"data: ".as_slice(), &vec![b'b'; 1_000_000], b"\n"].concat();
        let results: Vec<_> = (0..5).map(|_| p.push(&line).is_ok()).collect();
        assert_eq!(results, [true, true, true, true, false]);
    }

    #[test]
    fn unterminated_last_event_is_kept() {
        assert_eq!(parse_all(&[b"data: {\"x\":1}"]), vec![SseEvent { event: None, data: "{\"x\":1}".into() }]);
    }
}
