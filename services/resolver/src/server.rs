//! One resolver process from start to stop: [`run`].
//!
//! Start-up connects to NATS, installs the metrics recorder (and its listener),
//! builds the upstream proxy services, the resolver and its caches, loads and
//! follows the health book, warms the cache, and registers the micro-service.
//! The serving loop is [`InFlight::serve`](crate::requests::InFlight::serve).
//! Shutdown stops taking requests, answers those already delivered, finishes
//! those in flight within `shutdown_grace_seconds`, and drains the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::endpoint::Endpoint;
use async_nats::service::{Service, ServiceExt};
use proxybus_shared::breaker::BreakerConfig;
use proxybus_shared::config::ProxySettings;
use proxybus_shared::http::{HttpClientError, TlsFiles, paths, proxy_service_client};
use proxybus_shared::subject::{self, REQUEST_WILDCARD, RESOLVER_SERVICE};
use proxybus_shared::{Codec, Region, telemetry};
use tokio_util::sync::CancellationToken;

use crate::discovery::{self, DiscoveryError, SrvDiscovery};
use crate::health::{self, HealthBook};
use crate::metrics::ResolverMetrics;
use crate::requests::{InFlight, Responder};
use crate::resolver::Resolver;
use crate::scatter::RegionScatter;
use crate::settings::{ResolverConfig, ResolverSettings};
use crate::upstream::{EndpointSet, Upstream};

/// How often histogram samples are folded into buckets when nobody scrapes `/metrics`.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the resolver could not start (once started, it only stops on shutdown).
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
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
    Discovery(#[from] DiscoveryError),
    /// The metrics endpoint could not listen.
    #[error("cannot listen on {addr} for {}: {source}", paths::METRICS)]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Connects to NATS and serves until `shutdown` completes; then stops taking
/// requests, finishes those in flight (within `shutdown_grace_seconds`) and drains.
///
/// # Errors
/// [`ResolverError`] when start-up fails: NATS unreachable, registration refused,
/// the proxy-service client or SRV discovery not buildable, the metrics address taken.
pub async fn run(
    config: ResolverConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ResolverError> {
    let client = config.nats.clone().with_name(RESOLVER_SERVICE).connect().await?;
    run_with_client(client, config, shutdown).await
}

/// [`run`] on an existing NATS connection (drained once shutdown is done).
///
/// # Errors
/// As [`run`], except connecting.
pub async fn run_with_client(
    client: async_nats::Client,
    config: ResolverConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ResolverError> {
    let ResolverConfig { proxy, resolver: settings, .. } = config;
    // Stops the background tasks (upkeep, discovery, probes, health follower, /metrics).
    let stop = CancellationToken::new();
    let _stop_background = stop.clone().drop_guard();
    let resolver = start(&client, proxy, &settings, &stop).await?;
    let mut registration = register(&client, resolver.metrics().clone(), settings.region.as_ref()).await?;
    let in_flight = Arc::new(InFlight::new(
        Responder::new(resolver, Codec::new(settings.max_payload_bytes)),
        settings.max_in_flight,
    ));
    registration.endpoints = serve_in_task(&in_flight, std::mem::take(&mut registration.endpoints), shutdown).await;
    shut_down(client, registration, &in_flight, Duration::from_secs(settings.shutdown_grace_seconds), &stop).await;
    Ok(())
}

/// Runs the serving loop ([`InFlight::serve`]) in a task of the runtime until
/// `shutdown`, and gives the endpoints back for shutdown.
///
/// Not in the caller's own future: that is often `block_on` on the main thread
/// (the service binaries are `#[tokio::main]`), and then every request handed from
/// the NATS connection's task (on a worker thread) to the loop, and every reply
/// handed back, wakes the other thread through a futex — two context switches a
/// request, the largest cost `perf` showed in answering a cache hit
/// (docs/benchmarks.md, `resolve-hit`). Between tasks of the runtime's workers a
/// wake-up is a queue push.
async fn serve_in_task(
    in_flight: &Arc<InFlight>,
    endpoints: Vec<Endpoint>,
    shutdown: impl Future<Output = ()> + Send,
) -> Vec<Endpoint> {
    let stop = CancellationToken::new();
    let mut serving = tokio::spawn({
        let (in_flight, stop) = (in_flight.clone(), stop.clone());
        async move {
            let mut endpoints = endpoints;
            in_flight.serve(&mut endpoints, stop.cancelled()).await;
            endpoints
        }
    });
    tokio::select! {
        () = shutdown => stop.cancel(),
        _ = &mut serving => {}
    }
    match serving.await {
        Ok(endpoints) => endpoints,
        Err(err) => {
            // A panic is caught per request (`Responder`); this is the loop itself.
            tracing::error!(error = %err, "the serving loop ended abnormally");
            Vec::new()
        }
    }
}

/// Start-up before serving: the metrics recorder, the upstream proxy services, the
/// resolver and its caches, the health book (loaded, then followed), the `/metrics`
/// listener, and the warm-up answers.
async fn start(
    client: &async_nats::Client,
    proxy: ProxySettings,
    settings: &ResolverSettings,
    stop: &CancellationToken,
) -> Result<Arc<Resolver>, ResolverError> {
    let metrics = Arc::new(ResolverMetrics::default());
    fold_histograms_periodically(stop.clone());
    let health = Arc::new(HealthBook::with_budgets(settings.budgets.clone()));
    let proxy = Arc::new(proxy);
    let upstream = if proxy.enabled && proxy.external_service.enabled {
        Some(Arc::new(build_upstream(&proxy, settings, &metrics, stop).await?))
    } else {
        None
    };
    let mut resolver = Resolver::new(proxy, settings.clone(), upstream, health.clone(), metrics);
    if !settings.regions.is_empty() {
        let scatter = RegionScatter::new(client.clone(), settings.regions.clone(), settings.any_region_deadline());
        resolver = resolver.with_scatter(scatter);
    }
    let resolver = Arc::new(resolver);
    health::follow(client.clone(), health, settings.region.clone(), stop.clone())
        .await
        .map_err(|e| ResolverError::Register(e.to_string()))?;
    if let Some(addr) = settings.metrics_listen {
        telemetry::serve_metrics(addr, stop.clone()).await.map_err(|source| ResolverError::Metrics { addr, source })?;
    }
    if !settings.warm_up.is_empty() {
        resolver.warm_up().await;
    }
    Ok(resolver)
}

/// Runs the recorder's upkeep every [`METRICS_UPKEEP_EVERY`] until `stop`: histogram
/// samples pile up in the recorder until upkeep folds them into buckets; without a
/// scrape of `/metrics` that was a few bytes per request, forever.
fn fold_histograms_periodically(stop: CancellationToken) {
    let Some(handle) = telemetry::prometheus() else { return };
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => handle.run_upkeep(),
            }
        }
    });
}

