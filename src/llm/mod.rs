//! The LLM gateway: OpenAI-compatible types, provider adapters, the router with fallback and
//! breakers, the model catalog with prices and its own config types, and usage accounting.

pub mod breaker;
pub mod config;
pub mod error;
pub mod ids;
pub mod providers;
pub mod router;
pub mod sse;
pub mod types;
pub mod usage;
