//! Twilio Media Streams (`<Connect><Stream>`, bidirectional) on a WebSocket, in front of the same
//! session actor as `/v1/realtime`. Only this file knows Twilio's JSON: `connected`, `start`, `media`
//! (base64 μ-law 8 kHz, 20 ms), `dtmf`, `mark`, `stop` in; `media`, `mark` after each chunk, and
//! `clear` on barge-in out. The echoed marks say exactly how much of the reply the caller heard, and
//! the assistant's item is truncated to that, not to our own estimate.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use base64::Engine as _;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metering::ledger::SessionMeter;
use crate::session::{run_session, Inbound, Outbound, SessionStart, VoiceEngines};
use crate::transport::realtime::{
    AudioFormatSpec, AudioInput, AudioOutput, ClientEvent, ContentPart, ConversationItemCreate, ConversationItemTruncate,
    InputAudioBufferAppend, Item, MessageItem, ResponseCreate, Role, ServerEvent, Session, SessionAudio, SessionUpdate, Voice,
};

/// 20 ms of μ-law at 8 kHz: the frame Twilio plays.
const FRAME_BYTES: usize = 160;

/// The first frames of a call must arrive within this long, or the socket is not a Twilio stream.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame from Twilio. Unknown events are ignored, as Twilio may add some.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum TwilioIn {
    Connected {},
    Start {
        start: StartInfo,
    },
    Media {
        media: MediaInfo,
        #[serde(rename = "streamSid")]
        stream_sid: Option<String>,
    },
    Dtmf {
        dtmf: DtmfInfo,
        #[serde(rename = "streamSid")]
        stream_sid: Option<String>,
    },
    Mark {
        mark: MarkInfo,
        #[serde(rename = "streamSid")]
        stream_sid: Option<String>,
    },
    Stop {},
}

#[derive(Debug, Deserialize)]
struct StartInfo {
    #[serde(rename = "streamSid")]
    stream_sid: String,
    #[serde(rename = "callSid", default)]
    call_sid: String,
    #[serde(rename = "mediaFormat")]
    media_format: Option<MediaFormat>,
    #[serde(rename = "customParameters", default)]
    custom_parameters: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct MediaFormat {
    encoding: String,
    #[serde(rename = "sampleRate")]
    sample_rate: u32,
    #[serde(default = "one")]
    channels: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct MediaInfo {
    payload: String,
    #[serde(default)]
    track: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DtmfInfo {
    digit: String,
}

#[derive(Debug, Deserialize)]
struct MarkInfo {
    name: String,
}

/// Who may open a call and what it serves, decided by the HTTP layer from the `start` frame's
/// custom parameters (`model` (route), `voice`, `instructions`, and `api_key` when keys are required),
/// with the meter that bills the call.
pub type Admit = Arc<dyn Fn(HashMap<String, String>) -> crate::stt::BoxFuture<Result<Admitted, String>> + Send + Sync>;

/// A call let in: its session and its meter (`None` runs unmetered).
pub struct Admitted {
    pub session: SessionStart,
    pub meter: Option<SessionMeter>,
}

/// Why a call ended early; logged, and the socket closed with a clear reason.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("not a Twilio Media Streams frame: {0}")]
    NotTwilio(String),
    #[error("`{0}` arrived before `start`")]
    BeforeStart(&'static str),
    #[error("no `start` frame within {} s", START_TIMEOUT.as_secs())]
    NoStart,
    #[error("media format {0} is not supported: Twilio streams send audio/x-mulaw at 8000 Hz, mono")]
    Format(String),
    #[error("refused: {0}")]
    Refused(String),
}

/// A chunk of reply audio sent to Twilio, known by its mark.
struct Sent {
    mark: String,
    item_id: String,
    /// Where the chunk ends in its item's audio.
    end_ms: u64,
}

/// Serves one Twilio call on `socket`.
pub async fn serve<S, E>(socket: S, engines: Arc<VoiceEngines>, admit: Admit, cancel: CancellationToken)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let (mut sink, mut stream) = socket.split();
    let started = tokio::time::timeout(START_TIMEOUT, wait_for_start(&mut stream)).await.unwrap_or(Err(CallError::NoStart));
    let checked = match started.and_then(check_start) {
        Ok(start) => admit(start.custom_parameters.clone()).await.map(|a| (a, start)).map_err(CallError::Refused),
        Err(e) => Err(e),
    };
    let (admitted, start) = match checked {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "twilio stream refused");
            let _ = sink.send(super::close_frame(1008, &e.to_string())).await;
            return;
        }
    };
    let (session_start, meter, params, stream_sid) = (admitted.session, admitted.meter, start.custom_parameters, start.stream_sid);
    let session_id = session_start.session_id.clone();
    info!(%session_id, %stream_sid, "twilio call started");
    let accounts = engines.gateway.accounts.clone();
    let metrics = &accounts.metrics;
    metrics.add("voxgate_realtime_sessions_active", &[], 1.0);

