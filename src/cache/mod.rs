//! The read accelerator. Handlers and the consumer see only [`RecordCache`];
//! [`redis::RedisCache`] is the real thing.
//!
//! The cache holds each record's encoded JSON body (records never change
//! once written, so it cannot go stale) and a short-lived "pending" marker
//! for writes that were accepted but not persisted yet. Every call is
//! bounded by a short timeout: a slow or absent cache costs speed, never
//! correctness.

pub mod batch;
pub mod breaker;
pub mod redis;
pub mod tiered;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

pub use batch::Ticket;

/// What the cache knows about one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The record's JSON body, ready to serve.
    Record(Bytes),
    /// Accepted, not yet persisted.
    Pending,
    /// Nothing cached: ask the database.
    Miss,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("cache error")]
    Redis(#[from] ::redis::RedisError),
    #[error("cache skipped: it failed repeatedly and its circuit is open")]
    CircuitOpen,
    #[error("the batched write this call was part of failed")]
    Batch(#[source] std::sync::Arc<CacheError>),
    #[error("the cache's batch writer has stopped")]
    WriterGone,
    #[error("too many cache writes are waiting; this one was skipped")]
    Backlogged,
}

#[async_trait]
pub trait RecordCache: Send + Sync + 'static {
    async fn lookup(&self, id: Uuid) -> Result<Cached, CacheError>;

    /// Caches a record body read from the database.
    async fn store_record(&self, id: Uuid, body: Bytes) -> Result<(), CacheError>;

    /// Starts marking an accepted write as pending until the consumer
    /// persists it. Returns at once; the ticket says when the marker is
    /// written (markers of concurrent writes share one round trip).
    fn mark_pending(&self, id: Uuid) -> Ticket;

    /// Removes the marker of a write that was finally refused.
    async fn clear_pending(&self, id: Uuid) -> Result<(), CacheError>;

    /// Write-through after a commit: caches each record and clears its pending marker.
    async fn store_persisted(&self, records: &[(Uuid, Bytes)]) -> Result<(), CacheError>;

    async fn ping(&self) -> Result<(), CacheError>;
}
