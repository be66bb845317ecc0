//! PLACEHOLDER: being written; see the issue tracker.

use std::path::PathBuf;

use super::EventStream;
use crate::llm::error::ProviderError;
use crate::llm::types::ChatRequest;

pub struct Embedded {
    #[allow(dead_code)]
    model_path: PathBuf,
}

impl Embedded {
    pub fn new(model_path: PathBuf) -> Self {
        Embedded { model_path }
    }

    pub fn check(&self) -> Result<(), String> {
        Err("embedded provider not built yet".into())
    }

    pub async fn send(&self, _request: &ChatRequest, _upstream_model: &str, _stream: bool) -> Result<EventStream, ProviderError> {
        Err(ProviderError::Engine("embedded provider not built yet".into()))
    }
}
