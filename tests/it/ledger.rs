//! The usage ledger as the server will use it: sessions opened, metered, closed and queried;
//! 1,000 concurrent sessions; a real SIGKILL mid-session; a read-only and a full ledger.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use voxgate::metering::ledger::Fault;
use voxgate::metering::speech::{SpeechPrices, Stage};
use voxgate::metering::{
    amount, Amount, Clock, GroupBy, Ledger, LedgerError, LedgerOptions, ManualClock, RequestRecord, SessionQuery, SessionStart, UsageQuery,
};

const RATE: u64 = 4_500_000;
/// 2026-03-01T23:59:58Z: sessions straddle a UTC midnight.
const T0: i64 = 1_772_409_598_000;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("voxgate-ledger-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn options(d: &Path, clock: Arc<dyn Clock>, checkpoint_every: Duration) -> LedgerOptions {
    LedgerOptions { path: d.join("ledger.sqlite"), fallback_path: d.join("ledger.fallback.jsonl"), checkpoint_every, clock }
}

async fn open(d: &Path, clock: Arc<ManualClock>) -> (Ledger, voxgate::metering::RecoveryReport) {
    Ledger::open_with(options(d, clock, Duration::from_secs(3600))).await.unwrap()
}

fn start(id: &str, key: &str) -> SessionStart {
    SessionStart { id: id.into(), key_id: key.into(), protocol: "realtime".into(), rate_microusd_per_hour: RATE, opened_ms: None }
}

fn request(id: &str, key: &str, model: &str, ts_ms: i64, cost_picousd: u64) -> RequestRecord {
    RequestRecord {
        id: id.into(),
        ts_ms,
        key_id: key.into(),
        model: model.into(),
        outcome: "ok".into(),
        input_tokens: 100,
        output_tokens: 20,
        cached_tokens: 10,
        cost_picousd,
        latency_ms: 250,
    }
}

/// Deepgram at $0.0077 a minute, ElevenLabs at $0.05 per 1000 characters.
fn prices() -> Arc<SpeechPrices> {
    let mut p = SpeechPrices::default();
    p.set(Stage::Stt, "dg", Some(7_700));
    p.set(Stage::Tts, "eleven", Some(50_000));
    Arc::new(p)
}

fn all() -> SessionQuery {
    SessionQuery { from_ms: i64::MIN, to_ms: i64::MAX, key_id: None }
}

