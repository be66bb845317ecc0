//! Configuration in two steps: [`RawConfig`] is the TOML file as written (unknown fields are
//! errors), [`Config`] is the validated form the program uses. The built-in catalog
//! (`src/llm/catalog.toml`) is parsed with the same [`RawConfig`] and the user's file is laid
//! over it: a provider, model or route with the same id replaces the built-in one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;

/// The catalog shipped in the binary.
pub const CATALOG_TOML: &str = include_str!("llm/catalog.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config is not valid: {0}")]
    Invalid(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    /// Where `voxgate models fetch` puts model files (default `./models`, or `VOXGATE_MODELS_DIR`).
    pub models_dir: Option<PathBuf>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub routes: BTreeMap<String, RawRoute>,
    #[serde(default)]
    pub stt: RawStt,
    #[serde(default)]
    pub tts: RawTts,
    #[serde(default)]
    pub realtime: RawRealtime,
    #[serde(default)]
    pub metering: RawMetering,
}

/// `[metering]`: the durable ledger and the flat session rate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetering {
    /// The SQLite ledger file (default `voxgate-data/ledger.sqlite`, or `$VOXGATE_LEDGER`); created if missing.
    pub ledger: Option<PathBuf>,
    /// How often open sessions are written down (default 5000): a crash bills at most this much short.
    pub checkpoint_ms: Option<u64>,
    /// The flat rate of a voice session, in USD per hour (default 4.50); a key may have its own.
    pub rate_usd_per_hour: Option<f64>,
}

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

/// `[realtime]`: limits of `/v1/realtime` sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRealtime {
    /// Largest client event accepted (default 1 MiB); a larger one gets an `error` event.
    pub max_event_bytes: Option<usize>,
    /// Concurrent sessions (default 1000).
    pub max_sessions: Option<usize>,
    /// How far ahead of real time an outbound delta may start (default 100 ms); a delta carries at
    /// most 60 ms, so a flush silences the caller within this long plus 60 ms.
    pub output_lead_ms: Option<u64>,
    /// Conversation items kept per session; the oldest are dropped beyond it (default 200).
    pub max_history_items: Option<usize>,
    /// Longest wait for an utterance's final transcript after it ends (default 10000): a stuck STT
    /// engine fails the transcription instead of stalling the call.
    pub stt_timeout_ms: Option<u64>,
    /// Longest a TTS engine may go without giving audio while it speaks a chunk (default 10000): a
    /// stuck engine fails the response instead of leaving the caller in silence. Time spent waiting
    /// for the caller to hear earlier audio does not count.
    pub tts_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Gateway API keys clients send as `Authorization: Bearer …`; `env:NAME` reads a variable.
    /// Named `key-1`, `key-2`, … in usage, with no limits.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// `[[auth.keys]]`: named keys with an hourly rate and limits.
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Unique; letters, digits, `_`, `.` and `-`. Usage and the ledger are kept under it.
    pub name: String,
    /// `env:NAME` (read from the environment) or the key itself; hashed at load, never kept.
    #[serde(default, deserialize_with = "optional_secret")]
    pub key: Option<Secret>,
    /// The key's SHA-256 as 64 hex digits, so the plain key need not sit in the file.
    pub key_sha256: Option<String>,
    /// Price of a voice session per hour, in USD (billed per started second).
    pub rate_usd_per_hour: Option<f64>,
    /// Concurrent voice sessions (absent: unlimited).
    pub max_sessions: Option<u64>,
    /// Gateway requests per minute (absent: unlimited).
    pub requests_per_minute: Option<u64>,
    /// Gateway tokens (input + output) per minute (absent: unlimited).
    pub tokens_per_minute: Option<u64>,
    /// A revoked key is refused with `api_key_revoked` instead of `invalid_api_key`.
    #[serde(default)]
    pub revoked: bool,
}

/// A string read straight into a [`Secret`], so a literal key in the file never prints.
fn optional_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Secret::new(String::deserialize(d)?)))
}

