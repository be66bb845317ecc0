//! The session loop: one task per call, one `select!` over the transport's commands, STT results,
//! response messages and the clock that paces outbound audio. It owns the conversation and the
//! settings and routes everything else to the part that owns the state: [`Input`] (the caller's
//! audio and turns), [`Active`] (the agent's response) and [`Playback`] (audio on its way out).
//! Nothing here locks; stages talk to it over bounded channels.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::command::{Command, Inbound, ResponseOverrides};
use super::conversation::{new_response_id, Content, Conversation, ConversationError, Item, ItemStatus, Role, Spoken};
use super::event::{CancelReason, CloseReason, ErrorKind, Event, Joined, MeterReading, Outbound, ResponseStatus, SessionError, Setting};
use super::input::{Committed, Input, Signal, SttMsg, TurnTimes};
use super::playback::{heard_text, Playback, Release, MAX_QUEUED_AUDIO_MS};
use super::response::{ResponseJob, ResponseMsg, Speech};
use super::settings::Settings;
use super::turn::{chat_request, Active};
use super::{Peer, RateLimited, SessionStart, VoiceEngines};
use crate::audio::AudioFormat;
use crate::metering::ledger::SessionMeter;

/// Runs one session until the client leaves, `cancel` fires, the transport stops reading, the client
/// stays idle too long or the call reaches `max_session_ms`.
/// `meter` bills the session (flat rate from open to close) and collects its usage for the record;
/// `None` runs it unmetered (replay, tests). `peer` is the client's end as the transport sees it
/// (`None`: no idle limit, billed to the close, as for replay).
pub async fn run_session(
    engines: Arc<VoiceEngines>,
    start: SessionStart,
    meter: Option<SessionMeter>,
    peer: Option<Arc<Peer>>,
    mut inbound: mpsc::Receiver<Inbound>,
    outbound: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
) {
    let (stt_tx, mut stt_rx) = mpsc::channel(64);
    let (resp_tx, mut resp_rx) = mpsc::channel(64);
    let mut actor = Actor::new(engines, start, outbound, cancel.clone(), stt_tx, resp_tx);
    actor.meter = meter.map(|mut m| {
        m.set_speech_prices(actor.engines.speech_prices.clone());
        m
    });
    let mut close_reason = "server_shutdown";
    let mut ended_by: Option<CloseReason> = None;
    actor.emit_settings(true);
    actor.report_rate_limits();
    info!(session_id = %actor.start.session_id, route = %actor.start.route, "realtime session opened");
    let mut cancelled = super::cancellation_signal(&cancel);
    // One timer for the loop, moved when the next deadline moves: a new one per pass would insert
    // and remove a timer entry at every event while audio plays.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // The call's limits: its maximum length, and how long the client may send nothing. One timer,
    // moved only when it fires early (a command came since it was set), never per command.
    let max_at = Instant::now() + Duration::from_millis(actor.engines.settings.max_session_ms);
    let idle = peer.as_ref().map(|p| p.idle());
    let mut last_command = Instant::now();
    let limit_due = |last_command: Instant| idle.map_or(max_at, |idle| max_at.min(last_command + idle));
    let limit = tokio::time::sleep_until(limit_due(last_command));
    tokio::pin!(limit);
    loop {
        let due = actor.next_due();
        // A deadline already reached (the next audio of a new response, a chunk's text) is ready at
        // once: the timer would round it up to its next 1 ms tick.
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
            () = &mut limit => {
                let now = Instant::now();
                if now >= max_at {
                    actor.end_call(CloseReason::MaxDuration, None);
                } else if limit_due(last_command) <= now {
                    actor.end_call(CloseReason::Idle, idle);
                } else {
                    limit.as_mut().reset(limit_due(last_command));
                }
            }
            msg = inbound.recv() => match msg {
                Some(Inbound { command, reply_to }) => {
                    last_command = Instant::now();
                    actor.on_command(command, reply_to)
                }
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
        if let Some(reason) = actor.closing.take() {
            if let Some(reason) = reason {
                ended_by = Some(reason);
                let _ = actor.outbound.try_send(Outbound::Close(reason));
            } else {
                close_reason = "client_closed";
            }
            break;
        }
    }
    // Why it ended: the session's own reason, else the transport's (a peer gone silent, a client
    // that does not read), else the client's close or the server's shutdown.
    let ended_by = ended_by.or_else(|| peer.as_ref().and_then(|p| p.ended()));
    if let Some(reason) = ended_by {
        close_reason = reason.as_str();
    }
    // A client that vanished (its connection cut, its pings unanswered) or went silent is billed to
    // the last time it was heard from; one that closed, or a live call the server ends, to now.
    let last_heard = peer.as_ref().filter(|p| match ended_by {
        Some(reason) => reason.bills_to_last_heard(),
        None => close_reason == "client_closed" && p.was_lost(),
    });
    let heard_ago = last_heard.map(|p| Instant::now().saturating_duration_since(p.last_heard()));
    actor.shutdown().await;
    // Audio whose transcript never came back was still sent: the configured engine had it.
    for item_id in actor.stt_unmetered.keys().cloned().collect::<Vec<_>>() {
        actor.meter_stt(&item_id, None);
    }
    if let Some(meter) = actor.meter.take() {
        let now_ms = meter.now_unix_ms();
        match heard_ago {
            Some(ago) => {
                let ended_ms = now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)).max(meter.started_ms());
                let (seconds, _) = meter.so_far(ended_ms);
                actor.engines.metrics.add("voxgate_session_seconds_billed_total", &[], seconds as f64);
                meter.close_at(close_reason, ended_ms).await;
            }
            None => {
                let (seconds, _) = meter.so_far(now_ms);
                actor.engines.metrics.add("voxgate_session_seconds_billed_total", &[], seconds as f64);
                meter.close(close_reason).await;
            }
        }
    }
    info!(session_id = %actor.start.session_id, "realtime session closed");
}

