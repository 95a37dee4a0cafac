//! The selection core in-process: distributions, sticky sessions, health,
//! bans, panic mode, region fallback, leases.

use std::collections::HashMap;
use std::time::Duration;

use proxybus_pool::HealthSource;
use proxybus_pool::{SelectError, Selector};
use proxybus_shared::{FallbackPolicy, HealthState, ProxyFeedback, ProxyId, ResponseSource};

use crate::helpers::*;

const N: usize = 10_000;

/// Proxy ids chosen over `n` requests from distinct clients.
fn counts(selector: &Selector, exchange: &str, n: usize) -> HashMap<ProxyId, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let answer = selector.respond(&request(exchange, &format!("client-{i}"))).expect("a proxy");
        *counts.entry(answer.proxy_id.expect("not direct")).or_default() += 1;
    }
    counts
}

fn share(counts: &HashMap<ProxyId, usize>, n: u8, total: usize) -> f64 {
    counts.get(&id(n)).copied().unwrap_or(0) as f64 / total as f64
}

fn fold(selector: &Selector, event: serde_json::Value) {
    let event: ProxyFeedback = serde_json::from_value(event).unwrap();
    assert!(selector.feedback(&event), "feedback about a known proxy");
}

#[test]
fn round_robin_is_exact() {
    let selector = selector(&one_region("round_robin", &[1, 2, 3, 4]));
    let counts = counts(&selector, "binance", N);
    for n in 1..=4 {
        assert_eq!(counts[&id(n)], N / 4, "proxy {n}");
    }
}

#[test]
fn weighted_follows_the_weights_within_3_percent() {
    let toml = "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"weighted\"\nsticky = false\n\
        [[regions.us-east.proxies]]\nurl = \"http://user1:secret-pw-1@203.0.113.1:3128\"\nweight = 1.0\n\
        [[regions.us-east.proxies]]\nurl = \"http://user2:secret-pw-2@203.0.113.2:3128\"\nweight = 2.0\n\
        [[regions.us-east.proxies]]\nurl = \"http://user3:secret-pw-3@203.0.113.3:3128\"\nweight = 3.0\n\
        [[regions.us-east.proxies]]\nurl = \"http://user4:secret-pw-4@203.0.113.4:3128\"\nweight = 4.0\n";
    let selector = selector(toml);
    let counts = counts(&selector, "binance", N);
    for (n, expected) in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)] {
        let got = share(&counts, n, N);
        assert!((got - expected).abs() <= 0.03, "proxy {n}: {got:.3} instead of {expected}");
    }
}

#[test]
fn random_is_uniform_within_3_percent() {
    let selector = selector(&one_region("random", &[1, 2, 3, 4]));
    let counts = counts(&selector, "binance", N);
    for n in 1..=4 {
        let got = share(&counts, n, N);
        assert!((got - 0.25).abs() <= 0.03, "proxy {n}: {got:.3}");
    }
}

#[test]
fn p2c_ewma_prefers_the_faster_proxy_by_a_wide_margin() {
    let selector = selector(&one_region("p2c_ewma", &[1, 2, 3, 4]));
    for (n, latency) in [(1, 10), (2, 200), (3, 200), (4, 200)] {
        fold(
            &selector,
            feedback(n, "probe", "binance", "connected", true, serde_json::json!({ "latency_ms": latency })),
        );
    }
    let counts = counts(&selector, "binance", N);
    let fast = share(&counts, 1, N);
    assert!(fast > 0.45, "the fast proxy got {fast:.3}");
    for n in 2..=4 {
        let slow = share(&counts, n, N);
        assert!(fast > 2.5 * slow, "fast {fast:.3} vs proxy {n} {slow:.3}");
    }
}

#[test]
fn p2c_ewma_spreads_evenly_when_latencies_are_equal() {
    let selector = selector(&one_region("p2c_ewma", &[1, 2, 3, 4]));
    let counts = counts(&selector, "binance", N);
    for n in 1..=4 {
        let got = share(&counts, n, N);
        assert!((got - 0.25).abs() <= 0.03, "proxy {n}: {got:.3}: leases must spread the load");
    }
}

