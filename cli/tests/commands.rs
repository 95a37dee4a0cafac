//! The `proxybus` binary against a real nats-server.

use std::process::Output;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::service::ServiceExt;
use chrono::Utc;
use futures::StreamExt;
use proxybus_shared::kv::BucketConfig;
use proxybus_shared::{
    Codec, Encoding, ErrorKind, FallbackPolicy, HealthState, HealthStats, ProxyFeedback, ProxyRequest, ProxyResponse,
    ResponseSource, proxy_id, redact_url, subject,
};
use proxybus_tests::NatsServer;

async fn proxybus(server: &NatsServer, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(args)
        .env("NATS_URL", server.client_url())
        .output();
    tokio::time::timeout(Duration::from_secs(20), output).await.expect("proxybus finished").expect("proxybus ran")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const PROXY: &str = "socks5://alice:s3cret@10.0.0.7:1080";

async fn spawn_resolver(client: async_nats::Client) {
    let mut sub = client.subscribe(subject::REQUEST_WILDCARD).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let codec = Codec::default();
        while let Some(msg) = sub.next().await {
            let request: ProxyRequest = codec.decode(msg.headers.as_ref(), &msg.payload).unwrap();
            let response = ProxyResponse {
                schema_version: 1,
                proxy_url: Some(PROXY.into()),
                proxy_id: Some(proxy_id(PROXY)),
                strategy: format!("sticky-for-{}", request.client_id),
                ttl_seconds: 120,
                fallback_policy: FallbackPolicy::DirectConnection,
                source: ResponseSource::Service,
                region: request.region,
                request_id: request.request_id.unwrap_or_default(),
                metadata: Default::default(),
                // A failed-over answer: given by a resolver of another region.
                resolver_region: Some("ap-northeast".parse().unwrap()),
            };
            let body = codec.encode(Encoding::MsgPack, &response).unwrap();
            client.publish_with_headers(msg.reply.unwrap(), Encoding::MsgPack.headers(), body).await.unwrap();
        }
    });
}

