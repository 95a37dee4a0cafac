//! Issue #12 item 5: the whole pipeline (pool, resolver, aggregator in-process,
//! the `proxybus` CLI as a process) at `RUST_LOG=trace`, with one planted
//! password in every inventory URL and the planted upstream token. After
//! requests and feedback have gone through it, the password and the token are
//! in none of: log lines (ours and every dependency's), KV values, stream
//! messages (headers included), health messages, HTTP health pushes, `/metrics`
//! pages, the pool's inventory listing, error replies (NATS and HTTP), CLI output.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_shared::config::{AuthMethod, ExternalProxyServiceConfig, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::{FEEDBACK_STREAM, HEALTH_BUCKET, HEALTH_WILDCARD};
use proxybus_shared::{ConnectionType, ErrorKind, ExchangeId, FeedbackPhase};
use proxybus_tests::NatsServer;
use tokio_util::sync::CancellationToken;

/// The planted password, as written (percent-encoded) in the inventory ...
const WRITTEN: &str = "Pl4nted%2Fpw%40x9";
/// ... as decoded (what the proxy handshake sends) ...
const DECODED: &str = "Pl4nted/pw@x9";
/// ... and a part of it that any form would show.
const CORE: &str = "Pl4nted";
/// The planted upstream token (resolver and aggregator → pool).
const TOKEN: &str = "t0ken-PLANTED-5c1e";

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything that was shown, by where it was seen.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, place: impl Into<String>, text: impl AsRef<[u8]>) {
        self.0.push((place.into(), String::from_utf8_lossy(text.as_ref()).into_owned()));
    }

    fn assert_clean(&self) {
        let mut hits = Vec::new();
        for (place, text) in &self.0 {
            for secret in [WRITTEN, DECODED, CORE, TOKEN, "Pl4nted%2F", "pw%40x9"] {
                if let Some(at) = text.find(secret) {
                    let line = text[..at].rsplit('\n').next().unwrap_or_default();
                    hits.push(format!("{place}: {secret:?} in …{}", &line[line.len().saturating_sub(200)..]));
                }
            }
        }
        assert!(hits.is_empty(), "{} leaks:\n{}", hits.len(), hits.join("\n"));
    }
}

async fn proxybus_cli(server: &NatsServer, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(args)
        .env("NATS_URL", server.client_url())
        .env("RUST_LOG", "trace")
        .env_remove("PROXYBUS_LOG_WIRE")
        .output();
    tokio::time::timeout(WAIT, run).await.expect("the CLI finished").expect("the CLI ran")
}

