//! Queries of the durable ledger: `GET /v1/sessions/{id}`, `GET /v1/sessions?from=&to=&key=`, and
//! `GET /v1/usage?from=&to=&group_by=key|model|day` (JSON, or CSV with `Accept: text/csv`). A key
//! sees its own records; without configured keys (loopback only) everything is visible.
//!
//! Query strings are read strictly ([`parse_query`]): a malformed percent-escape, a value that is not
//! UTF-8 or a parameter given twice is a 400 naming the parameter, never a silent guess.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{Caller, Shared};
use crate::metering::billing::Amount;
use crate::metering::ledger::{margin_picousd, GroupBy, SessionQuery, SessionRecord, UsageQuery, UsageRow};
use crate::metering::speech::{SpeechLine, SpeechTotal, Stage};

/// The key whose records the caller may see; `None` for everything.
fn scope(caller: &Caller) -> Option<String> {
    caller.key.as_ref().map(|_| caller.name.clone())
}

fn bad(message: impl Into<String>, param: &str) -> Response {
    ApiError::invalid(message, Some(param)).code("invalid_value").into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", format!("The ledger cannot answer right now: {e}"))
        .code("ledger_unavailable")
        .into_response()
}

pub async fn session(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => {
            return ApiError::invalid(format!("The session id in the path is not valid: {}", e.body_text()), Some("id"))
                .code("invalid_value")
                .into_response()
        }
    };
    match state.ledger.session(&id).await {
        Ok(Some(r)) if scope(&caller).is_none_or(|k| k == r.key_id) => axum::Json(session_json(&r)).into_response(),
        Ok(_) => ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("No session {id:?}."))
            .code("session_not_found")
            .into_response(),
        Err(e) => unavailable(e),
    }
}

pub async fn sessions(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = match parse_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let (from_ms, to_ms) = match window(&q) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Some(unknown) = q.keys().find(|k| !["from", "to", "key"].contains(&k.as_str())) {
        return bad(format!("Unknown query parameter {unknown:?}; use from, to and key."), unknown);
    }
    let key_id = match (scope(&caller), q.get("key")) {
        (Some(own), Some(asked)) if *asked != own => {
            return ApiError::new(StatusCode::FORBIDDEN, "invalid_request_error", "A key can only list its own sessions.")
                .code("forbidden")
                .into_response()
        }
        (Some(own), _) => Some(own),
        (None, asked) => asked.cloned(),
    };
    let records = match state.ledger.sessions(SessionQuery { from_ms, to_ms, key_id }).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    if wants_csv(&headers) {
        let mut csv = String::from("id,key,protocol,started_ms,ended_ms,billed_seconds,rate_usd_per_hour,amount_usd,close_reason,input_tokens,output_tokens,cached_tokens,token_cost_usd,stt_audio_seconds,tts_chars,turns,llm_cost_usd,stt_cost_usd,tts_cost_usd,vendor_cost_usd,margin_usd\n");
        for r in &records {
            let v = session_json(r);
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                field(&v["id"]),
                field(&v["key"]),
                field(&v["protocol"]),
                field(&v["started_ms"]),
                field(&v["ended_ms"]),
                field(&v["billed_seconds"]),
                field(&v["rate_usd_per_hour"]),
                field(&v["amount_usd"]),
                field(&v["close_reason"]),
                field(&v["input_tokens"]),
                field(&v["output_tokens"]),
                field(&v["cached_tokens"]),
                field(&v["token_cost_usd"]),
                field(&v["stt_audio_seconds"]),
                field(&v["tts_chars"]),
                field(&v["turns"]),
                field(&v["llm_cost_usd"]),
                field(&v["stt_cost_usd"]),
                field(&v["tts_cost_usd"]),
                field(&v["vendor_cost_usd"]),
                field(&v["margin_usd"]),
            ));
        }
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response();
    }
    let total: Amount = records.iter().map(|r| r.amount).sum();
    let sum = |f: fn(&SessionRecord) -> u64| records.iter().fold(0u64, |a, r| a.saturating_add(f(r)));
    let vendor = sum(SessionRecord::vendor_cost_picousd);
    axum::Json(json!({
        "object": "list",
        "data": records.iter().map(session_json).collect::<Vec<_>>(),
        "total_billed_seconds": records.iter().map(|r| r.billed_seconds).sum::<u64>(),
        "total_amount_usd": total.display_usd_full().trim_start_matches('$'),
        "total_llm_cost_usd": usd(sum(SessionRecord::llm_cost_picousd) as i128),
        "total_stt_cost_usd": usd(sum(|r| r.stt_cost_picousd) as i128),
        "total_tts_cost_usd": usd(sum(|r| r.tts_cost_picousd) as i128),
        "total_vendor_cost_usd": usd(vendor as i128),
        "total_margin_usd": usd(margin_picousd(total, vendor)),
    }))
    .into_response()
}

