//! Dependencies that go away and come back, through a fault proxy each test
//! owns (never by touching the shared servers).

use std::time::{Duration, Instant};

use svc::domain::DataMessage;

use crate::{
    helpers::{
        RunningConsumer, Sandbox, TestApp, admin_database_url, amqp_url, assert_problem,
        eventually, host_port, metric, real_parts, redis_url,
    },
    proxy::FaultProxy,
};

#[tokio::test]
async fn with_redis_silent_reads_come_from_postgres_writes_go_on_and_recovery_needs_no_restart() {
    let proxy = FaultProxy::start(&host_port(&redis_url())).await;
    let redis = proxy.url_for(&redis_url());
    let sandbox = Sandbox::new().await;
    let args = sandbox.serve_args(&["--redis-url", &redis, "--local-cache-mb", "0"]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    let consumer = app.start_consumer(&[]);
    let id = app.accept("survives a silent cache").await;
    app.wait_for_record(id).await;

    proxy.silence();
    let started = Instant::now();
    let (status, body) = app.get_record(id).await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some("survives a silent cache"))
    );
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "bounded wait on Redis"
    );
    // A few failures open the circuit: then Redis costs nothing at all.
    for _ in 0..3 {
        app.get_record(id).await;
    }
    let skipped = metric(&app.metrics().await, "svc_cache_skipped_total");
    assert_eq!(app.get_record(id).await.0, 200);
    assert!(
        metric(&app.metrics().await, "svc_cache_skipped_total") > skipped,
        "skipped, not awaited"
    );
    let written = app.accept("written while the cache is silent").await;
    let (status, ready) = app.get("/health/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("degraded")));
    assert_eq!(
        app.wait_for_record(written).await["value"],
        "written while the cache is silent"
    );

    proxy.restore();
    eventually("readiness back to ok", Duration::from_secs(15), || async {
        app.get("/health/ready").await.1["status"] == "ok"
    })
    .await;
    consumer.stop().await;
}

#[tokio::test]
async fn with_the_broker_cut_writes_are_503_fast_and_resume_by_themselves() {
    let proxy = FaultProxy::start(&host_port(&amqp_url())).await;
    let amqp = proxy.url_for(&amqp_url());
    let sandbox = Sandbox::new().await;
    let args = sandbox.serve_args(&["--amqp-url", &amqp]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    assert_eq!(app.post_value("before").await.status(), 202);

    proxy.cut();
    // The publisher notices the lost connection; no write is answered 202 meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let refused = app.post_value("during").await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, 503).await;
    assert_eq!(app.get("/health/ready").await.0, 503);

    proxy.restore();
    eventually("writes accepted again", Duration::from_secs(15), || async {
        app.post_value("after").await.status() == 202
    })
    .await;
    assert_eq!(app.get("/health/ready").await.0, 200);
}

#[tokio::test]
async fn with_postgres_cut_the_consumer_holds_its_batch_and_persists_everything_once_after() {
    let proxy = FaultProxy::start(&host_port(&admin_database_url())).await;
    let sandbox = Sandbox::new().await;
    let database = proxy.url_for(&sandbox.database_url);
    let args = sandbox.serve_args(&["--database-url", &database, "--local-cache-mb", "0"]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    // A record read once before the outage is cached, and stays readable.
    let (store, _) = real_parts(&app.sandbox);
    let earlier = DataMessage::accept("read before the outage".to_owned());
    store
        .insert_batch(std::slice::from_ref(&earlier))
        .await
        .unwrap();
    assert_eq!(app.get_record(earlier.id).await.0, 200);

    proxy.cut();
    let messages: Vec<DataMessage> = (0..20)
        .map(|i| DataMessage::accept(format!("m{i}")))
        .collect();
    for message in &messages {
        app.sandbox.publish_raw(&message.encode()).await;
    }
    let consumer = RunningConsumer::start(
        &app.sandbox,
        &["--database-url", &database, "--retry-max-backoff-ms", "300"],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sandbox.row_count().await, 1, "only the earlier record");
    assert_eq!(
        app.sandbox
            .ready_messages(&app.sandbox.topology.dead_letter_queue)
            .await,
        0,
        "nothing dead-lettered while the database is down"
    );
    // An uncached read cannot be answered: 503, fast, not 500.
    let started = Instant::now();
    let response = app
        .client
        .get(app.url(&format!("/data/{}", messages[0].id)))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_problem(response, 503).await;
    // A cached one still can.
    let (status, cached) = app.get_record(earlier.id).await;
    assert_eq!(
        (status, cached["value"].as_str()),
        (200, Some("read before the outage"))
    );

    proxy.restore();
    eventually(
        "every message persisted",
        Duration::from_secs(20),
        || async { app.sandbox.row_count().await == 21 },
    )
    .await;
    consumer.stop().await;
    assert_eq!(app.sandbox.row_count().await, 21, "exactly once");
    assert_eq!(
        app.sandbox
            .ready_messages(&app.sandbox.topology.queue)
            .await,
        0
    );
    assert_eq!(app.get_record(messages[7].id).await.1["value"], "m7");
}
