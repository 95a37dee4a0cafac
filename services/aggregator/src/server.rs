//! [`run`]: the aggregator's start-up, its live fold ([`crate::live`]) and its
//! shutdown.
//!
//! Start-up: connect to NATS, open stream `PROXY_FEEDBACK` and the buckets, follow the
//! pools' inventories, register the micro-service `proxybus-aggregator` (its instance
//! id names this aggregator in the leadership lease) and start the push-back; all of
//! this runs on standbys too. The checkpoint and the event ids folded are loaded by
//! the fold ([`crate::live`]) each time it wins the lease, not here. Shutdown: the
//! fold commits what it has folded and releases the lease, background tasks get
//! [`SHUTDOWN_GRACE`], the micro-service stops and the client is flushed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::service::{Service, ServiceExt};
use futures::StreamExt;
use proxybus_shared::feedback::ensure_feedback_stream;
use proxybus_shared::subject::{AGGREGATOR_SERVICE, AGGREGATOR_STATUS_SUBJECT, aggregator_leader_key};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AggregatorError;
use crate::config::{AggregatorConfig, AggregatorSettings};
use crate::event_ids::EventIdLog;
use crate::fold::FeedbackFolder;
use crate::inventory::{self, RegionSizes};
use crate::lease::Lease;
use crate::live::{Live, retry_until_cancelled};
use crate::push::HealthPublisher;
use crate::stats::AggregatorStats;
use crate::store::HealthStore;

