//! Phone bridges: `GET /v1/phone/twilio` (the Media Streams WebSocket) and
//! `POST /v1/phone/twilio/twiml` (the `<Connect><Stream>` document a Twilio number's call webhook returns).
//!
//! Who may open a stream, decided before the upgrade so that nothing is held for a stranger:
//! - with `[phone] twilio_auth_token`, the upgrade must carry Twilio's `X-Twilio-Signature` over the
//!   stream's URL (HMAC-SHA1 with the account's auth token, as Twilio signs webhooks), or a gateway
//!   key as `Authorization: Bearer`; else 403 (`invalid_twilio_signature`);
//! - a gateway key as `Authorization: Bearer` (clients other than Twilio) is checked at once (401);
//! - a signed or keyed stream, or any stream on a server without keys, takes a session slot now
//!   (503 `too_many_sessions` when none is free), as `/v1/realtime` does;
//! - otherwise (keys, no signature checking) Twilio's own key arrives only in the `start` frame, as the
//!   custom parameter `token` (a short-lived token the TwiML webhook wrote) or `api_key`: such a
//!   stream waits in a small pool of its own ([`MAX_PENDING_STREAMS`]) and takes a session slot only
//!   once `start` has shown a good key. Keyless sockets therefore never starve voice sessions.
//!
//! Every stream's messages are capped at [`TWILIO_MAX_MESSAGE_BYTES`] (Twilio's media frames are
//! about 400 bytes); a larger one is answered with close 1009 and a reason.
//!
//! Twilio's protocol has no error message: an unknown or revoked key, one at its `max_sessions`, or a
//! full server at `start` closes the stream with 1008 and a reason; the key's session slot is held
//! until the call ends. Billing starts when the stream's WebSocket is accepted, not at `start`: the
//! ledger opens the call's record once `start` has named the key (and its rate), dated back to the
//! upgrade. A stream that never gets as far as an admitted `start` is not billed. A key's per-minute
//! limits apply to the call's LLM calls as on `/v1/realtime`.
//!
//! The TwiML webhook never takes a key in its URL (URLs end up in logs): with keys configured it
//! wants the key as HTTP Basic credentials (`https://voxgate:KEY@host/...` in the Twilio console;
//! Twilio sends them after a 401 with `WWW-Authenticate`) or `Authorization: Bearer`, and writes a
//! stream token valid for [`STREAM_TOKEN_TTL_S`] into the TwiML instead of the key. With
//! `[phone] twilio_auth_token` it checks Twilio's signature over its URL and form parameters first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::sync::OwnedSemaphorePermit;

use super::error::ApiError;
use super::keys::{KeyBook, KeyState, Lookup, SessionGuard};
use super::{Caller, Shared, ANONYMOUS};
use crate::secret::Secret;
use crate::session::SessionStart;
use crate::transport::realtime::new_session_id;
use crate::transport::twilio;

/// The largest frame or message a Twilio stream may send: media frames are about 400 bytes and a
/// `start` with its custom parameters a few KB.
pub const TWILIO_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Streams upgraded without credentials (their key comes in `start`) at once; more get 503.
pub const MAX_PENDING_STREAMS: usize = 64;

/// How long a stream token written by the TwiML webhook is good for: Twilio opens the stream
/// within a second or two of reading the TwiML.
pub const STREAM_TOKEN_TTL_S: u64 = 120;

/// The largest call webhook body read (Twilio posts a few hundred bytes of form parameters).
const WEBHOOK_BODY_MAX_BYTES: usize = 64 * 1024;

/// What a stream holds while it runs; all of it is freed when the call ends.
#[derive(Default)]
struct Held {
    /// Its place among the server's concurrent voice sessions.
    server: Option<OwnedSemaphorePermit>,
    /// Its place among streams waiting for `start` to name their key.
    pending: Option<OwnedSemaphorePermit>,
    /// The key's own session slot.
    key: Option<SessionGuard>,
}