#[tokio::test]
async fn open_meter_close_and_query() {
    let d = temp_dir("query");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, report) = open(&d, clock.clone()).await;
    assert_eq!(report, Default::default());

    let mut a = ledger.open_session(start("sess_a", "key1")).await.unwrap();
    a.set_speech_prices(prices());
    a.add_usage(1000, 200, 300, 7_000_000);
    a.add_usage(10, 2, 3, 70_000);
    a.add_stt_audio_ms("dg", 1000);
    a.add_stt_audio_ms("dg", 500);
    a.add_tts_chars("eleven", 75);
    a.add_tts_chars("mystery", 5);
    a.add_turn();
    a.add_turn();
    clock.advance_ms(1_001);
    assert_eq!(a.so_far(clock.now_unix_ms()), (2, amount(2, RATE)));
    // While open, the row is there without an end.
    let open_row = ledger.session("sess_a").await.unwrap().unwrap();
    assert_eq!((open_row.ended_ms, open_row.close_reason.as_deref()), (None, None));
    a.close("closed").await;

    // Past midnight UTC, another key, another session of 61.5 s.
    clock.advance_ms(2_000);
    let b = ledger.open_session(start("sess_b", "key2")).await.unwrap();
    clock.advance_ms(61_500);
    b.close("client_closed").await;

    let r = ledger.session("sess_a").await.unwrap().unwrap();
    assert_eq!(r.key_id, "key1");
    assert_eq!(r.protocol, "realtime");
    assert_eq!((r.started_ms, r.ended_ms), (T0, Some(T0 + 1_001)));
    assert_eq!(r.billed_seconds, 2);
    assert_eq!(r.amount, amount(2, RATE));
    assert_eq!(r.amount.display_usd_full(), "$0.002500000000");
    assert_eq!(r.close_reason.as_deref(), Some("closed"));
    assert_eq!((r.input_tokens, r.output_tokens, r.cached_tokens, r.token_cost_picousd), (1010, 202, 303, 7_070_000));
    assert_eq!((r.stt_audio_ms, r.tts_chars, r.turns), (1500, 80, 2));
    // Speech at list price: 1.5 s at $0.0077/min is $0.0001925; 75 characters at $0.05 per 1000 is
    // $0.00375; the unpriced engine is recorded without a price, at 0.
    assert_eq!((r.stt_cost_picousd, r.tts_cost_picousd, r.llm_cost_picousd()), (192_500_000, 3_750_000_000, 7_070_000));
    assert_eq!(r.vendor_cost_picousd(), 3_949_570_000);
    // Charged $0.0025 for 2 s: the vendors cost more, and the margin says so.
    assert_eq!(r.margin_picousd(), 2_500_000_000 - 3_949_570_000);
    let lines: Vec<(Stage, &str, u64, Option<u64>, u64)> =
        r.speech.iter().map(|l| (l.stage, l.engine.as_str(), l.quantity, l.price_microusd, l.cost_picousd)).collect();
    assert_eq!(
        lines,
        [
            (Stage::Stt, "dg", 1500, Some(7_700), 192_500_000),
            (Stage::Tts, "eleven", 75, Some(50_000), 3_750_000_000),
            (Stage::Tts, "mystery", 5, None, 0)
        ]
    );
    let rb = ledger.session("sess_b").await.unwrap().unwrap();
    assert_eq!(rb.billed_seconds, 62);
    assert!(ledger.session("nope").await.unwrap().is_none());

    let by_key = ledger.sessions(SessionQuery { key_id: Some("key2".into()), ..all() }).await.unwrap();
    assert_eq!(by_key.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["sess_b"]);
    let window = ledger.sessions(SessionQuery { from_ms: T0, to_ms: T0 + 1, key_id: None }).await.unwrap();
    assert_eq!(window.len(), 1, "from is inclusive, to exclusive");

    ledger.record_request(request("req_1", "key1", "gpt-4o-mini", T0 + 10, 5_000)).await.unwrap();
    ledger.record_request(request("req_2", "key2", "gpt-4o-mini", T0 + 3_000, 6_000)).await.unwrap();
    ledger.record_request(request("req_3", "key2", "claude-haiku", T0 + 3_000, 7_000)).await.unwrap();
    ledger.record_request(request("req_3", "key2", "claude-haiku", T0 + 3_000, 7_000)).await.unwrap(); // same id: once

    let q = |group_by| UsageQuery { from_ms: T0 - 86_400_000, to_ms: T0 + 86_400_000, group_by };
    let by_key = ledger.usage(q(GroupBy::Key)).await.unwrap();
    assert_eq!(by_key.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(), ["key1", "key2"]);
    assert_eq!((by_key[0].sessions, by_key[0].billed_seconds, by_key[0].sessions_amount), (1, 2, amount(2, RATE)));
    assert_eq!((by_key[0].requests, by_key[0].request_cost_picousd), (1, 5_000));
    assert_eq!((by_key[1].sessions, by_key[1].billed_seconds, by_key[1].requests, by_key[1].request_cost_picousd), (1, 62, 2, 13_000));
    assert_eq!(by_key[0].session_token_cost_picousd, 7_070_000);
    assert_eq!((by_key[0].session_stt_cost_picousd, by_key[0].session_tts_cost_picousd), (192_500_000, 3_750_000_000));
    assert_eq!(by_key[0].session_vendor_cost_picousd(), 3_949_570_000);
    assert_eq!(by_key[0].session_margin_picousd(), -1_449_570_000);
    let engines: Vec<(Stage, &str, u64, u64)> =
        by_key[0].session_speech.iter().map(|t| (t.stage, t.engine.as_str(), t.quantity, t.cost_picousd)).collect();
    assert_eq!(engines, [(Stage::Stt, "dg", 1500, 192_500_000), (Stage::Tts, "eleven", 75, 3_750_000_000), (Stage::Tts, "mystery", 5, 0)]);
    assert!(by_key[1].session_speech.is_empty(), "a session without speech has no lines");
    assert_eq!(by_key[1].session_margin_picousd(), 62 * 1_250_000_000);

    let by_model = ledger.usage(q(GroupBy::Model)).await.unwrap();
    let groups: Vec<(&str, u64, u64)> = by_model.iter().map(|r| (r.group.as_str(), r.sessions, r.requests)).collect();
    assert_eq!(groups, [("claude-haiku", 0, 1), ("gpt-4o-mini", 0, 2), ("session:realtime", 2, 0)]);

    let by_day = ledger.usage(q(GroupBy::Day)).await.unwrap();
    let days: Vec<(&str, u64, u64)> = by_day.iter().map(|r| (r.group.as_str(), r.sessions, r.requests)).collect();
    assert_eq!(days, [("2026-03-01", 1, 1), ("2026-03-02", 1, 2)], "sessions by the UTC day they started");

    // Totals equal the sum of the sessions, exactly, in every grouping.
    let sessions = ledger.sessions(all()).await.unwrap();
    let total: Amount = sessions.iter().map(|s| s.amount).sum();
    for rows in [&by_key, &by_model, &by_day] {
        assert_eq!(rows.iter().map(|r| r.sessions_amount).sum::<Amount>(), total);
        assert_eq!(rows.iter().map(|r| r.billed_seconds).sum::<u64>(), 64);
    }
    assert_eq!(total, amount(64, RATE));
    ledger.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_one_second_sessions_leave_a_thousand_records() {
    let d = temp_dir("thousand");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    const N: usize = 1000;
    let opened = Arc::new(tokio::sync::Barrier::new(N + 1));
    let go = Arc::new(tokio::sync::Barrier::new(N + 1));
    let mut tasks = Vec::new();
    for n in 0..N {
        let (ledger, opened, go) = (ledger.clone(), opened.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            let mut m = ledger.open_session(start(&format!("s{n:04}"), &format!("k{}", n % 7))).await.unwrap();
            m.add_turn();
            opened.wait().await;
            go.wait().await;
            m.close("closed").await;
        }));
    }
    opened.wait().await;
    clock.advance_ms(1_000); // every session lasted exactly one second
    go.wait().await;
    for t in tasks {
        t.await.unwrap();
    }
    let sessions = ledger.sessions(all()).await.unwrap();
    assert_eq!(sessions.len(), N);
    let mut ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), N);
    assert!(sessions.iter().all(|s| s.billed_seconds == 1 && s.ended_ms == Some(T0 + 1_000) && s.turns == 1));
    let usage = ledger.usage(UsageQuery { from_ms: 0, to_ms: i64::MAX, group_by: GroupBy::Key }).await.unwrap();
    assert_eq!(usage.len(), 7);
    assert_eq!(usage.iter().map(|r| r.sessions).sum::<u64>(), N as u64);
    assert_eq!(usage.iter().map(|r| r.sessions_amount).sum::<Amount>(), amount(N as u64, RATE));
    assert_eq!(amount(N as u64, RATE).display_usd(), "$1.25");
    ledger.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_recorded_without_waiting_are_all_seen_by_queries_and_all_written_by_shutdown() {
    let d = temp_dir("nowait");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    // More than one batch's worth, from several tasks at once.
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for n in 0..400 {
                    ledger.record_request_nowait(request(&format!("req_{t}_{n}"), &format!("k{t}"), "gpt-4o-mini", T0, 10));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // A query asked after the records were handed over sees every one of them.
    let q = UsageQuery { from_ms: 0, to_ms: i64::MAX, group_by: GroupBy::Key };
    let usage = ledger.usage(q.clone()).await.unwrap();
    assert_eq!(
        usage.iter().map(|r| (r.group.as_str(), r.requests)).collect::<Vec<_>>(),
        [("k0", 400), ("k1", 400), ("k2", 400), ("k3", 400)]
    );
    // Records handed over just before shutdown are written by it.
    for n in 0..10 {
        ledger.record_request_nowait(request(&format!("late_{n}"), "k9", "gpt-4o-mini", T0, 10));
    }
    ledger.shutdown().await;
    let (ledger, _) = open(&d, clock).await;
    let usage = ledger.usage(q).await.unwrap();
    assert_eq!(usage.iter().map(|r| r.requests).sum::<u64>(), 1_610);
    assert_eq!(usage.iter().map(|r| r.request_cost_picousd).sum::<u64>(), 16_100);
    ledger.shutdown().await;
}

// Recovery after SIGKILL is tested on the real server in tests/it/metering_http.rs
// (`a_server_killed_with_sigkill_bills_its_open_sessions_once_as_recovered`).

#[tokio::test]
async fn a_read_only_ledger_refuses_new_sessions_and_lets_live_ones_finish_into_the_fallback_file() {
    let d = temp_dir("readonly");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    let live: Vec<_> = {
        let mut v = Vec::new();
        for n in 0..3 {
            v.push(ledger.open_session(start(&format!("live{n}"), "key1")).await.unwrap());
        }
        v
    };
    ledger.inject_fault(Fault::ReadOnly).await.unwrap();
    let err = ledger.open_session(start("refused", "key1")).await.unwrap_err();
    assert!(matches!(err, LedgerError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("read-only") && err.to_string().contains("refused"), "a clear message: {err}");
    clock.advance_ms(30_000);
    for m in live {
        m.close("closed").await;
    }
    ledger.record_request(request("req_ro", "key1", "gpt-4o-mini", T0, 9)).await.unwrap();
    assert!(d.join("ledger.fallback.jsonl").exists());
    // Queries still answer, with the records that wait for the ledger.
    let r = ledger.session("live1").await.unwrap().unwrap();
    assert_eq!((r.close_reason.as_deref(), r.billed_seconds), (Some("closed"), 30));
    ledger.shutdown().await;

    // Space is back: the fallback records are imported exactly once.
    let (ledger, report) = open(&d, clock.clone()).await;
    assert_eq!((report.imported_sessions, report.imported_requests, report.recovered_sessions.len()), (3, 1, 0));
    assert!(!d.join("ledger.fallback.jsonl").exists());
    let sessions = ledger.sessions(all()).await.unwrap();
    assert_eq!(sessions.len(), 3);
    assert!(sessions.iter().all(|s| s.close_reason.as_deref() == Some("closed") && s.billed_seconds == 30));
    assert!(ledger.session("refused").await.unwrap().is_none(), "a refused session was never served, never billed");
    ledger.shutdown().await;
    let (ledger, report) = open(&d, clock).await;
    assert_eq!(report, Default::default());
    assert_eq!(ledger.sessions(all()).await.unwrap().len(), 3);
    ledger.shutdown().await;
}

#[tokio::test]
async fn when_space_returns_pending_records_are_written_and_the_fallback_copy_is_not_imported_twice() {
    let d = temp_dir("space-returns");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    let m = ledger.open_session(start("s", "key1")).await.unwrap();
    ledger.inject_fault(Fault::ReadOnly).await.unwrap();
    clock.advance_ms(4_000);
    m.close("closed").await;
    ledger.inject_fault(Fault::None).await.unwrap();
    ledger.checkpoint().await.unwrap(); // retried now that it can be written
    ledger.inject_fault(Fault::ReadOnly).await.unwrap();
    let r = ledger.session("s").await.unwrap().unwrap();
    assert_eq!((r.close_reason.as_deref(), r.billed_seconds), (Some("closed"), 4));
    ledger.shutdown().await;
    let (ledger, report) = open(&d, clock).await;
    assert_eq!((report.imported_sessions, report.fallback_duplicates), (0, 1));
    let sessions = ledger.sessions(all()).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].billed_seconds, 4);
    ledger.shutdown().await;
}

