//! The feedback helper against a real nats-server with JetStream: the stream is
//! created and updated as configured, and a feedback event published twice is
//! stored once, with its `Nats-Msg-Id` and decodable payload.

use std::time::Duration;

use chrono::Utc;
use proxybus_shared::feedback::{
    FeedbackStreamConfig, FeedbackStreamError, MSG_ID_HEADER, ensure_feedback_stream, publish_feedback, send_feedback,
};
use proxybus_shared::*;
use proxybus_tests::NatsServer;

fn feedback() -> ProxyFeedback {
    let url = "http://alice:pw@10.1.2.3:8080";
    ProxyFeedback {
        schema_version: 1,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: proxy_id(url),
        proxy_url: redact_url(url),
        exchange_id: "binance".parse().unwrap(),
        connection_type: ConnectionType::Websocket,
        region: Some("eu-west".parse().unwrap()),
        phase: FeedbackPhase::Connected,
        success: true,
        latency_ms: Some(42),
        error_kind: None,
        status_code: None,
        retry_after_seconds: None,
        error_details: None,
        ws_close_code: None,
        usage_headers: Default::default(),
        connect_count: None,
        timestamp: Utc::now(),
        client_id: "feed-1".into(),
        probe: false,
    }
}

#[tokio::test]
async fn the_stream_is_created_then_updated_and_short_windows_are_refused() {
    let server = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let info = ensure_feedback_stream(&js, &FeedbackStreamConfig::default()).await.unwrap();
    assert_eq!(info.config.subjects, vec!["proxy.v1.feedback.>".to_owned()]);
    assert_eq!(info.config.storage, async_nats::jetstream::stream::StorageType::File);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));

    let bigger = FeedbackStreamConfig {
        max_age: Duration::from_secs(3600),
        max_bytes: 10 << 20,
        duplicate_window: Duration::from_secs(300),
        ..FeedbackStreamConfig::default()
    };
    let info = ensure_feedback_stream(&js, &bigger).await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.max_bytes, 10 << 20);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(300));
    // Unchanged config: nothing to do, same answer.
    assert_eq!(ensure_feedback_stream(&js, &bigger).await.unwrap().config.max_bytes, 10 << 20);

    let short = FeedbackStreamConfig { duplicate_window: Duration::from_secs(30), ..FeedbackStreamConfig::default() };
    let err = ensure_feedback_stream(&js, &short).await.unwrap_err();
    assert!(matches!(err, FeedbackStreamError::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn a_feedback_event_is_stored_once_with_its_event_id() {
    let server = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    ensure_feedback_stream(&js, &FeedbackStreamConfig::default()).await.unwrap();
    let event = feedback();
    let first = publish_feedback(&js, &event).await.unwrap();
    assert_eq!((first.stream.as_str(), first.duplicate), ("PROXY_FEEDBACK", false));
    let second = send_feedback(&js, &event).await.unwrap().await.unwrap();
    assert!(second.duplicate);
    assert_eq!(second.sequence, first.sequence);

    let stream = js.get_stream("PROXY_FEEDBACK").await.unwrap();
    let stored = stream.get_raw_message(first.sequence).await.unwrap();
    assert_eq!(stored.subject.as_str(), "proxy.v1.feedback.binance.websocket");
    let headers = stored.headers;
    assert_eq!(headers.get(MSG_ID_HEADER).unwrap().as_str(), event.event_id.to_string());
    let decoded: ProxyFeedback = Codec::default().decode(Some(&headers), &stored.payload).unwrap();
    assert_eq!(decoded, event);
    let mut stream = stream;
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn without_the_stream_publishing_fails_with_a_typed_error() {
    let server = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let err = publish_feedback(&js, &feedback()).await.unwrap_err();
    assert!(
        matches!(err.kind(), feedback::PublishFeedbackErrorKind::Ack | feedback::PublishFeedbackErrorKind::Publish),
        "{err}"
    );
}