    let (in_tx, in_rx) = mpsc::channel(super::INBOUND_CAPACITY);
    let (out_tx, mut out_rx) = mpsc::channel(1024);
    let session_cancel = cancel.child_token();
    let actor = tokio::spawn(run_session(engines.clone(), session_start, meter, in_rx, out_tx, session_cancel.clone()));
    // Configure the session for the phone line before any audio.
    let _ = in_tx
        .send(Inbound::Event(ClientEvent::SessionUpdate(Box::new(SessionUpdate { event_id: None, session: phone_session(&params) }))))
        .await;

    // Marks sent and not yet echoed, oldest first; the last echoed one says what was heard.
    let mut pending: VecDeque<Sent> = VecDeque::new();
    let mut heard: Option<(String, u64)> = None;
    let mut mark_seq = 0u64;
    let mut item_ms: HashMap<String, f64> = HashMap::new();
    let mut cleared = false;
    // Reply audio not yet a whole 20 ms frame.
    let mut outgoing: Vec<u8> = Vec::with_capacity(2 * FRAME_BYTES);
    loop {
        tokio::select! {
            _ = session_cancel.cancelled() => break,
            out = out_rx.recv() => {
                let Some(out) = out else { break };
                let event = match out {
                    Outbound::Event(e) => *e,
                    Outbound::Close { code, reason } => {
                        let _ = sink.send(super::close_frame(code, &reason)).await;
                        break;
                    }
                };
                let frames = match event {
                    ServerEvent::ResponseOutputAudioDelta { item_id, delta, .. } => {
                        // Twilio plays 20 ms frames (160 bytes of μ-law); the engine's frames are re-cut to that.
                        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&delta) {
                            outgoing.extend_from_slice(&bytes);
                        }
                        let mut frames = Vec::new();
                        while outgoing.len() >= FRAME_BYTES {
                            let chunk: Vec<u8> = outgoing.drain(..FRAME_BYTES).collect();
                            frames.extend(media_and_mark(&chunk, &item_id, &stream_sid, &mut item_ms, &mut mark_seq, &mut pending));
                        }
                        frames
                    }
                    ServerEvent::ResponseOutputAudioDone { item_id, .. } => {
                        // The last, shorter frame of the answer.
                        let chunk = std::mem::take(&mut outgoing);
                        if chunk.is_empty() {
                            Vec::new()
                        } else {
                            media_and_mark(&chunk, &item_id, &stream_sid, &mut item_ms, &mut mark_seq, &mut pending).to_vec()
                        }
                    }
                    ServerEvent::OutputAudioBufferCleared { .. } => {
                        // Barge-in: empty the carrier's buffer. Marks it echoes from now on were never heard.
                        cleared = true;
                        outgoing.clear();
                        vec![json!({"event": "clear", "streamSid": stream_sid})]
                    }
                    ServerEvent::ConversationItemTruncated { item_id, audio_end_ms, .. } if cleared => {
                        cleared = false;
                        // The session cut the item to its own estimate; the marks know better.
                        let by_marks = match &heard {
                            Some((heard_item, ms)) if *heard_item == item_id => *ms,
                            _ => 0,
                        };
                        pending.clear();
                        if by_marks != audio_end_ms {
                            let truncate = ConversationItemTruncate { event_id: None, item_id, content_index: 0, audio_end_ms: by_marks };
                            let _ = in_tx.send(Inbound::Event(ClientEvent::ConversationItemTruncate(truncate))).await;
                        }
                        Vec::new()
                    }
                    ServerEvent::Error { error, .. } => {
                        warn!(%session_id, code = ?error.code, message = %error.message, "twilio call: session error");
                        Vec::new()
                    }
                    _ => Vec::new(),
                };
                for frame in frames {
                    if sink.send(Message::Text(Utf8Bytes::from(frame.to_string()))).await.is_err() {
                        session_cancel.cancel();
                        break;
                    }
                }
            }
            message = stream.next() => {
                let text = match message {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        debug!(%session_id, error = %e, "twilio socket read failed");
                        break;
                    }
                };
                let frame = match serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()).and_then(|v| {
                    if v.get("event").and_then(Value::as_str).is_none() {
                        return Err("no `event` field".to_string());
                    }
                    Ok(v)
                }) {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(%session_id, error = %e, "twilio call: not a Twilio frame; closing");
                        let _ = sink.send(super::close_frame(1003, &format!("not a Twilio Media Streams frame: {e}"))).await;
                        break;
                    }
                };
                let parsed = match serde_json::from_value::<TwilioIn>(frame) {
                    Ok(f) => f,
                    Err(e) if e.to_string().contains("unknown variant") => continue,
                    Err(e) => {
                        warn!(%session_id, error = %e, "twilio call: malformed frame ignored");
                        continue;
                    }
                };
                match parsed {
                    TwilioIn::Media { media, stream_sid: sid } => {
                        if !same_stream(&sid, &stream_sid, &session_id) || media.track.as_deref().is_some_and(|t| t != "inbound" && t != "inbound_track") {
                            continue;
                        }
                        let append = ClientEvent::InputAudioBufferAppend(InputAudioBufferAppend { event_id: None, audio: media.payload });
                        // Twilio sends at real time, and this loop also paces the outbound audio:
                        // a full queue (the actor behind real time) drops the frame, counted.
                        if in_tx.try_send(Inbound::Event(append)).is_err() {
                            metrics.inc("voxgate_audio_frames_dropped_total", &[("stage", "input")]);
                        }
                    }
                    TwilioIn::Mark { mark, stream_sid: sid } => {
                        if !same_stream(&sid, &stream_sid, &session_id) {
                            continue;
                        }
                        // Echoes arrive in order; everything up to this mark has played.
                        while let Some(sent) = pending.pop_front() {
                            let done = sent.mark == mark.name;
                            if !cleared {
                                heard = Some((sent.item_id, sent.end_ms));
                            }
                            if done {
                                break;
                            }
                        }
                    }
                    TwilioIn::Dtmf { dtmf, stream_sid: sid } => {
                        if !same_stream(&sid, &stream_sid, &session_id) {
                            continue;
                        }
                        let text = format!("(The caller pressed {} on the phone keypad.)", dtmf.digit);
                        let item = Item::Message(MessageItem { id: None, status: None, role: Role::User, content: vec![ContentPart::InputText { text }] });
                        let _ = in_tx.send(Inbound::Event(ClientEvent::ConversationItemCreate(ConversationItemCreate { event_id: None, previous_item_id: None, item }))).await;
                        let _ = in_tx.send(Inbound::Event(ClientEvent::ResponseCreate(Box::new(ResponseCreate { event_id: None, response: None })))).await;
                    }
                    TwilioIn::Stop {} => {
                        info!(%session_id, "twilio call stopped");
                        break;
                    }
                    TwilioIn::Start { .. } => warn!(%session_id, "twilio call: a second `start` ignored"),
                    TwilioIn::Connected {} => {}
                }
            }
        }
    }
    // The actor sees its inbound close and ends the session itself; cancel it if it does not.
    drop(in_tx);
    let mut actor = actor;
    if tokio::time::timeout(Duration::from_secs(2), &mut actor).await.is_err() {
        session_cancel.cancel();
        let _ = actor.await;
    }
    session_cancel.cancel();
    let _ = sink.send(super::close_frame(1000, "call ended")).await;
    metrics.add("voxgate_realtime_sessions_active", &[], -1.0);
}

