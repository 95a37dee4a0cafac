//! Load generators: `concurrency` workers, each sending its own list of
//! requests one after the other, every request timed into a latency histogram.
//! Every answer is decoded into a `ProxyResponse` (as a feed would) and must
//! name a proxy, so a fast error can never pass for a fast answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use proxybus_shared::subject::SERVICE_ERROR_CODE_HEADER;
use proxybus_shared::{Codec, Encoding, ProxyResponse};

use crate::report::{Round, latency_histogram};

/// How long one request may take before the round fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests of one round: worker `w` sends `work[w]` in order.
pub type Work = Vec<Vec<Bytes>>;

/// `total` requests spread over `concurrency` workers, worker `w` always sending `payload(w, i)`.
pub fn spread(concurrency: usize, total: usize, mut payload: impl FnMut(usize, usize) -> Bytes) -> Work {
    let per_worker = total.div_ceil(concurrency.max(1));
    let mut next = 0;
    (0..concurrency.max(1))
        .map(|w| {
            let n = per_worker.min(total - next.min(total));
            let list = (0..n).map(|i| payload(w, next + i)).collect();
            next += n;
            list
        })
        .collect()
}

/// The answers decoded; `proxy_id` of each must be set.
fn check(response: &ProxyResponse) -> anyhow::Result<()> {
    if response.proxy_id.is_none() {
        bail!("answer without a proxy: {response:?}");
    }
    Ok(())
}

async fn run_workers<F, Fut>(work: Work, request: F) -> anyhow::Result<(Round, Histogram<u64>)>
where
    F: Fn(Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let ops: usize = work.iter().map(Vec::len).sum();
    let started = Instant::now();
    let mut workers = Vec::with_capacity(work.len());
    for list in work {
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = latency_histogram();
            for payload in list {
                let at = Instant::now();
                tokio::time::timeout(REQUEST_TIMEOUT, request(payload)).await.context("request timed out")??;
                latency.saturating_record(at.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latency)
        }));
    }
    let mut all = latency_histogram();
    for worker in workers {
        all.add(worker.await??).expect("same bounds");
    }
    let round = Round { ops: ops as u64, seconds: started.elapsed().as_secs_f64() };
    Ok((round, all))
}

/// NATS request/reply: msgpack `ProxyRequest`s on `subject`, msgpack `ProxyResponse`s back.
pub async fn nats_requests(
    client: &async_nats::Client,
    subject: &str,
    work: Work,
) -> anyhow::Result<(Round, Histogram<u64>)> {
    nats_requests_as(client, subject, Encoding::MsgPack, work).await
}

/// As [`nats_requests`], with `ProxyRequest`s and `ProxyResponse`s in `encoding`
/// (JSON for the bare forwarder, which relays bytes to the pool's JSON API).
pub async fn nats_requests_as(
    client: &async_nats::Client,
    subject: &str,
    encoding: Encoding,
    work: Work,
) -> anyhow::Result<(Round, Histogram<u64>)> {
    let client = client.clone();
    let subject: Arc<str> = subject.into();
    let headers = encoding.headers();
    let codec = Codec::default();
    run_workers(work, move |payload| {
        let (client, subject, headers) = (client.clone(), subject.clone(), headers.clone());
        async move {
            let reply = client.request_with_headers(subject.to_string(), headers, payload).await?;
            if let Some(code) = reply.headers.as_ref().and_then(|h| h.get(SERVICE_ERROR_CODE_HEADER)) {
                bail!("error reply {code}: {}", String::from_utf8_lossy(&reply.payload));
            }
            check(&codec.decode_as::<ProxyResponse>(encoding, &reply.payload)?)
        }
    })
    .await
}

/// HTTP: JSON `ProxyRequest`s POSTed to `url` with `client` (which carries the auth header).
pub async fn http_requests(client: &reqwest::Client, url: &str, work: Work) -> anyhow::Result<(Round, Histogram<u64>)> {
    let client = client.clone();
    let url: Arc<str> = url.into();
    run_workers(work, move |body| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client
                .post(url.as_ref())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await?
                .error_for_status()?;
            let bytes = response.bytes().await?;
            check(&serde_json::from_slice::<ProxyResponse>(&bytes)?)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_gives_every_request_once() {
        let work = spread(3, 10, |w, i| Bytes::from(format!("{w}:{i}")));
        assert_eq!(work.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut seen: Vec<String> = work
            .iter()
            .flatten()
            .map(|b| String::from_utf8(b.to_vec()).unwrap().split(':').nth(1).unwrap().to_owned())
            .collect();
        seen.sort_by_key(|s| s.parse::<usize>().unwrap());
        assert_eq!(seen, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }
}
