//! Wire recordings: scripted sessions over a real WebSocket (`/v1/realtime` and `/v1/phone/twilio` on
//! loopback, fake STT, TTS and LLM, paused time), every server message written down and compared
//! with `fixtures/recordings/<scenario>.jsonl`. A change to the session that only moves code must
//! leave these files unchanged, byte for byte, apart from what is normalised (see [`Normaliser`]).
//!
//! `VOXGATE_RECORD=1` writes the recordings instead of comparing. Every run also leaves what it saw in
//! `$CARGO_TARGET_TMPDIR/wire_recording/`, to diff whole sequences after a mismatch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::{start_voxgate, vendors, Recorder, FAKE_ECHO};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Spoken in the first turn (first line of the fake STT's script).
const TURN1: &str = "table_booking";
/// Spoken in the second turn, and to barge in.
const TURN2: &str = "opening_hours";

// ---------------------------------------------------------------------------------------------------
// Recordings
// ---------------------------------------------------------------------------------------------------

/// Id prefixes the server draws at random: each id becomes `<prefix><n>` numbered by first
/// appearance in the scenario, so which message refers to which item is still compared.
const ID_PREFIXES: [&str; 5] = ["event_", "item_", "resp_", "sess_", "call_"];
/// Length of the random part of those ids (`voxgate::llm::ids::random_suffix`).
const ID_SUFFIX_CHARS: usize = 24;
/// Fields read from the wall clock (`response.voxgate.meter`: billed from the session's opening by
/// the ledger's clock), not from tokio's paused one: their values are replaced by `"<wall clock>"`.
const WALL_CLOCK_FIELDS: [&str; 2] = ["billed_seconds", "amount_usd"];

/// Rewrites a server message's text so two runs of the same scenario give the same bytes. Works on
/// the text itself, not on parsed JSON, so key order and number formatting are compared too.
#[derive(Default)]
struct Normaliser {
    ids: HashMap<String, String>,
    counts: HashMap<&'static str, usize>,
}

impl Normaliser {
    fn normalise(&mut self, text: &str) -> String {
        let text = self.stable_ids(text);
        WALL_CLOCK_FIELDS.iter().fold(text, |t, field| mask_field(&t, field))
    }

