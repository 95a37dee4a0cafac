//! The client library against real components: a real nats-server (with a
//! resolver stand-in answering the contract's subject), real JetStream, a real
//! HTTP CONNECT proxy and SOCKS5 proxy, and a real websocket server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::{SinkExt, StreamExt};
use proxybus_client::{ClientConfig, ClientError, ProxyClient, ProxyLease};
use proxybus_shared::config::{self, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::{
    Codec, ConnectionType, Encoding, ErrorCode, ErrorKind, ErrorReply, ExchangeId, FallbackPolicy, FeedbackPhase,
    ProxyFeedback, ProxyRequest, ProxyResponse, ProxyUrl, ResponseSource, proxy_id, subject,
};
use proxybus_tests::{NatsServer, ProxyCredentials, TestProxy, WsEchoServer};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn lease() -> ProxyLease {
    let proxy = ProxyUrl::parse("http://u:pw@10.0.0.5:3128").unwrap();
    ProxyLease {
        proxy_id: Some(proxy.id()),
        proxy: Some(proxy),
        exchange: binance(),
        connection_type: ConnectionType::Http,
        region: None,
        strategy: "round_robin".into(),
        source: ResponseSource::Service,
        fallback_policy: FallbackPolicy::DirectConnection,
        ttl: Duration::from_secs(60),
        request_id: None,
        resolver_region: None,
        session_key: None,
    }
}

fn binance() -> ExchangeId {
    "binance".parse().unwrap()
}

fn config(server: &NatsServer) -> ClientConfig {
    let mut config = ClientConfig::new(NatsSettings::new(server.client_url()), "feed-test-1");
    config.request_timeout = Duration::from_millis(500);
    config.connect_timeout = Duration::from_secs(5);
    config
}

/// Answers `proxy.v1.request.*.*` with `proxy_url` (or an error reply when it is
/// `Err`), counting the requests it saw.
async fn spawn_resolver(nats: async_nats::Client, answer: Result<Option<String>, ErrorCode>) -> Arc<AtomicUsize> {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut sub = nats.subscribe(subject::REQUEST_WILDCARD).await.unwrap();
        nats.flush().await.unwrap();
        let _ = ready_tx.send(());
        let codec = Codec::default();
        while let Some(msg) = sub.next().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let request: ProxyRequest = codec.decode(msg.headers.as_ref(), &msg.payload).unwrap();
            let reply_to = msg.reply.unwrap();
            match &answer {
                Ok(url) => {
                    let response = ProxyResponse {
                        schema_version: 1,
                        proxy_id: url.as_deref().map(proxy_id),
                        proxy_url: url.clone(),
                        strategy: "p2c_ewma".into(),
                        ttl_seconds: 300,
                        fallback_policy: FallbackPolicy::DirectConnection,
                        source: ResponseSource::Service,
                        region: Some("eu-west".parse().unwrap()),
                        request_id: request.request_id.unwrap_or_default(),
                        metadata: Default::default(),
                        resolver_region: None,
                    };
                    let body = codec.encode(Encoding::MsgPack, &response).unwrap();
                    nats.publish_with_headers(reply_to, Encoding::MsgPack.headers(), body).await.unwrap();
                }
                Err(code) => {
                    let reply = ErrorReply::new(*code, "nothing for you", request.request_id);
                    let mut headers = Encoding::MsgPack.headers();
                    headers.insert("Nats-Service-Error", reply.message.as_str());
                    headers.insert("Nats-Service-Error-Code", reply.code.to_string().as_str());
                    let body = codec.encode(Encoding::MsgPack, &reply).unwrap();
                    nats.publish_with_headers(reply_to, headers, body).await.unwrap();
                }
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx).await.unwrap().unwrap();
    seen
}

async fn feedback_stream(nats: &async_nats::Client) -> stream::Stream {
    jetstream::new(nats.clone())
        .get_or_create_stream(stream::Config {
            name: subject::FEEDBACK_STREAM.into(),
            subjects: vec![subject::FEEDBACK_WILDCARD.into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Every event in the stream, in order, with its `Nats-Msg-Id`.
async fn stored_events(stream: &stream::Stream) -> Vec<(String, ProxyFeedback)> {
    let mut stream = stream.clone();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut events = Vec::new();
    for seq in 1..=last {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let id = msg.headers.get("Nats-Msg-Id").unwrap().to_string();
        events.push((id, Codec::default().decode(Some(&msg.headers), &msg.payload).unwrap()));
    }
    events
}

async fn wait_for_events(stream: &stream::Stream, n: u64) -> Vec<(String, ProxyFeedback)> {
    let mut stream = stream.clone();
    tokio::time::timeout(WAIT, async {
        while stream.info().await.unwrap().state.messages < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} events arrived"));
    stored_events(&stream).await
}

#[tokio::test]
async fn a_lease_comes_from_the_resolver_once_then_from_the_cache() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let seen = spawn_resolver(nats.clone(), Ok(Some("socks5://alice:pw@10.0.0.7:1080".into()))).await;
    let client = ProxyClient::with_nats(config(&server), nats);

    let first = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert_eq!(first.source, ResponseSource::Service);
    assert_eq!(first.proxy.as_ref().unwrap().expose(), "socks5://alice:pw@10.0.0.7:1080");
    assert_eq!(first.proxy_id, Some(proxy_id("socks5://alice:pw@10.0.0.7:1080")));
    assert_eq!(first.ttl, Duration::from_secs(300));
    let second = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert_eq!(second.source, ResponseSource::Cache);
    assert_eq!(second.proxy_id, first.proxy_id);
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the second answer came from the local cache");
    client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2, "another connection type is another key");
}

#[tokio::test]
async fn resolver_error_replies_reach_the_caller() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    spawn_resolver(nats.clone(), Err(ErrorCode::NoProxyAvailable)).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    let err = client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap_err();
    assert!(matches!(err, ClientError::Resolver(ref reply) if reply.error == ErrorCode::NoProxyAvailable), "{err:?}");
    assert_eq!(client.breaker().consecutive_failures(), 0, "an answer from the resolver is not a bus failure");
}

#[tokio::test]
async fn without_a_resolver_the_embedded_settings_then_direct_then_fail_take_over() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let embedded: ProxySettings = config::from_toml_str(
        r#"
        enabled = true
        [exchanges.binance.websocket]
        url = "http://10.1.1.1:3128"
        "#,
    )
    .unwrap();
    let mut cfg = config(&server);
    cfg.embedded = embedded;
    let client = ProxyClient::with_nats(cfg.clone(), nats.clone());

    let lease = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert_eq!(lease.source, ResponseSource::Embedded);
    assert_eq!(lease.proxy.unwrap().expose(), "http://10.1.1.1:3128");
    let direct = client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
    assert_eq!((direct.source, direct.is_direct()), (ResponseSource::Direct, true));

    cfg.fallback_policy = FallbackPolicy::Fail;
    let strict = ProxyClient::with_nats(cfg, nats);
    let err = strict.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn the_breaker_stops_asking_a_silent_bus() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let client = ProxyClient::with_nats(config(&server), nats.clone());
    for _ in 0..3 {
        client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
    }
    assert_eq!(client.breaker().state(), proxybus_shared::breaker::BreakerState::Open);
    // A resolver appears, but the open breaker does not ask it until it recovers.
    let seen = spawn_resolver(nats, Ok(Some("http://10.0.0.1:1".into()))).await;
    let lease = client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
    assert_eq!(lease.source, ResponseSource::Direct);
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

/// With no resolver anywhere, the server answers "no responders" at once: the client takes its
/// fallback without waiting out its (here two-minute) request timeout.
#[tokio::test]
async fn no_responders_moves_to_the_fallback_without_waiting_for_the_timeout() {
    let server = NatsServer::start().await.unwrap();
    let mut cfg = config(&server);
    cfg.request_timeout = Duration::from_secs(120);
    let client = ProxyClient::with_nats(cfg, server.connect().await.unwrap());
    let started = std::time::Instant::now();
    let lease =
        tokio::time::timeout(WAIT, client.get_proxy(&binance(), ConnectionType::Http, None)).await.unwrap().unwrap();
    assert_eq!(lease.source, ResponseSource::Direct);
    println!("fallback after no responders took {:?} (request timeout 120 s)", started.elapsed());
}

#[tokio::test]
async fn a_feed_starts_while_nats_is_down_and_falls_back() {
    let mut server = NatsServer::start().await.unwrap();
    let cfg = config(&server);
    server.kill().unwrap();
    let client = tokio::time::timeout(WAIT, ProxyClient::connect(cfg)).await.unwrap().unwrap();
    let lease =
        tokio::time::timeout(WAIT, client.get_proxy(&binance(), ConnectionType::Http, None)).await.unwrap().unwrap();
    assert_eq!(lease.source, ResponseSource::Direct);
}

#[tokio::test]
async fn reported_feedback_lands_in_the_stream_with_its_event_id() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    spawn_resolver(nats.clone(), Ok(Some("http://u:secret@10.0.0.9:3128".into()))).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    let lease = client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
    for i in 0..20 {
        let event = lease.feedback(client.client_id(), FeedbackPhase::Request, i % 2 == 0).unwrap();
        client.report(event);
    }
    assert!(client.flush_feedback(WAIT).await);
    let events = wait_for_events(&stream, 20).await;
    assert_eq!(events.len(), 20);
    for (msg_id, event) in &events {
        assert_eq!(msg_id, &event.event_id.to_string());
        assert_eq!(event.proxy_url, "http://u:***@10.0.0.9:3128", "never a password in feedback");
        assert_eq!(event.client_id, "feed-test-1");
    }
    assert_eq!(client.feedback_stats().published, 20);
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_them() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let mut cfg = config(&server);
    cfg.feedback_queue_capacity = 10;
    let client = ProxyClient::with_nats(cfg, nats.clone());
    let lease = lease();
    // No stream yet: every publish fails and is retried, so the queue fills up.
    let events: Vec<ProxyFeedback> =
        (0..25).map(|_| lease.feedback(client.client_id(), FeedbackPhase::Connected, true).unwrap()).collect();
    for event in &events {
        client.report(event.clone());
    }
    let stats = client.feedback_stats();
    assert_eq!(stats.dropped, 15, "{stats:?}");
    assert_eq!(stats.pending, 10);
    let stream = feedback_stream(&nats).await;
    let stored = wait_for_events(&stream, 10).await;
    let stored_ids: Vec<_> = stored.iter().map(|(_, e)| e.event_id).collect();
    let newest: Vec<_> = events[15..].iter().map(|e| e.event_id).collect();
    assert_eq!(stored_ids, newest, "the newest ten survive, in order");
}

#[tokio::test]
async fn feedback_survives_a_nats_restart_exactly_once() {
    proxybus_shared::telemetry::init_for_tests();
    let mut server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    let client = ProxyClient::with_nats(config(&server), nats.clone());
    let lease = lease();
    for _ in 0..50 {
        client.report(lease.feedback(client.client_id(), FeedbackPhase::Request, true).unwrap());
    }
    assert!(client.flush_feedback(WAIT).await);
    server.kill().unwrap();
    for _ in 0..50 {
        client.report(lease.feedback(client.client_id(), FeedbackPhase::Request, false).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client.feedback_stats().pending > 0, "nothing can be acked while the server is down");
    server.restart().await.unwrap();
    assert!(client.flush_feedback(Duration::from_secs(20)).await, "{:?}", client.feedback_stats());
    let events = wait_for_events(&stream, 100).await;
    let mut ids: Vec<_> = events.iter().map(|(_, e)| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "every event once");
    assert_eq!(events.len(), 100, "and nothing twice");
}

async fn ws_echo_through(client: &ProxyClient, ws: &WsEchoServer) -> proxybus_client::ProxiedWebSocket {
    let mut socket = client.connect_websocket(&ws.url(), &binance()).await.unwrap();
    socket.stream.send(Message::text("ping")).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, socket.stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "ping");
    socket
}

#[tokio::test]
async fn websocket_through_an_http_connect_proxy_with_auth_reports_connected() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    let proxy = TestProxy::http_connect(Some(ProxyCredentials::new("feed", "p@ss:word"))).await.unwrap();
    let ws = WsEchoServer::start().await.unwrap();
    let url = format!("http://feed:p%40ss%3Aword@{}", proxy.addr());
    spawn_resolver(nats.clone(), Ok(Some(url))).await;
    let client = ProxyClient::with_nats(config(&server), nats);

    let socket = ws_echo_through(&client, &ws).await;
    assert_eq!(proxy.log().tunnels(), [ws.addr().to_string()], "the connection went through the proxy");
    client.report_disconnected(&socket.lease);
    assert!(client.flush_feedback(WAIT).await);
    let phases: Vec<_> = wait_for_events(&stream, 3).await.into_iter().map(|(_, e)| (e.phase, e.success)).collect();
    assert_eq!(
        phases,
        [(FeedbackPhase::ConnectStart, true), (FeedbackPhase::Connected, true), (FeedbackPhase::Disconnected, true)]
    );
}

#[tokio::test]
async fn websocket_through_a_socks5_proxy_with_auth() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    let proxy = TestProxy::socks5(Some(ProxyCredentials::new("user-session-1", "pw"))).await.unwrap();
    let ws = WsEchoServer::start().await.unwrap();
    spawn_resolver(nats.clone(), Ok(Some(proxy.url()))).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    ws_echo_through(&client, &ws).await;
    assert_eq!(proxy.log().tunnels(), [ws.addr().to_string()]);
    let events = wait_for_events(&stream, 2).await;
    let connected = &events[1].1;
    assert_eq!(connected.phase, FeedbackPhase::Connected);
    assert!(connected.latency_ms.is_some());
}

