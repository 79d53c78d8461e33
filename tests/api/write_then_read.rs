//! The main flow: POST → 202 → GET pending → consumer → GET 200.

use std::{sync::atomic::Ordering, time::Duration};

use redis::AsyncCommands;
use uuid::Uuid;

use crate::helpers::{TestApp, app_with_slow_store, metric};

/// Pending markers of concurrent writes are written together in batches;
/// each 202 still waits for its own marker, so every id reads as pending at once.
#[tokio::test]
async fn concurrent_writes_each_read_as_pending_right_after_their_202() {
    let app = TestApp::spawn().await;
    let writes = (0..200).map(|n| {
        let app = &app;
        async move {
            let response = app.post_value(&format!("concurrent {n}")).await;
            assert_eq!(response.status(), 202);
            let body: serde_json::Value = response.json().await.unwrap();
            body["id"].as_str().unwrap().to_owned()
        }
    });
    let ids = futures_util::future::join_all(writes).await;
    for id in &ids {
        let marked = app.sandbox.is_marked_pending(id.parse().unwrap()).await;
        assert!(marked, "no pending marker for {id}");
    }
    let (status, body) = app.get(&format!("/data/{}", ids[0])).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("pending")));
}

#[tokio::test]
async fn a_write_is_accepted_then_pending_then_readable_with_the_same_value() {
    let app = TestApp::spawn().await;

    let response = app.post_value("hello, world").await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(location, format!("/data/{id}"));

    // No consumer yet: the write is pending.
    let (status, body) = app.get(&location).await;
    assert_eq!(status, 202);
    assert_eq!(body, serde_json::json!({ "id": id, "status": "pending" }));

    let consumer = app.start_consumer(&[]);
    let record = app.wait_for_record(id).await;
    assert_eq!(record["id"], id.to_string());
    assert_eq!(record["value"], "hello, world");
    assert!(record["created_at"].is_string());

    // Written through to the cache, pending marker gone.
    let mut redis = app.sandbox.redis().await;
    let prefix = &app.sandbox.cache_prefix;
    let cached: Option<String> = redis.get(format!("{prefix}data:{id}")).await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&cached.unwrap()).unwrap(),
        record
    );
    assert!(!app.sandbox.is_marked_pending(id).await);

    consumer.stop().await;
    assert_eq!(app.sandbox.row_count().await, 1);
}

/// Writes a value, waits until it is readable (which caches it), then deletes
/// its Redis key. Returns the id, the record, a Redis connection and the key.
async fn persist_then_evict_from_redis(
    app: &TestApp,
    value: &str,
) -> (
    Uuid,
    serde_json::Value,
    redis::aio::MultiplexedConnection,
    String,
) {
    let consumer = app.start_consumer(&[]);
    let id = app.accept(value).await;
    let record = app.wait_for_record(id).await;
    consumer.stop().await;
    let mut redis = app.sandbox.redis().await;
    let key = format!("{}data:{id}", app.sandbox.cache_prefix);
    let _: () = redis.del(&key).await.unwrap();
    (id, record, redis, key)
}

#[tokio::test]
async fn a_record_missing_from_the_cache_is_read_from_the_database_and_cached() {
    // Without the in-process layer, which would answer from memory.
    let app = TestApp::spawn_with(&["--local-cache-mb", "0"]).await;
    let (id, first, mut redis, key) = persist_then_evict_from_redis(&app, "cache me").await;

    let (status, body) = app.get_record(id).await;
    assert_eq!((status, &body), (200, &first));
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 300, "cached with the TTL, got {ttl}");
}

#[tokio::test]
async fn a_record_read_once_is_then_served_from_memory() {
    let app = TestApp::spawn().await;
    let (id, first, mut redis, key) = persist_then_evict_from_redis(&app, "remember me").await;

    // Neither Redis nor the database is asked: the body comes from memory.
    let (status, body) = app.get_record(id).await;
    assert_eq!((status, &body), (200, &first));
    let refilled: bool = redis.exists(&key).await.unwrap();
    assert!(!refilled, "served from memory, Redis untouched");
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "svc_cache_memory_hits_total"),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unknown_id_is_404() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_record(Uuid::now_v7()).await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_callers() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"].to_str().unwrap();
    assert!(Uuid::parse_str(made).is_ok());

    let response = app
        .client
        .get(app.url("/data/not-a-uuid"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn concurrent_misses_for_one_id_make_one_database_query() {
    let (app, counting, message) = app_with_slow_store(&[]).await;
    let requests = (0..50).map(|_| app.get_record(message.id));
    let answers = futures_util::future::join_all(requests).await;
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == 200 && body["value"] == "popular")
    );
    assert_eq!(counting.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let (mut app, _counting, message) = app_with_slow_store(&[]).await;
    let client = app.client.clone();
    let url = app.url(&format!("/data/{}", message.id));
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(50)).await;

    app.stop().await;

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was not cut");
    assert_eq!(response.status(), 200);
    assert!(
        app.client
            .get(app.url("/health/live"))
            .send()
            .await
            .is_err()
    );
}

/// A minute's pending hash is removed with `UNLINK` once its markers' life
/// is over (freeing a hash of a million ids on expiry would block Redis for
/// hundreds of milliseconds), and expires by itself only two minutes later.
#[tokio::test]
async fn a_finished_minutes_pending_markers_are_unlinked_before_they_expire() {
    let app = TestApp::spawn().await;
    let args = app.sandbox.serve_args(&[]);
    let ttl = args.redis.pending_ttl_secs;
    let mut redis = app.sandbox.redis().await;

    let response = app.post_value("a marker's life").await;
    assert_eq!(response.status(), 202);
    let id: Uuid = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (key, _) = svc::cache::redis::pending_marker(&app.sandbox.cache_prefix, id).unwrap();
    let expires_in: i64 = redis.ttl(&key).await.unwrap();
    // Its sweep is due within `ttl + 60` s; without the grace it would expire then.
    assert!(
        expires_in > (ttl + 60) as i64,
        "the hash expires in {expires_in} s: no later than its sweep"
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = |start| svc::cache::redis::pending_key(&app.sandbox.cache_prefix, start);
    // The newest minute whose markers' life is over, the one before it, and
    // the next, whose markers still live.
    let finished = (now - 60 - ttl) / 60 * 60;
    for start in [finished - 60, finished, finished + 60] {
        let () = redis.hset(minute(start), "an id", 1).await.unwrap();
    }

    let cache = svc::cache::redis::RedisCache::new(
        &args.redis.settings(&args.tls),
        svc::metrics::Metrics::new(),
    )
    .unwrap();
    cache.sweep_pending(now).await.unwrap();

    let exists = |start| {
        let mut redis = redis.clone();
        let key = minute(start);
        async move { redis.exists::<_, bool>(key).await.unwrap() }
    };
    assert!(!exists(finished - 60).await);
    assert!(!exists(finished).await);
    assert!(
        exists(finished + 60).await,
        "a minute whose markers still live is kept"
    );
    assert!(
        redis.exists::<_, bool>(&key).await.unwrap(),
        "this minute's hash is kept"
    );
}
