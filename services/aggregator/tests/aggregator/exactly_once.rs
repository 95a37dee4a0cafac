//! Every published event is folded exactly once: duplicates, a crashing
//! aggregator, a restarting server.

use std::collections::BTreeMap;
use std::time::Duration;

use proxybus_shared::feedback::publish_feedback;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{ErrorKind, ProxyId};
use proxybus_tests::NatsServer;

use crate::helpers::{
    Crashable, Running, config, event, eventually, jetstream, publish_all, records, total, wait_for_total,
};

#[tokio::test]
async fn the_same_event_published_twice_is_folded_once() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let app = Running::start(config(&server));
    let first = event(1, "binance", true, None);
    let ack = publish_feedback(&js, &first).await.unwrap();
    assert!(!ack.duplicate);
    let again = publish_feedback(&js, &first).await.unwrap();
    assert!(again.duplicate, "the stream drops the second copy");
    assert_eq!(again.sequence, ack.sequence);
    publish_feedback(&js, &event(1, "binance", true, None)).await.unwrap();
    wait_for_total(&js, HEALTH_BUCKET, 2, Duration::from_secs(20)).await;
    let stats = &records(&js, HEALTH_BUCKET).await[&crate::helpers::pid(1)].stats;
    assert_eq!((stats.total, stats.successes), (2, 2));
    assert_eq!(stats.last_seq, 2);
    app.stop().await;
}

/// Events of `count` proxies, mixed outcomes, and how many each proxy got.
fn mixed_events(n: usize, proxies: usize) -> (Vec<proxybus_shared::ProxyFeedback>, BTreeMap<ProxyId, u64>) {
    let mut expected = BTreeMap::new();
    let events: Vec<_> = (0..n)
        .map(|k| {
            let kind = match k % 6 {
                0 => Some(ErrorKind::Timeout),
                1 => Some(ErrorKind::Http429),
                _ => None,
            };
            let e = event(k % proxies, ["binance", "kraken", "coinbase"][k % 3], kind.is_none(), kind);
            *expected.entry(e.proxy_id).or_insert(0) += 1;
            e
        })
        .collect();
    (events, expected)
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_survive_an_aggregator_killed_at_random_points() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let (events, expected) = mixed_events(10_000, 40);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rng = XorShift(seed);
    let mut settings = config(&server);
    settings.settings.batch_size = 250;
    settings.settings.max_commit_records = 16;
    // A killed aggregator leaves its leadership lease behind: the next one folds only
    // once the lease has gone unrenewed for lease_ttl, so each victim lives past it and
    // then dies at a random point of its folding.
    settings.settings.lease_ttl_ms = 500;
    let lease_ttl = settings.settings.lease_ttl();

    let publisher = {
        let js = js.clone();
        tokio::spawn(async move { publish_all(&js, &events, 500).await })
    };
    let mut kills = 0;
    while kills < 6 {
        let victim = Crashable::start(settings.clone());
        tokio::time::sleep(lease_ttl + Duration::from_millis(100 + rng.next(400))).await;
        victim.kill();
        kills += 1;
    }
    tokio::time::timeout(Duration::from_secs(60), publisher).await.expect("published in time").unwrap();
    // One more crash after everything is published, then a survivor.
    let victim = Crashable::start(settings.clone());
    tokio::time::sleep(lease_ttl + Duration::from_millis(50 + rng.next(300))).await;
    victim.kill();
    let folded_by_victims = total(&js, HEALTH_BUCKET).await;
    assert!(folded_by_victims > 0, "the killed aggregators folded and committed something");
    eprintln!("{folded_by_victims} events folded before the survivor started");
    let survivor = Running::start(settings.clone());
    wait_for_total(&js, HEALTH_BUCKET, 10_000, Duration::from_secs(90)).await;
    let stored = records(&js, HEALTH_BUCKET).await;
    let totals: BTreeMap<ProxyId, u64> = stored.iter().map(|(id, r)| (*id, r.stats.total)).collect();
    assert_eq!(totals, expected, "every proxy counts exactly its events (seed {seed})");
    for record in stored.values() {
        assert_eq!(record.stats.successes + record.stats.failures, record.stats.total);
    }
    survivor.stop().await;

    // The state the crashes left equals a replay from scratch, field by field.
    let report = proxybus_aggregator::replay(&settings, &Default::default(), |_, _| {}).await.unwrap();
    assert_eq!(report.events, 10_000);
    let replayed = records(&js, proxybus_shared::subject::HEALTH_REPLAY_BUCKET).await;
    assert_eq!(replayed, stored, "seed {seed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_mid_stream_loses_and_doubles_nothing() {
    let mut server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let (events, expected) = mixed_events(3000, 12);
    let mut settings = config(&server);
    settings.settings.batch_size = 100;
    let app = Running::start(settings.clone());
    let (first, rest) = events.split_at(1200);
    publish_all(&js, first, 200).await;
    let publisher = {
        let js = js.clone();
        let rest = rest.to_vec();
        tokio::spawn(async move { publish_all(&js, &rest, 100).await })
    };
    eventually(Duration::from_secs(20), "some events folded", || async { total(&js, HEALTH_BUCKET).await > 300 }).await;
    server.restart().await.unwrap();
    tokio::time::timeout(Duration::from_secs(90), publisher).await.expect("published in time").unwrap();
    wait_for_total(&js, HEALTH_BUCKET, 3000, Duration::from_secs(60)).await;
    let stored = records(&js, HEALTH_BUCKET).await;
    let totals: BTreeMap<ProxyId, u64> = stored.iter().map(|(id, r)| (*id, r.stats.total)).collect();
    assert_eq!(totals, expected);
    let mut stream = js.get_stream("PROXY_FEEDBACK").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3000, "the stream itself holds each event once");
    app.stop().await;
}