pub async fn twilio_stream(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Who is calling, before anything is held for the socket.
    let caller = match super::bearer(&headers) {
        Some(key) => match super::authenticate(&state.keys, Some(key), "send it as `Authorization: Bearer <key>`") {
            Ok(c) => Some(c),
            Err(refusal) => return refusal.into_response(),
        },
        None => None,
    };
    let signed = match (&state.edge.twilio_auth_token, &caller) {
        (Some(token), None) => {
            let urls = signed_urls(&headers, &uri, &["wss", "https", "ws", "http"]);
            if !signature_matches(token, &urls, &HashMap::new(), &headers) {
                return refuse_signature("the stream's upgrade");
            }
            true
        }
        _ => false,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("/v1/phone/twilio is a WebSocket endpoint: {e}"),
            )
            .code("websocket_required")
            .into_response()
        }
    };
    let mut held = Held::default();
    if state.keys.is_empty() || caller.is_some() || signed {
        let Ok(slot) = state.session_slots.clone().try_acquire_owned() else {
            state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "too_many_sessions")]);
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "This server is at its limit of concurrent voice sessions.",
            )
            .code("too_many_sessions")
            .into_response();
        };
        held.server = Some(slot);
    } else {
        let Ok(pending) = state.phone_pending.clone().try_acquire_owned() else {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("{MAX_PENDING_STREAMS} streams are already waiting for their `start`; try again shortly (or set [phone] twilio_auth_token so Twilio's streams are let in by their signature)."),
            )
            .code("too_many_pending_streams")
            .into_response();
        };
        held.pending = Some(pending);
    }
    // The call is billed from here, the WebSocket's opening, on the ledger's clock.
    let opened_ms = state.ledger.now_unix_ms();
    let held = Arc::new(Mutex::new(held));
    let admit_state = state.clone();
    let admit_held = held.clone();
    let admit: twilio::Admit = Arc::new(move |params: HashMap<String, String>| {
        let state = admit_state.clone();
        let held = admit_held.clone();
        let caller = caller.clone();
        Box::pin(async move {
            let (session, guard) = admit(&state, &params, caller.as_ref())?;
            take_server_slot(&state, &held)?;
            let meter = super::realtime::open_meter(&state, &session, "twilio", Some(opened_ms)).await?;
            held.lock().unwrap_or_else(|p| p.into_inner()).key = guard;
            Ok(twilio::Admitted { session, meter: Some(meter) })
        })
    });
    let state2 = state.clone();
    let ws = ws.read_buffer_size(crate::transport::WS_READ_BUFFER_BYTES);
    ws.max_message_size(TWILIO_MAX_MESSAGE_BYTES).max_frame_size(TWILIO_MAX_MESSAGE_BYTES).on_upgrade(move |socket| async move {
        let socket = super::ClosesWhenTooLarge::new(socket, "message too large: a Twilio stream's messages are at most 64 KiB");
        let tracker = state2.sessions.clone();
        let call = twilio::serve(socket, state2.voice.clone(), admit, state2.sessions_cancel.clone());
        tracker
            .track_future(async move {
                call.await;
                drop(std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner())));
            })
            .await
    })
}

/// A stream that waited for `start` takes its session slot now, and leaves the waiting pool.
fn take_server_slot(state: &Shared, held: &Mutex<Held>) -> Result<(), String> {
    let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
    if held.server.is_none() {
        let slot = state.session_slots.clone().try_acquire_owned().map_err(|_| {
            state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "too_many_sessions")]);
            format!("this server is at its limit of {} concurrent voice sessions", state.voice.settings.max_sessions)
        })?;
        held.server = Some(slot);
        held.pending = None;
    }
    Ok(())
}

