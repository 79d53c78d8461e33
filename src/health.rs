//! `/health/live` and `/health/ready`, for `svc serve` and `svc consume`
//! alike: each process says what its broker link is, the rest is the same.

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Serialize;

use crate::{cache::RecordCache, storage::RecordStore, telemetry::error_chain};

/// What a process's readiness rests on.
#[derive(Clone)]
pub struct Probe {
    pub store: Arc<dyn RecordStore>,
    pub cache: Arc<dyn RecordCache>,
    /// Whether the process's link to the broker is up: serve's publishing
    /// connection, or the consumer's subscription.
    pub broker_up: Arc<dyn Fn() -> bool + Send + Sync>,
}

pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(probe)
}

/// Longest a readiness probe waits on one dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Live {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// State of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Ok,
    Down,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Checks {
    pub postgres: Check,
    pub redis: Check,
    pub rabbitmq: Check,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ok`, `degraded` (Redis down: slower, still serving) or `unavailable`.
    #[schema(example = "ok")]
    pub status: &'static str,
    pub checks: Checks,
}

/// The process is running.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "Alive", body = Live)))]
pub(crate) async fn live() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// The instance can serve: Postgres and RabbitMQ reachable. Redis down is
/// `degraded` and still 200, since the cache only adds speed (reads fall
/// back to Postgres, the consumer skips its write-through).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready (`ok` or `degraded`)", body = Ready),
        (status = 503, description = "Cannot serve: Postgres or RabbitMQ is down", body = Ready),
    ))]
pub(crate) async fn ready(State(probe): State<Probe>) -> (StatusCode, Json<Ready>) {
    // Postgres and Redis are pinged at once, each within the check timeout.
    let (postgres, redis) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, probe.store.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, probe.cache.ping()),
    );
    verdict(Checks {
        postgres: probed("postgres", postgres),
        redis: probed("redis", redis),
        rabbitmq: check((probe.broker_up)()),
    })
}

/// A failed check is logged with the service and the reason (a certificate
/// that does not verify, say), so a red probe explains itself.
fn probed<E: std::error::Error + 'static>(
    service: &'static str,
    outcome: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> Check {
    match outcome {
        Ok(Ok(())) => Check::Ok,
        Ok(Err(err)) => {
            tracing::warn!(service, error = %error_chain(&err), "readiness check failed");
            Check::Down
        }
        Err(_) => {
            tracing::warn!(
                service,
                timeout_ms = CHECK_TIMEOUT.as_millis() as u64,
                "readiness check timed out"
            );
            Check::Down
        }
    }
}

fn check(up: bool) -> Check {
    if up { Check::Ok } else { Check::Down }
}

fn verdict(checks: Checks) -> (StatusCode, Json<Ready>) {
    let (code, status) = if checks.postgres == Check::Down || checks.rabbitmq == Check::Down {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if checks.redis == Check::Down {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    (code, Json(Ready { status, checks }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(postgres: bool, redis: bool, rabbitmq: bool) -> (StatusCode, &'static str) {
        let (code, Json(ready)) = verdict(Checks {
            postgres: check(postgres),
            redis: check(redis),
            rabbitmq: check(rabbitmq),
        });
        (code, ready.status)
    }

    #[test]
    fn redis_down_is_degraded_but_ready() {
        assert_eq!(status(true, true, true), (StatusCode::OK, "ok"));
        assert_eq!(status(true, false, true), (StatusCode::OK, "degraded"));
    }

    #[test]
    fn postgres_or_rabbitmq_down_is_not_ready() {
        assert_eq!(status(false, true, true).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(true, true, false).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