#[tokio::test]
async fn websocket_through_a_socks4_proxy_with_a_user_id() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    let proxy = TestProxy::socks4(Some(ProxyCredentials::new("feed-user", ""))).await.unwrap();
    let ws = WsEchoServer::start().await.unwrap();
    spawn_resolver(nats.clone(), Ok(Some(format!("socks4://feed-user@{}", proxy.addr())))).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    ws_echo_through(&client, &ws).await;
    assert_eq!(proxy.log().tunnels(), [ws.addr().to_string()]);
    assert_eq!(wait_for_events(&stream, 2).await[1].1.phase, FeedbackPhase::Connected);
}

#[tokio::test]
async fn a_socks4_proxy_refusing_the_user_id_is_reported() {
    let ws = WsEchoServer::start().await.unwrap();
    let proxy = TestProxy::socks4(Some(ProxyCredentials::new("feed-user", ""))).await.unwrap();
    let (event, _) = failed_event_for(format!("socks4://intruder@{}", proxy.addr()), ws.url()).await;
    assert_eq!((event.phase, event.success), (FeedbackPhase::Failed, false));
    assert_eq!(event.error_kind, Some(ErrorKind::Refused), "SOCKS4 says only \"rejected or failed\": {event:?}");
    assert!(proxy.log().tunnels().is_empty());
}

