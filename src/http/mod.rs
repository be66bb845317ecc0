//! The HTTP API: axum router, gateway-key auth, OpenAI-style errors, `/metrics`, and serving
//! with `TCP_NODELAY` and graceful shutdown. Every request first passes [`origin::check`] (browser
//! origins, and `Host` on a loopback listener); `/metrics` follows `[auth]` unless
//! `[metrics] public = true`.

pub mod chat;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod origin;
pub mod phone;
pub mod realtime;

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, EdgeSettings, HttpSettings};
use crate::llm::router::Gateway;
use crate::metering::ledger::Ledger;
use crate::session::VoiceEngines;
use error::ApiError;
use keys::{KeyBook, KeyState, Lookup};

/// Everything a handler needs.
pub struct AppState {
    pub gateway: Arc<Gateway>,
    /// The gateway keys (hashed) and their live limits.
    pub keys: KeyBook,
    pub body_limit_bytes: usize,
    /// Engines and limits of voice sessions.
    pub voice: Arc<VoiceEngines>,
    /// Every voice session's task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Cancelled at shutdown: every voice session closes.
    pub sessions_cancel: CancellationToken,
    /// One permit per concurrent voice session.
    pub session_slots: Arc<Semaphore>,
    /// The durable ledger: sessions and standalone gateway requests.
    pub ledger: Ledger,
    /// The flat rate of a voice session for keys without their own.
    pub rate_microusd_per_hour: u64,
    /// `[server]`, `[phone]`, `[metrics]`: origins, hosts, Twilio's auth token, `/metrics` access.
    pub edge: EdgeSettings,
    /// The listener's address as bound (the config may say port 0); set by `Server::bind`.
    pub local_addr: OnceLock<SocketAddr>,
    /// The configured listen address (its IP says whether the listener is loopback).
    pub listen: SocketAddr,
    /// Twilio streams upgraded before their key is known (it comes in `start`): they wait here, not
    /// in `session_slots`, so keyless sockets cannot starve voice sessions.
    pub phone_pending: Arc<Semaphore>,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(config: &Config, gateway: Arc<Gateway>, voice: Arc<VoiceEngines>, ledger: Ledger) -> Self {
        AppState {
            gateway,
            keys: KeyBook::with_session_share(&config.keys, config.realtime.max_sessions, config.realtime.key_session_share_percent),
            body_limit_bytes: config.gateway.body_limit_bytes,
            session_slots: Arc::new(Semaphore::new(voice.settings.max_sessions)),
            voice,
            sessions: TaskTracker::new(),
            sessions_cancel: CancellationToken::new(),
            ledger,
            rate_microusd_per_hour: config.metering.rate_microusd_per_hour,
            edge: config.edge.clone(),
            local_addr: OnceLock::new(),
            listen: config.listen,
            phone_pending: Arc::new(Semaphore::new(phone::MAX_PENDING_STREAMS)),
        }
    }

    /// The listener's port when it listens on a loopback address (0 when not yet known), for the
    /// `Host` check; `None` for any other listener.
    pub fn loopback_port(&self) -> Option<u16> {
        let addr = self.local_addr.get().copied().unwrap_or(self.listen);
        addr.ip().is_loopback().then_some(addr.port())
    }
}

impl AppState {
    /// The name of the gateway key `presented`, if it is a live (not revoked) one.
    pub fn key_name(&self, presented: &str) -> Option<String> {
        match self.keys.lookup(presented) {
            Lookup::Anonymous => Some(ANONYMOUS.to_string()),
            Lookup::Key(k) => Some(k.name().to_string()),
            Lookup::Revoked(_) | Lookup::Unknown => None,
        }
    }
}

/// The key name requests are booked under when no keys are configured.
pub const ANONYMOUS: &str = "anonymous";

/// Who is calling: the key found by [`authenticate`] (`None` when no keys are configured).
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub key: Option<Arc<KeyState>>,
}

/// Find the key of a request, or the 401 to answer: `invalid_api_key` for a missing or unknown
/// key, `api_key_revoked` for a revoked one. `missing` says how to send a key on this endpoint.
/// (ApiError is large, but built only on the refusal path, once per request.)
#[allow(clippy::result_large_err)]
pub fn authenticate(keys: &KeyBook, presented: Option<&str>, missing: &str) -> Result<Caller, ApiError> {
    if keys.is_empty() {
        return Ok(Caller { name: ANONYMOUS.to_string(), key: None });
    }
    let Some(presented) = presented else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", format!("Missing API key: {missing}."))
            .code("invalid_api_key"));
    };
    match keys.lookup(presented) {
        Lookup::Anonymous => Ok(Caller { name: ANONYMOUS.to_string(), key: None }),
        Lookup::Key(k) => Ok(Caller { name: k.name().to_string(), key: Some(k) }),
        Lookup::Revoked(name) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            format!("The API key {name:?} has been revoked; ask the server's operator for a new key."),
        )
        .code("api_key_revoked")),
        Lookup::Unknown => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "Incorrect API key provided.").code("invalid_api_key"))
        }
    }
}