    fn stable_ids(&mut self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        'scan: while i < bytes.len() {
            let at_word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            if at_word_start {
                for prefix in ID_PREFIXES {
                    if !text[i..].starts_with(prefix) {
                        continue;
                    }
                    let start = i + prefix.len();
                    let n = bytes[start..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
                    let ends_word = bytes.get(start + n).is_none_or(|b| *b != b'_');
                    if n == ID_SUFFIX_CHARS && ends_word {
                        let id = &text[i..start + n];
                        let stable = match self.ids.get(id) {
                            Some(s) => s.clone(),
                            None => {
                                let k = self.counts.entry(prefix).or_insert(0);
                                *k += 1;
                                let s = format!("{prefix}<{k}>");
                                self.ids.insert(id.to_string(), s.clone());
                                s
                            }
                        };
                        out.push_str(&stable);
                        i = start + n;
                        continue 'scan;
                    }
                }
            }
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
        out
    }
}

/// Replaces the value of every `"field":` in compact JSON text by `"<wall clock>"`.
fn mask_field(text: &str, field: &str) -> String {
    let key = format!("\"{field}\":");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&key) {
        let value_start = at + key.len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let len = match value.strip_prefix('"') {
            // A string: up to its closing quote (not an escaped one).
            Some(inner) => {
                let mut escaped = false;
                inner
                    .char_indices()
                    .find(|&(_, c)| {
                        let end = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        end
                    })
                    .map_or(value.len(), |(k, _)| k + 2)
            }
            None => value.find([',', '}', ']']).unwrap_or(value.len()),
        };
        out.push_str("\"<wall clock>\"");
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

/// What one scenario's server said, normalised, in order.
struct Recording {
    scenario: &'static str,
    normaliser: Normaliser,
    lines: Vec<String>,
    finished: bool,
}

impl Drop for Recording {
    /// A scenario that failed before its end still leaves what it saw, for diagnosis.
    fn drop(&mut self) {
        if !self.finished {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wire_recording");
            let _ = std::fs::create_dir_all(&dir);
            let body: String = self.lines.iter().map(|l| format!("{l}\n")).collect();
            let _ = std::fs::write(dir.join(format!("{}.unfinished.jsonl", self.scenario)), body);
        }
    }
}

impl Recording {
    fn new(scenario: &'static str) -> Recording {
        Recording { scenario, normaliser: Normaliser::default(), lines: Vec::new(), finished: false }
    }

    fn text(&mut self, raw: &str) {
        let line = self.normaliser.normalise(raw);
        assert!(!line.contains('\n'), "{}: a server message spans lines: {raw:?}", self.scenario);
        self.lines.push(line);
    }

    fn binary(&mut self, bytes: &[u8]) {
        self.lines.push(json!({"_binary": B64.encode(bytes)}).to_string());
    }

    fn close(&mut self, frame: Option<(u16, String)>) {
        let line = match frame {
            Some((code, reason)) => json!({"_close": {"code": code, "reason": self.normaliser.normalise(&reason)}}),
            None => json!({"_close": null}),
        };
        self.lines.push(line.to_string());
    }

    /// A line that is not a server message: what a fake upstream received, say.
    fn note(&mut self, value: Value) {
        let line = self.normaliser.normalise(&value.to_string());
        self.lines.push(line);
    }

    /// Writes the recording (`VOXGATE_RECORD=1`) or compares it with the stored one.
    fn finish(mut self) {
        self.finished = true;
        let body: String = self.lines.iter().map(|l| format!("{l}\n")).collect();
        let seen_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wire_recording");
        std::fs::create_dir_all(&seen_dir).unwrap();
        std::fs::write(seen_dir.join(format!("{}.jsonl", self.scenario)), &body).unwrap();

        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/recordings");
        let path = dir.join(format!("{}.jsonl", self.scenario));
        if std::env::var_os("VOXGATE_RECORD").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &body).unwrap();
            eprintln!("{}: recorded {} messages to {}", self.scenario, self.lines.len(), path.display());
            return;
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; record it with VOXGATE_RECORD=1", path.display()));
        let expected: Vec<&str> = stored.lines().collect();
        if let Some(report) = first_difference(&expected, &self.lines) {
            panic!(
                "{}: the wire output differs from {}\n{report}\n(whole sequence seen: {})",
                self.scenario,
                path.display(),
                seen_dir.join(format!("{}.jsonl", self.scenario)).display()
            );
        }
    }
}

/// The first message that differs, with the messages before it and where inside it they part.
fn first_difference(expected: &[&str], got: &[String]) -> Option<String> {
    let k = (0..expected.len().max(got.len())).find(|&k| expected.get(k).copied() != got.get(k).map(String::as_str))?;
    let kind = |line: Option<&str>| -> String {
        let Some(line) = line else { return "(nothing)".into() };
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        v.get("type").or(v.get("event")).and_then(Value::as_str).map_or_else(|| shorten(line, 60), str::to_string)
    };
    let mut report = format!("message {k} of {} recorded, {} seen now\n", expected.len(), got.len());
    let from = k.saturating_sub(3);
    for j in from..k {
        report.push_str(&format!("  (same) #{j} {}\n", kind(expected.get(j).copied())));
    }
    let (old, new) = (expected.get(k).copied(), got.get(k).map(String::as_str));
    report.push_str(&format!("  recorded #{k}: {}\n", old.map_or("(end of recording)".into(), |l| shorten(l, 2_000))));
    report.push_str(&format!("  seen     #{k}: {}\n", new.map_or("(end of session)".into(), |l| shorten(l, 2_000))));
    if let (Some(old), Some(new)) = (old, new) {
        if let (Ok(a), Ok(b)) = (serde_json::from_str::<Value>(old), serde_json::from_str::<Value>(new)) {
            match json_difference(&a, &b, "$") {
                Some(at) => report.push_str(&format!("  first difference inside: {at}\n")),
                None => report.push_str("  same JSON value, different text (key order or number format)\n"),
            }
        }
    }
    let next_types = |lines: Vec<Option<&str>>| lines.into_iter().map(kind).collect::<Vec<_>>().join(", ");
    report.push_str(&format!(
        "  recorded next: {}\n  seen next:     {}",
        next_types((k + 1..(k + 6).min(expected.len())).map(|j| expected.get(j).copied()).collect()),
        next_types((k + 1..(k + 6).min(got.len())).map(|j| got.get(j).map(String::as_str)).collect()),
    ));
    Some(report)
}

fn json_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = json_difference(v, w, &format!("{at}.{k}")) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{at}.{k}: recorded {}, now absent", shorten(&v.to_string(), 200))),
                }
            }
            y.iter()
                .find(|(k, _)| !x.contains_key(*k))
                .map(|(k, w)| format!("{at}.{k}: absent in the recording, now {}", shorten(&w.to_string(), 200)))
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if let Some(d) = json_difference(v, w, &format!("{at}[{i}]")) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| format!("{at}: {} elements recorded, {} now", x.len(), y.len()))
        }
        (Value::String(x), Value::String(y)) if x != y => {
            // Long strings (audio) differ somewhere in the middle: show where, with context.
            let k = x.chars().zip(y.chars()).take_while(|(c, d)| c == d).count();
            let around = |s: &str| s.chars().skip(k.saturating_sub(20)).take(60).collect::<String>();
            Some(format!(
                "{at}: strings part at character {k} (recorded {} chars, now {}): recorded …{:?}…, now …{:?}…",
                x.chars().count(),
                y.chars().count(),
                around(x),
                around(y)
            ))
        }
        _ => (a != b).then(|| format!("{at}: recorded {}, now {}", shorten(&a.to_string(), 300), shorten(&b.to_string(), 300))),
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