async fn failed_event_for(proxy_url: String, ws_url: String) -> (ProxyFeedback, ClientError) {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    spawn_resolver(nats.clone(), Ok(Some(proxy_url))).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    let err = client.connect_websocket(&ws_url, &binance()).await.unwrap_err();
    let events = wait_for_events(&stream, 2).await;
    assert_eq!(events[0].1.phase, FeedbackPhase::ConnectStart);
    (events[1].1.clone(), err)
}

#[tokio::test]
async fn refused_credentials_are_reported_as_proxy_auth() {
    let ws = WsEchoServer::start().await.unwrap();
    let http = TestProxy::http_connect(Some(ProxyCredentials::new("feed", "right"))).await.unwrap();
    let (event, err) = failed_event_for(http.url_with("feed", "wrong-secret"), ws.url()).await;
    assert_eq!(
        (event.phase, event.success, event.error_kind),
        (FeedbackPhase::Failed, false, Some(ErrorKind::ProxyAuth))
    );
    assert_eq!(event.status_code, Some(407));
    assert!(!format!("{err} {event:?}").contains("wrong-secret"), "credentials leaked: {err} {event:?}");
    assert_eq!(http.log().tunnels().len(), 0);

    let socks = TestProxy::socks5(Some(ProxyCredentials::new("feed", "right"))).await.unwrap();
    let (event, _) = failed_event_for(socks.url_with("feed", "wrong-secret"), ws.url()).await;
    assert_eq!(event.error_kind, Some(ErrorKind::ProxyAuth));
}

