//! Provider adapters, one file each, behind a closed enum. Every adapter turns a [`ChatRequest`]
//! into its vendor's wire format and the vendor's answer back into [`Event`]s.
//!
//! Adding a provider touches its own file, one arm of [`Provider`] and the catalog.

pub mod anthropic;
pub mod embedded;
pub mod fake;
pub mod gemini;
pub mod http;
pub mod openai;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// Endpoint URLs already parsed, by path: parsing a URL costs more than the rest of building
    /// a request, and a provider uses a handful of them.
    urls: Arc<Mutex<HashMap<String, reqwest::Url>>>,
}

/// Parsed endpoints kept per provider; Gemini has two per model, so this bounds the cache.
const CACHED_URLS_MAX: usize = 256;

impl HttpSettings {
    pub fn new(base_url: impl Into<String>, api_key: Option<Secret>, client: reqwest::Client) -> Self {
        HttpSettings { base_url: base_url.into(), api_key, client, urls: Arc::default() }
    }

    /// `base_url` joined with `path` (which starts with `/`), keeping any path prefix of the base.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }

    /// [`Self::url`], parsed (and remembered).
    pub fn endpoint(&self, path: &str) -> Result<reqwest::Url, ProviderError> {
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(url) = urls.get(path) {
            return Ok(url.clone());
        }
        let url = reqwest::Url::parse(&self.url(path))
            .map_err(|e| ProviderError::Invalid(format!("the provider's base_url does not make a valid URL: {e}")))?;
        if urls.len() < CACHED_URLS_MAX {
            urls.insert(path.to_string(), url.clone());
        }
        Ok(url)
    }
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
