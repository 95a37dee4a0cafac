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

/// Where a bad input goes, and so which reply it must get.
enum Part {
    /// A NATS request to the resolver on `subject`: an error reply with a 4xx code when
    /// `refused`, else an answer from the embedded settings; either way the resolver still
    /// answers a good request after it. A request the NATS client refuses, or that no
    /// subscription matches, is recorded as such.
    Resolver { subject: String, headers: Option<HeaderMap>, refused: bool },
    /// A message published into `PROXY_FEEDBACK` on `subject`: not stored by the stream, or
    /// stored and dead-lettered (with the stored sequence and a reason) and counted as such.
    Aggregator { subject: String, headers: Option<HeaderMap> },
    /// A JSON feedback message on `proxy.v1.feedback.binance.http` that is folded although
    /// odd; `why`, for the table.
    Folded { why: &'static str },
    /// An HTTP `POST` of `content_type` on the pool's `path`: a 4xx answer.
    Pool { path: &'static str, content_type: &'static str },
}

/// One input of the table: what it is (the table's first column, and what a failure names),
/// where it goes and what must come back, and its bytes.
struct Case {
    input: String,
    part: Part,
    body: Vec<u8>,
}

impl Case {
    /// A request the resolver must refuse with an error reply.
    fn resolver(input: impl Into<String>, subject: &str, headers: Option<HeaderMap>, body: Vec<u8>) -> Self {
        Self { input: input.into(), part: Part::Resolver { subject: subject.into(), headers, refused: true }, body }
    }

    /// A message the aggregator must not fold.
    fn aggregator(input: impl Into<String>, subject: &str, headers: Option<HeaderMap>, body: Vec<u8>) -> Self {
        Self { input: input.into(), part: Part::Aggregator { subject: subject.into(), headers }, body }
    }

    /// A JSON feedback message the aggregator folds, for the reason `why`.
    fn folded(input: impl Into<String>, body: Vec<u8>, why: &'static str) -> Self {
        Self { input: input.into(), part: Part::Folded { why }, body }
    }