#[tokio::test]
async fn handshake_statuses_become_error_kinds_with_retry_after() {
    let proxy = TestProxy::http_connect(None).await.unwrap();
    let restricted = WsEchoServer::refusing(451, None).await.unwrap();
    let (event, _) = failed_event_for(proxy.url(), restricted.url()).await;
    assert_eq!((event.error_kind, event.status_code), (Some(ErrorKind::Http451), Some(451)));
    assert_eq!(proxy.log().tunnels(), [restricted.addr().to_string()], "the handshake went through the proxy");

    let limited = WsEchoServer::refusing(429, Some(30)).await.unwrap();
    let (event, _) = failed_event_for(proxy.url(), limited.url()).await;
    assert_eq!((event.error_kind, event.retry_after_seconds), (Some(ErrorKind::Http429), Some(30)));

    // Another refusal of the upgrade is the exchange's verdict, not the proxy's fault.
    let refused = WsEchoServer::refusing(400, None).await.unwrap();
    let (event, _) = failed_event_for(proxy.url(), refused.url()).await;
    assert_eq!((event.error_kind, event.status_code), (Some(ErrorKind::WsHandshakeRefused), Some(400)));
}

#[tokio::test]
async fn a_closed_websocket_is_reported_with_its_close_code() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    let proxy = TestProxy::http_connect(None).await.unwrap();
    let ws = WsEchoServer::start().await.unwrap();
    spawn_resolver(nats.clone(), Ok(Some(proxy.url()))).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    let socket = ws_echo_through(&client, &ws).await;
    client.report_closed(&socket.lease, Some(1008));
    client.report_closed(&socket.lease, None);
    client.report_closed(&socket.lease, Some(1000));
    assert!(client.flush_feedback(WAIT).await);
    let closes: Vec<_> = wait_for_events(&stream, 5)
        .await
        .into_iter()
        .skip(2)
        .map(|(_, e)| (e.phase, e.success, e.error_kind, e.ws_close_code))
        .collect();
    assert_eq!(
        closes,
        [
            (FeedbackPhase::Disconnected, false, Some(ErrorKind::WsClosed), Some(1008)),
            (FeedbackPhase::Disconnected, false, Some(ErrorKind::WsClosed), Some(1006)),
            (FeedbackPhase::Disconnected, true, None, None),
        ]
    );
}

