//! The embedded speech-to-text engine: Whisper tiny.en (CTranslate2 format) run in process through
//! `ct2rs`, the offline default that needs no keys and no network. `voxgate models fetch` installs
//! the model files.
//!
//! # How it runs
//! - [`WhisperStt::load`] checks the model folder and loads one model per worker thread
//!   ([`WhisperSettings::workers`] OS threads, each computing with
//!   [`WhisperSettings::threads_per_worker`] CTranslate2 threads). Decoding never runs on the async
//!   runtime. Weights are quantised to int8 when loaded ([`COMPUTE_TYPE`]).
//! - Whisper does not stream: an utterance's audio is collected while its channel is open and
//!   decoded as a whole when it closes (the *final*). Finals wait in a bounded queue of
//!   [`QUEUED_FINALS_MAX`]; when it is full, `transcribe` waits asynchronously for a place, so the
//!   wait shows in the transcript's latency and never blocks a tokio worker.
//! - Partials: an early final (below) whose speaker went on is passed on as a partial. Timed
//!   partials are off by default ([`WhisperSettings::partial_interval_ms`]); when on, the growing
//!   utterance is re-decoded at most every `partial_interval_ms` of received audio, greedily
//!   (beam 1), and only when a worker is idle with nothing queued: a partial is skipped rather
//!   than queued, and workers always take queued finals first. A partial already being decoded is
//!   not interrupted, so a final that arrives at that moment with no other worker free waits for
//!   it (one decode at most).
//! - Early finals: when the session's VAD reports a pause ([`Utterance::pause`], 100 ms into the
//!   silence), the audio so far is queued as a final at once, if a final place is free. If the
//!   utterance then closes with the pause still standing (nothing voiced after it), that decode is
//!   the transcript: it started when the silence began, not when the silence window closed. If
//!   speech resumes, the early decode's text is passed on as a partial and the final is decoded at
//!   the close as usual.
//! - Dropping the `transcribe` future abandons the work: a queued job whose receiver is gone is
//!   skipped by the worker.
//! - The encoder reads the utterance and [`WINDOW_PAD_MS`] after it, at least [`WINDOW_MIN_MS`],
//!   not Whisper's full 30 s: its cost grows with the window, not with the speech. Features are
//!   computed as Whisper's extractor does (one floor per window, padding at the floor). A decode
//!   writes at most [`TOKENS_PER_SECOND_MAX`] tokens per second of audio, so a loop ends early.
//! - Utterances longer than 30 s are decoded in equal windows of at most 30 s, joined in order.
//!   At most [`UTTERANCE_MS_MAX`] of audio is kept per utterance; later audio is dropped (logged).
//!
//! # What a transcript holds
//! - **Word times are estimated, not measured.** Decoding uses the `<|notimestamps|>` prompt, which
//!   gives text only: tiny.en answers Whisper's timestamp prompt with empty text (measured: every
//!   fixture came back empty). The words are spread over the window's speech (first to last 10 ms
//!   frame at or above [`SPEECH_LEVEL_DBFS`]) in proportion to their length in characters. Times
//!   are ms from the session's input start (`utterance.start_ms` + offset in the utterance).
//! - **Confidence is not measured either**: every word gets the constant [`WORD_CONFIDENCE`], and
//!   so does the transcript. `generate` in `ct2rs` 0.10.3 returns token strings, ids, one score
//!   per sequence and the no-speech probability, nothing per token (`return_logits_vocab` has no
//!   field to come back in). A consumer that marks unsure words (the `detailed` transcript
//!   rendering marks those below 0.5) therefore marks none from this engine.
//! - The way to real values, not taken yet: `ct2rs::sys::Whisper::align` (CTranslate2's
//!   cross-attention alignment, what faster-whisper uses for word timestamps and probabilities)
//!   returns a probability per text token and a token-to-frame path, and the packaged model's
//!   `config.json` carries tiny.en's `alignment_heads`. It costs a second decoder pass over the
//!   transcript's tokens per final (reusing the encoder output from `Whisper::encode`), so it
//!   waits for a measurement of that cost against the voice-to-voice budget.
//! - A window with no 10 ms frame at [`SPEECH_LEVEL_DBFS`] or above is not decoded: Whisper
//!   hallucinates on silence (tiny.en heard "1." in 3 s of digital silence).
//! - Whisper's artefacts are trimmed: surrounding whitespace, and bracketed non-speech tags such as
//!   `[BLANK_AUDIO]`, `(silence)` or `[Music]`; a transcript with nothing else is empty. Word texts
//!   carry no surrounding punctuation (like the fixtures' sidecars); the text keeps Whisper's.
//!
//! # The preprocessor config
//! `ct2rs` reads a standard Whisper `preprocessor_config.json` from the model folder; the model
//! package does not ship one. When it is missing, `load` writes the standard values
//! ([`PREPROCESSOR_CONFIG`]) into the folder atomically (temporary file, fsync, rename), once.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{BoxFuture, SpeechToText, SttError, Transcript, Utterance, Word, STT_RATE_HZ};

