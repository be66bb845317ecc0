//! Metering: what a voice session and a gateway call cost, and the durable ledger that keeps it.
//!
//! - [`billing`]: pure arithmetic: per started second at a flat hourly rate, exact [`Amount`]s.
//! - [`config`]: the `[metering]` section: ledger file, checkpoint interval, flat rate.
//! - [`speech`]: speech vendors' list prices per engine, and what a session's speech costs.
//! - [`ledger`]: one dedicated thread behind an async handle, storing in SQLite (WAL) through a
//!   small `Store` trait; [`SessionMeter`] per live session, checkpoints, crash recovery, the
//!   fallback file, queries.
//!
//! The rules a customer can check are in `docs/metering.md`.

pub mod billing;
pub mod config;
pub mod ledger;
pub mod speech;

pub use billing::{amount, billed_seconds, Amount, DEFAULT_RATE_MICROUSD_PER_HOUR};
pub use ledger::{
    GroupBy, Ledger, LedgerError, LedgerOptions, RecoveryReport, RequestRecord, SessionMeter, SessionQuery, SessionRecord, SessionStart,
    UsageQuery, UsageRow,
};

use std::sync::atomic::{AtomicI64, Ordering};

/// The wall clock the ledger stamps sessions with, replaceable in tests.
pub trait Clock: Send + Sync + 'static {
    fn now_unix_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that moves only when told to (it may be set backwards).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_unix_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_unix_ms))
    }

    pub fn set(&self, now_unix_ms: i64) {
        self.0.store(now_unix_ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
