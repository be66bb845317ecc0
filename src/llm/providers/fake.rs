//! An in-process provider for tests and benchmarks, scripted by the upstream model name.
//!
//! The name is a `+`-separated list of directives (anything unknown is ignored):
//! - `slow-MS`: wait MS milliseconds before the first token;
//! - `delay-MS`: wait MS milliseconds between tokens;
//! - `precise`: wait with a precise timer thread rather than tokio's 1 ms timer (benchmarks);
//! - `error-STATUS`: fail with that HTTP status (`retry-S` adds `Retry-After: S`);
//! - `flaky-N`: the first N calls fail with 503, later ones succeed;
//! - `stall-N`: send N tokens, then hang;
//! - `cut-N`: send N tokens, then break the stream;
//! - `invalid`: refuse the request as one this provider cannot express;
//! - `context`: refuse it as longer than the model's context (400 `context_length_exceeded`);
//! - `tool`: call the request's first tool with `{"text": <last user text>}`;
//! - `json`: answer `{"answer": <last user text>}`;
//! - `reply=WORDS_WITH_UNDERSCORES`: answer those words (underscores become spaces);
//! - otherwise the answer echoes the last user message: `You said: …`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;

use super::EventStream;
use crate::llm::error::ProviderError;
use crate::llm::types::{ChatRequest, Event, FinishReason, Message, Usage};

#[derive(Default)]
pub struct Fake {
    calls: Mutex<HashMap<String, u32>>,
}

#[derive(Default, Debug)]
struct Script {
    slow_ms: u64,
    delay_ms: u64,
    error: Option<u16>,
    retry_s: Option<u64>,
    flaky: u32,
    stall_after: Option<usize>,
    cut_after: Option<usize>,
    tool: bool,
    json: bool,
    invalid: bool,
    context: bool,
    precise: bool,
    reply: Option<String>,
}

fn parse(name: &str) -> Script {
    let mut s = Script::default();
    for part in name.split('+') {
        if let Some(words) = part.strip_prefix("reply=") {
            s.reply = Some(words.replace('_', " "));
            continue;
        }
        let (word, arg) = match part.rsplit_once('-') {
            Some((w, a)) if a.parse::<u64>().is_ok() => (w, a.parse::<u64>().ok()),
            _ => (part, None),
        };
        match (word, arg) {
            ("slow", Some(n)) => s.slow_ms = n,
            ("delay", Some(n)) => s.delay_ms = n,
            ("error", Some(n)) => s.error = u16::try_from(n).ok(),
            ("retry", Some(n)) => s.retry_s = Some(n),
            ("flaky", Some(n)) => s.flaky = n as u32,
            ("stall", Some(n)) => s.stall_after = Some(n as usize),
            ("cut", Some(n)) => s.cut_after = Some(n as usize),
            ("tool", _) => s.tool = true,
            ("json", _) => s.json = true,
            ("invalid", _) => s.invalid = true,
            ("context", _) => s.context = true,
            ("precise", _) => s.precise = true,
            _ => {}
        }
    }
    s
}

fn last_user_text(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::User { content, .. } => Some(content.text()),
            _ => None,
        })
        .unwrap_or_default()
}

fn count_words(request: &ChatRequest) -> u64 {
    request
        .messages
        .iter()
        .map(|m| match m {
            Message::System { content, .. } | Message::User { content, .. } | Message::Tool { content, .. } => {
                content.text().split_whitespace().count() as u64
            }
            Message::Assistant { content, .. } => content.as_ref().map_or(0, |c| c.text().split_whitespace().count() as u64),
        })
        .sum::<u64>()
        .max(1)
}

/// Split text into word tokens that keep their leading space, as real tokenizers do.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, w) in text.split(' ').enumerate() {
        out.push(if i == 0 { w.to_string() } else { format!(" {w}") });
    }
    out
}

