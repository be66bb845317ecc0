//! voxgate: a real-time voice-agent server with an in-process OpenAI-compatible LLM gateway.
//!
//! # Layout
//! - [`llm`]: the gateway (types, providers, router, catalog, usage).
//! - [`secret`]: API keys that never print themselves.

pub mod llm;
pub mod models;
pub mod secret;
