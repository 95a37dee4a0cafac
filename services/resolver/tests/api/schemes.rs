//! `ProxyRequest.proxy_schemes` (issue #12 item 3): the resolver asks upstream
//! with the filter, keeps filtered answers under their own cache key, refuses an
//! upstream answer of another scheme and picks embedded proxies by it too.

use async_nats::HeaderMap;
use proxybus_shared::{Codec, ProxyResponse, ResponseSource};

use crate::helpers::*;

/// Asks as a Python feed would: JSON, with `proxy_schemes`.
async fn ask_json(app: &TestApp, client_id: &str, schemes: serde_json::Value) -> ProxyResponse {
    let body = serde_json::json!({
        "exchange_id": "binance",
        "connection_type": "http",
        "client_id": client_id,
        "proxy_schemes": schemes,
    });
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let reply = app.request("proxy.v1.request.binance.http", Some(headers), body.to_string().into()).await;
    assert!(reply.headers.as_ref().is_none_or(|h| h.get("Nats-Service-Error").is_none()), "{:?}", reply.headers);
    Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap()
}

#[tokio::test]
async fn an_answer_of_a_scheme_the_feed_cannot_use_is_never_served() {
    // An upstream that ignores proxy_schemes and only has SOCKS proxies.
    let upstream = FakeUpstream::start(Behaviour {
        proxies: vec!["socks5h://user:pw@10.0.0.1:1080".into()],
        ..Default::default()
    })
    .await;
    let mut vars = upstream_vars(&[&upstream]);
    vars.push(("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "https://emb:pw@10.9.9.9:8443".into()));
    let app = TestApp::spawn(&borrow(&vars)).await;

    let any = ask_json(&app, "feed-1", serde_json::Value::Null).await;
    assert_eq!(any.proxy_url.as_deref(), Some("socks5h://user:pw@10.0.0.1:1080"));
    assert_eq!(any.source, ResponseSource::Service);
    // The same feed, now limited to HTTP proxies: not the cached SOCKS answer.
    let http_only = ask_json(&app, "feed-1", serde_json::json!(["http", "https"])).await;
    assert_eq!(http_only.proxy_url.as_deref(), Some("https://emb:pw@10.9.9.9:8443"));
    assert_eq!(http_only.source, ResponseSource::Embedded, "upstream's socks5h answer does not count");
    let seen = upstream.seen();
    assert_eq!(seen.last().unwrap().request.proxy_schemes.len(), 2, "upstream is told the filter");
    // And the unfiltered answer is still cached for the unfiltered request.
    let again = ask_json(&app, "feed-1", serde_json::json!([])).await;
    assert_eq!((again.source, again.proxy_url), (ResponseSource::Cache, any.proxy_url));
    // Nothing embedded or upstream fits socks4: a direct connection (the default policy).
    let none = ask_json(&app, "feed-2", serde_json::json!(["socks4"])).await;
    assert_eq!((none.source, none.proxy_url), (ResponseSource::Direct, None));
}
