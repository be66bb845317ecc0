//! The server's edge against strangers, on a real voxgate on loopback: keyless Twilio sockets that
//! must not take voice session slots, oversized frames, Twilio's request signatures on the TwiML
//! webhook and the stream's upgrade, browser origins and DNS rebinding (`Origin`, `Host`),
//! `/metrics` behind `[auth]`, and keys kept out of URLs (the TwiML webhook's stream token, the
//! dashboard's key in a header).

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, next_event, start_voxgate, Ws, FAKE_ECHO};

const TWILIO_TOKEN: &str = "twilio-auth-token-test";

/// A server with one key (`phone`, `vk-phone`), two voice session slots, fake engines, and `extra`
/// (more sections) at the end.
async fn start(extra: &str) -> (String, std::sync::Arc<voxgate::http::AppState>) {
    let config = format!(
        "[auth]\n[[auth.keys]]\nname = \"phone\"\nkey = \"vk-phone\"\n{FAKE_ECHO}[routes.voice]\nmodels = [\"echo\"]\n[realtime]\nmax_sessions = 2\n[stt]\nengine = \"fake\"\n[tts]\nengine = \"fake\"\n{extra}"
    );
    start_voxgate(&config, &[("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)]).await
}

/// A server without keys (loopback only): what a page in the operator's own browser could reach.
async fn start_open(extra: &str) -> (String, std::sync::Arc<voxgate::http::AppState>) {
    let config = format!("{FAKE_ECHO}[routes.default]\nmodels = [\"echo\"]\n[stt]\nengine = \"fake\"\n[tts]\nengine = \"fake\"\n{extra}");
    start_voxgate(&config, &[("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)]).await
}

fn ws_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.replace("http://", "ws://"))
}

async fn connect(url: &str, headers: &[(&'static str, String)]) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async_with_config(request, None, true).await.map(|(ws, _)| ws)
}

/// The HTTP status and OpenAI error object of a refused upgrade.
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
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a frame within 20 s") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => return Err((f.code, f.reason.to_string())),
            Some(Ok(Message::Close(None))) | None => return Err((CloseCode::Status, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err((CloseCode::Abnormal, e.to_string())),
        }
    }
}

/// Twilio's first two frames, with `params` as the stream's custom parameters.
async fn twilio_start(ws: &mut Ws, params: Value) {
    ws.send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string())).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": params}});
    ws.send(Message::text(start.to_string())).await.unwrap();
}

/// Twilio's signature, computed here from its definition: base64 HMAC-SHA1 of the URL and the sorted
/// parameters, keyed with the auth token (checked against Twilio's own example in the unit tests).
fn sign(url: &str, params: &[(&str, &str)]) -> String {
    let map: HashMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    voxgate::http::phone::twilio_signature(TWILIO_TOKEN, url, &map)
}

/// One raw HTTP/1.1 request with exactly these headers (so `Host` is what the test says); the status
/// and the body (read as far as its `content-length`).
async fn raw_request(base: &str, head: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |text: &[u8]| {
        let text = String::from_utf8_lossy(text);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
        body.len() >= length.unwrap_or(0)
    };
    while !complete(&text) {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("an answer within 10 s").unwrap();
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&text).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

// Defect 3: a keyless socket used to take one of the server's voice session slots before any key
// was seen, and hold it until `start` (10 s); here every slot stays free for keyed sessions.
#[tokio::test]
async fn keyless_twilio_sockets_do_not_take_voice_session_slots() {
    let (base, state) = start("").await;
    let phone = state.keys.by_name("phone").unwrap().clone();
    let mut idle = Vec::new();
    for i in 0..5 {
        let mut ws = connect(&ws_url(&base, "/v1/phone/twilio"), &[]).await.unwrap_or_else(|e| panic!("keyless socket {i}: {e}"));
        ws.send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string())).await.unwrap();
        idle.push(ws);
    }
    assert_eq!(state.session_slots.available_permits(), 2, "keyless sockets hold no session slot");

    // A keyed Realtime session starts...
    let mut rt = connect(&ws_url(&base, "/v1/realtime?model=voice"), &[("authorization", "Bearer vk-phone".into())])
        .await
        .expect("a keyed session is let in while keyless sockets wait");
    assert_eq!(next_event(&mut rt).await["type"], "session.created");
    // ...and so does a phone call whose `start` carries the key.
    let mut call = connect(&ws_url(&base, "/v1/phone/twilio"), &[]).await.unwrap();
    twilio_start(&mut call, json!({"model": "voice", "api_key": "vk-phone"})).await;
    assert!(eventually(|| phone.sessions_open() == 2).await, "the call is admitted");
    assert_eq!(state.session_slots.available_permits(), 0);
    // The server is now full: a call whose key is good is refused at `start` with a reason.
    let mut late = connect(&ws_url(&base, "/v1/phone/twilio"), &[]).await.unwrap();
    twilio_start(&mut late, json!({"model": "voice", "api_key": "vk-phone"})).await;
    let (code, reason) = next_frame(&mut late).await.expect_err("closed");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("limit of 2 concurrent voice sessions"), "{reason}");
    // The keyless sockets are still waiting (nothing was closed to make room).
    for ws in &mut idle {
        assert!(tokio::time::timeout(Duration::from_millis(50), ws.next()).await.is_err(), "a waiting socket got a frame");
    }
}

// Defect 3: tungstenite's default limit let one message be 64 MiB; a Twilio stream's are capped
// at 64 KiB and a larger one gets a close that says why.
#[tokio::test]
async fn an_oversized_twilio_frame_is_refused_with_close_1009() {
    let (base, _) = start_open("").await;
    let mut ws = connect(&ws_url(&base, "/v1/phone/twilio"), &[]).await.unwrap();
    let huge = format!("{{\"event\":\"connected\",\"pad\":\"{}\"}}", "x".repeat(100 * 1024));
    ws.send(Message::text(huge)).await.unwrap();
    let (code, reason) = next_frame(&mut ws).await.expect_err("closed");
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(reason.contains("too large") && reason.contains("64 KiB"), "{reason}");
    // A message just under the limit is read (and refused as not Twilio's, with its own code).
    let mut ws = connect(&ws_url(&base, "/v1/phone/twilio"), &[]).await.unwrap();
    ws.send(Message::text("x".repeat(60 * 1024))).await.unwrap();
    let (code, _) = next_frame(&mut ws).await.expect_err("closed");
    assert_eq!(code, CloseCode::Unsupported);
}

#[tokio::test]
async fn an_oversized_realtime_event_is_refused_with_close_1009() {
    // `max_event_bytes` 1 KiB: the socket takes messages up to 4 KiB + 64 KiB.
    let (base, _) = start_open("[realtime]\nmax_event_bytes = 1024\n").await;
    let mut ws = connect(&ws_url(&base, "/v1/realtime"), &[]).await.unwrap();
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "session.created");
    let huge = json!({"type": "session.update", "session": {"instructions": "x".repeat(100 * 1024)}});
    ws.send(Message::text(huge.to_string())).await.unwrap();
    let (code, reason) = loop {
        match next_frame(&mut ws).await {
            Ok(_) => continue,
            Err(closed) => break closed,
        }
    };
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(reason.contains("too large"), "{reason}");
}

