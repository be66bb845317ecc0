//! Twilio Media Streams (`<Connect><Stream>`, bidirectional) on a WebSocket, in front of the same
//! session actor as `/v1/realtime`. Only this file knows Twilio's JSON: `connected`, `start`, `media`
//! (base64 μ-law 8 kHz, 20 ms), `dtmf`, `mark`, `stop` in; `media`, `mark` after each chunk, and
//! `clear` on barge-in out. The echoed marks say exactly how much of the reply the caller heard, and
//! the assistant's item is truncated to that, not to our own estimate.
//!
//! A reader task maps Twilio's frames onto session commands (μ-law straight to PCM audio, a keypad
//! digit to a user item and a response); a writer maps the session's events onto Twilio frames (PCM
//! to μ-law cut into 20 ms frames, each followed by a mark) and tells the session what the caller
//! heard, from the echoed marks. The reader may wait for room in the actor's queue
//! without holding up outbound audio, whose pace the actor's playback clock sets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use base64::Engine as _;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::audio::{ulaw_decode, ulaw_encode, AudioFormat, G711_RATE_HZ};
use crate::metering::ledger::SessionMeter;
use crate::session::conversation::{Content, Item, MessageItem, Role};
use crate::session::settings::Voice;
use crate::session::{run_session, Command, Event, Inbound, Outbound, Peer, SessionStart, SettingsUpdate, VoiceEngines};
use crate::transport::{close_for, end_connection, push_audio, Outbox, OutboxLimits, INBOUND_CAPACITY};

/// 20 ms of μ-law at 8 kHz: the frame Twilio plays.
const FRAME_BYTES: usize = 160;

/// The first frames of a call must arrive within this long, or the socket is not a Twilio stream.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Outbound events waiting for the writer; the actor closes a call that leaves this many unsent.
const OUTBOUND_CAPACITY: usize = 1024;

/// How long the caller may take to answer the server's close frame before its socket is dropped.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// Our marks are named `voxgate-N`, N counting up from 1 in each call.
const MARK_PREFIX: &str = "voxgate-";

/// Twilio's events; others are ignored, as Twilio may add some.
const EVENTS: [&str; 6] = ["connected", "start", "media", "dtmf", "mark", "stop"];

/// One frame from Twilio.
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

