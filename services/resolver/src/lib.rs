//! `proxybus-resolver`: the service every feed asks for a proxy.
//!
//! It answers `proxy.v1.request.{exchange}.{connection_type}` (NATS micro-service
//! `proxybus-resolver`, queue group `proxybus-resolver`, so any number of
//! processes share the load) from a per-client cache, from upstream proxy
//! services over HTTP behind circuit breakers with hedging, and when those fail
//! from the fallback chain: stale cache → embedded `ProxySettings` → direct
//! connection, or an error reply when the fallback policy says so. It follows
//! `proxy.v1.health.>` and never serves an ejected or banned proxy from cache
//! or embedded settings.
//!
//! # Layout
//! - [`settings`]: `ResolverSettings` (`PROXYBUS_RESOLVER_*`) and [`Config`].
//! - [`service`]: request validation, replies and error replies on NATS.
//! - [`resolver`]: the decision: cache, single-flight upstream, fallback chain.
//! - [`cache`]: the bounded answer cache keyed per client, and the single-flight gate.
//! - [`scatter`]: `region: "any"` sent to every region's resolvers, the best answer taken.
//! - [`upstream`]: endpoints, their breakers, hedged HTTP calls, answer validation.
//! - [`discovery`]: static endpoints or DNS SRV discovery, and `/healthz` probes.
//! - [`health`]: the health book fed by `proxy.v1.health.>`.
//! - [`metrics`]: the seed's `ProxyServiceMetrics`, Prometheus metrics and `/metrics`.
//! - `main.rs`: arguments, configuration, telemetry and signals; then [`run`].

pub mod cache;
pub mod discovery;
pub mod health;
pub mod metrics;
pub mod resolver;
pub mod scatter;
pub mod service;
pub mod settings;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use proxybus_shared::breaker::BreakerConfig;
use proxybus_shared::http::{HttpClientError, TlsFiles, proxy_service_client};
use proxybus_shared::{Codec, subject};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::resolver::{ResolveError, Resolver};
pub use crate::settings::{Config, ResolverSettings, SERVICE_NAME};

/// Subject pattern the resolver serves.
pub const REQUEST_SUBJECTS: &str = "proxy.v1.request.*.*";

/// Why the resolver could not start (once started, it only stops on shutdown).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] proxybus_shared::nats::ConnectError),
    /// A subscription or the micro-service registration failed.
    #[error("cannot register on NATS: {0}")]
    Register(String),
    /// The HTTP client for proxy services could not be built.
    #[error("cannot build the proxy-service client: {0}")]
    HttpClient(#[from] HttpClientError),
    /// DNS SRV discovery could not start.
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    /// The metrics endpoint could not listen.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Connects to NATS and serves until `shutdown` completes; then stops taking
/// requests, finishes those in flight (within `shutdown_grace_seconds`) and drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
    let client = config.nats.clone().with_name(SERVICE_NAME).connect().await?;
    run_with_client(client, config, shutdown).await
}

