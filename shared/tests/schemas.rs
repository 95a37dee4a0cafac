//! The machine-readable contract in `schemas/` agrees with the code:
//! (a) the committed JSON Schemas equal the generated ones;
//! (b) an example of every message, encoded by the codec, validates against its schema;
//! (c) MessagePack examples decode the same in a decoder that knows nothing of
//!     Rust (Python's `msgpack`) and match the golden bytes in `schemas/examples/`.
//!
//! `UPDATE_SCHEMAS=1 cargo test -p proxybus-shared --test schemas` rewrites the
//! committed files after an intended change of the contract.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{TimeZone, Utc};
use proxybus_shared::schema::{message_schemas, to_file_text};
use proxybus_shared::*;
use serde_json::{Value, json};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_SCHEMAS").is_some()
}

/// One filled-in example of every message, keyed by the schema file's stem.
fn examples() -> BTreeMap<&'static str, Value> {
    let at = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
    let binance: ExchangeId = "binance".parse().unwrap();
    let region: Region = "eu-west".parse().unwrap();
    let url = "socks5://alice:s3cret@10.0.0.7:1080";
    let mut request = ProxyRequest::new(binance.clone(), ConnectionType::Websocket, "cryptofeed-host-4242");
    request.region = Some(region.clone());
    request.request_id = Some("0b8a4c52-1f0e-4f4e-9d3a-7c2f1a9e6b10".into());
    request.metadata.insert("feed".into(), json!("l2_book"));
    // An aiohttp feed without aiohttp-socks: HTTP proxies only (issue #12).
    request.proxy_schemes = vec![ProxyScheme::Http, ProxyScheme::Https];
    let response = ProxyResponse {
        schema_version: 1,
        proxy_url: Some(url.into()),
        proxy_id: Some(proxy_id(url)),
        strategy: "p2c_ewma".into(),
        ttl_seconds: 300,
        fallback_policy: FallbackPolicy::DirectConnection,
        source: ResponseSource::Service,
        region: Some(region.clone()),
        request_id: "0b8a4c52-1f0e-4f4e-9d3a-7c2f1a9e6b10".into(),
        metadata: Metadata::new(),
        // Answered by a us-east resolver for a feed in eu-west (failed over), with an eu-west proxy.
        resolver_region: Some("us-east".parse().unwrap()),
    };
    let error =
        ErrorReply::new(ErrorCode::BadRequest, "exchange_id \"kraken\" does not match subject token \"binance\"", None);
    let feedback = ProxyFeedback {
        schema_version: 1,
        event_id: "6f1c9a4e-2b0d-4b8e-9a53-0c7f5d7a1e11".parse().unwrap(),
        proxy_id: proxy_id(url),
        proxy_url: redact_url(url),
        exchange_id: binance.clone(),
        connection_type: ConnectionType::Http,
        region: Some(region.clone()),
        phase: FeedbackPhase::Failed,
        success: false,
        latency_ms: Some(412),
        error_kind: Some(ErrorKind::Http429),
        status_code: Some(429),
        retry_after_seconds: Some(60),
        error_details: Some("Too Many Requests".into()),
        ws_close_code: None,
        usage_headers: Default::default(),
        connect_count: None,
        timestamp: at,
        client_id: "cryptofeed-host-4242".into(),
        probe: false,
    };
    let mut health = HealthStats::new(proxy_id(url), redact_url(url), Some(region), at);
    health.total = 10;
    health.successes = 7;
    health.failures = 3;
    health.success_rate = 0.7;
    health.latency_ewma_ms = Some(120.5);
    health.latency_p50_ms = Some(100.0);
    health.latency_p99_ms = Some(480.0);
    health.state = HealthState::Degraded;
    health.last_error_kind = Some(ErrorKind::Http451);
    health.error_counts.insert(ErrorKind::Http451, 1);
    health.error_counts.insert(ErrorKind::Timeout, 2);
    health.exchanges.insert(
        binance,
        ExchangeHealth {
            successes: 2,
            failures: 1,
            state: ExchangeState::Banned,
            banned_until: Some(at + chrono::Duration::hours(24)),
            last_error_kind: Some(ErrorKind::Http451),
            refusals_in_a_row: 0,
            ip_bans: 0,
        },
    );
    health.last_seq = 4711;
    let inventory = ProxyInventory {
        schema_version: 1,
        inventory_id: "default".into(),
        proxies: vec![
            InventoryProxy { proxy_id: proxy_id(url), region: "eu-west".parse().unwrap() },
            InventoryProxy { proxy_id: proxy_id("http://10.0.0.8:3128"), region: "us-east".parse().unwrap() },
        ],
        updated_at: at,
    };
    let mut closed = feedback.clone();
    closed.event_id = "2d7a0f3e-9c41-4d1b-8e2f-5a6b7c8d9e01".parse().unwrap();
    closed.connection_type = ConnectionType::Websocket;
    closed.phase = FeedbackPhase::Disconnected;
    closed.latency_ms = None;
    closed.error_kind = Some(ErrorKind::WsClosed);
    closed.status_code = None;
    closed.retry_after_seconds = None;
    closed.error_details = Some("closed by the exchange: 1008 policy violation".into());
    closed.ws_close_code = Some(1008);
    let operator = OperatorEvent {
        schema_version: 1,
        event_id: "9b2e4f60-7a1c-4d3e-8f5a-1b2c3d4e5f60".parse().unwrap(),
        proxy_id: proxy_id(url),
        action: OperatorAction::Ban,
        exchange_id: Some("binance".parse().unwrap()),
        duration_seconds: Some(7200),
        reason: "provider maintenance".into(),
        operator: "alice".into(),
        timestamp: at,
    };
    let mut probe = feedback.clone();
    probe.event_id = "3c4d5e6f-7081-4a2b-9c3d-4e5f60718293".parse().unwrap();
    probe.phase = FeedbackPhase::Request;
    probe.success = true;
    probe.latency_ms = Some(35);
    probe.error_kind = None;
    probe.status_code = Some(200);
    probe.retry_after_seconds = None;
    probe.error_details = None;
    probe.client_id = "proxybus-pool-probe".into();
    probe.probe = true;
    health.operator_controls.push(OperatorControl {
        action: OperatorAction::Ban,
        exchange_id: Some("binance".parse().unwrap()),
        until: Some(at + chrono::Duration::hours(2)),
        reason: "provider maintenance".into(),
        operator: "alice".into(),
        at,
        seq: 4710,
    });
    health.last_operator_action = health.operator_controls.first().cloned();
    // A feed's REST answer with Binance's usage header (issue 14: rate budgets).
    let mut usage = feedback.clone();
    usage.event_id = "4c1e2b3a-5d6f-4a7b-8c9d-0e1f2a3b4c5d".parse().unwrap();
    usage.connection_type = ConnectionType::Http;
    usage.phase = FeedbackPhase::Request;
    usage.success = true;
    usage.error_kind = None;
    usage.status_code = Some(200);
    usage.retry_after_seconds = None;
    usage.error_details = None;
    usage.usage_headers = [("x-mbx-used-weight-1m".to_owned(), "1180".to_owned())].into_iter().collect();
    let mut budget = proxybus_shared::budget::RateBudget::new(proxy_id(url), usage.exchange_id.clone());
    proxybus_shared::budget::BudgetLimits::binance().fold(&mut budget, &usage);
    budget.connects_used = 12;
    budget.connect_limit = 300;
    budget.connect_window_seconds = 300;
    budget.connect_window_start = Some(at);
    BTreeMap::from([
        ("operator_event", serde_json::to_value(&operator).unwrap()),
        ("proxy_feedback_probe", serde_json::to_value(&probe).unwrap()),
        ("proxy_feedback_usage", serde_json::to_value(&usage).unwrap()),
        ("rate_budget", serde_json::to_value(&budget).unwrap()),
        ("proxy_inventory", serde_json::to_value(&inventory).unwrap()),
        ("proxy_request", serde_json::to_value(&request).unwrap()),
        ("proxy_response", serde_json::to_value(&response).unwrap()),
        ("error_reply", serde_json::to_value(&error).unwrap()),
        ("proxy_feedback", serde_json::to_value(&feedback).unwrap()),
        ("health_stats", serde_json::to_value(&health).unwrap()),
        ("proxy_feedback_ws_close", serde_json::to_value(&closed).unwrap()),
    ])
}

