//! The consumer's small HTTP listener: `/metrics`, `/health/live`, `/health/ready`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::RecordCache,
    http::{
        observe,
        server::{ServerSettings, serve as serve_http},
    },
    storage::RecordStore,
};

#[derive(Clone)]
pub struct ConsumerHealth {
    store: Arc<dyn RecordStore>,
    cache: Arc<dyn RecordCache>,
    consuming: Arc<AtomicBool>,
}

impl ConsumerHealth {
    pub(super) fn new(
        store: Arc<dyn RecordStore>,
        cache: Arc<dyn RecordCache>,
        consuming: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            cache,
            consuming,
        }
    }

    pub fn router(self) -> Router {
        let health = Router::new()
            .route(
                "/health/live",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/health/ready", get(ready))
            .with_state(self)
            .merge(observe::metrics_router());
        observe::layered(health, Duration::from_secs(5))
    }
}

/// Ready while consuming from the broker with the database reachable; Redis
/// down is `degraded` (write-through skipped, reads fall back to Postgres).
async fn ready(State(health): State<ConsumerHealth>) -> (StatusCode, Json<crate::http::Ready>) {
    use crate::http::{Checks, check, probe_storage, verdict};
    let (postgres, redis) = probe_storage(health.store.as_ref(), health.cache.as_ref()).await;
    verdict(Checks {
        postgres,
        redis,
        rabbitmq: check(health.consuming.load(Ordering::Acquire)),
    })
}

pub async fn serve(listener: TcpListener, health: ConsumerHealth, shutdown: CancellationToken) {
    let settings = ServerSettings {
        header_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(2),
        client_addresses: false,
    };
    serve_http(listener, health.router().into(), settings, shutdown).await;
}
