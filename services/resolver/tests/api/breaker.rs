//! Circuit breakers per endpoint: five failures open it; while open no call
//! is made and answers come from the fallback; after the recovery timeout one
//! probe goes through, and its success closes the breaker. A `/healthz` probe
//! closes it without waiting for traffic.

use std::time::Duration;

use proxybus_shared::ConnectionType::Http;
use proxybus_shared::ResponseSource;
use proxybus_shared::breaker::BreakerState;

use crate::helpers::*;

fn vars(upstream: &FakeUpstream) -> Vec<(&'static str, String)> {
    let mut vars = upstream_vars(&[upstream]);
    vars.push(("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "socks5://u:pw@embedded:1080".into()));
    vars
}

#[tokio::test]
async fn five_failures_open_the_breaker_then_one_probe_after_recovery_closes_it() {
    let upstream = FakeUpstream::start(Behaviour { status: 503, ..Default::default() }).await;
    let resolver = resolver(&borrow(&vars(&upstream)));
    let endpoint = resolver.upstream().unwrap().endpoints().all()[0].clone();
    for i in 0..5 {
        let answer = resolver.resolve(&request("binance", Http, &format!("feed-{i}"))).await.unwrap();
        assert_eq!(answer.source, ResponseSource::Embedded, "failure {i} falls back");
    }
    assert_eq!(upstream.calls(), 5);
    assert_eq!(endpoint.breaker().state(), BreakerState::Open);
    for i in 0..10 {
        let answer = resolver.resolve(&request("binance", Http, &format!("open-{i}"))).await.unwrap();
        assert_eq!(answer.source, ResponseSource::Embedded);
        assert_eq!(answer.proxy_url.as_deref(), Some("socks5://u:pw@embedded:1080"));
    }
    assert_eq!(upstream.calls(), 5, "no upstream call while the breaker is open");

    upstream.set(|b| b.status = 200);
    skip(Duration::from_secs(29)).await;
    resolver.resolve(&request("binance", Http, "still-open")).await.unwrap();
    assert_eq!(upstream.calls(), 5, "still open at 29 s");
    skip(Duration::from_secs(1)).await;
    assert_eq!(endpoint.breaker().state(), BreakerState::HalfOpen);
    let answer = resolver.resolve(&request("binance", Http, "probe")).await.unwrap();
    assert_eq!(answer.source, ResponseSource::Service);
    assert_eq!(upstream.calls(), 6, "exactly one probe");
    assert_eq!(endpoint.breaker().state(), BreakerState::Closed);
    let snapshot = resolver.metrics().snapshot();
    assert_eq!(snapshot.circuit_breaker_open_count, 1);
    assert_eq!(snapshot.fallback_used_count, 16);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let upstream = FakeUpstream::start(Behaviour { status: 500, ..Default::default() }).await;
    let resolver = resolver(&borrow(&vars(&upstream)));
    for i in 0..5 {
        resolver.resolve(&request("binance", Http, &format!("feed-{i}"))).await.unwrap();
    }
    skip(Duration::from_secs(30)).await;
    resolver.resolve(&request("binance", Http, "probe")).await.unwrap();
    assert_eq!(upstream.calls(), 6);
    let endpoint = resolver.upstream().unwrap().endpoints().all()[0].clone();
    assert_eq!(endpoint.breaker().state(), BreakerState::Open);
    resolver.resolve(&request("binance", Http, "after")).await.unwrap();
    assert_eq!(upstream.calls(), 6);
}

#[tokio::test]
async fn a_healthz_probe_closes_an_open_breaker_without_traffic() {
    let upstream = FakeUpstream::start(Behaviour { status: 500, healthy: false, ..Default::default() }).await;
    let mut vars = vars(&upstream);
    vars.push(("PROXYBUS_RESOLVER_HEALTH_PROBE_INTERVAL_SECONDS", "1".into()));
    vars.push(("PROXYBUS_RESOLVER_FAILURE_THRESHOLD", "2".into()));
    let app = TestApp::spawn(&borrow(&vars)).await;
    for i in 0..2 {
        assert_eq!(app.ask("binance", Http, &format!("feed-{i}")).await.source, ResponseSource::Embedded);
    }
    assert_eq!(app.ask("binance", Http, "open").await.source, ResponseSource::Embedded);
    assert_eq!(upstream.calls(), 2, "open after two failures");
    upstream.set(|b| {
        b.status = 200;
        b.healthy = true;
    });
    // Recovery timeout is 30 s; only the /healthz probe (every second) can close it this soon.
    eventually("the probe closes the breaker", || async {
        app.ask("binance", Http, &uuid::Uuid::new_v4().to_string()).await.source == ResponseSource::Service
    })
    .await;
}
