//! The embedded LLM: SmolLM2-135M-Instruct (GGUF) run in process through llama.cpp, the offline
//! default that needs no keys and no network. `voxgate models fetch` installs the model file.
//!
//! # How it runs
//! - The model loads lazily on the first request, once per [`Embedded`]; a missing file is an
//!   [`ProviderError::Engine`] telling the user to run `voxgate models fetch` (and a later request
//!   tries again, so fetching while the server runs is enough).
//! - Inference never runs on the async runtime. One worker thread owns the model and one llama
//!   context (llama.cpp generates with half the cores, see [`Embedded::with_threads`], and reads a
//!   prompt with all of them, see `default_prompt_threads`) and takes
//!   jobs in order from a bounded queue of [`QUEUED_JOBS_MAX`]. A request waits in that queue
//!   while another is generated; when the queue is full, `send` fails at once with "embedded
//!   model busy" (retryable, so the router can fall back) rather than growing a long line.
//! - Tokens flow back through a bounded channel. The worker checks every send: when the receiver
//!   is gone (client left, barge-in) generation stops at the next token and the worker is free.
//!   A consumer that holds the stream without reading for [`CONSUMER_STALL_MAX`] is dropped too.
//! - The context keeps the last request's tokens (its prompt and what it generated). A request
//!   whose prompt starts with them, as a conversation's next turn does, computes only the rest
//!   ([`EmbeddedStats::prompt_tokens_reused`]); any other prompt clears the context first.
//!
//! # What a request can ask for
//! - The prompt is rendered with the chat template stored in the GGUF. Tool results become user
//!   messages (`Tool result: …`); an assistant's earlier tool calls are written out as text; a
//!   user message's `name` (a speaker label) starts its text as `NAME: ` (the template has no
//!   field for it; see [`super::name_prefixed`]).
//! - `max_tokens`/`max_completion_tokens` (default [`DEFAULT_MAX_OUTPUT_TOKENS`]), bounded by the
//!   context of [`CONTEXT_TOKENS`] tokens; a prompt that does not fit is [`ProviderError::Invalid`]
//!   (like an OpenAI-compatible host's 400 for an over-long context).
//! - `temperature` absent or 0 means greedy decoding, so answers are deterministic; above 0 the
//!   chain is top-p (when given), temperature, then a random draw (seeded by `seed` when given).
//! - `stop` sequences: the answer ends before the first one, with finish reason `stop`.
//! - Tools: a 135M model cannot call tools reliably, so tools are ignored and the model answers in
//!   text (finish `stop`/`length`, never `tool_calls`).
//! - `response_format` `json_object` and `json_schema`: the output is constrained by a JSON grammar
//!   to one JSON object. The schema itself is not enforced (llama-cpp-2 built without its `common`
//!   feature has no schema-to-grammar converter); a JSON answer cut by `max_tokens` is incomplete,
//!   as with any provider.
//! - `n` is ignored (one choice).
//! - Without `stream` the answer comes as one `Text` event; with it, one event per decoded piece.

#![cfg_attr(not(feature = "embedded-llm"), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{name_prefixed, EventStream};
use crate::llm::error::ProviderError;
use crate::llm::types::{ChatRequest, Message, ResponseFormat};

/// Output limit when the request gives none.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 256;
/// The llama context size (prompt plus answer). SmolLM2 was trained on 8k; 2k keeps the KV cache
/// near 50 MB and is far more than a voice turn needs.
pub const CONTEXT_TOKENS: u32 = 2048;
/// Requests that may wait for the worker; one more is being generated.
pub const QUEUED_JOBS_MAX: usize = 8;
/// Events buffered between the worker and the consumer.
const EVENT_BUFFER: usize = 64;
/// How long the worker waits on a consumer whose buffer is full before giving up on it.
pub const CONSUMER_STALL_MAX: Duration = Duration::from_secs(30);

/// The embedded provider. Cheap to construct; the model loads on first use.
pub struct Embedded {
    model_path: PathBuf,
    threads: usize,
    prompt_threads: usize,
    stats: Arc<Counters>,
    #[cfg(feature = "embedded-llm")]
    worker: tokio::sync::OnceCell<engine::Worker>,
}

