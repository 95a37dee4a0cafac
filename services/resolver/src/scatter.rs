//! `region: "any"`: one request scattered to every region's resolvers, the best answer taken.
//!
//! A resolver with [`regions`](crate::ResolverSettings::regions) set answers a request for
//! region `any` by sending it, with `region` set to each region in turn, to
//! `proxy.v1.request_region.{region}.{exchange}.{connection_type}` — the subject only that
//! region's resolvers answer — all at once, and waiting for the replies until every region has
//! answered or [`any_region_deadline_ms`](crate::ResolverSettings::any_region_deadline_ms) has
//! passed. A dead region costs nothing: with no resolver left behind its subject, the server
//! answers "no responders" at once. The choice among the replies is
//! [`Resolver`](crate::Resolver)'s ([`rank`]): a healthy proxy before a degraded one and before
//! any fallback answer, then the lowest latency.
//!
//! The scatter lives in the resolver, not in the client libraries, so every client — the Rust
//! client, the Python package, a shell with the CLI — gets it by sending `region: "any"`.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proxybus_shared::subject::SERVICE_ERROR_CODE_HEADER;
use proxybus_shared::{Codec, Encoding, HealthState, ProxyRequest, ProxyResponse, Region, ResponseSource, subject};
use tokio::time::Instant;

/// One region's answer to a scattered request.
#[derive(Debug, Clone)]
pub(crate) struct RegionalAnswer {
    /// The region asked.
    pub region: Region,
    /// Its resolvers' answer.
    pub response: ProxyResponse,
    /// How long the answer took to come back.
    pub round_trip: Duration,
}

/// Sends a request to every region's resolvers and gathers their answers.
#[derive(Debug, Clone)]
pub(crate) struct RegionScatter {
    client: async_nats::Client,
    regions: Vec<Region>,
    deadline: Duration,
    codec: Codec,
}

impl RegionScatter {
    /// A scatter over `regions` on `client`, waiting at most `deadline` for the answers.
    pub(crate) fn new(client: async_nats::Client, regions: Vec<Region>, deadline: Duration) -> Self {
        Self { client, regions, deadline, codec: Codec::default() }
    }

    /// The longest wait for the answers.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Every answer (not error replies) that came back within the deadline, in the order they
    /// came. Regions without resolvers, with error replies or slower than the deadline are
    /// missing; they are logged at debug level.
    pub(crate) async fn gather(&self, request: &ProxyRequest) -> Vec<RegionalAnswer> {
        let started = Instant::now();
        let deadline = started + self.deadline;
        let mut pending: FuturesUnordered<_> = self.regions.iter().map(|region| self.ask(region, request)).collect();
        let mut answers = Vec::with_capacity(self.regions.len());
        loop {
            match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(Some(Ok(answer))) => answers.push(answer),
                Ok(Some(Err((region, reason)))) => {
                    tracing::debug!(%region, request_id = request.request_id.as_deref().unwrap_or_default(), reason, "region gave no answer");
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!(waiting = pending.len(), deadline = ?self.deadline, "regions did not answer in time");
                    break;
                }
            }
        }
        answers
    }

    async fn ask(&self, region: &Region, request: &ProxyRequest) -> Result<RegionalAnswer, (Region, String)> {
        let fail = |reason: String| (region.clone(), reason);
        let mut regional = request.clone();
        regional.region = Some(region.clone());
        let payload = self.codec.encode(Encoding::MsgPack, &regional).map_err(|err| fail(err.to_string()))?;
        let subject = subject::regional_request(region, &request.exchange_id, request.connection_type);
        let started = Instant::now();
        let reply = self
            .client
            .request_with_headers(subject, Encoding::MsgPack.headers(), payload)
            .await
            .map_err(|err| fail(err.to_string()))?;
        let round_trip = started.elapsed();
        if reply.headers.as_ref().is_some_and(|headers| headers.get(SERVICE_ERROR_CODE_HEADER).is_some()) {
            return Err(fail("error reply".into()));
        }
        let response: ProxyResponse =
            self.codec.decode(reply.headers.as_ref(), &reply.payload).map_err(|err| fail(err.to_string()))?;
        Ok(RegionalAnswer { region: region.clone(), response, round_trip })
    }
}

/// Rank of an answer, lower is better: `(tier, latency in µs)`.
///
/// Tier 0: a proxy from a proxy service (or its cache) that is healthy or not yet judged;
/// 1: such a proxy that is `degraded`; 2: a fallback proxy (stale cache, embedded settings);
/// 3: a direct connection. The latency is the proxy's latency EWMA from `PROXY_HEALTH` when
/// known, else the answer's round trip (a proxy far away is usually behind a slow region).
/// `condition` gives a proxy's health state and latency EWMA (ms).
pub(crate) fn rank(answer: &RegionalAnswer, condition: Option<(HealthState, Option<f64>)>) -> (u8, u64) {
    let response = &answer.response;
    let tier = match (response.proxy_url.is_some(), response.source) {
        (false, _) => 3,
        (true, ResponseSource::StaleCache | ResponseSource::Embedded) => 2,
        (true, _) if matches!(condition, Some((HealthState::Degraded, _))) => 1,
        (true, _) => 0,
    };
    let latency_us = match condition.and_then(|(_, latency)| latency) {
        Some(ms) if ms.is_finite() && ms >= 0.0 => (ms * 1000.0) as u64,
        _ => u64::try_from(answer.round_trip.as_micros()).unwrap_or(u64::MAX),
    };
    (tier, latency_us)
}

#[cfg(test)]
mod tests {
    use proxybus_shared::{FallbackPolicy, Metadata};

    use super::*;

    fn answer(region: &str, proxy: Option<&str>, source: ResponseSource, round_trip_ms: u64) -> RegionalAnswer {
        RegionalAnswer {
            region: region.parse().unwrap(),
            response: ProxyResponse {
                schema_version: 1,
                proxy_url: proxy.map(str::to_owned),
                proxy_id: proxy.map(proxybus_shared::proxy_id),
                strategy: "p2c_ewma".into(),
                ttl_seconds: 60,
                fallback_policy: FallbackPolicy::DirectConnection,
                source,
                region: Some(region.parse().unwrap()),
                request_id: String::new(),
                metadata: Metadata::new(),
                resolver_region: Some(region.parse().unwrap()),
            },
            round_trip: Duration::from_millis(round_trip_ms),
        }
    }

    #[test]
    fn healthy_proxies_first_then_the_lowest_latency() {
        let fast = answer("us-east", Some("http://a:1"), ResponseSource::Service, 90);
        let slow = answer("eu-west", Some("http://b:1"), ResponseSource::Cache, 5);
        // Known latencies decide over round trips.
        assert!(
            rank(&fast, Some((HealthState::Healthy, Some(20.0))))
                < rank(&slow, Some((HealthState::Healthy, Some(300.0))))
        );
        // Unknown latencies: the round trip.
        assert!(rank(&slow, None) < rank(&fast, None));
        // A degraded proxy loses to a healthy slower one.
        assert!(
            rank(&fast, Some((HealthState::Healthy, Some(300.0))))
                < rank(&slow, Some((HealthState::Degraded, Some(1.0))))
        );
        // Fallback answers and direct connections come last, in that order.
        let embedded = answer("ap-northeast", Some("http://c:1"), ResponseSource::Embedded, 1);
        let direct = answer("ap-northeast", None, ResponseSource::Direct, 1);
        assert!(rank(&slow, Some((HealthState::Degraded, Some(900.0)))) < rank(&embedded, None));
        assert!(rank(&embedded, None) < rank(&direct, None));
    }
}