/// A validated API key: its name, the SHA-256 of the key (the key itself is not kept), its
/// hourly rate and its limits (`None`: unlimited).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
    pub rate_microusd_per_hour: Option<u64>,
    pub max_sessions: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub revoked: bool,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A short fingerprint is enough to tell keys apart in a log; the whole hash of a weak key
        // could be searched.
        let fingerprint: String = self.sha256[..4].iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("sha256", &format_args!("{fingerprint}…"))
            .field("rate_microusd_per_hour", &self.rate_microusd_per_hour)
            .field("max_sessions", &self.max_sessions)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("revoked", &self.revoked)
            .finish()
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    Embedded,
    Fake,
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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub models_dir: PathBuf,
    /// Gateway keys from `[auth] api_keys` and `[[auth.keys]]`; empty: no auth (loopback only).
    pub keys: Vec<KeyConfig>,
    pub gateway: GatewaySettings,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    pub stt: SttConfig,
    pub tts: TtsConfig,
    pub realtime: RealtimeSettings,
    pub metering: MeteringSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MeteringSettings {
    pub ledger: PathBuf,
    /// Records the ledger cannot write go here (JSON lines) until it can: `ledger` + `.fallback.jsonl`.
    pub fallback: PathBuf,
    pub checkpoint_ms: u64,
    pub rate_microusd_per_hour: u64,
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

#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeSettings {
    pub max_event_bytes: usize,
    pub max_sessions: usize,
    pub output_lead_ms: u64,
    pub max_history_items: usize,
    pub stt_timeout_ms: u64,
    pub tts_timeout_ms: u64,
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        RealtimeSettings {
            max_event_bytes: 1024 * 1024,
            max_sessions: 1000,
            output_lead_ms: 100,
            max_history_items: 200,
            stt_timeout_ms: 10_000,
            tts_timeout_ms: 10_000,
        }
    }
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
    pub model_path: Option<PathBuf>,
    pub connect_timeout_ms: u64,
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
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_TTFT_MS_MAX: u64 = 30_000;
pub const DEFAULT_IDLE_MS_MAX: u64 = 30_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;

