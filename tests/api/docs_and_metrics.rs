//! `/metrics`, `/openapi.json` and `/docs`.

use crate::helpers::{TestApp, metric};

#[tokio::test]
async fn metrics_show_request_latency_histograms_cache_and_publish_figures() {
    let app = TestApp::spawn().await;
    let consumer = app.start_consumer(&[]);
    let id = app.accept("measured").await;
    app.wait_for_record(id).await;
    app.get_record(id).await; // a cache hit
    consumer.stop().await;

    let text = app.metrics().await;
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE svc_publish_duration_seconds histogram"));
    // Each figure counts what this test did, and only that: the registry
    // belongs to this app.
    for (series, at_least) in [
        (
            r#"http_request_duration_seconds_bucket{route="/data/{id}",method="GET",status="200",le="0.5"}"#,
            1.0,
        ),
        ("svc_cache_hits_total", 1.0),
        ("svc_publish_duration_seconds_count", 1.0),
    ] {
        assert!(metric(&text, series) >= at_least, "{series} in:\n{text}");
    }
    assert_eq!(
        metric(
            &text,
            r#"http_request_duration_seconds_count{route="/data",method="POST",status="202"}"#
        ),
        1.0
    );
    // The scrape itself is the one request in flight.
    assert_eq!(metric(&text, "http_requests_in_flight"), 1.0, "{text}");
}

#[tokio::test]
async fn the_openapi_document_names_every_route() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/data", "post"),
        ("/data", "get"),
        ("/data/{id}", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    let post = &paths["/data"]["post"]["responses"];
    for status in ["202", "400", "413", "415", "422", "503"] {
        assert!(post.get(status).is_some(), "POST /data documents {status}");
    }
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("swagger"));
    let response = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(response.text().await.unwrap().contains("/openapi.json"));
}
