//! `[tts]`: the text-to-speech engines voice sessions use, as written in the config file
//! ([`RawTts`]) and validated ([`TtsConfig`]); [`super::build`] makes the engines from it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::llm::config::{ProviderConfig, ProviderKind};

/// No first audio from an engine within this long moves the chunk to the next engine.
pub const TTFB_MS_MAX_DEFAULT: u64 = 2_000;
/// Consecutive failures that open a vendor's breaker, and how long it stays open.
pub const BREAKER_FAILURES_DEFAULT: u32 = 3;
pub const BREAKER_COOLDOWN_MS_DEFAULT: u64 = 30_000;

/// `[tts]`: the text-to-speech engines voice sessions use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTts {
    /// One engine: `embedded` (the Piper voice in process; the default, falling back to `espeak`
    /// when the voice is not fetched), `espeak` (the espeak-ng program, no model), `fake` (a tone as
    /// long as the text, for tests and benchmarks), `none`, or a `[providers.NAME]` that speaks.
    pub engine: Option<String>,
    /// Engines in order, `NAME` or `NAME:voice`: the first speaks, the rest are its fallbacks.
    /// Not together with `engine`.
    pub engines: Option<Vec<String>>,
    /// No first audio of a chunk within this many ms: the chunk goes to the next engine (default
    /// 2000). The last engine of the list has no such deadline (only `tts_timeout_ms`).
    pub ttfb_ms_max: Option<u64>,
    /// Consecutive failures that open a vendor's breaker (default 3).
    pub breaker_failures: Option<u32>,
    /// How long an open breaker skips its vendor before one probe (default 30000).
    pub breaker_cooldown_ms: Option<u64>,
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

/// The text-to-speech engines, validated.
#[derive(Debug, Clone)]
pub struct TtsConfig {
    /// In order: the first speaks, the rest are its fallbacks. Empty: sessions answer in text.
    pub engines: Vec<TtsEngineConfig>,
    pub ttfb_ms_max: u64,
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
}

/// One engine of `[tts]`.
#[derive(Debug, Clone)]
pub enum TtsEngineConfig {
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
    /// A hosted vendor from `[providers]`, with the voice written after its name (the adapter's
    /// default when `None`).
    Vendor {
        provider: ProviderConfig,
        voice: Option<String>,
    },
}

impl TtsEngineConfig {
    /// A vendor's model as its adapter reads it from the configured voice (`MODEL/VOICE`, or the
    /// adapter's default; Deepgram's voice is its model): what its list price is looked up by.
    pub fn vendor_model(&self) -> Option<String> {
        let TtsEngineConfig::Vendor { provider, voice } = self else { return None };
        let chosen = voice.as_deref().and_then(|v| v.split_once('/')).map(|(m, _)| m.to_string());
        Some(match provider.kind {
            ProviderKind::Deepgram => voice.clone().unwrap_or_else(|| super::deepgram::DEFAULT_MODEL.to_string()),
            ProviderKind::Elevenlabs => chosen.unwrap_or_else(|| super::elevenlabs::DEFAULT_MODEL.to_string()),
            ProviderKind::Cartesia => chosen.unwrap_or_else(|| super::cartesia::DEFAULT_MODEL.to_string()),
            _ => chosen.unwrap_or_else(|| super::openai::DEFAULT_MODEL.to_string()),
        })
    }

    /// The name the engine goes by in metrics and `response.voxgate.tts_engine`.
    pub fn name(&self) -> &str {
        match self {
            TtsEngineConfig::Fake { .. } => "fake",
            TtsEngineConfig::Embedded { .. } => "embedded",
            TtsEngineConfig::Espeak { .. } => "espeak",
            TtsEngineConfig::Vendor { provider, .. } => &provider.id,
        }
    }
}