mod byte_level;
mod log_mel;

/// Finals that may wait for a worker; `transcribe` waits (asynchronously) when this many do.
pub const QUEUED_FINALS_MAX: usize = 16;
/// The longest utterance kept, in ms of audio; the rest is dropped.
pub const UTTERANCE_MS_MAX: u64 = 5 * 60 * 1000;
/// Whisper's input window.
pub const WINDOW_MS: u64 = 30_000;
/// The least audio the encoder reads, in ms. Whisper was trained on 30 s windows and its encoder
/// costs the same for any utterance in one: an utterance is given only [`WINDOW_PAD_MS`] of padding
/// after it instead, but at least this much, because shorter windows make tiny.en loop and
/// mishear (over the fixture turns: 30, 20 and 15 s windows 6.8% word error rate, 10 s 7.7% with
/// the spelled email looping). See docs/benchmarks.md.
pub const WINDOW_MIN_MS: u64 = 15_000;
/// Padding after an utterance in the encoder's window, in ms (see [`WINDOW_MIN_MS`]).
pub const WINDOW_PAD_MS: u64 = 3_000;
/// Tokens a decode may write per second of audio (speech is 3–6 a second, a spelled address 6).
pub const TOKENS_PER_SECOND_MAX: usize = 10;
/// Tokens any decode may write.
pub const TOKENS_MIN: usize = 20;
/// Confidence of every word, a constant and not a measurement: `ct2rs` 0.10.3's `generate` returns
/// no per-token scores (see the module doc for the way to real ones).
pub const WORD_CONFIDENCE: f32 = 0.8;
/// Frame level that counts as speech when spreading words over an utterance (see the module doc).
pub const SPEECH_LEVEL_DBFS: f64 = -45.0;
/// How CTranslate2 computes. The model is stored in float16, which CPUs without fast float16 run
/// as float32; int8 weights decode the fixtures about 15% faster on this project's 2-core machine
/// with a word error rate no worse (8.5% against 10.3%: `voxgate bench engines`, docs/benchmarks.md).
pub const COMPUTE_TYPE: ct2rs::sys::ComputeType = ct2rs::sys::ComputeType::INT8;
/// Beam size of finals (CTranslate2's default). Partials decode greedily.
pub const FINAL_BEAM_SIZE: usize = 5;
/// Files the model folder must hold (besides the preprocessor config, written when missing).
pub const MODEL_FILES: [&str; 4] = ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"];
/// The standard Whisper feature extractor settings (80 mel bins, 25 ms window, 10 ms hop, 30 s).
pub const PREPROCESSOR_CONFIG: &str = r#"{
  "chunk_length": 30,
  "feature_extractor_type": "WhisperFeatureExtractor",
  "feature_size": 80,
  "hop_length": 160,
  "n_fft": 400,
  "n_samples": 480000,
  "nb_max_frames": 3000,
  "padding_side": "right",
  "padding_value": 0.0,
  "processor_class": "WhisperProcessor",
  "return_attention_mask": false,
  "sampling_rate": 16000
}
"#;
const PREPROCESSOR_CONFIG_FILE: &str = "preprocessor_config.json";

/// How the engine uses the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperSettings {
    /// Decoding threads, each with its own model (about 150 MB each). Default 1.
    pub workers: usize,
    /// CTranslate2 compute threads per worker. Default 2.
    pub threads_per_worker: usize,
    /// Received audio between timed partial decodes, in ms; 0 (the default) turns them off. A
    /// decode cannot be interrupted, so a timed partial running when the speaker stops delays the
    /// final: measured end to end on 2 cores (`voxgate bench pipeline --embedded --sessions 1`), commit →
    /// final was 393 ms without them, 565 ms with one every 2,000 ms and 895 ms every 700 ms.
    /// Partials still arrive without them: an early final whose speaker went on becomes one.
    pub partial_interval_ms: u64,
}

impl Default for WhisperSettings {
    fn default() -> Self {
        WhisperSettings { workers: 1, threads_per_worker: 2, partial_interval_ms: 0 }
    }
}

/// Counters since the engine was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WhisperStats {
    pub finals_decoded: u64,
    pub partials_decoded: u64,
    /// Partials not started because no worker was idle.
    pub partials_skipped: u64,
    /// Queued jobs skipped because their `transcribe` future was dropped.
    pub jobs_abandoned: u64,
    /// Decodes that failed (engine error or panic).
    pub jobs_failed: u64,
    /// Finals started at a pause, before their utterance closed.
    pub early_finals_started: u64,
    /// Decodes running on a worker right now.
    pub decoding: u64,
    /// Finals started at a pause and used: the utterance closed with nothing voiced after it.
    pub early_finals_used: u64,
    /// Finals started at a pause and not used (speech resumed, or the decode failed).
    pub early_finals_discarded: u64,
}

