//! Every setting of every subcommand: clap flags, each backed by an
//! environment variable (a `.env` file is loaded into the environment first).
//!
//! Values are parsed and validated here, before anything connects, so a
//! missing or malformed setting stops the command with one clear line
//! (see [`crate::cli`]). Connection strings are [`SecretUrl`]s: their
//! `Debug` and `Display` never show a password; API keys are [`ApiKey`]s,
//! never shown at all.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};
use url::Url;

use crate::tls::TlsSettings;

/// A connection URL whose password is masked whenever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Url);

impl SecretUrl {
    /// The full URL, password included: only for handing to a client library.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    fn parse(text: &str, schemes: &[&str]) -> Result<Self, String> {
        let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        if !schemes.contains(&url.scheme()) {
            return Err(format!(
                "scheme must be {} (got `{}`)",
                schemes.join(" or "),
                url.scheme()
            ));
        }
        Ok(Self(url))
    }

    /// The value of the query parameter `key`, if the URL has it.
    pub fn query_value(&self, key: &str) -> Option<String> {
        self.0
            .query_pairs()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.into_owned())
    }

    pub fn path(&self) -> &str {
        self.0.path()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut masked = self.0.clone();
        if masked.password().is_some() {
            let _ = masked.set_password(Some("****"));
        }
        f.write_str(masked.as_str())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// An API key of `svc serve`: compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key itself: only for comparing with the one a request presents.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

pub fn parse_postgres_url(text: &str) -> Result<SecretUrl, String> {
    let url = SecretUrl::parse(text, &["postgres", "postgresql"])?;
    sqlx::postgres::PgConnectOptions::from_str(text)
        .map_err(|e| format!("not a Postgres connection string ({e})"))?;
    // sqlx reads these files only when it connects: a bad path would be an
    // endless reconnect loop instead of a clear stop at start.
    for key in ["sslrootcert", "sslcert", "sslkey"] {
        if let Some(path) = url.query_value(key) {
            std::fs::File::open(&path)
                .map_err(|e| format!("{key} `{path}` cannot be read ({e})"))?;
        }
    }
    Ok(url)
}

pub fn parse_redis_url(text: &str) -> Result<SecretUrl, String> {
    let url = SecretUrl::parse(text, &["redis", "rediss", "unix", "redis+unix"])?;
    redis::Client::open(text).map_err(|e| format!("not a Redis URL ({e})"))?;
    Ok(url)
}

pub fn parse_amqp_url(text: &str) -> Result<SecretUrl, String> {
    let url = SecretUrl::parse(text, &["amqp", "amqps"])?;
    text.parse::<lapin::uri::AMQPUri>()
        .map_err(|e| format!("not an AMQP URL ({e})"))?;
    Ok(url)
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected an address and port such as 0.0.0.0:8000".to_owned())
}

fn parse_u64(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| "expected a whole number".to_owned())
}

fn parse_positive_u64(text: &str) -> Result<u64, String> {
    match parse_u64(text)? {
        0 => Err("must be greater than zero".into()),
        n => Ok(n),
    }
}

fn parse_api_key(text: &str) -> Result<ApiKey, String> {
    let key = text.trim();
    if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("each key must be at least 16 printable characters, without spaces".into());
    }
    Ok(ApiKey(key.to_owned()))
}

