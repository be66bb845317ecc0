//! The durable usage ledger: voice sessions and gateway calls in SQLite (WAL, `synchronous=FULL`),
//! all storage work on one dedicated OS thread behind a cheap async handle.
//!
//! A session's row is written when it opens (a session the ledger cannot write is refused), its
//! counters and `checkpoint_ms` every `checkpoint_every`, and its final record exactly once when it
//! closes. After a crash the next [`Ledger::open`] closes rows left open at their last checkpoint
//! (`recovered`). Final records that cannot be written (read-only or full ledger) go to a fallback
//! file of JSON lines at once, are retried at every checkpoint, and are imported on the next open.
//!
//! # Layout
//! - this file: the handle ([`Ledger`], [`SessionMeter`]), the records and queries, the commands
//!   the handle sends to the thread;
//! - `actor`: the thread that owns the store: open sessions, batching, checkpoints, pending
//!   records, recovery; the store is touched only from there;
//! - `store`: the `Store` trait, what the thread needs from a durable store (the seam for a
//!   second store);
//! - `sqlite`: the SQLite store (connection, WAL, migrations, rows, queries, `<ledger>.lock`);
//! - `fallback`: the fallback file (append and sync a line, read it back for the import).

mod actor;
mod fallback;
mod sqlite;
mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::billing::{amount, billed_seconds, Amount};
use super::speech::{SpeechLine, SpeechPrices, SpeechTotal, SpeechUsage, Stage};
use super::{Clock, SystemClock};

/// Commands waiting for the ledger thread; senders wait (async) when it is full.
const COMMANDS_MAX: usize = 1024;
/// At most this many rows from [`Ledger::sessions`].
pub const SESSIONS_QUERY_MAX: usize = 10_000;

/// Gateway requests written in one transaction at most.
const REQUEST_BATCH_MAX: usize = 512;
/// How long a gateway request may wait for others to share its transaction (and its sync). The
/// caller never waits for it; a crash within this window loses at most these records' rows, as a
/// crash before the write would.
const REQUEST_BATCH_WAIT: Duration = Duration::from_millis(20);
/// Sessions appear under this prefix and their protocol when usage is grouped by model.
pub const SESSION_MODEL_GROUP_PREFIX: &str = "session:";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The ledger cannot be written: new sessions are refused so that none runs unbilled.
    #[error("the usage ledger cannot be written ({0}); new sessions are refused until it can")]
    Unavailable(String),
    #[error("session {0} is already in the ledger")]
    Duplicate(String),
    #[error("the usage ledger has shut down")]
    Closed,
    #[error("usage ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("usage ledger file: {0}")]
    Io(#[from] std::io::Error),
    #[error("usage ledger: {0}")]
    Schema(String),
    /// Another process holds the ledger: two servers writing one ledger would each take the
    /// other's open sessions for a crash's leftovers and close them as `recovered`.
    #[error(
        "the usage ledger {0} is in use by another voxgate process; give each server its own ledger ([metering] ledger or VOXGATE_LEDGER)"
    )]
    InUse(String),
}

impl LedgerError {
    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerError::Unavailable(_) => "unavailable",
            LedgerError::Duplicate(_) => "duplicate",
            LedgerError::Closed => "closed",
            LedgerError::Sqlite(_) => "sqlite",
            LedgerError::Io(_) => "io",
            LedgerError::Schema(_) => "schema",
            LedgerError::InUse(_) => "in_use",
        }
    }
}

/// How to open a ledger; [`Ledger::open`] fills in the system clock.
pub struct LedgerOptions {
    pub path: PathBuf,
    /// JSON lines of final records that could not be written to `path`; imported on open.
    pub fallback_path: PathBuf,
    pub checkpoint_every: Duration,
    pub clock: Arc<dyn Clock>,
}

/// A session as it starts.
#[derive(Debug, Clone)]
pub struct SessionStart {
    pub id: String,
    pub key_id: String,
    /// `realtime`, `twilio`, …
    pub protocol: String,
    pub rate_microusd_per_hour: u64,
    /// When the connection opened (the ledger's clock), if the record is opened later: a Twilio
    /// call is known (its key, its rate) only at its `start` frame, but billed from the WebSocket's
    /// opening. `None`, or a time after now, starts the session now.
    pub opened_ms: Option<i64>,
}

