//! API keys and their limits against a real voxgate on loopback: unknown and revoked keys, the
//! `key_sha256` form, requests and tokens per minute on the gateway (429, `Retry-After`, OpenAI's
//! error and `x-ratelimit-*` headers; paused time moves the per-minute windows), and concurrent
//! voice sessions per key on `/v1/realtime` and `/v1/phone/twilio` (real time: no window involved).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, eventually, start_voxgate, FAKE_ECHO};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn config() -> String {
    let hashed: String = voxgate::config::sha256(b"vk-hashed").iter().map(|b| format!("{b:02x}")).collect();
    format!(
        r#"
[auth]
api_keys = ["env:LEGACY_KEY"]
[[auth.keys]]
name = "open"
key = "env:OPEN_KEY"
rate_usd_per_hour = 0.06
[[auth.keys]]
name = "hashed"
key_sha256 = "{hashed}"
[[auth.keys]]
name = "gone"
key = "vk-gone"
revoked = true
[[auth.keys]]
name = "rpm"
key = "vk-rpm"
requests_per_minute = 3
[[auth.keys]]
name = "tpm"
key = "vk-tpm"
tokens_per_minute = 20
[[auth.keys]]
name = "solo"
key = "vk-solo"
max_sessions = 1
{FAKE_ECHO}[routes.voice]
models = ["echo"]
[stt]
engine = "fake"
[tts]
engine = "fake"
"#
    )
}

async fn start() -> (String, std::sync::Arc<voxgate::http::AppState>) {
    start_voxgate(&config(), &[("LEGACY_KEY", "vk-legacy"), ("OPEN_KEY", "vk-open")]).await
}

