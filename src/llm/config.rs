//! The gateway's config: `[gateway]` settings, `[providers.*]`, `[[models]]` with prices and
//! `[routes.*]`, as written in TOML (`Raw*`, unknown fields are errors) and validated into
//! [`GatewayConfig`]. The built-in catalog (`catalog.toml`, beside this file) has the same shape
//! ([`RawCatalog`]); the user's entries are laid over it: a provider, model or route with the same
//! id replaces the built-in one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;

/// The catalog shipped in the binary.
pub const CATALOG_TOML: &str = include_str!("catalog.toml");

pub const DEFAULT_TTFT_MS_MAX: u64 = 30_000;
pub const DEFAULT_IDLE_MS_MAX: u64 = 30_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// How long an attempt waits for the upstream's status line and headers. A streaming upstream
/// sends them at once; a non-streaming one only when the whole answer is written, so this also
/// bounds a non-streaming answer's generation.
pub const DEFAULT_HEADERS_MS_MAX: u64 = 60_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Largest request body accepted (default 4 MiB).
    pub body_limit_bytes: Option<usize>,
    /// Longest `Retry-After` / `retryDelay` we wait before retrying the last model (default 2000).
    pub retry_after_ms_max: Option<u64>,
    /// Consecutive failures that open a provider's breaker (default 3).
    pub breaker_failures: Option<u32>,
    /// How long an open breaker skips its provider before a probe (default 30000).
    pub breaker_cooldown_ms: Option<u64>,
}

/// Providers, models and routes: the built-in catalog, and the same sections of the user's file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub routes: BTreeMap<String, RawRoute>,
    /// Speech vendors' list prices (validated by `metering::speech::PriceList`).
    #[serde(default)]
    pub speech: Vec<RawSpeechPrice>,
}

/// `[[speech]]`: the list price of a speech engine, per audio minute (speech-to-text) or per
/// thousand characters (text-to-speech); exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpeechPrice {
    /// In the built-in catalog a vendor kind (`deepgram`, ...); in voxgate.toml a `[providers.NAME]`
    /// speech vendor or a built-in engine (`embedded`, `espeak`, `fake`).
    pub engine: String,
    /// The vendor's model; left out, the entry prices every model of the engine not priced one by one.
    pub model: Option<String>,
    pub usd_per_audio_minute: Option<f64>,
    pub usd_per_kchar: Option<f64>,
}

/// What a `[providers.NAME]` entry is. LLM kinds serve the gateway; speech kinds serve `[stt]` and
/// `[tts]` (`openai` serves all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    Embedded,
    Fake,
    Assemblyai,
    Deepgram,
    Elevenlabs,
    Cartesia,
}

impl ProviderKind {
    /// The vendor SDK's base URL for a provider reached over the network; `None` for one in process.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::Assemblyai => Some("wss://streaming.assemblyai.com"),
            ProviderKind::Deepgram => Some("https://api.deepgram.com"),
            ProviderKind::Elevenlabs => Some("https://api.elevenlabs.io"),
            ProviderKind::Cartesia => Some("https://api.cartesia.ai"),
            ProviderKind::Embedded | ProviderKind::Fake => None,
        }
    }

    /// Whether the gateway can send chat completions to it.
    pub fn serves_llm(self) -> bool {
        matches!(self, ProviderKind::Openai | ProviderKind::Anthropic | ProviderKind::Gemini | ProviderKind::Embedded | ProviderKind::Fake)
    }

    /// Whether `[stt] engines` can name it.
    pub fn serves_stt(self) -> bool {
        matches!(self, ProviderKind::Assemblyai | ProviderKind::Deepgram | ProviderKind::Openai)
    }

    /// Whether `[tts] engines` can name it.
    pub fn serves_tts(self) -> bool {
        matches!(self, ProviderKind::Openai | ProviderKind::Elevenlabs | ProviderKind::Cartesia | ProviderKind::Deepgram)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// `env:NAME` (read from the environment) or the key itself.
    pub api_key: Option<String>,
    /// Embedded provider only: the GGUF file (default: the fetched SmolLM2 under `models_dir`).
    pub model_path: Option<PathBuf>,
    /// Per-attempt connect timeout (default 5000).
    pub connect_timeout_ms: Option<u64>,
    /// Speech-to-text: ask the vendor to tell speakers apart (default true where it can).
    pub diarize: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub id: String,
    pub provider: String,
    pub upstream: Option<String>,
    pub input_usd_per_mtok: Option<f64>,
    pub output_usd_per_mtok: Option<f64>,
    pub cached_input_usd_per_mtok: Option<f64>,
    pub cache_write_usd_per_mtok: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub models: Vec<String>,
    /// Fall back when the first content token has not arrived this long after the attempt began.
    pub ttft_ms_max: Option<u64>,
    /// Fall back when the stream goes quiet this long before its first content token; after it,
    /// end the stream with an in-band error.
    pub idle_ms_max: Option<u64>,
    /// Whole-answer limit for non-streaming requests (default 300000).
    pub timeout_ms: Option<u64>,
    /// Fall back when the upstream has not sent its status and headers this long after the
    /// attempt began (default 60000; streaming or not).
    pub headers_ms_max: Option<u64>,
}