#[tokio::test]
async fn a_full_ledger_refuses_new_sessions_and_loses_none() {
    let d = temp_dir("full");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    ledger.inject_fault(Fault::Full).await.unwrap();
    let mut live = Vec::new();
    let refused = loop {
        match ledger.open_session(start(&format!("s{:05}", live.len()), "key1")).await {
            Ok(mut m) => {
                m.add_tts_chars("fake", 1);
                live.push(m)
            }
            Err(e) => break e,
        }
        assert!(live.len() < 20_000, "the page limit never bit");
    };
    assert!(matches!(refused, LedgerError::Unavailable(_)) && refused.to_string().contains("full"), "{refused}");
    let opened = live.len();
    clock.advance_ms(2_000);
    ledger.checkpoint().await.unwrap(); // may fail to write: retried, never fatal
    for m in live {
        m.close("closed").await;
    }
    ledger.shutdown().await;

    let (ledger, report) = open(&d, clock).await;
    assert!(report.recovered_sessions.is_empty(), "every live session was closed for real: {report:?}");
    let sessions = ledger.sessions(all()).await.unwrap();
    assert_eq!(sessions.len(), opened);
    assert!(sessions.iter().all(|s| s.close_reason.as_deref() == Some("closed") && s.billed_seconds == 2 && s.tts_chars == 1));
    ledger.shutdown().await;
}

