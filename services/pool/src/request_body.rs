//! What a handler leaves unread of an HTTP/1 request body is read before the
//! answer leaves, so that the connection stays usable for the client's next request.
//!
//! Many answers are given before the body is read to its end: a 413 over the body
//! limit (the handler stops at the limit), a 401 or 403 (the body is never read), a
//! 404 or 405, a 408. hyper then reads what is already buffered and, if the body is
//! not complete, closes the connection after the answer, although that answer
//! carried no `Connection: close`: the client has just received a keep-alive answer,
//! puts the connection back into its pool, and its next request on it fails with
//! `IncompleteMessage` or `Broken pipe` (the unread bytes make the kernel reset the
//! connection instead of closing it). Any client can meet it: a body a little
//! larger than what arrived with the request's head is enough.
//!
//! [`finish_reading_body`] reads the rest (up to [`LEFTOVER_MAX_BYTES`] within
//! [`LEFTOVER_MAX_TIME`]; nginx's lingering close does the same after its answer)
//! and drops it; past those bounds, or when the client sent `Expect: 100-continue`
//! and was never asked for the body, the answer says `Connection: close`, so the
//! client does not reuse the connection. HTTP/2 needs none of this: an unread stream is reset
//! on its own and the connection lives on.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body::{Frame, SizeHint};

/// The most of a body left unread by a handler that is read and dropped before
/// the answer; a body with more left closes its connection.
pub(crate) const LEFTOVER_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The longest the rest of a body is read for; a slower client gets
/// `Connection: close`.
pub(crate) const LEFTOVER_MAX_TIME: Duration = Duration::from_secs(2);

/// Middleware: runs the request, then reads what the handler left of an HTTP/1
/// request body (see the module's doc), or marks the answer `Connection: close`.
pub(crate) async fn finish_reading_body(request: Request, next: Next) -> Response {
    if request.version() >= Version::HTTP_2 {
        return next.run(request).await;
    }
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = request.into_parts();
    let held = HeldBody::new(body);
    let mut response = next.run(Request::from_parts(parts, Body::new(held.clone()))).await;
    let Some(rest) = held.take() else { return response };
    if http_body::Body::is_end_stream(&rest) {
        return response;
    }
    // A client that waits for `100 Continue` before sending the body and was never
    // asked for it (hyper asks when the body is first read) sends nothing more:
    // reading now would ask it for a body only to drop it.
    let asked_for_body = !expects_continue || held.was_read();
    let keep_alive = asked_for_body && read_to_end(rest).await;
    if !keep_alive {
        tracing::debug!("request body left unread: closing the connection after the answer");
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `body` to its end within the bounds; whether it ended.
async fn read_to_end(body: Body) -> bool {
    let mut chunks = body.into_data_stream();
    let all = async {
        let mut read = 0_usize;
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len();
            if read > LEFTOVER_MAX_BYTES {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(LEFTOVER_MAX_TIME, all).await.unwrap_or(false)
}

/// A request body the handler reads while the middleware keeps hold of it: when
/// the handler drops its side, what it did not read stays here.
#[derive(Clone)]
struct HeldBody {
    body: Arc<Mutex<Option<Body>>>,
    read: Arc<AtomicBool>,
}

impl HeldBody {
    fn new(body: Body) -> Self {
        Self { body: Arc::new(Mutex::new(Some(body))), read: Arc::default() }
    }

    /// Takes the body back; the handler's side then reads as ended.
    fn take(&self) -> Option<Body> {
        self.body.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Whether the handler asked for a frame of the body.
    fn was_read(&self) -> bool {
        self.read.load(Ordering::Relaxed)
    }
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.read.store(true, Ordering::Relaxed);
        let mut body = self.body.lock().unwrap_or_else(PoisonError::into_inner);
        match body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}