/// The token of `Authorization: Bearer <token>`, trimmed.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(models))
        .route("/v1/usage", get(usage))
        .route("/v1/sessions", get(ledger::sessions))
        .route("/v1/sessions/{id}", get(ledger::session))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(api)
        .route("/v1/realtime", get(realtime::upgrade))
        .route("/v1/phone/twilio", get(phone::twilio_stream))
        .route("/v1/phone/twilio/twiml", post(phone::twiml))
        .route("/", get(|| async { axum::response::Html(include_str!("static/index.html")) }))
        .route("/dashboard", get(|| async { axum::response::Html(include_str!("static/dashboard.html")) }))
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "Unknown path. voxgate serves POST /v1/chat/completions, GET /v1/models, GET /v1/usage, GET /v1/sessions[/{id}], GET /v1/realtime (WebSocket), GET /v1/phone/twilio (WebSocket), POST /v1/phone/twilio/twiml, GET /metrics and GET /healthz.",
            )
            .code("not_found")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "This path does not accept that HTTP method.")
                .code("method_not_allowed")
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Serve with the default `[http]` settings (see [`serve_with`]).
pub async fn serve(listener: tokio::net::TcpListener, state: Shared, shutdown: CancellationToken) -> std::io::Result<()> {
    serve_with(listener, state, &HttpSettings::default(), shutdown).await
}

