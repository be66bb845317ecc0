//! The session actor: one task per connection that owns every piece of the call's state in one
//! `select!` loop: client events, STT results, response messages, and the clock that paces outbound
//! audio. Nothing here locks; stages talk to it over bounded channels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::conversation::Conversation;
use super::response::{ResponseJob, ResponseMsg, Speech};
use super::VoiceEngines;
use crate::llm::types::{ChatRequest, FinishReason, FunctionDef, NamedFunction, StreamOptions, Tool, ToolChoice as ChatToolChoice, Usage};
use crate::metering::ledger::SessionMeter;
use crate::stt::vad::{EnergyVad, VadEvent, VadSettings, PAUSE_MS};
use crate::stt::{Transcript, Utterance, STT_RATE_HZ};
use crate::transport::audio::{decode_to_pcm, AudioFormat, Resampler};
use crate::transport::realtime::{
    new_event_id, new_item_id, new_response_id, AudioFormatSpec, AudioInput, AudioOutput, ClientEvent, ContentPart, FunctionCallItem,
    FunctionTool, InputTranscription, Item, ItemStatus, MaxOutputTokens, MessageItem, MeterInfo, Modality, RateLimit, RealtimeError,
    Response, ResponseConversation, ResponseParams, ResponsePart, ResponseStatus, Role, ServerEvent, ServerVad, Session, SessionAudio,
    SessionType, StageLatencies, StatusDetails, StatusError, StatusReason, ToolChoice, ToolChoiceMode, TranscriptionUsage, TurnDetection,
    Usage as RealtimeUsage, Voice, VoxgateResponseInfo, Word,
};

/// What the transport hands the session.
#[derive(Debug)]
pub enum Inbound {
    Event(ClientEvent),
    /// A client event that could not be read; the session answers with an `error` event.
    Invalid(RealtimeError),
}

/// What the session hands the transport.
#[derive(Debug)]
pub enum Outbound {
    Event(Box<ServerEvent>),
    /// Close the connection with this WebSocket close code and reason.
    Close {
        code: u16,
        reason: String,
    },
}

/// Who opened the session and what it serves.
#[derive(Debug, Clone)]
pub struct SessionStart {
    pub session_id: String,
    /// The gateway route or model named by `?model=`.
    pub route: String,
    /// The API key's name, for usage rows.
    pub key: String,
    /// The key's per-minute gateway limits, when it has any: the session's LLM calls count against
    /// them and the client hears of them (`rate_limits.updated`).
    pub limits: Option<Arc<dyn super::RateLimits>>,
}

/// The most audio one `response.output_audio.delta` carries. Once a frame is due (within
/// `output_lead_ms` of being heard), the frames right after it go in the same delta up to this
/// much, so a caller may hold up to `output_lead_ms` + this much ahead; a 20 ms engine frame per
/// message would triple the messages (and the system calls) for the same audio.
const OUTPUT_DELTA_MS_MAX: f64 = 60.0;
/// Audio queued ahead of playback before the actor stops taking more from the TTS (backpressure).
const MAX_QUEUED_AUDIO_MS: f64 = 2_000.0;
/// Frames queued for an STT engine before new ones are dropped (and counted).
const STT_QUEUE_FRAMES: usize = 1024;

/// Runs one session until the client leaves, `cancel` fires, or the transport stops reading.
/// `meter` bills the session (flat rate from open to close) and collects its usage for the record;
/// `None` runs it unmetered (replay, tests).
pub async fn run_session(
    engines: Arc<VoiceEngines>,
    start: SessionStart,
    meter: Option<SessionMeter>,
    mut inbound: mpsc::Receiver<Inbound>,
    outbound: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
) {
    let (stt_tx, mut stt_rx) = mpsc::channel(64);
    let (resp_tx, mut resp_rx) = mpsc::channel(64);
    let mut actor = Actor::new(engines, start, outbound, cancel.clone(), stt_tx, resp_tx);
    actor.meter = meter;
    let mut close_reason = "server_shutdown";
    actor.emit(ServerEvent::SessionCreated { event_id: new_event_id(), session: actor.session_object() });
    actor.report_rate_limits();
    info!(session_id = %actor.start.session_id, route = %actor.start.route, "realtime session opened");
    let mut cancelled = super::cancellation_signal(&cancel);
    // One timer for the loop, moved when the next deadline moves: a new one per pass would insert
    // and remove a timer entry at every event while audio plays.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let due = actor.next_due();
        // A deadline already reached (the next audio of a new response, a chunk's transcript) is
        // ready at once: the timer would round it up to its next 1 ms tick.
        let due_now = due.is_some_and(|at| at <= Instant::now());
        if let Some(at) = due.filter(|_| !due_now) {
            if armed != Some(at) {
                timer.as_mut().reset(at);
                armed = Some(at);
            }
        }
        let take_audio = actor.queued_ms() < MAX_QUEUED_AUDIO_MS;
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            msg = inbound.recv() => match msg {
                Some(Inbound::Event(event)) => actor.on_client_event(event),
                Some(Inbound::Invalid(error)) => actor.emit(ServerEvent::error(error)),
                None => {
                    close_reason = "client_closed";
                    break;
                }
            },
            Some(msg) = stt_rx.recv() => actor.on_stt(msg),
            Some((seq, msg)) = resp_rx.recv(), if take_audio => actor.on_response(seq, msg),
            () = std::future::ready(()), if due_now => actor.on_tick(),
            () = &mut timer, if due.is_some() && !due_now => {
                armed = None;
                actor.on_tick();
            }
        }
        if let Some((code, reason)) = actor.closing.take() {
            close_reason = if code == 1008 { "client_not_reading" } else { "client_closed" };
            let _ = actor.outbound.try_send(Outbound::Close { code, reason });
            break;
        }
    }
    actor.shutdown().await;
    if let Some(meter) = actor.meter.take() {
        let (seconds, _) = meter.so_far(wall_ms());
        actor.metrics().add("voxgate_session_seconds_billed_total", &[], seconds as f64);
        meter.close(close_reason).await;
    }
    info!(session_id = %actor.start.session_id, "realtime session closed");
}

/// A message from an utterance's STT task.
#[derive(Debug)]
enum SttMsg {
    Partial { item_id: String, transcript: Transcript },
    Final { item_id: String, result: Result<Transcript, crate::stt::SttError> },
}

/// Turn detection in force.
#[derive(Debug, Clone, Copy)]
struct Turn {
    vad: VadSettings,
    create_response: bool,
    interrupt_response: bool,
}

/// The session's settings, as `session.update` leaves them.
#[derive(Debug, Clone)]
struct Settings {
    model: String,
    instructions: Option<String>,
    audio_out: bool,
    input_format: AudioFormat,
    output_format: AudioFormat,
    turn: Option<Turn>,
    voice: Option<Voice>,
    tools: Vec<FunctionTool>,
    tool_choice: Option<ToolChoice>,
    max_output_tokens: Option<MaxOutputTokens>,
    transcription: Option<InputTranscription>,
}

/// An utterance being streamed to STT.
struct OpenUtterance {
    item_id: String,
    /// Stops the utterance's STT task.
    cancel: CancellationToken,
    audio: mpsc::Sender<Vec<i16>>,
    /// Tells the STT engine where the speaker paused (see [`Utterance::pause`]).
    pause: watch::Sender<Option<u64>>,
    samples: u64,
}

/// Timings of the user turn a response answers.
#[derive(Debug, Clone, Copy)]
struct TurnTimes {
    /// Wall-clock time of the real end of user speech (VAD stop minus the silence window, or the commit).
    speech_end: Instant,
    stt_ms: Option<f64>,
}

/// The response in progress.
struct Active {
    id: String,
    seq: u64,
    cancel: CancellationToken,
    audio: bool,
    in_conversation: bool,
    metadata: Option<serde_json::Value>,
    /// Output items in order (message and function calls).
    output: Vec<Item>,
    message: Option<MessageState>,
    calls: BTreeMap<u32, CallState>,
    model: Option<String>,
    ttft_ms: Option<f64>,
    tts_ttfb_ms: Option<f64>,
    first_audio_at: Option<Instant>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    failed: Option<(&'static str, String)>,
    /// The response task reported `Done`.
    llm_done: bool,
    turn: Option<TurnTimes>,
}

struct MessageState {
    item_id: String,
    output_index: u32,
    /// Everything the model wrote.
    text: String,
    /// What has been sent as transcript deltas (audio) so far.
    spoken: String,
}

struct CallState {
    item_id: String,
    output_index: u32,
    call_id: String,
    name: String,
    arguments: String,
}

/// Audio on its way to the caller, paced at real time.
struct Playback {
    response_id: String,
    item_id: String,
    queue: VecDeque<Out>,
    queued_ms: f64,
    started: Option<Instant>,
    sent_ms: f64,
    /// Where each spoken chunk starts in the item's audio, for truncation to what was heard.
    timeline: Vec<(f64, String)>,
    /// The response has finished queueing; playback ends once the queue is empty and played.
    complete: bool,
}

enum Out {
    Speak(String),
    Audio(Vec<u8>, f64),
}

struct Actor {
    engines: Arc<VoiceEngines>,
    start: SessionStart,
    outbound: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    closing: Option<(u16, String)>,
    settings: Settings,
    conversation: Conversation,

