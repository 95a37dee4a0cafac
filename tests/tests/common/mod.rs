//! What the multi-node feedback tests (`fan_in.rs`, `cluster_feedback.rs`) share: a feedback
//! event and the total the aggregator has folded into `PROXY_HEALTH`.

use async_nats::jetstream;
use chrono::Utc;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{ConnectionType, FeedbackPhase, ProxyFeedback, proxy_id, redact_url};

/// A successful websocket feedback event of a feed in `region` for proxy `proxy`, with a new
/// event id.
pub(crate) fn event(region: &str, proxy: &str) -> ProxyFeedback {
    let url = format!("http://u:pw@{proxy}.example:3128");
    ProxyFeedback {
        schema_version: 1,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: proxy_id(&url),
        proxy_url: redact_url(&url),
        exchange_id: "binance".parse().unwrap(),
        connection_type: ConnectionType::Websocket,
        region: Some(region.parse().unwrap()),
        phase: FeedbackPhase::Connected,
        success: true,
        latency_ms: Some(30),
        error_kind: None,
        status_code: None,
        retry_after_seconds: None,
        error_details: None,
        timestamp: Utc::now(),
        client_id: format!("feed-{region}"),
        ws_close_code: None,
        probe: false,
        usage_headers: Default::default(),
        connect_count: None,
    }
}

/// Sum of `total` over every record in `PROXY_HEALTH` (0 while the bucket does not exist).
pub(crate) async fn folded_total(js: &jetstream::Context) -> u64 {
    let Ok(bucket) = js.get_key_value(HEALTH_BUCKET).await else { return 0 };
    proxybus_shared::kv::health_stats(&bucket).await.map(|all| all.values().map(|s| s.total).sum()).unwrap_or(0)
}