// Defect 3: with `[phone] twilio_auth_token`, the stream's upgrade needs Twilio's signature of its URL.
#[tokio::test]
async fn the_stream_upgrade_needs_twilios_signature_when_an_auth_token_is_set() {
    let (base, state) = start("[phone]\ntwilio_auth_token = \"env:TWILIO_AUTH_TOKEN\"\n").await;
    let url = ws_url(&base, "/v1/phone/twilio");
    let wss = url.replace("ws://", "wss://");
    for headers in [vec![], vec![("x-twilio-signature", sign(&wss, &[("a", "b")]))], vec![("x-twilio-signature", "bm9wZQ==".to_string())]] {
        let (status, body) = refusal(connect(&url, &headers).await);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "invalid_twilio_signature", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    assert_eq!(state.session_slots.available_permits(), 2);
    // Twilio signs the URL of the <Stream>, wss:// as Twilio connects.
    let mut ws = connect(&url, &[("x-twilio-signature", sign(&wss, &[]))]).await.expect("a signed upgrade is let in");
    twilio_start(&mut ws, json!({"model": "voice", "api_key": "vk-phone"})).await;
    let phone = state.keys.by_name("phone").unwrap().clone();
    assert!(eventually(|| phone.sessions_open() == 1).await, "the signed call is admitted");
    // A client with a gateway key needs no signature.
    connect(&url, &[("authorization", "Bearer vk-phone".into())]).await.expect("a keyed upgrade is let in");
}

// Defect 3: the TwiML webhook checks the signature over its URL and its POST parameters.
#[tokio::test]
async fn the_twiml_webhook_needs_twilios_signature_when_an_auth_token_is_set() {
    let (base, _) = start_open("[phone]\ntwilio_auth_token = \"env:TWILIO_AUTH_TOKEN\"\n").await;
    let url = format!("{base}/v1/phone/twilio/twiml?model=default");
    let params = [("CallSid", "CA1234567890ABCDE"), ("From", "+14158675309"), ("To", "+18005551212"), ("AccountSid", "AC1")];
    let form = "CallSid=CA1234567890ABCDE&From=%2B14158675309&To=%2B18005551212&AccountSid=AC1";
    let post = |signature: Option<String>| {
        let mut r = reqwest::Client::new().post(&url).header("content-type", "application/x-www-form-urlencoded").body(form);
        if let Some(s) = signature {
            r = r.header("x-twilio-signature", s);
        }
        r.send()
    };
    let https_url = url.replace("http://", "https://");
    let tampered: Vec<(&str, &str)> = params.iter().map(|&(k, v)| if k == "From" { (k, "+15550000000") } else { (k, v) }).collect();
    for signature in [None, Some(sign(&https_url, &tampered)), Some(sign(&https_url.replace("model=default", "model=x"), &params))] {
        let r = post(signature).await.unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_twilio_signature", "{body}");
    }
    let r = post(Some(sign(&https_url, &params))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<Stream url=\"wss://"));
}

