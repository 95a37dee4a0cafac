//! Push-back of health to proxy services, and folding that never waits for them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use proxybus_shared::config::AuthMethod;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{Codec, HealthState, HealthStats};
use proxybus_tests::NatsServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::helpers::{Running, config, event, eventually, jetstream, pid, publish_all, wait_for_total};

/// What a fake proxy service received: (authorization header, body).
type Received = Arc<Mutex<Vec<(String, Vec<HealthStats>)>>>;

/// A minimal HTTP/1.1 proxy service that answers every request with 200 and keeps
/// what `POST /api/v1/proxy/health` carried.
async fn fake_proxy_service(listener: TcpListener) -> Received {
    let received: Received = Arc::default();
    let keep = received.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut length, mut auth) = (0, String::new());
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).await.unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').unwrap();
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "authorization" => auth = value.trim().to_owned(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    assert!(request_line.starts_with("POST /api/v1/proxy/health "), "{request_line}");
                    let stats: Vec<HealthStats> = serde_json::from_slice(&body).unwrap();
                    keep.lock().unwrap().push((auth, stats));
                    reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
                }
            });
        }
    });
    received
}

fn with_service(server: &NatsServer, port: u16) -> proxybus_aggregator::AggregatorConfig {
    let mut settings = config(server);
    settings.proxy_services.endpoints = vec![format!("http://127.0.0.1:{port}")];
    settings.proxy_services.auth_method = AuthMethod::BearerToken;
    settings.proxy_services.auth_credentials.insert("token".into(), "push-t0ken".to_owned().into());
    settings
}

#[tokio::test]
async fn a_proxy_service_receives_health_batches_and_the_bus_gets_every_change() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = fake_proxy_service(listener).await;
    let watcher = server.connect().await.unwrap();
    let mut health = watcher.subscribe("proxy.v1.health.>").await.unwrap();
    watcher.flush().await.unwrap();
    let app = Running::start(with_service(&server, port));
    let events: Vec<_> = (0..40).map(|k| event(k % 4, "binance", true, None)).collect();
    publish_all(&js, &events, 40).await;
    eventually(Duration::from_secs(20), "all four proxies pushed", || async {
        let got = received.lock().unwrap();
        let mut ids: Vec<_> = got.iter().flat_map(|(_, batch)| batch.iter().map(|s| s.proxy_id)).collect();
        ids.sort();
        ids.dedup();
        ids.len() == 4
    })
    .await;
    wait_for_total(&js, HEALTH_BUCKET, 40, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "final totals pushed", || async {
        let got = received.lock().unwrap();
        (0..4).all(|n| {
            got.iter().rev().flat_map(|(_, b)| b.iter()).find(|s| s.proxy_id == pid(n)).is_some_and(|s| s.total == 10)
        })
    })
    .await;
    {
        let got = received.lock().unwrap();
        assert!(got.iter().all(|(auth, _)| auth == "Bearer push-t0ken"), "the resolver's auth is sent");
        let text = serde_json::to_string(&got.iter().map(|(_, b)| b).collect::<Vec<_>>()).unwrap();
        assert!(!text.contains("secret-pw"), "no credentials pushed");
        assert!(!text.contains("fold_state"), "the fold's own state stays in KV");
    }
    let message = tokio::time::timeout(Duration::from_secs(5), health.next()).await.unwrap().unwrap();
    assert!(
        message.subject.as_str() == "proxy.v1.health.us-east" || message.subject.as_str() == "proxy.v1.health.eu-west"
    );
    let stats: HealthStats = Codec::default().decode(message.headers.as_ref(), &message.payload).unwrap();
    assert_eq!(stats.state, HealthState::Healthy);
    assert!(app.stats.snapshot().pushes >= 1);
    app.stop().await;
}

#[tokio::test]
async fn with_the_proxy_service_down_folding_continues_and_the_backlog_arrives_later() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    // Reserve a port, then close it: nothing listens there for now.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let app = Running::start(with_service(&server, port));
    let events: Vec<_> = (0..300).map(|k| event(k % 6, "kraken", k % 3 != 0, None)).collect();
    publish_all(&js, &events, 100).await;
    wait_for_total(&js, HEALTH_BUCKET, 300, Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), "push failures counted", || async { app.stats.snapshot().push_failures >= 1 })
        .await;
    assert_eq!(app.stats.snapshot().events_folded, 300, "folding did not wait for the proxy service");

    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let received = fake_proxy_service(listener).await;
    eventually(Duration::from_secs(20), "the backlog delivered once the service is back", || async {
        let got = received.lock().unwrap();
        (0..6).all(|n| got.iter().flat_map(|(_, b)| b.iter()).any(|s| s.proxy_id == pid(n) && s.total == 50))
    })
    .await;
    app.stop().await;
}
