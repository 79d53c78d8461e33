//! Cross-cutting work of every HTTP listener, in one layer: the request id,
//! the tracing span, the in-flight gauge, the request timeout, catching a
//! panicking handler, and the latency histogram. Plus `/metrics`.
//!
//! One hand-written layer instead of a stack of five: each layer of a stack
//! costs its own future, boxing or header work on every request, and on the
//! hot path they added up to more than the handler itself (docs/PERFORMANCE.md).

use std::{
    convert::Infallible,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::{HeaderMap, HeaderName, HeaderValue, Method, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::{FutureExt, future::CatchUnwind};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};
use tracing::Span;
use uuid::Uuid;

use super::ApiError;
use crate::metrics;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` in the layer every listener shares. Applied through
/// `Router::layer`, so routes see their `MatchedPath` label.
pub fn layered<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    request_timeout: Duration,
) -> Router<S> {
    router.layer(ObserveLayer::new(request_timeout))
}

#[derive(Debug, Clone, Copy)]
pub struct ObserveLayer {
    request_timeout: Duration,
}

impl ObserveLayer {
    /// Requests still running after `request_timeout` are answered 503.
    pub fn new(request_timeout: Duration) -> Self {
        Self { request_timeout }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            request_timeout: self.request_timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    request_timeout: Duration,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = Route::from(request.extensions().get::<MatchedPath>().cloned());
        let observation = Observation::begin(request.headers(), request.method(), route);
        let handled = {
            let _entered = observation.span.enter();
            self.inner.call(request)
        };
        Observed {
            handled: AssertUnwindSafe(handled).catch_unwind(),
            deadline: None,
            limit: self.request_timeout,
            observation,
        }
    }
}

impl ObserveLayer {
    /// Observes a request answered at once, without routing or a handler
    /// future (a warm read, `front`): the same request id, span, gauge,
    /// latency histogram under `route`, and panic guard as a routed request.
    pub fn answer_at_once<B>(
        &self,
        request: &axum::http::Request<B>,
        route: &'static str,
        answer: impl FnOnce() -> Response,
    ) -> Response {
        let mut observation =
            Observation::begin(request.headers(), request.method(), Route::Known(route));
        let response = {
            let _entered = observation.span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(answer))
                .unwrap_or_else(|_panic| ApiError::internal(&Panicked).into_response())
        };
        observation.finish(response)
    }
}

/// The route label of logs and metrics: the matched route's pattern.
enum Route {
    Matched(MatchedPath),
    Known(&'static str),
}

impl From<Option<MatchedPath>> for Route {
    fn from(matched: Option<MatchedPath>) -> Self {
        matched.map_or(Route::Known("unmatched"), Route::Matched)
    }
}

impl Route {
    fn label(&self) -> &str {
        match self {
            Route::Matched(path) => path.as_str(),
            Route::Known(label) => label,
        }
    }
}

/// A request from its arrival to its answer: its id, span, start and place
/// in the in-flight gauge.
struct Observation {
    started: Instant,
    span: Span,
    request_id: Option<HeaderValue>,
    route: Route,
    method: Method,
    _in_flight: InFlight,
}

impl Observation {
    fn begin(headers: &HeaderMap, method: &Method, route: Route) -> Self {
        // The caller's id when it sent one, else a fresh one; either way the
        // logs (through the span) and the response carry the same id.
        let request_id = match headers.get(REQUEST_ID) {
            Some(id) => id.clone(),
            None => new_request_id(),
        };
        let span = tracing::info_span!(
            "request",
            method = %method,
            route = route.label(),
            request_id = request_id.to_str().unwrap_or(""),
        );
        Self {
            started: Instant::now(),
            span,
            request_id: Some(request_id),
            route,
            method: method.clone(),
            _in_flight: InFlight::enter(),
        }
    }

    /// Measures and logs the answer, and gives it the request id.
    fn finish(&mut self, mut response: Response) -> Response {
        let _entered = self.span.enter();
        let elapsed = self.started.elapsed();
        metrics::record_latency(
            self.route.label(),
            method_label(&self.method),
            response.status(),
            elapsed,
        );
        tracing::debug!(
            status = response.status().as_u16(),
            latency_us = elapsed.as_micros() as u64,
            "request finished"
        );
        if let Some(request_id) = self.request_id.take() {
            response
                .headers_mut()
                .entry(REQUEST_ID)
                .or_insert(request_id);
        }
        response
    }
}

pin_project! {
    /// A request in progress: its handler's future, bounded in time and
    /// guarded against panics, measured and logged when it ends. A named
    /// future rather than a boxed `async` block: it is on every request.
    pub struct Observed<F> {
        #[pin]
        handled: CatchUnwind<AssertUnwindSafe<F>>,
        // Armed only when the handler does not answer on its first poll: a
        // warm read never touches the timer wheel.
        #[pin]
        deadline: Option<Sleep>,
        limit: Duration,
        observation: Observation,
    }
}

impl<F> Future for Observed<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let observation = this.observation;
        let entered = observation.span.enter();
        let response = match this.handled.poll(cx) {
            Poll::Ready(Ok(Ok(response))) => response,
            Poll::Ready(Err(_panic)) => ApiError::internal(&Panicked).into_response(),
            Poll::Pending => {
                if this.deadline.is_none() {
                    let at = tokio::time::Instant::from_std(observation.started + *this.limit);
                    this.deadline.set(Some(tokio::time::sleep_until(at)));
                }
                let deadline = this.deadline.as_pin_mut().expect("armed above");
                if deadline.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                tracing::warn!(
                    timeout_ms = this.limit.as_millis() as u64,
                    "request timed out"
                );
                ApiError::unavailable("the request took too long; retry later").into_response()
            }
        };
        drop(entered);
        let response = observation.finish(response);
        Poll::Ready(Ok(response))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the handler panicked")]
struct Panicked;

/// A random (v4) request id, as a header value.
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// Counts a request in the in-flight gauge for as long as it lives, even
/// when the client goes away and the request's future is dropped.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::request_began();
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::request_ended();
    }
}

/// Methods with their own label; anything else is counted as `OTHER`, so a
/// client cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
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
        metrics::render(),
    )
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::StatusCode, routing::get};
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        let routes = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/panics",
                get(|| async {
                    if true {
                        panic!("handler bug");
                    }
                    "unreachable"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        layered(routes, Duration::from_millis(50))
    }

    async fn send(request: Request) -> Response {
        app().oneshot(request).await.unwrap()
    }

    fn get_request(path: &str) -> Request {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_fresh_one() {
        let first = send(get_request("/ok")).await;
        let second = send(get_request("/ok")).await;
        let first = first.headers()[REQUEST_ID].to_str().unwrap().to_owned();
        let second = second.headers()[REQUEST_ID].to_str().unwrap();
        assert!(Uuid::try_parse(&first).is_ok(), "{first}");
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn the_callers_id_is_answered_back() {
        let request = Request::get("/ok")
            .header(REQUEST_ID, "trace-me-7")
            .body(Body::empty())
            .unwrap();
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[REQUEST_ID], "trace-me-7");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_problem() {
        let response = send(get_request("/panics")).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            super::super::PROBLEM_JSON
        );
        assert!(response.headers().contains_key(REQUEST_ID));
    }

    #[tokio::test]
    async fn a_slow_handler_is_cut_off_with_a_503() {
        let response = send(get_request("/slow")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
