//! What the multi-node feedback tests (`fan_in.rs`, `cluster_feedback.rs`) share: a feedback
//! event and the total the aggregator has folded into `PROXY_HEALTH`.

use async_nats::jetstream;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{ConnectionType, FeedbackPhase, ProxyFeedback};

/// A successful websocket feedback event of a feed in `region` for proxy `proxy`, with a new
/// event id.
pub(crate) fn event(region: &str, proxy: &str) -> ProxyFeedback {
    let url = format!("http://u:pw@{proxy}.example:3128");
    ProxyFeedback {
        region: Some(region.parse().unwrap()),
        latency_ms: Some(30),
        ..ProxyFeedback::new(
            &url,
            "binance".parse().unwrap(),
            ConnectionType::Websocket,
            FeedbackPhase::Connected,
            true,
            format!("feed-{region}"),
        )
    }
}

/// Sum of `total` over every record in `PROXY_HEALTH` (0 while the bucket does not exist).
pub(crate) async fn folded_total(js: &jetstream::Context) -> u64 {
    let Ok(bucket) = js.get_key_value(HEALTH_BUCKET).await else { return 0 };
    proxybus_shared::kv::health_stats(&bucket).await.map(|all| all.values().map(|s| s.total).sum()).unwrap_or(0)
}
