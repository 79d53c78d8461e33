//! The server's own time limits: slow clients and slow requests.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{Sandbox, TestApp, app_with_slow_store, assert_problem};

/// An app started with `flags`, and a plain TCP connection to it for
/// writing requests byte by byte.
async fn raw_connection(flags: &[&str]) -> (TestApp, TcpStream) {
    let sandbox = Sandbox::new().await;
    let args = sandbox.serve_args(flags);
    let state = svc::serve::components(&args).unwrap();
    let app = TestApp::start(sandbox, &args, state);
    let address = app.address.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&address).await.unwrap();
    (app, stream)
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let (_app, mut stream) = raw_connection(&["--header-timeout-ms", "300"]).await;
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    // The server closes the connection (possibly after a 408); it never waits forever.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the connection was still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let text = String::from_utf8_lossy(&buffer);
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn a_keep_alive_connection_lives_while_used_and_is_closed_once_idle() {
    let (_app, mut stream) = raw_connection(&["--header-timeout-ms", "400"]).await;
    let mut buffer = vec![0u8; 4096];
    // Requests 250 ms apart, well past the timeout in all: each one is progress.
    for _ in 0..5 {
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let read = stream.read(&mut buffer).await.unwrap();
        let text = String::from_utf8_lossy(&buffer[..read]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Then silence: closed after the timeout (checked every quarter of it).
    let idle = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    assert_eq!(read.expect("still open after 5 s idle").unwrap(), 0);
    assert!(
        idle.elapsed() >= Duration::from_millis(140),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_is_answered_503_and_nothing_is_queued() {
    let (app, mut stream) = raw_connection(&["--request-timeout-ms", "300"]).await;
    stream
        .write_all(
            b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"value\": ",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    let read = read
        .expect("answered while the body was still incomplete")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let text = String::from_utf8_lossy(&buffer[..read]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert_eq!(
        app.sandbox
            .ready_messages(&app.sandbox.topology.queue)
            .await,
        0
    );
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_503_with_retry_after() {
    // Each database read takes 200 ms; the request limit is 50 ms.
    let (app, _counting, message) = app_with_slow_store(&["--request-timeout-ms", "50"]).await;
    let response = app
        .client
        .get(app.url(&format!("/data/{}", message.id)))
        .send()
        .await
        .unwrap();
    // A read that ran its course would be a 200: the 503 is the cut.
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503).await;
}
