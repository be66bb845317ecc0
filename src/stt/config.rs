//! `[stt]`: the speech-to-text engine voice sessions use, as written in the config file
//! ([`RawStt`]) and validated ([`SttConfig`]); [`super::build`] makes the engine from it.

use std::path::PathBuf;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::llm::config::ProviderConfig;

/// `[stt]`: the speech-to-text engine voice sessions use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStt {
    /// `embedded` (Whisper tiny.en in process; the default), `fake` (scripted, for tests and
    /// benchmarks) or `none`.
    pub engine: Option<String>,
    /// embedded: decoding threads, each with its own model copy (default 1).
    pub workers: Option<usize>,
    /// embedded: re-decode the growing utterance for a partial transcript at most this often, in
    /// ms of audio (default 0: off; see `WhisperSettings::partial_interval_ms` for why).
    pub partial_interval_ms: Option<u64>,
    /// fake: sidecar transcript files (`fixtures/audio/NAME.json`), utterances taken in order.
    #[serde(default)]
    pub script: Vec<PathBuf>,
    /// fake: plain transcripts, one per utterance, after those of `script`.
    #[serde(default)]
    pub transcripts: Vec<String>,
    /// fake: delay from the end of an utterance to its final transcript (default 0).
    pub latency_ms: Option<u64>,
    /// fake: wait with a precise timer thread instead of tokio's 1 ms timer (benchmarks).
    pub precise_timing: Option<bool>,
}

/// The speech-to-text engine, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum SttConfig {
    None,
    Fake {
        script: Vec<PathBuf>,
        transcripts: Vec<String>,
        latency_ms: u64,
        precise_timing: bool,
    },
    /// Whisper from `models_dir`. `explicit`: named in the config (a missing model is an error at
    /// start) rather than the default (a missing model leaves sessions without speech input, with a warning).
    Embedded {
        explicit: bool,
        workers: usize,
        partial_interval_ms: u64,
    },
}

impl SttConfig {
    /// Validates `[stt]`; an error is a message for the config's `Invalid` error.
    pub fn from_raw(raw: &RawStt, providers: &BTreeMap<String, ProviderConfig>) -> Result<SttConfig, String> {
        let _ = providers; // the engines list names them (issue 14)
        Ok(match raw.engine.as_deref().unwrap_or("default") {
            "none" => SttConfig::None,
            e @ ("embedded" | "default") => SttConfig::Embedded {
                explicit: e == "embedded",
                workers: raw.workers.unwrap_or(1).max(1),
                partial_interval_ms: raw.partial_interval_ms.unwrap_or(0),
            },
            "fake" => SttConfig::Fake {
                script: raw.script.clone(),
                transcripts: raw.transcripts.clone(),
                latency_ms: raw.latency_ms.unwrap_or(0),
                precise_timing: raw.precise_timing.unwrap_or(false),
            },
            other => return Err(format!("stt.engine = {other:?} is not an engine; use \"embedded\", \"fake\" or \"none\"")),
        })
    }
}