/// Why a call ended early: logged, and the socket closed with [`CallError::close_code`] and this
/// text as the reason (Twilio's protocol has no error message of its own).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("not a Twilio Media Streams frame: {0}")]
    NotTwilio(String),
    #[error("malformed `{event}` frame: {error}")]
    Malformed { event: String, error: String },
    #[error("`{0}` arrived before `start`")]
    BeforeStart(&'static str),
    #[error("a second `start` in one call")]
    SecondStart,
    #[error("no `start` frame within {} s", START_TIMEOUT.as_secs())]
    NoStart,
    #[error("`{event}` for unknown stream id {got:?}; this call's is {expected:?}")]
    UnknownStream { event: &'static str, got: String, expected: String },
    #[error("invalid base64 in `media.payload`: {0}")]
    Base64(String),
    #[error("media format {0} is not supported: Twilio streams send audio/x-mulaw at 8000 Hz, mono")]
    Format(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl CallError {
    /// The WebSocket close code (RFC 6455): 1002 for frames out of protocol order or for another
    /// stream, 1003 for data that is not Twilio's, 1007 for an audio payload that cannot be decoded,
    /// 1008 for a call this server refuses (key, route, session limit).
    fn close_code(&self) -> u16 {
        match self {
            CallError::BeforeStart(_) | CallError::SecondStart | CallError::NoStart | CallError::UnknownStream { .. } => 1002,
            CallError::NotTwilio(_) | CallError::Malformed { .. } | CallError::Format(_) => 1003,
            CallError::Base64(_) => 1007,
            CallError::Refused(_) => 1008,
        }
    }
}

/// Serves one Twilio call on `socket`.
pub async fn serve<S, E>(socket: S, engines: Arc<VoiceEngines>, admit: Admit, cancel: CancellationToken)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let (mut sink, mut stream) = socket.split();
    // Heard from at every frame; a stream whose media stops for `twilio_media_timeout_ms` is ended.
    let peer = Arc::new(Peer::new(Duration::from_millis(engines.settings.twilio_media_timeout_ms)));
    let started = tokio::time::timeout(START_TIMEOUT, wait_for_start(&mut stream, &peer)).await.unwrap_or(Err(CallError::NoStart));
    let checked = match started.and_then(check_start) {
        Ok(start) => admit(start.custom_parameters.clone()).await.map(|a| (a, start)).map_err(CallError::Refused),
        Err(e) => Err(e),
    };
    let (admitted, start) = match checked {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "twilio stream refused");
            let send = sink.send(super::close_frame(e.close_code(), &e.to_string()));
            let _ = tokio::time::timeout(Duration::from_millis(engines.settings.send_timeout_ms), send).await;
            return;
        }
    };
    let (session_start, meter, params, stream_sid) = (admitted.session, admitted.meter, start.custom_parameters, start.stream_sid);
    let session_id = session_start.session_id.clone();
    info!(%session_id, %stream_sid, "twilio call started");
    let metrics = || &engines.metrics;
    metrics().add("voxgate_realtime_sessions_active", &[], 1.0);

    let (in_tx, in_rx) = mpsc::channel(INBOUND_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let session_cancel = cancel.child_token();
    let mut actor =
        tokio::spawn(run_session(engines.clone(), session_start, meter, Some(peer.clone()), in_rx, out_tx, session_cancel.clone()));
    // Configure the session for the phone line before any audio.
    let configure = Command::Configure { update: Box::new(phone_settings(&params)), applied: None };
    let _ = in_tx.send(Inbound::from(configure)).await;

    // The reader passes on the newest mark Twilio echoed, and why it stopped when the caller sent
    // something wrong; the writer holds only a weak sender to the actor, so the actor sees its
    // inbound close as soon as the reader ends.
    let (echoed_tx, echoed_rx) = watch::channel(0u64);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = Writer::new(stream_sid.clone(), session_id.clone(), in_tx.downgrade());
    let outbox = Outbox::new(sink, OutboxLimits::from_settings(&engines.settings), peer.clone(), engines.metrics.clone());
    let mut writer = tokio::spawn(writer.run(outbox, out_rx, echoed_rx, close_rx, peer.clone(), engines.clone()));
    let reader = read_call(&mut stream, in_tx, echoed_tx, &stream_sid, &session_id, &engines, &peer);

    let (mut writer_done, mut graceful) = (false, false);
    let cancelled = crate::session::cancellation_signal(&session_cancel);
    let client_left = tokio::select! {
        ended = reader => {
            match ended {
                Ok(()) => drop(close_tx),
                Err(e) => {
                    warn!(%session_id, error = %e, code = e.close_code(), "twilio call: bad input; closing");
                    let _ = close_tx.send(e);
                }
            }
            true
        }
        // The session closed the call, or the socket broke.
        closed = &mut writer => {
            writer_done = true;
            graceful = matches!(closed, Ok(true));
            true
        }
        _ = cancelled => false,
    };
    // The reader (and its sender) is gone. When the caller left, the actor sees its inbound close and
    // ends the session itself (recording why, billing it); otherwise, or if it does not, cancel it.
    if !client_left || tokio::time::timeout(Duration::from_secs(2), &mut actor).await.is_err() {
        session_cancel.cancel();
        let _ = actor.await;
    }
    session_cancel.cancel();
    // Aborted, not detached: a writer stuck on a socket nobody reads would keep it and its queue.
    if !writer_done {
        match tokio::time::timeout(Duration::from_secs(2), &mut writer).await {
            Ok(closed) => graceful = matches!(closed, Ok(true)),
            Err(_) => {
                writer.abort();
                let _ = writer.await;
            }
        }
    }
    // A close sent on a working connection: let the caller's own close frame arrive before the
    // socket goes, so nothing the server said is lost to a reset.
    if graceful {
        let reply = async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, reply).await;
    }
    metrics().add("voxgate_realtime_sessions_active", &[], -1.0);
}

