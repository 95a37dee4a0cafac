//! Health of each proxy, from three sources that meet in the [`Selector`](crate::Selector):
//!
//! - `HealthStats` pushed by the aggregator (`POST /api/v1/proxy/health`) or
//!   published on `proxy.v1.health.{region}` ([`listen_health`]); the newest per
//!   proxy wins, and `HealthStats::usable_for` decides (ejection, per-exchange bans);
//! - feedback posted to `POST /api/v1/proxy/feedback`, folded here by [`LocalHealth`]:
//!   consecutive connection failures eject the proxy for a while (Envoy's outlier
//!   detection), and 451/403 ban it, 429/418 cool it down, **for that exchange only**;
//! - optional active checks ([`crate::active_check`]).
//!
//! A proxy is selectable only when every source agrees. Time here is
//! `tokio::time::Instant`, so tests drive it with `tokio::time::pause()`.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use proxybus_shared::{Codec, ErrorKind, ExchangeId, FeedbackPhase, ProxyFeedback};
use tokio::time::Instant;

use crate::selector::Selector;

/// Thresholds of the local outlier detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthOptions {
    /// Consecutive failures (other than exchange bans) that eject a proxy; 0 disables.
    pub consecutive_failures: u32,
    /// Base ejection time; the n-th ejection in a row lasts n times as long (at most 10×).
    pub ejection: Duration,
    /// Ban of a proxy for one exchange after a 451 or 403 without `Retry-After`.
    pub ban: Duration,
    /// Cool-down of a proxy for one exchange after a 429 or 418 without `Retry-After`.
    pub cooldown: Duration,
    /// Failed active checks in a row that take a proxy out.
    pub unhealthy_checks: u32,
    /// Passed active checks in a row that bring it back.
    pub healthy_checks: u32,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
            ban: Duration::from_secs(600),
            cooldown: Duration::from_secs(60),
            unhealthy_checks: 2,
            healthy_checks: 1,
        }
    }
}

/// What this service itself learned about one proxy.
#[derive(Debug, Clone, Default)]
pub struct LocalHealth {
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Ejections in a row (reset by a success after the ejection ends).
    pub ejections: u32,
    /// End of the current ejection.
    pub ejected_until: Option<Instant>,
    /// Bans and cool-downs per exchange, until when.
    pub barred: HashMap<ExchangeId, Instant>,
    /// Active checks failed in a row.
    pub check_failures: u32,
    /// Active checks passed in a row.
    pub check_passes: u32,
    /// Whether active checks took the proxy out.
    pub check_down: bool,
}

impl LocalHealth {
    /// Whether this service's own observations allow `exchange` at `now`.
    pub fn usable_for(&self, exchange: &ExchangeId, now: Instant) -> bool {
        !self.check_down && !self.ejected(now) && self.barred.get(exchange).is_none_or(|until| *until <= now)
    }

