//! The HTTP server every svc listener runs (the API of `svc serve`, and the
//! health and metrics listener of `svc consume`): hyper-util's server
//! builder, and the layers every route shares.
//!
//! - A header-read timeout (hyper's own, on a Tokio timer) closes a client
//!   that sends its request head too slowly and a keep-alive connection gone
//!   idle. `axum::serve` cannot set it, hence the builder.
//! - Graceful shutdown stops accepting, lets requests in flight finish within
//!   a grace period, and closes idle connections.
//! - The layers (tower-http and tower): a request id (the caller's, or a
//!   fresh UUID) in the span and the response; a span per request named by
//!   its matched route; the latency histogram and in-flight gauge; a panic
//!   answered as a 500 problem; a request past its time answered 503.

use std::{convert::Infallible, net::SocketAddr, time::Duration, time::Instant};

use axum::{
    Router,
    error_handling::HandleErrorLayer,
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{metrics::Metrics, problem::ApiError};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Pending connections the kernel queues before `accept`: bursts of
/// thousands of clients must not be refused.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with a large backlog and address reuse (fast restarts).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// A connection that has not sent a complete request head within this is
    /// closed: a slow or silent client, or an idle keep-alive connection.
    pub header_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
}

/// Wraps every route of `router` in the layers all listeners share.
/// Applied through `Router::layer`, so each request's span and latency carry
/// its matched route.
pub fn observed(router: Router, metrics: Metrics, request_timeout: Duration) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(middleware::from_fn_with_state(metrics, measure))
            .layer(CatchPanicLayer::custom(|_panic| {
                ApiError::internal(&Panicked).into_response()
            }))
            .layer(HandleErrorLayer::new(|_: BoxError| async {
                tracing::warn!("request timed out");
                ApiError::unavailable("the request took too long; retry later")
            }))
            .timeout(request_timeout),
    )
}

/// `GET /metrics`: the Prometheus text of `metrics`.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics.render(),
    )
}

fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %request.method(), route, request_id)
}

/// Measures a request from its arrival to its answer under its route
/// pattern, method and status, and counts it in flight meanwhile.
async fn measure(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let _in_flight = metrics.request_began();
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.request_finished(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}

#[derive(Debug, thiserror::Error)]
#[error("the handler panicked")]
struct Panicked;

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains.
/// Each request carries its client's address (`ConnectInfo`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
            .map_err(|never: Infallible| match never {});
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.grace) => {
            tracing::warn!(grace_secs = settings.grace.as_secs(), "grace period over; closing remaining connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::StatusCode};
    use uuid::Uuid;

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
        observed(routes, Metrics::new(), Duration::from_millis(50))
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
            crate::problem::PROBLEM_JSON
        );
        assert!(response.headers().contains_key(REQUEST_ID));
    }

    #[tokio::test]
    async fn a_slow_handler_is_cut_off_with_a_503() {
        let response = send(get_request("/slow")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        assert!(response.headers().contains_key(REQUEST_ID));
    }

    #[tokio::test]
    async fn every_answer_is_measured_under_its_route() {
        let metrics = Metrics::new();
        let routes = Router::new().route("/items/{id}", get(|| async { "ok" }));
        let app = observed(routes, metrics.clone(), Duration::from_secs(1));
        let response = app.oneshot(get_request("/items/7")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = metrics.render();
        assert!(
            text.contains(r#"http_request_duration_seconds_count{route="/items/{id}",method="GET",status="200"} 1"#),
            "{text}"
        );
    }
}
