//! Fake streaming speech-to-text vendors on loopback, each speaking its vendor's wire format as
//! `docs/speech.md` and the vendors' SDK sources describe it: Deepgram `/v1/listen` (binary PCM in,
//! `Results` with seconds out, `Finalize`, `KeepAlive`, `CloseStream`), AssemblyAI `/v3/ws`
//! (binary PCM in, cumulative `Turn`s with integer ms, `ForceEndpoint`, `Terminate` →
//! `Termination`) and OpenAI Realtime transcription (base64 24 kHz appends, `commit` →
//! `committed`, `delta`, `completed`).
//!
//! The fake hears speech by its energy in the audio it receives, and says the next line of its
//! script over it: the words share the voiced stretch evenly, in the vendor's own clock (audio
//! received), with the line's confidences and speaker. The model the client asks for picks a
//! behaviour:
//! - anything else: as above;
//! - `reject`: HTTP 429 on the upgrade;
//! - `slow`: the upgrade waits 30 s;
//! - `stall`: takes audio and never answers;
//! - `cut`: after 300 ms of speech, closes with 1011;
//! - `malformed`: answers each audio message with text that is not JSON.
//!
//! Everything the client sent and everything the fake answered is logged for the tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Deepgram,
    AssemblyAi,
    OpenAi,
}

/// One word of a scripted line.
#[derive(Debug, Clone)]
pub struct Said {
    pub text: &'static str,
    pub confidence: f64,
}

/// A line of the script: its words and its speaker.
#[derive(Debug, Clone)]
pub struct Line {
    pub words: Vec<Said>,
    pub speaker: &'static str,
}

/// What a connection saw.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Text messages from the client, in order.
    pub texts: Vec<String>,
    /// Audio received, in samples at the vendor's rate, and in how many messages.
    pub audio_samples: u64,
    pub audio_messages: usize,
    /// The vendor's clock (ms of audio received) when each line's speech began.
    pub speech_began_ms: Vec<u64>,
    /// Messages the fake sent.
    pub sent: Vec<Value>,
    /// The client's close message arrived (CloseStream, Terminate), and the socket then closed.
    pub closed_politely: bool,
    pub ended: bool,
}

impl Connection {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Client text messages of `type`.
    pub fn count(&self, kind: &str) -> usize {
        self.texts.iter().filter(|t| serde_json::from_str::<Value>(t).is_ok_and(|v| v["type"] == kind)).count()
    }
}

#[derive(Clone)]
struct Shared {
    flavour: Flavour,
    script: Arc<Vec<Line>>,
    log: Arc<Mutex<Vec<Connection>>>,
}

/// A running fake vendor.
pub struct FakeVendor {
    pub url: String,
    log: Arc<Mutex<Vec<Connection>>>,
}

impl FakeVendor {
    pub fn connections(&self) -> Vec<Connection> {
        self.log.lock().unwrap().clone()
    }
}

/// Starts a fake `flavour` vendor on loopback that says `script`'s lines in turn.
pub async fn start(flavour: Flavour, script: Vec<Line>) -> FakeVendor {
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = Shared { flavour, script: Arc::new(script), log: log.clone() };
    let path = match flavour {
        Flavour::Deepgram => "/v1/listen",
        Flavour::AssemblyAi => "/v3/ws",
        Flavour::OpenAi => "/v1/realtime",
    };
    let router = axum::Router::new().route(path, get(upgrade)).with_state(shared);
    let addr: SocketAddr = super::spawn(router).await;
    let url = match flavour {
        Flavour::OpenAi => format!("http://{addr}/v1"),
        _ => format!("http://{addr}"),
    };
    FakeVendor { url, log }
}

/// The script most tests use: "book a table for two" by speaker B, then "at seven" by A.
pub fn booking_script() -> Vec<Line> {
    let said = |text, confidence| Said { text, confidence };
    vec![
        Line { words: vec![said("book", 0.91), said("a", 0.42), said("table", 0.88), said("for", 0.8), said("two", 0.77)], speaker: "B" },
        Line { words: vec![said("at", 0.95), said("seven", 0.66)], speaker: "A" },
    ]
}