// ---------------------------------------------------------------------------------------------------
// Fixture audio (done here, not with the library's codecs, so the file compiles on either side of a
// move of those)
// ---------------------------------------------------------------------------------------------------

fn fixture_pcm16k(stem: &str) -> Vec<i16> {
    let path = format!("{}/fixtures/audio/{stem}.wav", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(reader.spec().sample_rate, 16_000, "{path}");
    reader.samples::<i16>().map(|s| s.unwrap()).collect()
}

/// 16 kHz to 24 kHz by linear interpolation (integer arithmetic: the same samples on every machine).
fn upsample_24k(pcm16k: &[i16]) -> Vec<i16> {
    let n_out = pcm16k.len() * 3 / 2;
    (0..n_out)
        .map(|n| {
            let (i, frac) = ((n * 2) / 3, (n * 2) % 3);
            let a = i32::from(pcm16k[i]);
            let b = i32::from(*pcm16k.get(i + 1).unwrap_or(&pcm16k[i]));
            (a + (b - a) * frac as i32 / 3) as i16
        })
        .collect()
}

/// 16 kHz to 8 kHz: the mean of each pair.
fn downsample_8k(pcm16k: &[i16]) -> Vec<i16> {
    pcm16k.chunks(2).map(|p| ((i32::from(p[0]) + i32::from(*p.get(1).unwrap_or(&p[0]))) / 2) as i16).collect()
}

/// G.711 μ-law.
fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// A fixture as 24 kHz PCM16 (the Realtime API's `audio/pcm`) with trailing silence.
fn pcm24(stem: &str, trailing_silence_ms: usize) -> Vec<i16> {
    let mut out = upsample_24k(&fixture_pcm16k(stem));
    out.extend(std::iter::repeat_n(0, trailing_silence_ms * 24));
    out
}

/// A fixture as a phone line carries it: μ-law at 8 kHz in 20 ms (160-byte) frames.
fn ulaw_frames(stem: &str, trailing_silence_ms: usize) -> Vec<Vec<u8>> {
    let mut pcm8k = downsample_8k(&fixture_pcm16k(stem));
    pcm8k.extend(std::iter::repeat_n(0, trailing_silence_ms * 8));
    let bytes: Vec<u8> = pcm8k.into_iter().map(ulaw).collect();
    bytes.chunks(160).map(<[u8]>::to_vec).collect()
}

// ---------------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------------

/// Fake engines and the in-process fake provider only (nothing over the network but the client's
/// socket), as `tests/it/realtime_session.rs` configures them.
fn config(extra: &str) -> String {
    format!(
        r#"
{FAKE_ECHO}[[models]]
id = "echo-tool"
provider = "fake"
upstream = "tool"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[routes.voice]
models = ["echo"]
[routes.phone]
models = ["echo"]
[stt]
engine = "fake"
script = ["fixtures/audio/{TURN1}.json", "fixtures/audio/{TURN2}.json"]
latency_ms = 40
[tts]
engine = "fake"
ttfb_ms = 25
ms_per_char = 20
{extra}
"#
    )
}

async fn start(extra: &str) -> String {
    start_voxgate(&config(extra), &[]).await.0
}

async fn open(url: String) -> Ws {
    // TCP_NODELAY: small frames must not wait on Nagle (real time) while the test's clock is paused.
    tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects").0
}

// ---------------------------------------------------------------------------------------------------
// A recording Realtime client
// ---------------------------------------------------------------------------------------------------

struct Realtime {
    ws: Ws,
    rec: Recording,
}

impl Realtime {
    async fn connect(base: &str, model: &str, scenario: &'static str) -> Realtime {
        let ws = open(format!("{}/v1/realtime?model={model}", base.replace("http://", "ws://"))).await;
        Realtime { ws, rec: Recording::new(scenario) }
    }

    async fn send(&mut self, event: Value) {
        self.send_text(event.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Appends audio in 100 ms events at real time (paused: the clock moves only when the server
    /// is idle), as a client streaming from a microphone does. Sent in a burst instead, the fake
    /// STT's partials race the session's reading of the burst, and the deltas differ run to run.
    async fn append_pcm(&mut self, pcm24: &[i16]) {
        for chunk in pcm24.chunks(2_400) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            self.send(json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)})).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next message within `wait` (paused time), recorded; `None` when none came.
    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("{}: the socket ended", self.rec.scenario),
                Ok(Some(m)) => m.expect("frame"),
            };
            match msg {
                Message::Text(t) => {
                    self.rec.text(&t);
                    return Some(serde_json::from_str(&t).expect("server events are JSON"));
                }
                Message::Binary(b) => self.rec.binary(&b),
                Message::Close(c) => {
                    self.rec.close(c.map(|f| (u16::from(f.code), f.reason.to_string())));
                    panic!("{}: the server closed the socket", self.rec.scenario);
                }
                _ => continue,
            }
        }
    }

    /// The next message (a minute without one, in paused time, is a hang).
    async fn next(&mut self) -> Value {
        match self.next_within(Duration::from_secs(60)).await {
            Some(v) => v,
            None => panic!("{}: no event within 60 s", self.rec.scenario),
        }
    }

    /// Messages up to and including the first of type `until`.
    async fn until(&mut self, until: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let done = e["type"] == until;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    /// Everything the server still says before it is quiet for `quiet` (paused time).
    async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(e) = self.next_within(quiet).await {
            seen.push(e);
        }
        seen
    }

    async fn finish(mut self) {
        self.drain(Duration::from_secs(3)).await;
        self.rec.finish();
    }
}

