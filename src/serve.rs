//! `svc serve`: builds the API's components from settings, binds, and runs
//! until the shutdown signal. Built in two steps so tests can bind port 0,
//! read the port, and inject their own components.

use std::{net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::{RecordCache, redis::RedisCache, tiered::TieredCache},
    config::ServeArgs,
    http::{self, AppState, GuardSettings, HttpSettings},
    metrics::Metrics,
    queue::{RabbitPublisher, publisher::PublisherSettings},
    server::{self, ServerSettings},
    storage::postgres::{PostgresStore, connect_lazy},
};

/// The real components for `args`. Nothing connects yet: each dependency
/// connects on first use and recovers by itself, so the API starts (and
/// reports not-ready) even while a dependency is down.
pub fn components(args: &ServeArgs) -> anyhow::Result<AppState> {
    let metrics = Metrics::new();
    let pool = connect_lazy(
        &args
            .postgres
            .pool_settings(args.read_url(), "svc serve", &args.tls),
    )
    .context("cannot configure the database pool")?;
    let redis: Arc<dyn RecordCache> = Arc::new(
        RedisCache::new(&args.redis.settings(&args.tls), metrics.clone())
            .context("cannot configure the cache")?,
    );
    let cache: Arc<dyn RecordCache> = match args.local_cache_mb {
        0 => redis,
        mb => Arc::new(TieredCache::new(redis, mb * 1024 * 1024, metrics.clone())),
    };
    let publisher = RabbitPublisher::start(
        PublisherSettings {
            url: args.amqp.amqp_url.clone(),
            tls: args.tls.settings(),
            topology: args.amqp.topology.topology(),
            channels: args.publish_channels,
            window: args.publish_window,
            confirm_timeout: Duration::from_millis(args.publish_timeout_ms),
        },
        metrics.clone(),
    );
    Ok(AppState::new(
        // A separate read URL means replicas behind PgBouncer, as in production.
        Arc::new(match args.database_read_url {
            Some(_) => PostgresStore::behind_transaction_pooler(pool),
            None => PostgresStore::new(pool),
        }),
        cache,
        publisher,
        metrics,
    ))
}

fn http_settings(args: &ServeArgs) -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        guard: GuardSettings {
            rate_limit: args.rate_limit_per_sec.map(|per_second| {
                let burst = args.rate_limit_burst.unwrap_or(per_second);
                (non_zero(per_second), non_zero(burst))
            }),
            trusted_proxies: args.trusted_proxies.clone(),
            api_keys: args.api_keys.clone(),
            max_in_flight: args.max_in_flight as usize,
        },
        cors_origins: args.cors_origins.clone(),
    }
}

/// The settings parser refuses zero for these.
fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// A bound API server, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
}

impl Application {
    pub fn build(args: &ServeArgs) -> anyhow::Result<Self> {
        Self::build_with(args, components(args)?)
    }

    /// Binds `args.listen` (port 0 picks a free port) and serves `state`.
    pub fn build_with(args: &ServeArgs, state: AppState) -> anyhow::Result<Self> {
        let listener = server::bind(args.listen)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        Ok(Self {
            listener,
            settings: ServerSettings {
                header_timeout: Duration::from_millis(args.header_timeout_ms),
                grace: Duration::from_secs(args.shutdown_grace_secs),
            },
            router: http::router(state, &http_settings(args)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) {
        server::serve(self.listener, self.router, self.settings, shutdown).await;
    }
}

/// `svc serve`.
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Application::build(&args)?;
    tracing::info!(
        address = %app.local_addr(),
        database = %args.read_url(),
        redis = %args.redis.redis_url,
        amqp = %args.amqp.amqp_url,
        "API listening"
    );
    app.run(shutdown).await;
    tracing::info!("API stopped");
    Ok(())
}
