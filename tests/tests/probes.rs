//! Probes in the stream (issue #14 item 3), against the exchange lab: the real pool
//! service probes real lab proxies on 127.0.0.x — a tunnel to `api.binance.com:443`
//! in each proxy's own protocol (HTTP `CONNECT`, inside TLS for the `https` proxy,
//! SOCKS5 with its login), then `GET /api/v3/ping` over TLS to the simulator through
//! the tunnel — publishes the results into `PROXY_FEEDBACK` with `probe: true`, and
//! the real aggregator re-admits ejected proxies of every scheme on their probes
//! alone, while a SOCKS proxy refusing every login stays out.

use std::net::Ipv4Addr;
use std::time::Duration;

use async_nats::jetstream;
use proxybus_lab::{Lab, LabConfig, LabProxyConfig, ProxyFault, ProxyKind};
use proxybus_shared::feedback::publish_feedback;
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{
    ConnectionType, ErrorKind, ExchangeState, FeedbackPhase, HealthState, HealthStats, ProxyFeedback, ProxyId,
    ProxyRequest,
};
use proxybus_tests::NatsServer;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn lab_proxy(last: u8, fault: ProxyFault) -> LabProxyConfig {
    LabProxyConfig {
        kind: ProxyKind::Http,
        region: "us-east".into(),
        source_ip: Ipv4Addr::new(127, 0, 0, last),
        fault,
        connection_types: Vec::new(),
    }
}

/// A feed's failure through `proxy`: a proxy fault.
fn timeout(proxy: &ProxyId, url: &str) -> ProxyFeedback {
    ProxyFeedback {
        proxy_id: *proxy,
        region: Some("us-east".parse().unwrap()),
        error_kind: Some(ErrorKind::Timeout),
        ..ProxyFeedback::new(
            url,
            "binance".parse().unwrap(),
            ConnectionType::Http,
            FeedbackPhase::Failed,
            false,
            "feed-probes",
        )
    }
}

async fn record(js: &jetstream::Context, proxy: &ProxyId) -> Option<HealthStats> {
    let bucket = js.get_key_value(HEALTH_BUCKET).await.ok()?;
    proxybus_shared::kv::health_stats(&bucket).await.ok()?.remove(proxy)
}