/// Reads Twilio's frames until the caller hangs up (`Ok`) or sends something wrong (`Err`).
async fn read_call<S, E>(
    stream: &mut S,
    to_actor: mpsc::Sender<Inbound>,
    echoed: watch::Sender<u64>,
    stream_sid: &str,
    session_id: &str,
    engines: &VoiceEngines,
    peer: &Peer,
) -> Result<(), CallError>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let metrics = &engines.metrics;
    let same_stream = |event: &'static str, sid: Option<String>| match sid {
        Some(got) if got != stream_sid => Err(CallError::UnknownStream { event, got, expected: stream_sid.to_string() }),
        _ => Ok(()),
    };
    while let Some(message) = stream.next().await {
        if message.is_ok() {
            peer.heard();
        }
        let text = match message {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => return Err(CallError::NotTwilio("a binary frame (Twilio sends JSON text)".into())),
            Ok(Message::Close(_)) => return Ok(()),
            Ok(_) => continue,
            Err(e) => {
                debug!(%session_id, error = %e, "twilio socket read failed");
                peer.lost();
                return Ok(());
            }
        };
        let frame = match serde_json::from_str::<TwilioIn>(&text) {
            Ok(f) => f,
            Err(e) => match unreadable(&text, e) {
                Some(error) => return Err(error),
                None => continue,
            },
        };
        match frame {
            TwilioIn::Media { media, stream_sid: sid } => {
                same_stream("media", sid)?;
                if media.track.as_deref().is_some_and(|t| t != "inbound" && t != "inbound_track") {
                    continue;
                }
                // A caller's bad audio ends the call with a reason instead of a stream of error
                // events nobody reads.
                let ulaw = base64::engine::general_purpose::STANDARD
                    .decode(media.payload.as_bytes())
                    .map_err(|e| CallError::Base64(e.to_string()))?;
                let samples = ulaw.iter().map(|&code| ulaw_decode(code)).collect();
                if !push_audio(&to_actor, Inbound::from(Command::Audio { samples, rate_hz: G711_RATE_HZ }), metrics).await {
                    return Ok(());
                }
            }
            TwilioIn::Mark { mark, stream_sid: sid } => {
                same_stream("mark", sid)?;
                // Echoes arrive in order: everything up to this mark has played.
                match mark.name.strip_prefix(MARK_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
                    Some(n) => {
                        echoed.send_if_modified(|newest| {
                            let newer = n > *newest;
                            if newer {
                                *newest = n;
                            }
                            newer
                        });
                    }
                    None => debug!(%session_id, mark = %mark.name, "twilio call: echo of a mark we did not send"),
                }
            }
            TwilioIn::Dtmf { dtmf, stream_sid: sid } => {
                same_stream("dtmf", sid)?;
                // The digit goes into the prompt: only a keypad key (0-9, *, #, A-D) is one.
                if !matches!(dtmf.digit.as_bytes(), [b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D']) {
                    let error = format!("`dtmf.digit` must be one key of 0-9, *, #, A-D; got {} bytes", dtmf.digit.len());
                    return Err(CallError::Malformed { event: "dtmf".into(), error });
                }
                let text = format!("(The caller pressed {} on the phone keypad.)", dtmf.digit);
                let item =
                    Item::Message(MessageItem { id: None, status: None, role: Role::User, content: vec![Content::InputText { text }] });
                let add = Command::AddItem { item, previous_item_id: None };
                let respond = Command::CreateResponse(Box::default());
                if to_actor.send(Inbound::from(add)).await.is_err() || to_actor.send(Inbound::from(respond)).await.is_err() {
                    return Ok(());
                }
            }
            TwilioIn::Stop {} => {
                info!(%session_id, "twilio call stopped");
                return Ok(());
            }
            TwilioIn::Start { .. } => return Err(CallError::SecondStart),
            TwilioIn::Connected {} => {}
        }
    }
    // The stream ended without `stop` or a close frame: the connection was cut.
    peer.lost();
    Ok(())
}