/// One session as stored. While it is open `ended_ms` and `close_reason` are `None` and the
/// billing fields are as of `checkpoint_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub key_id: String,
    pub protocol: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub checkpoint_ms: i64,
    pub billed_seconds: u64,
    pub rate_microusd_per_hour: u64,
    pub amount: Amount,
    /// What the session said (`client_closed`, `client_not_reading`, `server_shutdown`), or the
    /// ledger's own: `dropped`, `shutdown`, `recovered` (see `docs/metering.md`).
    pub close_reason: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// For information: the flat rate bundles the gateway tokens.
    pub token_cost_picousd: u64,
    pub stt_audio_ms: u64,
    pub tts_chars: u64,
    pub turns: u64,
    /// What the speech-to-text audio cost at its engines' list prices (sum of the `stt` lines).
    /// Absent from records written before speech was priced: 0.
    #[serde(default)]
    pub stt_cost_picousd: u64,
    /// What the text-to-speech characters cost at their engines' list prices (the `tts` lines).
    #[serde(default)]
    pub tts_cost_picousd: u64,
    /// Speech per stage and engine: quantity, list price and cost.
    #[serde(default)]
    pub speech: Vec<SpeechLine>,
}

impl SessionRecord {
    /// The gateway tokens' list-price cost (the same as `token_cost_picousd`).
    pub fn llm_cost_picousd(&self) -> u64 {
        self.token_cost_picousd
    }

    /// What the session cost its operator at the vendors' list prices: LLM tokens, speech-to-text
    /// and text-to-speech, in picodollars.
    pub fn vendor_cost_picousd(&self) -> u64 {
        self.token_cost_picousd.saturating_add(self.stt_cost_picousd).saturating_add(self.tts_cost_picousd)
    }

    /// The flat-rate charge less the vendor cost, in picodollars (negative when the vendors cost
    /// more than the session was billed). The charge is [`Amount::picousd`], exact at any rate that
    /// is a multiple of 9 µUSD/h (the default is) and otherwise within half a picodollar.
    pub fn margin_picousd(&self) -> i128 {
        margin_picousd(self.amount, self.vendor_cost_picousd())
    }
}

/// `charge − vendor_cost` in picodollars.
pub fn margin_picousd(charge: Amount, vendor_cost_picousd: u64) -> i128 {
    i128::try_from(charge.picousd()).unwrap_or(i128::MAX) - vendor_cost_picousd as i128
}

/// One standalone gateway call, billed per token at list price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unique per call (the completion id); recording the same id twice keeps the first.
    pub id: String,
    pub ts_ms: i64,
    pub key_id: String,
    pub model: String,
    /// `ok`, `error`, `cancelled` (see `llm::usage::Outcome`), with `_estimated` added when the
    /// upstream never reported usage and the tokens are voxgate's estimate.
    pub outcome: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_picousd: u64,
    pub latency_ms: u64,
}

/// Sessions that started in `from_ms..to_ms`, optionally of one key.
#[derive(Debug, Clone)]
pub struct SessionQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    /// Requests by model; sessions under `session:PROTOCOL`.
    Model,
    /// UTC calendar day (`YYYY-MM-DD`) a session started or a request was made.
    Day,
}

/// Closed sessions that started, and requests made, in `from_ms..to_ms`.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub group_by: GroupBy,
}

/// Usage of one group: billed voice time and its amount, and gateway calls at list price.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub group: String,
    pub sessions: u64,
    pub billed_seconds: u64,
    /// What the sessions cost at their flat rates (exact; round the total, not the parts).
    pub sessions_amount: Amount,
    /// For information: gateway tokens used inside the sessions and their list price.
    pub session_input_tokens: u64,
    pub session_output_tokens: u64,
    pub session_cached_tokens: u64,
    pub session_token_cost_picousd: u64,
    pub requests: u64,
    pub request_input_tokens: u64,
    pub request_output_tokens: u64,
    pub request_cached_tokens: u64,
    pub request_cost_picousd: u64,
    /// The sessions' speech at list price, per stage (for information, as the tokens are).
    pub session_stt_cost_picousd: u64,
    pub session_tts_cost_picousd: u64,
    /// The sessions' speech per stage and engine.
    pub session_speech: Vec<SpeechTotal>,
}

impl UsageRow {
    /// The sessions' vendor cost: tokens, speech-to-text and text-to-speech at list price.
    pub fn session_vendor_cost_picousd(&self) -> u64 {
        self.session_token_cost_picousd.saturating_add(self.session_stt_cost_picousd).saturating_add(self.session_tts_cost_picousd)
    }

    /// The sessions' flat-rate amount less their vendor cost, in picodollars.
    pub fn session_margin_picousd(&self) -> i128 {
        margin_picousd(self.sessions_amount, self.session_vendor_cost_picousd())
    }
}