/// `GET /v1/usage` with `from`, `to` or `group_by`: the ledger's report. (Without them, the live
/// per-key, per-model view since the server started; see `http::usage`.)
pub async fn usage(caller: &Caller, state: &Shared, q: &HashMap<String, String>, headers: &HeaderMap) -> Response {
    let (from_ms, to_ms) = match window(q) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Some(unknown) = q.keys().find(|k| !["from", "to", "group_by"].contains(&k.as_str())) {
        return bad(format!("Unknown query parameter {unknown:?}; use from, to and group_by."), unknown);
    }
    let group_by = match q.get("group_by").map(String::as_str).unwrap_or("key") {
        "key" => GroupBy::Key,
        "model" => GroupBy::Model,
        "day" => GroupBy::Day,
        other => return bad(format!("group_by={other:?} is not one of key, model, day."), "group_by"),
    };
    let mut rows = match state.ledger.usage(UsageQuery { from_ms, to_ms, group_by }).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    if let Some(own) = scope(caller) {
        if group_by == GroupBy::Key {
            rows.retain(|r| r.group == own);
        } else {
            // Other groupings mix keys: a key sees them only for itself, by asking the ledger per key.
            return ApiError::new(StatusCode::FORBIDDEN, "invalid_request_error", "A key can only see usage grouped by key (its own row).")
                .code("forbidden")
                .into_response();
        }
    }
    if wants_csv(headers) {
        let mut csv = String::from("group,sessions,billed_seconds,sessions_amount_usd,session_input_tokens,session_output_tokens,session_cached_tokens,session_token_cost_usd,requests,request_input_tokens,request_output_tokens,request_cached_tokens,request_cost_usd,session_llm_cost_usd,session_stt_cost_usd,session_tts_cost_usd,session_vendor_cost_usd,session_margin_usd\n");
        for r in &rows {
            let v = usage_json(r);
            let keys = [
                "group",
                "sessions",
                "billed_seconds",
                "sessions_amount_usd",
                "session_input_tokens",
                "session_output_tokens",
                "session_cached_tokens",
                "session_token_cost_usd",
                "requests",
                "request_input_tokens",
                "request_output_tokens",
                "request_cached_tokens",
                "request_cost_usd",
                "session_llm_cost_usd",
                "session_stt_cost_usd",
                "session_tts_cost_usd",
                "session_vendor_cost_usd",
                "session_margin_usd",
            ];
            csv.push_str(&keys.iter().map(|k| field(&v[*k])).collect::<Vec<_>>().join(","));
            csv.push('\n');
        }
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response();
    }
    let group = match group_by {
        GroupBy::Key => "key",
        GroupBy::Model => "model",
        GroupBy::Day => "day",
    };
    axum::Json(json!({"object": "list", "group_by": group, "from_ms": from_ms, "to_ms": to_ms, "data": rows.iter().map(usage_json).collect::<Vec<_>>()}))
        .into_response()
}

fn session_json(r: &SessionRecord) -> Value {
    json!({
        "id": r.id,
        "object": "voxgate.session",
        "key": r.key_id,
        "protocol": r.protocol,
        "started_ms": r.started_ms,
        "ended_ms": r.ended_ms,
        "open": r.ended_ms.is_none(),
        "billed_seconds": r.billed_seconds,
        "rate_usd_per_hour": r.rate_microusd_per_hour as f64 / 1e6,
        "amount_usd": r.amount.display_usd_full().trim_start_matches('$'),
        "amount_cents": r.amount.cents(),
        "close_reason": r.close_reason,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "cached_tokens": r.cached_tokens,
        "token_cost_usd": r.token_cost_picousd as f64 / 1e12,
        "stt_audio_seconds": r.stt_audio_ms as f64 / 1000.0,
        "tts_chars": r.tts_chars,
        "turns": r.turns,
        "llm_cost_usd": usd(r.llm_cost_picousd() as i128),
        "stt_cost_usd": usd(r.stt_cost_picousd as i128),
        "tts_cost_usd": usd(r.tts_cost_picousd as i128),
        "vendor_cost_usd": usd(r.vendor_cost_picousd() as i128),
        "margin_usd": usd(r.margin_picousd()),
        "speech": r.speech.iter().map(speech_line_json).collect::<Vec<_>>(),
    })
}