/// Why a text frame is not one of Twilio's; `None` for an event Twilio may have added since.
fn unreadable(text: &str, error: serde_json::Error) -> Option<CallError> {
    let value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(e) => return Some(CallError::NotTwilio(e.to_string())),
    };
    match value.get("event").and_then(Value::as_str) {
        None => Some(CallError::NotTwilio("no `event` field".into())),
        Some(event) if EVENTS.contains(&event) => Some(CallError::Malformed { event: event.to_string(), error: error.to_string() }),
        Some(event) => {
            debug!(event, "twilio call: unknown event ignored");
            None
        }
    }
}

/// A chunk of reply audio sent to Twilio, known by its mark.
struct Sent {
    mark: u64,
    item_id: String,
    /// Where the chunk ends in its item's audio.
    end_ms: u64,
}

/// The writer's state: the marks sent and echoed, and reply audio not yet a whole frame.
struct Writer {
    stream_sid: String,
    session_id: String,
    to_actor: mpsc::WeakSender<Inbound>,
    /// Marks sent and not yet echoed, oldest first.
    pending: VecDeque<Sent>,
    /// The end of the last chunk the caller heard, in its item's audio.
    heard: Option<(String, u64)>,
    /// The number of the last mark sent.
    mark_seq: u64,
    /// Marks up to this one were pending at the last `clear`: their echoes say nothing was heard.
    cleared_upto: u64,
    /// A barge-in cleared the line: the next truncation the session reports is corrected to the marks.
    cleared: bool,
    /// The item whose audio goes out now, and how much of it has gone out.
    item_ms: Option<(String, f64)>,
    /// Reply audio not yet a whole 20 ms frame.
    outgoing: Vec<u8>,
}

impl Writer {
    fn new(stream_sid: String, session_id: String, to_actor: mpsc::WeakSender<Inbound>) -> Writer {
        Writer {
            stream_sid,
            session_id,
            to_actor,
            pending: VecDeque::new(),
            heard: None,
            mark_seq: 0,
            cleared_upto: 0,
            cleared: false,
            item_ms: None,
            outgoing: Vec::with_capacity(2 * FRAME_BYTES),
        }
    }

    /// Writes the actor's events as Twilio frames until the session ends (then closes the call), the
    /// reader reports bad input (then closes with its reason), or the connection fails (a socket
    /// that takes nothing, too many bytes waiting, a peer that answers no ping).
    async fn run<K>(
        mut self,
        mut outbox: Outbox<K>,
        mut from_actor: mpsc::Receiver<Outbound>,
        mut echoed: watch::Receiver<u64>,
        mut bad_input: oneshot::Receiver<CallError>,
        peer: Arc<Peer>,
        engines: Arc<VoiceEngines>,
    ) -> bool
    where
        K: Sink<Message> + Unpin,
    {
        let mut reader_done = false;
        let stop = loop {
            // Echoes first: a mark echoed before a `clear` went out was heard.
            let frames = tokio::select! {
                biased;
                stop = outbox.run() => break stop,
                bad = &mut bad_input, if !reader_done => match bad {
                    Ok(e) => {
                        return outbox.finish(super::close_frame(e.close_code(), &e.to_string())).await.is_ok();
                    }
                    Err(_) => {
                        reader_done = true;
                        continue;
                    }
                },
                Ok(()) = echoed.changed() => {
                    let newest = *echoed.borrow_and_update();
                    self.on_echo(newest);
                    continue;
                }
                out = from_actor.recv() => match out {
                    Some(Outbound::Event(event)) => self.on_event(*event).await,
                    Some(Outbound::Close(reason)) => {
                        return outbox.finish(close_for(reason, &peer, &engines.settings)).await.is_ok();
                    }
                    None => {
                        return outbox.finish(super::close_frame(1000, "call ended")).await.is_ok();
                    }
                },
            };
            let mut overflow = None;
            for frame in frames {
                if let Err(stop) = outbox.push(Message::Text(Utf8Bytes::from(frame.to_string()))) {
                    overflow = Some(stop);
                    break;
                }
            }
            if let Some(stop) = overflow {
                break stop;
            }
        };
        end_connection(&mut outbox, stop, &peer, &engines, &self.session_id).await;
        false
    }