fn of<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

fn user_text(text: &str) -> Value {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}})
}

// ---------------------------------------------------------------------------------------------------
// Realtime scenarios
// ---------------------------------------------------------------------------------------------------

/// A spoken turn with server VAD: speech started and stopped, committed, transcription deltas and
/// completion, then the spoken answer to its end.
#[tokio::test(start_paused = true)]
async fn realtime_voice_turn() {
    let base = start("").await;
    let mut c = Realtime::connect(&base, "voice", "realtime_voice_turn").await;
    c.next().await;
    c.send(json!({"type": "session.update", "event_id": "su1", "session": {"type": "realtime", "instructions": "Be brief."}})).await;
    c.next().await;
    c.append_pcm(&pcm24(TURN1, 1_000)).await;
    c.until("response.done").await;
    c.until("output_audio_buffer.stopped").await;
    c.finish().await;
}

/// The caller talks over the answer: cleared, truncated, the response cancelled; then the second
/// turn's own answer.
#[tokio::test(start_paused = true)]
async fn realtime_barge_in() {
    let base = start("").await;
    let mut c = Realtime::connect(&base, "voice", "realtime_barge_in").await;
    c.next().await;
    // No silence after the fixture's own 700 ms: the answer starts inside that tail and is still
    // playing when the barge-in's speech starts.
    c.append_pcm(&pcm24(TURN1, 0)).await;
    c.until("response.output_audio.delta").await;
    // Let some of the answer play.
    for _ in 0..10 {
        c.next().await;
    }
    c.append_pcm(&pcm24(TURN2, 1_000)).await;
    let events = c.until("response.done").await;
    assert_eq!(events.last().unwrap()["response"]["status"], "cancelled");
    let events = c.until("response.done").await;
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
    c.until("output_audio_buffer.stopped").await;
    c.finish().await;
}

/// Text in, text out: a response asked for in text on an audio session, then a session switched to
/// text; the items read back and deleted.
#[tokio::test(start_paused = true)]
async fn realtime_text() {
    let base = start("").await;
    let mut c = Realtime::connect(&base, "voice", "realtime_text").await;
    c.next().await;
    c.send(user_text("table for two")).await;
    let added = c.until("conversation.item.done").await;
    let user_item = added.last().unwrap()["item"]["id"].as_str().unwrap().to_string();
    c.send(json!({"type": "response.create", "event_id": "rc1", "response": {"output_modalities": ["text"], "metadata": {"turn": "1"}}}))
        .await;
    c.until("response.done").await;

    c.send(json!({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}})).await;
    c.next().await;
    c.send(user_text("and a window seat, please")).await;
    c.until("conversation.item.done").await;
    c.send(json!({"type": "response.create"})).await;
    let events = c.until("response.done").await;
    let answer = events.last().unwrap()["response"]["output"][0]["id"].as_str().unwrap().to_string();

    c.send(json!({"type": "conversation.item.retrieve", "event_id": "r1", "item_id": answer})).await;
    c.next().await;
    c.send(json!({"type": "conversation.item.delete", "event_id": "d1", "item_id": user_item})).await;
    c.next().await;
    c.send(json!({"type": "conversation.item.retrieve", "event_id": "r2", "item_id": user_item})).await;
    c.next().await;
    c.send(json!({"type": "conversation.item.delete", "event_id": "d2", "item_id": user_item})).await;
    c.next().await;
    c.finish().await;
}

