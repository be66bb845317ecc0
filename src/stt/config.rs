//! `[stt]`: the speech-to-text engine voice sessions use, as written in the config file
//! ([`RawStt`]) and validated ([`SttConfig`]); [`super::build`] makes the engine from it.

use std::path::PathBuf;

use std::collections::BTreeMap;

use serde::Deserialize;

use std::time::Duration;

use super::stream::Limits;
use crate::llm::config::ProviderConfig;

/// `[stt]`: the speech-to-text engine voice sessions use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStt {
    /// `embedded` (Whisper tiny.en in process; the default), `fake` (scripted, for tests and
    /// benchmarks) or `none`.
    pub engine: Option<String>,
    /// Instead of `engine`: engines in order, the first used and the rest its fallbacks. Each is
    /// `NAME` or `NAME:model` for a `[providers.NAME]` speech vendor, or `embedded` or `fake`
    /// (with the settings below).
    pub engines: Option<Vec<String>>,
    /// Vendors: longest wait for the stream to open (default 2000).
    pub connect_ms_max: Option<u64>,
    /// Vendors: longest the vendor may stay silent while audio flows (default 5000).
    pub stall_ms_max: Option<u64>,
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
#[derive(Debug, Clone)]
pub enum SttConfig {
    None,
    /// Engines in order, each the fallback of the one before (two or more), with the entry that
    /// names each (`dg:nova-3`, `embedded`).
    Chain(Vec<(String, SttConfig)>),
    /// A hosted vendor that streams for the whole call.
    Vendor(VendorConfig),
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

/// A vendor engine: its provider entry, the model asked for, and the stream's limits.
#[derive(Debug, Clone)]
pub struct VendorConfig {
    pub provider: ProviderConfig,
    pub model: Option<String>,
    pub limits: Limits,
}

impl SttConfig {
    /// Validates `[stt]`; an error is a message for the config's `Invalid` error.
    pub fn from_raw(raw: &RawStt, providers: &BTreeMap<String, ProviderConfig>) -> Result<SttConfig, String> {
        let Some(names) = &raw.engines else { return Self::builtin(raw, raw.engine.as_deref().unwrap_or("default")) };
        if raw.engine.is_some() {
            return Err("[stt] takes engine or engines, not both".into());
        }
        let mut limits = Limits::default();
        for (field, value, slot) in
            [("connect_ms_max", raw.connect_ms_max, &mut limits.connect), ("stall_ms_max", raw.stall_ms_max, &mut limits.stall)]
        {
            match value {
                Some(0) => return Err(format!("stt.{field} = 0 would fail every stream; leave it out for the default")),
                Some(ms) => *slot = Duration::from_millis(ms),
                None => {}
            }
        }
        let mut chain = Vec::new();
        for entry in names {
            let (name, model) = match entry.split_once(':') {
                Some((name, model)) => (name, Some(model.to_string())),
                None => (entry.as_str(), None),
            };
            let engine = match providers.get(name) {
                Some(p) if p.kind.serves_stt() => SttConfig::Vendor(VendorConfig { provider: p.clone(), model, limits }),
                Some(p) => return Err(format!("stt.engines names {name:?}, a {:?} provider, which does no speech-to-text", p.kind)),
                None if model.is_none() && matches!(name, "embedded" | "fake") => Self::builtin(raw, name)?,
                None if matches!(name, "assemblyai" | "deepgram" | "openai") => {
                    let var = format!("{}_API_KEY", name.to_uppercase());
                    return Err(format!("stt.engines names {name:?}, which is off: set {var} or add [providers.{name}]"));
                }
                None => {
                    return Err(format!(
                        "stt.engines names {entry:?}, which is neither a [providers] speech vendor nor \"embedded\" or \"fake\""
                    ))
                }
            };
            chain.push((entry.clone(), engine));
        }
        match chain.len() {
            0 => Err("stt.engines is empty; leave it out for the default engine, or use engine = \"none\"".into()),
            1 => Ok(chain.remove(0).1),
            _ => Ok(SttConfig::Chain(chain)),
        }
    }

    /// One of the built-in engines, `name` as `[stt] engine` spells it.
    fn builtin(raw: &RawStt, name: &str) -> Result<SttConfig, String> {
        Ok(match name {
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