#[tokio::test(start_paused = true)]
async fn least_connections_balances_leases_and_refills_released_ones() {
    let selector = selector(&one_region("least_connections", &[1, 2, 3, 4]));
    let mut clients_of_1 = Vec::new();
    for i in 0..N {
        let client = format!("client-{i}");
        if selector.respond(&request("binance", &client)).unwrap().proxy_id == Some(id(1)) {
            clients_of_1.push(client);
        }
    }
    for n in 1..=4 {
        assert_eq!(selector.active_leases(&id(n)), (N / 4) as u32, "proxy {n}");
    }
    // 100 clients of proxy 1 disconnect: the next 100 requests all go to proxy 1.
    for client in &clients_of_1[..100] {
        fold(&selector, feedback(1, client, "binance", "disconnected", true, serde_json::json!({})));
    }
    assert_eq!(selector.active_leases(&id(1)), (N / 4 - 100) as u32);
    for i in 0..100 {
        let answer = selector.respond(&request("binance", &format!("new-{i}"))).unwrap();
        assert_eq!(answer.proxy_id, Some(id(1)), "request {i}");
    }
    // Leases end with the TTL (300 s by default).
    tokio::time::advance(Duration::from_secs(301)).await;
    for n in 1..=4 {
        assert_eq!(selector.active_leases(&id(n)), 0, "proxy {n}");
    }
}

#[test]
fn max_leases_caps_a_proxy() {
    let toml = "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"round_robin\"\n\
        [[regions.us-east.proxies]]\nurl = \"http://user1:secret-pw-1@203.0.113.1:3128\"\nmax_leases = 2\n\
        [[regions.us-east.proxies]]\nurl = \"http://user2:secret-pw-2@203.0.113.2:3128\"\n";
    let selector = selector(toml);
    let counts = counts(&selector, "binance", 100);
    assert_eq!(counts[&id(1)], 2);
    assert_eq!(counts[&id(2)], 98);
    // A client holding one of the two leases keeps its proxy (its own lease is not counted against it).
    let again = selector.respond(&request("binance", "client-0")).unwrap();
    assert_eq!(again.proxy_id, Some(id(1)));
    assert_eq!(again.strategy, "sticky");
}

#[test]
fn sticky_sessions_keep_the_proxy_until_it_is_ejected() {
    let toml = format!(
        "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"round_robin\"\nsticky = true\n{}",
        proxies("us-east", &[1, 2, 3])
    );
    let selector = selector(&toml);
    let first = selector.respond(&request("binance", "feed-a")).unwrap();
    assert_eq!(first.strategy, "round_robin");
    let mine = first.proxy_id.unwrap();
    for i in 0..20 {
        selector.respond(&request("binance", &format!("other-{i}"))).unwrap();
        let again = selector.respond(&request("binance", "feed-a")).unwrap();
        assert_eq!(again.proxy_id.as_ref(), Some(&mine), "round {i}");
        assert_eq!(again.strategy, "sticky");
    }
    // The same client on another exchange is another session.
    let coinbase: Vec<_> = (0..3).map(|_| selector.respond(&request("coinbase", "feed-a")).unwrap().strategy).collect();
    assert_eq!(coinbase[0], "round_robin");

    let mut ejected = stats(1, HealthState::Ejected);
    ejected.proxy_id = mine;
    selector.apply_health(ejected, HealthSource::Http);
    let moved = selector.respond(&request("binance", "feed-a")).unwrap();
    assert_ne!(moved.proxy_id.as_ref(), Some(&mine), "an ejected proxy is not sticky");
    assert_eq!(moved.strategy, "round_robin");
    let stays = selector.respond(&request("binance", "feed-a")).unwrap();
    assert_eq!((stays.proxy_id, stays.strategy.as_str()), (moved.proxy_id, "sticky"));
}

