//! A kept-alive connection survives an answer given before the request body was
//! read to its end (a 413 over the body limit, a 401): the service reads the rest
//! first, or says `Connection: close`. Before, hyper closed such a connection
//! right after a keep-alive answer, and the client's next request on it failed with
//! `IncompleteMessage` or `Broken pipe` (the intermittent failure of
//! `tests/tests/bad_input.rs`).

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const MIB: usize = 1024 * 1024;

/// The head of a `POST` of a JSON body of `length` bytes to `path`, with `extra` headers.
fn post_head(path: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{extra}\r\n"
    )
}

/// Reads one answer (head and a `Content-Length` body) from `stream`: its head, lower-cased.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<String> {
    let mut received = Vec::new();
    let mut buf = [0_u8; 4096];
    let mut fill = async |received: &mut Vec<u8>| match stream.read(&mut buf).await? {
        0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        n => {
            received.extend_from_slice(&buf[..n]);
            Ok(())
        }
    };
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        fill(&mut received).await?;
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    while received.len() < head_end + length {
        fill(&mut received).await?;
    }
    Ok(head)
}

/// Sends `head` and `body` on `stream` while reading the answer, which may come
/// before the body is all sent: the answer's head, lower-cased.
async fn post(stream: &mut TcpStream, head: &str, body: &[u8]) -> String {
    let (mut reader, mut writer) = stream.split();
    let send = async {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(body).await
    };
    let (sent, answer) = tokio::join!(send, read_answer(&mut reader));
    sent.unwrap_or_else(|err| panic!("the {}-byte body is all sent: {err}", body.len()));
    answer.unwrap_or_else(|err| panic!("an answer to the {}-byte body: {err}", body.len()))
}

/// A `GET /healthz` on `stream`, which must be answered 200.
async fn healthz_answers(stream: &mut TcpStream, after: &str) {
    let asked = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let head = match asked {
        Ok(()) => read_answer(stream).await,
        Err(err) => Err(err),
    };
    let head = head.unwrap_or_else(|err| panic!("after {after}, the connection is gone: {err}"));
    assert!(head.starts_with("http/1.1 200"), "after {after}: {head}");
}

#[tokio::test]
async fn an_oversized_body_is_read_before_the_413_and_the_connection_serves_the_next_request() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    for (path, size) in [("/api/v1/proxy/health", 2 * MIB), ("/api/v1/proxy/request", MIB)] {
        let head = post_head(path, size, &format!("Authorization: Bearer {TOKEN}\r\n"));
        let answer = post(&mut stream, &head, &vec![b'['; size]).await;
        assert!(answer.starts_with("http/1.1 413"), "{answer}");
        assert!(!answer.contains("connection: close"), "the connection is kept: {answer}");
        healthz_answers(&mut stream, &format!("a 413 on a {size}-byte body to {path}")).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn an_unread_body_of_an_unauthorized_request_does_not_break_the_connection() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let answer = post(&mut stream, &post_head("/api/v1/proxy/request", MIB, ""), &vec![b' '; MIB]).await;
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    healthz_answers(&mut stream, "a 401 on an unread 1 MiB body").await;
    app.stop().await;
}

/// The same kind of early answer, from the router: no such route (404), a route
/// that takes no `POST` (405); the handler never reads the 1 MiB body either way.
#[tokio::test]
async fn an_unread_body_of_a_404_or_a_405_does_not_break_the_connection() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    for (path, status) in [("/api/v1/no-such-route", "404"), ("/healthz", "405")] {
        let answer = post(&mut stream, &post_head(path, MIB, &auth), &vec![b' '; MIB]).await;
        assert!(answer.starts_with(&format!("http/1.1 {status}")), "{path}: {answer}");
        assert!(!answer.contains("connection: close"), "the connection is kept: {answer}");
        healthz_answers(&mut stream, &format!("a {status} on an unread 1 MiB body to {path}")).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_connection_close() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // 1 MiB announced, 128 KiB sent (over the 64 KiB limit), then nothing.
    let head = post_head("/api/v1/proxy/request", MIB, &format!("Authorization: Bearer {TOKEN}\r\n"));
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; 128 * 1024]).await.unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut stream)).await.unwrap().unwrap();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "the client is told not to reuse the connection: {answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "the rest is waited for a bounded time");
    app.stop().await;
}

#[tokio::test]
async fn a_client_waiting_for_100_continue_is_not_asked_for_a_body_that_would_be_dropped() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(post_head("/api/v1/proxy/request", MIB, "Expect: 100-continue\r\n").as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(1), read_answer(&mut stream)).await.unwrap().unwrap();
    assert!(answer.starts_with("http/1.1 401"), "no `100 continue` first: {answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    app.stop().await;
}

/// What `tests/tests/bad_input.rs` does, many times: a pooled reqwest client sends
/// bodies over the limit, each followed by a small request that reuses the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_sending_oversized_bodies_never_meets_a_closed_connection() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    let small = serde_json::to_value(request("binance", "c")).unwrap();
    let mut failures = Vec::new();
    for round in 0..50 {
        for size in [MIB, 2 * MIB] {
            let oversized = app
                .client
                .post(format!("{}/api/v1/proxy/health", app.base))
                .header("content-type", "application/json")
                .body(vec![b'['; size])
                .send()
                .await;
            match oversized {
                Ok(answer) => assert_eq!(answer.status(), 413),
                Err(err) => failures.push(format!("round {round}, {size} bytes: {err:?}")),
            }
            match app.client.post(format!("{}/api/v1/proxy/request", app.base)).json(&small).send().await {
                Ok(answer) => assert_eq!(answer.status(), 200),
                Err(err) => failures.push(format!("round {round}, the request after {size} bytes: {err:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} failed requests: {failures:#?}", failures.len());
    app.stop().await;
}