fn parse_origin(text: &str) -> Result<String, String> {
    let origin = text.trim();
    if origin == "*" {
        return Ok(origin.to_owned());
    }
    let url = Url::parse(origin)
        .map_err(|_| "expected an origin such as https://app.example.com".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || origin.ends_with('/') {
        return Err(
            "expected an origin such as https://app.example.com (scheme and host only)".into(),
        );
    }
    Ok(origin.to_owned())
}

fn parse_positive_u32(text: &str) -> Result<u32, String> {
    let n = parse_positive_u64(text)?;
    u32::try_from(n).map_err(|_| "too large".to_owned())
}

fn parse_prefix(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 100
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err("use 1 to 100 characters among letters, digits, `.`, `-`, `_` and `:`".into())
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format; by default `pretty` on a terminal and `json` otherwise.
    #[arg(long, env = "SVC_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

/// Trust for the connections whose URL asks for TLS.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM file of a private CA to trust, besides the system's roots, when a
    /// Postgres, Redis or RabbitMQ URL asks for TLS.
    #[arg(long, env = "SVC_TLS_CA_FILE", value_parser = crate::tls::parse_ca_file)]
    pub tls_ca_file: Option<TlsSettings>,
}

impl TlsArgs {
    pub fn settings(&self) -> TlsSettings {
        self.tls_ca_file.clone().unwrap_or_default()
    }
}

/// The primary Postgres database (writes, migrations).
#[derive(Debug, Clone, Args)]
pub struct PostgresArgs {
    /// Postgres primary (writes, migrations). TLS as `psql` reads it: `sslmode`
    /// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`),
    /// `sslrootcert`, and `sslcert` with `sslkey` for a client certificate.
    #[arg(long, env = "DATABASE_URL", value_parser = parse_postgres_url)]
    pub database_url: SecretUrl,

    /// Most connections each pool holds.
    #[arg(long, env = "SVC_DB_MAX_CONNECTIONS", default_value = "16", value_parser = parse_positive_u32)]
    pub db_max_connections: u32,

    /// How long a query waits for a pooled connection before failing fast.
    #[arg(long, env = "SVC_DB_ACQUIRE_TIMEOUT_MS", default_value = "250", value_parser = parse_positive_u64)]
    pub db_acquire_timeout_ms: u64,
}

impl PostgresArgs {
    /// The pool of `url` (the primary's, or the read URL) with these limits.
    pub fn pool_settings(
        &self,
        url: &SecretUrl,
        application_name: &'static str,
        tls: &TlsArgs,
    ) -> crate::storage::postgres::PoolSettings {
        crate::storage::postgres::PoolSettings {
            url: url.clone(),
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            application_name,
            tls: tls.settings(),
        }
    }
}

/// The Redis cache.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis: `redis://`, or `rediss://` for TLS; `user:password@` for an ACL user.
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: SecretUrl,

    /// Longest wait for one Redis command; past it the cache counts as a miss.
    #[arg(long, env = "SVC_REDIS_TIMEOUT_MS", default_value = "100", value_parser = parse_positive_u64)]
    pub redis_timeout_ms: u64,

    /// Prefix of every Redis key.
    #[arg(long, env = "SVC_CACHE_PREFIX", default_value = "svc:", value_parser = parse_prefix)]
    pub cache_prefix: String,

    /// How long a record stays cached.
    #[arg(long, env = "SVC_CACHE_TTL_SECS", default_value = "300", value_parser = parse_positive_u64)]
    pub cache_ttl_secs: u64,

    /// How long the "pending" marker of an accepted write lives if the
    /// consumer never persists it.
    #[arg(long, env = "SVC_PENDING_TTL_SECS", default_value = "600", value_parser = parse_positive_u64)]
    pub pending_ttl_secs: u64,
}

impl RedisArgs {
    pub fn settings(&self, tls: &TlsArgs) -> crate::cache::redis::RedisSettings {
        crate::cache::redis::RedisSettings {
            url: self.redis_url.clone(),
            tls: tls.settings(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            prefix: self.cache_prefix.clone(),
            record_ttl_secs: self.cache_ttl_secs,
            pending_ttl_secs: self.pending_ttl_secs,
        }
    }
}

/// Names and limits of the RabbitMQ topology.
#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    /// Prefix of the exchange and queue names (`<prefix>.data`, `<prefix>.data.ingest`, ...).
    #[arg(long, env = "SVC_QUEUE_PREFIX", default_value = "svc", value_parser = parse_prefix)]
    pub queue_prefix: String,

    /// Deliveries of one message before it is dead-lettered.
    #[arg(long, env = "SVC_DELIVERY_LIMIT", default_value = "5", value_parser = parse_positive_u32)]
    pub delivery_limit: u32,
}

impl TopologyArgs {
    pub fn topology(&self) -> crate::queue::Topology {
        crate::queue::Topology::new(&self.queue_prefix, self.delivery_limit)
    }
}

/// The RabbitMQ broker.
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// RabbitMQ: `amqp://`, or `amqps://` for TLS. The query parameters
    /// `heartbeat` (s), `frame_max`, `channel_max` and `connection_timeout`
    /// (ms) are honoured.
    #[arg(long, env = "AMQP_URL", value_parser = parse_amqp_url)]
    pub amqp_url: SecretUrl,

    #[command(flatten)]
    pub topology: TopologyArgs,
}

