//! The gateway proper: resolve a request to an ordered list of models, try them in turn, and
//! hand back an [`Answer`] once one of them has produced its first content token.
//!
//! Fallback rules (also in `docs/gateway.md`):
//! - a model is left for the next on connect errors, timeouts, 408, 409, 429, 5xx, 529, an
//!   in-band error or cut before content, no first token within `ttft_ms_max` (streaming) or
//!   no answer within `timeout_ms` (non-streaming), and a quiet stream over `idle_ms_max`
//!   before the first token;
//! - 400, 413, 422 end the request at once (the request itself is wrong);
//! - 401, 403, 404 and quota/billing errors (our account at that provider cannot serve) open the
//!   provider's breaker and move on to the next model of a *different* provider, never to the
//!   same one; with none left they end the request;
//! - a redirect is never followed (it could carry our key to another host): a 3xx is an upstream
//!   failure like a 5xx;
//! - no status and headers within `headers_ms_max`, streaming or not, is a timeout;
//! - a stream that ends without a finish reason is broken, never a short answer: before content
//!   it falls back, after content it ends the answer with an error;
//! - once content has been handed on, there is no fallback: a failure ends the answer with an
//!   error, which the HTTP layer sends in-band with no `[DONE]`;
//! - a `Retry-After` / `retryDelay` up to `retry_after_ms_max` is waited out and the last model
//!   retried once; with other models left we move on at once (no dead air);
//! - a provider with `breaker_failures` consecutive failures is skipped for
//!   `breaker_cooldown_ms`, then probed with one request.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{timeout, Instant};

use super::breaker::{Breaker, Permit};
use super::config::{
    GatewayConfig, GatewaySettings, ModelConfig, ProviderKind, RouteConfig, DEFAULT_HEADERS_MS_MAX, DEFAULT_IDLE_MS_MAX,
    DEFAULT_TIMEOUT_MS, DEFAULT_TTFT_MS_MAX,
};
use super::error::{ProviderError, Verdict};
use super::providers::{self, EventStream, HttpSettings, Provider};
use super::types::{ChatRequest, Event, Usage};
use super::usage::{cost_picousd, estimate_tokens, Outcome, Record, UsageBook};
use crate::metrics::Metrics;

/// A provider with its breaker.
pub struct ProviderSlot {
    pub id: String,
    pub provider: Provider,
    pub breaker: Breaker,
}

/// Where usage and metrics go; shared with every live [`Answer`].
#[derive(Default)]
pub struct Accounts {
    pub usage: UsageBook,
    pub metrics: Arc<Metrics>,
    /// Told about every finished standalone request (not those made inside a voice session, which
    /// are billed with the session): the durable ledger listens here.
    pub sink: std::sync::OnceLock<RequestSink>,
}

/// What a finished gateway request reports to [`Accounts::sink`].
#[derive(Debug, Clone)]
pub struct FinishedRequest {
    /// The completion id (`chatcmpl-…`), or a fresh id for a request that never got an answer.
    pub id: String,
    pub key: String,
    pub model: String,
    pub outcome: Outcome,
    pub usage: Usage,
    pub cost_picousd: u128,
    pub latency: Duration,
    /// The upstream never reported usage (the stream was cut after its finish reason, or the
    /// client went away first): `usage` is voxgate's estimate from the text, about 4 characters
    /// a token.
    pub usage_estimated: bool,
}

impl FinishedRequest {
    /// The outcome as the ledger stores it: `ok`, `error`, `cancelled`, with `_estimated` added
    /// when the tokens are voxgate's estimate rather than the upstream's count.
    pub fn ledger_outcome(&self) -> String {
        if self.usage_estimated {
            format!("{}_estimated", self.outcome.as_str())
        } else {
            self.outcome.as_str().to_string()
        }
    }
}

pub type RequestSink = Arc<dyn Fn(FinishedRequest) + Send + Sync>;