    /// Everything up to mark `newest` has played.
    fn on_echo(&mut self, newest: u64) {
        if newest <= self.cleared_upto {
            return;
        }
        while self.pending.front().is_some_and(|s| s.mark <= newest) {
            if let Some(sent) = self.pending.pop_front() {
                self.heard = Some((sent.item_id, sent.end_ms));
            }
        }
    }

    /// The Twilio frames for one of the session's events.
    async fn on_event(&mut self, event: Event) -> Vec<Value> {
        match event {
            Event::Audio { item_id, samples, .. } => {
                // Twilio plays 20 ms frames (160 bytes of μ-law); the engine's frames are re-cut to that.
                self.outgoing.extend(samples.iter().map(|&s| ulaw_encode(s)));
                let mut frames = Vec::new();
                while self.outgoing.len() >= FRAME_BYTES {
                    let chunk: Vec<u8> = self.outgoing.drain(..FRAME_BYTES).collect();
                    frames.extend(self.media_and_mark(&chunk, &item_id));
                }
                frames
            }
            Event::OutputItemDone { item: Item::Message(m), .. } if matches!(m.content.first(), Some(Content::OutputAudio { .. })) => {
                // The last, shorter frame of the answer.
                let chunk = std::mem::take(&mut self.outgoing);
                match m.id {
                    Some(item_id) if !chunk.is_empty() => self.media_and_mark(&chunk, &item_id).to_vec(),
                    _ => Vec::new(),
                }
            }
            Event::AudioCleared { .. } => vec![self.clear()],
            Event::ItemTruncated { item_id, audio_end_ms } => {
                // The session cut the item to its own clock; the marks know better. If it thought
                // everything had played but marks are still out, the carrier is still playing them.
                let mut frames = Vec::new();
                if !self.cleared && self.pending.iter().any(|s| s.item_id == item_id) {
                    frames.push(self.clear());
                }
                if !std::mem::take(&mut self.cleared) {
                    return frames;
                }
                let by_marks = match &self.heard {
                    Some((heard_item, ms)) if *heard_item == item_id => *ms,
                    _ => 0,
                };
                if by_marks != audio_end_ms {
                    debug!(session_id = %self.session_id, %item_id, by_clock_ms = audio_end_ms, by_marks_ms = by_marks, "twilio call: truncated to the echoed marks");
                    if let Some(to_actor) = self.to_actor.upgrade() {
                        let _ = to_actor.send(Inbound::from(Command::Heard { item_id, ms: by_marks })).await;
                    }
                }
                frames
            }
            Event::Error(error) => {
                warn!(session_id = %self.session_id, kind = ?error.kind, message = %error.message, "twilio call: session error");
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Barge-in: empty the carrier's buffer. Twilio echoes every pending mark; none was heard.
    fn clear(&mut self) -> Value {
        self.cleared = true;
        self.cleared_upto = self.mark_seq;
        self.pending.clear();
        self.outgoing.clear();
        json!({"event": "clear", "streamSid": self.stream_sid})
    }

    /// A `media` frame and the `mark` that follows it, remembering where the chunk ends in its item.
    fn media_and_mark(&mut self, chunk: &[u8], item_id: &str) -> [Value; 2] {
        let sent_ms = match &mut self.item_ms {
            Some((id, ms)) if id == item_id => ms,
            slot => &mut slot.insert((item_id.to_string(), 0.0)).1,
        };
        *sent_ms += chunk.len() as f64 / 8.0;
        let end_ms = sent_ms.round() as u64;
        self.mark_seq += 1;
        self.pending.push_back(Sent { mark: self.mark_seq, item_id: item_id.to_string(), end_ms });
        let payload = base64::engine::general_purpose::STANDARD.encode(chunk);
        [
            json!({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}),
            json!({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": format!("{MARK_PREFIX}{}", self.mark_seq)}}),
        ]
    }
}

/// Reads frames until `start`; `connected` may come first. Anything else before `start` ends the call.
async fn wait_for_start<S, E>(stream: &mut S, peer: &Peer) -> Result<StartInfo, CallError>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(message) = stream.next().await {
        if message.is_ok() {
            peer.heard();
        }
        let text = match message {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => return Err(CallError::NotTwilio("a binary frame (Twilio sends JSON text)".into())),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| CallError::NotTwilio(e.to_string()))?;
        match value.get("event").and_then(Value::as_str) {
            Some("connected") => continue,
            Some("start") => {
                return match serde_json::from_value(value) {
                    Ok(TwilioIn::Start { start }) => Ok(start),
                    Ok(_) => Err(CallError::NotTwilio("`start` without its details".into())),
                    Err(e) => Err(CallError::Malformed { event: "start".into(), error: e.to_string() }),
                };
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

/// The session settings of a phone call: μ-law both ways, and the call's own instructions and voice.
fn phone_settings(params: &HashMap<String, String>) -> SettingsUpdate {
    SettingsUpdate {
        instructions: params.get("instructions").cloned(),
        input_format: Some(AudioFormat::Pcmu),
        output_format: Some(AudioFormat::Pcmu),
        voice: params.get("voice").cloned().map(Voice::Name),
        ..SettingsUpdate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conversation::ItemStatus;

    fn audio(item_id: &str, samples: usize) -> Event {
        Event::Audio { response_id: "resp_1".into(), item_id: item_id.into(), samples: vec![1000; samples], format: AudioFormat::Pcmu }
    }

    fn spoken_done(item_id: &str) -> Event {
        let item = Item::Message(MessageItem {
            id: Some(item_id.into()),
            status: Some(ItemStatus::Completed),
            role: Role::Assistant,
            content: vec![Content::OutputAudio { transcript: Some("Hello.".into()) }],
        });
        Event::OutputItemDone { response_id: "resp_1".into(), item }
    }

    #[tokio::test]
    async fn pcm_goes_out_as_ulaw_frames_of_20_ms_each_with_a_mark() {
        let (tx, _rx) = mpsc::channel(4);
        let mut w = Writer::new("MZ1".into(), "sess_1".into(), tx.downgrade());
        // 60 ms of audio and 10 ms more: three whole frames now, the rest when the answer is done.
        let frames = w.on_event(audio("item_1", 560)).await;
        assert_eq!(frames.len(), 6);
        let payload = frames[0]["media"]["payload"].as_str().unwrap();
        let ulaw = base64::engine::general_purpose::STANDARD.decode(payload).unwrap();
        assert_eq!(ulaw, vec![ulaw_encode(1000); FRAME_BYTES]);
        assert_eq!(frames[1], json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": "voxgate-1"}}));
        assert_eq!(frames[5]["mark"]["name"], "voxgate-3");
        let last = w.on_event(spoken_done("item_1")).await;
        assert_eq!(last.len(), 2);
        let ulaw = base64::engine::general_purpose::STANDARD.decode(last[0]["media"]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(ulaw.len(), 560 - 3 * FRAME_BYTES);
        // Session events Twilio has no frame for are dropped.
        assert!(w.on_event(Event::InputCleared).await.is_empty());
    }

    #[tokio::test]
    async fn after_a_barge_in_the_session_hears_what_the_marks_say_was_played() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut w = Writer::new("MZ1".into(), "sess_1".into(), tx.downgrade());
        w.on_event(audio("item_1", 5 * FRAME_BYTES)).await;
        // Twilio played the first two frames (40 ms) before the caller spoke.
        w.on_echo(2);
        let clear = w.on_event(Event::AudioCleared { response_id: "resp_1".into() }).await;
        assert_eq!(clear, vec![json!({"event": "clear", "streamSid": "MZ1"})]);
        // Echoes of marks pending at the clear say nothing was heard.
        w.on_echo(5);
        // The session cut the item by its clock at 90 ms; the marks say 40.
        assert!(w.on_event(Event::ItemTruncated { item_id: "item_1".into(), audio_end_ms: 90 }).await.is_empty());
        let heard = rx.try_recv().expect("the session hears the marks' figure");
        assert!(matches!(heard.command, Command::Heard { ref item_id, ms: 40 } if item_id == "item_1"), "{heard:?}");
        // The session's second truncation (to the marks) is final.
        assert!(w.on_event(Event::ItemTruncated { item_id: "item_1".into(), audio_end_ms: 40 }).await.is_empty());
        assert!(rx.try_recv().is_err());
    }
}
