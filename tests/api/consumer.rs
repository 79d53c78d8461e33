//! `svc consume`: idempotence, dead-lettering, acknowledgement on shutdown.

use std::time::Duration;

use svc::{consume::Consumer, domain::DataMessage, metrics::Metrics, storage::StoreError};

use crate::helpers::{
    RunningConsumer, Sandbox, consumer_settings, eventually, eventually_some, real_parts,
};

#[tokio::test]
async fn the_same_message_delivered_twice_makes_one_row() {
    let sandbox = Sandbox::new().await;
    let message = DataMessage::accept("once".into());
    sandbox.publish_raw(&message.encode()).await;
    sandbox.publish_raw(&message.encode()).await;
    let other = DataMessage::accept("other".into());
    sandbox.publish_raw(&other.encode()).await;

    let consumer = RunningConsumer::start(&sandbox, &[]);
    sandbox.wait_for_rows(2).await;
    // Deliver it again in a later batch, after the row exists.
    sandbox.publish_raw(&message.encode()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.stop().await;

    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, value FROM data ORDER BY id")
        .fetch_all(&sandbox.pool)
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(message.id, "once".into()), (other.id, "other".into())]
    );
    sandbox.assert_queues_empty().await;
}

#[tokio::test]
async fn a_malformed_message_lands_in_the_dead_letter_queue_and_the_rest_persist() {
    let sandbox = Sandbox::new().await;
    let good = DataMessage::accept("good".into());
    sandbox.publish_raw(b"this is not json").await;
    sandbox.publish_raw(&good.encode()).await;
    let too_long = DataMessage::accept("x".repeat(9000));
    sandbox.publish_raw(&too_long.encode()).await;

    let consumer = RunningConsumer::start(&sandbox, &[]);
    sandbox.wait_for_rows(1).await;
    let first = sandbox.take_dead_letter(Duration::from_secs(10)).await;
    let second = sandbox.take_dead_letter(Duration::from_secs(10)).await;
    consumer.stop().await;

    assert_eq!(first.as_deref(), Some(&b"this is not json"[..]));
    assert_eq!(second, Some(too_long.encode()));
    assert_eq!(sandbox.row_count().await, 1);
    assert_eq!(sandbox.ready_messages(&sandbox.topology.queue).await, 0);
}

#[tokio::test]
async fn shutdown_commits_and_acknowledges_the_batch_in_hand() {
    let sandbox = Sandbox::new().await;
    let messages: Vec<DataMessage> = (0..50)
        .map(|i| DataMessage::accept(format!("m{i}")))
        .collect();
    for message in &messages {
        sandbox.publish_raw(&message.encode()).await;
    }
    // A batch that would wait a minute to fill: the messages are in hand,
    // uncommitted, when shutdown comes.
    let settings = consumer_settings(
        &sandbox,
        &["--batch-size", "1000", "--batch-wait-ms", "60000"],
    );
    let (store, cache) = real_parts(&sandbox);
    let consumer = RunningConsumer::run(Consumer::new(settings, store, cache, Metrics::new()));
    eventually(
        "the consumer holds every message",
        Duration::from_secs(5),
        || async { sandbox.ready_messages(&sandbox.topology.queue).await == 0 },
    )
    .await;
    assert_eq!(
        sandbox.row_count().await,
        0,
        "nothing committed before shutdown"
    );

    consumer.stop().await;

    assert_eq!(sandbox.row_count().await, 50);
    // Acknowledged, not merely released: nothing came back to the queue
    // when the consumer's connection closed.
    assert_eq!(sandbox.ready_messages(&sandbox.topology.queue).await, 0);
}

