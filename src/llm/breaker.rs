//! A per-provider circuit breaker: after `failures_max` consecutive failures the provider is
//! skipped for `cooldown`; then one request is let through as a probe. A success closes the
//! breaker, a failed probe opens it again.
//!
//! The state is a few words behind a `std::sync::Mutex` touched once or twice per request, never
//! held across an await. Time is `tokio::time::Instant` so tests can pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Leave to send one request; `probe` when it is the half-open breaker's single probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub probe: bool,
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub struct Breaker {
    failures_max: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(failures_max: u32, cooldown: Duration) -> Self {
        Breaker {
            failures_max: failures_max.max(1),
            cooldown,
            inner: Mutex::new(Inner { consecutive_failures: 0, open_until: None, probe_in_flight: false }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.open_until {
            None => BreakerState::Closed,
            Some(until) if Instant::now() < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// May a request go to this provider now? `None`: no (open, or a probe is already out).
    /// In half-open state the one request let through holds the probe.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut inner = self.lock();
        match inner.open_until {
            None => Some(Permit { probe: false }),
            Some(until) if Instant::now() < until => None,
            Some(_) if inner.probe_in_flight => None,
            Some(_) => {
                inner.probe_in_flight = true;
                Some(Permit { probe: true })
            }
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.open_until = None;
        inner.probe_in_flight = false;
    }

    /// A failure that says something about the provider's health (not the client's request).
    pub fn record_failure(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let was_probe = inner.probe_in_flight;
        inner.probe_in_flight = false;
        if was_probe || inner.consecutive_failures >= self.failures_max {
            inner.open_until = Some(now + self.cooldown);
        }
    }

    /// Open at once, whatever the count: the provider refused our credentials or our quota is
    /// spent, so every request to it would fail the same way until an operator acts (or the
    /// cooldown's probe finds it fixed).
    pub fn trip(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.max(self.failures_max);
        inner.probe_in_flight = false;
        inner.open_until = Some(Instant::now() + self.cooldown);
    }

    /// The probe ended without a verdict (the client went away, or the request itself was
    /// at fault): free the slot for the next probe. Only the probe's holder calls this.
    pub fn release(&self, permit: Permit) {
        if permit.probe {
            self.lock().probe_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes() {
        let b = Breaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            assert!(b.try_acquire().is_some());
            b.record_failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_some());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());

        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(), Some(Permit { probe: true }), "one probe goes through");
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");

        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(b.try_acquire().is_some());
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trip_opens_at_once_and_the_cooldown_probes() {
        let b = Breaker::new(3, Duration::from_secs(30));
        b.trip();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(b.try_acquire(), Some(Permit { probe: true }));
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(30));
        b.record_failure();
        b.record_success();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
