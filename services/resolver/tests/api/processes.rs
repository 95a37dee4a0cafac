//! Real `proxybus-resolver` processes: two share the queue group, and killing
//! one (SIGKILL) loses at most the request it had in flight; SIGTERM drains and
//! exits 0.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proxybus_shared::ConnectionType::Http;
use proxybus_shared::{Codec, Encoding, ProxyRequest, ProxyResponse};
use proxybus_tests::NatsServer;

use crate::helpers::*;

struct Resolver(Child);

impl Resolver {
    fn spawn(nats: &NatsServer) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_proxybus-resolver"))
            .env_clear()
            .env("NATS_URL", nats.client_url())
            .env("CRYPTOFEED_PROXY_ENABLED", "true")
            .env("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "http://u:pw@embedded:3128")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("the resolver binary starts");
        Self(child)
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(i32::try_from(self.0.id()).unwrap()), signal).unwrap();
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "the resolver did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn ask(client: &async_nats::Client, i: usize) -> bool {
    let request = ProxyRequest::new("binance".parse().unwrap(), Http, format!("feed-{i}"));
    let body = Codec::default().encode(Encoding::MsgPack, &request).unwrap();
    match tokio::time::timeout(Duration::from_secs(2), client.request("proxy.v1.request.binance.http", body)).await {
        Ok(Ok(reply)) => Codec::default()
            .decode::<ProxyResponse>(reply.headers.as_ref(), &reply.payload)
            .is_ok_and(|answer| answer.proxy_url.as_deref() == Some("http://u:pw@embedded:3128")),
        _ => false,
    }
}

#[tokio::test]
async fn two_processes_share_the_load_and_killing_one_loses_at_most_its_request_in_flight() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.connect().await.unwrap();
    let first = Resolver::spawn(&nats);
    let mut second = Resolver::spawn(&nats);
    wait_for_instances(&client, 2).await;

    let mut lost = 0;
    for i in 0..40 {
        assert!(ask(&client, i).await, "request {i} before the kill");
    }
    second.signal(Signal::SIGKILL);
    for i in 40..140 {
        if !ask(&client, i).await {
            lost += 1;
        }
    }
    assert!(lost <= 1, "{lost} requests lost after killing one of two resolvers");
    drop(first);
    let status = second.wait().await;
    assert!(!status.success(), "killed, not exited");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_while_the_other_keeps_serving() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.connect().await.unwrap();
    let _first = Resolver::spawn(&nats);
    let mut second = Resolver::spawn(&nats);
    wait_for_instances(&client, 2).await;
    second.signal(Signal::SIGTERM);
    let mut lost = 0;
    for i in 0..60 {
        if !ask(&client, i).await {
            lost += 1;
        }
    }
    assert!(lost <= 1, "{lost} requests lost during a graceful stop");
    assert!(second.wait().await.success(), "exit status 0 after SIGTERM");
    for i in 60..70 {
        assert!(ask(&client, i).await, "the remaining resolver serves request {i}");
    }
}

#[tokio::test]
async fn the_binary_refuses_an_old_server_and_exits() {
    let nats = NatsServer::builder().binary(proxybus_tests::old_server_binary()).start().await.unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus-resolver"))
        .env_clear()
        .env("NATS_URL", nats.client_url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(WAIT, output).await.expect("the resolver exits by itself").unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("proxybus needs nats-server 2.11.0 or newer"), "{message}");
}

#[tokio::test]
async fn the_binary_still_reads_the_files_named_by_the_deprecated_variables() {
    let dir = tempfile::tempdir().unwrap();
    let proxy_file = dir.path().join("proxy.toml");
    std::fs::write(&proxy_file, "[external_service]\ntimeout_seconds = 0\n").unwrap();
    let resolver_file = dir.path().join("resolver.toml");
    std::fs::write(&resolver_file, "hedge_delay_ms = 0\n").unwrap();
    // Both files are invalid: the exit status and the keys named show that each was read.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxybus-resolver"))
        .env_clear()
        .env("PROXYBUS_CONFIG", &proxy_file)
        .env("PROXYBUS_CONFIG_RESOLVER", &resolver_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(WAIT, output).await.expect("the resolver exits by itself").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("external_service.timeout_seconds"), "{stderr}");
    assert!(stderr.contains("hedge_delay_ms"), "{stderr}");
    assert!(stderr.contains("PROXYBUS_CONFIG is deprecated; set PROXYBUS_PROXY_CONFIG instead"), "{stderr}");
    assert!(
        stderr.contains("PROXYBUS_CONFIG_RESOLVER is deprecated; set PROXYBUS_RESOLVER_CONFIG instead"),
        "{stderr}"
    );
}
