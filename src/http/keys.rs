//! API keys and their live limits. [`KeyBook`] holds only SHA-256 hashes of the keys and finds the
//! presented key by comparing its hash with every stored hash in constant time; [`KeyState`] counts
//! a key's concurrent voice sessions and meters its gateway requests and tokens per minute.
//!
//! Per-minute limits are token buckets on `tokio::time::Instant` (so tests can pause time): a bucket
//! holds at most a minute's allowance (`limit`) and refills continuously at `limit` per 60 s. A key
//! may spend its whole allowance in a burst; after that, one more unit every `60 s / limit`. This is
//! how OpenAI's own limits behave, it needs O(1) memory per key, and the wait until the next unit is
//! exact, which is what `Retry-After` reports. Requests take one unit before the gateway call; tokens
//! are charged after the answer (its usage is known only then) and may drive the bucket below zero,
//! so a large answer delays the next request until its tokens have been paid back.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::keys::{sha256, KeyConfig};
use crate::session::{RateBudget, RateLimited, RateLimits};

/// The window a per-minute limit refills over.
pub const WINDOW: Duration = Duration::from_secs(60);
const WINDOW_NS: i128 = 60_000_000_000;

/// `share_percent` of `server_max_sessions`, rounded up, at least 1.
pub fn session_share(server_max_sessions: usize, share_percent: u8) -> u32 {
    let share = (server_max_sessions as u64 * u64::from(share_percent)).div_ceil(100).max(1);
    u32::try_from(share).unwrap_or(u32::MAX)
}

/// Every configured key, by hash.
#[derive(Debug, Default)]
pub struct KeyBook {
    keys: Vec<Arc<KeyState>>,
}

/// What a presented key is.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// No keys are configured: everyone is `anonymous`.
    Anonymous,
    Key(Arc<KeyState>),
    /// A configured key marked `revoked = true`; holds its name.
    Revoked(String),
    Unknown,
}

impl KeyBook {
    /// Each key with its own limits only (a key without `max_sessions` may open any number).
    pub fn new(keys: &[KeyConfig]) -> Self {
        KeyBook { keys: keys.iter().map(|k| Arc::new(KeyState::new(k.clone()))).collect() }
    }

    /// Each key with its own limits, and a default share of the voice sessions: when more than one
    /// live key is configured, a key without its own `max_sessions` may hold at most
    /// [`session_share`] of the server's `max_sessions`, so no one such key can take every slot.
    pub fn with_session_share(keys: &[KeyConfig], server_max_sessions: usize, share_percent: u8) -> Self {
        let live = keys.iter().filter(|k| !k.revoked).count();
        let share = (live > 1).then(|| session_share(server_max_sessions, share_percent));
        let state = |k: &KeyConfig| {
            let mut state = KeyState::new(k.clone());
            if let (None, Some(share)) = (k.max_sessions, share) {
                state.max_sessions = share;
            }
            Arc::new(state)
        };
        KeyBook { keys: keys.iter().map(state).collect() }
    }

    /// No keys: the server is open (it then listens on loopback only).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose hash matches `presented` (trimmed). Every stored hash is compared, each in
    /// constant time, so the time taken says nothing about which key nearly matched.
    pub fn lookup(&self, presented: &str) -> Lookup {
        if self.keys.is_empty() {
            return Lookup::Anonymous;
        }
        let hash = sha256(presented.trim().as_bytes());
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&hash, &key.config.sha256) {
                found = Some(key);
            }
        }
        match found {
            None => Lookup::Unknown,
            Some(k) if k.config.revoked => Lookup::Revoked(k.config.name.clone()),
            Some(k) => Lookup::Key(k.clone()),
        }
    }

    /// The live state of the key named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<KeyState>> {
        self.keys.iter().find(|k| k.config.name == name)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A limit that was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `sessions`, `requests` or `tokens`.
    pub kind: &'static str,
    pub limit: u64,
    /// How long until the limit lets the next one through (zero for sessions: when one ends).
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_s(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// OpenAI's wording for a per-minute limit: which key, which limit, when to try again.
    pub fn message(&self, key: &str) -> String {
        let what = if self.kind == "tokens" { "tokens per min (TPM)" } else { "requests per min (RPM)" };
        format!("Rate limit reached for API key {key:?} on {what}: Limit {}. Please try again in {}s.", self.limit, self.retry_after_s())
    }
}

