//! The health model without NATS: events with explicit stream times, so time-based
//! rules (ejection time, cool-down, ban) are checked exactly and instantly.

use proxybus_aggregator::{FeedbackFolder, HealthPolicy};
use proxybus_shared::{ErrorKind, ExchangeState, HealthState};

use crate::helpers::{at, event, pid};

fn fail(folder: &mut FeedbackFolder, n: usize, seq: &mut u64, ms: i64) -> proxybus_aggregator::FoldOutcome {
    *seq += 1;
    folder.fold(&event(n, "binance", false, Some(ErrorKind::Timeout)), *seq, at(ms))
}

fn succeed(folder: &mut FeedbackFolder, n: usize, seq: &mut u64, ms: i64) {
    *seq += 1;
    folder.fold(&event(n, "binance", true, None), *seq, at(ms));
}

/// Region `us-east` holds the even proxies: `count` of them, each with one success.
fn region_of(count: usize, seq: &mut u64) -> FeedbackFolder {
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    for i in 0..count {
        succeed(&mut folder, 2 * i, seq, 0);
    }
    folder
}

#[test]
fn five_consecutive_failures_eject_and_the_ejection_time_restores() {
    let mut seq = 0;
    let mut folder = region_of(4, &mut seq);
    for k in 0..4 {
        let outcome = fail(&mut folder, 0, &mut seq, 1000 + k);
        assert!(!outcome.ejected, "ejected after {} failures", k + 1);
    }
    assert_eq!(folder.get(&pid(0)).unwrap().stats.state, HealthState::Degraded, "failing, not yet ejected");
    let outcome = fail(&mut folder, 0, &mut seq, 1004);
    assert!(outcome.ejected);
    let stats = &folder.get(&pid(0)).unwrap().stats;
    assert_eq!(stats.state, HealthState::Ejected);
    assert_eq!(stats.ejections, 1);
    assert_eq!(stats.ejected_until, Some(at(1004 + 30_000)), "base ejection time is 30 s");
    assert!(!stats.usable_for(&"binance".parse().unwrap(), at(1004 + 29_999)));
    assert!(stats.usable_for(&"binance".parse().unwrap(), at(1004 + 30_000)));

    // A success while still ejected does not end the ejection.
    succeed(&mut folder, 0, &mut seq, 20_000);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.state, HealthState::Ejected);
    // After the ejection time: degraded (probation), then healthy after 3 successes.
    succeed(&mut folder, 0, &mut seq, 31_004);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.state, HealthState::Degraded);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.ejected_until, None);
    succeed(&mut folder, 0, &mut seq, 31_005);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.state, HealthState::Degraded);
    succeed(&mut folder, 0, &mut seq, 31_006);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.state, HealthState::Healthy);
}

#[test]
fn a_failure_on_probation_ejects_again_for_longer() {
    let mut seq = 0;
    let mut folder = region_of(4, &mut seq);
    for k in 0..5 {
        fail(&mut folder, 0, &mut seq, 1000 + k);
    }
    succeed(&mut folder, 0, &mut seq, 40_000);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.state, HealthState::Degraded);
    let outcome = fail(&mut folder, 0, &mut seq, 40_001);
    assert!(outcome.ejected, "one failure on probation ejects");
    let stats = &folder.get(&pid(0)).unwrap().stats;
    assert_eq!(stats.ejections, 2);
    assert_eq!(stats.ejected_until, Some(at(40_001 + 60_000)), "second ejection lasts 2 × 30 s");
}

#[test]
fn ejection_time_is_capped() {
    let policy = HealthPolicy { base_ejection_time_ms: 100, max_ejection_time_ms: 250, ..HealthPolicy::default() };
    let mut folder = FeedbackFolder::new(policy);
    let mut seq = 0;
    for i in 0..4 {
        succeed(&mut folder, 2 * i, &mut seq, 0);
    }
    let mut now = 1000;
    for round in 1..=5 {
        let mut ejected_at = None;
        for _ in 0..5 {
            now += 1;
            if fail(&mut folder, 0, &mut seq, now).ejected {
                ejected_at = Some(now);
            }
        }
        // The first round ejects on the 5th failure, later ones on the first (probation).
        let ejected_at = ejected_at.expect("ejected in every round");
        let stats = &folder.get(&pid(0)).unwrap().stats;
        assert_eq!(stats.ejections, round);
        let expected = (100 * i64::from(round)).min(250);
        assert_eq!(stats.ejected_until, Some(at(ejected_at + expected)), "round {round}");
        now += 10_000;
    }
}

