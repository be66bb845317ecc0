//! The durable usage ledger: voice sessions and gateway calls in SQLite (WAL, `synchronous=FULL`),
//! all database work on one dedicated OS thread behind a cheap async handle.
//!
//! A session's row is written when it opens (a session the ledger cannot write is refused), its
//! counters and `checkpoint_ms` every `checkpoint_every`, and its final record exactly once when it
//! closes. After a crash the next [`Ledger::open`] closes rows left open at their last checkpoint
//! (`recovered`). Final records that cannot be written (read-only or full ledger) go to a fallback
//! file of JSON lines at once, are retried at every checkpoint, and are imported on the next open.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::billing::{amount, billed_seconds, Amount};
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
/// The schema, one migration per version; version N has applied the first N.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    protocol TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    checkpoint_ms INTEGER NOT NULL,
    billed_seconds INTEGER NOT NULL,
    rate_microusd_per_hour INTEGER NOT NULL,
    amount_microusd_seconds_per_hour INTEGER NOT NULL,
    close_reason TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    token_cost_picousd INTEGER NOT NULL,
    stt_audio_ms INTEGER NOT NULL,
    tts_chars INTEGER NOT NULL,
    turns INTEGER NOT NULL
);
CREATE INDEX sessions_started ON sessions (started_ms);
CREATE INDEX sessions_key_started ON sessions (key_id, started_ms);
CREATE INDEX sessions_open ON sessions (id) WHERE ended_ms IS NULL;
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_picousd INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL
);
CREATE INDEX requests_ts ON requests (ts_ms);
CREATE INDEX requests_key_ts ON requests (key_id, ts_ms);
"];

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

/// Why a write failed, in words for [`LedgerError::Unavailable`].
fn unwritable(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::ReadOnly) => format!("the ledger file is read-only: {e}"),
        Some(ErrorCode::DiskFull) => format!("the ledger or its disk is full: {e}"),
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => format!("the ledger file cannot be opened for writing: {e}"),
        _ => e.to_string(),
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
}

/// One standalone gateway call, billed per token at list price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unique per call (the completion id); recording the same id twice keeps the first.
    pub id: String,
    pub ts_ms: i64,
    pub key_id: String,
    pub model: String,
    /// `ok`, `error`, `cancelled` (see `llm::usage::Outcome`).
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
            dropped_at_ms: AtomicI64::new(NOT_DROPPED),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    // Saturating: a counter never wraps to a small number.
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(n)));
}