async fn chat(base: &str, key: &str, text: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn unknown_and_revoked_keys_get_401_and_both_key_forms_work() {
    let (base, _) = start().await;
    let unknown = chat(&base, "vk-nope", "hi").await;
    assert_eq!(unknown.status(), 401);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");

    let revoked = chat(&base, "vk-gone", "hi").await;
    assert_eq!(revoked.status(), 401);
    let body: Value = revoked.json().await.unwrap();
    assert_eq!(body["error"]["code"], "api_key_revoked", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
    assert!(!body.to_string().contains("vk-gone"), "the key is not echoed: {body}");

    // `[auth] api_keys` keeps working (as `key-1`); a `key_sha256` entry takes its plain key.
    for (key, name) in [("vk-legacy", "key-1"), ("vk-hashed", "hashed"), ("vk-open", "open")] {
        let ok = chat(&base, key, "hello there").await;
        assert_eq!(ok.status(), 200, "{name}");
        assert!(header(&ok, "x-ratelimit-limit-requests").is_none(), "no limits, no rate-limit headers");
    }
    // Usage is booked under each key's name, and a key sees only its own rows.
    for (key, name) in [("vk-legacy", "key-1"), ("vk-hashed", "hashed"), ("vk-open", "open")] {
        let usage: Value =
            reqwest::Client::new().get(format!("{base}/v1/usage")).bearer_auth(key).send().await.unwrap().json().await.unwrap();
        let keys: Vec<&str> = usage["data"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
        assert_eq!(keys, [name], "{usage}");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_per_minute_refuse_with_429_and_retry_after_then_refill() {
    let (base, _) = start().await;
    for remaining in ["2", "1", "0"] {
        let ok = chat(&base, "vk-rpm", "hi").await;
        assert_eq!(ok.status(), 200);
        assert_eq!(header(&ok, "x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(header(&ok, "x-ratelimit-remaining-requests"), Some(remaining));
        assert!(header(&ok, "x-ratelimit-limit-tokens").is_none(), "no token limit on this key");
    }
    let limited = chat(&base, "vk-rpm", "hi").await;
    assert_eq!(limited.status(), 429);
    // The bucket refills one request every 60 s / 3 = 20 s.
    assert_eq!(header(&limited, "retry-after"), Some("20"));
    assert_eq!(header(&limited, "x-ratelimit-remaining-requests"), Some("0"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["type"], "requests", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("requests per min (RPM)") && message.contains("Limit 3") && message.contains("20s"), "{message}");

    // Another key is not affected.
    assert_eq!(chat(&base, "vk-open", "hi").await.status(), 200);

    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(chat(&base, "vk-rpm", "hi").await.status(), 200, "one request back after Retry-After");
    assert_eq!(chat(&base, "vk-rpm", "hi").await.status(), 429);
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..3 {
        assert_eq!(chat(&base, "vk-rpm", "hi").await.status(), 200, "a whole minute later, the whole allowance");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_spends_the_minutes_tokens_makes_the_next_one_429() {
    let (base, _) = start().await;
    let first = chat(&base, "vk-tpm", "one two three").await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), Some("20"));
    let remaining = header(&first, "x-ratelimit-remaining-tokens").unwrap().to_string();
    let body: Value = first.json().await.unwrap();
    let spent = body["usage"]["total_tokens"].as_u64().unwrap();
    assert!(spent > 0 && spent < 20, "{body}");
    // A whole answer's headers are written after its usage is known: what is left after it.
    assert_eq!(remaining, (20 - spent).to_string());

    // This one pushes the minute over 20 tokens; it is still answered (its size was not known).
    let long = "alpha beta gamma delta epsilon zeta eta theta iota kappa";
    let second = chat(&base, "vk-tpm", long).await;
    assert_eq!(second.status(), 200);
    let body: Value = second.json().await.unwrap();
    let total = spent + body["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total > 20, "{total}");

    let limited = chat(&base, "vk-tpm", "hi").await;
    assert_eq!(limited.status(), 429);
    assert_eq!(header(&limited, "x-ratelimit-remaining-tokens"), Some("0"));
    // Owed: total - 20 tokens, plus one to have something left, refilled at 20 per 60 s (3 s each).
    let wait_s = (total - 20 + 1) * 3;
    assert_eq!(header(&limited, "retry-after"), Some(wait_s.to_string().as_str()));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tokens per min (TPM)"), "{body}");

    tokio::time::advance(Duration::from_secs(wait_s - 1)).await;
    assert_eq!(chat(&base, "vk-tpm", "hi").await.status(), 429, "not yet");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(chat(&base, "vk-tpm", "hi").await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn streamed_answers_are_charged_too() {
    let (base, _) = start().await;
    let long = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("vk-tpm")
        .json(&json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": long}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A stream's headers leave before its usage is known: the budget before this request.
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some("20"));
    let frames = support::sse_data(r).await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(chat(&base, "vk-tpm", "hi").await.status(), 429);
}

async fn connect_realtime(base: &str, key: Option<&str>, via_protocol: bool) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}/v1/realtime?model=voice", base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = key {
        let (name, value) = if via_protocol {
            ("sec-websocket-protocol", format!("realtime, openai-insecure-api-key.{key}"))
        } else {
            ("authorization", format!("Bearer {key}"))
        };
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async_with_config(request, None, true).await.map(|(ws, _)| ws)
}

fn refusal(result: Result<Ws, tokio_tungstenite::tungstenite::Error>) -> (u16, Value) {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// The next text frame as JSON, or the close frame's (code, reason).
async fn next_frame(ws: &mut Ws) -> Result<Value, (CloseCode, String)> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame within 10 s");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => return Err((f.code, f.reason.to_string())),
            Some(Ok(Message::Close(None))) | None => return Err((CloseCode::Status, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error: {e}"),
        }
    }
}

#[tokio::test]
async fn realtime_refuses_unknown_and_revoked_keys_before_the_upgrade() {
    let (base, _) = start().await;
    for via_protocol in [false, true] {
        let (status, body) = refusal(connect_realtime(&base, Some("vk-gone"), via_protocol).await);
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("api_key_revoked")), "{body}");
        let (status, body) = refusal(connect_realtime(&base, Some("vk-nope"), via_protocol).await);
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{body}");
    }
    let (status, _) = refusal(connect_realtime(&base, None, false).await);
    assert_eq!(status, 401);
    let mut ws = connect_realtime(&base, Some("vk-hashed"), true).await.expect("a good key connects");
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "session.created");
}

#[tokio::test]
async fn realtime_key_at_its_session_limit_gets_an_error_event_and_close_1008() {
    let (base, state) = start().await;
    let solo = state.keys.by_name("solo").unwrap().clone();
    let mut first = connect_realtime(&base, Some("vk-solo"), false).await.unwrap();
    assert_eq!(next_frame(&mut first).await.unwrap()["type"], "session.created");
    assert_eq!(solo.sessions_open(), 1);

    let mut second = connect_realtime(&base, Some("vk-solo"), true).await.expect("the upgrade is accepted");
    let error = next_frame(&mut second).await.expect("an error event before the close");
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert_eq!(error["error"]["code"], "session_limit_exceeded", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"solo\"") && message.contains("1 concurrent voice session"), "{message}");
    let (code, reason) = next_frame(&mut second).await.expect_err("then the close");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("session limit") && reason.contains("solo"), "{reason}");
    assert_eq!(solo.sessions_open(), 1, "the refused one took no slot");
    let page = state.gateway.accounts.metrics.render();
    assert!(page.contains("voxgate_errors_total{kind=\"session_limit\"} 1\n"), "{page}");

    // Another key is not limited by this one's sessions.
    let mut other = connect_realtime(&base, Some("vk-open"), false).await.unwrap();
    assert_eq!(next_frame(&mut other).await.unwrap()["type"], "session.created");

    first.close(None).await.unwrap();
    assert!(eventually(|| solo.sessions_open() == 0).await, "the slot is freed when the session ends");
    let mut third = connect_realtime(&base, Some("vk-solo"), false).await.unwrap();
    assert_eq!(next_frame(&mut third).await.unwrap()["type"], "session.created");
    assert_eq!(solo.sessions_open(), 1);
}

async fn twilio_call(base: &str, key: &str) -> Ws {
    let url = format!("{}/v1/phone/twilio", base.replace("http://", "ws://"));
    let mut ws = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects").0;
    ws.send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string())).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"model": "voice", "api_key": key}}});
    ws.send(Message::text(start.to_string())).await.unwrap();
    ws
}