    // Input audio.
    pcm: Vec<i16>,
    stt_pcm: Vec<i16>,
    resampler: Option<Resampler>,
    vad: Option<EnergyVad>,
    vad_events: Vec<(usize, VadEvent)>,
    vad_offset_ms: u64,
    /// Recent audio while nobody speaks: the prefix padding of the next utterance.
    recent: VecDeque<i16>,
    /// Input audio received, in samples at the STT rate.
    input_samples: u64,
    utterance: Option<OpenUtterance>,
    ordinal: u32,
    stt_tx: mpsc::Sender<SttMsg>,
    /// Committed utterances waiting for their final transcript, with the deadline for it.
    pending_transcripts: HashMap<String, (Instant, CancellationToken)>,
    /// The transcript text already sent as deltas, per utterance still being transcribed.
    partials: HashMap<String, String>,
    told_no_stt: bool,
    last_turn: Option<TurnTimes>,
    /// A `response.create` waiting for transcripts still being made.
    deferred: Option<(Option<String>, ResponseParams)>,
    /// When the user's last utterance really ended (wall clock), until its transcript arrives.
    speech_end_wall: Option<Instant>,

    /// Bills the session; counts its tokens, audio, characters and turns for the record.
    meter: Option<SessionMeter>,

    // Output.
    resp_tx: mpsc::Sender<(u64, ResponseMsg)>,
    seq: u64,
    active: Option<Active>,
    playback: Option<Playback>,
}

impl Actor {
    fn new(
        engines: Arc<VoiceEngines>,
        start: SessionStart,
        outbound: mpsc::Sender<Outbound>,
        cancel: CancellationToken,
        stt_tx: mpsc::Sender<SttMsg>,
        resp_tx: mpsc::Sender<(u64, ResponseMsg)>,
    ) -> Actor {
        let pcm24 = AudioFormat::REALTIME_PCM;
        let turn = Some(Turn { vad: VadSettings::default(), create_response: true, interrupt_response: true });
        let settings = Settings {
            model: start.route.clone(),
            instructions: None,
            audio_out: engines.tts.is_some(),
            input_format: pcm24,
            output_format: pcm24,
            turn,
            voice: None,
            tools: Vec::new(),
            tool_choice: None,
            max_output_tokens: None,
            transcription: engines.stt.as_ref().map(|s| InputTranscription {
                model: Some(s.name().to_string()),
                language: None,
                prompt: None,
            }),
        };
        let max_items = engines.settings.max_history_items;
        let mut actor = Actor {
            engines,
            start,
            outbound,
            cancel,
            tasks: TaskTracker::new(),
            closing: None,
            settings,
            conversation: Conversation::new(max_items),
            pcm: Vec::new(),
            stt_pcm: Vec::new(),
            resampler: None,
            vad: None,
            vad_events: Vec::new(),
            vad_offset_ms: 0,
            recent: VecDeque::new(),
            input_samples: 0,
            utterance: None,
            ordinal: 0,
            stt_tx,
            pending_transcripts: HashMap::new(),
            partials: HashMap::new(),
            told_no_stt: false,
            last_turn: None,
            deferred: None,
            speech_end_wall: None,
            meter: None,
            resp_tx,
            seq: 0,
            active: None,
            playback: None,
        };
        actor.reset_input_pipeline();
        actor
    }

    // ---------------------------------------------------------------------------------------------
    // Plumbing
    // ---------------------------------------------------------------------------------------------

    fn emit(&mut self, event: ServerEvent) {
        if self.closing.is_some() {
            return;
        }
        if let Some(kind) = error_kind(&event) {
            self.metrics().inc("voxgate_errors_total", &[("kind", kind)]);
        }
        match self.outbound.try_send(Outbound::Event(Box::new(event))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(session_id = %self.start.session_id, "client is not reading events; closing the session");
                self.metrics().inc("voxgate_errors_total", &[("kind", "client_not_reading")]);
                self.closing = Some((1008, "client is not reading events".into()));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.closing = Some((1000, "transport closed".into())),
        }
    }

    fn error(&mut self, code: &str, message: impl Into<String>, param: Option<&str>, event_id: Option<&str>) {
        let error = RealtimeError {
            error_type: "invalid_request_error".into(),
            code: Some(code.into()),
            message: message.into(),
            param: param.map(str::to_string),
            event_id: event_id.map(str::to_string),
        };
        self.emit(ServerEvent::error(error));
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.engines.gateway.accounts.metrics
    }

    fn input_ms(&self) -> u64 {
        self.input_samples * 1000 / STT_RATE_HZ as u64
    }

    fn queued_ms(&self) -> f64 {
        self.playback.as_ref().map_or(0.0, |p| p.queued_ms)
    }

