//! Fake vendor APIs, one file per provider, each speaking its vendor's real wire format.

pub mod anthropic;
pub mod gemini;
pub mod openai;
