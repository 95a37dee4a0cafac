//! Fail-over: several aggregators on one health bucket, exactly one folds (the holder of
//! the leadership lease); a standby takes over when it dies; a commit on a checkpoint
//! another writer moved is fenced.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::DateTime;
use futures::StreamExt;
use proxybus_aggregator::{FoldState, HealthStore, ProxyHealth, Role, StoreError};
use proxybus_shared::subject::{AGGREGATOR_STATE_BUCKET, HEALTH_BUCKET, aggregator_leader_key};
use proxybus_shared::{HealthStats, ProxyId};
use proxybus_tests::NatsServer;
use tokio::time::Instant;

use crate::helpers::{Running, config, event, eventually, jetstream, publish_all, records, total, wait_for_total};

/// The lease's value as the tests read it.
#[derive(Debug, serde::Deserialize)]
struct Holder {
    instance: String,
    pid: u32,
}

/// The state bucket, once an aggregator has created it.
async fn state_bucket(js: &jetstream::Context) -> kv::Store {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(store) = js.get_key_value(AGGREGATOR_STATE_BUCKET).await {
            return store;
        }
        assert!(Instant::now() < deadline, "no aggregator created {AGGREGATOR_STATE_BUCKET}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lease holder now, if any.
async fn holder(bucket: &kv::Store) -> Option<Holder> {
    let entry = bucket.entry(aggregator_leader_key(HEALTH_BUCKET)).await.ok()??;
    (entry.operation == kv::Operation::Put).then(|| serde_json::from_slice(&entry.value).ok()).flatten()
}

/// Every `$SRV.STATS` answer of the aggregators within half a second.
async fn service_stats(client: &async_nats::Client) -> Vec<serde_json::Value> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client.publish_with_reply("$SRV.STATS.proxybus-aggregator", inbox, "".into()).await.unwrap();
    client.flush().await.unwrap();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        answers.push(serde_json::from_slice(&message.payload).unwrap());
    }
    answers
}

#[tokio::test]
async fn of_two_aggregators_one_folds_and_every_event_counts_once() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let first = Running::start(config(&server));
    let second = Running::start(config(&server));
    let events: Vec<_> = (0..3000).map(|k| event(k % 16, "binance", k % 7 != 0, None)).collect();
    for chunk in events.chunks(500) {
        publish_all(&js, chunk, 250).await;
    }
    wait_for_total(&js, HEALTH_BUCKET, 3000, Duration::from_secs(60)).await;

    let roles = [first.stats.snapshot().role, second.stats.snapshot().role];
    assert_eq!(roles.iter().filter(|r| **r == Role::Active).count(), 1, "{roles:?}");
    let folded = first.stats.snapshot().events_folded + second.stats.snapshot().events_folded;
    assert_eq!(folded, 3000, "only the active one folds");
    // `proxybus services` shows the same: one active, one standby, and the lease names the active one.
    let answers = service_stats(&server.connect().await.unwrap()).await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    let role_of = |answer: &serde_json::Value| answer["endpoints"][0]["data"]["role"].as_str().unwrap().to_owned();
    let mut shown: Vec<String> = answers.iter().map(role_of).collect();
    shown.sort();
    assert_eq!(shown, ["active", "standby"]);
    let active = answers.iter().find(|a| role_of(a) == "active").unwrap();
    assert!(active["endpoints"][0]["data"]["leader_since"].is_string(), "{active}");
    let lease = holder(&state_bucket(&js).await).await.expect("a lease");
    assert_eq!(active["id"].as_str(), Some(lease.instance.as_str()));
    first.stop().await;
    second.stop().await;
}

/// A `proxybus-aggregator` child process, killed with SIGKILL on drop.
struct Child9(Child);

impl Drop for Child9 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_binary(server: &NatsServer) -> Child9 {
    let child = Command::new(env!("CARGO_BIN_EXE_proxybus-aggregator"))
        .env_clear()
        .env("NATS_URL", server.client_url())
        .env("PROXYBUS_AGGREGATOR_METRICS_LISTEN", "")
        .env("PROXYBUS_AGGREGATOR_FETCH_WAIT_MS", "200")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Child9(child)
}

/// Lease time to live of the binaries (the default).
const LEASE_TTL: Duration = Duration::from_secs(3);

