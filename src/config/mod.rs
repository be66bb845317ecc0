//! Configuration in two steps: [`RawConfig`] is the TOML file as written (unknown fields are
//! errors), [`Config`] is the validated form the program uses. This module reads the file and the
//! environment and hands each part its section; the part owns the section's types and checks:
//! the gateway (`[gateway]`, `[providers]`, `[[models]]`, `[routes]`, laid over the built-in
//! catalog) in [`crate::llm::config`], `[stt]` in [`crate::stt::config`], `[tts]` in
//! [`crate::tts::config`], `[metering]` in [`crate::metering::config`], `[auth]` in [`keys`];
//! `[server]`, `[phone]` and `[metrics]` (who may reach the server from a browser, Twilio's
//! signatures, who may read `/metrics`) here, as [`EdgeSettings`].

pub mod keys;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::llm::config::{
    GatewayConfig, GatewaySettings, ModelConfig, ProviderConfig, RawCatalog, RawGateway, RawModel, RawProvider, RawRoute, RouteConfig,
};
use crate::llm::config::{ProviderKind, RawSpeechPrice};
use crate::metering::config::{MeteringSettings, RawMetering};
use crate::metering::speech::{PriceList, SpeechPrices, Stage};
use crate::stt::config::{RawStt, SttConfig};
use crate::tts::config::{RawTts, TtsConfig};
use keys::{KeyConfig, RawAuth};

/// `tests/keys_limits.rs` names it here.
pub use keys::sha256;

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
    /// `[[speech]]`: list prices of speech engines, laid over the catalog's (`docs/metering.md`).
    #[serde(default)]
    pub speech: Vec<RawSpeechPrice>,
    #[serde(default)]
    pub stt: RawStt,
    #[serde(default)]
    pub tts: RawTts,
    #[serde(default)]
    pub realtime: RawRealtime,
    #[serde(default)]
    pub metering: RawMetering,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub phone: RawPhone,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub http: RawHttp,
}

/// `[http]`: how the HTTP server treats connections before a handler sees them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// A connection that has not sent a whole request head this long after it opened (or after its
    /// last response, on a kept-alive connection) is closed (default 10000).
    pub header_timeout_ms: Option<u64>,
    /// A request whose body has not all arrived this long after its head is answered 408 (default 30000).
    pub body_timeout_ms: Option<u64>,
    /// Open connections at most (default 8192); further connections wait in the listen queue, in
    /// order, until one closes. Upgraded WebSockets do not count: `[realtime] max_sessions` bounds them.
    pub max_connections: Option<usize>,
}

/// `[server]`: who may reach the server from a web page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Web origins (`https://app.example.com`, scheme, host and port only) whose pages may open
    /// voice sessions and call the API from a browser, besides the server's own pages (always
    /// allowed). `["*"]` allows every origin. Default: none but the server's own.
    pub allowed_origins: Option<Vec<String>>,
    /// Host names (`name` or `name:port`) a loopback listener answers to besides localhost,
    /// 127.0.0.1 and [::1] with its port: a TLS proxy on the same machine that passes its public
    /// `Host` through. Default: none.
    pub allowed_hosts: Option<Vec<String>>,
}

/// `[phone]`: Twilio.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPhone {
    /// The Twilio account's auth token (`env:TWILIO_AUTH_TOKEN`): when set, the TwiML webhook and
    /// the Media Streams upgrade must carry a valid `X-Twilio-Signature` (else 403).
    #[serde(default, deserialize_with = "keys::optional_secret")]
    pub twilio_auth_token: Option<crate::secret::Secret>,
}

/// `[metrics]`: `/metrics`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Serve `/metrics` without a key even when `[auth]` has keys (default false: a gateway key is
    /// needed, as `Authorization: Bearer`).
    pub public: Option<bool>,
}

/// The validated `[server]`, `[phone]` and `[metrics]`: what the HTTP edge checks before a request
/// reaches a handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeSettings {
    /// Origins allowed besides the server's own, lowercase `scheme://host[:port]`.
    pub allowed_origins: Vec<String>,
    /// `allowed_origins = ["*"]`: any origin.
    pub any_origin: bool,
    /// Host names a loopback listener answers to besides its loopback names, lowercase.
    pub allowed_hosts: Vec<String>,
    pub twilio_auth_token: Option<crate::secret::Secret>,
    pub metrics_public: bool,
}

