//! Provider adapters, one file each, behind a closed enum. Every adapter turns a [`ChatRequest`]
//! into its vendor's wire format and the vendor's answer back into [`Event`]s.
//!
//! Adding a provider touches its own file, one arm of [`Provider`] (and of [`Provider::send`]), one
//! variant of `ProviderKind` with its default base URL (`llm/config.rs`), one arm in `Gateway::new`,
//! and the catalog: nothing outside `llm/`.

pub mod anthropic;
pub mod embedded;
pub mod fake;
pub mod gemini;
pub mod http;
pub mod openai;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;

use super::error::ProviderError;
use super::types::{ChatRequest, Event};
use crate::secret::Secret;

/// A provider's answer as a stream of events. The stream ends after `Finish` (and `Usage`, when
/// the vendor sends it); an `Err` item ends it early.
pub type EventStream = BoxStream<'static, Result<Event, ProviderError>>;

/// What an HTTP provider needs to reach its vendor.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// The vendor SDK's base URL convention, without a trailing slash
    /// (`https://api.openai.com/v1`, `https://api.anthropic.com`, `https://generativelanguage.googleapis.com`).
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub client: reqwest::Client,
    /// For `http://` endpoints (local and self-hosted OpenAI-compatible hosts, the benchmark's
    /// upstream): hyper's pooled client used directly, without reqwest's redirect layer and its
    /// parsing of the URL on every request. `None`: everything goes through `client`.
    pub(crate) plain: Option<PlainClient>,
    /// Endpoints already parsed, by path: parsing a URL costs more than the rest of building
    /// a request, and a provider uses a handful of them.
    urls: Arc<Mutex<HashMap<String, Arc<Endpoint>>>>,
}

/// The reqwest client of a provider: rustls, TCP_NODELAY, and **no redirects**. reqwest's
/// default policy follows up to 10 redirects and strips only `Authorization` when the host
/// changes, so a redirect would carry `x-api-key` or `x-goog-api-key` to whatever host it names.
/// A provider's 3xx is an upstream error instead ([`crate::llm::error::Verdict::Retry`]). (The
/// plain client, hyper's, never follows redirects.)
pub fn http_client(connect_timeout: Duration, pool_idle_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(pool_idle_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// hyper's pooled HTTP/1.1 client for plain `http://` upstreams.
pub(crate) type PlainClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, PlainBody>;
pub(crate) type PlainBody = http_body_util::Full<bytes::Bytes>;

/// One endpoint of a provider, parsed once.
#[derive(Debug)]
pub struct Endpoint {
    pub url: reqwest::Url,
    /// The same URL for the plain client; `None` unless it is `http://` and the provider has one.
    pub(crate) plain_uri: Option<hyper::Uri>,
}

/// Parsed endpoints kept per provider; Gemini has two per model, so this bounds the cache.
const CACHED_URLS_MAX: usize = 256;

impl HttpSettings {
    pub fn new(base_url: impl Into<String>, api_key: Option<Secret>, client: reqwest::Client) -> Self {
        HttpSettings { base_url: base_url.into(), api_key, client, plain: None, urls: Arc::default() }
    }

    /// Send `http://` requests through hyper's client directly (same connect timeout, TCP_NODELAY
    /// and idle-pool timeout as the reqwest client `Gateway::new` builds). Not when a proxy is
    /// configured in the environment: reqwest honours `http_proxy`/`all_proxy`, so those setups
    /// keep going through it.
    pub fn with_plain_http(mut self, connect_timeout: Duration, pool_idle_timeout: Duration) -> Self {
        let proxied =
            ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"].iter().any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if !proxied {
            let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(connect_timeout));
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(pool_idle_timeout)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(connector);
            self.plain = Some(client);
        }
        self
    }

    /// `base_url` joined with `path` (which starts with `/`), keeping any path prefix of the base.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }

    /// [`Self::url`], parsed (and remembered).
    pub fn endpoint(&self, path: &str) -> Result<Arc<Endpoint>, ProviderError> {
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(endpoint) = urls.get(path) {
            return Ok(endpoint.clone());
        }
        let url = reqwest::Url::parse(&self.url(path))
            .map_err(|e| ProviderError::Invalid(format!("the provider's base_url does not make a valid URL: {e}")))?;
        let plain_uri = match (&self.plain, url.scheme()) {
            (Some(_), "http") => url.as_str().parse::<hyper::Uri>().ok(),
            _ => None,
        };
        let endpoint = Arc::new(Endpoint { url, plain_uri });
        if urls.len() < CACHED_URLS_MAX {
            urls.insert(path.to_string(), endpoint.clone());
        }
        Ok(endpoint)
    }
}

/// Longest speaker name [`name_prefixed`] writes; OpenAI caps `name` at 64 characters too.
pub const NAME_PREFIX_CHARS_MAX: usize = 64;

/// A user message's text as a vendor without a message `name` field reads it (Anthropic, Gemini,
/// the embedded model): `NAME: text`, so `{"role": "user", "name": "speaker_A", "content": "hi"}`
/// becomes `speaker_A: hi`. The name is trimmed, cut to [`NAME_PREFIX_CHARS_MAX`] characters, and
/// its control characters and colons become `_`, so a name cannot end the label early or start a
/// new line. Without a name (or with an empty one), or with empty text, the text is returned as is.
pub fn name_prefixed(name: Option<&str>, text: &str) -> String {
    let label: String = name
        .unwrap_or_default()
        .trim()
        .chars()
        .take(NAME_PREFIX_CHARS_MAX)
        .map(|c| if c.is_control() || c == ':' { '_' } else { c })
        .collect();
    if label.is_empty() || text.is_empty() {
        return text.to_string();
    }
    format!("{label}: {text}")
}

/// The closed set of providers.
pub enum Provider {
    OpenAi(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
    Embedded(embedded::Embedded),
    Fake(fake::Fake),
}

impl Provider {
    /// Send `request` to `upstream_model`. With `stream` the vendor's streaming API is used;
    /// without it the vendor's one-shot API, whose answer comes back as a short event stream.
    /// The returned future resolves once the vendor has accepted the request (status 200).
    pub async fn send(&self, request: &ChatRequest, upstream_model: &str, stream: bool) -> Result<EventStream, ProviderError> {
        match self {
            Provider::OpenAi(p) => p.send(request, upstream_model, stream).await,
            Provider::Anthropic(p) => p.send(request, upstream_model, stream).await,
            Provider::Gemini(p) => p.send(request, upstream_model, stream).await,
            Provider::Embedded(p) => p.send(request, upstream_model, stream).await,
            Provider::Fake(p) => p.send(request, upstream_model, stream).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_becomes_a_label_before_the_text() {
        assert_eq!(name_prefixed(Some("speaker_A"), "book a table"), "speaker_A: book a table");
        assert_eq!(name_prefixed(Some(" Dr Smith "), "hi"), "Dr Smith: hi");
        // A name cannot end the label early or start a new line.
        assert_eq!(name_prefixed(Some("a:b\nc"), "hi"), "a_b_c: hi");
        assert_eq!(name_prefixed(Some(&"x".repeat(100)), "hi"), format!("{}: hi", "x".repeat(NAME_PREFIX_CHARS_MAX)));
        // Nothing to label, or nothing to label it with: the text as it was.
        assert_eq!(name_prefixed(None, "hi"), "hi");
        assert_eq!(name_prefixed(Some("  "), "hi"), "hi");
        assert_eq!(name_prefixed(Some("A"), ""), "");
    }
}