/// What [`Ledger::open`] repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Sessions left open by a crash, closed at their last checkpoint as `recovered`.
    pub recovered_sessions: Vec<String>,
    pub imported_sessions: usize,
    pub imported_requests: usize,
    /// Fallback lines already in the ledger (imported before, or written later): skipped.
    pub fallback_duplicates: usize,
    /// Fallback lines that did not parse (a write torn by a crash): skipped and logged.
    pub fallback_unreadable_lines: usize,
}

/// Faults for tests: real SQLite errors on the live connection.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// `PRAGMA query_only`: every write fails as on a read-only file.
    ReadOnly,
    /// `PRAGMA max_page_count` at the current size: writes that need a new page fail as SQLITE_FULL.
    Full,
}

/// A session's counters, shared between its [`SessionMeter`] (adds) and the ledger thread (reads
/// at checkpoints): relaxed atomics, no lock.
#[derive(Debug)]
struct Counters {
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    token_cost_picousd: AtomicU64,
    stt_audio_ms: AtomicU64,
    tts_chars: AtomicU64,
    turns: AtomicU64,
    /// Speech per stage and engine: touched once per utterance and per spoken chunk by the session,
    /// and at checkpoints by the ledger thread; never per audio frame.
    speech: std::sync::Mutex<SpeechUsage>,
    /// When the meter was dropped without `close`, or `NOT_DROPPED`.
    dropped_at_ms: AtomicI64,
}

const NOT_DROPPED: i64 = i64::MIN;

impl Counters {
    fn new() -> Counters {
        Counters {
            input_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            token_cost_picousd: AtomicU64::new(0),
            stt_audio_ms: AtomicU64::new(0),
            tts_chars: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            speech: std::sync::Mutex::new(SpeechUsage::default()),
            dropped_at_ms: AtomicI64::new(NOT_DROPPED),
        }
    }
}

impl Counters {
    fn speech(&self) -> std::sync::MutexGuard<'_, SpeechUsage> {
        self.speech.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn bump(a: &AtomicU64, n: u64) {
    // Saturating: a counter never wraps to a small number.
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(n)));
}

/// What the handle asks of the ledger thread; each command that waits carries its reply.
enum Command {
    Open {
        start: SessionStart,
        counters: Arc<Counters>,
        reply: oneshot::Sender<Result<i64, LedgerError>>,
    },
    Close {
        id: String,
        reason: String,
        /// When the session ended, if not now: a client that vanished is billed to its last sign of life.
        ended_ms: Option<i64>,
        reply: oneshot::Sender<()>,
    },
    /// A meter was dropped: close what was dropped now rather than at the next checkpoint.
    Dropped,
    Request {
        record: RequestRecord,
        reply: oneshot::Sender<Result<(), LedgerError>>,
    },
    Session {
        id: String,
        reply: oneshot::Sender<Result<Option<SessionRecord>, LedgerError>>,
    },
    Sessions {
        query: SessionQuery,
        reply: oneshot::Sender<Result<Vec<SessionRecord>, LedgerError>>,
    },
    Usage {
        query: UsageQuery,
        reply: oneshot::Sender<Result<Vec<UsageRow>, LedgerError>>,
    },
    Checkpoint {
        reply: oneshot::Sender<()>,
    },
    Fault {
        fault: Fault,
        reply: oneshot::Sender<Result<(), LedgerError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The handle: cheap to clone; the ledger thread ends at [`Ledger::shutdown`] or when every handle
/// and every [`SessionMeter`] is gone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Command>,
    requests: Arc<RequestBuffer>,
    clock: Arc<dyn Clock>,
}

/// Gateway requests waiting for the ledger thread. The gateway's hot path only pushes under an
/// uncontended lock; the ledger thread is woken once per batch (when the buffer stops being
/// empty, and again if it fills), not once per request: at thousands of requests a second the
/// wake-ups, not the inserts, were what other requests waited behind.
struct RequestBuffer {
    rows: std::sync::Mutex<RequestRows>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct RequestRows {
    rows: Vec<RequestRecord>,
    /// Set when the ledger thread has finished: later records cannot be written.
    closed: bool,
}

impl RequestBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, RequestRows> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (creating and migrating) the ledger at `path` with the system clock, imports the
    /// fallback file, and closes sessions a crash left open at their last checkpoint.
    pub async fn open(path: &Path, fallback_path: &Path, checkpoint_every: Duration) -> Result<(Ledger, RecoveryReport), LedgerError> {
        Ledger::open_with(LedgerOptions {
            path: path.to_path_buf(),
            fallback_path: fallback_path.to_path_buf(),
            checkpoint_every,
            clock: Arc::new(SystemClock),
        })
        .await
    }

