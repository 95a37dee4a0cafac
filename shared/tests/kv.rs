//! Key-value buckets open on the nats-server this machine has (2.9), where
//! async-nats' own `create_key_value` cannot parse the account info.

use async_nats::jetstream;
use proxybus_shared::kv::{BucketConfig, open_or_create};
use proxybus_tests::NatsServer;

#[tokio::test]
async fn a_bucket_is_created_once_and_reopened_with_its_values() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let config = BucketConfig::new("PROXY_HEALTH_TEST", "test bucket");
    let bucket = open_or_create(&js, &config).await.unwrap();
    bucket.put("k1", "v1".into()).await.unwrap();
    bucket.put("k1", "v2".into()).await.unwrap();
    let again = open_or_create(&js, &config).await.unwrap();
    assert_eq!(again.get("k1").await.unwrap().unwrap().as_ref(), b"v2");
    let mut stream = js.get_stream("KV_PROXY_HEALTH_TEST").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.max_messages_per_subject, 1, "history 1 keeps only the latest value");
    assert_eq!(info.state.messages, 1);
}