/// Counters since this provider was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Requests that generated until a finish reason (stop or length).
    pub jobs_completed: u64,
    /// Requests abandoned by their consumer before they finished (or while queued).
    pub jobs_cancelled: u64,
    /// Requests that failed (prompt too long, decode error).
    pub jobs_failed: u64,
    /// Tokens generated over all requests, cancelled ones included.
    pub output_tokens_total: u64,
    /// Prompt tokens not computed again because the previous request had them in the context.
    pub prompt_tokens_reused: u64,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    output_tokens: AtomicU64,
    prompt_tokens_reused: AtomicU64,
}

impl Embedded {
    pub fn new(model_path: PathBuf) -> Self {
        Embedded {
            model_path,
            threads: default_threads(),
            prompt_threads: default_prompt_threads(),
            stats: Arc::default(),
            #[cfg(feature = "embedded-llm")]
            worker: tokio::sync::OnceCell::new(),
        }
    }

    /// Use `threads` llama.cpp threads (default: half the cores, 1 to 4). Takes effect
    /// when the model loads, so set it before the first request.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.clamp(1, 64);
        self
    }

    /// The GGUF file this provider loads.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// Whether the model can be loaded: the file exists (and the feature is compiled in). The
    /// error tells the user what to do. It does not hash the file (`voxgate models verify` does).
    pub fn check(&self) -> Result<(), String> {
        if !cfg!(feature = "embedded-llm") {
            return Err(NOT_BUILT.to_string());
        }
        match std::fs::metadata(&self.model_path) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(format!(
                "the embedded model path {} is not a file; run `voxgate models fetch` to install the model",
                self.model_path.display()
            )),
            Err(_) => {
                Err(format!("the embedded model file {} is missing; run `voxgate models fetch` to download it", self.model_path.display()))
            }
        }
    }

    /// Counters since this provider was created.
    pub fn stats(&self) -> EmbeddedStats {
        EmbeddedStats {
            jobs_completed: self.stats.completed.load(Ordering::Relaxed),
            jobs_cancelled: self.stats.cancelled.load(Ordering::Relaxed),
            jobs_failed: self.stats.failed.load(Ordering::Relaxed),
            output_tokens_total: self.stats.output_tokens.load(Ordering::Relaxed),
            prompt_tokens_reused: self.stats.prompt_tokens_reused.load(Ordering::Relaxed),
        }
    }

    /// Answer `request` with the local model. `upstream_model` is ignored: there is one model.
    /// Resolves once the worker has taken the job and the prompt fits; generation continues
    /// behind the returned stream.
    #[cfg(feature = "embedded-llm")]
    pub async fn send(&self, request: &ChatRequest, _upstream_model: &str, stream: bool) -> Result<EventStream, ProviderError> {
        let job = JobSpec::from_request(request, stream)?;
        self.check().map_err(ProviderError::Engine)?;
        let worker = self
            .worker
            .get_or_try_init(|| engine::Worker::start(self.model_path.clone(), (self.threads, self.prompt_threads), self.stats.clone()))
            .await?;
        worker.submit(job).await
    }

    #[cfg(not(feature = "embedded-llm"))]
    pub async fn send(&self, _request: &ChatRequest, _upstream_model: &str, _stream: bool) -> Result<EventStream, ProviderError> {
        Err(ProviderError::Engine(NOT_BUILT.into()))
    }
}

/// Half the cores, at least 1, at most 4. llama.cpp's threads wait for each other at every
/// layer by spinning, so when another process (STT, TTS, a compiler) takes a core, two threads on
/// two cores collapse: measured here under load, 2 threads gave 1–35 tokens/s and 1 thread a steady
/// 85. The voice pipeline always shares the cores, so the LLM takes half of them.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4))
}

/// Every core, at most 4. A prompt is computed in one batch whose per-layer work is large enough
/// for the threads' waits not to dominate, and in a voice turn it is computed when speech-to-text
/// has just finished and text-to-speech has not started: with 2 threads instead of 1 the embedded
/// model's first token came in 85 ms instead of 167 (`voxgate bench pipeline --embedded`, one
/// session, docs/benchmarks.md).
fn default_prompt_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