// Defect 5: a page on another site must not drive a keyless local server from its visitor's browser.
#[tokio::test]
async fn a_foreign_origin_is_refused_and_the_servers_own_pages_pass() {
    let (base, _) = start_open("").await;
    let own = base.clone();
    let realtime = ws_url(&base, "/v1/realtime?model=default");
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (status, body) = refusal(connect(&realtime, &[("origin", origin.to_string())]).await);
        assert_eq!(status, 403, "{origin}: {body}");
        assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("allowed_origins"), "{body}");
    }
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]});
    let client = reqwest::Client::new();
    // A "simple" cross-site POST (no preflight) is refused too.
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(chat.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "origin_not_allowed");
    let r = client.post(format!("{base}/v1/phone/twilio/twiml")).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 403);

    // The demo page's own origin, and clients without an Origin (SDKs), pass.
    let mut ws = connect(&realtime, &[("origin", own.clone())]).await.expect("the server's own page is let in");
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    let r = client.post(format!("{base}/v1/chat/completions")).header("origin", own).json(&chat).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(client.post(format!("{base}/v1/chat/completions")).json(&chat).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn allowed_origins_let_other_sites_in() {
    let (base, _) = start_open("[server]\nallowed_origins = [\"https://App.Example.com/\"]\n").await;
    let realtime = ws_url(&base, "/v1/realtime?model=default");
    let mut ws = connect(&realtime, &[("origin", "https://app.example.com".into())]).await.expect("an allowed origin is let in");
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    assert_eq!(refusal(connect(&realtime, &[("origin", "https://other.example.com".into())]).await).0, 403);
    let (any, _) = start_open("[server]\nallowed_origins = [\"*\"]\n").await;
    connect(&ws_url(&any, "/v1/realtime?model=default"), &[("origin", "https://other.example.com".into())])
        .await
        .expect("\"*\" allows any");
    let bad = voxgate::config::Config::from_toml("[server]\nallowed_origins = [\"app.example.com/x\"]\n", &|_| None).unwrap_err();
    assert!(bad.to_string().contains("server.allowed_origins[0]"), "{bad}");
}

// Defect 5: DNS rebinding. A page on evil.example whose name now points at 127.0.0.1 is same-origin
// with itself; only the Host it sends shows it is not talking to localhost.
#[tokio::test]
async fn a_rebinding_host_is_refused_on_a_loopback_listener() {
    let (base, _) = start_open("").await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let get = |host: String| format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    for host in [format!("evil.example:{port}"), "127.0.0.1:1".to_string(), format!("localhost.evil.example:{port}")] {
        let (status, body) = raw_request(&base, &get(host.clone())).await;
        assert_eq!(status, 403, "{host}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "host_not_allowed", "{body}");
    }
    let upgrade = format!(
        "GET /v1/realtime?model=default HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    assert_eq!(raw_request(&base, &upgrade).await.0, 403);
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        assert_eq!(raw_request(&base, &get(host.clone())).await.0, 200, "{host}");
    }
    // A proxy's public name, when the operator lists it.
    let (proxied, _) = start_open("[server]\nallowed_hosts = [\"voice.example.com\"]\n").await;
    assert_eq!(raw_request(&proxied, &get("voice.example.com".into())).await.0, 200);
    assert_eq!(raw_request(&proxied, &get("evil.example".into())).await.0, 403);
}

// Defect 11: /metrics follows [auth].
#[tokio::test]
async fn metrics_need_a_key_when_keys_are_set_unless_public() {
    let (base, _) = start("").await;
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_api_key");
    assert_eq!(client.get(format!("{base}/metrics")).bearer_auth("vk-wrong").send().await.unwrap().status(), 401);
    let r = client.get(format!("{base}/metrics")).bearer_auth("vk-phone").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("voxgate_http_requests_total"));
    // Health stays open for load balancers.
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);

    let (public, _) = start("[metrics]\npublic = true\n").await;
    assert_eq!(client.get(format!("{public}/metrics")).send().await.unwrap().status(), 200);
}

