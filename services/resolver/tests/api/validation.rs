//! Bad input gets an error reply with the contract's headers and body, is
//! counted, and changes nothing: the resolver keeps serving.

use async_nats::HeaderMap;
use bytes::Bytes;
use proxybus_shared::ConnectionType::Http;
use proxybus_shared::{Codec, Encoding, ErrorCode, ProxyRequest, ResponseSource};

use crate::helpers::*;

fn json() -> HeaderMap {
    Encoding::Json.headers()
}

#[tokio::test]
async fn malformed_mismatched_and_oversized_requests_get_error_replies_and_serving_goes_on() {
    // NATS's own max_payload is 1 MiB; the resolver's limit (64 KiB) is what refuses ~900 KiB.
    let app =
        TestApp::spawn(&[("CRYPTOFEED_PROXY_ENABLED", "true"), ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "http://p:1")])
            .await;
    let valid =
        Codec::default().encode(Encoding::MsgPack, &ProxyRequest::new("binance".parse().unwrap(), Http, "f")).unwrap();
    let mut kraken_body = ProxyRequest::new("kraken".parse().unwrap(), Http, "f");
    kraken_body.request_id = Some("req-mismatch".into());
    let mismatched = Codec::default().encode(Encoding::MsgPack, &kraken_body).unwrap();
    let cases: Vec<(&str, &str, Option<HeaderMap>, Bytes, ErrorCode)> = vec![
        (
            "malformed msgpack",
            "proxy.v1.request.binance.http",
            None,
            Bytes::from_static(&[0x85, 0xa3, 0xc1, 0xff]),
            ErrorCode::BadRequest,
        ),
        (
            "json with wrong types",
            "proxy.v1.request.binance.http",
            Some(json()),
            Bytes::from_static(br#"{"exchange_id":42,"connection_type":"http","client_id":["f"]}"#),
            ErrorCode::BadRequest,
        ),
        ("subject/body mismatch", "proxy.v1.request.binance.http", None, mismatched, ErrorCode::BadRequest),
        ("unknown connection type", "proxy.v1.request.binance.ftp", None, valid.clone(), ErrorCode::BadRequest),
        ("uppercase exchange", "proxy.v1.request.BINANCE.http", None, valid.clone(), ErrorCode::BadRequest),
        (
            "empty client id",
            "proxy.v1.request.binance.http",
            Some(json()),
            Bytes::from_static(br#"{"exchange_id":"binance","connection_type":"http","client_id":""}"#),
            ErrorCode::BadRequest,
        ),
        (
            "900 KiB body",
            "proxy.v1.request.binance.http",
            None,
            Bytes::from(vec![0x90_u8; 900 * 1024]),
            ErrorCode::PayloadTooLarge,
        ),
    ];
    let count = cases.len();
    for (what, subject, headers, body, expected) in cases {
        let is_json = headers.is_some();
        let reply = app.request(subject, headers, body).await;
        let error = error_reply(&reply);
        assert_eq!(error.error, expected, "{what}: {error:?}");
        assert_eq!(error.code, expected.status(), "{what}");
        let content_type = reply.headers.as_ref().and_then(|h| h.get("Content-Type")).map(|v| v.to_string());
        let wanted = if is_json { "application/json" } else { "application/msgpack" };
        assert_eq!(content_type.as_deref(), Some(wanted), "{what}: reply in the request's encoding");
        if what == "subject/body mismatch" {
            assert_eq!(error.request_id.as_deref(), Some("req-mismatch"));
        }
        let answer = app.ask("binance", Http, "still-serving").await;
        assert_eq!(answer.proxy_url.as_deref(), Some("http://p:1"), "serving goes on after {what}");
    }
    let stats = app.stats().await;
    assert_eq!(stats["bad_requests"], count);
    assert_eq!(stats["requests_failed"], count);
}

#[tokio::test]
async fn a_json_request_gets_a_json_answer_with_its_request_id() {
    let app =
        TestApp::spawn(&[("CRYPTOFEED_PROXY_ENABLED", "true"), ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "http://p:1")])
            .await;
    let body =
        br#"{"exchange_id":"binance","connection_type":"http","client_id":"py-feed","request_id":"abc-123","extra":1}"#;
    let reply = app.request("proxy.v1.request.binance.http", Some(json()), Bytes::from_static(body)).await;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).expect("a JSON reply");
    assert_eq!(answer["request_id"], "abc-123");
    assert_eq!(answer["source"], "embedded");
    assert_eq!(answer["proxy_id"], proxybus_shared::proxy_id("http://p:1").as_str());
    let cached = app.ask("binance", Http, "py-feed").await;
    assert_eq!(cached.source, ResponseSource::Cache, "the same client, in msgpack, hits the cache");
    // The header's name spelled as HTTP clients do (nats-py sends the dict it is given).
    let mut lower = HeaderMap::new();
    lower.insert("content-type", "application/json");
    let reply = app.request("proxy.v1.request.binance.http", Some(lower), Bytes::from_static(body)).await;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).expect("a JSON reply to content-type");
    assert_eq!(answer["request_id"], "abc-123");
    assert_eq!(
        reply.headers.as_ref().and_then(|h| h.get("Content-Type")).map(|v| v.as_str()),
        Some("application/json")
    );
}