async fn upgrade(State(shared): State<Shared>, uri: Uri, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let query = uri.query().unwrap_or("").to_string();
    let model =
        query.split('&').find_map(|kv| kv.strip_prefix("model=").or_else(|| kv.strip_prefix("speech_model="))).unwrap_or("").to_string();
    let connection = Connection {
        path: uri.path().to_string(),
        query,
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect(),
        ..Connection::default()
    };
    let index = {
        let mut log = shared.log.lock().unwrap();
        log.push(connection);
        log.len() - 1
    };
    match model.as_str() {
        "reject" => return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response(),
        "slow" => tokio::time::sleep(Duration::from_secs(30)).await,
        _ => {}
    }
    ws.on_upgrade(move |socket| serve(shared, index, model, socket))
}

/// A connection's speech tracking, in the vendor's clock.
#[derive(Default)]
struct Hearing {
    received: u64,
    /// Start and last voiced ms of the speech being heard.
    voiced: Option<(u64, u64)>,
    /// Voiced ms at the last interim result.
    reported_ms: u64,
    line: usize,
    turn_order: u64,
    items: u64,
    /// Words of the current line already sent as final (Deepgram).
    finals_sent: usize,
    /// Words of the current turn already said to be final, with the times they were given then
    /// (AssemblyAI): a final word does not move.
    frozen: Vec<Spoken>,
}

type Spoken = (String, u64, u64, f64, &'static str);

const RATE_DG_AAI: u64 = 16_000;
const RATE_OPENAI: u64 = 24_000;

async fn serve(shared: Shared, index: usize, model: String, mut socket: WebSocket) {
    let rate = if shared.flavour == Flavour::OpenAi { RATE_OPENAI } else { RATE_DG_AAI };
    let mut hearing = Hearing::default();
    let mut openai_model = model.clone();
    let log = |f: &dyn Fn(&mut Connection)| f(&mut shared.log.lock().unwrap()[index]);
    if shared.flavour == Flavour::AssemblyAi {
        let begin = json!({"type": "Begin", "id": "sess-1", "expires_at": 1767225600});
        send(&mut socket, &shared, index, begin).await;
    }
    while let Some(Ok(msg)) = socket.recv().await {
        let samples: Vec<i16> = match msg {
            Message::Binary(bytes) => bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect(),
            Message::Text(text) => {
                let text = text.to_string();
                log(&|c| c.texts.push(text.clone()));
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let kind = v["type"].as_str().unwrap_or("").to_string();
                let stalled = if shared.flavour == Flavour::OpenAi { openai_model == "stall" } else { model == "stall" };
                if stalled && kind != "session.update" && kind != "input_audio_buffer.append" {
                    continue;
                }
                match (shared.flavour, kind.as_str()) {
                    (Flavour::OpenAi, "session.update") => {
                        openai_model = v["session"]["audio"]["input"]["transcription"]["model"].as_str().unwrap_or("").to_string();
                        send(&mut socket, &shared, index, json!({"type": "session.updated", "event_id": "ev_0", "session": v["session"]}))
                            .await;
                        continue;
                    }
                    (Flavour::OpenAi, "input_audio_buffer.append") => {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(v["audio"].as_str().unwrap_or("")).unwrap_or_default();
                        bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
                    }
                    (Flavour::OpenAi, "input_audio_buffer.commit") => {
                        let words = finish_line(&shared, &mut hearing, rate);
                        hearing.items += 1;
                        let item = format!("item_{}", hearing.items);
                        send(
                            &mut socket,
                            &shared,
                            index,
                            json!({"type": "input_audio_buffer.committed", "event_id": "ev", "item_id": item, "previous_item_id": null}),
                        )
                        .await;
                        let text = words.iter().map(|w| w.0.as_str()).collect::<Vec<_>>().join(" ");
                        if let Some((first, _)) = text.split_once(' ') {
                            let delta = json!({"type": "conversation.item.input_audio_transcription.delta", "event_id": "ev", "item_id": item, "content_index": 0, "delta": format!("{first} ")});
                            send(&mut socket, &shared, index, delta).await;
                        }
                        let logprobs: Vec<Value> = words.iter().map(|w| json!({"token": w.0, "logprob": w.3.ln(), "bytes": []})).collect();
                        let completed = json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": "ev", "item_id": item,
                            "content_index": 0, "transcript": text, "logprobs": logprobs, "usage": {"type": "duration", "seconds": 1.0}});
                        send(&mut socket, &shared, index, completed).await;
                        continue;
                    }
                    (Flavour::Deepgram, "Finalize") => {
                        // Nothing buffered (the endpoint already said it all): no answer at all,
                        // as Deepgram does not promise one.
                        if hearing.voiced.is_none() {
                            continue;
                        }
                        let words = finish_line(&shared, &mut hearing, rate);
                        let rest: Vec<_> = words.into_iter().skip(hearing.finals_sent).collect();
                        hearing.finals_sent = 0;
                        send(&mut socket, &shared, index, deepgram_results(&rest, true, false, true)).await;
                        continue;
                    }
                    (Flavour::AssemblyAi, "ForceEndpoint") => {
                        let words = finish_line(&shared, &mut hearing, rate);
                        let turn = assemblyai_turn(hearing.turn_order, &words, words.len(), true);
                        hearing.turn_order += 1;
                        send(&mut socket, &shared, index, turn).await;
                        continue;
                    }
                    (Flavour::Deepgram, "CloseStream") | (Flavour::AssemblyAi, "Terminate") => {
                        let last = if shared.flavour == Flavour::Deepgram {
                            json!({"type": "Metadata", "request_id": "req-1", "duration": hearing.received as f64 / rate as f64, "channels": 1})
                        } else {
                            json!({"type": "Termination", "audio_duration_seconds": hearing.received / rate, "session_duration_seconds": 1})
                        };
                        send(&mut socket, &shared, index, last).await;
                        let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
                        log(&|c| c.closed_politely = true);
                        continue;
                    }
                    _ => continue,
                }
            }
            Message::Close(_) => break,
            _ => continue,
        };
        log(&|c| {
            c.audio_samples += samples.len() as u64;
            c.audio_messages += 1;
        });
        let behaviour = if shared.flavour == Flavour::OpenAi { openai_model.as_str() } else { model.as_str() };
        match behaviour {
            "stall" => continue,
            "malformed" => {
                let _ = socket.send(Message::Text("{this is not json".into())).await;
                continue;
            }
            _ => {}
        }
        for message in hear(&shared, index, &mut hearing, &samples, rate) {
            send(&mut socket, &shared, index, message).await;
        }
        if behaviour == "cut" && hearing.voiced.is_some_and(|(from, to)| to - from >= 300) {
            let _ = socket.send(Message::Close(Some(CloseFrame { code: 1011, reason: "NET-0001".into() }))).await;
            break;
        }
    }
    log(&|c| c.ended = true);
}

