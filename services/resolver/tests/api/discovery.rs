//! DNS SRV discovery against a real DNS server started by the test (a small UDP
//! responder built on hickory-proto): endpoints added to and removed from DNS
//! are picked up by the running resolver.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proxybus_resolver::SrvDiscovery;
use proxybus_shared::ConnectionType::Http;

use crate::helpers::*;

const SRV_NAME: &str = "_proxy-service._tcp.proxybus.test.";

/// A DNS server on 127.0.0.1 answering SRV queries for [`SRV_NAME`] with the
/// current list of `(port, weight)`; targets are `127.0.0.1.`.
struct FakeDns {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<(u16, u16)>>>,
}

impl FakeDns {
    async fn start(records: Vec<(u16, u16)>) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records = Arc::new(Mutex::new(records));
        let current = records.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buffer).await else { return };
                let Ok(query) = Message::from_vec(&buffer[..len]) else { continue };
                let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.authoritative = true;
                let wanted = Name::from_ascii(SRV_NAME).unwrap();
                for question in &query.queries {
                    reply.add_query(question.clone());
                    if question.name() == &wanted && question.query_type() == RecordType::SRV {
                        for (port, weight) in current.lock().unwrap().iter() {
                            let srv = SRV::new(0, *weight, *port, Name::from_ascii("127.0.0.1.").unwrap());
                            reply.add_answer(Record::from_rdata(wanted.clone(), 0, RData::SRV(srv)));
                        }
                    } else {
                        reply.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Self { addr, records }
    }

    fn set(&self, records: Vec<(u16, u16)>) {
        *self.records.lock().unwrap() = records;
    }
}

fn port(upstream: &FakeUpstream) -> u16 {
    upstream.url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn srv_lookup_orders_by_priority_then_weight() {
    let dns = FakeDns::start(vec![(1001, 10), (1002, 50)]).await;
    let discovery = SrvDiscovery::new(SRV_NAME, "http", &[dns.addr]).unwrap();
    assert_eq!(discovery.lookup().await.unwrap(), ["http://127.0.0.1:1002", "http://127.0.0.1:1001"]);
    dns.set(vec![(1003, 1)]);
    assert_eq!(discovery.lookup().await.unwrap(), ["http://127.0.0.1:1003"], "no stale cached answer");
}

#[tokio::test]
async fn endpoints_added_and_removed_in_dns_are_picked_up() {
    let a = FakeUpstream::start(Behaviour { proxies: vec!["http://from-a:1".into()], ..Default::default() }).await;
    let b = FakeUpstream::start(Behaviour { proxies: vec!["http://from-b:2".into()], ..Default::default() }).await;
    let dns = FakeDns::start(vec![(port(&a), 10)]).await;
    let dns_servers = format!(r#"["{}"]"#, dns.addr);
    let app = TestApp::spawn(&[
        ("CRYPTOFEED_PROXY_ENABLED", "true"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED", "true"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_METHOD", "none"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__SRV_NAME", SRV_NAME),
        ("PROXYBUS_RESOLVER_DNS_SERVERS", &dns_servers),
        ("PROXYBUS_RESOLVER_DISCOVERY_REFRESH_SECONDS", "1"),
        ("PROXYBUS_RESOLVER_FALLBACK_POLICY", "fail"),
    ])
    .await;
    assert_eq!(app.ask("binance", Http, "feed-0").await.proxy_url.as_deref(), Some("http://from-a:1"));

    dns.set(vec![(port(&b), 10)]);
    eventually("endpoint b replaces a", || async {
        app.ask("binance", Http, &uuid::Uuid::new_v4().to_string()).await.proxy_url.as_deref()
            == Some("http://from-b:2")
    })
    .await;
    let a_calls = a.calls();
    for i in 0..5 {
        assert_eq!(app.ask("binance", Http, &format!("after-{i}")).await.proxy_url.as_deref(), Some("http://from-b:2"));
    }
    assert_eq!(a.calls(), a_calls, "a, removed from DNS, is not asked any more");
}
