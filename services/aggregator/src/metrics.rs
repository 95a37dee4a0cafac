//! The Prometheus `/metrics` listener. Metric names are `proxybus_aggregator_*`
//! (see `docs/aggregator.md`); they never carry a proxy URL.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

use crate::AggregatorError;

/// Installs the Prometheus recorder and serves `/metrics` on `addr`. A process can
/// have one recorder: a second call only logs.
pub fn serve(addr: SocketAddr) -> Result<(), AggregatorError> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .build()
        .map_err(|err| AggregatorError::Metrics(err.to_string()))?;
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder is already installed; not serving /metrics again");
        return Ok(());
    }
    describe();
    tokio::spawn(async move {
        if let Err(err) = exporter.await {
            tracing::error!(error = ?err, "metrics listener stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics");
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!("proxybus_aggregator_events_folded_total", "Feedback events folded into health stats");
    describe_counter!("proxybus_aggregator_duplicates_skipped_total", "Redelivered messages skipped (already folded)");
    describe_counter!("proxybus_aggregator_dead_lettered_total", "Feedback messages sent to proxy.v1.feedback_dead.>");
    describe_counter!("proxybus_aggregator_ejections_total", "Proxies ejected");
    describe_counter!("proxybus_aggregator_ejections_suppressed_total", "Ejections refused by max_ejection_percent");
    describe_counter!("proxybus_aggregator_commits_total", "Batches committed to KV");
    describe_counter!("proxybus_aggregator_commit_failures_total", "Failed commit attempts (retried)");
    describe_counter!("proxybus_aggregator_consumer_resets_total", "Consumer re-created from the checkpoint");
    describe_counter!("proxybus_aggregator_push_batches_total", "Health batches POSTed to proxy services");
    describe_counter!("proxybus_aggregator_push_failures_total", "Health batches that failed to POST (retried)");
    describe_gauge!("proxybus_aggregator_last_seq", "Stream sequence folded up to");
    describe_gauge!("proxybus_aggregator_fold_lag_messages", "Messages in PROXY_FEEDBACK not yet delivered");
    describe_gauge!("proxybus_aggregator_fold_lag_seconds", "Age of the newest folded event while behind");
}
