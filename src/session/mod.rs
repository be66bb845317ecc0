//! The per-call session, protocol-free: a transport sends it [`Command`]s and receives [`Event`]s;
//! no wire format, JSON field name or base64 is known here. One task per call (`actor`, the loop)
//! owns the call's state and routes it to the parts that own each piece: [`input`] (caller audio,
//! VAD, utterances and STT), [`turn`] (the response in progress and its tool calls), [`playback`]
//! (paced outbound audio and what the caller heard), the [`conversation`] and the [`settings`].
//! Each response runs the gateway, the chunker and TTS off the loop ([`response`]).

mod actor;
pub mod command;
pub mod conversation;
pub mod event;
pub mod input;
pub mod playback;
pub mod response;
pub mod settings;
pub mod turn;

use std::sync::Arc;
use std::time::Duration;

pub use actor::run_session;
pub use command::{Command, Inbound, ResponseOverrides};
pub use event::{CloseReason, ErrorKind, Event, Outbound, SessionError, Setting};
pub use settings::{Settings, SettingsUpdate};

/// Who opened the session and what it serves.
#[derive(Debug, Clone)]
pub struct SessionStart {
    pub session_id: String,
    /// The gateway route or model the client asked for.
    pub route: String,
    /// The API key's name, for usage rows.
    pub key: String,
    /// The key's per-minute gateway limits, when it has any: the session's LLM calls count against
    /// them and the client hears of them ([`Event::RateLimits`]).
    pub limits: Option<Arc<dyn RateLimits>>,
}

use crate::config::{Config, RealtimeSettings};
use crate::llm::router::Gateway;
use crate::metrics::Metrics;
use crate::stt::SpeechToText;
use crate::tts::TextToSpeech;

/// The client's end of a call as its transport sees it: when the client was last heard from (any
/// frame, a pong included), how long it may go without sending a command before the session ends the
/// call as idle, and why the transport ended the call when the transport did (a peer that stopped
/// answering pings, a client that does not read). A call whose client vanished or went silent is
/// billed to the last time it was heard from, not to the moment that was noticed.
#[derive(Debug)]
pub struct Peer {
    epoch: tokio::time::Instant,
    /// Milliseconds from `epoch` to the last frame read: one relaxed store per frame.
    heard_ms: std::sync::atomic::AtomicU64,
    idle: Duration,
    ended: std::sync::OnceLock<CloseReason>,
    /// The connection ended without a close frame (reset, or cut).
    lost: std::sync::atomic::AtomicBool,
}

impl Peer {
    /// A peer heard from now, whose session ends after `idle` without a command.
    pub fn new(idle: Duration) -> Peer {
        Peer { epoch: tokio::time::Instant::now(), heard_ms: Default::default(), idle, ended: Default::default(), lost: Default::default() }
    }

    /// The client was heard from now.
    pub fn heard(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the client was heard from at `at` or later (to the millisecond).
    pub fn heard_since(&self, at: tokio::time::Instant) -> bool {
        let at_ms = u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.load(std::sync::atomic::Ordering::Relaxed) >= at_ms
    }

    pub fn last_heard(&self) -> tokio::time::Instant {
        self.epoch + Duration::from_millis(self.heard_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The transport ends the call for `reason` (the first reason given stays).
    pub fn end(&self, reason: CloseReason) {
        let _ = self.ended.set(reason);
    }

    pub fn ended(&self) -> Option<CloseReason> {
        self.ended.get().copied()
    }

    /// The connection ended without the client's close frame: it vanished, and its call is billed
    /// to the last time it was heard from.
    pub fn lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn was_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Completes when `token` is cancelled, and costs an atomic load to poll.
///
/// `CancellationToken::cancelled()` locks the token's tree node every time it is polled, and the
/// session's loops poll it at every wake-up: for each audio frame, several times, in every call.
/// This waits on the token once, in a small task that ends when the token is cancelled or when
/// the returned receiver is dropped, whichever comes first.
pub fn cancellation_signal(token: &tokio_util::sync::CancellationToken) -> tokio::sync::oneshot::Receiver<()> {
    let (mut tx, rx) = tokio::sync::oneshot::channel();
    let token = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = token.cancelled() => {}
            () = tx.closed() => return,
        }
        let _ = tx.send(());
    });
    rx
}

/// The per-minute gateway limits of the key a session runs under, as the session sees them. The
/// HTTP layer implements it (for a key with `requests_per_minute` or `tokens_per_minute`) and hands
/// it in with [`SessionStart::limits`]; the session asks before each LLM call, charges the call's
/// tokens when its usage arrives, and reports the budgets to the client (`rate_limits.updated`).
pub trait RateLimits: Send + Sync + std::fmt::Debug {
    /// Admit one LLM call (taking one request), or say which limit refuses it.
    fn try_request(&self) -> Result<(), RateLimited>;
    /// Charge the tokens (input + output) of a call whose usage is known.
    fn record_tokens(&self, tokens: u64);
    /// The limits as they stand now, requests first; empty when the key has none.
    fn budgets(&self) -> Vec<RateBudget>;
}

/// A limit that refused an LLM call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// `requests` or `tokens`.
    pub name: &'static str,
    pub limit: u64,
    /// Until the limit lets one more call through.
    pub retry_after: Duration,
    /// Names the key, the limit and when to retry, for the client.
    pub message: String,
}

/// One per-minute limit's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBudget {
    /// `requests` or `tokens`.
    pub name: &'static str,
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is whole again.
    pub reset: Duration,
}

/// The engines and limits every session shares.
pub struct VoiceEngines {
    pub gateway: Arc<Gateway>,
    pub stt: Option<Arc<dyn SpeechToText>>,
    pub tts: Option<Arc<dyn TextToSpeech>>,
    pub settings: RealtimeSettings,
    /// The server's metrics (the gateway's own).
    pub metrics: Arc<Metrics>,
    /// The speech engines' list prices, for each session's meter.
    pub speech_prices: Arc<crate::metering::speech::SpeechPrices>,
}

impl VoiceEngines {
    /// Builds the configured engines. A scripted fake whose files cannot be read, or an engine named
    /// in the config that cannot run, is an error here, at start-up, not in the first call. The
    /// default engines degrade instead, with a warning that says what to do: without the Whisper
    /// model sessions take text only; without the Piper voice they speak with espeak-ng, or not at all.
    pub fn from_config(config: &Config, gateway: Arc<Gateway>) -> Result<VoiceEngines, String> {
        let metrics = gateway.accounts.metrics.clone();
        let stt = crate::stt::build(&config.stt, &config.models_dir, &metrics)?;
        let tts = crate::tts::build(&config.tts, &config.models_dir, &metrics)?;
        let speech_prices = Arc::new(config.speech_prices.clone());
        Ok(VoiceEngines { gateway, stt, tts, settings: config.realtime.clone(), metrics, speech_prices })
    }

    /// Loads the embedded engines now instead of on the first call (the server does this at start).
    pub async fn warm_up(&self) {
        if let Some(stt) = &self.stt {
            if let Err(e) = stt.warm_up().await {
                tracing::warn!(engine = stt.name(), error = %e, "speech-to-text engine failed to load");
            }
        }
        if let Some(tts) = &self.tts {
            if let Err(e) = tts.warm_up().await {
                tracing::warn!(engine = tts.name(), error = %e, "text-to-speech engine failed to load");
            }
        }
    }
}
