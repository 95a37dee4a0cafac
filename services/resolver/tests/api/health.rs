//! Health awareness: an ejected (or banned) proxy is not served from cache or
//! from the embedded settings once its `HealthStats` arrives on `proxy.v1.health.*`.

use chrono::Utc;
use proxybus_shared::ConnectionType::Http;
use proxybus_shared::{
    Codec, Encoding, ExchangeHealth, ExchangeState, HealthState, HealthStats, ResponseSource, proxy_id, redact_url,
};

use crate::helpers::*;

/// Puts `stats` into bucket `PROXY_HEALTH` the way the aggregator stores them,
/// without publishing on `proxy.v1.health.*`.
async fn store(client: &async_nats::Client, stats: &HealthStats) {
    let js = async_nats::jetstream::new(client.clone());
    let bucket = proxybus_shared::kv::open_health_bucket(&js).await.unwrap();
    bucket.put(stats.proxy_id.as_str(), Codec::default().encode(Encoding::MsgPack, stats).unwrap()).await.unwrap();
}

/// Issue #11, input d): a resolver (re)started while P is ejected and Q is barred
/// for binance knows it before its first answer, from `PROXY_HEALTH`, and follows
/// the bucket after (a KV watch: no `proxy.v1.health.*` message is needed).
#[tokio::test]
async fn a_restarted_resolver_starts_from_the_stored_health_and_follows_the_bucket() {
    let nats = proxybus_tests::NatsServer::start().await.unwrap();
    let client = nats.connect().await.unwrap();
    let (p, q, r) = ("http://p1:1", "http://p2:2", "http://p3:3");
    store(&client, &ejected(p)).await;
    let mut barred = HealthStats::new(proxy_id(q), q.into(), None, Utc::now());
    barred.exchanges.insert(
        "binance".parse().unwrap(),
        ExchangeHealth {
            state: ExchangeState::Banned,
            banned_until: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        },
    );
    store(&client, &barred).await;
    let pool = format!(r#"[{{"url":"{p}"}},{{"url":"{q}"}},{{"url":"{r}"}}]"#);
    let app = TestApp::spawn_on(
        nats,
        &[("CRYPTOFEED_PROXY_ENABLED", "true"), ("CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__PROXIES", &pool)],
    )
    .await;
    for i in 0..6 {
        let answer = app.ask("binance", Http, &format!("feed-{i}")).await;
        assert_eq!(answer.proxy_url.as_deref(), Some(r), "only r is usable for binance from the first answer on");
        let answer = app.ask("kraken", Http, &format!("feed-{i}")).await;
        assert_ne!(answer.proxy_url.as_deref(), Some(p), "p is ejected for every exchange");
    }
    // R is ejected later, in the bucket only: the watch brings it.
    let mut r_ejected = ejected(r);
    r_ejected.last_seq = 7;
    store(&client, &r_ejected).await;
    eventually("r is no longer handed out for kraken", || async {
        let mut answers = Vec::new();
        for i in 0..6 {
            answers.push(app.ask("kraken", Http, &format!("late-feed-{i}")).await.proxy_url);
        }
        answers.iter().all(|u| u.as_deref() == Some(q))
    })
    .await;
}

fn ejected(url: &str) -> HealthStats {
    let mut stats = HealthStats::new(proxy_id(url), redact_url(url), Some("us-east".parse().unwrap()), Utc::now());
    stats.state = HealthState::Ejected;
    stats.ejections = 1;
    stats.ejected_until = Some(Utc::now() + chrono::Duration::minutes(5));
    stats
}

#[tokio::test]
async fn an_ejected_cached_proxy_is_dropped_and_resolved_again() {
    let proxies = vec!["http://u:pw@10.0.0.1:3128".to_owned(), "http://u:pw@10.0.0.2:3128".to_owned()];
    let upstream = FakeUpstream::start(Behaviour { proxies: proxies.clone(), ..Default::default() }).await;
    let app = TestApp::spawn(&borrow(&upstream_vars(&[&upstream]))).await;
    let first = app.ask("binance", Http, "feed-1").await;
    assert_eq!(first.proxy_url.as_deref(), Some(proxies[0].as_str()));
    assert_eq!(app.ask("binance", Http, "feed-1").await.source, ResponseSource::Cache);

    let body = Codec::default().encode(Encoding::MsgPack, &ejected(&proxies[0])).unwrap();
    app.client.publish("proxy.v1.health.us-east", body).await.unwrap();
    app.client.flush().await.unwrap();
    eventually("the ejected proxy is replaced", || async {
        app.ask("binance", Http, "feed-1").await.proxy_url.as_deref() == Some(proxies[1].as_str())
    })
    .await;
    assert_eq!(upstream.calls(), 2, "resolved again once, then cached");
    assert_eq!(app.ask("binance", Http, "feed-1").await.source, ResponseSource::Cache);
}

#[tokio::test]
async fn ejected_and_banned_embedded_proxies_are_skipped() {
    let pool = r#"[{"url":"http://p1:1"},{"url":"http://p2:2"},{"url":"http://p3:3"}]"#;
    let resolver =
        resolver(&[("CRYPTOFEED_PROXY_ENABLED", "true"), ("CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__PROXIES", pool)]);
    resolver.health().record(ejected("http://p1:1"));
    let mut banned = HealthStats::new(proxy_id("http://p2:2"), "http://p2:2".into(), None, Utc::now());
    banned.exchanges.insert(
        "binance".parse().unwrap(),
        ExchangeHealth {
            state: ExchangeState::Banned,
            banned_until: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        },
    );
    resolver.health().record(banned);
    for i in 0..6 {
        let answer = resolver.resolve(&request("binance", Http, &format!("feed-{i}"))).await.unwrap();
        assert_eq!(answer.proxy_url.as_deref(), Some("http://p3:3"), "only p3 is usable for binance");
    }
    let kraken: Vec<_> =
        futures::future::join_all(
            (0..6).map(|i| {
                let resolver = &resolver;
                async move {
                    resolver.resolve(&request("kraken", Http, &format!("feed-{i}"))).await.unwrap().proxy_url.unwrap()
                }
            }),
        )
        .await;
    assert!(kraken.iter().any(|u| u == "http://p2:2"), "p2 is banned for binance only: {kraken:?}");
    assert!(!kraken.iter().any(|u| u == "http://p1:1"), "p1 is ejected for every exchange");
}

/// Issue 14 item 4: a cached proxy whose rate budget in `PROXY_BUDGETS` is near the
/// exchange's limit is not served for that exchange; the resolver asks again.
#[tokio::test]
async fn a_cached_proxy_near_its_rate_budget_is_resolved_again() {
    use proxybus_shared::budget::{BudgetLimits, RateBudget, open_budget_bucket};
    let proxies = vec!["http://u:pw@10.0.0.1:3128".to_owned(), "http://u:pw@10.0.0.2:3128".to_owned()];
    let upstream = FakeUpstream::start(Behaviour { proxies: proxies.clone(), ..Default::default() }).await;
    let app = TestApp::spawn(&borrow(&upstream_vars(&[&upstream]))).await;
    let first = app.ask("binance", Http, "feed-1").await;
    assert_eq!(first.proxy_url.as_deref(), Some(proxies[0].as_str()));
    assert_eq!(app.ask("kraken", Http, "feed-1").await.proxy_url.as_deref(), Some(proxies[1].as_str()));

    // Binance says the first proxy's IP used 5 000 of its 6 000 weight this minute.
    let mut budget = RateBudget::new(proxy_id(&proxies[0]), "binance".parse().unwrap());
    BudgetLimits::binance().fold_weight(&mut budget, 5_000, Utc::now());
    let js = async_nats::jetstream::new(app.client.clone());
    let bucket = open_budget_bucket(&js).await.unwrap();
    bucket.put(budget.key(), Codec::default().encode(Encoding::MsgPack, &budget).unwrap()).await.unwrap();
    // (This fake upstream ignores budgets; a pool skips the proxy, see tests/tests/selection.rs.)
    eventually("the cached answer near its limit is no longer served", || async {
        app.ask("binance", Http, "feed-1").await.source == ResponseSource::Service
    })
    .await;
    assert!(upstream.calls() >= 3, "asked upstream again");
    let kraken = app.ask("kraken", Http, "feed-1").await;
    assert_eq!(kraken.source, ResponseSource::Cache, "kraken is not budgeted: its cached answer stays");
}
