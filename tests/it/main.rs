//! voxgate's integration tests, as one test binary with a module per area: every file directly
//! under `tests/` would be a binary of its own, each linking llama.cpp, CTranslate2 and onnxruntime.
//!
//! The tests run on parallel threads of one process, so none may change what the others see:
//! no environment variables set, no process-wide tracing subscriber (`secrets_in_logs` sets its
//! thread's), ports from `127.0.0.1:0`, temporary files from `support::temp_dir` or named after
//! their test. The data the tests and the spawned `voxgate` read stay in `tests/browser/`,
//! `tests/metering/`, `tests/replay/` and `tests/sdk/`.

// Beside this folder, not in it: helpers for any test binary, not a test area.
#[path = "../support/mod.rs"]
mod support;

// The gateway: HTTP API, vendor adapters, fallback, keys and limits; the server's edge (origins,
// hosts, Twilio's signatures, frame limits).
mod conformance;
mod edge;
mod fallback;
mod faults;
mod fixture_streams;
mod gateway_http;
mod keys_limits;
mod provider_anthropic;
mod provider_gemini;
mod secrets_in_logs;
mod server_limits;
mod shutdown;

// Voice sessions: Realtime and Twilio over WebSockets, the fixtures, `voxgate replay`, hosted speech.
mod fixture_audio;
mod realtime_events;
mod realtime_session;
mod replay;
mod socket_limits;
mod speech_context;
mod speech_stt;
mod speech_tts;
mod twilio;
mod wire_recording;

// Metering: the ledger, and billing through the server.
mod ledger;
mod metering_clock;
mod metering_http;
mod speech_cost;

// Fuzzing: every parser of outside input, on generated and mutated inputs.
mod fuzz;

// The embedded engines and the offline defaults (`voxgate models fetch` first).
#[cfg(feature = "embedded-llm")]
mod embedded_llm;
#[cfg(feature = "embedded-stt")]
mod embedded_stt;
mod embedded_tts;
#[cfg(feature = "embedded-llm")]
mod offline_default;
#[cfg(all(feature = "embedded-stt", feature = "embedded-tts", feature = "embedded-llm"))]
mod offline_voice;

// The real binary with real clients: the `openai` Python SDK, Chromium, `voxgate bench`.
mod bench_gateway;
mod bench_pipeline;
mod browser_demo;
mod openai_sdk;
