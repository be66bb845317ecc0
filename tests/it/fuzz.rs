//! Fuzzing on stable Rust: every parser that reads bytes from outside gets inputs generated from
//! its format and mutated from valid samples (bit flips, inserted and deleted bytes, splices of two
//! samples, truncation, huge numbers, deep nesting, long strings, invalid UTF-8), and must never
//! panic; where a parser buffers, its buffer must stay under its cap.
//!
//! Each target runs a fixed number of cases here (the whole module in well under 20 s of a debug
//! build). A long campaign: `VOXGATE_FUZZ_CASES=N` runs N cases per target (a target that opens a
//! socket per case runs N / 20); `VOXGATE_FUZZ_SEED=S` changes the seed (default below);
//! `VOXGATE_FUZZ_CASE=I` runs only case I of each target, to reproduce a failure, which prints
//! the target, the seed and the case number, and writes the input to a file.
//! Targets in process: a panic is caught per case. Targets behind a task (vendor sockets, the
//! Twilio call) run on one thread, and a panic on it in any task is counted by a panic hook that
//! passes every panic on to the hook it replaced.
//!
//! The Realtime event parser, the SSE parser, the providers' decoders, the chat request, the
//! config file and `Retry-After` are public and fuzzed here directly; the ledger's fallback file is
//! private to `metering::ledger` and has its own fuzz module there (`fallback::fuzz`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::IntoResponse;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc;

use voxgate::llm::error::{parse_google_duration, parse_retry_after};
use voxgate::llm::providers::http::SseDecoder;
use voxgate::llm::providers::{anthropic, gemini, openai};
use voxgate::llm::sse::{SseEvent, SseParser, MAX_EVENT_BYTES};

#[path = "../../src/test_rng.rs"]
#[allow(dead_code)]
mod test_rng;
use test_rng::Prng;

/// The seed every target derives its cases from, unless `VOXGATE_FUZZ_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5eed_f022_0015;

/// A socket target's cases per in-process target's case in a long campaign.
const SOCKET_TARGET_DIVISOR: usize = 20;

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// How a target runs: its name, its cases in CI, and whether each case opens a socket.
struct Plan {
    name: &'static str,
    ci_cases: usize,
    socket: bool,
}

impl Plan {
    fn cases(&self) -> std::ops::Range<usize> {
        if let Some(only) = env_number("VOXGATE_FUZZ_CASE") {
            return only as usize..only as usize + 1;
        }
        let n = match env_number("VOXGATE_FUZZ_CASES") {
            Some(n) if self.socket => (n as usize / SOCKET_TARGET_DIVISOR).max(1),
            Some(n) => n as usize,
            None => self.ci_cases,
        };
        0..n
    }

    /// The generator of case `i`: the same for the same seed, target and case.
    fn rng(&self, seed: u64, i: usize) -> Prng {
        // FNV-1a over the name, then splitmix64 over everything: distinct streams per target and case.
        let name = self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut z = seed ^ name ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Prng((z ^ (z >> 31)) | 1)
    }
}

thread_local! {
    /// Panics on this thread since the hook was installed (tasks of a current-thread runtime included).
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics per thread, then lets the previous hook print them as before.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

/// Runs `check` on each case's input (made by `input` from the case's generator); the first panic
/// fails the test with what reproduces it. Returns the number of cases run.
fn fuzz(plan: Plan, mut input: impl FnMut(&mut Prng) -> Vec<u8>, mut check: impl FnMut(&mut Prng, &[u8])) -> usize {
    count_panics();
    let seed = env_number("VOXGATE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let started = Instant::now();
    let (mut slowest, mut slowest_case) = (Duration::ZERO, 0);
    let cases = plan.cases();
    let count = cases.len();
    for i in cases {
        let mut rng = plan.rng(seed, i);
        let bytes = input(&mut rng);
        let before = PANICS.with(Cell::get);
        let at = Instant::now();
        let caught = catch_unwind(AssertUnwindSafe(|| check(&mut rng, &bytes)));
        let took = at.elapsed();
        if took > slowest {
            (slowest, slowest_case) = (took, i);
        }
        if caught.is_err() || PANICS.with(Cell::get) != before {
            let path = std::env::temp_dir().join(format!("voxgate-fuzz-{}-{seed:#x}-{i}.bin", plan.name));
            let _ = std::fs::write(&path, &bytes);
            let shown: String = String::from_utf8_lossy(&bytes).chars().take(2_000).collect();
            panic!(
                "fuzz target {} panicked on case {i} (VOXGATE_FUZZ_SEED={seed:#x} VOXGATE_FUZZ_CASE={i}); input ({} bytes) in {}: {shown:?}",
                plan.name,
                bytes.len(),
                path.display()
            );
        }
    }
    // Seen with `--nocapture`: the figures of a campaign.
    println!("fuzz {}: {count} cases in {:.2?} (slowest: case {slowest_case}, {slowest:.2?})", plan.name, started.elapsed());
    count
}

/// A sample mutated most of the time, left valid now and then, or a generated input.
fn mutated(rng: &mut Prng, samples: &[Vec<u8>], tokens: &[&str], generate: impl Fn(&mut Prng) -> Vec<u8>) -> Vec<u8> {
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    match rng.below(16) {
        0 | 1 => generate(rng),
        2 => rng.pick(samples).clone(),
        _ => {
            let mut input = rng.pick(samples).clone();
            rng.mutate(&mut input, &refs, tokens);
            input
        }
    }
}

fn lines(text: &str) -> Vec<Vec<u8>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.as_bytes().to_vec()).collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every line of the recorded sessions whose `type` or `event` is one of `kinds` (or any, when empty).
fn recorded(prefix: &str, field: &str, kinds: &[&str]) -> Vec<Vec<u8>> {
    let dir = format!("{}/fixtures/recordings", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut out = Vec::new();
    for name in names.iter().filter(|n| n.starts_with(prefix)) {
        for line in lines(&read(&format!("fixtures/recordings/{name}"))) {
            let kind = serde_json::from_slice::<Value>(&line).ok().and_then(|v| v[field].as_str().map(str::to_string));
            if kinds.is_empty() || kind.is_some_and(|k| kinds.contains(&k.as_str())) {
                // Long audio payloads make every mutation land in base64: keep them short.
                let mut v: Value = serde_json::from_slice(&line).unwrap();
                for key in ["audio", "delta"] {
                    if let Some(s) = v[key].as_str() {
                        v[key] = Value::String(s.chars().take(64).collect());
                    }
                }
                if let Some(p) = v["media"]["payload"].as_str() {
                    v["media"]["payload"] = Value::String(p.chars().take(64).collect());
                }
                out.push(serde_json::to_vec(&v).unwrap());
            }
        }
    }
    assert!(!out.is_empty(), "no samples for {prefix} {kinds:?}");
    out
}

// ---------------------------------------------------------------------------------------------------
// The SSE parser and the providers' stream decoders
// ---------------------------------------------------------------------------------------------------

const SSE_TOKENS: &[&str] =
    &["data: ", "data:", "event: ", "id: 1", "retry: 10", ": keep-alive", "\n", "\r\n", "\r", "\n\n", "[DONE]", "{", "}", "\"type\""];

fn sse_fixtures() -> Vec<Vec<u8>> {
    ["openai_text_then_tool.sse", "anthropic_text_then_two_tools.sse", "gemini_text_then_call.sse"]
        .iter()
        .map(|f| read(&format!("fixtures/sse/{f}")).into_bytes())
        .collect()
}

/// An SSE stream made of random fields, values and line ends.
fn sse_generated(rng: &mut Prng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.len_up_to(40) {
        let field = *rng.pick(&["data", "data", "event", "id", "retry", "", "dat", "data "]);
        let end = *rng.pick(&["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", ""]);
        let value = match rng.below(4) {
            0 => rng.json(&["type", "delta", "content", "text", "choices", "index"], 3),
            1 => "x".repeat(rng.len_up_to(100_000)),
            _ => "[DONE]".to_string(),
        };
        out.extend(format!("{field}:{}{value}{end}", if rng.one_in(2) { " " } else { "" }).bytes());
    }
    out
}

/// `bytes` cut into pieces of random sizes (one byte to all of it).
fn random_splits<'a>(rng: &mut Prng, bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(16),
            2 => 1 + rng.below(4096),
            _ => rest.len(),
        }
        .min(rest.len());
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
    }
    pieces
}