#[tokio::test]
async fn request_prints_the_proxy_redacted_or_as_json() {
    let server = NatsServer::start().await.unwrap();
    spawn_resolver(server.connect().await.unwrap()).await;
    let output = proxybus(&server, &["request", "binance", "websocket", "--region", "eu-west"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("socks5://alice:***@10.0.0.7:1080"), "{text}");
    assert!(!text.contains("s3cret"), "the table never shows a password: {text}");
    assert!(text.contains(proxy_id(PROXY).as_str()) && text.contains("eu-west"), "{text}");
    assert!(text.contains("resolver_region") && text.contains("ap-northeast"), "who answered is shown: {text}");

    let output = proxybus(&server, &["request", "binance", "http", "--json", "--client-id", "feed-7"]).await;
    let response: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(response.proxy_url.as_deref(), Some(PROXY), "--json is what a feed receives");
    assert_eq!(response.strategy, "sticky-for-feed-7");
}

#[tokio::test]
async fn request_without_a_resolver_fails_with_a_hint() {
    let server = NatsServer::start().await.unwrap();
    let output = proxybus(&server, &["request", "binance", "http", "--timeout", "1"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is a resolver running") || stderr(&output).contains("is proxybus up"),
        "{}",
        stderr(&output)
    );
    let output = proxybus(&server, &["request", "bin.ance", "http"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("invalid exchange_id"), "{}", stderr(&output));
}

#[tokio::test]
async fn feedback_is_stored_in_the_stream_with_its_event_id() {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let js = jetstream::new(client);
    let mut stream = js
        .create_stream(stream::Config {
            name: subject::FEEDBACK_STREAM.into(),
            subjects: vec![subject::FEEDBACK_WILDCARD.into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = proxy_id(PROXY);
    let output = proxybus(
        &server,
        &[
            "feedback",
            id.as_str(),
            "--exchange",
            "binance",
            "--conn",
            "http",
            "--fail",
            "http_429",
            "--retry-after",
            "30",
            "--proxy-url",
            PROXY,
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("at sequence 1"), "{}", stdout(&output));
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let msg = stream.get_raw_message(1).await.unwrap();
    let event: ProxyFeedback = Codec::default().decode(Some(&msg.headers), &msg.payload).unwrap();
    assert_eq!(msg.headers.get("Nats-Msg-Id").unwrap().as_str(), event.event_id.to_string());
    assert_eq!(
        (event.success, event.error_kind, event.retry_after_seconds),
        (false, Some(ErrorKind::Http429), Some(30))
    );
    assert_eq!(event.proxy_url, redact_url(PROXY), "the stream never holds a password");
    assert_eq!(msg.subject.as_str(), "proxy.v1.feedback.binance.http");

    let output =
        proxybus(&server, &["feedback", id.as_str(), "--exchange", "binance", "--conn", "http", "--fail", "exploded"])
            .await;
    assert!(!output.status.success(), "an unknown error kind is refused");
    let output = proxybus(&server, &["feedback", id.as_str(), "--exchange", "binance", "--conn", "http"]).await;
    assert!(!output.status.success(), "--ok or --fail is required");
    assert_eq!(stream.info().await.unwrap().state.messages, 1, "refused commands publish nothing");
}

#[tokio::test]
async fn health_shows_the_bucket_filtered_by_region() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let bucket =
        proxybus_shared::kv::open_or_create(&js, &BucketConfig::new(subject::HEALTH_BUCKET, "test")).await.unwrap();
    for (url, region, state) in [
        ("http://u:pw@10.0.0.1:3128", "eu-west", HealthState::Healthy),
        ("http://u:pw@10.0.0.2:3128", "us-east", HealthState::Ejected),
    ] {
        let mut stats = HealthStats::new(proxy_id(url), redact_url(url), Some(region.parse().unwrap()), Utc::now());
        stats.state = state;
        stats.total = 7;
        let value = Codec::default().encode(Encoding::MsgPack, &stats).unwrap();
        bucket.put(stats.proxy_id.as_str(), value).await.unwrap();
    }
    bucket.put("not-a-proxy", "ignored".into()).await.unwrap();

    let output = proxybus(&server, &["health", "--json", "--region", "us-east"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: Vec<HealthStats> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!((shown[0].proxy_id, shown[0].state), (proxy_id("http://u:pw@10.0.0.2:3128"), HealthState::Ejected));

    let output = proxybus(&server, &["health"]).await;
    let text = stdout(&output);
    assert!(
        text.contains("2 proxies") && text.contains("ejected") && text.contains("http://u:***@10.0.0.1:3128"),
        "{text}"
    );

    // `--watch` into a pipe: a table per change, each after a `--- time` line, and no
    // terminal codes (clearing the screen is for a terminal only).
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus"))
        .args(["health", "--watch"])
        .env("NATS_URL", server.client_url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut seen = String::new();
    let mut changed = false;
    while seen.matches("2 proxies").count() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a table within 20 s")
            .unwrap()
            .expect("the watch keeps running");
        seen.push_str(&line);
        seen.push('\n');
        if !changed && seen.contains("2 proxies") {
            // One change after the stored records: a second table.
            let url = "http://u:pw@10.0.0.1:3128";
            let stats = HealthStats::new(proxy_id(url), redact_url(url), Some("eu-west".parse().unwrap()), Utc::now());
            bucket
                .put(stats.proxy_id.as_str(), Codec::default().encode(Encoding::MsgPack, &stats).unwrap())
                .await
                .unwrap();
            changed = true;
        }
    }
    watch.kill().await.unwrap();
    assert!(seen.lines().filter(|l| l.starts_with("--- ")).count() >= 2, "{seen}");
    assert!(!seen.contains('\u{1b}'), "no terminal codes into a pipe: {seen:?}");
}

#[tokio::test]
async fn services_lists_what_answers_srv_stats() {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let service = client.service_builder().description("test").start("proxybus-resolver", "1.2.3").await.unwrap();
    let mut endpoint = service.endpoint("proxy.v1.request.*.*").await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            request.respond(Ok("ok".into())).await.unwrap();
        }
    });
    client.request("proxy.v1.request.binance.http", "x".into()).await.unwrap();
    let output = proxybus(&server, &["services", "--json"]).await;
    let stats: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["name"], "proxybus-resolver");
    assert_eq!(stats[0]["endpoints"][0]["num_requests"], 1);
    let output = proxybus(&server, &["services"]).await;
    assert!(stdout(&output).contains("proxybus-resolver") && stdout(&output).contains("1.2.3"), "{}", stdout(&output));
}

#[tokio::test]
async fn an_old_server_is_refused_with_the_minimum_version() {
    let server = NatsServer::builder().binary(proxybus_tests::old_server_binary()).start().await.unwrap();
    let output = proxybus(&server, &["request", "binance", "http"]).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("proxybus needs nats-server 2.11.0 or newer"), "{message}");
    assert!(message.contains("2.9."), "names the version it found: {message}");
}

#[tokio::test]
async fn operator_commands_are_stored_folded_and_shown_with_who_and_why() {
    let server = NatsServer::start().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut config = proxybus_aggregator::AggregatorConfig::for_url(server.client_url());
    config.settings.fetch_wait_ms = 100;
    tokio::spawn(proxybus_aggregator::run(config, stop.clone().cancelled_owned()));
    let js = jetstream::new(server.connect().await.unwrap());
    let id = proxy_id(PROXY);
    let ban = ["ban", id.as_str(), "--exchange", "binance", "--for", "2h", "--reason", "provider maintenance"];
    let output = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            // Until the aggregator has made the stream, the ban has nowhere to go (and says so).
            let output = proxybus(&server, &[&ban[..], &["--by", "alice"]].concat()).await;
            if output.status.success() {
                return output;
            }
            assert!(stderr(&output).contains("did not store"), "{}", stderr(&output));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the ban was stored");
    assert!(stdout(&output).contains(&format!("ban {id} (binance) for 2h by alice")), "{}", stdout(&output));
    let mut stream = js.get_stream(subject::FEEDBACK_STREAM).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let stored = state.messages;
    let msg = stream.get_raw_message(state.last_sequence).await.unwrap();
    assert_eq!(msg.subject.as_str(), format!("proxy.v1.feedback.operator.ban.{id}"));

    for refused in [
        vec!["ban", id.as_str(), "--reason", ""],
        vec!["ban", id.as_str(), "--for", "0s", "--reason", "x"],
        vec!["ban", id.as_str(), "--for", "soon", "--reason", "x"],
        vec!["ban", id.as_str()],
        vec!["unban", id.as_str(), "--for", "1h", "--reason", "x"],
        vec!["disable", id.as_str(), "--exchange", "binance", "--reason", "x"],
        vec!["drain", "not-a-proxy-id", "--reason", "x"],
    ] {
        let output = proxybus(&server, &refused).await;
        assert!(!output.status.success(), "{refused:?} was accepted");
        assert!(!stderr(&output).is_empty(), "{refused:?} says why");
    }
    assert_eq!(stream.info().await.unwrap().state.messages, stored, "refused commands publish nothing");

    let shown = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let output = proxybus(&server, &["health"]).await;
            let text = stdout(&output);
            if text.contains("by alice") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("proxybus health shows the ban");
    assert!(shown.contains("ban binance until") && shown.contains("provider maintenance"), "{shown}");
    let output = proxybus(&server, &["health", "--json"]).await;
    let all: Vec<HealthStats> = serde_json::from_slice(&output.stdout).unwrap();
    let control = &all.iter().find(|s| s.proxy_id == id).unwrap().operator_controls[0];
    assert_eq!((control.operator.as_str(), control.reason.as_str()), ("alice", "provider maintenance"));
    let until = control.until.unwrap() - control.at;
    assert_eq!(until.num_seconds(), 7200, "--for 2h from when the stream stored it");

    let output = proxybus(&server, &["unban", id.as_str(), "--reason", "maintenance over", "--by", "bob"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn replay_what_if_reports_both_policies_and_writes_nothing() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    proxybus_shared::feedback::ensure_feedback_stream(&js, &Default::default()).await.unwrap();
    let id = proxy_id(PROXY);
    for _ in 0..2 {
        let output = proxybus(
            &server,
            &["feedback", id.as_str(), "--exchange", "binance", "--conn", "http", "--fail", "timeout"],
        )
        .await;
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("strict.toml");
    std::fs::write(&policy, "consecutive_failures = 2\n").unwrap();
    let output = proxybus(&server, &["replay", "--what-if", policy.to_str().unwrap(), "--json"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["live"]["ejections"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["candidate"]["ejections"][0]["proxy_id"], id.as_str(), "{report}");
    let output = proxybus(&server, &["replay", "--what-if", policy.to_str().unwrap()]).await;
    assert!(stdout(&output).contains("candidate 1 ejections"), "{}", stdout(&output));
    assert!(js.get_key_value("PROXY_HEALTH_REPLAY").await.is_err() && js.get_key_value("PROXY_HEALTH").await.is_err());
    let output = proxybus(&server, &["replay", "--what-if", policy.to_str().unwrap(), "--into", "PROXY_HEALTH"]).await;
    assert!(!output.status.success(), "--what-if never writes a bucket");
    std::fs::write(&policy, "consecutive_falures = 2\n").unwrap();
    let output = proxybus(&server, &["replay", "--what-if", policy.to_str().unwrap()]).await;
    assert!(!output.status.success() && stderr(&output).contains("consecutive_falures"), "{}", stderr(&output));
}
