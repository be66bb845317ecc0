//! voxgate: a real-time voice-agent server with an in-process OpenAI-compatible LLM gateway.
//!
//! # Layout
//! A call: a client's socket reaches [`http`] (auth, admission), then a [`transport`] that maps its
//! wire format onto the [`session`]'s commands and events; the session runs the call on the stages
//! ([`stt`], the [`llm`] gateway in process, [`tts`]) and bills it through [`metering`].
//! - [`transport`]: one mapper + socket loop per client protocol: `realtime` (OpenAI Realtime),
//!   `twilio` (Media Streams). Depends on the session, never the reverse.
//! - [`session`]: the per-call task, protocol-free: `Command` in, `Event` out, PCM audio; its parts
//!   own their state (input, turn, playback) and the loop routes between them.
//! - [`llm`]: the gateway: OpenAI-compatible types, one file per provider under
//!   `llm/providers/`, the router with fallback and breakers, usage and cost, its own config.
//! - [`stt`], [`tts`]: speech engines, each stage building its own from its config section;
//!   [`engine`]: what they share (lazy loading off the async runtime).
//! - [`audio`]: audio formats, G.711 and resampling, for every part of a call.
//! - [`metering`]: billing per started second at a flat hourly rate, and the durable usage ledger
//!   behind a `Store` (SQLite): sessions and gateway calls, checkpoints, crash recovery.
//! - [`http`]: the axum router, auth and keys, OpenAI-style errors, `/metrics`.
//! - [`server`]: binding, exposure checks, graceful shutdown.
//! - [`config`]: reads the TOML file and the environment and hands each part its section.
//! - [`metrics`]: a small Prometheus registry.
//! - [`replay`], [`mod@bench`]: `voxgate replay` and the `voxgate bench` load generators.
//! - [`models`]: fetching and verifying the embedded model files (pinned, SHA-256 checked).
//! - [`secret`]: API keys that never print themselves.

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