impl Config {
    /// Load: `--config FILE` if given, else `./voxgate.toml` if present, else built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (raw, origin) = match path {
            Some(p) => (read_file(p)?, Some(p.to_path_buf())),
            None if Path::new("voxgate.toml").exists() => (read_file(Path::new("voxgate.toml"))?, Some(PathBuf::from("voxgate.toml"))),
            None => (RawConfig::default(), None),
        };
        tracing::debug!(config = ?origin, "config loaded");
        Config::from_raw(raw, &|name| std::env::var(name).ok())
    }

    /// Parse a config text (for tests and embedding).
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::from("<text>"), message: toml_message(text, &e) })?;
        Config::from_raw(raw, env)
    }

    /// Lay `user` over the built-in catalog and validate.
    pub fn from_raw(user: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let catalog: RawConfig = toml::from_str(CATALOG_TOML).map_err(|e| ConfigError::Invalid(format!("built-in catalog: {e}")))?;

        let listen_text = user.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("listen = {listen_text:?} is not an address like \"127.0.0.1:8080\"")))?;
        let models_dir =
            user.models_dir.clone().or_else(|| env("VOXGATE_MODELS_DIR").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("models"));

        let keys = key_configs(&user.auth, env)?;

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
                providers.insert(id.clone(), provider_config(id, p, env, &models_dir)?);
            }
        }
        for (id, p) in &user.providers {
            providers.insert(id.clone(), provider_config(id, p, env, &models_dir)?);
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
            if !providers.contains_key(&m.provider) {
                return Err(ConfigError::Invalid(format!(
                    "model {:?} names provider {:?}, which is not configured (add [providers.{}] or set its key variable)",
                    m.id, m.provider, m.provider
                )));
            }
            let base = catalog.models.iter().find(|c| c.id == m.id);
            models.insert(m.id.clone(), model_config(m, base)?);
        }

        let mut routes = BTreeMap::new();
        for (name, r) in catalog.routes.iter().chain(user.routes.iter()) {
            if models.contains_key(name) {
                return Err(ConfigError::Invalid(format!("route {name:?} has the same name as a model; rename one")));
            }
            if r.models.is_empty() {
                return Err(ConfigError::Invalid(format!("route {name:?} lists no models")));
            }
            for m in &r.models {
                if !models.contains_key(m) {
                    return Err(ConfigError::Invalid(format!(
                        "route {name:?} names model {m:?}, which is not in the catalog or [[models]] (or its provider has no key)"
                    )));
                }
            }
            for (field, v) in [("ttft_ms_max", r.ttft_ms_max), ("idle_ms_max", r.idle_ms_max), ("timeout_ms", r.timeout_ms)] {
                if v == Some(0) {
                    return Err(ConfigError::Invalid(format!(
                        "routes.{name}.{field} = 0 would time out every attempt; leave it out for the default"
                    )));
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
                },
            );
        }

        let g = &user.gateway;
        if g.body_limit_bytes == Some(0) {
            return Err(ConfigError::Invalid("gateway.body_limit_bytes = 0 would refuse every request".into()));
        }
        let gateway = GatewaySettings {
            body_limit_bytes: g.body_limit_bytes.unwrap_or(4 * 1024 * 1024),
            retry_after_ms_max: g.retry_after_ms_max.unwrap_or(2_000),
            breaker_failures: g.breaker_failures.unwrap_or(3).max(1),
            breaker_cooldown_ms: g.breaker_cooldown_ms.unwrap_or(30_000),
        };

        let stt = match user.stt.engine.as_deref().unwrap_or("default") {
            "none" => SttConfig::None,
            e @ ("embedded" | "default") => SttConfig::Embedded {
                explicit: e == "embedded",
                workers: user.stt.workers.unwrap_or(1).max(1),
                partial_interval_ms: user.stt.partial_interval_ms.unwrap_or(0),
            },
            "fake" => SttConfig::Fake {
                script: user.stt.script.clone(),
                transcripts: user.stt.transcripts.clone(),
                latency_ms: user.stt.latency_ms.unwrap_or(0),
                precise_timing: user.stt.precise_timing.unwrap_or(false),
            },
            other => {
                return Err(ConfigError::Invalid(format!(
                    "stt.engine = {other:?} is not an engine; use \"embedded\", \"fake\" or \"none\""
                )))
            }
        };
        let tts = match user.tts.engine.as_deref().unwrap_or("default") {
            "none" => TtsConfig::None,
            e @ ("embedded" | "default") => {
                TtsConfig::Embedded { explicit: e == "embedded", workers: user.tts.workers.unwrap_or(1).max(1) }
            }
            "espeak" => TtsConfig::Espeak { voice: user.tts.voice.clone().unwrap_or_else(|| "en-us".to_string()) },
            "fake" => TtsConfig::Fake {
                ttfb_ms: user.tts.ttfb_ms.unwrap_or(0),
                ms_per_char: user.tts.ms_per_char.unwrap_or(60).max(1),
                precise_timing: user.tts.precise_timing.unwrap_or(false),
            },
            other => {
                return Err(ConfigError::Invalid(format!(
                    "tts.engine = {other:?} is not an engine; use \"embedded\", \"espeak\", \"fake\" or \"none\""
                )))
            }
        };
        let r = &user.realtime;
        let d = RealtimeSettings::default();
        for (field, v) in
            [("max_event_bytes", r.max_event_bytes), ("max_sessions", r.max_sessions), ("max_history_items", r.max_history_items)]
        {
            if v == Some(0) {
                return Err(ConfigError::Invalid(format!("realtime.{field} = 0 is not allowed; leave it out for the default")));
            }
        }
        let realtime = RealtimeSettings {
            max_event_bytes: r.max_event_bytes.unwrap_or(d.max_event_bytes),
            max_sessions: r.max_sessions.unwrap_or(d.max_sessions),
            output_lead_ms: r.output_lead_ms.unwrap_or(d.output_lead_ms),
            max_history_items: r.max_history_items.unwrap_or(d.max_history_items),
            stt_timeout_ms: r.stt_timeout_ms.unwrap_or(d.stt_timeout_ms),
            tts_timeout_ms: r.tts_timeout_ms.unwrap_or(d.tts_timeout_ms),
        };

        let m = &user.metering;
        let ledger = m
            .ledger
            .clone()
            .or_else(|| env("VOXGATE_LEDGER").filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("voxgate-data/ledger.sqlite"));
        let mut fallback = ledger.clone().into_os_string();
        fallback.push(".fallback.jsonl");
        if m.checkpoint_ms == Some(0) {
            return Err(ConfigError::Invalid("metering.checkpoint_ms = 0 is not allowed; leave it out for the default (5000)".into()));
        }
        let usd = m.rate_usd_per_hour.unwrap_or(4.5);
        let rate_microusd_per_hour = crate::metering::billing::rate_microusd_per_hour(usd)
            .ok_or_else(|| ConfigError::Invalid(format!("metering.rate_usd_per_hour = {usd} is not a price in USD per hour")))?;
        let metering = MeteringSettings {
            ledger,
            fallback: PathBuf::from(fallback),
            checkpoint_ms: m.checkpoint_ms.unwrap_or(5_000),
            rate_microusd_per_hour,
        };

        Ok(Config { listen, models_dir, keys, gateway, providers, models, routes, stt, tts, realtime, metering })
    }
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: toml_message(&text, &e) })
}

