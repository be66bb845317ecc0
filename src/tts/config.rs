//! `[tts]`: the text-to-speech engine voice sessions use, as written in the config file
//! ([`RawTts`]) and validated ([`TtsConfig`]); [`super::build`] makes the engine from it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::llm::config::ProviderConfig;

/// `[tts]`: the text-to-speech engine voice sessions use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTts {
    /// `embedded` (the Piper voice in process; the default, falling back to `espeak` when the voice
    /// is not fetched), `espeak` (the espeak-ng program, no model), `fake` (a tone as long as the
    /// text, for tests and benchmarks) or `none`.
    pub engine: Option<String>,
    /// embedded: synthesis threads (default 1).
    pub workers: Option<usize>,
    /// espeak: the espeak-ng voice (default `en-us`).
    pub voice: Option<String>,
    /// fake: delay before the first audio of each chunk (default 0).
    pub ttfb_ms: Option<u64>,
    /// fake: audio length per non-blank character (default 60).
    pub ms_per_char: Option<u32>,
    /// fake: wait with a precise timer thread instead of tokio's 1 ms timer (benchmarks).
    pub precise_timing: Option<bool>,
}

/// The text-to-speech engine, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum TtsConfig {
    None,
    Fake {
        ttfb_ms: u64,
        ms_per_char: u32,
        precise_timing: bool,
    },
    /// The Piper voice from `models_dir`; by default, espeak-ng when the voice is missing.
    Embedded {
        explicit: bool,
        workers: usize,
    },
    Espeak {
        voice: String,
    },
}

impl TtsConfig {
    /// Validates `[tts]`; an error is a message for the config's `Invalid` error.
    pub fn from_raw(raw: &RawTts, providers: &BTreeMap<String, ProviderConfig>) -> Result<TtsConfig, String> {
        let _ = providers; // the engines list names them (issue 14)
        Ok(match raw.engine.as_deref().unwrap_or("default") {
            "none" => TtsConfig::None,
            e @ ("embedded" | "default") => TtsConfig::Embedded { explicit: e == "embedded", workers: raw.workers.unwrap_or(1).max(1) },
            "espeak" => TtsConfig::Espeak { voice: raw.voice.clone().unwrap_or_else(|| "en-us".to_string()) },
            "fake" => TtsConfig::Fake {
                ttfb_ms: raw.ttfb_ms.unwrap_or(0),
                ms_per_char: raw.ms_per_char.unwrap_or(60).max(1),
                precise_timing: raw.precise_timing.unwrap_or(false),
            },
            other => return Err(format!("tts.engine = {other:?} is not an engine; use \"embedded\", \"espeak\", \"fake\" or \"none\"")),
        })
    }
}