async fn wait_for(
    js: &jetstream::Context,
    proxy: &ProxyId,
    what: &str,
    done: impl Fn(&HealthStats) -> bool,
) -> HealthStats {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(stats) = record(js, proxy).await
                && done(&stats)
            {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match waited {
        Ok(stats) => stats,
        // Read in this runtime: blocking on it here would stall the connection's task, and the test.
        Err(_) => panic!("{what}: {:?}", record(js, proxy).await),
    }
}

#[tokio::test]
async fn an_ejected_proxy_is_readmitted_by_probes_alone_and_an_idle_one_has_health() {
    let dir = tempfile::tempdir().unwrap();
    // Binance refuses 127.0.0.7's region (451): a proxy that works, judged by the exchange.
    let mut simulator = proxybus_lab::SimulatorSettings::default();
    simulator.binance.geo_restricted_ips = vec![Ipv4Addr::new(127, 0, 0, 7).into()];
    let config = LabConfig {
        dir: dir.path().to_owned(),
        simulator,
        proxies: vec![
            lab_proxy(2, ProxyFault::None),
            lab_proxy(3, ProxyFault::Dead),
            // In a region of its own, so that its ejection is not held back by
            // `max_ejection_percent` while the good proxy is out.
            LabProxyConfig {
                kind: ProxyKind::Socks5,
                region: "eu-west".into(),
                ..lab_proxy(4, ProxyFault::RefuseCredentials)
            },
            // Working SOCKS5 and HTTPS proxies, each in a region of its own for the same reason.
            LabProxyConfig { kind: ProxyKind::Socks5, region: "ap-east".into(), ..lab_proxy(5, ProxyFault::None) },
            LabProxyConfig { kind: ProxyKind::Https, region: "sa-east".into(), ..lab_proxy(6, ProxyFault::None) },
            LabProxyConfig { region: "eu-north".into(), ..lab_proxy(7, ProxyFault::None) },
        ],
        inventory_strategy: "round_robin".into(),
    };
    let lab = Lab::start(config).await.unwrap();
    let (good_url, dead_url) = (lab.proxies()[0].url(), lab.proxies()[1].url());
    let (good, dead) = (proxybus_shared::proxy_id(&good_url), proxybus_shared::proxy_id(&dead_url));
    let refusing_url = lab.proxies()[2].url();
    let refusing = proxybus_shared::proxy_id(&refusing_url);
    let (socks_url, https_url) = (lab.proxies()[3].url(), lab.proxies()[4].url());
    let (socks, https) = (proxybus_shared::proxy_id(&socks_url), proxybus_shared::proxy_id(&https_url));
    let restricted = proxybus_shared::proxy_id(&lab.proxies()[5].url());
    assert!(socks_url.starts_with("socks5h://") && https_url.starts_with("https://"), "{socks_url} {https_url}");

    let server = NatsServer::start().await.unwrap();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut aggregator = proxybus_aggregator::AggregatorConfig::for_url(server.client_url());
    aggregator.settings.fetch_wait_ms = 100;
    aggregator.settings.health.consecutive_failures = 2;
    // An hour: only the probes can end this ejection within the test.
    aggregator.settings.health.base_ejection_time_ms = 3_600_000;
    aggregator.settings.health.max_ejection_time_ms = 3_600_000;
    tokio::spawn(proxybus_aggregator::run(aggregator, stop.clone().cancelled_owned()));
    let js = jetstream::new(server.connect().await.unwrap());

    // A feed's two timeouts eject each good proxy; two refused logins eject the refusing SOCKS one.
    let refused_login = |_| ProxyFeedback {
        error_kind: Some(ErrorKind::ProxyAuth),
        region: Some("eu-west".parse().unwrap()),
        ..timeout(&refusing, &refusing_url)
    };
    let timeout_in = |proxy: &ProxyId, url: &str, region: &str| ProxyFeedback {
        region: Some(region.parse().unwrap()),
        ..timeout(proxy, url)
    };
    let mut events = vec![timeout(&good, &good_url), timeout(&good, &good_url), refused_login(()), refused_login(())];
    for _ in 0..2 {
        events.push(timeout_in(&socks, &socks_url, "ap-east"));
        events.push(timeout_in(&https, &https_url, "sa-east"));
    }
    for event in events {
        tokio::time::timeout(WAIT, async {
            while publish_feedback(&js, &event).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the aggregator made PROXY_FEEDBACK");
    }
    let ejected = wait_for(&js, &good, "ejected by the feed", |s| s.state == HealthState::Ejected).await;
    wait_for(&js, &refusing, "the SOCKS proxy ejected by refused logins", |s| s.state == HealthState::Ejected).await;
    for (proxy, what) in
        [(&socks, "the SOCKS5 proxy ejected by the feed"), (&https, "the HTTPS proxy ejected by the feed")]
    {
        wait_for(&js, proxy, what, |s| s.state == HealthState::Ejected).await;
    }
    assert!(ejected.ejected_until.unwrap() > chrono::Utc::now() + chrono::Duration::minutes(50));
    assert!(record(&js, &dead).await.is_none(), "no feed ever used the dead proxy");

    // The pool probes both through the lab, on its schedule, and publishes what it saw.
    let mut settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory: lab.inventory_path().to_owned(),
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec!["probe-test-token".into()], ..Default::default() },
        ..Default::default()
    };
    let checks = &mut settings.active_checks;
    checks.enabled = true;
    checks.interval_seconds = 1;
    checks.connect_target = Some("api.binance.com:443".into());
    checks.ping_path = Some("/api/v3/ping".into());
    checks.ca_file = Some(lab.ca_path().to_owned());
    checks.max_per_minute = 60;
    let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig {
        settings,
        nats: Some(NatsSettings::new(server.client_url())),
    })
    .await
    .unwrap();
    let selector = pool.selector();
    tokio::spawn(pool.serve(stop.clone().cancelled_owned()));

    let readmitted = wait_for(&js, &good, "readmitted by probes", |s| s.state != HealthState::Ejected).await;
    assert_eq!((readmitted.ejections, readmitted.ejected_until), (1, None), "the ejection ended early, on probes");
    assert_eq!(readmitted.state, HealthState::Degraded, "back through probation");
    let healthy = wait_for(&js, &good, "probation passed", |s| s.state == HealthState::Healthy).await;
    assert!(healthy.successes >= 4, "one probe readmits, three end the probation: {healthy:?}");
    assert_eq!(healthy.failures, 2, "only the feed's two timeouts failed");
    let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "feed-after");
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            let answer = selector.select(&request).unwrap();
            if answer.strategy != "panic" {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the pool serves the readmitted proxy again");
    assert_eq!(answer.proxy.unwrap().id(), &good);

    // The working SOCKS5 and HTTPS proxies were probed in their own protocols (SOCKS5 with
    // its login; CONNECT inside TLS to the proxy, trusted through `ca_file`), and their
    // passing pings through the tunnel readmitted them, as the HTTP proxy's did.
    for (proxy, what) in [(&socks, "the SOCKS5 proxy readmitted"), (&https, "the HTTPS proxy readmitted")] {
        let back = wait_for(&js, proxy, what, |s| s.state != HealthState::Ejected).await;
        assert_eq!((back.ejections, back.ejected_until), (1, None), "{what}, early, on probes: {back:?}");
    }

    // The SOCKS proxy that refuses every login accepts TCP, but a probe logs in: its
    // probes fail with `proxy_auth`, so it stays out while the others came back.
    let refusing_now =
        wait_for(&js, &refusing, "the refusing proxy's probes", |s| s.failures > 2 && s.state == HealthState::Ejected)
            .await;
    assert_eq!(refusing_now.successes, 0, "no probe of it passed: {refusing_now:?}");
    assert_eq!(refusing_now.last_error_kind, Some(ErrorKind::ProxyAuth), "{refusing_now:?}");

    // The geo-restricted proxy's pings got binance's 451: banned for binance by the probes
    // alone, yet up for the pool (its tunnel works), and once the pool knows of the ban its
    // probes stop asking binance through it.
    let banned = wait_for(&js, &restricted, "banned for binance by its probes' 451", |s| {
        s.exchanges.iter().any(|(e, h)| e.as_str() == "binance" && h.state == ExchangeState::Banned)
    })
    .await;
    assert_eq!(banned.state, HealthState::Healthy, "a verdict is not a proxy fault: {banned:?}");
    let view = selector.proxies(None).into_iter().find(|v| v.proxy_id == restricted).unwrap();
    assert_eq!(view.local.check, "up", "the pool's own check counts no verdict as a failure");
    let binance: proxybus_shared::ExchangeId = "binance".parse().unwrap();
    tokio::time::timeout(WAIT, async {
        while !selector.barred_for(&restricted, &binance) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the pool learns of the ban from PROXY_HEALTH");
    let ip = std::net::IpAddr::from(Ipv4Addr::new(127, 0, 0, 7));
    let refused = |lab: &Lab| lab.simulator().stats().of(proxybus_lab::LabExchange::Binance, ip).http_451;
    let (before, rounds) = (refused(&lab), Duration::from_secs(3));
    tokio::time::sleep(rounds).await;
    assert_eq!(refused(&lab), before, "no probe asked binance through the banned proxy in {rounds:?}");

    // The dead proxy carried no traffic, yet it has health: its probes' failures.
    let idle = wait_for(&js, &dead, "the dead proxy's probes", |s| s.failures >= 1).await;
    assert_eq!(idle.successes, 0);
    assert_eq!(idle.last_error_kind, Some(ErrorKind::Refused), "{idle:?}");
    let parsed = proxybus_shared::ProxyUrl::parse(&dead_url).unwrap();
    let (_, password) = parsed.credentials().expect("lab http proxies have a login");
    assert!(!idle.proxy_url.contains(password), "the probe's feedback carries no password");
}
