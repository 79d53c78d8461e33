//! Warm reads: one read path under every setting, asking the cache once.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use axum::{
    body::{Body, Bytes},
    extract::ConnectInfo,
    http::{Request, StatusCode},
};
use svc::{
    cache::{CacheError, Cached, RecordCache, Ticket, tiered::TieredCache},
    http::{AppState, GuardSettings, HttpSettings},
    metrics::Metrics,
};
use tower::ServiceExt;
use uuid::Uuid;

use crate::helpers::{Sandbox, TestApp, eventually_some, publisher, real_parts};

const BODY: &str = r#"{"id":"x","value":"warm","created_at":"2026-12-02T00:00:00Z"}"#;

fn settings() -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_secs(5),
        guard: GuardSettings {
            max_in_flight: 100,
            ..GuardSettings::default()
        },
        cors_origins: Vec::new(),
    }
}

/// A cache that counts the lookups made through it.
struct Counted {
    inner: Arc<dyn RecordCache>,
    lookups: AtomicUsize,
}

#[async_trait]
impl RecordCache for Counted {
    async fn lookup(&self, id: Uuid) -> Result<Cached, CacheError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup(id).await
    }
    async fn store_record(&self, id: Uuid, body: Bytes) -> Result<(), CacheError> {
        self.inner.store_record(id, body).await
    }
    fn mark_pending(&self, id: Uuid) -> Ticket {
        self.inner.mark_pending(id)
    }
    async fn clear_pending(&self, id: Uuid) -> Result<(), CacheError> {
        self.inner.clear_pending(id).await
    }
    async fn store_persisted(&self, records: &[(Uuid, Bytes)]) -> Result<(), CacheError> {
        self.inner.store_persisted(records).await
    }
    async fn ping(&self) -> Result<(), CacheError> {
        self.inner.ping().await
    }
}

/// The API's router with one record in its in-process cache and none in
/// the database, so only the cache can answer it.
async fn api(
    sandbox: &Sandbox,
    settings: &HttpSettings,
) -> (axum::Router, Arc<Counted>, Metrics, Uuid) {
    let metrics = Metrics::new();
    let (store, redis) = real_parts(sandbox);
    let cache = Arc::new(Counted {
        inner: Arc::new(TieredCache::new(redis, 1 << 20, metrics.clone())),
        lookups: AtomicUsize::new(0),
    });
    let id = Uuid::now_v7();
    cache
        .store_record(id, Bytes::from_static(BODY.as_bytes()))
        .await
        .unwrap();
    let state = AppState::new(store, cache.clone(), publisher(sandbox), metrics.clone());
    (svc::http::router(state, settings), cache, metrics, id)
}

fn read(path: &str) -> Request<Body> {
    let mut request = Request::get(path).body(Body::empty()).unwrap();
    // What the server adds to every request, for the rate limiter.
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

#[tokio::test]
async fn a_warm_read_takes_the_same_path_and_asks_the_cache_once_under_every_setting() {
    let sandbox = Sandbox::new().await;
    let mut limited = settings();
    limited.guard.rate_limit = Some((1000.try_into().unwrap(), 1000.try_into().unwrap()));
    let cors = HttpSettings {
        cors_origins: vec!["https://app.example.com".into()],
        ..settings()
    };
    for settings in [settings(), limited, cors] {
        let (api, cache, metrics, id) = api(&sandbox, &settings).await;
        let response = api.oneshot(read(&format!("/data/{id}"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{settings:?}");
        assert!(response.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(body, BODY.as_bytes());
        assert_eq!(cache.lookups.load(Ordering::SeqCst), 1, "{settings:?}");
        let text = metrics.render();
        assert!(text.contains("svc_cache_memory_hits_total 1"), "{text}");
        assert!(text.contains("svc_cache_hits_total 1"), "{text}");
    }
}

#[tokio::test]
async fn a_cold_read_asks_the_cache_once_then_the_database() {
    let sandbox = Sandbox::new().await;
    let (api, cache, metrics, _) = api(&sandbox, &settings()).await;
    let unknown = Uuid::now_v7();
    let response = api
        .oneshot(read(&format!("/data/{unknown}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(cache.lookups.load(Ordering::SeqCst), 1);
    assert!(metrics.render().contains("svc_cache_misses_total 1"));
}

#[tokio::test]
async fn at_capacity_a_read_is_shed_with_a_503_problem() {
    let sandbox = Sandbox::new().await;
    let mut full = settings();
    full.guard.max_in_flight = 0;
    let (api, _, metrics, id) = api(&sandbox, &full).await;
    let response = api.oneshot(read(&format!("/data/{id}"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["content-type"], svc::http::PROBLEM_JSON);
    assert!(response.headers().contains_key("x-request-id"));
    assert!(metrics.render().contains("svc_http_shed_total 1"));
}

#[tokio::test]
async fn through_the_server_a_read_from_memory_is_measured_under_its_route() {
    let app = TestApp::spawn().await;
    let consumer = app.start_consumer(&[]);
    let id = app.accept("answered twice").await;
    let url = app.url(&format!("/data/{id}"));
    let first = eventually_some("the record readable", Duration::from_secs(10), || async {
        let response = app.client.get(&url).send().await.unwrap();
        if response.status() != 200 {
            return None;
        }
        response.bytes().await.ok()
    })
    .await;
    consumer.stop().await;
    // The first 200 put the body in memory; this one is served from there.
    let second = app.client.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.bytes().await.unwrap(), first);

    let text = app.metrics().await;
    let ok =
        r#"http_request_duration_seconds_count{route="/data/{id}",method="GET",status="200"} 2"#;
    assert!(text.contains(ok), "{text}");
    assert!(text.contains("svc_cache_memory_hits_total 1"), "{text}");
}
