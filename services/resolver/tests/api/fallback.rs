//! The fallback chain, step by step: upstream → stale cache (within the max
//! staleness) → embedded settings → direct connection, or an error reply as the
//! fallback policy says.

use std::time::Duration;

use proxybus_resolver::ResolveError;
use proxybus_shared::ConnectionType::{Http, Websocket};
use proxybus_shared::{ErrorCode, ResponseSource};

use crate::helpers::*;

#[tokio::test]
async fn every_step_of_the_chain_in_order() {
    let upstream = FakeUpstream::start(Behaviour { ttl_seconds: 10, ..Default::default() }).await;
    let mut vars = upstream_vars(&[&upstream]);
    vars.push(("PROXYBUS_RESOLVER_MAX_STALENESS_SECONDS", "60".into()));
    vars.push(("PROXYBUS_RESOLVER_FAILURE_THRESHOLD", "100".into()));
    vars.push(("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__HTTP__URL", "http://u:pw@embedded-binance:3128".into()));
    let resolver = resolver(&borrow(&vars));

    let fresh = resolver.resolve(&request("binance", Http, "feed-1")).await.unwrap();
    assert_eq!(fresh.source, ResponseSource::Service, "1. upstream");

    upstream.set(|b| b.status = 503);
    skip(Duration::from_secs(11)).await;
    let stale = resolver.resolve(&request("binance", Http, "feed-1")).await.unwrap();
    assert_eq!(stale.source, ResponseSource::StaleCache, "2. stale cache");
    assert_eq!(stale.proxy_url, fresh.proxy_url);

    skip(Duration::from_secs(60)).await;
    let embedded = resolver.resolve(&request("binance", Http, "feed-1")).await.unwrap();
    assert_eq!(embedded.source, ResponseSource::Embedded, "3. embedded, once too stale");
    assert_eq!(embedded.proxy_url.as_deref(), Some("http://u:pw@embedded-binance:3128"));

    let direct = resolver.resolve(&request("kraken", Http, "feed-1")).await.unwrap();
    assert_eq!(direct.source, ResponseSource::Direct, "4. direct: nothing embedded for kraken");
    assert_eq!(direct.proxy_url, None);
    assert_eq!(resolver.metrics().snapshot().fallback_used_count, 3);
}

#[tokio::test]
async fn policy_fail_and_embedded_fallback_give_errors_when_nothing_is_left() {
    let upstream = FakeUpstream::start(Behaviour { status: 500, ..Default::default() }).await;
    let mut vars = upstream_vars(&[&upstream]);
    vars.push(("PROXYBUS_RESOLVER_FALLBACK_POLICY", "fail".into()));
    let failing = resolver(&borrow(&vars));
    let err = failing.resolve(&request("binance", Http, "f")).await.unwrap_err();
    assert!(matches!(err, ResolveError::UpstreamUnavailable(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable);

    vars.pop();
    vars.push(("PROXYBUS_RESOLVER_FALLBACK_POLICY", "embedded_fallback".into()));
    let strict = resolver(&borrow(&vars));
    assert_eq!(strict.resolve(&request("binance", Http, "f")).await.unwrap_err(), ResolveError::NoProxyAvailable);

    vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__FALLBACK_TO_EMBEDDED", "false".into()));
    vars.push(("CRYPTOFEED_PROXY_DEFAULT__WEBSOCKET__URL", "socks5://e:1".into()));
    let no_embedded = resolver(&borrow(&vars));
    assert_eq!(
        no_embedded.resolve(&request("binance", Websocket, "f")).await.unwrap_err(),
        ResolveError::NoProxyAvailable,
        "fallback_to_embedded=false skips the embedded step"
    );
}

#[tokio::test]
async fn policy_fail_is_an_upstream_unavailable_error_reply_over_nats() {
    let upstream = FakeUpstream::start(Behaviour { status: 502, ..Default::default() }).await;
    let mut vars = upstream_vars(&[&upstream]);
    vars.push(("PROXYBUS_RESOLVER_FALLBACK_POLICY", "fail".into()));
    let app = TestApp::spawn(&borrow(&vars)).await;
    let reply = app.ask_raw("binance", Http, "feed-1").await;
    let error = error_reply(&reply);
    assert_eq!((error.error, error.code), (ErrorCode::UpstreamUnavailable, 503));
    assert!(error.request_id.is_some());
    let stats = app.stats().await;
    assert_eq!(stats["requests_failed"], 1);
}

#[tokio::test]
async fn proxying_disabled_answers_direct_without_asking_anyone() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    let mut vars = upstream_vars(&[&upstream]);
    vars[0] = ("CRYPTOFEED_PROXY_ENABLED", "false".into());
    let app = TestApp::spawn(&borrow(&vars)).await;
    let answer = app.ask("binance", Http, "feed-1").await;
    assert_eq!((answer.source, answer.proxy_url), (ResponseSource::Direct, None));
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn an_unreachable_endpoint_falls_back_too() {
    let mut vars = vec![
        ("CRYPTOFEED_PROXY_ENABLED", "true".to_owned()),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED", "true".into()),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_METHOD", "none".into()),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS", format!(r#"["http://{}"]"#, free_port())),
    ];
    vars.push((
        "CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__PROXIES",
        r#"[{"url":"http://p1:1"},{"url":"http://p2:2"}]"#.into(),
    ));
    let resolver = resolver(&borrow(&vars));
    let a = resolver.resolve(&request("binance", Http, "f1")).await.unwrap();
    let b = resolver.resolve(&request("binance", Http, "f2")).await.unwrap();
    assert_eq!((a.source, b.source), (ResponseSource::Embedded, ResponseSource::Embedded));
    assert_ne!(a.proxy_url, b.proxy_url, "embedded round robin");
    assert_eq!(a.strategy, "embedded_round_robin");
}
