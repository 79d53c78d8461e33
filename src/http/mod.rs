//! The HTTP API of `svc serve`: shared state, the router and its layers.
//! Each resource lives in its own module with its own `router()`.

mod data;
pub mod docs;
mod error;
mod front;
pub mod guard;
mod health;
pub mod observe;
pub mod server;
mod watchdog;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    handler::Handler,
    http::{HeaderName, HeaderValue, Method, header},
    response::IntoResponse,
};
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use front::Front;
pub use health::{Check, Checks, Ready, check, probe_storage, verdict};

use crate::{
    cache::RecordCache, queue::Publisher, singleflight::SingleFlight, storage::RecordStore,
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach. One `Arc`: every request clones the state,
/// and one reference count costs less than four.
#[derive(Clone)]
pub struct AppState(Arc<Components>);

pub struct Components {
    pub store: Arc<dyn RecordStore>,
    pub cache: Arc<dyn RecordCache>,
    pub publisher: Arc<dyn Publisher>,
    /// Coalesces concurrent database reads of the same id.
    reads: SingleFlight<Uuid, data::Loaded>,
    /// Bounds the requests in `/data` handlers at once.
    in_flight: guard::InFlightLimit,
}

impl AppState {
    /// The parts handlers use; at most `max_in_flight` requests are in
    /// `/data` handlers at once (`SVC_MAX_IN_FLIGHT`).
    pub fn new(
        store: Arc<dyn RecordStore>,
        cache: Arc<dyn RecordCache>,
        publisher: Arc<dyn Publisher>,
        max_in_flight: usize,
    ) -> Self {
        Self(Arc::new(Components {
            store,
            cache,
            publisher,
            reads: SingleFlight::default(),
            in_flight: guard::InFlightLimit::new(max_in_flight),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Components;

    fn deref(&self) -> &Components {
        &self.0
    }
}

/// How the API protects itself; see the `SVC_*` settings of `svc serve`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    /// Requests per second and burst per client address, when limited.
    pub rate_limit: Option<(u32, u32)>,
    /// Keys that writes need; empty: writes are open.
    pub api_keys: Vec<crate::config::ApiKey>,
    /// Origins CORS allows; empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
}

/// The whole API, ready to serve: the router behind the warm-read front.
pub fn api(state: AppState, settings: &HttpSettings) -> Front {
    Front::api(router(state.clone(), settings), state, settings)
}

/// Every route of the API.
fn router(state: AppState, settings: &HttpSettings) -> Router {
    crate::metrics::handle();
    let observe = observe::ObserveLayer::new(settings.request_timeout);
    // The guard (rate limit, then key) runs inside the observe layer, so a
    // refusal is measured and carries a request id too; the handlers then
    // take their in-flight place, so neither floods nor strangers take
    // capacity. (The body limit, `MAX_BODY_BYTES`, is applied by the one
    // handler that reads a body: a layer on every route would cost every
    // request.)
    let guard = guard::Guard {
        rate_limit: settings
            .rate_limit
            .map(|(per_second, burst)| guard::RateLimit::new(per_second, burst)),
        api_keys: (!settings.api_keys.is_empty())
            .then(|| guard::ApiKeys::new(settings.api_keys.iter().map(|k| k.expose()))),
    };
    let rest = Router::new()
        .merge(health::router())
        .with_state(state.clone())
        .merge(observe::metrics_router())
        .merge(docs::router());
    let mut api = data::router(&guard, observe)
        .with_state(state)
        .merge(rest.layer(observe))
        .fallback(not_found.layer(observe))
        .method_not_allowed_fallback(method_not_allowed.layer(observe));
    if let Some(cors) = cors(&settings.cors_origins) {
        // Outermost, so preflights are answered before any route (and,
        // alone of all answers, without a request id).
        api = api.layer(cors);
    }
    api
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
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

async fn not_found() -> impl IntoResponse {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::method_not_allowed()
}
