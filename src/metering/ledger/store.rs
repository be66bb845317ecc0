//! The seam between the ledger thread and its durable store: what the thread asks of a store, and
//! the rule every store applies when it recovers. Synchronous: a store lives on the ledger's own
//! thread and is never touched from anywhere else.

use super::fallback::FallbackLine;
use super::{Fault, LedgerError, RecoveryReport, RequestRecord, SessionQuery, SessionRecord, UsageQuery, UsageRow};
use crate::metering::billing::{amount, billed_seconds};

/// A durable store of sessions and gateway requests. Each write is durable when it returns; the
/// thread keeps what the store refused (in memory and in the fallback file) and retries it, so a
/// store never retries on its own. Every method takes `&mut self`, reads too: a store owns its
/// connection, and a PostgreSQL client needs `&mut` even to query.
pub(super) trait Store {
    /// Writes a session's opening row (open, counters at zero). `Ok(false)` when the id is already
    /// stored, open or closed: a session is billed once. An error means the store cannot be written
    /// ([`LedgerError::Unavailable`], in words a client can read): the session is refused.
    fn open_session(&mut self, opening: &SessionRecord) -> Result<bool, LedgerError>;

    /// Writes a session's final record: completes its row if it is still open, inserts it if it is
    /// absent; a row already closed stays as it is (a final record is applied at most once).
    fn close_session(&mut self, closed: &SessionRecord) -> Result<(), LedgerError>;

    /// Writes gateway requests, all or none; a request whose id is stored already keeps its row.
    fn put_requests(&mut self, requests: &[RequestRecord]) -> Result<(), LedgerError>;

    /// Writes open sessions' counters, billing so far and `checkpoint_ms`, all or none; a row
    /// already closed stays as it is.
    fn checkpoint(&mut self, open: &[SessionRecord]) -> Result<(), LedgerError>;

    /// At the ledger's opening, all or none: writes the fallback file's records as
    /// [`close_session`](Store::close_session) and [`put_requests`](Store::put_requests) would
    /// (counting those already stored as `fallback_duplicates`), then closes every session still
    /// open with [`recovered`]. Fills every field of the report but `fallback_unreadable_lines`.
    fn recover(&mut self, fallback: &[FallbackLine]) -> Result<RecoveryReport, LedgerError>;

    /// One session by id, open or closed.
    fn session(&mut self, id: &str) -> Result<Option<SessionRecord>, LedgerError>;

    /// Sessions that started in the query's window, open ones included, oldest first (then by id),
    /// at most [`SESSIONS_QUERY_MAX`](super::SESSIONS_QUERY_MAX).
    fn sessions(&mut self, query: &SessionQuery) -> Result<Vec<SessionRecord>, LedgerError>;

    /// Closed sessions and requests in the query's window, one row per group, ordered by group;
    /// sessions grouped by model appear as [`SESSION_MODEL_GROUP_PREFIX`](super::SESSION_MODEL_GROUP_PREFIX)
    /// and their protocol.
    fn usage(&mut self, query: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError>;

    /// For tests: makes later writes fail as on a read-only or a full store (`Fault::None` undoes it).
    fn inject_fault(&mut self, fault: Fault) -> Result<(), LedgerError>;

    /// The ledger is shutting down and this is the store's last call: tidy up (best effort; errors
    /// are logged, nothing is lost by then).
    fn shutdown(&mut self);
}

/// How a session a crash left open is closed: at its last checkpoint (never before its start), as
/// `recovered`, billed to there, its counters as of that checkpoint. So a crash bills at most one
/// checkpoint interval less than the truth, never more.
pub(super) fn recovered(open: SessionRecord) -> SessionRecord {
    let end_ms = open.checkpoint_ms.max(open.started_ms);
    let billed = billed_seconds(open.started_ms, end_ms);
    SessionRecord {
        ended_ms: Some(end_ms),
        checkpoint_ms: end_ms,
        billed_seconds: billed,
        amount: amount(billed, open.rate_microusd_per_hour),
        close_reason: Some("recovered".into()),
        ..open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::speech::{SpeechLine, Stage};

    #[test]
    fn a_recovered_session_keeps_the_speech_of_its_last_checkpoint() {
        let line = SpeechLine {
            stage: Stage::Stt,
            engine: "dg".into(),
            quantity: 60_000,
            price_microusd: Some(7_700),
            cost_picousd: 7_700_000_000,
        };
        let open = SessionRecord {
            id: "s".into(),
            key_id: "k".into(),
            protocol: "realtime".into(),
            started_ms: 1_000,
            ended_ms: None,
            checkpoint_ms: 4_000,
            billed_seconds: 3,
            rate_microusd_per_hour: 4_500_000,
            amount: amount(3, 4_500_000),
            close_reason: None,
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            token_cost_picousd: 10,
            stt_audio_ms: 60_000,
            tts_chars: 0,
            turns: 1,
            stt_cost_picousd: 7_700_000_000,
            tts_cost_picousd: 0,
            speech: vec![line.clone()],
        };
        let closed = recovered(open);
        assert_eq!((closed.ended_ms, closed.close_reason.as_deref()), (Some(4_000), Some("recovered")));
        assert_eq!((closed.stt_cost_picousd, closed.vendor_cost_picousd()), (7_700_000_000, 7_700_000_010));
        assert_eq!(closed.speech, vec![line]);
    }
}
