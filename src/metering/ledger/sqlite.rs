//! The ledger's SQLite store: one file in WAL mode with `synchronous=FULL`, migrated on open, held
//! by one process at a time through `<ledger>.lock`; the rows, the queries, the recovery
//! transaction. Lives on the ledger thread (see [`Store`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Statement, TransactionBehavior};

use super::fallback::FallbackLine;
use super::store::{recovered, Store};
use super::{
    Fault, GroupBy, LedgerError, RecoveryReport, RequestRecord, SessionQuery, SessionRecord, UsageQuery, UsageRow, SESSIONS_QUERY_MAX,
    SESSION_MODEL_GROUP_PREFIX,
};
use crate::metering::billing::Amount;
use crate::metering::speech::{SpeechLine, SpeechTotal, Stage};

/// The schema, one migration per version; version N has applied the first N.
const MIGRATIONS: &[&str] = &[
    r"
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
",
    r"
-- 2: speech at its vendors' list prices. Rows written before it read as costing nothing.
ALTER TABLE sessions ADD COLUMN stt_cost_picousd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN tts_cost_picousd INTEGER NOT NULL DEFAULT 0;
-- JSON: [{stage, engine, quantity, price_microusd, cost_picousd}], one per stage and engine.
ALTER TABLE sessions ADD COLUMN speech TEXT NOT NULL DEFAULT '[]';
",
];

/// The ledger in one SQLite file.
pub(super) struct SqliteStore {
    conn: Connection,
    /// An exclusive lock on `<ledger>.lock`, held while the ledger is open (released by the OS
    /// when the process dies, so a crash never leaves it locked).
    _lock: std::fs::File,
}

impl SqliteStore {
    /// Takes `<path>.lock` (or refuses with [`LedgerError::InUse`]), then opens the file (creating
    /// it and its directory) and brings its schema up to date.
    pub(super) fn open(path: &Path) -> Result<SqliteStore, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = lock_ledger(path)?;
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        Ok(SqliteStore { conn, _lock: lock })
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

fn unavailable(e: rusqlite::Error) -> LedgerError {
    LedgerError::Unavailable(unwritable(&e))
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn amount_units(a: Amount) -> i64 {
    i64::try_from(a.units()).unwrap_or(i64::MAX)
}

fn open_connection(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Unavailable(format!("the ledger cannot use WAL mode (journal_mode is {mode})")));
    }
    // FULL: every commit is synced to the WAL before the call returns, so a session that was
    // admitted survives a power cut too; NORMAL would survive a process crash but could lose the
    // last commits (an opening row, a final record) on power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
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
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)").map_err(unavailable)?;
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
     tts_chars, turns, stt_cost_picousd, tts_cost_picousd, speech";

/// Placeholders for the parameters of [`SESSION_COLUMNS`].
const SESSION_VALUES: &str = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20";

fn speech_json(lines: &[SpeechLine]) -> String {
    serde_json::to_string(lines).unwrap_or_else(|_| "[]".to_string())
}

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
        stt_cost_picousd: u(r.get(17)?),
        tts_cost_picousd: u(r.get(18)?),
        speech: {
            let text: String = r.get(19)?;
            serde_json::from_str(&text)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(19, rusqlite::types::Type::Text, Box::new(e)))?
        },
    })
}

/// Runs a statement whose 20 parameters are [`SESSION_COLUMNS`], in order.
fn execute_session(st: &mut Statement<'_>, s: &SessionRecord) -> rusqlite::Result<usize> {
    st.execute(params![
        s.id,
        s.key_id,
        s.protocol,
        s.started_ms,
        s.ended_ms,
        s.checkpoint_ms,
        i(s.billed_seconds),
        i(s.rate_microusd_per_hour),
        amount_units(s.amount),
        s.close_reason,
        i(s.input_tokens),
        i(s.output_tokens),
        i(s.cached_tokens),
        i(s.token_cost_picousd),
        i(s.stt_audio_ms),
        i(s.tts_chars),
        i(s.turns),
        i(s.stt_cost_picousd),
        i(s.tts_cost_picousd),
        speech_json(&s.speech),
    ])
}

/// Inserts `s`, or completes the row if it is still open. Returns 0 when the row was already
/// closed: a final record is applied at most once.
fn put_session(conn: &Connection, s: &SessionRecord) -> rusqlite::Result<usize> {
    let sql = format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({SESSION_VALUES}) \
         ON CONFLICT (id) DO UPDATE SET ended_ms = excluded.ended_ms, checkpoint_ms = excluded.checkpoint_ms, \
         billed_seconds = excluded.billed_seconds, amount_microusd_seconds_per_hour = excluded.amount_microusd_seconds_per_hour, \
         close_reason = excluded.close_reason, input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, \
         cached_tokens = excluded.cached_tokens, token_cost_picousd = excluded.token_cost_picousd, stt_audio_ms = excluded.stt_audio_ms, \
         tts_chars = excluded.tts_chars, turns = excluded.turns, stt_cost_picousd = excluded.stt_cost_picousd, \
         tts_cost_picousd = excluded.tts_cost_picousd, speech = excluded.speech WHERE sessions.ended_ms IS NULL"
    );
    execute_session(&mut conn.prepare(&sql)?, s)
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

