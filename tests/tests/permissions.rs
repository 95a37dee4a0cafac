//! The example NATS permissions of `deploy/nats/` against a real nats-server
//! (issue #12 item 6): feeds may only ask for proxies and report feedback; each
//! service may do its own part (the real resolver, aggregator and pool run under
//! their users, and the server denies them nothing); operators may do everything. Every denial the issue names is proven:
//! a feed publishing `proxy.v1.health.>`, reading or writing `PROXY_HEALTH`,
//! deleting `PROXY_FEEDBACK`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_shared::config::EnvSource;
use proxybus_shared::feedback::{FeedbackStreamConfig, ensure_feedback_stream};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::{FEEDBACK_STREAM, HEALTH_BUCKET};
use proxybus_shared::{ConnectionType, ExchangeId, FeedbackPhase, ResponseSource};
use proxybus_tests::NatsServer;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats")
}

/// A server with `deploy/nats/permissions.conf` and the users of
/// `deploy/nats/nats-server.conf`, with test passwords (`{user}-pw`).
async fn server() -> NatsServer {
    // nats-server resolves `include` against the including file's folder: inline the file instead.
    let permissions = std::fs::read_to_string(deploy_dir().join("permissions.conf")).unwrap();
    let config = format!(
        r#"{permissions}
authorization {{
  users: [
    {{ user: feed, password: feed-pw, permissions: $FEED_PERMISSIONS }}
    {{ user: resolver, password: resolver-pw, permissions: $RESOLVER_PERMISSIONS }}
    {{ user: aggregator, password: aggregator-pw, permissions: $AGGREGATOR_PERMISSIONS }}
    {{ user: pool, password: pool-pw, permissions: $POOL_PERMISSIONS }}
    {{ user: dashboard, password: dashboard-pw, permissions: $DASHBOARD_PERMISSIONS }}
    {{ user: operator, password: operator-pw }}
  ]
}}"#
    );
    NatsServer::builder().extra_config(config).start().await.unwrap()
}

/// `NATS_*` settings of `user` on `server`.
fn settings(server: &NatsServer, user: &str) -> NatsSettings {
    let env: EnvSource =
        [("NATS_URL", server.client_url()), ("NATS_USER", user.to_owned()), ("NATS_PASSWORD", format!("{user}-pw"))]
            .into_iter()
            .collect();
    NatsSettings::from_env(&env).unwrap()
}

/// A connection as `user` whose requests give up after a second, and the server errors it got.
async fn connect(server: &NatsServer, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), format!("{user}-pw"))
        .request_timeout(Some(Duration::from_secs(1)))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    seen.lock().unwrap().push(err.to_string());
                }
            }
        })
        .connect(server.client_url())
        .await
        .unwrap();
    (client, errors)
}

fn binance() -> ExchangeId {
    "binance".parse().unwrap()
}

