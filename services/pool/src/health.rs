//! Health of each proxy, from three sources that meet in the [`Selector`](crate::Selector):
//!
//! - `HealthStats` of the aggregator: KV bucket `PROXY_HEALTH`, loaded at start and
//!   followed with a KV watch, `proxy.v1.health.{region}` ([`listen_health`]) and
//!   `POST /api/v1/proxy/health`; the newest record per proxy wins
//!   (`proxybus_shared::health::is_newer`), and `health::usable_for` decides;
//! - feedback posted to `POST /api/v1/proxy/feedback`, folded here by
//!   [`LocalHealth`] with the same rules as the aggregator (`proxybus_shared::health`,
//!   `docs/health.md`): proxy faults in a row eject the proxy for a while (Envoy's
//!   outlier detection); an exchange's verdict (403s in a row, 418, 429, 451,
//!   refused handshake, close 1008/1013) bars it **for that exchange only**; the
//!   exchange's own trouble costs it nothing;
//! - optional active checks ([`crate::active_check`]).
//!
//! A proxy is selectable only when every source agrees. Time here is
//! `tokio::time::Instant`, so tests drive it with `tokio::time::pause()`.

use std::collections::HashMap;

use futures::StreamExt;
use proxybus_shared::health::{self, Attribution, HealthPolicy};
use proxybus_shared::kv::KeyChange;
use proxybus_shared::{Codec, ExchangeHealth, ExchangeId, ProxyFeedback};
use tokio::time::Instant;

use crate::selector::Selector;

/// Thresholds of the local outlier detection and active checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthOptions {
    /// The health model's rules (shared with the aggregator).
    pub rules: HealthPolicy,
    /// Whether proxy faults reported to this service eject a proxy by themselves
    /// (`health.consecutive_failures = 0` turns it off).
    pub local_ejection: bool,
    /// Failed active checks in a row that take a proxy out.
    pub unhealthy_checks: u32,
    /// Passed active checks in a row that bring it back.
    pub healthy_checks: u32,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self { rules: HealthPolicy::default(), local_ejection: true, unhealthy_checks: 2, healthy_checks: 1 }
    }
}

/// What this service itself learned about one proxy.
#[derive(Debug, Clone, Default)]
pub struct LocalHealth {
    /// Proxy faults since the last success.
    pub consecutive_failures: u32,
    /// Ejections in a row (reset by a success after the ejection ends).
    pub ejections: u32,
    /// End of the current ejection.
    pub ejected_until: Option<Instant>,
    /// Bans and cool-downs per exchange, until when.
    pub barred: HashMap<ExchangeId, Instant>,
    /// Per exchange, the verdicts counted so far (refusals in a row, IP bans).
    pub verdicts: HashMap<ExchangeId, ExchangeHealth>,
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

    /// Folds one feedback event by the shared rules; returns whether it ejected the proxy.
    pub fn fold(&mut self, feedback: &ProxyFeedback, options: &HealthOptions, now: Instant) -> bool {
        let rules = &options.rules;
        match health::attribute(feedback) {
            Attribution::Success => {
                self.consecutive_failures = 0;
                if !self.ejected(now) {
                    self.ejections = 0;
                }
                if let Some(exchange) = self.verdicts.get_mut(&feedback.exchange_id) {
                    health::exchange_success(exchange);
                }
                false
            }
            Attribution::ExchangeVerdict(verdict) => {
                let exchange = self.verdicts.entry(feedback.exchange_id.clone()).or_default();
                if let Some(bar) = rules.judge(exchange, verdict, feedback.retry_after_seconds) {
                    let until = now + bar.duration;
                    let entry = self.barred.entry(feedback.exchange_id.clone()).or_insert(until);
                    *entry = (*entry).max(until);
                }
                false
            }
            Attribution::ProxyFault => {
                self.consecutive_failures += 1;
                if options.local_ejection && self.consecutive_failures >= rules.consecutive_failures {
                    self.ejections = self.ejections.saturating_add(1);
                    self.ejected_until = Some(now + rules.ejection_time(self.ejections));
                    self.consecutive_failures = 0;
                    true
                } else {
                    false
                }
            }
            Attribution::ExchangeTrouble | Attribution::Inconclusive | Attribution::NotAnOutcome => false,
        }
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
pub(crate) enum HealthListenError {
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
pub(crate) async fn listen_health(
    client: async_nats::Client,
    selector: std::sync::Arc<Selector>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HealthListenError> {
    let subject = proxybus_shared::subject::HEALTH_WILDCARD;
    let mut subscriber =
        client.subscribe(subject).await.map_err(|source| HealthListenError::Subscribe { subject, source })?;
    tracing::info!(subject, "listening for health statistics");
    let codec = Codec::default();
    // What the aggregator stored, then every change of it (subscribed first, so
    // nothing published meanwhile is missed; an older record never wins).
    let follower = {
        let selector = selector.clone();
        let js = async_nats::jetstream::new(client.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut stopped = std::pin::pin!(async move {
                let _ = stopped.await;
            });
            let wait = proxybus_shared::kv::wait_for_bucket(&js, proxybus_shared::subject::HEALTH_BUCKET, || {});
            let bucket = tokio::select! {
                () = &mut stopped => return,
                bucket = wait => bucket,
            };
            let mut loaded = 0_usize;
            proxybus_shared::kv::follow_health(&bucket, stopped, |change| match change {
                KeyChange::Put { value, .. } => {
                    loaded += 1;
                    selector.apply_health(value, crate::metrics::HealthSource::Nats);
                }
                KeyChange::Deleted { .. } => {}
                KeyChange::Current => {
                    tracing::info!(proxies = loaded, bucket = %bucket.name, "health loaded from the bucket");
                }
            })
            .await;
        });
        (stop, task)
    };
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
    let (stop, task) = follower;
    let _ = stop.send(());
    let _ = task.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proxybus_shared::ErrorKind;

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

    fn options(consecutive_failures: u32) -> HealthOptions {
        HealthOptions {
            rules: HealthPolicy { consecutive_failures, ..HealthPolicy::default() },
            ..HealthOptions::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_growing_time() {
        let options = options(3);
        let ejection = options.rules.ejection_time(1);
        let mut health = LocalHealth::default();
        let binance: ExchangeId = "binance".parse().unwrap();
        for i in 1..=3 {
            let ejected = health.fold(&failure(ErrorKind::Timeout, "binance"), &options, Instant::now());
            assert_eq!(ejected, i == 3);
        }
        assert!(!health.usable_for(&binance, Instant::now()));
        tokio::time::advance(ejection).await;
        assert!(health.usable_for(&binance, Instant::now()), "back after the ejection time");
        for _ in 0..3 {
            health.fold(&failure(ErrorKind::Refused, "binance"), &options, Instant::now());
        }
        tokio::time::advance(ejection).await;
        assert!(!health.usable_for(&binance, Instant::now()), "the second ejection in a row lasts twice as long");
        tokio::time::advance(ejection).await;
        assert!(health.usable_for(&binance, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_451_bans_one_exchange_only_and_does_not_count_as_a_failure() {
        let options = options(1);
        let mut health = LocalHealth::default();
        assert!(!health.fold(&failure(ErrorKind::Http451, "binance"), &options, Instant::now()));
        assert!(!health.usable_for(&"binance".parse().unwrap(), Instant::now()));
        assert!(health.usable_for(&"coinbase".parse().unwrap(), Instant::now()));
        tokio::time::advance(options.rules.restricted_ban(None)).await;
        assert!(health.usable_for(&"binance".parse().unwrap(), Instant::now()));
    }
}
