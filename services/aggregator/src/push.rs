//! Push-back of changed health: each changed [`HealthStats`] is published on
//! `proxy.v1.health.{region}` (MessagePack) and, batched, POSTed as a JSON array
//! to `POST {endpoint}/api/v1/proxy/health` of every configured proxy service.
//!
//! Folding never waits for a proxy service: changed stats go into a per-endpoint
//! buffer that keeps only the newest stats of each proxy (so its size is bounded
//! by the number of proxies), and one task per endpoint drains it through its own
//! circuit breaker, with retries. A batch that cannot be delivered goes back into
//! the buffer unless newer stats of the same proxy arrived meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use proxybus_shared::breaker::{BreakerConfig, CircuitBreaker};
use proxybus_shared::config::ExternalProxyServiceConfig;
use proxybus_shared::http::{HttpClientError, TlsFiles, proxy_service_client};
use proxybus_shared::{Codec, Encoding, HealthStats, ProxyId, redact_url};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PushSettings;
use crate::stats::AggregatorStats;

/// Publishes changed stats on the bus and hands them to the endpoint pushers.
#[derive(Debug)]
pub(crate) struct HealthPublisher {
    client: Client,
    pushers: Vec<Arc<Pusher>>,
}

#[derive(Debug)]
struct Pusher {
    /// Redacted endpoint, for logs and the breaker's name.
    name: String,
    url: String,
    http: reqwest::Client,
    breaker: CircuitBreaker,
    pending: Mutex<BTreeMap<ProxyId, HealthStats>>,
    notify: Notify,
    settings: PushSettings,
    stats: Arc<AggregatorStats>,
}

impl HealthPublisher {
    /// A publisher for `services`' endpoints (none when push-back is off), with one
    /// task per endpoint tracked by `tracker` and stopped by `cancel`.
    pub(crate) fn start(
        client: Client,
        services: &ExternalProxyServiceConfig,
        settings: &PushSettings,
        stats: Arc<AggregatorStats>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, HttpClientError> {
        let mut pushers = Vec::new();
        if settings.enabled && !services.endpoints.is_empty() {
            let http = proxy_service_client(services, &TlsFiles::from_service_config(services))?;
            for endpoint in &services.endpoints {
                let name = redact_url(endpoint);
                let breaker = CircuitBreaker::new(
                    name.clone(),
                    BreakerConfig {
                        failure_threshold: settings.breaker_failure_threshold,
                        recovery_timeout: Duration::from_millis(settings.breaker_recovery_ms),
                        half_open_probes: 1,
                    },
                );
                let pusher = Arc::new(Pusher {
                    name,
                    url: format!("{}{}", endpoint.trim_end_matches('/'), proxybus_shared::http::paths::HEALTH),
                    http: http.clone(),
                    breaker,
                    pending: Mutex::new(BTreeMap::new()),
                    notify: Notify::new(),
                    settings: settings.clone(),
                    stats: stats.clone(),
                });
                tracker.spawn(pusher.clone().run(cancel.clone()));
                pushers.push(pusher);
            }
        }
        Ok(Self { client, pushers })
    }

    /// Publishes each of `changed` — `(subject, HealthStats as msgpack)`, as a commit
    /// encoded them ([`EncodedCommit::published`](crate::store::EncodedCommit::published))
    /// — on its health subject, and queues the stats for every endpoint (read from the
    /// same bytes, only when there are endpoints).
    pub(crate) async fn publish(&self, changed: &[(Arc<str>, Bytes)]) {
        for (subject, payload) in changed {
            if let Err(err) = self
                .client
                .publish_with_headers(subject.to_string(), Encoding::MsgPack.headers(), payload.clone())
                .await
            {
                tracing::warn!(error = %err, "cannot publish health stats");
            }
        }
        if self.pushers.is_empty() {
            return;
        }
        let codec = Codec::new(usize::MAX);
        let stats: Vec<HealthStats> = changed
            .iter()
            .filter_map(|(subject, payload)| match codec.decode_as(Encoding::MsgPack, payload) {
                Ok(stats) => Some(stats),
                Err(err) => {
                    tracing::error!(%subject, error = %err, "cannot read back committed stats");
                    None
                }
            })
            .collect();
        for pusher in &self.pushers {
            pusher.offer(&stats);
        }
    }
}

impl Pusher {
    fn offer(&self, changed: &[HealthStats]) {
        {
            let mut pending = self.pending.lock().expect("not poisoned");
            for stats in changed {
                pending.insert(stats.proxy_id, stats.clone());
            }
        }
        self.notify.notify_one();
    }

    /// Takes up to `batch_max` stats out of the buffer.
    fn take(&self) -> Vec<HealthStats> {
        let mut pending = self.pending.lock().expect("not poisoned");
        let mut batch = Vec::new();
        while batch.len() < self.settings.batch_max {
            match pending.pop_first() {
                Some((_, stats)) => batch.push(stats),
                None => break,
            }
        }
        batch
    }

    /// Puts back what could not be delivered, unless newer stats arrived.
    fn put_back(&self, batch: Vec<HealthStats>) {
        let mut pending = self.pending.lock().expect("not poisoned");
        for stats in batch {
            pending.entry(stats.proxy_id).or_insert(stats);
        }
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = self.notify.notified() => {}
            }
            loop {
                let batch = self.take();
                if batch.is_empty() {
                    break;
                }
                if let Err(reason) = self.deliver(&batch, &cancel).await {
                    self.stats.add_push_failures(1);
                    tracing::warn!(endpoint = %self.name, reason = %reason, stats = batch.len(), "health push failed; will retry");
                    self.put_back(batch);
                    let pause = Duration::from_millis(self.settings.retry_backoff_ms.max(10) * 4);
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                } else {
                    self.stats.add_pushes(1);
                }
            }
        }
    }

    /// POSTs one batch, retrying; fails fast while the breaker is open.
    async fn deliver(&self, batch: &[HealthStats], cancel: &CancellationToken) -> Result<(), String> {
        let body = Codec::default().encode(Encoding::Json, &batch).map_err(|err| err.to_string())?;
        let mut backoff = Duration::from_millis(self.settings.retry_backoff_ms);
        let mut last = String::new();
        for attempt in 1..=self.settings.attempts {
            let permit = self.breaker.try_acquire().map_err(|err| err.to_string())?;
            let sent = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    permit.success();
                    return Ok(());
                }
                Ok(response) => {
                    permit.failure();
                    last = format!("HTTP {}", response.status());
                }
                Err(err) => {
                    permit.failure();
                    // reqwest errors name the URL; endpoints carry no credentials, but be sure.
                    last = crate::intake::clean_reason(&err.without_url().to_string());
                }
            }
            if attempt < self.settings.attempts {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff *= 2;
            }
        }
        Err(last)
    }
}