#[tokio::test]
async fn a_torn_fallback_line_is_skipped_and_the_rest_imported() {
    let d = temp_dir("torn");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    let m = ledger.open_session(start("s", "key1")).await.unwrap();
    ledger.inject_fault(Fault::ReadOnly).await.unwrap();
    std::fs::write(d.join("ledger.fallback.jsonl"), "{\"session\":{\"id\":\"x").unwrap(); // a crash mid-write
    clock.advance_ms(1_500);
    m.close("closed").await;
    ledger.shutdown().await;
    let (ledger, report) = open(&d, clock).await;
    assert_eq!((report.imported_sessions, report.fallback_unreadable_lines, report.recovered_sessions.len()), (1, 1, 0));
    assert_eq!(ledger.session("s").await.unwrap().unwrap().billed_seconds, 2);
    ledger.shutdown().await;
}

#[tokio::test]
async fn a_session_opened_late_is_billed_from_its_connections_opening_never_from_the_future() {
    let d = temp_dir("opened");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    // A phone call: the socket opened at T0, its `start` frame (and so its record) 2.5 s later.
    clock.advance_ms(2_500);
    let call =
        ledger.open_session(SessionStart { opened_ms: Some(T0), protocol: "twilio".into(), ..start("sess_call", "k") }).await.unwrap();
    assert_eq!(call.started_ms(), T0);
    assert_eq!(call.so_far(clock.now_unix_ms()).0, 3, "the live meter counts from the opening too");
    assert_eq!(ledger.session("sess_call").await.unwrap().unwrap().started_ms, T0);
    // An opening "after now" (a clock stepped back in between) starts the session now.
    let odd = ledger.open_session(SessionStart { opened_ms: Some(T0 + 60_000), ..start("sess_odd", "k") }).await.unwrap();
    assert_eq!(odd.started_ms(), T0 + 2_500);
    clock.advance_ms(1_000);
    call.close("client_closed").await;
    odd.close("client_closed").await;
    let call = ledger.session("sess_call").await.unwrap().unwrap();
    assert_eq!((call.started_ms, call.ended_ms, call.billed_seconds), (T0, Some(T0 + 3_500), 4));
    let odd = ledger.session("sess_odd").await.unwrap().unwrap();
    assert_eq!((odd.started_ms, odd.ended_ms, odd.billed_seconds), (T0 + 2_500, Some(T0 + 3_500), 1));
}

