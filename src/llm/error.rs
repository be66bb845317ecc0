//! What can go wrong talking to a provider, and whether the router may try another model.

use std::time::Duration;

/// What a failed attempt means for the rest of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider is unhealthy (connect error, timeout, 408, 409, 429, 3xx, 5xx, a broken
    /// stream): count a breaker failure and try the next model (or wait out `Retry-After` once).
    Retry,
    /// Our account at this provider cannot serve (401, 403, 404, quota or billing): open the
    /// provider's breaker and move on to the next model of a *different* provider, never to this
    /// one again.
    OtherProvider,
    /// The request itself is wrong (400, 413, 422 …): every provider would refuse it the same way.
    Stop,
}

/// A failed attempt at one provider. Providers build these; the router classifies them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// No connection could be made (DNS, refused, TLS, reset before a response).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The provider did not answer in time (request timeout, TTFT deadline, idle stall).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The provider answered with an HTTP error status.
    #[error("HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        /// The vendor's error code or type, when it gave one (`rate_limit_exceeded`, `overloaded_error` …).
        code: Option<String>,
        /// How long the vendor asked us to wait (`Retry-After`, Gemini `retryDelay`).
        retry_after: Option<Duration>,
        /// A quota, billing or spend-limit error: never retried, even when the status is 429.
        quota: bool,
    },
    /// The stream broke after a 200: cut, malformed frame, or an in-band error event.
    #[error("stream error: {message}")]
    Stream {
        message: String,
        /// The vendor's in-band error type, when it sent one (`overloaded_error` …).
        code: Option<String>,
    },
    /// The request cannot be expressed for this provider (e.g. an unsupported feature).
    #[error("invalid request for this provider: {0}")]
    Invalid(String),
    /// A local engine failed (embedded model missing, decode failure).
    #[error("engine error: {0}")]
    Engine(String),
}

/// The code of an error that says the key itself is invalid, whatever its status (OpenAI's name;
/// Gemini answers a bad key with a 400).
pub const INVALID_API_KEY: &str = "invalid_api_key";

/// The code a context-length error carries, whatever the vendor called it (OpenAI's name).
pub const CONTEXT_LENGTH_EXCEEDED: &str = "context_length_exceeded";

/// Whether a vendor's error message says the prompt is longer than the model's context.
pub fn says_context_too_long(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "maximum context length",
        "context length exceeded",
        "context_length_exceeded",
        "prompt is too long",
        "exceeds the maximum number of tokens",
        "context window",
        "context limit",
    ]
    .iter()
    .any(|s| m.contains(s))
}

impl ProviderError {
    pub fn http(status: u16, message: impl Into<String>) -> Self {
        ProviderError::Http { status, message: message.into(), code: None, retry_after: None, quota: false }
    }

    pub fn stream(message: impl Into<String>) -> Self {
        ProviderError::Stream { message: message.into(), code: None }
    }

    /// What the router does after this error: the one classification of failures.
    pub fn verdict(&self) -> Verdict {
        match self {
            ProviderError::Connect(_) | ProviderError::Timeout(_) | ProviderError::Stream { .. } | ProviderError::Engine(_) => {
                Verdict::Retry
            }
            ProviderError::Invalid(_) => Verdict::Stop,
            ProviderError::Http { quota: true, .. } | ProviderError::Http { status: 401 | 403 | 404, .. } => Verdict::OtherProvider,
            ProviderError::Http { code: Some(c), .. } if c == INVALID_API_KEY => Verdict::OtherProvider,
            // A redirect is never followed (it could carry our key to another host): the
            // provider is misconfigured or moved, which says nothing good about its health.
            ProviderError::Http { status: 300..=399 | 408 | 409 | 429 | 500..=599, .. } => Verdict::Retry,
            ProviderError::Http { .. } => Verdict::Stop,
        }
    }

    /// Whether the router may retry this provider or move on to the next model after this error.
    /// Never retried: 400, 401, 403, 404, 413, 422 and quota or billing errors; the same request
    /// would fail the same way, and a hidden retry only delays the error the user must fix.
    /// (401, 403, 404 and quota errors still move to a *different* provider: see [`Verdict`].)
    pub fn is_retryable(&self) -> bool {
        self.verdict() == Verdict::Retry
    }

