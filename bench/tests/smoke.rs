//! The CI smoke run: every scenario once at `--size tiny`, through the library,
//! against a real `nats-server`. It checks that the harness works (every row
//! measured something, the single-flight made exactly one upstream call), not
//! how fast anything is.

use proxybus_bench::{Bus, Options, Scenario, Size};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_once_at_tiny_size() {
    let options = Options { size: Size::Tiny, rounds: 1, exe: env!("CARGO_BIN_EXE_proxybus-bench").into() };
    let mut bus = Bus::start().await.expect("a nats-server");
    let report = proxybus_bench::run(&mut bus, &Scenario::ALL, &options).await.expect("every scenario runs");

    for scenario in Scenario::ALL {
        assert!(report.rows.iter().any(|row| row.scenario == scenario.name()), "no row for {}", scenario.name());
    }
    for row in &report.rows {
        assert!(row.subject.ops_per_sec > 0.0, "{} {}: no subject throughput", row.scenario, row.case);
        if let Some(baseline) = &row.baseline {
            assert!(baseline.ops_per_sec > 0.0, "{} {}: no baseline throughput", row.scenario, row.case);
        }
        if row.scenario != "publish" {
            assert!(row.peak_rss_bytes.is_some_and(|rss| rss > 0), "{} {}: no peak RSS", row.scenario, row.case);
        }
    }
    let singleflight = report.rows.iter().find(|row| row.scenario == "singleflight").unwrap();
    assert_eq!(singleflight.upstream_calls.as_deref(), Some(&[1_u64][..]), "one upstream call for 1 000 requests");
    // The reconnect storm: every feed answered; one upstream call per new feed, none for cached ones.
    let storm: Vec<_> = report.rows.iter().filter(|row| row.scenario == "reconnect-storm").collect();
    let clients = options.counts().storm_clients as u64;
    assert_eq!(storm.len(), 2, "a cold and a cached row");
    assert_eq!(storm[0].upstream_calls.as_deref(), Some(&[clients][..]), "{}", storm[0].note);
    assert_eq!(storm[1].upstream_calls.as_deref(), Some(&[0_u64][..]), "{}", storm[1].note);
    for row in &storm {
        assert_eq!(row.subject.rounds[0].ops, clients, "every feed answered: {}", row.note);
        assert!(row.target.as_ref().is_some_and(|t| t.met), "{}", row.summary());
    }
    // CPU per request is measured for the responders (resolver and bare) from /proc.
    for row in report.rows.iter().filter(|row| row.scenario == "resolve-hit") {
        let cpu = |stat: Option<&proxybus_bench::Stat>| stat.and_then(|s| s.cpu_us_per_op).unwrap_or(0.0);
        assert!(cpu(Some(&row.subject)) > 0.0, "no resolver CPU: {}", row.summary());
        assert!(cpu(row.baseline.as_ref()) > 0.0, "no bare responder CPU: {}", row.summary());
        assert!(row.subject.server_cpu_us_per_op.is_some_and(|c| c > 0.0), "no nats-server CPU");
    }

    let table = report.markdown();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        report.rows.len() + 2,
        "header, separator, rows: {table}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(report.rows.len()));
}

/// `proxybus-bench lab` at a tiny size: every mode runs against a fresh lab, the
/// proxied modes receive data, and the table has a column per mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_benchmark_runs_every_mode_briefly() {
    let bus = Bus::start().await.expect("a nats-server");
    let report = proxybus_bench::lab::run(&bus, 3, 4).await.expect("every mode runs");
    let modes: Vec<_> = report.results.iter().map(|r| r.mode).collect();
    assert_eq!(modes, proxybus_bench::lab::Mode::ALL);
    for result in &report.results {
        assert_eq!(result.feeds.len(), 3);
        assert!(result.messages > 0, "{:?} received nothing", result.mode);
        assert!((0.0..=1.0).contains(&result.connected_share), "{:?}", result.mode);
    }
    let table = report.markdown();
    assert!(table.lines().next().unwrap().matches(" | ").count() >= 3, "{table}");
    assert!(table.contains("418 answers incurred") && table.contains("recovery after"), "{table}");
}
