//! Serving over NATS: concurrency, single-flight, per-client spreading,
//! hedging, request ids and auth upstream, rollout, warm-up, metrics, shutdown.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use proxybus_shared::ConnectionType::{Http, Websocket};
use proxybus_shared::ResponseSource;

use crate::helpers::*;

#[tokio::test]
async fn two_hundred_concurrent_requests_for_one_key_make_one_upstream_call() {
    let upstream = FakeUpstream::start(Behaviour { delay: Duration::from_millis(300), ..Default::default() }).await;
    let app = TestApp::spawn(&borrow(&upstream_vars(&[&upstream]))).await;
    let answers = join_all((0..200).map(|_| app.ask("binance", Websocket, "feed-1"))).await;
    assert_eq!(upstream.calls(), 1, "single-flight: one upstream call for one key");
    let urls: HashSet<_> = answers.iter().map(|a| a.proxy_url.clone()).collect();
    assert_eq!(urls.len(), 1, "{urls:?}");
    let ids: HashSet<_> = answers.iter().map(|a| a.request_id.clone()).collect();
    assert_eq!(ids.len(), 200, "each answer echoes its own request id");
    let stats = app.stats().await;
    assert_eq!(stats["requests_total"], 200);
    assert_eq!(stats["upstream_calls"], 1);
}

#[tokio::test]
async fn a_slow_upstream_call_does_not_hold_up_cache_hits() {
    let upstream = FakeUpstream::start(Behaviour { delay: Duration::from_millis(1_000), ..Default::default() }).await;
    let app = TestApp::spawn(&borrow(&upstream_vars(&[&upstream]))).await;
    app.ask("binance", Http, "feed-1").await;
    let miss = app.ask("binance", Http, "feed-2");
    let hit = async {
        eventually("the miss reached upstream", || async { upstream.calls() == 2 }).await;
        let started = tokio::time::Instant::now();
        let answer = app.ask("binance", Http, "feed-1").await;
        (answer, started.elapsed())
    };
    let (miss, (hit, elapsed)) = tokio::join!(miss, hit);
    assert_eq!(miss.source, ResponseSource::Service);
    assert_eq!(hit.source, ResponseSource::Cache);
    assert!(elapsed < Duration::from_millis(500), "the hit waited for the miss: {elapsed:?}");
}

#[tokio::test]
async fn clients_are_spread_over_the_pool_and_each_keeps_its_proxy_within_the_ttl() {
    let proxies: Vec<String> = (1..=4).map(|i| format!("http://u:pw@10.0.0.{i}:3128")).collect();
    let upstream = FakeUpstream::start(Behaviour { proxies, ..Default::default() }).await;
    let app = TestApp::spawn(&borrow(&upstream_vars(&[&upstream]))).await;
    let clients = ["feed-a", "feed-b", "feed-c", "feed-d"];
    let mut first = Vec::new();
    for client in clients {
        first.push(app.ask("binance", Http, client).await);
    }
    let distinct: HashSet<_> = first.iter().map(|a| a.proxy_url.clone()).collect();
    assert_eq!(distinct.len(), 4, "four feeds, four proxies: {distinct:?}");
    for (client, earlier) in clients.iter().zip(&first) {
        let again = app.ask("binance", Http, client).await;
        assert_eq!(again.source, ResponseSource::Cache);
        assert_eq!(again.proxy_url, earlier.proxy_url, "{client} keeps its proxy");
    }
    assert_eq!(upstream.calls(), 4);
    let seen: HashSet<_> = upstream.seen().iter().map(|s| s.request.client_id.clone()).collect();
    assert_eq!(seen.len(), 4, "upstream is told who asks");
}

#[tokio::test]
async fn upstream_gets_the_request_id_and_the_bearer_token() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    let app = TestApp::spawn(&borrow(&upstream_vars(&[&upstream]))).await;
    let answer = app.ask("kraken", Http, "feed-1").await;
    let seen = upstream.seen();
    assert_eq!(seen[0].request_id_header.as_deref(), Some(answer.request_id.as_str()));
    assert_eq!(seen[0].request.request_id.as_deref(), Some(answer.request_id.as_str()));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer test-token"));
    assert_eq!(answer.proxy_id, Some(proxybus_shared::proxy_id(answer.proxy_url.as_deref().unwrap())));
}

#[tokio::test]
async fn hedging_answers_from_the_fast_endpoint_when_the_first_is_slow() {
    let slow = FakeUpstream::start(Behaviour {
        delay: Duration::from_secs(2),
        proxies: vec!["http://slow:1".into()],
        ..Default::default()
    })
    .await;
    let fast = FakeUpstream::start(Behaviour { proxies: vec!["http://fast:2".into()], ..Default::default() }).await;
    let app = TestApp::spawn(&borrow(&upstream_vars(&[&slow, &fast]))).await;
    let started = tokio::time::Instant::now();
    let answer = app.ask("binance", Http, "feed-1").await;
    let elapsed = started.elapsed();
    assert_eq!(answer.proxy_url.as_deref(), Some("http://fast:2"));
    assert_eq!((slow.calls(), fast.calls()), (1, 1), "the slow one was asked first, then hedged");
    assert!(elapsed < Duration::from_secs(2), "did not wait for the slow endpoint: {elapsed:?}");
}

