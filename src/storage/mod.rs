//! Where records are kept for good. The HTTP handlers and the consumer see
//! only [`RecordStore`]; [`postgres::PostgresStore`] is the real thing.

pub mod postgres;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{DataMessage, Record};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time (pool timeout, connection
    /// refused or lost): worth retrying later.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused the data itself (a data exception or a broken
    /// constraint): the same statement with the same data fails every time,
    /// so retrying it can never help.
    #[error("the database refused the data")]
    Refused(#[source] sqlx::Error),
    /// Anything else the database said: worth a few retries (a deadlock, a
    /// statement timeout), not an endless wait (a missing table).
    #[error("database error")]
    Query(#[source] sqlx::Error),
}

#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// One record by id.
    async fn get(&self, id: Uuid) -> Result<Option<Record>, StoreError>;

    /// Up to `limit` records, newest first, strictly older than `before` when given.
    async fn list(&self, before: Option<Uuid>, limit: u32) -> Result<Vec<Record>, StoreError>;

    /// Persists a batch in one transaction, ignoring ids already stored, and
    /// returns the stored record of every id in the batch (new or not), so the
    /// caller can refresh the cache even after a redelivery.
    async fn insert_batch(&self, batch: &[DataMessage]) -> Result<Vec<Record>, StoreError>;

    /// Cheap liveness probe for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;
}