    async fn shutdown(&mut self) {
        if let Some(active) = self.active.take() {
            active.cancel.cancel();
        }
        self.utterance = None;
        self.cancel.cancel();
        self.tasks.close();
        // Every task watches the session's token; this returns as soon as they notice.
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await.is_err() {
            warn!(session_id = %self.start.session_id, "session tasks did not stop within 5 s");
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Session settings
    // ---------------------------------------------------------------------------------------------

    fn session_object(&self) -> Session {
        let s = &self.settings;
        let turn_detection = Some(s.turn.map(|t| {
            TurnDetection::ServerVad(ServerVad {
                threshold: Some(t.vad.threshold as f64),
                prefix_padding_ms: Some(t.vad.prefix_padding_ms),
                silence_duration_ms: Some(t.vad.silence_duration_ms),
                create_response: Some(t.create_response),
                interrupt_response: Some(t.interrupt_response),
                idle_timeout_ms: None,
            })
        }));
        Session {
            session_type: Some(SessionType::Realtime),
            id: Some(self.start.session_id.clone()),
            object: Some("realtime.session".into()),
            model: Some(s.model.clone()),
            expires_at: None,
            instructions: Some(s.instructions.clone().unwrap_or_default()),
            output_modalities: Some(vec![if s.audio_out { Modality::Audio } else { Modality::Text }]),
            audio: Some(SessionAudio {
                input: Some(AudioInput {
                    format: Some(AudioFormatSpec::from(s.input_format)),
                    turn_detection,
                    transcription: Some(s.transcription.clone()),
                }),
                output: Some(AudioOutput {
                    format: Some(AudioFormatSpec::from(s.output_format)),
                    voice: s.voice.clone().or_else(|| self.engines.tts.as_ref().map(|t| Voice::Name(t.name().to_string()))),
                    speed: None,
                }),
            }),
            tools: Some(s.tools.clone()),
            tool_choice: Some(s.tool_choice.clone().unwrap_or(ToolChoice::Mode(ToolChoiceMode::Auto))),
            max_output_tokens: Some(s.max_output_tokens.unwrap_or(MaxOutputTokens::Inf)),
        }
    }

    fn on_session_update(&mut self, event_id: Option<&str>, update: Session) {
        let mut next = self.settings.clone();
        let fail = |this: &mut Actor, code: &str, message: String, param: &str| this.error(code, message, Some(param), event_id);
        if update.session_type == Some(SessionType::Transcription) {
            return fail(self, "invalid_value", "session.type \"transcription\" is not supported; use \"realtime\"".into(), "session.type");
        }
        if let Some(model) = update.model {
            if !self.engines.gateway.routes().contains_key(&model) && !self.engines.gateway.models().contains_key(&model) {
                return fail(self, "invalid_value", format!("model {model:?} is not a route or model of this server"), "session.model");
            }
            next.model = model;
        }
        if let Some(instructions) = update.instructions {
            next.instructions = Some(instructions);
        }
        if let Some(modalities) = update.output_modalities {
            match modalities.as_slice() {
                [Modality::Audio] => {
                    if self.engines.tts.is_none() {
                        return fail(
                            self,
                            "tts_unavailable",
                            "audio output needs a text-to-speech engine and none is configured ([tts] engine in voxgate.toml); use output_modalities [\"text\"]".into(),
                            "session.output_modalities",
                        );
                    }
                    next.audio_out = true;
                }
                [Modality::Text] => next.audio_out = false,
                _ => {
                    return fail(
                        self,
                        "invalid_value",
                        "output_modalities must be [\"audio\"] or [\"text\"]".into(),
                        "session.output_modalities",
                    )
                }
            }
        }
        if let Some(audio) = update.audio {
            if let Some(input) = audio.input {
                if let Some(spec) = input.format {
                    match spec.to_audio_format() {
                        Ok(f) => next.input_format = f,
                        Err(e) => return fail(self, "invalid_audio_format", e.to_string(), "session.audio.input.format"),
                    }
                }
                match input.turn_detection {
                    None => {}
                    Some(None) => next.turn = None,
                    Some(Some(TurnDetection::SemanticVad(_))) => {
                        return fail(
                            self,
                            "invalid_value",
                            "semantic_vad is not supported yet; use server_vad or null".into(),
                            "session.audio.input.turn_detection.type",
                        )
                    }
                    Some(Some(TurnDetection::ServerVad(v))) => {
                        let base =
                            next.turn.unwrap_or(Turn { vad: VadSettings::default(), create_response: true, interrupt_response: true });
                        let mut vad = base.vad;
                        if let Some(t) = v.threshold {
                            if !(0.0..=1.0).contains(&t) {
                                return fail(
                                    self,
                                    "invalid_value",
                                    format!("threshold {t} is outside 0.0 to 1.0"),
                                    "session.audio.input.turn_detection.threshold",
                                );
                            }
                            vad.threshold = t as f32;
                        }
                        if let Some(ms) = v.prefix_padding_ms {
                            vad.prefix_padding_ms = ms.min(5_000);
                        }
                        if let Some(ms) = v.silence_duration_ms {
                            vad.silence_duration_ms = ms.clamp(10, 10_000);
                        }
                        next.turn = Some(Turn {
                            vad,
                            create_response: v.create_response.unwrap_or(base.create_response),
                            interrupt_response: v.interrupt_response.unwrap_or(base.interrupt_response),
                        });
                    }
                }
                if let Some(t) = input.transcription {
                    // The cascade always transcribes; the client's choice only changes what is reported.
                    next.transcription = t.or(next.transcription);
                }
            }
            if let Some(output) = audio.output {
                if let Some(spec) = output.format {
                    match spec.to_audio_format() {
                        Ok(f) => next.output_format = f,
                        Err(e) => return fail(self, "invalid_audio_format", e.to_string(), "session.audio.output.format"),
                    }
                }
                if let Some(voice) = output.voice {
                    next.voice = Some(voice);
                }
            }
        }
        if let Some(tools) = update.tools {
            next.tools = tools;
        }
        if let Some(choice) = update.tool_choice {
            next.tool_choice = Some(choice);
        }
        if let Some(max) = update.max_output_tokens {
            next.max_output_tokens = Some(max);
        }
        let input_changed =
            next.input_format != self.settings.input_format || next.turn.map(|t| t.vad) != self.settings.turn.map(|t| t.vad);
        self.settings = next;
        if input_changed {
            self.reset_input_pipeline();
        }
        self.emit(ServerEvent::SessionUpdated { event_id: new_event_id(), session: self.session_object() });
    }

    fn reset_input_pipeline(&mut self) {
        let rate = self.settings.input_format.rate_hz();
        self.resampler = if rate == STT_RATE_HZ { None } else { Resampler::new(rate, STT_RATE_HZ).ok() };
        self.vad = self.settings.turn.map(|t| EnergyVad::new(t.vad, STT_RATE_HZ).report_pauses(PAUSE_MS));
        // A new detector counts from zero; its times are shifted onto the session's input timeline.
        self.vad_offset_ms = self.input_ms();
        self.recent.clear();
    }

    // ---------------------------------------------------------------------------------------------
    // Client events
    // ---------------------------------------------------------------------------------------------

    fn on_client_event(&mut self, event: ClientEvent) {
        let event_id = event.event_id().map(str::to_string);
        let eid = event_id.as_deref();
        match event {
            ClientEvent::SessionUpdate(update) => self.on_session_update(eid, update.session),
            ClientEvent::InputAudioBufferAppend(append) => self.on_append(eid, &append.audio),
            ClientEvent::InputAudioBufferCommit(_) => self.on_commit(eid),
            ClientEvent::InputAudioBufferClear(_) => {
                self.abandon_utterance();
                self.recent.clear();
                if let Some(vad) = self.vad.as_mut() {
                    vad.reset();
                }
                self.emit(ServerEvent::InputAudioBufferCleared { event_id: new_event_id() });
            }
            ClientEvent::ConversationItemCreate(create) => self.on_item_create(eid, create.item, create.previous_item_id.as_deref()),
            ClientEvent::ConversationItemRetrieve(r) => match self.conversation.get(&r.item_id) {
                Some(entry) => {
                    let item = entry.item.clone();
                    self.emit(ServerEvent::ConversationItemRetrieved { event_id: new_event_id(), item });
                }
                None => self.error("item_not_found", format!("no item with id {:?}", r.item_id), Some("item_id"), eid),
            },
            ClientEvent::ConversationItemTruncate(t) => self.on_truncate(eid, &t.item_id, t.content_index, t.audio_end_ms),
            ClientEvent::ConversationItemDelete(d) => {
                if self.conversation.delete(&d.item_id) {
                    self.emit(ServerEvent::ConversationItemDeleted { event_id: new_event_id(), item_id: d.item_id });
                } else {
                    self.error("item_not_found", format!("no item with id {:?}", d.item_id), Some("item_id"), eid);
                }
            }
            ClientEvent::ResponseCreate(create) => self.request_response(event_id, create.response.unwrap_or_default()),
            ClientEvent::ResponseCancel(c) => {
                let matches = match (&self.active, &c.response_id) {
                    (Some(a), Some(id)) => &a.id == id,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if matches {
                    self.interrupt(StatusReason::ClientCancelled);
                } else if self.deferred.take().is_some() && c.response_id.is_none() {
                    debug!(session_id = %self.start.session_id, "cancelled a response waiting for its transcript");
                } else {
                    self.error("response_cancel_not_active", "there is no active response to cancel", None, eid);
                }
            }
            ClientEvent::OutputAudioBufferClear(_) => {
                if self.playback.is_some() {
                    self.interrupt(StatusReason::ClientCancelled);
                } else {
                    self.emit(ServerEvent::OutputAudioBufferCleared {
                        event_id: new_event_id(),
                        response_id: self.active.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                    });
                }
            }
        }
    }

    fn on_append(&mut self, event_id: Option<&str>, audio: &str) {
        let bytes = match base64::engine::general_purpose::STANDARD.decode(audio.trim()) {
            Ok(b) => b,
            Err(e) => return self.error("invalid_audio", format!("audio is not valid base64: {e}"), Some("audio"), event_id),
        };
        let mut pcm = std::mem::take(&mut self.pcm);
        pcm.clear();
        if let Err(e) = decode_to_pcm(self.settings.input_format, &bytes, &mut pcm) {
            self.pcm = pcm;
            return self.error(
                "invalid_audio",
                format!("{e} (session input format is {})", self.settings.input_format.as_realtime()),
                Some("audio"),
                event_id,
            );
        }
        if self.engines.stt.is_none() {
            if !self.told_no_stt {
                self.told_no_stt = true;
                self.error(
                    "stt_unavailable",
                    "input audio needs a speech-to-text engine and none is configured ([stt] engine in voxgate.toml); send text items instead",
                    Some("audio"),
                    event_id,
                );
            }
            self.pcm = pcm;
            return;
        }
        let mut stt_pcm = std::mem::take(&mut self.stt_pcm);
        stt_pcm.clear();
        match self.resampler.as_mut() {
            Some(r) => r.process(&pcm, &mut stt_pcm),
            None => stt_pcm.extend_from_slice(&pcm),
        }
        self.pcm = pcm;
        let chunk_start = self.input_samples;
        self.input_samples += stt_pcm.len() as u64;

        if self.vad.is_none() {
            // Manual commit: everything appended belongs to the open utterance.
            if self.utterance.is_none() {
                self.open_utterance(chunk_start * 1000 / STT_RATE_HZ as u64, &[]);
            }
            self.feed(&stt_pcm);
            self.stt_pcm = stt_pcm;
            return;
        }
        let mut events = std::mem::take(&mut self.vad_events);
        events.clear();
        if let Some(vad) = self.vad.as_mut() {
            vad.push(&stt_pcm, &mut events);
        }
        let mut cursor = 0;
        for &(at, event) in &events {
            self.feed(&stt_pcm[cursor..at]);
            cursor = at;
            let at_ms = (chunk_start + at as u64) * 1000 / STT_RATE_HZ as u64;
            match event {
                VadEvent::SpeechStarted { audio_start_ms } => self.on_speech_started(audio_start_ms + self.vad_offset_ms, at_ms),
                VadEvent::SpeechStopped { audio_end_ms } => self.on_speech_stopped(audio_end_ms + self.vad_offset_ms, at_ms),
                VadEvent::SpeechPaused { .. } => {
                    if let Some(u) = self.utterance.as_ref() {
                        u.pause.send_replace(Some(u.samples));
                    }
                }
                VadEvent::SpeechResumed => {
                    if let Some(u) = self.utterance.as_ref() {
                        u.pause.send_replace(None);
                    }
                }
            }
        }
        self.feed(&stt_pcm[cursor..]);
        self.vad_events = events;
        self.stt_pcm = stt_pcm;
    }

    /// Audio to the open utterance, or into the prefix window while nobody speaks.
    fn feed(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        if let Some(u) = self.utterance.as_mut() {
            u.samples += samples.len() as u64;
            if u.audio.try_send(samples.to_vec()).is_err() {
                self.metrics().inc("voxgate_audio_frames_dropped_total", &[("stage", "stt")]);
                debug!(session_id = %self.start.session_id, "STT queue full; input frame dropped");
            }
            return;
        }
        let keep =
            self.settings.turn.map_or(0, |t| (t.vad.prefix_padding_ms + t.vad.min_speech_ms + 50) as usize * STT_RATE_HZ as usize / 1000);
        self.recent.extend(samples.iter().copied());
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
    }

    fn on_speech_started(&mut self, audio_start_ms: u64, at_ms: u64) {
        // The prefix: the recent audio from `audio_start_ms` on.
        let back = (at_ms.saturating_sub(audio_start_ms) * STT_RATE_HZ as u64 / 1000) as usize;
        let skip = self.recent.len().saturating_sub(back);
        let prefix: Vec<i16> = self.recent.iter().skip(skip).copied().collect();
        self.recent.clear();
        let start_ms = at_ms.saturating_sub(prefix.len() as u64 * 1000 / STT_RATE_HZ as u64);
        let item_id = self.open_utterance(start_ms, &prefix);
        self.emit(ServerEvent::InputAudioBufferSpeechStarted { event_id: new_event_id(), audio_start_ms, item_id });
        // Barge-in: the caller talks over the agent.
        let interrupt = self.settings.turn.is_some_and(|t| t.interrupt_response);
        if interrupt && (self.active.is_some() || self.playback.is_some()) {
            self.metrics().inc("voxgate_barge_ins_total", &[]);
            self.interrupt(StatusReason::TurnDetected);
        }
    }

    fn on_speech_stopped(&mut self, audio_end_ms: u64, at_ms: u64) {
        let Some(item_id) = self.utterance.as_ref().map(|u| u.item_id.clone()) else { return };
        self.emit(ServerEvent::InputAudioBufferSpeechStopped { event_id: new_event_id(), audio_end_ms, item_id });
        // The real end of speech was `at_ms - audio_end_ms` ago in audio time.
        let lag = Duration::from_millis(at_ms.saturating_sub(audio_end_ms));
        self.speech_end_wall = Some(Instant::now().checked_sub(lag).unwrap_or_else(Instant::now));
        self.commit_utterance();
    }

    fn on_commit(&mut self, event_id: Option<&str>) {
        match &self.utterance {
            Some(u) if u.samples > 0 => {
                self.speech_end_wall = Some(Instant::now());
                self.commit_utterance();
            }
            _ => self.error(
                "input_audio_buffer_commit_empty",
                "the input audio buffer is empty: append audio before committing",
                None,
                event_id,
            ),
        }
    }

    fn open_utterance(&mut self, start_ms: u64, prefix: &[i16]) -> String {
        let item_id = new_item_id();
        let Some(stt) = self.engines.stt.clone() else { return item_id };
        let (audio_tx, audio_rx) = mpsc::channel(STT_QUEUE_FRAMES);
        let (partial_tx, mut partial_rx) = mpsc::channel(8);
        let ordinal = self.ordinal;
        self.ordinal += 1;
        let (pause_tx, pause_rx) = watch::channel(None);
        let work = stt.transcribe(Utterance { start_ms, ordinal, audio: audio_rx, pause: Some(pause_rx) }, partial_tx);
        let events = self.stt_tx.clone();
        let cancel = self.cancel.child_token();
        let utterance_cancel = cancel.clone();
        let id = item_id.clone();
        self.tasks.spawn(async move {
            tokio::pin!(work);
            let mut cancelled = super::cancellation_signal(&cancel);
            loop {
                tokio::select! {
                    _ = &mut cancelled => return,
                    Some(transcript) = partial_rx.recv() => {
                        let _ = events.try_send(SttMsg::Partial { item_id: id.clone(), transcript });
                    }
                    result = &mut work => {
                        let _ = events.send(SttMsg::Final { item_id: id, result }).await;
                        return;
                    }
                }
            }
        });
        let mut u = OpenUtterance { item_id: item_id.clone(), cancel: utterance_cancel, audio: audio_tx, pause: pause_tx, samples: 0 };
        if !prefix.is_empty() {
            u.samples = prefix.len() as u64;
            let _ = u.audio.try_send(prefix.to_vec());
        }
        self.utterance = Some(u);
        item_id
    }

    /// Ends the open utterance: its item joins the conversation and its transcript is on the way.
    fn commit_utterance(&mut self) {
        let Some(u) = self.utterance.take() else { return };
        drop(u.audio);
        if let Some(meter) = self.meter.as_mut() {
            meter.add_stt_audio_ms(u.samples * 1000 / STT_RATE_HZ as u64);
        }
        let previous = self.conversation.last_id();
        self.emit(ServerEvent::InputAudioBufferCommitted {
            event_id: new_event_id(),
            previous_item_id: previous,
            item_id: u.item_id.clone(),
        });
        let item = Item::Message(MessageItem {
            id: Some(u.item_id.clone()),
            status: Some(ItemStatus::Completed),
            role: Role::User,
            content: vec![ContentPart::InputAudio { audio: None, transcript: None }],
        });
        match self.conversation.insert(item, None, None) {
            Ok((item, previous_item_id)) => {
                self.emit(ServerEvent::ConversationItemAdded { event_id: new_event_id(), previous_item_id, item })
            }
            Err(e) => warn!(session_id = %self.start.session_id, error = %e, "could not add the user's audio item"),
        }
        let deadline = Instant::now() + Duration::from_millis(self.engines.settings.stt_timeout_ms);
        self.pending_transcripts.insert(u.item_id.clone(), (deadline, u.cancel.clone()));
    }

    fn abandon_utterance(&mut self) {
        if let Some(u) = self.utterance.take() {
            // The item was never committed: stop its STT work.
            u.cancel.cancel();
            self.partials.remove(&u.item_id);
        }
    }

    fn on_item_create(&mut self, event_id: Option<&str>, item: Item, previous: Option<&str>) {
        match &item {
            Item::FunctionCallOutput(o) => {
                if !self.conversation.has_call(&o.call_id) {
                    return self.error(
                        "unknown_call_id",
                        format!("no function call with call_id {:?} in this conversation", o.call_id),
                        Some("item.call_id"),
                        event_id,
                    );
                }
            }
            Item::Message(m) => {
                if m.content.iter().any(|p| matches!(p, ContentPart::InputAudio { audio: Some(_), .. })) {
                    return self.error(
                        "unsupported_content",
                        "input_audio content in conversation.item.create is not supported; append audio with input_audio_buffer.append",
                        Some("item.content"),
                        event_id,
                    );
                }
                if m.role == Role::Assistant
                    && m.content.iter().any(|p| matches!(p, ContentPart::InputText { .. } | ContentPart::InputAudio { .. }))
                {
                    return self.error("invalid_value", "assistant messages take output_text content", Some("item.content"), event_id);
                }
            }
            Item::FunctionCall(_) => {}
        }
        match self.conversation.insert(item, previous, None) {
            Ok((item, previous_item_id)) => {
                self.emit(ServerEvent::ConversationItemAdded {
                    event_id: new_event_id(),
                    previous_item_id: previous_item_id.clone(),
                    item: item.clone(),
                });
                self.emit(ServerEvent::ConversationItemDone { event_id: new_event_id(), previous_item_id, item });
            }
            Err(e) => self.error("invalid_value", e.to_string(), Some("previous_item_id"), event_id),
        }
    }

    fn on_truncate(&mut self, event_id: Option<&str>, item_id: &str, content_index: u32, audio_end_ms: u64) {
        let Some(entry) = self.conversation.get(item_id) else {
            return self.error("item_not_found", format!("no item with id {item_id:?}"), Some("item_id"), event_id);
        };
        let Some(spoken) = entry.spoken.clone() else {
            return self.error("invalid_value", "only assistant items with audio can be truncated", Some("item_id"), event_id);
        };
        if content_index != 0 {
            return self.error("invalid_value", "content_index must be 0", Some("content_index"), event_id);
        }
        // Clamp to the audio that was sent: a client may report more than exists.
        let end_ms = (audio_end_ms as f64).min(spoken.sent_ms);
        let text = heard_text(&spoken.timeline, spoken.total_ms, end_ms);
        self.set_transcript(item_id, text);
        if self.playback.as_ref().is_some_and(|p| p.item_id == item_id) {
            self.playback = None;
        }
        self.emit(ServerEvent::ConversationItemTruncated {
            event_id: new_event_id(),
            item_id: item_id.to_string(),
            content_index,
            audio_end_ms: end_ms as u64,
        });
    }

    fn set_transcript(&mut self, item_id: &str, text: String) {
        if let Some(entry) = self.conversation.get_mut(item_id) {
            if let Item::Message(m) = &mut entry.item {
                for part in &mut m.content {
                    match part {
                        ContentPart::OutputAudio { transcript, .. } => *transcript = Some(text.clone()),
                        ContentPart::OutputText { text: t } => *t = text.clone(),
                        _ => {}
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // STT results
    // ---------------------------------------------------------------------------------------------

    fn on_stt(&mut self, msg: SttMsg) {
        match msg {
            SttMsg::Partial { item_id, transcript } => {
                if !self.pending_transcripts.contains_key(&item_id) && self.utterance.as_ref().is_none_or(|u| u.item_id != item_id) {
                    return;
                }
                // Deltas only ever append: a partial that revises earlier words (Whisper re-decodes the
                // whole utterance) waits for the final transcript instead.
                let said = self.partials.entry(item_id.clone()).or_default();
                let Some(delta) = transcript.text.strip_prefix(said.as_str()).filter(|d| !d.is_empty()).map(str::to_string) else { return };
                said.push_str(&delta);
                self.emit(ServerEvent::InputAudioTranscriptionDelta {
                    event_id: new_event_id(),
                    item_id,
                    content_index: 0,
                    delta,
                    words: Some(words(&transcript)),
                    speaker: transcript.speaker,
                });
            }
            SttMsg::Final { item_id, result } => {
                self.partials.remove(&item_id);
                if self.pending_transcripts.remove(&item_id).is_none() {
                    return;
                }
                let stt_ms = self.speech_end_wall.map(|t| t.elapsed().as_secs_f64() * 1000.0);
                if let Some(ms) = stt_ms {
                    self.metrics().observe("voxgate_turn_latency_seconds", &[("stage", "stt")], ms / 1000.0);
                }
                self.last_turn = self.speech_end_wall.take().map(|speech_end| TurnTimes { speech_end, stt_ms });
                let mut respond = false;
                match result {
                    Ok(t) => {
                        if let Some(entry) = self.conversation.get_mut(&item_id) {
                            entry.speaker = t.speaker.clone();
                            if let Item::Message(m) = &mut entry.item {
                                for part in &mut m.content {
                                    if let ContentPart::InputAudio { transcript, .. } = part {
                                        *transcript = Some(t.text.clone());
                                    }
                                }
                            }
                        }
                        let seconds = t.words.last().map_or(0.0, |w| w.end_ms as f64 / 1000.0);
                        self.emit(ServerEvent::InputAudioTranscriptionCompleted {
                            event_id: new_event_id(),
                            item_id: item_id.clone(),
                            content_index: 0,
                            transcript: t.text.clone(),
                            usage: TranscriptionUsage::Duration { seconds },
                            words: Some(words(&t)),
                            speaker: t.speaker.clone(),
                        });
                        if let Some(entry) = self.conversation.get(&item_id) {
                            let item = entry.item.clone();
                            let previous_item_id = self
                                .conversation
                                .position(&item_id)
                                .and_then(|i| i.checked_sub(1))
                                .and_then(|i| self.conversation.id_at(i));
                            self.emit(ServerEvent::ConversationItemDone { event_id: new_event_id(), previous_item_id, item });
                        }
                        respond = !t.text.trim().is_empty() && self.settings.turn.is_some_and(|t| t.create_response);
                    }
                    Err(e) => {
                        self.emit(ServerEvent::InputAudioTranscriptionFailed {
                            event_id: new_event_id(),
                            item_id,
                            content_index: 0,
                            error: RealtimeError::server(e.kind(), e.to_string()),
                        });
                    }
                }
                if self.pending_transcripts.is_empty() {
                    if let Some((event_id, params)) = self.deferred.take() {
                        self.request_response(event_id, params);
                        return;
                    }
                }
                if respond && self.active.is_none() {
                    self.request_response(None, ResponseParams::default());
                }
            }
        }
    }

    /// Transcripts past their deadline fail, so a stuck engine never stalls the call.
    fn expire_transcripts(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self.pending_transcripts.iter().filter(|(_, (d, _))| *d <= now).map(|(id, _)| id.clone()).collect();
        for item_id in expired {
            if let Some((_, cancel)) = self.pending_transcripts.remove(&item_id) {
                cancel.cancel();
            }
            self.partials.remove(&item_id);
            let name = self.engines.stt.as_ref().map_or("none", |s| s.name()).to_string();
            warn!(session_id = %self.start.session_id, engine = %name, "transcript deadline passed");
            let message = format!("speech-to-text engine {name} gave no transcript within {} ms", self.engines.settings.stt_timeout_ms);
            self.emit(ServerEvent::InputAudioTranscriptionFailed {
                event_id: new_event_id(),
                item_id,
                content_index: 0,
                error: RealtimeError::server("stt_timeout", message),
            });
            self.speech_end_wall = None;
        }
        if self.pending_transcripts.is_empty() {
            if let Some((event_id, params)) = self.deferred.take() {
                self.request_response(event_id, params);
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Responses
    // ---------------------------------------------------------------------------------------------

    fn request_response(&mut self, event_id: Option<String>, params: ResponseParams) {
        if self.active.is_some() {
            return self.error(
                "conversation_already_has_active_response",
                "a response is already in progress; cancel it with response.cancel or wait for response.done",
                None,
                event_id.as_deref(),
            );
        }
        if !self.pending_transcripts.is_empty() {
            // Answer once the user's words are known.
            self.deferred = Some((event_id, params));
            return;
        }
        let audio = match params.output_modalities.as_deref() {
            None => self.settings.audio_out,
            Some([Modality::Audio]) => true,
            Some([Modality::Text]) => false,
            Some(_) => {
                return self.error(
                    "invalid_value",
                    "output_modalities must be [\"audio\"] or [\"text\"]",
                    Some("response.output_modalities"),
                    event_id.as_deref(),
                )
            }
        };
        if audio && self.engines.tts.is_none() {
            return self.error(
                "tts_unavailable",
                "audio output needs a text-to-speech engine and none is configured; ask for output_modalities [\"text\"]",
                Some("response.output_modalities"),
                event_id.as_deref(),
            );
        }
        let in_conversation = params.conversation != Some(ResponseConversation::OutOfBand);
        let instructions = params.instructions.clone().or_else(|| self.settings.instructions.clone());
        let messages = match &params.input {
            Some(items) => {
                let mut scratch = Conversation::new(items.len().max(1));
                for item in items {
                    if let Some(id) = item.id().filter(|_| matches!(item, Item::Message(m) if m.content.is_empty())) {
                        // An item reference: `{"type": "item_reference", "id": …}` is not modelled; an id-only message copies that item.
                        if let Some(e) = self.conversation.get(id) {
                            let _ = scratch.insert(e.item.clone(), None, e.speaker.clone());
                        }
                    } else {
                        let _ = scratch.insert(item.clone(), None, None);
                    }
                }
                scratch.to_messages(instructions.as_deref())
            }
            None => self.conversation.to_messages(instructions.as_deref()),
        };
        let tools = params.tools.as_ref().unwrap_or(&self.settings.tools);
        let tool_choice = params.tool_choice.as_ref().or(self.settings.tool_choice.as_ref());
        let max = params.max_output_tokens.or(self.settings.max_output_tokens);
        let request = ChatRequest {
            model: self.settings.model.clone(),
            messages,
            stream: true,
            stream_options: Some(StreamOptions { include_usage: true }),
            tools: (!tools.is_empty()).then(|| tools.iter().map(chat_tool).collect()),
            tool_choice: if tools.is_empty() { None } else { tool_choice.map(chat_tool_choice) },
            max_completion_tokens: match max {
                Some(MaxOutputTokens::Limit(n)) => Some(n),
                _ => None,
            },
            ..ChatRequest::default()
        };
        if let Some(limits) = self.start.limits.clone() {
            if let Err(limited) = limits.try_request() {
                return self.refuse_rate_limited(limited, event_id.as_deref());
            }
        }

        self.seq += 1;
        if let Some(meter) = self.meter.as_mut() {
            meter.add_turn();
        }
        let id = new_response_id();
        let cancel = self.cancel.child_token();
        let speech = if audio {
            self.engines.tts.clone().map(|tts| Speech {
                tts,
                voice: voice_name(self.settings.voice.as_ref()),
                format: self.settings.output_format,
                timeout: Duration::from_millis(self.engines.settings.tts_timeout_ms),
            })
        } else {
            None
        };
        let job = ResponseJob {
            gateway: self.engines.gateway.clone(),
            request,
            key: self.start.key.clone(),
            speech,
            seq: self.seq,
            tx: self.resp_tx.clone(),
            cancel: cancel.clone(),
        };
        self.tasks.spawn(job.run());
        let mut response = Response::in_progress(id.clone());
        response.output_modalities = Some(vec![if audio { Modality::Audio } else { Modality::Text }]);
        response.metadata = params.metadata.clone();
        if !in_conversation {
            response.conversation_id = None;
        }
        self.emit(ServerEvent::ResponseCreated { event_id: new_event_id(), response });
        self.active = Some(Active {
            id,
            seq: self.seq,
            cancel,
            audio,
            in_conversation,
            metadata: params.metadata,
            output: Vec::new(),
            message: None,
            calls: BTreeMap::new(),
            model: None,
            ttft_ms: None,
            tts_ttfb_ms: None,
            first_audio_at: None,
            finish: None,
            usage: None,
            failed: None,
            llm_done: false,
            turn: self.last_turn.take(),
        });
    }

    fn on_response(&mut self, seq: u64, msg: ResponseMsg) {
        if let (ResponseMsg::Usage(usage), Some(limits)) = (&msg, &self.start.limits) {
            // Charged even for a response already cancelled: its tokens were spent.
            limits.record_tokens(usage.input_tokens.saturating_add(usage.output_tokens));
        }
        let Some(active) = self.active.as_mut() else { return };
        if active.seq != seq {
            return; // from a response already cancelled
        }
        match msg {
            ResponseMsg::Model { model, ttft_ms } => {
                active.model = Some(model);
                active.ttft_ms = Some(ttft_ms);
                self.metrics().observe("voxgate_turn_latency_seconds", &[("stage", "llm_ttft")], ttft_ms / 1000.0);
            }
            ResponseMsg::Text(text) => {
                self.ensure_message();
                let active = self.active.as_mut().expect("active");
                let m = active.message.as_mut().expect("message");
                m.text.push_str(&text);
                if !active.audio {
                    let (item_id, output_index, response_id) = (m.item_id.clone(), m.output_index, active.id.clone());
                    self.emit(ServerEvent::ResponseOutputTextDelta {
                        event_id: new_event_id(),
                        response_id,
                        item_id,
                        output_index,
                        content_index: 0,
                        delta: text,
                    });
                }
            }
            ResponseMsg::ToolCallStart { index, call_id, name } => {
                let item_id = new_item_id();
                let output_index = active.output.len() as u32;
                let item = Item::FunctionCall(FunctionCallItem {
                    id: Some(item_id.clone()),
                    status: Some(ItemStatus::InProgress),
                    call_id: Some(call_id.clone()),
                    name: name.clone(),
                    arguments: String::new(),
                });
                active.output.push(item.clone());
                active.calls.insert(index, CallState { item_id, output_index, call_id, name, arguments: String::new() });
                let response_id = active.id.clone();
                self.emit(ServerEvent::ResponseOutputItemAdded { event_id: new_event_id(), response_id, output_index, item });
            }
            ResponseMsg::ToolCallArgs { index, arguments } => {
                let response_id = active.id.clone();
                if let Some(call) = active.calls.get_mut(&index) {
                    call.arguments.push_str(&arguments);
                    let (item_id, output_index, call_id) = (call.item_id.clone(), call.output_index, call.call_id.clone());
                    self.emit(ServerEvent::ResponseFunctionCallArgumentsDelta {
                        event_id: new_event_id(),
                        response_id,
                        item_id,
                        output_index,
                        call_id,
                        delta: arguments,
                    });
                }
            }
            ResponseMsg::Finish(reason) => active.finish = Some(reason),
            ResponseMsg::Usage(usage) => {
                active.usage = Some(usage);
                let prices = active.model.as_ref().and_then(|m| self.engines.gateway.models().get(m));
                let cost = prices.map_or(0, |p| crate::llm::usage::cost_picousd(&usage, p));
                if let Some(meter) = self.meter.as_mut() {
                    meter.add_usage(
                        usage.input_tokens,
                        usage.output_tokens,
                        usage.cached_input_tokens,
                        u64::try_from(cost).unwrap_or(u64::MAX),
                    );
                }
            }
            ResponseMsg::Speak(text) => {
                if let Some(meter) = self.meter.as_mut() {
                    meter.add_tts_chars(text.chars().filter(|c| !c.is_whitespace()).count() as u64);
                }
                self.ensure_message();
                self.ensure_playback();
                if let Some(p) = self.playback.as_mut() {
                    p.queue.push_back(Out::Speak(text));
                }
            }
            ResponseMsg::Audio { bytes, ms } => {
                self.ensure_playback();
                if let Some(p) = self.playback.as_mut() {
                    p.queued_ms += ms;
                    p.queue.push_back(Out::Audio(bytes, ms));
                }
            }
            ResponseMsg::TtsFirstAudio { ttfb_ms } => {
                active.tts_ttfb_ms = Some(ttfb_ms);
                self.metrics().observe("voxgate_turn_latency_seconds", &[("stage", "tts_ttfb")], ttfb_ms / 1000.0);
            }
            ResponseMsg::Failed { code, message } => {
                warn!(session_id = %self.start.session_id, code, %message, "response failed");
                active.failed = Some((code, message));
            }
            ResponseMsg::Done => {
                active.llm_done = true;
                if let Some(p) = self.playback.as_mut() {
                    p.complete = true;
                }
            }
        }
        self.maybe_finish();
    }

    /// Opens the response's assistant message (item, content part) on its first text.
    fn ensure_message(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        if active.message.is_some() {
            return;
        }
        let item_id = new_item_id();
        let output_index = active.output.len() as u32;
        let part = if active.audio {
            ContentPart::OutputAudio { audio: None, transcript: Some(String::new()) }
        } else {
            ContentPart::OutputText { text: String::new() }
        };
        let item = Item::Message(MessageItem {
            id: Some(item_id.clone()),
            status: Some(ItemStatus::InProgress),
            role: Role::Assistant,
            content: vec![part],
        });
        active.output.push(item.clone());
        active.message = Some(MessageState { item_id: item_id.clone(), output_index, text: String::new(), spoken: String::new() });
        let response_id = active.id.clone();
        let audio = active.audio;
        let in_conversation = active.in_conversation;
        self.emit(ServerEvent::ResponseOutputItemAdded {
            event_id: new_event_id(),
            response_id: response_id.clone(),
            output_index,
            item: item.clone(),
        });
        if in_conversation {
            if let Ok((item, previous_item_id)) = self.conversation.insert(item, None, None) {
                self.emit(ServerEvent::ConversationItemAdded { event_id: new_event_id(), previous_item_id, item });
            }
        }
        let part =
            if audio { ResponsePart::Audio { audio: None, transcript: String::new() } } else { ResponsePart::Text { text: String::new() } };
        self.emit(ServerEvent::ResponseContentPartAdded {
            event_id: new_event_id(),
            response_id,
            item_id,
            output_index,
            content_index: 0,
            part,
        });
    }

    fn ensure_playback(&mut self) {
        if self.playback.is_some() {
            return;
        }
        let Some(active) = self.active.as_ref() else { return };
        let Some(m) = active.message.as_ref() else { return };
        self.playback = Some(Playback {
            response_id: active.id.clone(),
            item_id: m.item_id.clone(),
            queue: VecDeque::new(),
            queued_ms: 0.0,
            started: None,
            sent_ms: 0.0,
            timeline: Vec::new(),
            complete: false,
        });
    }

    /// When the actor must next wake: outbound audio, the end of playback, or a transcript deadline.
    fn next_due(&self) -> Option<Instant> {
        let transcript = self.pending_transcripts.values().map(|(d, _)| *d).min();
        match (self.playback_due(), transcript) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn playback_due(&self) -> Option<Instant> {
        let p = self.playback.as_ref()?;
        let lead = Duration::from_millis(self.engines.settings.output_lead_ms);
        let at = |ms: f64| p.started.map(|s| s + Duration::from_secs_f64(ms / 1000.0));
        match p.queue.front() {
            Some(Out::Speak(_)) => Some(Instant::now()),
            Some(Out::Audio(..)) => Some(at(p.sent_ms).map_or_else(Instant::now, |t| t.checked_sub(lead).unwrap_or(t))),
            // Drained: wake when the caller has heard the last of it (for output_audio_buffer.stopped).
            None if p.complete && self.active.as_ref().is_none_or(|a| a.id != p.response_id) => {
                at(p.sent_ms).or_else(|| Some(Instant::now()))
            }
            None => None,
        }
    }

    fn on_tick(&mut self) {
        self.expire_transcripts();
        let lead = Duration::from_millis(self.engines.settings.output_lead_ms);
        let now = Instant::now();
        let mut events = Vec::new();
        let mut finished_playing = false;
        // Audio in the last `Emit::Audio` of `events`.
        let mut delta_ms = 0.0;
        if let Some(p) = self.playback.as_mut() {
            loop {
                match p.queue.front() {
                    Some(Out::Speak(_)) => {
                        let Some(Out::Speak(text)) = p.queue.pop_front() else { unreachable!() };
                        p.timeline.push((p.sent_ms, text.clone()));
                        events.push(Emit::Transcript(text));
                    }
                    Some(&Out::Audio(_, next_ms)) => {
                        // A frame right after one sent in this pass joins its delta, up to
                        // OUTPUT_DELTA_MS_MAX of audio: fewer, larger messages for the same audio.
                        let joins = matches!(events.last(), Some(Emit::Audio(_))) && delta_ms + next_ms <= OUTPUT_DELTA_MS_MAX;
                        let due = p.started.map(|s| s + Duration::from_secs_f64(p.sent_ms / 1000.0));
                        if !joins && due.is_some_and(|d| d > now + lead) {
                            break;
                        }
                        let Some(Out::Audio(bytes, ms)) = p.queue.pop_front() else { unreachable!() };
                        if p.started.is_none() {
                            p.started = Some(now);
                            events.push(Emit::Started);
                        }
                        p.sent_ms += ms;
                        p.queued_ms -= ms;
                        match events.last_mut() {
                            Some(Emit::Audio(delta)) if joins => {
                                delta.extend_from_slice(&bytes);
                                delta_ms += ms;
                            }
                            _ => {
                                events.push(Emit::Audio(bytes));
                                delta_ms = ms;
                            }
                        }
                    }
                    None => {
                        let done_responding = self.active.as_ref().is_none_or(|a| a.id != p.response_id);
                        let played = p.started.is_none_or(|s| s + Duration::from_secs_f64(p.sent_ms / 1000.0) <= now);
                        finished_playing = p.complete && done_responding && played;
                        break;
                    }
                }
            }
        }
        for e in events {
            self.emit_playback(e);
        }
        if finished_playing {
            if let Some(p) = self.playback.take() {
                if p.started.is_some() {
                    self.emit(ServerEvent::OutputAudioBufferStopped { event_id: new_event_id(), response_id: p.response_id });
                }
            }
        }
        self.maybe_finish();
    }

    fn emit_playback(&mut self, e: Emit) {
        let Some(p) = self.playback.as_ref() else { return };
        let (response_id, item_id) = (p.response_id.clone(), p.item_id.clone());
        match e {
            Emit::Started => {
                if let Some(active) = self.active.as_mut() {
                    let now = Instant::now();
                    active.first_audio_at = Some(now);
                    if let Some(turn) = active.turn {
                        let v2v = now.duration_since(turn.speech_end).as_secs_f64();
                        self.metrics().observe("voxgate_turn_latency_seconds", &[("stage", "voice_to_voice")], v2v);
                    }
                }
                self.emit(ServerEvent::OutputAudioBufferStarted { event_id: new_event_id(), response_id });
            }
            Emit::Transcript(text) => {
                let output_index = self.active.as_ref().and_then(|a| a.message.as_ref()).map_or(0, |m| m.output_index);
                if let Some(m) = self.active.as_mut().and_then(|a| a.message.as_mut()) {
                    m.spoken.push_str(&text);
                }
                self.emit(ServerEvent::ResponseOutputAudioTranscriptDelta {
                    event_id: new_event_id(),
                    response_id,
                    item_id,
                    output_index,
                    content_index: 0,
                    delta: text,
                });
            }
            Emit::Audio(bytes) => {
                let output_index = self.active.as_ref().and_then(|a| a.message.as_ref()).map_or(0, |m| m.output_index);
                let delta = base64::engine::general_purpose::STANDARD.encode(bytes);
                self.emit(ServerEvent::ResponseOutputAudioDelta {
                    event_id: new_event_id(),
                    response_id,
                    item_id,
                    output_index,
                    content_index: 0,
                    delta,
                });
            }
        }
    }

    /// Ends the active response once the model is done and all its audio has been sent.
    fn maybe_finish(&mut self) {
        let Some(active) = self.active.as_ref() else { return };
        if !active.llm_done {
            return;
        }
        let drained = self.playback.as_ref().is_none_or(|p| p.response_id != active.id || p.queue.is_empty());
        if !drained {
            return;
        }
        let status = if active.failed.is_some() {
            ResponseStatus::Failed
        } else if active.finish == Some(FinishReason::Length) {
            ResponseStatus::Incomplete
        } else {
            ResponseStatus::Completed
        };
        self.finish_response(status, None);
    }

    /// Barge-in, `response.cancel` or `output_audio_buffer.clear`: stop the response and the audio,
    /// and cut the assistant's item to what the caller heard.
    fn interrupt(&mut self, reason: StatusReason) {
        if let Some(active) = self.active.as_ref() {
            active.cancel.cancel();
        }
        if let Some(p) = self.playback.take() {
            let heard_ms = p.started.map_or(0.0, |s| (s.elapsed().as_secs_f64() * 1000.0).min(p.sent_ms));
            let unheard = p.sent_ms - heard_ms > 0.5 || !p.queue.is_empty() || self.active.as_ref().is_some_and(|a| a.id == p.response_id);
            if unheard {
                self.emit(ServerEvent::OutputAudioBufferCleared { event_id: new_event_id(), response_id: p.response_id.clone() });
            }
            // The chunk playing at the cut ends after its audio still queued, not where sending stopped.
            let queued_of_chunk: f64 = p.queue.iter().map_while(|o| if let Out::Audio(_, ms) = o { Some(*ms) } else { None }).sum();
            let chunk_end = p.sent_ms + queued_of_chunk;
            let heard = heard_text(&p.timeline, chunk_end, heard_ms);
            if let Some(m) = self.active.as_mut().and_then(|a| a.message.as_mut()).filter(|m| m.item_id == p.item_id) {
                m.spoken = heard.clone();
            }
            self.set_transcript(&p.item_id, heard);
            if let Some(entry) = self.conversation.get_mut(&p.item_id) {
                entry.spoken = Some(super::conversation::Spoken { timeline: p.timeline.clone(), total_ms: chunk_end, sent_ms: p.sent_ms });
            }
            if self.conversation.get(&p.item_id).is_some() {
                self.emit(ServerEvent::ConversationItemTruncated {
                    event_id: new_event_id(),
                    item_id: p.item_id.clone(),
                    content_index: 0,
                    audio_end_ms: heard_ms as u64,
                });
            }
            if p.started.is_some() && !unheard {
                self.emit(ServerEvent::OutputAudioBufferStopped { event_id: new_event_id(), response_id: p.response_id });
            }
        }
        if self.active.is_some() {
            self.finish_response(ResponseStatus::Cancelled, Some(reason));
        }
    }

    fn finish_response(&mut self, status: ResponseStatus, reason: Option<StatusReason>) {
        let Some(mut active) = self.active.take() else { return };
        let item_status = if status == ResponseStatus::Completed { ItemStatus::Completed } else { ItemStatus::Incomplete };
        let response_id = active.id.clone();
        let playback_item = self.playback.as_ref().map(|p| (p.item_id.clone(), p.timeline.clone(), p.sent_ms));
        // The assistant message.
        if let Some(m) = active.message.take() {
            let final_text = if active.audio { m.spoken.clone() } else { m.text.clone() };
            let (part, content) = if active.audio {
                (
                    ResponsePart::Audio { audio: None, transcript: final_text.clone() },
                    ContentPart::OutputAudio { audio: None, transcript: Some(final_text.clone()) },
                )
            } else {
                (ResponsePart::Text { text: final_text.clone() }, ContentPart::OutputText { text: final_text.clone() })
            };
            if active.audio {
                self.emit(ServerEvent::ResponseOutputAudioDone {
                    event_id: new_event_id(),
                    response_id: response_id.clone(),
                    item_id: m.item_id.clone(),
                    output_index: m.output_index,
                    content_index: 0,
                });
                self.emit(ServerEvent::ResponseOutputAudioTranscriptDone {
                    event_id: new_event_id(),
                    response_id: response_id.clone(),
                    item_id: m.item_id.clone(),
                    output_index: m.output_index,
                    content_index: 0,
                    transcript: final_text.clone(),
                });
            } else {
                self.emit(ServerEvent::ResponseOutputTextDone {
                    event_id: new_event_id(),
                    response_id: response_id.clone(),
                    item_id: m.item_id.clone(),
                    output_index: m.output_index,
                    content_index: 0,
                    text: final_text.clone(),
                });
            }
            self.emit(ServerEvent::ResponseContentPartDone {
                event_id: new_event_id(),
                response_id: response_id.clone(),
                item_id: m.item_id.clone(),
                output_index: m.output_index,
                content_index: 0,
                part,
            });
            let item = Item::Message(MessageItem {
                id: Some(m.item_id.clone()),
                status: Some(item_status),
                role: Role::Assistant,
                content: vec![content],
            });
            active.output[m.output_index as usize] = item.clone();
            self.emit(ServerEvent::ResponseOutputItemDone {
                event_id: new_event_id(),
                response_id: response_id.clone(),
                output_index: m.output_index,
                item: item.clone(),
            });
            if active.in_conversation {
                if let Some(entry) = self.conversation.get_mut(&m.item_id) {
                    entry.item = item.clone();
                    if let Some((_, timeline, total_ms)) = playback_item.as_ref().filter(|(pid, ..)| *pid == m.item_id) {
                        if entry.spoken.is_none() {
                            entry.spoken =
                                Some(super::conversation::Spoken { timeline: timeline.clone(), total_ms: *total_ms, sent_ms: *total_ms });
                        }
                    }
                    let previous_item_id =
                        self.conversation.position(&m.item_id).and_then(|i| i.checked_sub(1)).and_then(|i| self.conversation.id_at(i));
                    self.emit(ServerEvent::ConversationItemDone { event_id: new_event_id(), previous_item_id, item });
                }
            }
        }
        // Function calls: complete ones join the conversation; a cancelled response's calls do not.
        for call in std::mem::take(&mut active.calls).into_values() {
            let item = Item::FunctionCall(FunctionCallItem {
                id: Some(call.item_id.clone()),
                status: Some(item_status),
                call_id: Some(call.call_id.clone()),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            });
            active.output[call.output_index as usize] = item.clone();
            if status == ResponseStatus::Completed {
                self.emit(ServerEvent::ResponseFunctionCallArgumentsDone {
                    event_id: new_event_id(),
                    response_id: response_id.clone(),
                    item_id: call.item_id.clone(),
                    output_index: call.output_index,
                    call_id: call.call_id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                });
            }
            self.emit(ServerEvent::ResponseOutputItemDone {
                event_id: new_event_id(),
                response_id: response_id.clone(),
                output_index: call.output_index,
                item: item.clone(),
            });
            if active.in_conversation && status == ResponseStatus::Completed {
                if let Ok((item, previous_item_id)) = self.conversation.insert(item, None, None) {
                    self.emit(ServerEvent::ConversationItemAdded {
                        event_id: new_event_id(),
                        previous_item_id: previous_item_id.clone(),
                        item: item.clone(),
                    });
                    self.emit(ServerEvent::ConversationItemDone { event_id: new_event_id(), previous_item_id, item });
                }
            }
        }
        let status_details = match status {
            ResponseStatus::Cancelled => Some(StatusDetails { status_type: Some(status), reason, error: None }),
            ResponseStatus::Incomplete => {
                Some(StatusDetails { status_type: Some(status), reason: Some(StatusReason::MaxOutputTokens), error: None })
            }
            ResponseStatus::Failed => active.failed.as_ref().map(|(code, message)| StatusDetails {
                status_type: Some(status),
                reason: None,
                error: Some(StatusError {
                    error_type: Some("server_error".into()),
                    code: Some(code.to_string()),
                    message: Some(message.clone()),
                }),
            }),
            _ => None,
        };
        let usage = active.usage.map(|u| RealtimeUsage {
            total_tokens: u.input_tokens + u.output_tokens,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            input_token_details: crate::transport::realtime::InputTokenDetails {
                cached_tokens: u.cached_input_tokens,
                text_tokens: u.input_tokens,
                audio_tokens: 0,
                cached_tokens_details: None,
            },
            output_token_details: crate::transport::realtime::OutputTokenDetails { text_tokens: u.output_tokens, audio_tokens: 0 },
        });
        let voice_to_voice = match (active.turn, active.first_audio_at) {
            (Some(turn), Some(first)) => Some(first.duration_since(turn.speech_end).as_secs_f64() * 1000.0),
            _ => None,
        };
        let meter = self.meter.as_ref().map(|m| {
            let (billed_seconds, amount) = m.so_far(wall_ms());
            MeterInfo { billed_seconds, amount_usd: amount.display_usd_full().trim_start_matches('$').to_string() }
        });
        let voxgate = (active.model.is_some() || meter.is_some()).then(|| VoxgateResponseInfo {
            model: active.model.clone(),
            latency_ms: StageLatencies {
                stt: active.turn.and_then(|t| t.stt_ms),
                llm_ttft: active.ttft_ms,
                tts_ttfb: active.tts_ttfb_ms,
                voice_to_voice,
            },
            meter,
        });
        let mut response = Response::in_progress(response_id.clone());
        response.status = status;
        response.status_details = status_details;
        response.output = active.output;
        response.output_modalities = Some(vec![if active.audio { Modality::Audio } else { Modality::Text }]);
        response.usage = Some(usage.unwrap_or_default());
        response.metadata = active.metadata;
        response.voxgate = voxgate;
        self.emit(ServerEvent::ResponseDone { event_id: new_event_id(), response });
        if let Some(p) = self.playback.as_mut().filter(|p| p.response_id == response_id) {
            p.complete = true;
        }
        self.report_rate_limits();
    }

    /// `rate_limits.updated` with the key's per-minute budgets, for a key that has limits.
    fn report_rate_limits(&mut self) {
        let Some(limits) = self.start.limits.as_ref() else { return };
        let rate_limits: Vec<RateLimit> = limits
            .budgets()
            .into_iter()
            .map(|b| RateLimit { name: b.name.to_string(), limit: b.limit, remaining: b.remaining, reset_seconds: b.reset.as_secs_f64() })
            .collect();
        if !rate_limits.is_empty() {
            self.emit(ServerEvent::RateLimitsUpdated { event_id: new_event_id(), rate_limits });
        }
    }

    /// A response the key's per-minute limit refuses: an `error` event that names the limit and when
    /// to retry, then the budgets. The session goes on; the user's turn stays in the conversation.
    fn refuse_rate_limited(&mut self, limited: super::RateLimited, event_id: Option<&str>) {
        info!(session_id = %self.start.session_id, limit = limited.name, retry_after_ms = limited.retry_after.as_millis() as u64, "response refused: key over its rate limit");
        self.emit(ServerEvent::error(RealtimeError {
            error_type: limited.name.to_string(),
            code: Some("rate_limit_exceeded".into()),
            message: limited.message,
            param: None,
            event_id: event_id.map(str::to_string),
        }));
        self.report_rate_limits();
    }
}

/// The `kind` label of `voxgate_errors_total` for an event that reports an error (a closed set).
fn error_kind(event: &ServerEvent) -> Option<&'static str> {
    match event {
        ServerEvent::Error { error, .. } if error.code.as_deref() == Some("rate_limit_exceeded") => Some("rate_limited"),
        ServerEvent::Error { error, .. } if error.error_type == "server_error" => Some("session_error"),
        ServerEvent::Error { .. } => Some("bad_client_event"),
        ServerEvent::InputAudioTranscriptionFailed { .. } => Some("stt_failed"),
        ServerEvent::ResponseDone { response, .. } if response.status == ResponseStatus::Failed => {
            let code = response.status_details.as_ref().and_then(|d| d.error.as_ref()).and_then(|e| e.code.as_deref());
            Some(if code == Some("tts_failed") { "tts_failed" } else { "llm_failed" })
        }
        _ => None,
    }
}

enum Emit {
    Started,
    Transcript(String),
    Audio(Vec<u8>),
}

/// The transcript of the first `heard_ms` of an item's audio: whole chunks that were heard, and the
/// heard share of the chunk playing at the cut, ending at a word boundary.
pub(super) fn heard_text(timeline: &[(f64, String)], total_ms: f64, heard_ms: f64) -> String {
    let mut out = String::new();
    for (i, (start, text)) in timeline.iter().enumerate() {
        if *start >= heard_ms {
            break;
        }
        let end = timeline.get(i + 1).map_or(total_ms, |(s, _)| *s);
        if heard_ms >= end {
            out.push_str(text);
            continue;
        }
        let share = ((heard_ms - start) / (end - start).max(1.0)).clamp(0.0, 1.0);
        let cut = (text.chars().count() as f64 * share).floor() as usize;
        let prefix: String = text.chars().take(cut).collect();
        // Keep whole words only.
        let words_end = if text.chars().nth(cut).is_none_or(char::is_whitespace) {
            prefix.len()
        } else {
            prefix.rfind(char::is_whitespace).unwrap_or(0)
        };
        out.push_str(&prefix[..words_end]);
        break;
    }
    out
}

/// The wall clock in unix ms, as the ledger stamps sessions.
fn wall_ms() -> i64 {
    use crate::metering::Clock as _;
    crate::metering::SystemClock.now_unix_ms()
}

fn words(t: &Transcript) -> Vec<Word> {
    t.words.iter().map(|w| Word { text: w.text.clone(), start_ms: w.start_ms, end_ms: w.end_ms, confidence: w.confidence as f64 }).collect()
}

fn voice_name(voice: Option<&Voice>) -> Option<String> {
    match voice? {
        Voice::Name(n) => Some(n.clone()),
        Voice::Id { id } => Some(id.clone()),
    }
}

fn chat_tool(tool: &FunctionTool) -> Tool {
    Tool {
        kind: "function".into(),
        function: FunctionDef {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters: tool.parameters.clone(),
            strict: None,
        },
    }
}

fn chat_tool_choice(choice: &ToolChoice) -> ChatToolChoice {
    match choice {
        ToolChoice::Mode(ToolChoiceMode::None) => ChatToolChoice::Mode("none".into()),
        ToolChoice::Mode(ToolChoiceMode::Auto) => ChatToolChoice::Mode("auto".into()),
        ToolChoice::Mode(ToolChoiceMode::Required) => ChatToolChoice::Mode("required".into()),
        ToolChoice::Function { name, .. } => {
            ChatToolChoice::Named { kind: "function".into(), function: NamedFunction { name: name.clone() } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{error_kind, heard_text};
    use crate::transport::realtime::{RealtimeError, Response, ResponseStatus, ServerEvent, StatusDetails, StatusError};

    #[test]
    fn error_events_map_to_a_closed_set_of_metric_kinds() {
        let error = |error_type: &str, code: &str| {
            ServerEvent::error(RealtimeError {
                error_type: error_type.into(),
                code: Some(code.into()),
                message: "m".into(),
                param: None,
                event_id: None,
            })
        };
        let failed = |code: &str| {
            let mut response = Response::in_progress("resp_1");
            response.status = ResponseStatus::Failed;
            response.status_details = Some(StatusDetails {
                status_type: Some(ResponseStatus::Failed),
                reason: None,
                error: Some(StatusError { error_type: Some("server_error".into()), code: Some(code.into()), message: None }),
            });
            ServerEvent::ResponseDone { event_id: "e".into(), response }
        };
        assert_eq!(error_kind(&error("invalid_request_error", "invalid_json")), Some("bad_client_event"));
        assert_eq!(error_kind(&error("requests", "rate_limit_exceeded")), Some("rate_limited"));
        assert_eq!(error_kind(&error("server_error", "anything")), Some("session_error"));
        let stt = ServerEvent::InputAudioTranscriptionFailed {
            event_id: "e".into(),
            item_id: "i".into(),
            content_index: 0,
            error: RealtimeError::server("stt_timeout", "m"),
        };
        assert_eq!(error_kind(&stt), Some("stt_failed"));
        assert_eq!(error_kind(&failed("llm_failed")), Some("llm_failed"));
        assert_eq!(error_kind(&failed("llm_stream_failed")), Some("llm_failed"));
        assert_eq!(error_kind(&failed("tts_failed")), Some("tts_failed"));
        let mut cancelled = Response::in_progress("resp_2");
        cancelled.status = ResponseStatus::Cancelled;
        assert_eq!(error_kind(&ServerEvent::ResponseDone { event_id: "e".into(), response: cancelled }), None);
    }

    #[test]
    fn heard_text_keeps_whole_chunks_and_whole_words() {
        let timeline = vec![
            (0.0, "Sure, ".to_string()),
            (400.0, "your table is booked for seven. ".to_string()),
            (2000.0, "Anything else?".to_string()),
        ];
        assert_eq!(heard_text(&timeline, 3000.0, 0.0), "");
        assert_eq!(heard_text(&timeline, 3000.0, 400.0), "Sure, ");
        assert_eq!(heard_text(&timeline, 3000.0, 3000.0), "Sure, your table is booked for seven. Anything else?");
        let half = heard_text(&timeline, 3000.0, 1200.0);
        assert!(half.starts_with("Sure, your table"), "{half}");
        assert!(!half.contains("Anything"), "{half}");
        assert!(half.ends_with(' ') || half.ends_with(|c: char| c.is_alphanumeric()), "{half}");
        // Beyond the end is clamped to everything.
        assert_eq!(heard_text(&timeline, 3000.0, 9000.0), "Sure, your table is booked for seven. Anything else?");
    }
}
