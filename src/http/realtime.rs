//! `GET /v1/realtime?model=ROUTE`: authenticates, picks the route, takes a session slot and hands the
//! upgraded WebSocket to the Realtime transport. Browsers, which cannot set headers, send the key as
//! the subprotocol `openai-insecure-api-key.<key>` beside `realtime`.
//!
//! A key at its `max_sessions` is refused after the upgrade, not before: a browser's WebSocket API
//! shows no HTTP status, so the client gets an `error` event (`session_limit_exceeded`) and a close
//! 1008 whose reason names the limit. This handler writes both itself, before any session exists.
//! (No `rate_limits.updated` for that one: the SDKs type its `name` as `requests` | `tokens` only,
//! and a session count is neither.)
//!
//! A key with `requests_per_minute` or `tokens_per_minute` hands its [`KeyState`] to the session as
//! its [`RateLimits`](crate::session::RateLimits): each response takes one request from the key's
//! bucket and charges its tokens, exactly as `POST /v1/chat/completions` does; a response over the
//! limit is refused with an `error` event (`rate_limit_exceeded`) and the session goes on; the
//! client gets `rate_limits.updated` once the session starts and after every response.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::keys::{KeyState, Limited};
use super::{Caller, Shared};
use crate::metering::ledger::{SessionMeter, SessionStart as LedgerSession};
use crate::session::SessionStart;
use crate::transport::realtime::socket as realtime_socket;
use crate::transport::realtime::{new_session_id, RealtimeError, ServerEvent};

const KEY_PROTOCOL_PREFIX: &str = "openai-insecure-api-key.";

#[derive(Debug, Deserialize)]
pub struct RealtimeQuery {
    pub model: Option<String>,
}

pub async fn upgrade(
    State(state): State<Shared>,
    query: Result<Query<RealtimeQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let caller = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(Query(query)) = query else {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "The query string is not valid; use ?model=ROUTE.")
            .code("invalid_query")
            .into_response();
    };
    let route = match query.model {
        Some(m) => m,
        None if state.gateway.routes().contains_key("default") => "default".to_string(),
        None => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Name the route or model to use: /v1/realtime?model=ROUTE.",
            )
            .code("missing_model")
            .into_response()
        }
    };
    if !state.gateway.routes().contains_key(&route) && !state.gateway.models().contains_key(&route) {
        let mut known: Vec<&String> = state.gateway.routes().keys().collect();
        known.truncate(10);
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("The model {route:?} is not a route or model of this server. Routes: {known:?}."),
        )
        .code("model_not_found")
        .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", format!("/v1/realtime is a WebSocket endpoint: {e}"))
                .code("websocket_required")
                .into_response()
        }
    };
    let Ok(slot) = state.session_slots.clone().try_acquire_owned() else {
        state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "too_many_sessions")]);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("This server is at its limit of {} concurrent voice sessions; try again shortly.", state.voice.settings.max_sessions),
        )
        .code("too_many_sessions")
        .into_response();
    };
    // The key's own session slot, held as long as the server's: both are freed when the session ends.
    let key_slot = caller.key.as_ref().map(|k| k.try_open_session()).transpose();
    let start = SessionStart { session_id: new_session_id(), route, key: caller.name.clone(), limits: rate_limits(caller.key.as_ref()) };
    // No meter, no session: a call the ledger cannot bill is refused, not served for free. (A key
    // over its session limit is refused after the upgrade and never metered.)
    let meter = if key_slot.is_ok() {
        match open_meter(&state, &start, "realtime", None).await {
            Ok(m) => Some(m),
            Err(message) => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("ledger_unavailable").into_response();
            }
        }
    } else {
        None
    };
    let max_message = state.voice.settings.max_event_bytes.saturating_mul(4).saturating_add(64 * 1024);
    let state2 = state.clone();
    let ws = ws.protocols(["realtime"]).read_buffer_size(crate::transport::WS_READ_BUFFER_BYTES);
    ws.max_message_size(max_message).max_frame_size(max_message).on_upgrade(move |socket| async move {
        let key_slot = match key_slot {
            Ok(s) => s,
            Err(limited) => {
                drop(slot);
                state2.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "session_limit")]);
                return refuse_over_limit(socket, &caller.name, &limited).await;
            }
        };
        // A message over the socket's limit gets a 1009 close with a reason, not a dropped connection.
        let socket = super::ClosesWhenTooLarge::new(socket, "message too large: events are at most four times max_event_bytes");
        let tracker = state2.sessions.clone();
        let session = realtime_socket::serve(socket, state2.voice.clone(), start, meter, state2.sessions_cancel.clone());
        tracker
            .track_future(async move {
                session.await;
                drop(key_slot);
                drop(slot);
            })
            .await
    })
}

