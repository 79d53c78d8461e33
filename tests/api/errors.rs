//! Every error status of the contract, each with its problem+json body, and
//! none of them lets anything reach the queue.

use lapin::options::QueueDeleteOptions;
use serde_json::json;

use crate::helpers::{DEAD_AMQP_URL, Sandbox, TestApp, assert_problem};

#[tokio::test]
async fn bad_writes_get_their_status_and_queue_nothing() {
    let app = TestApp::spawn().await;
    let json = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8",
            json,
            b"{\"value\": \"\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "huge integer",
            json,
            br#"{"value": 123456789012345678901234567890}"#.to_vec(),
            422,
        ),
        (
            "number out of range",
            json,
            br#"{"value": 1e400}"#.to_vec(),
            400,
        ),
    ];
    let cases =
        cases.into_iter().chain(text_cases(json).into_iter().map(
            |(case, content_type, body, status)| (case, content_type, body.into_bytes(), status),
        ));
    for (case, content_type, body, status) in cases {
        let response = app.post_raw(content_type, body).await;
        assert_eq!(response.status().as_u16(), status, "{case}");
        assert_problem(response, status).await;
    }
    // A body without a content type at all.
    let response = app
        .client
        .post(app.url("/data"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(response, 415).await;

    assert_eq!(
        app.sandbox
            .ready_messages(&app.sandbox.topology.queue)
            .await,
        0
    );
}

fn text_cases(json: &'static str) -> Vec<(&'static str, &'static str, String, u16)> {
    vec![
        ("malformed JSON", json, "{\"value\": ".into(), 400),
        ("not JSON at all", json, "hello".into(), 400),
        ("empty body", json, String::new(), 400),
        // Valid JSON of the wrong shape is refused at its first level, however deep.
        (
            "deep nesting",
            json,
            format!("{}{}", "[".repeat(500), "]".repeat(500)),
            422,
        ),
        (
            "deeply nested value",
            json,
            format!(r#"{{"value":{}{}}}"#, "[".repeat(500), "]".repeat(500)),
            422,
        ),
        (
            "wrong content type",
            "text/plain",
            json!({"value": "x"}).to_string(),
            415,
        ),
        (
            "form content type",
            "application/x-www-form-urlencoded",
            "value=x".into(),
            415,
        ),
        ("value missing", json, "{}".into(), 422),
        ("value null", json, json!({"value": null}).to_string(), 422),
        ("value a number", json, json!({"value": 5}).to_string(), 422),
        (
            "value an object",
            json,
            json!({"value": {"a": 1}}).to_string(),
            422,
        ),
        ("body an array", json, "[]".into(), 422),
        ("value empty", json, json!({"value": ""}).to_string(), 422),
        // The store's own limits: Postgres `text` holds no NUL, and UTF-8 no
        // lone surrogate (which JSON's \u escapes could otherwise spell).
        ("value a NUL", json, r#"{"value":"\u0000"}"#.into(), 422),
        (
            "value holding a NUL",
            json,
            r#"{"value":"a\u0000b"}"#.into(),
            422,
        ),
        (
            "value ending in a NUL",
            json,
            r#"{"value":"ab\u0000"}"#.into(),
            422,
        ),
        (
            "value a lone surrogate",
            json,
            r#"{"value":"a\ud800b"}"#.into(),
            400,
        ),
        (
            "value too long",
            json,
            json!({"value": "x".repeat(8193)}).to_string(),
            422,
        ),
        (
            "body over 64 KiB",
            json,
            json!({"value": "x".repeat(70_000)}).to_string(),
            413,
        ),
    ]
}

#[tokio::test]
async fn a_value_of_exactly_8192_bytes_is_accepted() {
    let app = TestApp::spawn().await;
    let response = app.post_value(&"é".repeat(4096)).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn bad_ids_unknown_routes_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/data/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 400).await;
    let response = app
        .client
        .get(app.url(&format!("/data/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_problem(response, 404).await;
    let response = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    assert_problem(response, 404).await;
    let response = app.client.delete(app.url("/data")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    assert_problem(response, 405).await;
}

#[tokio::test]
async fn a_write_is_503_with_retry_after_when_the_broker_is_unreachable() {
    let sandbox = Sandbox::new().await;
    let args = sandbox.serve_args(&["--amqp-url", DEAD_AMQP_URL]);
    let state = svc::serve::components(&args).unwrap();
    let app = TestApp::start(sandbox, &args, state);

    let started = std::time::Instant::now();
    let response = app.post_value("lost?").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503).await;
}

#[tokio::test]
async fn a_write_is_503_when_no_queue_would_hold_it() {
    let app = TestApp::spawn().await;
    // Unbind the ingest queue by deleting it: the broker now confirms the
    // message but returns it unroutable, which must not become a 202.
    let (_connection, channel) = app.sandbox.amqp_channel().await;
    channel
        .queue_delete(
            app.sandbox.topology.queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let response = app.post_value("nowhere to go").await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503).await;
}
