//! The per-client cache: hits do not call upstream, expiry does, and the key
//! separates clients.

use std::time::Duration;

use proxybus_shared::ConnectionType::Http;
use proxybus_shared::ResponseSource;

use crate::helpers::*;

#[tokio::test]
async fn a_cache_hit_does_not_call_upstream_and_ttl_expiry_does() {
    let upstream = FakeUpstream::start(Behaviour { ttl_seconds: 60, ..Default::default() }).await;
    let resolver = resolver(&borrow(&upstream_vars(&[&upstream])));
    let first = resolver.resolve(&request("binance", Http, "feed-1")).await.unwrap();
    assert_eq!((first.source, upstream.calls()), (ResponseSource::Service, 1));
    let second = resolver.resolve(&request("binance", Http, "feed-1")).await.unwrap();
    assert_eq!((second.source, upstream.calls()), (ResponseSource::Cache, 1));
    assert_eq!(second.proxy_url, first.proxy_url);
    assert!(second.ttl_seconds <= 60 && second.ttl_seconds > 0, "{}", second.ttl_seconds);

    skip(Duration::from_secs(59)).await;
    let third = resolver.resolve(&request("binance", Http, "feed-1")).await.unwrap();
    assert_eq!((third.source, upstream.calls()), (ResponseSource::Cache, 1), "still fresh at 59 s");

    skip(Duration::from_secs(2)).await;
    let fourth = resolver.resolve(&request("binance", Http, "feed-1")).await.unwrap();
    assert_eq!((fourth.source, upstream.calls()), (ResponseSource::Service, 2), "expired at 60 s");
}

#[tokio::test]
async fn an_answer_without_ttl_uses_cache_ttl_seconds() {
    let upstream = FakeUpstream::start(Behaviour { ttl_seconds: 0, ..Default::default() }).await;
    let mut vars = upstream_vars(&[&upstream]);
    vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__CACHE_TTL_SECONDS", "20".into()));
    let resolver = resolver(&borrow(&vars));
    assert_eq!(resolver.resolve(&request("kraken", Http, "f")).await.unwrap().ttl_seconds, 20);
    skip(Duration::from_secs(19)).await;
    assert_eq!(resolver.resolve(&request("kraken", Http, "f")).await.unwrap().source, ResponseSource::Cache);
    skip(Duration::from_secs(2)).await;
    assert_eq!(resolver.resolve(&request("kraken", Http, "f")).await.unwrap().source, ResponseSource::Service);
    assert_eq!(upstream.calls(), 2);
}
