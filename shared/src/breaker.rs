//! A circuit breaker per upstream endpoint: closed → open after
//! `failure_threshold` consecutive failures → half-open after `recovery_timeout`
//! with at most `half_open_probes` calls in flight → closed on a probe's success,
//! open again on its failure.
//!
//! We keep our own small breaker rather than `failsafe` because its clock cannot
//! be driven by `tokio::time::pause()`, and its state is not observable enough for
//! the logging and metrics every transition needs here. Time is
//! `tokio::time::Instant`, so tests advance it instead of sleeping.
//!
//! # Examples
//! ```
//! use proxybus_shared::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
//! let breaker = CircuitBreaker::new("http://pool:8080", BreakerConfig { failure_threshold: 2, ..Default::default() });
//! for _ in 0..2 {
//!     breaker.try_acquire().unwrap().failure();
//! }
//! assert_eq!(breaker.state(), BreakerState::Open);
//! assert!(breaker.try_acquire().is_err());
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 5).
    pub failure_threshold: u32,
    /// How long it stays open before probing (default 30 s).
    pub recovery_timeout: Duration,
    /// Calls allowed in flight while half-open (default 1).
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, recovery_timeout: Duration::from_secs(30), half_open_probes: 1 }
    }
}

/// State of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the recovery timeout has passed.
    Open,
    /// A limited number of probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// Lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker of {name} is {state}")]
pub struct BreakerOpen {
    /// The breaker's name (a redacted endpoint).
    pub name: String,
    /// Its state (`open`, or `half_open` with every probe slot taken).
    pub state: BreakerState,
}

type TransitionHook = Arc<dyn Fn(&str, BreakerState, BreakerState) + Send + Sync>;

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    opened_count: u64,
}

/// A circuit breaker; share it with `Arc`.
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    on_transition: Option<TransitionHook>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker").field("name", &self.name).field("state", &self.state()).finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker; `name` appears in logs and metrics, so pass a redacted endpoint.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        Self {
            name: name.into(),
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probes_in_flight: 0,
                opened_count: 0,
            }),
            on_transition: None,
        }
    }

    /// Calls `hook(name, from, to)` on every state change (besides the WARN log
    /// and the `proxybus_breaker_transitions_total` counter every change gets).
    pub fn with_transition_hook(
        mut self,
        hook: impl Fn(&str, BreakerState, BreakerState) + Send + Sync + 'static,
    ) -> Self {
        self.on_transition = Some(Arc::new(hook));
        self
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state (an open breaker whose recovery timeout has passed reports half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner);
        inner.state
    }

    /// How many times the breaker has opened.
    pub fn opened_count(&self) -> u64 {
        self.lock().opened_count
    }

    /// Consecutive failures counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.lock().consecutive_failures
    }

    /// Asks to make a call. The permit must be resolved with
    /// [`success`](BreakerPermit::success) or [`failure`](BreakerPermit::failure);
    /// a permit dropped unresolved (a cancelled call) counts as neither.
    pub fn try_acquire(self: &CircuitBreaker) -> Result<BreakerPermit<'_>, BreakerOpen> {
        let mut inner = self.lock();
        self.advance(&mut inner);
        match inner.state {
            BreakerState::Closed => Ok(BreakerPermit { breaker: self, probe: false, resolved: false }),
            BreakerState::HalfOpen if inner.probes_in_flight < self.config.half_open_probes => {
                inner.probes_in_flight += 1;
                Ok(BreakerPermit { breaker: self, probe: true, resolved: false })
            }
            state => Err(BreakerOpen { name: self.name.clone(), state }),
        }
    }

    /// Closes the breaker from outside (a health probe saw the endpoint recover).
    pub fn record_recovery(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        if inner.state != BreakerState::Closed {
            self.transition(&mut inner, BreakerState::Closed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn advance(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open
            && inner.opened_at.is_some_and(|at| at.elapsed() >= self.config.recovery_timeout)
        {
            inner.probes_in_flight = 0;
            self.transition(inner, BreakerState::HalfOpen);
        }
    }

    fn on_result(&self, probe: bool, success: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
        if success {
            inner.consecutive_failures = 0;
            if inner.state == BreakerState::HalfOpen && probe {
                self.transition(&mut inner, BreakerState::Closed);
            }
            return;
        }
        match inner.state {
            BreakerState::Closed => {
                inner.consecutive_failures += 1;
                if inner.consecutive_failures >= self.config.failure_threshold {
                    self.open(&mut inner);
                }
            }
            BreakerState::HalfOpen if probe => self.open(&mut inner),
            _ => {}
        }
    }

    fn on_cancel(&self, probe: bool) {
        if probe {
            let mut inner = self.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }

    fn open(&self, inner: &mut Inner) {
        inner.opened_at = Some(Instant::now());
        inner.opened_count += 1;
        self.transition(inner, BreakerState::Open);
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        if to == BreakerState::Closed {
            inner.consecutive_failures = 0;
            inner.opened_at = None;
        }
        tracing::warn!(breaker = %self.name, from = %from, to = %to, "circuit breaker state change");
        metrics::counter!("proxybus_breaker_transitions_total", "breaker" => self.name.clone(), "to" => to.as_str())
            .increment(1);
        if let Some(hook) = &self.on_transition {
            hook(&self.name, from, to);
        }
    }
}

/// Permission to make one call through a breaker.
#[derive(Debug)]
#[must_use = "resolve the permit with success() or failure()"]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    resolved: bool,
}

impl BreakerPermit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        self.resolved = true;
        self.breaker.on_result(self.probe, true);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.resolved = true;
        self.breaker.on_result(self.probe, false);
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.breaker.on_cancel(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new("http://pool:8080", BreakerConfig::default())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_once_after_recovery_timeout() {
        let transitions = Arc::new(AtomicUsize::new(0));
        let seen = transitions.clone();
        let breaker = breaker().with_transition_hook(move |_, _, _| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        for _ in 0..4 {
            breaker.try_acquire().unwrap().failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed, "4 failures are below the threshold of 5");
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.try_acquire().unwrap_err().state, BreakerState::Open);

        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        assert!(breaker.try_acquire().is_err(), "only one probe in flight");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(transitions.load(Ordering::SeqCst), 3, "closed→open→half_open→closed");
        assert_eq!(breaker.opened_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_recovery_timeout() {
        let breaker = breaker();
        for _ in 0..5 {
            breaker.try_acquire().unwrap().failure();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(breaker.try_acquire().is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.try_acquire().is_ok());
        assert_eq!(breaker.opened_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count_and_a_cancelled_probe_frees_its_slot() {
        let breaker = breaker();
        for _ in 0..4 {
            breaker.try_acquire().unwrap().failure();
        }
        breaker.try_acquire().unwrap().success();
        for _ in 0..4 {
            breaker.try_acquire().unwrap().failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(breaker.try_acquire().unwrap());
        assert!(breaker.try_acquire().is_ok(), "a dropped probe gives its slot back");
        breaker.record_recovery();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