#[tokio::test]
async fn no_password_or_token_leaves_the_pipeline_at_trace_level() {
    // Every log line of this process, at trace, in the services' own format.
    let logs = Sink::default();
    let writer = logs.clone();
    let subscriber = proxybus_shared::telemetry::subscriber(
        proxybus_shared::telemetry::LogFormat::Json,
        Some("trace"),
        false,
        move || writer.clone(),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = NatsServer::start().await.unwrap();
    let url = server.client_url();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.toml");
    let mut text =
        String::from("default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"round_robin\"\nsticky = false\n");
    for (n, scheme) in [(1, "http"), (2, "socks5h"), (3, "https"), (4, "socks5")] {
        text.push_str(&format!(
            "[[regions.us-east.proxies]]\nurl = \"{scheme}://feed{n}:{WRITTEN}@203.0.113.{n}:3128\"\n"
        ));
    }
    std::fs::write(&inventory, text).unwrap();
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();

    // A proxy service that only records the health pushes it gets (beside the pool).
    let pushes = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorded = pushes.clone();
    let recorder = axum::Router::new().route(
        "/api/v1/proxy/health",
        axum::routing::post(move |body: String| {
            let recorded = recorded.clone();
            async move {
                recorded.lock().unwrap().push(body);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let recorder_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, recorder).await.unwrap() });

    // The pipeline, as `proxybus up` wires it: one /metrics for every part.
    let (metrics_addr, _metrics_task) =
        proxybus_shared::telemetry::serve_metrics("127.0.0.1:0".parse().unwrap(), stop.clone()).await.unwrap();
    let pool_settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory: inventory.clone(),
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec![TOKEN.into()], ..Default::default() },
        ..Default::default()
    };
    let pool_config = proxybus_pool::PoolConfig { settings: pool_settings, nats: Some(NatsSettings::new(url.clone())) };
    let pool = proxybus_pool::PoolServer::bind(pool_config).await.unwrap();
    let pool_url = format!("http://{}", pool.local_addr());
    tokio::spawn(pool.serve(stop.clone().cancelled_owned()));
    let services = |endpoints: Vec<String>| ExternalProxyServiceConfig {
        enabled: true,
        endpoints,
        auth_method: AuthMethod::BearerToken,
        auth_credentials: [("token".to_owned(), TOKEN.into())].into_iter().collect(),
        ..Default::default()
    };
    let mut aggregator = proxybus_aggregator::AggregatorConfig::for_url(url.clone());
    aggregator.proxy_services = services(vec![pool_url.clone(), format!("http://{recorder_addr}")]);
    tokio::spawn(proxybus_aggregator::run(aggregator, stop.clone().cancelled_owned()));
    let resolver = proxybus_resolver::ResolverConfig {
        proxy: ProxySettings {
            enabled: true,
            external_service: services(vec![pool_url.clone()]),
            ..Default::default()
        },
        resolver: proxybus_resolver::ResolverSettings::default(),
        nats: NatsSettings::new(url.clone()),
    };
    tokio::spawn(proxybus_resolver::run(resolver, stop.clone().cancelled_owned()));

    let bus = server.connect().await.unwrap();
    let mut health_messages = bus.subscribe(HEALTH_WILDCARD).await.unwrap();
    bus.flush().await.unwrap();

    // Feeds ask and report through the client library.
    let binance: ExchangeId = "binance".parse().unwrap();
    let mut config = ClientConfig::new(NatsSettings::new(url.clone()), "feed-leaks-1");
    config.request_timeout = Duration::from_secs(5);
    let client = ProxyClient::with_nats(config, bus.clone());
    let lease = tokio::time::timeout(WAIT, async {
        loop {
            let lease = client.get_proxy(&binance, ConnectionType::Websocket, None).await.unwrap();
            if lease.request_id.is_some() && lease.proxy.is_some() {
                return lease;
            }
            client.invalidate(&lease).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the resolver answers from the pool");
    let (_, password) = lease.proxy.as_ref().unwrap().credentials().unwrap();
    assert_eq!(password, DECODED, "the feed gets the credentials it needs (and nothing else does)");
    for _ in 0..6 {
        let event = lease.feedback(client.client_id(), FeedbackPhase::Failed, false).unwrap();
        client.report(proxybus_shared::ProxyFeedback { error_kind: Some(ErrorKind::Timeout), ..event });
    }
    let (_, rest) = client.http_client(&"coinbase".parse().unwrap()).await.unwrap();
    let limited = rest.feedback(client.client_id(), FeedbackPhase::Request, false).unwrap();
    client.report(proxybus_shared::ProxyFeedback {
        error_kind: Some(ErrorKind::Http429),
        status_code: Some(429),
        retry_after_seconds: Some(30),
        error_details: Some(format!("429 from {} at https://api.coinbase.com", rest.proxy.as_ref().unwrap().expose())),
        ..limited
    });
    assert!(client.flush_feedback(WAIT).await, "{:?}", client.feedback_stats());

    let mut seen = Seen::default();
    // Error replies over NATS: a body that disagrees with its subject, and garbage.
    let mismatched =
        serde_json::json!({"exchange_id": "kraken", "connection_type": "http", "client_id": format!("feed {WRITTEN}")});
    let mut json = async_nats::HeaderMap::new();
    json.insert("Content-Type", "application/json");
    for body in [mismatched.to_string(), format!("{{\"proxy_url\": \"http://u:{WRITTEN}@h:1\"")] {
        let reply = bus.request_with_headers("proxy.v1.request.binance.http", json.clone(), body.into()).await.unwrap();
        seen.add("NATS error reply headers", format!("{:?}", reply.headers));
        seen.add("NATS error reply", &reply.payload);
    }
    // Error replies over HTTP: malformed JSON that quotes a proxy URL.
    let http = reqwest::Client::new();
    let bad = http
        .post(format!("{pool_url}/api/v1/proxy/request"))
        .bearer_auth(TOKEN)
        .body(format!("{{\"exchange_id\": \"http://feed1:{WRITTEN}@203.0.113.1:3128\", oops"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    seen.add("pool error reply", bad.text().await.unwrap());

    // The CLI, as an operator runs it.
    for args in [
        &["request", "binance", "websocket"][..],
        &["request", "coinbase", "http"],
        &["request", "Bin.ance", "http"],
        &["health"],
        &["health", "--json"],
        &["services"],
        &[
            "feedback",
            lease.proxy_id.as_ref().unwrap().as_str(),
            "--exchange",
            "binance",
            "--conn",
            "websocket",
            "--fail",
            "timeout",
        ],
    ] {
        let output = proxybus_cli(&server, args).await;
        seen.add(format!("proxybus {} (stdout)", args.join(" ")), &output.stdout);
        seen.add(format!("proxybus {} (stderr)", args.join(" ")), &output.stderr);
    }

    // Wait for the fold: the ejected proxy in PROXY_HEALTH, and pushes recorded.
    let js = jetstream::new(bus.clone());
    let ejected = lease.proxy_id.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let stored = match js.get_key_value(HEALTH_BUCKET).await {
                Ok(store) => store.get(ejected.as_str()).await.ok().flatten(),
                Err(_) => None,
            };
            if stored.is_some_and(|v| String::from_utf8_lossy(&v).contains("ejected"))
                && !pushes.lock().unwrap().is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the aggregator folded, stored and pushed");

    // KV values of every bucket, every stream message with its headers.
    let mut streams = js.stream_names();
    let mut names = Vec::new();
    while let Some(name) = streams.next().await {
        names.push(name.unwrap());
    }
    assert!(names.contains(&FEEDBACK_STREAM.to_owned()) && names.contains(&format!("KV_{HEALTH_BUCKET}")), "{names:?}");
    let mut messages = 0;
    for name in names {
        let mut stream = js.get_stream(&name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await {
                messages += 1;
                seen.add(format!("{name} #{seq} headers"), format!("{:?}", message.headers));
                seen.add(format!("{name} #{seq} ({})", message.subject), &message.payload);
                let decoded = rmpv::decode::read_value(&mut &message.payload[..]).map(|v| v.to_string());
                seen.add(format!("{name} #{seq} decoded"), decoded.unwrap_or_default());
            }
        }
    }
    assert!(messages >= 8, "the stream and buckets hold what went through: {messages}");
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(200), health_messages.next()).await {
        seen.add(format!("health message {}", message.subject), &message.payload);
        let decoded = rmpv::decode::read_value(&mut &message.payload[..]).map(|v| v.to_string());
        seen.add("health message decoded", decoded.unwrap_or_default());
    }
    for push in pushes.lock().unwrap().iter() {
        seen.add("HTTP health push", push);
    }
    // Pages: both /metrics, the pool's inventory listing and health check.
    seen.add(
        "/metrics of every part",
        reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap(),
    );
    for path in ["/metrics", "/healthz"] {
        seen.add(
            format!("pool {path}"),
            reqwest::get(format!("{pool_url}{path}")).await.unwrap().text().await.unwrap(),
        );
    }
    let listing =
        http.get(format!("{pool_url}/api/v1/proxies")).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
    assert!(listing.contains("feed1:***@203.0.113.1:3128"), "{listing}");
    seen.add("pool /api/v1/proxies", listing);

    stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("\"TRACE\"") && logs.contains("async_nats"), "the logs are at trace, dependencies included");
    seen.add("logs", &logs);
    seen.assert_clean();
}

#[tokio::test]
async fn wire_logs_need_proxybus_log_wire_and_warn_at_every_start() {
    let server = NatsServer::start().await.unwrap();
    for _start in 0..2 {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
            .args(["services"])
            .env("NATS_URL", server.client_url())
            .env("RUST_LOG", "warn")
            .env("PROXYBUS_LOG_WIRE", "1")
            .output();
        let output = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("WARN") && stderr.contains("wire logs are on"), "{stderr}");
    }
    let quiet = proxybus_cli(&server, &["services"]).await;
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("wire logs are on"));
}
