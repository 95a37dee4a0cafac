//! Operator controls end to end (issue #14 item 2): `ban`/`drain` events published into
//! `PROXY_FEEDBACK` (as `proxybus ban|drain` publishes them), folded by the real
//! aggregator into `PROXY_HEALTH`, followed by the real pool service over NATS.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use proxybus_shared::feedback::publish_operator_event;
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{
    ConnectionType, ExchangeId, HealthStats, OperatorAction, OperatorEvent, ProxyId, ProxyRequest, proxy_id,
};
use proxybus_tests::{NatsServer, TestInventory, documentation_proxy};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

struct Bench {
    server: NatsServer,
    pool: Arc<proxybus_pool::Selector>,
    js: jetstream::Context,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A nats-server, the real aggregator (sweeping every 100 ms) and the real pool following health.
async fn bench() -> Bench {
    let server = NatsServer::start().await.unwrap();
    let stop = CancellationToken::new();
    let mut aggregator = proxybus_aggregator::AggregatorConfig::for_url(server.client_url());
    aggregator.settings.sweep_interval_ms = 100;
    aggregator.settings.fetch_wait_ms = 100;
    tokio::spawn(proxybus_aggregator::run(aggregator, stop.clone().cancelled_owned()));
    let dir = tempfile::tempdir().unwrap();
    // Three proxies in one region (never dialled: selection only).
    let inventory = TestInventory::documentation(3).write(dir.path().join("inventory.toml"));
    let settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory,
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec!["operator-test-token".into()], ..Default::default() },
        ..Default::default()
    };
    let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig {
        settings,
        nats: Some(NatsSettings::new(server.client_url())),
    })
    .await
    .unwrap();
    let selector = pool.selector();
    tokio::spawn(pool.serve(stop.clone().cancelled_owned()));
    let js = jetstream::new(server.connect().await.unwrap());
    // The aggregator makes the stream; operator events need it.
    tokio::time::timeout(WAIT, async {
        while js.get_stream(proxybus_shared::subject::FEEDBACK_STREAM).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the aggregator made PROXY_FEEDBACK");
    Bench { server, pool: selector, js, stop, _dir: dir }
}

fn binance() -> ExchangeId {
    "binance".parse().unwrap()
}

fn proxy(n: u8) -> ProxyId {
    proxy_id(&documentation_proxy(n.into()))
}

fn event(proxy: ProxyId, action: OperatorAction, exchange: Option<&str>, seconds: Option<u64>) -> OperatorEvent {
    OperatorEvent {
        schema_version: 1,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: proxy,
        action,
        exchange_id: exchange.map(|e| e.parse().unwrap()),
        duration_seconds: seconds,
        reason: format!("{action} in the operator test"),
        operator: "alice".into(),
        timestamp: chrono::Utc::now(),
    }
}

/// The pool's answer to `client` for binance websockets.
fn lease(pool: &proxybus_pool::Selector, client: &str) -> ProxyId {
    let request = ProxyRequest::new(binance(), ConnectionType::Websocket, client);
    *pool.select(&request).unwrap().proxy.expect("a proxy").id()
}

/// Waits until the pool's copy of `proxy`'s health satisfies `done`.
async fn pool_sees(pool: &proxybus_pool::Selector, proxy: &ProxyId, done: impl Fn(&HealthStats) -> bool) {
    tokio::time::timeout(WAIT, async {
        loop {
            let view = pool.proxies(None).into_iter().find(|p| &p.proxy_id == proxy).unwrap();
            if view.health.as_ref().is_some_and(&done) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the pool never saw the expected health of {proxy}"));
}

async fn stored(js: &jetstream::Context, bucket: &str) -> std::collections::BTreeMap<ProxyId, HealthStats> {
    let bucket = js.get_key_value(bucket).await.unwrap();
    proxybus_shared::kv::health_stats(&bucket).await.unwrap()
}

#[tokio::test]
async fn a_drained_proxy_gets_no_new_lease_and_keeps_its_existing_ones() {
    let bench = bench().await;
    // Every proxy gets a holder before the drain.
    let holders: Vec<(String, ProxyId)> =
        (0..3).map(|i| format!("holder-{i}")).map(|c| (c.clone(), lease(&bench.pool, &c))).collect();
    let drained = holders[0].1;
    assert_eq!(holders.iter().map(|(_, p)| p).collect::<BTreeSet<_>>().len(), 3, "round robin over three");

    publish_operator_event(&bench.js, &event(drained, OperatorAction::Drain, None, None)).await.unwrap();
    pool_sees(&bench.pool, &drained, |s| s.operator_controls.iter().any(|c| c.action == OperatorAction::Drain)).await;

    let fresh: BTreeSet<ProxyId> = (0..12).map(|i| lease(&bench.pool, &format!("new-feed-{i}"))).collect();
    assert!(!fresh.contains(&drained), "a drained proxy gets no new lease: {fresh:?}");
    assert_eq!(fresh.len(), 2, "the other two still serve");
    for _ in 0..3 {
        assert_eq!(lease(&bench.pool, &holders[0].0), drained, "the existing lease stays valid and is renewed");
    }
    assert_eq!(bench.pool.active_leases(&drained), 1, "the holder's lease, and no other");

    publish_operator_event(&bench.js, &event(drained, OperatorAction::Undrain, None, None)).await.unwrap();
    pool_sees(&bench.pool, &drained, |s| s.operator_controls.is_empty()).await;
    let after: BTreeSet<ProxyId> = (0..6).map(|i| lease(&bench.pool, &format!("later-feed-{i}"))).collect();
    assert!(after.contains(&drained), "undrained, it serves new leases again");
    let record = &stored(&bench.js, HEALTH_BUCKET).await[&drained];
    let last = record.last_operator_action.as_ref().unwrap();
    assert_eq!((last.action, last.operator.as_str()), (OperatorAction::Undrain, "alice"), "who did what is kept");
}

#[tokio::test]
async fn a_ban_for_a_while_expires_by_itself_and_replay_rebuilds_operator_bans() {
    let bench = bench().await;
    let (timed, lasting) = (proxy(1), proxy(2));
    publish_operator_event(&bench.js, &event(timed, OperatorAction::Ban, Some("binance"), Some(2))).await.unwrap();
    publish_operator_event(&bench.js, &event(lasting, OperatorAction::Ban, None, None)).await.unwrap();
    pool_sees(&bench.pool, &timed, |s| !s.operator_controls.is_empty()).await;
    pool_sees(&bench.pool, &lasting, |s| !s.operator_controls.is_empty()).await;
    let during: BTreeSet<ProxyId> = (0..6).map(|i| lease(&bench.pool, &format!("feed-{i}"))).collect();
    assert_eq!(during, BTreeSet::from([proxy(3)]), "both banned proxies are out for binance");
    let coinbase = ProxyRequest::new("coinbase".parse().unwrap(), ConnectionType::Http, "feed-cb");
    let other: BTreeSet<ProxyId> = (0..6).map(|_| *bench.pool.select(&coinbase).unwrap().proxy.unwrap().id()).collect();
    assert!(other.contains(&timed), "a ban of binance leaves coinbase alone");

    // Replay from the start, while the timed ban is still in force, rebuilds both bans.
    let config = proxybus_aggregator::AggregatorConfig::for_url(bench.server.client_url());
    let options = proxybus_aggregator::ReplayOptions::default();
    proxybus_aggregator::replay(&config, &options, |_, _| {}).await.unwrap();
    let live = stored(&bench.js, HEALTH_BUCKET).await;
    let replayed = stored(&bench.js, &options.into).await;
    for id in [&timed, &lasting] {
        assert_eq!(replayed[id].operator_controls, live[id].operator_controls, "replay rebuilds {id}'s ban");
        assert_eq!(replayed[id].operator_controls.len(), 1);
    }

    // The timed ban ends by itself: the aggregator sweeps it out of PROXY_HEALTH, the pool serves again.
    pool_sees(&bench.pool, &timed, |s| s.operator_controls.is_empty()).await;
    let after: BTreeSet<ProxyId> = (0..6).map(|i| lease(&bench.pool, &format!("later-{i}"))).collect();
    assert!(after.contains(&timed), "the ban with --for expired by itself");
    assert!(!after.contains(&lasting), "the ban without --for holds");
    assert_eq!(stored(&bench.js, HEALTH_BUCKET).await[&lasting].operator_controls.len(), 1);
}