async fn wait_for_violation(errors: &Arc<Mutex<Vec<String>>>, subject: &str) {
    tokio::time::timeout(WAIT, async {
        while !errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.to_lowercase().contains("permissions violation") && e.contains(subject))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no permissions violation for {subject}: {:?}", errors.lock().unwrap()));
}

#[test]
fn the_example_server_config_is_valid_for_nats_server() {
    let binary = proxybus_shared::nats_server::locate().expect("a current nats-server").binary;
    let output = std::process::Command::new(binary)
        .args(["-t", "-c"])
        .arg(deploy_dir().join("nats-server.conf"))
        .envs(
            ["FEED", "RESOLVER", "AGGREGATOR", "POOL", "DASHBOARD", "OPERATOR"]
                .map(|u| (format!("PROXYBUS_{u}_PASSWORD"), "x")),
        )
        .output()
        .expect("nats-server runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn each_role_may_do_its_part_and_a_feed_nothing_more() {
    let server = server().await;
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let (operator, _) = connect(&server, "operator").await;
    let operator_js = jetstream::new(operator.clone());

    // The services, each under its own user: the real resolver and aggregator.
    let resolver = proxybus_resolver::ResolverConfig {
        proxy: Default::default(),
        resolver: proxybus_resolver::ResolverSettings::default(),
        nats: settings(&server, "resolver"),
    };
    tokio::spawn(proxybus_resolver::run(resolver, stop.clone().cancelled_owned()));
    let mut aggregator = proxybus_aggregator::AggregatorConfig::for_url(server.client_url());
    aggregator.nats = settings(&server, "aggregator").with_name("proxybus-aggregator");
    tokio::spawn(proxybus_aggregator::run(aggregator, stop.clone().cancelled_owned()));

    // A feed asks (answered by the resolver, not by the client's own fallback) and reports.
    let (feed, feed_errors) = connect(&server, "feed").await;
    let mut config = ClientConfig::new(settings(&server, "feed"), "feed-permissions-1");
    config.request_timeout = Duration::from_secs(5);
    let client = ProxyClient::with_nats(config, feed.clone());
    let lease = tokio::time::timeout(WAIT, async {
        loop {
            let lease = client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
            if lease.request_id.is_some() {
                return lease;
            }
            client.invalidate(&lease).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the resolver, under its user, answers the feed");
    assert_eq!(lease.source, ResponseSource::Direct, "proxying is off in this resolver");

    // Feedback: a JetStream publish to PROXY_FEEDBACK, acked; the aggregator folds it.
    let mut feed_js = jetstream::new(feed.clone());
    feed_js.set_timeout(Duration::from_secs(1));
    let proxy = proxybus_shared::ProxyUrl::parse("http://u:pw@10.0.0.1:3128").unwrap();
    let event = proxybus_client::ProxyLease { proxy_id: Some(proxy.id()), proxy: Some(proxy.clone()), ..lease.clone() }
        .feedback("feed-permissions-1", FeedbackPhase::Request, true)
        .unwrap();
    tokio::time::timeout(WAIT, async {
        // The aggregator creates the stream; until then the publish has no stream to land in.
        while proxybus_shared::feedback::publish_feedback(&feed_js, &event).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a feed may publish feedback");
    let health = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(store) = operator_js.get_key_value(HEALTH_BUCKET).await
                && let Ok(Some(value)) = store.get(proxy.id().as_str()).await
            {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the aggregator, under its user, folds the event into PROXY_HEALTH");
    assert!(!health.is_empty());

    // The pool, under its user, reads PROXY_HEALTH at start and follows health.
    let pool_settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../services/pool/inventory.sample.toml"),
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec!["pool-token-123".into()], ..Default::default() },
        ..Default::default()
    };
    let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig {
        settings: pool_settings,
        nats: Some(settings(&server, "pool")),
    })
    .await
    .unwrap();
    tokio::spawn(pool.serve(stop.clone().cancelled_owned()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The pool, under its user, folds a feed's usage report into PROXY_BUDGETS.
    let budget_key = proxybus_shared::budget::budget_key(&proxy.id(), &binance());
    tokio::time::timeout(WAIT, async {
        loop {
            // Reported again (a new event) until the pool's consumer, made at its start, has one.
            let mut usage = event.clone();
            usage.event_id = uuid::Uuid::new_v4();
            usage.usage_headers = [("x-mbx-used-weight-1m".to_owned(), "4900".to_owned())].into_iter().collect();
            proxybus_shared::feedback::publish_feedback(&feed_js, &usage).await.unwrap();
            if let Ok(store) = operator_js.get_key_value(proxybus_shared::subject::BUDGET_BUCKET).await
                && let Ok(Some(_)) = store.get(budget_key.as_str()).await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the pool, under its user, keeps rate budgets");
    // So far only allowed work was done: the server denied nothing to any service.
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(denied.is_empty(), "services were denied their own part: {denied:#?}");

    // Denied: a feed publishing health.
    let mut health_watch = operator.subscribe("proxy.v1.health.>").await.unwrap();
    operator.flush().await.unwrap();
    feed.publish("proxy.v1.health.us-east", "forged".into()).await.unwrap();
    feed.flush().await.unwrap();
    wait_for_violation(&feed_errors, "proxy.v1.health.us-east").await;
    operator.publish("proxy.v1.health.control", "real".into()).await.unwrap();
    // The aggregator's own health pushes may come first; the forged message must not.
    tokio::time::timeout(WAIT, async {
        loop {
            let message = health_watch.next().await.unwrap();
            assert_ne!(&message.payload[..], b"forged", "a feed's forged health arrived");
            if message.subject.as_str() == "proxy.v1.health.control" {
                break;
            }
        }
    })
    .await
    .expect("the operator's health message arrives");

    // Denied: a feed issuing an operator's ban (`proxybus ban`'s subject); an operator may.
    let forged_ban = proxybus_shared::OperatorEvent {
        schema_version: 1,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: proxy.id(),
        action: proxybus_shared::OperatorAction::Ban,
        exchange_id: None,
        duration_seconds: None,
        reason: "forged by a feed".into(),
        operator: "feed".into(),
        timestamp: chrono::Utc::now(),
    };
    let operator_subject = proxybus_shared::subject::operator(forged_ban.action, &forged_ban.proxy_id);
    let refused = proxybus_shared::feedback::publish_operator_event(&feed_js, &forged_ban).await;
    assert!(refused.is_err(), "a feed's operator event is not stored");
    wait_for_violation(&feed_errors, &operator_subject).await;
    let mut feedback_stream = operator_js.get_stream(FEEDBACK_STREAM).await.unwrap();
    let last = feedback_stream.info().await.unwrap().state.last_sequence;
    let stored_last = feedback_stream.get_raw_message(last).await.unwrap();
    assert!(!proxybus_shared::subject::is_operator(&stored_last.subject), "no operator event in the stream");
    let ban = proxybus_shared::OperatorEvent { event_id: uuid::Uuid::new_v4(), operator: "ops".into(), ..forged_ban };
    proxybus_shared::feedback::publish_operator_event(&operator_js, &ban).await.expect("an operator may ban");

    // Denied: a feed reading PROXY_HEALTH (bucket, direct get, or watching its subjects).
    assert!(feed_js.get_key_value(HEALTH_BUCKET).await.is_err(), "a feed may not open PROXY_HEALTH");
    let direct = format!("$JS.API.DIRECT.GET.KV_{HEALTH_BUCKET}.$KV.{HEALTH_BUCKET}.{}", proxy.id());
    assert!(feed.request(direct.clone(), "".into()).await.is_err(), "a feed may not read a health key");
    let mut kv_watch = feed.subscribe(format!("$KV.{HEALTH_BUCKET}.>")).await.unwrap();
    feed.flush().await.unwrap();
    wait_for_violation(&feed_errors, &format!("$KV.{HEALTH_BUCKET}.>")).await;
    let store = operator_js.get_key_value(HEALTH_BUCKET).await.unwrap();
    store.put("operator-written", "x".into()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), kv_watch.next()).await.is_err(),
        "a feed sees no writes to PROXY_HEALTH"
    );

    // Denied: a feed writing PROXY_HEALTH.
    let forged = feed_js.publish(format!("$KV.{HEALTH_BUCKET}.forged"), "ejected".into()).await;
    let acked = match forged {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "a feed's write to PROXY_HEALTH is not stored");
    assert_eq!(store.get("forged").await.unwrap(), None);

    // Denied: a feed deleting PROXY_FEEDBACK.
    assert!(feed_js.delete_stream(FEEDBACK_STREAM).await.is_err(), "a feed may not delete PROXY_FEEDBACK");
    assert!(operator_js.get_stream(FEEDBACK_STREAM).await.is_ok(), "PROXY_FEEDBACK is still there");

    // Services stay in their part: the resolver writes no health, the aggregator deletes no stream.
    let (resolver_conn, _) = connect(&server, "resolver").await;
    let mut resolver_js = jetstream::new(resolver_conn);
    resolver_js.set_timeout(Duration::from_secs(1));
    let resolver_write = match resolver_js.publish(format!("$KV.{HEALTH_BUCKET}.by-resolver"), "x".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!resolver_write, "the resolver may not write PROXY_HEALTH");
    let (aggregator_conn, _) = connect(&server, "aggregator").await;
    let mut aggregator_js = jetstream::new(aggregator_conn);
    aggregator_js.set_timeout(Duration::from_secs(1));
    assert!(
        aggregator_js.delete_stream(FEEDBACK_STREAM).await.is_err(),
        "the aggregator may not delete PROXY_FEEDBACK"
    );

    // Operators may do everything, deleting streams included.
    ensure_feedback_stream(&operator_js, &FeedbackStreamConfig::default()).await.unwrap();
    operator.publish("proxy.v1.health.us-east", "operator".into()).await.unwrap();
    assert!(operator.request(direct, "".into()).await.is_ok(), "an operator may read a health key");
    operator_js.delete_stream(FEEDBACK_STREAM).await.unwrap();
}