/// One try at one model.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub model: String,
    pub provider: String,
    /// `ok`, `skipped_breaker_open`, or the error's kind (`rate_limited`, `timeout` …).
    pub result: String,
    pub status: Option<u16>,
    pub message: Option<String>,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    UnknownModel(String),
    #[error("{0}")]
    Invalid(String),
    /// The model answered with an error that retrying or falling back cannot fix.
    #[error("model {model} rejected the request: {error}")]
    Rejected { model: String, error: ProviderError, attempts: Vec<Attempt> },
    /// Every model failed (or was skipped).
    #[error("{}", all_failed_message(.attempts))]
    AllFailed { attempts: Vec<Attempt>, last: Option<ProviderError> },
}

fn all_failed_message(attempts: &[Attempt]) -> String {
    let list: Vec<String> =
        attempts.iter().map(|a| format!("{} ({}): {}", a.model, a.provider, a.message.as_deref().unwrap_or(&a.result))).collect();
    format!("all {} attempts failed: {}", attempts.len(), list.join("; "))
}

impl GatewayError {
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::UnknownModel(_) => "model_not_found",
            GatewayError::Invalid(_) => "invalid_request",
            GatewayError::Rejected { .. } => "upstream_rejected",
            GatewayError::AllFailed { .. } => "all_models_failed",
        }
    }

    pub fn attempts(&self) -> &[Attempt] {
        match self {
            GatewayError::Rejected { attempts, .. } | GatewayError::AllFailed { attempts, .. } => attempts,
            _ => &[],
        }
    }
}

/// The ordered candidates and deadlines for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub requested: String,
    pub candidates: Vec<String>,
    pub ttft: Duration,
    pub idle: Duration,
    pub timeout: Duration,
    pub headers: Duration,
}

pub struct Gateway {
    providers: HashMap<String, Arc<ProviderSlot>>,
    models: BTreeMap<String, ModelConfig>,
    routes: BTreeMap<String, RouteConfig>,
    settings: GatewaySettings,
    pub accounts: Arc<Accounts>,
}

impl Gateway {
    /// The gateway of a validated config (`Gateway::new(&config)` takes the whole program's).
    pub fn new(config: impl Into<GatewayConfig>) -> Result<Gateway, GatewayError> {
        let GatewayConfig { settings, providers: provider_configs, models, routes } = config.into();
        let mut providers = HashMap::new();
        // Speech-only vendors are `[stt]`/`[tts]` engines, not the gateway's.
        for (id, p) in provider_configs.iter().filter(|(_, p)| p.kind.serves_llm()) {
            let connect_timeout = Duration::from_millis(p.connect_timeout_ms);
            let pool_idle_timeout = Duration::from_secs(90);
            let client = providers::http_client(connect_timeout, pool_idle_timeout)
                .map_err(|e| GatewayError::Invalid(format!("provider {id}: cannot build HTTP client: {e}")))?;
            let http = HttpSettings::new(p.base_url.clone(), p.api_key.clone(), client).with_plain_http(connect_timeout, pool_idle_timeout);
            let provider = match p.kind {
                ProviderKind::Openai => Provider::OpenAi(providers::openai::OpenAi::new(http)),
                ProviderKind::Anthropic => Provider::Anthropic(providers::anthropic::Anthropic::new(http)),
                ProviderKind::Gemini => Provider::Gemini(providers::gemini::Gemini::new(http)),
                // Validation gives every embedded provider its model path.
                ProviderKind::Embedded => Provider::Embedded(providers::embedded::Embedded::new(p.model_path.clone().unwrap_or_default())),
                ProviderKind::Fake => Provider::Fake(providers::fake::Fake::new()),
                ProviderKind::Assemblyai | ProviderKind::Deepgram | ProviderKind::Elevenlabs | ProviderKind::Cartesia => continue,
            };
            let breaker = Breaker::new(settings.breaker_failures, Duration::from_millis(settings.breaker_cooldown_ms));
            providers.insert(id.clone(), Arc::new(ProviderSlot { id: id.clone(), provider, breaker }));
        }
        Ok(Gateway { providers, models, routes, settings, accounts: Arc::new(Accounts::default()) })
    }

    pub fn models(&self) -> &BTreeMap<String, ModelConfig> {
        &self.models
    }

