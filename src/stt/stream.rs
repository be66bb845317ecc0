//! A hosted speech-to-text vendor that streams for the whole call: one WebSocket per call, opened
//! at the call's first utterance and closed politely when the call ends, carrying each utterance's
//! audio as the caller speaks. The vendor's wire format is a [`Protocol`] (one per vendor file:
//! `deepgram.rs`, `assemblyai.rs`, `openai.rs`); everything else is here, once:
//!
//! - **Framing and time.** Audio goes out in the vendor's frame size. The vendor counts time in
//!   the audio it received; each utterance remembers where its audio began in that count and in
//!   the session's input, so the vendor's word times land on the session's timeline exactly.
//! - **Which words belong to which utterance**: a word belongs to the utterance whose audio holds
//!   its start; final words add up, interim ones replace the last guess.
//! - **When an utterance's transcript is final**: after the session ends the utterance (and the
//!   protocol asked the vendor to finish: Finalize, ForceEndpoint, commit), at the vendor's
//!   end-of-turn or answer to that request, or once the vendor, having spoken about this
//!   utterance, stays quiet for [`Limits::settle`].
//! - **Failure**: a connect or handshake that fails or outlasts [`Limits::connect`], a vendor error
//!   or close, [`MALFORMED_IN_A_ROW`] unreadable messages in a row, or no message for
//!   [`Limits::stall`] while an utterance awaits one. Every utterance in flight then fails with
//!   [`SttError::Engine`], so the fallback engine can take over (`fallback.rs`), and so does every
//!   later one of the call.
//! - **Keepalive** while nobody speaks, and the vendor's close message at the end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

use super::{BoxFuture, SpeechToText, SttError, Transcript, Utterance, Word, STT_RATE_HZ};
use crate::metrics::Metrics;

/// Unreadable vendor messages in a row after which the engine counts as failed.
pub const MALFORMED_IN_A_ROW: u32 = 5;

/// Frames of caller audio queued for the connection (it may be connecting): about 5 s.
const CALL_QUEUE_FRAMES: usize = 256;

/// How long the close at the end of a call waits for the vendor's last words and its close.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Time limits of a vendor stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest the socket may take to open (TCP, TLS and the WebSocket upgrade).
    pub connect: Duration,
    /// Longest the vendor may stay silent while an utterance awaits its words.
    pub stall: Duration,
    /// After an utterance ended, how long the vendor may stay quiet before what it said is final.
    pub settle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { connect: Duration::from_millis(2_000), stall: Duration::from_millis(5_000), settle: Duration::from_millis(1_000) }
    }
}

/// A word as a vendor reports it; times in ms of the audio the vendor received, when it gives them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VendorWord {
    pub text: String,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub confidence: Option<f32>,
    pub speaker: Option<String>,
}

/// What a vendor message says, in the stream's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// Words of the segment being recognised. Final words are added to their utterance; words
    /// that are not final replace the previous guess. `end_of_turn`: the vendor says the speaker
    /// finished. `answer`: the words answer the n-th finish request of the call (from 0), for
    /// vendors whose answers say so (OpenAI's items); their words may have no times.
    Words { words: Vec<VendorWord>, is_final: bool, end_of_turn: bool, answer: Option<u64> },
    /// The vendor heard speech begin.
    SpeechStarted,
    /// The vendor says it is done with the stream (after the close message).
    Closing,
    /// The vendor reports an error that ends the stream.
    Failed(String),
    /// A message with nothing for the transcript (session begin, metadata, a warning).
    Nothing,
    /// A message that cannot be read.
    Malformed(String),
}