#[tokio::test]
async fn speech_costs_are_checkpointed_and_go_through_the_fallback_file() {
    let d = temp_dir("speech-costs");
    let clock = Arc::new(ManualClock::new(T0));
    let (ledger, _) = open(&d, clock.clone()).await;
    // A checkpoint writes the speech so far to the open row (what a crash would leave: see
    // `store::recovered`, which keeps it).
    let mut live = ledger.open_session(start("live", "key1")).await.unwrap();
    live.set_speech_prices(prices());
    live.add_stt_audio_ms("dg", 60_000);
    clock.advance_ms(3_000);
    ledger.checkpoint().await.unwrap();
    let row = ledger.session("live").await.unwrap().unwrap();
    assert_eq!((row.ended_ms, row.stt_cost_picousd, row.speech.len()), (None, 7_700_000_000, 1));
    // A final record the ledger cannot take goes to the fallback file with its speech, and comes back.
    let mut m = ledger.open_session(start("fell_back", "key1")).await.unwrap();
    m.set_speech_prices(prices());
    m.add_tts_chars("eleven", 2_000);
    ledger.inject_fault(Fault::ReadOnly).await.unwrap();
    m.close("closed").await;
    live.close("closed").await;
    assert_eq!(ledger.session("fell_back").await.unwrap().unwrap().tts_cost_picousd, 100_000_000_000);
    ledger.shutdown().await;
    assert!(std::fs::read_to_string(d.join("ledger.fallback.jsonl")).unwrap().contains("\"speech\""));

    let (ledger, report) = open(&d, clock).await;
    assert_eq!(report.imported_sessions, 2);
    let fell_back = ledger.session("fell_back").await.unwrap().unwrap();
    assert_eq!(
        (fell_back.tts_cost_picousd, fell_back.speech[0].quantity, fell_back.speech[0].price_microusd),
        (100_000_000_000, 2_000, Some(50_000))
    );
    let live = ledger.session("live").await.unwrap().unwrap();
    assert_eq!((live.close_reason.as_deref(), live.stt_cost_picousd), (Some("closed"), 7_700_000_000));
    ledger.shutdown().await;
}

