//! Who an outcome is about (docs/health.md): one test per error kind and close
//! code, the Bybit 403 of issue #11 (input b), and the pool and the aggregator
//! judging the same events alike (input e).

use chrono::{DateTime, Utc};
use proxybus_aggregator::{FeedbackFolder, HealthPolicy};
use proxybus_pool::{HealthOptions, LocalHealth};
use proxybus_shared::{ErrorKind, ExchangeId, ExchangeState, HealthState, ProxyFeedback};

use crate::helpers::{at, event, pid};

/// What the failures of one kind did to proxy 0 after `times` of them.
#[derive(Debug, PartialEq, Eq)]
enum Effect {
    /// Ejected for every exchange.
    Ejected,
    /// Barred for binance (in this state) and usable for kraken.
    Barred(ExchangeState),
    /// Neither: the proxy is still handed out everywhere.
    Nothing,
}

fn failure(
    kind: Option<ErrorKind>,
    status: Option<u16>,
    close: Option<u16>,
    retry_after: Option<u64>,
) -> ProxyFeedback {
    let mut e = event(0, "binance", false, kind);
    e.status_code = status;
    e.ws_close_code = close;
    e.retry_after_seconds = retry_after;
    e
}

/// Folds `times` copies (new event ids) of `failure` for proxy 0, in a region of
/// three proxies, and says what became of it.
fn effect_of(times: usize, template: &ProxyFeedback) -> Effect {
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    let mut seq = 0;
    for n in [0, 2, 4] {
        seq += 1;
        folder.fold(&event(n, "kraken", true, None), seq, at(0));
    }
    for k in 0..times {
        seq += 1;
        let mut e = template.clone();
        e.event_id = uuid::Uuid::new_v4();
        folder.fold(&e, seq, at(1000 + k as i64));
    }
    let stats = &folder.get(&pid(0)).unwrap().stats;
    let now = at(2000);
    let binance: ExchangeId = "binance".parse().unwrap();
    let kraken: ExchangeId = "kraken".parse().unwrap();
    if stats.state == HealthState::Ejected {
        assert!(!stats.usable_for(&kraken, now), "an ejection holds for every exchange");
        return Effect::Ejected;
    }
    if !stats.usable_for(&binance, now) {
        assert!(stats.usable_for(&kraken, now), "a verdict of binance bars binance only");
        assert_eq!(stats.consecutive_failures, 0, "a verdict is not the proxy's fault");
        return Effect::Barred(stats.exchanges[&binance].state);
    }
    assert!(stats.usable_for(&kraken, now));
    Effect::Nothing
}

macro_rules! attribution {
    ($($name:ident: $times:expr, ($kind:expr, $status:expr, $close:expr) => $effect:expr;)*) => {$(
        #[test]
        fn $name() {
            assert_eq!(effect_of($times, &failure($kind, $status, $close, None)), $effect);
        }
    )*};
}

use Effect::*;
use ErrorKind as K;

attribution! {
    timeout_counts_against_the_proxy: 5, (Some(K::Timeout), None, None) => Ejected;
    refused_counts_against_the_proxy: 5, (Some(K::Refused), None, None) => Ejected;
    the_proxys_own_502_to_connect_counts_against_it: 5, (Some(K::Refused), Some(502), None) => Ejected;
    dns_counts_against_the_proxy: 5, (Some(K::Dns), None, None) => Ejected;
    tls_counts_against_the_proxy: 5, (Some(K::Tls), None, None) => Ejected;
    proxy_auth_407_counts_against_the_proxy: 5, (Some(K::ProxyAuth), Some(407), None) => Ejected;
    other_without_a_status_counts_against_the_proxy: 5, (Some(K::Other), None, None) => Ejected;
    a_tunnel_dropped_without_a_close_frame_counts_against_the_proxy: 5, (Some(K::WsClosed), None, None) => Ejected;
    close_1006_counts_against_the_proxy: 5, (Some(K::WsClosed), None, Some(1006)) => Ejected;
    close_1015_counts_against_the_proxy: 5, (Some(K::WsClosed), None, Some(1015)) => Ejected;
    fewer_than_five_proxy_faults_do_not_eject: 4, (Some(K::Timeout), None, None) => Nothing;
    one_http_403_does_not_bar: 1, (Some(K::Http403), Some(403), None) => Nothing;
    three_http_403_in_a_row_bar_that_exchange: 3, (Some(K::Http403), Some(403), None) => Barred(ExchangeState::Banned);
    three_refused_handshakes_bar_that_exchange: 3, (Some(K::WsHandshakeRefused), Some(400), None) => Barred(ExchangeState::Banned);
    three_closes_1008_bar_that_exchange: 3, (Some(K::WsClosed), None, Some(1008)) => Barred(ExchangeState::Banned);
    http_418_bans_that_exchange: 1, (Some(K::Http418), Some(418), None) => Barred(ExchangeState::Banned);
    http_429_cools_that_exchange_down: 1, (Some(K::Http429), Some(429), None) => Barred(ExchangeState::Cooldown);
    close_1013_cools_that_exchange_down: 1, (Some(K::WsClosed), None, Some(1013)) => Barred(ExchangeState::Cooldown);
    http_451_bans_that_exchange: 1, (Some(K::Http451), Some(451), None) => Barred(ExchangeState::Banned);
    the_exchanges_5xx_costs_nothing: 10, (Some(K::Http5xx), Some(503), None) => Nothing;
    a_bare_503_status_costs_nothing: 10, (None, Some(503), None) => Nothing;
    close_1001_going_away_costs_nothing: 10, (Some(K::WsClosed), None, Some(1001)) => Nothing;
    close_1011_costs_nothing: 10, (Some(K::WsClosed), None, Some(1011)) => Nothing;
    close_1012_service_restart_costs_nothing: 10, (Some(K::WsClosed), None, Some(1012)) => Nothing;
    close_1014_bad_gateway_costs_nothing: 10, (Some(K::WsClosed), None, Some(1014)) => Nothing;
    a_normal_close_1000_costs_nothing: 10, (Some(K::WsClosed), None, Some(1000)) => Nothing;
    another_4xx_costs_nothing: 10, (Some(K::Other), Some(404), None) => Nothing;
}