#[tokio::test]
async fn twilio_calls_over_the_session_limit_or_with_a_revoked_key_close_1008() {
    let (base, state) = start().await;
    let solo = state.keys.by_name("solo").unwrap().clone();

    let mut revoked = twilio_call(&base, "vk-gone").await;
    let (code, reason) = next_frame(&mut revoked).await.expect_err("closed");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("revoked"), "{reason}");

    let mut first = twilio_call(&base, "vk-solo").await;
    assert!(eventually(|| solo.sessions_open() == 1).await, "the first call is admitted");
    let mut second = twilio_call(&base, "vk-solo").await;
    let (code, reason) = next_frame(&mut second).await.expect_err("closed");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("session limit") && reason.contains("solo"), "{reason}");
    assert_eq!(solo.sessions_open(), 1);

    first.send(Message::text(json!({"event": "stop", "sequenceNumber": "2", "streamSid": "MZ1"}).to_string())).await.unwrap();
    first.close(None).await.ok();
    assert!(eventually(|| solo.sessions_open() == 0).await, "the slot is freed when the call ends");
    let mut third = twilio_call(&base, "vk-solo").await;
    assert!(eventually(|| solo.sessions_open() == 1).await, "a new call is admitted");
    // And it is not closed: nothing arrives while the caller is silent.
    assert!(tokio::time::timeout(Duration::from_millis(300), third.next()).await.is_err(), "the admitted call stays open");
}