/// Serve until `shutdown` is cancelled, then let in-flight responses finish.
///
/// hyper's HTTP/1 server with its timer on tokio time (so tests can pause it), not `axum::serve`,
/// which runs without a timer and so without a header deadline: a connection that has not sent a
/// whole request head within `header_timeout_ms` (counted again after each response on a
/// kept-alive connection) is closed; a body not all in `body_timeout_ms` after its head gets a 408;
/// at most `max_connections` are open (the rest wait in the listen queue, first come first served).
/// Every accepted socket gets `TCP_NODELAY`; each request carries `ConnectInfo<SocketAddr>`;
/// WebSocket upgrades leave the count when upgraded.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Shared,
    settings: &HttpSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::Listener as _;
    use hyper::service::Service as _;

    let mut listener = listener.tap_io(|tcp| {
        // Without it a response written in two pieces waits on Nagle + delayed ACK (~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        crate::transport::set_tcp_keepalive(tcp);
    });
    let app = hyper_util::service::TowerToHyperService::new(router(state));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_millis(settings.header_timeout_ms));
    let body_timeout = Duration::from_millis(settings.body_timeout_ms);
    // Fair: tokio's semaphore hands permits out in the order they were asked for.
    let open = Arc::new(Semaphore::new(settings.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit.expect("the connection semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
            let late = (!hyper::body::Body::is_end_stream(request.body())).then(|| Arc::new(AtomicBool::new(false)));
            let request = match &late {
                Some(late) => request.map(|body| axum::body::Body::new(BodyDeadline::new(body, body_timeout, late.clone()))),
                None => request.map(axum::body::Body::new),
            };
            let answer = app.call(request);
            async move {
                let response = answer.await?;
                if late.is_some_and(|late| late.load(Ordering::Acquire)) {
                    return Ok(body_too_slow(body_timeout));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = http1.serve_connection(hyper_util::rt::TokioIo::new(io), service).with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            tokio::select! {
                done = connection.as_mut() => if let Err(e) = done {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                },
                _ = stop.cancelled() => {
                    // Finish the request in flight (if any), then close.
                    connection.as_mut().graceful_shutdown();
                    if let Err(e) = connection.await {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    // Stop accepting (new connections are refused), then wait for the open ones to finish.
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The answer to a request whose body did not all arrive in time; the connection then closes.
fn body_too_slow(limit: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        format!("The request body did not all arrive within {} ms of its head.", limit.as_millis()),
    )
    .code("request_timeout")
    .into_response();
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// A request body that fails once `limit` has passed since its head: a client that sends a
/// `Content-Length` and then trickles (or never sends) the bytes holds a handler for that long at most.
/// The handler sees a body error; the server answers 408 in its place (it sets `late`).
struct BodyDeadline {
    body: hyper::body::Incoming,
    deadline: tokio::time::Instant,
    /// Made at the first read that has to wait (most bodies are all there by then).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    late: Arc<AtomicBool>,
}

impl BodyDeadline {
    fn new(body: hyper::body::Incoming, limit: Duration, late: Arc<AtomicBool>) -> Self {
        BodyDeadline { body, deadline: tokio::time::Instant::now() + limit, sleep: None, late }
    }
}

impl hyper::body::Body for BodyDeadline {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.late.store(true, Ordering::Release);
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn auth(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    match authenticate(&state.keys, bearer(request.headers()), "send it as `Authorization: Bearer <key>`") {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Browser origins and, on a loopback listener, the `Host` ([`origin`]), before any handler.
async fn edge(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match origin::check(&state.edge, state.loopback_port(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::info!(code = refusal.code.as_deref().unwrap_or(""), "request refused at the edge");
            refusal.into_response()
        }
    }
}

async fn count_requests(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let path: &'static str = match request.uri().path() {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/v1/usage" => "/v1/usage",
        "/v1/sessions" => "/v1/sessions",
        "/v1/realtime" => "/v1/realtime",
        "/v1/phone/twilio" => "/v1/phone/twilio",
        "/v1/phone/twilio/twiml" => "/v1/phone/twilio/twiml",
        "/healthz" => "/healthz",
        "/" => "/",
        "/dashboard" => "/dashboard",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let response = next.run(request).await;
    state.gateway.accounts.metrics.inc("voxgate_http_requests_total", &[("path", path), ("status", response.status().as_str())]);
    response
}

async fn models(State(state): State<Shared>) -> impl IntoResponse {
    let gw = &state.gateway;
    let mut data: Vec<serde_json::Value> =
        gw.routes().keys().map(|r| json!({"id": r, "object": "model", "created": 0, "owned_by": "voxgate-route"})).collect();
    data.extend(gw.models().values().map(|m| json!({"id": m.id, "object": "model", "created": 0, "owned_by": m.provider})));
    axum::Json(json!({"object": "list", "data": data}))
}

/// Without parameters: the live per-key, per-model view since the server started (latency
/// percentiles included). With `from`, `to` or `group_by`: the durable ledger's report.
async fn usage(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
) -> Response {
    let q = match ledger::parse_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if !q.is_empty() {
        return ledger::usage(&caller, &state, &q, &headers).await;
    }
    let book = &state.gateway.accounts.usage;
    let mut rows = book.rows();
    let total_cost_usd = if caller.key.is_some() {
        // A key sees its own rows only.
        rows.retain(|r| r.key == caller.name);
        rows.iter().map(|r| r.cost_usd).sum()
    } else {
        crate::llm::usage::picousd_to_usd(book.total_picousd())
    };
    axum::Json(json!({"object": "list", "data": rows, "total_cost_usd": total_cost_usd})).into_response()
}

/// `GET /metrics`: needs a gateway key (`Authorization: Bearer`) when keys are configured, unless
/// `[metrics] public = true`.
async fn metrics(State(state): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    if !state.edge.metrics_public {
        if let Err(refusal) = authenticate(
            &state.keys,
            bearer(&headers),
            "send it as `Authorization: Bearer <key>` (or set [metrics] public = true for an open /metrics)",
        ) {
            return refusal.into_response();
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.gateway.accounts.metrics.render()).into_response()
}

/// A server WebSocket that answers a message over its size limit with a close frame (1009 and
/// `reason`) before ending, instead of dropping the connection without a word (the WebSocket
/// library only returns an error). Transports read and write it like the socket itself.
pub struct ClosesWhenTooLarge {
    inner: axum::extract::ws::WebSocket,
    reason: &'static str,
    state: TooLarge,
}

enum TooLarge {
    Open,
    Closing(Option<axum::Error>),
    Flushing(Option<axum::Error>),
    Done,
}

impl ClosesWhenTooLarge {
    pub fn new(inner: axum::extract::ws::WebSocket, reason: &'static str) -> Self {
        ClosesWhenTooLarge { inner, reason, state: TooLarge::Open }
    }
}

fn is_too_large(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<WsError>()).is_some_and(|e| matches!(e, WsError::Capacity(_)))
}

impl futures::Stream for ClosesWhenTooLarge {
    type Item = Result<axum::extract::ws::Message, axum::Error>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use futures::Sink;
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            match &mut this.state {
                TooLarge::Open => match std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_next(cx)) {
                    Some(Err(e)) if is_too_large(&e) => this.state = TooLarge::Closing(Some(e)),
                    other => return Poll::Ready(other),
                },
                TooLarge::Closing(error) => {
                    let error = error.take();
                    let mut inner = std::pin::Pin::new(&mut this.inner);
                    match std::task::ready!(inner.as_mut().poll_ready(cx)) {
                        Ok(()) if inner.start_send(crate::transport::close_frame(1009, this.reason)).is_ok() => {
                            this.state = TooLarge::Flushing(error)
                        }
                        _ => {
                            this.state = TooLarge::Done;
                            return Poll::Ready(error.map(Err));
                        }
                    }
                }
                TooLarge::Flushing(error) => {
                    let _ = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_flush(cx));
                    let error = error.take();
                    this.state = TooLarge::Done;
                    return Poll::Ready(error.map(Err));
                }
                TooLarge::Done => return Poll::Ready(None),
            }
        }
    }
}

impl futures::Sink<axum::extract::ws::Message> for ClosesWhenTooLarge {
    type Error = axum::Error;

    fn poll_ready(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_ready(cx)
    }
    fn start_send(self: std::pin::Pin<&mut Self>, item: axum::extract::ws::Message) -> Result<(), Self::Error> {
        std::pin::Pin::new(&mut self.get_mut().inner).start_send(item)
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_close(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
