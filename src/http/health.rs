//! `/health/live` and `/health/ready` of the API.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Serialize;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
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
async fn live() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// The instance can serve: Postgres and RabbitMQ reachable. Redis down is
/// `degraded` and still 200, since the cache only adds speed.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready (`ok` or `degraded`)", body = Ready),
        (status = 503, description = "Cannot serve: Postgres or RabbitMQ is down", body = Ready),
    ))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    let (postgres, redis) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.cache.ping()),
    );
    let checks = Checks {
        postgres: check(matches!(postgres, Ok(Ok(())))),
        redis: check(matches!(redis, Ok(Ok(())))),
        rabbitmq: check(state.publisher.is_connected()),
    };
    verdict(checks)
}

pub fn check(up: bool) -> Check {
    if up { Check::Ok } else { Check::Down }
}

pub fn verdict(checks: Checks) -> (StatusCode, Json<Ready>) {
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
