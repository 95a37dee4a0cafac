//! Request handling on NATS: one request in, one reply out, per the wire contract,
//! and the serving loop that reads the endpoints ([`InFlight::serve`]).
//!
//! A request is checked before anything else happens: payload size
//! (`payload_too_large`), `Content-Type`, decoding, subject tokens against body
//! fields, `client_id` and `request_id` shape (`bad_request`). Replies are in
//! the request's encoding with its `Content-Type`; error replies carry the
//! `Nats-Service-Error` / `Nats-Service-Error-Code` headers and an `ErrorReply` body.
//!
//! [`Responder::answer_now`] runs in the endpoint's read loop and answers in
//! place whatever needs no upstream call (refusals, cache hits, embedded and
//! direct answers): a decode, a cache lookup and an encode, like a bare
//! responder. Only a request that needs upstream comes back as [`Deferred`], for
//! [`Responder::answer_later`] in its own task, so a slow upstream call never
//! holds up the hits behind it. A task per request would cost a cross-thread
//! wake-up and a context switch each, more than the work itself. At most
//! `max_in_flight` such tasks run at once; beyond it the subscription is not read.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::service::Request;
use async_nats::service::endpoint::Endpoint;
use bytes::Bytes;
use futures::future::Either;
use futures::{FutureExt, Stream, StreamExt};
use proxybus_shared::subject::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use proxybus_shared::{
    Codec, ConnectionType, DecodeError, Encoding, ErrorCode, ErrorReply, ExchangeId, ProxyRequest, subject,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

use crate::replies::EncodedReplies;
use crate::resolver::{Answer, Resolver};
use crate::settings::MAX_CLIENT_ID;

/// Longest `request_id` accepted.
const MAX_REQUEST_ID: usize = 128;

/// A request refused before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Error class.
    pub(crate) code: ErrorCode,
    /// Explanation (no credentials: request bodies carry none).
    pub(crate) message: String,
    /// The request's id, when the body could be read.
    pub(crate) request_id: Option<String>,
}

impl Refusal {
    fn bad(message: impl Into<String>, request_id: Option<String>) -> Self {
        Self { code: ErrorCode::BadRequest, message: message.into(), request_id }
    }
}

/// Request ids for requests that come without one: a random 64-bit prefix per
/// process and a counter, `{prefix:016x}-{n}`. Unique across processes (by the
/// prefix) and within one (by the counter), and no system call per request as a
/// random UUID would be.
#[derive(Debug)]
pub(crate) struct RequestIds {
    /// `{prefix:016x}-`, formatted once.
    prefix: String,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { prefix: format!("{:016x}-", rand::random::<u64>()), next: AtomicU64::new(1) }
    }
}

impl RequestIds {
    /// The next id.
    pub(crate) fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        let mut id = String::with_capacity(self.prefix.len() + digits.len());
        id.push_str(&self.prefix);
        id.push_str(digits);
        id
    }
}

/// Checks a request message and returns the request with its `request_id` set
/// (a new one from `ids` when it has none). `announced` is what the message's
/// `Content-Type` says ([`Encoding::from_headers`]), read once by the caller,
/// which also needs it for the reply.
pub(crate) fn validate(
    codec: &Codec,
    ids: &RequestIds,
    subject: &str,
    announced: Result<Encoding, &DecodeError>,
    payload: &[u8],
) -> Result<ProxyRequest, Refusal> {
    if payload.len() > codec.max_payload() {
        return Err(Refusal {
            code: ErrorCode::PayloadTooLarge,
            message: format!(
                "request body of {} bytes is over the limit of {} bytes",
                payload.len(),
                codec.max_payload()
            ),
            request_id: None,
        });
    }
    let encoding = announced.map_err(|err| Refusal::bad(err.to_string(), None))?;
    let mut request: ProxyRequest = codec
        .decode_as(encoding, payload)
        .map_err(|err| Refusal::bad(shorten(&format!("malformed request: {err}")), None))?;
    let bad_subject = |err: subject::SubjectError, request: &ProxyRequest| {
        Refusal::bad(shorten(&err.to_string()), request.request_id.clone())
    };
    if subject::is_request_for(subject, &request.exchange_id, request.connection_type) {
        // The usual case, checked without parsing: the subject names what the body asks for.
    } else if is_regional(subject) {
        // Sent to one region's resolvers: the body asks for that region, or for none.
        let (region, exchange, connection_type) =
            subject::parse_regional_request(subject).map_err(|err| bad_subject(err, &request))?;
        match &request.region {
            None => request.region = Some(region),
            Some(asked) if *asked == region => {}
            Some(asked) => {
                let refusal = format!("region {asked} does not match the subject's {region}");
                return Err(Refusal::bad(refusal, request.request_id.clone()));
            }
        }
        check_tokens(&request, &exchange, connection_type)?;
    } else {
        let (exchange, connection_type) = subject::parse_request(subject).map_err(|err| bad_subject(err, &request))?;
        check_tokens(&request, &exchange, connection_type)?;
    }

    if request.client_id.is_empty()
        || request.client_id.len() > MAX_CLIENT_ID
        || request.client_id.chars().any(char::is_control)
    {
        // Control characters (NUL, line breaks) would reach logs and cache keys as they are.
        return Err(Refusal::bad(
            format!("client_id must be 1 to {MAX_CLIENT_ID} printable characters"),
            request.request_id.clone(),
        ));
    }
    if let Some(problem) = request.session_key_problem() {
        return Err(Refusal::bad(problem, request.request_id.clone()));
    }
    if request.exclude_proxy_ids.len() > ProxyRequest::MAX_EXCLUDED {
        return Err(Refusal::bad(
            format!("exclude_proxy_ids lists more than {} proxies", ProxyRequest::MAX_EXCLUDED),
            request.request_id.clone(),
        ));
    }
    match &request.request_id {
        Some(id) if id.is_empty() || id.len() > MAX_REQUEST_ID || id.chars().any(char::is_control) => {
            return Err(Refusal::bad(format!("request_id must be 1 to {MAX_REQUEST_ID} printable characters"), None));
        }
        Some(_) => {}
        None => request.request_id = Some(ids.next_id()),
    }
    Ok(request)
}