enum Command {
    Open {
        start: SessionStart,
        counters: Arc<Counters>,
        reply: oneshot::Sender<Result<i64, LedgerError>>,
    },
    Close {
        id: String,
        reason: String,
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
        let (ready_tx, ready_rx) = oneshot::channel();
        let clock = options.clock.clone();
        let requests = Arc::new(RequestBuffer { rows: Default::default(), wake: tokio::sync::Notify::new() });
        let buffer = requests.clone();
        std::thread::Builder::new().name("ledger".into()).spawn(move || {
            lower_priority();
            let actor = match Actor::start(&options, buffer) {
                Ok((actor, report)) => {
                    let _ = ready_tx.send(Ok(report));
                    actor
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt.block_on(actor.run(rx, options.checkpoint_every)),
                Err(e) => {
                    tracing::error!(error = %e, "ledger thread cannot start its timer; finishing at once");
                    actor.finish();
                }
            }
        })?;
        let report = ready_rx.await.map_err(|_| LedgerError::Closed)??;
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

    pub fn add_stt_audio_ms(&mut self, ms: u64) {
        bump(&self.counters.stt_audio_ms, ms);
    }

    pub fn add_tts_chars(&mut self, n: u64) {
        bump(&self.counters.tts_chars, n);
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
    pub async fn close(mut self, reason: &str) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close { id: self.id.clone(), reason: reason.to_string(), reply }).await.is_ok() {
            self.closed = true;
            let _ = wait_for_ledger(rx).await;
        }
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

struct OpenSession {
    key_id: String,
    protocol: String,
    started_ms: i64,
    checkpoint_ms: i64,
    rate_microusd_per_hour: u64,
    counters: Arc<Counters>,
}

impl OpenSession {
    fn record(&self, id: &str, end_ms: i64, close_reason: Option<String>) -> SessionRecord {
        let billed = billed_seconds(self.started_ms, end_ms);
        let c = &self.counters;
        SessionRecord {
            id: id.to_string(),
            key_id: self.key_id.clone(),
            protocol: self.protocol.clone(),
            started_ms: self.started_ms,
            ended_ms: close_reason.is_some().then_some(end_ms),
            checkpoint_ms: end_ms,
            billed_seconds: billed,
            rate_microusd_per_hour: self.rate_microusd_per_hour,
            amount: amount(billed, self.rate_microusd_per_hour),
            close_reason,
            input_tokens: c.input_tokens.load(Ordering::Relaxed),
            output_tokens: c.output_tokens.load(Ordering::Relaxed),
            cached_tokens: c.cached_tokens.load(Ordering::Relaxed),
            token_cost_picousd: c.token_cost_picousd.load(Ordering::Relaxed),
            stt_audio_ms: c.stt_audio_ms.load(Ordering::Relaxed),
            tts_chars: c.tts_chars.load(Ordering::Relaxed),
            turns: c.turns.load(Ordering::Relaxed),
        }
    }
}

/// A final record the ledger could not take yet: one JSON object a line, `{"session": {..}}` or
/// `{"request": {..}}` (externally tagged: an internally tagged enum cannot carry a u128).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FallbackLine {
    Session(SessionRecord),
    Request(RequestRecord),
}

impl FallbackLine {
    fn session_id(&self) -> Option<&str> {
        match self {
            FallbackLine::Session(s) => Some(&s.id),
            FallbackLine::Request(_) => None,
        }
    }
}

struct Pending {
    line: FallbackLine,
    in_fallback_file: bool,
}

/// The ledger thread's state.
struct Actor {
    conn: Connection,
    /// An exclusive lock on `<ledger>.lock`, held while the ledger is open (released by the OS
    /// when the process dies, so a crash never leaves it locked).
    _lock: std::fs::File,
    requests: Arc<RequestBuffer>,
    fallback_path: PathBuf,
    clock: Arc<dyn Clock>,
    open: HashMap<String, OpenSession>,
    pending: Vec<Pending>,
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn open_connection(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path).map_err(|e| LedgerError::Unavailable(unwritable(&e)))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| LedgerError::Unavailable(unwritable(&e)))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Unavailable(format!("the ledger cannot use WAL mode (journal_mode is {mode})")));
    }
    // FULL: every commit is synced to the WAL before the call returns, so a session that was
    // admitted survives a power cut too; NORMAL would survive a process crash but could lose the
    // last commits (an opening row, a final record) on power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Gives the calling thread a lower scheduling priority (nice 10), so that writing the ledger
/// never delays a request or an audio frame on a busy machine: the ledger's work is not urgent
/// (sessions wait for it only when they open and close), it is only owed eventually.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id, no pointers involved.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        if done != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "the ledger thread keeps its priority");
        }
    }
}

/// Takes `<ledger>.lock` for this process, or says who has it.
fn lock_ledger(path: &Path) -> Result<std::fs::File, LedgerError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&name)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LedgerError::InUse(path.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(LedgerError::Io(e)),
    }
}

/// Brings the schema up to date in one write transaction: the version is read under the same
/// lock that applies the migrations, so two openers never both apply one.
fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| LedgerError::Unavailable(unwritable(&e)))?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(|e| LedgerError::Unavailable(unwritable(&e)))?;
    let version: i64 = tx.query_row("SELECT coalesce(max(version), 0) FROM schema_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(LedgerError::Schema(format!(
            "the ledger's schema is version {version}, newer than this voxgate knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [n as i64 + 1])?;
    }
    tx.commit()?;
    Ok(())
}

