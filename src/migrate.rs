//! `svc migrate`: applies the embedded Postgres migrations and declares the
//! RabbitMQ topology. Both steps are idempotent and safe to run from several
//! processes at once (sqlx takes an advisory lock; declarations are
//! idempotent). `--status` lists applied and pending migrations.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use sqlx::{Connection, PgConnection, migrate::Migrator, postgres::PgConnectOptions};

use crate::{
    config::{MigrateArgs, SecretUrl},
    queue::Topology,
    storage::postgres::connect_options,
    tls::TlsSettings,
};

/// Every migration under `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!();

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    if args.status {
        return print_status(&args.database_url, &args.tls.settings()).await;
    }
    apply(&args.database_url, &args.tls.settings()).await?;
    let amqp_url = args
        .amqp_url
        .as_ref()
        .context("AMQP_URL is required to declare the topology")?;
    declare_topology(amqp_url, &args.tls.settings(), &args.topology.topology()).await?;
    Ok(())
}

/// Creates the database if it is missing, then applies pending migrations.
pub async fn apply(url: &SecretUrl, tls: &TlsSettings) -> anyhow::Result<()> {
    let mut connection = match open(url, tls).await {
        Err(err) if is_missing_database(&err) => {
            create_database(url, tls).await?;
            open(url, tls).await?
        }
        opened => opened?,
    };
    MIGRATOR
        .run(&mut connection)
        .await
        .context("cannot apply the migrations")?;
    let count = MIGRATOR.iter().count();
    tracing::info!(database = %url, migrations = count, "database schema is up to date");
    connection.close().await.ok();
    Ok(())
}

fn is_missing_database(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|err| err.as_database_error())
            .is_some_and(|db| db.code().as_deref() == Some("3D000"))
    })
}

/// Creates the database of `url` from the server's `postgres` database,
/// over the same connection settings (TLS included).
async fn create_database(url: &SecretUrl, tls: &TlsSettings) -> anyhow::Result<()> {
    let options = connect_options(url, tls)?;
    let name = options
        .get_database()
        .context("DATABASE_URL names no database")?
        .to_owned();
    let mut admin = connect(&options.database("postgres"), url).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut admin)
        .await
    {
        // Another `svc migrate` created it first.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
        created => {
            created.with_context(|| format!("cannot create the database of {url}"))?;
            tracing::info!(database = %url, "created the database");
        }
    }
    admin.close().await.ok();
    Ok(())
}

pub async fn declare_topology(
    url: &SecretUrl,
    tls: &TlsSettings,
    topology: &Topology,
) -> anyhow::Result<()> {
    let connection = tokio::time::timeout(
        CONNECT_TIMEOUT,
        crate::queue::connect(url.expose(), tls, "migrate"),
    )
    .await
    .with_context(|| format!("RabbitMQ at {url} did not answer"))?
    .with_context(|| format!("cannot reach RabbitMQ at {url}"))?;
    let channel = connection.create_channel().await?;
    topology
        .declare(&channel)
        .await
        .context("cannot declare the RabbitMQ topology")?;
    connection.close(200, "done".into()).await.ok();
    tracing::info!(
        exchange = %topology.exchange,
        queue = %topology.queue,
        dead_letter_queue = %topology.dead_letter_queue,
        delivery_limit = topology.delivery_limit,
        "RabbitMQ topology declared"
    );
    Ok(())
}

async fn open(url: &SecretUrl, tls: &TlsSettings) -> anyhow::Result<PgConnection> {
    connect(&connect_options(url, tls)?, url).await
}

async fn connect(options: &PgConnectOptions, url: &SecretUrl) -> anyhow::Result<PgConnection> {
    let options = options.clone().application_name("svc migrate");
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .with_context(|| format!("Postgres at {url} did not answer"))?
        .with_context(|| format!("cannot connect to Postgres at {url}"))
}

/// One line per migration: applied (with when) or pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    /// When it was applied, or `None` while pending.
    pub applied_on: Option<String>,
    /// Applied from a different file than the one embedded now.
    pub checksum_mismatch: bool,
}

pub async fn status(url: &SecretUrl, tls: &TlsSettings) -> anyhow::Result<Vec<MigrationStatus>> {
    let mut connection = open(url, tls).await?;
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut connection)
            .await?;
    let applied: HashMap<i64, (String, Vec<u8>)> = if table_exists {
        sqlx::query_as::<_, (i64, String, Vec<u8>)>(
            "SELECT version, to_char(installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), checksum
             FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut connection)
        .await?
        .into_iter()
        .map(|(version, on, checksum)| (version, (on, checksum)))
        .collect()
    } else {
        HashMap::new()
    };
    connection.close().await.ok();
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| {
            let found = applied.get(&m.version);
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                applied_on: found.map(|(on, _)| on.clone()),
                checksum_mismatch: found.is_some_and(|(_, sum)| sum.as_slice() != &*m.checksum),
            }
        })
        .collect())
}

async fn print_status(url: &SecretUrl, tls: &TlsSettings) -> anyhow::Result<()> {
    let rows = status(url, tls).await?;
    println!(
        "{:<16} {:<10} {:<22} description",
        "version", "state", "applied on"
    );
    for row in &rows {
        let state = match (&row.applied_on, row.checksum_mismatch) {
            (None, _) => "pending",
            (Some(_), false) => "applied",
            (Some(_), true) => "CHANGED",
        };
        println!(
            "{:<16} {:<10} {:<22} {}",
            row.version,
            state,
            row.applied_on.as_deref().unwrap_or("-"),
            row.description
        );
    }
    let pending = rows.iter().filter(|r| r.applied_on.is_none()).count();
    println!("{} applied, {} pending", rows.len() - pending, pending);
    if rows.iter().any(|r| r.checksum_mismatch) {
        anyhow::bail!(
            "an applied migration differs from the embedded one; migrations are append-only"
        );
    }
    Ok(())
}