impl EdgeSettings {
    fn from_raw(
        server: &RawServer,
        phone: &RawPhone,
        metrics: &RawMetrics,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut edge = EdgeSettings { metrics_public: metrics.public.unwrap_or(false), ..EdgeSettings::default() };
        for (i, origin) in server.allowed_origins.iter().flatten().enumerate() {
            if origin == "*" {
                edge.any_origin = true;
                continue;
            }
            let normal = crate::http::origin::normalize_origin(origin).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "server.allowed_origins[{i}] = {origin:?} is not an origin like \"https://app.example.com\" (scheme, host and optional port; no path), or \"*\""
                ))
            })?;
            edge.allowed_origins.push(normal);
        }
        for (i, host) in server.allowed_hosts.iter().flatten().enumerate() {
            let normal = crate::http::origin::normalize_host(host).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "server.allowed_hosts[{i}] = {host:?} is not a host name like \"voice.example.com\" or \"voice.example.com:8443\""
                ))
            })?;
            edge.allowed_hosts.push(normal);
        }
        if let Some(token) = &phone.twilio_auth_token {
            let token = crate::secret::Secret::from_config(token.expose(), env, "phone.twilio_auth_token").map_err(ConfigError::Invalid)?;
            if token.expose().trim().is_empty() {
                return Err(ConfigError::Invalid("phone.twilio_auth_token is empty".to_string()));
            }
            edge.twilio_auth_token = Some(token);
        }
        Ok(edge)
    }
}

/// `[realtime]`: limits of voice sessions (`/v1/realtime` and phone calls).
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
    /// Text kept in a session's conversation, in bytes (default 262144): beyond it the oldest items
    /// are dropped (system messages last); a larger single item is refused. Every model request
    /// carries at most this much history.
    pub max_history_bytes: Option<usize>,
    /// Share of `max_sessions` one key without its own `max_sessions` may hold, in percent, when
    /// more than one key is configured (default 50).
    pub key_session_share_percent: Option<u8>,
    /// Longest wait for an utterance's final transcript after it ends (default 10000): a stuck STT
    /// engine fails the transcription instead of stalling the call.
    pub stt_timeout_ms: Option<u64>,
    /// Longest a TTS engine may go without giving audio while it speaks a chunk (default 10000): a
    /// stuck engine fails the response instead of leaving the caller in silence. Time spent waiting
    /// for the caller to hear earlier audio does not count.
    pub tts_timeout_ms: Option<u64>,
    /// Bytes of server events a voice session may have waiting for a client that does not read
    /// (default 4 MiB, at least twice `max_event_bytes`); over it the session is closed with 1008.
    pub max_outbound_bytes: Option<usize>,
    /// Longest one outbound message may wait for the client's network to take it (default 10000);
    /// past it the client is taken as not reading and the session is closed with 1008.
    pub send_timeout_ms: Option<u64>,
    /// A WebSocket ping every this long (default 20000) ...
    pub ping_interval_ms: Option<u64>,
    /// ... and this long to hear anything back (default 20000): a peer silent for the whole wait is
    /// gone, and its call ends, billed to the last time it was heard from.
    pub pong_timeout_ms: Option<u64>,
    /// A `/v1/realtime` client that sends no event for this long is closed (default 300000).
    pub idle_timeout_ms: Option<u64>,
    /// A Twilio stream that sends no media for this long is ended (default 10000): Twilio sends a
    /// frame every 20 ms for as long as the call lasts.
    pub twilio_media_timeout_ms: Option<u64>,
    /// The longest call (default 14400000, 4 h): then an `error` (`session_expired`) and the close.
    pub max_session_ms: Option<u64>,
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
    /// The list price of every speech engine a session may use, by the name it runs under.
    pub speech_prices: SpeechPrices,
    pub realtime: RealtimeSettings,
    pub metering: MeteringSettings,
    /// `[server]`, `[phone]`, `[metrics]`.
    pub edge: EdgeSettings,
    pub http: HttpSettings,
}

/// `[http]`, validated (see [`RawHttp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { header_timeout_ms: 10_000, body_timeout_ms: 30_000, max_connections: 8192 }
    }
}