#[tokio::test]
async fn a_commit_interrupted_after_its_checkpoint_is_repaired_on_load() {
    use proxybus_aggregator::HealthStore;
    use proxybus_aggregator::{FeedbackFolder, HealthPolicy};

    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let store = HealthStore::open(&js, HEALTH_BUCKET, proxybus_shared::subject::AGGREGATOR_STATE_BUCKET).await.unwrap();
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    for seq in 1..=3 {
        folder.fold(&event(1, "binance", true, None), seq, crate::helpers::at(seq as i64));
        folder.fold(&event(2, "binance", false, Some(ErrorKind::Dns)), seq + 10, crate::helpers::at(seq as i64));
    }
    let old: Vec<_> = folder.proxies().cloned().collect();
    store.commit(13, &old).await.unwrap();
    folder.fold(&event(1, "binance", true, None), 14, crate::helpers::at(20));
    folder.fold(&event(2, "binance", true, None), 15, crate::helpers::at(21));
    let new: Vec<_> = folder.proxies().cloned().collect();
    store.commit(15, &new).await.unwrap();
    // Simulate a crash after the checkpoint: proxy 2's record never got written.
    let two = crate::helpers::pid(2);
    let old_two = old.iter().find(|r| r.stats.proxy_id == two).unwrap();
    let new_two = new.iter().find(|r| r.stats.proxy_id == two).unwrap();
    let bucket = js.get_key_value(HEALTH_BUCKET).await.unwrap();
    bucket.put(two.as_str(), proxybus_aggregator::record::encode(old_two).unwrap()).await.unwrap();
    assert_eq!(records(&js, HEALTH_BUCKET).await[&two].stats.total, 3);

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.position, 15);
    assert_eq!(loaded.records, new, "the checkpoint's records win");
    let repaired = records(&js, HEALTH_BUCKET).await;
    assert_eq!(&repaired[&two], new_two, "and are written back");
    assert_eq!(repaired[&two].stats.total, 4);
}