/// Decides from the `start` frame's custom parameters (and the key the upgrade carried, if any)
/// whether the call may run, and on which route; takes the key's session slot.
fn admit(
    state: &Shared,
    params: &HashMap<String, String>,
    caller: Option<&Caller>,
) -> Result<(SessionStart, Option<SessionGuard>), String> {
    let key: Option<Arc<KeyState>> = if state.keys.is_empty() {
        None
    } else if let Some(caller) = caller {
        caller.key.clone()
    } else if let Some(token) = params.get("token") {
        Some(verify_stream_token(&state.keys, token, unix_now_s())?)
    } else {
        let presented = params.get("api_key").ok_or(
            "this server needs an API key: answer the call webhook with voxgate's TwiML (it adds a `token`), or add <Parameter name=\"api_key\" value=\"...\"/> to the <Stream>",
        )?;
        match state.keys.lookup(presented) {
            Lookup::Anonymous => None,
            Lookup::Key(k) => Some(k),
            Lookup::Revoked(name) => return Err(format!("API key {name:?} has been revoked")),
            Lookup::Unknown => return Err("incorrect API key".to_string()),
        }
    };
    let (name, limits, guard) = match key {
        None => (ANONYMOUS.to_string(), None, None),
        Some(k) => {
            let guard = k.try_open_session().map_err(|limited| {
                state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "session_limit")]);
                tracing::info!(key = k.name(), limit = limited.limit, "twilio call refused: key at its session limit");
                format!("session limit: key {:?} allows {} concurrent", k.name(), limited.limit)
            })?;
            (k.name().to_string(), super::realtime::rate_limits(Some(&k)), Some(guard))
        }
    };
    let route = params.get("model").cloned().unwrap_or_else(|| "default".to_string());
    if !state.gateway.routes().contains_key(&route) && !state.gateway.models().contains_key(&route) {
        return Err(format!("model {route:?} is not a route or model of this server"));
    }
    Ok((SessionStart { session_id: new_session_id(), route, key: name, limits }, guard))
}

/// `POST /v1/phone/twilio/twiml[?model=ROUTE&voice=V&instructions=I]`: the TwiML that connects a
/// call to this server's stream endpoint, on the host the webhook was called on. With keys
/// configured, the key comes as HTTP Basic credentials (the password, or the user name when the
/// password is empty) or `Authorization: Bearer`, never in the URL; the TwiML carries a stream
/// token for it, not the key.
pub async fn twiml(State(state): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let query = match super::ledger::parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if query.contains_key("api_key") {
        return ApiError::invalid(
            "A key in the webhook's URL ends up in logs: remove `api_key` and give the key as the URL's credentials instead (https://voxgate:KEY@host/v1/phone/twilio/twiml?...), which Twilio sends as HTTP Basic auth.",
            Some("api_key"),
        )
        .code("api_key_in_url")
        .into_response();
    }
    let Some(host) = headers.get("x-forwarded-host").or_else(|| headers.get(header::HOST)).and_then(|h| h.to_str().ok()) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The request has no Host header to build the stream URL from.",
        )
        .code("missing_host")
        .into_response();
    };
    if body.len() > WEBHOOK_BODY_MAX_BYTES {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "The webhook's body is over 64 KiB.")
            .code("body_too_large")
            .into_response();
    }
    if let Some(token) = &state.edge.twilio_auth_token {
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let params = if form {
            let Ok(text) = std::str::from_utf8(&body) else {
                return ApiError::invalid("The webhook's form body is not UTF-8.", None).code("invalid_body").into_response();
            };
            match super::ledger::parse_query(Some(text)) {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            }
        } else {
            HashMap::new()
        };
        if !signature_matches(token, &signed_urls(&headers, &uri, &["https", "http"]), &params, &headers) {
            return refuse_signature("the TwiML webhook");
        }
    }
    let stream_token = if state.keys.is_empty() {
        None
    } else {
        let presented = super::bearer(&headers).map(str::to_string).or_else(|| basic_key(&headers));
        let missing = "give the key as the webhook URL's credentials (https://voxgate:KEY@host/v1/phone/twilio/twiml), or `Authorization: Bearer <key>`";
        match super::authenticate(&state.keys, presented.as_deref(), missing) {
            Ok(Caller { key: Some(key), .. }) => Some(mint_stream_token(&key, unix_now_s() + STREAM_TOKEN_TTL_S)),
            Ok(_) => None,
            Err(refusal) => {
                let mut response = refusal.into_response();
                // Twilio sends a URL's credentials only when challenged.
                response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"voxgate\""));
                return response;
            }
        }
    };
    // Behind a TLS proxy (as Twilio requires: wss), the proxy says so; on loopback, plain ws.
    let secure = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_none_or(|p| p == "https");
    let scheme = if secure { "wss" } else { "ws" };
    let mut params = String::new();
    for name in ["model", "voice", "instructions"] {
        if let Some(value) = query.get(name) {
            params.push_str(&format!("\n      <Parameter name=\"{name}\" value=\"{}\"/>", xml_escape(value)));
        }
    }
    if let Some(token) = stream_token {
        params.push_str(&format!("\n      <Parameter name=\"token\" value=\"{}\"/>", xml_escape(&token)));
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Connect>\n    <Stream url=\"{scheme}://{}/v1/phone/twilio\">{params}\n    </Stream>\n  </Connect>\n</Response>\n",
        xml_escape(host)
    );
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

