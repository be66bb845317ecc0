//! Phone bridges: `GET /v1/phone/twilio` (the Media Streams WebSocket) and
//! `POST /v1/phone/twilio/twiml` (the `<Connect><Stream>` document a Twilio number's call webhook returns).
//! Twilio cannot send headers on the stream, so with gateway keys configured the key rides in the
//! stream's custom parameter `api_key` (a `<Parameter>` in the TwiML), or in `?api_key=` of the TwiML URL.
//! The key is therefore checked on the `start` frame, after the upgrade: an unknown or revoked key, or
//! one at its `max_sessions`, closes the stream with 1008 and a reason (Twilio's protocol has no
//! error message); the key's session slot is held until the call ends.
//!
//! Billing starts when the stream's WebSocket is accepted, not at `start`: the ledger opens the
//! call's record once `start` has named the key (and its rate), dated back to the upgrade. A stream
//! that never gets as far as an admitted `start` is not billed. A key's per-minute limits apply
//! to the call's LLM calls as on `/v1/realtime` (Twilio's protocol has no event to report them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::keys::{Lookup, SessionGuard};
use super::{Shared, ANONYMOUS};
use crate::session::SessionStart;
use crate::transport::realtime::new_session_id;
use crate::transport::twilio;

pub async fn twilio_stream(State(state): State<Shared>, ws: WebSocketUpgrade) -> Response {
    let Ok(slot) = state.session_slots.clone().try_acquire_owned() else {
        state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "too_many_sessions")]);
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "This server is at its limit of concurrent voice sessions.")
            .code("too_many_sessions")
            .into_response();
    };
    // The call is billed from here, the WebSocket's opening, on the ledger's clock.
    let opened_ms = state.ledger.now_unix_ms();
    let admit_state = state.clone();
    // Filled by `admit` with the key's session slot; dropped with the call.
    let key_slot: Arc<Mutex<Option<SessionGuard>>> = Arc::default();
    let admit_slot = key_slot.clone();
    let admit: twilio::Admit = Arc::new(move |params: HashMap<String, String>| {
        let state = admit_state.clone();
        let slot = admit_slot.clone();
        Box::pin(async move {
            let (session, guard) = admit(&state, &params)?;
            let meter = super::realtime::open_meter(&state, &session, "twilio", Some(opened_ms)).await?;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = guard;
            Ok(twilio::Admitted { session, meter: Some(meter) })
        })
    });
    let state2 = state.clone();
    ws.read_buffer_size(crate::transport::WS_READ_BUFFER_BYTES).on_upgrade(move |socket| async move {
        let tracker = state2.sessions.clone();
        let call = twilio::serve(socket, state2.voice.clone(), admit, state2.sessions_cancel.clone());
        tracker
            .track_future(async move {
                call.await;
                drop(key_slot.lock().unwrap_or_else(|p| p.into_inner()).take());
                drop(slot);
            })
            .await
    })
}

/// Decides from the `start` frame's custom parameters whether the call may run, and on which route;
/// takes the key's session slot.
fn admit(state: &Shared, params: &HashMap<String, String>) -> Result<(SessionStart, Option<SessionGuard>), String> {
    let (key, limits, guard) = if state.keys.is_empty() {
        (ANONYMOUS.to_string(), None, None)
    } else {
        let presented =
            params.get("api_key").ok_or("this server needs an API key: add <Parameter name=\"api_key\" value=\"...\"/> to the <Stream>")?;
        match state.keys.lookup(presented) {
            Lookup::Anonymous => (ANONYMOUS.to_string(), None, None),
            Lookup::Key(k) => {
                let guard = k.try_open_session().map_err(|limited| {
                    state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "session_limit")]);
                    tracing::info!(key = k.name(), limit = limited.limit, "twilio call refused: key at its session limit");
                    format!("session limit: key {:?} allows {} concurrent", k.name(), limited.limit)
                })?;
                (k.name().to_string(), super::realtime::rate_limits(Some(&k)), Some(guard))
            }
            Lookup::Revoked(name) => return Err(format!("API key {name:?} has been revoked")),
            Lookup::Unknown => return Err("incorrect API key".to_string()),
        }
    };
    let route = params.get("model").cloned().unwrap_or_else(|| "default".to_string());
    if !state.gateway.routes().contains_key(&route) && !state.gateway.models().contains_key(&route) {
        return Err(format!("model {route:?} is not a route or model of this server"));
    }
    Ok((SessionStart { session_id: new_session_id(), route, key, limits }, guard))
}

/// `POST /v1/phone/twilio/twiml[?model=ROUTE&voice=V&api_key=K]`: the TwiML that connects a call to
/// this server's stream endpoint, on the host the webhook was called on.
pub async fn twiml(RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let query = match super::ledger::parse_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let Some(host) = headers.get("x-forwarded-host").or_else(|| headers.get(header::HOST)).and_then(|h| h.to_str().ok()) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The request has no Host header to build the stream URL from.",
        )
        .code("missing_host")
        .into_response();
    };
    // Behind a TLS proxy (as Twilio requires: wss), the proxy says so; on loopback, plain ws.
    let secure = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_none_or(|p| p == "https");
    let scheme = if secure { "wss" } else { "ws" };
    let mut params = String::new();
    for name in ["model", "voice", "instructions", "api_key"] {
        if let Some(value) = query.get(name) {
            params.push_str(&format!("\n      <Parameter name=\"{name}\" value=\"{}\"/>", xml_escape(value)));
        }
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Connect>\n    <Stream url=\"{scheme}://{}/v1/phone/twilio\">{params}\n    </Stream>\n  </Connect>\n</Response>\n",
        xml_escape(host)
    );
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
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
    use super::xml_escape;

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape(r#"a<b>&"c"'"#), "a&lt;b&gt;&amp;&quot;c&quot;&apos;");
    }
}