// Defect 11: the TwiML webhook takes the key as HTTP Basic credentials, never in its URL, and the
// TwiML carries a short-lived stream token instead of the key; the stream accepts the token.
#[tokio::test]
async fn the_twiml_webhook_takes_the_key_in_a_header_and_hands_the_stream_a_token() {
    let (base, state) = start("").await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/phone/twilio/twiml?model=voice");

    let r = client.post(format!("{url}&api_key=vk-phone")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "api_key_in_url", "{body}");
    // Without credentials: 401 and a Basic challenge, which is when Twilio sends the URL's credentials.
    let r = client.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"voxgate\"");
    assert_eq!(client.post(&url).basic_auth("voxgate", Some("vk-wrong")).send().await.unwrap().status(), 401);

    let r = client.post(&url).basic_auth("voxgate", Some("vk-phone")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let twiml = r.text().await.unwrap();
    assert!(!twiml.contains("vk-phone"), "the key is not in the TwiML: {twiml}");
    let token = twiml.split("<Parameter name=\"token\" value=\"").nth(1).and_then(|t| t.split('"').next()).expect("a token parameter");
    assert!(token.starts_with("vt1.") && token.ends_with(".phone"), "{token}");
    assert_eq!(client.post(&url).bearer_auth("vk-phone").send().await.unwrap().status(), 200);

    // Twilio sends the <Parameter>s back in `start`: the token admits the call under its key.
    let mut ws = connect(&ws_url(&base, "/v1/phone/twilio"), &[]).await.unwrap();
    twilio_start(&mut ws, json!({"model": "voice", "token": token})).await;
    let phone = state.keys.by_name("phone").unwrap().clone();
    assert!(eventually(|| phone.sessions_open() == 1).await, "the call with the token is admitted");
    // A forged token is refused.
    let mut forged = connect(&ws_url(&base, "/v1/phone/twilio"), &[]).await.unwrap();
    let bad = token.replacen("vt1.", "vt1.9", 1);
    twilio_start(&mut forged, json!({"model": "voice", "token": bad})).await;
    let (code, reason) = next_frame(&mut forged).await.expect_err("closed");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("invalid stream token"), "{reason}");
}