    /// Whether the proxy is ejected at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
    }

    /// Whether the proxy is banned or cooling down for `exchange` at `now`.
    pub fn barred_for(&self, exchange: &ExchangeId, now: Instant) -> bool {
        self.barred.get(exchange).is_some_and(|until| *until > now)
    }

    /// Folds one feedback event; returns whether it ejected the proxy.
    pub fn fold(&mut self, feedback: &ProxyFeedback, options: &HealthOptions, now: Instant) -> bool {
        if feedback.success {
            if matches!(feedback.phase, FeedbackPhase::Connected | FeedbackPhase::Request) {
                self.consecutive_failures = 0;
                if !self.ejected(now) {
                    self.ejections = 0;
                }
            }
            return false;
        }
        let kind = feedback.error_kind.or_else(|| feedback.status_code.and_then(ErrorKind::from_status));
        let retry_after = feedback.retry_after_seconds.map(Duration::from_secs);
        match kind {
            Some(ErrorKind::Http451 | ErrorKind::Http403) => {
                self.bar(&feedback.exchange_id, now + retry_after.unwrap_or(options.ban));
                false
            }
            Some(ErrorKind::Http429 | ErrorKind::Http418) => {
                self.bar(&feedback.exchange_id, now + retry_after.unwrap_or(options.cooldown));
                false
            }
            _ => {
                self.consecutive_failures += 1;
                if options.consecutive_failures > 0 && self.consecutive_failures >= options.consecutive_failures {
                    self.ejections = self.ejections.saturating_add(1);
                    self.ejected_until = Some(now + options.ejection * self.ejections.min(10));
                    self.consecutive_failures = 0;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn bar(&mut self, exchange: &ExchangeId, until: Instant) {
        let entry = self.barred.entry(exchange.clone()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Folds one active check; returns whether it changed `check_down`.
    pub fn fold_check(&mut self, passed: bool, options: &HealthOptions) -> bool {
        let was_down = self.check_down;
        if passed {
            self.check_failures = 0;
            self.check_passes = self.check_passes.saturating_add(1);
            if self.check_down && self.check_passes >= options.healthy_checks.max(1) {
                self.check_down = false;
            }
        } else {
            self.check_passes = 0;
            self.check_failures = self.check_failures.saturating_add(1);
            if self.check_failures >= options.unhealthy_checks.max(1) {
                self.check_down = true;
            }
        }
        was_down != self.check_down
    }
}

/// Why the health listener stopped.
#[derive(Debug, thiserror::Error)]
pub enum HealthListenError {
    /// The subscription could not be made.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: &'static str,
        /// The client's error.
        source: async_nats::SubscribeError,
    },
}

/// Applies every `HealthStats` published on `proxy.v1.health.>` to `selector`
/// until `shutdown` resolves. Undecodable messages are counted and skipped.
pub async fn listen_health(
    client: async_nats::Client,
    selector: std::sync::Arc<Selector>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HealthListenError> {
    let subject = proxybus_shared::subject::HEALTH_WILDCARD;
    let mut subscriber =
        client.subscribe(subject).await.map_err(|source| HealthListenError::Subscribe { subject, source })?;
    tracing::info!(subject, "listening for health statistics");
    let codec = Codec::default();
    // What the aggregator stored before this service started (subscribed first,
    // so nothing published meanwhile is missed; older stats never win over newer).
    let loaded = load_stored_health(&client, &selector).await;
    if loaded > 0 {
        tracing::info!(
            proxies = loaded,
            bucket = proxybus_shared::subject::HEALTH_BUCKET,
            "health loaded from the bucket"
        );
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            message = subscriber.next() => {
                let Some(message) = message else { break };
                if let Err(err) = proxybus_shared::subject::parse_health(&message.subject) {
                    tracing::debug!(error = %err, "health message on an unexpected subject");
                }
                match codec.decode(message.headers.as_ref(), &message.payload) {
                    Ok(stats) => {
                        selector.apply_health(stats, crate::metrics::HealthSource::Nats);
                    }
                    Err(err) => {
                        metrics::counter!(crate::metrics::HEALTH_REJECTED, "source" => "nats").increment(1);
                        tracing::warn!(error = %err, subject = %message.subject, "undecodable health statistics");
                    }
                }
            }
        }
    }
    let _ = subscriber.unsubscribe().await;
    Ok(())
}

/// Applies every `HealthStats` in KV bucket `PROXY_HEALTH` (when it exists);
/// returns how many were applied.
pub async fn load_stored_health(client: &async_nats::Client, selector: &Selector) -> usize {
    let js = async_nats::jetstream::new(client.clone());
    let Ok(bucket) = js.get_key_value(proxybus_shared::subject::HEALTH_BUCKET).await else { return 0 };
    let Ok(stored) = proxybus_shared::kv::health_stats(&bucket).await else { return 0 };
    let applied = stored.len();
    for stats in stored.into_values() {
        selector.apply_health(stats, crate::metrics::HealthSource::Nats);
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: ErrorKind, exchange: &str) -> ProxyFeedback {
        serde_json::from_value(serde_json::json!({
            "event_id": "6f1c9a4e-2b0d-4b8e-9a53-0c7f5d7a1e11", "proxy_id": "0011223344556677",
            "proxy_url": "http://h:1", "exchange_id": exchange, "connection_type": "websocket",
            "phase": "failed", "success": false, "error_kind": kind.as_str(),
            "timestamp": "2026-01-01T00:00:00Z", "client_id": "c"
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_growing_time() {
        let options = HealthOptions { consecutive_failures: 3, ..HealthOptions::default() };
        let mut health = LocalHealth::default();
        let binance: ExchangeId = "binance".parse().unwrap();
        for i in 1..=3 {
            let ejected = health.fold(&failure(ErrorKind::Timeout, "binance"), &options, Instant::now());
            assert_eq!(ejected, i == 3);
        }
        assert!(!health.usable_for(&binance, Instant::now()));
        tokio::time::advance(options.ejection).await;
        assert!(health.usable_for(&binance, Instant::now()), "back after the ejection time");
        for _ in 0..3 {
            health.fold(&failure(ErrorKind::Refused, "binance"), &options, Instant::now());
        }
        tokio::time::advance(options.ejection).await;
        assert!(!health.usable_for(&binance, Instant::now()), "the second ejection in a row lasts twice as long");
        tokio::time::advance(options.ejection).await;
        assert!(health.usable_for(&binance, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_451_bans_one_exchange_only_and_does_not_count_as_a_failure() {
        let options = HealthOptions { consecutive_failures: 1, ..HealthOptions::default() };
        let mut health = LocalHealth::default();
        assert!(!health.fold(&failure(ErrorKind::Http451, "binance"), &options, Instant::now()));
        assert!(!health.usable_for(&"binance".parse().unwrap(), Instant::now()));
        assert!(health.usable_for(&"coinbase".parse().unwrap(), Instant::now()));
        tokio::time::advance(options.ban).await;
        assert!(health.usable_for(&"binance".parse().unwrap(), Instant::now()));
    }
}
