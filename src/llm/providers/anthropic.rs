//! PLACEHOLDER: being written; see the issue tracker.

use super::{EventStream, HttpSettings};
use crate::llm::error::ProviderError;
use crate::llm::types::ChatRequest;

pub struct Anthropic {
    #[allow(dead_code)]
    settings: HttpSettings,
}

impl Anthropic {
    pub fn new(settings: HttpSettings) -> Self {
        Anthropic { settings }
    }

    pub async fn send(&self, _request: &ChatRequest, _upstream_model: &str, _stream: bool) -> Result<EventStream, ProviderError> {
        Err(ProviderError::Invalid("anthropic provider not built yet".into()))
    }
}