/// `svc serve`
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "SVC_LISTEN", default_value = "0.0.0.0:8000", value_parser = parse_listen)]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub postgres: PostgresArgs,

    /// Postgres for reads (a replica, or PgBouncer in transaction pooling
    /// mode); defaults to `DATABASE_URL`. TLS as `DATABASE_URL`.
    #[arg(long, env = "DATABASE_READ_URL", value_parser = parse_postgres_url)]
    pub database_read_url: Option<SecretUrl>,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Memory for the in-process cache of record bodies in front of Redis, in
    /// MiB (0 turns it off). Records never change, so it is never stale.
    #[arg(long, env = "SVC_LOCAL_CACHE_MB", default_value = "16", value_parser = parse_u64)]
    pub local_cache_mb: u64,

    /// Requests in `/data` handlers at once; past it, new ones get 503 at once.
    #[arg(long, env = "SVC_MAX_IN_FLIGHT", default_value = "8192", value_parser = parse_positive_u32)]
    pub max_in_flight: u32,

    /// Requests per second one client address may make to `/data` (off when unset).
    #[arg(long, env = "SVC_RATE_LIMIT_PER_SEC", value_parser = parse_positive_u32)]
    pub rate_limit_per_sec: Option<u32>,

    /// Requests a client may make at once above its rate (default: one second's worth).
    #[arg(long, env = "SVC_RATE_LIMIT_BURST", value_parser = parse_positive_u32)]
    pub rate_limit_burst: Option<u32>,

    /// Comma-separated addresses or networks (CIDR) of reverse proxies whose
    /// `Forwarded`/`X-Forwarded-For` name the client for rate limits; from
    /// any other peer those headers are ignored.
    #[arg(long, env = "SVC_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::http::parse_trusted_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Comma-separated API keys; when set, `POST /data` needs one of them.
    #[arg(long, env = "SVC_API_KEYS", value_delimiter = ',', value_parser = parse_api_key, hide_env_values = true)]
    pub api_keys: Vec<ApiKey>,

    /// Comma-separated origins allowed by CORS (`*` for any); CORS is off when unset.
    #[arg(long, env = "SVC_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Long-lived channels used for publishing, each with many confirms in flight.
    #[arg(long, env = "SVC_PUBLISH_CHANNELS", default_value = "2", value_parser = parse_positive_u32)]
    pub publish_channels: u32,

    /// Most writes awaiting the broker's confirm at once, over all channels;
    /// more wait their turn in order, inside the publish timeout.
    #[arg(long, env = "SVC_PUBLISH_WINDOW", default_value = "256", value_parser = parse_positive_u32)]
    pub publish_window: u32,

    /// Longest wait for the broker's confirm of one write before answering 503.
    #[arg(long, env = "SVC_PUBLISH_TIMEOUT_MS", default_value = "1000", value_parser = parse_positive_u64)]
    pub publish_timeout_ms: u64,

    /// Longest time a request may take before it is answered 503.
    #[arg(long, env = "SVC_REQUEST_TIMEOUT_MS", default_value = "2000", value_parser = parse_positive_u64)]
    pub request_timeout_ms: u64,

    /// Longest a connection may take to send a request head, idle keep-alive time included: slow and idle clients are closed.
    #[arg(long, env = "SVC_HEADER_TIMEOUT_MS", default_value = "10000", value_parser = parse_positive_u64)]
    pub header_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "SVC_SHUTDOWN_GRACE_SECS", default_value = "25", value_parser = parse_positive_u64)]
    pub shutdown_grace_secs: u64,
}

impl ServeArgs {
    pub fn read_url(&self) -> &SecretUrl {
        self.database_read_url
            .as_ref()
            .unwrap_or(&self.postgres.database_url)
    }
}