#[tokio::test]
async fn a_dead_proxy_is_reported_as_refused() {
    let ws = WsEchoServer::start().await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (event, err) = failed_event_for(format!("http://{closed}"), ws.url()).await;
    assert_eq!(event.error_kind, Some(ErrorKind::Refused), "{err}");
}

#[tokio::test]
async fn http_client_goes_through_the_proxy_and_reports_429_with_retry_after() {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/api/v3/depth",
        axum::routing::get(|| async {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", "17".parse().unwrap());
            (StatusCode::TOO_MANY_REQUESTS, headers, "slow down")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exchange_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let stream = feedback_stream(&nats).await;
    let proxy = TestProxy::http_connect(None).await.unwrap();
    spawn_resolver(nats.clone(), Ok(Some(proxy.url()))).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    let (http, lease) = client.http_client(&binance()).await.unwrap();
    let started = std::time::Instant::now();
    let response = http.get(format!("http://{exchange_addr}/api/v3/depth")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    client.report_response(&lease, response.status().as_u16(), response.headers(), started.elapsed());
    assert_eq!(proxy.log().tunnels(), [exchange_addr.to_string()], "the request went through the proxy");
    let events = wait_for_events(&stream, 1).await;
    let event = &events[0].1;
    assert_eq!((event.phase, event.success), (FeedbackPhase::Request, false));
    assert_eq!(
        (event.status_code, event.error_kind, event.retry_after_seconds),
        (Some(429), Some(ErrorKind::Http429), Some(17))
    );
}

/// Answers `proxy.v1.request.*.*` with the proxy URL configured for the
/// request's `client_id`, as a resolver with one pool per feed would; records
/// the `proxy_schemes` each request named.
async fn spawn_resolver_per_client(
    nats: async_nats::Client,
    urls: std::collections::HashMap<String, String>,
) -> Arc<std::sync::Mutex<Vec<Vec<proxybus_shared::ProxyScheme>>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let mut sub = nats.subscribe(subject::REQUEST_WILDCARD).await.unwrap();
    nats.flush().await.unwrap();
    tokio::spawn(async move {
        let codec = Codec::default();
        while let Some(msg) = sub.next().await {
            let request: ProxyRequest = codec.decode(msg.headers.as_ref(), &msg.payload).unwrap();
            record.lock().unwrap().push(request.proxy_schemes.clone());
            let url = urls[&request.client_id].clone();
            let response = ProxyResponse {
                schema_version: 1,
                proxy_id: Some(proxy_id(&url)),
                proxy_url: Some(url),
                strategy: "round_robin".into(),
                ttl_seconds: 300,
                fallback_policy: FallbackPolicy::DirectConnection,
                source: ResponseSource::Service,
                region: None,
                request_id: request.request_id.unwrap_or_default(),
                metadata: Default::default(),
                resolver_region: None,
            };
            let body = codec.encode(Encoding::MsgPack, &response).unwrap();
            nats.publish_with_headers(msg.reply.unwrap(), Encoding::MsgPack.headers(), body).await.unwrap();
        }
    });
    seen
}

/// An exchange's REST endpoint on 127.0.0.1: `GET /ping` answers `pong`.
async fn rest_exchange() -> std::net::SocketAddr {
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A password with every character a URL reserves, written percent-encoded in the URL.
const HARD_PASSWORD: &str = "p@ss:w/rd#1?%x";

#[tokio::test]
async fn every_scheme_carries_websockets_and_rest_with_authentication_and_its_own_name_resolution() {
    // Issue #12 item 2: http, https (own CA), socks4/4a (user id), socks5/5h (user and password),
    // against real proxies on loopback. Targets are named `localhost`: the schemes that let the
    // proxy resolve (http, https, socks4a, socks5h) show the name in the proxy's log, the others
    // (socks4, socks5) the address this side resolved.
    use proxybus_shared::ProxyScheme::{self, *};
    let ws = WsEchoServer::start().await.unwrap();
    let rest = rest_exchange().await;
    let http = TestProxy::http_connect(Some(ProxyCredentials::new("feed", HARD_PASSWORD))).await.unwrap();
    let https = TestProxy::https_connect(Some(ProxyCredentials::new("feed", HARD_PASSWORD))).await.unwrap();
    let socks4 = TestProxy::socks4(Some(ProxyCredentials::new("feed-user", ""))).await.unwrap();
    let socks4_open = TestProxy::socks4(None).await.unwrap();
    let socks5 = TestProxy::socks5(Some(ProxyCredentials::new("feed", HARD_PASSWORD))).await.unwrap();
    let cases: [(ProxyScheme, &TestProxy, &TestProxy, bool); 6] = [
        (Http, &http, &http, true),
        (Https, &https, &https, true),
        (Socks4, &socks4, &socks4_open, false),
        (Socks4a, &socks4, &socks4_open, true),
        (Socks5, &socks5, &socks5, false),
        (Socks5h, &socks5, &socks5, true),
    ];
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let mut urls = std::collections::HashMap::new();
    for (scheme, ws_proxy, rest_proxy, _) in &cases {
        urls.insert(format!("ws-{scheme}"), ws_proxy.url_as(scheme.as_str()));
        urls.insert(format!("rest-{scheme}"), rest_proxy.url_as(scheme.as_str()));
        urls.insert(format!("rest-userid-{scheme}"), ws_proxy.url_as(scheme.as_str()));
    }
    assert!(urls["ws-http"].contains("p%40ss%3Aw%2Frd%231%3F%25x"), "{}", urls["ws-http"]);
    let seen = spawn_resolver_per_client(nats.clone(), urls).await;
    let ca = proxybus_client::read_pem_certificates_from(https.ca_pem().unwrap().as_bytes()).unwrap();

    for (scheme, ws_proxy, rest_proxy, proxy_resolves) in cases {
        let expect = |port: u16| if proxy_resolves { format!("localhost:{port}") } else { format!("127.0.0.1:{port}") };
        let mut config = config(&server);
        config.proxy_ca = ca.clone();
        config.client_id = format!("ws-{scheme}");
        let client = ProxyClient::with_nats(config.clone(), nats.clone());
        let mut socket = client
            .connect_websocket(&format!("ws://localhost:{}/ws", ws.addr().port()), &binance())
            .await
            .unwrap_or_else(|err| panic!("websocket through {scheme}: {err}"));
        socket.stream.send(Message::text(format!("via {scheme}"))).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, socket.stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("via {scheme}"));
        assert_eq!(ws_proxy.log().tunnels().last(), Some(&expect(ws.addr().port())), "websocket via {scheme}");

        config.client_id = format!("rest-{scheme}");
        let client = ProxyClient::with_nats(config.clone(), nats.clone());
        let (http_client, lease) = client.http_client(&binance()).await.unwrap();
        assert_eq!(lease.proxy.as_ref().unwrap().scheme(), scheme);
        let body = http_client
            .get(format!("http://localhost:{}/ping", rest.port()))
            .send()
            .await
            .unwrap_or_else(|err| panic!("REST through {scheme}: {err:?}"))
            .text()
            .await
            .unwrap();
        assert_eq!(body, "pong", "REST via {scheme}");
        assert_eq!(rest_proxy.log().tunnels().last(), Some(&expect(rest.port())), "REST via {scheme}");

        // The same REST call over the client's own tunnel, credentials (a SOCKS4 user id too) included.
        config.client_id = format!("ws-{scheme}");
        let client = ProxyClient::with_nats(config.clone(), nats.clone());
        let request = http::Request::get(format!("http://localhost:{}/ping?depth=5", rest.port()))
            .body(bytes::Bytes::new())
            .unwrap();
        let (response, _) =
            client.send_http(&binance(), request).await.unwrap_or_else(|err| panic!("send_http via {scheme}: {err}"));
        assert_eq!(
            (response.status().as_u16(), response.body().as_ref()),
            (200, &b"pong"[..]),
            "send_http via {scheme}"
        );
        assert_eq!(ws_proxy.log().tunnels().last(), Some(&expect(rest.port())), "send_http via {scheme}");

        if matches!(scheme, Socks4 | Socks4a) {
            config.client_id = format!("rest-userid-{scheme}");
            let client = ProxyClient::with_nats(config.clone(), nats.clone());
            let err = client.http_client(&binance()).await.unwrap_err();
            assert!(err.to_string().contains("SOCKS4 user id"), "{err}");
        }
    }
    assert!(seen.lock().unwrap().iter().all(Vec::is_empty), "this library uses every scheme: no filter");
}

#[tokio::test]
async fn an_https_proxy_is_trusted_only_through_the_configured_ca() {
    let https = TestProxy::https_connect(None).await.unwrap();
    let ws = WsEchoServer::start().await.unwrap();
    let (event, err) = failed_event_for(https.url(), ws.url()).await;
    assert_eq!(event.error_kind, Some(ErrorKind::Tls), "{err}");
    assert!(https.log().tunnels().is_empty());
}

#[tokio::test]
async fn a_feed_limited_to_some_schemes_says_so_and_its_embedded_fallback_honours_it() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let mut config = config(&server);
    config.proxy_schemes = vec![proxybus_shared::ProxyScheme::Http, proxybus_shared::ProxyScheme::Https];
    config.embedded = config::from_toml_str(
        r#"
        enabled = true
        [default.http.pool]
        proxies = [{ url = "socks5h://u:pw@10.0.0.1:1080" }, { url = "https://u:pw@10.0.0.2:8443" }]
        "#,
    )
    .unwrap();
    // No resolver on the bus: the embedded settings answer, HTTPS only.
    let client = ProxyClient::with_nats(config.clone(), nats.clone());
    for _ in 0..3 {
        let lease = client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
        assert_eq!(lease.source, ResponseSource::Embedded);
        assert_eq!(lease.proxy.unwrap().expose(), "https://u:pw@10.0.0.2:8443");
        client.invalidate(&client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap()).await;
    }
    let mut urls = std::collections::HashMap::new();
    urls.insert(config.client_id.clone(), "http://u:pw@10.0.0.3:3128".to_owned());
    let seen = spawn_resolver_per_client(nats.clone(), urls).await;
    let client = ProxyClient::with_nats(config, nats);
    client.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [vec![proxybus_shared::ProxyScheme::Http, proxybus_shared::ProxyScheme::Https]]
    );
}

