//! What the HTTP providers share: sending a JSON request, turning transport failures and error
//! statuses into [`ProviderError`]s, reading bounded bodies, and decoding a streaming body's
//! server-sent events with a vendor's [`SseDecoder`].

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};

use super::{Endpoint, EventStream, HttpSettings, PlainBody};
use crate::llm::error::{parse_retry_after, ProviderError};
use crate::llm::sse::{SseEvent, SseParser};
use crate::llm::types::Event;

/// Largest error body we read (the rest is dropped).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Largest non-streaming answer we read; a longer one is an upstream error (never truncated,
/// never read further). Streams are bounded per event instead (`sse::MAX_EVENT_BYTES`).
pub const MAX_RESPONSE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Turns a vendor's error status and body into a `ProviderError`; one per provider.
pub type ErrorParser = fn(status: u16, headers: &HeaderMap, body: &str) -> ProviderError;

/// An upstream's answer, from whichever client sent the request: status, headers, and the body
/// read piece by piece. Dropping it before the end of the body closes the connection.
pub enum Response {
    Reqwest(reqwest::Response),
    Plain(hyper::Response<hyper::body::Incoming>),
}

impl Response {
    pub fn status(&self) -> u16 {
        match self {
            Response::Reqwest(r) => r.status().as_u16(),
            Response::Plain(r) => r.status().as_u16(),
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        match self {
            Response::Reqwest(r) => r.headers(),
            Response::Plain(r) => r.headers(),
        }
    }

    /// The next piece of the body, `None` at its end; a transport failure as its description.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            Response::Reqwest(r) => r.chunk().await.map_err(|e| describe_error(&e.without_url())).transpose(),
            Response::Plain(r) => loop {
                match r.body_mut().frame().await? {
                    Ok(frame) => {
                        // Trailers carry nothing we read.
                        if let Ok(data) = frame.into_data() {
                            return Some(Ok(data));
                        }
                    }
                    Err(e) => return Some(Err(describe_error(&e))),
                }
            },
        }
    }
}

/// POST `body` as JSON to `endpoint` with `headers`. Resolves once a 2xx status arrives; any
/// other status is read (bounded) and handed to `on_error`.
pub async fn post_json(
    settings: &HttpSettings,
    endpoint: Arc<Endpoint>,
    headers: HeaderMap,
    body: &(impl serde::Serialize + ?Sized),
    on_error: ErrorParser,
) -> Result<Response, ProviderError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    let response = match (&settings.plain, &endpoint.plain_uri) {
        (Some(plain), Some(uri)) => {
            let mut request = hyper::Request::new(PlainBody::new(Bytes::from(bytes)));
            *request.method_mut() = hyper::Method::POST;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers;
            let headers = request.headers_mut();
            headers.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // What reqwest sends when a request has no Accept of its own.
            headers.entry(ACCEPT).or_insert(HeaderValue::from_static("*/*"));
            Response::Plain(plain.request(request).await.map_err(plain_transport_error)?)
        }
        _ => Response::Reqwest(
            settings
                .client
                .post(endpoint.url.clone())
                .headers(headers)
                .header(CONTENT_TYPE, "application/json")
                .body(bytes)
                .send()
                .await
                .map_err(transport_error)?,
        ),
    };
    let status = response.status();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let mut response = response;
    let body = read_limited(&mut response, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
    let mut error = on_error(status, &headers, &String::from_utf8_lossy(&body));
    if let ProviderError::Http { status: 401 | 403, message, .. } = &mut error {
        // (Gemini's 400 for a bad key quotes no key, so it keeps its words.)
        // Vendors echo part of the rejected key ("Incorrect API key provided: sk-…abcd"):
        // never pass that on to clients or logs.
        *message = format!("the provider rejected voxgate's credentials (HTTP {status}): check this provider's api_key");
    }
    Err(error)
}

/// Read a whole (non-streaming) JSON answer.
pub async fn read_json(response: Response) -> Result<serde_json::Value, ProviderError> {
    parse_json(&read_body(response).await?)
}

