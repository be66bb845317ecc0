//! `GET /v1/realtime?model=ROUTE`: authenticates, picks the route, takes a session slot and hands the
//! upgraded WebSocket to the Realtime transport. Browsers, which cannot set headers, send the key as
//! the subprotocol `openai-insecure-api-key.<key>` beside `realtime`.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::Shared;
use crate::metering::ledger::{SessionMeter, SessionStart as LedgerSession};
use crate::session::SessionStart;
use crate::transport::realtime::new_session_id;
use crate::transport::realtime_socket;

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
    let key = match authenticate(&state, &headers) {
        Ok(k) => k,
        Err(refusal) => return refusal,
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
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("This server is at its limit of {} concurrent voice sessions; try again shortly.", state.voice.settings.max_sessions),
        )
        .code("too_many_sessions")
        .into_response();
    };
    let start = SessionStart { session_id: new_session_id(), route, key };
    // No meter, no session: a call the ledger cannot bill is refused, not served for free.
    let meter = match open_meter(&state, &start, "realtime").await {
        Ok(m) => m,
        Err(message) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("ledger_unavailable").into_response();
        }
    };
    let max_message = state.voice.settings.max_event_bytes.saturating_mul(4).saturating_add(64 * 1024);
    let state2 = state.clone();
    ws.protocols(["realtime"]).max_message_size(max_message).max_frame_size(max_message).on_upgrade(move |socket| async move {
        let tracker = state2.sessions.clone();
        let session = realtime_socket::serve(socket, state2.voice.clone(), start, Some(meter), state2.sessions_cancel.clone());
        tracker
            .track_future(async move {
                session.await;
                drop(slot);
            })
            .await
    })
}

/// Opens the session's meter in the ledger at the key's rate (the server's default for now).
pub(super) async fn open_meter(state: &Shared, start: &SessionStart, protocol: &str) -> Result<SessionMeter, String> {
    let session = LedgerSession {
        id: start.session_id.clone(),
        key_id: start.key.clone(),
        protocol: protocol.to_string(),
        rate_microusd_per_hour: state.rate_microusd_per_hour,
    };
    state.ledger.open_session(session).await.map_err(|e| {
        state.gateway.accounts.metrics.inc("voxgate_errors_total", &[("kind", "ledger_unavailable")]);
        tracing::error!(error = %e, "refusing a voice session: the ledger cannot record it");
        format!("This server cannot record new sessions right now ({e}); try again later.")
    })
}

/// The key's name from `Authorization: Bearer` or the browser subprotocol; anonymous without keys.
/// (The refusal is a whole response: this runs once per connection, so its size does not matter.)
#[allow(clippy::result_large_err)]
fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    if state.keys.is_empty() {
        return Ok("anonymous".to_string());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let from_protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find_map(|p| p.strip_prefix(KEY_PROTOCOL_PREFIX)));
    let Some(presented) = bearer.or(from_protocol) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Missing API key: send `Authorization: Bearer <key>` or the subprotocol `openai-insecure-api-key.<key>`.",
        )
        .code("invalid_api_key")
        .into_response());
    };
    state.key_name(presented).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "Incorrect API key provided.")
            .code("invalid_api_key")
            .into_response()
    })
}