/// A `media` frame and the `mark` that follows it, remembering where the chunk ends in its item.
fn media_and_mark(
    chunk: &[u8],
    item_id: &str,
    stream_sid: &str,
    item_ms: &mut HashMap<String, f64>,
    mark_seq: &mut u64,
    pending: &mut VecDeque<Sent>,
) -> [Value; 2] {
    let end = item_ms.entry(item_id.to_string()).or_insert(0.0);
    *end += chunk.len() as f64 / 8.0;
    *mark_seq += 1;
    let mark = format!("voxgate-{mark_seq}");
    pending.push_back(Sent { mark: mark.clone(), item_id: item_id.to_string(), end_ms: end.round() as u64 });
    let payload = base64::engine::general_purpose::STANDARD.encode(chunk);
    [
        json!({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}),
        json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": mark}}),
    ]
}

/// Reads frames until `start`; `connected` may come first. Anything else before `start` ends the call.
async fn wait_for_start<S, E>(stream: &mut S) -> Result<StartInfo, CallError>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(message) = stream.next().await {
        let text = match message {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| CallError::NotTwilio(e.to_string()))?;
        match value.get("event").and_then(Value::as_str) {
            Some("connected") => continue,
            Some("start") => {
                let frame: TwilioIn = serde_json::from_value(value).map_err(|e| CallError::NotTwilio(format!("bad `start`: {e}")))?;
                let TwilioIn::Start { start, .. } = frame else { unreachable!("tagged start") };
                return Ok(start);
            }
            Some("media") => return Err(CallError::BeforeStart("media")),
            Some("mark") => return Err(CallError::BeforeStart("mark")),
            Some("dtmf") => return Err(CallError::BeforeStart("dtmf")),
            Some("stop") => return Err(CallError::BeforeStart("stop")),
            Some(other) => return Err(CallError::NotTwilio(format!("unknown event {other:?}"))),
            None => return Err(CallError::NotTwilio("no `event` field".into())),
        }
    }
    Err(CallError::NoStart)
}

