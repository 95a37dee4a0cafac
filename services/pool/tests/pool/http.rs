//! The HTTP API through real sockets on 127.0.0.1.

use proxybus_pool::ApiError;
use proxybus_shared::{ProxyResponse, proxy_id};
use serde_json::{Value, json};

use crate::helpers::*;

fn secrets() -> Vec<String> {
    (1..=4).map(|n| format!("secret-pw-{n}")).collect()
}

fn assert_no_secret(text: &str) {
    for secret in secrets() {
        assert!(!text.contains(&secret), "a proxy password leaked: {text}");
    }
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_the_same_401() {
    let app = spawn_app(&one_region("round_robin", &[1, 2]), |_| {}).await;
    let url = format!("{}/api/v1/proxy/request", app.base);
    let body = serde_json::to_value(request("binance", "c")).unwrap();
    let anonymous = reqwest::Client::new();
    let cases = [
        anonymous.post(&url).json(&body),
        anonymous.post(&url).bearer_auth("wrong-token-0123456789").json(&body),
        anonymous.post(&url).header("authorization", format!("Basic {TOKEN}")).json(&body),
        anonymous.post(&url).header("x-api-key", "test-token-012345678").json(&body),
    ];
    let mut bodies = Vec::new();
    for case in cases {
        let response = case.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let error: ApiError = response.json().await.unwrap();
        assert_eq!((error.code, error.error.as_str()), (401, "unauthorized"));
        bodies.push(error.message);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "the reply never says which part was wrong: {bodies:?}");
    for path in ["/api/v1/proxies", "/api/v1/proxy/feedback", "/api/v1/proxy/health"] {
        let response = if path == "/api/v1/proxies" {
            anonymous.get(format!("{}{path}", app.base)).send().await.unwrap()
        } else {
            anonymous.post(format!("{}{path}", app.base)).json(&json!([])).send().await.unwrap()
        };
        assert_eq!(response.status(), 401, "{path}");
    }
    let with_key = anonymous.post(&url).header("x-api-key", TOKEN).json(&body).send().await.unwrap();
    assert_eq!(with_key.status(), 200, "X-API-Key is accepted");
    let healthz = anonymous.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "liveness needs no credentials");
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let app = spawn_app(&one_region("round_robin", &[1]), |s| s.settings.max_body_bytes = 2048).await;
    let mut body = serde_json::to_value(request("binance", "c")).unwrap();
    body["metadata"] = json!({ "padding": "x".repeat(4096) });
    let response = app.post("/api/v1/proxy/request", &body).await;
    assert_eq!(response.status(), 413);
    let error: ApiError = response.json().await.unwrap();
    assert_eq!((error.code, error.error.as_str()), (413, "payload_too_large"));
    // Without a Content-Length (a chunked body), the limit holds too.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let chunk = format!("[{}]", " ".repeat(4096));
    let raw = format!(
        "POST /api/v1/proxy/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    body["metadata"] = json!({});
    assert_eq!(app.post("/api/v1/proxy/request", &body).await.status(), 200, "a small body passes");
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_gets_400_with_a_message() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    let send = |body: &'static str| {
        app.client
            .post(format!("{}/api/v1/proxy/request", app.base))
            .header("content-type", "application/json")
            .header("x-request-id", "req-42")
            .body(body)
            .send()
    };
    let cases = [
        ("{not json", "key must be a string"),
        (r#"{"exchange_id":"binance","connection_type":"websocket"}"#, "client_id"),
        (r#"{"exchange_id":"binance","connection_type":"ftp","client_id":"c"}"#, "ftp"),
        (r#"{"exchange_id":"Bin.ance","connection_type":"http","client_id":"c"}"#, "exchange_id"),
    ];
    for (body, mentions) in cases {
        let response = send(body).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: ApiError = response.json().await.unwrap();
        assert_eq!((error.code, error.error.as_str()), (400, "bad_request"));
        assert!(error.message.contains(mentions), "{body}: {:?} should mention {mentions:?}", error.message);
        assert_eq!(error.request_id.as_deref(), Some("req-42"));
    }
    let feedback = app.post("/api/v1/proxy/feedback", &json!({ "proxy_id": "not-hex" })).await;
    assert_eq!(feedback.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn request_feedback_health_and_inventory_round_trip_without_leaking_credentials() {
    let app = spawn_app(&one_region("round_robin", &[1, 2]), |_| {}).await;
    let response = app
        .client
        .post(format!("{}/api/v1/proxy/request", app.base))
        .header("x-request-id", "abc-123")
        .json(&request("binance", "feed-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let answer: ProxyResponse = response.json().await.unwrap();
    assert_eq!(answer.request_id, "abc-123", "the header's id is echoed");
    let url = answer.proxy_url.clone().unwrap();
    assert_eq!(answer.proxy_id, Some(proxy_id(&url)), "proxy_id is derived from the full URL");
    assert!(url.contains("secret-pw-"), "the answer carries the credentials the feed needs");

    // Five failed connections through proxy 1 eject it.
    for _ in 0..5 {
        let event = feedback(1, "feed-1", "binance", "failed", false, json!({ "error_kind": "timeout" }));
        let response = app.post("/api/v1/proxy/feedback", &event).await;
        assert_eq!(response.status(), 202);
        assert_eq!(response.json::<Value>().await.unwrap()["known_proxy"], true);
    }
    // The aggregator pushes proxy 2 as degraded, which keeps it selectable.
    let pushed = app.post("/api/v1/proxy/health", &json!([stats(2, proxybus_shared::HealthState::Degraded)])).await;
    assert_eq!(pushed.status(), 202);
    assert_eq!(pushed.json::<Value>().await.unwrap()["applied"], 1);
    for i in 0..20 {
        assert_eq!(app.ask("binance", &format!("c{i}")).await.proxy_id, Some(id(2)));
    }

    let listing = app.client.get(format!("{}/api/v1/proxies", app.base)).send().await.unwrap();
    assert_eq!(listing.status(), 200);
    let text = listing.text().await.unwrap();
    assert_no_secret(&text);
    let proxies: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(proxies.len(), 2);
    let first = proxies.iter().find(|p| p["proxy_id"] == id(1).to_string()).unwrap();
    assert_eq!(first["proxy_url"], "http://user1:***@203.0.113.1:3128");
    assert_eq!(first["state"], "ejected");
    assert_eq!(first["local"]["ejected"], true);
    let second = proxies.iter().find(|p| p["proxy_id"] == id(2).to_string()).unwrap();
    assert_eq!(second["state"], "degraded");
    assert_eq!(second["health"]["state"], "degraded");
    assert!(second["active_leases"].as_u64().unwrap() >= 20);
    let other_region = app.client.get(format!("{}/api/v1/proxies?region=eu-west", app.base)).send().await.unwrap();
    assert_eq!(other_region.json::<Vec<Value>>().await.unwrap().len(), 0);
    let bad_region = app.client.get(format!("{}/api/v1/proxies?region=Bad.Region", app.base)).send().await.unwrap();
    assert_eq!(bad_region.status(), 400);

    let metrics = reqwest::get(format!("{}/metrics", app.base)).await.unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert_no_secret(&metrics);
    for name in ["proxybus_pool_selections_total", "proxybus_pool_feedback_total", "proxybus_pool_proxies"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(metrics.contains(&format!("proxy_id=\"{}\"", id(2))), "leases are labelled by proxy_id");
    app.stop().await;
}

#[tokio::test]
async fn no_proxy_available_is_a_404_with_the_request_id() {
    let toml = format!(
        "default_region = \"us-east\"\n[regions.us-east]\nwhen_all_ejected = \"fail\"\n{}",
        proxies("us-east", &[1])
    );
    let app = spawn_app(&toml, |_| {}).await;
    app.post("/api/v1/proxy/health", &json!([stats(1, proxybus_shared::HealthState::Ejected)])).await;
    let mut asked = request("binance", "c");
    asked.request_id = Some("rid-7".into());
    let response = app.post("/api/v1/proxy/request", &serde_json::to_value(asked).unwrap()).await;
    assert_eq!(response.status(), 404);
    let error: ApiError = response.json().await.unwrap();
    assert_eq!((error.error.as_str(), error.request_id.as_deref()), ("no_proxy_available", Some("rid-7")));
    app.stop().await;
}

#[tokio::test]
async fn clients_outside_the_allowlist_get_403_but_liveness_answers() {
    let app =
        spawn_app(&one_region("round_robin", &[1]), |s| s.settings.auth.allowlist = vec!["10.0.0.0/8".into()]).await;
    let response = app.post("/api/v1/proxy/request", &serde_json::to_value(request("binance", "c")).unwrap()).await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.json::<ApiError>().await.unwrap().error, "forbidden");
    assert_eq!(reqwest::get(format!("{}/metrics", app.base)).await.unwrap().status(), 403);
    assert_eq!(reqwest::get(format!("{}/healthz", app.base)).await.unwrap().status(), 200);
    app.stop().await;

    let app =
        spawn_app(&one_region("round_robin", &[1]), |s| s.settings.auth.allowlist = vec!["127.0.0.1".into()]).await;
    assert_eq!(app.ask("binance", "c").await.proxy_id, Some(id(1)));
    app.stop().await;
}

#[tokio::test]
async fn settings_without_any_credentials_are_refused() {
    let mut config = test_config();
    config.settings.auth.tokens.clear();
    let selector = std::sync::Arc::new(selector(&one_region("round_robin", &[1])));
    let err = proxybus_pool::PoolServer::bind_with_selector(config, selector).await.unwrap_err();
    assert!(err.to_string().contains("auth.tokens"), "{err}");
}

#[tokio::test]
async fn proxy_schemes_of_a_request_limit_the_answer_to_those_schemes() {
    // Issue #12 item 3: an aiohttp feed (no SOCKS for REST) names the schemes it can use.
    let toml = "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"round_robin\"\nsticky = false\n\
        [[regions.us-east.proxies]]\nurl = \"socks5h://user1:secret-pw-1@203.0.113.1:1080\"\n\
        [[regions.us-east.proxies]]\nurl = \"https://user2:secret-pw-2@203.0.113.2:8443\"\n\
        [[regions.us-east.proxies]]\nurl = \"socks4a://user3@203.0.113.3:1080\"\n";
    let app = spawn_app(toml, |_| {}).await;
    let ask = async |schemes: Value| {
        let mut body = serde_json::to_value(request("binance", "aiohttp-feed")).unwrap();
        body["proxy_schemes"] = schemes;
        app.post("/api/v1/proxy/request", &body).await
    };
    for _ in 0..6 {
        let answer: ProxyResponse = ask(json!(["http", "https"])).await.json().await.unwrap();
        assert_eq!(answer.proxy_url.as_deref(), Some("https://user2:secret-pw-2@203.0.113.2:8443"));
    }
    let socks: ProxyResponse = ask(json!(["socks4a"])).await.json().await.unwrap();
    assert_eq!(socks.proxy_url.as_deref(), Some("socks4a://user3@203.0.113.3:1080"));
    let mut seen = std::collections::HashSet::new();
    for schemes in [Value::Null, json!([])] {
        for _ in 0..3 {
            let answer: ProxyResponse = ask(schemes.clone()).await.json().await.unwrap();
            seen.insert(answer.proxy_url.unwrap());
        }
    }
    assert_eq!(seen.len(), 3, "absent, null or empty accepts every scheme");
    assert_eq!(ask(json!(["socks5"])).await.status(), 404, "no socks5 proxy (only socks5h) in the pool");
    assert_eq!(ask(json!(["gopher"])).await.status(), 400, "an unknown scheme is a bad request");
    app.stop().await;
}
