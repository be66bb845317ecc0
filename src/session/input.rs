//! The caller's side of a session: input audio resampled to the STT rate, voice activity detection,
//! the prefix window kept while nobody speaks, the open utterance and its STT task, and the
//! transcripts still awaited with their deadlines. It owns all of that state; the session loop hands
//! it audio and STT results and acts on the [`Signal`]s and outcomes it returns.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::conversation::new_item_id;
use super::settings::Turn;
use super::VoiceEngines;
use crate::audio::Resampler;
use crate::stt::vad::{EnergyVad, VadEvent, PAUSE_MS};
use crate::stt::{CallOptions, SpeechToText, SttError, Transcript, Utterance, STT_RATE_HZ};

/// Frames queued for an STT engine before new ones are dropped (and counted).
const STT_QUEUE_FRAMES: usize = 1024;

/// A message from an utterance's STT task.
#[derive(Debug)]
pub enum SttMsg {
    Partial { item_id: String, transcript: Transcript },
    Final { item_id: String, result: Result<Transcript, SttError> },
}

/// What a piece of audio set off, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    SpeechStarted {
        item_id: String,
        audio_start_ms: u64,
    },
    /// The turn ended and its utterance was committed.
    SpeechStopped {
        item_id: String,
        audio_end_ms: u64,
        committed: Committed,
    },
}

/// An utterance handed over for its final transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub item_id: String,
    /// Audio the STT engine received, for the meter.
    pub audio_ms: u64,
}

/// Timings of the user turn a response answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnTimes {
    /// When the user's speech really ended (VAD stop minus the silence window, or the commit).
    pub speech_end: Instant,
    /// End of speech to the final transcript.
    pub stt_ms: Option<f64>,
}

/// A final transcript (or its failure) for a committed utterance.
#[derive(Debug)]
pub struct Final {
    pub item_id: String,
    pub result: Result<Transcript, SttError>,
    /// The turn's timings, when its end of speech is known.
    pub turn: Option<TurnTimes>,
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
    /// When the vendor ends turns: where its first words say the speech began, once they came.
    speech_heard: bool,
}

pub struct Input {
    engines: Arc<VoiceEngines>,
    /// The STT engine as this call uses it (its own socket to a vendor, its place in a fallback
    /// list); dropped with the call, which closes what it holds.
    stt: Option<Arc<dyn SpeechToText>>,
    /// The engine the client asked for by name, if any.
    call: CallOptions,
    session_id: String,
    cancel: CancellationToken,
    tasks: TaskTracker,
    stt_tx: mpsc::Sender<SttMsg>,
    turn: Option<Turn>,
    /// The rate of the audio the resampler expects.
    rate_hz: u32,
    resampler: Option<Resampler>,
    vad: Option<EnergyVad>,
    vad_events: Vec<(usize, VadEvent)>,
    vad_offset_ms: u64,
    stt_pcm: Vec<i16>,
    /// Recent audio while nobody speaks: the prefix padding of the next utterance.
    recent: VecDeque<i16>,
    /// Input audio received, in samples at the STT rate.
    samples: u64,
    utterance: Option<OpenUtterance>,
    ordinal: u32,
    /// Committed utterances waiting for their final transcript, with the deadline for it.
    pending: HashMap<String, (Instant, CancellationToken)>,
    /// The transcript text already sent as deltas, per utterance still being transcribed.
    partials: HashMap<String, String>,
    /// When the user's last utterance really ended, until its transcript arrives.
    speech_end: Option<Instant>,
}

impl Input {
    pub fn new(
        engines: Arc<VoiceEngines>,
        session_id: String,
        cancel: CancellationToken,
        tasks: TaskTracker,
        stt_tx: mpsc::Sender<SttMsg>,
        turn: Option<Turn>,
        rate_hz: u32,
    ) -> Input {
        let stt = engines.stt.as_ref().map(|s| s.for_call(&CallOptions::default()).unwrap_or_else(|| s.clone()));
        let mut input = Input {
            engines,
            stt,
            call: CallOptions::default(),
            session_id,
            cancel,
            tasks,
            stt_tx,
            turn,
            rate_hz,
            resampler: None,
            vad: None,
            vad_events: Vec::new(),
            vad_offset_ms: 0,
            stt_pcm: Vec::new(),
            recent: VecDeque::new(),
            samples: 0,
            utterance: None,
            ordinal: 0,
            pending: HashMap::new(),
            partials: HashMap::new(),
            speech_end: None,
        };
        input.restart(turn, rate_hz);
        input
    }