const SESSION_COLUMNS: &str = "id, key_id, protocol, started_ms, ended_ms, checkpoint_ms, billed_seconds, rate_microusd_per_hour, \
     amount_microusd_seconds_per_hour, close_reason, input_tokens, output_tokens, cached_tokens, token_cost_picousd, stt_audio_ms, \
     tts_chars, turns";

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        key_id: r.get(1)?,
        protocol: r.get(2)?,
        started_ms: r.get(3)?,
        ended_ms: r.get(4)?,
        checkpoint_ms: r.get(5)?,
        billed_seconds: u(r.get(6)?),
        rate_microusd_per_hour: u(r.get(7)?),
        amount: Amount::from_units(u(r.get(8)?) as u128),
        close_reason: r.get(9)?,
        input_tokens: u(r.get(10)?),
        output_tokens: u(r.get(11)?),
        cached_tokens: u(r.get(12)?),
        token_cost_picousd: u(r.get(13)?),
        stt_audio_ms: u(r.get(14)?),
        tts_chars: u(r.get(15)?),
        turns: u(r.get(16)?),
    })
}

/// Inserts `s`, or completes the row if it is still open. Returns 0 when the row was already
/// closed: a final record is applied at most once.
fn put_session(conn: &Connection, s: &SessionRecord) -> rusqlite::Result<usize> {
    let sql = format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
         ON CONFLICT (id) DO UPDATE SET ended_ms = excluded.ended_ms, checkpoint_ms = excluded.checkpoint_ms, \
         billed_seconds = excluded.billed_seconds, amount_microusd_seconds_per_hour = excluded.amount_microusd_seconds_per_hour, \
         close_reason = excluded.close_reason, input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, \
         cached_tokens = excluded.cached_tokens, token_cost_picousd = excluded.token_cost_picousd, stt_audio_ms = excluded.stt_audio_ms, \
         tts_chars = excluded.tts_chars, turns = excluded.turns WHERE sessions.ended_ms IS NULL"
    );
    conn.prepare(&sql)?.execute(params![
        s.id,
        s.key_id,
        s.protocol,
        s.started_ms,
        s.ended_ms,
        s.checkpoint_ms,
        i(s.billed_seconds),
        i(s.rate_microusd_per_hour),
        i64::try_from(s.amount.units()).unwrap_or(i64::MAX),
        s.close_reason,
        i(s.input_tokens),
        i(s.output_tokens),
        i(s.cached_tokens),
        i(s.token_cost_picousd),
        i(s.stt_audio_ms),
        i(s.tts_chars),
        i(s.turns),
    ])
}

const INSERT_REQUEST: &str = "INSERT OR IGNORE INTO requests (id, ts_ms, key_id, model, outcome, input_tokens, output_tokens, \
     cached_tokens, cost_picousd, latency_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

type RequestRow<'a> = (&'a str, i64, &'a str, &'a str, &'a str, i64, i64, i64, i64, i64);

fn request_row(r: &RequestRecord) -> RequestRow<'_> {
    (
        &r.id,
        r.ts_ms,
        &r.key_id,
        &r.model,
        &r.outcome,
        i(r.input_tokens),
        i(r.output_tokens),
        i(r.cached_tokens),
        i(r.cost_picousd),
        i(r.latency_ms),
    )
}

fn put_request(conn: &Connection, r: &RequestRecord) -> rusqlite::Result<usize> {
    conn.prepare(INSERT_REQUEST)?.execute(request_row(r))
}

fn put_line(conn: &Connection, line: &FallbackLine) -> rusqlite::Result<usize> {
    match line {
        FallbackLine::Session(s) => put_session(conn, s),
        FallbackLine::Request(r) => put_request(conn, r),
    }
}

/// Appends one JSON line and syncs it. A line torn by an earlier crash is ended first, so it
/// cannot swallow this one.
fn append_fallback(path: &Path, line: &FallbackLine) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            text.insert(0, '\n');
        }
    }
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    if created {
        sync_dir(path);
    }
    Ok(())
}

