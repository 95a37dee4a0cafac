//! Issue #20: `proxybus dashboard` as a person sees it, in a real headless Chromium (Debian's
//! `chromium` and `chromium-driver`, which `scripts/ensure-deps.sh` installs), driven over
//! WebDriver (fantoccini), against a real pipeline: nats-server from the harness, the aggregator
//! in-process, the `proxybus` binary serving the page.
//!
//! The page lists every proxy; after five failures reported for one proxy its row turns ejected
//! without a reload; a password planted in a feedback message, a health message and the lab feeds'
//! counters appears nowhere in the page's DOM or its event stream. The test saves a screenshot
//! under the build's temporary directory, or where `PROXYBUS_DASHBOARD_SCREENSHOT` names (how
//! `docs/dashboard.png`, shown in the README, is refreshed), so a test run leaves the tracked
//! picture as it was.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use fantoccini::{Client, ClientBuilder, Locator};
use proxybus_shared::{
    Codec, ConnectionType, Encoding, ErrorKind, ExchangeId, FeedbackPhase, HealthState, HealthStats, ProxyFeedback,
    SCHEMA_VERSION, proxy_id, subject,
};
use proxybus_tests::NatsServer;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

/// The planted password, and the host its proxies are on (what the page shows instead).
const PASSWORD: &str = "Pl4nted-dash-pw";
const WAIT: Duration = Duration::from_secs(30);

/// Proxies that report: (region, host); the first carries the planted password.
const PROXIES: &[(&str, &str)] = &[
    ("eu-west", "127.0.0.11"),
    ("eu-west", "127.0.0.12"),
    ("eu-west", "127.0.0.13"),
    ("us-east", "127.0.0.21"),
    ("us-east", "127.0.0.22"),
    ("ap-northeast", "127.0.0.31"),
];
/// A proxy only a health message tells of, with the password in its URL.
const HEALTH_ONLY_HOST: &str = "127.0.0.41";

fn url_of(host: &str) -> String {
    match host {
        "127.0.0.11" | HEALTH_ONLY_HOST => format!("http://ops:{PASSWORD}@{host}:3128"),
        _ => format!("http://{host}:3128"),
    }
}

fn event(host: &str, region: &str, exchange: &str, outcome: Result<u64, ErrorKind>) -> ProxyFeedback {
    let url = url_of(host);
    ProxyFeedback {
        schema_version: SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: proxy_id(&url),
        proxy_url: url.clone(),
        exchange_id: exchange.parse::<ExchangeId>().unwrap(),
        connection_type: ConnectionType::Websocket,
        region: Some(region.parse().unwrap()),
        phase: if outcome.is_ok() { FeedbackPhase::Connected } else { FeedbackPhase::Failed },
        success: outcome.is_ok(),
        latency_ms: outcome.ok(),
        error_kind: outcome.err(),
        status_code: None,
        retry_after_seconds: None,
        error_details: Some(format!("through {url}")),
        ws_close_code: None,
        usage_headers: Default::default(),
        connect_count: None,
        probe: false,
        timestamp: chrono::Utc::now(),
        client_id: "dashboard-test".into(),
    }
}

/// Publishes `event` as a careless client would: raw, not redacted.
async fn publish_raw(js: &jetstream::Context, event: &ProxyFeedback) {
    let payload = Codec::default().encode(Encoding::MsgPack, event).unwrap();
    let subject = subject::feedback(&event.exchange_id, event.connection_type);
    let headers = proxybus_shared::feedback::feedback_headers(event);
    js.publish_with_headers(subject, headers, payload).await.unwrap().await.unwrap();
}