    pub fn routes(&self) -> &BTreeMap<String, RouteConfig> {
        &self.routes
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<ProviderSlot>> {
        self.providers.get(id)
    }

    /// Resolve the request's `model` (a route or a model) and optional `models` list.
    pub fn plan(&self, request: &ChatRequest) -> Result<Plan, GatewayError> {
        let route = self.routes.get(&request.model);
        let mut candidates = Vec::new();
        let names: Vec<&String> = if !request.models.is_empty() { request.models.iter().collect() } else { vec![&request.model] };
        for name in names {
            if let Some(r) = self.routes.get(name) {
                candidates.extend(r.models.iter().cloned());
            } else if self.models.contains_key(name) {
                candidates.push(name.clone());
            } else {
                return Err(GatewayError::UnknownModel(self.unknown_message(name)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|m| seen.insert(m.clone()));
        // The name requests are booked under: the route or model asked for, else (a `models`
        // list with a free-form `model`) the first candidate. Never an arbitrary client string.
        let requested = if route.is_some() || self.models.contains_key(&request.model) {
            request.model.clone()
        } else {
            candidates.first().cloned().unwrap_or_else(|| "unknown".to_string())
        };
        Ok(Plan {
            requested,
            candidates,
            ttft: Duration::from_millis(route.map_or(DEFAULT_TTFT_MS_MAX, |r| r.ttft_ms_max)),
            idle: Duration::from_millis(route.map_or(DEFAULT_IDLE_MS_MAX, |r| r.idle_ms_max)),
            timeout: Duration::from_millis(route.map_or(DEFAULT_TIMEOUT_MS, |r| r.timeout_ms)),
            headers: Duration::from_millis(route.map_or(DEFAULT_HEADERS_MS_MAX, |r| r.headers_ms_max)),
        })
    }

    fn unknown_message(&self, name: &str) -> String {
        let mut known: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        known.extend(self.models.keys().map(String::as_str));
        let shown: Vec<&str> = known.iter().take(12).copied().collect();
        format!(
            "The model `{name}` does not exist on this voxgate: it is neither a route nor a model whose provider is configured. Known names: {}{}. Hosted models appear once their provider's key variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, GROQ_API_KEY) is set.",
            shown.join(", "),
            if known.len() > shown.len() { ", …" } else { "" }
        )
    }

    /// Run the request through its candidates until one produces content.
    pub async fn start(&self, request: &ChatRequest, key: &str) -> Result<Answer, GatewayError> {
        self.start_as(request, key, false).await
    }

    /// Like [`Gateway::start`], for a voice session's turn: usage is recorded and counted as usual,
    /// but not reported to [`Accounts::sink`] as a standalone request (the session bills it).
    pub async fn start_in_session(&self, request: &ChatRequest, key: &str) -> Result<Answer, GatewayError> {
        self.start_as(request, key, true).await
    }

    async fn start_as(&self, request: &ChatRequest, key: &str, in_session: bool) -> Result<Answer, GatewayError> {
        let began = Instant::now();
        let plan = match self.plan(request) {
            Ok(p) => p,
            Err(e) => {
                // Not the client's string: unknown names must not grow the books and metrics.
                self.record_failure(key, "unknown", began, in_session);
                return Err(e);
            }
        };
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut last: Option<ProviderError> = None;
        // Providers that refused our credentials or quota during this request: never again.
        let mut refused: Vec<String> = Vec::new();
        let input_chars = request_chars(request);

        // First pass honours breakers; if every candidate was skipped, try them anyway rather
        // than answer with an error nobody tried to avoid.
        for respect_breakers in [true, false] {
            if !respect_breakers && attempts.iter().any(|a| a.result != "skipped_breaker_open") {
                break;
            }
            for (i, model_id) in plan.candidates.iter().enumerate() {
                let model = &self.models[model_id];
                let Some(slot) = self.providers.get(&model.provider).cloned() else { continue };
                if refused.contains(&slot.id) {
                    attempts.push(Attempt {
                        model: model_id.clone(),
                        provider: slot.id.clone(),
                        result: "skipped_provider_refused".into(),
                        status: None,
                        message: Some("this provider refused voxgate's credentials or quota earlier in this request".into()),
                        elapsed: Duration::ZERO,
                    });
                    continue;
                }
                let permit = if respect_breakers { slot.breaker.try_acquire() } else { Some(Permit { probe: false }) };
                let Some(permit) = permit else {
                    attempts.push(Attempt {
                        model: model_id.clone(),
                        provider: slot.id.clone(),
                        result: "skipped_breaker_open".into(),
                        status: None,
                        message: Some("circuit breaker open after recent failures".into()),
                        elapsed: Duration::ZERO,
                    });
                    continue;
                };
                // If the client goes away mid-attempt this future is dropped: free a
                // half-open breaker's probe slot so the provider is not skipped forever.
                let _probe = ProbeRelease(slot.clone(), permit);
                let is_last = i + 1 == plan.candidates.len();
                let mut retried = false;
                loop {
                    let t0 = Instant::now();
                    let result = attempt(&slot, model, request, &plan).await;
                    let elapsed = t0.elapsed();
                    match result {
                        Ok((held, stream)) => {
                            slot.breaker.record_success();
                            attempts.push(Attempt {
                                model: model_id.clone(),
                                provider: slot.id.clone(),
                                result: "ok".into(),
                                status: Some(200),
                                message: None,
                                elapsed,
                            });
                            self.count_attempts(&attempts);
                            let ttft = began.elapsed();
                            let fell_back = attempts.len() > 1;
                            let id = format!("chatcmpl-{}", super::ids::time_ordered_suffix());
                            return Ok(Answer {
                                id: id.clone(),
                                created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                                model: model_id.clone(),
                                attempts,
                                held,
                                stream: Some(stream),
                                idle: if request.stream { plan.idle } else { plan.timeout },
                                accounting: Accounting {
                                    accounts: self.accounts.clone(),
                                    slot,
                                    prices: model.clone(),
                                    key: key.to_string(),
                                    id,
                                    in_session,
                                    began,
                                    ttft: Some(ttft),
                                    fell_back,
                                    usage: Usage::default(),
                                    usage_seen: false,
                                    input_chars,
                                    output_chars: 0,
                                    done: false,
                                },
                                finished: false,
                            });
                        }
                        Err(error) => {
                            tracing::info!(model = %model_id, provider = %slot.id, kind = error.kind(), error = %error, "attempt failed");
                            let status = match &error {
                                ProviderError::Http { status, .. } => Some(*status),
                                _ => None,
                            };
                            attempts.push(Attempt {
                                model: model_id.clone(),
                                provider: slot.id.clone(),
                                result: error.kind().into(),
                                status,
                                message: Some(error.to_string()),
                                elapsed,
                            });
                            if (matches!(error, ProviderError::Invalid(_)) || error.is_context_length()) && !is_last {
                                // This model cannot take this request (our adapter cannot
                                // express it, or the prompt is over its context): the next
                                // model may; the provider is healthy.
                                last = Some(error);
                                break;
                            }
                            let verdict = error.verdict();
                            if verdict == Verdict::OtherProvider {
                                // Our key is revoked or our quota spent there: every request
                                // to this provider fails alike until an operator acts.
                                slot.breaker.trip();
                                refused.push(slot.id.clone());
                                let other = plan.candidates[i + 1..].iter().any(|m| {
                                    self.models
                                        .get(m)
                                        .is_some_and(|m| self.providers.contains_key(&m.provider) && !refused.contains(&m.provider))
                                });
                                tracing::warn!(
                                    model = %model_id,
                                    provider = %slot.id,
                                    kind = error.kind(),
                                    error = %error,
                                    moving_on = other,
                                    "the provider refused voxgate's credentials or quota; its breaker is open"
                                );
                                if other {
                                    last = Some(error);
                                    break;
                                }
                            }
                            if verdict != Verdict::Retry {
                                // The request itself is at fault (the provider is healthy, so
                                // its breaker is left alone), or no other provider is left.
                                self.count_attempts(&attempts);
                                self.record_failure(key, &plan.requested, began, in_session);
                                return Err(GatewayError::Rejected { model: model_id.clone(), error, attempts });
                            }
                            let retry_after = match &error {
                                ProviderError::Http { retry_after, .. } => *retry_after,
                                _ => None,
                            };
                            slot.breaker.record_failure();
                            last = Some(error);
                            let cap = Duration::from_millis(self.settings.retry_after_ms_max);
                            match retry_after {
                                Some(wait) if is_last && !retried && wait <= cap => {
                                    retried = true;
                                    tokio::time::sleep(wait).await;
                                    continue;
                                }
                                _ => break,
                            }
                        }
                    }
                }
            }
        }
        self.count_attempts(&attempts);
        self.record_failure(key, &plan.requested, began, in_session);
        Err(GatewayError::AllFailed { attempts, last })
    }

    fn count_attempts(&self, attempts: &[Attempt]) {
        let m = &self.accounts.metrics;
        for (i, a) in attempts.iter().enumerate() {
            m.inc("voxgate_gateway_attempts_total", &[("provider", &a.provider), ("model", &a.model), ("result", &a.result)]);
            if a.result != "ok" && i + 1 < attempts.len() {
                m.inc("voxgate_gateway_fallbacks_total", &[("reason", &a.result)]);
            }
        }
        // Only the providers this request touched can have changed state.
        for a in attempts.iter().filter(|a| a.result != "skipped_breaker_open") {
            if let Some(slot) = self.providers.get(&a.provider) {
                let open = slot.breaker.state() == super::breaker::BreakerState::Open;
                m.set("voxgate_gateway_breaker_open", &[("provider", &slot.id)], if open { 1.0 } else { 0.0 });
            }
        }
    }

    fn record_failure(&self, key: &str, requested: &str, began: Instant, in_session: bool) {
        self.accounts.metrics.inc("voxgate_gateway_requests_total", &[("model", requested), ("outcome", "error")]);
        let latency = began.elapsed();
        self.accounts.usage.record(&Record {
            key: key.to_string(),
            model: requested.to_string(),
            outcome: Outcome::Error,
            usage: Usage::default(),
            cost_picousd: 0,
            fell_back: false,
            ttft: None,
            latency,
            usage_estimated: false,
        });
        if let (false, Some(sink)) = (in_session, self.accounts.sink.get()) {
            sink(FinishedRequest {
                id: format!("chatcmpl-{}", super::ids::time_ordered_suffix()),
                key: key.to_string(),
                model: requested.to_string(),
                outcome: Outcome::Error,
                usage: Usage::default(),
                cost_picousd: 0,
                latency,
                usage_estimated: false,
            });
        }
    }
}

struct ProbeRelease(Arc<ProviderSlot>, Permit);

impl Drop for ProbeRelease {
    fn drop(&mut self) {
        self.0.breaker.release(self.1);
    }
}

/// Call one model and wait for its first content event (holding back role-only and empty
/// frames), within the deadlines of the plan. A whole (non-streaming) answer is read to its end
/// before it is committed, so that an answer that turns out broken can still fall back.
async fn attempt(
    slot: &ProviderSlot,
    model: &ModelConfig,
    request: &ChatRequest,
    plan: &Plan,
) -> Result<(VecDeque<Event>, EventStream), ProviderError> {
    let until_content = async {
        let sent = timeout(plan.headers, slot.provider.send(request, &model.upstream, request.stream)).await;
        let mut stream = sent.map_err(|_| {
            ProviderError::Timeout(format!("no response status and headers within headers_ms_max ({} ms)", plan.headers.as_millis()))
        })??;
        let mut held = VecDeque::new();
        let mut finished = false;
        loop {
            match timeout(plan.idle, stream.next()).await {
                Err(_) => {
                    return Err(ProviderError::Timeout(format!(
                        "the stream went quiet for {} ms before its first token (idle_ms_max)",
                        plan.idle.as_millis()
                    )));
                }
                // Ended: an empty answer is still an answer, an unfinished one is broken.
                // (The provider's stream is finished and must not be polled again.)
                Ok(None) if finished => return Ok((held, Box::pin(futures::stream::empty()) as EventStream)),
                Ok(None) => return Err(unfinished()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(event))) => {
                    finished |= matches!(event, Event::Finish(_));
                    let content = event.is_content();
                    held.push_back(event);
                    if content && request.stream {
                        return Ok((held, stream));
                    }
                }
            }
        }
    };
    let (limit, what) =
        if request.stream { (plan.ttft, "no first token within ttft_ms_max") } else { (plan.timeout, "no answer within timeout_ms") };
    match timeout(limit, until_content).await {
        Ok(result) => result,
        Err(_) => Err(ProviderError::Timeout(format!("{what} ({} ms)", limit.as_millis()))),
    }
}

/// The error of an answer whose stream ended without a finish reason.
fn unfinished() -> ProviderError {
    ProviderError::stream("the upstream ended the answer without a finish reason (truncated)")
}

/// The characters of a request's text (messages, tool calls, tool definitions' names and
/// descriptions are left out): what the input tokens are estimated from when the upstream never
/// reports usage.
fn request_chars(request: &ChatRequest) -> usize {
    use super::types::Message;
    request
        .messages
        .iter()
        .map(|m| match m {
            Message::System { content, .. } | Message::User { content, .. } | Message::Tool { content, .. } => content_chars(content),
            Message::Assistant { content, tool_calls, .. } => {
                content.as_ref().map_or(0, content_chars)
                    + tool_calls.iter().flatten().map(|c| c.function.name.len() + c.function.arguments.len()).sum::<usize>()
            }
        })
        .sum()
}

fn content_chars(content: &super::types::Content) -> usize {
    match content {
        super::types::Content::Text(s) => s.len(),
        super::types::Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_ref()).map(String::len).sum(),
    }
}

struct Accounting {
    accounts: Arc<Accounts>,
    slot: Arc<ProviderSlot>,
    prices: ModelConfig,
    key: String,
    id: String,
    in_session: bool,
    began: Instant,
    ttft: Option<Duration>,
    fell_back: bool,
    usage: Usage,
    /// The upstream reported `usage` (else it is estimated when the request is recorded).
    usage_seen: bool,
    input_chars: usize,
    /// Text and tool-call characters handed on so far.
    output_chars: usize,
    done: bool,
}

impl Accounting {
    fn finish(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let estimated = !self.usage_seen;
        if estimated {
            // The upstream answered (and will bill) but its count never arrived.
            self.usage = Usage {
                input_tokens: estimate_tokens(self.input_chars),
                output_tokens: estimate_tokens(self.output_chars),
                ..Usage::default()
            };
            tracing::info!(
                model = %self.prices.id,
                input_tokens = self.usage.input_tokens,
                output_tokens = self.usage.output_tokens,
                "the upstream reported no usage; the tokens are estimated"
            );
        }
        let cost = cost_picousd(&self.usage, &self.prices);
        let model = self.prices.id.as_str();
        let m = &self.accounts.metrics;
        m.inc("voxgate_gateway_requests_total", &[("model", model), ("outcome", outcome.as_str())]);
        for (kind, n) in [
            ("input", self.usage.input_tokens),
            ("output", self.usage.output_tokens),
            ("cached_input", self.usage.cached_input_tokens),
            ("cache_write", self.usage.cache_write_tokens),
        ] {
            if n > 0 {
                m.add("voxgate_gateway_tokens_total", &[("model", model), ("kind", kind)], n as f64);
            }
        }
        m.add("voxgate_gateway_cost_usd_total", &[("model", model)], super::usage::picousd_to_usd(cost));
        if let Some(t) = self.ttft {
            m.observe("voxgate_gateway_ttft_seconds", &[("model", model)], t.as_secs_f64());
        }
        let latency = self.began.elapsed();
        if outcome == Outcome::Ok {
            m.observe("voxgate_gateway_request_duration_seconds", &[("model", model)], latency.as_secs_f64());
        }
        self.accounts.usage.record(&Record {
            key: self.key.clone(),
            model: model.to_string(),
            outcome,
            usage: self.usage,
            cost_picousd: cost,
            fell_back: self.fell_back,
            ttft: self.ttft,
            latency,
            usage_estimated: estimated,
        });
        if !self.in_session {
            if let Some(sink) = self.accounts.sink.get() {
                sink(FinishedRequest {
                    id: self.id.clone(),
                    key: self.key.clone(),
                    model: model.to_string(),
                    outcome,
                    usage: self.usage,
                    cost_picousd: cost,
                    latency,
                    usage_estimated: estimated,
                });
            }
        }
    }
}

/// A committed answer: the model that serves it is fixed. Read it with [`Answer::next`]; the
/// usage is recorded when it ends, or as cancelled when it is dropped before its end.
pub struct Answer {
    pub id: String,
    pub created: u64,
    /// The catalog id of the model that served.
    pub model: String,
    pub attempts: Vec<Attempt>,
    held: VecDeque<Event>,
    stream: Option<EventStream>,
    idle: Duration,
    accounting: Accounting,
    /// A finish reason has been handed on.
    finished: bool,
}

impl Answer {
    /// The next event; `None` after the end. After an `Err` the answer is over: the HTTP layer
    /// reports it in-band (content may already have reached the client).
    pub async fn next(&mut self) -> Option<Result<Event, ProviderError>> {
        let event = match self.held.pop_front() {
            Some(e) => Ok(e),
            None => {
                let stream = self.stream.as_mut()?;
                match timeout(self.idle, stream.next()).await {
                    Ok(Some(r)) => r,
                    Ok(None) if self.finished => {
                        self.stream = None;
                        self.accounting.finish(Outcome::Ok);
                        return None;
                    }
                    // A truncated answer must never look complete.
                    Ok(None) => Err(unfinished()),
                    Err(_) => Err(ProviderError::Timeout(format!("the stream went quiet for {} ms (idle_ms_max)", self.idle.as_millis()))),
                }
            }
        };
        match event {
            Ok(Event::Usage(u)) => {
                self.accounting.usage = u;
                self.accounting.usage_seen = true;
                Some(Ok(Event::Usage(u)))
            }
            Ok(e) => {
                match &e {
                    Event::Text(t) => self.accounting.output_chars += t.len(),
                    Event::ToolCallStart { name, .. } => self.accounting.output_chars += name.len(),
                    Event::ToolCallArgs { arguments, .. } => self.accounting.output_chars += arguments.len(),
                    Event::Finish(_) => self.finished = true,
                    Event::Usage(_) => {}
                }
                Some(Ok(e))
            }
            Err(e) if self.finished => {
                // The answer was complete (its finish reason went out); only what follows it,
                // usage, was lost. It ends as a complete answer, its tokens estimated if need be.
                tracing::warn!(model = %self.model, error = %e, "the upstream broke after the finish reason; the answer stands");
                self.stream = None;
                self.accounting.finish(Outcome::Ok);
                None
            }
            Err(e) => {
                // Drop the upstream at once; the provider failed mid-answer.
                self.stream = None;
                self.held.clear();
                self.accounting.slot.breaker.record_failure();
                self.accounting.finish(Outcome::Error);
                Some(Err(e))
            }
        }
    }

    /// `model=result` for each attempt, for the `x-voxgate-attempts` header.
    pub fn attempts_header(&self) -> String {
        attempts_header(&self.attempts)
    }

    /// The route's `idle_ms_max` for a streamed answer (`timeout_ms` for a whole one): also how
    /// long the HTTP layer lets a client leave a streamed answer unread before it drops it.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The usage booked for this answer once it has ended (`None` before): the upstream's count,
    /// or an estimate (`true`) when it sent none.
    pub fn booked_usage(&self) -> Option<(Usage, bool)> {
        self.accounting.done.then_some((self.accounting.usage, !self.accounting.usage_seen))
    }
}

pub fn attempts_header(attempts: &[Attempt]) -> String {
    attempts.iter().map(|a| format!("{}={}", a.model, a.result)).collect::<Vec<_>>().join(", ")
}

impl Drop for Answer {
    fn drop(&mut self) {
        // Dropping the stream closes the upstream connection; record what we know.
        self.stream = None;
        self.accounting.finish(Outcome::Cancelled);
    }
}