    /// Starts the resampler and the detector afresh (new input format or turn detection settings).
    pub fn restart(&mut self, turn: Option<Turn>, rate_hz: u32) {
        self.turn = turn;
        self.rate_hz = rate_hz;
        self.resampler = if rate_hz == STT_RATE_HZ { None } else { Resampler::new(rate_hz, STT_RATE_HZ).ok() };
        // When the vendor ends turns, everything the caller sends streams to it, as with manual
        // commits: no detector of ours.
        self.vad = turn.filter(|t| !t.by_vendor).map(|t| EnergyVad::new(t.vad, STT_RATE_HZ).report_pauses(PAUSE_MS));
        self.set_call(CallOptions { vendor_turns: turn.is_some_and(|t| t.by_vendor), ..self.call.clone() });
        // A new detector counts from zero; its times are shifted onto the session's input timeline.
        self.vad_offset_ms = self.input_ms();
        self.recent.clear();
    }

    /// The call's STT engine, with the engine named `first` (a `[stt] engines` entry) in front of
    /// the others; a new name drops the call's engine and what it holds (a vendor socket) after
    /// the utterances in flight.
    pub fn choose_stt(&mut self, first: Option<&str>) {
        self.set_call(CallOptions { first: first.map(str::to_string), ..self.call.clone() });
    }

    fn set_call(&mut self, call: CallOptions) {
        if call == self.call {
            return;
        }
        self.stt = self.engines.stt.as_ref().map(|s| s.for_call(&call).unwrap_or_else(|| s.clone()));
        self.call = call;
    }

    /// Turn detection settings that do not restart the detector (what a detected turn does).
    pub fn set_turn(&mut self, turn: Option<Turn>) {
        self.turn = turn;
    }

    /// Input audio so far, in ms.
    pub fn input_ms(&self) -> u64 {
        self.samples * 1000 / STT_RATE_HZ as u64
    }

