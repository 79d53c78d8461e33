//! The HTTP API of `svc serve`: shared state, the router and its layers.
//! Each resource lives in its own module with its own `router()`.

mod data;
pub mod docs;
mod error;
mod health;
pub mod observe;
pub mod server;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit, response::IntoResponse};
use uuid::Uuid;

pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use health::{Check, Checks, Ready, check, verdict};

use crate::{
    cache::RecordCache, queue::Publisher, singleflight::SingleFlight, storage::RecordStore,
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn RecordStore>,
    pub cache: Arc<dyn RecordCache>,
    pub publisher: Arc<dyn Publisher>,
    /// Coalesces concurrent database reads of the same id.
    reads: Arc<SingleFlight<Uuid, data::Loaded>>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn RecordStore>,
        cache: Arc<dyn RecordCache>,
        publisher: Arc<dyn Publisher>,
    ) -> Self {
        Self {
            store,
            cache,
            publisher,
            reads: Arc::default(),
        }
    }
}

/// The whole API, ready to serve.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    crate::metrics::handle();
    let api = Router::new()
        .merge(data::router())
        .merge(health::router())
        .with_state(state)
        .merge(observe::metrics_router())
        .merge(docs::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    observe::layered(api, request_timeout)
}

async fn not_found() -> impl IntoResponse {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::method_not_allowed()
}
