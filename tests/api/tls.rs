//! TLS to Postgres, Redis and RabbitMQ, against private servers that accept
//! nothing but TLS, with certificates from a CA made for the test (for
//! `localhost` only). The shared servers are not touched.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use svc::{
    cli::{self, Command},
    config::{ConsumeArgs, ServeArgs, parse_amqp_url, parse_postgres_url},
    queue::Topology,
    serve::Application,
    tls::TlsSettings,
};
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::eventually,
    private_servers::{Listener, PrivatePostgres, PrivateRabbit, PrivateRedis, TempDir, TestCa},
};

/// The three servers, certified by `ca` for `localhost`.
struct TlsServers {
    postgres: PrivatePostgres,
    redis: PrivateRedis,
    rabbit: PrivateRabbit,
    /// The CA that signed them, and another that did not, as PEM files.
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    _dir: TempDir,
}

impl TlsServers {
    async fn start() -> Self {
        tokio::task::spawn_blocking(|| {
            let dir = TempDir::new("tls");
            let ca = TestCa::new("svc test CA");
            let ca_file = ca.write(&dir.0, "ca.pem");
            let other_ca_file = TestCa::new("some other CA").write(&dir.0, "other-ca.pem");
            let server = ca.issue(&["localhost"], &dir.0, "localhost");
            let (postgres, (redis, rabbit)) = std::thread::scope(|scope| {
                let rabbit = scope.spawn(|| {
                    PrivateRabbit::start(Listener::Tls {
                        ca: &ca_file,
                        server: &server,
                    })
                });
                let postgres = scope.spawn(|| PrivatePostgres::start(&server, None));
                let redis = PrivateRedis::start(&ca_file, &server);
                (postgres.join().unwrap(), (redis, rabbit.join().unwrap()))
            });
            Self {
                postgres,
                redis,
                rabbit,
                ca_file,
                other_ca_file,
                _dir: dir,
            }
        })
        .await
        .unwrap()
    }