    /// Takes caller audio at `rate_hz`: resamples it, runs turn detection and streams it to the open
    /// utterance, pushing what it set off onto `signals`.
    pub fn push(&mut self, pcm: &[i16], rate_hz: u32, signals: &mut Vec<Signal>) {
        if rate_hz != self.rate_hz {
            self.restart(self.turn, rate_hz);
        }
        let mut stt_pcm = std::mem::take(&mut self.stt_pcm);
        stt_pcm.clear();
        match self.resampler.as_mut() {
            Some(r) => r.process(pcm, &mut stt_pcm),
            None => stt_pcm.extend_from_slice(pcm),
        }
        let chunk_start = self.samples;
        self.samples += stt_pcm.len() as u64;

        if self.vad.is_none() {
            // Manual commit: everything appended belongs to the open utterance.
            if self.utterance.is_none() {
                self.open(chunk_start * 1000 / STT_RATE_HZ as u64, &[]);
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
                VadEvent::SpeechStarted { audio_start_ms } => {
                    let audio_start_ms = audio_start_ms + self.vad_offset_ms;
                    let item_id = self.speech_started(audio_start_ms, at_ms);
                    signals.push(Signal::SpeechStarted { item_id, audio_start_ms });
                }
                VadEvent::SpeechStopped { audio_end_ms } => {
                    let audio_end_ms = audio_end_ms + self.vad_offset_ms;
                    let Some(item_id) = self.utterance.as_ref().map(|u| u.item_id.clone()) else { continue };
                    // The real end of speech was `at_ms - audio_end_ms` ago in audio time.
                    let lag = Duration::from_millis(at_ms.saturating_sub(audio_end_ms));
                    self.speech_end = Some(Instant::now().checked_sub(lag).unwrap_or_else(Instant::now));
                    if let Some(committed) = self.commit_open() {
                        signals.push(Signal::SpeechStopped { item_id, audio_end_ms, committed });
                    }
                }
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

    /// Ends the turn now (the client's commit); `None` when no audio came since the last turn.
    pub fn commit(&mut self) -> Option<Committed> {
        if self.utterance.as_ref().is_none_or(|u| u.samples == 0) {
            return None;
        }
        self.speech_end = Some(Instant::now());
        self.commit_open()
    }

    /// Drops the audio not yet committed and starts detection afresh.
    pub fn clear(&mut self) {
        if let Some(u) = self.utterance.take() {
            // The item was never committed: stop its STT work.
            u.cancel.cancel();
            self.partials.remove(&u.item_id);
        }
        self.recent.clear();
        if let Some(vad) = self.vad.as_mut() {
            vad.reset();
        }
    }

    /// Ends the open utterance's audio and lets the call's engine go (at shutdown).
    pub fn close(&mut self) {
        self.utterance = None;
        self.stt = None;
    }

    /// Audio to the open utterance, or into the prefix window while nobody speaks.
    fn feed(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        if let Some(u) = self.utterance.as_mut() {
            u.samples += samples.len() as u64;
            match u.audio.try_send(samples.to_vec()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.engines.metrics.inc("voxgate_audio_frames_dropped_total", &[("stage", "stt")]);
                    debug!(session_id = %self.session_id, "STT queue full; input frame dropped");
                }
                // The vendor ended the turn and its transcript is on the way to the session,
                // which then opens the next utterance.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            return;
        }
        let keep = self.turn.map_or(0, |t| (t.vad.prefix_padding_ms + t.vad.min_speech_ms + 50) as usize * STT_RATE_HZ as usize / 1000);
        self.recent.extend(samples.iter().copied());
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
    }

    /// Opens the utterance with the recent audio from `audio_start_ms` on (the prefix padding);
    /// returns its item id.
    fn speech_started(&mut self, audio_start_ms: u64, at_ms: u64) -> String {
        let back = (at_ms.saturating_sub(audio_start_ms) * STT_RATE_HZ as u64 / 1000) as usize;
        let skip = self.recent.len().saturating_sub(back);
        let prefix: Vec<i16> = self.recent.iter().skip(skip).copied().collect();
        self.recent.clear();
        let start_ms = at_ms.saturating_sub(prefix.len() as u64 * 1000 / STT_RATE_HZ as u64);
        self.open(start_ms, &prefix)
    }

    fn open(&mut self, start_ms: u64, prefix: &[i16]) -> String {
        let item_id = new_item_id();
        let Some(stt) = self.stt.clone() else { return item_id };
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
                        // Partials the engine gave before its final (a burst of vendor messages
                        // read in one poll) still go first.
                        while let Ok(transcript) = partial_rx.try_recv() {
                            let _ = events.try_send(SttMsg::Partial { item_id: id.clone(), transcript });
                        }
                        let _ = events.send(SttMsg::Final { item_id: id, result }).await;
                        return;
                    }
                }
            }
        });
        let mut u = OpenUtterance {
            item_id: item_id.clone(),
            cancel: utterance_cancel,
            audio: audio_tx,
            pause: pause_tx,
            samples: 0,
            speech_heard: false,
        };
        if !prefix.is_empty() {
            u.samples = prefix.len() as u64;
            let _ = u.audio.try_send(prefix.to_vec());
        }
        self.utterance = Some(u);
        item_id
    }

    /// Ends the open utterance's audio; its transcript is awaited until the STT deadline.
    fn commit_open(&mut self) -> Option<Committed> {
        let u = self.utterance.take()?;
        drop(u.audio);
        let deadline = Instant::now() + Duration::from_millis(self.engines.settings.stt_timeout_ms);
        self.pending.insert(u.item_id.clone(), (deadline, u.cancel.clone()));
        Some(Committed { item_id: u.item_id, audio_ms: u.samples * 1000 / STT_RATE_HZ as u64 })
    }

    /// When the vendor ends turns: the start of the caller's speech, the first time words arrive
    /// for the open utterance (the session then says speech started, and barges in).
    pub fn vendor_speech_started(&mut self, item_id: &str, transcript: &Transcript) -> Option<u64> {
        let u = self.utterance.as_mut().filter(|u| u.item_id == item_id && self.call.vendor_turns && !u.speech_heard)?;
        let start = transcript.words.first()?.start_ms;
        u.speech_heard = true;
        Some(start)
    }

    /// When the vendor ends turns, its final transcript for the open utterance ends the turn:
    /// the utterance is committed as the session's detector would commit it. Returns it, where
    /// the speech ended, and where it began if no words said so before.
    pub fn end_vendor_turn(&mut self, item_id: &str, result: &Result<Transcript, SttError>) -> Option<(Committed, u64, Option<u64>)> {
        let u = self.utterance.as_ref().filter(|u| u.item_id == item_id && self.call.vendor_turns)?;
        let words = result.as_ref().map(|t| t.words.as_slice()).unwrap_or_default();
        let started = (!u.speech_heard).then(|| words.first().map_or(self.input_ms(), |w| w.start_ms));
        let audio_end_ms = words.last().map_or(self.input_ms(), |w| w.end_ms);
        // The speech really ended at its last word, this long ago in audio time.
        let lag = Duration::from_millis(self.input_ms().saturating_sub(audio_end_ms));
        self.speech_end = Some(Instant::now().checked_sub(lag).unwrap_or_else(Instant::now));
        let committed = self.commit_open()?;
        Some((committed, audio_end_ms, started))
    }

    /// Whether transcripts are still awaited (a response waits for them).
    pub fn awaiting_transcripts(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A partial transcript as a delta that extends what was sent before; `None` when it adds
    /// nothing, revises earlier words (Whisper re-decodes the whole utterance: the final will say),
    /// or belongs to an utterance no longer open or awaited.
    pub fn partial(&mut self, item_id: &str, transcript: &Transcript) -> Option<String> {
        if !self.pending.contains_key(item_id) && self.utterance.as_ref().is_none_or(|u| u.item_id != item_id) {
            return None;
        }
        let said = self.partials.entry(item_id.to_string()).or_default();
        let delta = transcript.text.strip_prefix(said.as_str()).filter(|d| !d.is_empty())?.to_string();
        said.push_str(&delta);
        Some(delta)
    }

    /// A final transcript for an awaited utterance; `None` for one that is not awaited any more.
    pub fn final_transcript(&mut self, item_id: String, result: Result<Transcript, SttError>) -> Option<Final> {
        self.partials.remove(&item_id);
        self.pending.remove(&item_id)?;
        let stt_ms = self.speech_end.map(|t| t.elapsed().as_secs_f64() * 1000.0);
        if let Some(ms) = stt_ms {
            self.engines.metrics.observe("voxgate_turn_latency_seconds", &[("stage", "stt")], ms / 1000.0);
        }
        let turn = self.speech_end.take().map(|speech_end| TurnTimes { speech_end, stt_ms });
        Some(Final { item_id, result, turn })
    }

    /// The awaited transcripts whose deadline has passed: their STT work is stopped and their ids
    /// returned, so a stuck engine never stalls the call.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self.pending.iter().filter(|(_, (d, _))| *d <= now).map(|(id, _)| id.clone()).collect();
        for item_id in &expired {
            if let Some((_, cancel)) = self.pending.remove(item_id) {
                cancel.cancel();
            }
            self.partials.remove(item_id);
            self.speech_end = None;
        }
        expired
    }

    /// The earliest transcript deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|(d, _)| *d).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::llm::router::Gateway;

    /// Fake engines: the scripted STT answers "book a table" 40 ms after an utterance ends.
    fn input(turn: Option<Turn>) -> (Input, mpsc::Receiver<SttMsg>) {
        let text = "[stt]\nengine = \"fake\"\ntranscripts = [\"book a table\"]\nlatency_ms = 40\n[tts]\nengine = \"none\"\n";
        let config = Config::from_toml(text, &|_| None).expect("a valid config");
        let gateway = Arc::new(Gateway::new(&config).expect("a gateway"));
        let engines = Arc::new(VoiceEngines::from_config(&config, gateway).expect("engines"));
        let (stt_tx, stt_rx) = mpsc::channel(64);
        let input = Input::new(engines, "sess_test".into(), CancellationToken::new(), TaskTracker::new(), stt_tx, turn, 24_000);
        (input, stt_rx)
    }

    /// `ms` of 24 kHz audio: a 440 Hz tone at `amplitude` (0 for silence).
    fn audio(ms: usize, amplitude: f64) -> Vec<i16> {
        (0..ms * 24).map(|i| (amplitude * (i as f64 * 440.0 * std::f64::consts::TAU / 24_000.0).sin()) as i16).collect()
    }

    fn push(input: &mut Input, samples: &[i16], signals: &mut Vec<Signal>) {
        for frame in samples.chunks(480) {
            input.push(frame, 24_000, signals);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spoken_turn_is_detected_committed_and_transcribed() {
        let (mut input, mut stt) = input(Some(Turn::default()));
        let mut signals = Vec::new();
        push(&mut input, &audio(1_000, 0.0), &mut signals);
        assert!(signals.is_empty(), "silence is no speech: {signals:?}");
        push(&mut input, &audio(1_500, 8_000.0), &mut signals);
        let [Signal::SpeechStarted { item_id, audio_start_ms }] = signals.as_slice() else { panic!("{signals:?}") };
        let item_id = item_id.clone();
        // Speech began a second in; the reported start includes the prefix padding (300 ms).
        assert!((650..=1_000).contains(audio_start_ms), "{audio_start_ms}");
        signals.clear();
        push(&mut input, &audio(1_000, 0.0), &mut signals);
        let [Signal::SpeechStopped { item_id: stopped, audio_end_ms, committed }] = signals.as_slice() else { panic!("{signals:?}") };
        assert_eq!((stopped, &committed.item_id), (&item_id, &item_id));
        assert!((2_400..=2_600).contains(audio_end_ms), "{audio_end_ms}");
        // The utterance holds the speech (1.5 s), its prefix padding (0.3 s) and the silence window
        // that ended it (0.5 s), not the whole second of silence before it.
        assert!((2_100..=2_400).contains(&committed.audio_ms), "{}", committed.audio_ms);
        assert!(input.awaiting_transcripts());
        assert!(input.next_deadline().is_some());
        // Partials become deltas that only ever extend what was sent; then the final.
        let mut said = String::new();
        let (done, result) = loop {
            match stt.recv().await.expect("the STT task reports") {
                SttMsg::Partial { item_id, transcript } => said.push_str(&input.partial(&item_id, &transcript).unwrap_or_default()),
                SttMsg::Final { item_id, result } => break (item_id, result),
            }
        };
        assert!("book a table".starts_with(&said), "{said:?}");
        let transcript = result.expect("transcribed");
        let turn = input.final_transcript(done, Ok(transcript.clone())).expect("awaited");
        assert_eq!(transcript.text, "book a table");
        assert!(turn.turn.is_some(), "the end of speech is known");
        assert!(!input.awaiting_transcripts());
        assert!((3_498..=3_500).contains(&input.input_ms()), "{}", input.input_ms());
    }

    #[tokio::test(start_paused = true)]
    async fn without_turn_detection_the_client_commits_and_clears() {
        let (mut input, _stt) = input(None);
        assert_eq!(input.commit(), None, "nothing to commit yet");
        let mut signals = Vec::new();
        push(&mut input, &audio(300, 8_000.0), &mut signals);
        assert!(signals.is_empty(), "no detector, no signals");
        input.clear();
        assert_eq!(input.commit(), None, "cleared audio is gone");
        push(&mut input, &audio(300, 8_000.0), &mut signals);
        let committed = input.commit().expect("audio to commit");
        assert_eq!(committed.audio_ms, 300);
        // A transcript that never comes fails at its deadline.
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert_eq!(input.expire(Instant::now()), vec![committed.item_id]);
        assert!(!input.awaiting_transcripts());
    }

    #[tokio::test(start_paused = true)]
    async fn audio_at_another_rate_restarts_the_resampler() {
        let (mut input, _stt) = input(None);
        let mut signals = Vec::new();
        input.push(&[0; 160], 8_000, &mut signals);
        input.push(&[0; 480], 24_000, &mut signals);
        // 20 ms each: the timeline counts STT-rate samples whatever the input rate (less the
        // resampler's filter delay, under a millisecond each).
        assert!((38..=40).contains(&input.input_ms()), "{}", input.input_ms());
    }
}