impl TtsConfig {
    /// Validates `[tts]`; an error is a message for the config's `Invalid` error.
    pub fn from_raw(raw: &RawTts, providers: &BTreeMap<String, ProviderConfig>) -> Result<TtsConfig, String> {
        let names: Vec<(String, bool)> = match (&raw.engine, &raw.engines) {
            (Some(_), Some(_)) => return Err("tts.engine and tts.engines cannot both be set: write the list in tts.engines".into()),
            (Some(one), None) => vec![(one.clone(), true)],
            (None, Some(list)) if list.is_empty() => return Err("tts.engines is empty: name an engine, or \"none\"".into()),
            (None, Some(list)) => list.iter().map(|n| (n.clone(), true)).collect(),
            (None, None) => vec![("embedded".to_string(), false)],
        };
        if names.len() > 1 && names.iter().any(|(n, _)| n == "none") {
            return Err("tts.engines: \"none\" cannot be one of several engines".into());
        }
        let mut engines = Vec::with_capacity(names.len());
        for (entry, explicit) in names {
            let field = if raw.engines.is_some() { "tts.engines" } else { "tts.engine" };
            let (name, voice) = match entry.split_once(':') {
                Some((n, v)) if !v.trim().is_empty() => (n.trim(), Some(v.trim().to_string())),
                Some(_) => return Err(format!("{field}: {entry:?} has an empty voice after ':'")),
                None => (entry.trim(), None),
            };
            let engine = match name {
                "none" => continue,
                "embedded" | "default" => {
                    if voice.is_some() {
                        return Err(format!("{field}: {entry:?}: the embedded engine has one voice; write \"embedded\""));
                    }
                    TtsEngineConfig::Embedded { explicit: explicit && name == "embedded", workers: raw.workers.unwrap_or(1).max(1) }
                }
                "espeak" => TtsEngineConfig::Espeak { voice: voice.or_else(|| raw.voice.clone()).unwrap_or_else(|| "en-us".to_string()) },
                "fake" => TtsEngineConfig::Fake {
                    ttfb_ms: raw.ttfb_ms.unwrap_or(0),
                    ms_per_char: raw.ms_per_char.unwrap_or(60).max(1),
                    precise_timing: raw.precise_timing.unwrap_or(false),
                },
                other => match providers.get(other) {
                    Some(p) if p.kind.serves_tts() => TtsEngineConfig::Vendor { provider: p.clone(), voice },
                    Some(p) => {
                        return Err(format!(
                            "{field}: provider {other:?} is of kind {:?}, which does not speak; text-to-speech vendors are openai, elevenlabs, cartesia and deepgram",
                            p.kind
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{field}: {other:?} is not an engine; use \"embedded\", \"espeak\", \"fake\", \"none\" or a [providers.NAME] of kind openai, elevenlabs, cartesia or deepgram (a vendor switches on by its key variable)"
                        ))
                    }
                },
            };
            engines.push(engine);
        }
        let ttfb_ms_max = raw.ttfb_ms_max.unwrap_or(TTFB_MS_MAX_DEFAULT);
        if ttfb_ms_max == 0 {
            return Err("tts.ttfb_ms_max = 0 would move every chunk to the next engine".into());
        }
        Ok(TtsConfig {
            engines,
            ttfb_ms_max,
            breaker_failures: raw.breaker_failures.unwrap_or(BREAKER_FAILURES_DEFAULT).max(1),
            breaker_cooldown_ms: raw.breaker_cooldown_ms.unwrap_or(BREAKER_COOLDOWN_MS_DEFAULT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::config::ProviderKind;

    fn providers() -> BTreeMap<String, ProviderConfig> {
        let p = |id: &str, kind| ProviderConfig {
            id: id.into(),
            kind,
            base_url: "http://127.0.0.1:9".into(),
            api_key: None,
            model_path: None,
            connect_timeout_ms: 1000,
            diarize: true,
        };
        [p("cartesia", ProviderKind::Cartesia), p("openai", ProviderKind::Openai), p("aai", ProviderKind::Assemblyai)]
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect()
    }

    fn parse(toml_text: &str) -> Result<TtsConfig, String> {
        let raw: RawTts = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        TtsConfig::from_raw(&raw, &providers())
    }

    #[test]
    fn engines_are_an_ordered_list_of_names_and_voices() {
        let c = parse("engines = [\"cartesia:sonic-voice\", \"openai\", \"espeak:en-gb\", \"embedded\"]\nttfb_ms_max = 900\n").unwrap();
        let names: Vec<&str> = c.engines.iter().map(|e| e.name()).collect();
        assert_eq!(names, ["cartesia", "openai", "espeak", "embedded"]);
        assert!(matches!(&c.engines[0], TtsEngineConfig::Vendor { voice: Some(v), .. } if v == "sonic-voice"));
        assert!(matches!(&c.engines[1], TtsEngineConfig::Vendor { voice: None, .. }));
        assert!(matches!(&c.engines[2], TtsEngineConfig::Espeak { voice } if voice == "en-gb"));
        assert!(matches!(c.engines[3], TtsEngineConfig::Embedded { explicit: true, .. }));
        assert_eq!((c.ttfb_ms_max, c.breaker_failures, c.breaker_cooldown_ms), (900, 3, 30_000));
        // `engine` still works, and the default is the embedded voice (not explicit: it may degrade).
        assert!(matches!(parse("engine = \"fake\"\n").unwrap().engines[..], [TtsEngineConfig::Fake { .. }]));
        assert!(matches!(parse("").unwrap().engines[..], [TtsEngineConfig::Embedded { explicit: false, .. }]));
        assert!(parse("engine = \"none\"\n").unwrap().engines.is_empty());
        assert_eq!(parse("").unwrap().ttfb_ms_max, TTFB_MS_MAX_DEFAULT);
    }

    #[test]
    fn bad_engine_lists_are_clear_errors() {
        let err = |t: &str| parse(t).unwrap_err();
        assert!(err("engine = \"fake\"\nengines = [\"fake\"]\n").contains("cannot both be set"));
        assert!(err("engines = [\"ghost\"]\n").contains("\"ghost\" is not an engine"));
        assert!(err("engines = [\"aai\"]\n").contains("does not speak"));
        assert!(err("engines = []\n").contains("empty"));
        assert!(err("engines = [\"none\", \"fake\"]\n").contains("\"none\" cannot be one of several"));
        assert!(err("engines = [\"cartesia:\"]\n").contains("empty voice"));
        assert!(err("engines = [\"embedded:x\"]\n").contains("one voice"));
        assert!(err("engines = [\"fake\"]\nttfb_ms_max = 0\n").contains("ttfb_ms_max"));
        assert!(err("engines = [\"fake\"]\nttfb_ms = \"x\"\n").contains("ttfb_ms"));
    }
}