fn refuse_signature(what: &str) -> Response {
    tracing::info!(what, "twilio request refused: missing or invalid X-Twilio-Signature");
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        format!("{what} needs a valid X-Twilio-Signature: this server checks Twilio's signatures ([phone] twilio_auth_token)."),
    )
    .code("invalid_twilio_signature")
    .into_response()
}

/// The key in `Authorization: Basic` (base64 of `user:password`): the password, or the user when the
/// password is empty.
fn basic_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?.trim();
    if encoded.len() > 4096 {
        return None;
    }
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(if password.is_empty() { user } else { password }.to_string())
}

fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// HMAC (RFC 2104) over a 64-byte-block hash: SHA-1 for Twilio's signatures, SHA-256 for stream tokens.
fn hmac<D: sha2::Digest>(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        let digest = D::digest(key);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = D::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = D::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// Twilio's request signature: base64 of HMAC-SHA1, keyed with the account's auth token, of the
/// full URL followed by every POST parameter sorted by name, each written as name then value.
pub fn twilio_signature(auth_token: &str, url: &str, params: &HashMap<String, String>) -> String {
    let mut sorted: Vec<(&String, &String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_string();
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    base64::engine::general_purpose::STANDARD.encode(hmac::<sha1::Sha1>(auth_token.as_bytes(), data.as_bytes()))
}

/// Whether the request's `X-Twilio-Signature` is Twilio's for one of `urls` (the URL as Twilio may
/// have written it: the scheme, with and without the port, as Twilio's own validators try).
fn signature_matches(token: &Secret, urls: &[String], params: &HashMap<String, String>, headers: &HeaderMap) -> bool {
    let Some(presented) = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).map(str::trim) else { return false };
    if presented.is_empty() || presented.len() > 128 {
        return false;
    }
    let mut ok = false;
    for url in urls {
        ok |= constant_time_eq(twilio_signature(token.expose(), url, params).as_bytes(), presented.as_bytes());
    }
    ok
}

/// The URLs Twilio may have signed for this request: each of `schemes`, the host it was sent to
/// (`X-Forwarded-Host` behind a proxy, else `Host`) as given, without its port, and with the
/// scheme's default port; then the path and query as received.
fn signed_urls(headers: &HeaderMap, uri: &Uri, schemes: &[&str]) -> Vec<String> {
    let host = headers.get("x-forwarded-host").or_else(|| headers.get(header::HOST)).and_then(|h| h.to_str().ok()).unwrap_or("");
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let bare = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => Some(name),
        _ => None,
    };
    let mut urls = Vec::new();
    for scheme in schemes {
        let default_port = if matches!(*scheme, "https" | "wss") { 443 } else { 80 };
        urls.push(format!("{scheme}://{host}{path}"));
        match bare {
            Some(name) => urls.push(format!("{scheme}://{name}{path}")),
            None => urls.push(format!("{scheme}://{host}:{default_port}{path}")),
        }
    }
    urls
}

/// A stream token for `key`, good until `expires_s` (unix seconds): `vt1.EXPIRES.MAC.NAME`, the MAC an
/// HMAC-SHA256 of the name and expiry keyed with the key's SHA-256 (which every instance with the
/// same config holds, and which is never shown), so the key itself need not ride in the TwiML.
pub fn mint_stream_token(key: &KeyState, expires_s: u64) -> String {
    let mac = stream_token_mac(&key.config.sha256, key.name(), expires_s);
    format!("vt1.{expires_s}.{mac}.{}", key.name())
}

fn stream_token_mac(key_sha256: &[u8; 32], name: &str, expires_s: u64) -> String {
    let mac = hmac::<sha2::Sha256>(key_sha256, format!("voxgate phone stream token\n{name}\n{expires_s}").as_bytes());
    mac.iter().map(|b| format!("{b:02x}")).collect()
}

