//! [`RecordStore`] on Postgres through a bounded `sqlx` pool.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    PgPool, Postgres,
    postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgSslMode},
    query::QueryAs,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{RecordStore, StoreError};
use crate::{
    config::SecretUrl,
    domain::{DataMessage, Record},
    tls::TlsSettings,
};

/// Settings of one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub url: SecretUrl,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Name shown in `pg_stat_activity`.
    pub application_name: &'static str,
    pub tls: TlsSettings,
}

/// The connection options of `url`, whose `sslmode`, `sslrootcert`,
/// `sslcert` and `sslkey` mean what they mean to `psql`: under `require`,
/// libpq verifies the server's certificate as `verify-ca` does when a root
/// certificate is given, which sqlx alone would not. A private CA of `tls`
/// is trusted where the URL names no root certificate of its own.
pub fn connect_options(
    url: &SecretUrl,
    tls: &TlsSettings,
) -> Result<PgConnectOptions, sqlx::Error> {
    crate::tls::install_crypto_provider();
    let mut options = PgConnectOptions::from_str(url.expose())?;
    let names_root_cert = url.query_value("sslrootcert").is_some();
    if names_root_cert && matches!(options.get_ssl_mode(), PgSslMode::Require) {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    if let (false, Some(pem)) = (names_root_cert, tls.ca_pem()) {
        options = options.ssl_root_cert_from_pem(pem.as_bytes().to_vec());
    }
    Ok(options)
}

/// A pool that connects lazily: the process starts even while the database
/// is down, and each query fails fast (the acquire timeout) until it is back.
pub fn connect_lazy(settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(&settings.url, &settings.tls)?
        .application_name(settings.application_name)
        // Bounded server-side work: no statement outlives the request budget.
        .options([("statement_timeout", "5000")]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Whether statements are prepared once per connection and reused.
    prepared: bool,
}

impl PostgresStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            prepared: true,
        }
    }

    /// For a pool that may sit behind PgBouncer in transaction pooling mode,
    /// which hands each transaction any server connection and so cannot keep
    /// named prepared statements: every query then uses the unnamed statement.
    pub fn behind_transaction_pooler(pool: PgPool) -> Self {
        Self {
            pool,
            prepared: false,
        }
    }

    /// Runs a read. Without prepared statements, the unnamed statement takes
    /// two round trips (parse and describe, then bind and execute); behind a
    /// transaction pooler only an explicit transaction keeps both on the same
    /// server connection.
    async fn fetch_rows(
        &self,
        query: QueryAs<'_, Postgres, Row, PgArguments>,
    ) -> Result<Vec<Row>, sqlx::Error> {
        if self.prepared {
            return query.fetch_all(&self.pool).await;
        }
        let mut transaction = self.pool.begin().await?;
        let rows = query.persistent(false).fetch_all(&mut *transaction).await?;
        transaction.commit().await?;
        Ok(rows)
    }
}

fn classify(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        // A connection that broke mid-handshake or mid-reply (a refused
        // SSLRequest reads as one): a fresh connection is the cure.
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
        sqlx::Error::Database(ref db)
            // class 08: connection exception; 57P0x: the server is shutting down or starting;
            // 57014: the statement timed out; 53: insufficient resources; 40: a
            // serialization failure or deadlock, which the same statement
            // later does not meet.
            if db.code().is_some_and(|c| {
                ["08", "57P0", "57014", "53", "40"]
                    .iter()
                    .any(|class| c.starts_with(class))
            }) =>
        {
            StoreError::Unavailable(err)
        }
        // A bound value the driver cannot encode, or class 22 (data exception:
        // a NUL in text, a value out of range) and 23 (integrity constraint
        // violation): the statement's data is at fault, not the database.
        sqlx::Error::Encode(_) => StoreError::Refused(err),
        sqlx::Error::Database(ref db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            StoreError::Refused(err)
        }
        other => StoreError::Query(other),
    }
}

type Row = (Uuid, String, OffsetDateTime);

fn to_record((id, value, created_at): Row) -> Record {
    Record {
        id,
        value,
        created_at,
    }
}

/// One statement for the whole batch: insert what is new and, in the same
/// snapshot, read back the rows that already existed (a redelivery), so the
/// caller gets every record of the batch in one round trip.
const INSERT_BATCH: &str = "
WITH input AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS t(id, value, accepted_at)
), inserted AS (
    INSERT INTO data (id, value, accepted_at)
    SELECT id, value, accepted_at FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING id, value, created_at
)
SELECT id, value, created_at FROM inserted
UNION ALL
SELECT d.id, d.value, d.created_at FROM data d WHERE d.id IN (SELECT id FROM input)";

#[async_trait]
impl RecordStore for PostgresStore {
    async fn get(&self, id: Uuid) -> Result<Option<Record>, StoreError> {
        let query = sqlx::query_as("SELECT id, value, created_at FROM data WHERE id = $1").bind(id);
        let rows = self.fetch_rows(query).await.map_err(classify)?;
        Ok(rows.into_iter().next().map(to_record))
    }

    async fn list(&self, before: Option<Uuid>, limit: u32) -> Result<Vec<Record>, StoreError> {
        let query = match before {
            Some(before) => sqlx::query_as(
                "SELECT id, value, created_at FROM data WHERE id < $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit)),
            None => {
                sqlx::query_as("SELECT id, value, created_at FROM data ORDER BY id DESC LIMIT $1")
                    .bind(i64::from(limit))
            }
        };
        let rows = self.fetch_rows(query).await.map_err(classify)?;
        Ok(rows.into_iter().map(to_record).collect())
    }

    async fn insert_batch(&self, batch: &[DataMessage]) -> Result<Vec<Record>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = batch.iter().map(|m| m.id).collect();
        let values: Vec<&str> = batch.iter().map(|m| m.value.as_str()).collect();
        let accepted: Vec<OffsetDateTime> = batch.iter().map(|m| m.accepted_at).collect();
        // A single statement is atomic: autocommit makes it its own transaction.
        sqlx::query_as::<_, Row>(INSERT_BATCH)
            .bind(&ids)
            .bind(&values)
            .bind(&accepted)
            .fetch_all(&self.pool)
            .await
            .map(|rows| rows.into_iter().map(to_record).collect())
            .map_err(classify)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The simple protocol: one round trip, no statement, fine behind any pooler.
        sqlx::raw_sql("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(classify)
    }
}