    pub async fn open_with(options: LedgerOptions) -> Result<(Ledger, RecoveryReport), LedgerError> {
        let (tx, rx) = mpsc::channel(COMMANDS_MAX);
        let clock = options.clock.clone();
        let requests = Arc::new(RequestBuffer { rows: Default::default(), wake: tokio::sync::Notify::new() });
        let ready = actor::spawn(options, rx, requests.clone())?;
        let report = ready.await.map_err(|_| LedgerError::Closed)??;
        Ok((Ledger { tx, requests, clock }, report))
    }

    /// The ledger's clock, for stamping [`RequestRecord::ts_ms`].
    pub fn now_unix_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    async fn ask<T: Send + 'static>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| LedgerError::Closed)?;
        wait_for_ledger(rx).await.ok_or(LedgerError::Closed)
    }

    /// Records a gateway call without waiting for the write (the gateway's hot path): the record
    /// joins a buffer written within `REQUEST_BATCH_WAIT`; one the ledger cannot write still goes
    /// to the fallback file. After shutdown the record is logged as lost.
    pub fn record_request_nowait(&self, record: RequestRecord) {
        let wake = {
            let mut buffer = self.requests.lock();
            if buffer.closed {
                tracing::error!(request_id = %record.id, "the ledger has shut down: a gateway request was not recorded");
                return;
            }
            buffer.rows.push(record);
            buffer.rows.len() == 1 || buffer.rows.len() == REQUEST_BATCH_MAX
        };
        if wake {
            self.requests.wake.notify_one();
        }
    }

    /// Writes the session's opening row, or refuses with [`LedgerError::Unavailable`] when the
    /// ledger cannot be written.
    pub async fn open_session(&self, start: SessionStart) -> Result<SessionMeter, LedgerError> {
        let counters = Arc::new(Counters::new());
        let (id, rate) = (start.id.clone(), start.rate_microusd_per_hour);
        let shared = counters.clone();
        let started_ms = self.ask(|reply| Command::Open { start, counters: shared, reply }).await??;
        Ok(SessionMeter {
            id,
            started_ms,
            rate_microusd_per_hour: rate,
            counters,
            speech_prices: Arc::new(SpeechPrices::default()),
            tx: self.tx.clone(),
            clock: self.clock.clone(),
            closed: false,
        })
    }

    /// Records a gateway call. Written to the ledger, or (when it cannot be written) to the
    /// fallback file, to be imported later; an error only when neither could be written.
    pub async fn record_request(&self, record: RequestRecord) -> Result<(), LedgerError> {
        self.ask(|reply| Command::Request { record, reply }).await?
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>, LedgerError> {
        let id = id.to_string();
        self.ask(|reply| Command::Session { id, reply }).await?
    }

    /// Sessions (open ones included) that started in `from_ms..to_ms`, oldest first, at most
    /// [`SESSIONS_QUERY_MAX`].
    pub async fn sessions(&self, query: SessionQuery) -> Result<Vec<SessionRecord>, LedgerError> {
        self.ask(|reply| Command::Sessions { query, reply }).await?
    }

    pub async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, LedgerError> {
        self.ask(|reply| Command::Usage { query, reply }).await?
    }

    /// Checkpoints open sessions and retries pending records now (it also happens every
    /// `checkpoint_every`).
    pub async fn checkpoint(&self) -> Result<(), LedgerError> {
        self.ask(|reply| Command::Checkpoint { reply }).await
    }

    /// Closes sessions still open (`shutdown`), writes what is pending (to the fallback file when
    /// the ledger still cannot be written) and stops the ledger thread. Later calls get `Closed`.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }

    #[doc(hidden)]
    pub async fn inject_fault(&self, fault: Fault) -> Result<(), LedgerError> {
        self.ask(|reply| Command::Fault { fault, reply }).await?
    }
}

/// One live session's meter, owned by the session's task: counting is a relaxed atomic add.
pub struct SessionMeter {
    id: String,
    started_ms: i64,
    rate_microusd_per_hour: u64,
    counters: Arc<Counters>,
    /// The list price of each speech engine; an engine it does not know is recorded without a price.
    speech_prices: Arc<SpeechPrices>,
    tx: mpsc::Sender<Command>,
    clock: Arc<dyn Clock>,
    closed: bool,
}

impl std::fmt::Debug for SessionMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMeter").field("id", &self.id).field("started_ms", &self.started_ms).finish_non_exhaustive()
    }
}