#[tokio::test]
async fn only_exchanges_in_the_rollout_go_upstream() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    let mut vars = upstream_vars(&[&upstream]);
    vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__EXCHANGES", r#"["binance"]"#.into()));
    vars.push(("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "socks5://embedded:1080".into()));
    let app = TestApp::spawn(&borrow(&vars)).await;
    let kraken = app.ask("kraken", Http, "feed-1").await;
    assert_eq!(
        (kraken.source, kraken.proxy_url.as_deref()),
        (ResponseSource::Embedded, Some("socks5://embedded:1080"))
    );
    assert_eq!(upstream.calls(), 0);
    assert_eq!(app.ask("binance", Http, "feed-1").await.source, ResponseSource::Service);
    assert_eq!(upstream.calls(), 1);
    let stats = app.stats().await;
    assert_eq!(stats["fallback_used_count"], 0, "embedded by rollout is not a fallback");
}

#[tokio::test]
async fn warm_up_fills_the_cache_before_serving() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    let mut vars = upstream_vars(&[&upstream]);
    vars.push((
        "PROXYBUS_RESOLVER_WARM_UP",
        r#"[{"client_id":"feed-1","exchange_id":"binance","connection_type":"websocket"}]"#.into(),
    ));
    let app = TestApp::spawn(&borrow(&vars)).await;
    assert_eq!(upstream.calls(), 1, "warmed before the service answered PING");
    assert_eq!(app.ask("binance", Websocket, "feed-1").await.source, ResponseSource::Cache);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn metrics_endpoint_and_srv_stats_report_the_seed_metrics() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    let addr = free_port();
    let mut vars = upstream_vars(&[&upstream]);
    let listen = addr.to_string();
    vars.push(("PROXYBUS_RESOLVER_METRICS_LISTEN", listen));
    let app = TestApp::spawn(&borrow(&vars)).await;
    app.ask("binance", Http, "feed-1").await;
    app.ask("binance", Http, "feed-1").await;
    let stats = app.stats().await;
    assert_eq!(stats["requests_total"], 2);
    assert_eq!(stats["requests_success"], 2);
    assert_eq!(stats["requests_cached"], 1);
    assert!(stats["avg_response_time_ms"].as_f64().unwrap() > 0.0, "{stats}");
    let body = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    for metric in [
        "proxybus_resolver_requests_total",
        "proxybus_resolver_request_duration_seconds_bucket",
        "proxybus_resolver_upstream_duration_seconds_bucket",
        "proxybus_resolver_upstream_calls_total",
    ] {
        assert!(body.contains(metric), "{metric} missing from /metrics:\n{body}");
    }
    assert!(body.contains("source=\"cache\""), "{body}");
    // One upstream call (the second ask was a cache hit), counted in this endpoint's series.
    let endpoint = format!("endpoint=\"{}\"", upstream.url);
    let calls = |outcome: &str| {
        body.lines()
            .find(|line| {
                line.starts_with("proxybus_resolver_upstream_calls_total{")
                    && line.contains(&endpoint)
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(calls("ok").as_deref(), Some("1"), "{body}");
    assert_eq!(calls("error").as_deref(), Some("0"), "registered with the endpoint, not yet counted:\n{body}");
    assert!(!body.contains(":pw@"), "no proxy credentials in metrics");
}

#[tokio::test]
async fn shutdown_finishes_the_requests_in_flight() {
    let upstream = FakeUpstream::start(Behaviour { delay: Duration::from_millis(500), ..Default::default() }).await;
    let mut app = TestApp::spawn(&borrow(&upstream_vars(&[&upstream]))).await;
    let client = app.client.clone();
    let asks: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let request = request("binance", Http, &format!("feed-{i}"));
                let body =
                    proxybus_shared::Codec::default().encode(proxybus_shared::Encoding::MsgPack, &request).unwrap();
                client.request("proxy.v1.request.binance.http", body).await
            })
        })
        .collect();
    eventually("every request reached upstream", || async { upstream.calls() == 20 }).await;
    app.shutdown().await.expect("run returns Ok");
    for ask in asks {
        let reply = ask.await.unwrap().expect("answered before the resolver stopped");
        let answer: proxybus_shared::ProxyResponse =
            proxybus_shared::Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap();
        assert_eq!(answer.source, ResponseSource::Service);
    }
}