/// The upstream proxy services: the HTTP client, the endpoints (static, or found by
/// SRV and refreshed in the background), their breakers and `/healthz` probes.
async fn build_upstream(
    proxy: &ProxySettings,
    settings: &ResolverSettings,
    metrics: &Arc<ResolverMetrics>,
    stop: &CancellationToken,
) -> Result<Upstream, ResolverError> {
    let external = &proxy.external_service;
    let client = proxy_service_client(external, &TlsFiles::from_service_config(external))?;
    let breaker = if external.circuit_breaker_enabled {
        settings.breaker()
    } else {
        BreakerConfig { failure_threshold: u32::MAX, ..settings.breaker() }
    };
    let endpoints = Arc::new(EndpointSet::new(breaker, metrics.clone()));
    match &external.srv_name {
        Some(name) => {
            let discovery = SrvDiscovery::new(name, &settings.srv_scheme, &settings.dns_servers)?;
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
    Ok(Upstream::new(client, endpoints, settings.hedge_delay(), metrics.clone()))
}

/// The micro-service and its request endpoints.
struct Registration {
    service: Service,
    endpoints: Vec<Endpoint>,
}

/// Registers micro-service `proxybus-resolver` (its `$SRV.STATS` data is `metrics`'
/// snapshot) with the request endpoint, and the region's own endpoint when the
/// resolver has a region (for requests sent to one region: the scatter of `any`).
async fn register(
    client: &async_nats::Client,
    metrics: Arc<ResolverMetrics>,
    region: Option<&Region>,
) -> Result<Registration, ResolverError> {
    let refused = |e: async_nats::Error| ResolverError::Register(e.to_string());
    // The region in `$SRV.INFO` metadata: which resolvers serve where, and (with the
    // endpoint list) when one is ready — `$SRV.PING` is answered as soon as the
    // service starts, before its endpoints subscribe.
    let metadata = region.map(|r| std::collections::HashMap::from([("region".to_owned(), r.as_str().to_owned())]));
    let service = client
        .service_builder()
        .description("Chooses a proxy for a feed's connection to an exchange")
        .metadata(metadata.unwrap_or_default())
        .queue_group(RESOLVER_SERVICE)
        .stats_handler(move |_endpoint, _stats| serde_json::to_value(metrics.snapshot()).unwrap_or_default())
        .start(RESOLVER_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(refused)?;
    let mut endpoints = vec![service.endpoint_builder().name("request").add(REQUEST_WILDCARD).await.map_err(refused)?];
    tracing::info!(subject = REQUEST_WILDCARD, queue_group = RESOLVER_SERVICE, region = ?region, "resolver serving");
    if let Some(region) = region {
        let regional = subject::regional_request_wildcard(region);
        endpoints
            .push(service.endpoint_builder().name("request_region").add(regional.as_str()).await.map_err(refused)?);
        tracing::info!(subject = %regional, queue_group = RESOLVER_SERVICE, "resolver serving its region's subject");
    }
    Ok(Registration { service, endpoints })
}

/// Shutdown: unsubscribes, answers the requests already delivered, waits up to
/// `grace` for those in flight, stops the micro-service and the background tasks,
/// and drains the connection.
async fn shut_down(
    client: async_nats::Client,
    registration: Registration,
    in_flight: &InFlight,
    grace: Duration,
    stop: &CancellationToken,
) {
    let Registration { service, mut endpoints } = registration;
    tracing::info!("shutting down: no new requests; finishing those in flight");
    for endpoint in &mut endpoints {
        if let Err(err) = endpoint.stop().await {
            tracing::warn!(error = %err, "cannot unsubscribe");
        }
    }
    in_flight.answer_delivered(&mut endpoints).await;
    in_flight.finish(grace).await;
    let _ = service.stop().await;
    stop.cancel();
    if let Err(err) = client.drain().await {
        tracing::debug!(error = %err, "draining the NATS connection");
    }
    tracing::info!("resolver stopped");
}
