//! Load (issue 17): 64 feeds, each a `ProxyClient` of its own, ask for proxies and report
//! feedback through the client library for `PROXYBUS_SOAK_SECS` seconds (default 10) against
//! the pool, the resolver and the aggregator, each a child process. No request fails; every
//! event reported is folded exactly once; request latency (p50/p99) is printed as one line
//! `SOAK {json}`; the resident memory of the resolver and the aggregator is sampled every
//! second and, in a run of 60 s or more, grows by at most 10 % after the first third.
//!
//! ```sh
//! cargo nextest run -p proxybus-tests --test soak                           # 10 s, as in CI
//! PROXYBUS_SOAK_SECS=60 nice -n 10 cargo nextest run -p proxybus-tests --test soak --no-capture
//! ```

mod pipeline;

use std::time::Duration;

use pipeline::{Pipeline, by_source, run_feed};
use proxybus_tests::{Latencies, MemorySampler};
use tokio_util::sync::CancellationToken;

/// How long the run lasts, in seconds, unless `PROXYBUS_SOAK_SECS` says otherwise.
const DEFAULT_SECS: u64 = 10;
/// Runs at least this long assert the memory bound; shorter ones only record it.
const MEMORY_ASSERTED_FROM_SECS: u64 = 60;
/// Most growth of resident memory after the warm-up, in percent.
const MAX_GROWTH_PERCENT: f64 = 10.0;
const FEEDS: usize = 64;
/// Each feed asks and reports once per interval: 640 requests and events a second in all.
const INTERVAL: Duration = Duration::from_millis(100);

#[test]
#[ignore = "entry point of the service processes this binary starts (pipeline::SERVICE_ENV)"]
fn service_process() {
    pipeline::run_service_if_asked();
}

fn soak_secs() -> u64 {
    std::env::var("PROXYBUS_SOAK_SECS").ok().and_then(|secs| secs.trim().parse().ok()).unwrap_or(DEFAULT_SECS).max(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_64_feeds() {
    let secs = soak_secs();
    let run_for = Duration::from_secs(secs);
    let warm_up = run_for / 3;
    let mut pipeline = Pipeline::start(1).await;
    let resolver_memory = MemorySampler::start(pipeline.resolvers[0].pid().unwrap(), Duration::from_secs(1));
    let aggregator_memory = MemorySampler::start(pipeline.aggregator.pid().unwrap(), Duration::from_secs(1));

    let stop = CancellationToken::new();
    let mut feeds = Vec::with_capacity(FEEDS);
    for n in 0..FEEDS {
        let client = pipeline.feed(n).await;
        feeds.push(tokio::spawn(run_feed(client, n, INTERVAL, stop.clone())));
    }
    tokio::time::sleep(run_for).await;
    stop.cancel();
    let resolver_memory = resolver_memory.finish().await;
    let aggregator_memory = aggregator_memory.finish().await;

    let mut latencies = Latencies::default();
    let mut requests = Vec::new();
    let mut reported = 0;
    let mut published = 0;
    let mut dropped = 0;
    for feed in feeds {
        let (client, run) = feed.await.unwrap();
        assert!(client.flush_feedback(Duration::from_secs(60)).await, "{} kept events queued", client.client_id());
        let stats = client.feedback_stats();
        published += stats.published;
        dropped += stats.dropped;
        reported += run.reported;
        latencies.merge(run.latencies);
        requests.extend(run.requests);
    }
    let failures: Vec<_> = requests.iter().filter(|r| r.outcome.is_err()).collect();
    let folded = pipeline.settled_total(reported, Duration::from_secs(120)).await;
    for service in [&mut pipeline.resolvers[0], &mut pipeline.aggregator, &mut pipeline.pool] {
        assert!(!service.has_exited().unwrap(), "{} exited during the run", service.name());
    }
    let growth = |samples: &proxybus_tests::MemorySamples| samples.growth_percent(warm_up).unwrap_or(f64::NAN);
    let kib = |samples: &proxybus_tests::MemorySamples| samples.after_warm_up(warm_up).unwrap_or_default();
    let line = serde_json::json!({
        "test": "soak_64_feeds",
        "secs": secs,
        "feeds": FEEDS,
        "requests": requests.len(),
        "failures": failures.len(),
        "sources": by_source(&requests),
        "p50_us": latencies.quantile_micros(0.50),
        "p99_us": latencies.quantile_micros(0.99),
        "events_reported": reported,
        "events_published": published,
        "events_dropped": dropped,
        "events_folded": folded,
        "resolver_rss_kib": kib(&resolver_memory),
        "resolver_rss_growth_pct": growth(&resolver_memory),
        "aggregator_rss_kib": kib(&aggregator_memory),
        "aggregator_rss_growth_pct": growth(&aggregator_memory),
    });
    println!("SOAK {line}");

    assert!(requests.len() >= FEEDS * (secs as usize), "the feeds hardly asked: {line}");
    assert!(failures.is_empty(), "{} requests failed, the first: {:?}", failures.len(), failures.first());
    assert_eq!((dropped, published), (0, reported), "every event published once: {line}");
    assert_eq!(folded, reported, "every event reported folded exactly once: {line}");
    if secs >= MEMORY_ASSERTED_FROM_SECS {
        for (name, samples) in [("resolver", &resolver_memory), ("aggregator", &aggregator_memory)] {
            let growth = growth(samples);
            assert!(growth <= MAX_GROWTH_PERCENT, "the {name}'s memory grew {growth:.1} % after the warm-up: {line}");
        }
    }
}