#[test]
fn never_more_than_max_ejection_percent_of_a_region() {
    let mut seq = 0;
    let mut folder = region_of(4, &mut seq);
    // One proxy of the other region, failing too: it has its own budget (at least one, as in Envoy).
    succeed(&mut folder, 1, &mut seq, 0);
    let mut ejected = 0;
    let mut suppressed = 0;
    for k in 0..5 {
        for i in 0..4 {
            let outcome = fail(&mut folder, 2 * i, &mut seq, 1000 + k);
            ejected += usize::from(outcome.ejected);
            suppressed += usize::from(outcome.ejection_suppressed);
        }
        fail(&mut folder, 1, &mut seq, 1000 + k);
    }
    assert_eq!(ejected, 2, "50% of 4");
    assert!(suppressed >= 2);
    let states: Vec<_> = (0..4).map(|i| folder.get(&pid(2 * i)).unwrap().stats.state).collect();
    assert_eq!(states.iter().filter(|s| **s == HealthState::Ejected).count(), 2, "{states:?}");
    assert_eq!(states.iter().filter(|s| **s == HealthState::Degraded).count(), 2, "{states:?}");
    assert_eq!(
        folder.get(&pid(1)).unwrap().stats.state,
        HealthState::Ejected,
        "at least one proxy of a region can always be ejected"
    );

    // Once the ejections run out the budget is free again.
    for k in 0..5 {
        fail(&mut folder, 2, &mut seq, 40_000 + k);
    }
    assert_eq!(folder.get(&pid(2)).unwrap().stats.state, HealthState::Ejected);
}

#[test]
fn a_low_success_rate_over_the_minimum_volume_ejects() {
    let mut seq = 0;
    let mut folder = region_of(4, &mut seq);
    // Alternate: never 5 failures in a row, but 2 of 3 fail.
    let mut ejected_at = None;
    for k in 0..60 {
        let outcome = if k % 3 == 0 {
            succeed(&mut folder, 0, &mut seq, 1000 + k);
            Default::default()
        } else {
            fail(&mut folder, 0, &mut seq, 1000 + k)
        };
        if outcome.ejected {
            ejected_at = Some(k);
            break;
        }
    }
    let k = ejected_at.expect("ejected by success rate");
    assert!(k >= 19, "not before the minimum volume of 20 (at event {k})");
    let stats = &folder.get(&pid(0)).unwrap().stats;
    assert!(stats.success_rate < 0.5, "{}", stats.success_rate);
    assert!(stats.consecutive_failures < 5);
}

#[test]
fn http_451_bans_one_exchange_only() {
    let mut seq = 0;
    let mut folder = region_of(2, &mut seq);
    seq += 1;
    let mut banned = event(0, "binance", false, Some(ErrorKind::Http451));
    banned.status_code = Some(451);
    let outcome = folder.fold(&banned, seq, at(1000));
    assert!(outcome.exchange_barred);
    seq += 1;
    folder.fold(&event(0, "kraken", true, None), seq, at(1001));
    let stats = &folder.get(&pid(0)).unwrap().stats;
    let binance = &stats.exchanges[&"binance".parse().unwrap()];
    assert_eq!(binance.state, ExchangeState::Banned);
    assert_eq!(binance.banned_until, Some(at(1000 + 7 * 86_400_000)), "a week by default");
    assert_eq!(binance.last_error_kind, Some(ErrorKind::Http451));
    assert_eq!(stats.state, HealthState::Healthy, "the proxy itself is fine");
    assert_eq!(stats.consecutive_failures, 0);
    assert!(!stats.usable_for(&"binance".parse().unwrap(), at(2000)));
    assert!(stats.usable_for(&"kraken".parse().unwrap(), at(2000)));
    assert!(stats.usable_for(&"coinbase".parse().unwrap(), at(2000)));
    assert_eq!(stats.error_counts[&ErrorKind::Http451], 1);
}

#[test]
fn http_429_cool_down_ends_after_retry_after_seconds() {
    let mut seq = 0;
    let mut folder = region_of(2, &mut seq);
    let mut limited = event(0, "binance", false, Some(ErrorKind::Http429));
    limited.retry_after_seconds = Some(2);
    seq += 1;
    folder.fold(&limited, seq, at(1000));
    let binance = "binance".parse().unwrap();
    let proxy = folder.get(&pid(0)).unwrap();
    assert_eq!(proxy.stats.exchanges[&binance].state, ExchangeState::Cooldown);
    assert_eq!(proxy.stats.exchanges[&binance].banned_until, Some(at(3000)));
    assert!(!proxy.stats.usable_for(&binance, at(2999)));
    assert!(proxy.stats.usable_for(&binance, at(3000)));
    assert_eq!(proxy.view_at(at(3000)).exchanges[&binance].state, ExchangeState::Healthy);
    // 418 without Retry-After: Binance's shortest IP ban, 2 minutes.
    let mut banned = event(2, "binance", false, Some(ErrorKind::Http418));
    banned.retry_after_seconds = None;
    seq += 1;
    folder.fold(&banned, seq, at(1000));
    let stats = &folder.get(&pid(2)).unwrap().stats;
    assert_eq!(stats.exchanges[&binance].banned_until, Some(at(121_000)));
    assert_eq!(stats.exchanges[&binance].state, ExchangeState::Banned);
    // The next event after the cool-down folds it away.
    seq += 1;
    folder.fold(&event(0, "binance", true, None), seq, at(3500));
    let after = &folder.get(&pid(0)).unwrap().stats.exchanges[&binance];
    assert_eq!(after.state, ExchangeState::Healthy);
    assert_eq!(after.banned_until, None);
}