/// The live key a stream token names, if the token is well formed, unexpired and its MAC matches.
fn verify_stream_token(keys: &KeyBook, token: &str, now_s: u64) -> Result<Arc<KeyState>, String> {
    let bad = || "invalid stream token: answer the call with a fresh TwiML from /v1/phone/twilio/twiml".to_string();
    if token.len() > 256 {
        return Err(bad());
    }
    let mut parts = token.splitn(4, '.');
    let (Some("vt1"), Some(expires), Some(mac), Some(name)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let expires: u64 = expires.parse().map_err(|_| bad())?;
    let key = keys.by_name(name).ok_or_else(bad)?;
    if !constant_time_eq(stream_token_mac(&key.config.sha256, name, expires).as_bytes(), mac.as_bytes()) {
        return Err(bad());
    }
    if expires < now_s {
        return Err("stream token expired: the stream must open within 2 minutes of the TwiML".to_string());
    }
    if key.config.revoked {
        return Err(format!("API key {name:?} has been revoked"));
    }
    Ok(key.clone())
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_the_rfc_vectors() {
        // RFC 2202 test case 2 (HMAC-SHA1) and RFC 4231 test case 2 (HMAC-SHA256).
        let (key, data) = (b"Jefe".as_slice(), b"what do ya want for nothing?".as_slice());
        assert_eq!(hex(&hmac::<sha1::Sha1>(key, data)), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        assert_eq!(hex(&hmac::<sha2::Sha256>(key, data)), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // A key longer than the block is hashed first (RFC 2202 test case 6).
        let long = [0xaau8; 80];
        assert_eq!(
            hex(&hmac::<sha1::Sha1>(&long, b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    /// The example of Twilio's security docs, as twilio-python's `tests/unit/test_request_validator.py` checks it.
    #[test]
    fn twilio_signature_matches_twilios_own_example() {
        let params: HashMap<String, String> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(twilio_signature("12345", url, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        // The same URL with the default port written out, which Twilio's validators also accept.
        assert_eq!(twilio_signature("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", &params), "kvajT1Ptam85bY51eRf/AJRuM3w=");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "mycompany.com".parse().unwrap());
        headers.insert("x-twilio-signature", "kvajT1Ptam85bY51eRf/AJRuM3w=".parse().unwrap());
        let uri: Uri = "/myapp.php?foo=1&bar=2".parse().unwrap();
        let token = Secret::new("12345");
        assert!(signature_matches(&token, &signed_urls(&headers, &uri, &["https"]), &params, &headers));
        assert!(!signature_matches(&Secret::new("54321"), &signed_urls(&headers, &uri, &["https"]), &params, &headers));
        let mut other = params.clone();
        other.insert("Digits".into(), "9".into());
        assert!(!signature_matches(&token, &signed_urls(&headers, &uri, &["https"]), &other, &headers));
    }

    #[test]
    fn stream_tokens_name_their_key_until_they_expire() {
        let keys = KeyBook::new(&[crate::config::keys::KeyConfig {
            name: "phone.main".into(),
            sha256: crate::config::keys::sha256(b"vk-phone"),
            rate_microusd_per_hour: None,
            max_sessions: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            revoked: false,
        }]);
        let key = keys.by_name("phone.main").unwrap();
        let token = mint_stream_token(key, 1_000);
        assert!(!token.contains("vk-phone"));
        assert_eq!(verify_stream_token(&keys, &token, 999).unwrap().name(), "phone.main");
        assert!(verify_stream_token(&keys, &token, 1_001).unwrap_err().contains("expired"));
        let forged = token.replace("vt1.1000.", "vt1.9000.");
        assert!(verify_stream_token(&keys, &forged, 999).unwrap_err().contains("invalid"));
        for bad in ["", "vt1", "vt1.x.y.phone.main", "vt2.1000.00.phone.main", &"a".repeat(300)] {
            assert!(verify_stream_token(&keys, bad, 999).is_err(), "{bad}");
        }
    }

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape(r#"a<b>&"c"'"#), "a&lt;b&gt;&amp;&quot;c&quot;&apos;");
    }
}