/// A function call from the model, the client's output for it, and the spoken answer after it.
#[tokio::test(start_paused = true)]
async fn realtime_tool_call() {
    let base = start("").await;
    let mut c = Realtime::connect(&base, "echo-tool", "realtime_tool_call").await;
    c.next().await;
    let tool = json!({"type": "function", "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
    c.send(json!({"type": "session.update", "session": {"type": "realtime", "tools": [tool], "tool_choice": "auto"}})).await;
    c.next().await;
    c.send(user_text("Weather in Paris?")).await;
    c.until("conversation.item.done").await;
    c.send(json!({"type": "response.create"})).await;
    let events = c.until("response.done").await;
    let done = of(&events, "response.function_call_arguments.done")[0];
    let call_id = done["call_id"].as_str().unwrap().to_string();

    // The client runs the tool; the answer comes from a model that speaks.
    c.send(json!({"type": "session.update", "session": {"type": "realtime", "model": "echo"}})).await;
    c.next().await;
    c.send(json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": "{\"temp_c\": 18}"}}))
        .await;
    c.until("conversation.item.done").await;
    c.send(json!({"type": "response.create", "response": {"instructions": "Answer from the tool result."}})).await;
    c.until("response.done").await;
    c.until("output_audio_buffer.stopped").await;
    c.finish().await;
}

/// Turn detection off: the client commits (an empty buffer is refused), clears, commits again and
/// asks for the response itself.
#[tokio::test(start_paused = true)]
async fn realtime_manual_commit() {
    let base = start("").await;
    let mut c = Realtime::connect(&base, "voice", "realtime_manual_commit").await;
    c.next().await;
    c.send(
        json!({"type": "session.update", "event_id": "su1", "session": {"type": "realtime", "audio": {"input": {"turn_detection": null}}}}),
    )
    .await;
    c.next().await;
    c.send(json!({"type": "input_audio_buffer.commit", "event_id": "c0"})).await;
    c.next().await;
    // Some audio, then cleared: the commit after it holds only what came after the clear.
    c.append_pcm(&pcm24(TURN2, 0)[..24_000]).await;
    c.send(json!({"type": "input_audio_buffer.clear", "event_id": "clr"})).await;
    c.until("input_audio_buffer.cleared").await;
    c.append_pcm(&pcm24(TURN1, 0)).await;
    c.send(json!({"type": "input_audio_buffer.commit", "event_id": "c1"})).await;
    c.until("conversation.item.input_audio_transcription.completed").await;
    c.send(json!({"type": "response.create", "event_id": "rc"})).await;
    c.until("response.done").await;
    c.until("output_audio_buffer.stopped").await;
    c.finish().await;
}