/// The subject's tokens against the body: `exchange_id` and `connection_type` must
/// be the subject's.
fn check_tokens(request: &ProxyRequest, exchange: &ExchangeId, connection_type: ConnectionType) -> Result<(), Refusal> {
    let request_id = || request.request_id.clone();
    if *exchange != request.exchange_id {
        return Err(Refusal::bad(
            format!("exchange_id {} does not match the subject's {exchange}", request.exchange_id),
            request_id(),
        ));
    }
    if connection_type != request.connection_type {
        return Err(Refusal::bad(
            format!("connection_type {} does not match the subject's {connection_type}", request.connection_type),
            request_id(),
        ));
    }
    Ok(())
}

/// Whether `subject` is a region-addressed request subject (`proxy.v1.request_region.…`).
fn is_regional(subject: &str) -> bool {
    subject.strip_prefix(subject::REGIONAL_REQUEST_PREFIX).is_some_and(|rest| rest.starts_with('.'))
}

fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Answers requests: in place when no upstream call is needed, in a task otherwise.
#[derive(Debug)]
pub(crate) struct Responder {
    resolver: Arc<Resolver>,
    codec: Codec,
    ids: RequestIds,
    /// Cache-hit replies kept encoded but for their `request_id`.
    replies: EncodedReplies,
}

/// A validated request that needs an upstream call: for [`Responder::answer_later`].
#[derive(Debug)]
pub(crate) struct Deferred {
    request: Request,
    resolved: ProxyRequest,
    encoding: Encoding,
    started: Instant,
    span: Span,
}

impl Responder {
    /// A responder for `resolver`'s answers, decoding with `codec`.
    pub(crate) fn new(resolver: Arc<Resolver>, codec: Codec) -> Self {
        Self { resolver, codec, ids: RequestIds::default(), replies: EncodedReplies::default() }
    }

