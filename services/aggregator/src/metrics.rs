//! The aggregator's Prometheus metrics: the `/metrics` listener is the process's one
//! ([`proxybus_shared::telemetry::serve_metrics`]); this module names and describes the
//! series. Metric names are `proxybus_aggregator_*` (see `docs/aggregator.md`); they
//! never carry a proxy URL.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::AggregatorError;

/// Serves `/metrics` on `addr` (installing the process's recorder) until `stop` is
/// cancelled, and describes the aggregator's series.
pub(crate) async fn serve(addr: SocketAddr, stop: CancellationToken) -> Result<(), AggregatorError> {
    proxybus_shared::telemetry::serve_metrics(addr, stop)
        .await
        .map_err(|err| AggregatorError::Metrics(format!("{addr}: {err}")))?;
    describe();
    Ok(())
}

/// Describes the aggregator's series to the installed recorder (none: nothing happens),
/// so that `/metrics` shows their help text whoever serves it (`proxybus up` serves one
/// `/metrics` for every part).
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!("proxybus_aggregator_events_folded_total", "Feedback events folded into health stats");
    describe_counter!("proxybus_aggregator_duplicates_skipped_total", "Redelivered messages skipped (already folded)");
    describe_counter!("proxybus_aggregator_dead_lettered_total", "Feedback messages sent to proxy.v1.feedback_dead.>");
    describe_counter!("proxybus_aggregator_ejections_total", "Proxies ejected");
    describe_counter!("proxybus_aggregator_ejections_suppressed_total", "Ejections refused by max_ejection_percent");
    describe_counter!("proxybus_aggregator_commits_total", "Batches committed to KV");
    describe_counter!("proxybus_aggregator_commit_failures_total", "Failed commit attempts (retried)");
    describe_counter!("proxybus_aggregator_consumer_resets_total", "Consumer re-created from the checkpoint");
    describe_counter!(
        "proxybus_aggregator_events_lost_total",
        "Feedback events the stream removed (its limits) before they were folded"
    );
    describe_counter!("proxybus_aggregator_push_batches_total", "Health batches POSTed to proxy services");
    describe_counter!("proxybus_aggregator_push_failures_total", "Health batches that failed to POST (retried)");
    describe_counter!("proxybus_aggregator_leader_changes_total", "Times this aggregator took the leadership lease");
    describe_gauge!(
        "proxybus_aggregator_active",
        "1 while this aggregator holds the leadership lease and folds, else 0"
    );
    describe_gauge!("proxybus_aggregator_last_seq", "Stream sequence folded up to");
    describe_gauge!("proxybus_aggregator_fold_lag_messages", "Messages in PROXY_FEEDBACK not yet folded");
    describe_gauge!("proxybus_aggregator_fold_lag_seconds", "Age of the newest folded event while behind");
}