    /// A body the pool must answer with a 4xx.
    fn pool(input: impl Into<String>, path: &'static str, content_type: &'static str, body: Vec<u8>) -> Self {
        Self { input: input.into(), part: Part::Pool { path, content_type }, body }
    }
}

/// The subject of a good request.
const REQ: &str = "proxy.v1.request.binance.http";
/// The subject of good feedback.
const FB: &str = "proxy.v1.feedback.binance.http";
const MIB: usize = 1024 * 1024;
/// The content type of the pool's JSON bodies.
const JSON: &str = "application/json";

/// A feedback event as JSON with `"latency_ms":{latency}` written in place of the valid 40.
fn feedback_with_latency(latency: &str) -> Vec<u8> {
    serde_json::to_string(&feedback_json())
        .unwrap()
        .replace(r#""latency_ms":40"#, &format!(r#""latency_ms":{latency}"#))
        .into_bytes()
}

/// Odd feedback that the aggregator folds all the same (sent before the baseline is taken).
fn odd_but_folded() -> Vec<Case> {
    // Feeds' clocks: the fold never reads them (it folds by the stream's time), so an
    // event dated 1970 or 9999 is folded like any other.
    let mut cases: Vec<Case> = [("1970", "1970-01-01T00:00:00Z"), ("9999", "9999-12-31T23:59:59Z")]
        .into_iter()
        .map(|(what, at)| {
            let mut dated = feedback_json();
            dated["timestamp"] = json!(at);
            let why = "folded at the stream's time (the fold never reads a feed's clock)";
            Case::folded(format!("`timestamp` in {what} (`{at}`)"), serde_json::to_vec(&dated).unwrap(), why)
        })
        .collect();
    // An unknown field is ignored (forward compatibility); serde_json skips it without
    // recursing, so even 10 000 levels cost nothing.
    let deep = serde_json::to_string(&feedback_json()).unwrap().replacen(
        '{',
        &format!(r#"{{"extra":{},"#, deep_json(10_000)),
        1,
    );
    cases.push(Case::folded(
        "JSON nested 10 000 levels (in an unknown field)",
        deep.into_bytes(),
        "folded: unknown fields are skipped (iteratively) by the JSON decoder",
    ));
    cases
}

/// Every malformed input, in the order of the table of docs/reliability.md: the resolver's,
/// the aggregator's, then the pool's.
fn bad_inputs() -> Vec<Case> {
    let json = || Some(json_headers());
    let valid = msgpack(&request_body("feed-1"));
    let valid_json = serde_json::to_vec(&request_body("feed-1")).unwrap();
    let valid_fb = msgpack(&feedback_json());
    let valid_fb_json = serde_json::to_vec(&feedback_json()).unwrap();
    let deep_request = format!(
        r#"{{"exchange_id":"binance","connection_type":"http","client_id":"f","metadata":{{"x":{}}}}}"#,
        deep_json(10_000)
    );
    let huge_latency = feedback_with_latency(&u64::MAX.to_string());
    let mut cases = Vec::new();

    // ---- the resolver ----
    let wrong = json!({"exchange_id": 42, "connection_type": ["http"], "client_id": {"a": 1}});
    cases.extend([
        Case::resolver("truncated MessagePack", REQ, None, valid[..valid.len() / 2].to_vec()),
        Case::resolver("truncated JSON", REQ, json(), valid_json[..valid_json.len() - 5].to_vec()),
        Case::resolver(
            "wrong types (number, array, object for strings)",
            REQ,
            json(),
            serde_json::to_vec(&wrong).unwrap(),
        ),
        Case::resolver(
            "1 MiB `client_id` (just under NATS max_payload)",
            REQ,
            json(),
            serde_json::to_vec(&request_body(&"x".repeat(MIB - 512))).unwrap(),
        ),
        Case::resolver(
            "60 KiB `client_id` (under the resolver's 64 KiB limit)",
            REQ,
            json(),
            serde_json::to_vec(&request_body(&"x".repeat(60 * 1024))).unwrap(),
        ),
        Case::resolver("JSON nested 10 000 levels (in `metadata`)", REQ, json(), deep_request.clone().into_bytes()),
        Case::resolver("MessagePack nested 10 000 levels (in `metadata`)", REQ, None, deep_msgpack(10_000)),
    ]);
    cases.extend(ODD_IDS.map(|(what, id)| {
        let body = serde_json::to_vec(&request_body(id)).unwrap();
        let refused = id.chars().any(char::is_control);
        let part = Part::Resolver { subject: REQ.into(), headers: json(), refused };
        Case { input: format!("{what} in `client_id`"), part, body }
    }));
    let mut odd_exchange = request_body("feed-1");
    odd_exchange["exchange_id"] = json!("binance\u{202e}");
    let mut nul_request_id = request_body("feed-1");
    nul_request_id["request_id"] = json!("id-\u{0}");
    let mut xml = HeaderMap::new();
    xml.insert("Content-Type", "application/xml");
    cases.extend([
        Case::resolver("RTL override in `exchange_id`", REQ, json(), serde_json::to_vec(&odd_exchange).unwrap()),
        Case::resolver("NUL in `request_id`", REQ, json(), serde_json::to_vec(&nul_request_id).unwrap()),
        Case::resolver("subject with `*` (`proxy.v1.request.*.http`)", "proxy.v1.request.*.http", None, valid.clone()),
        Case::resolver(
            "subject with an empty token (`proxy.v1.request..http`)",
            "proxy.v1.request..http",
            None,
            valid.clone(),
        ),
        Case::resolver(
            "subject with a unicode token (`proxy.v1.request.bïnance.http`)",
            "proxy.v1.request.bïnance.http",
            None,
            valid.clone(),
        ),
        Case::resolver("oversized payload (2 MiB, over NATS max_payload)", REQ, None, vec![b'x'; 2 * MIB]),
        Case::resolver("empty payload", REQ, None, Vec::new()),
        Case::resolver("unsupported Content-Type (`application/xml`)", REQ, Some(xml), valid.clone()),
    ]);

    // ---- the aggregator ----
    let mut wrong = feedback_json();
    wrong["success"] = json!("yes");
    wrong["proxy_id"] = json!(12345);
    let mut huge = feedback_json();
    huge["error_details"] = json!("x".repeat(MIB - 1024));
    let mut deep_fb = msgpack(&feedback_json());
    // One more entry in the top map (a map16: ProxyFeedback has more than 15 fields).
    assert_eq!(deep_fb[0], 0xde, "a feedback event is a map16");
    deep_fb[2] += 1;
    deep_fb.extend(rmp_serde::to_vec(&"extra").unwrap());
    deep_fb.extend(std::iter::repeat_n(0x91, 10_000));
    deep_fb.push(0xc0);
    cases.extend([
        Case::aggregator("truncated MessagePack", FB, None, valid_fb[..valid_fb.len() / 2].to_vec()),
        Case::aggregator("truncated JSON", FB, json(), valid_fb_json[..valid_fb_json.len() - 7].to_vec()),
        Case::aggregator(
            "wrong types (`success: \"yes\"`, numeric `proxy_id`)",
            FB,
            json(),
            serde_json::to_vec(&wrong).unwrap(),
        ),
        Case::aggregator("1 MiB `error_details`", FB, json(), serde_json::to_vec(&huge).unwrap()),
        Case::aggregator("MessagePack nested 10 000 levels (in an unknown field)", FB, None, deep_fb),
    ]);
    cases.extend([("NaN", "NaN"), ("negative", "-5"), ("fractional", "12.5"), ("over u64", "1e30")].map(
        |(what, latency)| {
            Case::aggregator(format!("{what} `latency_ms` ({latency})"), FB, json(), feedback_with_latency(latency))
        },
    ));
    cases.push(Case::aggregator("huge `latency_ms` (u64::MAX, 584 million years)", FB, json(), huge_latency.clone()));
    cases.extend(ODD_IDS.into_iter().filter(|(_, id)| id.chars().any(char::is_control)).map(|(what, id)| {
        let mut odd = feedback_json();
        odd["client_id"] = json!(id);
        odd["event_id"] = json!(uuid::Uuid::new_v4().to_string());
        Case::aggregator(format!("{what} in `client_id`"), FB, json(), serde_json::to_vec(&odd).unwrap())
    }));
    let mut mismatched = feedback_json();
    mismatched["exchange_id"] = json!("kraken");
    let mut odd = feedback_json();
    odd["exchange_id"] = json!("bïnance");
    cases.extend([
        Case::aggregator("`exchange_id` not the subject's", FB, json(), serde_json::to_vec(&mismatched).unwrap()),
        Case::aggregator("unicode `exchange_id`", FB, json(), serde_json::to_vec(&odd).unwrap()),
        Case::aggregator(
            "subject with `*` (`proxy.v1.feedback.*.http`)",
            "proxy.v1.feedback.*.http",
            None,
            valid_fb.clone(),
        ),
        Case::aggregator(
            "subject with an empty token (`proxy.v1.feedback..http`)",
            "proxy.v1.feedback..http",
            None,
            valid_fb.clone(),
        ),
        Case::aggregator(
            "subject with too many tokens (`proxy.v1.feedback.binance.http.x`)",
            "proxy.v1.feedback.binance.http.x",
            None,
            valid_fb.clone(),
        ),
        Case::aggregator("oversized payload (2 MiB)", FB, None, vec![b'x'; 2 * MIB]),
        Case::aggregator("empty payload", FB, None, Vec::new()),
    ]);

    // ---- the pool ----
    let mut odd_exchange = request_body("feed-1");
    odd_exchange["exchange_id"] = json!("binance\u{0}");
    let wrong = json!({"exchange_id": 42, "connection_type": 1, "client_id": []});
    cases.extend([
        Case::pool("truncated JSON", paths::REQUEST, JSON, valid_json[..valid_json.len() - 5].to_vec()),
        Case::pool("wrong types", paths::REQUEST, JSON, serde_json::to_vec(&wrong).unwrap()),
        Case::pool("MessagePack body", paths::REQUEST, "application/msgpack", msgpack(&request_body("feed-1"))),
        Case::pool(
            "1 MiB `client_id`",
            paths::REQUEST,
            JSON,
            serde_json::to_vec(&request_body(&"x".repeat(MIB))).unwrap(),
        ),
        Case::pool("JSON nested 10 000 levels", paths::REQUEST, JSON, deep_request.into_bytes()),
        Case::pool("NUL in `exchange_id`", paths::REQUEST, JSON, serde_json::to_vec(&odd_exchange).unwrap()),
        Case::pool(
            "newline in `client_id`",
            paths::REQUEST,
            JSON,
            serde_json::to_vec(&request_body("feed-1\nforged")).unwrap(),
        ),
    ]);
    cases.extend([("NaN", "NaN"), ("negative", "-5"), ("over u64", "1e30")].map(|(what, latency)| {
        Case::pool(format!("{what} `latency_ms`"), paths::FEEDBACK, JSON, feedback_with_latency(latency))
    }));
    let mut odd = feedback_json();
    odd["client_id"] = json!("feed-\u{0}-1");
    cases.extend([
        Case::pool("huge `latency_ms` (u64::MAX)", paths::FEEDBACK, JSON, huge_latency),
        Case::pool("NUL in `client_id`", paths::FEEDBACK, JSON, serde_json::to_vec(&odd).unwrap()),
        Case::pool("truncated JSON", paths::FEEDBACK, JSON, valid_fb_json[..valid_fb_json.len() - 7].to_vec()),
        Case::pool("health batch not a list", paths::HEALTH, JSON, br#"{"proxy_id":"0011223344556677"}"#.to_vec()),
        Case::pool("health with wrong types", paths::HEALTH, JSON, br#"[{"proxy_id":1,"state":true}]"#.to_vec()),
        Case::pool("oversized payload (2 MiB)", paths::HEALTH, JSON, vec![b'['; 2 * MIB]),
    ]);
    cases
}

impl Bench {
    fn row(&mut self, input: &str, part: &str, reply: String) {
        println!("{input} | {part} | {reply}");
        self.rows.push([input.to_owned(), part.to_owned(), reply]);
    }

    /// A good request answered from the embedded settings; `after` names what was sent
    /// before it, for a failure.
    async fn resolver_still_answers(&self, after: &str) {
        let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "feed-good");
        let body = Codec::default().encode(Encoding::MsgPack, &request).unwrap();
        let reply = tokio::time::timeout(WAIT, self.client.request(REQ, body))
            .await
            .unwrap_or_else(|_| panic!("after {after}: the resolver answers in time"))
            .unwrap_or_else(|err| panic!("after {after}: a reply: {err}"));
        let answer: ProxyResponse = Codec::default()
            .decode(reply.headers.as_ref(), &reply.payload)
            .unwrap_or_else(|err| panic!("after {after}: not an answer: {err}"));
        assert!(matches!(answer.source, ResponseSource::Embedded | ResponseSource::Cache), "after {after}: {answer:?}");
        assert_eq!(answer.proxy_url.as_deref(), Some(EMBEDDED), "after {after}");
    }

    /// Sends `case` where it goes and asserts the reply its part must get; records the row.
    async fn check(&mut self, case: Case) {
        let Case { input, part, body } = case;
        match part {
            Part::Resolver { subject, headers, refused } => {
                self.resolver(&input, &subject, headers, body, refused).await;
            }
            Part::Aggregator { subject, headers } => self.aggregator(&input, &subject, headers, body).await,
            Part::Folded { why } => self.aggregator_folds(&input, body, why).await,
            Part::Pool { path, content_type } => self.pool(&input, path, content_type, body).await,
        }
    }

    /// Sends a request to the resolver; the reply must be an error reply when `refused`,
    /// else an answer.
    async fn resolver(&mut self, input: &str, subject: &str, headers: Option<HeaderMap>, body: Vec<u8>, refused: bool) {
        let call = async {
            match headers {
                Some(headers) => self.client.request_with_headers(subject.to_owned(), headers, body.into()).await,
                None => self.client.request(subject.to_owned(), body.into()).await,
            }
        };
        let reply = match tokio::time::timeout(WAIT, call)
            .await
            .unwrap_or_else(|_| panic!("{input}: no hang: a reply or an error in time"))
        {
            Ok(reply) if !refused => {
                let answer: ProxyResponse = Codec::default()
                    .decode(reply.headers.as_ref(), &reply.payload)
                    .unwrap_or_else(|err| panic!("{input}: not an answer: {err}"));
                assert_eq!(answer.proxy_url.as_deref(), Some(EMBEDDED), "{input}");
                format!("answered (`{}`): the id is opaque text", answer.source.as_str())
            }
            Ok(reply) => {
                let headers = reply.headers.as_ref().unwrap_or_else(|| panic!("{input}: an error reply has headers"));
                let code = headers.get(subject::SERVICE_ERROR_CODE_HEADER).map(|v| v.to_string());
                let body: Value = Codec::default()
                    .decode(Some(headers), &reply.payload)
                    .unwrap_or_else(|err| panic!("{input}: not an ErrorReply: {err}"));
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
        self.resolver_still_answers(input).await;
        self.row(input, "resolver", reply);
    }

    /// Publishes a bad feedback message into `PROXY_FEEDBACK` and waits for its dead letter.
    async fn aggregator(&mut self, input: &str, subject: &str, headers: Option<HeaderMap>, body: Vec<u8>) {
        let mut dead = self
            .client
            .subscribe(subject::FEEDBACK_DEAD_WILDCARD)
            .await
            .unwrap_or_else(|err| panic!("{input}: subscribing to dead letters: {err}"));
        self.client.flush().await.unwrap_or_else(|err| panic!("{input}: flushing: {err}"));
        let dead_before = self.aggregator.snapshot().dead_lettered;
        let mut headers = headers.unwrap_or_default();
        headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        let stored = match self.js.publish_with_headers(subject.to_owned(), headers, body.into()).await {
            Ok(ack) => tokio::time::timeout(WAIT, ack)
                .await
                .unwrap_or_else(|_| panic!("{input}: an ack in time"))
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        let reply = match stored {
            Err(err) => format!("not stored: {}", short(&err)),
            Ok(ack) => {
                let letter = tokio::time::timeout(WAIT, dead.next())
                    .await
                    .unwrap_or_else(|_| panic!("{input}: no dead letter (folded or lost?)"))
                    .unwrap_or_else(|| panic!("{input}: the dead letters' subscription ended"));
                let headers = letter.headers.unwrap_or_else(|| panic!("{input}: dead letters have headers"));
                assert_eq!(
                    headers.get(subject::DEAD_SEQ_HEADER).map(|v| v.to_string()),
                    Some(ack.sequence.to_string()),
                    "{input}: the dead letter names the stored message"
                );
                let reason = headers.get(subject::DEAD_REASON_HEADER).map(|v| v.to_string()).unwrap_or_default();
                assert!(!reason.is_empty(), "{input}: a reason");
                tokio::time::timeout(WAIT, async {
                    while self.aggregator.snapshot().dead_lettered == dead_before {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{input}: the dead letter is counted"));
                assert_eq!(self.aggregator.snapshot().dead_lettered, dead_before + 1, "{input}: one dead letter");
                format!("dead letter on `{}`: {}", letter.subject, short(&reason))
            }
        };
        self.row(input, "aggregator", reply);
    }

    /// Publishes a JSON feedback message that is folded although odd; records `why`.
    async fn aggregator_folds(&mut self, input: &str, body: Vec<u8>, why: &str) {
        let folded = self.aggregator.snapshot().events_folded;
        self.js
            .publish_with_headers(FB, json_headers(), body.into())
            .await
            .unwrap_or_else(|err| panic!("{input}: publishing: {err}"))
            .await
            .unwrap_or_else(|err| panic!("{input}: stored: {err}"));
        tokio::time::timeout(WAIT, async {
            while self.aggregator.snapshot().events_folded == folded {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{input}: not folded"));
        self.row(input, "aggregator", why.to_owned());
    }

    /// Posts a bad body to the pool; the answer must be a 4xx.
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
            .unwrap_or_else(|err| panic!("{input} on {path}: the pool answers in time: {err}"));
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
    bench.resolver_still_answers("the first good event").await;
    for case in odd_but_folded() {
        bench.check(case).await;
    }
    // The pool follows what the aggregator published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let folded_before = bench.aggregator.snapshot().events_folded;
    let health_before = bench.health().await;
    let proxies_before = bench.pool_proxies().await;

    let (to_pool, over_nats): (Vec<Case>, Vec<Case>) =
        bad_inputs().into_iter().partition(|case| matches!(case.part, Part::Pool { .. }));
    for case in over_nats {
        bench.check(case).await;
    }
    assert_eq!(bench.aggregator.snapshot().events_folded, folded_before, "no bad event was folded");
    assert_eq!(bench.health().await, health_before, "PROXY_HEALTH unchanged");
    for case in to_pool {
        bench.check(case).await;
    }

    assert_eq!(bench.pool_proxies().await, proxies_before, "the pool's proxies unchanged");
    assert_eq!(bench.health().await, health_before, "PROXY_HEALTH unchanged");
    bench.resolver_still_answers("every bad input").await;

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