// Defect 11: the dashboard used to take the key from `?key=` (a URL, so in every proxy's log); it
// now reads it from the fragment or the page's form into sessionStorage and sends it as a header.
#[tokio::test]
async fn the_dashboard_keeps_the_key_out_of_urls() {
    let (base, _) = start_open("").await;
    let page = reqwest::get(format!("{base}/dashboard")).await.unwrap().text().await.unwrap();
    assert!(!page.contains("location.search"), "the dashboard reads its key from the query string");
    assert!(page.contains("sessionStorage") && page.contains("location.hash"), "no key in a header from sessionStorage");
    assert!(page.contains("\"Authorization\"] = \"Bearer \""), "the key goes in the Authorization header");
}

// Defect 11, in a real browser: on a server with keys, `/dashboard#key=KEY` draws from every endpoint
// (the key goes out as a header), and the key leaves the address bar for the tab's sessionStorage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_on_a_keyed_server_sends_its_key_as_a_header_in_chromium() {
    let dir = crate::support::temp_dir("dashboard-keyed");
    let config = dir.join("voxgate.toml");
    let browser_config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/voxgate.toml")).unwrap();
    std::fs::write(&config, format!("[auth]\napi_keys = [\"vk-dash-1\"]\n{browser_config}")).unwrap();
    let stack = crate::browser_demo::start_stack_with("dashboard-keyed", config.to_str().unwrap());
    let port = stack.port;
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().status(), 401, "the server has keys");

    let (base, profile) = stack.browser(&http, "dashboard-keyed", &["--window-size=1200,1700".to_string()]).await;
    http.post(format!("{base}/url"))
        .json(&json!({"url": format!("http://127.0.0.1:{port}/dashboard#key=vk-dash-1")}))
        .send()
        .await
        .unwrap();
    let read = "return Object.assign({href: location.href, stored: sessionStorage.getItem('voxgate-key'), \
                formHidden: document.getElementById('key-form')?.hidden}, window.voxgateDashboard);";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        let v: Value = http
            .post(format!("{base}/execute/sync"))
            .json(&json!({"script": read, "args": []}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let state = v["value"].clone();
        let settled = state["refreshes"].as_u64().unwrap_or(0) > 0 || state["errors"].as_array().is_some_and(|e| !e.is_empty());
        if settled || std::time::Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = http.delete(&base).send().await;
    let _ = std::fs::remove_dir_all(&profile);
    assert!(state["errors"].as_array().is_some_and(|e| e.is_empty()), "the dashboard could not read the API: {state}");
    assert!(state["refreshes"].as_u64().unwrap_or(0) > 0, "{state}");
    assert_eq!(state["href"], format!("http://127.0.0.1:{port}/dashboard"), "the key left the address bar");
    assert_eq!(state["stored"], "vk-dash-1");
    assert_eq!(state["formHidden"], true, "no key form when the key works");
    // A key sees only its own usage row (no admin keys): the page says so instead of failing.
    assert_eq!(state["ownUsageOnly"], true, "{state}");
}