#[tokio::test]
async fn killing_the_active_aggregator_five_times_under_load_loses_and_doubles_nothing() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let mut children: Vec<Child9> = vec![spawn_binary(&server), spawn_binary(&server)];
    let bucket = state_bucket(&js).await;
    eventually(Duration::from_secs(30), "a leader", || async { holder(&bucket).await.is_some() }).await;

    // Load: 20 proxies, 50 events every 50 ms (about 1000 a second) until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (js, stop) = (js.clone(), stop.clone());
        async move {
            let mut published: BTreeMap<ProxyId, u64> = BTreeMap::new();
            let mut k = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (k..k + 50).map(|n| event(n % 20, "okx", n % 9 != 0, None)).collect();
                k += 50;
                publish_all(&js, &batch, 50).await;
                for event in &batch {
                    *published.entry(event.proxy_id).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            published
        }
    });

    let mut hand_overs = Vec::new();
    let mut resumed = Vec::new();
    for round in 1..=5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let active = holder(&bucket).await.expect("a leader");
        let index = children.iter().position(|c| c.0.id() == active.pid).expect("the leader is one of the children");
        let folded_before = total(&js, HEALTH_BUCKET).await;
        let mut killed = children.swap_remove(index);
        killed.0.kill().unwrap(); // SIGKILL
        let killed_at = Instant::now();
        killed.0.wait().unwrap();
        children.push(spawn_binary(&server));
        let deadline = killed_at + Duration::from_secs(20);
        loop {
            if holder(&bucket).await.is_some_and(|h| h.pid != active.pid) {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no standby took over");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hand_over = killed_at.elapsed();
        eventually(Duration::from_secs(20), "folding resumes", || async {
            total(&js, HEALTH_BUCKET).await > folded_before
        })
        .await;
        resumed.push(killed_at.elapsed());
        hand_overs.push(hand_over);
        eprintln!("round {round}: killed pid {}, hand-over {hand_over:?}", active.pid);
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    let expected: u64 = published.values().sum();
    wait_for_total(&js, HEALTH_BUCKET, expected, Duration::from_secs(60)).await;
    let folded: BTreeMap<ProxyId, u64> =
        records(&js, HEALTH_BUCKET).await.into_iter().map(|(id, r)| (id, r.stats.total)).collect();
    assert_eq!(folded, published, "every proxy counts exactly what was published");
    eprintln!(
        "fail-over: {expected} events published, {} folded, hand-over times {hand_overs:?}, \
         folding resumed after {resumed:?} (lease_ttl {LEASE_TTL:?})",
        folded.values().sum::<u64>()
    );
    for hand_over in &hand_overs {
        assert!(*hand_over < LEASE_TTL + Duration::from_secs(2), "hand-over took {hand_over:?}");
    }
}

/// A record of proxy `n` with `total` events up to `seq`.
fn record(n: u64, total: u64, seq: u64) -> ProxyHealth {
    let id: ProxyId = format!("{n:016x}").parse().unwrap();
    let mut stats = HealthStats::new(id, format!("http://10.9.0.{n}:3128"), None, DateTime::UNIX_EPOCH);
    stats.total = total;
    stats.last_seq = seq;
    ProxyHealth { stats, fold: FoldState::default() }
}

#[tokio::test]
async fn a_commit_on_a_checkpoint_another_writer_moved_is_fenced() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let open = || HealthStore::open(&js, "FENCE_HEALTH", "FENCE_STATE");
    for parts in [200, 1] {
        let (a, b) = (open().await.unwrap().with_part_records(parts), open().await.unwrap().with_part_records(parts));
        let base = a.load().await.unwrap().position;
        b.load().await.unwrap();
        let ours: Vec<_> = (1..=3).map(|n| record(n, 10, base + 10)).collect();
        let theirs: Vec<_> = (1..=3).map(|n| record(n, 20, base + 20)).collect();
        b.commit(base + 20, &theirs).await.unwrap();
        let fenced = a.commit(base + 10, &ours).await;
        assert!(matches!(fenced, Err(StoreError::Fenced(_))), "{parts} per value: {fenced:?}");
        let now = open().await.unwrap().load().await.unwrap();
        assert_eq!(now.position, base + 20, "the fenced commit changed nothing");
        assert!(now.records.iter().all(|r| r.stats.total == 20));

        // A retried commit whose first attempt landed (its ack lost) is not fenced:
        // `c` and `d` read the same checkpoint; `d` writing exactly `c`'s bytes is that retry.
        let (c, d) = (open().await.unwrap().with_part_records(parts), open().await.unwrap().with_part_records(parts));
        c.load().await.unwrap();
        d.load().await.unwrap();
        let next: Vec<_> = (1..=3).map(|n| record(n, 30, base + 30)).collect();
        c.commit(base + 30, &next).await.unwrap();
        if parts == 200 {
            d.commit(base + 30, &next).await.expect("the same bytes: an earlier attempt landed");
        } else {
            // With parts, the claim before the parts is fenced all the same (see store.rs).
            assert!(matches!(d.commit(base + 30, &next).await, Err(StoreError::Fenced(_))));
        }
        let later: Vec<_> = (1..=3).map(|n| record(n, 40, base + 40)).collect();
        c.commit(base + 40, &later).await.unwrap();
        assert!(matches!(d.commit(base + 40, &later[..1]).await, Err(StoreError::Fenced(_))));
    }
}

