//! The production read path on real parts: `DATABASE_READ_URL` pointed at
//! PgBouncer in transaction pooling mode, in front of a streaming replica of
//! the primary (`scripts/replica.sh` starts both; `scripts/test.sh` runs it).

use std::time::Duration;

use futures_util::future::join_all;
use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};
use svc::domain::DataMessage;

use crate::helpers::{Sandbox, TestApp, eventually, real_parts};

/// PgBouncer's address; the database name is replaced by each test's own.
fn pooler_url() -> String {
    std::env::var("SVC_TEST_READ_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:6432/postgres".into())
}

fn read_url_for(sandbox: &Sandbox) -> String {
    let mut url = url::Url::parse(&pooler_url()).expect("SVC_TEST_READ_URL is a URL");
    url.set_path(&sandbox.name);
    url.to_string()
}

/// Whether the database behind `url` is a standby, asked through the pooler.
async fn is_replica(url: &str) -> bool {
    let options: PgConnectOptions = url.parse().unwrap();
    let mut connection = options
        .statement_cache_capacity(0)
        .connect()
        .await
        .unwrap_or_else(|err| {
            panic!("PgBouncer is not reachable at {url} ({err}); start it with scripts/replica.sh")
        });
    let standby: bool = sqlx::query_scalar("select pg_is_in_recovery()")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    standby
}

#[tokio::test]
async fn reads_through_pgbouncer_come_from_the_streaming_replica() {
    let sandbox = Sandbox::new().await;
    let read_url = read_url_for(&sandbox);
    // The new database reaches the replica through streaming replication.
    eventually(
        "the test database on the replica",
        Duration::from_secs(10),
        || {
            let url = read_url.clone();
            async move {
                let options: PgConnectOptions = url.parse().unwrap();
                options.statement_cache_capacity(0).connect().await.is_ok()
            }
        },
    )
    .await;
    assert!(
        is_replica(&read_url).await,
        "the read URL leads to a standby"
    );

    // Rows written on the primary only, never cached: every read below is a
    // database read through the pooler.
    let (store, _) = real_parts(&sandbox);
    let messages: Vec<DataMessage> = (0..60)
        .map(|i| DataMessage::accept(format!("replicated {i}")))
        .collect();
    store.insert_batch(&messages).await.unwrap();

    // A generous wait for a pooled connection: 60 reads share 16 of them
    // here, and what is tested is the pooler, not how fast a busy test
    // machine hands connections over (the 250 ms default fails fast by design).
    let args = sandbox.serve_args(&[
        "--database-read-url",
        &read_url,
        "--local-cache-mb",
        "0",
        "--db-acquire-timeout-ms",
        "10000",
    ]);
    let app = TestApp::start(sandbox, &args, svc::serve::components(&args).unwrap());
    app.wait_until_ready().await;
    let last = messages.last().unwrap().id;
    eventually(
        "the rows on the replica",
        Duration::from_secs(10),
        || async { app.get_record(last).await.0 == 200 },
    )
    .await;

    // Many reads at once over the pooled server connections: with named
    // prepared statements these would fail in transaction pooling mode.
    let reads = join_all(messages.iter().map(|m| app.get_record(m.id))).await;
    for (message, (status, body)) in messages.iter().zip(reads) {
        assert_eq!(status, 200, "{}: {body}", message.id);
        assert_eq!(body["value"], message.value);
    }
    let mut listed = 0;
    let mut path = "/data?limit=25".to_owned();
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        listed += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/data?limit=25&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(listed, messages.len());
    let (status, ready) = app.get("/health/ready").await;
    assert_eq!(
        (status, ready["checks"]["postgres"].as_str()),
        (200, Some("ok"))
    );
}
