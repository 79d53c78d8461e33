//! The broker going away at the worst moments, through a fault proxy each
//! test owns: between a publish and its confirm, under a running consumer,
//! and again and again while the consumer holds a message it cannot persist.

use std::time::{Duration, Instant};

use serde_json::Value;
use svc::domain::DataMessage;

use crate::{
    helpers::{
        RunningConsumer, Sandbox, TestApp, admin_database_url, amqp_url, assert_problem,
        eventually, host_port,
    },
    private_servers::{Listener, PrivateRabbit},
    proxy::FaultProxy,
};

/// An API whose broker connection runs through `proxy`.
async fn app_behind(proxy: &FaultProxy) -> TestApp {
    app_behind_with(proxy, "").await
}

/// `app_behind` with `query` (AMQP URI parameters) added to the broker's URL.
async fn app_behind_with(proxy: &FaultProxy, query: &str) -> TestApp {
    let sandbox = Sandbox::new().await;
    let url = with_query(&proxy.url_for(&amqp_url()), query);
    let args = sandbox.serve_args(&["--amqp-url", &url]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    app
}

/// POSTs a write whose message the broker stores but whose confirm the proxy
/// swallows; once the message is in the queue, `then` acts on the proxy.
async fn post_with_the_confirm_lost(
    app: &TestApp,
    proxy: &FaultProxy,
    then: impl FnOnce(&FaultProxy),
) -> reqwest::Response {
    let queue = &app.sandbox.topology.queue;
    proxy.swallow_replies();
    let (response, ()) = tokio::join!(app.post_value("confirm lost"), async {
        eventually(
            "the broker holds the message",
            Duration::from_secs(1),
            || async { app.sandbox.ready_messages(queue).await == 1 },
        )
        .await;
        then(proxy);
    });
    response
}

#[tokio::test]
async fn a_confirm_lost_with_its_connection_is_published_again_and_persisted_once() {
    let proxy = FaultProxy::start(&host_port(&amqp_url())).await;
    let app = app_behind(&proxy).await;
    let queue = app.sandbox.topology.queue.clone();

    // Then the connection drops and the proxy relays again.
    let response = post_with_the_confirm_lost(&app, &proxy, FaultProxy::restore).await;
    assert_eq!(response.status(), 202, "confirmed on the new connection");
    let body: Value = response.json().await.unwrap();
    let id: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        app.sandbox.ready_messages(&queue).await,
        2,
        "the same id sits in the queue twice"
    );

    let consumer = app.start_consumer(&[]);
    app.sandbox.wait_for_rows(1).await;
    eventually("the queue drained", Duration::from_secs(10), || async {
        app.sandbox.ready_messages(&queue).await == 0
    })
    .await;
    consumer.stop().await;
    assert_eq!(app.sandbox.row_count().await, 1, "one row for the id");
    assert_eq!(app.get_record(id).await.1["value"], "confirm lost");
    let metrics = app.metrics().await;
    assert!(metrics.contains("svc_publish_retries_total 1"), "{metrics}");
}

fn with_query(url: &str, query: &str) -> String {
    match (query.is_empty(), url.contains('?')) {
        (true, _) => url.to_owned(),
        (false, true) => format!("{url}&{query}"),
        (false, false) => format!("{url}?{query}"),
    }
}

/// The connection stays open but the broker falls silent: its missing
/// heartbeats take the link down, readiness turns red, and writes are
/// refused at once instead of each waiting out the publish timeout.
#[tokio::test]
async fn a_broker_gone_silent_is_noticed_by_its_missing_heartbeats() {
    let proxy = FaultProxy::start(&host_port(&amqp_url())).await;
    let app = app_behind_with(&proxy, "heartbeat=1&connection_timeout=1000").await;
    proxy.swallow_replies();
    eventually(
        "readiness noticing the silent broker",
        Duration::from_secs(5),
        || async { app.get("/health/ready").await.0 == 503 },
    )
    .await;
    let started = Instant::now();
    let response = app.post_value("while the broker is silent").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    assert_problem(response, 503).await;

    proxy.restore();
    eventually(
        "the publisher reconnecting",
        Duration::from_secs(15),
        || async { app.post_value("after the silence").await.status() == 202 },
    )
    .await;
}