/// G.711 μ-law in and out; a format the server refuses; then the answer truncated by the client
/// (and clamped to its length), read back, deleted.
#[tokio::test(start_paused = true)]
async fn realtime_g711() {
    let base = start("").await;
    let mut c = Realtime::connect(&base, "voice", "realtime_g711").await;
    c.next().await;
    c.send(json!({"type": "session.update", "event_id": "bad", "session": {"audio": {"input": {"format": {"type": "audio/flac"}}}}})).await;
    c.next().await;
    c.send(json!({"type": "session.update", "event_id": "bad2", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}))
        .await;
    c.next().await;
    c.send(json!({"type": "session.update", "event_id": "g711", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}}))
        .await;
    c.next().await;
    // As a phone line sends it: 20 ms a frame, at real time.
    for frame in ulaw_frames(TURN1, 1_000) {
        c.send(json!({"type": "input_audio_buffer.append", "audio": B64.encode(frame)})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = c.until("response.done").await;
    c.until("output_audio_buffer.stopped").await;
    let item_id = events.last().unwrap()["response"]["output"][0]["id"].as_str().unwrap().to_string();

    c.send(json!({"type": "conversation.item.truncate", "event_id": "t1", "item_id": item_id, "content_index": 0, "audio_end_ms": 400}))
        .await;
    c.next().await;
    c.send(json!({"type": "conversation.item.retrieve", "event_id": "r1", "item_id": item_id})).await;
    c.next().await;
    c.send(
        json!({"type": "conversation.item.truncate", "event_id": "t2", "item_id": item_id, "content_index": 0, "audio_end_ms": 999_999}),
    )
    .await;
    c.next().await;
    c.send(json!({"type": "conversation.item.truncate", "event_id": "t3", "item_id": item_id, "content_index": 1, "audio_end_ms": 10}))
        .await;
    c.next().await;
    c.send(json!({"type": "conversation.item.delete", "event_id": "d1", "item_id": item_id})).await;
    c.next().await;
    c.send(json!({"type": "conversation.item.retrieve", "event_id": "r2", "item_id": item_id})).await;
    c.next().await;
    c.finish().await;
}

/// Every kind of client mistake the session answers with an `error` event, and the session goes on.
#[tokio::test(start_paused = true)]
async fn realtime_errors() {
    let base = start("[realtime]\nmax_event_bytes = 65536\n").await;
    let mut c = Realtime::connect(&base, "voice", "realtime_errors").await;
    c.next().await;
    let cases: Vec<String> = vec![
        "{not json".into(),
        "[1, 2]".into(),
        json!({"event_id": "no-type"}).to_string(),
        json!({"type": "session.dance", "event_id": "e1"}).to_string(),
        json!({"type": "input_audio_buffer.append", "event_id": "e2"}).to_string(),
        json!({"type": "input_audio_buffer.append", "event_id": "e3", "audio": "***"}).to_string(),
        json!({"type": "input_audio_buffer.append", "event_id": "e4", "audio": B64.encode([1u8, 2, 3])}).to_string(),
        json!({"type": "input_audio_buffer.append", "event_id": "e5", "audio": "A".repeat(70_000)}).to_string(),
        json!({"type": "input_audio_buffer.commit", "event_id": "e6"}).to_string(),
        json!({"type": "conversation.item.truncate", "event_id": "e7", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 100})
            .to_string(),
        json!({"type": "conversation.item.create", "event_id": "e8", "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"}})
            .to_string(),
        json!({"type": "conversation.item.create", "event_id": "e9", "item": {"type": "message", "role": "user", "content": [{"type": "input_text"}]}})
            .to_string(),
        json!({"type": "conversation.item.retrieve", "event_id": "e10", "item_id": "item_nope"}).to_string(),
        json!({"type": "conversation.item.delete", "event_id": "e11", "item_id": "item_nope"}).to_string(),
        json!({"type": "response.cancel", "event_id": "e12"}).to_string(),
        json!({"type": "response.cancel", "event_id": "e13", "response_id": "resp_nope"}).to_string(),
        json!({"type": "output_audio_buffer.clear", "event_id": "e14"}).to_string(),
        json!({"type": "session.update", "event_id": "e15", "session": {"model": "no-such-model"}}).to_string(),
        json!({"type": "session.update", "event_id": "e16", "session": {"output_modalities": ["smell"]}}).to_string(),
        json!({"type": "session.update", "event_id": "e17", "session": {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 8000}}}}})
            .to_string(),
    ];
    for text in cases {
        c.send_text(text).await;
        c.next().await;
    }
    // A binary frame is refused the same way.
    c.ws.send(Message::binary(vec![0u8; 16])).await.unwrap();
    c.next().await;
    // response.create while one is active; then the session still answers.
    c.send(user_text("hi")).await;
    c.send(json!({"type": "response.create", "event_id": "first"})).await;
    c.send(json!({"type": "response.create", "event_id": "twice"})).await;
    c.until("response.done").await;
    c.until("output_audio_buffer.stopped").await;
    c.finish().await;
}

/// A response cancelled by the client mid-answer, then a spoken answer the client clears itself.
#[tokio::test(start_paused = true)]
async fn realtime_client_cancel() {
    let base = start("").await;
    let mut c = Realtime::connect(&base, "voice", "realtime_client_cancel").await;
    c.next().await;
    c.send(user_text("please read me the whole menu of the day")).await;
    c.until("conversation.item.done").await;
    c.send(json!({"type": "response.create"})).await;
    c.until("response.output_audio.delta").await;
    for _ in 0..5 {
        c.next().await;
    }
    c.send(json!({"type": "response.cancel", "event_id": "cancel1"})).await;
    c.until("response.done").await;
    c.drain(Duration::from_secs(1)).await;
    c.send(user_text("and the wine list")).await;
    c.until("conversation.item.done").await;
    c.send(json!({"type": "response.create"})).await;
    c.until("response.output_audio.delta").await;
    for _ in 0..5 {
        c.next().await;
    }
    c.send(json!({"type": "output_audio_buffer.clear", "event_id": "clear1"})).await;
    c.until("response.done").await;
    c.finish().await;
}

// ---------------------------------------------------------------------------------------------------
// Twilio
// ---------------------------------------------------------------------------------------------------