/// A plain HTTP client (reqwest wants a rustls provider even for `http://`).
fn http() -> reqwest::Client {
    proxybus_shared::http::install_crypto_provider();
    reqwest::Client::new()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 200 ms until it is true, for at most [`WAIT`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rows(browser: &Client, selector: &str) -> usize {
    browser.find_all(Locator::Css(selector)).await.map(|r| r.len()).unwrap_or(0)
}

/// chromedriver on a free loopback port, and a headless Chromium session through it.
async fn browser(profile: &std::path::Path) -> (tokio::process::Child, Client) {
    let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port();
    let driver = tokio::process::Command::new(&driver_bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run {driver_bin}: {err} (scripts/ensure-deps.sh installs chromium and chromium-driver)")
        });
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--window-size=1440,1500",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let webdriver = format!("http://127.0.0.1:{port}");
    let mut last = None;
    for _ in 0..50 {
        match ClientBuilder::new(connector.clone()).capabilities(capabilities.clone()).connect(&webdriver).await {
            Ok(client) => return (driver, client),
            Err(err) => last = Some(err.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no browser session through {driver_bin} and {chromium}: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_the_proxies_turns_one_ejected_live_and_shows_no_password() {
    let server = NatsServer::start().await.unwrap();
    let url = server.client_url();
    let stop = CancellationToken::new();
    let aggregator = proxybus_aggregator::AggregatorConfig::for_url(url.clone());
    tokio::spawn(proxybus_aggregator::run(aggregator, stop.clone().cancelled_owned()));
    let nats = async_nats::connect(&url).await.unwrap();
    proxybus_shared::nats::wait_for_service(&nats, subject::AGGREGATOR_SERVICE, WAIT).await.unwrap();
    let js = jetstream::new(nats.clone());

    // The dashboard, as an operator starts it.
    let mut dashboard = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(["dashboard", "--listen", "127.0.0.1:0"])
        .env("NATS_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(dashboard.stdout.take().unwrap());
    let mut line = String::new();
    let page = tokio::time::timeout(WAIT, async {
        loop {
            line.clear();
            assert!(stdout.read_line(&mut line).await.unwrap() > 0, "the dashboard exited");
            if let Some(rest) = line.strip_prefix("dashboard") {
                return rest.trim().to_owned();
            }
        }
    })
    .await
    .expect("the dashboard printed its address");
    assert!(page.starts_with("http://127.0.0.1:"), "{page}");

    // Its event stream, read as a second client would, from the start.
    let seen_events = Arc::new(Mutex::new(String::new()));
    let mut sse = http().get(format!("{page}events")).send().await.unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    tokio::spawn({
        let seen = seen_events.clone();
        async move {
            while let Ok(Some(chunk)) = sse.chunk().await {
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    });

    // Each proxy reports successes; one gets barred by binance; the first proxy's events go
    // out raw, with its password in the URL and in the details.
    for (i, (region, host)) in PROXIES.iter().enumerate() {
        for latency in [40 + 10 * i as u64, 60 + 15 * i as u64, 90 + 20 * i as u64] {
            publish_raw(&js, &event(host, region, "binance", Ok(latency))).await;
        }
    }
    publish_raw(&js, &event("127.0.0.22", "us-east", "binance", Err(ErrorKind::Http429))).await;
    // A health message of a proxy no one else tells of, URL unredacted.
    let rogue = url_of(HEALTH_ONLY_HOST);
    let mut stats =
        HealthStats::new(proxy_id(&rogue), rogue, Some("ap-northeast".parse().unwrap()), chrono::Utc::now());
    stats.state = HealthState::Degraded;
    stats.total = 4;
    stats.successes = 3;
    stats.failures = 1;
    stats.success_rate = 0.75;
    let payload = Codec::default().encode(Encoding::MsgPack, &stats).unwrap();
    // The lab feeds' counters, as `proxybus up --demo` publishes them.
    let feed = serde_json::json!([{
        "name": "binance-trades", "exchange": "binance", "connection": "websocket", "connected": true,
        "messages": 1200, "messages_per_second": 19.5, "reconnects": 2, "errors": {"http_429": 1},
        "proxy": url_of("127.0.0.11"),
    }]);
    // Both go out every second, as their publishers do: core NATS keeps nothing for a late reader.
    tokio::spawn({
        let (nats, stop) = (nats.clone(), stop.clone());
        let health = subject::health(&"ap-northeast".parse().unwrap());
        let feeds = serde_json::to_vec(&feed).unwrap();
        async move {
            while !stop.is_cancelled() {
                nats.publish(health.clone(), payload.clone()).await.unwrap();
                nats.publish(subject::LAB_FEEDS, feeds.clone().into()).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });

    let profile = tempfile::tempdir().unwrap();
    let (mut driver, browser) = browser(profile.path()).await;
    let checked = async {
        browser.goto(&page).await.unwrap();
        let all = PROXIES.len() + 1;
        until(&format!("{all} proxies are listed"), || async {
            rows(&browser, "#proxies tbody tr.proxy").await == all
        })
        .await;
        until("the status says live", || async {
            browser.find(Locator::Css("#status")).await.unwrap().text().await.unwrap() == "live"
        })
        .await;
        until("the feed is shown", || async { rows(&browser, "#feeds tr.feed").await == 1 }).await;
        // The feeds chart spans the last minute or so around its samples, not years (a
        // newcomer saw its axis run from 2027 to 2029, each feed a dot at the left edge).
        let span = browser
            .execute(
                "const x = window.proxybusCharts.feeds.scales.x; return [x.min, x.max, Date.now() / 1000];",
                vec![],
            )
            .await
            .unwrap();
        let [min, max, now] = [0, 1, 2].map(|i| span[i].as_f64().unwrap_or_else(|| panic!("x scale: {span}")));
        assert!(max - min >= 59.0 && max - min <= 3_600.0, "feeds chart spans {} s: {span}", max - min);
        assert!((now - max).abs() < 120.0, "feeds chart ends {} s from now: {span}", now - max);
        until("binance's bar shows", || async { rows(&browser, "#proxies td .chip.cooldown").await == 1 }).await;
        // Marks this page load: a reload would lose it.
        browser.execute("window.loadedOnce = 'yes'; return true;", vec![]).await.unwrap();

        let victim = PROXIES[3].1;
        let victim_id = proxy_id(&url_of(victim));
        let ejected = format!("#proxies tr.proxy[data-proxy-id=\"{victim_id}\"][data-state=\"ejected\"]");
        assert_eq!(rows(&browser, &ejected).await, 0, "not ejected before its failures");
        for _ in 0..5 {
            publish_raw(&js, &event(victim, "us-east", "coinbase", Err(ErrorKind::Timeout))).await;
        }
        until("the row turns ejected", || async { rows(&browser, &ejected).await == 1 }).await;
        let row = browser.find(Locator::Css(&ejected)).await.unwrap();
        let text = row.text().await.unwrap();
        assert!(text.contains("ejected") && text.contains("timeout"), "what the row says: {text}");
        assert_eq!(browser.execute("return window.loadedOnce;", vec![]).await.unwrap(), "yes", "the page reloaded");
        until("the ejection is on the timeline", || async {
            rows(&browser, "#timeline li[data-kind=\"ejected\"]").await == 1
        })
        .await;
        let summary = browser.find(Locator::Css("#regions .region[data-region=\"us-east\"]")).await.unwrap();
        let summary = summary.text().await.unwrap();
        assert!(summary.contains("1 ejected"), "us-east summary: {summary}");

        // An operator drains another proxy (`proxybus drain`): the row says who and why, the
        // timeline has it, and a password pasted into the reason is redacted.
        let drained_id = proxy_id(&url_of(PROXIES[0].1));
        let drain = proxybus_shared::OperatorEvent {
            schema_version: SCHEMA_VERSION,
            event_id: uuid::Uuid::new_v4(),
            proxy_id: drained_id,
            action: proxybus_shared::OperatorAction::Drain,
            exchange_id: None,
            duration_seconds: Some(7200),
            reason: format!("provider maintenance, see http://ops:{PASSWORD}@127.0.0.11:3128"),
            operator: "alice".into(),
            timestamp: chrono::Utc::now(),
        };
        proxybus_shared::feedback::publish_operator_event(&js, &drain).await.unwrap();
        let operator_cell = format!("#proxies tr.proxy[data-proxy-id=\"{drained_id}\"] td[data-col=\"operator\"]");
        until("the drained row names the operator", || async {
            match browser.find(Locator::Css(&operator_cell)).await {
                Ok(cell) => cell.text().await.unwrap_or_default().contains("drain by alice"),
                Err(_) => false,
            }
        })
        .await;
        until("the drain is on the timeline", || async {
            rows(&browser, "#timeline li[data-kind=\"operator\"]").await == 1
        })
        .await;

        // Let the charts draw, then keep what a person sees.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let png = browser.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let screenshot = std::env::var_os("PROXYBUS_DASHBOARD_SCREENSHOT")
            .map_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"), Into::into);
        std::fs::write(&screenshot, png).unwrap();

        let dom = browser.source().await.unwrap();
        let dom_text = browser.execute("return document.body.innerText;", vec![]).await.unwrap().to_string();
        for (place, text) in [("DOM", &dom), ("visible text", &dom_text)] {
            assert!(!text.contains(PASSWORD), "the password is in the page's {place}");
            assert!(
                text.contains("127.0.0.11") && text.contains(HEALTH_ONLY_HOST),
                "the planted proxies are shown (redacted) in the {place}"
            );
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(120), checked).await;
    let _ = browser.close().await;
    let _ = driver.kill().await;
    result.expect("the browser checks finished in time");

    let events = seen_events.lock().unwrap().clone();
    assert!(
        events.starts_with("event: snapshot"),
        "the stream starts with a snapshot: {}",
        &events[..80.min(events.len())]
    );
    assert!(events.contains("event: proxy") && events.contains("\"ejected\""), "the stream carried the ejection");
    assert!(events.contains("event: feeds") && events.contains("127.0.0.11"), "the stream carried the feeds");
    assert!(!events.contains(PASSWORD), "the password is in the event stream");

    stop.cancel();
    let _ = dashboard.kill().await;
}

#[tokio::test]
async fn with_a_token_the_data_needs_it_and_no_token_refuses_a_public_address() {
    let server = NatsServer::start().await.unwrap();
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(["dashboard", "--listen", "0.0.0.0:0"])
        .env("NATS_URL", server.client_url())
        .env_remove("PROXYBUS_DASHBOARD_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");

    let port = free_port();
    let mut dashboard = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .env("NATS_URL", server.client_url())
        .env("PROXYBUS_DASHBOARD_TOKEN", "s3cret-dashboard-token")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = http();
    let base = format!("http://127.0.0.1:{port}");
    let mut page = None;
    for _ in 0..100 {
        if let Ok(response) = http.get(format!("{base}/")).send().await {
            page = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = page.expect("the dashboard answered");
    assert_eq!(page.status(), 200, "the page itself holds no data");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(http.get(format!("{base}/api/snapshot")).send().await.unwrap()), 401);
    assert_eq!(status(http.get(format!("{base}/api/snapshot")).bearer_auth("wrong").send().await.unwrap()), 401);
    assert_eq!(status(http.get(format!("{base}/events?token=wrong")).send().await.unwrap()), 401);
    let ok = http.get(format!("{base}/api/snapshot")).bearer_auth("s3cret-dashboard-token").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let snapshot: serde_json::Value = ok.json().await.unwrap();
    assert!(snapshot["proxies"].is_array(), "{snapshot}");
    let events = http.get(format!("{base}/events?token=s3cret-dashboard-token")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    let _ = dashboard.kill().await;
}

#[tokio::test]
async fn the_assets_are_served_from_the_binary_and_ctrl_c_stops_it_with_a_browser_connected() {
    let server = NatsServer::start().await.unwrap();
    let port = free_port();
    let mut dashboard = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .env("NATS_URL", server.client_url())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = http();
    let base = format!("http://127.0.0.1:{port}");
    let mut answered = false;
    for _ in 0..100 {
        if http.get(format!("{base}/")).send().await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the dashboard answered");
    let index = http.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
    for asset in ["assets/uPlot.iife.min.js", "assets/uPlot.min.css", "assets/app.js", "assets/app.css"] {
        assert!(index.contains(asset), "the page loads {asset}");
        let response = http.get(format!("{base}/{asset}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.text().await.unwrap().len() > 500, "{asset} has content");
    }
    // Ctrl-C stops it promptly even while a browser holds its event stream open.
    let mut open_stream = http.get(format!("{base}/events")).send().await.unwrap();
    assert!(open_stream.chunk().await.unwrap().is_some(), "the snapshot came");
    let pid = nix::unistd::Pid::from_raw(dashboard.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status =
        tokio::time::timeout(Duration::from_secs(8), dashboard.wait()).await.expect("stopped in time").unwrap();
    assert!(status.success(), "{status}");
    drop(open_stream);
}

/// `deploy/nats/permissions.conf`'s `DASHBOARD_PERMISSIONS`: a dashboard user sees health and
/// feedback, and may write nothing.
#[tokio::test]
async fn a_dashboard_user_of_the_deploy_permissions_follows_everything_and_writes_nothing() {
    let permissions =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats/permissions.conf")).unwrap();
    let config = format!(
        r#"{permissions}
authorization {{
  users: [
    {{ user: feed, password: feed-pw, permissions: $FEED_PERMISSIONS }}
    {{ user: resolver, password: resolver-pw, permissions: $RESOLVER_PERMISSIONS }}
    {{ user: aggregator, password: aggregator-pw, permissions: $AGGREGATOR_PERMISSIONS }}
    {{ user: pool, password: pool-pw, permissions: $POOL_PERMISSIONS }}
    {{ user: dashboard, password: dashboard-pw, permissions: $DASHBOARD_PERMISSIONS }}
  ]
}}"#
    );
    let server = NatsServer::builder().extra_config(config).start().await.unwrap();
    let url = server.client_url();
    let env = |user: &str| -> proxybus_shared::config::EnvSource {
        [("NATS_URL", url.clone()), ("NATS_USER", user.to_owned()), ("NATS_PASSWORD", format!("{user}-pw"))]
            .into_iter()
            .collect()
    };
    let stop = CancellationToken::new();
    let mut aggregator = proxybus_aggregator::AggregatorConfig::for_url(url.clone());
    aggregator.nats = proxybus_shared::nats::NatsSettings::from_env(&env("aggregator")).unwrap();
    tokio::spawn(proxybus_aggregator::run(aggregator, stop.clone().cancelled_owned()));
    let feed = proxybus_shared::nats::NatsSettings::from_env(&env("feed")).unwrap().connect().await.unwrap();
    let feed_js = jetstream::new(feed.clone());

    let port = free_port();
    let mut dashboard = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .env("NATS_URL", &url)
        .env("NATS_USER", "dashboard")
        .env("NATS_PASSWORD", "dashboard-pw")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The feed reports until the aggregator (which makes the stream) has stored it.
    let host = PROXIES[1].1;
    let id = proxy_id(&url_of(host));
    let http = http();
    let snapshot = tokio::time::timeout(WAIT, async {
        loop {
            let _ =
                proxybus_shared::feedback::publish_feedback(&feed_js, &event(host, "eu-west", "binance", Ok(50))).await;
            if let Ok(response) = http.get(format!("http://127.0.0.1:{port}/api/snapshot")).send().await {
                let snapshot: serde_json::Value = response.json().await.unwrap();
                let listed =
                    snapshot["proxies"].as_array().is_some_and(|p| p.iter().any(|p| p["proxy_id"] == id.as_str()));
                let counted = snapshot["feedback"].as_array().is_some_and(|f| !f.is_empty());
                if listed && counted {
                    return snapshot;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the dashboard user follows PROXY_HEALTH and reads PROXY_FEEDBACK");
    assert!(snapshot["minutes"].as_array().is_some_and(|m| !m.is_empty()), "{snapshot}");

    // What it may not do.
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = errors.clone();
    let viewer = async_nats::ConnectOptions::with_user_and_password("dashboard".into(), "dashboard-pw".into())
        .request_timeout(Some(Duration::from_secs(1)))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    seen.lock().unwrap().push(err.to_string());
                }
            }
        })
        .connect(&url)
        .await
        .unwrap();
    let viewer_js = jetstream::new(viewer.clone());
    let bucket = viewer_js.get_key_value(subject::HEALTH_BUCKET).await.expect("it may open the bucket");
    assert!(bucket.put(id.as_str(), "x".into()).await.is_err(), "it may not write PROXY_HEALTH");
    let stream = viewer_js.get_stream(subject::FEEDBACK_STREAM).await.expect("it may look at the stream");
    assert!(
        stream.delete_consumer(subject::AGGREGATOR_CONSUMER).await.is_err(),
        "it may not delete the aggregator's consumer"
    );
    assert!(viewer_js.delete_stream(subject::FEEDBACK_STREAM).await.is_err(), "it may not delete the stream");
    viewer.publish(subject::LAB_FEEDS, "[]".into()).await.unwrap();
    viewer.flush().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while !errors.lock().unwrap().iter().any(|e| e.to_lowercase().contains("permissions violation")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("publishing is a permissions violation");

    stop.cancel();
    let _ = dashboard.kill().await;
}