impl Store for SqliteStore {
    fn open_session(&mut self, opening: &SessionRecord) -> Result<bool, LedgerError> {
        let sql = format!("INSERT OR IGNORE INTO sessions ({SESSION_COLUMNS}) VALUES ({SESSION_VALUES})");
        let inserted = self.conn.prepare(&sql).and_then(|mut st| execute_session(&mut st, opening)).map_err(unavailable)?;
        Ok(inserted == 1)
    }

    fn close_session(&mut self, closed: &SessionRecord) -> Result<(), LedgerError> {
        put_session(&self.conn, closed)?;
        Ok(())
    }

    fn put_requests(&mut self, requests: &[RequestRecord]) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        {
            // One statement for the batch: preparing costs more than executing.
            let mut insert = tx.prepare(INSERT_REQUEST)?;
            for record in requests {
                insert.execute(request_row(record))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn checkpoint(&mut self, open: &[SessionRecord]) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare(
                "UPDATE sessions SET checkpoint_ms = ?2, billed_seconds = ?3, amount_microusd_seconds_per_hour = ?4, input_tokens = ?5, \
                 output_tokens = ?6, cached_tokens = ?7, token_cost_picousd = ?8, stt_audio_ms = ?9, tts_chars = ?10, turns = ?11, \
                 stt_cost_picousd = ?12, tts_cost_picousd = ?13, speech = ?14 WHERE id = ?1 AND ended_ms IS NULL",
            )?;
            for r in open {
                st.execute(params![
                    r.id,
                    r.checkpoint_ms,
                    i(r.billed_seconds),
                    amount_units(r.amount),
                    i(r.input_tokens),
                    i(r.output_tokens),
                    i(r.cached_tokens),
                    i(r.token_cost_picousd),
                    i(r.stt_audio_ms),
                    i(r.tts_chars),
                    i(r.turns),
                    i(r.stt_cost_picousd),
                    i(r.tts_cost_picousd),
                    speech_json(&r.speech)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn recover(&mut self, fallback: &[FallbackLine]) -> Result<RecoveryReport, LedgerError> {
        let mut report = RecoveryReport::default();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
        for line in fallback {
            let written = match line {
                FallbackLine::Session(s) => put_session(&tx, s)?,
                FallbackLine::Request(r) => tx.prepare(INSERT_REQUEST)?.execute(request_row(r))?,
            };
            match (written, line) {
                (0, _) => report.fallback_duplicates += 1,
                (_, FallbackLine::Session(_)) => report.imported_sessions += 1,
                (_, FallbackLine::Request(_)) => report.imported_requests += 1,
            }
        }
        let open: Vec<SessionRecord> = {
            let mut st = tx.prepare(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_ms IS NULL"))?;
            let rows = st.query_map([], session_from_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for session in open {
            let closed = recovered(session);
            put_session(&tx, &closed)?;
            tracing::warn!(session_id = %closed.id, ended_ms = closed.checkpoint_ms, "session left open by a crash, closed at its last checkpoint");
            report.recovered_sessions.push(closed.id);
        }
        tx.commit().map_err(unavailable)?;
        Ok(report)
    }

    fn session(&mut self, id: &str) -> Result<Option<SessionRecord>, LedgerError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
        Ok(self.conn.prepare(&sql)?.query_row([id], session_from_row).optional()?)
    }

    fn sessions(&mut self, q: &SessionQuery) -> Result<Vec<SessionRecord>, LedgerError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE started_ms >= ?1 AND started_ms < ?2 AND (?3 IS NULL OR key_id = ?3) \
             ORDER BY started_ms, id LIMIT ?4"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params![q.from_ms, q.to_ms, q.key_id, SESSIONS_QUERY_MAX as i64], session_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn usage(&mut self, q: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError> {
        let (session_group, request_group) = match q.group_by {
            GroupBy::Key => ("key_id".to_string(), "key_id"),
            GroupBy::Model => (format!("'{SESSION_MODEL_GROUP_PREFIX}' || protocol"), "model"),
            GroupBy::Day => ("date(started_ms / 1000, 'unixepoch')".to_string(), "date(ts_ms / 1000, 'unixepoch')"),
        };
        let mut rows: BTreeMap<String, UsageRow> = BTreeMap::new();
        let sql = format!(
            "SELECT {session_group} AS g, count(*), sum(billed_seconds), sum(amount_microusd_seconds_per_hour), sum(input_tokens), \
             sum(output_tokens), sum(cached_tokens), sum(token_cost_picousd), sum(stt_cost_picousd), sum(tts_cost_picousd) FROM sessions \
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
            row.session_stt_cost_picousd = u(r.get(8)?);
            row.session_tts_cost_picousd = u(r.get(9)?);
        }
        // Speech per stage and engine, from each closed session's lines.
        let sql = format!(
            "SELECT {session_group} AS g, json_extract(line.value, '$.stage') AS stage, json_extract(line.value, '$.engine') AS engine, \
             sum(json_extract(line.value, '$.quantity')), sum(json_extract(line.value, '$.cost_picousd')) \
             FROM sessions, json_each(sessions.speech) AS line \
             WHERE ended_ms IS NOT NULL AND started_ms >= ?1 AND started_ms < ?2 GROUP BY g, stage, engine ORDER BY g, stage, engine"
        );
        let mut st = self.conn.prepare(&sql)?;
        let mut it = st.query(params![q.from_ms, q.to_ms])?;
        while let Some(r) = it.next()? {
            let group: String = r.get(0)?;
            let stage = match r.get::<_, String>(1)?.as_str() {
                "stt" => Stage::Stt,
                "tts" => Stage::Tts,
                other => return Err(LedgerError::Schema(format!("a session's speech line has stage {other:?}"))),
            };
            let row = rows.entry(group.clone()).or_insert_with(|| UsageRow { group, ..UsageRow::default() });
            row.session_speech.push(SpeechTotal { stage, engine: r.get(2)?, quantity: u(r.get(3)?), cost_picousd: u(r.get(4)?) });
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

    /// Real SQLite errors on the live connection: `query_only` fails every write as on a read-only
    /// file; `max_page_count` at the current size fails writes that need a page as SQLITE_FULL.
    fn inject_fault(&mut self, fault: Fault) -> Result<(), LedgerError> {
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

    /// Folds the WAL back into the database file, so the file alone is the whole ledger.
    fn shutdown(&mut self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::debug!(error = %e, "ledger WAL checkpoint at shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metering::ledger::test_support::{dir, open, options, start};
    use crate::metering::ledger::Ledger;
    use crate::metering::ManualClock;

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

    #[tokio::test]
    async fn a_ledger_from_before_speech_prices_is_migrated_and_its_rows_read() {
        let d = dir("schema-v1");
        let path = d.join("ledger.sqlite");
        {
            // The schema and a closed session as voxgate wrote them at version 1.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);").unwrap();
            conn.execute(
                "INSERT INTO sessions (id, key_id, protocol, started_ms, ended_ms, checkpoint_ms, billed_seconds, rate_microusd_per_hour, \
                 amount_microusd_seconds_per_hour, close_reason, input_tokens, output_tokens, cached_tokens, token_cost_picousd, \
                 stt_audio_ms, tts_chars, turns) VALUES ('old', 'k', 'realtime', 0, 2000, 2000, 2, 4500000, 9000000, 'client_closed', \
                 1, 2, 0, 700, 1500, 30, 1)",
                [],
            )
            .unwrap();
        }
        let clock = Arc::new(ManualClock::new(10_000));
        let (ledger, _) = open(&d, clock.clone()).await;
        let old = ledger.session("old").await.unwrap().unwrap();
        assert_eq!((old.billed_seconds, old.stt_audio_ms, old.token_cost_picousd), (2, 1500, 700));
        assert_eq!((old.stt_cost_picousd, old.tts_cost_picousd, old.speech.as_slice()), (0, 0, &[][..]));
        // New sessions carry speech beside the old rows, and usage sums both.
        let mut prices = crate::metering::speech::SpeechPrices::default();
        prices.set(crate::metering::speech::Stage::Stt, "dg", Some(6_000));
        let mut m = ledger.open_session(start("new")).await.unwrap();
        m.set_speech_prices(Arc::new(prices));
        m.add_stt_audio_ms("dg", 30_000);
        m.close("client_closed").await;
        let rows = ledger.usage(UsageQuery { from_ms: 0, to_ms: 1_000_000, group_by: GroupBy::Key }).await.unwrap();
        assert_eq!((rows[0].sessions, rows[0].session_stt_cost_picousd, rows[0].session_token_cost_picousd), (2, 3_000_000_000, 700));
        assert_eq!(rows[0].session_speech.len(), 1);
        ledger.shutdown().await;
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