#[test]
fn an_ejected_proxy_is_never_returned_by_any_strategy() {
    for strategy in ["round_robin", "random", "weighted", "least_connections", "p2c_ewma"] {
        let selector = selector(&one_region(strategy, &[1, 2, 3, 4, 5]));
        selector.apply_health(stats(1, HealthState::Ejected), HealthSource::Http);
        selector.apply_health(ejected_for(2, 10), HealthSource::Nats);
        // Proxy 3 is ejected locally after five consecutive failures.
        for _ in 0..5 {
            fold(
                &selector,
                feedback(3, "probe", "binance", "failed", false, serde_json::json!({ "error_kind": "timeout" })),
            );
        }
        // Degraded proxies are still used.
        selector.apply_health(stats(4, HealthState::Degraded), HealthSource::Http);
        let counts = counts(&selector, "binance", 2_000);
        for n in [1, 2, 3] {
            assert!(!counts.contains_key(&id(n)), "{strategy} returned ejected proxy {n}");
        }
        assert!(counts.contains_key(&id(4)) && counts.contains_key(&id(5)), "{strategy}: {counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_local_ejection_ends_after_its_time() {
    let selector = selector(&one_region("round_robin", &[1, 2]));
    for _ in 0..5 {
        fold(
            &selector,
            feedback(1, "probe", "binance", "failed", false, serde_json::json!({ "error_kind": "refused" })),
        );
    }
    assert!(!counts(&selector, "binance", 10).contains_key(&id(1)));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(counts(&selector, "binance", 10).contains_key(&id(1)), "back after the 30 s ejection");
}

#[test]
fn a_451_ban_for_binance_still_allows_coinbase() {
    let selector = selector(&one_region("round_robin", &[1, 2]));
    selector.apply_health(banned_for(1, "binance"), HealthSource::Http);
    // Proxy 2 is banned for binance by a 451 seen in feedback.
    fold(&selector, feedback(2, "probe", "kraken", "failed", false, serde_json::json!({ "error_kind": "http_451" })));
    let binance = counts(&selector, "binance", 1_000);
    assert_eq!(binance.get(&id(1)), None, "banned for binance by the aggregator");
    assert_eq!(binance[&id(2)], 1_000);
    let coinbase = counts(&selector, "coinbase", 1_000);
    assert_eq!((coinbase[&id(1)], coinbase[&id(2)]), (500, 500), "both serve coinbase");
    let kraken = counts(&selector, "kraken", 1_000);
    assert_eq!(kraken.get(&id(2)), None, "banned for kraken by local feedback");
}

#[test]
fn panic_mode_answers_the_least_bad_proxy_when_all_are_ejected() {
    let selector = selector(&one_region("p2c_ewma", &[1, 2, 3]));
    selector.apply_health(ejected_for(1, 60), HealthSource::Http);
    selector.apply_health(ejected_for(2, 1), HealthSource::Http);
    selector.apply_health(stats(3, HealthState::Ejected), HealthSource::Http);
    for i in 0..50 {
        let answer = selector.respond(&request("binance", &format!("c{i}"))).unwrap();
        assert_eq!(answer.strategy, "panic");
        assert_eq!(answer.proxy_id, Some(id(2)), "the one whose ejection ends first");
        assert!(answer.proxy_url.is_some());
    }
    // One proxy recovers: panic mode ends.
    selector.apply_health(stats(3, HealthState::Healthy), HealthSource::Http);
    let answer = selector.respond(&request("binance", "after")).unwrap();
    assert_eq!((answer.strategy.as_str(), answer.proxy_id), ("p2c_ewma", Some(id(3))));
}

#[test]
fn when_all_ejected_can_fail_or_go_direct() {
    for (policy, expect_direct) in [("fail", false), ("direct", true)] {
        let toml = format!(
            "default_region = \"us-east\"\n[regions.us-east]\nwhen_all_ejected = \"{policy}\"\n{}",
            proxies("us-east", &[1])
        );
        let selector = selector(&toml);
        selector.apply_health(stats(1, HealthState::Ejected), HealthSource::Http);
        let result = selector.respond(&request("binance", "c"));
        if expect_direct {
            let answer = result.unwrap();
            assert_eq!((answer.proxy_url, answer.strategy.as_str()), (None, "direct"));
            assert_eq!(answer.source, ResponseSource::Direct);
        } else {
            assert!(matches!(result, Err(SelectError::NoProxyAvailable { .. })), "{result:?}");
        }
    }
}

fn three_regions() -> String {
    format!(
        "default_region = \"us-east\"\n\
         [regions.us-east]\nstrategy = \"round_robin\"\nfallback_regions = [\"eu-west\", \"ap-northeast\"]\n{}\
         [regions.eu-west]\nstrategy = \"least_connections\"\nttl_seconds = 120\nfallback_policy = \"fail\"\n{}\
         [regions.ap-northeast]\nstrategy = \"weighted\"\nttl_seconds = 600\nfallback_policy = \"embedded_fallback\"\n{}",
        proxies("us-east", &[1, 2]),
        proxies("eu-west", &[3]),
        proxies("ap-northeast", &[4])
    )
}

#[test]
fn region_fallback_answers_from_the_nearest_region_and_says_so() {
    let selector = selector(&three_regions());
    let home = selector.respond(&request("binance", "a")).unwrap();
    assert_eq!(home.region.unwrap().as_str(), "us-east", "no region: the default one");
    assert_eq!(home.metadata["region_fallback"], false);

    selector.apply_health(stats(1, HealthState::Ejected), HealthSource::Http);
    selector.apply_health(stats(2, HealthState::Ejected), HealthSource::Http);
    let mut asked = request("binance", "b");
    asked.region = Some("us-east".parse().unwrap());
    let answer = selector.respond(&asked).unwrap();
    assert_eq!(answer.region.as_ref().unwrap().as_str(), "eu-west");
    assert_eq!(answer.proxy_id, Some(id(3)));
    assert_eq!(answer.metadata["region_fallback"], true);
    assert_eq!(answer.metadata["requested_region"], "us-east");
    assert_eq!(answer.strategy, "least_connections", "the answering pool's strategy");
    assert_eq!((answer.ttl_seconds, answer.fallback_policy), (120, FallbackPolicy::Fail), "and its TTL and policy");

    selector.apply_health(stats(3, HealthState::Ejected), HealthSource::Http);
    let answer = selector.respond(&request("binance", "c")).unwrap();
    assert_eq!(answer.region.unwrap().as_str(), "ap-northeast", "the next nearest");
    assert_eq!((answer.ttl_seconds, answer.fallback_policy), (600, FallbackPolicy::EmbeddedFallback));

    // A region the inventory lacks is served like the default region.
    let mut mars = request("binance", "d");
    mars.region = Some("mars".parse().unwrap());
    let answer = selector.respond(&mars).unwrap();
    assert_eq!(answer.region.unwrap().as_str(), "ap-northeast");
    assert_eq!(answer.metadata["requested_region"], "mars");
    assert_eq!(answer.metadata["region_fallback"], true, "the answer says it is not from mars");

    // With its own region healthy, a region the inventory lacks still says it fell back.
    let fresh = crate::helpers::selector(&three_regions());
    let answer = fresh.respond(&mars).unwrap();
    assert_eq!(answer.region.unwrap().as_str(), "us-east", "served by the default region");
    assert_eq!(answer.metadata["region_fallback"], true);
}

#[test]
fn inventory_rules_restrict_exchanges_and_connection_types() {
    let toml = "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"round_robin\"\nsticky = false\n\
        [[regions.us-east.proxies]]\nurl = \"http://user1:secret-pw-1@203.0.113.1:3128\"\ndenied_exchanges = [\"binance\"]\n\
        [[regions.us-east.proxies]]\nurl = \"http://user2:secret-pw-2@203.0.113.2:3128\"\nallowed_exchanges = [\"binance\"]\nconnection_types = [\"http\"]\n\
        [[regions.us-east.proxies]]\nurl = \"http://user3:secret-pw-3@203.0.113.3:3128\"\nenabled = false\n";
    let selector = selector(toml);
    assert_eq!(counts(&selector, "coinbase", 20).keys().collect::<Vec<_>>(), [&id(1)]);
    let mut http = request("binance", "h");
    http.connection_type = proxybus_shared::ConnectionType::Http;
    assert_eq!(selector.respond(&http).unwrap().proxy_id, Some(id(2)));
    let none = selector.respond(&request("binance", "ws"));
    assert!(matches!(none, Err(SelectError::NoProxyAvailable { .. })), "no proxy serves binance websockets: {none:?}");
}

#[test]
fn answers_carry_the_full_url_and_older_health_does_not_win() {
    let selector = selector(&one_region("round_robin", &[1]));
    let answer = selector.respond(&request("binance", "c")).unwrap();
    assert_eq!(answer.proxy_url.as_deref(), Some(url(1).as_str()), "the feed needs the credentials");
    assert_eq!(answer.ttl_seconds, 300);
    let newer = stats(1, HealthState::Healthy);
    let mut older = stats(1, HealthState::Ejected);
    older.updated_at = newer.updated_at - chrono::Duration::seconds(5);
    assert!(selector.apply_health(newer, HealthSource::Nats));
    assert!(!selector.apply_health(older, HealthSource::Http), "stale statistics are ignored");
    assert_eq!(selector.respond(&request("binance", "d")).unwrap().strategy, "round_robin");
}

/// Issue #11, input b) at the pool: six `http_403` from bybit through proxy 1 bar it
/// for bybit (from the third on) and never for binance; before the third, bybit still gets it.
#[tokio::test]
async fn forbidden_answers_of_one_exchange_bar_the_proxy_for_that_exchange_only() {
    let selector = selector(&one_region("round_robin", &[1, 2]));
    let forbidden = |n: u8| -> proxybus_shared::ProxyFeedback {
        serde_json::from_value(feedback(
            n,
            "feed",
            "bybit",
            "failed",
            false,
            serde_json::json!({"error_kind": "http_403", "status_code": 403}),
        ))
        .unwrap()
    };
    let served = |exchange: &str| -> std::collections::HashSet<_> {
        (0..10)
            .map(|i| selector.respond(&request(exchange, &format!("{exchange}-{i}"))).unwrap().proxy_id.unwrap())
            .collect()
    };
    for _ in 0..2 {
        selector.feedback(&forbidden(1));
    }
    assert!(served("bybit").contains(&id(1)), "two 403s are not yet a bar");
    for _ in 0..4 {
        selector.feedback(&forbidden(1));
    }
    assert_eq!(served("bybit"), [id(2)].into_iter().collect(), "barred for bybit");
    assert_eq!(served("binance"), [id(1), id(2)].into_iter().collect(), "binance keeps proxy 1");
    let view = selector.proxies(None).into_iter().find(|v| v.proxy_id == id(1)).unwrap();
    assert!(!view.local.ejected, "a geo block is not the proxy's fault");
    assert_eq!(view.local.consecutive_failures, 0);
}