/// [`run`] on an existing NATS connection.
pub async fn run_with_client(
    client: async_nats::Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let Config { proxy, resolver: settings, .. } = config;
    let stop = CancellationToken::new();
    let _stop_background = stop.clone().drop_guard();
    let metrics = Arc::new(metrics::ResolverMetrics::default());
    let prometheus = metrics::prometheus();
    if let Some(handle) = prometheus {
        // Histogram samples pile up in the recorder until upkeep folds them into
        // buckets; without a scrape of /metrics that was a few bytes per request, forever.
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = every.tick() => handle.run_upkeep(),
                }
            }
        });
    }
    let health = Arc::new(health::HealthBook::with_budgets(settings.budgets.clone()));
    let proxy = Arc::new(proxy);

    let upstream = if proxy.enabled && proxy.external_service.enabled {
        Some(Arc::new(build_upstream(&proxy, &settings, &metrics, &stop).await?))
    } else {
        None
    };
    let mut resolver = Resolver::new(proxy.clone(), settings.clone(), upstream, health.clone(), metrics.clone());
    if !settings.regions.is_empty() {
        let scatter =
            scatter::RegionScatter::new(client.clone(), settings.regions.clone(), settings.any_region_deadline());
        resolver = resolver.with_scatter(scatter);
    }
    let resolver = Arc::new(resolver);

    health::follow(client.clone(), health, settings.region.clone(), stop.clone())
        .await
        .map_err(|e| RunError::Register(e.to_string()))?;
    if let Some(addr) = settings.metrics_listen {
        serve_metrics(addr, prometheus, stop.clone()).await?;
    }
    if !settings.warm_up.is_empty() {
        resolver.warm_up().await;
    }

    let stats = metrics.clone();
    let service = client
        .service_builder()
        .description("Chooses a proxy for a feed's connection to an exchange")
        .queue_group(SERVICE_NAME)
        .stats_handler(move |_endpoint, _stats| serde_json::to_value(stats.snapshot()).unwrap_or_default())
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| RunError::Register(e.to_string()))?;
    let mut endpoints = vec![
        service
            .endpoint_builder()
            .name("request")
            .add(REQUEST_SUBJECTS)
            .await
            .map_err(|e| RunError::Register(e.to_string()))?,
    ];
    tracing::info!(subject = REQUEST_SUBJECTS, queue_group = SERVICE_NAME, region = ?settings.region, "resolver serving");
    if let Some(region) = &settings.region {
        // This region's own subject, for requests sent to one region (the scatter of `any`).
        let regional = subject::regional_request_wildcard(region);
        endpoints.push(
            service
                .endpoint_builder()
                .name("request_region")
                .add(regional.as_str())
                .await
                .map_err(|e| RunError::Register(e.to_string()))?,
        );
        tracing::info!(subject = %regional, queue_group = SERVICE_NAME, "resolver serving its region's subject");
    }

    // Answers that need no upstream call are given in place, in this loop; a
    // request that needs upstream gets a task (and a slot of `max_in_flight`).
    let responder = Arc::new(service::Responder::new(resolver.clone(), Codec::new(settings.max_payload_bytes)));
    let tracker = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight));
    let spawn = |deferred, slot| {
        let responder = responder.clone();
        tracker.spawn(async move {
            let _slot: Option<tokio::sync::OwnedSemaphorePermit> = slot;
            responder.answer_later(deferred).await;
        });
    };
    tokio::pin!(shutdown);
    let mut requests = futures::stream::select_all(endpoints.iter_mut());
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            request = requests.next() => match request {
                Some(request) => {
                    if let Some(deferred) = responder.answer_now(request).await {
                        // Bound the work in flight: wait for a slot before reading on.
                        let slot = slots.clone().acquire_owned().await.ok();
                        spawn(deferred, slot);
                    }
                }
                None => break,
            },
        }
    }

    drop(requests);
    tracing::info!("shutting down: no new requests; finishing those in flight");
    for endpoint in &mut endpoints {
        if let Err(err) = endpoint.stop().await {
            tracing::warn!(error = %err, "cannot unsubscribe");
        }
    }
    // Requests already delivered to this process are still answered.
    let mut delivered = futures::stream::select_all(endpoints.iter_mut());
    while let Ok(Some(request)) = tokio::time::timeout(Duration::from_millis(200), delivered.next()).await {
        if let Some(deferred) = responder.answer_now(request).await {
            spawn(deferred, None);
        }
    }
    drop(delivered);
    tracker.close();
    let grace = Duration::from_secs(settings.shutdown_grace_seconds);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(in_flight = tracker.len(), "grace timeout; abandoning requests in flight");
    }
    let _ = service.stop().await;
    stop.cancel();
    if let Err(err) = client.drain().await {
        tracing::debug!(error = %err, "draining the NATS connection");
    }
    tracing::info!("resolver stopped");
    Ok(())
}

async fn build_upstream(
    proxy: &proxybus_shared::config::ProxySettings,
    settings: &ResolverSettings,
    metrics: &Arc<metrics::ResolverMetrics>,
    stop: &CancellationToken,
) -> Result<upstream::Upstream, RunError> {
    let external = &proxy.external_service;
    let client = proxy_service_client(external, &TlsFiles::from_service_config(external))?;
    let breaker = if external.circuit_breaker_enabled {
        settings.breaker()
    } else {
        BreakerConfig { failure_threshold: u32::MAX, ..settings.breaker() }
    };
    let endpoints = Arc::new(upstream::EndpointSet::new(breaker, metrics.clone()));
    match &external.srv_name {
        Some(name) => {
            let discovery = discovery::SrvDiscovery::new(name, &settings.srv_scheme, &settings.dns_servers)?;
            match discovery.lookup().await {
                Ok(found) => {
                    endpoints.replace(&found);
                }
                Err(err) => tracing::warn!(error = %err, "first SRV lookup failed; retrying in the background"),
            }
            discovery.spawn_refresh(
                endpoints.clone(),
                Duration::from_secs(settings.discovery_refresh_seconds),
                stop.clone(),
            );
        }
        None => {
            endpoints.replace(&external.endpoints);
        }
    }
    if settings.health_probe_interval_seconds > 0 {
        discovery::spawn_probes(
            client.clone(),
            endpoints.clone(),
            Duration::from_secs(settings.health_probe_interval_seconds),
            stop.clone(),
        );
    }
    tracing::info!(endpoints = ?endpoints.names(), "upstream proxy services");
    Ok(upstream::Upstream::new(client, endpoints, settings.hedge_delay(), metrics.clone()))
}

async fn serve_metrics(
    addr: SocketAddr,
    prometheus: Option<&'static metrics_exporter_prometheus::PrometheusHandle>,
    stop: CancellationToken,
) -> Result<(), RunError> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Metrics { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                let body = prometheus.map(|handle| {
                    handle.run_upkeep();
                    handle.render()
                });
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body.unwrap_or_default())
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    tracing::info!(%addr, "metrics endpoint listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics endpoint stopped");
        }
    });
    Ok(())
}