    /// Answers `request` now if that needs no upstream call (an error reply, a
    /// cache hit, an embedded or direct answer); otherwise returns it validated,
    /// for [`answer_later`](Self::answer_later). Never panics outward (a panic
    /// becomes an `internal` reply).
    pub(crate) async fn answer_now(&self, request: Request) -> Option<Deferred> {
        let started = Instant::now();
        let message = &request.message;
        let announced = Encoding::from_headers(message.headers.as_ref());
        let encoding = announced.as_ref().copied().unwrap_or_default();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let resolved =
                validate(&self.codec, &self.ids, &message.subject, announced.as_ref().copied(), &message.payload)?;
            let span = resolve_span(&resolved);
            let answer = span.in_scope(|| self.resolver.resolve_now(&resolved));
            Ok(match answer {
                Some(answer) => Err(answer),
                None => Ok((resolved, span)),
            })
        }));
        let outcome = match outcome {
            Ok(Ok(Ok((resolved, span)))) => return Some(Deferred { request, resolved, encoding, started, span }),
            Ok(Ok(Err(answer))) => Ok(Ok(answer)),
            Ok(Err(refusal)) => Ok(Err(refusal)),
            Err(panic) => Err(panic),
        };
        self.reply(&request, encoding, started, outcome).await;
        None
    }

    /// Answers a request that needs upstream (meant to run in its own task).
    /// Never panics outward (a panic becomes an `internal` reply).
    pub(crate) async fn answer_later(&self, deferred: Deferred) {
        let Deferred { request, resolved, encoding, started, span } = deferred;
        let request_id = resolved.request_id.clone();
        let resolution = async {
            self.resolver.resolve(&resolved).await.map(Answer::Made).map_err(|err| Refusal {
                code: err.code(),
                message: err.to_string(),
                request_id,
            })
        };
        let outcome = AssertUnwindSafe(resolution.instrument(span)).catch_unwind().await;
        self.reply(&request, encoding, started, outcome).await;
    }

    async fn reply(
        &self,
        request: &Request,
        encoding: Encoding,
        started: Instant,
        outcome: std::thread::Result<Result<Answer, Refusal>>,
    ) {
        let metrics = self.resolver.metrics();
        let (reply, headers) = match outcome {
            Ok(Ok(answer)) => {
                metrics.answered(answer.source(), started.elapsed());
                (self.replies.encode(&self.codec, encoding, &answer), encoding.headers())
            }
            Ok(Err(refusal)) => {
                metrics.failed(refusal.code, started.elapsed());
                error_reply(&self.codec, encoding, refusal)
            }
            Err(_) => {
                tracing::error!(subject = %request.message.subject, "request handler panicked");
                metrics.failed(ErrorCode::Internal, started.elapsed());
                error_reply(
                    &self.codec,
                    encoding,
                    Refusal { code: ErrorCode::Internal, message: "internal error".into(), request_id: None },
                )
            }
        };
        let body = match reply {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(error = %err, "cannot encode a reply");
                Bytes::new()
            }
        };
        if let Err(err) = request.respond_with_headers(Ok(body), headers).await {
            tracing::debug!(error = %err, "cannot send the reply (no reply subject, or the connection is gone)");
        }
    }
}

/// How long the endpoints are read after unsubscribing, for requests already delivered:
/// the read stops at the first gap this long.
const DELIVERED_GAP: Duration = Duration::from_millis(200);

/// The requests being answered: the [`Responder`], the tasks answering those that need
/// upstream, and the `max_in_flight` slots those tasks hold.
#[derive(Debug)]
pub(crate) struct InFlight {
    responder: Arc<Responder>,
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
}

impl InFlight {
    /// Answers with `responder`, at most `max_in_flight` requests waiting for upstream at once.
    pub(crate) fn new(responder: Responder, max_in_flight: usize) -> Self {
        Self {
            responder: Arc::new(responder),
            tasks: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(max_in_flight)),
        }
    }

    /// The serving loop: reads every endpoint and answers each request until `shutdown`
    /// completes (or the endpoints end). Answers that need no upstream call are given
    /// in place, in this loop; a request that needs upstream gets a task and a slot,
    /// and while every slot is taken the endpoints are not read.
    pub(crate) async fn serve(&self, endpoints: &mut [Endpoint], shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut requests = merged(endpoints);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                request = requests.next() => match request {
                    Some(request) => {
                        if let Some(deferred) = self.responder.answer_now(request).await {
                            // Bound the work in flight: wait for a slot before reading on.
                            let slot = self.slots.clone().acquire_owned().await.ok();
                            self.answer_later(deferred, slot);
                        }
                    }
                    None => break,
                },
            }
        }
    }

    /// After the endpoints are stopped: answers the requests already delivered to this
    /// process (without waiting for slots), until none comes for [`DELIVERED_GAP`].
    pub(crate) async fn answer_delivered(&self, endpoints: &mut [Endpoint]) {
        let mut delivered = merged(endpoints);
        while let Ok(Some(request)) = tokio::time::timeout(DELIVERED_GAP, delivered.next()).await {
            if let Some(deferred) = self.responder.answer_now(request).await {
                self.answer_later(deferred, None);
            }
        }
    }

    /// Waits up to `grace` for the requests in flight; those still running are abandoned.
    pub(crate) async fn finish(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(in_flight = self.tasks.len(), "grace timeout; abandoning requests in flight");
        }
    }

    fn answer_later(&self, deferred: Deferred, slot: Option<OwnedSemaphorePermit>) {
        let responder = self.responder.clone();
        self.tasks.spawn(async move {
            let _slot = slot;
            responder.answer_later(deferred).await;
        });
    }
}

/// The requests of all `endpoints` as one stream. A resolver has one endpoint, or
/// two with a region (`request_region`): those are read directly or through
/// `select`, as `select_all` (a `FuturesUnordered` with a waker per stream) cost
/// 4 % of the serving loop's samples at concurrency 64 (docs/benchmarks.md).
fn merged(endpoints: &mut [Endpoint]) -> impl Stream<Item = Request> + Unpin + '_ {
    match endpoints {
        [one] => Either::Left(one),
        [first, second] => Either::Right(Either::Left(futures::stream::select(first, second))),
        more => Either::Right(Either::Right(futures::stream::select_all(more.iter_mut()))),
    }
}