/// Picodollars as an exact decimal string of dollars, twelve places, like `amount_usd`; negative
/// when a margin is.
fn usd(picousd: i128) -> String {
    let sign = if picousd < 0 { "-" } else { "" };
    let p = picousd.unsigned_abs();
    format!("{sign}{}.{:012}", p / 1_000_000_000_000, p % 1_000_000_000_000)
}

/// µUSD as an exact decimal string of dollars, six places.
fn usd_micro(microusd: u64) -> String {
    format!("{}.{:06}", microusd / 1_000_000, microusd % 1_000_000)
}

fn unit(stage: Stage) -> (&'static str, &'static str) {
    match stage {
        Stage::Stt => ("audio_ms", "price_usd_per_audio_minute"),
        Stage::Tts => ("chars", "price_usd_per_kchar"),
    }
}

fn speech_line_json(l: &SpeechLine) -> Value {
    let (unit, price_field) = unit(l.stage);
    let mut v = json!({
        "stage": l.stage.as_str(),
        "engine": l.engine,
        "quantity": l.quantity,
        "unit": unit,
        "cost_usd": usd(l.cost_picousd as i128),
    });
    v[price_field] = l.price_microusd.map_or(Value::Null, |p| Value::String(usd_micro(p)));
    v
}

fn speech_total_json(t: &SpeechTotal) -> Value {
    json!({
        "stage": t.stage.as_str(),
        "engine": t.engine,
        "quantity": t.quantity,
        "unit": unit(t.stage).0,
        "cost_usd": usd(t.cost_picousd as i128),
    })
}

fn usage_json(r: &UsageRow) -> Value {
    json!({
        "group": r.group,
        "sessions": r.sessions,
        "billed_seconds": r.billed_seconds,
        "sessions_amount_usd": r.sessions_amount.display_usd_full().trim_start_matches('$'),
        "session_input_tokens": r.session_input_tokens,
        "session_output_tokens": r.session_output_tokens,
        "session_cached_tokens": r.session_cached_tokens,
        "session_token_cost_usd": r.session_token_cost_picousd as f64 / 1e12,
        "requests": r.requests,
        "request_input_tokens": r.request_input_tokens,
        "request_output_tokens": r.request_output_tokens,
        "request_cached_tokens": r.request_cached_tokens,
        "request_cost_usd": r.request_cost_picousd as f64 / 1e12,
        "session_llm_cost_usd": usd(r.session_token_cost_picousd as i128),
        "session_stt_cost_usd": usd(r.session_stt_cost_picousd as i128),
        "session_tts_cost_usd": usd(r.session_tts_cost_picousd as i128),
        "session_vendor_cost_usd": usd(r.session_vendor_cost_picousd() as i128),
        "session_margin_usd": usd(r.session_margin_picousd()),
        "session_speech": r.session_speech.iter().map(speech_total_json).collect::<Vec<_>>(),
    })
}

/// One CSV field: numbers and plain text as they are, anything with a comma or quote quoted.
fn field(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"))
}