/// Sends a user message and `response.create` (text out, with `event_id` if given) and returns the
/// session's events up to the `rate_limits.updated` that follows the response (or its refusal).
async fn ask(ws: &mut Ws, text: &str, event_id: Option<&str>) -> Vec<Value> {
    let item = json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}});
    ws.send(Message::text(item.to_string())).await.unwrap();
    let mut create = json!({"type": "response.create", "response": {"output_modalities": ["text"]}});
    if let Some(id) = event_id {
        create["event_id"] = json!(id);
    }
    ws.send(Message::text(create.to_string())).await.unwrap();
    let mut events = Vec::new();
    loop {
        let e = next_frame(ws).await.expect("the session stays open");
        let last = e["type"] == "rate_limits.updated";
        events.push(e);
        if last {
            return events;
        }
    }
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[tokio::test(start_paused = true)]
async fn voice_responses_spend_the_keys_requests_per_minute_and_rate_limits_updated_reports_them() {
    let (base, state) = start().await;
    let mut ws = connect_realtime(&base, Some("vk-rpm"), false).await.unwrap();
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "session.created");
    // Once when the session starts, in the SDK's schema: one entry per limit the key has.
    let first = next_frame(&mut ws).await.unwrap();
    assert_eq!(first["type"], "rate_limits.updated", "{first}");
    assert!(first["event_id"].as_str().is_some_and(|id| !id.is_empty()), "{first}");
    assert_eq!(first["rate_limits"], json!([{"name": "requests", "limit": 3, "remaining": 3, "reset_seconds": 0.0}]));

    let events = ask(&mut ws, "hi", None).await;
    let done = of_type(&events, "response.done");
    assert_eq!(done.len(), 1, "{events:?}");
    assert_eq!(done[0]["response"]["status"], "completed");
    // After the response: one request spent, whole again 20 s later (3 a minute).
    let after = events.last().unwrap();
    assert_eq!(after["rate_limits"], json!([{"name": "requests", "limit": 3, "remaining": 2, "reset_seconds": 20.0}]), "{after}");

    // The gateway and the session spend one budget.
    let chat = chat(&base, "vk-rpm", "hi").await;
    assert_eq!(chat.status(), 200);
    assert_eq!(header(&chat, "x-ratelimit-remaining-requests"), Some("1"));
    let events = ask(&mut ws, "again", None).await;
    assert_eq!(of_type(&events, "response.done")[0]["response"]["status"], "completed");
    assert_eq!(events.last().unwrap()["rate_limits"][0]["remaining"], 0);

    // Over the limit: no response, an error naming the limit and the wait, the budget; the session lives.
    let events = ask(&mut ws, "and again", Some("r3")).await;
    assert!(of_type(&events, "response.created").is_empty(), "{events:?}");
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    let error = &errors[0]["error"];
    assert_eq!(error["type"], "requests", "{error}");
    assert_eq!(error["code"], "rate_limit_exceeded", "{error}");
    assert_eq!(error["event_id"], "r3", "{error}");
    assert_eq!(
        error["message"], "Rate limit reached for API key \"rpm\" on requests per min (RPM): Limit 3. Please try again in 20s.",
        "{error}"
    );
    assert_eq!(events.last().unwrap()["rate_limits"][0]["remaining"], 0);
    assert!(state.gateway.accounts.metrics.render().contains("voxgate_errors_total{kind=\"rate_limited\"} 1\n"));

    tokio::time::advance(Duration::from_secs(20)).await;
    let events = ask(&mut ws, "one more", None).await;
    let done = of_type(&events, "response.done");
    assert_eq!(done[0]["response"]["status"], "completed", "{events:?}");
    // The session answers again once the budget has a request.
    assert_eq!(done[0]["response"]["output"][0]["content"][0]["text"], "You said: one more");
    assert_eq!(events.last().unwrap()["rate_limits"][0]["remaining"], 0);
}

#[tokio::test(start_paused = true)]
async fn voice_responses_are_charged_their_tokens_and_refused_once_the_minutes_tokens_are_spent() {
    let (base, _) = start().await;
    let mut ws = connect_realtime(&base, Some("vk-tpm"), true).await.unwrap();
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "session.created");
    let first = next_frame(&mut ws).await.unwrap();
    assert_eq!(first["rate_limits"], json!([{"name": "tokens", "limit": 20, "remaining": 20, "reset_seconds": 0.0}]), "{first}");

    let events = ask(&mut ws, "hi", None).await;
    let spent = of_type(&events, "response.done")[0]["response"]["usage"]["total_tokens"].as_u64().unwrap();
    assert!(spent > 0 && spent < 20, "{spent}");
    let budget = &events.last().unwrap()["rate_limits"][0];
    assert_eq!(budget["name"], "tokens");
    assert_eq!(budget["remaining"], 20 - spent, "{budget}");
    // 3 s a token at 20 a minute.
    assert_eq!(budget["reset_seconds"], (spent * 3) as f64, "{budget}");

    // The history grows: this one goes over the minute's 20 (it is still answered: its size was not known).
    let events = ask(&mut ws, "alpha beta gamma delta epsilon zeta eta theta", None).await;
    let second = of_type(&events, "response.done")[0]["response"]["usage"]["total_tokens"].as_u64().unwrap();
    assert!(spent + second > 20, "{spent} + {second}");
    assert_eq!(events.last().unwrap()["rate_limits"][0]["remaining"], 0);

    let events = ask(&mut ws, "hi", None).await;
    let error = &of_type(&events, "error")[0]["error"];
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("tokens"), Some("rate_limit_exceeded")), "{error}");
    // Owed: the tokens over 20, plus one to have something left, at 3 s each.
    let wait_s = (spent + second - 20 + 1) * 3;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("tokens per min (TPM): Limit 20") && message.contains(&format!("try again in {wait_s}s")), "{message}");
    assert!(of_type(&events, "response.created").is_empty());

    tokio::time::advance(Duration::from_secs(wait_s)).await;
    let events = ask(&mut ws, "hi", None).await;
    assert_eq!(of_type(&events, "response.done")[0]["response"]["status"], "completed", "{events:?}");
}

