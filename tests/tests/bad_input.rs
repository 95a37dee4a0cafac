//! Malformed input against the live services (issue #17, part 4): the real resolver
//! (NATS requests on `proxy.v1.request.*.*`), the real aggregator (messages published
//! into `PROXY_FEEDBACK`, read back from `proxy.v1.feedback_dead.>`) and the real pool
//! (HTTP `POST` on its API), all in this process on one nats-server.
//!
//! For every input the test asserts the reply (an error code, a dead-letter reason,
//! an HTTP 4xx) and that nothing changed: `PROXY_HEALTH` is as before, the pool's
//! proxies are as before, the aggregator folded nothing, and the resolver still
//! answers a good request after each bad one. It prints the table of input, part and
//! reply as Markdown rows (docs/reliability.md, "Malformed input against the live
//! services").

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use proxybus_aggregator::AggregatorStats;
use proxybus_shared::http::paths;
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::{self, HEALTH_BUCKET};
use proxybus_shared::{
    Codec, ConnectionType, Encoding, FeedbackPhase, ProxyFeedback, ProxyRequest, ProxyResponse, ResponseSource,
};
use proxybus_tests::{NatsServer, TestInventory, documentation_proxy};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "bad-input-token-1234";
const EMBEDDED: &str = "socks5://feed:pw@embedded.example:1080";

/// The three services on one nats-server.
struct Bench {
    _server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    pool: String,
    http: reqwest::Client,
    aggregator: Arc<AggregatorStats>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
    rows: Vec<[String; 3]>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn bench() -> Bench {
    proxybus_shared::telemetry::init_for_tests();
    let server = NatsServer::start().await.unwrap();
    let stop = CancellationToken::new();

    let env = [
        ("NATS_URL", server.client_url()),
        ("CRYPTOFEED_PROXY_ENABLED", "true".into()),
        ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", EMBEDDED.into()),
        ("PROXYBUS_RESOLVER_HEALTH_PROBE_INTERVAL_SECONDS", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = proxybus_resolver::ResolverConfig::load(None, None, &env).unwrap();
    tokio::spawn(proxybus_resolver::run(config, stop.clone().cancelled_owned()));

    let mut aggregator = proxybus_aggregator::AggregatorConfig::for_url(server.client_url());
    aggregator.settings.fetch_wait_ms = 100;
    let stats = Arc::new(AggregatorStats::default());
    tokio::spawn(proxybus_aggregator::run_with_stats(aggregator, stats.clone(), stop.clone().cancelled_owned()));

    let dir = tempfile::tempdir().unwrap();
    let inventory = TestInventory::documentation(2).write(dir.path().join("inventory.toml"));
    let settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory,
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec![TOKEN.into()], ..Default::default() },
        ..Default::default()
    };
    let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig {
        settings,
        nats: Some(NatsSettings::new(server.client_url())),
    })
    .await
    .unwrap();
    let pool_url = format!("http://{}", pool.local_addr());
    tokio::spawn(pool.serve(stop.clone().cancelled_owned()));

