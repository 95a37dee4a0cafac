//! Exactly once by `event_id` (issue #11, input c): an event is folded once
//! however it arrives — with its `event_id` as `Nats-Msg-Id`, another one, none,
//! after the stream's duplicate window, after an aggregator restart — and a
//! stream with repeats folds to the same health as the stream without them.

use std::time::Duration;

use async_nats::HeaderMap;
use proptest::prelude::*;
use proxybus_aggregator::{FeedbackFolder, HealthPolicy, ProxyHealth};
use proxybus_shared::subject::{self, HEALTH_BUCKET};
use proxybus_shared::{Codec, Encoding, ErrorKind, ProxyFeedback};
use proxybus_tests::NatsServer;

use crate::helpers::{Running, at, config, event, eventually, jetstream, pid, records, total};

/// Publishes `event` into the stream with header `Nats-Msg-Id: msg_id` (none when `None`).
async fn publish_as(js: &async_nats::jetstream::Context, event: &ProxyFeedback, msg_id: Option<String>) -> u64 {
    let mut headers = HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    let payload = Codec::default().encode(Encoding::MsgPack, event).unwrap();
    let ack = js
        .publish_with_headers(subject::feedback(&event.exchange_id, event.connection_type), headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate, "the stream stores every copy: only the aggregator can drop them");
    ack.sequence
}

#[tokio::test]
async fn an_event_published_under_three_message_ids_is_folded_once_even_after_a_restart() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let app = Running::start(config(&server));
    let once = event(1, "binance", false, Some(ErrorKind::Timeout));
    let id = once.event_id.to_string();
    publish_as(&js, &once, Some(id.clone())).await;
    publish_as(&js, &once, Some(format!("{id}-r"))).await;
    publish_as(&js, &once, None).await;
    let other = event(1, "binance", true, None);
    publish_as(&js, &other, Some(other.event_id.to_string())).await;
    eventually(Duration::from_secs(20), "the stream folded", || async { app.stats.snapshot().last_seq == 4 }).await;
    let stats = records(&js, HEALTH_BUCKET).await[&pid(1)].stats.clone();
    assert_eq!((stats.total, stats.successes, stats.failures), (2, 1, 1), "each event once");
    assert_eq!(app.stats.snapshot().events_deduplicated, 2, "both repeats counted");
    app.stop().await;

    // Republished later — after the duplicate window, by a client flushing its queue
    // after an outage — and met by a restarted aggregator: still dropped.
    let app = Running::start(config(&server));
    publish_as(&js, &once, Some(format!("{id}-late"))).await;
    publish_as(&js, &other, None).await;
    eventually(Duration::from_secs(20), "the restarted aggregator folded the repeats", || async {
        app.stats.snapshot().last_seq == 6
    })
    .await;
    assert_eq!(app.stats.snapshot().events_deduplicated, 2, "the ids survived the restart");
    assert_eq!(total(&js, HEALTH_BUCKET).await, 2);
    app.stop().await;
}

/// A clean stream: events of three proxies with every kind of outcome.
fn clean_stream() -> impl Strategy<Value = Vec<ProxyFeedback>> {
    let kinds = prop::sample::select(vec![
        None,
        Some(ErrorKind::Timeout),
        Some(ErrorKind::Refused),
        Some(ErrorKind::Http403),
        Some(ErrorKind::Http418),
        Some(ErrorKind::Http429),
        Some(ErrorKind::Http451),
        Some(ErrorKind::Http5xx),
        Some(ErrorKind::WsClosed),
    ]);
    let one = (0..3_usize, prop::bool::ANY, kinds, prop::option::of(1000_u16..1016));
    prop::collection::vec(one, 1..60).prop_map(|events| {
        events
            .into_iter()
            .map(|(n, binance, kind, close)| {
                let mut e = event(n, if binance { "binance" } else { "bybit" }, kind.is_none(), kind);
                e.ws_close_code = close.filter(|_| kind == Some(ErrorKind::WsClosed));
                e
            })
            .collect()
    })
}

/// Folds `(seq, event)` in order, at a stream time of 997 ms per sequence.
fn fold(stream: &[(u64, ProxyFeedback)]) -> Vec<ProxyHealth> {
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    for (seq, e) in stream {
        folder.fold(e, *seq, at(*seq as i64 * 997));
    }
    folder.proxies().cloned().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any events repeated, at any distance after their first copy, fold to the
    /// same health as the stream without the repeats. (At the fold a message id
    /// no longer exists: the NATS test above covers the headers.)
    #[test]
    fn repeats_at_any_distance_fold_to_the_same_health(
        clean in clean_stream(),
        repeats in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..40),
    ) {
        // The clean stream at sequences 10, 20, …; a repeat of event i after event
        // j ≥ i goes in between (11, 12, …), so every original keeps its sequence.
        let original: Vec<(u64, ProxyFeedback)> =
            clean.iter().enumerate().map(|(k, e)| (10 * (k as u64 + 1), e.clone())).collect();
        let mut with_repeats = original.clone();
        let mut after: Vec<u64> = vec![0; clean.len()];
        for (which, distance) in repeats {
            let i = which.index(clean.len());
            let j = i + distance.index(clean.len() - i);
            after[j] += 1;
            prop_assume!(after[j] < 10);
            with_repeats.push((10 * (j as u64 + 1) + after[j], clean[i].clone()));
        }
        with_repeats.sort_by_key(|(seq, _)| *seq);
        prop_assert_eq!(fold(&with_repeats), fold(&original));
    }
}

/// Input c), the second half: the same event, under the same `Nats-Msg-Id`,
/// republished after the stream's duplicate window (here shortened to 1 s, as if
/// two minutes had passed) is stored twice by the stream and folded once; a replay
/// from the start counts it once too.
#[tokio::test]
async fn an_event_republished_after_the_duplicate_window_is_folded_once_live_and_in_a_replay() {
    let server = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let mut stream = proxybus_shared::feedback::FeedbackStreamConfig::default().stream_config();
    stream.duplicate_window = Duration::from_secs(1);
    js.create_stream(stream).await.unwrap();
    let once = event(3, "binance", true, None);
    let first = publish_as(&js, &once, Some(once.event_id.to_string())).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = publish_as(&js, &once, Some(once.event_id.to_string())).await;
    assert_eq!((first, again), (1, 2), "past its window the stream stores the repeat");

    let app = Running::start(config(&server));
    eventually(Duration::from_secs(20), "both copies read", || async { app.stats.snapshot().last_seq == 2 }).await;
    assert_eq!(records(&js, HEALTH_BUCKET).await[&pid(3)].stats.total, 1);
    assert_eq!(app.stats.snapshot().events_deduplicated, 1);
    app.stop().await;

    let report =
        proxybus_aggregator::replay(&config(&server), &proxybus_aggregator::ReplayOptions::default(), |_, _| {})
            .await
            .unwrap();
    assert_eq!(report.last_seq, 2);
    let replayed = records(&js, proxybus_shared::subject::HEALTH_REPLAY_BUCKET).await;
    assert_eq!(replayed[&pid(3)].stats.total, 1, "the replay drops the repeat as the live fold did");
}
