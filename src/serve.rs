//! `svc serve`: builds the API's components from settings, binds, and runs
//! until the shutdown signal. Built in two steps so tests can bind port 0,
//! read the port, and inject their own components.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::{
    cache::{RecordCache, redis::RedisCache, tiered::TieredCache},
    config::ServeArgs,
    http::{
        self, AppState, Front, HttpSettings,
        server::{ServerSettings, serve},
    },
    queue::{RabbitPublisher, Topology, publisher::PublisherSettings},
    storage::postgres::{PoolSettings, PostgresStore, connect_lazy},
};

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

/// The real components for `args`. Nothing connects yet: each dependency
/// connects on first use and recovers by itself, so the API starts (and
/// reports not-ready) even while a dependency is down.
pub fn components(args: &ServeArgs) -> anyhow::Result<AppState> {
    let pool = connect_lazy(&PoolSettings {
        url: args.read_url().clone(),
        max_connections: args.postgres.db_max_connections,
        acquire_timeout: args.postgres.acquire_timeout(),
        application_name: "svc serve",
        tls: args.tls.settings(),
    })
    .context("cannot configure the database pool")?;
    let redis: Arc<dyn RecordCache> = Arc::new(
        RedisCache::new(&args.redis, &args.tls.settings()).context("cannot configure the cache")?,
    );
    let cache: Arc<dyn RecordCache> = match args.local_cache_mb {
        0 => redis,
        mb => Arc::new(TieredCache::new(redis, mb * 1024 * 1024)),
    };
    let publisher = RabbitPublisher::start(PublisherSettings {
        url: args.amqp.amqp_url.clone(),
        tls: args.tls.settings(),
        topology: Topology::from_args(&args.amqp.topology),
        channels: args.publish_channels,
        window: args.publish_window,
        confirm_timeout: Duration::from_millis(args.publish_timeout_ms),
    });
    Ok(AppState::new(
        // A separate read URL means replicas behind PgBouncer, as in production.
        Arc::new(match args.database_read_url {
            Some(_) => PostgresStore::behind_transaction_pooler(pool),
            None => PostgresStore::new(pool),
        }),
        cache,
        publisher,
        args.max_in_flight as usize,
    ))
}

fn http_settings(args: &ServeArgs) -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        rate_limit: args
            .rate_limit_per_sec
            .map(|per_second| (per_second, args.rate_limit_burst.unwrap_or(per_second))),
        api_keys: args.api_keys.clone(),
        cors_origins: args.cors_origins.clone(),
    }
}

/// A bound API server, not yet serving.
pub struct Application {
    listener: TcpListener,
    front: Front,
    settings: ServerSettings,
}

impl Application {
    pub fn build(args: &ServeArgs) -> anyhow::Result<Self> {
        Self::build_with(args, components(args)?)
    }

    /// Binds `args.listen` (port 0 picks a free port) and serves `state`.
    pub fn build_with(args: &ServeArgs, state: AppState) -> anyhow::Result<Self> {
        let listener =
            bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
        let http = http_settings(args);
        Ok(Self {
            listener,
            settings: ServerSettings {
                header_timeout: Duration::from_millis(args.header_timeout_ms),
                grace: Duration::from_secs(args.shutdown_grace_secs),
                // The rate limiter is the only reader of the client's address.
                client_addresses: http.rate_limit.is_some(),
            },
            front: http::api(state, &http),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) {
        serve(self.listener, self.front, self.settings, shutdown).await;
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
