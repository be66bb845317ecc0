//! API keys and their limits against a real voxgate on loopback: unknown and revoked keys, the
//! `key_sha256` form, requests and tokens per minute on the gateway (429, `Retry-After`, OpenAI's
//! error and `x-ratelimit-*` headers; paused time moves the per-minute windows), and concurrent
//! voice sessions per key on `/v1/realtime` and `/v1/phone/twilio` (real time: no window involved).

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{eventually, start_voxgate};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

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
[providers.fake]
kind = "fake"
[[models]]
id = "echo"
provider = "fake"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[routes.voice]
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