fn check_start(start: StartInfo) -> Result<StartInfo, CallError> {
    if let Some(f) = &start.media_format {
        if f.encoding != "audio/x-mulaw" || f.sample_rate != 8000 || f.channels != 1 {
            return Err(CallError::Format(format!("{} at {} Hz, {} channel(s)", f.encoding, f.sample_rate, f.channels)));
        }
    }
    debug!(call_sid = %start.call_sid, "twilio start accepted");
    Ok(start)
}

fn same_stream(sid: &Option<String>, expected: &str, session_id: &str) -> bool {
    match sid {
        Some(s) if s != expected => {
            warn!(%session_id, got = %s, "twilio call: frame for an unknown stream ignored");
            false
        }
        _ => true,
    }
}

/// The session settings of a phone call: μ-law both ways, and the call's own instructions and voice.
fn phone_session(params: &HashMap<String, String>) -> Session {
    let ulaw = || Some(AudioFormatSpec { format_type: "audio/pcmu".into(), rate: None });
    Session {
        instructions: params.get("instructions").cloned(),
        audio: Some(SessionAudio {
            input: Some(AudioInput { format: ulaw(), turn_detection: None, transcription: None }),
            output: Some(AudioOutput { format: ulaw(), voice: params.get("voice").cloned().map(Voice::Name), speed: None }),
        }),
        ..Session::default()
    }
}