/// One vendor's wire format, one instance per call (it may keep state across messages).
pub trait Protocol: Send + 'static {
    /// The socket's request: URL with its query, and headers (the key goes in a header or the
    /// query; neither is ever logged).
    fn request(&self) -> Result<Request<()>, SttError>;

    /// Messages sent right after the socket opens.
    fn opening(&mut self) -> Vec<Message> {
        Vec::new()
    }

    /// Samples per audio message: the frames are batched to this.
    fn frame_samples(&self) -> usize;

    /// The smallest audio message the vendor takes; a shorter last piece of an utterance is padded
    /// with silence to it.
    fn min_frame_samples(&self) -> usize {
        0
    }

    /// One audio message.
    fn audio(&mut self, samples: &[i16]) -> Message;

    /// What keeps an idle socket open, and how often to send it; `None` when nothing is needed.
    fn keepalive(&self) -> Option<(Duration, Message)>;

    /// Asks the vendor to finish the words of the audio sent so far (the session ended an utterance).
    fn finish(&mut self) -> Vec<Message>;

    /// Asks the vendor to end the stream.
    fn close(&mut self) -> Option<Message>;

    /// Reads one text message.
    fn read(&mut self, text: &str) -> Vec<Heard>;

    /// Whether the vendor sends words while the caller speaks. One that does not (OpenAI's
    /// transcribe models answer after the commit) may be silent through a long utterance: its
    /// stall is counted from the finish request only.
    fn speaks_while_listening(&self) -> bool {
        true
    }

    /// Whether the vendor says when the caller's turn ended (AssemblyAI `end_of_turn`, Deepgram
    /// `speech_final`), so it can decide turns for the session.
    fn ends_turns(&self) -> bool {
        true
    }
}

/// Makes one call's protocol.
pub type MakeProtocol = dyn Fn() -> Box<dyn Protocol> + Send + Sync;

/// A streaming vendor engine: shared by every session; each call gets its own socket ([`SpeechToText::for_call`]).
pub struct VendorStt {
    name: String,
    make: Arc<MakeProtocol>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl VendorStt {
    pub fn new(name: impl Into<String>, limits: Limits, metrics: Arc<Metrics>, make: Arc<MakeProtocol>) -> VendorStt {
        VendorStt { name: name.into(), make, limits, metrics }
    }

    fn call(&self, vendor_turns: bool) -> Arc<VendorCall> {
        let (tx, rx) = mpsc::channel(CALL_QUEUE_FRAMES);
        let mut connection = Connection::new(self.name.clone(), (self.make)(), self.limits, self.metrics.clone());
        connection.vendor_turns = vendor_turns;
        tokio::spawn(connection.run(rx));
        Arc::new(VendorCall { name: self.name.clone(), tx, last_ended: std::sync::Mutex::new(None) })
    }
}

impl SpeechToText for VendorStt {
    fn name(&self) -> &str {
        &self.name
    }

    /// An utterance outside a call gets a socket of its own, closed when it is transcribed.
    fn transcribe(&self, utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        self.call(false).transcribe(utterance, partials)
    }

    fn for_call(&self, call: &super::CallOptions) -> Option<Arc<dyn SpeechToText>> {
        Some(self.call(call.vendor_turns))
    }