/// The message an example is of: its stem up to a variant suffix
/// (`proxy_feedback_ws_close` is a `proxy_feedback`).
fn message_of(stem: &str) -> &str {
    match stem {
        "proxy_feedback_ws_close" | "proxy_feedback_probe" | "proxy_feedback_usage" => "proxy_feedback",
        other => other,
    }
}

/// Encodes an example as its Rust type would, in MessagePack.
fn encode_msgpack(stem: &str, example: &Value) -> Vec<u8> {
    fn enc<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Vec<u8> {
        let typed: T = serde_json::from_value(v.clone()).unwrap();
        Codec::default().encode(Encoding::MsgPack, &typed).unwrap().to_vec()
    }
    match message_of(stem) {
        "proxy_request" => enc::<ProxyRequest>(example),
        "proxy_response" => enc::<ProxyResponse>(example),
        "error_reply" => enc::<ErrorReply>(example),
        "proxy_feedback" => enc::<ProxyFeedback>(example),
        "health_stats" => enc::<HealthStats>(example),
        "proxy_inventory" => enc::<ProxyInventory>(example),
        "operator_event" => enc::<OperatorEvent>(example),
        "rate_budget" => enc::<proxybus_shared::budget::RateBudget>(example),
        other => panic!("no type for {other}"),
    }
}