async fn send(socket: &mut WebSocket, shared: &Shared, index: usize, message: Value) {
    shared.log.lock().unwrap()[index].sent.push(message.clone());
    let _ = socket.send(Message::Text(message.to_string().into())).await;
}

/// Takes audio: tracks speech in 10 ms windows and returns the interim results (and Deepgram's
/// endpoint) it prompts.
fn hear(shared: &Shared, index: usize, hearing: &mut Hearing, samples: &[i16], rate: u64) -> Vec<Value> {
    let window = (rate / 100) as usize;
    let mut out = Vec::new();
    for chunk in samples.chunks(window) {
        let at_ms = hearing.received * 1000 / rate;
        hearing.received += chunk.len() as u64;
        let loud = chunk.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0) > 1_000;
        if loud {
            hearing.voiced = Some(match hearing.voiced {
                Some((from, _)) => (from, at_ms + 10),
                None => {
                    shared.log.lock().unwrap()[index].speech_began_ms.push(at_ms);
                    hearing.reported_ms = 0;
                    (at_ms, at_ms + 10)
                }
            });
        }
        let Some((from, to)) = hearing.voiced else { continue };
        let line = &shared.script[hearing.line % shared.script.len()];
        let mut words = spread(line, from, to);
        words.splice(..hearing.frozen.len(), hearing.frozen.iter().cloned());
        // An interim result every 200 ms of speech: the words heard so far.
        if loud && to - from >= hearing.reported_ms + 200 {
            hearing.reported_ms = to - from;
            let k = ((to - from) / 200) as usize;
            let k = k.min(words.len());
            match shared.flavour {
                Flavour::Deepgram => {
                    out.push(deepgram_results(&words[hearing.finals_sent..k.max(hearing.finals_sent)], false, false, false))
                }
                Flavour::AssemblyAi => {
                    hearing.frozen = words[..k.saturating_sub(1)].to_vec();
                    out.push(assemblyai_turn(hearing.turn_order, &words[..k], k.saturating_sub(1), false));
                }
                Flavour::OpenAi => {}
            }
        }
        // Deepgram's endpointing: 300 ms of silence after speech ends the turn.
        if shared.flavour == Flavour::Deepgram && !loud && at_ms >= to + 300 {
            let rest: Vec<_> = words.into_iter().skip(hearing.finals_sent).collect();
            out.push(deepgram_results(&rest, true, true, false));
            hearing.voiced = None;
            hearing.line += 1;
            hearing.finals_sent = 0;
        }
    }
    out
}

