//! The LLM gateway: OpenAI-compatible types, provider adapters, the router with fallback and
//! breakers, the model catalog with prices, and usage accounting.

pub mod error;
pub mod ids;
pub mod providers;
pub mod sse;
pub mod types;
