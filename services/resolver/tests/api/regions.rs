//! Regions: the resolver names its region in every answer, answers its region's own subject
//! (`proxy.v1.request_region.{region}.…`), and answers `region: "any"` by scattering the request
//! over the regions it knows (or as its own region when it knows none).

use std::time::Duration;

use proxybus_shared::{Codec, ConnectionType, Encoding, ErrorReply, ProxyRequest, ProxyResponse, subject};

use crate::helpers::{Behaviour, FakeUpstream, TestApp, upstream_vars};

fn request(region: Option<&str>) -> bytes::Bytes {
    let mut request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "feed-regions");
    request.region = region.map(|r| r.parse().unwrap());
    Codec::default().encode(Encoding::MsgPack, &request).unwrap()
}

async fn spawn(upstream: &FakeUpstream, extra: &[(&str, &str)]) -> TestApp {
    let owned = upstream_vars(&[upstream]);
    let mut vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(extra);
    TestApp::spawn(&vars).await
}

#[tokio::test]
async fn a_resolver_names_its_region_and_answers_its_regions_subject() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    let app = spawn(&upstream, &[("PROXYBUS_RESOLVER_REGION", "eu-west")]).await;

    let answer = app.ask("binance", ConnectionType::Http, "feed-regions").await;
    assert_eq!(answer.resolver_region.as_ref().map(|r| r.as_str()), Some("eu-west"));
    assert_eq!(upstream.seen()[0].request.region.as_ref().map(|r| r.as_str()), Some("eu-west"), "null = own region");

    let eu_west =
        subject::regional_request(&"eu-west".parse().unwrap(), &"binance".parse().unwrap(), ConnectionType::Http);
    let reply = app.request(&eu_west, None, request(None)).await;
    let answer: ProxyResponse = Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap();
    assert_eq!(answer.resolver_region.as_ref().map(|r| r.as_str()), Some("eu-west"));
    // A body asking for another region than its subject's is refused.
    let reply = app.request(&eu_west, None, request(Some("us-east"))).await;
    let refusal: ErrorReply = Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap();
    assert_eq!(refusal.code, 400, "{refusal:?}");
    // Another region's subject is not this resolver's.
    let us_east =
        subject::regional_request(&"us-east".parse().unwrap(), &"binance".parse().unwrap(), ConnectionType::Http);
    let err = app.client.request(us_east, request(None)).await.unwrap_err();
    assert_eq!(err.kind(), async_nats::client::RequestErrorKind::NoResponders);
    // `$SRV.INFO` names the region and lists both endpoints.
    let info = app.client.request("$SRV.INFO.proxybus-resolver", "".into()).await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["metadata"]["region"], "eu-west", "{info}");
    // In no particular order: async-nats keeps the endpoints in a hash map.
    let mut subjects: Vec<&str> =
        info["endpoints"].as_array().unwrap().iter().filter_map(|e| e["subject"].as_str()).collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["proxy.v1.request.*.*", "proxy.v1.request_region.eu-west.*.*"], "{info}");
}

#[tokio::test]
async fn any_is_scattered_over_the_regions_and_a_dead_region_is_skipped() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    // eu-west has no resolver at all.
    let app = spawn(
        &upstream,
        &[
            ("PROXYBUS_RESOLVER_REGION", "us-east"),
            ("PROXYBUS_RESOLVER_REGIONS", r#"["us-east","eu-west"]"#),
            ("PROXYBUS_RESOLVER_ANY_REGION_DEADLINE_MS", "2000"),
        ],
    )
    .await;
    let started = tokio::time::Instant::now();
    let reply = app.request("proxy.v1.request.binance.http", None, request(Some("any"))).await;
    // The dead region answered "no responders" at once: the deadline was not waited out.
    assert!(started.elapsed() < Duration::from_millis(2000), "took {:?}", started.elapsed());
    let answer: ProxyResponse = Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap();
    assert!(answer.proxy_url.is_some(), "a proxy of the living region: {answer:?}");
    assert_eq!(answer.region.as_ref().map(|r| r.as_str()), Some("us-east"));
    let asked: Vec<_> = upstream.seen().iter().map(|seen| seen.request.region.clone().unwrap().to_string()).collect();
    assert_eq!(asked, ["us-east"], "the upstream is asked for the region, never for any");
    // Cached for the feed like any other answer.
    let reply = app.request("proxy.v1.request.binance.http", None, request(Some("any"))).await;
    let again: ProxyResponse = Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap();
    assert_eq!((again.source, again.proxy_url), (proxybus_shared::ResponseSource::Cache, answer.proxy_url));
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn any_without_regions_is_the_resolvers_own_region() {
    let upstream = FakeUpstream::start(Behaviour::default()).await;
    let app = spawn(&upstream, &[("PROXYBUS_RESOLVER_REGION", "ap-northeast")]).await;
    let reply = app.request("proxy.v1.request.binance.http", None, request(Some("any"))).await;
    let answer: ProxyResponse = Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap();
    assert!(answer.proxy_url.is_some(), "{answer:?}");
    assert_eq!(upstream.seen()[0].request.region.as_ref().map(|r| r.as_str()), Some("ap-northeast"));
}