    /// The flags of `svc <command>` against these servers, reached as
    /// `host`, trusting `ca_file`.
    fn flags(&self, command: &str, host: &str, ca_file: &Path) -> Vec<String> {
        let listen = if command == "serve" {
            "--listen"
        } else {
            "--metrics-listen"
        };
        [
            "svc",
            command,
            listen,
            "127.0.0.1:0",
            "--database-url",
            &self.postgres.url(host, "svc", "sslmode=verify-full"),
            "--redis-url",
            &self.redis.url(host),
            "--amqp-url",
            &self.rabbit.url("amqps", host),
            "--tls-ca-file",
            ca_file.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Postgres (under `verify-full`) and RabbitMQ, reached as `host` and
    /// trusting `tls`, both refuse the connection, saying `reason`.
    async fn assert_postgres_and_broker_refuse(&self, host: &str, tls: &TlsSettings, reason: &str) {
        let postgres =
            parse_postgres_url(&self.postgres.url(host, "postgres", "sslmode=verify-full"))
                .unwrap();
        assert_refused(svc::migrate::status(&postgres, tls).await, reason);
        let amqps = parse_amqp_url(&self.rabbit.url("amqps", host)).unwrap();
        let topology = Topology::new("svc", 5);
        assert_refused(
            svc::migrate::declare_topology(&amqps, tls, &topology).await,
            reason,
        );
    }

    fn serve_args(&self, host: &str, ca_file: &Path) -> ServeArgs {
        match cli::parse(self.flags("serve", host, ca_file))
            .unwrap()
            .command
        {
            Command::Serve(args) => args,
            _ => unreachable!(),
        }
    }

    fn consume_args(&self, host: &str, ca_file: &Path) -> ConsumeArgs {
        match cli::parse(self.flags("consume", host, ca_file))
            .unwrap()
            .command
        {
            Command::Consume(args) => args,
            _ => unreachable!(),
        }
    }
}

/// A running API, stopped on drop.
struct Api {
    base: String,
    client: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

impl Api {
    fn start(args: &ServeArgs) -> Self {
        let application =
            Application::build_with(args, svc::serve::components(args).unwrap()).unwrap();
        let base = format!("http://{}", application.local_addr());
        let shutdown = CancellationToken::new();
        tokio::spawn(application.run(shutdown.clone()));
        Self {
            base,
            client: reqwest::Client::new(),
            _stop: shutdown.drop_guard(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Given time to try, readiness names every service down, and no write
    /// is accepted.
    async fn assert_every_service_down(&self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (status, ready) = self.get("/health/ready").await;
        assert_eq!(status, 503, "{ready}");
        assert_eq!(
            ready["checks"],
            serde_json::json!({"postgres": "down", "redis": "down", "rabbitmq": "down"})
        );
        assert_eq!(self.post_value("refused").await.0, 503);
    }

    async fn post_value(&self, value: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/data", self.base))
            .json(&serde_json::json!({ "value": value }))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_to_every_service_a_write_is_persisted_and_read_back() {
    let servers = TlsServers::start().await;
    let tls = TlsSettings::from_ca_file(&servers.ca_file).unwrap();
    let database = parse_postgres_url(&servers.postgres.url(
        "localhost",
        "svc",
        "sslmode=verify-full",
    ))
    .unwrap();
    // The database does not exist yet: migrate creates it, over TLS too.
    svc::migrate::apply(&database, &tls).await.unwrap();

    let api = Api::start(&servers.serve_args("localhost", &servers.ca_file));
    let consumer =
        svc::consume::build(&servers.consume_args("localhost", &servers.ca_file)).unwrap();
    let stop_consumer = CancellationToken::new();
    let consuming = tokio::spawn({
        let stop = stop_consumer.clone();
        async move { consumer.run(stop).await }
    });
    eventually(
        "the API is ready over TLS",
        Duration::from_secs(20),
        || async { api.get("/health/ready").await.0 == 200 },
    )
    .await;
    let (_, ready) = api.get("/health/ready").await;
    assert_eq!(
        ready["checks"],
        serde_json::json!({"postgres": "ok", "redis": "ok", "rabbitmq": "ok"})
    );

    let (status, accepted) = api.post_value("over TLS").await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    eventually(
        "the write is persisted and readable",
        Duration::from_secs(20),
        || async {
            let (status, body) = api.get(&format!("/data/{id}")).await;
            status == 200 && body["value"] == "over TLS"
        },
    )
    .await;
    // Persisted in the private Postgres, which takes TLS connections only.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(svc::storage::postgres::connect_options(&database, &tls).unwrap())
        .await
        .unwrap();
    let (ssl, rows): (bool, i64) = sqlx::query_as(
        "SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), (SELECT count(*) FROM data)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((ssl, rows), (true, 1));

    stop_consumer.cancel();
    consuming.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_do_not_verify_are_refused_and_readiness_reports_the_service_down() {
    let servers = TlsServers::start().await;
    let trusted = TlsSettings::from_ca_file(&servers.ca_file).unwrap();
    let other = TlsSettings::from_ca_file(&servers.other_ca_file).unwrap();

    // A CA that did not sign the certificates: every client refuses them,
    // and says why.
    servers
        .assert_postgres_and_broker_refuse("localhost", &other, "UnknownIssuer")
        .await;
    let untrusting = servers.serve_args("localhost", &servers.other_ca_file);
    // Time enough for the handshake to fail, not merely to be slow.
    let mut patient = untrusting.redis.settings(&untrusting.tls);
    patient.timeout = Duration::from_secs(5);
    let cache = svc::cache::redis::RedisCache::new(&patient, svc::metrics::Metrics::new()).unwrap();
    let refused = svc::cache::RecordCache::ping(&cache).await;
    assert_refused(refused.map_err(anyhow::Error::from), "UnknownIssuer");
    let api = Api::start(&untrusting);
    api.assert_every_service_down().await;

    // The right CA, but a host name the certificates do not carry.
    servers
        .assert_postgres_and_broker_refuse("127.0.0.1", &trusted, "not valid for name")
        .await;
    let api = Api::start(&servers.serve_args("127.0.0.1", &servers.ca_file));
    api.assert_every_service_down().await;

    // verify-ca checks the chain only, so the address passes there: proof
    // that verify-full's refusal above was its host-name check.
    let verify_ca = parse_postgres_url(&servers.postgres.url(
        "127.0.0.1",
        "postgres",
        "sslmode=verify-ca",
    ))
    .unwrap();
    svc::migrate::status(&verify_ca, &trusted).await.unwrap();
    // As with psql, `require` with a root certificate verifies the chain too.
    let require_other_root = parse_postgres_url(&servers.postgres.url(
        "localhost",
        "postgres",
        &format!(
            "sslmode=require&sslrootcert={}",
            servers.other_ca_file.display()
        ),
    ))
    .unwrap();
    assert_refused(
        svc::migrate::status(&require_other_root, &trusted).await,
        "UnknownIssuer",
    );
    // And no plaintext: a client that will not speak TLS finds no way in.
    let plaintext = parse_postgres_url(&servers.postgres.url(
        "localhost",
        "postgres",
        "sslmode=disable",
    ))
    .unwrap();
    assert_refused(
        svc::migrate::status(&plaintext, &trusted).await,
        "no encryption",
    );
}

#[tokio::test]
async fn a_client_certificate_from_the_url_logs_in_where_the_server_demands_one() {
    let dir = TempDir::new("tls-client");
    let ca = TestCa::new("svc test CA");
    let ca_file = ca.write(&dir.0, "ca.pem");
    let server = ca.issue(&["localhost"], &dir.0, "localhost");
    // `cert` authentication: the certificate's common name is the user.
    let client = ca.issue(&["postgres"], &dir.0, "client");
    let postgres =
        tokio::task::spawn_blocking(move || PrivatePostgres::start(&server, Some(&ca_file)))
            .await
            .unwrap();
    let root = dir.0.join("ca.pem");
    let with_certificate = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        root.display(),
        client.cert.display(),
        client.key.display()
    );
    let url =
        parse_postgres_url(&postgres.url("localhost", "postgres", &with_certificate)).unwrap();
    let tls = TlsSettings::default();
    svc::migrate::status(&url, &tls).await.unwrap();

    let without = parse_postgres_url(&postgres.url(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    ))
    .unwrap();
    assert_refused(svc::migrate::status(&without, &tls).await, "certificate");
}

fn assert_refused<T: std::fmt::Debug>(result: anyhow::Result<T>, reason: &str) {
    let err = result.expect_err("the connection is refused");
    let chain = format!("{err:#}");
    assert!(chain.contains(reason), "{reason:?} not in: {chain}");
}
