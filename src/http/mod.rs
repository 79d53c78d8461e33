//! The HTTP API of `svc serve`: shared state, the router and its layers.
//! Each resource lives in its own module with its own `router()`.

mod client_address;
mod data;
pub mod docs;
mod guard;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::FromRef,
    http::{HeaderName, HeaderValue, Method, header},
    response::IntoResponse,
};
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

pub use client_address::parse_trusted_proxy;
pub use guard::GuardSettings;

pub use crate::problem::{ApiError, PROBLEM_JSON, Problem};
use crate::{
    cache::RecordCache, health, metrics::Metrics, queue::Publisher, server,
    singleflight::SingleFlight, storage::RecordStore,
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<Components>);

pub struct Components {
    pub store: Arc<dyn RecordStore>,
    pub cache: Arc<dyn RecordCache>,
    pub publisher: Arc<dyn Publisher>,
    pub metrics: Metrics,
    /// Coalesces concurrent database reads of the same id.
    reads: SingleFlight<Uuid, data::Loaded>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn RecordStore>,
        cache: Arc<dyn RecordCache>,
        publisher: Arc<dyn Publisher>,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Components {
            store,
            cache,
            publisher,
            metrics,
            reads: SingleFlight::default(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Components;

    fn deref(&self) -> &Components {
        &self.0
    }
}

/// The state of the `/data` routes: the application's, and the guard
/// their requests pass first.
#[derive(Clone)]
pub struct DataState {
    app: AppState,
    guard: Arc<guard::Guard>,
}

impl FromRef<DataState> for AppState {
    fn from_ref(state: &DataState) -> Self {
        state.app.clone()
    }
}

impl FromRef<DataState> for Arc<guard::Guard> {
    fn from_ref(state: &DataState) -> Self {
        state.guard.clone()
    }
}

/// How the API protects itself; see the `SVC_*` settings of `svc serve`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    pub guard: GuardSettings,
    /// Origins CORS allows; empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
}

/// Every route of the API, with its layers.
pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    let probe = health::Probe {
        store: state.store.clone(),
        cache: state.cache.clone(),
        broker_up: {
            let publisher = state.publisher.clone();
            Arc::new(move || publisher.is_connected())
        },
    };
    let metrics = state.metrics.clone();
    let data = DataState {
        guard: Arc::new(guard::Guard::new(&settings.guard, metrics.clone())),
        app: state,
    };
    let api = Router::new()
        .merge(data::router().with_state(data))
        .merge(health::router(probe))
        .merge(server::metrics_router(metrics.clone()))
        .merge(docs::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let api = server::observed(api, metrics, settings.request_timeout);
    match cors(&settings.cors_origins) {
        // Outermost, so preflights are answered before any route (and,
        // alone of all answers, without a request id).
        Some(cors) => api.layer(cors),
        None => api,
    }
}

/// CORS for the configured origins, or none at all.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
                server::REQUEST_ID,
            ])
            .expose_headers([header::LOCATION, header::RETRY_AFTER, server::REQUEST_ID])
            .max_age(Duration::from_secs(600)),
    )
}

async fn not_found() -> impl IntoResponse {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::method_not_allowed()
}