/// `svc consume`
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Address of the consumer's own `/metrics` and `/health/*` listener.
    #[arg(long, env = "SVC_METRICS_LISTEN", default_value = "0.0.0.0:9000", value_parser = parse_listen)]
    pub metrics_listen: SocketAddr,

    #[command(flatten)]
    pub postgres: PostgresArgs,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Most messages written by one multi-row insert.
    #[arg(long, env = "SVC_BATCH_SIZE", default_value = "500", value_parser = parse_positive_u32)]
    pub batch_size: u32,

    /// Longest wait for a batch to fill once its first message arrived.
    #[arg(long, env = "SVC_BATCH_WAIT_MS", default_value = "20", value_parser = parse_positive_u64)]
    pub batch_wait_ms: u64,

    /// Unacknowledged messages the broker may hand over; defaults to twice the batch size.
    #[arg(long, env = "SVC_PREFETCH", value_parser = parse_positive_u32)]
    pub prefetch: Option<u32>,

    /// Ceiling of the backoff between retries of a failed database write.
    #[arg(long, env = "SVC_RETRY_MAX_BACKOFF_MS", default_value = "5000", value_parser = parse_positive_u64)]
    pub retry_max_backoff_ms: u64,

    /// How often the depths of the ingest and dead-letter queues are read.
    #[arg(long, env = "SVC_QUEUE_WATCH_MS", default_value = "5000", value_parser = parse_positive_u64)]
    pub queue_watch_ms: u64,
}

impl ConsumeArgs {
    pub fn consumer_settings(&self) -> crate::consume::ConsumerSettings {
        let prefetch = self.prefetch.unwrap_or(self.batch_size.saturating_mul(2));
        crate::consume::ConsumerSettings {
            amqp_url: self.amqp.amqp_url.clone(),
            tls: self.tls.settings(),
            topology: self.amqp.topology.topology(),
            batch_size: self.batch_size as usize,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
            prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
            retry_max_backoff: Duration::from_millis(self.retry_max_backoff_ms),
            queue_watch: Duration::from_millis(self.queue_watch_ms),
        }
    }
}

/// `svc migrate`
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// List applied and pending migrations instead of applying them.
    #[arg(long)]
    pub status: bool,

    /// Postgres connection string of the primary.
    #[arg(long, env = "DATABASE_URL", value_parser = parse_postgres_url)]
    pub database_url: SecretUrl,

    /// AMQP connection string (not needed with `--status`).
    #[arg(long, env = "AMQP_URL", value_parser = parse_amqp_url, required_unless_present = "status")]
    pub amqp_url: Option<SecretUrl>,

    #[command(flatten)]
    pub topology: TopologyArgs,

    #[command(flatten)]
    pub tls: TlsArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_when_printed() {
        let url = parse_postgres_url("postgres://svc:hunter2@db:5432/svc").unwrap();
        assert_eq!(url.to_string(), "postgres://svc:****@db:5432/svc");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(url.expose().contains("hunter2"));
    }

    #[test]
    fn wrong_schemes_are_refused() {
        assert!(parse_postgres_url("mysql://localhost/db").is_err());
        assert!(parse_redis_url("http://localhost").is_err());
        assert!(parse_amqp_url("redis://localhost").is_err());
        assert!(parse_amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(parse_redis_url("redis://127.0.0.1:6379").is_ok());
    }

    #[test]
    fn numbers_must_be_positive() {
        assert!(parse_positive_u64("0").is_err());
        assert!(parse_positive_u64("-1").is_err());
        assert!(parse_positive_u64("ten").is_err());
        assert_eq!(parse_positive_u64("10"), Ok(10));
        assert!(parse_positive_u32("5000000000").is_err());
    }

    #[test]
    fn prefixes_are_restricted_to_safe_characters() {
        assert!(parse_prefix("svc").is_ok());
        assert!(parse_prefix("test-1.a_b:").is_ok());
        assert!(parse_prefix("").is_err());
        assert!(parse_prefix("a b").is_err());
        assert!(parse_prefix("a*").is_err());
    }

    #[test]
    fn api_keys_and_origins_are_checked() {
        let key = parse_api_key(" 0123456789abcdef ").unwrap();
        assert_eq!(key.expose(), "0123456789abcdef");
        assert_eq!(format!("{key:?}"), "ApiKey(****)");
        assert!(parse_api_key("short").is_err());
        assert!(parse_api_key("has a space in it!!").is_err());
        assert!(parse_origin("https://app.example.com").is_ok());
        assert!(parse_origin("*").is_ok());
        assert!(parse_origin("https://app.example.com/path").is_err());
        assert!(parse_origin("app.example.com").is_err());
    }

    #[test]
    fn listen_addresses_need_a_port() {
        assert!(parse_listen("0.0.0.0:8000").is_ok());
        assert!(parse_listen("localhost").is_err());
    }
}