/// The key's per-minute limits for its sessions' LLM calls; `None` for a key without any.
pub(super) fn rate_limits(key: Option<&std::sync::Arc<KeyState>>) -> Option<std::sync::Arc<dyn crate::session::RateLimits>> {
    key.filter(|k| k.has_gateway_limits()).map(|k| k.clone() as std::sync::Arc<dyn crate::session::RateLimits>)
}

/// Opens the session's meter in the ledger at the key's own rate, else the server's, billed from
/// `opened_ms` (the ledger's clock when the WebSocket opened) when it opened before now.
pub(super) async fn open_meter(
    state: &Shared,
    start: &SessionStart,
    protocol: &str,
    opened_ms: Option<i64>,
) -> Result<SessionMeter, String> {
    let rate = state.keys.by_name(&start.key).and_then(|k| k.config.rate_microusd_per_hour).unwrap_or(state.rate_microusd_per_hour);
    let session = LedgerSession {
        id: start.session_id.clone(),
        key_id: start.key.clone(),
        protocol: protocol.to_string(),
        rate_microusd_per_hour: rate,
        opened_ms,
    };
    state.ledger.open_session(session).await.map_err(|e| {
        state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "ledger_unavailable")]);
        tracing::error!(error = %e, "refusing a voice session: the ledger cannot record it");
        format!("This server cannot record new sessions right now ({e}); try again later.")
    })
}

/// Tell a client its key is at its session limit: an `error` event, then close 1008 with the reason.
async fn refuse_over_limit(mut socket: WebSocket, key: &str, limited: &Limited) {
    let message = format!(
        "The API key {key:?} is at its limit of {} concurrent voice session{}; close one and try again.",
        limited.limit,
        if limited.limit == 1 { "" } else { "s" }
    );
    tracing::info!(key, limit = limited.limit, "realtime session refused: key at its session limit");
    let error = ServerEvent::error(RealtimeError {
        error_type: "invalid_request_error".to_string(),
        code: Some("session_limit_exceeded".to_string()),
        message,
        param: None,
        event_id: None,
    });
    // Every send has a deadline: a client that does not read cannot hold this task.
    let send_within = std::time::Duration::from_secs(5);
    if let Ok(text) = serde_json::to_string(&error) {
        let _ = tokio::time::timeout(send_within, socket.send(Message::Text(Utf8Bytes::from(text)))).await;
    }
    let reason = format!("session limit: key {key:?} allows {} concurrent", limited.limit);
    let _ = tokio::time::timeout(send_within, socket.send(crate::transport::close_frame(1008, &reason))).await;
    // Let the client's close frame arrive (or the client go) before the socket is dropped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        use futures::StreamExt;
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// The caller from `Authorization: Bearer` or the browser subprotocol; anonymous without keys.
/// Unknown and revoked keys are refused with 401 before the upgrade.
#[allow(clippy::result_large_err)]
fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let from_protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find_map(|p| p.strip_prefix(KEY_PROTOCOL_PREFIX)));
    super::authenticate(
        &state.keys,
        super::bearer(headers).or(from_protocol),
        "send `Authorization: Bearer <key>` or the subprotocol `openai-insecure-api-key.<key>`",
    )
}