/// (The refusal is a whole response; this runs once per request.)
/// `from`/`to` as unix seconds, `YYYY-MM-DD` (UTC midnight) or `YYYY-MM-DDTHH:MM[:SS]Z`; default:
/// from the epoch to now plus a day. `to` is exclusive.
#[allow(clippy::result_large_err)]
fn window(q: &HashMap<String, String>) -> Result<(i64, i64), Response> {
    let parse = |name: &str, default: i64| {
        match q.get(name) {
        None => Ok(default),
        Some(text) => parse_time_ms(text).ok_or_else(|| {
            bad(format!("{name}={text:?} is not a time: use unix seconds, YYYY-MM-DD, or YYYY-MM-DDTHH:MM:SSZ (UTC), a date that exists (2026-02-31 does not)."), name)
        }),
    }
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let from = parse("from", 0)?;
    let to = parse("to", now_ms + 86_400_000)?;
    if to <= from {
        return Err(bad("`to` must be after `from`.", "to"));
    }
    Ok((from, to))
}

/// A query string's parameters, strictly: `+` is a space and `%XX` a byte; a `%` not followed by two
/// hex digits, a value that does not decode to UTF-8, or a parameter given twice is refused with a
/// 400 that names the parameter (axum's own extractor would guess, or answer in plain text).
#[allow(clippy::result_large_err)]
pub fn parse_query(raw: Option<&str>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let shown = |text: &str| text.chars().take(40).collect::<String>();
        let name = percent_decode(name).ok_or_else(|| {
            ApiError::invalid(format!("The query parameter name {:?} is not valid percent-encoded UTF-8.", shown(name)), None)
                .code("invalid_query")
        })?;
        let value = percent_decode(value).ok_or_else(|| {
            ApiError::invalid(format!("{name}={:?} is not valid percent-encoded UTF-8.", shown(value)), Some(&name)).code("invalid_query")
        })?;
        if out.contains_key(&name) {
            return Err(
                ApiError::invalid(format!("The query parameter {name:?} is given more than once."), Some(&name)).code("invalid_query")
            );
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding of one name or value; `None` when malformed.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Unix ms from unix seconds or an RFC 3339 UTC date/time.
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(seconds) = t.parse::<i64>() {
        return seconds.checked_mul(1000);
    }
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, rest)) => (d, Some(rest.strip_suffix('Z').or_else(|| rest.strip_suffix("+00:00")).unwrap_or(rest))),
        None => (t, None),
    };
    let mut d = date.split('-');
    let (y, m, day) = (d.next()?.parse::<i64>().ok()?, d.next()?.parse::<u32>().ok()?, d.next()?.parse::<u32>().ok()?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&day) {
        return None;
    }
    let mut ms = days_from_civil(y, m, day) * 86_400_000;
    if let Some(time) = time {
        let mut parts = time.split(':');
        let h = parts.next()?.parse::<i64>().ok()?;
        let min = parts.next()?.parse::<i64>().ok()?;
        let sec = parts.next().map_or(Some(0.0), |s| s.parse::<f64>().ok())?;
        if parts.next().is_some() || !(0..24).contains(&h) || !(0..60).contains(&min) || !(0.0..61.0).contains(&sec) {
            return None;
        }
        ms += h * 3_600_000 + min * 60_000 + (sec * 1000.0) as i64;
    }
    Some(ms)
}

/// 28 to 31: the days of month `m` (1 to 12) of year `y` (proleptic Gregorian).
fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_written_as_exact_decimals() {
        assert_eq!(usd(0), "0.000000000000");
        assert_eq!(usd(1), "0.000000000001");
        assert_eq!(usd(1_250_000_000), "0.001250000000");
        assert_eq!(usd(-1_449_570_000), "-0.001449570000");
        assert_eq!(usd(12_345_000_000_000_000), "12345.000000000000");
        assert_eq!(usd_micro(7_700), "0.007700");
        assert_eq!(usd_micro(1_500_000), "1.500000");
        let line = SpeechLine { stage: Stage::Tts, engine: "x".into(), quantity: 3, price_microusd: None, cost_picousd: 0 };
        let v = speech_line_json(&line);
        assert_eq!((v["unit"].as_str(), v["price_usd_per_kchar"].is_null()), (Some("chars"), true), "{v}");
    }

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time_ms("0"), Some(0));
        assert_eq!(parse_time_ms("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time_ms("2026-11-24"), Some(1_795_478_400_000));
        assert_eq!(parse_time_ms("2026-11-24T10:30:00Z"), Some(1_795_478_400_000 + 37_800_000));
        assert_eq!(parse_time_ms("2000-02-29T00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_time_ms("2024-02-29"), Some(1_709_164_800_000));
        assert_eq!(parse_time_ms("2026-04-30"), Some(1_777_507_200_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-24T25:00:00Z",
            "2026-11",
            "12:00",
            "2026-02-31",
            "2026-02-29",
            "1900-02-29",
            "2026-04-31",
            "2026-00-10",
            "2026-01-00",
        ] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries_are_decoded_strictly() {
        let q = parse_query(Some("from=2026-01-01T10%3A00Z&key=a+b&group_by=")).unwrap();
        assert_eq!(q["from"], "2026-01-01T10:00Z");
        assert_eq!(q["key"], "a b");
        assert_eq!(q["group_by"], "");
        assert_eq!(parse_query(Some("key=caf%C3%A9")).unwrap()["key"], "café");
        assert!(parse_query(None).unwrap().is_empty());
        for (raw, param) in
            [("key=%zz", Some("key")), ("key=%f", Some("key")), ("key=%ff", Some("key")), ("from=1&from=2", Some("from")), ("%e9=1", None)]
        {
            let e = parse_query(Some(raw)).unwrap_err();
            assert_eq!((e.status.as_u16(), e.param.as_deref(), e.code.as_deref()), (400, param, Some("invalid_query")), "{raw}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(field(&json!("a,b")), "\"a,b\"");
        assert_eq!(field(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(field(&json!(3)), "3");
        assert_eq!(field(&Value::Null), "");
    }
}
