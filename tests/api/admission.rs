//! Admission control: overload shedding, rate limiting, API keys, CORS.

use std::time::Duration;

use crate::helpers::{TestApp, app_with_slow_store, assert_problem};

#[tokio::test]
async fn past_the_in_flight_bound_requests_are_shed_at_once_and_health_still_answers() {
    // Each uncached read takes 200 ms; one may be in flight.
    let (app, _counting, message) = app_with_slow_store(&["--max-in-flight", "1"]).await;
    let client = app.client.clone();
    let url = app.url(&format!("/data/{}", message.id));
    let first = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;

    let shed = app.client.get(app.url("/data")).send().await.unwrap();
    assert!(
        !first.is_finished(),
        "shed at once, while the first request still holds its place"
    );
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_problem(shed, 503).await;
    let (status, _) = app.get("/health/live").await;
    assert_eq!(status, 200);

    assert_eq!(first.await.unwrap().status(), 200);
    let (status, _) = app.get("/data").await;
    assert_eq!(
        status, 200,
        "capacity is back once the first request is done"
    );
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let app = TestApp::spawn_with(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "2"]).await;
    assert_eq!(app.get("/data").await.0, 200);
    assert_eq!(app.get("/data").await.0, 200);
    let limited = app.client.get(app.url("/data")).send().await.unwrap();
    assert_eq!(limited.headers()["retry-after"], "1");
    // Refusals are observed like any answer: they carry a request id.
    assert!(limited.headers().contains_key("x-request-id"));
    assert_problem(limited, 429).await;
    // Probes are never limited.
    assert_eq!(app.get("/health/ready").await.0, 200);
}

/// Two requests to `/data` naming different clients in `X-Forwarded-For`,
/// then one naming the first again: their statuses.
async fn two_forwarded_clients(app: &TestApp) -> [u16; 3] {
    let mut statuses = [0; 3];
    for (status, client) in
        statuses
            .iter_mut()
            .zip(["198.51.100.1", "198.51.100.2", "198.51.100.1"])
    {
        let response = app
            .client
            .get(app.url("/data"))
            .header("x-forwarded-for", client)
            .send()
            .await
            .unwrap();
        *status = response.status().as_u16();
    }
    statuses
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate() {
    let limited = ["--rate-limit-per-sec", "1", "--rate-limit-burst", "1"];
    let trusted =
        TestApp::spawn_with(&[&limited[..], &["--trusted-proxies", "127.0.0.0/8"]].concat()).await;
    assert_eq!(two_forwarded_clients(&trusted).await, [200, 200, 429]);
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    // The test client is the peer: without it in the list, the clients it
    // names share its one bucket.
    let untrusted = TestApp::spawn_with(&[
        "--rate-limit-per-sec",
        "1",
        "--rate-limit-burst",
        "1",
        "--trusted-proxies",
        "10.0.0.0/8",
    ])
    .await;
    assert_eq!(two_forwarded_clients(&untrusted).await, [200, 429, 429]);
}

#[tokio::test]
async fn with_api_keys_writes_need_one_and_reads_do_not() {
    let keys = "first-key-0123456789,second-key-0123456789";
    let app = TestApp::spawn_with(&["--api-keys", keys]).await;

    let missing = app.post_value("no key").await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_problem(missing, 401).await;
    let wrong = app
        .client
        .post(app.url("/data"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer first-key-012345678X")
        .body(r#"{"value":"wrong key"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(wrong, 401).await;

    for (header, value) in [
        ("authorization", "Bearer second-key-0123456789"),
        ("x-api-key", "first-key-0123456789"),
    ] {
        let accepted = app
            .client
            .post(app.url("/data"))
            .header("content-type", "application/json")
            .header(header, value)
            .body(r#"{"value":"with a key"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), 202, "{header}");
    }
    assert_eq!(app.get("/data").await.0, 200);
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_configured() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/data"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(
        response.headers().get("server").is_none(),
        "no server banner"
    );

    let app = TestApp::spawn_with(&["--cors-origins", "https://app.example.com"]).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/data"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = app
        .client
        .get(app.url("/data"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