#[tokio::test]
async fn the_consumer_serves_its_own_health_and_metrics() {
    let sandbox = Sandbox::new().await;
    let args = sandbox.consume_args(&[]);
    let consumer = svc::consume::build(&args).unwrap();
    let listener = svc::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = svc::server::ServerSettings {
        header_timeout: Duration::from_secs(5),
        grace: Duration::from_secs(1),
    };
    let server = tokio::spawn(svc::server::serve(
        listener,
        consumer.router(),
        settings,
        shutdown.clone(),
    ));
    let running = RunningConsumer::run(consumer);

    let client = reqwest::Client::new();
    let ready: serde_json::Value =
        eventually_some("the consumer ready", Duration::from_secs(5), || async {
            let response = client
                .get(format!("http://{address}/health/ready"))
                .send()
                .await
                .unwrap();
            if response.status() != 200 {
                return None;
            }
            response.json().await.ok()
        })
        .await;
    assert_eq!(ready["checks"]["rabbitmq"], "ok");
    let live = client
        .get(format!("http://{address}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let metrics = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    running.stop().await;
    shutdown.cancel();
    server.await.unwrap();
}

#[tokio::test]
async fn a_queued_nul_message_is_dead_lettered_while_its_neighbours_persist() {
    let sandbox = Sandbox::new().await;
    let before = DataMessage::accept("before".into());
    let after = DataMessage::accept("after".into());
    // Valid JSON that no Postgres `text` can hold: what an older serve let through.
    let nul = DataMessage::accept("a\0b".into()).encode();
    assert!(nul.windows(6).any(|w| w == b"\\u0000"));
    sandbox.publish_raw(&before.encode()).await;
    sandbox.publish_raw(&nul).await;
    sandbox.publish_raw(&after.encode()).await;

    let consumer = RunningConsumer::start(&sandbox, &[]);
    sandbox.wait_for_rows(2).await;
    let dead = sandbox.take_dead_letter(Duration::from_secs(10)).await;
    consumer.stop().await;

    assert_eq!(dead, Some(nul));
    assert_eq!(stored_ids(&sandbox).await, vec![before.id, after.id]);
    assert_eq!(sandbox.ready_messages(&sandbox.topology.queue).await, 0);
}

#[tokio::test]
async fn messages_the_database_refuses_are_dead_lettered_at_once_and_the_rest_of_their_batch_persists()
 {
    let sandbox = Sandbox::new().await;
    // A constraint the messages pass on the wire but not in the database: the
    // store's refusal (class 23), which no retry can cure.
    sqlx::query("ALTER TABLE data ADD CONSTRAINT no_refused CHECK (value <> 'refused')")
        .execute(&sandbox.pool)
        .await
        .unwrap();
    let messages: Vec<DataMessage> = (0..40)
        .map(|i| {
            let value = if i == 7 || i == 31 {
                "refused".into()
            } else {
                format!("m{i}")
            };
            DataMessage::accept(value)
        })
        .collect();
    sandbox.publish_many(&messages).await;

    // Everything in one batch, so the refusals share it with good messages.
    let consumer =
        RunningConsumer::start(&sandbox, &["--batch-size", "100", "--batch-wait-ms", "500"]);
    sandbox.wait_for_rows(38).await;
    let first = sandbox.take_dead_letter(Duration::from_secs(10)).await;
    let second = sandbox.take_dead_letter(Duration::from_secs(10)).await;
    consumer.stop().await;

    assert_eq!(first, Some(messages[7].encode()));
    assert_eq!(second, Some(messages[31].encode()));
    let expected: Vec<uuid::Uuid> = messages
        .iter()
        .filter(|m| m.value != "refused")
        .map(|m| m.id)
        .collect();
    assert_eq!(stored_ids(&sandbox).await, expected);
    sandbox.assert_queues_empty().await;
}

#[tokio::test]
async fn a_database_error_that_retries_do_not_cure_ends_in_the_dead_letter_queue() {
    let sandbox = Sandbox::new().await;
    // No table to insert into: neither unavailability nor the data's fault.
    sqlx::query("DROP TABLE data")
        .execute(&sandbox.pool)
        .await
        .unwrap();
    let message = DataMessage::accept("homeless".into());
    sandbox.publish_raw(&message.encode()).await;

    let consumer = RunningConsumer::start(&sandbox, &["--retry-max-backoff-ms", "20"]);
    // A few retries per delivery, then back to the broker, which dead-letters
    // it past the sandbox's delivery limit (3).
    let dead = sandbox.take_dead_letter(Duration::from_secs(30)).await;
    consumer.stop().await;

    assert_eq!(dead, Some(message.encode()));
    assert_eq!(sandbox.ready_messages(&sandbox.topology.queue).await, 0);
}

#[tokio::test]
async fn the_store_calls_a_nul_a_refusal_of_the_data_not_an_outage() {
    let sandbox = Sandbox::new().await;
    let (store, _cache) = real_parts(&sandbox);
    let good = DataMessage::accept("good".into());
    let nul = DataMessage::accept("a\0b".into());

    let refused = store.insert_batch(&[good.clone(), nul]).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(_))),
        "{refused:?}"
    );
    assert_eq!(sandbox.row_count().await, 0, "the statement is atomic");
    assert_eq!(store.insert_batch(&[good]).await.unwrap().len(), 1);
}

/// The ids in the table, oldest first.
async fn stored_ids(sandbox: &Sandbox) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT id FROM data ORDER BY id")
        .fetch_all(&sandbox.pool)
        .await
        .unwrap()
}
