//! The `proxybus-aggregator` binary: configured from the environment, killed with
//! SIGKILL and started again, then `replay` from the command line.

use std::process::{Command, Stdio};
use std::time::Duration;

use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_tests::NatsServer;

use crate::helpers::{event, jetstream, publish_all, records, total, wait_for_total};

fn aggregator(server: &NatsServer, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_proxybus-aggregator"));
    command
        .args(args)
        .env_clear()
        .env("NATS_URL", server.client_url())
        .env("PROXYBUS_AGGREGATOR_METRICS_LISTEN", "")
        .env("PROXYBUS_AGGREGATOR_FETCH_WAIT_MS", "200")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

#[tokio::test]
async fn the_binary_survives_sigkill_and_replays_from_the_command_line() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let events: Vec<_> = (0..2000).map(|k| event(k % 8, "bybit", k % 5 != 0, None)).collect();
    let (first, second) = events.split_at(1000);

    let mut child = aggregator(&server, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    publish_all(&js, first, 250).await;
    crate::helpers::eventually(Duration::from_secs(20), "the binary folds", || async {
        total(&js, HEALTH_BUCKET).await > 0
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    publish_all(&js, second, 250).await;
    let mut child = aggregator(&server, &["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_total(&js, HEALTH_BUCKET, 2000, Duration::from_secs(30)).await;
    // SIGTERM: a graceful stop that exits 0.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");

    let output = tokio::task::spawn_blocking({
        let mut command = aggregator(&server, &["replay", "--into", "CLI_REPLAY"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("replayed 2000 events"), "{stdout}");
    assert_eq!(records(&js, "CLI_REPLAY").await, records(&js, HEALTH_BUCKET).await);

    let bad = aggregator(&server, &[]).env("PROXYBUS_AGGREGATOR_BATCH_SIZE", "0").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("batch_size"));
}

#[tokio::test]
async fn the_binary_refuses_an_old_server_and_exits() {
    let server = NatsServer::builder().binary(proxybus_tests::old_server_binary()).start().await.unwrap();
    let mut command = aggregator(&server, &[]);
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(std::mem::replace(&mut command, Command::new("true"))).output(),
    )
    .await
    .expect("the aggregator exits by itself")
    .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("proxybus needs nats-server 2.11.0 or newer"), "{message}");
    // Its log went to a pipe, not a terminal: the ERROR line comes without colour codes.
    assert!(message.contains("ERROR") && !message.contains('\u{1b}'), "{message:?}");
}