struct Phone {
    ws: Ws,
    rec: Recording,
    sid: &'static str,
    /// Echo each `mark` as soon as it arrives, as Twilio does once the audio before it played.
    echo_marks: bool,
    closed: bool,
}

impl Phone {
    async fn connect(base: &str, sid: &'static str, scenario: &'static str) -> Phone {
        let ws = open(format!("{}/v1/phone/twilio", base.replace("http://", "ws://"))).await;
        Phone { ws, rec: Recording::new(scenario), sid, echo_marks: true, closed: false }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn start(&mut self, model: &str) {
        let sid = self.sid;
        self.send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})).await;
        self.send(json!({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
            "accountSid": "AC1", "streamSid": sid, "callSid": "CA1", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"model": model}}}))
            .await;
    }

    /// Sends the frames as a carrier does: one every 20 ms (paused time), so the server has done
    /// with each before the next.
    async fn send_audio(&mut self, frames: &[Vec<u8>], first_chunk: usize) {
        for (i, f) in frames.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let n = first_chunk + i;
            let sid = self.sid;
            self.send(json!({"event": "media", "sequenceNumber": (n + 2).to_string(), "streamSid": sid,
                "media": {"track": "inbound", "chunk": n.to_string(), "timestamp": (n * 20).to_string(), "payload": B64.encode(f)}}))
                .await;
        }
    }

    /// The next frame within `wait` (paused time), recorded, with its mark echoed; `None` when none
    /// came or the call closed.
    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        if self.closed {
            return None;
        }
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.closed = true;
                    return None;
                }
                Ok(Some(Err(e))) => panic!("{}: socket error: {e}", self.rec.scenario),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    self.rec.text(&t);
                    let f: Value = serde_json::from_str(&t).expect("Twilio frames are JSON");
                    if self.echo_marks && f["event"] == "mark" {
                        let sid = self.sid;
                        self.send(json!({"event": "mark", "streamSid": sid, "sequenceNumber": "0", "mark": {"name": f["mark"]["name"]}}))
                            .await;
                    }
                    return Some(f);
                }
                Message::Binary(b) => self.rec.binary(&b),
                Message::Close(c) => {
                    self.rec.close(c.map(|f| (u16::from(f.code), f.reason.to_string())));
                    self.closed = true;
                    return None;
                }
                _ => continue,
            }
        }
    }

    async fn next(&mut self) -> Value {
        match self.next_within(Duration::from_secs(60)).await {
            Some(v) => v,
            None => panic!("{}: no frame within 60 s (or the call closed)", self.rec.scenario),
        }
    }

    async fn drain(&mut self, quiet: Duration) -> usize {
        let mut n = 0;
        while self.next_within(quiet).await.is_some() {
            n += 1;
        }
        n
    }
}

fn phone_config(vendor_url: &str) -> String {
    let vendor = crate::support::vendor_long(vendor_url);
    config(&format!(
        r#"
{vendor}[routes.phone-long]
models = ["vendor-long"]
"#
    ))
}

/// A call: connected, start, a spoken turn in μ-law; the answer as media and marks (echoed); a
/// barge-in that clears the line; the second turn's answer; a key press and its answer; stop.
#[tokio::test(start_paused = true)]
async fn twilio_call() {
    let base = start("").await;
    let mut p = Phone::connect(&base, "MZ1", "twilio_call").await;
    p.start("phone").await;
    // The fixture's own 700 ms of silence end the turn; the answer (1.2 s) starts in them.
    p.send_audio(&ulaw_frames(TURN1, 0), 1).await;
    let mut media = 0;
    loop {
        let f = p.next().await;
        match f["event"].as_str().unwrap() {
            "media" => media += 1,
            "mark" if media >= 20 => break,
            _ => {}
        }
    }
    p.send_audio(&ulaw_frames(TURN2, 1_000), 1_000).await;
    while p.next().await["event"] != "clear" {}
    p.drain(Duration::from_secs(3)).await;
    let sid = p.sid;
    p.send(json!({"event": "dtmf", "streamSid": sid, "sequenceNumber": "5000", "dtmf": {"track": "inbound_track", "digit": "7"}})).await;
    p.drain(Duration::from_secs(3)).await;
    p.send(json!({"event": "stop", "sequenceNumber": "9999", "streamSid": sid, "stop": {"accountSid": "AC1", "callSid": "CA1"}})).await;
    p.drain(Duration::from_secs(60)).await;
    assert!(p.closed, "the call ends after stop");
    p.rec.finish();
}