#[test]
fn folding_is_deterministic_and_skips_folded_sequences() {
    let events: Vec<_> = (0..300)
        .map(|k| {
            let kind = [None, Some(ErrorKind::Timeout), Some(ErrorKind::Http429), Some(ErrorKind::Refused)][k % 4];
            event(k % 7, ["binance", "kraken"][k % 2], kind.is_none() || k % 5 == 0, kind)
        })
        .collect();
    let fold_all = || {
        let mut folder = FeedbackFolder::new(HealthPolicy::default());
        for (k, e) in events.iter().enumerate() {
            folder.fold(e, k as u64 + 1, at(k as i64 * 137));
        }
        folder
    };
    let (a, b) = (fold_all(), fold_all());
    let a_records: Vec<_> = a.proxies().cloned().collect();
    let b_records: Vec<_> = b.proxies().cloned().collect();
    assert_eq!(a_records, b_records);
    assert_eq!(a_records.iter().map(|r| r.stats.total).sum::<u64>(), 300);
    for (x, y) in a_records.iter().zip(&b_records) {
        assert_eq!(proxybus_aggregator::record::encode(x).unwrap(), proxybus_aggregator::record::encode(y).unwrap());
        assert_eq!(proxybus_aggregator::record::decode(&proxybus_aggregator::record::encode(x).unwrap()).unwrap(), *x);
    }
    // Refolding an event whose sequence is folded changes nothing.
    let mut c = fold_all();
    let outcome = c.fold(&events[299], 300, at(299 * 137));
    assert!(outcome.skipped);
    assert_eq!(c.proxies().cloned().collect::<Vec<_>>(), a_records);
}

#[test]
fn stored_state_never_holds_a_password() {
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    let mut leaky = event(3, "binance", true, None);
    leaky.proxy_url = crate::helpers::proxy_url(3); // a client that forgot to redact
    folder.fold(&leaky, 1, at(0));
    let record = folder.get(&pid(3)).unwrap();
    let bytes = proxybus_aggregator::record::encode(record).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("secret-pw"));
    assert!(record.stats.proxy_url.contains("***"), "{}", record.stats.proxy_url);
}

#[test]
fn passing_probes_end_an_ejection_early_and_feed_successes_do_not() {
    let policy = HealthPolicy { probe_readmit_successes: 2, consecutive_failures: 2, ..HealthPolicy::default() };
    let mut folder = FeedbackFolder::new(policy);
    let mut seq = 0;
    fail(&mut folder, 0, &mut seq, 0);
    assert!(fail(&mut folder, 0, &mut seq, 1).ejected);
    // A feed's success while ejected (panic mode) does not end the ejection.
    succeed(&mut folder, 0, &mut seq, 100);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.state, HealthState::Ejected);
    let probe = |n| {
        let mut e = event(n, "binance", true, None);
        e.probe = true;
        e
    };
    seq += 1;
    assert!(!folder.fold(&probe(0), seq, at(200)).readmitted, "one of the two probes needed");
    seq += 1;
    assert!(folder.fold(&probe(0), seq, at(300)).readmitted);
    let stats = &folder.get(&pid(0)).unwrap().stats;
    assert_eq!((stats.state, stats.ejected_until), (HealthState::Degraded, None), "on probation");
    // On probation one proxy fault ejects it again, for longer.
    assert!(fail(&mut folder, 0, &mut seq, 400).ejected);
    assert_eq!(folder.get(&pid(0)).unwrap().stats.ejections, 2);
}

#[test]
fn operator_events_fold_once_and_count_as_no_outcome() {
    use proxybus_shared::{OperatorAction, OperatorEvent};
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    let mut seq = 0;
    succeed(&mut folder, 0, &mut seq, 0);
    let ban = OperatorEvent {
        schema_version: 1,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: pid(0),
        action: OperatorAction::Ban,
        exchange_id: None,
        duration_seconds: Some(60),
        reason: "test".into(),
        operator: "alice".into(),
        timestamp: at(0),
    };
    folder.fold_operator(&ban, 2, at(1_000));
    let stats = &folder.get(&pid(0)).unwrap().stats;
    assert_eq!((stats.total, stats.last_seq, stats.operator_controls.len()), (1, 2, 1), "not an outcome");
    assert_eq!(stats.operator_controls[0].until, Some(at(61_000)), "a minute from the stream's time");
    assert!(folder.fold_operator(&ban, 3, at(2_000)).duplicate, "the same event id folds once");
    assert!(folder.fold_operator(&ban, 2, at(2_000)).skipped, "a sequence already folded is skipped");
    // An operator event about a proxy nobody reported yet makes its record.
    let other = OperatorEvent { event_id: uuid::Uuid::new_v4(), proxy_id: pid(7), ..ban };
    folder.fold_operator(&other, 4, at(3_000));
    assert_eq!(folder.get(&pid(7)).unwrap().stats.operator_controls.len(), 1);
}
