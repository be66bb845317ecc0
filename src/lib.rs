//! voxgate: a real-time voice-agent server with an in-process OpenAI-compatible LLM gateway.
//!
//! # Layout
//! - [`llm`]: the gateway: OpenAI-compatible types, one file per provider under
//!   `llm/providers/`, the router with fallback and breakers, usage and cost.
//! - [`http`]: the axum router, auth, OpenAI-style errors, `/metrics`.
//! - [`server`]: binding, exposure checks, graceful shutdown.
//! - [`config`]: reads the TOML config and the environment and hands each part its section
//!   (the gateway's, with the built-in catalog, in `llm::config`; `stt::config`, `tts::config`,
//!   `metering::config`); API keys.
//! - [`stt`], [`tts`]: speech engines, each stage building its own from its config; [`engine`]:
//!   what they share (lazy loading off the async runtime).
//! - [`metrics`]: a small Prometheus registry.
//! - [`metering`]: billing per started second at a flat hourly rate, and the durable SQLite
//!   usage ledger (sessions and gateway calls, checkpoints, crash recovery, fallback file).
//! - [`bench`]: `voxgate bench` load generators.
//! - [`models`]: fetching and verifying the embedded model files (pinned, SHA-256 checked).
//! - [`secret`]: API keys that never print themselves.
//! - [`transport`]: client wire formats: audio codecs (PCM16, G.711), resampling, and the
//!   OpenAI Realtime event types (not yet served on a socket).

pub mod audio;
pub mod bench;
pub mod config;
pub mod engine;
pub mod fake_clock;
pub mod http;
pub mod llm;
pub mod metering;
pub mod metrics;
pub mod models;
pub mod replay;
pub mod secret;
pub mod server;
pub mod session;
pub mod stt;
#[cfg(test)]
pub(crate) mod test_rng;
pub mod transport;
pub mod tts;
