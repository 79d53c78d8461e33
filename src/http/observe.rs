//! Cross-cutting layers of every HTTP listener: request id, tracing span,
//! Prometheus request metrics, the request timeout, and `/metrics`.

use std::{
    collections::HashMap,
    sync::{OnceLock, RwLock},
    time::{Duration, Instant},
};

use ::metrics::Histogram;
use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use super::ApiError;
use crate::metrics;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` in the layers every listener shares. Applied through
/// `Router::layer`, so routes see their `MatchedPath` label.
pub fn layered<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    request_timeout: Duration,
) -> Router<S> {
    router.layer(
        ServiceBuilder::new()
            // Outermost first: the id exists before the span that logs it.
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    .on_request(())
                    .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                    .on_failure(DefaultOnFailure::new().level(Level::ERROR)),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(CatchPanicLayer::custom(|_| {
                ApiError::internal(&Panicked).into_response()
            }))
            .layer(middleware::from_fn(move |request, next| {
                measure_with_timeout(request_timeout, request, next)
            })),
    )
}

#[derive(Debug, thiserror::Error)]
#[error("the handler panicked")]
struct Panicked;

fn make_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        request_id,
    )
}

/// Counts in-flight requests, bounds each request by `limit` (503 after it),
/// and records its latency by route, method and status. One layer for the
/// three: every layer costs a boxed future and a clone of the routes per request.
async fn measure_with_timeout(limit: Duration, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let in_flight = &metrics::hot_path().in_flight;
    in_flight.increment(1.0);
    // Decrements even if the client goes away and the future is dropped.
    let _guard = scopeguard(|| in_flight.decrement(1.0));
    let started = Instant::now();
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_ms = limit.as_millis() as u64, "request timed out");
            ApiError::unavailable("the request took too long; retry later").into_response()
        }
    };
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    request_duration(route, &method, response.status()).record(started.elapsed().as_secs_f64());
    response
}

/// The latency histogram of one route, method and status, registered on first
/// use and then found without allocating (the label set is small and fixed).
fn request_duration(route: &str, method: &Method, status: StatusCode) -> Histogram {
    type ByRoute = HashMap<Box<str>, HashMap<(Method, StatusCode), Histogram>>;
    static HISTOGRAMS: OnceLock<RwLock<ByRoute>> = OnceLock::new();
    let histograms = HISTOGRAMS.get_or_init(RwLock::default);
    let key = (method.clone(), status);
    if let Some(histogram) = histograms
        .read()
        .expect("lock is never poisoned")
        .get(route)
        .and_then(|by_key| by_key.get(&key))
    {
        return histogram.clone();
    }
    let histogram = ::metrics::histogram!(
        metrics::HTTP_REQUEST_DURATION,
        "route" => route.to_owned(),
        "method" => method.as_str().to_owned(),
        "status" => status.as_str().to_owned(),
    );
    histograms
        .write()
        .expect("lock is never poisoned")
        .entry(route.into())
        .or_default()
        .insert(key, histogram.clone());
    histogram
}

struct Guard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn scopeguard<F: FnOnce()>(f: F) -> Guard<F> {
    Guard(Some(f))
}

/// `GET /metrics`: the Prometheus text exposition.
pub fn metrics_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/metrics", get(render))
}

async fn render() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics::handle().render(),
    )
}
