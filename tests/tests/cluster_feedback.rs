//! Feedback and requests on a three-node cluster with a replicated (R3) `PROXY_FEEDBACK`: the
//! node leading the stream — which also serves one of two resolvers — is killed while feeds
//! publish and ask for proxies. Every event is stored once (a publisher whose ack was lost
//! publishes again with the same `Nats-Msg-Id`) and the aggregator folds each exactly once; no
//! request is lost beyond those in flight at the kill, and the killed node's resolver reconnects
//! and serves again (issue 16: killing one node of a 3-node cluster loses no feedback and no
//! request beyond those in flight). The feeds stop before the resolvers do, so that a feed's
//! last request never races a resolver's shutdown.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{event, folded_total};
use proxybus_shared::feedback::{FeedbackStreamConfig, ensure_feedback_stream, publish_feedback};
use proxybus_shared::subject::FEEDBACK_STREAM;
use proxybus_shared::{Codec, ConnectionType, Encoding, ProxyRequest, subject};
use proxybus_tests::{NatsCluster, resolvers_serving};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 120;
/// Feeds asking for proxies, each one request at a time.
const FEEDS: usize = 4;
/// How long a feed waits for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request got no proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No answer within [`REQUEST_TIMEOUT`]: the request, or its reply, was dropped (core NATS
    /// delivers at most once) or is still on its way.
    Timeout,
    /// The server knew of no resolver subscribed at the moment it got the request.
    NoResponders,
    /// Any other request error (e.g. the feed's own connection was down).
    Error(String),
    /// A reply with no payload.
    Empty,
}

/// One request's fate: when it was sent, how long it took, and why it failed when it did.
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    took: Duration,
    failure: Option<Failure>,
}

impl Outcome {
    fn answered(&self) -> bool {
        self.failure.is_none()
    }
}

/// A resolver (proxying off: it answers `direct` in place) on a connection to `url`, that
/// reconnects to the other nodes it learns of.
fn start_resolver(cluster: &NatsCluster, url: String, stop: &CancellationToken) {
    let options = cluster.connect_options().name(format!("resolver-{url}"));
    let stop = stop.clone();
    tokio::spawn(async move {
        let client = options.connect(url.clone()).await.unwrap();
        let config = proxybus_resolver::ResolverConfig {
            proxy: Default::default(),
            resolver: Default::default(),
            nats: proxybus_shared::nats::NatsSettings::new(url.clone()),
        };
        proxybus_resolver::run_with_client(client, config, stop.cancelled_owned()).await.unwrap();
    });
}

/// A feed asking one request at a time on a connection to `url` until `stop`.
fn start_feed(
    cluster: &NatsCluster,
    url: String,
    n: usize,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    let options = cluster.connect_options();
    let stop = stop.clone();
    tokio::spawn(async move {
        let client = options.connect(url).await.unwrap();
        let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Websocket, format!("feed-{n}"));
        let body = Codec::default().encode(Encoding::MsgPack, &request).unwrap();
        let subject = subject::request(&request.exchange_id, request.connection_type);
        let mut outcomes = Vec::new();
        while !stop.is_cancelled() {
            let sent = Instant::now();
            let reply = tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject.clone(), body.clone())).await;
            let failure = match reply {
                Ok(Ok(message)) if !message.payload.is_empty() => None,
                Ok(Ok(_)) => Some(Failure::Empty),
                Ok(Err(err)) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                    Some(Failure::NoResponders)
                }
                Ok(Err(err)) => Some(Failure::Error(err.to_string())),
                Err(_) => Some(Failure::Timeout),
            };
            let answered = failure.is_none();
            outcomes.push(Outcome { sent, took: sent.elapsed(), failure });
            if !answered {
                // No responders while the node's interest is re-learned: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        outcomes
    })
}