    /// The prompt does not fit this model; a model with a larger context may take it.
    pub fn is_context_length(&self) -> bool {
        matches!(self, ProviderError::Http { code: Some(c), .. } if c == CONTEXT_LENGTH_EXCEEDED)
    }

    /// A short stable label for metrics and the attempts header.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Connect(_) => "connect",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Http { quota: true, .. } => "quota",
            ProviderError::Http { status: 429, .. } => "rate_limited",
            ProviderError::Http { status: 529, .. } => "overloaded",
            ProviderError::Http { status: 500..=599, .. } => "server_error",
            ProviderError::Http { status: 401, .. } => "unauthorized",
            ProviderError::Http { code: Some(c), .. } if c == INVALID_API_KEY => "unauthorized",
            ProviderError::Http { status: 403, .. } => "forbidden",
            ProviderError::Http { status: 404, .. } => "not_found",
            ProviderError::Http { status: 300..=399, .. } => "redirect",
            e if e.is_context_length() => "context_length",
            ProviderError::Http { .. } => "client_error",
            ProviderError::Stream { .. } => "stream",
            ProviderError::Invalid(_) => "invalid_request",
            ProviderError::Engine(_) => "engine",
        }
    }
}

/// Parse a `Retry-After` header value: delta-seconds (possibly fractional) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(86_400.0)));
        }
        return None;
    }
    parse_http_date(v).map(|at| {
        let now = std::time::SystemTime::now();
        at.duration_since(now).unwrap_or(Duration::ZERO)
    })
}

/// Parse a Google duration string such as `"22s"` or `"1.5s"`.
pub fn parse_google_duration(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// IMF-fixdate only (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 requires senders to use.
fn parse_http_date(v: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].iter().position(|m| *m == parts[2])?
        as u64
        + 1;
    let year: u64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').map(|x| x.parse().ok()).collect::<Option<Vec<_>>>()?;
    if hms.len() != 3 || !(1970..=9999).contains(&year) || !(1..=31).contains(&day) || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return None;
    }
    // Days from civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        // A date in the past means "now".
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        let at = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        // Absurd dates are refused, not a panic.
        assert_eq!(parse_retry_after("Sun, 06 Nov 300000000000 08:49:37 GMT"), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 99999999999999:49:37 GMT"), None);
    }

    #[test]
    fn google_durations() {
        assert_eq!(parse_google_duration("22s"), Some(Duration::from_secs(22)));
        assert_eq!(parse_google_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_google_duration("22"), None);
    }

    #[test]
    fn context_length_messages_of_each_vendor_are_recognised() {
        for m in [
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            "prompt is too long: 210000 tokens > 200000 maximum",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        ] {
            assert!(says_context_too_long(m), "{m}");
        }
        assert!(!says_context_too_long("Invalid 'messages': empty array"));
    }

    #[test]
    fn classification_follows_the_design() {
        for s in [408, 409, 429, 500, 502, 503, 529] {
            assert!(ProviderError::http(s, "x").is_retryable(), "{s} should fall back");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!ProviderError::http(s, "x").is_retryable(), "{s} must not be retried");
        }
        let quota = ProviderError::Http { status: 429, message: "q".into(), code: None, retry_after: None, quota: true };
        assert!(!quota.is_retryable());
        assert_eq!(quota.kind(), "quota");
        assert_eq!(quota.verdict(), Verdict::OtherProvider);
        for (s, kind) in [(401, "unauthorized"), (403, "forbidden"), (404, "not_found")] {
            assert_eq!(ProviderError::http(s, "x").verdict(), Verdict::OtherProvider, "{s}");
            assert_eq!(ProviderError::http(s, "x").kind(), kind);
        }
        for s in [400, 413, 422] {
            assert_eq!(ProviderError::http(s, "x").verdict(), Verdict::Stop, "{s}");
        }
        for s in [301, 302, 307, 308] {
            assert_eq!(ProviderError::http(s, "x").verdict(), Verdict::Retry, "a redirect is an upstream failure: {s}");
            assert_eq!(ProviderError::http(s, "x").kind(), "redirect");
        }
    }
}