const NOT_BUILT: &str = "voxgate was built without the embedded-llm feature";

/// Everything the worker needs from a request, checked before it is queued.
#[derive(Debug, Clone, PartialEq)]
struct JobSpec {
    /// (role, content) pairs for the chat template: system, user or assistant.
    messages: Vec<(&'static str, String)>,
    max_output_tokens: u32,
    sampling: Sampling,
    json: bool,
    stop: Vec<String>,
    stream: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sampling {
    Greedy,
    Random { temperature: f32, top_p: Option<f32>, seed: u32 },
}

impl JobSpec {
    fn from_request(request: &ChatRequest, stream: bool) -> Result<Self, ProviderError> {
        let max_output_tokens = request.max_output_tokens().unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
        if max_output_tokens == 0 {
            return Err(ProviderError::Invalid("max_tokens must be at least 1".into()));
        }
        let temperature = request.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ProviderError::Invalid(format!("temperature must be between 0 and 2, got {temperature}")));
        }
        let top_p = match request.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                return Err(ProviderError::Invalid(format!("top_p must be in (0, 1], got {p}")));
            }
            Some(p) if p < 1.0 => Some(p as f32),
            _ => None,
        };
        let sampling = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            // llama.cpp draws a random seed for u32::MAX (LLAMA_DEFAULT_SEED).
            let seed = request.seed.map_or(u32::MAX, |s| s as u32);
            Sampling::Random { temperature: temperature as f32, top_p, seed }
        };
        if request.tools_enabled() {
            tracing::debug!("the embedded model cannot call tools; answering in text");
        }
        let json = matches!(request.response_format, Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. }));
        let messages = render_messages(&request.messages);
        if messages.is_empty() {
            return Err(ProviderError::Invalid("the request has no messages".into()));
        }
        let stop = request.stop_sequences().into_iter().filter(|s| !s.is_empty()).collect();
        Ok(JobSpec { messages, max_output_tokens, sampling, json, stop, stream })
    }
}

/// Turn the conversation into what a plain chat template understands: system, user, assistant.
fn render_messages(messages: &[Message]) -> Vec<(&'static str, String)> {
    let clean = |s: String| s.replace('\0', "");
    messages
        .iter()
        .map(|m| match m {
            Message::System { content, .. } => ("system", clean(content.text())),
            Message::User { content, name } => ("user", clean(name_prefixed(name.as_deref(), &content.text()))),
            Message::Tool { content, .. } => ("user", clean(format!("Tool result: {}", content.text()))),
            Message::Assistant { content, tool_calls, .. } => {
                let mut text = content.as_ref().map(|c| c.text()).unwrap_or_default();
                for call in tool_calls.iter().flatten() {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!("(called tool {} with {})", call.function.name, call.function.arguments));
                }
                ("assistant", clean(text))
            }
        })
        .collect()
}

/// Turns token pieces (bytes) into text without breaking a character split across tokens: bytes
/// of an incomplete UTF-8 sequence wait for the next piece; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // from_utf8 just said this prefix is valid, so the fallback is never used.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete sequence at the end: keep it for the next piece.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of generation (an unfinished character becomes U+FFFD).
    fn finish(&mut self) -> String {
        let out = if self.pending.is_empty() { String::new() } else { String::from(char::REPLACEMENT_CHARACTER) };
        self.pending.clear();
        out
    }
}