impl HttpSettings {
    fn from_raw(r: &RawHttp) -> Result<HttpSettings, ConfigError> {
        let d = HttpSettings::default();
        let zero = |field: &str| ConfigError::Invalid(format!("http.{field} = 0 is not allowed; leave it out for the default"));
        if r.header_timeout_ms == Some(0) {
            return Err(zero("header_timeout_ms"));
        }
        if r.body_timeout_ms == Some(0) {
            return Err(zero("body_timeout_ms"));
        }
        if r.max_connections == Some(0) {
            return Err(zero("max_connections"));
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits; no machine has that many sockets.
        const MOST: usize = 1 << 24;
        if r.max_connections.is_some_and(|n| n > MOST) {
            return Err(ConfigError::Invalid(format!("http.max_connections is over {MOST}")));
        }
        Ok(HttpSettings {
            header_timeout_ms: r.header_timeout_ms.unwrap_or(d.header_timeout_ms),
            body_timeout_ms: r.body_timeout_ms.unwrap_or(d.body_timeout_ms),
            max_connections: r.max_connections.unwrap_or(d.max_connections),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeSettings {
    pub max_event_bytes: usize,
    pub max_sessions: usize,
    pub output_lead_ms: u64,
    pub max_history_items: usize,
    pub max_history_bytes: usize,
    pub key_session_share_percent: u8,
    pub stt_timeout_ms: u64,
    pub tts_timeout_ms: u64,
    pub max_outbound_bytes: usize,
    pub send_timeout_ms: u64,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub twilio_media_timeout_ms: u64,
    pub max_session_ms: u64,
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        RealtimeSettings {
            max_event_bytes: 1024 * 1024,
            max_sessions: 1000,
            output_lead_ms: 100,
            max_history_items: 200,
            max_history_bytes: crate::session::conversation::DEFAULT_MAX_HISTORY_BYTES,
            key_session_share_percent: 50,
            stt_timeout_ms: 10_000,
            tts_timeout_ms: 10_000,
            max_outbound_bytes: 4 * 1024 * 1024,
            send_timeout_ms: 10_000,
            ping_interval_ms: 20_000,
            pong_timeout_ms: 20_000,
            idle_timeout_ms: 300_000,
            twilio_media_timeout_ms: 10_000,
            max_session_ms: 4 * 3600 * 1000,
        }
    }
}

/// The longest any `[realtime]` duration may be (30 days): far beyond any call, short of overflow.
const DURATION_MS_MAX: u64 = 30 * 24 * 3600 * 1000;

impl RealtimeSettings {
    fn from_raw(r: &RawRealtime) -> Result<RealtimeSettings, ConfigError> {
        let d = RealtimeSettings::default();
        for (field, v) in
            [("max_event_bytes", r.max_event_bytes), ("max_sessions", r.max_sessions), ("max_history_items", r.max_history_items)]
                .into_iter()
                .chain([
                    ("max_history_bytes", r.max_history_bytes),
                    ("key_session_share_percent", r.key_session_share_percent.map(usize::from)),
                ])
        {
            if v == Some(0) {
                return Err(ConfigError::Invalid(format!("realtime.{field} = 0 is not allowed; leave it out for the default")));
            }
        }
        let durations = [
            ("send_timeout_ms", r.send_timeout_ms),
            ("ping_interval_ms", r.ping_interval_ms),
            ("pong_timeout_ms", r.pong_timeout_ms),
            ("idle_timeout_ms", r.idle_timeout_ms),
            ("twilio_media_timeout_ms", r.twilio_media_timeout_ms),
            ("max_session_ms", r.max_session_ms),
        ];
        for (field, v) in durations {
            match v {
                Some(0) => return Err(ConfigError::Invalid(format!("realtime.{field} = 0 is not allowed; leave it out for the default"))),
                Some(v) if v > DURATION_MS_MAX => {
                    return Err(ConfigError::Invalid(format!("realtime.{field} = {v} is over the limit of {DURATION_MS_MAX} (30 days)")))
                }
                _ => {}
            }
        }
        let max_event_bytes = r.max_event_bytes.unwrap_or(d.max_event_bytes);
        // Room for the two echoes (`conversation.item.added` and `.done`) of one event of the largest size.
        let outbound_floor = max_event_bytes.saturating_mul(2).saturating_add(64 * 1024);
        let max_outbound_bytes = match r.max_outbound_bytes {
            Some(v) if v < outbound_floor => {
                return Err(ConfigError::Invalid(format!(
                    "realtime.max_outbound_bytes = {v} is too small: the echo of one event of max_event_bytes ({max_event_bytes}) needs {outbound_floor}"
                )))
            }
            Some(v) => v,
            None => d.max_outbound_bytes.max(outbound_floor),
        };
        if let Some(p) = r.key_session_share_percent.filter(|&p| p > 100) {
            return Err(ConfigError::Invalid(format!("realtime.key_session_share_percent = {p} is over 100")));
        }
        Ok(RealtimeSettings {
            max_outbound_bytes,
            send_timeout_ms: r.send_timeout_ms.unwrap_or(d.send_timeout_ms),
            ping_interval_ms: r.ping_interval_ms.unwrap_or(d.ping_interval_ms),
            pong_timeout_ms: r.pong_timeout_ms.unwrap_or(d.pong_timeout_ms),
            idle_timeout_ms: r.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
            twilio_media_timeout_ms: r.twilio_media_timeout_ms.unwrap_or(d.twilio_media_timeout_ms),
            max_session_ms: r.max_session_ms.unwrap_or(d.max_session_ms),
            max_event_bytes,
            max_sessions: r.max_sessions.unwrap_or(d.max_sessions),
            output_lead_ms: r.output_lead_ms.unwrap_or(d.output_lead_ms),
            max_history_items: r.max_history_items.unwrap_or(d.max_history_items),
            max_history_bytes: r.max_history_bytes.unwrap_or(d.max_history_bytes),
            key_session_share_percent: r.key_session_share_percent.unwrap_or(d.key_session_share_percent),
            stt_timeout_ms: r.stt_timeout_ms.unwrap_or(d.stt_timeout_ms),
            tts_timeout_ms: r.tts_timeout_ms.unwrap_or(d.tts_timeout_ms),
        })
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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

    /// Validate `user`, handing each part its section; the gateway's is laid over the built-in catalog.
    pub fn from_raw(user: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let listen_text = user.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("listen = {listen_text:?} is not an address like \"127.0.0.1:8080\"")))?;
        let models_dir =
            user.models_dir.clone().or_else(|| env("VOXGATE_MODELS_DIR").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("models"));

        let keys = keys::key_configs(&user.auth, env)?;
        let catalog = RawCatalog { providers: user.providers, models: user.models, routes: user.routes, speech: Vec::new() };
        let GatewayConfig { settings: gateway, providers, models, routes } =
            GatewayConfig::from_raw(&user.gateway, &catalog, env, &models_dir).map_err(ConfigError::Invalid)?;
        // `[providers]` also holds the speech vendors `[stt]` and `[tts]` name.
        let stt = SttConfig::from_raw(&user.stt, &providers).map_err(ConfigError::Invalid)?;
        let tts = TtsConfig::from_raw(&user.tts, &providers).map_err(ConfigError::Invalid)?;
        let speech_prices = speech_prices(&user.speech, &providers, &stt, &tts).map_err(ConfigError::Invalid)?;
        let realtime = RealtimeSettings::from_raw(&user.realtime)?;
        let metering = MeteringSettings::from_raw(&user.metering, env).map_err(ConfigError::Invalid)?;
        let edge = EdgeSettings::from_raw(&user.server, &user.phone, &user.metrics, env)?;
        let http = HttpSettings::from_raw(&user.http)?;

        Ok(Config { listen, models_dir, keys, gateway, providers, models, routes, stt, tts, speech_prices, realtime, metering, edge, http })
    }
}

/// The price of each speech engine the config makes, by the name it runs under: the built-in
/// catalog's `[[speech]]` with the user's laid over it. A vendor engine's price is that of its model
/// (the adapter's default model when `[stt] engines` names none); a vendor model nobody prices is
/// recorded without a price (cost 0), with a warning here.
fn speech_prices(
    user: &[RawSpeechPrice],
    providers: &BTreeMap<String, ProviderConfig>,
    stt: &SttConfig,
    tts: &TtsConfig,
) -> Result<SpeechPrices, String> {
    let catalog: RawCatalog = toml::from_str(crate::llm::config::CATALOG_TOML).map_err(|e| format!("built-in catalog: {e}"))?;
    let is_vendor = |stage: Stage, name: &str| {
        providers.get(name).is_some_and(|p| match stage {
            Stage::Stt => p.kind.serves_stt(),
            Stage::Tts => p.kind.serves_tts(),
        })
    };
    let list = PriceList::from_raw(&catalog.speech, user, &is_vendor)?;
    let mut prices = SpeechPrices::with_builtins(&list);
    let mut vendors = Vec::new();
    let mut walk = vec![stt];
    while let Some(engine) = walk.pop() {
        match engine {
            SttConfig::Chain(engines) => walk.extend(engines.iter().map(|(_, engine)| engine)),
            SttConfig::Vendor(v) => vendors.push(v),
            SttConfig::None | SttConfig::Fake { .. } | SttConfig::Embedded { .. } => {}
        }
    }
    // A provider listed twice with different models (`dg:nova-3`, `dg:nova-2`) runs under one name,
    // so it gets one price: the first entry's (`vendors` is in reverse order, the last set wins).
    for v in vendors {
        let kind = provider_kind_name(v.provider.kind);
        let model = v.model.clone().unwrap_or_else(|| crate::stt::default_model(v.provider.kind).to_string());
        let price = list.vendor_price(Stage::Stt, &v.provider.id, kind, &model);
        if price.is_none() {
            tracing::warn!(engine = %v.provider.id, %model, "no list price for this speech-to-text model: its cost is recorded as 0; add a [[speech]] entry with usd_per_audio_minute");
        }
        prices.set(Stage::Stt, &v.provider.id, price);
    }
    // Text-to-speech vendors, by the model their voice names (the first entry of a provider wins,
    // as above).
    for engine in tts.engines.iter().rev() {
        let (Some(model), crate::tts::config::TtsEngineConfig::Vendor { provider, .. }) = (engine.vendor_model(), engine) else { continue };
        let price = list.vendor_price(Stage::Tts, &provider.id, provider_kind_name(provider.kind), &model);
        if price.is_none() {
            tracing::warn!(engine = %provider.id, %model, "no list price for this text-to-speech model: its cost is recorded as 0; add a [[speech]] entry with usd_per_kchar");
        }
        prices.set(Stage::Tts, &provider.id, price);
    }
    Ok(prices)
}

/// A provider kind as the catalog's `[[speech]]` entries name vendors.
fn provider_kind_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gemini",
        ProviderKind::Embedded => "embedded",
        ProviderKind::Fake => "fake",
        ProviderKind::Assemblyai => "assemblyai",
        ProviderKind::Deepgram => "deepgram",
        ProviderKind::Elevenlabs => "elevenlabs",
        ProviderKind::Cartesia => "cartesia",
    }
}

/// The gateway's section, for `Gateway::new(&config)`.
impl From<&Config> for GatewayConfig {
    fn from(config: &Config) -> GatewayConfig {
        GatewayConfig {
            settings: config.gateway.clone(),
            providers: config.providers.clone(),
            models: config.models.clone(),
            routes: config.routes.clone(),
        }
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
    fn speech_vendors_switch_on_by_their_key_and_are_not_llm_providers() {
        let env = |k: &str| (k == "DEEPGRAM_API_KEY" || k == "CARTESIA_API_KEY").then(|| "dg-test".to_string());
        let c = Config::from_raw(RawConfig::default(), &env).unwrap();
        assert_eq!(c.providers["deepgram"].kind, crate::llm::config::ProviderKind::Deepgram);
        assert!(c.providers["deepgram"].diarize, "diarization is on by default");
        assert!(c.providers.contains_key("cartesia") && !c.providers.contains_key("assemblyai"));
        let gateway = crate::llm::router::Gateway::new(&c).unwrap();
        assert!(gateway.provider("deepgram").is_none(), "the gateway serves no chat from a speech vendor");
        // A model on a speech vendor is a clear error; a wss:// base URL is fine for one.
        let text = "[providers.dg]\nkind = \"deepgram\"\nbase_url = \"wss://dg.example\"\ndiarize = false\n\
                    [[models]]\nid = \"m\"\nprovider = \"dg\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n";
        let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
        assert!(err.contains("speech provider"), "{err}");
        let err = Config::from_toml("[providers.o]\nkind = \"openai\"\nbase_url = \"wss://x\"\n", &no_env).unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
    }

    #[test]
    fn connection_and_history_limits_have_defaults_and_are_checked() {
        let c = Config::from_raw(RawConfig::default(), &no_env).unwrap();
        assert_eq!(c.http, HttpSettings { header_timeout_ms: 10_000, body_timeout_ms: 30_000, max_connections: 8192 });
        assert_eq!((c.realtime.max_history_bytes, c.realtime.key_session_share_percent), (256 * 1024, 50));
        let text = "[http]\nheader_timeout_ms = 2000\nbody_timeout_ms = 5000\nmax_connections = 100\n\
                    [realtime]\nmax_history_bytes = 4096\nkey_session_share_percent = 100\n";
        let c = Config::from_toml(text, &no_env).unwrap();
        assert_eq!(c.http, HttpSettings { header_timeout_ms: 2000, body_timeout_ms: 5000, max_connections: 100 });
        assert_eq!((c.realtime.max_history_bytes, c.realtime.key_session_share_percent), (4096, 100));
        for (text, want) in [
            ("[http]\nheader_timeout_ms = 0\n", "http.header_timeout_ms = 0"),
            ("[http]\nbody_timeout_ms = 0\n", "http.body_timeout_ms = 0"),
            ("[http]\nmax_connections = 0\n", "http.max_connections = 0"),
            ("[http]\nmax_connections = 100000000\n", "http.max_connections is over"),
            ("[http]\nidle_ms = 5\n", "unknown field"),
            ("[realtime]\nmax_history_bytes = 0\n", "realtime.max_history_bytes = 0"),
            ("[realtime]\nkey_session_share_percent = 0\n", "realtime.key_session_share_percent = 0"),
            ("[realtime]\nkey_session_share_percent = 101\n", "is over 100"),
        ] {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let env = |k: &str| (k == "K").then(|| "sk-very-secret".to_string());
        let c = Config::from_toml("[providers.x]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key = \"env:K\"\n", &env)
            .unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }

    #[test]
    fn speech_prices_come_from_the_catalog_and_the_users_entries() {
        // Every built-in entry validates, and each vendor that does speech has at least one price.
        let catalog: RawCatalog = toml::from_str(crate::llm::config::CATALOG_TOML).unwrap();
        let list = PriceList::from_raw(&catalog.speech, &[], &|_, _| false).unwrap();
        for vendor in ["deepgram", "assemblyai", "openai", "elevenlabs", "cartesia"] {
            assert!(list.catalog_entries().any(|(_, v, _, _)| v == vendor), "no price for {vendor}");
        }
        // Default engines are built in: they cost nothing.
        let c = Config::from_raw(RawConfig::default(), &no_env).unwrap();
        assert_eq!(c.speech_prices.price(Stage::Stt, "whisper-tiny-en"), Some(0));
        assert_eq!(c.speech_prices.price(Stage::Tts, "piper-en-us-joe-medium"), Some(0));
        // A vendor engine takes its model's list price, the adapter's default model when none is named.
        let text = "[providers.dg]\nkind = \"deepgram\"\n[providers.dg2]\nkind = \"deepgram\"\n\
                    [providers.aai]\nkind = \"assemblyai\"\n[providers.o]\nkind = \"openai\"\n\
                    [stt]\nengines = [\"dg\", \"dg2:nova-2\", \"aai\", \"o:gpt-4o-mini-transcribe\"]\n";
        let c = Config::from_toml(text, &no_env).unwrap();
        assert_eq!(c.speech_prices.price(Stage::Stt, "dg"), Some(7_700));
        assert_eq!(c.speech_prices.price(Stage::Stt, "dg2"), Some(5_800));
        assert_eq!(c.speech_prices.price(Stage::Stt, "aai"), Some(2_500));
        assert_eq!(c.speech_prices.price(Stage::Stt, "o"), Some(3_000));
        // The user's entries replace the list price, and may price a built-in engine.
        let text = format!(
            "{text}[[speech]]\nengine = \"dg\"\nmodel = \"nova-3\"\nusd_per_audio_minute = 0.0065\n\
             [[speech]]\nengine = \"fake\"\nusd_per_kchar = 0.2\n"
        );
        let c = Config::from_toml(&text, &no_env).unwrap();
        assert_eq!(c.speech_prices.price(Stage::Stt, "dg"), Some(6_500));
        assert_eq!(c.speech_prices.price(Stage::Stt, "dg2"), Some(5_800));
        assert_eq!(c.speech_prices.price(Stage::Tts, "fake"), Some(200_000));
        assert_eq!(c.speech_prices.price(Stage::Stt, "fake"), Some(0));
        // A model nobody prices is recorded without a price, not refused.
        let c = Config::from_toml("[providers.dg]\nkind = \"deepgram\"\n[stt]\nengines = [\"dg:whatever\"]\n", &no_env).unwrap();
        assert_eq!(c.speech_prices.price(Stage::Stt, "dg"), None);
    }

    #[test]
    fn edge_settings_default_closed_and_validate() {
        let c = Config::from_raw(RawConfig::default(), &no_env).unwrap();
        assert_eq!(c.edge, EdgeSettings::default());
        assert!(!c.edge.metrics_public && c.edge.twilio_auth_token.is_none() && !c.edge.any_origin);
        let text = "[server]\nallowed_origins = [\"HTTPS://App.Example.com:443/\", \"http://localhost:3000\"]\n\
                    allowed_hosts = [\"Voice.Example.com\"]\n[phone]\ntwilio_auth_token = \"env:TW\"\n[metrics]\npublic = true\n";
        let env = |k: &str| (k == "TW").then(|| "tok".to_string());
        let c = Config::from_toml(text, &env).unwrap();
        assert_eq!(c.edge.allowed_origins, ["https://app.example.com", "http://localhost:3000"]);
        assert_eq!(c.edge.allowed_hosts, ["voice.example.com"]);
        assert_eq!(c.edge.twilio_auth_token.as_ref().map(|t| t.expose()), Some("tok"));
        assert!(c.edge.metrics_public);
        assert!(!format!("{c:?}").contains("tok\""), "the auth token never prints");
        assert!(Config::from_toml("[server]\nallowed_origins = [\"*\"]\n", &no_env).unwrap().edge.any_origin);
        for (text, want) in [
            ("[server]\nallowed_origins = [\"app.example.com\"]\n", "server.allowed_origins[0]"),
            ("[server]\nallowed_hosts = [\"a b\"]\n", "server.allowed_hosts[0]"),
            ("[phone]\ntwilio_auth_token = \"env:NOPE\"\n", "NOPE"),
            ("[phone]\ntwilio_auth_token = \" \"\n", "is empty"),
            ("[metrics]\nopen = true\n", "unknown field"),
        ] {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn bad_speech_prices_are_config_errors() {
        for (text, want) in [
            ("[[speech]]\nengine = \"fake\"\nusd_per_kchar = -1\n", "usd_per_kchar = -1"),
            ("[[speech]]\nengine = \"fake\"\n", "needs usd_per_audio_minute"),
            ("[[speech]]\nengine = \"ghost\"\nusd_per_kchar = 0.1\n", "names engine \"ghost\""),
            ("[[speech]]\nengine = \"fake\"\nusd_per_kchar = 0.1\nprice = 3\n", "unknown field"),
            ("[providers.dg]\nkind = \"deepgram\"\n[[speech]]\nengine = \"dg\"\nusd_per_audio_minute = 0.00771234\n", "six decimals"),
            ("[providers.x]\nkind = \"openai\"\n[[speech]]\nengine = \"x\"\nusd_per_audio_minute = 0.1\nusd_per_kchar = 0.1\n", "not both"),
        ] {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn connection_limits_have_defaults_and_are_checked() {
        let r = Config::from_raw(RawConfig::default(), &no_env).unwrap().realtime;
        assert_eq!(
            (r.max_outbound_bytes, r.send_timeout_ms, r.ping_interval_ms, r.pong_timeout_ms),
            (4 * 1024 * 1024, 10_000, 20_000, 20_000)
        );
        assert_eq!((r.idle_timeout_ms, r.twilio_media_timeout_ms, r.max_session_ms), (300_000, 10_000, 14_400_000));
        // A larger event raises the default bound to fit its two echoes.
        let r = Config::from_toml(
            "[realtime]
max_event_bytes = 3145728
",
            &no_env,
        )
        .unwrap()
        .realtime;
        assert_eq!(r.max_outbound_bytes, 2 * 3_145_728 + 64 * 1024);
        for (text, want) in [
            (
                "[realtime]
ping_interval_ms = 0
",
                "ping_interval_ms = 0 is not allowed",
            ),
            (
                "[realtime]
max_session_ms = 9999999999999
",
                "max_session_ms = 9999999999999 is over the limit",
            ),
            (
                "[realtime]
max_outbound_bytes = 1000
",
                "max_outbound_bytes = 1000 is too small",
            ),
            (
                "[realtime]
pong_timeout = 5
",
                "unknown field",
            ),
        ] {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
