//! What the HTTP providers share: sending a JSON request, turning transport failures and error
//! statuses into [`ProviderError`]s, and reading bounded bodies.

use futures::StreamExt;
use reqwest::header::HeaderMap;

use super::{EventStream, HttpSettings};
use crate::llm::error::{parse_retry_after, ProviderError};
use crate::llm::sse::describe_reqwest;
use crate::llm::sse::SseEvent;
use crate::llm::types::Event;

/// Largest error body we read (the rest is dropped).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Largest non-streaming answer we read.
const MAX_RESPONSE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Turns a vendor's error status and body into a `ProviderError`; one per provider.
pub type ErrorParser = fn(status: u16, headers: &HeaderMap, body: &str) -> ProviderError;

/// POST `body` as JSON to `url` with `headers`. Resolves once a 2xx status arrives; any other
/// status is read (bounded) and handed to `on_error`.
pub async fn post_json(
    settings: &HttpSettings,
    url: reqwest::Url,
    headers: HeaderMap,
    body: &(impl serde::Serialize + ?Sized),
    on_error: ErrorParser,
) -> Result<reqwest::Response, ProviderError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    let response = settings
        .client
        .post(url)
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = read_limited(response, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
    let mut error = on_error(status, &headers, &String::from_utf8_lossy(&body));
    if let ProviderError::Http { status: 401 | 403, message, .. } = &mut error {
        // Vendors echo part of the rejected key ("Incorrect API key provided: sk-…abcd"):
        // never pass that on to clients or logs.
        *message = format!("the provider rejected voxgate's credentials (HTTP {status}): check this provider's api_key");
    }
    Err(error)
}

/// Read a whole (non-streaming) JSON answer.
pub async fn read_json(response: reqwest::Response) -> Result<serde_json::Value, ProviderError> {
    parse_json(&read_body(response).await?)
}

/// Read a whole (non-streaming) answer's bytes, for a provider that decodes them itself.
pub async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    read_limited(response, MAX_RESPONSE_BODY_BYTES).await
}

/// A whole answer's bytes as a JSON value; what [`read_json`] returns.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::stream(format!("malformed response body: {e}")))
}

/// A failure before any response arrived.
pub fn transport_error(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(describe_reqwest(e))
    } else {
        ProviderError::Connect(describe_reqwest(e))
    }
}

async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ProviderError::stream(format!("connection lost while reading body: {}", describe_reqwest(e))))?;
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
pub fn decode_sse<D: SseDecoder>(response: reqwest::Response, decoder: D) -> EventStream {
    let sse = Box::pin(crate::llm::sse::events(response));
    let stream = futures::stream::unfold(
        (sse, decoder, std::collections::VecDeque::new(), false),
        |(mut sse, mut decoder, mut pending, mut finished)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok(ev), (sse, decoder, pending, finished)));
                }
                if finished {
                    return None;
                }
                if decoder.is_done() {
                    finished = true;
                    continue;
                }
                let step = match sse.next().await {
                    Some(Ok(event)) => decoder.event(event),
                    Some(Err(e)) => Err(e),
                    None => {
                        finished = true;
                        decoder.end()
                    }
                };
                match step {
                    Ok(events) => pending.extend(events),
                    Err(e) => return Some((Err(e), (sse, decoder, pending, true))),
                }
            }
        },
    );
    Box::pin(stream)
}