/// Makes a file's creation or removal durable (best effort: not every platform syncs a directory).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Actor {
    fn start(options: &LedgerOptions, requests: Arc<RequestBuffer>) -> Result<(Actor, RecoveryReport), LedgerError> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = lock_ledger(&options.path)?;
        let mut conn = open_connection(&options.path)?;
        migrate(&mut conn)?;
        let report = recover(&mut conn, &options.fallback_path)?;
        let actor = Actor {
            conn,
            _lock: lock,
            requests,
            fallback_path: options.fallback_path.clone(),
            clock: options.clock.clone(),
            open: HashMap::new(),
            pending: Vec::new(),
        };
        Ok((actor, report))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, checkpoint_every: Duration) {
        let mut ticks = tokio::time::interval(checkpoint_every.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate
                            // When the buffered gateway requests are written: REQUEST_BATCH_WAIT after the first one
                            // arrived, so the work comes in small, even slices (one transaction, one sync each).
        let mut flush_at: Option<tokio::time::Instant> = None;
        let shutdown_reply = loop {
            tokio::select! {
                command = rx.recv() => match command {
                    None => break None,
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.handle(command),
                },
                () = self.requests.wake.notified() => {
                    if self.requests.lock().rows.len() >= REQUEST_BATCH_MAX {
                        flush_at = None;
                        self.write_requests();
                    } else {
                        flush_at.get_or_insert_with(|| tokio::time::Instant::now() + REQUEST_BATCH_WAIT);
                    }
                }
                () = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    flush_at = None;
                    self.write_requests();
                }
                _ = ticks.tick() => self.checkpoint(),
            }
        };
        rx.close();
        // Closes answered after this point see `Closed`; their sessions are closed below.
        self.finish();
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn handle(&mut self, command: Command) {
        // Buffered requests first: a query sees every request recorded before it was asked.
        self.write_requests();
        match command {
            Command::Open { start, counters, reply } => {
                let _ = reply.send(self.open_session(start, counters));
            }
            Command::Close { id, reason, reply } => {
                let now = self.clock.now_unix_ms();
                self.close_session(&id, reason, now);
                let _ = reply.send(());
            }
            Command::Dropped => self.close_dropped(),
            Command::Request { record, reply } => {
                let _ = reply.send(self.write_or_fallback(FallbackLine::Request(record)));
            }
            Command::Session { id, reply } => {
                let _ = reply.send(self.query_session(&id));
            }
            Command::Sessions { query, reply } => {
                let _ = reply.send(self.query_sessions(&query));
            }
            Command::Usage { query, reply } => {
                let _ = reply.send(self.query_usage(&query));
            }
            Command::Checkpoint { reply } => {
                self.checkpoint();
                let _ = reply.send(());
            }
            Command::Fault { fault, reply } => {
                let _ = reply.send(self.set_fault(fault));
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn open_session(&mut self, start: SessionStart, counters: Arc<Counters>) -> Result<i64, LedgerError> {
        if self.open.contains_key(&start.id) {
            return Err(LedgerError::Duplicate(start.id));
        }
        let now = self.clock.now_unix_ms();
        let started_ms = start.opened_ms.map_or(now, |opened| opened.min(now));
        let session = OpenSession {
            key_id: start.key_id,
            protocol: start.protocol,
            started_ms,
            checkpoint_ms: now,
            rate_microusd_per_hour: start.rate_microusd_per_hour,
            counters,
        };
        let row = session.record(&start.id, now, None);
        let inserted = self
            .conn
            .prepare(&format!(
                "INSERT OR IGNORE INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8, NULL, 0, 0, 0, 0, 0, 0, 0)"
            ))
            .and_then(|mut st| {
                st.execute(params![
                    row.id,
                    row.key_id,
                    row.protocol,
                    row.started_ms,
                    row.checkpoint_ms,
                    i(row.billed_seconds),
                    i(row.rate_microusd_per_hour),
                    i64::try_from(row.amount.units()).unwrap_or(i64::MAX)
                ])
            });
        match inserted {
            Ok(1) => {
                self.open.insert(start.id, session);
                Ok(started_ms)
            }
            Ok(_) => Err(LedgerError::Duplicate(start.id)),
            Err(e) => {
                tracing::warn!(session_id = %start.id, error = %e, "ledger refuses a session: cannot write");
                Err(LedgerError::Unavailable(unwritable(&e)))
            }
        }
    }

    /// Writes the final record of an open session once; unknown ids (already closed) are ignored.
    fn close_session(&mut self, id: &str, reason: String, now_ms: i64) {
        let Some(session) = self.open.remove(id) else { return };
        // Never before the start or the last checkpoint, whatever the wall clock did.
        let end_ms = now_ms.max(session.checkpoint_ms).max(session.started_ms);
        let record = session.record(id, end_ms, Some(reason));
        if let Err(e) = self.write_or_fallback(FallbackLine::Session(record)) {
            tracing::error!(session_id = %id, error = %e, "a session's final record could not be written anywhere; kept in memory for retry");
        }
    }

    /// Closes sessions whose meter is gone without `close`: at its drop time, or now if the meter
    /// vanished without a drop time (an `open_session` future cancelled before it returned).
    fn close_dropped(&mut self) {
        let now = self.clock.now_unix_ms();
        let dropped: Vec<(String, i64)> = self
            .open
            .iter()
            .filter_map(|(id, s)| {
                let at = s.counters.dropped_at_ms.load(Ordering::SeqCst);
                if at != NOT_DROPPED {
                    Some((id.clone(), at))
                } else if Arc::strong_count(&s.counters) == 1 {
                    Some((id.clone(), now))
                } else {
                    None
                }
            })
            .collect();
        for (id, at) in dropped {
            self.close_session(&id, "dropped".into(), at);
        }
    }

    /// To the ledger if it can be written; otherwise to the fallback file at once and kept for
    /// retry. An error only when neither took it (it stays pending in memory).
    /// Writes gateway requests in one transaction; if that fails, one by one (each to the fallback
    /// file when it cannot be written).
    /// Writes the buffered gateway requests in one transaction; if that fails, one by one (each
    /// to the fallback file when it cannot be written).
    fn write_requests(&mut self) {
        let batch = std::mem::take(&mut self.requests.lock().rows);
        if batch.is_empty() {
            return;
        }
        let together = (|| -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            {
                // One statement for the batch: preparing costs more than executing.
                let mut insert = tx.prepare(INSERT_REQUEST)?;
                for record in &batch {
                    insert.execute(request_row(record))?;
                }
            }
            tx.commit()
        })();
        if together.is_err() {
            for record in batch {
                // A record neither the ledger nor the fallback file took stays pending and is
                // retried at every checkpoint.
                let _ = self.write_or_fallback(FallbackLine::Request(record));
            }
        }
    }

    fn write_or_fallback(&mut self, line: FallbackLine) -> Result<(), LedgerError> {
        match put_line(&self.conn, &line) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "ledger write failed; the record goes to the fallback file");
                let saved = append_fallback(&self.fallback_path, &line);
                let in_fallback_file = saved.is_ok();
                self.pending.push(Pending { line, in_fallback_file });
                saved.map_err(LedgerError::from)
            }
        }
    }

    fn retry_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for mut p in pending {
            if put_line(&self.conn, &p.line).is_ok() {
                // Already in the fallback file too: the import on the next open skips it.
                continue;
            }
            if !p.in_fallback_file {
                p.in_fallback_file = append_fallback(&self.fallback_path, &p.line).is_ok();
            }
            self.pending.push(p);
        }
    }

    fn checkpoint(&mut self) {
        self.close_dropped();
        self.retry_pending();
        if self.open.is_empty() {
            return;
        }
        let now = self.clock.now_unix_ms();
        let result = (|| -> rusqlite::Result<Vec<(String, i64)>> {
            let tx = self.conn.transaction()?;
            let mut done = Vec::with_capacity(self.open.len());
            {
                let mut st = tx.prepare(
                    "UPDATE sessions SET checkpoint_ms = ?2, billed_seconds = ?3, amount_microusd_seconds_per_hour = ?4, input_tokens = ?5, \
                     output_tokens = ?6, cached_tokens = ?7, token_cost_picousd = ?8, stt_audio_ms = ?9, tts_chars = ?10, turns = ?11 \
                     WHERE id = ?1 AND ended_ms IS NULL",
                )?;
                for (id, s) in &self.open {
                    // A checkpoint never moves back, even if the wall clock does.
                    let at = now.max(s.checkpoint_ms);
                    let r = s.record(id, at, None);
                    st.execute(params![
                        id,
                        at,
                        i(r.billed_seconds),
                        i64::try_from(r.amount.units()).unwrap_or(i64::MAX),
                        i(r.input_tokens),
                        i(r.output_tokens),
                        i(r.cached_tokens),
                        i(r.token_cost_picousd),
                        i(r.stt_audio_ms),
                        i(r.tts_chars),
                        i(r.turns)
                    ])?;
                    done.push((id.clone(), at));
                }
            }
            tx.commit()?;
            Ok(done)
        })();
        match result {
            Ok(done) => {
                for (id, at) in done {
                    if let Some(s) = self.open.get_mut(&id) {
                        s.checkpoint_ms = at;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, open_sessions = self.open.len(), "ledger checkpoint failed; retrying at the next"),
        }
    }

    fn pending_session(&self, id: &str) -> Option<&SessionRecord> {
        self.pending.iter().rev().find_map(|p| match &p.line {
            FallbackLine::Session(s) if s.id == id => Some(s),
            _ => None,
        })
    }

    fn query_session(&self, id: &str) -> Result<Option<SessionRecord>, LedgerError> {
        if let Some(s) = self.pending_session(id) {
            return Ok(Some(s.clone()));
        }
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
        Ok(self.conn.prepare(&sql)?.query_row([id], session_from_row).optional()?)
    }

    fn query_sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>, LedgerError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE started_ms >= ?1 AND started_ms < ?2 AND (?3 IS NULL OR key_id = ?3) \
             ORDER BY started_ms, id LIMIT ?4"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params![q.from_ms, q.to_ms, q.key_id, SESSIONS_QUERY_MAX as i64], session_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            let row = row?;
            out.push(self.pending_session(&row.id).cloned().unwrap_or(row));
        }
        Ok(out)
    }

    fn query_usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError> {
        let (session_group, request_group) = match q.group_by {
            GroupBy::Key => ("key_id".to_string(), "key_id"),
            GroupBy::Model => (format!("'{SESSION_MODEL_GROUP_PREFIX}' || protocol"), "model"),
            GroupBy::Day => ("date(started_ms / 1000, 'unixepoch')".to_string(), "date(ts_ms / 1000, 'unixepoch')"),
        };
        let mut rows: BTreeMap<String, UsageRow> = BTreeMap::new();
        let sql = format!(
            "SELECT {session_group} AS g, count(*), sum(billed_seconds), sum(amount_microusd_seconds_per_hour), sum(input_tokens), \
             sum(output_tokens), sum(cached_tokens), sum(token_cost_picousd) FROM sessions \
             WHERE ended_ms IS NOT NULL AND started_ms >= ?1 AND started_ms < ?2 GROUP BY g"
        );
        let mut st = self.conn.prepare(&sql)?;
        let mut it = st.query(params![q.from_ms, q.to_ms])?;
        while let Some(r) = it.next()? {
            let group: String = r.get(0)?;
            let row = rows.entry(group.clone()).or_insert_with(|| UsageRow { group, ..UsageRow::default() });
            row.sessions = u(r.get(1)?);
            row.billed_seconds = u(r.get(2)?);
            row.sessions_amount = Amount::from_units(u(r.get(3)?) as u128);
            row.session_input_tokens = u(r.get(4)?);
            row.session_output_tokens = u(r.get(5)?);
            row.session_cached_tokens = u(r.get(6)?);
            row.session_token_cost_picousd = u(r.get(7)?);
        }
        let sql = format!(
            "SELECT {request_group} AS g, count(*), sum(input_tokens), sum(output_tokens), sum(cached_tokens), sum(cost_picousd) \
             FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY g"
        );
        let mut st = self.conn.prepare(&sql)?;
        let mut it = st.query(params![q.from_ms, q.to_ms])?;
        while let Some(r) = it.next()? {
            let group: String = r.get(0)?;
            let row = rows.entry(group.clone()).or_insert_with(|| UsageRow { group, ..UsageRow::default() });
            row.requests = u(r.get(1)?);
            row.request_input_tokens = u(r.get(2)?);
            row.request_output_tokens = u(r.get(3)?);
            row.request_cached_tokens = u(r.get(4)?);
            row.request_cost_picousd = u(r.get(5)?);
        }
        Ok(rows.into_values().collect())
    }

    fn set_fault(&mut self, fault: Fault) -> Result<(), LedgerError> {
        match fault {
            Fault::None => {
                self.conn.pragma_update(None, "query_only", false)?;
                let _: i64 = self.conn.query_row("PRAGMA max_page_count = 1073741823", [], |r| r.get(0))?;
            }
            Fault::ReadOnly => self.conn.pragma_update(None, "query_only", true)?,
            Fault::Full => {
                let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                let _: i64 = self.conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0))?;
            }
        }
        Ok(())
    }

    /// Shutdown: sessions still open end now (`shutdown`), pending records get a last try, and
    /// whatever still cannot be written is in the fallback file.
    fn finish(mut self) {
        self.requests.lock().closed = true;
        self.write_requests();
        self.close_dropped();
        let now = self.clock.now_unix_ms();
        let ids: Vec<String> = self.open.keys().cloned().collect();
        for id in ids {
            self.close_session(&id, "shutdown".into(), now);
        }
        self.retry_pending();
        for p in &self.pending {
            if !p.in_fallback_file {
                if let Err(e) = append_fallback(&self.fallback_path, &p.line) {
                    tracing::error!(session_id = p.line.session_id().unwrap_or(""), error = %e, "a record is lost: neither the ledger nor the fallback file can be written");
                }
            }
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::debug!(error = %e, "ledger WAL checkpoint at shutdown failed");
        }
    }
}