/// A message bigger than the frame size agreed with the broker travels in
/// several body frames and arrives whole.
#[tokio::test]
async fn a_write_larger_than_a_frame_arrives_whole() {
    let sandbox = Sandbox::new().await;
    let url = with_query(&amqp_url(), "frame_max=4096");
    let args = sandbox.serve_args(&["--amqp-url", &url]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    // 8,192 bytes of value, each quote escaped in the message: about 16 KiB.
    let value = "\"".repeat(8192);
    let response = app.post_value(&value).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().parse().unwrap();
    let _consumer = app.start_consumer(&[]);
    let record = app.wait_for_record(id).await;
    assert_eq!(record["value"].as_str(), Some(value.as_str()));
}

#[tokio::test]
async fn a_confirm_lost_while_the_broker_stays_away_is_a_503_never_a_202() {
    let proxy = FaultProxy::start(&host_port(&amqp_url())).await;
    let app = app_behind(&proxy).await;
    let started = Instant::now();
    let response = post_with_the_confirm_lost(&app, &proxy, FaultProxy::cut).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "bounded by the publish timeout"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503).await;
}

#[tokio::test]
async fn the_consumer_reconnects_by_itself_after_the_broker_comes_back() {
    let proxy = FaultProxy::start(&host_port(&amqp_url())).await;
    let sandbox = Sandbox::new().await;
    let consumer = RunningConsumer::start(&sandbox, &["--amqp-url", &proxy.url_for(&amqp_url())]);
    let first: Vec<DataMessage> = (0..3)
        .map(|i| DataMessage::accept(format!("a{i}")))
        .collect();
    sandbox.publish_many(&first).await;
    sandbox.wait_for_rows(3).await;

    proxy.cut();
    let second: Vec<DataMessage> = (0..3)
        .map(|i| DataMessage::accept(format!("b{i}")))
        .collect();
    sandbox.publish_many(&second).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sandbox.row_count().await,
        3,
        "nothing consumed while cut off"
    );

    proxy.restore();
    sandbox.wait_for_rows(6).await;
    consumer.stop().await;
    assert_eq!(sandbox.ready_messages(&sandbox.topology.queue).await, 0);
}