#[tokio::test]
async fn killing_the_stream_leader_loses_no_feedback_and_no_request_beyond_those_in_flight() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let js = jetstream::new(cluster.connect().await.unwrap());
    let config = FeedbackStreamConfig { replicas: 3, ..FeedbackStreamConfig::default() };
    ensure_feedback_stream(&js, &config).await.unwrap();
    let mut stream = js.get_stream(FEEDBACK_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("an R3 stream has a leader");
    let doomed = cluster.node_index(&leader).unwrap();
    let url = |i: usize| cluster.nodes()[i].client_url();

    // One resolver on the node to be killed, one on the next; feeds on the two that live.
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    start_resolver(&cluster, url(doomed), &stop);
    start_resolver(&cluster, url((doomed + 1) % 3), &stop);
    let ready = cluster.connect().await.unwrap();
    let probe = Codec::default()
        .encode(Encoding::MsgPack, &ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "probe"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while resolvers_serving(&ready).await < 2
        || ready.request("proxy.v1.request.binance.http", probe.clone()).await.is_err()
    {
        assert!(Instant::now() < deadline, "the two resolvers did not start");
    }
    let feed_node = |n: usize| (doomed + 1 + n % 2) % 3;
    // Feeds stop on their own token, before the resolvers: a feed's last request must not race
    // the resolvers' shutdown, which is no part of the kill.
    let feeds_stop = CancellationToken::new();
    let _feeds_stop = feeds_stop.clone().drop_guard();
    let feeds: Vec<_> = (0..FEEDS).map(|n| start_feed(&cluster, url(feed_node(n)), n, &feeds_stop)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut killed_at = None;
    for n in 0..EVENTS {
        if n == EVENTS / 2 {
            cluster.kill_node(doomed).unwrap();
            killed_at = Some(Instant::now());
        }
        let event = event("eu-west", &format!("proxy-{}", n % 6));
        // What the client library does: the same event again until JetStream acknowledges it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while publish_feedback(&js, &event).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "event {n} never acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let killed_at = killed_at.expect("the leader was killed");
    // Requests go on past the kill for longer than a request's timeout.
    tokio::time::sleep((killed_at + REQUEST_TIMEOUT * 2).saturating_duration_since(Instant::now())).await;
    // The killed node's resolver reconnected to a node that lives and serves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while resolvers_serving(&ready).await < 2 {
        assert!(Instant::now() < deadline, "the killed node's resolver did not come back");
    }
    feeds_stop.cancel();
    let mut fates = Vec::with_capacity(FEEDS);
    for feed in feeds {
        fates.push(feed.await.unwrap());
    }
    stop.cancel();
    let mut answered_after = 0;
    for (n, outcomes) in fates.into_iter().enumerate() {
        let lost: Vec<&Outcome> = outcomes.iter().filter(|outcome| !outcome.answered()).collect();
        // Each failure: why, when it was sent relative to the kill (negative: before), how long it took.
        let report = || {
            let lines: Vec<String> = lost
                .iter()
                .map(|o| {
                    let at = if o.sent >= killed_at {
                        format!("+{:?}", o.sent - killed_at)
                    } else {
                        format!("-{:?}", killed_at - o.sent)
                    };
                    format!("{:?} sent at kill{at}, after {:?}", o.failure.as_ref().unwrap(), o.took)
                })
                .collect();
            format!("feed {n} on node-{} (node-{doomed} killed): {lines:?}", feed_node(n))
        };
        // A feed has one request in flight: at most that one is lost, and only at the kill. Core
        // NATS delivers a request at most once: one routed to the killed node's resolver (or its
        // reply, on its way through the killed node) is dropped and the feed times out. The
        // surviving nodes stop routing to the dead one once its route closes (the 500 ms after
        // the kill). "No responders" is never right: the other resolver, on a living node, is
        // subscribed throughout.
        assert!(lost.len() <= 1, "a feed lost {} requests: {}", lost.len(), report());
        for outcome in &lost {
            assert_eq!(
                outcome.failure,
                Some(Failure::Timeout),
                "a request failed otherwise than in flight: {}",
                report()
            );
            assert!(
                outcome.sent + REQUEST_TIMEOUT >= killed_at && outcome.sent <= killed_at + Duration::from_millis(500),
                "a request lost away from the kill: {}",
                report()
            );
        }
        answered_after += outcomes.iter().filter(|o| o.answered() && o.sent > killed_at).count();
        assert!(outcomes.iter().any(|o| o.answered() && o.sent < killed_at), "the feed was answered before the kill");
    }
    assert!(answered_after > FEEDS, "feeds kept being answered after the kill");
    let mut stream = js.get_stream(FEEDBACK_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, EVENTS as u64, "each event stored once");

    let cancel = CancellationToken::new();
    let config = proxybus_aggregator::AggregatorConfig::for_url(cluster.client_urls().join(","));
    let aggregator = tokio::spawn(proxybus_aggregator::run(config, cancel.clone().cancelled_owned()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while folded_total(&js).await < EVENTS as u64 {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {EVENTS} folded", folded_total(&js).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(folded_total(&js).await, EVENTS as u64, "every event folded exactly once");
    cancel.cancel();
    aggregator.await.unwrap().unwrap();
}
