//! Codec micro-benchmarks: encode and decode of every contract message, in
//! MessagePack (named fields, the default on the bus) and JSON.

use criterion::{BenchmarkId, Criterion};
use proxybus_aggregator::{FeedbackFolder, HealthPolicy};
use proxybus_bench::feedback::{event, fixtures};
use proxybus_shared::{
    Codec, ConnectionType, Encoding, ErrorCode, ErrorReply, ProxyRequest, ProxyResponse, ProxyUrl, ResponseSource,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn messages<T: Serialize + DeserializeOwned>(c: &mut Criterion, name: &str, message: &T) {
    let codec = Codec::default();
    let mut group = c.benchmark_group(name);
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        let label = match encoding {
            Encoding::MsgPack => "msgpack",
            Encoding::Json => "json",
        };
        let bytes = codec.encode(encoding, message).expect("encodes");
        group.bench_with_input(BenchmarkId::new("encode", label), message, |b, m| {
            b.iter(|| codec.encode(encoding, std::hint::black_box(m)).expect("encodes"));
        });
        group.bench_with_input(BenchmarkId::new("decode", label), &bytes, |b, bytes| {
            b.iter(|| codec.decode_as::<T>(encoding, std::hint::black_box(bytes)).expect("decodes"));
        });
    }
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut request =
        ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Websocket, "cryptofeed-host-1-4242");
    request.request_id = Some(uuid::Uuid::new_v4().to_string());
    messages(c, "ProxyRequest", &request);

    let url = ProxyUrl::parse("http://feed:secret@198.51.0.1:3128").unwrap();
    let response = ProxyResponse {
        schema_version: 1,
        proxy_url: Some(url.expose().to_owned()),
        proxy_id: Some(url.id()),
        strategy: "sticky".into(),
        ttl_seconds: 300,
        fallback_policy: Default::default(),
        source: ResponseSource::Cache,
        region: Some("us-east".parse().unwrap()),
        request_id: uuid::Uuid::new_v4().to_string(),
        metadata: Default::default(),
        resolver_region: None,
    };
    messages(c, "ProxyResponse", &response);

    let error = ErrorReply::new(ErrorCode::BadRequest, "exchange_id does not match the subject", Some("r-1".into()));
    messages(c, "ErrorReply", &error);

    let proxies = fixtures(10);
    messages(c, "ProxyFeedback", &event(1, &proxies));

    // Health stats as the aggregator publishes them, after a few hundred events.
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    let now = chrono::Utc::now();
    for i in 0..500 {
        folder.fold(&event(i, &proxies), i + 1, now);
    }
    let stats = folder.proxies().next().expect("folded").stats.clone();
    messages(c, "HealthStats", &stats);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    codec(&mut criterion);
    criterion.final_summary();
}