/// Issue #11, input b): Bybit answers `http_403` (its CDN's geo block) six times
/// through proxy P. P is barred for bybit only; binance keeps getting it.
#[test]
fn bybit_403s_bar_bybit_only_and_binance_keeps_the_proxy() {
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    let mut seq = 0;
    for n in [0, 2, 4] {
        seq += 1;
        folder.fold(&event(n, "binance", true, None), seq, at(0));
    }
    for k in 0..6 {
        seq += 1;
        let mut forbidden = event(0, "bybit", false, Some(ErrorKind::Http403));
        forbidden.status_code = Some(403);
        folder.fold(&forbidden, seq, at(1000 + k));
    }
    let stats = &folder.get(&pid(0)).unwrap().stats;
    let bybit: ExchangeId = "bybit".parse().unwrap();
    let binance: ExchangeId = "binance".parse().unwrap();
    assert_eq!(stats.state, HealthState::Healthy, "a geo block is not the proxy's fault");
    assert_eq!(stats.ejections, 0);
    assert_eq!(stats.consecutive_failures, 0);
    assert_eq!(stats.exchanges[&bybit].state, ExchangeState::Banned);
    assert_eq!(stats.exchanges[&bybit].refusals_in_a_row, 6);
    // Barred from the third 403 on, for 30 minutes (Bybit: "usually 30 minutes"), renewed by each.
    assert_eq!(stats.exchanges[&bybit].banned_until, Some(at(1005 + 30 * 60_000)));
    assert!(!stats.usable_for(&bybit, at(2000)));
    assert!(stats.usable_for(&binance, at(2000)));
    assert!(stats.usable_for(&bybit, at(1005 + 30 * 60_000)), "the bar ends");
}

/// The pool folds feedback it is sent by the same rules as the aggregator:
/// input e) of issue #11 (a 403 barred in one, counted toward ejection in the other;
/// a 451 honoured `Retry-After` in one and was a week in the other).
#[tokio::test(start_paused = true)]
async fn the_pool_and_the_aggregator_judge_every_kind_alike() {
    let cases: Vec<(Vec<ProxyFeedback>, &str)> = vec![
        (vec![failure(Some(K::Http403), Some(403), None, None)], "one 403"),
        (vec![failure(Some(K::Http403), Some(403), None, None); 3], "three 403s"),
        (vec![failure(Some(K::Http451), Some(451), None, Some(60))], "451 with Retry-After 60"),
        (vec![failure(Some(K::Http418), Some(418), None, None); 2], "two 418s"),
        (vec![failure(Some(K::Http429), Some(429), None, Some(5))], "429 with Retry-After 5"),
        (vec![failure(Some(K::Timeout), None, None, None); 5], "five timeouts"),
        (vec![failure(Some(K::Http5xx), Some(502), None, None); 6], "six 502s of the exchange"),
        (vec![failure(Some(K::WsClosed), None, Some(1008), None); 3], "three closes 1008"),
        (vec![failure(Some(K::WsClosed), None, Some(1012), None); 6], "six closes 1012"),
    ];
    let binance: ExchangeId = "binance".parse().unwrap();
    let kraken: ExchangeId = "kraken".parse().unwrap();
    for (events, what) in cases {
        let mut folder = FeedbackFolder::new(HealthPolicy::default());
        let mut local = LocalHealth::default();
        let options = HealthOptions::default();
        let start = tokio::time::Instant::now();
        let t0: DateTime<Utc> = at(0);
        for (k, e) in events.iter().enumerate() {
            let mut e = e.clone();
            e.event_id = uuid::Uuid::new_v4();
            folder.fold(&e, k as u64 + 1, t0);
            local.fold(&e, &options, start);
        }
        let stats = &folder.get(&pid(0)).unwrap().stats;
        // Probe just after the events, and at each duration the rules know.
        for probe_ms in [1_u64, 5_000, 30_000, 60_000, 120_000, 240_000, 1_800_000, 604_800_000] {
            let probe = std::time::Duration::from_millis(probe_ms);
            let wall = t0 + chrono::TimeDelta::from_std(probe).unwrap();
            let mono = start + probe;
            for exchange in [&binance, &kraken] {
                assert_eq!(
                    stats.usable_for(exchange, wall),
                    local.usable_for(exchange, mono),
                    "{what}: the pool and the aggregator disagree about {exchange} after {probe:?}"
                );
            }
        }
    }
}
