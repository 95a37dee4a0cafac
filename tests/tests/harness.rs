//! The harness's own tests, against a real `nats-server`: request/reply, JetStream data surviving
//! a graceful restart and a kill -9, authentication, config options, cleanup on drop, and a
//! three-node cluster that keeps accepting publishes after losing a node.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_nats::connection::State;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, jetstream};
use futures::StreamExt;
use nix::errno::Errno;
use nix::sys::signal;
use nix::unistd::Pid;
use proxybus_tests::{NatsCluster, NatsServer};
use tokio::time::{Instant, sleep, timeout};

/// Upper bound on one test, so a hang fails instead of stalling the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(45);

/// Upper bound on waiting for a client to notice a server went away or came back.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a test body under [`TEST_TIMEOUT`].
async fn bounded(body: impl Future<Output = Result<()>>) -> Result<()> {
    timeout(TEST_TIMEOUT, body).await.with_context(|| format!("test did not finish within {TEST_TIMEOUT:?}"))?
}

/// Waits until `client` reports `state`.
async fn wait_for_state(client: &Client, state: State) -> Result<()> {
    let deadline = Instant::now() + STATE_TIMEOUT;
    while client.connection_state() != state {
        if Instant::now() >= deadline {
            bail!("client stayed {:?}, expected {state:?}", client.connection_state());
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A file-backed stream `ORDERS` on `orders.>` with a durable pull consumer `worker`.
async fn orders_stream(jetstream: &jetstream::Context) -> Result<PullConsumer> {
    let stream = jetstream
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            storage: StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    Ok(consumer)
}

/// Publishes `order-<n>` for each `n` and waits for every JetStream ack.
async fn publish_orders(jetstream: &jetstream::Context, numbers: impl IntoIterator<Item = u64>) -> Result<()> {
    for number in numbers {
        let ack = jetstream.publish(format!("orders.{number}"), format!("order-{number}").into()).await?.await?;
        ensure!(ack.sequence == number, "order-{number} stored as {}", ack.sequence);
    }
    Ok(())
}

/// Pulls up to `count` messages from the durable consumer `worker`, acking each with the
/// server's confirmation, and returns their payloads.
async fn consume(jetstream: &jetstream::Context, count: usize) -> Result<Vec<String>> {
    let consumer: PullConsumer =
        jetstream.get_stream("ORDERS").await?.get_consumer("worker").await.map_err(anyhow::Error::from_boxed)?;
    let mut batch = consumer.batch().max_messages(count).expires(Duration::from_secs(1)).messages().await?;
    let mut payloads = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.map_err(anyhow::Error::from_boxed)?;
        payloads.push(String::from_utf8(message.payload.to_vec())?);
        message.double_ack().await.map_err(anyhow::Error::from_boxed)?;
    }
    Ok(payloads)
}

fn orders(numbers: impl IntoIterator<Item = u64>) -> Vec<String> {
    numbers.into_iter().map(|number| format!("order-{number}")).collect()
}

#[tokio::test]
async fn request_reply_round_trips() -> Result<()> {
    bounded(async {
        let server = NatsServer::start().await?;
        let client = server.connect().await?;
        let mut requests = client.subscribe("greet").await?;
        let responder = client.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let name = String::from_utf8_lossy(&request.payload).into_owned();
                if let Some(reply) = request.reply {
                    responder.publish(reply, format!("hello, {name}").into()).await.ok();
                }
            }
        });
        client.flush().await?;

        let reply = client.request("greet", "proxybus".into()).await?;

        assert_eq!(reply.payload, "hello, proxybus");
        assert_eq!(server.client_url(), format!("nats://127.0.0.1:{}", server.port()));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn jetstream_messages_and_acks_survive_a_graceful_restart() -> Result<()> {
    bounded(async {
        let mut server = NatsServer::start().await?;
        let port = server.port();
        let client = server.connect().await?;
        let jetstream = jetstream::new(client.clone());
        orders_stream(&jetstream).await?;
        publish_orders(&jetstream, 1..=5).await?;
        assert_eq!(consume(&jetstream, 2).await?, orders(1..=2));

        server.restart().await?;
        wait_for_state(&client, State::Connected).await?;

        assert_eq!(server.port(), port, "a restart keeps the client port");
        // Acked messages stay acked; the rest are still stored and delivered.
        assert_eq!(consume(&jetstream, 5).await?, orders(3..=5));
        publish_orders(&jetstream, [6]).await?;
        assert_eq!(consume(&jetstream, 5).await?, orders([6]));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn jetstream_messages_survive_kill_and_restart() -> Result<()> {
    bounded(async {
        let mut server = NatsServer::start().await?;
        let client = server.connect().await?;
        let jetstream = jetstream::new(client.clone());
        orders_stream(&jetstream).await?;
        publish_orders(&jetstream, 1..=5).await?;
        let pid = server.pid().context("server should be running")?;

        server.kill()?;
        assert_eq!(server.pid(), None);
        assert_eq!(process_state(pid), Err(Errno::ESRCH), "killed and reaped");
        wait_for_state(&client, State::Disconnected).await?;
        server.restart().await?;
        wait_for_state(&client, State::Connected).await?;

        assert!(server.store_dir().join("jetstream").is_dir());
        assert_eq!(consume(&jetstream, 10).await?, orders(1..=5));
        publish_orders(&jetstream, [6]).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn token_auth_rejects_clients_without_the_token() -> Result<()> {
    bounded(async {
        let server = NatsServer::builder().token("s3cret \"quoted\"").start().await?;

        let anonymous = ConnectOptions::new().connect(server.client_url()).await;
        let wrong = ConnectOptions::with_token("guess".into()).connect(server.client_url()).await;
        let client = server.connect().await?;

        assert_eq!(anonymous.err().map(|error| error.kind()), Some(ConnectErrorKind::AuthorizationViolation));
        assert_eq!(wrong.err().map(|error| error.kind()), Some(ConnectErrorKind::AuthorizationViolation));
        assert_round_trip(&client).await
    })
    .await
}

#[tokio::test]
async fn user_password_auth_rejects_a_wrong_password() -> Result<()> {
    bounded(async {
        let server = NatsServer::builder().user_password("feed", "hunter2").start().await?;

        let wrong =
            ConnectOptions::with_user_and_password("feed".into(), "hunter3".into()).connect(server.client_url()).await;
        let client = server.connect().await?;

        assert_eq!(wrong.err().map(|error| error.kind()), Some(ConnectErrorKind::AuthorizationViolation));
        assert_round_trip(&client).await
    })
    .await
}

/// A message published by `client` comes back to its own subscription.
async fn assert_round_trip(client: &Client) -> Result<()> {
    let mut subscription = client.subscribe("auth.check").await?;
    client.publish("auth.check", "in".into()).await?;
    let message = subscription.next().await.context("subscription closed")?;
    assert_eq!(message.payload, "in");
    Ok(())
}

#[tokio::test]
async fn extra_config_is_applied_and_jetstream_can_be_disabled() -> Result<()> {
    bounded(async {
        let server = NatsServer::builder().jetstream(false).extra_config("max_payload: 4096").start().await?;
        let client = server.connect().await?;

        assert_eq!(client.server_info().max_payload, 4096);
        let account = jetstream::new(client).query_account().await;
        assert!(account.is_err(), "JetStream answered: {account:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn dropping_a_server_kills_its_process_and_removes_its_directory() -> Result<()> {
    bounded(async {
        let server = NatsServer::start().await?;
        let pid = server.pid().context("server should be running")?;
        let log = server.log_path().to_path_buf();
        let store = server.store_dir().to_path_buf();
        assert_eq!(process_state(pid), Ok(()));
        assert!(log.is_file() && store.is_dir());

        drop(server);

        assert_eq!(process_state(pid), Err(Errno::ESRCH), "killed and reaped");
        assert!(!log.exists() && !store.exists());
        Ok(())
    })
    .await
}

/// `Ok` while process `pid` exists (even as a zombie), `ESRCH` once it has been reaped.
fn process_state(pid: u32) -> Result<(), Errno> {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    signal::kill(pid, None)
}

#[tokio::test]
async fn cluster_keeps_accepting_publishes_after_losing_a_node() -> Result<()> {
    bounded(async {
        let mut cluster = NatsCluster::start().await?;
        assert_eq!(cluster.nodes().len(), 3);
        let client = cluster.connect().await?;
        let jetstream = jetstream::new(client);
        let mut events = jetstream
            .create_stream(stream::Config {
                name: "EVENTS".into(),
                subjects: vec!["events.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await?;
        for number in 1..=3 {
            publish_event(&jetstream, number).await?;
        }
        let before = events.info().await?.cluster.clone().context("no cluster info")?;
        let old_leader = before.leader.context("the stream has no leader")?;
        assert_eq!(before.replicas.len(), 2, "R3: a leader and two replicas");

        // Losing the stream's leader is the hardest case: a new one has to be elected.
        let victim = cluster.node_index(&old_leader).with_context(|| format!("{old_leader} is not a cluster node"))?;
        cluster.kill_node(victim)?;
        for number in 4..=6 {
            publish_event(&jetstream, number).await?;
        }

        let info = events.info().await?.clone();
        assert_eq!(info.state.messages, 6);
        let new_leader = info.cluster.and_then(|cluster| cluster.leader);
        assert!(new_leader.is_some_and(|leader| leader != old_leader));

        cluster.restart_node(victim).await?;
        let restarted = cluster.nodes()[victim].server_name().to_owned();
        wait_until_replica_current(&mut events, &restarted).await?;
        Ok(())
    })
    .await
}

/// Publishes `event-<n>` with message id `<n>`, retrying while the stream elects a new leader;
/// the id makes a retry of a publish that did land a no-op.
async fn publish_event(jetstream: &jetstream::Context, number: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let publish = PublishMessage::build().payload(format!("event-{number}").into()).message_id(number.to_string());
        let attempt = async { jetstream.send_publish(format!("events.{number}"), publish).await?.await };
        match timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(ack)) => {
                ensure!(ack.sequence == number, "event-{number} stored as {}", ack.sequence);
                return Ok(());
            }
            Ok(Err(error)) if Instant::now() < deadline => {
                tracing::debug!(%error, number, "publish failed; retrying");
            }
            Err(_) if Instant::now() < deadline => {}
            Ok(Err(error)) => return Err(error.into()),
            Err(elapsed) => return Err(elapsed.into()),
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `replica` is a current member of the stream's group again.
async fn wait_until_replica_current(events: &mut stream::Stream, replica: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let cluster = events.info().await?.cluster.clone().context("no cluster info")?;
        let current = cluster.leader.as_deref() == Some(replica)
            || cluster.replicas.iter().any(|peer| peer.name == replica && peer.current && !peer.offline);
        if current {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{replica} did not catch up: {cluster:?}");
        }
        sleep(Duration::from_millis(100)).await;
    }
}