/// Parses `pieces` in turn: the events, or the first error. Checks the buffer bound after each push.
fn parse_sse(pieces: &[&[u8]]) -> Result<Vec<SseEvent>, String> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for piece in pieces {
        match parser.push(piece) {
            Ok(e) => events.extend(e),
            Err(e) => return Err(e.to_string()),
        }
        assert!(
            parser.buffered_len() <= MAX_EVENT_BYTES,
            "the SSE parser holds {} bytes of an unfinished event (cap {MAX_EVENT_BYTES})",
            parser.buffered_len()
        );
    }
    events.extend(parser.finish());
    Ok(events)
}

#[test]
fn sse_parser_in_random_splits() {
    let samples = sse_fixtures();
    fuzz(
        Plan { name: "sse_parser", ci_cases: 2_000, socket: false },
        |rng| mutated(rng, &samples, SSE_TOKENS, sse_generated),
        |rng, input| {
            let whole = parse_sse(&[input]);
            let pieces = random_splits(rng, input);
            let split = parse_sse(&pieces);
            // Where neither read failed, where the reads were cut changes nothing.
            if let (Ok(whole), Ok(split)) = (&whole, &split) {
                assert_eq!(whole, split, "the events depend on where the stream was split");
            }
        },
    );
}

#[test]
fn sse_parser_holds_at_most_its_cap_of_an_unterminated_line() {
    // A line that never ends, fed a MiB at a time: the parser refuses it once it passes the cap,
    // and never holds more than the cap plus the last read.
    let mut parser = SseParser::new();
    let mib = vec![b'a'; 1 << 20];
    let mut refused = false;
    for _ in 0..8 {
        match parser.push(&mib) {
            Ok(events) => assert!(events.is_empty()),
            Err(_) => {
                refused = true;
                break;
            }
        }
        assert!(parser.buffered_len() <= MAX_EVENT_BYTES, "{} bytes held", parser.buffered_len());
    }
    assert!(refused, "an unterminated line past the cap was not refused");
    // The same for data lines that never end their event.
    let mut parser = SseParser::new();
    let line = format!("data: {}\n", "b".repeat(64 * 1024));
    let refused = (0..100).any(|_| parser.push(line.as_bytes()).is_err() || parser.buffered_len() > MAX_EVENT_BYTES);
    assert!(refused && parser.buffered_len() <= MAX_EVENT_BYTES + line.len(), "{} bytes held", parser.buffered_len());
    // The event's name counts too: a 3 MiB name, then 3 MiB of data, is over the cap.
    let mut parser = SseParser::new();
    let name = format!("event: {}\n", "n".repeat(3 << 20));
    let data = format!("data: {}\n", "d".repeat(3 << 20));
    let held = parser.push(name.as_bytes()).and_then(|_| parser.push(data.as_bytes()));
    assert!(held.is_err() || parser.buffered_len() <= MAX_EVENT_BYTES, "{} bytes held for one event", parser.buffered_len());
}

const DECODER_TOKENS: &[&str] = &[
    "\"choices\"",
    "\"delta\"",
    "\"tool_calls\"",
    "\"index\"",
    "\"finish_reason\"",
    "\"usage\"",
    "\"content_block_start\"",
    "\"content_block_delta\"",
    "\"input_json_delta\"",
    "\"message_delta\"",
    "\"message_stop\"",
    "\"tool_use\"",
    "\"candidates\"",
    "\"functionCall\"",
    "\"usageMetadata\"",
    "\"error\"",
    "null",
    "[]",
    "{}",
    "-1",
    "4294967296",
    "\"\"",
];

/// Runs one provider's decoder over an SSE stream as `decode_sse` does: events in order until the
/// vendor says it is done or one is refused, then `end`.
fn decode(decoder: &mut dyn SseDecoder, events: Vec<SseEvent>) {
    for event in events {
        if decoder.is_done() {
            return;
        }
        if decoder.event(event).is_err() {
            return;
        }
    }
    if !decoder.is_done() {
        let _ = decoder.end();
    }
}

/// A fixture's events with the data of some mutated (the frames stay frames, their JSON breaks).
fn events_mutated(rng: &mut Prng, fixture: &[u8], samples: &[Vec<u8>]) -> Vec<SseEvent> {
    let mut events = parse_sse(&[fixture]).unwrap();
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(events.len());
        let mut data = events[i].data.clone().into_bytes();
        rng.mutate(&mut data, &refs, DECODER_TOKENS);
        events[i].data = String::from_utf8_lossy(&data).into_owned();
    }
    if rng.one_in(4) {
        // Reordered, repeated or missing frames.
        let i = rng.below(events.len());
        let j = rng.below(events.len());
        match rng.below(3) {
            0 => events.swap(i, j),
            1 => {
                let e = events[i].clone();
                events.insert(j, e);
            }
            _ => {
                events.remove(i);
            }
        }
    }
    events
}

#[test]
fn provider_stream_decoders() {
    let fixtures = sse_fixtures();
    let datas: Vec<Vec<u8>> = fixtures.iter().flat_map(|f| parse_sse(&[f]).unwrap()).map(|e| e.data.into_bytes()).collect();
    for (which, fixture) in fixtures.iter().enumerate() {
        let name = ["openai_stream", "anthropic_stream", "gemini_stream"][which];
        fuzz(
            Plan { name, ci_cases: 1_500, socket: false },
            |rng| if rng.one_in(2) { mutated(rng, std::slice::from_ref(fixture), SSE_TOKENS, sse_generated) } else { Vec::new() },
            |rng, input| {
                // Half the cases mutate the stream's bytes, half the JSON of its frames.
                let events = if input.is_empty() {
                    events_mutated(rng, fixture, &datas)
                } else {
                    match parse_sse(&random_splits(rng, input)) {
                        Ok(events) => events,
                        Err(_) => return,
                    }
                };
                match which {
                    0 => decode(&mut openai::StreamDecoder::default(), events),
                    1 => decode(&mut anthropic::StreamDecoder::new(rng.one_in(2)), events),
                    _ => decode(&mut gemini::StreamDecoder::default(), events),
                }
            },
        );
    }
}

/// Whole (non-streaming) answers and error bodies of each vendor.
const ANSWERS: &[&str] = &[
    r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4.1-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#,
    r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"Hi."},{"type":"tool_use","id":"toolu_1","name":"json","input":{"answer":42}}],"stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":2,"cache_creation_input_tokens":1}}"#,
    r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi."},{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,"cachedContentTokenCount":1}}"#,
    r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    r#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"22s"}]}}"#,
    r#"{"error":{"code":400,"message":"prompt is too long: 210000 tokens > 200000 maximum","status":"INVALID_ARGUMENT"}}"#,
];

#[test]
fn provider_answers_and_error_bodies() {
    let samples: Vec<Vec<u8>> = ANSWERS.iter().map(|s| s.as_bytes().to_vec()).collect();
    fuzz(
        Plan { name: "provider_answers", ci_cases: 1_500, socket: false },
        |rng| {
            mutated(rng, &samples, DECODER_TOKENS, |rng| {
                rng.json(&["choices", "message", "content", "candidates", "error"], 4).into_bytes()
            })
        },
        |rng, input| {
            let text = String::from_utf8_lossy(input);
            let status = *rng.pick(&[200u16, 400, 401, 403, 404, 408, 413, 429, 500, 503, 529, 0, 999]);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&input[..input.len().min(40)]) {
                headers.insert("retry-after", v);
            }
            let _ = openai::decode_completion_body(input);
            let _ = openai::parse_error(status, &headers, &text);
            let _ = anthropic::parse_error(status, &headers, &text);
            let _ = gemini::parse_error(status, &headers, &text);
            if let Ok(value) = serde_json::from_slice::<Value>(input) {
                let _ = openai::decode_completion(&value);
                let _ = anthropic::decode_message(&value, rng.one_in(2));
                let _ = gemini::decode_response(&value);
            }
        },
    );
}