impl Fake {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn send(&self, request: &ChatRequest, upstream_model: &str, _stream: bool) -> Result<EventStream, ProviderError> {
        let script = parse(upstream_model);
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let n = calls.entry(upstream_model.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        if let Some(status) = script.error {
            return Err(ProviderError::Http {
                status,
                message: format!("fake upstream failed with {status}"),
                code: None,
                retry_after: script.retry_s.map(Duration::from_secs),
                quota: false,
            });
        }
        if script.invalid {
            return Err(ProviderError::Invalid("the fake provider cannot express this request".into()));
        }
        if script.context {
            return Err(ProviderError::Http {
                status: 400,
                message: "the prompt is longer than this fake model's maximum context length".into(),
                code: Some(crate::llm::error::CONTEXT_LENGTH_EXCEEDED.into()),
                retry_after: None,
                quota: false,
            });
        }
        if call <= script.flaky {
            return Err(ProviderError::http(503, format!("fake upstream is flaky (call {call} of {})", script.flaky)));
        }

        let user = last_user_text(request);
        let mut events: Vec<Event> = Vec::new();
        let finish;
        if script.tool && request.tools_enabled() {
            let name = request.tools.as_ref().and_then(|t| t.first()).map(|t| t.function.name.clone()).unwrap_or_default();
            let args = serde_json::json!({ "text": user }).to_string();
            events.push(Event::ToolCallStart { index: 0, id: format!("call_{}", crate::llm::ids::random_suffix()), name });
            let mid = args.len() / 2;
            let mid = (0..=mid).rev().find(|i| args.is_char_boundary(*i)).unwrap_or(0);
            events.push(Event::ToolCallArgs { index: 0, arguments: args[..mid].to_string() });
            events.push(Event::ToolCallArgs { index: 0, arguments: args[mid..].to_string() });
            finish = FinishReason::ToolCalls;
        } else {
            let text = if script.json {
                serde_json::json!({ "answer": user }).to_string()
            } else if let Some(reply) = &script.reply {
                reply.clone()
            } else {
                format!("You said: {user}")
            };
            let mut toks = tokens(&text);
            let limit = request.max_output_tokens().map(|m| m as usize);
            let mut reason = FinishReason::Stop;
            if let Some(limit) = limit {
                if toks.len() > limit {
                    toks.truncate(limit);
                    reason = FinishReason::Length;
                }
            }
            events.extend(toks.into_iter().map(Event::Text));
            finish = reason;
        }
        let content_count = events.len() as u64;
        events.push(Event::Finish(finish));
        events.push(Event::Usage(Usage { input_tokens: count_words(request), output_tokens: content_count, ..Usage::default() }));

        let slow = Duration::from_millis(script.slow_ms);
        let precise = script.precise;
        let delay = Duration::from_millis(script.delay_ms);
        let stall_after = script.stall_after;
        let cut_after = script.cut_after;
        let stream = futures::stream::unfold((events.into_iter(), 0usize), move |(mut it, sent)| async move {
            if sent == 0 && !slow.is_zero() {
                crate::fake_clock::wait(slow, precise).await;
            } else if sent > 0 && !delay.is_zero() {
                crate::fake_clock::wait(delay, precise).await;
            }
            if stall_after == Some(sent) {
                std::future::pending::<()>().await;
            }
            if cut_after == Some(sent) {
                return Some((Err(ProviderError::stream("fake upstream cut the stream")), (Vec::new().into_iter(), usize::MAX)));
            }
            if sent == usize::MAX {
                return None;
            }
            it.next().map(|ev| (Ok(ev), (it, sent + 1)))
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> ChatRequest {
        ChatRequest { model: "m".into(), messages: vec![Message::user(text)], ..ChatRequest::default() }
    }

    async fn collect(s: EventStream) -> Vec<Result<Event, ProviderError>> {
        s.collect().await
    }

    #[tokio::test]
    async fn echo_answers_with_the_user_text() {
        let fake = Fake::new();
        let ev = collect(fake.send(&req("hello there"), "echo", true).await.unwrap()).await;
        let text: String = ev
            .iter()
            .filter_map(|e| match e {
                Ok(Event::Text(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "You said: hello there");
        assert!(matches!(ev.last(), Some(Ok(Event::Usage(_)))));
    }

    #[tokio::test]
    async fn flaky_fails_then_succeeds() {
        let fake = Fake::new();
        assert!(fake.send(&req("x"), "flaky-2", true).await.is_err());
        assert!(fake.send(&req("x"), "flaky-2", true).await.is_err());
        assert!(fake.send(&req("x"), "flaky-2", true).await.is_ok());
    }

    #[tokio::test]
    async fn cut_breaks_after_n_tokens() {
        let fake = Fake::new();
        let ev = collect(fake.send(&req("a b c"), "cut-2", true).await.unwrap()).await;
        assert_eq!(ev.len(), 3);
        assert!(ev[2].is_err());
    }

    #[test]
    fn directives_parse() {
        let s = parse("slow-300+error-429+retry-2+reply=hi_there");
        assert_eq!(s.slow_ms, 300);
        assert_eq!(s.error, Some(429));
        assert_eq!(s.retry_s, Some(2));
        assert_eq!(s.reply.as_deref(), Some("hi there"));
    }
}