/// Finds stop sequences in streamed text. Text that could be the start of a stop sequence is
/// held back until it is known not to be one, so no part of a stop sequence is ever emitted.
#[derive(Debug, Default)]
struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops, held: String::new() }
    }

    /// Feed text; returns what can be emitted now and whether a stop sequence was reached (then
    /// the text before it is returned and generation must end).
    fn push(&mut self, text: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        (out, false)
    }

    /// Text held back at the end of generation (it turned out not to be a stop sequence).
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// JSON as a GBNF grammar with an object at the root (llama.cpp's `grammars/json.gbnf`, with
/// control characters excluded from strings and bounded whitespace so the model cannot pad forever).
const JSON_GBNF: &str = r#"
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array  ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( [0-9] | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws     ::= | " " | "\n" [ \t]{0,20}
"#;

#[cfg(feature = "embedded-llm")]
mod engine {
    //! The worker thread that owns the llama.cpp model and context.

    use std::num::NonZeroU32;
    use std::panic::AssertUnwindSafe;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Instant;

    use futures::StreamExt;
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::context::LlamaContext;
    use llama_cpp_2::llama_backend::LlamaBackend;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
    use llama_cpp_2::sampling::LlamaSampler;
    use llama_cpp_2::token::LlamaToken;
    use tokio::sync::{mpsc, oneshot};

    use super::{
        Counters, JobSpec, Sampling, StopMatcher, Utf8Decoder, CONSUMER_STALL_MAX, CONTEXT_TOKENS, EVENT_BUFFER, JSON_GBNF, QUEUED_JOBS_MAX,
    };
    use crate::llm::error::ProviderError;
    use crate::llm::providers::EventStream;
    use crate::llm::types::{Event, FinishReason, Usage};

    type EventTx = mpsc::Sender<Result<Event, ProviderError>>;

    /// The handle: a bounded queue into the worker thread. The thread ends when this is dropped.
    pub(super) struct Worker {
        jobs: std::sync::mpsc::SyncSender<Job>,
    }

    struct Job {
        spec: JobSpec,
        /// Told once the prompt is checked (or why it cannot run).
        accepted: oneshot::Sender<Result<(), ProviderError>>,
        events: EventTx,
        queued_at: Instant,
    }

    /// llama.cpp's backend is process-global and may be started once; its logs go to `tracing`.
    fn backend() -> Result<&'static LlamaBackend, ProviderError> {
        static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
        BACKEND
            .get_or_init(|| {
                llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
                LlamaBackend::init().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| ProviderError::Engine(format!("llama.cpp backend failed to start: {e}")))
    }

    /// Loading models and creating contexts is serialised: llama.cpp's context creation mutates
    /// the model, and two providers loading at once gain nothing on a small machine.
    static LOAD_LOCK: Mutex<()> = Mutex::new(());

    impl Worker {
        /// Start the worker thread and wait until it has loaded the model.
        /// `threads`: (generating, reading the prompt).
        pub(super) async fn start(model_path: PathBuf, threads: (usize, usize), stats: Arc<Counters>) -> Result<Worker, ProviderError> {
            let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(QUEUED_JOBS_MAX);
            let (loaded_tx, loaded_rx) = oneshot::channel::<Result<(), ProviderError>>();
            std::thread::Builder::new()
                .name("voxgate-llm".into())
                .spawn(move || worker_main(model_path, threads, jobs_rx, loaded_tx, stats))
                .map_err(|e| ProviderError::Engine(format!("cannot start the embedded model thread: {e}")))?;
            match loaded_rx.await {
                Ok(Ok(())) => Ok(Worker { jobs: jobs_tx }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProviderError::Engine("the embedded model thread stopped while loading".into())),
            }
        }

        /// Queue a job; resolves when the worker has accepted it.
        pub(super) async fn submit(&self, spec: JobSpec) -> Result<EventStream, ProviderError> {
            let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
            let (accepted_tx, accepted_rx) = oneshot::channel();
            let job = Job { spec, accepted: accepted_tx, events: events_tx, queued_at: Instant::now() };
            self.jobs.try_send(job).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    ProviderError::Engine(format!("embedded model busy: {QUEUED_JOBS_MAX} requests are already waiting"))
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => ProviderError::Engine("the embedded model thread has stopped".into()),
            })?;
            match accepted_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ProviderError::Engine("the embedded model thread dropped the request".into())),
            }
            Ok(futures::stream::unfold(events_rx, |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) }).boxed())
        }
    }

    struct Loaded {
        model: LlamaModel,
        template: LlamaChatTemplate,
    }

    fn load(model_path: &std::path::Path) -> Result<Loaded, ProviderError> {
        let backend = backend()?;
        let started = Instant::now();
        // The file the lock list pins must still be that file (size and SHA-256).
        crate::models::check_pinned(model_path).map_err(|e| ProviderError::Engine(e.to_string()))?;
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let model = LlamaModel::load_from_file(backend, model_path, &LlamaModelParams::default()).map_err(|e| {
            ProviderError::Engine(format!(
                "cannot load the embedded model {}: {e}; run `voxgate models verify`, or `voxgate models fetch` to reinstall it",
                model_path.display()
            ))
        })?;
        let template =
            model.chat_template(None).map_err(|e| ProviderError::Engine(format!("the embedded model has no usable chat template: {e}")))?;
        tracing::info!(path = %model_path.display(), load_ms = started.elapsed().as_millis() as u64, "embedded model loaded");
        Ok(Loaded { model, template })
    }

    fn worker_main(
        model_path: PathBuf,
        (threads, prompt_threads): (usize, usize),
        jobs: std::sync::mpsc::Receiver<Job>,
        loaded: oneshot::Sender<Result<(), ProviderError>>,
        stats: Arc<Counters>,
    ) {
        let Loaded { model, template } = match load(&model_path) {
            Ok(l) => l,
            Err(e) => {
                let _ = loaded.send(Err(e));
                return;
            }
        };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(CONTEXT_TOKENS))
            .with_n_batch(CONTEXT_TOKENS)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(prompt_threads as i32);
        let context = {
            let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            backend().and_then(|b| {
                model.new_context(b, params).map_err(|e| ProviderError::Engine(format!("cannot create a llama context: {e}")))
            })
        };
        let mut context = match context {
            Ok(c) => c,
            Err(e) => {
                let _ = loaded.send(Err(e));
                return;
            }
        };
        if loaded.send(Ok(())).is_err() {
            return; // Nobody waits for us any more.
        }
        let mut batch = LlamaBatch::new(CONTEXT_TOKENS as usize, 1);
        // The tokens whose keys and values the context holds, at positions 0.. (the last request's
        // prompt and what it generated): a request that starts with them reads only the rest.
        let mut cached: Vec<LlamaToken> = Vec::new();
        while let Ok(job) = jobs.recv() {
            let events = job.events.clone();
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                run_job(&model, &template, &mut context, &mut batch, &mut cached, &stats, job)
            }));
            if run.is_err() {
                cached.clear();
            }
            let (outcome, output_tokens) = match run {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!("the embedded model panicked; the request failed");
                    let _ = events.try_send(Err(ProviderError::Engine("the embedded model failed unexpectedly".into())));
                    (Outcome::Failed, 0)
                }
            };
            stats.output_tokens.fetch_add(output_tokens, Ordering::Relaxed);
            let counter = match outcome {
                Outcome::Completed => &stats.completed,
                Outcome::Cancelled => &stats.cancelled,
                Outcome::Failed => &stats.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!("embedded model worker stopped");
    }

    enum Outcome {
        Completed,
        Cancelled,
        Failed,
    }

    /// Hand an event to the consumer. False when it has gone (or stalled past the limit).
    fn deliver(events: &EventTx, event: Result<Event, ProviderError>) -> bool {
        let mut event = event;
        let mut waited_since: Option<Instant> = None;
        loop {
            match events.try_send(event) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    let since = *waited_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > CONSUMER_STALL_MAX {
                        tracing::warn!("the embedded model's consumer stopped reading; abandoning the request");
                        return false;
                    }
                    event = back;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
    }

    fn engine_err(what: &str, e: impl std::fmt::Display) -> ProviderError {
        ProviderError::Engine(format!("embedded model {what}: {e}"))
    }

    /// Prompt, decode, sample, stream. Returns how it ended and how many tokens were generated.
    fn run_job(
        model: &LlamaModel,
        template: &LlamaChatTemplate,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch<'_>,
        cached: &mut Vec<LlamaToken>,
        stats: &Counters,
        job: Job,
    ) -> (Outcome, u64) {
        let Job { spec, accepted, events, queued_at } = job;
        if events.is_closed() {
            return (Outcome::Cancelled, 0);
        }
        let started = Instant::now();
        let vocab = model.vocab();

        // The prompt, through the model's own chat template.
        let prepared = (|| {
            let chat = spec
                .messages
                .iter()
                .map(|(role, content)| LlamaChatMessage::new((*role).to_string(), content.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| engine_err("chat message", e))?;
            let prompt = model.apply_chat_template(template, &chat, true).map_err(|e| engine_err("chat template", e))?;
            let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
            let n_ctx = ctx.n_ctx();
            if tokens.len() >= n_ctx as usize {
                return Err(ProviderError::Invalid(format!(
                    "the prompt is {} tokens but the embedded model's context holds {n_ctx}; shorten the conversation",
                    tokens.len()
                )));
            }
            let mut chain = Vec::new();
            if spec.json {
                chain.push(LlamaSampler::grammar(model, JSON_GBNF, "root").map_err(|e| engine_err("JSON grammar", e))?);
            }
            match spec.sampling {
                Sampling::Greedy => chain.push(LlamaSampler::greedy()),
                Sampling::Random { temperature, top_p, seed } => {
                    if let Some(p) = top_p {
                        chain.push(LlamaSampler::top_p(p, 1));
                    }
                    chain.push(LlamaSampler::temp(temperature));
                    chain.push(LlamaSampler::dist(seed));
                }
            }
            let room = n_ctx - tokens.len() as u32;
            Ok((tokens, LlamaSampler::chain_simple(chain), spec.max_output_tokens.min(room)))
        })();
        let (tokens, mut sampler, max_new) = match prepared {
            Ok(p) => {
                if accepted.send(Ok(())).is_err() {
                    return (Outcome::Cancelled, 0);
                }
                p
            }
            Err(e) => {
                let _ = accepted.send(Err(e));
                return (Outcome::Failed, 0);
            }
        };
        let prompt_tokens = tokens.len() as u64;

        let fail = |e: ProviderError, generated: u64| {
            tracing::warn!(error = %e, "embedded model request failed");
            deliver(&events, Err(e));
            (Outcome::Failed, generated)
        };

        // Keep the cached prefix this prompt shares (a conversation's next turn repeats the whole
        // previous prompt), but always decode at least the last token, whose logits start the answer.
        let shared = cached.iter().zip(&tokens).take_while(|(a, b)| a == b).count().min(tokens.len().saturating_sub(1));
        let reused = if shared > 0 && ctx.clear_kv_cache_seq(Some(0), Some(shared as u32), None).unwrap_or(false) {
            shared
        } else {
            ctx.clear_kv_cache();
            0
        };
        cached.clear();
        batch.clear();
        for (offset, token) in tokens[reused..].iter().enumerate() {
            let position = reused + offset;
            if let Err(e) = batch.add(*token, position as i32, &[0], position + 1 == tokens.len()) {
                return fail(engine_err("prompt batch", e), 0);
            }
        }
        if let Err(e) = ctx.decode(batch) {
            return fail(engine_err("prompt decode", e), 0);
        }
        cached.extend_from_slice(&tokens);
        stats.prompt_tokens_reused.fetch_add(reused as u64, Ordering::Relaxed);
        let mut logits_at = batch.n_tokens() - 1;
        let mut position = tokens.len() as i32;
        let mut generated: u64 = 0;
        let mut first_token_at = None;
        let mut decoder = Utf8Decoder::default();
        let mut stopper = StopMatcher::new(spec.stop.clone());
        let mut collected = String::new();
        let mut hit_stop = false;

        let finish = loop {
            if events.is_closed() {
                return (Outcome::Cancelled, generated);
            }
            let token = sampler.sample(ctx, logits_at);
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            generated += 1;
            first_token_at.get_or_insert_with(Instant::now);
            let text = decoder.push(&vocab.token_to_piece(token, false, None));
            let (out, stopped) = stopper.push(&text);
            if !out.is_empty() {
                if spec.stream {
                    if !deliver(&events, Ok(Event::Text(out))) {
                        return (Outcome::Cancelled, generated);
                    }
                } else {
                    collected.push_str(&out);
                }
            }
            if stopped {
                hit_stop = true;
                break FinishReason::Stop;
            }
            if generated >= u64::from(max_new) {
                break FinishReason::Length;
            }
            batch.clear();
            if let Err(e) = batch.add(token, position, &[0], true) {
                return fail(engine_err("batch", e), generated);
            }
            position += 1;
            if let Err(e) = ctx.decode(batch) {
                cached.clear();
                return fail(engine_err("decode", e), generated);
            }
            cached.push(token);
            logits_at = 0;
        };

        // What is still held back (an unfinished character, text that looked like the start of a
        // stop sequence) belongs to the answer, unless a stop sequence ended it.
        let tail = if hit_stop {
            String::new()
        } else {
            let (more, stopped) = stopper.push(&decoder.finish());
            if stopped {
                more
            } else {
                more + &stopper.finish()
            }
        };
        if spec.stream {
            if !tail.is_empty() && !deliver(&events, Ok(Event::Text(tail))) {
                return (Outcome::Cancelled, generated);
            }
        } else {
            collected.push_str(&tail);
            if !collected.is_empty() && !deliver(&events, Ok(Event::Text(collected))) {
                return (Outcome::Cancelled, generated);
            }
        }
        let usage = Usage { input_tokens: prompt_tokens, output_tokens: generated, ..Usage::default() };
        if !deliver(&events, Ok(Event::Finish(finish))) || !deliver(&events, Ok(Event::Usage(usage))) {
            return (Outcome::Cancelled, generated);
        }

        let total = started.elapsed();
        let ttft = first_token_at.map(|t| t.duration_since(started));
        let decode_s = first_token_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        tracing::debug!(
            queue_ms = started.duration_since(queued_at).as_millis() as u64,
            prompt_tokens,
            output_tokens = generated,
            ttft_ms = ttft.map_or(0, |d| d.as_millis() as u64),
            total_ms = total.as_millis() as u64,
            tokens_per_s = if decode_s > 0.0 { (generated.saturating_sub(1)) as f64 / decode_s } else { 0.0 },
            finish = finish.as_str(),
            "embedded model answered"
        );
        (Outcome::Completed, generated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::{Content, FunctionCall, Stop, ToolCall};

    #[test]
    fn utf8_decoder_joins_characters_split_across_pieces() {
        let mut d = Utf8Decoder::default();
        let bytes = "é😀".as_bytes(); // 2 + 4 bytes
        assert_eq!(d.push(&bytes[..1]), "");
        assert_eq!(d.push(&bytes[1..3]), "é");
        assert_eq!(d.push(&bytes[3..5]), "");
        assert_eq!(d.push(&bytes[5..]), "😀");
        assert_eq!(d.finish(), "");
        // Invalid bytes become one replacement each; the rest still decodes.
        assert_eq!(d.push(b"a\xFFb"), "a\u{FFFD}b");
        // An unfinished character at the end is reported, not lost silently.
        assert_eq!(d.push(&"😀".as_bytes()[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_matcher_holds_back_possible_prefixes() {
        let mut s = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(s.push("Hello"), ("Hello".into(), false));
        assert_eq!(s.push(" there\n"), (" there".into(), false));
        assert_eq!(s.push("Us"), ("".into(), false));
        assert_eq!(s.push("er: hi"), ("".into(), true));

        let mut s = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(s.push("a\nUs"), ("a".into(), false));
        assert_eq!(s.push("ually"), ("\nUsually".into(), false));
        assert_eq!(s.push("\n"), ("".into(), false));
        assert_eq!(s.finish(), "\n");

        // The earliest of several stop sequences wins, inside one piece too.
        let mut s = StopMatcher::new(vec!["END".into(), "!".into()]);
        assert_eq!(s.push("wow! END"), ("wow".into(), true));

        let mut none = StopMatcher::new(Vec::new());
        assert_eq!(none.push("abc"), ("abc".into(), false));
    }

    #[test]
    fn messages_render_tools_as_text() {
        let messages = vec![
            Message::system("Be brief."),
            Message::user("Weather in Paris?"),
            Message::Assistant {
                content: None,
                tool_calls: Some(vec![ToolCall {
                    id: "call_1".into(),
                    kind: "function".into(),
                    function: FunctionCall { name: "weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
                }]),
                name: None,
            },
            Message::Tool { content: Content::Text("18C, sunny".into()), tool_call_id: "call_1".into() },
        ];
        assert_eq!(
            render_messages(&messages),
            vec![
                ("system", "Be brief.".to_string()),
                ("user", "Weather in Paris?".to_string()),
                ("assistant", r#"(called tool weather with {"city":"Paris"})"#.to_string()),
                ("user", "Tool result: 18C, sunny".to_string()),
            ]
        );
    }

    #[test]
    fn a_user_name_labels_the_text_in_the_template() {
        let named = |name: &str, text: &str| Message::User { content: Content::Text(text.into()), name: Some(name.into()) };
        let messages = vec![
            Message::system("Be brief."),
            named("speaker_A", "Hi, I'm calling about my reservation."),
            named("speaker_B", "Could we move it to eight?"),
            Message::user("Thanks."),
            Message::assistant("Sure."),
        ];
        assert_eq!(
            render_messages(&messages),
            vec![
                ("system", "Be brief.".to_string()),
                ("user", "speaker_A: Hi, I'm calling about my reservation.".to_string()),
                ("user", "speaker_B: Could we move it to eight?".to_string()),
                // Without a name the text is unchanged.
                ("user", "Thanks.".to_string()),
                ("assistant", "Sure.".to_string()),
            ]
        );
    }

    #[test]
    fn request_options_map_to_the_job() {
        let mut req = ChatRequest { model: "m".into(), messages: vec![Message::user("hi")], ..ChatRequest::default() };
        let spec = JobSpec::from_request(&req, true).unwrap();
        assert_eq!(spec.max_output_tokens, DEFAULT_MAX_OUTPUT_TOKENS);
        assert_eq!(spec.sampling, Sampling::Greedy);
        assert!(!spec.json);

        req.max_tokens = Some(5);
        req.temperature = Some(0.7);
        req.top_p = Some(0.9);
        req.seed = Some(42);
        req.stop = Some(Stop::Many(vec!["".into(), "\n\n".into()]));
        req.response_format = Some(ResponseFormat::JsonObject);
        let spec = JobSpec::from_request(&req, false).unwrap();
        assert_eq!(spec.max_output_tokens, 5);
        assert_eq!(spec.sampling, Sampling::Random { temperature: 0.7, top_p: Some(0.9), seed: 42 });
        assert_eq!(spec.stop, vec!["\n\n".to_string()]);
        assert!(spec.json);

        req.max_tokens = Some(0);
        assert!(matches!(JobSpec::from_request(&req, true), Err(ProviderError::Invalid(_))));
        req.max_tokens = None;
        req.temperature = Some(-1.0);
        assert!(matches!(JobSpec::from_request(&req, true), Err(ProviderError::Invalid(_))));
    }

    #[test]
    fn check_names_the_fetch_command() {
        let e = Embedded::new(PathBuf::from("/nonexistent/voxgate/model.gguf"));
        let msg = e.check().unwrap_err();
        if cfg!(feature = "embedded-llm") {
            assert!(msg.contains("voxgate models fetch") && msg.contains("/nonexistent/voxgate/model.gguf"), "{msg}");
        } else {
            assert_eq!(msg, NOT_BUILT);
        }
    }

    #[tokio::test]
    async fn send_without_a_model_file_says_to_fetch_it() {
        let e = Embedded::new(PathBuf::from("/nonexistent/voxgate/model.gguf"));
        let req = ChatRequest { model: "m".into(), messages: vec![Message::user("hi")], ..ChatRequest::default() };
        match e.send(&req, "smollm2", true).await {
            Err(ProviderError::Engine(msg)) => {
                let expected = if cfg!(feature = "embedded-llm") { "voxgate models fetch" } else { NOT_BUILT };
                assert!(msg.contains(expected), "{msg}");
            }
            Err(other) => panic!("expected an engine error, got {other}"),
            Ok(_) => panic!("expected an engine error, got a stream"),
        }
    }
}