/// How long shutdown waits for the push-back tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the aggregator until `shutdown` completes.
///
/// # Errors
/// [`AggregatorError`] when it cannot start (NATS unsupported, metrics address taken,
/// micro-service or push-back client not set up) or when stored state cannot be read.
/// NATS being unreachable for a while is retried, not an error.
pub async fn run(
    config: AggregatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AggregatorError> {
    run_with_stats(config, Arc::new(AggregatorStats::default()), shutdown).await
}

/// Runs the aggregator with counters the caller can read.
///
/// # Errors
/// As [`run`].
pub async fn run_with_stats(
    config: AggregatorConfig,
    stats: Arc<AggregatorStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AggregatorError> {
    let cancel = cancel_on(shutdown);
    let Some(running) = start(&config, stats, &cancel).await? else {
        return Ok(());
    };
    let Running { mut live, service, tracker, client } = running;
    let result = live.fold_until_cancelled().await;
    shut_down(tracker, cancel, service, client).await;
    result
}

/// What start-up leaves running.
struct Running {
    live: Live,
    service: Service,
    tracker: TaskTracker,
    client: async_nats::Client,
}

/// A token cancelled when `shutdown` completes.
fn cancel_on(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    cancel
}

/// Every start-up step, in order; `None` when shutdown came first.
async fn start(
    config: &AggregatorConfig,
    stats: Arc<AggregatorStats>,
    cancel: &CancellationToken,
) -> Result<Option<Running>, AggregatorError> {
    let settings = &config.settings;
    if let Some(addr) = settings.metrics_addr() {
        crate::metrics::serve(addr, cancel.clone()).await?;
    }
    crate::metrics::describe();
    let Some(client) = connect(config, cancel).await? else {
        return Ok(None);
    };
    let jetstream = jetstream::new(client.clone());
    let Some(store) = open_store(&jetstream, settings, cancel).await else {
        return Ok(None);
    };
    let Some(id_log) = open_event_id_log(&jetstream, settings, cancel).await else {
        return Ok(None);
    };
    let sizes = follow_inventory(&jetstream, cancel);
    let tracker = TaskTracker::new();
    let service = start_micro_service(&client, &stats, &tracker, cancel).await?;
    let instance = service.info().await.id;
    let lease = Lease::new(
        store.state_bucket().clone(),
        aggregator_leader_key(&settings.health_bucket),
        instance,
        settings.lease_ttl(),
    );
    let publisher = Arc::new(HealthPublisher::start(
        client.clone(),
        &config.proxy_services,
        &settings.push,
        stats.clone(),
        &tracker,
        cancel.clone(),
    )?);
    let live = Live {
        settings: settings.clone(),
        jetstream,
        store,
        // Empty until the lease is won: the state is loaded from the checkpoint then.
        folder: FeedbackFolder::with_event_ids(settings.health.clone(), settings.event_ids()),
        position: 0,
        last_published: None,
        stats,
        publisher,
        client: client.clone(),
        cancel: cancel.clone(),
        id_log,
        sizes,
        window: Default::default(),
        in_flight: None,
        lease,
    };
    Ok(Some(Running { live, service, tracker, client }))
}

/// Connects (retrying) and checks the server supports what the aggregator needs.
async fn connect(
    config: &AggregatorConfig,
    cancel: &CancellationToken,
) -> Result<Option<async_nats::Client>, AggregatorError> {
    let client = config.nats.connect_retrying().await.map_err(|err| AggregatorError::Connect(err.to_string()))?;
    tokio::select! {
        () = cancel.cancelled() => Ok(None),
        supported = proxybus_shared::nats::ensure_supported_once_connected(&client) => {
            supported.map_err(|err| AggregatorError::Connect(err.to_string()))?;
            Ok(Some(client))
        }
    }
}

/// Ensures stream `PROXY_FEEDBACK` and opens the health and checkpoint buckets.
async fn open_store(
    jetstream: &jetstream::Context,
    settings: &AggregatorSettings,
    cancel: &CancellationToken,
) -> Option<HealthStore> {
    retry_until_cancelled(cancel, "opening the stream and buckets", || async {
        ensure_feedback_stream(jetstream, &settings.stream()).await.map_err(|err| err.to_string())?;
        HealthStore::open(jetstream, &settings.health_bucket, &settings.state_bucket)
            .await
            .map_err(|err| err.to_string())
    })
    .await
}

/// Opens the stream the folded event ids are persisted in.
async fn open_event_id_log(
    jetstream: &jetstream::Context,
    settings: &AggregatorSettings,
    cancel: &CancellationToken,
) -> Option<EventIdLog> {
    retry_until_cancelled(cancel, "opening the event-id stream", || async {
        let keep = Duration::from_secs(settings.event_id_horizon_seconds + 3600);
        EventIdLog::open(jetstream, &settings.event_ids_stream, &settings.health_bucket, keep).await
    })
    .await
}

/// Follows the pools' inventories in `PROXY_INVENTORY` until `cancel`: region sizes.
fn follow_inventory(
    jetstream: &jetstream::Context,
    cancel: &CancellationToken,
) -> tokio::sync::watch::Receiver<RegionSizes> {
    let (sizes_tx, sizes) = tokio::sync::watch::channel(RegionSizes::new());
    let (jetstream, cancel) = (jetstream.clone(), cancel.clone());
    tokio::spawn(async move { inventory::follow(jetstream, sizes_tx, cancel.cancelled_owned()).await });
    sizes
}

/// Registers micro-service `proxybus-aggregator` (`$SRV.STATS` carries the counters,
/// with `role` — `active` or `standby` — and `leader_since`) and answers its status
/// endpoint with them until `cancel`.
async fn start_micro_service(
    client: &async_nats::Client,
    stats: &Arc<AggregatorStats>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Service, AggregatorError> {
    let service = {
        let stats = stats.clone();
        client
            .service_builder()
            .description("folds proxy feedback into health stats, exactly once")
            .stats_handler(move |_endpoint, _| serde_json::to_value(stats.snapshot()).unwrap_or_default())
            .start(AGGREGATOR_SERVICE, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|err| AggregatorError::Service(err.to_string()))?
    };
    let mut status =
        service.endpoint(AGGREGATOR_STATUS_SUBJECT).await.map_err(|err| AggregatorError::Service(err.to_string()))?;
    let (stats, cancel) = (stats.clone(), cancel.clone());
    tracker.spawn(async move {
        loop {
            let request = tokio::select! {
                () = cancel.cancelled() => return,
                request = status.next() => match request { Some(request) => request, None => return },
            };
            let body = serde_json::to_vec(&stats.snapshot()).unwrap_or_default();
            let _ = request.respond(Ok(body.into())).await;
        }
    });
    Ok(service)
}

/// Stops the background tasks (within [`SHUTDOWN_GRACE`]) and the micro-service, then
/// flushes the client.
async fn shut_down(tracker: TaskTracker, cancel: CancellationToken, service: Service, client: async_nats::Client) {
    tracker.close();
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop in time");
    }
    let _ = service.stop().await;
    let _ = client.flush().await;
}