#[derive(Default)]
struct Counters {
    finals: AtomicU64,
    partials: AtomicU64,
    partials_skipped: AtomicU64,
    abandoned: AtomicU64,
    failed: AtomicU64,
    early_started: AtomicU64,
    busy: AtomicU64,
    early_used: AtomicU64,
    early_discarded: AtomicU64,
}

/// Whisper tiny.en in process. Cheap to clone (the workers are shared); the workers stop when the
/// last clone is dropped.
#[derive(Clone)]
pub struct WhisperStt {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Arc<Queue>,
    partial_interval_ms: u64,
    stats: Arc<Counters>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_all();
    }
}

impl std::fmt::Debug for WhisperStt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperStt").field("partial_interval_ms", &self.shared.partial_interval_ms).finish_non_exhaustive()
    }
}

impl WhisperStt {
    /// Loads the model from `model_dir` (see [`crate::models::whisper_model_dir`]) into
    /// `settings.workers` worker threads. Blocks while the models load (well under a second each).
    pub fn load(model_dir: &Path, settings: WhisperSettings) -> Result<WhisperStt, SttError> {
        check_model_dir(model_dir)?;
        for file in MODEL_FILES {
            crate::models::check_pinned(&model_dir.join(file)).map_err(|e| SttError::Unavailable(e.to_string()))?;
        }
        ensure_preprocessor_config(model_dir)?;
        let workers = settings.workers.clamp(1, 64);
        let threads = settings.threads_per_worker.clamp(1, 64);
        let queue = Arc::new(Queue::new());
        let stats = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for n in 0..workers {
            let (dir, queue, stats, ready) = (model_dir.to_path_buf(), queue.clone(), stats.clone(), ready_tx.clone());
            std::thread::Builder::new()
                .name(format!("voxgate-whisper-{n}"))
                .spawn(move || match Engine::load(&dir, threads) {
                    Ok(engine) => {
                        let _ = ready.send(Ok(()));
                        drop(ready);
                        worker_loop(&engine, &queue, &stats);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                })
                .map_err(|e| SttError::Engine(format!("cannot start a whisper worker thread: {e}")))?;
        }
        drop(ready_tx);
        let shared = Arc::new(Shared { queue, partial_interval_ms: settings.partial_interval_ms, stats });
        for _ in 0..workers {
            // On an error `shared` drops here and closes the queue, so the loaded workers stop.
            ready_rx.recv().map_err(|_| SttError::Engine("a whisper worker stopped while loading".into()))??;
        }
        tracing::info!(model_dir = %model_dir.display(), workers, threads_per_worker = threads, "whisper loaded");
        Ok(WhisperStt { shared })
    }

    /// Counters since the engine was loaded.
    pub fn stats(&self) -> WhisperStats {
        let s = &self.shared.stats;
        WhisperStats {
            finals_decoded: s.finals.load(Ordering::Relaxed),
            partials_decoded: s.partials.load(Ordering::Relaxed),
            partials_skipped: s.partials_skipped.load(Ordering::Relaxed),
            jobs_abandoned: s.abandoned.load(Ordering::Relaxed),
            jobs_failed: s.failed.load(Ordering::Relaxed),
            early_finals_started: s.early_started.load(Ordering::Relaxed),
            decoding: s.busy.load(Ordering::Relaxed),
            early_finals_used: s.early_used.load(Ordering::Relaxed),
            early_finals_discarded: s.early_discarded.load(Ordering::Relaxed),
        }
    }
}

/// Every model file present, or an error naming the folder and the fix.
fn check_model_dir(model_dir: &Path) -> Result<(), SttError> {
    let fetch = "run `voxgate models fetch` to install it";
    if !model_dir.is_dir() {
        return Err(SttError::Unavailable(format!("the Whisper model folder {} is missing; {fetch}", model_dir.display())));
    }
    let missing: Vec<&str> = MODEL_FILES.iter().copied().filter(|f| !model_dir.join(f).is_file()).collect();
    if !missing.is_empty() {
        return Err(SttError::Unavailable(format!(
            "the Whisper model folder {} lacks {}; {fetch}",
            model_dir.display(),
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Writes [`PREPROCESSOR_CONFIG`] into the folder when it has none: temporary file, fsync, rename.
fn ensure_preprocessor_config(model_dir: &Path) -> Result<(), SttError> {
    let path = model_dir.join(PREPROCESSOR_CONFIG_FILE);
    if path.is_file() {
        return Ok(());
    }
    let temp = model_dir.join(format!(".{PREPROCESSOR_CONFIG_FILE}.{}.tmp", std::process::id()));
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&temp);
        SttError::Unavailable(format!("cannot write {} (the Whisper feature settings): {e}", path.display()))
    };
    let mut file = std::fs::File::create(&temp).map_err(fail)?;
    file.write_all(PREPROCESSOR_CONFIG.as_bytes()).and_then(|()| file.sync_all()).map_err(fail)?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(fail)?;
    tracing::info!(path = %path.display(), "wrote the standard Whisper preprocessor config");
    Ok(())
}

impl SpeechToText for WhisperStt {
    fn name(&self) -> &str {
        "whisper-tiny-en"
    }

    fn transcribe(&self, mut utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let samples_max = (UTTERANCE_MS_MAX * u64::from(STT_RATE_HZ) / 1000) as usize;
            let interval_samples = (shared.partial_interval_ms * u64::from(STT_RATE_HZ) / 1000) as usize;
            let mut audio: Vec<i16> = Vec::new();
            let mut dropped_samples = 0usize;
            let mut next_partial_at = interval_samples;
            let mut partial: Option<oneshot::Receiver<Result<Transcript, SttError>>> = None;
            // The pause the speaker is in (samples of the utterance before it), when one is reported;
            // and the early final started at it.
            let mut pause_rx = utterance.pause.take();
            let mut paused_at: Option<u64> = None;
            let mut early: Option<Early> = None;
            loop {
                tokio::select! {
                    frame = utterance.audio.recv() => {
                        let Some(frame) = frame else { break };
                        let room = samples_max - audio.len();
                        audio.extend_from_slice(&frame[..frame.len().min(room)]);
                        dropped_samples += frame.len().saturating_sub(room);
                        if interval_samples > 0 && partial.is_none() && audio.len() >= next_partial_at && dropped_samples == 0 {
                            partial = shared.queue.try_submit_partial(&audio, utterance.start_ms);
                            if partial.is_some() {
                                next_partial_at = audio.len() + interval_samples;
                            } else {
                                shared.stats.partials_skipped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    changed = async { pause_rx.as_mut().expect("guarded by the branch condition").changed().await }, if pause_rx.is_some() => {
                        let Some(rx) = pause_rx.as_mut().filter(|_| changed.is_ok()) else {
                            pause_rx = None;
                            continue;
                        };
                        paused_at = *rx.borrow_and_update();
                        if early.as_ref().is_some_and(|e| paused_at != Some(e.pause)) {
                            // Speech resumed: an early final of the shorter audio is a partial now.
                            let stale = early.take().expect("checked above");
                            shared.stats.early_discarded.fetch_add(1, Ordering::Relaxed);
                            if partial.is_none() {
                                partial = Some(stale.reply);
                            }
                        }
                    }
                    result = async { partial.as_mut().expect("guarded by the branch condition").await }, if partial.is_some() => {
                        partial = None;
                        if let Ok(Ok(transcript)) = result {
                            if !transcript.text.is_empty() {
                                // Partials are advisory: a full queue drops this one.
                                let _ = partials.try_send(transcript);
                            }
                        }
                    }
                }
                // At a pause, once the audio up to it has arrived, start the final early (once per pause).
                if let Some(at) = paused_at {
                    if early.is_none() && dropped_samples == 0 && audio.len() as u64 >= at && at > 0 {
                        early = shared.queue.try_submit_early_final(&audio, utterance.start_ms).map(|reply| Early { reply, pause: at });
                        if early.is_some() {
                            shared.stats.early_started.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            // A partial still running is of no use now; dropping its receiver lets a queued one be skipped.
            drop(partial);
            if dropped_samples > 0 {
                tracing::warn!(
                    dropped_ms = dropped_samples as u64 * 1000 / u64::from(STT_RATE_HZ),
                    "utterance too long for whisper; audio after the limit was dropped"
                );
            }
            if audio.is_empty() {
                return Ok(Transcript::default());
            }
            // Nothing voiced after the pause the early final started at: its transcript is this one.
            // (The pause as it stands now: the session set it before closing the audio.)
            let paused_at = pause_rx.map_or(paused_at, |rx| *rx.borrow());
            if let Some(early) = early {
                if paused_at == Some(early.pause) {
                    if let Ok(Ok(transcript)) = early.reply.await {
                        shared.stats.early_used.fetch_add(1, Ordering::Relaxed);
                        return Ok(transcript);
                    }
                }
                shared.stats.early_discarded.fetch_add(1, Ordering::Relaxed);
            }
            shared.queue.submit_final(audio, utterance.start_ms).await
        })
    }
}

/// A final decode started at a pause, before the utterance closed.
struct Early {
    reply: oneshot::Receiver<Result<Transcript, SttError>>,
    /// The pause it was started at (the utterance's samples before it).
    pause: u64,
}

// ---------------------------------------------------------------------------------------------
// The job queue: finals before partials, bounded finals, partials only onto an idle worker.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Final,
    Partial,
}

struct Job {
    kind: JobKind,
    samples: Vec<i16>,
    start_ms: u64,
    reply: oneshot::Sender<Result<Transcript, SttError>>,
    /// A final's place in the bounded queue, given back when a worker takes the job.
    place: Option<OwnedSemaphorePermit>,
}

struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    final_places: Arc<Semaphore>,
}

#[derive(Default)]
struct QueueState {
    finals: VecDeque<Job>,
    partials: VecDeque<Job>,
    idle_workers: usize,
    closed: bool,
}

impl Queue {
    fn new() -> Queue {
        Queue { state: Mutex::default(), wake: Condvar::new(), final_places: Arc::new(Semaphore::new(QUEUED_FINALS_MAX)) }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent across a panic (every change is one push or pop).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a partial only when a worker is idle with nothing else to take.
    fn try_submit_partial(&self, samples: &[i16], start_ms: u64) -> Option<oneshot::Receiver<Result<Transcript, SttError>>> {
        let mut state = self.lock();
        if state.closed || state.idle_workers <= state.finals.len() + state.partials.len() {
            return None;
        }
        let (reply, receiver) = oneshot::channel();
        state.partials.push_back(Job { kind: JobKind::Partial, samples: samples.to_vec(), start_ms, reply, place: None });
        drop(state);
        self.wake.notify_one();
        Some(receiver)
    }

    /// Queues a final of the audio so far at a pause, only when a place is free at once: under load
    /// the final is decoded when the utterance closes instead.
    fn try_submit_early_final(&self, samples: &[i16], start_ms: u64) -> Option<oneshot::Receiver<Result<Transcript, SttError>>> {
        let place = self.final_places.clone().try_acquire_owned().ok()?;
        self.push_final(samples.to_vec(), start_ms, place)
    }

    /// Queues a final, waiting for a place when the queue is full, and waits for its transcript.
    async fn submit_final(&self, samples: Vec<i16>, start_ms: u64) -> Result<Transcript, SttError> {
        let place = self.final_places.clone().acquire_owned().await.map_err(|_| stopped())?;
        let receiver = self.push_final(samples, start_ms, place).ok_or_else(stopped)?;
        receiver.await.map_err(|_| stopped())?
    }

    /// Queues a final holding `place`, unless the engine has stopped.
    fn push_final(
        &self,
        samples: Vec<i16>,
        start_ms: u64,
        place: OwnedSemaphorePermit,
    ) -> Option<oneshot::Receiver<Result<Transcript, SttError>>> {
        let (reply, receiver) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.closed {
                return None;
            }
            state.finals.push_back(Job { kind: JobKind::Final, samples, start_ms, reply, place: Some(place) });
        }
        self.wake.notify_one();
        Some(receiver)
    }

    /// The next job (finals first), or `None` once the engine is dropped.
    fn take(&self) -> Option<Job> {
        let mut state = self.lock();
        state.idle_workers += 1;
        loop {
            if let Some(job) = state.finals.pop_front().or_else(|| state.partials.pop_front()) {
                state.idle_workers -= 1;
                return Some(job);
            }
            if state.closed {
                state.idle_workers -= 1;
                return None;
            }
            state = self.wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

fn stopped() -> SttError {
    SttError::Engine("the whisper workers stopped".into())
}

fn worker_loop(engine: &Engine, queue: &Queue, stats: &Counters) {
    while let Some(job) = queue.take() {
        drop(job.place);
        if job.reply.is_closed() {
            stats.abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let started = std::time::Instant::now();
        stats.busy.fetch_add(1, Ordering::Relaxed);
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.decode(&job.samples, job.start_ms, job.kind)))
            .unwrap_or_else(|_| Err(SttError::Engine("the whisper decoder panicked".into())));
        stats.busy.fetch_sub(1, Ordering::Relaxed);
        let audio_ms = job.samples.len() as u64 * 1000 / u64::from(STT_RATE_HZ);
        match (&decoded, job.kind) {
            (Err(e), _) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, kind = ?job.kind, "whisper decode failed");
            }
            (Ok(_), JobKind::Final) => {
                stats.finals.fetch_add(1, Ordering::Relaxed);
            }
            (Ok(_), JobKind::Partial) => {
                stats.partials.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::debug!(kind = ?job.kind, audio_ms, decode_ms = started.elapsed().as_millis() as u64, "whisper decode");
        let _ = job.reply.send(decoded);
    }
}

// ---------------------------------------------------------------------------------------------
// One worker's model.

struct Engine {
    whisper: ct2rs::sys::Whisper,
    features: Features,
    final_options: ct2rs::sys::WhisperOptions,
    partial_options: ct2rs::sys::WhisperOptions,
}

/// Log-mel feature extraction, as Whisper's preprocessor config describes it.
struct Features {
    hop_length: usize,
    n_samples: usize,
    nb_max_frames: usize,
    log_mel: log_mel::LogMel,
}

/// Features for the encoder: `count` windows of `n_mels` rows of `frames` values, row-major.
struct Mel {
    values: Vec<f32>,
    count: usize,
    n_mels: usize,
    frames: usize,
}

impl Features {
    fn read(path: &Path) -> Result<Features, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Features::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Features, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let field = |name: &str| v[name].as_u64().map(|n| n as usize).ok_or_else(|| format!("no `{name}`"));
        let (sampling_rate, n_fft, feature_size, hop_length) =
            (field("sampling_rate")?, field("n_fft")?, field("feature_size")?, field("hop_length")?);
        if n_fft < 2 || hop_length == 0 || hop_length > n_fft || feature_size == 0 {
            return Err(format!("n_fft {n_fft}, hop_length {hop_length} and feature_size {feature_size} make no spectrogram"));
        }
        Ok(Features {
            hop_length,
            n_samples: field("n_samples")?.max(1),
            nb_max_frames: field("nb_max_frames")?,
            log_mel: log_mel::LogMel::new(sampling_rate as f64, n_fft, hop_length, feature_size),
        })
    }

    /// Mel frames given to the encoder for `samples` of audio: the audio and [`WINDOW_PAD_MS`] after
    /// it, rounded up to a whole second, at least [`WINDOW_MIN_MS`] and at most the full window.
    fn frames_for(&self, samples: usize) -> usize {
        let frames_per_ms = |ms: u64| (ms * u64::from(STT_RATE_HZ) / 1000) as usize / self.hop_length;
        let second = frames_per_ms(1000);
        let wanted = (samples / self.hop_length + frames_per_ms(WINDOW_PAD_MS)).div_ceil(second) * second;
        wanted.max(frames_per_ms(WINDOW_MIN_MS)).min(self.nb_max_frames)
    }

    /// The log-mel spectrogram of `samples` in windows of `n_samples`, each cut to the frames
    /// [`Features::frames_for`] gives the first. As Whisper's own feature extractor does: log10 of
    /// the mel power, floored 8 below the window's loudest value, then scaled; the frames after the
    /// audio hold the floor, as zero samples would. (`decode` never gives more than one window.)
    fn extract(&self, samples: &[f32]) -> Mel {
        let n_mels = self.log_mel.n_mels();
        let frames = self.frames_for(samples.len().min(self.n_samples));
        let mut stft = self.log_mel.stft();
        let mut column = vec![0.0; n_mels];
        let mut values = Vec::new();
        let mut count = 0;
        for chunk in samples.chunks(self.n_samples) {
            let mut log_mel = vec![log_mel::LOG_POWER_MIN; n_mels * frames];
            for (i, hop) in chunk.chunks(self.hop_length).enumerate().take(frames) {
                if stft.add(hop, &mut column) {
                    for (m, &v) in column.iter().enumerate() {
                        log_mel[m * frames + i] = v;
                    }
                }
            }
            let floor = log_mel.iter().fold(f64::NEG_INFINITY, |max, &v| max.max(v)) - 8.0;
            values.extend(log_mel.iter().map(|&v| ((v.max(floor) + 4.0) / 4.0) as f32));
            count += 1;
        }
        Mel { values, count, n_mels, frames }
    }
}

impl Engine {
    fn load(model_dir: &Path, threads: usize) -> Result<Engine, SttError> {
        let unavailable = |e: String| SttError::Unavailable(format!("cannot load the Whisper model from {}: {e}", model_dir.display()));
        let config = ct2rs::Config { num_threads_per_replica: threads, compute_type: COMPUTE_TYPE, ..Default::default() };
        let whisper = ct2rs::sys::Whisper::new(model_dir, config).map_err(|e| unavailable(format!("{e:#}")))?;
        let features = Features::read(&model_dir.join("preprocessor_config.json")).map_err(unavailable)?;
        let final_options = ct2rs::sys::WhisperOptions { beam_size: FINAL_BEAM_SIZE, ..Default::default() };
        let partial_options = ct2rs::sys::WhisperOptions { beam_size: 1, ..Default::default() };
        Ok(Engine { whisper, features, final_options, partial_options })
    }

    /// Decodes with the prompt the model was trained on. English-only models (`.en`) know no language
    /// or task tokens: they start `<|startoftranscript|><|notimestamps|>`, which ct2rs's `Whisper`
    /// wrapper (it always adds `<|en|><|transcribe|>`) cannot do.
    fn generate(&self, audio: &[f32], options: &ct2rs::sys::WhisperOptions) -> Result<Vec<String>, String> {
        let mut mel = self.features.extract(audio);
        if mel.count == 0 {
            return Ok(Vec::new());
        }
        let (count, shape) = (mel.count, [mel.count, mel.n_mels, mel.frames]);
        let view = ct2rs::sys::StorageView::new(&shape, &mut mel.values, Default::default()).map_err(|e| format!("{e:#}"))?;
        let prompt: Vec<&str> = if self.whisper.is_multilingual() {
            vec!["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
        } else {
            vec!["<|startoftranscript|>", "<|notimestamps|>"]
        };
        let mut options = options.clone();
        options.max_length = tokens_max(audio.len().min(self.features.n_samples)).min(options.max_length);
        let results = self.whisper.generate(&view, &vec![prompt; count], &options).map_err(|e| format!("{e:#}"))?;
        results
            .into_iter()
            .map(|r| {
                let tokens = r.sequences.into_iter().next().ok_or("no transcript")?;
                Ok(byte_level::decode(&tokens))
            })
            .collect()
    }

    fn decode(&self, samples: &[i16], start_ms: u64, kind: JobKind) -> Result<Transcript, SttError> {
        let options = match kind {
            JobKind::Final => &self.final_options,
            JobKind::Partial => &self.partial_options,
        };
        let audio: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let mut pieces = Vec::new();
        for (offset, window) in windows(audio.len()) {
            let offset_ms = start_ms + offset as u64 * 1000 / u64::from(STT_RATE_HZ);
            let window_ms = window.len() as u64 * 1000 / u64::from(STT_RATE_HZ);
            let Some((speech_start_ms, speech_end_ms)) = speech_span_ms(&samples[window.clone()]) else {
                // Nothing at speech level: Whisper would hallucinate ("1.", "you") on silence.
                continue;
            };
            let texts =
                self.generate(&audio[window.clone()], options).map_err(|e| SttError::Engine(format!("whisper decode failed: {e}")))?;
            let text = texts.join(" ");
            pieces.extend(spread_words(&text, offset_ms + speech_start_ms, offset_ms + speech_end_ms.min(window_ms), WORD_CONFIDENCE));
        }
        Ok(clean(pieces))
    }
}

/// The most tokens a decode of `samples` may write: [`TOKENS_PER_SECOND_MAX`] per second of audio
/// and [`TOKENS_MIN`]. A loop ("N-N-N-…") stops there instead of at the model's 448 tokens.
fn tokens_max(samples: usize) -> usize {
    TOKENS_MIN + TOKENS_PER_SECOND_MAX * samples.div_ceil(STT_RATE_HZ as usize)
}

/// Equal windows of at most [`WINDOW_MS`] covering `len` samples: (offset, range).
fn windows(len: usize) -> Vec<(usize, std::ops::Range<usize>)> {
    let window_max = (WINDOW_MS * u64::from(STT_RATE_HZ) / 1000) as usize;
    let count = len.div_ceil(window_max).max(1);
    let size = len.div_ceil(count);
    (0..count).map(|i| (i * size, i * size..((i + 1) * size).min(len))).filter(|(_, r)| !r.is_empty()).collect()
}

// ---------------------------------------------------------------------------------------------
// From the engine's output to a transcript (pure, unit-tested).

/// A whitespace-separated word of the transcript, timed.
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    text: String,
    start_ms: u64,
    end_ms: u64,
    confidence: f32,
}

/// Spreads the whitespace-separated words of `text` over `start_ms..end_ms` proportionally to their
/// length in characters.
fn spread_words(text: &str, start_ms: u64, end_ms: u64, confidence: f32) -> Vec<Piece> {
    let text_words: Vec<&str> = text.split_whitespace().collect();
    let total = text_words.iter().map(|w| w.chars().count()).sum::<usize>().max(1) as u64;
    let span = end_ms.saturating_sub(start_ms);
    let mut chars_before = 0u64;
    text_words
        .iter()
        .map(|w| {
            let len = w.chars().count() as u64;
            let piece = Piece {
                text: (*w).to_owned(),
                start_ms: start_ms + span * chars_before / total,
                end_ms: start_ms + span * (chars_before + len) / total,
                confidence,
            };
            chars_before += len;
            piece
        })
        .collect()
}

/// Where speech is in `samples`, in ms from their start: from the first to the end of the last
/// 10 ms frame whose RMS reaches [`SPEECH_LEVEL_DBFS`]; `None` when none does.
fn speech_span_ms(samples: &[i16]) -> Option<(u64, u64)> {
    let frame = (STT_RATE_HZ / 100) as usize;
    let level = 32768.0 * 10f64.powf(SPEECH_LEVEL_DBFS / 20.0);
    let energy_min = level * level * frame as f64;
    let voiced: Vec<usize> = samples
        .chunks(frame)
        .enumerate()
        .filter(|(_, f)| f.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() >= energy_min)
        .map(|(i, _)| i)
        .collect();
    let len_ms = samples.len() as u64 * 1000 / u64::from(STT_RATE_HZ);
    match (voiced.first(), voiced.last()) {
        (Some(&first), Some(&last)) => Some((first as u64 * 10, ((last as u64 + 1) * 10).min(len_ms))),
        _ => None,
    }
}

/// Drops bracketed non-speech tags, keeps Whisper's punctuation in the text but not in word texts,
/// and returns an empty transcript when no word is left.
fn clean(pieces: Vec<Piece>) -> Transcript {
    let mut depth = 0usize;
    let mut kept = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let opens = piece.text.chars().filter(|c| matches!(c, '[' | '(')).count();
        let closes = piece.text.chars().filter(|c| matches!(c, ']' | ')')).count();
        let inside = depth > 0 || opens > 0;
        depth = (depth + opens).saturating_sub(closes);
        if !inside {
            kept.push(piece);
        }
    }
    let trim = |s: &str| s.trim_matches(|c: char| !c.is_alphanumeric() && !matches!(c, '$' | '%' | '€' | '£')).to_owned();
    let words: Vec<Word> = kept
        .iter()
        .filter(|p| p.text.chars().any(char::is_alphanumeric))
        .map(|p| Word {
            text: trim(&p.text),
            start_ms: p.start_ms,
            end_ms: p.end_ms.max(p.start_ms),
            confidence: p.confidence.clamp(0.0, 1.0),
        })
        .collect();
    if words.is_empty() {
        return Transcript::default();
    }
    let text = kept.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join(" ");
    let confidence = words.iter().map(|w| w.confidence).sum::<f32>() / words.len() as f32;
    Transcript { text: text.trim().to_owned(), words, speaker: None, confidence, engine: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_spread_over_the_speech_by_length_and_lose_their_punctuation() {
        let pieces = spread_words(" Book a table.", 10_000, 11_000, 0.8);
        assert_eq!(
            pieces.iter().map(|p| (p.start_ms, p.end_ms)).collect::<Vec<_>>(),
            [(10_000, 10_363), (10_363, 10_454), (10_454, 11_000)]
        );
        let t = clean(pieces);
        assert_eq!(t.text, "Book a table.");
        assert_eq!(t.words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["Book", "a", "table"]);
        assert!((t.confidence - 0.8).abs() < 1e-6);
    }

    #[test]
    fn the_speech_span_skips_leading_and_trailing_silence() {
        let mut samples = vec![0i16; 16_000];
        samples[4_000..8_000].iter_mut().enumerate().for_each(|(i, s)| *s = if i % 2 == 0 { 3_000 } else { -3_000 });
        assert_eq!(speech_span_ms(&samples), Some((250, 500)));
        assert_eq!(speech_span_ms(&[0; 1_600]), None);
    }

    #[test]
    fn non_speech_tags_and_blank_output_give_an_empty_transcript() {
        for text in ["[BLANK_AUDIO]", " (silence) ", "[Music]", "  ", "(upbeat music)", "..."] {
            let t = clean(spread_words(text, 0, 1_000, 0.8));
            assert_eq!(t, Transcript::default(), "{text:?}");
        }
        let t = clean(spread_words("[BLANK_AUDIO] Hello there.", 0, 1_000, 0.8));
        assert_eq!(t.text, "Hello there.");
        assert_eq!(t.words.len(), 2);
    }

    #[test]
    fn the_encoder_reads_the_utterance_and_its_padding_in_whole_seconds_between_15_and_30_s() {
        let f = Features::parse(PREPROCESSOR_CONFIG).unwrap();
        let at = |seconds: f64| f.frames_for((seconds * 16_000.0) as usize);
        assert_eq!(at(0.5), 1500, "short: the least window");
        assert_eq!(at(11.5), 1500, "11.5 + 3 s padding rounds up to 15 s");
        assert_eq!(at(12.01), 1600);
        assert_eq!(at(26.0), 2900);
        assert_eq!(at(27.5), 3000, "never past Whisper's 30 s");
        assert_eq!(at(30.0), 3000);
    }

    #[test]
    fn features_are_floored_8_below_the_loudest_value_and_the_padding_is_the_floor() {
        let f = Features::parse(PREPROCESSOR_CONFIG).unwrap();
        // 1 s of a 440 Hz tone at half scale.
        let tone: Vec<f32> = (0..16_000).map(|i| 0.5 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin()).collect();
        let mel = f.extract(&tone);
        assert_eq!((mel.count, mel.n_mels, mel.frames, mel.values.len()), (1, 80, 1500, 80 * 1500));
        let max = mel.values.iter().fold(f32::MIN, |m, &v| m.max(v));
        let min = mel.values.iter().fold(f32::MAX, |m, &v| m.min(v));
        assert!((max - min - 2.0).abs() < 1e-4, "log10 floored 8 below the max, scaled by 1/4: {max} {min}");
        let mut padding = mel.values.chunks_exact(1500).flat_map(|row| &row[200..]);
        assert!(padding.all(|&v| v == min), "frames after the audio hold the floor");
    }

    #[test]
    fn a_decode_may_write_ten_tokens_a_second_and_at_least_twenty() {
        assert_eq!(tokens_max(0), 20);
        assert_eq!(tokens_max(8_000), 30);
        assert_eq!(tokens_max(16_000 * 5), 70);
        assert!(tokens_max(16_000 * 30) < 448, "below the model's own limit for a full window");
    }

    #[test]
    fn long_audio_is_cut_into_equal_windows_of_at_most_30_s() {
        assert_eq!(windows(16_000), [(0, 0..16_000)]);
        assert_eq!(windows(480_000), [(0, 0..480_000)]);
        assert_eq!(windows(480_001), [(0, 0..240_001), (240_001, 240_001..480_001)]);
        let w = windows(16_000 * 95);
        assert_eq!(w.len(), 4);
        assert!(w.iter().all(|(_, r)| r.len() <= 480_000));
        assert_eq!(w.last().unwrap().1.end, 16_000 * 95);
    }

    #[test]
    fn a_missing_folder_or_file_names_the_folder_and_the_fix() {
        let err = check_model_dir(Path::new("/nonexistent/whisper-tiny-en")).unwrap_err();
        assert_eq!(err.kind(), "unavailable");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/whisper-tiny-en") && msg.contains("voxgate models fetch"), "{msg}");
    }
}