#[test]
fn committed_schemas_equal_the_generated_ones() {
    let mut drifted = Vec::new();
    for schema in message_schemas() {
        let path = schemas_dir().join(schema.file);
        let generated = to_file_text(&schema.schema);
        if updating() {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            drifted.push(schema.file);
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted from the Rust types: {drifted:?}; if the contract change is intended, run \
         `UPDATE_SCHEMAS=1 cargo test -p proxybus-shared --test schemas` and commit"
    );
}

#[test]
fn schemas_name_every_contract_field() {
    // Renaming a field of the contract must fail here even after regenerating.
    let required: [(&str, &[&str]); 7] = [
        (
            "operator_event.schema.json",
            &["event_id", "proxy_id", "action", "exchange_id", "duration_seconds", "reason", "operator", "timestamp"],
        ),
        (
            "proxy_request.schema.json",
            &["exchange_id", "connection_type", "region", "client_id", "request_id", "metadata"],
        ),
        (
            "proxy_response.schema.json",
            &[
                "proxy_url",
                "proxy_id",
                "strategy",
                "ttl_seconds",
                "fallback_policy",
                "source",
                "region",
                "request_id",
                "metadata",
            ],
        ),
        ("error_reply.schema.json", &["code", "error", "message", "request_id"]),
        (
            "proxy_feedback.schema.json",
            &[
                "event_id",
                "proxy_id",
                "proxy_url",
                "exchange_id",
                "connection_type",
                "region",
                "phase",
                "success",
                "latency_ms",
                "error_kind",
                "status_code",
                "retry_after_seconds",
                "error_details",
                "ws_close_code",
                "timestamp",
                "client_id",
            ],
        ),
        ("proxy_inventory.schema.json", &["inventory_id", "proxies", "updated_at"]),
        (
            "health_stats.schema.json",
            &[
                "proxy_id",
                "proxy_url",
                "region",
                "state",
                "total",
                "successes",
                "failures",
                "success_rate",
                "latency_ewma_ms",
                "latency_p50_ms",
                "latency_p99_ms",
                "consecutive_failures",
                "ejections",
                "ejected_until",
                "last_error_kind",
                "exchanges",
                "updated_at",
                "last_seq",
            ],
        ),
    ];
    for (file, fields) in required {
        let schema = message_schemas().into_iter().find(|s| s.file == file).unwrap().schema;
        let properties = schema["properties"].as_object().unwrap();
        for field in fields.iter().chain(&["schema_version"]) {
            assert!(properties.contains_key(*field), "{file} lacks {field}");
        }
    }
}

#[test]
fn every_example_validates_against_its_schema_in_both_encodings() {
    let examples = examples();
    for schema in message_schemas() {
        let stem = schema.file.trim_end_matches(".schema.json");
        assert!(examples.contains_key(stem), "no example of {stem}");
    }
    for (stem, example) in &examples {
        let schema = message_schemas()
            .into_iter()
            .find(|s| s.file.trim_end_matches(".schema.json") == message_of(stem))
            .expect("a schema per example");
        let validator = jsonschema::validator_for(&schema.schema).unwrap();
        // JSON encoding.
        let errors: Vec<String> = validator.iter_errors(example).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{stem} (json): {errors:?}");
        // MessagePack encoding, read back as a plain map.
        let bytes = encode_msgpack(stem, example);
        let as_map: Value = rmp_serde::from_slice(&bytes).unwrap();
        let errors: Vec<String> = validator.iter_errors(&as_map).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{stem} (msgpack): {errors:?}");
        // And a broken example does not validate: the schema has teeth.
        let mut broken = example.clone();
        broken.as_object_mut().unwrap().insert("schema_version".into(), json!("one"));
        assert!(!validator.is_valid(&broken), "{stem}: schema accepted a string schema_version");
    }
}

#[test]
fn msgpack_examples_match_the_golden_bytes() {
    let dir = schemas_dir().join("examples");
    for (stem, example) in examples() {
        let bytes = encode_msgpack(stem, &example);
        let golden = dir.join(format!("{stem}.msgpack"));
        let json_path = dir.join(format!("{stem}.json"));
        if updating() {
            std::fs::write(&golden, &bytes).unwrap();
            std::fs::write(&json_path, to_file_text(&example)).unwrap();
            continue;
        }
        let committed = std::fs::read(&golden).unwrap_or_default();
        assert_eq!(committed, bytes, "{stem}.msgpack differs from what the codec writes");
        let committed_json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        assert_eq!(committed_json, example, "{stem}.json differs from the example");
    }
}

#[test]
fn python_msgpack_decodes_what_rust_encodes_and_back() {
    // The decoder knows nothing of Rust: Python's msgpack turns the golden bytes
    // into a dict, compared with the JSON example; then Python encodes the dict and
    // the Rust codec must decode that.
    let dir = schemas_dir().join("examples");
    let script = schemas_dir().join("examples/roundtrip.py");
    let out_dir = tempfile::tempdir().unwrap();
    let output = Command::new(proxybus_tests::tools_python())
        .arg(&script)
        .arg(&dir)
        .arg(out_dir.path())
        .output()
        .expect("the tools venv's python runs");
    assert!(
        output.status.success(),
        "python round trip failed (run ./scripts/ensure-deps.sh to install the pinned msgpack): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: BTreeMap<String, bool> = serde_json::from_slice(&output.stdout).unwrap();
    let examples = examples();
    assert_eq!(report.len(), examples.len(), "python saw every example: {report:?}");
    assert!(report.values().all(|same| *same), "python decoded something else: {report:?}");
    for (stem, example) in examples {
        let from_python = std::fs::read(out_dir.path().join(format!("{stem}.msgpack"))).unwrap();
        let decoded: Value = match message_of(stem) {
            "proxy_request" => {
                serde_json::to_value(Codec::default().decode::<ProxyRequest>(None, &from_python).unwrap())
            }
            "proxy_response" => {
                serde_json::to_value(Codec::default().decode::<ProxyResponse>(None, &from_python).unwrap())
            }
            "error_reply" => serde_json::to_value(Codec::default().decode::<ErrorReply>(None, &from_python).unwrap()),
            "proxy_feedback" => {
                serde_json::to_value(Codec::default().decode::<ProxyFeedback>(None, &from_python).unwrap())
            }
            "health_stats" => serde_json::to_value(Codec::default().decode::<HealthStats>(None, &from_python).unwrap()),
            "proxy_inventory" => {
                serde_json::to_value(Codec::default().decode::<ProxyInventory>(None, &from_python).unwrap())
            }
            "operator_event" => {
                serde_json::to_value(Codec::default().decode::<OperatorEvent>(None, &from_python).unwrap())
            }
            "rate_budget" => serde_json::to_value(
                Codec::default().decode::<proxybus_shared::budget::RateBudget>(None, &from_python).unwrap(),
            ),
            other => panic!("no type for {other}"),
        }
        .unwrap();
        assert_eq!(decoded, example, "{stem}: python-encoded msgpack decoded differently");
    }
}

#[test]
fn asyncapi_describes_every_subject_stream_and_bucket() {
    let text = std::fs::read_to_string(schemas_dir().join("asyncapi.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let addresses: Vec<&str> =
        doc["channels"].as_object().unwrap().values().filter_map(|c| c["address"].as_str()).collect();
    for subject in [
        "proxy.v1.request.{exchange_id}.{connection_type}",
        "proxy.v1.request_region.{region}.{exchange_id}.{connection_type}",
        "proxy.v1.feedback.{exchange_id}.{connection_type}",
        "proxy.v1.health.{region}",
        "proxy.v1.feedback_dead.{exchange_id}.{connection_type}",
    ] {
        assert!(addresses.contains(&subject), "asyncapi lacks channel {subject}: {addresses:?}");
    }
    for name in [
        subject::FEEDBACK_STREAM,
        subject::HEALTH_BUCKET,
        subject::INVENTORY_BUCKET,
        subject::BUDGET_BUCKET,
        subject::AGGREGATOR_CONSUMER,
        subject::RESOLVER_SERVICE,
    ] {
        assert!(text.contains(name), "asyncapi does not mention {name}");
    }
    assert_local_refs_resolve(&doc, "asyncapi.yaml");
}

#[test]
fn openapi_describes_the_proxy_service_api() {
    let text = std::fs::read_to_string(schemas_dir().join("openapi.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/proxy/request", "post"),
        ("/api/v1/proxy/feedback", "post"),
        ("/api/v1/proxy/health", "post"),
        ("/api/v1/proxies", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "openapi lacks {method} {path}");
    }
    assert_local_refs_resolve(&doc, "openapi.yaml");
}

/// Every `$ref` to a file in `schemas/` names a file that exists, and every
/// message schema is referenced.
fn assert_local_refs_resolve(doc: &Value, name: &str) {
    fn walk<'a>(v: &'a Value, refs: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    refs.push(r);
                }
                map.values().for_each(|v| walk(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(doc, &mut refs);
    for r in &refs {
        if let Some(file) = r.split('#').next().filter(|f| !f.is_empty()) {
            assert!(schemas_dir().join(file.trim_start_matches("./")).exists(), "{name}: $ref {r} names no file");
        }
    }
    let needed = if name == "openapi.yaml" {
        vec!["proxy_request", "proxy_response", "proxy_feedback", "health_stats"]
    } else {
        message_schemas().iter().map(|s| s.file.trim_end_matches(".schema.json")).collect()
    };
    for stem in needed {
        assert!(refs.iter().any(|r| r.contains(stem)), "{name} never references {stem}");
    }
}