#[tokio::test]
async fn keys_without_per_minute_limits_get_no_rate_limits_updated() {
    let (base, _) = start().await;
    let mut ws = connect_realtime(&base, Some("vk-open"), false).await.unwrap();
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "session.created");
    let item = json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}});
    ws.send(Message::text(item.to_string())).await.unwrap();
    ws.send(Message::text(json!({"type": "response.create", "response": {"output_modalities": ["text"]}}).to_string())).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let e = next_frame(&mut ws).await.unwrap();
        let done = e["type"] == "response.done";
        seen.push(e["type"].as_str().unwrap().to_string());
        if done {
            break;
        }
    }
    // Nothing follows response.done: the next event is the answer to the next client event.
    ws.send(Message::text(json!({"type": "response.cancel", "event_id": "probe"}).to_string())).await.unwrap();
    let after = next_frame(&mut ws).await.unwrap();
    assert_eq!((after["type"].as_str(), after["error"]["event_id"].as_str()), (Some("error"), Some("probe")), "{after}");
    assert!(!seen.iter().any(|t| t == "rate_limits.updated"), "{seen:?}");
}

/// The ledger record of a closed session, by id (the final record is written when it closes).
async fn closed_record(base: &str, key: &str, id: &str) -> Value {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let r = client.get(format!("{base}/v1/sessions/{id}")).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let record: Value = r.json().await.unwrap();
        if record["open"] == false {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("session {id} did not close");
}

#[tokio::test]
async fn a_session_is_billed_at_its_keys_own_hourly_rate() {
    let (base, _) = start().await;
    let mut ids = Vec::new();
    for key in ["vk-open", "vk-hashed"] {
        let mut ws = connect_realtime(&base, Some(key), false).await.unwrap();
        let created = next_frame(&mut ws).await.unwrap();
        ids.push((key, created["session"]["id"].as_str().unwrap().to_string()));
        ws.close(None).await.unwrap();
    }
    // "open" has rate_usd_per_hour = 0.06; "hashed" has none of its own: the server's $4.50.
    for ((key, id), (name, rate_microusd)) in ids.iter().zip([("open", 60_000u64), ("hashed", 4_500_000)]) {
        let record = closed_record(&base, key, id).await;
        assert_eq!(record["key"], name, "{record}");
        assert_eq!(record["rate_usd_per_hour"].as_f64(), Some(rate_microusd as f64 / 1e6), "{record}");
        let seconds = record["billed_seconds"].as_u64().unwrap();
        let (started, ended) = (record["started_ms"].as_i64().unwrap(), record["ended_ms"].as_i64().unwrap());
        assert_eq!(seconds as i64, ((ended - started).max(1) + 999) / 1000, "{record}");
        // Exact, to the picodollar: seconds × rate / 3600.
        let expected = voxgate::metering::amount(seconds, rate_microusd);
        assert_eq!(record["amount_usd"], expected.display_usd_full().trim_start_matches('$'), "{record}");
        let usd = record["amount_usd"].as_str().unwrap().parse::<f64>().unwrap();
        assert!((usd - seconds as f64 * rate_microusd as f64 / 1e6 / 3600.0).abs() < 1e-12, "{record}");
        assert_eq!(record["amount_cents"], expected.cents() as u64, "{record}");
    }
    // The key's own sessions only: its list shows its rate, and its total is the sum of its sessions.
    let list: Value = reqwest::Client::new()
        .get(format!("{base}/v1/sessions?from=2020-01-01"))
        .bearer_auth("vk-open")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = list["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(list["total_amount_usd"], rows[0]["amount_usd"], "{list}");
}