/// The phone history follows the echoed marks: an answer from the fake OpenAI vendor, only the first
/// 30 marks echoed, a barge-in; the model's next request (recorded as a `_upstream` line) keeps what
/// the caller heard.
#[tokio::test(start_paused = true)]
async fn twilio_history_follows_marks() {
    let (vendor_url, recorder): (String, Recorder) = vendors::openai::start().await;
    let (base, _) = start_voxgate(&phone_config(&vendor_url), &[]).await;
    let mut p = Phone::connect(&base, "MZ6", "twilio_history_follows_marks").await;
    p.start("phone-long").await;
    p.send_audio(&ulaw_frames(TURN1, 1_000), 1).await;
    let (mut media, mut marks) = (0, 0);
    while media < 60 {
        p.echo_marks = marks < 30;
        let f = p.next().await;
        match f["event"].as_str().unwrap() {
            "media" => media += 1,
            "mark" => marks += 1,
            _ => {}
        }
    }
    p.echo_marks = false;
    p.send_audio(&ulaw_frames(TURN2, 1_000), 1_000).await;
    while p.next().await["event"] != "clear" {}
    p.echo_marks = true;
    p.drain(Duration::from_secs(3)).await;
    let sid = p.sid;
    p.send(json!({"event": "stop", "streamSid": sid})).await;
    p.drain(Duration::from_secs(60)).await;
    assert!(p.closed, "the call ends after stop");
    for r in recorder.all() {
        p.rec.note(json!({"_upstream": {"path": r.path, "messages": r.body["messages"]}}));
    }
    p.rec.finish();
}

/// What the phone path closes with when the caller sends something wrong, before and during a call.
// Real time: a refused call's end waits for the ledger, which works on its own thread; only close
// frames are recorded here.
#[tokio::test]
async fn twilio_bad_input() {
    let base = start("").await;
    let mut rec = Recording::new("twilio_bad_input");
    let start_frame = |sid: &str, model: &str| {
        json!({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
            "accountSid": "AC1", "streamSid": sid, "callSid": "CA1", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"model": model}}})
    };
    let mut wrong_format = start_frame("MZ4", "phone");
    wrong_format["start"]["mediaFormat"]["encoding"] = json!("audio/l16");
    // (frame, whether the call is started first)
    let cases: Vec<(Message, bool)> = vec![
        (Message::text(json!({"event": "media", "streamSid": "MZ3", "media": {"payload": "AAAA"}}).to_string()), false),
        (Message::text(json!({"type": "session.update"}).to_string()), false),
        (Message::text("hello"), false),
        (Message::binary(vec![0u8; 160]), false),
        (Message::text(wrong_format.to_string()), false),
        (Message::text(start_frame("MZ5", "no-such-route").to_string()), false),
        (Message::text(json!({"event": "dance", "streamSid": "MZ5"}).to_string()), false),
        (Message::text(json!({"event": "media", "streamSid": "MZ7", "media": {"payload": "***not base64***"}}).to_string()), true),
        (Message::text(json!({"event": "media", "streamSid": "MZ-other", "media": {"payload": "AAAA"}}).to_string()), true),
        (Message::text(json!({"event": "mark", "streamSid": "MZ-other", "mark": {"name": "x"}}).to_string()), true),
        (Message::text(json!({"event": "dtmf", "streamSid": "MZ-other", "dtmf": {"digit": "1"}}).to_string()), true),
        (Message::text(json!({"type": "input_audio_buffer.append", "audio": "AAAA"}).to_string()), true),
        (Message::text(json!({"event": "media", "streamSid": "MZ7", "media": {"track": "inbound"}}).to_string()), true),
        (Message::text(start_frame("MZ7", "phone").to_string()), true),
        (Message::binary(vec![0u8; 160]), true),
    ];
    let ws_url = format!("{}/v1/phone/twilio", base.replace("http://", "ws://"));
    let silence = B64.encode([0xffu8; 160]);
    for (i, (frame, started)) in cases.into_iter().enumerate() {
        let mut ws = open(ws_url.clone()).await;
        if started {
            ws.send(Message::text(start_frame("MZ7", "phone").to_string())).await.unwrap();
            for n in 0..5 {
                let media = json!({"event": "media", "streamSid": "MZ7", "media": {"track": "inbound", "chunk": n.to_string(), "payload": silence}});
                ws.send(Message::text(media.to_string())).await.unwrap();
            }
        }
        rec.note(json!({"_case": i}));
        ws.send(frame).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("closed within 20 s") {
                Some(Ok(Message::Text(t))) => rec.text(&t),
                Some(Ok(Message::Binary(b))) => rec.binary(&b),
                Some(Ok(Message::Close(c))) => {
                    rec.close(c.map(|f| (u16::from(f.code), f.reason.to_string())));
                    break;
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => {
                    rec.close(None);
                    break;
                }
            }
        }
    }
    rec.finish();
}