    fn ends_turns(&self) -> bool {
        (self.make)().ends_turns()
    }
}

/// What a call's utterances tell its connection.
enum CallIn {
    Open { start_ms: u64, out: mpsc::Sender<SpanOut> },
    Audio(Vec<i16>),
    End,
}

/// What the connection tells an utterance.
enum SpanOut {
    Partial(Transcript),
    Final(Result<Transcript, SttError>),
}

/// One call's end of its vendor socket. Utterances come one after another; dropping the last
/// handle ends the call, and the connection closes the socket as the vendor asks.
pub struct VendorCall {
    name: String,
    tx: mpsc::Sender<CallIn>,
    /// Resolves when the last utterance given to the call has sent its end: the next one's audio
    /// goes out only then, or the two would interleave when the first one's task runs late.
    last_ended: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl SpeechToText for VendorCall {
    fn name(&self) -> &str {
        &self.name
    }

    fn transcribe(&self, mut utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        let tx = self.tx.clone();
        let name = self.name.clone();
        // Utterances come in the order the session opens them (`transcribe` is called then).
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        let previous = self.last_ended.lock().unwrap_or_else(|p| p.into_inner()).replace(ended_rx);
        Box::pin(async move {
            if let Some(previous) = previous {
                // Ok or dropped: either way the previous utterance sends nothing more.
                let _ = previous.await;
            }
            let mut ended = Some(ended_tx);
            let gone = || SttError::Engine(format!("{name}: the connection ended"));
            let (out_tx, mut out_rx) = mpsc::channel(16);
            tx.send(CallIn::Open { start_ms: utterance.start_ms, out: out_tx }).await.map_err(|_| gone())?;
            let mut audio_open = true;
            loop {
                tokio::select! {
                    frame = utterance.audio.recv(), if audio_open => match frame {
                        Some(frame) => tx.send(CallIn::Audio(frame)).await.map_err(|_| gone())?,
                        None => {
                            audio_open = false;
                            tx.send(CallIn::End).await.map_err(|_| gone())?;
                            ended.take();
                        }
                    },
                    out = out_rx.recv() => match out {
                        Some(SpanOut::Partial(t)) => {
                            let _ = partials.try_send(t);
                        }
                        Some(SpanOut::Final(result)) => return result,
                        None => return Err(gone()),
                    },
                }
            }
        })
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One utterance of the call, as the connection tracks it.
struct Span {
    /// Where its audio begins in the vendor's count and in the session's input, in ms.
    vendor_start_ms: u64,
    session_start_ms: u64,
    /// Set when the session ended it: where its audio ended, and the number of the finish request.
    ended: Option<(u64, u64)>,
    ended_at: Option<Instant>,
    opened_at: Instant,
    /// Whether the vendor said anything since it opened.
    heard: bool,
    /// The vendor's last word on it was an end of turn, with no guess since: once the session
    /// ends it too, nothing more is coming.
    turn_closed: bool,
    finals: Vec<Word>,
    interim: Vec<Word>,
    speaker: Option<String>,
    out: mpsc::Sender<SpanOut>,
}

impl Span {
    fn transcript(&self, name: &str) -> Transcript {
        // What is still a guess counts too: the vendor said no more about it.
        let mut words = self.finals.clone();
        words.extend(self.interim.iter().cloned());
        let text = words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
        let confidence = if words.is_empty() { 0.0 } else { words.iter().map(|w| w.confidence).sum::<f32>() / words.len() as f32 };
        Transcript { text, words, speaker: self.speaker.clone(), confidence, engine: Some(name.to_string()) }
    }

    /// A vendor time on the session's timeline (saturating: a vendor may say any number).
    fn session_ms(&self, vendor_ms: u64) -> u64 {
        self.session_start_ms.saturating_add(vendor_ms.saturating_sub(self.vendor_start_ms))
    }

    /// Vendor words as session words. Words without times share the span's audio evenly.
    fn words(&self, words: &[VendorWord], vendor_now_ms: u64) -> Vec<Word> {
        let untimed = words.iter().any(|w| w.start_ms.is_none() || w.end_ms.is_none());
        let (from, to) = (self.vendor_start_ms, self.ended.map_or(vendor_now_ms, |(end, _)| end).max(self.vendor_start_ms));
        let step = (to - from) / words.len().max(1) as u64;
        words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let (start, end) = if untimed {
                    (from + step * i as u64, from + step * (i as u64 + 1))
                } else {
                    (w.start_ms.unwrap_or(from), w.end_ms.unwrap_or(from))
                };
                Word {
                    text: w.text.clone(),
                    start_ms: self.session_ms(start),
                    end_ms: self.session_ms(end.max(start)),
                    confidence: w.confidence.unwrap_or(0.0).clamp(0.0, 1.0),
                }
            })
            .collect()
    }
}

/// The task that owns one call's socket.
struct Connection {
    name: String,
    protocol: Box<dyn Protocol>,
    limits: Limits,
    metrics: Arc<Metrics>,
    socket: Option<Socket>,
    /// Why the stream failed; every later utterance fails with it.
    dead: Option<SttError>,
    spans: VecDeque<Span>,
    /// Samples sent to the vendor, and those batched for the next message.
    sent: u64,
    pending: Vec<i16>,
    finishes: u64,
    /// The vendor's end of turn ends an utterance the session has not ended.
    vendor_turns: bool,
    last_sent: Instant,
    last_heard: Instant,
    malformed: u32,
}

impl Connection {
    fn new(name: String, protocol: Box<dyn Protocol>, limits: Limits, metrics: Arc<Metrics>) -> Connection {
        let now = Instant::now();
        Connection {
            name,
            protocol,
            limits,
            metrics,
            socket: None,
            dead: None,
            spans: VecDeque::new(),
            sent: 0,
            pending: Vec::new(),
            finishes: 0,
            vendor_turns: false,
            last_sent: now,
            last_heard: now,
            malformed: 0,
        }
    }

    fn sent_ms(&self) -> u64 {
        self.sent * 1000 / u64::from(STT_RATE_HZ)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<CallIn>) {
        loop {
            let due = self.next_due();
            let sleep = async move {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_call(msg).await,
                    None => break,
                },
                msg = next_message(&mut self.socket) => self.on_message(msg).await,
                () = sleep => self.on_due().await,
            }
        }
        self.close().await;
    }

