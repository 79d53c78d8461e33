//! An in-process layer in front of another [`RecordCache`]: a bounded map of
//! encoded record bodies, checked before the network.
//!
//! Records never change once written, so a body held here can never be
//! stale; entries leave only when the byte budget needs room (the least
//! useful first). Pending markers always go to the shared cache, since they
//! change and every instance must see them.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use quick_cache::{Weighter, sync::Cache};
use uuid::Uuid;

use super::{CacheError, Cached, RecordCache, Ticket};
use crate::metrics::Metrics;

/// Weighs an entry by its body plus the key and bookkeeping around it.
#[derive(Debug, Clone, Copy)]
struct BodyBytes;

impl Weighter<Uuid, Bytes> for BodyBytes {
    fn weight(&self, _id: &Uuid, body: &Bytes) -> u64 {
        body.len() as u64 + 64
    }
}

pub struct TieredCache {
    local: Cache<Uuid, Bytes, BodyBytes>,
    shared: Arc<dyn RecordCache>,
    metrics: Metrics,
}

impl TieredCache {
    /// Holds at most `capacity_bytes` of bodies in memory in front of `shared`.
    pub fn new(shared: Arc<dyn RecordCache>, capacity_bytes: u64, metrics: Metrics) -> Self {
        // A typical record body is a few hundred bytes.
        let estimated_items = (capacity_bytes / 256).max(16) as usize;
        Self {
            local: Cache::with_weighter(estimated_items, capacity_bytes, BodyBytes),
            shared,
            metrics,
        }
    }
}

#[async_trait]
impl RecordCache for TieredCache {
    async fn lookup(&self, id: Uuid) -> Result<Cached, CacheError> {
        if let Some(body) = self.local.get(&id) {
            self.metrics.cache_memory_hit();
            return Ok(Cached::Record(body));
        }
        let found = self.shared.lookup(id).await?;
        if let Cached::Record(body) = &found {
            self.local.insert(id, body.clone());
        }
        Ok(found)
    }

    async fn store_record(&self, id: Uuid, body: Bytes) -> Result<(), CacheError> {
        self.local.insert(id, body.clone());
        self.shared.store_record(id, body).await
    }

    fn mark_pending(&self, id: Uuid) -> Ticket {
        self.shared.mark_pending(id)
    }

    async fn clear_pending(&self, id: Uuid) -> Result<(), CacheError> {
        self.shared.clear_pending(id).await
    }

    async fn store_persisted(&self, records: &[(Uuid, Bytes)]) -> Result<(), CacheError> {
        self.shared.store_persisted(records).await
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.shared.ping().await
    }
}