/// A TOML error as "line N: message", without the quoted source line (it may hold a key).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("line {}: {}", text[..span.start.min(text.len())].matches('\n').count() + 1, e.message()),
        None => e.message().to_string(),
    }
}

/// `env:NAME` reads the variable (an error names the variable, never a value); anything else is
/// the secret itself.
fn resolve_secret(value: &str, env: &dyn Fn(&str) -> Option<String>, field: &str) -> Result<Secret, ConfigError> {
    match value.strip_prefix("env:") {
        Some(var) => env(var)
            .map(Secret::new)
            .ok_or_else(|| ConfigError::Invalid(format!("{field} reads environment variable {var}, which is not set"))),
        None => Ok(Secret::new(value)),
    }
}

/// The keys of both forms, hashed, with names and limits checked.
fn key_configs(auth: &RawAuth, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<KeyConfig>, ConfigError> {
    let mut keys: Vec<KeyConfig> = Vec::new();
    for (i, k) in auth.api_keys.iter().enumerate() {
        let field = format!("auth.api_keys[{i}]");
        let sha256 = hash_key(&resolve_secret(k, env, &field)?, &field)?;
        keys.push(KeyConfig {
            name: format!("key-{}", i + 1),
            sha256,
            rate_microusd_per_hour: None,
            max_sessions: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            revoked: false,
        });
    }
    for (i, k) in auth.keys.iter().enumerate() {
        let name = &k.name;
        let valid_name =
            !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_name {
            return Err(ConfigError::Invalid(format!("auth.keys[{i}].name = {name:?} must be 1 to 64 letters, digits, `_`, `.` or `-`")));
        }
        let field = format!("auth.keys[{i}] ({name})");
        let sha256 = match (&k.key, &k.key_sha256) {
            (Some(key), None) => hash_key(&resolve_secret(key.expose(), env, &format!("{field}.key"))?, &format!("{field}.key"))?,
            (None, Some(hex)) => parse_sha256(hex)
                .ok_or_else(|| ConfigError::Invalid(format!("{field}.key_sha256 must be 64 hex digits (the SHA-256 of the key)")))?,
            _ => return Err(ConfigError::Invalid(format!("{field} needs exactly one of `key` and `key_sha256`"))),
        };
        let rate_microusd_per_hour = match k.rate_usd_per_hour {
            None => None,
            Some(usd) => Some(crate::metering::billing::rate_microusd_per_hour(usd).ok_or_else(|| {
                ConfigError::Invalid(format!("{field}.rate_usd_per_hour = {usd} must be a price of 0 or more (USD per hour)"))
            })?),
        };
        let limit = |value: Option<u64>, what: &str| -> Result<Option<u64>, ConfigError> {
            match value {
                Some(0) => Err(ConfigError::Invalid(format!(
                    "{field}.{what} = 0 would refuse everything; leave it out for no limit, or set revoked = true"
                ))),
                v => Ok(v),
            }
        };
        let small = |value: Option<u64>, what: &str| -> Result<Option<u32>, ConfigError> {
            limit(value, what)?
                .map(|v| {
                    u32::try_from(v).map_err(|_| ConfigError::Invalid(format!("{field}.{what} = {v} is too large (at most {})", u32::MAX)))
                })
                .transpose()
        };
        keys.push(KeyConfig {
            name: name.clone(),
            sha256,
            rate_microusd_per_hour,
            max_sessions: small(k.max_sessions, "max_sessions")?,
            requests_per_minute: small(k.requests_per_minute, "requests_per_minute")?,
            tokens_per_minute: limit(k.tokens_per_minute, "tokens_per_minute")?,
            revoked: k.revoked,
        });
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some(other) = keys[..i].iter().find(|o| o.name == k.name) {
            return Err(ConfigError::Invalid(format!("two API keys are named {:?}; names must be unique", other.name)));
        }
        if let Some(other) = keys[..i].iter().find(|o| o.sha256 == k.sha256) {
            return Err(ConfigError::Invalid(format!(
                "API keys {:?} and {:?} are the same key; each key must be different",
                other.name, k.name
            )));
        }
    }
    Ok(keys)
}

/// The SHA-256 of a key as clients send it (trimmed, as bearer tokens are).
fn hash_key(key: &Secret, field: &str) -> Result<[u8; 32], ConfigError> {
    let key = key.expose().trim();
    if key.is_empty() {
        return Err(ConfigError::Invalid(format!("{field} is empty")));
    }
    Ok(sha256(key.as_bytes()))
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

fn provider_config(
    id: &str,
    p: &RawProvider,
    env: &dyn Fn(&str) -> Option<String>,
    models_dir: &Path,
) -> Result<ProviderConfig, ConfigError> {
    let api_key = match &p.api_key {
        Some(k) => Some(resolve_secret(k, env, &format!("providers.{id}.api_key"))?),
        None => None,
    };
    let default_base = match p.kind {
        ProviderKind::Openai => "https://api.openai.com/v1",
        ProviderKind::Anthropic => "https://api.anthropic.com",
        ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
        ProviderKind::Embedded | ProviderKind::Fake => "",
    };
    let base_url = p.base_url.clone().unwrap_or_else(|| default_base.to_string());
    if matches!(p.kind, ProviderKind::Openai | ProviderKind::Anthropic | ProviderKind::Gemini)
        && !(base_url.starts_with("http://") || base_url.starts_with("https://"))
    {
        return Err(ConfigError::Invalid(format!("providers.{id}.base_url = {base_url:?} must start with http:// or https://")));
    }
    let model_path = p.model_path.clone().or_else(|| (p.kind == ProviderKind::Embedded).then(|| crate::models::llm_model_path(models_dir)));
    if p.connect_timeout_ms == Some(0) {
        return Err(ConfigError::Invalid(format!("providers.{id}.connect_timeout_ms = 0 would fail every connection")));
    }
    Ok(ProviderConfig {
        id: id.to_string(),
        kind: p.kind,
        base_url: base_url.trim_end_matches('/').to_string(),
        api_key,
        model_path,
        connect_timeout_ms: p.connect_timeout_ms.unwrap_or(5_000),
    })
}

fn price(value: Option<f64>, fallback: Option<f64>, field: &str, id: &str) -> Result<MicroUsdPerMtok, ConfigError> {
    let v = value.or(fallback).ok_or_else(|| ConfigError::Invalid(format!("model {id:?} needs {field} (USD per million tokens)")))?;
    if !v.is_finite() || v < 0.0 {
        return Err(ConfigError::Invalid(format!("model {id:?}: {field} = {v} must be a price of 0 or more")));
    }
    Ok((v * 1_000_000.0).round() as u64)
}

fn model_config(m: &RawModel, base: Option<&RawModel>) -> Result<ModelConfig, ConfigError> {
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

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_offline_and_loopback() {
        let c = Config::from_raw(RawConfig::default(), &no_env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.providers.contains_key("embedded"));
        assert!(!c.providers.contains_key("openai"), "no key, no hosted provider");
        assert_eq!(c.routes["default"].models, vec!["smollm2-135m-instruct"]);
    }

    #[test]
    fn catalog_has_twenty_models_from_four_families() {
        let cat: RawConfig = toml::from_str(CATALOG_TOML).unwrap();
        assert!(cat.models.len() >= 20, "{}", cat.models.len());
        for family in ["gpt", "claude", "gemini", "llama"] {
            assert!(cat.models.iter().any(|m| m.id.starts_with(family)), "no {family} model");
        }
        for m in &cat.models {
            assert!(m.input_usd_per_mtok.is_some() && m.output_usd_per_mtok.is_some(), "{} lacks prices", m.id);
        }
    }

    #[test]
    fn the_contract_example_parses() {
        let text = r#"
listen = "127.0.0.1:8080"
[auth]
api_keys = ["env:VOXGATE_API_KEY"]
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key = "env:OPENAI_API_KEY"
[[models]]
id = "gpt-4.1-mini"
provider = "openai"
upstream = "gpt-4.1-mini"
input_usd_per_mtok = 0.40
output_usd_per_mtok = 1.60
[routes.voice]
models = ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"]
ttft_ms_max = 1200
"#;
        let env = |k: &str| match k {
            "VOXGATE_API_KEY" => Some("vk".to_string()),
            "OPENAI_API_KEY" | "ANTHROPIC_API_KEY" | "GEMINI_API_KEY" => Some("sk-test".to_string()),
            _ => None,
        };
        let c = Config::from_toml(text, &env).unwrap();
        assert_eq!(c.routes["voice"].ttft_ms_max, 1200);
        assert_eq!(c.models["gpt-4.1-mini"].input, 400_000);
        assert_eq!(c.models["claude-haiku-4-5"].cache_write, 1_250_000);
        assert_eq!(c.keys.len(), 1);
        assert_eq!(c.keys[0].name, "key-1");
        // Without the Anthropic key the route names a model nobody can serve: a clear error.
        let env2 = |k: &str| match k {
            "VOXGATE_API_KEY" | "OPENAI_API_KEY" => Some("x".to_string()),
            _ => None,
        };
        let err = Config::from_toml(text, &env2).unwrap_err().to_string();
        assert!(err.contains("claude-haiku-4-5"), "{err}");
    }

    #[test]
    fn missing_env_and_unknown_fields_are_clear_errors() {
        let err = Config::from_toml("[auth]\napi_keys = [\"env:NOPE\"]\n", &no_env).unwrap_err().to_string();
        assert!(err.contains("NOPE") && err.contains("not set"), "{err}");
        let err = Config::from_toml("lisen = \"x\"\n", &no_env).unwrap_err().to_string();
        assert!(err.contains("lisen") && err.contains("line 1"), "{err}");
        let err =
            Config::from_toml("[routes.r]\nmodels = [\"smollm2-135m-instruct\"]\nttft_ms_max = 0\n", &no_env).unwrap_err().to_string();
        assert!(err.contains("ttft_ms_max"), "{err}");
        // A syntax error on a line holding a literal key does not echo the key.
        let err =
            Config::from_toml("[providers.x]\nkind = \"openai\"\napi_key = \"sk-literal-123\" oops\n", &no_env).unwrap_err().to_string();
        assert!(!err.contains("sk-literal-123") && err.contains("line 3"), "{err}");
        let err = Config::from_toml("[routes.r]\nmodels = [\"ghost\"]\n", &no_env).unwrap_err().to_string();
        assert!(err.contains("ghost"), "{err}");
    }

    #[test]
    fn keys_of_both_forms_are_hashed_named_and_limited() {
        let hash_of_b: String = sha256(b"vk-b").iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            r#"
[auth]
api_keys = ["env:LEGACY"]
[[auth.keys]]
name = "team-a"
key = "env:TEAM_A"
rate_usd_per_hour = 0.12
max_sessions = 2
requests_per_minute = 60
tokens_per_minute = 100000
[[auth.keys]]
name = "team.b_2"
key_sha256 = "{}"
revoked = true
"#,
            hash_of_b.to_uppercase()
        );
        let env = |k: &str| match k {
            "LEGACY" => Some(" vk-legacy ".to_string()),
            "TEAM_A" => Some("vk-team-a-secret".to_string()),
            _ => None,
        };
        let c = Config::from_toml(&text, &env).unwrap();
        let names: Vec<&str> = c.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["key-1", "team-a", "team.b_2"]);
        assert_eq!(c.keys[0].sha256, sha256(b"vk-legacy"), "trimmed, as bearer tokens are");
        assert_eq!((c.keys[0].max_sessions, c.keys[0].requests_per_minute, c.keys[0].revoked), (None, None, false));
        let a = &c.keys[1];
        assert_eq!(a.sha256, sha256(b"vk-team-a-secret"));
        assert_eq!(a.rate_microusd_per_hour, Some(120_000));
        assert_eq!((a.max_sessions, a.requests_per_minute, a.tokens_per_minute), (Some(2), Some(60), Some(100_000)));
        assert_eq!((c.keys[2].sha256, c.keys[2].revoked), (sha256(b"vk-b"), true));
        let debug = format!("{c:?}");
        assert!(!debug.contains("vk-team-a-secret") && !debug.contains(&hash_of_b), "{debug}");

        // A literal key in the file works too and does not print in the raw config either.
        let raw: RawConfig = toml::from_str("[[auth.keys]]\nname = \"x\"\nkey = \"vk-literal-1\"\n").unwrap();
        assert!(!format!("{raw:?}").contains("vk-literal-1"));
        assert_eq!(Config::from_raw(raw, &no_env).unwrap().keys[0].sha256, sha256(b"vk-literal-1"));
    }

    #[test]
    fn bad_keys_are_clear_errors() {
        let err = |text: &str| Config::from_toml(text, &no_env).unwrap_err().to_string();
        let one = |body: &str| format!("[[auth.keys]]\nname = \"a\"\n{body}\n");
        assert!(err(&one("key = \"k\"\nrequests_per_minute = 0")).contains("requests_per_minute = 0"));
        assert!(err(&one("key = \"k\"\ntokens_per_minute = 0")).contains("tokens_per_minute = 0"));
        assert!(err(&one("key = \"k\"\nmax_sessions = 0")).contains("max_sessions = 0"));
        assert!(err(&one("key = \"k\"\nmax_sessions = 5000000000")).contains("too large"));
        assert!(err(&one("key = \"k\"\nrate_usd_per_hour = -1.0")).contains("rate_usd_per_hour"));
        assert!(err(&one("")).contains("exactly one of `key` and `key_sha256`"));
        let both = format!("key = \"k\"\nkey_sha256 = \"{}\"", "0".repeat(64));
        assert!(err(&one(&both)).contains("exactly one"));
        assert!(err(&one("key_sha256 = \"abc\"")).contains("64 hex digits"));
        assert!(err(&one(&format!("key_sha256 = \"{}\"", "g".repeat(64)))).contains("64 hex digits"));
        assert!(err(&one("key = \"   \"")).contains("is empty"));
        assert!(err(&one("key = \"env:NOPE\"")).contains("NOPE"));
        assert!(err(&one("key = \"k\"\nlimit = 3")).contains("limit"));
        assert!(err("[[auth.keys]]\nname = \"a b\"\nkey = \"k\"\n").contains("letters, digits"));
        assert!(err("[[auth.keys]]\nname = \"\"\nkey = \"k\"\n").contains("letters, digits"));
        let dup_name = "[[auth.keys]]\nname = \"a\"\nkey = \"k1\"\n[[auth.keys]]\nname = \"a\"\nkey = \"k2\"\n";
        assert!(err(dup_name).contains("named \"a\""));
        let dup_key = "[auth]\napi_keys = [\"k1\"]\n[[auth.keys]]\nname = \"a\"\nkey = \"k1\"\n";
        let e = err(dup_key);
        assert!(e.contains("same key") && e.contains("key-1") && !e.contains("\"k1\""), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let env = |k: &str| (k == "K").then(|| "sk-very-secret".to_string());
        let c = Config::from_toml("[providers.x]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key = \"env:K\"\n", &env)
            .unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }
}
