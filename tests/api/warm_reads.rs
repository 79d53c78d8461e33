//! Warm reads answered before routing (`svc::http::Front`): the same answer
//! as a routed read, only for what it may answer, never around rate
//! limiting, CORS or the in-flight bound.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{Request, StatusCode},
    response::Response,
};
use svc::{
    cache::{RecordCache, tiered::TieredCache},
    http::{AppState, Front, HttpSettings},
};
use uuid::Uuid;

use crate::helpers::{Sandbox, TestApp, publisher, real_parts};

const BODY: &str = r#"{"id":"x","value":"warm","created_at":"2026-12-02T00:00:00Z"}"#;

fn settings() -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_secs(5),
        rate_limit: None,
        api_keys: Vec::new(),
        cors_origins: Vec::new(),
    }
}

/// A front whose router answers 418 to everything, so that every other
/// answer is the front's own; with one record in its in-process cache.
async fn front(sandbox: &Sandbox, settings: &HttpSettings, max_in_flight: usize) -> (Front, Uuid) {
    let (store, redis) = real_parts(sandbox);
    let cache = Arc::new(TieredCache::new(redis, 1 << 20));
    let id = Uuid::now_v7();
    cache
        .store_record(id, Bytes::from_static(BODY.as_bytes()))
        .await
        .unwrap();
    let state = AppState::new(store, cache, publisher(sandbox), max_in_flight);
    let routed = Router::new().fallback(|| async { StatusCode::IM_A_TEAPOT });
    (Front::api(routed, state, settings), id)
}

async fn send(front: &Front, method: &str, path: &str) -> Response {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    front.call(request).await.unwrap()
}

#[tokio::test]
async fn a_cached_record_is_answered_before_routing_and_anything_else_is_routed() {
    let sandbox = Sandbox::new().await;
    let (front, id) = front(&sandbox, &settings(), 100).await;

    let warm = send(&front, "GET", &format!("/data/{id}")).await;
    assert_eq!(warm.status(), StatusCode::OK);
    assert_eq!(warm.headers()["content-type"], "application/json");
    let request_id = warm.headers()["x-request-id"].to_str().unwrap();
    assert!(Uuid::try_parse(request_id).is_ok(), "{request_id}");
    let body = axum::body::to_bytes(warm.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(body, BODY.as_bytes());

    let with_query = send(&front, "GET", &format!("/data/{id}?fields=all")).await;
    assert_eq!(
        with_query.status(),
        StatusCode::OK,
        "the query plays no part in routing either"
    );

    let routed = [
        ("GET", format!("/data/{}", Uuid::now_v7())), // not in memory
        ("HEAD", format!("/data/{id}")),
        ("POST", format!("/data/{id}")),
        ("GET", format!("/data/{id}/more")),
        ("GET", format!("/data/%7B{id}%7D")),
        ("GET", "/data/not-a-uuid".to_owned()),
        ("GET", format!("/other/{id}")),
    ];
    for (method, path) in routed {
        let response = send(&front, method, &path).await;
        assert_eq!(
            response.status(),
            StatusCode::IM_A_TEAPOT,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn the_callers_request_id_is_answered_back_on_a_warm_read() {
    let sandbox = Sandbox::new().await;
    let (front, id) = front(&sandbox, &settings(), 100).await;
    let request = Request::get(format!("/data/{id}"))
        .header("x-request-id", "trace-warm-1")
        .body(Body::empty())
        .unwrap();
    let response = front.call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "trace-warm-1");
}

#[tokio::test]
async fn with_rate_limiting_or_cors_every_read_is_routed() {
    let sandbox = Sandbox::new().await;
    let limited = HttpSettings {
        rate_limit: Some((1000, 1000)),
        ..settings()
    };
    let cors = HttpSettings {
        cors_origins: vec!["https://app.example.com".into()],
        ..settings()
    };
    for settings in [limited, cors] {
        let (front, id) = front(&sandbox, &settings, 100).await;
        let response = send(&front, "GET", &format!("/data/{id}")).await;
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT, "{settings:?}");
    }
}

#[tokio::test]
async fn at_capacity_a_read_is_shed_with_a_503_like_a_routed_one() {
    let sandbox = Sandbox::new().await;
    let (front, id) = front(&sandbox, &settings(), 0).await;
    for path in [format!("/data/{id}"), format!("/data/{}", Uuid::now_v7())] {
        let response = send(&front, "GET", &path).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["content-type"], svc::http::PROBLEM_JSON);
        assert!(response.headers().contains_key("x-request-id"));
    }
}

/// One metric's value in the Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn through_the_server_a_warm_read_answers_and_is_measured_as_the_routed_one() {
    let app = TestApp::spawn().await;
    let before = app.metrics().await;
    let consumer = app.start_consumer(&[]);
    let id = app.accept("answered twice").await;
    let url = app.url(&format!("/data/{id}"));

    // Pending at first; the first 200 is routed (read from Redis or the
    // database, which puts the body in memory), the next one is warm.
    let mut routed = None;
    for _ in 0..400 {
        let response = app.client.get(&url).send().await.unwrap();
        if response.status() == 200 {
            routed = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    consumer.stop().await;
    let routed = routed.expect("the record became readable");
    let warm = app.client.get(&url).send().await.unwrap();
    assert_eq!(warm.status(), 200);

    let names = |response: &reqwest::Response| {
        let mut names: Vec<String> = response.headers().keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    };
    assert_eq!(names(&routed), names(&warm));
    assert_eq!(
        routed.headers()["content-type"],
        warm.headers()["content-type"]
    );
    assert_eq!(routed.bytes().await.unwrap(), warm.bytes().await.unwrap());

    let after = app.metrics().await;
    let ok = r#"http_request_duration_seconds_count{route="/data/{id}",method="GET",status="200"}"#;
    assert_eq!(metric(&after, ok) - metric(&before, ok), 2.0, "{after}");
    let memory_hits = "svc_cache_memory_hits_total";
    assert_eq!(
        metric(&after, memory_hits) - metric(&before, memory_hits),
        1.0
    );
}
