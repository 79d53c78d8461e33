//! Test support: every test gets its own database, queue names and cache
//! prefix on the real Postgres, RabbitMQ and Redis, an API on port 0, and
//! cleans all of it up when it ends (even on panic).
//!
//! The services are found through `SVC_TEST_DATABASE_URL` (an admin
//! connection; default `postgres://postgres@127.0.0.1:5432/postgres`),
//! `SVC_TEST_REDIS_URL` and `SVC_TEST_AMQP_URL`. A service that is not
//! reachable fails the test with a message saying so; nothing is skipped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions},
};
use serde_json::Value;
use sqlx::PgPool;
use svc::{
    cache::{RecordCache, redis::RedisCache},
    cli::{self, Command},
    config::{ConsumeArgs, ServeArgs},
    consume::{self, Consumer, ConsumerSettings},
    domain::{DataMessage, Record},
    http::AppState,
    metrics::Metrics,
    queue::Topology,
    queue::{Publisher, RabbitPublisher, publisher::PublisherSettings},
    serve::{self, Application},
    storage::StoreError,
    storage::{RecordStore, postgres::PostgresStore},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn admin_database_url() -> String {
    std::env::var("SVC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("SVC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn amqp_url() -> String {
    std::env::var("SVC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `host:port` of a service URL, for a fault proxy to relay to.
pub fn host_port(url: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
}

/// Polls `check` every 100 ms until it holds; fails the test after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(what, within, || {
        let held = check();
        async move { held.await.then_some(()) }
    })
    .await
}

/// Polls `check` every 100 ms until it gives a value; fails the test after
/// `within`. The one polling loop of the tests.
pub async fn eventually_some<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {within:?}");
}

/// The value of one series (`name{labels}` exactly as rendered) in a
/// Prometheus text; 0 when the series is absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// An address where nothing listens: a dependency that is down.
pub const DEAD_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
pub const DEAD_REDIS_URL: &str = "redis://127.0.0.1:1";

/// The isolated resources of one test.
pub struct Sandbox {
    pub name: String,
    pub database_url: String,
    pub pool: PgPool,
    pub topology: Topology,
    pub cache_prefix: String,
}

impl Sandbox {
    pub async fn new() -> Self {
        let name = format!("svc_test_{}", Uuid::now_v7().simple());
        let admin = admin_database_url();
        let mut database_url = url::Url::parse(&admin).expect("SVC_TEST_DATABASE_URL is a URL");
        database_url.set_path(&name);
        let database_url = database_url.to_string();

        let admin_pool = connect(&admin).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin_pool)
            .await
            .expect("can create a test database");
        admin_pool.close().await;
        let url = svc::config::parse_postgres_url(&database_url).unwrap();
        svc::migrate::apply(&url, &Default::default())
            .await
            .expect("migrations apply");

        let topology = Topology::new(&format!("test.{name}"), 3);
        let amqp = svc::config::parse_amqp_url(&amqp_url()).unwrap();
        svc::migrate::declare_topology(&amqp, &Default::default(), &topology)
            .await
            .unwrap_or_else(|err| panic!("RabbitMQ is not reachable at {}: {err:#}", amqp_url()));

        Self {
            pool: connect(&database_url).await,
            cache_prefix: format!("test:{name}:"),
            name,
            database_url,
            topology,
        }
    }

    pub fn queue_prefix(&self) -> String {
        format!("test.{}", self.name)
    }

    /// The command line of `svc <command>` in this sandbox: its database,
    /// queues and key prefix on the shared services, listening on port 0;
    /// `extra` overrides or adds flags.
    fn command(&self, command: &str, listen_flag: &str, extra: &[&str]) -> Command {
        cli::parse(self.flags(command, listen_flag, extra))
            .expect("valid flags")
            .command
    }

    /// The argument list of `svc <command>` in this sandbox (see [`Self::command`]).
    pub fn flags(&self, command: &str, listen_flag: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "svc".to_owned(),
            command.into(),
            listen_flag.into(),
            "127.0.0.1:0".into(),
            "--database-url".into(),
            self.database_url.clone(),
            "--redis-url".into(),
            redis_url(),
            "--amqp-url".into(),
            amqp_url(),
            "--queue-prefix".into(),
            self.queue_prefix(),
            "--delivery-limit".into(),
            "3".into(),
            "--cache-prefix".into(),
            self.cache_prefix.clone(),
        ];
        override_flags(&mut args, extra);
        args
    }

    /// `svc serve` settings for this sandbox.
    pub fn serve_args(&self, extra: &[&str]) -> ServeArgs {
        match self.command("serve", "--listen", extra) {
            Command::Serve(args) => args,
            _ => unreachable!(),
        }
    }

    /// `svc consume` settings for this sandbox.
    pub fn consume_args(&self, extra: &[&str]) -> ConsumeArgs {
        match self.command("consume", "--metrics-listen", extra) {
            Command::Consume(args) => args,
            _ => unreachable!(),
        }
    }

    pub async fn row_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM data")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Polls until the table holds at least `rows` rows (10 s at most).
    pub async fn wait_for_rows(&self, rows: i64) {
        eventually(&format!("{rows} rows"), Duration::from_secs(10), || async {
            self.row_count().await >= rows
        })
        .await;
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|err| panic!("Redis is not reachable at {}: {err}", redis_url()))
    }

    /// Whether Redis holds the pending marker of `id`.
    pub async fn is_marked_pending(&self, id: Uuid) -> bool {
        let (key, field) = svc::cache::redis::pending_marker(&self.cache_prefix, id)
            .expect("ids answered by svc are UUID v7");
        redis::AsyncCommands::hexists(&mut self.redis().await, key, field)
            .await
            .unwrap()
    }

    pub async fn amqp_channel(&self) -> (Connection, Channel) {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|err| panic!("RabbitMQ is not reachable at {}: {err}", amqp_url()));
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    /// Publishes a raw payload to the ingest exchange, as `serve` would.
    pub async fn publish_raw(&self, payload: &[u8]) {
        let (_connection, channel) = self.amqp_channel().await;
        channel.confirm_select(Default::default()).await.unwrap();
        channel
            .basic_publish(
                self.topology.exchange.as_str().into(),
                self.topology.routing_key().into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes many messages on one confirmed channel, as fast as the broker takes them.
    pub async fn publish_many(&self, messages: &[DataMessage]) {
        let (_connection, channel) = self.amqp_channel().await;
        channel.confirm_select(Default::default()).await.unwrap();
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            confirms.push(
                channel
                    .basic_publish(
                        self.topology.exchange.as_str().into(),
                        self.topology.routing_key().into(),
                        BasicPublishOptions::default(),
                        &message.encode(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }

    /// Messages ready (not delivered, not unacknowledged) in `queue`.
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        let (_connection, channel) = self.amqp_channel().await;
        svc::queue::ready_messages(&channel, queue).await.unwrap()
    }

    /// Asserts that neither the ingest nor the dead-letter queue holds a message.
    pub async fn assert_queues_empty(&self) {
        assert_eq!(
            self.ready_messages(&self.topology.queue).await,
            0,
            "ingest queue"
        );
        let dead = self.ready_messages(&self.topology.dead_letter_queue).await;
        assert_eq!(dead, 0, "dead-letter queue");
    }

    /// Takes one message off the dead-letter queue, waiting up to `within`.
    pub async fn take_dead_letter(&self, within: Duration) -> Option<Vec<u8>> {
        let (_connection, channel) = self.amqp_channel().await;
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(message) = channel
                .basic_get(
                    self.topology.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                return Some(message.delivery.data.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// Appends `extra` (`--flag value` pairs) to `args`, replacing a flag that is
/// already there: clap refuses a flag given twice.
fn override_flags(args: &mut Vec<String>, extra: &[&str]) {
    for pair in extra.chunks(2) {
        if let Some(at) = args.iter().position(|a| a == pair[0]) {
            args.drain(at..at + 2);
        }
        args.extend(pair.iter().map(|s| s.to_string()));
    }
}

async fn connect(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("Postgres is not reachable at {url}: {err}"))
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let name = self.name.clone();
        let topology = self.topology.clone();
        let prefix = self.cache_prefix.clone();
        // Runs on its own thread and runtime: Drop cannot await, and the
        // test's runtime is blocked meanwhile, so nothing bound to it (such
        // as `self.pool`) may be used here; `WITH (FORCE)` ends its sessions.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(admin) = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_database_url())
                    .await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
                if let Ok(connection) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                    && let Ok(channel) = connection.create_channel().await
                {
                    for queue in [&topology.queue, &topology.dead_letter_queue] {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                }
                if let Ok(client) = redis::Client::open(redis_url())
                    && let Ok(mut redis) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{prefix}*"))
                        .query_async(&mut redis)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A running API in a sandbox, with a client and one helper per endpoint.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub sandbox: Sandbox,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    /// The API with real components, fully connected to the broker.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[&str]) -> Self {
        let sandbox = Sandbox::new().await;
        let args = sandbox.serve_args(extra);
        let state = serve::components(&args).unwrap();
        let app = Self::start(sandbox, &args, state);
        app.wait_until_ready().await;
        app
    }

    /// The API with the given components, not waiting for readiness.
    pub fn start(sandbox: Sandbox, args: &ServeArgs, state: AppState) -> Self {
        let application = Application::build_with(args, state).unwrap();
        let address = format!("http://{}", application.local_addr());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(application.run(shutdown.clone()));
        Self {
            address,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            sandbox,
            shutdown,
            server: Some(server),
        }
    }

    pub async fn wait_until_ready(&self) {
        eventually("the API became ready", Duration::from_secs(5), || async {
            let response = self.client.get(self.url("/health/ready")).send().await;
            response.is_ok_and(|response| response.status() == 200)
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Stops the API gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    pub async fn post_value(&self, value: &str) -> reqwest::Response {
        self.post_raw(
            "application/json",
            serde_json::json!({ "value": value }).to_string(),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/data"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Posts a value and returns the accepted id.
    pub async fn accept(&self, value: &str) -> Uuid {
        let response = self.post_value(value).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// GETs a path; returns status and parsed JSON (or `Null`).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub async fn get_record(&self, id: Uuid) -> (u16, Value) {
        self.get(&format!("/data/{id}")).await
    }

    /// Polls a record until it reads 200.
    pub async fn wait_for_record(&self, id: Uuid) -> Value {
        eventually_some(
            &format!("record {id} readable"),
            Duration::from_secs(10),
            || async {
                let (status, body) = self.get_record(id).await;
                (status == 200).then_some(body)
            },
        )
        .await
    }

    /// Starts `svc consume` for this sandbox in the background.
    pub fn start_consumer(&self, extra: &[&str]) -> RunningConsumer {
        RunningConsumer::start(&self.sandbox, extra)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A consumer running in the background of a test.
pub struct RunningConsumer {
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// The consumer's own registry.
    pub metrics: Metrics,
}

impl RunningConsumer {
    pub fn start(sandbox: &Sandbox, extra: &[&str]) -> Self {
        let consumer = consume::build(&sandbox.consume_args(extra)).unwrap();
        Self::run(consumer)
    }

    pub fn run(consumer: Consumer) -> Self {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let metrics = consumer.metrics().clone();
        let task = tokio::spawn(async move { consumer.run(token).await });
        Self {
            shutdown,
            task: Some(task),
            metrics,
        }
    }

    /// Signals shutdown and waits until the consumer has exited.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the consumer stops within 30 s")
                .unwrap();
        }
    }
}

impl Drop for RunningConsumer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The sandbox's real store and cache, for tests that build components by hand.
pub fn real_parts(sandbox: &Sandbox) -> (Arc<dyn RecordStore>, Arc<dyn RecordCache>) {
    let args = sandbox.consume_args(&[]);
    let pool = svc::storage::postgres::connect_lazy(&svc::storage::postgres::PoolSettings {
        url: args.postgres.database_url.clone(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
        application_name: "svc test",
        tls: Default::default(),
    })
    .unwrap();
    (
        Arc::new(PostgresStore::new(pool)),
        Arc::new(RedisCache::new(&args.redis.settings(&args.tls), Metrics::new()).unwrap()),
    )
}

pub fn consumer_settings(sandbox: &Sandbox, extra: &[&str]) -> ConsumerSettings {
    sandbox.consume_args(extra).consumer_settings()
}

/// Asserts a problem+json answer with the given status.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem lacks `{field}`: {body}");
    }
    body
}

/// A real store that counts reads and makes each one slow enough for
/// concurrent requests to overlap.
pub struct CountingStore {
    inner: Arc<dyn RecordStore>,
    pub reads: AtomicUsize,
}

#[async_trait]
impl RecordStore for CountingStore {
    async fn get(&self, id: Uuid) -> Result<Option<Record>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.inner.get(id).await
    }
    async fn list(&self, before: Option<Uuid>, limit: u32) -> Result<Vec<Record>, StoreError> {
        self.inner.list(before, limit).await
    }
    async fn insert_batch(&self, batch: &[DataMessage]) -> Result<Vec<Record>, StoreError> {
        self.inner.insert_batch(batch).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// An API whose store is counted and slowed, holding one persisted record
/// that is not cached.
pub async fn app_with_slow_store(extra: &[&str]) -> (TestApp, Arc<CountingStore>, DataMessage) {
    let sandbox = Sandbox::new().await;
    let (store, cache) = real_parts(&sandbox);
    let message = DataMessage::accept("popular".into());
    store
        .insert_batch(std::slice::from_ref(&message))
        .await
        .unwrap();

    let counting = Arc::new(CountingStore {
        inner: store,
        reads: AtomicUsize::new(0),
    });
    let args = sandbox.serve_args(extra);
    let state = AppState::new(counting.clone(), cache, publisher(&sandbox), Metrics::new());
    (TestApp::start(sandbox, &args, state), counting, message)
}

/// A publisher to the sandbox's queues, with one channel.
pub fn publisher(sandbox: &Sandbox) -> Arc<dyn Publisher> {
    RabbitPublisher::start(
        PublisherSettings {
            url: svc::config::parse_amqp_url(&amqp_url()).unwrap(),
            tls: Default::default(),
            topology: sandbox.topology.clone(),
            channels: 1,
            window: 256,
            confirm_timeout: Duration::from_secs(1),
        },
        Metrics::new(),
    )
}