/// The gateway's validated config: what `Gateway::new` builds the gateway from.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub settings: GatewaySettings,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub body_limit_bytes: usize,
    pub retry_after_ms_max: u64,
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// Always set for an embedded provider (validation fills in the fetched SmolLM2).
    pub model_path: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// Speech-to-text vendors: diarization on (the default) or off.
    pub diarize: bool,
}

/// A price in micro-dollars per million tokens: exact for any price with up to six decimals.
pub type MicroUsdPerMtok = u64;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub id: String,
    pub provider: String,
    pub upstream: String,
    pub input: MicroUsdPerMtok,
    pub output: MicroUsdPerMtok,
    pub cached_input: MicroUsdPerMtok,
    pub cache_write: MicroUsdPerMtok,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub models: Vec<String>,
    pub ttft_ms_max: u64,
    pub idle_ms_max: u64,
    pub timeout_ms: u64,
    pub headers_ms_max: u64,
}

impl GatewayConfig {
    /// Lays `user`'s providers, models and routes over the built-in catalog and validates them
    /// with the `[gateway]` settings. `env` reads key variables; `models_dir` holds the embedded
    /// model. An error is a message for the config's `Invalid` error.
    pub fn from_raw(
        settings: &RawGateway,
        user: &RawCatalog,
        env: &dyn Fn(&str) -> Option<String>,
        models_dir: &Path,
    ) -> Result<GatewayConfig, String> {
        let catalog: RawCatalog = toml::from_str(CATALOG_TOML).map_err(|e| format!("built-in catalog: {e}"))?;

        // Providers: built-in hosted ones only when their key variable is set; the user's always.
        let mut providers = BTreeMap::new();
        for (id, p) in &catalog.providers {
            if user.providers.contains_key(id) {
                continue;
            }
            let key_var_set = match p.api_key.as_deref().and_then(|k| k.strip_prefix("env:")) {
                Some(var) => env(var).is_some_and(|v| !v.is_empty()),
                None => true,
            };
            if key_var_set {
                providers.insert(id.clone(), provider_config(id, p, env, models_dir)?);
            }
        }
        for (id, p) in &user.providers {
            providers.insert(id.clone(), provider_config(id, p, env, models_dir)?);
        }

        // Models: catalog first, the user's entries replace or add; prices come from the
        // catalog entry of the same id when the user leaves them out.
        let mut models: BTreeMap<String, ModelConfig> = BTreeMap::new();
        for m in &catalog.models {
            if providers.contains_key(&m.provider) {
                models.insert(m.id.clone(), model_config(m, None)?);
            }
        }
        for m in &user.models {
            if providers.get(&m.provider).is_some_and(|p: &ProviderConfig| !p.kind.serves_llm()) {
                return Err(format!("model {:?} names provider {:?}, which is a speech provider, not an LLM one", m.id, m.provider));
            }
            if !providers.contains_key(&m.provider) {
                return Err(format!(
                    "model {:?} names provider {:?}, which is not configured (add [providers.{}] or set its key variable)",
                    m.id, m.provider, m.provider
                ));
            }
            let base = catalog.models.iter().find(|c| c.id == m.id);
            models.insert(m.id.clone(), model_config(m, base)?);
        }

        let mut routes = BTreeMap::new();
        for (name, r) in catalog.routes.iter().chain(user.routes.iter()) {
            if models.contains_key(name) {
                return Err(format!("route {name:?} has the same name as a model; rename one"));
            }
            if r.models.is_empty() {
                return Err(format!("route {name:?} lists no models"));
            }
            for m in &r.models {
                if !models.contains_key(m) {
                    return Err(format!(
                        "route {name:?} names model {m:?}, which is not in the catalog or [[models]] (or its provider has no key)"
                    ));
                }
            }
            for (field, v) in [
                ("ttft_ms_max", r.ttft_ms_max),
                ("idle_ms_max", r.idle_ms_max),
                ("timeout_ms", r.timeout_ms),
                ("headers_ms_max", r.headers_ms_max),
            ] {
                if v == Some(0) {
                    return Err(format!("routes.{name}.{field} = 0 would time out every attempt; leave it out for the default"));
                }
            }
            routes.insert(
                name.clone(),
                RouteConfig {
                    name: name.clone(),
                    models: r.models.clone(),
                    ttft_ms_max: r.ttft_ms_max.unwrap_or(DEFAULT_TTFT_MS_MAX),
                    idle_ms_max: r.idle_ms_max.unwrap_or(DEFAULT_IDLE_MS_MAX),
                    timeout_ms: r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
                    headers_ms_max: r.headers_ms_max.unwrap_or(DEFAULT_HEADERS_MS_MAX),
                },
            );
        }

        let g = settings;
        if g.body_limit_bytes == Some(0) {
            return Err("gateway.body_limit_bytes = 0 would refuse every request".into());
        }
        let settings = GatewaySettings {
            body_limit_bytes: g.body_limit_bytes.unwrap_or(4 * 1024 * 1024),
            retry_after_ms_max: g.retry_after_ms_max.unwrap_or(2_000),
            breaker_failures: g.breaker_failures.unwrap_or(3).max(1),
            breaker_cooldown_ms: g.breaker_cooldown_ms.unwrap_or(30_000),
        };
        Ok(GatewayConfig { settings, providers, models, routes })
    }
}