/// A per-minute limit's state, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// One key: its configuration and live counters.
pub struct KeyState {
    pub config: KeyConfig,
    /// Concurrent voice sessions allowed: the key's own `max_sessions`, else its default share
    /// ([`KeyBook::with_session_share`]), else unlimited (`u32::MAX`).
    max_sessions: u32,
    sessions: AtomicU32,
    requests: Option<Mutex<Bucket>>,
    tokens: Option<Mutex<Bucket>>,
}

impl fmt::Debug for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyState").field("config", &self.config).field("sessions", &self.sessions.load(Ordering::Relaxed)).finish()
    }
}

impl KeyState {
    pub fn new(config: KeyConfig) -> Self {
        let now = Instant::now();
        KeyState {
            max_sessions: config.max_sessions.unwrap_or(u32::MAX),
            sessions: AtomicU32::new(0),
            requests: config.requests_per_minute.map(|l| Mutex::new(Bucket::full(u64::from(l), now))),
            tokens: config.tokens_per_minute.map(|l| Mutex::new(Bucket::full(l, now))),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether any per-minute gateway limit is set (then responses carry `x-ratelimit-*` headers).
    pub fn has_gateway_limits(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    /// Open a voice session if the key has a slot free; the guard frees it on drop.
    pub fn try_open_session(self: &Arc<Self>) -> Result<SessionGuard, Limited> {
        let max = self.max_sessions;
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map(|_| SessionGuard { key: self.clone() })
            .map_err(|_| Limited { kind: "sessions", limit: u64::from(max), retry_after: Duration::ZERO })
    }

    /// Voice sessions open now.
    pub fn sessions_open(&self) -> u32 {
        self.sessions.load(Ordering::Acquire)
    }

    /// Admit one gateway request: refused when the request bucket is empty, or when the token
    /// bucket has nothing left (the last minute's tokens reached the limit). Takes one request.
    pub fn try_request(&self) -> Result<(), Limited> {
        let now = Instant::now();
        let mut requests = self.requests.as_ref().map(lock);
        if let Some(bucket) = requests.as_mut() {
            bucket.refill(now);
            if let Some(wait) = bucket.wait_for_one() {
                return Err(Limited { kind: "requests", limit: bucket.limit, retry_after: wait });
            }
        }
        if let Some(mut bucket) = self.tokens.as_ref().map(lock) {
            bucket.refill(now);
            if let Some(wait) = bucket.wait_for_one() {
                return Err(Limited { kind: "tokens", limit: bucket.limit, retry_after: wait });
            }
        }
        if let Some(bucket) = requests.as_mut() {
            bucket.take(1);
        }
        Ok(())
    }

    /// Charge the tokens of a finished (or abandoned) request.
    pub fn record_tokens(&self, tokens: u64) {
        if let Some(mut bucket) = self.tokens.as_ref().map(lock) {
            bucket.refill(Instant::now());
            bucket.take(tokens);
        }
    }

    /// The request budget now, if the key has a requests-per-minute limit.
    pub fn requests_budget(&self) -> Option<Budget> {
        self.requests.as_ref().map(|b| lock(b).budget(Instant::now()))
    }

    /// The token budget now, if the key has a tokens-per-minute limit.
    pub fn tokens_budget(&self) -> Option<Budget> {
        self.tokens.as_ref().map(|b| lock(b).budget(Instant::now()))
    }
}

/// A voice session's LLM calls count against the key's per-minute limits exactly as gateway
/// requests do (one bucket per key, shared by both).
impl RateLimits for KeyState {
    fn try_request(&self) -> Result<(), RateLimited> {
        KeyState::try_request(self).map_err(|l| RateLimited {
            name: if l.kind == "tokens" { "tokens" } else { "requests" },
            limit: l.limit,
            retry_after: l.retry_after,
            message: l.message(self.name()),
        })
    }

    fn record_tokens(&self, tokens: u64) {
        KeyState::record_tokens(self, tokens);
    }

    fn budgets(&self) -> Vec<RateBudget> {
        let named = [("requests", self.requests_budget()), ("tokens", self.tokens_budget())];
        named
            .into_iter()
            .filter_map(|(name, b)| b.map(|b| RateBudget { name, limit: b.limit, remaining: b.remaining, reset: b.reset }))
            .collect()
    }
}

fn lock(m: &Mutex<Bucket>) -> MutexGuard<'_, Bucket> {
    // A bucket is a few integers updated without panicking paths; a poisoned one is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held for as long as a voice session runs; frees the key's session slot when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    key: Arc<KeyState>,
}

impl SessionGuard {
    pub fn key(&self) -> &Arc<KeyState> {
        &self.key
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.key.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket in exact integers: `level` is in units of 1/60e9 of one unit (a unit-nanosecond
/// of refill at one unit per minute), so refilling `limit` units per 60 s adds `limit` per ns.
#[derive(Debug)]
struct Bucket {
    limit: u64,
    level: i128,
    updated: Instant,
}

impl Bucket {
    fn full(limit: u64, now: Instant) -> Self {
        Bucket { limit, level: Self::capacity(limit), updated: now }
    }

    fn capacity(limit: u64) -> i128 {
        i128::from(limit) * WINDOW_NS
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ns = i128::try_from(now.saturating_duration_since(self.updated).as_nanos()).unwrap_or(i128::MAX / 2);
        let added = elapsed_ns.saturating_mul(i128::from(self.limit));
        self.level = self.level.saturating_add(added).min(Self::capacity(self.limit));
        self.updated = now;
    }

    /// `None` when one unit is available, else how long until it is.
    fn wait_for_one(&self) -> Option<Duration> {
        let missing = WINDOW_NS - self.level;
        (missing > 0).then(|| Duration::from_nanos(ceil_div(missing, i128::from(self.limit))))
    }

    fn take(&mut self, units: u64) {
        self.level = self.level.saturating_sub(i128::from(units).saturating_mul(WINDOW_NS));
    }

    fn budget(&mut self, now: Instant) -> Budget {
        self.refill(now);
        let remaining = u64::try_from(self.level.max(0) / WINDOW_NS).unwrap_or(u64::MAX);
        let missing = Self::capacity(self.limit) - self.level;
        Budget { limit: self.limit, remaining, reset: Duration::from_nanos(ceil_div(missing, i128::from(self.limit))) }
    }
}

/// `a / b` rounded up, for a ≥ 0 and b > 0, as nanoseconds (saturating).
fn ceil_div(a: i128, b: i128) -> u64 {
    let q = (a + b - 1) / b.max(1);
    u64::try_from(q.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, plain: &str) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            sha256: sha256(plain.as_bytes()),
            rate_microusd_per_hour: None,
            max_sessions: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            revoked: false,
        }
    }

    #[test]
    fn the_book_holds_hashes_not_keys() {
        let plain = "vk-plain-secret-123";
        let book = KeyBook::new(&[key("a", plain), KeyConfig { revoked: true, ..key("old", "vk-old-secret-456") }]);
        let debug = format!("{book:?}");
        assert!(!debug.contains(plain) && !debug.contains("vk-old-secret-456"), "{debug}");
        // Nor the whole hash: only a fingerprint prints.
        let hex: String = sha256(plain.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert!(!debug.contains(&hex), "{debug}");
        // The stored fields are a name, a hash, a rate, limits and a flag; the only text is the name.
        let stored = &book.keys[0].config;
        assert_eq!((stored.name.as_str(), stored.sha256), ("a", sha256(plain.as_bytes())));
        assert!(matches!(book.lookup(plain), Lookup::Key(k) if k.name() == "a"));
        assert!(matches!(book.lookup(&format!(" {plain} ")), Lookup::Key(_)), "trimmed like a bearer token");
        assert!(matches!(book.lookup("vk-old-secret-456"), Lookup::Revoked(n) if n == "old"));
        assert!(matches!(book.lookup("nope"), Lookup::Unknown));
        assert!(matches!(KeyBook::new(&[]).lookup("anything"), Lookup::Anonymous));
    }

    #[test]
    fn sessions_are_counted_and_freed_on_drop() {
        let state = Arc::new(KeyState::new(KeyConfig { max_sessions: Some(2), ..key("a", "k") }));
        let one = state.try_open_session().unwrap();
        let two = state.try_open_session().unwrap();
        let refused = state.try_open_session().unwrap_err();
        assert_eq!((refused.kind, refused.limit), ("sessions", 2));
        drop(one);
        let _three = state.try_open_session().unwrap();
        assert_eq!(state.sessions_open(), 2);
        drop(two);
        assert_eq!(state.sessions_open(), 1);
    }

    #[test]
    fn keys_without_their_own_session_limit_share_the_slots() {
        let own = KeyConfig { max_sessions: Some(7), ..key("own", "k1") };
        let book = KeyBook::with_session_share(&[key("a", "k2"), own.clone(), key("b", "k3")], 10, 50);
        let limit = |name: &str| book.by_name(name).unwrap().max_sessions;
        assert_eq!((limit("a"), limit("b"), limit("own")), (5, 5, 7));
        let a = book.by_name("a").unwrap();
        let _held: Vec<SessionGuard> = (0..5).map(|_| a.try_open_session().unwrap()).collect();
        assert_eq!((a.try_open_session().unwrap_err().limit), 5);
        // One live key alone may use every slot (a revoked one does not count).
        let gone = KeyConfig { revoked: true, ..key("gone", "k4") };
        let book = KeyBook::with_session_share(&[key("a", "k2"), gone], 10, 50);
        assert_eq!(book.by_name("a").unwrap().max_sessions, u32::MAX);
        // Rounded up, never 0.
        assert_eq!((session_share(3, 50), session_share(1, 10), session_share(1000, 100)), (2, 1, 1000));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_refill_continuously_and_retry_after_is_exact() {
        let state = KeyState::new(KeyConfig { requests_per_minute: Some(3), ..key("a", "k") });
        for _ in 0..3 {
            state.try_request().unwrap();
        }
        let limited = state.try_request().unwrap_err();
        assert_eq!((limited.kind, limited.limit, limited.retry_after), ("requests", 3, Duration::from_secs(20)));
        assert_eq!(limited.retry_after_s(), 20);
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(state.try_request().unwrap_err().retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        state.try_request().unwrap();
        assert!(state.try_request().is_err());
        tokio::time::advance(WINDOW).await;
        assert_eq!(state.requests_budget().unwrap(), Budget { limit: 3, remaining: 3, reset: Duration::ZERO });
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_charged_after_and_refuse_once_spent() {
        let state = KeyState::new(KeyConfig { tokens_per_minute: Some(100), ..key("a", "k") });
        state.try_request().unwrap();
        state.record_tokens(60);
        state.try_request().unwrap();
        assert_eq!(state.tokens_budget().unwrap().remaining, 40);
        // This one goes over: 150 of 100; the next waits until the 50 owed and 1 more are back.
        state.record_tokens(90);
        let limited = state.try_request().unwrap_err();
        assert_eq!((limited.kind, limited.limit), ("tokens", 100));
        assert_eq!(limited.retry_after, Duration::from_millis(30_600));
        assert_eq!(limited.retry_after_s(), 31);
        tokio::time::advance(limited.retry_after).await;
        state.try_request().unwrap();
    }

    #[test]
    fn odd_rates_round_up() {
        let now = Instant::now();
        let mut b = Bucket::full(7, now);
        b.take(7);
        // 60/7 s = 8.571428571…s, rounded up to the nanosecond.
        assert_eq!(b.wait_for_one(), Some(Duration::from_nanos(8_571_428_572)));
        let l = Limited { kind: "requests", limit: 7, retry_after: b.wait_for_one().unwrap() };
        assert_eq!(l.retry_after_s(), 9);
    }
}