/// The span of one request: `resolve{request_id, exchange, connection_type}`, at
/// debug level (at info, recording it costs as much as answering a cache hit).
fn resolve_span(request: &ProxyRequest) -> Span {
    tracing::debug_span!(
        "resolve",
        request_id = request.request_id.as_deref().unwrap_or_default(),
        exchange = %request.exchange_id,
        connection_type = %request.connection_type,
    )
}

fn error_reply(
    codec: &Codec,
    encoding: Encoding,
    refusal: Refusal,
) -> (Result<Bytes, proxybus_shared::codec::EncodeError>, HeaderMap) {
    let mut headers = encoding.headers();
    // Header values cannot hold line breaks.
    let header_message: String = refusal.message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    headers.insert(SERVICE_ERROR_HEADER, header_message.as_str());
    headers.insert(SERVICE_ERROR_CODE_HEADER, refusal.code.status().to_string().as_str());
    let body = ErrorReply::new(refusal.code, refusal.message, refusal.request_id);
    (codec.encode(encoding, &body), headers)
}

#[cfg(test)]
mod tests {
    use proxybus_shared::ConnectionType;

    use super::*;

    fn body(exchange: &str, connection_type: ConnectionType) -> Vec<u8> {
        let request = ProxyRequest::new(exchange.parse().unwrap(), connection_type, "feed-1");
        Codec::default().encode(Encoding::MsgPack, &request).unwrap().to_vec()
    }

    #[test]
    fn subject_and_body_must_agree() {
        let codec = Codec::default();
        let ids = RequestIds::default();
        let validate = |subject: &str, payload: &[u8]| validate(&codec, &ids, subject, Ok(Encoding::MsgPack), payload);
        let ok = validate("proxy.v1.request.binance.http", &body("binance", ConnectionType::Http)).unwrap();
        assert!(ok.request_id.is_some(), "a request id is made when absent");
        let again = validate("proxy.v1.request.binance.http", &body("binance", ConnectionType::Http)).unwrap();
        assert_ne!(ok.request_id, again.request_id, "each request gets its own id");
        let err = validate("proxy.v1.request.kraken.http", &body("binance", ConnectionType::Http)).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("kraken"), "{}", err.message);
        let err = validate("proxy.v1.request.binance.websocket", &body("binance", ConnectionType::Http)).unwrap_err();
        assert!(err.message.contains("connection_type"), "{}", err.message);
        let err = validate("proxy.v1.request.binance.ftp", &body("binance", ConnectionType::Http)).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_regional_subject_sets_or_checks_the_region() {
        let codec = Codec::default();
        let ids = RequestIds::default();
        let validate = |subject: &str, payload: &[u8]| validate(&codec, &ids, subject, Ok(Encoding::MsgPack), payload);
        let subject = "proxy.v1.request_region.eu-west.binance.http";
        let ok = validate(subject, &body("binance", ConnectionType::Http)).unwrap();
        assert_eq!(ok.region.as_ref().map(|r| r.as_str()), Some("eu-west"), "no region in the body: the subject's");
        let mut request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "feed-1");
        request.region = Some("any".parse().unwrap());
        let any = Codec::default().encode(Encoding::MsgPack, &request).unwrap();
        let err = validate(subject, &any).unwrap_err();
        assert!(err.message.contains("does not match the subject's eu-west"), "{}", err.message);
        let err = validate("proxy.v1.request_region.eu-west.kraken.http", &body("binance", ConnectionType::Http));
        assert!(err.unwrap_err().message.contains("kraken"));
        assert!(validate("proxy.v1.request_region.binance.http", &body("binance", ConnectionType::Http)).is_err());
    }

    #[test]
    fn size_is_checked_before_decoding() {
        let (codec, ids) = (Codec::new(1024), RequestIds::default());
        let msgpack = Ok(Encoding::MsgPack);
        let err = validate(&codec, &ids, "proxy.v1.request.binance.http", msgpack, &vec![0xc1; 2048]).unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        let err = validate(&codec, &ids, "proxy.v1.request.binance.http", msgpack, &[0xc1]).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let unknown = DecodeError::UnsupportedContentType("text/plain".into());
        let err = validate(&codec, &ids, "proxy.v1.request.binance.http", Err(&unknown), &[0xc1]).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("text/plain"), "{}", err.message);
    }

    #[test]
    fn request_ids_are_the_process_prefix_and_a_counter() {
        let ids = RequestIds::default();
        let (first, second) = (ids.next_id(), ids.next_id());
        let (prefix, n) = first.split_once('-').unwrap();
        assert_eq!(prefix.len(), 16);
        assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        assert_eq!(n, "1");
        assert_eq!(second, format!("{prefix}-2"));
    }
}