/// Read a whole (non-streaming) answer's bytes, for a provider that decodes them itself. An
/// answer over [`MAX_RESPONSE_BODY_BYTES`] (declared or read) is an error, not a truncated parse.
pub async fn read_body(mut response: Response) -> Result<Vec<u8>, ProviderError> {
    let too_long =
        || ProviderError::stream(format!("the upstream's answer is larger than the {} MiB limit", MAX_RESPONSE_BODY_BYTES >> 20));
    let declared = response.headers().get(reqwest::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_RESPONSE_BODY_BYTES as u64) {
        return Err(too_long());
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await {
        let chunk = chunk.map_err(|e| ProviderError::stream(format!("connection lost while reading body: {e}")))?;
        if out.len() + chunk.len() > MAX_RESPONSE_BODY_BYTES {
            return Err(too_long());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A whole (non-streaming) answer as an event stream that reads and decodes the body when first
/// polled: the provider's `send` resolves with the status and headers (so the router's
/// `headers_ms_max` applies to them alone), and the body is read under the router's deadlines.
pub fn whole_body<F>(response: Response, decode: F) -> EventStream
where
    F: FnOnce(&[u8]) -> Result<Vec<Event>, ProviderError> + Send + 'static,
{
    let read = async move {
        let body = read_body(response).await?;
        decode(&body)
    };
    Box::pin(futures::stream::once(read).flat_map(|result| {
        futures::stream::iter(match result {
            Ok(events) => events.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    }))
}

/// A whole answer's bytes as a JSON value; what [`read_json`] returns.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::stream(format!("malformed response body: {e}")))
}

/// A failure before any response arrived.
pub fn transport_error(e: reqwest::Error) -> ProviderError {
    let timed_out = e.is_timeout();
    let message = describe_error(&e.without_url());
    if timed_out {
        ProviderError::Timeout(message)
    } else {
        ProviderError::Connect(message)
    }
}

/// [`transport_error`] for the plain client, with reqwest's classification (a timeout anywhere
/// in the causes is a timeout) and wording.
fn plain_transport_error(e: hyper_util::client::legacy::Error) -> ProviderError {
    let mut timed_out = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        timed_out |= err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
        source = err.source();
    }
    let message = format!("error sending request: {}", describe_error(&e));
    if timed_out {
        ProviderError::Timeout(message)
    } else {
        ProviderError::Connect(message)
    }
}

/// An error's message and its causes, joined by `: `. A reqwest error is described
/// `without_url()`: we never put keys in URLs, but a base URL is configuration the client need not see.
fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

async fn read_limited(response: &mut Response, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await {
        let chunk = chunk.map_err(|e| ProviderError::stream(format!("connection lost while reading body: {e}")))?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The `Retry-After` header, when present and parseable.
pub fn retry_after(headers: &HeaderMap) -> Option<std::time::Duration> {
    headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
}

/// A header value from a string we control; invalid characters become an `Invalid` error
/// rather than a panic (a key with a newline in it, say).
pub fn header_value(value: &str) -> Result<reqwest::header::HeaderValue, ProviderError> {
    reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| ProviderError::Invalid("a configured header value (API key?) contains characters not allowed in HTTP headers".into()))
}

/// Text of an error body for messages: trimmed and cut to a readable length.
pub fn short(body: &str) -> String {
    let t = body.trim();
    if t.len() <= 300 {
        return t.to_string();
    }
    let mut end = 300;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

/// A 200 whose body is JSON where an event stream was asked for (a proxy or host that reports
/// errors that way): read (bounded) and turned into a stream error with the vendor's message.
async fn json_instead_of_events(response: &mut Response) -> ProviderError {
    let body = read_limited(response, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let value = value.as_array().and_then(|a| a.first()).unwrap_or(&value);
    let err = value.get("error").filter(|e| e.is_object()).unwrap_or(value);
    let message = err.get("message").and_then(serde_json::Value::as_str).map(short).unwrap_or_else(|| short(&text));
    let code = ["code", "type", "status"].iter().find_map(|k| err.get(*k).and_then(serde_json::Value::as_str)).map(str::to_string);
    ProviderError::Stream { message: format!("the upstream answered 200 with a JSON body instead of an event stream: {message}"), code }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// A vendor's stream format: SSE events in, [`Event`]s out. One per streaming provider.
pub trait SseDecoder: Send + 'static {
    /// Decode one SSE event. An `Err` ends the stream (an in-band vendor error, a malformed frame).
    fn event(&mut self, event: SseEvent) -> Result<Vec<Event>, ProviderError>;
    /// True once the vendor has said it is finished (`[DONE]`, `message_stop`): stop reading.
    fn is_done(&self) -> bool;
    /// The connection closed. Return trailing events, or an error if the answer is incomplete
    /// (a cut stream must never look like a finished one).
    fn end(&mut self) -> Result<Vec<Event>, ProviderError>;
}

/// Run `decoder` over the SSE events of `response`.
pub fn decode_sse<D: SseDecoder>(response: Response, decoder: D) -> EventStream {
    let stream = SseStream {
        body: response,
        parser: SseParser::new(),
        decoder,
        sse: VecDeque::new(),
        events: VecDeque::new(),
        body_ended: false,
        finished: false,
        started: false,
    };
    Box::pin(futures::stream::unfold(stream, |mut stream| async move {
        let item = stream.next().await?;
        Some((item, stream))
    }))
}

/// The state of [`decode_sse`]: the body's bytes become SSE events, which become [`Event`]s.
struct SseStream<D> {
    body: Response,
    parser: SseParser,
    decoder: D,
    /// Parsed, not yet decoded: a read may complete several events.
    sse: VecDeque<SseEvent>,
    /// Decoded, not yet handed on.
    events: VecDeque<Event>,
    body_ended: bool,
    finished: bool,
    /// The body's type has been checked.
    started: bool,
}

impl<D: SseDecoder> SseStream<D> {
    /// The next event; an error (a cut connection, a malformed or over-long frame, an in-band
    /// vendor error, an incomplete answer) is the last item.
    async fn next(&mut self) -> Option<Result<Event, ProviderError>> {
        if !self.started {
            self.started = true;
            if is_json(self.body.headers()) {
                self.finished = true;
                return Some(Err(json_instead_of_events(&mut self.body).await));
            }
        }
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            // Once the vendor says it is done, nothing after is read; but its end marker is no
            // finish reason: `end` still decides whether the answer is complete.
            if self.decoder.is_done() {
                self.finished = true;
                match self.decoder.end() {
                    Ok(events) => self.events.extend(events),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            let step = if let Some(event) = self.sse.pop_front() {
                self.decoder.event(event)
            } else if self.body_ended {
                self.finished = true;
                self.decoder.end()
            } else {
                match self.body.chunk().await {
                    Some(Ok(chunk)) => self.parser.push(&chunk).map(|events| {
                        self.sse.extend(events);
                        Vec::new()
                    }),
                    Some(Err(e)) => Err(ProviderError::stream(format!("connection lost mid-stream: {e}"))),
                    None => {
                        // The end of the body dispatches an event that lacked its blank line.
                        self.body_ended = true;
                        self.sse.extend(self.parser.finish());
                        Ok(Vec::new())
                    }
                }
            };
            match step {
                Ok(events) => self.events.extend(events),
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