/// The words of the line being heard, over the speech heard so far, and the next line's turn.
fn finish_line(shared: &Shared, hearing: &mut Hearing, _rate: u64) -> Vec<Spoken> {
    let frozen = std::mem::take(&mut hearing.frozen);
    let Some((from, to)) = hearing.voiced.take() else { return Vec::new() };
    let line = &shared.script[hearing.line % shared.script.len()];
    hearing.line += 1;
    let mut words = spread(line, from, to);
    words.splice(..frozen.len(), frozen);
    words
}

/// The line's words sharing `from..to` evenly: (text, start ms, end ms, confidence, speaker).
fn spread(line: &Line, from: u64, to: u64) -> Vec<Spoken> {
    let step = (to - from) / line.words.len() as u64;
    line.words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let start = from + step * i as u64;
            (w.text.to_string(), start, start + step.saturating_sub(10).max(1), w.confidence, line.speaker)
        })
        .collect()
}

fn deepgram_results(words: &[Spoken], is_final: bool, speech_final: bool, from_finalize: bool) -> Value {
    let speaker: u32 = words.first().map_or(0, |w| if w.4 == "A" { 0 } else { 1 });
    let words: Vec<Value> = words
        .iter()
        .map(|(text, start, end, confidence, _)| {
            json!({"word": text, "start": *start as f64 / 1000.0, "end": *end as f64 / 1000.0, "confidence": confidence,
                   "punctuated_word": text, "speaker": speaker, "speaker_confidence": 0.9})
        })
        .collect();
    let transcript = words.iter().map(|w| w["word"].as_str().unwrap_or("")).collect::<Vec<_>>().join(" ");
    json!({"type": "Results", "channel_index": [0, 1], "start": 0.0, "duration": 0.0, "is_final": is_final, "speech_final": speech_final,
           "from_finalize": from_finalize, "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.9, "words": words}]},
           "metadata": {"request_id": "req-1", "model_info": {"name": "general-nova-3", "version": "1", "arch": "nova-3"}, "model_uuid": "u"}})
}

/// A cumulative turn: `final_count` words final, the rest a guess.
fn assemblyai_turn(order: u64, words: &[Spoken], final_count: usize, end_of_turn: bool) -> Value {
    let list: Vec<Value> = words
        .iter()
        .enumerate()
        .map(|(i, (text, start, end, confidence, speaker))| {
            json!({"text": text, "start": start, "end": end, "confidence": confidence, "word_is_final": i < final_count, "speaker": speaker})
        })
        .collect();
    let transcript = words.iter().take(final_count).map(|w| w.0.as_str()).collect::<Vec<_>>().join(" ");
    json!({"type": "Turn", "turn_order": order, "turn_is_formatted": false, "end_of_turn": end_of_turn,
           "end_of_turn_confidence": if end_of_turn { 1.0 } else { 0.1 }, "transcript": transcript, "utterance": "", "words": list,
           "speaker_label": words.first().map_or("UNKNOWN", |w| w.4)})
}