fn provider_config(id: &str, p: &RawProvider, env: &dyn Fn(&str) -> Option<String>, models_dir: &Path) -> Result<ProviderConfig, String> {
    let api_key = match &p.api_key {
        Some(k) => Some(Secret::from_config(k, env, &format!("providers.{id}.api_key"))?),
        None => None,
    };
    let default_base = p.kind.default_base_url();
    let base_url = p.base_url.clone().unwrap_or_else(|| default_base.unwrap_or("").to_string());
    // Speech vendors reach WebSockets too: the adapter derives the scheme each endpoint needs.
    let schemes: &[&str] = if p.kind.serves_llm() { &["http://", "https://"] } else { &["http://", "https://", "ws://", "wss://"] };
    if default_base.is_some() && !schemes.iter().any(|s| base_url.starts_with(s)) {
        return Err(format!("providers.{id}.base_url = {base_url:?} must start with {}", schemes.join(" or ")));
    }
    let model_path = p.model_path.clone().or_else(|| (p.kind == ProviderKind::Embedded).then(|| crate::models::llm_model_path(models_dir)));
    if p.connect_timeout_ms == Some(0) {
        return Err(format!("providers.{id}.connect_timeout_ms = 0 would fail every connection"));
    }
    Ok(ProviderConfig {
        id: id.to_string(),
        kind: p.kind,
        base_url: base_url.trim_end_matches('/').to_string(),
        api_key,
        model_path,
        connect_timeout_ms: p.connect_timeout_ms.unwrap_or(5_000),
        diarize: p.diarize.unwrap_or(true),
    })
}

fn price(value: Option<f64>, fallback: Option<f64>, field: &str, id: &str) -> Result<MicroUsdPerMtok, String> {
    let v = value.or(fallback).ok_or_else(|| format!("model {id:?} needs {field} (USD per million tokens)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("model {id:?}: {field} = {v} must be a price of 0 or more"));
    }
    Ok((v * 1_000_000.0).round() as u64)
}

fn model_config(m: &RawModel, base: Option<&RawModel>) -> Result<ModelConfig, String> {
    let input = price(m.input_usd_per_mtok, base.and_then(|b| b.input_usd_per_mtok), "input_usd_per_mtok", &m.id)?;
    let output = price(m.output_usd_per_mtok, base.and_then(|b| b.output_usd_per_mtok), "output_usd_per_mtok", &m.id)?;
    let cached_input = match m.cached_input_usd_per_mtok.or(base.and_then(|b| b.cached_input_usd_per_mtok)) {
        Some(v) => price(Some(v), None, "cached_input_usd_per_mtok", &m.id)?,
        None => input,
    };
    let cache_write = match m.cache_write_usd_per_mtok.or(base.and_then(|b| b.cache_write_usd_per_mtok)) {
        Some(v) => price(Some(v), None, "cache_write_usd_per_mtok", &m.id)?,
        None => input,
    };
    Ok(ModelConfig {
        id: m.id.clone(),
        provider: m.provider.clone(),
        upstream: m.upstream.clone().or_else(|| base.and_then(|b| b.upstream.clone())).unwrap_or_else(|| m.id.clone()),
        input,
        output,
        cached_input,
        cache_write,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_twenty_models_from_four_families() {
        let cat: RawCatalog = toml::from_str(CATALOG_TOML).unwrap();
        assert!(cat.models.len() >= 20, "{}", cat.models.len());
        for family in ["gpt", "claude", "gemini", "llama"] {
            assert!(cat.models.iter().any(|m| m.id.starts_with(family)), "no {family} model");
        }
        for m in &cat.models {
            assert!(m.input_usd_per_mtok.is_some() && m.output_usd_per_mtok.is_some(), "{} lacks prices", m.id);
        }
    }
}