    async fn on_call(&mut self, msg: CallIn) {
        match msg {
            CallIn::Open { start_ms, out } => {
                // An utterance left without an end was dropped by the session (cleared).
                self.spans.retain(|s| s.ended.is_some() && !s.out.is_closed());
                if let Some(e) = &self.dead {
                    let _ = out.try_send(SpanOut::Final(Err(e.clone())));
                    return;
                }
                if self.socket.is_none() {
                    if let Err(e) = self.connect().await {
                        self.fail(e);
                        let _ = out.try_send(SpanOut::Final(Err(self.dead.clone().unwrap_or_else(|| SttError::Engine("failed".into())))));
                        return;
                    }
                }
                let now = Instant::now();
                self.spans.push_back(Span {
                    vendor_start_ms: self.sent_ms() + (self.pending.len() as u64 * 1000 / u64::from(STT_RATE_HZ)),
                    session_start_ms: start_ms,
                    ended: None,
                    ended_at: None,
                    opened_at: now,
                    heard: false,
                    turn_closed: false,
                    finals: Vec::new(),
                    interim: Vec::new(),
                    speaker: None,
                    out,
                });
            }
            CallIn::Audio(frame) => {
                if self.dead.is_some() || self.socket.is_none() {
                    return;
                }
                self.pending.extend_from_slice(&frame);
                let size = self.protocol.frame_samples().max(1);
                while self.pending.len() >= size {
                    let batch: Vec<i16> = self.pending.drain(..size).collect();
                    self.send_audio(&batch).await;
                }
            }
            CallIn::End => {
                if self.dead.is_some() || self.socket.is_none() {
                    return;
                }
                if !self.pending.is_empty() {
                    let mut batch = std::mem::take(&mut self.pending);
                    let min = self.protocol.min_frame_samples();
                    if batch.len() < min {
                        batch.resize(min, 0);
                    }
                    self.send_audio(&batch).await;
                }
                let end_ms = self.sent_ms();
                let finish = self.finishes;
                self.finishes += 1;
                if let Some(i) = self.spans.iter().rposition(|s| s.ended.is_none()) {
                    let span = &mut self.spans[i];
                    span.ended = Some((end_ms, finish));
                    span.ended_at = Some(Instant::now());
                    // The vendor already ended this turn (Deepgram's endpointing is quicker than
                    // the session's silence window): its transcript is whole now. A finish
                    // request would only be answered when audio is still buffered, or not at all.
                    if span.turn_closed && span.interim.is_empty() {
                        let span = self.spans.remove(i).expect("the span is there");
                        let _ = span.out.try_send(SpanOut::Final(Ok(span.transcript(&self.name))));
                    }
                }
                for m in self.protocol.finish() {
                    self.send(m).await;
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<(), SttError> {
        let request = self.protocol.request()?;
        let uri = request.uri().clone();
        let host = format!("{}://{}{}", uri.scheme_str().unwrap_or("ws"), uri.authority().map_or("", |a| a.as_str()), uri.path());
        // No Nagle: a Finalize or a 40 ms frame must not wait for the last one's ACK.
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(crate::engine::vendor_ws_config()), true);
        let (mut socket, _) = match tokio::time::timeout(self.limits.connect, connecting).await {
            Err(_) => return Err(self.error(format!("no connection to {host} within {} ms", self.limits.connect.as_millis()))),
            Ok(Err(e)) => return Err(self.error(format!("cannot connect to {host}: {}", describe(&e)))),
            Ok(Ok(s)) => s,
        };
        for m in self.protocol.opening() {
            if let Err(e) = socket.send(m).await {
                return Err(self.error(format!("the connection to {host} failed: {e}")));
            }
        }
        debug!(engine = %self.name, %host, "speech-to-text stream open");
        let now = Instant::now();
        (self.last_sent, self.last_heard) = (now, now);
        self.socket = Some(socket);
        Ok(())
    }

    fn error(&self, message: String) -> SttError {
        SttError::Engine(format!("{}: {message}", self.name))
    }

    async fn send_audio(&mut self, samples: &[i16]) {
        let message = self.protocol.audio(samples);
        self.sent += samples.len() as u64;
        self.send(message).await;
    }

    async fn send(&mut self, message: Message) {
        let Some(socket) = self.socket.as_mut() else { return };
        match socket.send(message).await {
            Ok(()) => self.last_sent = Instant::now(),
            Err(e) => {
                let e = self.error(format!("sending failed: {e}"));
                self.fail(e);
            }
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_else(|| "no close code".into());
                let e = self.error(format!("the vendor closed the stream ({why})"));
                return self.fail(e);
            }
            Some(Ok(Message::Binary(_))) => return self.malformed("a binary message".into()),
            Some(Ok(_)) => return,
            Some(Err(e)) => {
                let e = self.error(format!("the stream broke: {e}"));
                return self.fail(e);
            }
            None => {
                let e = self.error("the stream ended".into());
                return self.fail(e);
            }
        };
        self.last_heard = Instant::now();
        for heard in self.protocol.read(&text) {
            self.on_heard(heard);
        }
    }

    fn on_heard(&mut self, heard: Heard) {
        if !matches!(heard, Heard::Malformed(_)) {
            self.malformed = 0;
        }
        match heard {
            Heard::Words { words, is_final, end_of_turn, answer } => self.on_words(words, is_final, end_of_turn, answer),
            Heard::SpeechStarted => {
                if let Some(span) = self.spans.back_mut() {
                    span.heard = true;
                }
            }
            Heard::Nothing | Heard::Closing => {}
            Heard::Failed(message) => {
                let e = self.error(message);
                self.fail(e);
            }
            Heard::Malformed(what) => self.malformed(what),
        }
    }

    fn malformed(&mut self, what: String) {
        self.malformed += 1;
        self.metrics.inc("voxgate_speech_vendor_bad_messages_total", &[("stage", "stt"), ("engine", &self.name)]);
        warn!(engine = %self.name, what = %what, "unreadable message from the speech-to-text vendor");
        if self.malformed >= MALFORMED_IN_A_ROW {
            let e = self.error(format!("{MALFORMED_IN_A_ROW} unreadable messages in a row"));
            self.fail(e);
        }
    }

    fn on_words(&mut self, words: Vec<VendorWord>, is_final: bool, end_of_turn: bool, answer: Option<u64>) {
        let now_ms = self.sent_ms();
        // The utterance these words belong to: the one a finish request asked about, else the one
        // whose audio holds the first word's start.
        // Words that start before every utterance in flight belong to one already final.
        let index = match (answer, words.first().and_then(|w| w.start_ms)) {
            (Some(n), _) => self.spans.iter().position(|s| s.ended.is_some_and(|(_, f)| f == n)),
            (None, Some(start)) => self.spans.iter().rposition(|s| s.vendor_start_ms <= start),
            // No words: an end of turn, for the oldest utterance the session ended, else the open one.
            (None, None) => self.spans.iter().position(|s| s.ended.is_some()).or((!self.spans.is_empty()).then_some(0)),
        };
        let Some(index) = index else {
            if !words.is_empty() {
                debug!(engine = %self.name, "words for no utterance in flight dropped");
            }
            return;
        };
        let span = &mut self.spans[index];
        span.heard = true;
        let converted = span.words(&words, now_ms);
        if span.speaker.is_none() {
            span.speaker = words.iter().find_map(|w| w.speaker.clone());
        }
        if is_final {
            span.finals.extend(converted);
            span.interim.clear();
            span.turn_closed = end_of_turn;
        } else if !converted.is_empty() {
            span.interim = converted;
            span.turn_closed = false;
        }
        // An end of turn ends the utterance once the session has ended it too, or at once when the
        // vendor decides turns.
        let done =
            (span.ended.is_some() || (self.vendor_turns && !span.finals.is_empty())) && is_final && (end_of_turn || answer.is_some());
        if done {
            let transcript = span.transcript(&self.name);
            let span = self.spans.remove(index).expect("the span is there");
            let _ = span.out.try_send(SpanOut::Final(Ok(transcript)));
        } else if !words.is_empty() {
            let _ = span.out.try_send(SpanOut::Partial(span.transcript(&self.name)));
        }
    }

    /// Fails every utterance in flight and every later one.
    fn fail(&mut self, e: SttError) {
        warn!(engine = %self.name, error = %e, "speech-to-text stream failed");
        self.metrics.inc("voxgate_speech_vendor_failures_total", &[("stage", "stt"), ("engine", &self.name)]);
        for span in self.spans.drain(..) {
            let _ = span.out.try_send(SpanOut::Final(Err(e.clone())));
        }
        self.socket = None;
        self.dead = Some(e);
    }

    /// Since when the vendor has been silent about `span`, for the stall rule; `None` while it
    /// may rightly be silent (a vendor that answers only when asked, before it is asked).
    fn stall_since(&self, span: &Span) -> Option<Instant> {
        let from = if self.protocol.speaks_while_listening() { Some(span.opened_at) } else { span.ended_at };
        from.map(|from| self.last_heard.max(from))
    }

    /// The next time something is due: a keepalive, a stall, or an utterance to settle.
    fn next_due(&self) -> Option<Instant> {
        self.socket.as_ref()?;
        let mut due: Option<Instant> = None;
        let mut at = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        if let Some((every, _)) = self.protocol.keepalive() {
            at(self.last_sent + every);
        }
        for span in &self.spans {
            if let Some(since) = self.stall_since(span) {
                at(since + self.limits.stall);
            }
            if let (Some(ended_at), true) = (span.ended_at, span.heard) {
                at(self.last_heard.max(ended_at) + self.limits.settle);
            }
        }
        due
    }

    async fn on_due(&mut self) {
        let now = Instant::now();
        if let Some((every, message)) = self.protocol.keepalive() {
            if now >= self.last_sent + every {
                self.send(message).await;
            }
        }
        // Utterances the vendor spoke about and then went quiet on are final as they stand.
        while let Some(i) =
            self.spans.iter().position(|s| s.heard && s.ended_at.is_some_and(|e| now >= self.last_heard.max(e) + self.limits.settle))
        {
            let span = self.spans.remove(i).expect("the span is there");
            let _ = span.out.try_send(SpanOut::Final(Ok(span.transcript(&self.name))));
        }
        if self.spans.iter().any(|s| self.stall_since(s).is_some_and(|since| now >= since + self.limits.stall)) {
            let e = SttError::Stalled(format!(
                "{}: no word from the vendor for {} ms while audio flowed",
                self.name,
                self.limits.stall.as_millis()
            ));
            self.fail(e);
        }
    }

    /// The end of the call: the vendor's close message, its last words, then the close frame.
    async fn close(&mut self) {
        if self.socket.is_none() {
            return;
        }
        // Without a close message to answer, the vendor has nothing more to say.
        let Some(m) = self.protocol.close() else {
            if let Some(mut socket) = self.socket.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
            }
            return;
        };
        self.send(m).await;
        let deadline = Instant::now() + CLOSE_WAIT;
        while self.socket.is_some() {
            match tokio::time::timeout_at(deadline, next_message(&mut self.socket)).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let closing = self.protocol.read(&text).into_iter().any(|h| h == Heard::Closing);
                    if closing {
                        break;
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
                Ok(Some(Ok(_))) => {}
            }
        }
        if let Some(mut socket) = self.socket.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        }
        debug!(engine = %self.name, "speech-to-text stream closed");
    }
}

/// The socket's next message; never resolves without a socket.
async fn next_message(socket: &mut Option<Socket>) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match socket.as_mut() {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A handshake error without the request (its URL may carry a key).
fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(response) => format!("HTTP {} on the upgrade", response.status()),
        Error::Io(e) => e.to_string(),
        Error::Tls(e) => format!("TLS: {e}"),
        Error::Url(e) => format!("bad URL: {e}"),
        other => other.to_string(),
    }
}

/// The WebSocket URL of `path` under a vendor's `base_url`, whatever scheme the base names
/// (http → ws, https → wss), with `query` appended (already encoded).
pub fn ws_url(base_url: &str, path: &str, query: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    }
}

/// Little-endian PCM16 bytes.
pub fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A request for `url` with `headers`.
pub fn request(url: &str, headers: &[(&str, String)]) -> Result<Request<()>, SttError> {
    let mut request = url.into_client_request().map_err(|e| SttError::Engine(format!("bad vendor URL: {e}")))?;
    for (name, value) in headers {
        let value = value.parse().map_err(|_| SttError::Engine(format!("the {name} header is not valid")))?;
        let name: tokio_tungstenite::tungstenite::http::HeaderName =
            name.parse().map_err(|_| SttError::Engine(format!("bad header name {name}")))?;
        request.headers_mut().insert(name, value);
    }
    Ok(request)
}

/// `value` percent-encoded for a URL query (everything but unreserved characters).
pub fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