#[tokio::test]
async fn a_message_redelivered_past_the_delivery_limit_is_dead_lettered_logged_and_counted() {
    // The database is down, so the consumer holds the message unacknowledged;
    // each time its broker connection drops, the broker takes the message back
    // and counts one more delivery, until it dead-letters it.
    let broker = FaultProxy::start(&host_port(&amqp_url())).await;
    let database = FaultProxy::start(&host_port(&admin_database_url())).await;
    database.cut();
    let sandbox = Sandbox::new().await;
    let consumer = RunningConsumer::start(
        &sandbox,
        &[
            "--amqp-url",
            &broker.url_for(&amqp_url()),
            "--database-url",
            &database.url_for(&sandbox.database_url),
            "--queue-watch-ms",
            "100",
            "--retry-max-backoff-ms",
            "200",
        ],
    );
    let message = DataMessage::accept("never persisted".to_owned());
    sandbox.publish_many(std::slice::from_ref(&message)).await;
    let (ingest, dead) = (&sandbox.topology.queue, &sandbox.topology.dead_letter_queue);

    let mut drops = 0;
    while sandbox.ready_messages(dead).await == 0 {
        assert!(
            drops <= 2 * sandbox.topology.delivery_limit,
            "never dead-lettered"
        );
        eventually(
            "the consumer holds the message",
            Duration::from_secs(10),
            || async { sandbox.ready_messages(ingest).await == 0 },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker.restore(); // drops the consumer's connection, relays again
        drops += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        drops >= sandbox.topology.delivery_limit,
        "after {drops} drops"
    );

    let gauge = format!("svc_queue_messages{{queue=\"{dead}\"}} 1");
    let counter = format!("svc_dead_lettered_total{{queue=\"{dead}\"}} 1");
    eventually(
        "the consumer reports the dead letter",
        Duration::from_secs(10),
        || {
            let rendered = consumer.metrics.render();
            let seen = rendered.contains(&gauge) && rendered.contains(&counter);
            async move { seen }
        },
    )
    .await;
    consumer.stop().await;
    assert_eq!(sandbox.row_count().await, 0);
    let payload = sandbox
        .take_dead_letter(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(DataMessage::decode(&payload).unwrap().id, message.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_blocks_publishing_writes_are_503_at_once_then_accepted_again() {
    let rabbit = tokio::task::spawn_blocking(|| PrivateRabbit::start(Listener::Plain))
        .await
        .unwrap();
    let sandbox = Sandbox::new().await;
    let url = rabbit.url("amqp", "127.0.0.1");
    // Publish and request timeouts far above "at once", so that a refusal
    // cannot be either timeout.
    let args = sandbox.serve_args(&[
        "--amqp-url",
        &url,
        "--publish-timeout-ms",
        "5000",
        "--request-timeout-ms",
        "8000",
    ]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    assert_eq!(app.post_value("before the alarm").await.status(), 202);

    // A memory alarm: the broker blocks every publishing connection.
    let set_watermark = |value: &'static str| {
        let rabbit = &rabbit;
        move || rabbit.ctl(&["set_vm_memory_high_watermark", value])
    };
    tokio::task::block_in_place(set_watermark("0"));
    // The first publish after the alarm may be the one that gets the
    // connection blocked (the broker then holds it): give it its time.
    let _ = app.post_value("as the alarm starts").await;
    for _ in 0..3 {
        let started = Instant::now();
        let response = app.post_value("while blocked").await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once, not after the publish timeout"
        );
        assert_eq!(response.headers()["retry-after"], "1");
        assert_problem(response, 503).await;
    }

    tokio::task::block_in_place(set_watermark("0.4"));
    eventually(
        "writes are accepted again once the alarm clears",
        Duration::from_secs(30),
        || async { app.post_value("after the alarm").await.status() == 202 },
    )
    .await;
}

#[tokio::test]
async fn past_the_publish_window_a_write_waits_for_a_turn_then_goes_out() {
    let proxy = FaultProxy::start(&host_port(&amqp_url())).await;
    let sandbox = Sandbox::new().await;
    let url = proxy.url_for(&amqp_url());
    let args = sandbox.serve_args(&[
        "--amqp-url",
        &url,
        "--publish-window",
        "1",
        "--publish-timeout-ms",
        "2000",
    ]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    let queue = app.sandbox.topology.queue.clone();

    // No confirm comes back, so the first write holds the one turn until its
    // publish timeout (2 s); the second arrives at 1 s and must wait.
    proxy.swallow_replies();
    let ((), _, _) = tokio::join!(
        async {
            eventually(
                "the broker holds the first write",
                Duration::from_secs(1),
                || async { app.sandbox.ready_messages(&queue).await == 1 },
            )
            .await;
            tokio::time::sleep(Duration::from_millis(1300)).await;
            assert_eq!(
                app.sandbox.ready_messages(&queue).await,
                1,
                "the second write is not sent while the first holds the turn"
            );
            eventually(
                "the second write is sent once the first gives up its turn",
                Duration::from_secs(5),
                || async { app.sandbox.ready_messages(&queue).await == 2 },
            )
            .await;
        },
        app.post_value("first"),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            app.post_value("second").await
        },
    );
}