/// Found by the long campaign (`provider_answers` case 24273, `anthropic_stream` case 2676): token
/// counts at the end of `u64` overflowed where a vendor's counts are added (Anthropic's input plus
/// its cache reads and writes; Gemini's candidates plus thoughts), a panic in debug builds and a
/// wrapped count in release, and sums over requests and keys could overflow the same way. Each
/// count a vendor reports is now taken up to `USAGE_TOKENS_MAX`.
#[test]
fn token_counts_at_the_end_of_u64_are_capped_not_overflowed() {
    use voxgate::llm::types::{Event, USAGE_TOKENS_MAX};
    const MAX: &str = "18446744073709551615";
    let usages =
        |events: Vec<Event>| events.into_iter().filter_map(|e| if let Event::Usage(u) = e { Some(u) } else { None }).collect::<Vec<_>>();
    let mut seen = Vec::new();
    let caught = catch_unwind(|| {
        let message: Value = serde_json::from_str(&format!(
            r#"{{"type":"message","content":[{{"type":"text","text":"Hi."}}],"stop_reason":"end_turn","usage":{{"input_tokens":{MAX},"output_tokens":{MAX},"cache_read_input_tokens":{MAX},"cache_creation_input_tokens":{MAX}}}}}"#
        ))
        .unwrap();
        let anthropic_whole = usages(anthropic::decode_message(&message, false).unwrap());
        let mut decoder = anthropic::StreamDecoder::new(false);
        let start = format!(
            r#"{{"type":"message_start","message":{{"usage":{{"input_tokens":400,"cache_creation_input_tokens":{MAX},"cache_read_input_tokens":{MAX},"output_tokens":1}}}}}}"#
        );
        let mut anthropic_stream = Vec::new();
        for (event, data) in [
            ("message_start", start.as_str()),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":18446744073709551615}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ] {
            anthropic_stream.extend(decoder.event(SseEvent { event: Some(event.into()), data: data.into() }).unwrap());
        }
        anthropic_stream.extend(decoder.end().unwrap());
        let gemini: Value = serde_json::from_str(&format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":"a"}}]}},"finishReason":"STOP"}}],"usageMetadata":{{"promptTokenCount":{MAX},"candidatesTokenCount":{MAX},"thoughtsTokenCount":{MAX},"cachedContentTokenCount":{MAX}}}}}"#
        ))
        .unwrap();
        let openai: Value = serde_json::from_str(&format!(
            r#"{{"choices":[{{"message":{{"content":"a"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{MAX},"completion_tokens":{MAX},"prompt_tokens_details":{{"cached_tokens":{MAX}}},"completion_tokens_details":{{"reasoning_tokens":{MAX}}}}}}}"#
        ))
        .unwrap();
        let mut all = anthropic_whole;
        all.extend(usages(anthropic_stream));
        all.extend(usages(gemini::decode_response(&gemini).unwrap()));
        all.extend(usages(openai::decode_completion(&openai).unwrap()));
        all.extend(usages(openai::decode_completion_body(openai.to_string().as_bytes()).unwrap()));
        all
    });
    if let Ok(all) = caught {
        seen = all;
    }
    assert_eq!(seen.len(), 5, "a decoder panicked or lost the usage");
    for u in seen {
        // Each count is capped; a count made of several (Anthropic's input) is at most their sum.
        assert!(u.output_tokens <= 2 * USAGE_TOKENS_MAX && u.cached_input_tokens <= USAGE_TOKENS_MAX, "{u:?}");
        assert!(u.input_tokens <= 3 * USAGE_TOKENS_MAX && u.input_tokens >= USAGE_TOKENS_MAX, "{u:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------------------

#[test]
fn retry_after_values() {
    let samples: Vec<Vec<u8>> =
        ["3", "0.5", "120", "Sun, 06 Nov 1994 08:49:37 GMT", "Wed, 21 Oct 2065 07:28:00 GMT", "22s", "1.5s", "0s", " 7 "]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
    let tokens = &["GMT", "Mon,", "Feb", "29", "9999", "1970", "23:59:60", "s", "e9", "NaN", "inf", "-"];
    fuzz(
        Plan { name: "retry_after", ci_cases: 3_000, socket: false },
        |rng| {
            // A header value: hyper refuses a head over 64 KiB long before this parser sees it.
            let mut input = mutated(rng, &samples, tokens, |rng| {
                let day = rng.pick(&["Mon", "Sun", "Xyz"]);
                let month = rng.pick(&["Jan", "Feb", "Dec", "Foo"]);
                format!(
                    "{day}, {:02} {month} {} {:02}:{:02}:{:02} GMT",
                    rng.below(40),
                    rng.below_u64(20_000),
                    rng.below(30),
                    rng.below(70),
                    rng.below(70)
                )
                .into_bytes()
            });
            input.truncate(64 * 1024);
            input
        },
        |_, input| {
            let text = String::from_utf8_lossy(input);
            if let Some(d) = parse_retry_after(&text) {
                // Delta-seconds are capped at a day; a date is as far as it says (the router caps the wait).
                assert!(text.contains("GMT") || d <= Duration::from_secs(86_400), "{text:?} -> {d:?}");
            }
            if let Some(d) = parse_google_duration(&text) {
                assert!(d <= Duration::from_secs(86_400), "{text:?} -> {d:?}");
            }
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(input) {
                headers.insert("retry-after", v);
                let _ = voxgate::llm::providers::http::retry_after(&headers);
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------------
// Client input: Realtime events, the chat request, Twilio frames
// ---------------------------------------------------------------------------------------------------

const REALTIME_CLIENT_EVENTS: &[&str] = &voxgate::transport::realtime::client::CLIENT_EVENT_TYPES;

const REALTIME_TOKENS: &[&str] = &[
    "\"type\"",
    "\"event_id\"",
    "\"session\"",
    "\"audio\"",
    "\"input\"",
    "\"format\"",
    "\"rate\"",
    "\"turn_detection\"",
    "\"item\"",
    "\"content\"",
    "\"item_id\"",
    "\"content_index\"",
    "\"audio_end_ms\"",
    "\"response\"",
    "\"tools\"",
    "\"max_output_tokens\"",
    "\"inf\"",
    "\"audio/pcmu\"",
    "\"function_call_output\"",
    "\"input_text\"",
    "\"server_vad\"",
    "null",
    "[]",
    "{}",
];

fn realtime_samples() -> Vec<Vec<u8>> {
    // The recordings hold what the server sent: its session, items and responses make client events.
    let mut samples = Vec::new();
    for line in recorded("realtime", "type", &["session.created", "conversation.item.added", "response.created"]) {
        let v: Value = serde_json::from_slice(&line).unwrap();
        let event = match v["type"].as_str() {
            Some("session.created") => serde_json::json!({"type": "session.update", "session": v["session"]}),
            Some("conversation.item.added") => serde_json::json!({"type": "conversation.item.create", "item": v["item"]}),
            _ => serde_json::json!({"type": "response.create", "response": v["response"]}),
        };
        samples.push(serde_json::to_vec(&event).unwrap());
    }
    samples.extend(
        [
            r#"{"type":"session.update","event_id":"e1","session":{"type":"realtime","instructions":"Be brief.","output_modalities":["audio"],"audio":{"input":{"format":{"type":"audio/pcm","rate":24000},"turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,"silence_duration_ms":500,"create_response":true,"interrupt_response":true},"transcription":{"model":"fake"}},"output":{"format":{"type":"audio/pcmu"},"voice":"alloy"}},"tools":[{"type":"function","name":"get_weather","description":"d","parameters":{"type":"object"}}],"tool_choice":"auto","max_output_tokens":"inf"}}"#,
            r#"{"type":"input_audio_buffer.append","audio":"AAAAAAAAAAA="}"#,
            r#"{"type":"input_audio_buffer.commit","event_id":"e2"}"#,
            r#"{"type":"input_audio_buffer.clear"}"#,
            r#"{"type":"output_audio_buffer.clear"}"#,
            r#"{"type":"conversation.item.retrieve","item_id":"item_1"}"#,
            r#"{"type":"conversation.item.delete","item_id":"item_1"}"#,
            r#"{"type":"response.cancel","response_id":"resp_1"}"#,
            r#"{"type":"session.update","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcma"},"turn_detection":null}}}}"#,
            r#"{"type":"conversation.item.create","previous_item_id":"root","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}}"#,
            r#"{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"call_1","output":"{\"t\":20}"}}"#,
            r#"{"type":"conversation.item.truncate","item_id":"item_1","content_index":0,"audio_end_ms":1500}"#,
            r#"{"type":"response.create","response":{"instructions":"x","output_modalities":["text"],"max_output_tokens":64,"conversation":"none","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}]}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec()),
    );
    samples
}

#[test]
fn realtime_client_events() {
    use voxgate::audio::AudioFormat;
    use voxgate::transport::realtime::{mapper, parse::parse_client_event};
    let samples = realtime_samples();
    let mut tokens = REALTIME_TOKENS.to_vec();
    let quoted: Vec<String> = REALTIME_CLIENT_EVENTS.iter().map(|t| format!("\"{t}\"")).collect();
    tokens.extend(quoted.iter().map(String::as_str));
    let names: Vec<&str> = REALTIME_CLIENT_EVENTS.iter().chain(REALTIME_TOKENS).copied().collect();
    fuzz(
        Plan { name: "realtime_event", ci_cases: 2_500, socket: false },
        |rng| {
            mutated(rng, &samples, &tokens, |rng| {
                let body = rng.json(&names, 4);
                format!("{{\"type\":\"{}\",\"x\":{body}}}", rng.pick(REALTIME_CLIENT_EVENTS)).into_bytes()
            })
        },
        |rng, input| {
            // A WebSocket text frame is UTF-8 (tungstenite checks).
            let text = String::from_utf8_lossy(input);
            let format = *rng.pick(&[AudioFormat::Pcm16 { rate_hz: 24_000 }, AudioFormat::Pcmu, AudioFormat::Pcma]);
            match parse_client_event(&text) {
                Ok(event) => {
                    if let Err(e) = mapper::command(event, format) {
                        let _ = serde_json::to_string(&e).unwrap();
                    }
                }
                Err(e) => {
                    let error = e.to_server_event();
                    let json = serde_json::to_string(&error).unwrap();
                    // What an error repeats of the client's input is bounded.
                    let limit = 2_000 + e.event_id().map_or(0, str::len);
                    assert!(json.len() <= limit, "an error event of {} bytes for an input of {}", json.len(), input.len());
                }
            }
        },
    );
}

const CHAT_TOKENS: &[&str] = &[
    "\"model\"",
    "\"messages\"",
    "\"role\"",
    "\"content\"",
    "\"system\"",
    "\"user\"",
    "\"assistant\"",
    "\"tool\"",
    "\"tool_calls\"",
    "\"tool_call_id\"",
    "\"tools\"",
    "\"function\"",
    "\"parameters\"",
    "\"stream\"",
    "\"stream_options\"",
    "\"include_usage\"",
    "\"max_tokens\"",
    "\"max_completion_tokens\"",
    "\"temperature\"",
    "\"stop\"",
    "\"response_format\"",
    "\"json_schema\"",
    "\"models\"",
    "\"name\"",
    "\"image_url\"",
    "\"text\"",
    "null",
    "[]",
    "{}",
];

const CHAT_REQUESTS: &[&str] = &[
    r#"{"model":"echo","messages":[{"role":"user","content":"Hello"}]}"#,
    r#"{"model":"fast","models":["a","b"],"stream":true,"stream_options":{"include_usage":true},"max_tokens":64,"temperature":0.2,"stop":["\n"],"messages":[{"role":"system","content":"Be brief."},{"role":"user","name":"ann","content":[{"type":"text","text":"Weather?"}]}]}"#,
    r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"20C"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}}}"#,
    r#"{"model":"m","max_completion_tokens":5,"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"object"},"strict":true}},"messages":[{"role":"developer","content":"json"},{"role":"user","content":"go"}]}"#,
    r#"{"model":"m","response_format":{"type":"json_object"},"tool_choice":"required","messages":[{"role":"user","content":"go"}]}"#,
];

#[test]
fn chat_requests_and_their_vendor_bodies() {
    use voxgate::http::chat::parse_request;
    let samples: Vec<Vec<u8>> = CHAT_REQUESTS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let names: Vec<&str> = CHAT_TOKENS.iter().map(|t| t.trim_matches('"')).collect();
    fuzz(
        Plan { name: "chat_request", ci_cases: 2_000, socket: false },
        |rng| mutated(rng, &samples, CHAT_TOKENS, |rng| rng.json(&names, 5).into_bytes()),
        |_, input| {
            let Ok(request) = parse_request(input) else { return };
            // A request we accept maps onto every vendor's body without a panic.
            let _ = serde_json::to_vec(&openai::RequestBody::new(&request, "gpt-4.1-mini", true));
            let _ = anthropic::request_body(&request, "claude-haiku-4-5", true);
            let _ = gemini::request_body(&request);
        },
    );
}

// ---------------------------------------------------------------------------------------------------
// The config file
// ---------------------------------------------------------------------------------------------------

const CONFIG_TOKENS: &[&str] = &[
    "[providers.x]\n",
    "[[models]]\n",
    "[routes.r]\n",
    "[stt]\n",
    "[tts]\n",
    "[auth]\n",
    "[[auth.keys]]\n",
    "[metering]\n",
    "[realtime]\n",
    "[gateway]\n",
    "[[speech]]\n",
    "kind = \"openai\"\n",
    "kind = \"deepgram\"\n",
    "engines = [\"x\", \"fake\"]\n",
    "models = [\"x\"]\n",
    "api_key = \"env:KEY\"\n",
    "base_url = \"http://127.0.0.1:1\"\n",
    " = ",
    "\"\"\"",
    "'''",
    "1979-05-27T07:32:00Z",
    "inf",
    "nan",
    "0x7fffffffffffffff",
    "9223372036854775808",
    "-1",
    "[[",
    "]]",
];

#[test]
fn config_files() {
    use voxgate::config::Config;
    let mut samples: Vec<Vec<u8>> =
        ["tests/replay/voxgate.toml", "tests/metering/voxgate.toml", "tests/sdk/voxgate.toml", "tests/browser/voxgate.toml"]
            .iter()
            .map(|p| read(p).into_bytes())
            .collect();
    samples.push(
        br#"listen = "127.0.0.1:0"
[providers.fake]
kind = "fake"
[providers.dg]
kind = "deepgram"
api_key = "env:DG"
[providers.el]
kind = "elevenlabs"
api_key = "env:EL"
[[models]]
id = "echo"
provider = "fake"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[routes.voice]
models = ["echo"]
[gateway]
ttft_ms_max = 3000
[stt]
engines = ["dg:nova-3", "fake"]
[tts]
engines = ["el:voice-1", "fake"]
[realtime]
max_sessions = 10
[metering]
usd_per_hour = 4.5
[[auth.keys]]
name = "a"
key = "env:A"
max_sessions = 2
"#
        .to_vec(),
    );
    fuzz(
        Plan { name: "config", ci_cases: 400, socket: false },
        |rng| {
            mutated(rng, &samples, CONFIG_TOKENS, |rng| {
                (0..rng.len_up_to(12)).map(|_| *rng.pick(CONFIG_TOKENS)).collect::<String>().into_bytes()
            })
        },
        |_, input| {
            // The file is read as UTF-8 first: invalid UTF-8 is a read error before any parsing.
            let Ok(text) = std::str::from_utf8(input) else { return };
            let _ = Config::from_toml(text, &|name| (name != "VOXGATE_MODELS_DIR").then(|| "sk-test".to_string()));
        },
    );
}

// ---------------------------------------------------------------------------------------------------
// Speech vendors: the STT messages directly, then every adapter against a fake vendor socket
// ---------------------------------------------------------------------------------------------------

const STT_SAMPLES: &[&str] = &[
    // Deepgram
    r#"{"type":"Results","channel_index":[0,1],"start":1.0,"duration":0.8,"is_final":true,"speech_final":false,"channel":{"alternatives":[{"transcript":"book a","confidence":0.9,"words":[{"word":"book","start":1.02,"end":1.3,"confidence":0.97,"punctuated_word":"Book","speaker":1},{"word":"a","start":1.3,"end":1.41,"confidence":0.62,"speaker":1}]}]}}"#,
    r#"{"type":"Results","is_final":true,"speech_final":true,"channel":{"alternatives":[{"transcript":"","words":[]}]}}"#,
    r#"{"type":"Results","is_final":false,"from_finalize":true,"channel":{"alternatives":[{"words":[{"word":"two","start":0.2,"end":0.4}]}]}}"#,
    r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.1}"#,
    r#"{"type":"SpeechStarted","channel":[0],"timestamp":0.5}"#,
    r#"{"type":"Metadata","request_id":"x"}"#,
    r#"{"type":"Error","description":"bad","variant":"x"}"#,
    // AssemblyAI
    r#"{"type":"Begin","id":"s1","expires_at":1750000000}"#,
    r#"{"type":"Turn","turn_order":0,"end_of_turn":false,"speaker_label":"A","words":[{"text":"book","start":100,"end":300,"confidence":0.9,"word_is_final":true,"speaker":"B"},{"text":"a","start":300,"end":400,"confidence":0.5,"word_is_final":false}]}"#,
    r#"{"type":"Turn","turn_order":0,"end_of_turn":true,"turn_is_formatted":true,"words":[{"text":"Book","start":100,"end":300,"confidence":0.9,"word_is_final":true}]}"#,
    r#"{"type":"Termination","audio_duration_seconds":3}"#,
    r#"{"type":"Error","error":"bad","error_code":3005}"#,
    // OpenAI
    r#"{"type":"transcription_session.created","session":{"id":"s"}}"#,
    r#"{"type":"input_audio_buffer.committed","item_id":"item_1","previous_item_id":null}"#,
    r#"{"type":"conversation.item.input_audio_transcription.delta","item_id":"item_1","content_index":0,"delta":"book a"}"#,
    r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_1","content_index":0,"transcript":"Book a table.","logprobs":[{"token":"Book","logprob":-0.1}]}"#,
    r#"{"type":"error","error":{"type":"invalid_request_error","code":"x","message":"bad"}}"#,
];

const STT_TOKENS: &[&str] = &[
    "\"type\"",
    "\"Results\"",
    "\"Turn\"",
    "\"words\"",
    "\"start\"",
    "\"end\"",
    "\"is_final\"",
    "\"end_of_turn\"",
    "\"turn_order\"",
    "\"speaker\"",
    "\"item_id\"",
    "\"transcript\"",
    "\"conversation.item.input_audio_transcription.completed\"",
    "true",
    "false",
    "null",
    "1.7976931348623157e308",
    "18446744073709551615",
];

fn stt_protocols() -> Vec<(&'static str, Box<dyn Fn(String) -> Box<dyn voxgate::stt::stream::Protocol> + Send + Sync>)> {
    use voxgate::secret::Secret;
    use voxgate::stt::{assemblyai::AssemblyAi, deepgram::Deepgram, openai::OpenAiStt};
    vec![
        (
            "deepgram",
            Box::new(|url| {
                Box::new(Deepgram { base_url: url, api_key: Some(Secret::new("k")), model: "nova-3".into(), diarize: true })
                    as Box<dyn voxgate::stt::stream::Protocol>
            }),
        ),
        ("assemblyai", Box::new(|url| Box::new(AssemblyAi::new(url, Some(Secret::new("k")), "universal-streaming-english".into(), true)))),
        ("openai", Box::new(|url| Box::new(OpenAiStt::new(url, Some(Secret::new("k")), "gpt-4o-transcribe".into())))),
    ]
}

#[test]
fn stt_vendor_messages() {
    let samples: Vec<Vec<u8>> = STT_SAMPLES.iter().map(|s| s.as_bytes().to_vec()).collect();
    let names: Vec<&str> = STT_TOKENS.iter().map(|t| t.trim_matches('"')).collect();
    for (vendor, make) in stt_protocols() {
        let mut protocol = make("http://127.0.0.1:1".into());
        let name = match vendor {
            "deepgram" => "stt_deepgram_message",
            "assemblyai" => "stt_assemblyai_message",
            _ => "stt_openai_message",
        };
        fuzz(
            Plan { name, ci_cases: 1_500, socket: false },
            |rng| mutated(rng, &samples, STT_TOKENS, |rng| rng.json(&names, 4).into_bytes()),
            |rng, input| {
                if rng.one_in(50) {
                    protocol = make("http://127.0.0.1:1".into()); // a new call now and then
                }
                let _ = protocol.read(&String::from_utf8_lossy(input));
            },
        );
    }
}

/// Found while fuzzing the STT adapters: OpenAI's transcription deltas for an item were joined
/// without a bound (a vendor that never completes an item grew it for ever), and each delta split
/// the whole text again. Now an item's text so far stops growing at 64 KiB.
#[test]
fn openai_stt_text_so_far_is_bounded() {
    use voxgate::stt::stream::Heard;
    let mut protocol = stt_protocols().into_iter().find(|(v, _)| *v == "openai").unwrap().1("http://127.0.0.1:1".into());
    protocol.read(r#"{"type":"input_audio_buffer.committed","item_id":"item_1"}"#);
    let delta =
        format!(r#"{{"type":"conversation.item.input_audio_transcription.delta","item_id":"item_1","delta":"{} "}}"#, "word ".repeat(200));
    let mut longest = 0;
    for _ in 0..200 {
        for heard in protocol.read(&delta) {
            if let Heard::Words { words, .. } = heard {
                longest = longest.max(words.iter().map(|w| w.text.len() + 1).sum::<usize>());
            }
        }
    }
    assert!(longest > 0 && longest <= 65 * 1024, "the text so far reached {longest} bytes");
}

/// A fake vendor's socket: what it says, in two parts (after the first message it receives, and
/// after the client's finish or close request), then it closes.
#[derive(Clone, Default)]
struct Script {
    first: Vec<AxMessage>,
    last: Vec<AxMessage>,
    /// Say everything after the client's first message and close (a vendor that keeps a socket
    /// open and says nothing is a deadline's business, not a parser's).
    close_after_first: bool,
}

type ScriptSlot = Arc<Mutex<Script>>;

/// Words that end a client's audio (STT finish and close messages) or its text (TTS flush).
const FINISH_WORDS: &[&str] = &["Finalize", "CloseStream", "ForceEndpoint", "Terminate", "commit", "flush", "Flush", "Close"];

async fn fake_vendor_socket(mut socket: WebSocket, script: Script) {
    if script.close_after_first {
        // Everything at once after the client's first message, then the close.
        let Some(Ok(first)) = socket.recv().await else { return };
        let context_id = match &first {
            AxMessage::Text(t) => serde_json::from_str::<Value>(t.as_str()).ok().and_then(|v| v["context_id"].as_str().map(str::to_string)),
            _ => None,
        }
        .unwrap_or_default();
        for m in script.first.into_iter().chain(script.last) {
            let m = match m {
                AxMessage::Text(t) => AxMessage::Text(t.as_str().replace("CTX", &context_id).into()),
                other => other,
            };
            if socket.send(m).await.is_err() {
                return;
            }
        }
        let _ = socket.send(AxMessage::Close(None)).await;
        return;
    }
    let mut first = Some(script.first);
    let mut context_id = String::new();
    while let Some(Ok(message)) = socket.recv().await {
        if let AxMessage::Text(t) = &message {
            if let Some(id) = serde_json::from_str::<Value>(t.as_str()).ok().and_then(|v| v["context_id"].as_str().map(str::to_string)) {
                context_id = id;
            }
        }
        let fill = |m: AxMessage| match m {
            AxMessage::Text(t) => AxMessage::Text(t.as_str().replace("CTX", &context_id).into()),
            other => other,
        };
        if let Some(first) = first.take() {
            for m in first {
                if socket.send(fill(m)).await.is_err() {
                    return;
                }
            }
        }
        let finishing = match &message {
            AxMessage::Text(t) => FINISH_WORDS.iter().any(|w| t.as_str().contains(w)),
            AxMessage::Close(_) => return,
            _ => false,
        };
        if finishing {
            for m in script.last {
                if socket.send(fill(m)).await.is_err() {
                    return;
                }
            }
            let _ = socket.send(AxMessage::Close(None)).await;
            return;
        }
    }
}

async fn upgrade(ws: WebSocketUpgrade, State(slot): State<ScriptSlot>) -> axum::response::Response {
    let script = slot.lock().unwrap().clone();
    ws.on_upgrade(move |socket| fake_vendor_socket(socket, script)).into_response()
}

/// A fake vendor on loopback answering every WebSocket upgrade (any path) with the script in the slot.
async fn start_fake_vendor() -> (SocketAddr, ScriptSlot) {
    let slot = ScriptSlot::default();
    let router = axum::Router::new().fallback(upgrade).with_state(slot.clone());
    (crate::support::spawn(router).await, slot)
}

/// A single-threaded runtime: every task of a case runs on the test's thread, where the panic
/// hook counts them.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Messages for a fake vendor: samples, some mutated, now and then binary or empty.
fn vendor_messages(rng: &mut Prng, samples: &[Vec<u8>], tokens: &[&str]) -> Vec<AxMessage> {
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    (0..rng.len_up_to(8))
        .map(|_| {
            let mut m = rng.pick(samples).clone();
            if !rng.one_in(3) {
                rng.mutate(&mut m, &refs, tokens);
            }
            if rng.one_in(12) {
                AxMessage::Binary(m.into())
            } else {
                AxMessage::Text(String::from_utf8_lossy(&m).into_owned().into())
            }
        })
        .collect()
}

/// The script as bytes, for the failure report: its messages one a line.
fn script_bytes(script: &Script) -> Vec<u8> {
    let mut out = Vec::new();
    for (part, messages) in [("first", &script.first), ("last", &script.last)] {
        out.extend(format!("-- {part}\n").bytes());
        for m in messages {
            match m {
                AxMessage::Text(t) => out.extend(t.as_bytes()),
                AxMessage::Binary(b) => out.extend(format!("<binary {} bytes>", b.len()).bytes()),
                _ => {}
            }
            out.push(b'\n');
        }
    }
    out
}

#[test]
fn stt_adapters_against_a_fuzzed_vendor() {
    use voxgate::stt::stream::{Limits, VendorStt};
    let rt = runtime();
    let (addr, slot) = rt.block_on(start_fake_vendor());
    let samples: Vec<Vec<u8>> = STT_SAMPLES.iter().map(|s| s.as_bytes().to_vec()).collect();
    let metrics = Arc::new(voxgate::metrics::Metrics::default());
    let limits = Limits { connect: Duration::from_secs(2), stall: Duration::from_millis(300), settle: Duration::from_millis(20) };
    for (vendor, make) in stt_protocols() {
        let make = Arc::new(make);
        let url = format!("http://{addr}");
        let engine = {
            let make = make.clone();
            VendorStt::new(vendor, limits, metrics.clone(), Arc::new(move || make(url.clone())))
        };
        let name = match vendor {
            "deepgram" => "stt_deepgram_socket",
            "assemblyai" => "stt_assemblyai_socket",
            _ => "stt_openai_socket",
        };
        let script = RefCell::new(Script::default());
        let heard = Cell::new(0);
        let cases = fuzz(
            Plan { name, ci_cases: 60, socket: true },
            |rng| {
                // After the finish request: the vendor's final words for it, now and then mutated, then anything.
                let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
                let mut last: Vec<AxMessage> = stt_final_answer(vendor)
                    .iter()
                    .map(|m| {
                        let mut m = m.as_bytes().to_vec();
                        if rng.one_in(4) {
                            rng.mutate(&mut m, &refs, STT_TOKENS);
                        }
                        AxMessage::Text(String::from_utf8_lossy(&m).into_owned().into())
                    })
                    .collect();
                last.extend(vendor_messages(rng, &samples, STT_TOKENS));
                let s = Script { first: vendor_messages(rng, &samples, STT_TOKENS), last, close_after_first: false };
                script.replace(s);
                script_bytes(&script.borrow())
            },
            |rng, _| {
                *slot.lock().unwrap() = script.borrow().clone();
                // An utterance anywhere in the call (up to about a day in): vendor times land on its timeline.
                let start_ms = if rng.one_in(2) { rng.below_u64(5_000) } else { rng.below_u64(100_000_000) };
                let frames = 1 + rng.below(3);
                if rt.block_on(stt_utterance(&engine, start_ms, frames)).is_ok_and(|t| !t.words.is_empty()) {
                    heard.set(heard.get() + 1);
                }
            },
        );
        // The cases reach the transcript, not only the parser's refusals.
        assert!(heard.get() * 20 >= cases, "{name}: {} of {cases} cases made a transcript with words", heard.get());
    }
}

/// What each vendor says to end an utterance with words, after the finish request.
fn stt_final_answer(vendor: &str) -> &'static [&'static str] {
    match vendor {
        "deepgram" => &[
            r#"{"type":"Results","is_final":true,"speech_final":false,"from_finalize":true,"channel":{"alternatives":[{"words":[{"word":"book","start":0.02,"end":0.2,"confidence":0.9,"punctuated_word":"Book","speaker":0}]}]}}"#,
        ],
        "assemblyai" => &[
            r#"{"type":"Turn","turn_order":0,"end_of_turn":true,"words":[{"text":"Book","start":20,"end":200,"confidence":0.9,"word_is_final":true}]}"#,
        ],
        _ => &[
            r#"{"type":"input_audio_buffer.committed","item_id":"item_1","previous_item_id":null}"#,
            r#"{"type":"conversation.item.input_audio_transcription.delta","item_id":"item_1","content_index":0,"delta":"Book"}"#,
            r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_1","content_index":0,"transcript":"Book a table.","logprobs":[{"token":"Book","logprob":-0.1}]}"#,
        ],
    }
}

/// One utterance of `frames` 40 ms frames at `start_ms` in its call, through `engine` to its
/// vendor: the transcript or the engine's error.
async fn stt_utterance(
    engine: &voxgate::stt::stream::VendorStt,
    start_ms: u64,
    frames: usize,
) -> Result<voxgate::stt::Transcript, voxgate::stt::SttError> {
    use voxgate::stt::{SpeechToText, Utterance};
    let (audio_tx, audio) = mpsc::channel(8);
    for _ in 0..frames {
        audio_tx.send(vec![1000i16; 640]).await.unwrap();
    }
    drop(audio_tx);
    let (partials, mut partials_rx) = mpsc::channel(64);
    let utterance = Utterance { start_ms, ordinal: 0, audio, pause: None };
    let call = engine.for_call(&Default::default()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), call.transcribe(utterance, partials)).await;
    while partials_rx.try_recv().is_ok() {}
    drop(call);
    // Let the connection task read what is left and close.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    result.expect("the utterance never ended")
}

/// Found by `stt_adapters_against_a_fuzzed_vendor`: a vendor word timed at the end of `u64`
/// (AssemblyAI sends ms as integers; Deepgram's seconds past `u64` ms saturate to it) overflowed
/// the move onto the session's timeline, a panic in the call's connection task in debug builds
/// (a time near zero in release).
#[test]
fn stt_vendor_times_at_the_end_of_u64_stay_on_the_timeline() {
    use voxgate::stt::stream::{Limits, VendorStt};
    count_panics();
    let rt = runtime();
    let (addr, slot) = rt.block_on(start_fake_vendor());
    let metrics = Arc::new(voxgate::metrics::Metrics::default());
    for (vendor, turn) in [
        (
            "assemblyai",
            r#"{"type":"Turn","turn_order":0,"end_of_turn":true,"words":[{"text":"late","start":18446744073709551615,"end":18446744073709551615,"confidence":0.9,"word_is_final":true}]}"#,
        ),
        (
            "deepgram",
            r#"{"type":"Results","is_final":true,"speech_final":true,"channel":{"alternatives":[{"words":[{"word":"late","start":1e300,"end":1e300,"confidence":0.9}]}]}}"#,
        ),
    ] {
        let make = stt_protocols().into_iter().find(|(v, _)| *v == vendor).unwrap().1;
        let url = format!("http://{addr}");
        let engine = VendorStt::new(vendor, Limits::default(), metrics.clone(), Arc::new(move || make(url.clone())));
        *slot.lock().unwrap() = Script { first: vec![AxMessage::Text(turn.into())], last: Vec::new(), close_after_first: false };
        let before = PANICS.with(Cell::get);
        let heard = rt.block_on(stt_utterance(&engine, 5_000, 2));
        assert_eq!(PANICS.with(Cell::get), before, "{vendor}: a task panicked");
        let transcript = heard.unwrap_or_else(|e| panic!("{vendor}: {e}"));
        assert_eq!(
            transcript.words.iter().map(|w| (w.text.as_str(), w.start_ms, w.end_ms)).collect::<Vec<_>>(),
            [("late", u64::MAX, u64::MAX)]
        );
    }
}

const TTS_TOKENS: &[&str] = &[
    "\"audio\"",
    "\"isFinal\"",
    "\"alignment\"",
    "\"chars\"",
    "\"charStartTimesMs\"",
    "\"charDurationsMs\"",
    "\"type\"",
    "\"chunk\"",
    "\"data\"",
    "\"timestamps\"",
    "\"word_timestamps\"",
    "\"done\"",
    "\"flush_done\"",
    "\"error\"",
    "\"Flushed\"",
    "\"Cleared\"",
    "\"Metadata\"",
    "\"Warning\"",
    "\"context_id\"",
    "\"CTX\"",
    "\"status_code\"",
    "\"AAAA\"",
    "true",
    "null",
    "[]",
];

/// Valid vendor messages (and errors), by adapter; `CTX` is the context id the client sent.
fn tts_samples(kind: &str) -> Vec<&'static str> {
    match kind {
        "elevenlabs" => vec![
            r#"{"audio":"AAAAAAAAAAAAAAAAAAAAAA==","isFinal":null,"alignment":{"chars":["H","i"," ","t","h","e","r","e"],"charStartTimesMs":[0,20,40,60,80,100,120,140],"charDurationsMs":[20,20,20,20,20,20,20,20]}}"#,
            r#"{"audio":"AAAA","isFinal":null,"alignment":{"chars":["!"],"charStartTimesMs":[0],"charsDurationsMs":[20]},"normalizedAlignment":null}"#,
            r#"{"audio":null,"isFinal":null,"alignment":null}"#,
            r#"{"isFinal":true}"#,
            r#"{"message":"bad key","error":"invalid_api_key","code":1008}"#,
        ],
        "cartesia" => vec![
            r#"{"type":"chunk","data":"AAAAAAAAAAAAAAAAAAAAAA==","done":false,"status_code":206,"step_time":1,"context_id":"CTX"}"#,
            r#"{"type":"timestamps","context_id":"CTX","status_code":206,"done":false,"word_timestamps":{"words":["Hi","there!"],"start":[0.0,0.2],"end":[0.2,0.5]}}"#,
            r#"{"type":"flush_done","context_id":"CTX","flush_id":1,"done":false,"status_code":206}"#,
            r#"{"type":"done","done":true,"status_code":206,"context_id":"CTX"}"#,
            r#"{"type":"error","done":true,"title":"Too many requests","message":"Concurrency limit reached","error_code":"rate_limited","status_code":429,"context_id":"CTX"}"#,
        ],
        _ => vec![
            r#"{"type":"Metadata","request_id":"r","model_name":"aura-2-thalia-en","model_version":"1","model_uuid":"u"}"#,
            r#"{"type":"Flushed","sequence_id":0}"#,
            r#"{"type":"Cleared","sequence_id":0}"#,
            r#"{"type":"Warning","description":"w","code":"W"}"#,
            r#"{"type":"Error","description":"bad","code":"E"}"#,
        ],
    }
}

#[test]
fn tts_adapters_against_a_fuzzed_vendor() {
    use voxgate::tts::{Chunk, TtsContext};
    let rt = runtime();
    let (addr, slot) = rt.block_on(start_fake_vendor());
    for kind in ["elevenlabs", "cartesia", "deepgram"] {
        let config = format!(
            "[providers.v]\nkind = \"{kind}\"\nbase_url = \"http://{addr}\"\napi_key = \"env:K\"\n[stt]\nengine = \"none\"\n[tts]\nengines = [\"v\"]\n"
        );
        let config = voxgate::config::Config::from_toml(&config, &|_| Some("key".into())).unwrap();
        let metrics = Arc::new(voxgate::metrics::Metrics::default());
        let engine = voxgate::tts::build(&config.tts, &config.models_dir, &metrics).unwrap().unwrap();
        let mut samples: Vec<Vec<u8>> = tts_samples(kind).iter().map(|s| s.as_bytes().to_vec()).collect();
        samples.extend(tts_samples(if kind == "deepgram" { "elevenlabs" } else { "deepgram" }).iter().map(|s| s.as_bytes().to_vec()));
        let script = RefCell::new(Script::default());
        let spoke = Cell::new(0);
        let cases = fuzz(
            Plan {
                name: ["tts_elevenlabs_socket", "tts_cartesia_socket", "tts_deepgram_socket"]
                    [["elevenlabs", "cartesia", "deepgram"].iter().position(|k| *k == kind).unwrap()],
                ci_cases: 60,
                socket: true,
            },
            |rng| {
                let mut first = vendor_messages(rng, &samples, TTS_TOKENS);
                if kind == "deepgram" && rng.one_in(2) {
                    // Deepgram's audio is binary.
                    first.insert(0, AxMessage::Binary(vec![1u8; 1 + rng.below(999)].into()));
                }
                script.replace(Script { first, last: vendor_messages(rng, &samples, TTS_TOKENS), close_after_first: true });
                script_bytes(&script.borrow())
            },
            |rng, _| {
                *slot.lock().unwrap() = script.borrow().clone();
                let text = *rng.pick(&["Hi there!", "Hello.", "A longer chunk of text to speak, with words."]);
                rt.block_on(async {
                    let (context, guard) = TtsContext::new();
                    let (out, mut heard) = mpsc::channel(256);
                    let chunk = Chunk { text: text.to_string(), voice: None, context };
                    // The adapter's socket task may keep `out`: listen only until the chunk ends.
                    let spoken = engine.speak(chunk, out);
                    let listened = async {
                        tokio::pin!(spoken);
                        loop {
                            tokio::select! {
                                result = &mut spoken => break result,
                                Some(_) = heard.recv() => {}
                            }
                        }
                    };
                    let result = tokio::time::timeout(Duration::from_secs(10), listened).await.expect("the chunk never ended");
                    if result.is_ok() {
                        spoke.set(spoke.get() + 1);
                    }
                    drop(guard);
                    for _ in 0..50 {
                        tokio::task::yield_now().await;
                    }
                });
            },
        );
        assert!(spoke.get() * 20 >= cases, "{kind}: {} of {cases} chunks were spoken to the end", spoke.get());
    }
}

/// What the fake OpenAI speech endpoint answers: a status and a body, or (`endless_mib`) an error
/// body that goes on for that many MiB, counting what it managed to send.
#[derive(Clone, Default)]
struct HttpAnswer {
    status: u16,
    body: Vec<u8>,
    endless_mib: usize,
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

async fn http_answer(State(slot): State<Arc<Mutex<HttpAnswer>>>) -> axum::response::Response {
    let answer = slot.lock().unwrap().clone();
    let status = axum::http::StatusCode::from_u16(answer.status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    if answer.endless_mib > 0 {
        let sent = answer.sent.clone();
        let pieces = futures::stream::iter(0..answer.endless_mib * 16).map(move |_| {
            sent.fetch_add(64 * 1024, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 * 1024]))
        });
        return (status, axum::body::Body::from_stream(pieces)).into_response();
    }
    (status, answer.body).into_response()
}

/// OpenAI's speech endpoint on loopback, answering every request with the answer in the slot; and
/// an OpenAI TTS engine pointed at it.
async fn openai_speech() -> (Arc<Mutex<HttpAnswer>>, Arc<dyn voxgate::tts::TextToSpeech>) {
    let slot = Arc::new(Mutex::new(HttpAnswer::default()));
    let router = axum::Router::new().fallback(http_answer).with_state(slot.clone());
    let addr = crate::support::spawn(router).await;
    let config = format!("[providers.v]\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\napi_key = \"env:K\"\n[stt]\nengine = \"none\"\n[tts]\nengines = [\"v\"]\n");
    let config = voxgate::config::Config::from_toml(&config, &|_| Some("key".into())).unwrap();
    let metrics = Arc::new(voxgate::metrics::Metrics::default());
    (slot, voxgate::tts::build(&config.tts, &config.models_dir, &metrics).unwrap().unwrap())
}

/// Speaks "Hello." through `engine`, listening to what it makes: its result.
async fn speak_once(engine: &dyn voxgate::tts::TextToSpeech) -> Result<(), voxgate::tts::TtsError> {
    let (context, _guard) = voxgate::tts::TtsContext::new();
    let (out, mut heard) = mpsc::channel(256);
    let spoken = engine.speak(voxgate::tts::Chunk { text: "Hello.".into(), voice: None, context }, out);
    let listened = async {
        tokio::pin!(spoken);
        loop {
            tokio::select! {
                result = &mut spoken => break result,
                Some(_) = heard.recv() => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), listened).await.expect("the chunk never ended")
}

#[test]
fn tts_openai_against_a_fuzzed_vendor() {
    let rt = runtime();
    let (slot, engine) = rt.block_on(openai_speech());
    let samples: Vec<Vec<u8>> = [
        r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        r#"{"error":{"message":"Invalid voice","type":"invalid_request_error","param":"voice","code":null}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let pcm: Vec<u8> = (0..4801u32).map(|i| (i * 7) as u8).collect(); // an odd length: half a sample at the end
    fuzz(
        Plan { name: "tts_openai_http", ci_cases: 200, socket: true },
        |rng| {
            if rng.one_in(3) {
                let mut body = pcm[..rng.below(pcm.len() + 1)].to_vec();
                body.insert(0, 200); // the status
                body
            } else {
                let mut body = mutated(rng, &samples, TTS_TOKENS, |rng| rng.json(&["error", "message", "code", "type"], 3).into_bytes());
                body.insert(0, *rng.pick(&[b'4', b'5', 0, 255]));
                body
            }
        },
        |_, input| {
            let status = match input[0] {
                200 => 200,
                b'4' => 429,
                b'5' => 503,
                0 => 401,
                _ => 400,
            };
            *slot.lock().unwrap() = HttpAnswer { status, body: input[1..].to_vec(), ..HttpAnswer::default() };
            let result = rt.block_on(speak_once(engine.as_ref()));
            assert_eq!(result.is_ok(), status == 200, "{result:?}");
        },
    );
}

/// Found while fuzzing the OpenAI speech adapter: an error answer's body was read whole into memory,
/// however long; one that never ends was read for ever. Now at most 64 KiB of it is read.
#[test]
fn tts_openai_reads_at_most_the_start_of_an_error_body() {
    let rt = runtime();
    let (slot, engine) = rt.block_on(openai_speech());
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    *slot.lock().unwrap() = HttpAnswer { status: 500, body: Vec::new(), endless_mib: 256, sent: sent.clone() };
    let result = rt.block_on(speak_once(engine.as_ref()));
    assert!(result.is_err());
    // Loopback socket buffers take some MiB before the server sees the client go; far less than all.
    let sent_mib = sent.load(std::sync::atomic::Ordering::Relaxed) >> 20;
    assert!(sent_mib < 64, "{sent_mib} MiB of a 256 MiB error body were read");
}

// ---------------------------------------------------------------------------------------------------
// Twilio Media Streams: a whole call through `twilio::serve`, on an in-memory socket
// ---------------------------------------------------------------------------------------------------

/// A socket that yields `incoming` and then ends (the caller hung up), and swallows what is sent.
struct MemorySocket {
    incoming: std::collections::VecDeque<AxMessage>,
}

impl futures::Stream for MemorySocket {
    type Item = Result<AxMessage, std::io::Error>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.incoming.pop_front().map(Ok))
    }
}

impl futures::Sink<AxMessage> for MemorySocket {
    type Error = std::io::Error;
    fn poll_ready(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn start_send(self: std::pin::Pin<&mut Self>, _: AxMessage) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

const TWILIO_TOKENS: &[&str] = &[
    "\"event\"",
    "\"connected\"",
    "\"start\"",
    "\"media\"",
    "\"dtmf\"",
    "\"mark\"",
    "\"stop\"",
    "\"streamSid\"",
    "\"MZ1\"",
    "\"payload\"",
    "\"track\"",
    "\"digit\"",
    "\"name\"",
    "\"voxgate-1\"",
    "\"voxgate-18446744073709551616\"",
    "\"customParameters\"",
    "\"mediaFormat\"",
    "\"sampleRate\"",
    "null",
    "{}",
];

/// A call's frames: the recorded call's opening (`connected`, `start` with the call's parameters),
/// its media, marks, a keypad digit and `stop`, some mutated, some dropped or repeated.
fn twilio_frames(rng: &mut Prng, samples: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let start = format!(
        r#"{{"event":"start","sequenceNumber":"1","start":{{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{"model":"echo","voice":"fake"}}}},"streamSid":"MZ1"}}"#
    );
    let mut frames = vec![br#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_vec(), start.into_bytes()];
    for _ in 0..rng.len_up_to(12) {
        frames.push(rng.pick(samples).clone());
    }
    if rng.one_in(2) {
        frames.push(br#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#.to_vec());
    }
    if rng.one_in(2) {
        frames.push(br#"{"event":"stop","sequenceNumber":"9","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#.to_vec());
    }
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(frames.len());
        match rng.below(8) {
            0 => {
                frames.remove(i);
            }
            1 => {
                let f = frames[i].clone();
                frames.insert(rng.below(frames.len()), f);
            }
            _ => rng.mutate(&mut frames[i], &refs, TWILIO_TOKENS),
        }
    }
    frames
}

#[test]
fn twilio_calls() {
    use voxgate::session::{SessionStart, VoiceEngines};
    use voxgate::transport::twilio;
    let samples = recorded("twilio", "event", &["media", "mark", "dtmf", "stop", "connected", "start"]);
    let config = format!("{}[stt]\nengine = \"none\"\n[tts]\nengine = \"fake\"\n", crate::support::FAKE_ECHO);
    let config = voxgate::config::Config::from_toml(&config, &|_| None).unwrap();
    let rt = runtime();
    let engines = rt.block_on(async {
        let gateway = Arc::new(voxgate::llm::router::Gateway::new(&config).unwrap());
        Arc::new(VoiceEngines::from_config(&config, gateway).unwrap())
    });
    let frames = RefCell::new(Vec::new());
    let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cases = fuzz(
        Plan { name: "twilio_call", ci_cases: 1_000, socket: true },
        |rng| {
            frames.replace(twilio_frames(rng, &samples));
            frames.borrow().join(&b'\n')
        },
        |rng, _| {
            let incoming = frames
                .borrow()
                .iter()
                .map(|f| {
                    if rng.one_in(40) {
                        AxMessage::Binary(f.clone().into())
                    } else {
                        AxMessage::Text(String::from_utf8_lossy(f).into_owned().into())
                    }
                })
                .collect();
            let socket = MemorySocket { incoming };
            let admitted = admitted.clone();
            let admit: twilio::Admit = Arc::new(move |params: HashMap<String, String>| {
                admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Box::pin(async move {
                    let route = params.get("model").cloned().unwrap_or_else(|| "echo".into());
                    if route != "echo" {
                        return Err(format!("no route {route:?}"));
                    }
                    let session = SessionStart { session_id: "sess_fuzz".into(), route, key: "fuzz".into(), limits: None };
                    Ok(twilio::Admitted { session, meter: None })
                })
            });
            rt.block_on(async {
                let call = twilio::serve(socket, engines.clone(), admit, tokio_util::sync::CancellationToken::new());
                assert!(tokio::time::timeout(Duration::from_secs(30), call).await.is_ok(), "the call never ended");
            });
        },
    );
    // The cases reach a session, not only the refusals of a bad opening.
    let admitted = admitted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(admitted * 4 >= cases, "{admitted} of {cases} calls were admitted");
}

// ---------------------------------------------------------------------------------------------------
// The ledger's fallback file (fuzzed in `metering::ledger::fallback::fuzz`; here its regression
// through `Ledger::open`)
// ---------------------------------------------------------------------------------------------------

/// Found by `fallback::fuzz`: a fallback file torn inside a multi-byte character (a crash mid-write
/// of a key name like `clé`) was not UTF-8, so its whole import failed and the ledger, and with it
/// the server, would not open. Now the torn line is skipped and counted, and the others imported.
#[test]
fn a_fallback_file_torn_inside_a_character_still_opens_the_ledger() {
    use voxgate::metering::{Ledger, LedgerOptions, ManualClock};
    let dir = crate::support::temp_dir("fuzz-fallback-torn");
    let session = r#"{"session":{"id":"sess_clé","key_id":"clé","protocol":"realtime","started_ms":1772409598000,"ended_ms":1772409600000,"checkpoint_ms":1772409600000,"billed_seconds":2,"rate_microusd_per_hour":4500000,"amount":9000000,"close_reason":"client_closed","input_tokens":0,"output_tokens":0,"cached_tokens":0,"token_cost_picousd":0,"stt_audio_ms":0,"tts_chars":0,"turns":0}}"#;
    let cut = session.find('é').unwrap() + 1;
    let mut file = session.as_bytes()[..cut].to_vec(); // torn between the two bytes of "é"
    file.push(b'\n');
    file.extend(session.replace("sess_clé", "sess_whole").as_bytes());
    file.push(b'\n');
    std::fs::write(dir.join("ledger.fallback.jsonl"), &file).unwrap();
    runtime().block_on(async {
        let options = LedgerOptions {
            path: dir.join("ledger.sqlite"),
            fallback_path: dir.join("ledger.fallback.jsonl"),
            checkpoint_every: Duration::from_secs(3600),
            clock: Arc::new(ManualClock::new(1_772_409_700_000)),
        };
        let (ledger, report) = Ledger::open_with(options).await.expect("the ledger opens");
        assert_eq!((report.imported_sessions, report.fallback_unreadable_lines), (1, 1));
        assert_eq!(ledger.session("sess_whole").await.unwrap().unwrap().billed_seconds, 2);
        ledger.shutdown().await;
    });
}
