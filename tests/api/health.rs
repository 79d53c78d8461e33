//! Liveness and readiness with per-dependency checks.

use std::time::Duration;

use crate::helpers::{DEAD_AMQP_URL, DEAD_REDIS_URL, Sandbox, TestApp, eventually};

#[tokio::test]
async fn live_and_ready_when_everything_is_up() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/health/live").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    // The first Redis check also opens the connection, which may outlast the
    // 100 ms cache timeout on a loaded machine: that check honestly says
    // `degraded`, and the next ones say `ok`.
    eventually("readiness reports ok", Duration::from_secs(5), || async {
        app.get("/health/ready").await.1["status"] == "ok"
    })
    .await;
    let (status, body) = app.get("/health/ready").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ok",
            "checks": { "postgres": "ok", "redis": "ok", "rabbitmq": "ok" }
        })
    );
}

#[tokio::test]
async fn redis_down_is_degraded_and_still_serves_reads_and_writes() {
    let sandbox = Sandbox::new().await;
    let args = sandbox.serve_args(&["--redis-url", DEAD_REDIS_URL]);
    let state = svc::serve::components(&args).unwrap();
    let app = TestApp::start(sandbox, &args, state);
    app.wait_until_ready().await;

    let (status, body) = app.get("/health/ready").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"], "down");

    let consumer = app.start_consumer(&["--redis-url", DEAD_REDIS_URL]);
    let id = app.accept("no cache needed").await;
    let record = app.wait_for_record(id).await;
    assert_eq!(record["value"], "no cache needed");
    consumer.stop().await;
}

#[tokio::test]
async fn the_broker_down_makes_the_instance_not_ready() {
    let sandbox = Sandbox::new().await;
    let args = sandbox.serve_args(&["--amqp-url", DEAD_AMQP_URL]);
    let state = svc::serve::components(&args).unwrap();
    let app = TestApp::start(sandbox, &args, state);
    let (status, body) = app.get("/health/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["rabbitmq"], "down");
    assert_eq!(body["checks"]["postgres"], "ok");
    let (status, _) = app.get("/health/live").await;
    assert_eq!(status, 200);
}