    let client = server.connect().await.unwrap();
    let js = jetstream::new(client.clone());
    tokio::time::timeout(WAIT, async {
        while js.get_stream(subject::FEEDBACK_STREAM).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while client.request("$SRV.PING.proxybus-resolver", Bytes::new()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the aggregator made PROXY_FEEDBACK and the resolver answers");
    proxybus_shared::http::install_crypto_provider();
    Bench {
        _server: server,
        client,
        js,
        pool: pool_url,
        http: reqwest::Client::new(),
        aggregator: stats,
        stop,
        _dir: dir,
        rows: Vec::new(),
    }
}

fn request_body(client_id: &str) -> Value {
    json!({"exchange_id": "binance", "connection_type": "http", "client_id": client_id})
}

fn feedback() -> ProxyFeedback {
    ProxyFeedback {
        latency_ms: Some(40),
        ..ProxyFeedback::new(
            &documentation_proxy(1),
            "binance".parse().unwrap(),
            ConnectionType::Http,
            FeedbackPhase::Request,
            true,
            "feed-1",
        )
    }
}

fn feedback_json() -> Value {
    serde_json::to_value(feedback()).unwrap()
}

fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers
}

/// `depth` nested JSON arrays.
fn deep_json(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A MessagePack map `{"exchange_id":…, …, "metadata": {"x": [[[…]]]}}` nested `depth` deep.
fn deep_msgpack(depth: usize) -> Vec<u8> {
    let mut body = msgpack(&request_body("feed-deep"));
    // Replace the map header (fixmap of 3) with a fixmap of 4 and append "metadata".
    assert_eq!(body[0], 0x83);
    body[0] = 0x84;
    body.extend(rmp_serde::to_vec(&"metadata").unwrap());
    body.extend([0x81]);
    body.extend(rmp_serde::to_vec(&"x").unwrap());
    body.extend(std::iter::repeat_n(0x91, depth));
    body.push(0xc0);
    body
}

/// Ids that are not plain text: emoji, right-to-left override, NUL, combining marks, a newline.
const ODD_IDS: [(&str, &str); 5] = [
    ("emoji", "feed-🚀🔥"),
    ("RTL override", "feed-\u{202e}1-deef"),
    ("NUL", "feed-\u{0}-1"),
    ("combining marks", "feed-e\u{301}\u{301}\u{301}\u{301}"),
    ("newline", "feed-1\nforged log line"),
];

impl Bench {
    fn row(&mut self, input: &str, part: &str, reply: String) {
        println!("{input} | {part} | {reply}");
        self.rows.push([input.to_owned(), part.to_owned(), reply]);
    }

    /// A good request answered from the embedded settings.
    async fn resolver_still_answers(&self) {
        let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "feed-good");
        let body = Codec::default().encode(Encoding::MsgPack, &request).unwrap();
        let reply = tokio::time::timeout(WAIT, self.client.request("proxy.v1.request.binance.http", body))
            .await
            .expect("the resolver answers in time")
            .expect("a reply");
        let answer: ProxyResponse = Codec::default().decode(reply.headers.as_ref(), &reply.payload).unwrap();
        assert!(matches!(answer.source, ResponseSource::Embedded | ResponseSource::Cache), "{answer:?}");
        assert_eq!(answer.proxy_url.as_deref(), Some(EMBEDDED));
    }

    /// Sends a bad request to the resolver; the reply must be an error reply.
    async fn resolver(&mut self, input: &str, subject: &str, headers: Option<HeaderMap>, body: Vec<u8>) {
        self.resolver_expecting(input, subject, headers, body, true).await;
    }

    /// Sends a request to the resolver; the reply must be an error reply when `refused`,
    /// else an answer.
    async fn resolver_expecting(
        &mut self,
        input: &str,
        subject: &str,
        headers: Option<HeaderMap>,
        body: Vec<u8>,
        refused: bool,
    ) {
        let call = async {
            match headers {
                Some(headers) => self.client.request_with_headers(subject.to_owned(), headers, body.into()).await,
                None => self.client.request(subject.to_owned(), body.into()).await,
            }
        };
        let reply = match tokio::time::timeout(WAIT, call).await.expect("no hang: a reply or an error in time") {
            Ok(reply) if !refused => {
                let answer: ProxyResponse = Codec::default()
                    .decode(reply.headers.as_ref(), &reply.payload)
                    .unwrap_or_else(|err| panic!("{input}: not an answer: {err}"));
                assert_eq!(answer.proxy_url.as_deref(), Some(EMBEDDED), "{input}");
                format!("answered (`{}`): the id is opaque text", answer.source.as_str())
            }
            Ok(reply) => {
                let headers = reply.headers.as_ref().expect("an error reply has headers");
                let code = headers.get(subject::SERVICE_ERROR_CODE_HEADER).map(|v| v.to_string());
                let body: Value = Codec::default().decode(Some(headers), &reply.payload).expect("an ErrorReply");
                let code = code.unwrap_or_else(|| panic!("{input}: not an error reply: {body}"));
                assert!(code.starts_with('4'), "{input}: {code} {body}");
                format!(
                    "`{code} {}`: {}",
                    body["error"].as_str().unwrap_or_default(),
                    short(body["message"].as_str().unwrap_or_default())
                )
            }
            Err(err) => match err.kind() {
                async_nats::client::RequestErrorKind::NoResponders => {
                    "no responders (no subscription matches the subject)".into()
                }
                kind => format!("refused by the NATS client: {kind:?}"),
            },
        };
        self.resolver_still_answers().await;
        self.row(input, "resolver", reply);
    }

    /// Publishes a bad feedback message into `PROXY_FEEDBACK` and waits for its dead letter.
    async fn aggregator(&mut self, input: &str, subject: &str, headers: Option<HeaderMap>, body: Vec<u8>) {
        let mut dead = self.client.subscribe(subject::FEEDBACK_DEAD_WILDCARD).await.unwrap();
        self.client.flush().await.unwrap();
        let dead_before = self.aggregator.snapshot().dead_lettered;
        let mut headers = headers.unwrap_or_default();
        headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        let stored = match self.js.publish_with_headers(subject.to_owned(), headers, body.into()).await {
            Ok(ack) => tokio::time::timeout(WAIT, ack).await.expect("an ack in time").map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        let reply = match stored {
            Err(err) => format!("not stored: {}", short(&err)),
            Ok(ack) => {
                let letter = tokio::time::timeout(WAIT, dead.next())
                    .await
                    .unwrap_or_else(|_| panic!("{input}: no dead letter (folded or lost?)"))
                    .unwrap();
                let headers = letter.headers.expect("dead letters have headers");
                assert_eq!(
                    headers.get(subject::DEAD_SEQ_HEADER).map(|v| v.to_string()),
                    Some(ack.sequence.to_string())
                );
                let reason = headers.get(subject::DEAD_REASON_HEADER).map(|v| v.to_string()).unwrap_or_default();
                assert!(!reason.is_empty(), "{input}: a reason");
                tokio::time::timeout(WAIT, async {
                    while self.aggregator.snapshot().dead_lettered == dead_before {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .expect("the dead letter is counted");
                assert_eq!(self.aggregator.snapshot().dead_lettered, dead_before + 1);
                format!("dead letter on `{}`: {}", letter.subject, short(&reason))
            }
        };
        self.row(input, "aggregator", reply);
    }

    /// Publishes a JSON feedback message that is folded although odd; records `why`.
    async fn aggregator_folds(&mut self, input: &str, body: Vec<u8>, why: &str) {
        let folded = self.aggregator.snapshot().events_folded;
        let subject = "proxy.v1.feedback.binance.http";
        self.js.publish_with_headers(subject, json_headers(), body.into()).await.unwrap().await.unwrap();
        tokio::time::timeout(WAIT, async {
            while self.aggregator.snapshot().events_folded == folded {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{input}: not folded"));
        self.row(input, "aggregator", why.to_owned());
    }

    /// Posts a bad body to the pool; the answer must be a 4xx JSON error.
    async fn pool(&mut self, input: &str, path: &str, content_type: &str, body: Vec<u8>) {
        let answer = self
            .http
            .post(format!("{}{path}", self.pool))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
            .timeout(WAIT)
            .send()
            .await
            .expect("the pool answers in time");
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        assert!(status.is_client_error(), "{input} on {path}: {status} {text}");
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.row(
            input,
            &format!("pool `{path}`"),
            format!(
                "`{} {}`: {}",
                status.as_u16(),
                error["error"].as_str().unwrap_or_default(),
                short(error["message"].as_str().unwrap_or(&text))
            ),
        );
    }

    async fn pool_proxies(&self) -> Value {
        let answer = self.http.get(format!("{}{}", self.pool, paths::PROXIES)).bearer_auth(TOKEN).send().await.unwrap();
        let mut proxies: Value = answer.json().await.unwrap();
        // Leases of the good requests come and go; the rest must not move.
        strip(&mut proxies, &["leases", "active_leases", "in_flight"]);
        proxies
    }

    async fn health(&self) -> String {
        let Ok(bucket) = self.js.get_key_value(HEALTH_BUCKET).await else { return String::new() };
        format!("{:?}", proxybus_shared::kv::health_stats(&bucket).await.unwrap())
    }
}

fn strip(value: &mut Value, keys: &[&str]) {
    match value {
        Value::Object(map) => {
            for key in keys {
                map.remove(*key);
            }
            map.values_mut().for_each(|v| strip(v, keys));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip(v, keys)),
        _ => {}
    }
}

fn short(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut shown: String = one_line.chars().take(110).collect();
    if one_line.chars().count() > 110 {
        shown.push('…');
    }
    shown.replace('|', "\\|")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_by_every_live_service_and_changes_nothing() {
    let mut bench = bench().await;
    const REQ: &str = "proxy.v1.request.binance.http";
    const FB: &str = "proxy.v1.feedback.binance.http";
    const MIB: usize = 1024 * 1024;

    // A first good feedback event, folded, so PROXY_HEALTH has a record to keep.
    let good = Codec::default().encode(Encoding::MsgPack, &feedback()).unwrap();
    bench.js.publish(FB, good).await.unwrap().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while bench.aggregator.snapshot().events_folded < 1 || bench.health().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the good event is folded");
    bench.resolver_still_answers().await;
    // Feeds' clocks: the fold never reads them (it folds by the stream's time), so an
    // event dated 1970 or 9999 is folded like any other.
    for (what, at) in [("1970", "1970-01-01T00:00:00Z"), ("9999", "9999-12-31T23:59:59Z")] {
        let mut dated = feedback_json();
        dated["timestamp"] = json!(at);
        let body = serde_json::to_vec(&dated).unwrap();
        let why = "folded at the stream's time (the fold never reads a feed's clock)";
        bench.aggregator_folds(&format!("`timestamp` in {what} (`{at}`)"), body, why).await;
    }
    // An unknown field is ignored (forward compatibility); serde_json skips it without
    // recursing, so even 10 000 levels cost nothing.
    let deep = serde_json::to_string(&feedback_json()).unwrap().replacen(
        '{',
        &format!(r#"{{"extra":{},"#, deep_json(10_000)),
        1,
    );
    bench
        .aggregator_folds(
            "JSON nested 10 000 levels (in an unknown field)",
            deep.into_bytes(),
            "folded: unknown fields are skipped (iteratively) by the JSON decoder",
        )
        .await;
    // The pool follows what the aggregator published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let folded_before = bench.aggregator.snapshot().events_folded;
    let health_before = bench.health().await;
    let proxies_before = bench.pool_proxies().await;

    // ---- the resolver ----
    let valid = msgpack(&request_body("feed-1"));
    bench.resolver("truncated MessagePack", REQ, None, valid[..valid.len() / 2].to_vec()).await;
    let valid_json = serde_json::to_vec(&request_body("feed-1")).unwrap();
    bench.resolver("truncated JSON", REQ, Some(json_headers()), valid_json[..valid_json.len() - 5].to_vec()).await;
    let wrong = json!({"exchange_id": 42, "connection_type": ["http"], "client_id": {"a": 1}});
    bench
        .resolver(
            "wrong types (number, array, object for strings)",
            REQ,
            Some(json_headers()),
            serde_json::to_vec(&wrong).unwrap(),
        )
        .await;
    let mut huge = request_body(&"x".repeat(MIB - 512));
    bench
        .resolver(
            "1 MiB `client_id` (just under NATS max_payload)",
            REQ,
            Some(json_headers()),
            serde_json::to_vec(&huge).unwrap(),
        )
        .await;
    huge["client_id"] = json!("x".repeat(60 * 1024));
    bench
        .resolver(
            "60 KiB `client_id` (under the resolver's 64 KiB limit)",
            REQ,
            Some(json_headers()),
            serde_json::to_vec(&huge).unwrap(),
        )
        .await;
    let deep = format!(
        r#"{{"exchange_id":"binance","connection_type":"http","client_id":"f","metadata":{{"x":{}}}}}"#,
        deep_json(10_000)
    );
    bench.resolver("JSON nested 10 000 levels (in `metadata`)", REQ, Some(json_headers()), deep.into_bytes()).await;
    bench.resolver("MessagePack nested 10 000 levels (in `metadata`)", REQ, None, deep_msgpack(10_000)).await;
    for (what, id) in ODD_IDS {
        let body = serde_json::to_vec(&request_body(id)).unwrap();
        let refused = id.chars().any(char::is_control);
        bench.resolver_expecting(&format!("{what} in `client_id`"), REQ, Some(json_headers()), body, refused).await;
    }
    let mut odd_exchange = request_body("feed-1");
    odd_exchange["exchange_id"] = json!("binance\u{202e}");
    bench
        .resolver(
            "RTL override in `exchange_id`",
            REQ,
            Some(json_headers()),
            serde_json::to_vec(&odd_exchange).unwrap(),
        )
        .await;
    let mut nul_request_id = request_body("feed-1");
    nul_request_id["request_id"] = json!("id-\u{0}");
    bench
        .resolver("NUL in `request_id`", REQ, Some(json_headers()), serde_json::to_vec(&nul_request_id).unwrap())
        .await;
    bench
        .resolver("subject with `*` (`proxy.v1.request.*.http`)", "proxy.v1.request.*.http", None, valid.clone())
        .await;
    bench
        .resolver(
            "subject with an empty token (`proxy.v1.request..http`)",
            "proxy.v1.request..http",
            None,
            valid.clone(),
        )
        .await;
    bench
        .resolver(
            "subject with a unicode token (`proxy.v1.request.bïnance.http`)",
            "proxy.v1.request.bïnance.http",
            None,
            valid.clone(),
        )
        .await;
    bench.resolver("oversized payload (2 MiB, over NATS max_payload)", REQ, None, vec![b'x'; 2 * MIB]).await;
    bench.resolver("empty payload", REQ, None, Vec::new()).await;
    let mut ct = HeaderMap::new();
    ct.insert("Content-Type", "application/xml");
    bench.resolver("unsupported Content-Type (`application/xml`)", REQ, Some(ct), valid.clone()).await;

    // ---- the aggregator ----
    let valid_fb = msgpack(&feedback_json());
    bench.aggregator("truncated MessagePack", FB, None, valid_fb[..valid_fb.len() / 2].to_vec()).await;
    let valid_fb_json = serde_json::to_vec(&feedback_json()).unwrap();
    bench
        .aggregator("truncated JSON", FB, Some(json_headers()), valid_fb_json[..valid_fb_json.len() - 7].to_vec())
        .await;
    let mut wrong = feedback_json();
    wrong["success"] = json!("yes");
    wrong["proxy_id"] = json!(12345);
    bench
        .aggregator(
            "wrong types (`success: \"yes\"`, numeric `proxy_id`)",
            FB,
            Some(json_headers()),
            serde_json::to_vec(&wrong).unwrap(),
        )
        .await;
    let mut huge = feedback_json();
    huge["error_details"] = json!("x".repeat(MIB - 1024));
    bench.aggregator("1 MiB `error_details`", FB, Some(json_headers()), serde_json::to_vec(&huge).unwrap()).await;
    let mut deep_fb = msgpack(&feedback_json());
    // One more entry in the top map (a map16: ProxyFeedback has more than 15 fields).
    assert_eq!(deep_fb[0], 0xde);
    deep_fb[2] += 1;
    deep_fb.extend(rmp_serde::to_vec(&"extra").unwrap());
    deep_fb.extend(std::iter::repeat_n(0x91, 10_000));
    deep_fb.push(0xc0);
    bench.aggregator("MessagePack nested 10 000 levels (in an unknown field)", FB, None, deep_fb).await;
    for (what, latency) in [("NaN", "NaN"), ("negative", "-5"), ("fractional", "12.5"), ("over u64", "1e30")] {
        let text = serde_json::to_string(&feedback_json())
            .unwrap()
            .replace(r#""latency_ms":40"#, &format!(r#""latency_ms":{latency}"#));
        bench
            .aggregator(&format!("{what} `latency_ms` ({latency})"), FB, Some(json_headers()), text.into_bytes())
            .await;
    }
    let huge_latency = serde_json::to_string(&feedback_json())
        .unwrap()
        .replace(r#""latency_ms":40"#, &format!(r#""latency_ms":{}"#, u64::MAX));
    bench
        .aggregator(
            "huge `latency_ms` (u64::MAX, 584 million years)",
            FB,
            Some(json_headers()),
            huge_latency.clone().into_bytes(),
        )
        .await;
    for (what, id) in ODD_IDS.into_iter().filter(|(_, id)| id.chars().any(char::is_control)) {
        let mut odd = feedback_json();
        odd["client_id"] = json!(id);
        odd["event_id"] = json!(uuid::Uuid::new_v4().to_string());
        bench
            .aggregator(&format!("{what} in `client_id`"), FB, Some(json_headers()), serde_json::to_vec(&odd).unwrap())
            .await;
    }
    let mut mismatched = feedback_json();
    mismatched["exchange_id"] = json!("kraken");
    bench
        .aggregator(
            "`exchange_id` not the subject's",
            FB,
            Some(json_headers()),
            serde_json::to_vec(&mismatched).unwrap(),
        )
        .await;
    let mut odd = feedback_json();
    odd["exchange_id"] = json!("bïnance");
    bench.aggregator("unicode `exchange_id`", FB, Some(json_headers()), serde_json::to_vec(&odd).unwrap()).await;
    bench
        .aggregator("subject with `*` (`proxy.v1.feedback.*.http`)", "proxy.v1.feedback.*.http", None, valid_fb.clone())
        .await;
    bench
        .aggregator(
            "subject with an empty token (`proxy.v1.feedback..http`)",
            "proxy.v1.feedback..http",
            None,
            valid_fb.clone(),
        )
        .await;
    bench
        .aggregator(
            "subject with too many tokens (`proxy.v1.feedback.binance.http.x`)",
            "proxy.v1.feedback.binance.http.x",
            None,
            valid_fb.clone(),
        )
        .await;
    bench.aggregator("oversized payload (2 MiB)", FB, None, vec![b'x'; 2 * MIB]).await;
    bench.aggregator("empty payload", FB, None, Vec::new()).await;

    assert_eq!(bench.aggregator.snapshot().events_folded, folded_before, "no bad event was folded");
    assert_eq!(bench.health().await, health_before, "PROXY_HEALTH unchanged");

    // ---- the pool ----
    let valid_req = serde_json::to_vec(&request_body("feed-1")).unwrap();
    bench.pool("truncated JSON", paths::REQUEST, "application/json", valid_req[..valid_req.len() - 5].to_vec()).await;
    bench
        .pool(
            "wrong types",
            paths::REQUEST,
            "application/json",
            serde_json::to_vec(&json!({"exchange_id": 42, "connection_type": 1, "client_id": []})).unwrap(),
        )
        .await;
    bench.pool("MessagePack body", paths::REQUEST, "application/msgpack", msgpack(&request_body("feed-1"))).await;
    bench
        .pool(
            "1 MiB `client_id`",
            paths::REQUEST,
            "application/json",
            serde_json::to_vec(&request_body(&"x".repeat(MIB))).unwrap(),
        )
        .await;
    let deep = format!(
        r#"{{"exchange_id":"binance","connection_type":"http","client_id":"f","metadata":{{"x":{}}}}}"#,
        deep_json(10_000)
    );
    bench.pool("JSON nested 10 000 levels", paths::REQUEST, "application/json", deep.into_bytes()).await;
    let mut odd_exchange = request_body("feed-1");
    odd_exchange["exchange_id"] = json!("binance\u{0}");
    bench
        .pool("NUL in `exchange_id`", paths::REQUEST, "application/json", serde_json::to_vec(&odd_exchange).unwrap())
        .await;
    bench
        .pool(
            "newline in `client_id`",
            paths::REQUEST,
            "application/json",
            serde_json::to_vec(&request_body("feed-1\nforged")).unwrap(),
        )
        .await;
    for (what, latency) in [("NaN", "NaN"), ("negative", "-5"), ("over u64", "1e30")] {
        let text = serde_json::to_string(&feedback_json())
            .unwrap()
            .replace(r#""latency_ms":40"#, &format!(r#""latency_ms":{latency}"#));
        bench.pool(&format!("{what} `latency_ms`"), paths::FEEDBACK, "application/json", text.into_bytes()).await;
    }
    bench
        .pool("huge `latency_ms` (u64::MAX)", paths::FEEDBACK, "application/json", huge_latency.clone().into_bytes())
        .await;
    let mut odd = feedback_json();
    odd["client_id"] = json!("feed-\u{0}-1");
    bench.pool("NUL in `client_id`", paths::FEEDBACK, "application/json", serde_json::to_vec(&odd).unwrap()).await;
    bench
        .pool("truncated JSON", paths::FEEDBACK, "application/json", valid_fb_json[..valid_fb_json.len() - 7].to_vec())
        .await;
    bench
        .pool(
            "health batch not a list",
            paths::HEALTH,
            "application/json",
            br#"{"proxy_id":"0011223344556677"}"#.to_vec(),
        )
        .await;
    bench
        .pool(
            "health with wrong types",
            paths::HEALTH,
            "application/json",
            br#"[{"proxy_id":1,"state":true}]"#.to_vec(),
        )
        .await;
    bench.pool("oversized payload (2 MiB)", paths::HEALTH, "application/json", vec![b'['; 2 * MIB]).await;

    assert_eq!(bench.pool_proxies().await, proxies_before, "the pool's proxies unchanged");
    assert_eq!(bench.health().await, health_before, "PROXY_HEALTH unchanged");
    bench.resolver_still_answers().await;

    // Still folding: one more good event is folded.
    let good = Codec::default().encode(Encoding::MsgPack, &feedback()).unwrap();
    bench.js.publish(FB, good).await.unwrap().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while bench.aggregator.snapshot().events_folded == folded_before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the aggregator still folds");

    println!("\n| input | part | reply |\n| --- | --- | --- |");
    for [input, part, reply] in &bench.rows {
        println!("| {} | {part} | {reply} |", input.replace('|', "\\|"));
    }
}