#[tokio::test]
async fn fallback_lines_written_before_speech_was_priced_are_still_imported() {
    let d = temp_dir("old-fallback");
    let clock = Arc::new(ManualClock::new(T0));
    // A line as an older voxgate wrote it: no stt_cost_picousd, tts_cost_picousd or speech.
    let old = r#"{"session":{"id":"old","key_id":"key1","protocol":"realtime","started_ms":1772409598000,"ended_ms":1772409601000,"checkpoint_ms":1772409601000,"billed_seconds":3,"rate_microusd_per_hour":4500000,"amount":13500000,"close_reason":"client_closed","input_tokens":5,"output_tokens":6,"cached_tokens":0,"token_cost_picousd":900,"stt_audio_ms":1200,"tts_chars":40,"turns":1}}"#;
    std::fs::write(d.join("ledger.fallback.jsonl"), format!("{old}\n")).unwrap();
    let (ledger, report) = open(&d, clock).await;
    assert_eq!((report.imported_sessions, report.fallback_unreadable_lines), (1, 0));
    let r = ledger.session("old").await.unwrap().unwrap();
    assert_eq!((r.billed_seconds, r.stt_audio_ms, r.tts_chars, r.token_cost_picousd), (3, 1200, 40, 900));
    assert_eq!((r.stt_cost_picousd, r.tts_cost_picousd, r.speech.len(), r.vendor_cost_picousd()), (0, 0, 0, 900));
    assert_eq!(r.margin_picousd(), 3 * 1_250_000_000 - 900);
    ledger.shutdown().await;
}
