//! `svc migrate`: idempotent, concurrent-safe, with a status listing.

use crate::helpers::Sandbox;

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let sandbox = Sandbox::new().await; // already migrated once
    let url = svc::config::parse_postgres_url(&sandbox.database_url).unwrap();
    let tls = svc::tls::TlsSettings::default();
    let runs = (0..4).map(|_| svc::migrate::apply(&url, &tls));
    for result in futures_util::future::join_all(runs).await {
        result.unwrap();
    }
    let status = svc::migrate::status(&url, &Default::default())
        .await
        .unwrap();
    assert!(!status.is_empty());
    assert!(
        status
            .iter()
            .all(|m| m.applied_on.is_some() && !m.checksum_mismatch)
    );
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns
         WHERE table_name = 'data' ORDER BY ordinal_position",
    )
    .fetch_all(&sandbox.pool)
    .await
    .unwrap();
    let expected = [
        ("id", "uuid", "NO"),
        ("value", "text", "NO"),
        ("accepted_at", "timestamp with time zone", "NO"),
        ("created_at", "timestamp with time zone", "NO"),
    ];
    let columns: Vec<(&str, &str, &str)> = columns
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(columns, expected);
}

#[tokio::test]
async fn status_of_a_fresh_database_lists_every_migration_as_pending() {
    let sandbox = Sandbox::new().await;
    let fresh = format!("{}_fresh", sandbox.name);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{fresh}\"")))
        .execute(&sandbox.pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&sandbox.database_url).unwrap();
    url.set_path(&fresh);
    let url = svc::config::parse_postgres_url(url.as_str()).unwrap();
    let status = svc::migrate::status(&url, &Default::default())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{fresh}\" WITH (FORCE)"
    )))
    .execute(&sandbox.pool)
    .await
    .unwrap();
    assert!(!status.is_empty());
    assert!(status.iter().all(|m| m.applied_on.is_none()));
}

#[tokio::test]
async fn the_topology_is_declared_idempotently_with_a_quorum_queue() {
    let sandbox = Sandbox::new().await; // declared once already
    let url = svc::config::parse_amqp_url(&crate::helpers::amqp_url()).unwrap();
    svc::migrate::declare_topology(&url, &Default::default(), &sandbox.topology)
        .await
        .unwrap();
    // Redeclaring as a classic queue fails: the existing one is a quorum queue.
    let (_connection, channel) = sandbox.amqp_channel().await;
    let classic = channel
        .queue_declare(
            sandbox.topology.queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(classic.is_err(), "the ingest queue is a quorum queue");
}
