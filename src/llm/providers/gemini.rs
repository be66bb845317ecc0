//! PLACEHOLDER: being written; see the issue tracker.

use super::{EventStream, HttpSettings};
use crate::llm::error::ProviderError;
use crate::llm::types::ChatRequest;

pub struct Gemini {
    #[allow(dead_code)]
    settings: HttpSettings,
}

impl Gemini {
    pub fn new(settings: HttpSettings) -> Self {
        Gemini { settings }
    }

    pub async fn send(&self, _request: &ChatRequest, _upstream_model: &str, _stream: bool) -> Result<EventStream, ProviderError> {
        Err(ProviderError::Invalid("gemini provider not built yet".into()))
    }
}
