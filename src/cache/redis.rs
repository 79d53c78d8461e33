//! [`RecordCache`] on Redis through a self-reconnecting `ConnectionManager`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

use super::{CacheError, Cached, RecordCache, breaker::Breaker};
use crate::{config::RedisArgs, metrics};

/// Failures in a row that open the circuit.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit skips Redis before one trial call.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    record_ttl_secs: u64,
    pending_ttl_secs: u64,
    breaker: Arc<Breaker>,
}

impl RedisCache {
    /// Creates the cache without connecting: the first command connects, and
    /// the manager reconnects in the background after a failure.
    pub fn new(args: &RedisArgs) -> Result<Self, CacheError> {
        let client = redis::Client::open(args.redis_url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(args.timeout().max(Duration::from_millis(250))))
            .set_response_timeout(Some(args.timeout()))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        Ok(Self {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: args.cache_prefix.clone(),
            timeout: args.timeout(),
            record_ttl_secs: args.cache_ttl_secs,
            pending_ttl_secs: args.pending_ttl_secs,
            breaker: Arc::new(Breaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN)),
        })
    }

    pub fn record_key(&self, id: Uuid) -> String {
        format!("{}data:{}", self.prefix, id)
    }

    pub fn pending_key(&self, id: Uuid) -> String {
        format!("{}pending:{}", self.prefix, id)
    }

    /// Runs one command within the timeout, through the circuit breaker.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        if !self.breaker.allows(Instant::now()) {
            ::metrics::counter!(metrics::CACHE_SKIPPED).increment(1);
            return Err(CacheError::CircuitOpen);
        }
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(CacheError::Redis(err)),
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.breaker.succeeded(),
            Err(_) => self.breaker.failed(Instant::now()),
        }
        result
    }
}

#[async_trait]
impl RecordCache for RedisCache {
    async fn lookup(&self, id: Uuid) -> Result<Cached, CacheError> {
        let mut connection = self.connection.clone();
        let (record, pending): (Option<Vec<u8>>, Option<Vec<u8>>) = self
            .bounded(
                redis::cmd("MGET")
                    .arg(self.record_key(id))
                    .arg(self.pending_key(id))
                    .query_async(&mut connection),
            )
            .await?;
        Ok(match (record, pending) {
            (Some(body), _) => Cached::Record(Bytes::from(body)),
            (None, Some(_)) => Cached::Pending,
            (None, None) => Cached::Miss,
        })
    }

    async fn store_record(&self, id: Uuid, body: Bytes) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        self.bounded(
            redis::cmd("SET")
                .arg(self.record_key(id))
                .arg(body.as_ref())
                .arg("EX")
                .arg(self.record_ttl_secs)
                .exec_async(&mut connection),
        )
        .await
    }

    async fn mark_pending(&self, id: Uuid) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        self.bounded(
            redis::cmd("SET")
                .arg(self.pending_key(id))
                .arg(1)
                .arg("EX")
                .arg(self.pending_ttl_secs)
                .exec_async(&mut connection),
        )
        .await
    }

    async fn clear_pending(&self, id: Uuid) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        self.bounded(
            redis::cmd("DEL")
                .arg(self.pending_key(id))
                .exec_async(&mut connection),
        )
        .await
    }

    async fn store_persisted(&self, records: &[(Uuid, Bytes)]) -> Result<(), CacheError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (id, body) in records {
            pipe.cmd("SET")
                .arg(self.record_key(*id))
                .arg(body.as_ref())
                .arg("EX")
                .arg(self.record_ttl_secs)
                .ignore();
        }
        let mut del = redis::cmd("DEL");
        for (id, _) in records {
            del.arg(self.pending_key(*id));
        }
        pipe.add_command(del).ignore();
        let mut connection = self.connection.clone();
        self.bounded(pipe.exec_async(&mut connection)).await
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        self.bounded(redis::cmd("PING").exec_async(&mut connection))
            .await
    }
}