impl SessionMeter {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    pub fn add_usage(&mut self, input_tokens: u64, output_tokens: u64, cached_tokens: u64, cost_picousd: u64) {
        bump(&self.counters.input_tokens, input_tokens);
        bump(&self.counters.output_tokens, output_tokens);
        bump(&self.counters.cached_tokens, cached_tokens);
        bump(&self.counters.token_cost_picousd, cost_picousd);
    }

    /// The speech engines' list prices this session's speech is priced at (none until set: every
    /// engine is then recorded without a price).
    pub fn set_speech_prices(&mut self, prices: Arc<SpeechPrices>) {
        self.speech_prices = prices;
    }

    /// `ms` of audio sent to the speech-to-text engine `engine` (the name it runs under).
    pub fn add_stt_audio_ms(&mut self, engine: &str, ms: u64) {
        bump(&self.counters.stt_audio_ms, ms);
        let price = self.speech_prices.price(Stage::Stt, engine);
        self.counters.speech().add(Stage::Stt, engine, ms, price);
    }

    /// `n` characters sent to the text-to-speech engine `engine`.
    pub fn add_tts_chars(&mut self, engine: &str, n: u64) {
        bump(&self.counters.tts_chars, n);
        let price = self.speech_prices.price(Stage::Tts, engine);
        self.counters.speech().add(Stage::Tts, engine, n, price);
    }

    pub fn add_turn(&mut self) {
        bump(&self.counters.turns, 1);
    }

    /// Billed seconds and amount if the session ended at `now_unix_ms` (the live meter).
    pub fn so_far(&self, now_unix_ms: i64) -> (u64, Amount) {
        let s = billed_seconds(self.started_ms, now_unix_ms);
        (s, amount(s, self.rate_microusd_per_hour))
    }

    /// Ends the session now and waits until its final record is written (to the ledger, or to the
    /// fallback file when the ledger cannot be written). Exactly once: a session already closed
    /// (by shutdown) stays as it was.
    pub async fn close(self, reason: &str) {
        self.close_with(reason, None).await
    }

    /// Ends the session as [`SessionMeter::close`] does, but at `ended_ms` on the ledger's clock (the
    /// client's last sign of life, when it vanished without closing): possibly before the last
    /// checkpoint, never before the start nor after now.
    pub async fn close_at(self, reason: &str, ended_ms: i64) {
        self.close_with(reason, Some(ended_ms)).await
    }

    async fn close_with(mut self, reason: &str, ended_ms: Option<i64>) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close { id: self.id.clone(), reason: reason.to_string(), ended_ms, reply }).await.is_ok() {
            self.closed = true;
            let _ = wait_for_ledger(rx).await;
        }
    }

    /// Now on the ledger's clock.
    pub fn now_unix_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }
}

/// Waits for the ledger thread's reply. The wait runs on the blocking pool, which also tells a
/// paused test clock that work is under way elsewhere (tokio does not auto-advance time while
/// blocking tasks run), so tests with paused time see the ledger as instant, as it nearly is.
async fn wait_for_ledger<T: Send + 'static>(rx: oneshot::Receiver<T>) -> Option<T> {
    tokio::task::spawn_blocking(move || rx.blocking_recv().ok()).await.ok().flatten()
}

impl Drop for SessionMeter {
    fn drop(&mut self) {
        if !self.closed {
            // The ledger thread closes it (`dropped`, at this time) on this nudge or, if its queue
            // is full, at the next checkpoint: never lost.
            self.counters.dropped_at_ms.store(self.clock.now_unix_ms(), Ordering::SeqCst);
            let _ = self.tx.try_send(Command::Dropped);
        }
    }
}

/// What the unit tests of the ledger's parts share: a fresh directory, options with a manual clock.
#[cfg(test)]
mod test_support {
    use super::*;
    use crate::metering::ManualClock;

    pub(super) fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("voxgate-ledger-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub(super) fn options(d: &Path, clock: Arc<ManualClock>) -> LedgerOptions {
        LedgerOptions {
            path: d.join("ledger.sqlite"),
            fallback_path: d.join("ledger.fallback.jsonl"),
            checkpoint_every: Duration::from_secs(3600),
            clock,
        }
    }

    pub(super) async fn open(d: &Path, clock: Arc<ManualClock>) -> (Ledger, RecoveryReport) {
        Ledger::open_with(options(d, clock)).await.unwrap()
    }

    pub(super) fn start(id: &str) -> SessionStart {
        SessionStart { id: id.into(), key_id: "k".into(), protocol: "realtime".into(), rate_microusd_per_hour: 4_500_000, opened_ms: None }
    }
}