struct Actor {
    engines: Arc<VoiceEngines>,
    start: SessionStart,
    outbound: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// The session ends: `Some(reason)` closes the connection, `None` when the transport is gone.
    closing: Option<Option<CloseReason>>,
    settings: Settings,
    conversation: Conversation,
    input: Input,
    signals: Vec<Signal>,
    told_no_stt: bool,
    /// The user turn the next response answers.
    last_turn: Option<TurnTimes>,
    /// A response asked for while transcripts were still being made.
    deferred: Option<(Option<String>, ResponseOverrides)>,
    /// Bills the session; counts its tokens, audio, characters and turns for the record.
    meter: Option<SessionMeter>,
    /// Audio of committed utterances (item id → ms) not yet charged to the speech-to-text engine
    /// that transcribed it: charged when the final transcript names it (or fails).
    stt_unmetered: std::collections::HashMap<String, u64>,
    resp_tx: mpsc::Sender<(u64, ResponseMsg)>,
    seq: u64,
    active: Option<Active>,
    playback: Option<Playback>,
    releases: Vec<Release>,
    /// The chunk handed to text-to-speech and not yet charged: charged once the engine that
    /// speaks it is known.
    tts_unbilled: Option<String>,
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
        let settings = Settings::initial(&start.route, &engines);
        let tasks = TaskTracker::new();
        let input = Input::new(
            engines.clone(),
            start.session_id.clone(),
            cancel.clone(),
            tasks.clone(),
            stt_tx,
            settings.turn,
            settings.input_format.rate_hz(),
        );
        Actor {
            conversation: Conversation::new(engines.settings.max_history_items).with_max_bytes(engines.settings.max_history_bytes),
            engines,
            start,
            outbound,
            cancel,
            tasks,
            closing: None,
            settings,
            input,
            signals: Vec::new(),
            told_no_stt: false,
            last_turn: None,
            deferred: None,
            meter: None,
            stt_unmetered: std::collections::HashMap::new(),
            resp_tx,
            seq: 0,
            active: None,
            playback: None,
            releases: Vec::new(),
            tts_unbilled: None,
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Plumbing
    // ---------------------------------------------------------------------------------------------

    fn emit(&mut self, event: Event) {
        if self.closing.is_some() {
            return;
        }
        if let Some(kind) = error_kind(&event) {
            self.engines.metrics.inc("voxgate_errors_total", &[("kind", kind)]);
        }
        match self.outbound.try_send(Outbound::Event(Box::new(event))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(session_id = %self.start.session_id, "client is not reading events; closing the session");
                self.engines.metrics.inc("voxgate_errors_total", &[("kind", "client_not_reading")]);
                self.closing = Some(Some(CloseReason::ClientNotReading));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.closing = Some(None),
        }
    }

    fn error(&mut self, error: SessionError, reply_to: Option<&str>) {
        self.emit(Event::Error(SessionError { reply_to: reply_to.map(str::to_string), ..error }));
    }

    /// Ends a live call for one of the session's own limits (`MaxDuration`, or `Idle` after `idle`):
    /// an `error` the client can read, then the close.
    fn end_call(&mut self, reason: CloseReason, idle: Option<Duration>) {
        let (kind, message) = match (reason, idle) {
            (CloseReason::Idle, Some(idle)) => {
                (ErrorKind::IdleTimeout, format!("the session ends: nothing was received from the client for {} s", idle.as_secs()))
            }
            _ => (
                ErrorKind::SessionExpired,
                format!("the session reached its maximum length of {} s and ends", self.engines.settings.max_session_ms / 1000),
            ),
        };
        info!(session_id = %self.start.session_id, reason = reason.as_str(), "ending the session");
        self.emit(Event::Error(SessionError::new(kind, message)));
        if self.closing.is_none() {
            self.closing = Some(Some(reason));
        }
    }

    fn queued_ms(&self) -> f64 {
        self.playback.as_ref().map_or(0.0, Playback::queued_ms)
    }

    fn responding_to(&self, response_id: &str) -> bool {
        self.active.as_ref().is_some_and(|a| a.id == response_id)
    }

    async fn shutdown(&mut self) {
        if let Some(active) = self.active.take() {
            active.cancel.cancel();
        }
        self.input.close();
        self.cancel.cancel();
        self.tasks.close();
        // Every task watches the session's token; this returns as soon as they notice.
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await.is_err() {
            warn!(session_id = %self.start.session_id, "session tasks did not stop within 5 s");
        }
    }

    /// The settings as the client reads them back (the voice defaults to the engine's).
    fn emit_settings(&mut self, created: bool) {
        let mut settings = self.settings.clone();
        if settings.voice.is_none() {
            settings.voice = self.engines.tts.as_ref().map(|t| super::settings::Voice::Name(t.name().to_string()));
        }
        self.emit(Event::Settings { session_id: self.start.session_id.clone(), settings: Box::new(settings), created });
    }

    // ---------------------------------------------------------------------------------------------
    // Commands
    // ---------------------------------------------------------------------------------------------

    fn on_command(&mut self, command: Command, reply_to: Option<String>) {
        let reply_to = reply_to.as_deref();
        match command {
            Command::Audio { samples, rate_hz } => self.on_audio(&samples, rate_hz, reply_to),
            Command::Commit => match self.input.commit() {
                Some(committed) => self.on_committed(committed),
                None => self.error(
                    SessionError::new(ErrorKind::InputEmpty, "the input audio buffer is empty: append audio before committing"),
                    reply_to,
                ),
            },
            Command::ClearInput => {
                self.input.clear();
                self.emit(Event::InputCleared);
            }
            Command::Configure { update, applied } => {
                let result = self.settings.apply(*update, &self.engines);
                if let Some(applied) = applied {
                    let _ = applied.send(result.is_ok());
                }
                match result {
                    Ok(next) => {
                        let restart = self.settings.input_changed(&next);
                        let model = |s: &Settings| s.transcription.as_ref().and_then(|t| t.model.clone());
                        if model(&self.settings) != model(&next) {
                            // A client may pick an engine of `[stt] engines` by name; other names
                            // (`whisper-1` from habit) are reported back and change nothing.
                            let stt = self.engines.stt.as_ref();
                            let chosen = model(&next).filter(|m| stt.is_some_and(|s| s.knows(m)));
                            self.input.choose_stt(chosen.as_deref());
                        }
                        self.settings = next;
                        if restart {
                            self.input.restart(self.settings.turn, self.settings.input_format.rate_hz());
                        } else {
                            self.input.set_turn(self.settings.turn);
                        }
                        self.emit_settings(false);
                    }
                    Err(e) => self.error(e, reply_to),
                }
            }
            Command::AddItem { item, previous_item_id } => self.on_add_item(item, previous_item_id.as_deref(), reply_to),
            Command::RetrieveItem { item_id } => match self.conversation.get(&item_id) {
                Some(entry) => {
                    let item = entry.item.clone();
                    self.emit(Event::ItemRetrieved { item });
                }
                None => self.error(item_not_found(&item_id), reply_to),
            },
            Command::DeleteItem { item_id } => {
                if self.conversation.delete(&item_id) {
                    self.emit(Event::ItemDeleted { item_id });
                } else {
                    self.error(item_not_found(&item_id), reply_to);
                }
            }
            Command::Heard { item_id, ms } => self.on_heard(&item_id, ms, reply_to),
            Command::CreateResponse(overrides) => self.request_response(reply_to.map(str::to_string), *overrides),
            Command::Cancel { response_id } => {
                let matches = match (&self.active, &response_id) {
                    (Some(a), Some(id)) => &a.id == id,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if matches {
                    self.interrupt(CancelReason::ClientCancelled);
                } else if self.deferred.take().is_some() && response_id.is_none() {
                    debug!(session_id = %self.start.session_id, "cancelled a response waiting for its transcript");
                } else {
                    self.error(SessionError::new(ErrorKind::NoActiveResponse, "there is no active response to cancel"), reply_to);
                }
            }
            Command::Sync { done } => {
                let _ = done.send(());
            }
            Command::ClearOutput => {
                if self.playback.is_some() {
                    self.interrupt(CancelReason::ClientCancelled);
                } else {
                    let response_id = self.active.as_ref().map(|a| a.id.clone()).unwrap_or_default();
                    self.emit(Event::AudioCleared { response_id });
                }
            }
        }
    }

    fn on_audio(&mut self, samples: &[i16], rate_hz: u32, reply_to: Option<&str>) {
        if self.engines.stt.is_none() {
            if !self.told_no_stt {
                self.told_no_stt = true;
                let error = SessionError::new(
                    ErrorKind::SttUnavailable,
                    "input audio needs a speech-to-text engine and none is configured ([stt] engine in voxgate.toml); send text items instead",
                )
                .concerning(Setting::Audio);
                self.error(error, reply_to);
            }
            return;
        }
        let mut signals = std::mem::take(&mut self.signals);
        signals.clear();
        self.input.push(samples, rate_hz, &mut signals);
        for signal in signals.drain(..) {
            match signal {
                Signal::SpeechStarted { item_id, audio_start_ms } => self.speech_started(item_id, audio_start_ms),
                Signal::SpeechStopped { item_id, audio_end_ms, committed } => {
                    self.emit(Event::SpeechStopped { item_id, audio_end_ms });
                    self.on_committed(committed);
                }
            }
        }
        self.signals = signals;
    }

    fn speech_started(&mut self, item_id: String, audio_start_ms: u64) {
        self.emit(Event::SpeechStarted { item_id, audio_start_ms });
        // Barge-in: the caller talks over the agent.
        let interrupt = self.settings.turn.is_some_and(|t| t.interrupt_response);
        if interrupt && (self.active.is_some() || self.playback.is_some()) {
            self.engines.metrics.inc("voxgate_barge_ins_total", &[]);
            self.interrupt(CancelReason::TurnDetected);
        }
    }

    /// An utterance committed: its item joins the conversation and its transcript is on the way.
    fn on_committed(&mut self, committed: Committed) {
        if self.meter.is_some() {
            self.stt_unmetered.insert(committed.item_id.clone(), committed.audio_ms);
        }
        let previous = self.conversation.last_id();
        self.emit(Event::InputCommitted { item_id: committed.item_id.clone(), previous_item_id: previous });
        let item = Item::Message(super::conversation::MessageItem {
            id: Some(committed.item_id),
            status: Some(ItemStatus::Completed),
            role: Role::User,
            content: vec![Content::InputAudio { transcript: None }],
        });
        match self.conversation.insert(item, None, None) {
            Ok((item, previous_item_id)) => self.emit(Event::ItemAdded { item, previous_item_id }),
            Err(e) => warn!(session_id = %self.start.session_id, error = %e, "could not add the user's audio item"),
        }
    }

    fn on_add_item(&mut self, item: Item, previous: Option<&str>, reply_to: Option<&str>) {
        match &item {
            Item::FunctionCallOutput(o) => {
                if !self.conversation.has_call(&o.call_id) {
                    let message = format!("no function call with call_id {:?} in this conversation", o.call_id);
                    return self.error(SessionError::new(ErrorKind::UnknownCallId, message).concerning(Setting::ItemCallId), reply_to);
                }
            }
            Item::Message(m) => {
                if m.role == Role::Assistant
                    && m.content.iter().any(|p| matches!(p, Content::InputText { .. } | Content::InputAudio { .. }))
                {
                    let error = SessionError::new(ErrorKind::InvalidValue, "assistant messages take output_text content");
                    return self.error(error.concerning(Setting::ItemContent), reply_to);
                }
            }
            Item::FunctionCall(_) => {}
        }
        let bytes = super::conversation::item_bytes(&item);
        if bytes > self.conversation.max_bytes() {
            let error = SessionError::new(
                ErrorKind::InvalidValue,
                ConversationError::TooLarge { bytes, max: self.conversation.max_bytes() }.to_string(),
            );
            return self.error(error.concerning(Setting::ItemContent), reply_to);
        }
        match self.conversation.insert(item, previous, None) {
            Ok((item, previous_item_id)) => {
                self.emit(Event::ItemAdded { item: item.clone(), previous_item_id: previous_item_id.clone() });
                self.emit(Event::ItemDone { item, previous_item_id });
            }
            Err(e) => self.error(SessionError::new(ErrorKind::InvalidValue, e.to_string()).concerning(Setting::PreviousItemId), reply_to),
        }
    }

    /// The caller heard the first `ms` of a spoken item: cut its transcript there.
    fn on_heard(&mut self, item_id: &str, ms: u64, reply_to: Option<&str>) {
        let Some(entry) = self.conversation.get(item_id) else {
            return self.error(item_not_found(item_id), reply_to);
        };
        let Some(spoken) = entry.spoken.clone() else {
            let error = SessionError::new(ErrorKind::InvalidValue, "only assistant items with audio can be truncated");
            return self.error(error.concerning(Setting::ItemId), reply_to);
        };
        // Clamp to the audio that was sent: a client may report more than exists.
        let end_ms = (ms as f64).min(spoken.sent_ms);
        let text = heard_text(&spoken.timeline, spoken.total_ms, end_ms);
        self.set_transcript(item_id, text);
        if self.playback.as_ref().is_some_and(|p| p.item_id == item_id) {
            self.playback = None;
        }
        self.emit(Event::ItemTruncated { item_id: item_id.to_string(), audio_end_ms: end_ms as u64 });
    }

    fn set_transcript(&mut self, item_id: &str, text: String) {
        if let Some(entry) = self.conversation.get_mut(item_id) {
            if let Item::Message(m) = &mut entry.item {
                for part in &mut m.content {
                    match part {
                        Content::OutputAudio { transcript } => *transcript = Some(text.clone()),
                        Content::OutputText { text: t } => *t = text.clone(),
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
                if let Some(audio_start_ms) = self.input.vendor_speech_started(&item_id, &transcript) {
                    self.speech_started(item_id.clone(), audio_start_ms);
                }
                if let Some(delta) = self.input.partial(&item_id, &transcript) {
                    self.emit(Event::TranscriptPartial { item_id, delta, transcript });
                }
            }
            SttMsg::Final { item_id, result } => {
                // The vendor ended the caller's turn: the utterance is committed now.
                if let Some((committed, audio_end_ms, started)) = self.input.end_vendor_turn(&item_id, &result) {
                    if let Some(audio_start_ms) = started {
                        self.speech_started(item_id.clone(), audio_start_ms);
                    }
                    self.emit(Event::SpeechStopped { item_id: item_id.clone(), audio_end_ms });
                    self.on_committed(committed);
                }
                let Some(done) = self.input.final_transcript(item_id, result) else { return };
                let engine = done.result.as_ref().ok().and_then(|t| t.engine.clone());
                self.meter_stt(&done.item_id, engine.as_deref());
                self.last_turn = done.turn;
                let item_id = done.item_id;
                let mut respond = false;
                match done.result {
                    Ok(t) => {
                        if let Some(entry) = self.conversation.get_mut(&item_id) {
                            entry.speaker = t.speaker.clone();
                            entry.words = t.words.clone();
                            if let Item::Message(m) = &mut entry.item {
                                for part in &mut m.content {
                                    if let Content::InputAudio { transcript } = part {
                                        *transcript = Some(t.text.clone());
                                    }
                                }
                            }
                        }
                        respond = !t.text.trim().is_empty() && self.settings.turn.is_some_and(|t| t.create_response);
                        self.emit(Event::TranscriptFinal { item_id: item_id.clone(), transcript: t });
                        if let Some(entry) = self.conversation.get(&item_id) {
                            let item = entry.item.clone();
                            let previous_item_id = self.previous_of(&item_id);
                            self.emit(Event::ItemDone { item, previous_item_id });
                        }
                    }
                    Err(e) => self.emit(Event::TranscriptFailed { item_id, code: e.kind().to_string(), message: e.to_string() }),
                }
                if !self.input.awaiting_transcripts() {
                    if let Some((reply_to, overrides)) = self.deferred.take() {
                        self.request_response(reply_to, overrides);
                        return;
                    }
                }
                if respond && self.active.is_none() {
                    self.request_response(None, ResponseOverrides::default());
                }
            }
        }
    }

    /// Charges an utterance's audio to the speech-to-text engine that served it: the one its
    /// transcript names, else the configured engine (a built-in engine names none).
    fn meter_stt(&mut self, item_id: &str, engine: Option<&str>) {
        let Some(ms) = self.stt_unmetered.remove(item_id) else { return };
        let configured = self.engines.stt.as_ref().map_or("none", |s| s.name());
        if let Some(meter) = self.meter.as_mut() {
            meter.add_stt_audio_ms(engine.unwrap_or(configured), ms);
        }
    }

    /// Charges the chunk handed to text-to-speech and not yet charged to `engine`, the one that
    /// spoke it (the configured engine when none said so), every character as vendors count them
    /// (spaces included).
    fn bill_spoken(&mut self, engine: Option<String>) {
        let Some(text) = self.tts_unbilled.take() else { return };
        let engine = engine.unwrap_or_else(|| self.engines.tts.as_ref().map_or("none", |t| t.name()).to_string());
        if let Some(meter) = self.meter.as_mut() {
            meter.add_tts_chars(&engine, text.chars().count() as u64);
        }
    }

    /// The id of the item before `item_id` in the conversation.
    fn previous_of(&self, item_id: &str) -> Option<String> {
        self.conversation.position(item_id).and_then(|i| i.checked_sub(1)).and_then(|i| self.conversation.id_at(i))
    }

    /// Transcripts past their deadline fail, so a stuck engine never stalls the call.
    fn expire_transcripts(&mut self) {
        for item_id in self.input.expire(Instant::now()) {
            self.meter_stt(&item_id, None);
            let name = self.engines.stt.as_ref().map_or("none", |s| s.name()).to_string();
            warn!(session_id = %self.start.session_id, engine = %name, "transcript deadline passed");
            let message = format!("speech-to-text engine {name} gave no transcript within {} ms", self.engines.settings.stt_timeout_ms);
            self.emit(Event::TranscriptFailed { item_id, code: "stt_timeout".into(), message });
        }
        if !self.input.awaiting_transcripts() {
            if let Some((reply_to, overrides)) = self.deferred.take() {
                self.request_response(reply_to, overrides);
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Responses
    // ---------------------------------------------------------------------------------------------

    fn request_response(&mut self, reply_to: Option<String>, overrides: ResponseOverrides) {
        if self.active.is_some() {
            let error = SessionError::new(
                ErrorKind::ResponseAlreadyActive,
                "a response is already in progress; cancel it with response.cancel or wait for response.done",
            );
            return self.error(error, reply_to.as_deref());
        }
        if self.input.awaiting_transcripts() {
            // Answer once the user's words are known.
            self.deferred = Some((reply_to, overrides));
            return;
        }
        let audio = overrides.audio_out.unwrap_or(self.settings.audio_out);
        if audio && self.engines.tts.is_none() {
            let error = SessionError::new(
                ErrorKind::TtsUnavailable,
                "audio output needs a text-to-speech engine and none is configured; ask for output_modalities [\"text\"]",
            );
            return self.error(error.concerning(Setting::ResponseOutputModalities), reply_to.as_deref());
        }
        if let Err(e) = super::settings::check_prompt(overrides.instructions.as_deref(), overrides.tools.as_deref()) {
            return self.error(e, reply_to.as_deref());
        }
        let request = chat_request(&self.settings, &overrides, &self.conversation);
        if let Some(limits) = self.start.limits.clone() {
            if let Err(limited) = limits.try_request() {
                return self.refuse_rate_limited(limited, reply_to.as_deref());
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
                voice: self.settings.voice.as_ref().map(|v| v.engine_name().to_string()),
                rate_hz: self.settings.output_format.rate_hz(),
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
        self.emit(Event::ResponseStarted { response_id: id.clone(), audio, metadata: overrides.metadata.clone() });
        let format = self.settings.output_format;
        self.active = Some(Active::new(id, self.seq, cancel, &overrides, audio, format, self.last_turn.take()));
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
                active.served_by(model, ttft_ms);
                self.engines.metrics.observe("voxgate_turn_latency_seconds", &[("stage", "llm_ttft")], ttft_ms / 1000.0);
            }
            ResponseMsg::Text(text) => {
                self.ensure_message();
                let Some(active) = self.active.as_mut() else { return };
                if let Some(item_id) = active.write(&text) {
                    let response_id = active.id.clone();
                    self.emit(Event::TextDelta { response_id, item_id, delta: text });
                }
            }
            ResponseMsg::ToolCallStart { index, call_id, name } => {
                let item = active.start_call(index, call_id, name);
                let response_id = active.id.clone();
                self.emit(Event::OutputItemAdded { response_id, item, conversation: None });
            }
            ResponseMsg::ToolCallArgs { index, arguments } => {
                if let Some((item_id, call_id)) = active.call_arguments(index, &arguments) {
                    let response_id = active.id.clone();
                    self.emit(Event::ToolCallDelta { response_id, item_id, call_id, delta: arguments });
                }
            }
            ResponseMsg::Finish(reason) => active.finished(reason),
            ResponseMsg::Usage(usage) => {
                let prices = active.used(usage).and_then(|m| self.engines.gateway.models().get(m));
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
                // The chunk before was spoken by the engine that spoke last.
                let engine = active.tts_engine.clone();
                self.bill_spoken(engine);
                self.tts_unbilled = Some(text.clone());
                self.ensure_message();
                self.ensure_playback();
                if let Some(p) = self.playback.as_mut() {
                    p.speak(text);
                }
            }
            ResponseMsg::Audio { samples, ms } => {
                let engine = active.tts_engine.clone();
                self.bill_spoken(engine);
                self.ensure_playback();
                if let Some(p) = self.playback.as_mut() {
                    p.audio(samples, ms);
                }
            }
            ResponseMsg::Words(words) => {
                if let Some(p) = self.playback.as_mut() {
                    p.words(words);
                }
            }
            ResponseMsg::TtsEngine(engine) => {
                // Sent before the chunk's audio when another engine speaks it.
                active.tts_engine = Some(engine.clone());
                self.bill_spoken(Some(engine));
            }
            ResponseMsg::TtsFirstAudio { ttfb_ms } => {
                active.tts_first_audio(ttfb_ms);
                self.engines.metrics.observe("voxgate_turn_latency_seconds", &[("stage", "tts_ttfb")], ttfb_ms / 1000.0);
            }
            ResponseMsg::Failed { code, message } => {
                warn!(session_id = %self.start.session_id, code, %message, "response failed");
                active.fail(code, message);
            }
            ResponseMsg::Done => {
                active.model_done();
                if let Some(p) = self.playback.as_mut() {
                    p.finish();
                }
            }
        }
        self.maybe_finish();
    }

    /// Opens the response's assistant message on its first text.
    fn ensure_message(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let Some(item) = active.open_message() else { return };
        let response_id = active.id.clone();
        let conversation = if active.in_conversation {
            self.conversation.insert(item.clone(), None, None).ok().map(|(_, previous_item_id)| Joined { previous_item_id })
        } else {
            None
        };
        self.emit(Event::OutputItemAdded { response_id, item, conversation });
    }

    fn ensure_playback(&mut self) {
        if self.playback.is_some() {
            return;
        }
        let Some(active) = self.active.as_ref() else { return };
        let Some(item_id) = active.message_id() else { return };
        self.playback = Some(Playback::new(active.id.clone(), item_id.to_string(), active.output_format));
    }

    /// When the actor must next wake: outbound audio, the end of playback, or a transcript deadline.
    fn next_due(&self) -> Option<Instant> {
        let lead = Duration::from_millis(self.engines.settings.output_lead_ms);
        let playback = self.playback.as_ref().and_then(|p| p.due(lead, self.responding_to(&p.response_id)));
        match (playback, self.input.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_tick(&mut self) {
        self.expire_transcripts();
        let lead = Duration::from_millis(self.engines.settings.output_lead_ms);
        let mut releases = std::mem::take(&mut self.releases);
        releases.clear();
        let responding = self.playback.as_ref().is_some_and(|p| self.responding_to(&p.response_id));
        let finished = self.playback.as_mut().is_some_and(|p| p.tick(Instant::now(), lead, responding, &mut releases));
        if let Some((response_id, item_id, format)) = self.playback.as_ref().map(|p| (p.response_id.clone(), p.item_id.clone(), p.format)) {
            for release in releases.drain(..) {
                self.release(release, &response_id, &item_id, format);
            }
        }
        self.releases = releases;
        if finished {
            if let Some(p) = self.playback.take() {
                if p.started() {
                    self.emit(Event::AudioStopped { response_id: p.response_id });
                }
            }
        }
        self.maybe_finish();
    }

    fn release(&mut self, release: Release, response_id: &str, item_id: &str, format: AudioFormat) {
        let (response_id, item_id) = (response_id.to_string(), item_id.to_string());
        match release {
            Release::Started => {
                if let Some(active) = self.active.as_mut() {
                    let now = Instant::now();
                    if let Some(turn) = active.audio_started(now) {
                        let v2v = now.duration_since(turn.speech_end).as_secs_f64();
                        self.engines.metrics.observe("voxgate_turn_latency_seconds", &[("stage", "voice_to_voice")], v2v);
                    }
                }
                self.emit(Event::AudioStarted { response_id });
            }
            Release::Text(text) => {
                if let Some(active) = self.active.as_mut() {
                    active.spoke(&text);
                }
                self.emit(Event::SpokenText { response_id, item_id, delta: text });
            }
            Release::Audio(samples) => self.emit(Event::Audio { response_id, item_id, samples, format }),
        }
    }

    /// Ends the active response once the model is done and all its audio has been sent.
    fn maybe_finish(&mut self) {
        let Some(active) = self.active.as_ref() else { return };
        if !active.is_model_done() {
            return;
        }
        let drained = self.playback.as_ref().is_none_or(|p| p.response_id != active.id || p.is_drained());
        if !drained {
            return;
        }
        let status = active.outcome();
        self.finish_response(status);
    }

    /// Barge-in, a cancel or a clear: stop the response and the audio, and cut the assistant's item
    /// to what the caller heard.
    fn interrupt(&mut self, reason: CancelReason) {
        let engine = self.active.as_ref().and_then(|a| a.tts_engine.clone());
        self.bill_spoken(engine);
        if let Some(active) = self.active.as_ref() {
            active.cancel.cancel();
        }
        if let Some(p) = self.playback.take() {
            let (response_id, item_id) = (p.response_id.clone(), p.item_id.clone());
            let cut = p.cut(self.responding_to(&response_id));
            if cut.unheard {
                self.emit(Event::AudioCleared { response_id: response_id.clone() });
            }
            if let Some(active) = self.active.as_mut() {
                active.heard(&item_id, &cut.heard_text);
            }
            self.set_transcript(&item_id, cut.heard_text);
            if let Some(entry) = self.conversation.get_mut(&item_id) {
                entry.spoken = Some(Spoken { timeline: cut.timeline, total_ms: cut.chunk_end_ms, sent_ms: cut.sent_ms });
            }
            if self.conversation.get(&item_id).is_some() {
                self.emit(Event::ItemTruncated { item_id, audio_end_ms: cut.heard_ms as u64 });
            }
            if cut.started && !cut.unheard {
                self.emit(Event::AudioStopped { response_id });
            }
        }
        if self.active.is_some() {
            self.finish_response(ResponseStatus::Cancelled(reason));
        }
    }

    fn finish_response(&mut self, status: ResponseStatus) {
        let engine = self.active.as_ref().and_then(|a| a.tts_engine.clone());
        self.bill_spoken(engine);
        let Some(mut active) = self.active.take() else { return };
        let completed = status == ResponseStatus::Completed;
        let response_id = active.id.clone();
        let finished = active.finish_items(if completed { ItemStatus::Completed } else { ItemStatus::Incomplete });
        // The assistant message, already in the conversation when the response is in it.
        if let Some(item) = finished.message {
            self.emit(Event::OutputItemDone { response_id: response_id.clone(), item: item.clone() });
            let item_id = item.id().unwrap_or_default().to_string();
            let playback = self.playback.as_ref().filter(|p| p.item_id == item_id).map(|p| (p.timeline().to_vec(), p.sent_ms()));
            if active.in_conversation {
                if let Some(entry) = self.conversation.get_mut(&item_id) {
                    entry.item = item.clone();
                    if let Some((timeline, total_ms)) = playback {
                        if entry.spoken.is_none() {
                            entry.spoken = Some(Spoken { timeline, total_ms, sent_ms: total_ms });
                        }
                    }
                    let previous_item_id = self.previous_of(&item_id);
                    self.emit(Event::ItemDone { item, previous_item_id });
                }
            }
        }
        // Function calls: complete ones join the conversation; a cancelled response's calls do not.
        for item in finished.calls {
            self.emit(Event::OutputItemDone { response_id: response_id.clone(), item: item.clone() });
            if active.in_conversation && completed {
                if let Ok((item, previous_item_id)) = self.conversation.insert(item, None, None) {
                    self.emit(Event::ItemAdded { item: item.clone(), previous_item_id: previous_item_id.clone() });
                    self.emit(Event::ItemDone { item, previous_item_id });
                }
            }
        }
        let meter = self.meter.as_ref().map(|m| {
            let (billed_seconds, amount) = m.so_far(wall_ms());
            MeterReading { billed_seconds, amount }
        });
        self.emit(Event::ResponseDone(Box::new(active.summary(status, meter))));
        if let Some(p) = self.playback.as_mut().filter(|p| p.response_id == response_id) {
            p.finish();
        }
        self.report_rate_limits();
    }

    /// The key's per-minute budgets, for a key that has limits.
    fn report_rate_limits(&mut self) {
        let Some(limits) = self.start.limits.as_ref() else { return };
        let budgets = limits.budgets();
        if !budgets.is_empty() {
            self.emit(Event::RateLimits(budgets));
        }
    }

    /// A response the key's per-minute limit refuses: an error that names the limit and when to
    /// retry, then the budgets. The session goes on; the user's turn stays in the conversation.
    fn refuse_rate_limited(&mut self, limited: RateLimited, reply_to: Option<&str>) {
        info!(session_id = %self.start.session_id, limit = limited.name, retry_after_ms = limited.retry_after.as_millis() as u64, "response refused: key over its rate limit");
        self.error(SessionError::new(ErrorKind::RateLimited { limit: limited.name }, limited.message), reply_to);
        self.report_rate_limits();
    }
}

fn item_not_found(item_id: &str) -> SessionError {
    SessionError::new(ErrorKind::ItemNotFound, format!("no item with id {item_id:?}")).concerning(Setting::ItemId)
}

/// The `kind` label of `voxgate_errors_total` for an event that reports an error (a closed set).
fn error_kind(event: &Event) -> Option<&'static str> {
    match event {
        Event::Error(SessionError { kind: ErrorKind::RateLimited { .. }, .. }) => Some("rate_limited"),
        Event::Error(SessionError { kind: ErrorKind::SessionExpired, .. }) => Some("max_duration"),
        Event::Error(SessionError { kind: ErrorKind::IdleTimeout, .. }) => Some("idle_timeout"),
        Event::Error(_) => Some("bad_client_event"),
        Event::TranscriptFailed { .. } => Some("stt_failed"),
        Event::ResponseDone(summary) => match &summary.status {
            ResponseStatus::Failed { code, .. } => Some(if code == "tts_failed" { "tts_failed" } else { "llm_failed" }),
            _ => None,
        },
        _ => None,
    }
}

/// The wall clock in unix ms, as the ledger stamps sessions.
fn wall_ms() -> i64 {
    use crate::metering::Clock as _;
    crate::metering::SystemClock.now_unix_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::event::{CancelReason, Latencies, ResponseSummary};

    #[test]
    fn error_events_map_to_a_closed_set_of_metric_kinds() {
        let error = |kind| Event::Error(SessionError::new(kind, "m"));
        let failed = |code: &str| {
            Event::ResponseDone(Box::new(ResponseSummary {
                id: "resp_1".into(),
                status: ResponseStatus::Failed { code: code.into(), message: "m".into() },
                output: vec![],
                audio: false,
                usage: None,
                metadata: None,
                model: None,
                tts_engine: None,
                latencies: Latencies::default(),
                meter: None,
            }))
        };
        assert_eq!(error_kind(&error(ErrorKind::InvalidValue)), Some("bad_client_event"));
        assert_eq!(error_kind(&error(ErrorKind::RateLimited { limit: "requests" })), Some("rate_limited"));
        let stt = Event::TranscriptFailed { item_id: "i".into(), code: "stt_timeout".into(), message: "m".into() };
        assert_eq!(error_kind(&stt), Some("stt_failed"));
        assert_eq!(error_kind(&failed("llm_failed")), Some("llm_failed"));
        assert_eq!(error_kind(&failed("llm_stream_failed")), Some("llm_failed"));
        assert_eq!(error_kind(&failed("tts_failed")), Some("tts_failed"));
        let Event::ResponseDone(mut cancelled) = failed("x") else { unreachable!() };
        cancelled.status = ResponseStatus::Cancelled(CancelReason::TurnDetected);
        assert_eq!(error_kind(&Event::ResponseDone(cancelled)), None);
    }
}