/// Imports the fallback file (once: by id, a record already in the ledger is skipped), then
/// closes sessions a crash left open at their last checkpoint; one transaction, then the fallback
/// file is removed. A crash between the commit and the removal imports nothing new next time.
fn recover(conn: &mut Connection, fallback_path: &Path) -> Result<RecoveryReport, LedgerError> {
    let mut report = RecoveryReport::default();
    let text = match std::fs::read_to_string(fallback_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| LedgerError::Unavailable(unwritable(&e)))?;
    for line in text.as_deref().unwrap_or("").lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<FallbackLine>(line) {
            Ok(l) => match (put_line(&tx, &l)?, &l) {
                (0, _) => report.fallback_duplicates += 1,
                (_, FallbackLine::Session(_)) => report.imported_sessions += 1,
                (_, FallbackLine::Request(_)) => report.imported_requests += 1,
            },
            Err(e) => {
                tracing::warn!(error = %e, "unreadable line in the ledger's fallback file, skipped");
                report.fallback_unreadable_lines += 1;
            }
        }
    }
    let open: Vec<(String, i64, i64, i64)> = {
        let mut st = tx.prepare("SELECT id, started_ms, checkpoint_ms, rate_microusd_per_hour FROM sessions WHERE ended_ms IS NULL")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, started_ms, checkpoint_ms, rate) in open {
        let end_ms = checkpoint_ms.max(started_ms);
        let billed = billed_seconds(started_ms, end_ms);
        let amount = amount(billed, u(rate));
        tx.execute(
            "UPDATE sessions SET ended_ms = ?2, checkpoint_ms = ?2, billed_seconds = ?3, amount_microusd_seconds_per_hour = ?4, \
             close_reason = 'recovered' WHERE id = ?1 AND ended_ms IS NULL",
            params![id, end_ms, i(billed), i64::try_from(amount.units()).unwrap_or(i64::MAX)],
        )?;
        tracing::warn!(session_id = %id, ended_ms = end_ms, "session left open by a crash, closed at its last checkpoint");
        report.recovered_sessions.push(id);
    }
    tx.commit().map_err(|e| LedgerError::Unavailable(unwritable(&e)))?;
    if text.is_some() {
        std::fs::remove_file(fallback_path)?;
        sync_dir(fallback_path);
    }
    report.recovered_sessions.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::ManualClock;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("voxgate-ledger-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn options(d: &Path, clock: Arc<ManualClock>) -> LedgerOptions {
        LedgerOptions {
            path: d.join("ledger.sqlite"),
            fallback_path: d.join("ledger.fallback.jsonl"),
            checkpoint_every: Duration::from_secs(3600),
            clock,
        }
    }

    async fn open(d: &Path, clock: Arc<ManualClock>) -> (Ledger, RecoveryReport) {
        Ledger::open_with(options(d, clock)).await.unwrap()
    }

    fn start(id: &str) -> SessionStart {
        SessionStart { id: id.into(), key_id: "k".into(), protocol: "realtime".into(), rate_microusd_per_hour: 4_500_000, opened_ms: None }
    }

    #[tokio::test]
    async fn clock_going_backwards_never_bills_negative_or_below_the_checkpoint() {
        let d = dir("backwards");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (ledger, _) = open(&d, clock.clone()).await;
        let m = ledger.open_session(start("a")).await.unwrap();
        clock.advance_ms(5_500);
        ledger.checkpoint().await.unwrap();
        clock.set(0); // stepped far back
        assert_eq!(m.so_far(clock.now_unix_ms()).0, 1);
        ledger.checkpoint().await.unwrap(); // a checkpoint does not move back either
        m.close("closed").await;
        let r = ledger.session("a").await.unwrap().unwrap();
        assert_eq!(r.ended_ms, Some(1_005_500));
        assert_eq!(r.billed_seconds, 6);
        // Backwards before any checkpoint: the end is the start, billed one second.
        let m = ledger.open_session(start("b")).await.unwrap();
        clock.advance_ms(-60_000);
        m.close("closed").await;
        let r = ledger.session("b").await.unwrap().unwrap();
        assert_eq!((r.ended_ms, r.billed_seconds), (Some(r.started_ms), 1));
        ledger.shutdown().await;
    }

    #[tokio::test]
    async fn a_dropped_meter_is_closed_as_dropped_and_a_duplicate_id_is_refused() {
        let d = dir("dropped");
        let clock = Arc::new(ManualClock::new(10_000));
        let (ledger, _) = open(&d, clock.clone()).await;
        let mut m = ledger.open_session(start("a")).await.unwrap();
        assert!(matches!(ledger.open_session(start("a")).await, Err(LedgerError::Duplicate(_))));
        m.add_turn();
        m.add_tts_chars(42);
        clock.advance_ms(2_500);
        drop(m);
        clock.advance_ms(10_000);
        let r = ledger.session("a").await.unwrap().unwrap();
        assert_eq!(r.close_reason.as_deref(), Some("dropped"));
        assert_eq!((r.ended_ms, r.billed_seconds, r.turns, r.tts_chars), (Some(12_500), 3, 1, 42));
        // Closed ids stay refused: never billed twice.
        assert!(matches!(ledger.open_session(start("a")).await, Err(LedgerError::Duplicate(_))));
        ledger.shutdown().await;
        assert!(matches!(ledger.session("a").await, Err(LedgerError::Closed)));
    }

    #[tokio::test]
    async fn a_second_server_on_the_same_ledger_is_refused_until_the_first_shuts_down() {
        let d = dir("in-use");
        let clock = Arc::new(ManualClock::new(0));
        let (first, _) = open(&d, clock.clone()).await;
        let live = first.open_session(start("live")).await.unwrap();
        let err = Ledger::open_with(options(&d, clock.clone())).await.unwrap_err();
        assert!(matches!(err, LedgerError::InUse(_)), "{err}");
        assert!(err.to_string().contains("another voxgate process"), "{err}");
        // The refused opener did not take the live session for a crash's leftover.
        clock.advance_ms(3_000);
        live.close("closed").await;
        let r = first.session("live").await.unwrap().unwrap();
        assert_eq!(r.close_reason.as_deref(), Some("closed"));
        first.shutdown().await;
        let (second, report) = open(&d, clock).await;
        assert!(report.recovered_sessions.is_empty());
        assert_eq!(second.session("live").await.unwrap().unwrap().billed_seconds, 3);
        second.shutdown().await;
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let d = dir("schema");
        let clock = Arc::new(ManualClock::new(0));
        let (ledger, _) = open(&d, clock.clone()).await;
        ledger.shutdown().await;
        let conn = Connection::open(d.join("ledger.sqlite")).unwrap();
        conn.execute("INSERT INTO schema_version (version) VALUES (99)", []).unwrap();
        drop(conn);
        let err = Ledger::open_with(options(&d, clock)).await.unwrap_err();
        assert_eq!(err.kind(), "schema", "{err}");
    }
}