/// The exchange's own trouble (a 503 to the handshake) keeps the leased proxy; a
/// verdict on its IP (451) drops it from the cache (docs/health.md).
#[tokio::test]
async fn only_a_failure_about_the_proxy_drops_its_lease() {
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    let proxy = TestProxy::http_connect(None).await.unwrap();
    let seen = spawn_resolver(nats.clone(), Ok(Some(proxy.url()))).await;
    // One attempt each: a retry through another proxy would ask the resolver too.
    let client = ProxyClient::with_nats(ClientConfig { verdict_retries: 0, ..config(&server) }, nats);
    let maintenance = WsEchoServer::refusing(503, None).await.unwrap();
    client.connect_websocket(&maintenance.url(), &binance()).await.unwrap_err();
    let lease = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert_eq!((lease.source, seen.load(Ordering::SeqCst)), (ResponseSource::Cache, 1), "kept after a 503");
    let restricted = WsEchoServer::refusing(451, None).await.unwrap();
    client.connect_websocket(&restricted.url(), &binance()).await.unwrap_err();
    client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2, "asked again after a 451");
}

#[tokio::test]
async fn a_malformed_proxy_url_from_the_resolver_is_never_used() {
    // Issue #12 (a) as an answer: a raw '/' in the password would make `alice` the host.
    let server = NatsServer::start().await.unwrap();
    let nats = server.connect().await.unwrap();
    spawn_resolver(nats.clone(), Ok(Some("http://alice:12/34xyz@203.0.113.10:3128".into()))).await;
    let client = ProxyClient::with_nats(config(&server), nats);
    let lease = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert!(lease.proxy.is_none(), "no proxy on host alice: {lease:?}");
    assert_eq!(lease.source, ResponseSource::Direct, "the fallback, as when the resolver gives nothing usable");
    assert!(!format!("{lease:?}").contains("34xyz"));
}
