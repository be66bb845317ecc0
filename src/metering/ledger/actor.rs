//! The ledger thread: owns the store and the open sessions, answers the handle's commands, writes
//! buffered gateway requests in batches, checkpoints open sessions, keeps the records the store
//! refused (in memory and in the fallback file) and retries them, and recovers at opening.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::fallback::{FallbackFile, FallbackLine};
use super::sqlite::SqliteStore;
use super::store::Store;
use super::{
    Command, Counters, LedgerError, LedgerOptions, RecoveryReport, RequestBuffer, SessionQuery, SessionRecord, SessionStart, NOT_DROPPED,
    REQUEST_BATCH_MAX, REQUEST_BATCH_WAIT,
};
use crate::metering::billing::{amount, billed_seconds};
use crate::metering::speech::{stage_cost_picousd, Stage};
use crate::metering::Clock;

/// Starts the ledger thread. It opens the store and recovers (the receiver gets the report, or
/// why the ledger cannot open), then serves `rx` until shutdown or until every sender is gone.
pub(super) fn spawn(
    options: LedgerOptions,
    rx: mpsc::Receiver<Command>,
    requests: Arc<RequestBuffer>,
) -> std::io::Result<oneshot::Receiver<Result<RecoveryReport, LedgerError>>> {
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new().name("ledger".into()).spawn(move || {
        lower_priority();
        let started = SqliteStore::open(&options.path).and_then(|store| Actor::start(store, &options, requests));
        let actor = match started {
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
    Ok(ready_rx)
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
        let speech = c.speech().lines();
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
            stt_cost_picousd: stage_cost_picousd(&speech, Stage::Stt),
            tts_cost_picousd: stage_cost_picousd(&speech, Stage::Tts),
            speech,
        }
    }
}

/// A final record the store refused, retried at every checkpoint.
struct Pending {
    line: FallbackLine,
    in_fallback_file: bool,
}

/// The ledger thread's state.
struct Actor<S: Store> {
    store: S,
    requests: Arc<RequestBuffer>,
    fallback: FallbackFile,
    clock: Arc<dyn Clock>,
    open: HashMap<String, OpenSession>,
    pending: Vec<Pending>,
}

impl<S: Store> Actor<S> {
    fn start(mut store: S, options: &LedgerOptions, requests: Arc<RequestBuffer>) -> Result<(Actor<S>, RecoveryReport), LedgerError> {
        let fallback = FallbackFile::new(options.fallback_path.clone());
        let report = recover(&mut store, &fallback)?;
        let actor = Actor { store, requests, fallback, clock: options.clock.clone(), open: HashMap::new(), pending: Vec::new() };
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
            Command::Close { id, reason, ended_ms, reply } => {
                let now = self.clock.now_unix_ms();
                match ended_ms {
                    None => self.close_session(&id, reason, now),
                    Some(at) => self.close_session_at(&id, reason, at.min(now)),
                }
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
                let _ = reply.send(self.store.usage(&query));
            }
            Command::Checkpoint { reply } => {
                self.checkpoint();
                let _ = reply.send(());
            }
            Command::Fault { fault, reply } => {
                let _ = reply.send(self.store.inject_fault(fault));
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
        match self.store.open_session(&session.record(&start.id, now, None)) {
            Ok(true) => {
                self.open.insert(start.id, session);
                Ok(started_ms)
            }
            Ok(false) => Err(LedgerError::Duplicate(start.id)),
            Err(e) => {
                tracing::warn!(session_id = %start.id, error = %e, "ledger refuses a session: cannot write");
                Err(e)
            }
        }
    }

    /// Writes the final record of an open session once; unknown ids (already closed) are ignored.
    fn close_session(&mut self, id: &str, reason: String, now_ms: i64) {
        let Some(checkpoint_ms) = self.open.get(id).map(|s| s.checkpoint_ms) else { return };
        // Never before the start or the last checkpoint, whatever the wall clock did.
        self.close_session_at(id, reason, now_ms.max(checkpoint_ms));
    }

    /// Writes the final record of an open session ended at `end_ms` (never before its start).
    fn close_session_at(&mut self, id: &str, reason: String, end_ms: i64) {
        let Some(session) = self.open.remove(id) else { return };
        let end_ms = end_ms.max(session.started_ms);
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

    /// Writes the buffered gateway requests in one transaction; if that fails, one by one (each
    /// to the fallback file when it cannot be written).
    fn write_requests(&mut self) {
        let batch = std::mem::take(&mut self.requests.lock().rows);
        if batch.is_empty() {
            return;
        }
        if self.store.put_requests(&batch).is_err() {
            for record in batch {
                // A record neither the ledger nor the fallback file took stays pending and is
                // retried at every checkpoint.
                let _ = self.write_or_fallback(FallbackLine::Request(record));
            }
        }
    }

    fn put(&mut self, line: &FallbackLine) -> Result<(), LedgerError> {
        match line {
            FallbackLine::Session(s) => self.store.close_session(s),
            FallbackLine::Request(r) => self.store.put_requests(std::slice::from_ref(r)),
        }
    }

    /// To the store if it can be written; otherwise to the fallback file at once and kept for
    /// retry. An error only when neither took it (it stays pending in memory).
    fn write_or_fallback(&mut self, line: FallbackLine) -> Result<(), LedgerError> {
        match self.put(&line) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "ledger write failed; the record goes to the fallback file");
                let saved = self.fallback.append(&line);
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
            if self.put(&p.line).is_ok() {
                // Already in the fallback file too: the import on the next open skips it.
                continue;
            }
            if !p.in_fallback_file {
                p.in_fallback_file = self.fallback.append(&p.line).is_ok();
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
        // A checkpoint never moves back, even if the wall clock does.
        let rows: Vec<SessionRecord> = self.open.iter().map(|(id, s)| s.record(id, now.max(s.checkpoint_ms), None)).collect();
        match self.store.checkpoint(&rows) {
            Ok(()) => {
                for row in rows {
                    if let Some(s) = self.open.get_mut(&row.id) {
                        s.checkpoint_ms = row.checkpoint_ms;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, open_sessions = self.open.len(), "ledger checkpoint failed; retrying at the next"),
        }
    }

    /// The newest final record of `id` the store has not taken yet: newer than the store's row.
    fn pending_session(&self, id: &str) -> Option<&SessionRecord> {
        self.pending.iter().rev().find_map(|p| match &p.line {
            FallbackLine::Session(s) if s.id == id => Some(s),
            _ => None,
        })
    }

    fn query_session(&mut self, id: &str) -> Result<Option<SessionRecord>, LedgerError> {
        if let Some(s) = self.pending_session(id) {
            return Ok(Some(s.clone()));
        }
        self.store.session(id)
    }

    fn query_sessions(&mut self, q: &SessionQuery) -> Result<Vec<SessionRecord>, LedgerError> {
        let rows = self.store.sessions(q)?;
        Ok(rows.into_iter().map(|row| self.pending_session(&row.id).cloned().unwrap_or(row)).collect())
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
                if let Err(e) = self.fallback.append(&p.line) {
                    tracing::error!(session_id = p.line.session_id().unwrap_or(""), error = %e, "a record is lost: neither the ledger nor the fallback file can be written");
                }
            }
        }
        self.store.shutdown();
    }
}

/// Imports the fallback file (once: by id, a record already in the store is skipped) and closes
/// sessions a crash left open at their last checkpoint, in one store transaction; then removes the
/// file. A crash between the commit and the removal imports nothing new next time.
fn recover<S: Store>(store: &mut S, fallback: &FallbackFile) -> Result<RecoveryReport, LedgerError> {
    let found = fallback.read()?;
    let mut report = store.recover(found.as_ref().map_or(&[][..], |f| f.lines.as_slice()))?;
    if let Some(found) = found {
        report.fallback_unreadable_lines = found.unreadable;
        fallback.remove()?;
    }
    report.recovered_sessions.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{dir, open, start};
    use super::*;
    use crate::metering::ManualClock;

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
        m.add_tts_chars("fake", 42);
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
    async fn a_session_closed_at_its_last_sign_of_life_may_end_before_its_last_checkpoint() {
        let d = dir("last-heard");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (ledger, _) = open(&d, clock.clone()).await;
        let m = ledger.open_session(start("a")).await.unwrap();
        clock.advance_ms(40_000);
        ledger.checkpoint().await.unwrap();
        // The client was last heard 2.5 s in; the silence was noticed 40 s in.
        m.close_at("peer_unresponsive", 1_002_500).await;
        let r = ledger.session("a").await.unwrap().unwrap();
        assert_eq!((r.ended_ms, r.billed_seconds, r.close_reason.as_deref()), (Some(1_002_500), 3, Some("peer_unresponsive")));
        // Never before the start, nor after now.
        let m = ledger.open_session(start("b")).await.unwrap();
        m.close_at("peer_unresponsive", 0).await;
        let r = ledger.session("b").await.unwrap().unwrap();
        assert_eq!((r.ended_ms, r.billed_seconds), (Some(r.started_ms), 1));
        let m = ledger.open_session(start("c")).await.unwrap();
        m.close_at("peer_unresponsive", i64::MAX).await;
        let r = ledger.session("c").await.unwrap().unwrap();
        assert_eq!(r.ended_ms, Some(clock.now_unix_ms()));
        ledger.shutdown().await;
    }
}