#[tokio::test]
async fn a_fenced_aggregator_steps_down_without_acking_and_the_events_fold_once() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let first = Running::start(config(&server));
    let early: Vec<_> = (0..200).map(|k| event(k % 8, "bybit", k % 4 != 0, None)).collect();
    publish_all(&js, &early, 100).await;
    wait_for_total(&js, HEALTH_BUCKET, 200, Duration::from_secs(30)).await;
    assert_eq!(first.stats.snapshot().role, Role::Active);

    // Another writer moves the checkpoint (same position, no records) while `first`
    // still holds the lease: its next commit must be fenced.
    let other = HealthStore::open(&js, HEALTH_BUCKET, AGGREGATOR_STATE_BUCKET).await.unwrap();
    let position = other.load().await.unwrap().position;
    other.commit(position, &[]).await.unwrap();
    let second = Running::start(config(&server));
    let late: Vec<_> = (0..300).map(|k| event(k % 8, "bybit", k % 3 != 0, None)).collect();
    publish_all(&js, &late, 100).await;
    wait_for_total(&js, HEALTH_BUCKET, 500, Duration::from_secs(30)).await;
    let (a, b) = (first.stats.snapshot(), second.stats.snapshot());
    assert!(a.commit_failures >= 1, "the fenced commit: {a:?}");
    assert!(a.leader_changes + b.leader_changes >= 2, "someone took the lease again: {a:?} {b:?}");
    assert_eq!([a.role, b.role].iter().filter(|r| **r == Role::Active).count(), 1, "one active after the step-down");
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn an_active_aggregator_whose_lease_is_taken_stops_folding_until_it_wins_it_back() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let mut settings = config(&server);
    settings.settings.lease_ttl_ms = 1000;
    let running = Running::start(settings);
    let early: Vec<_> = (0..100).map(|k| event(k % 4, "kraken", true, None)).collect();
    publish_all(&js, &early, 100).await;
    wait_for_total(&js, HEALTH_BUCKET, 100, Duration::from_secs(30)).await;

    // Another "aggregator" takes the lease by compare-and-set and renews it (without folding).
    let bucket = state_bucket(&js).await;
    let key = aggregator_leader_key(HEALTH_BUCKET);
    let foreign = serde_json::json!({
        "instance": "someone-else", "host": "elsewhere", "pid": 1,
        "since": "2026-01-01T00:00:00Z", "renewed": "2026-01-01T00:00:00Z"
    });
    let renew_until = Instant::now() + Duration::from_secs(3);
    let mut revision = bucket.entry(&key).await.unwrap().unwrap().revision;
    let mut taken = false;
    while !taken {
        match bucket.update(&key, foreign.to_string().into(), revision).await {
            Ok(new) => {
                revision = new;
                taken = true;
            }
            // The active one renewed in between: try again on its new revision.
            Err(_) => revision = bucket.entry(&key).await.unwrap().unwrap().revision,
        }
    }
    eventually(Duration::from_secs(2), "the active one steps down", || async {
        running.stats.snapshot().role == Role::Standby
    })
    .await;
    let late: Vec<_> = (0..100).map(|k| event(k % 4, "kraken", false, None)).collect();
    publish_all(&js, &late, 100).await;
    while Instant::now() < renew_until {
        revision = bucket.update(&key, foreign.to_string().into(), revision).await.expect("nobody else writes it");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(running.stats.snapshot().role, Role::Standby, "a standby while the lease is renewed");
    }
    assert_eq!(total(&js, HEALTH_BUCKET).await, 100, "a standby folds nothing");
    // The foreign holder stops renewing: after the ttl the aggregator takes the lease back
    // and folds what was published meanwhile, once.
    wait_for_total(&js, HEALTH_BUCKET, 200, Duration::from_secs(10)).await;
    let snapshot = running.stats.snapshot();
    assert_eq!((snapshot.role, snapshot.leader_changes), (Role::Active, 2), "{snapshot:?}");
    assert_ne!(holder(&bucket).await.unwrap().instance, "someone-else", "the lease is the aggregator's again");
    running.stop().await;
}
