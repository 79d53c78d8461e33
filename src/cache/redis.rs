//! [`RecordCache`] on Redis through a self-reconnecting `ConnectionManager`.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{CacheError, Cached, RecordCache, breaker::Breaker};
use crate::{config::RedisArgs, metrics};

/// Failures in a row that open the circuit.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit skips Redis before one trial call.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Most pending markers written in one pipeline.
const MARK_BATCH: usize = 512;
/// Markers that may wait for the writer before `mark_pending` waits too.
const MARK_QUEUE: usize = 8192;

/// A pending marker to write, and who waits for it.
struct Mark {
    id: Uuid,
    written: oneshot::Sender<Result<(), Arc<CacheError>>>,
}

#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    record_ttl_secs: u64,
    pending_ttl_secs: u64,
    breaker: Arc<Breaker>,
    /// The pending-marker writer, started on the first marker.
    marks: Arc<OnceLock<mpsc::Sender<Mark>>>,
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
            marks: Arc::default(),
        })
    }

    /// Writes the pending markers of concurrent writes together: one
    /// pipeline, one round trip and one wake-up of Redis for a whole batch,
    /// where one command per write cost Redis more CPU than the write
    /// itself (docs/PERFORMANCE.md). Each caller still waits until its own
    /// marker is written, so a read right after the 202 sees it.
    fn mark_writer(&self) -> &mpsc::Sender<Mark> {
        self.marks.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(MARK_QUEUE);
            // The writer's own handle has no sender of its own: when every
            // other handle is gone, the channel closes and the writer ends.
            let writer = Self {
                marks: Arc::default(),
                ..self.clone()
            };
            tokio::spawn(writer.write_marks(receiver));
            sender
        })
    }

    async fn write_marks(self, mut receiver: mpsc::Receiver<Mark>) {
        let mut batch = Vec::with_capacity(MARK_BATCH);
        while receiver.recv_many(&mut batch, MARK_BATCH).await > 0 {
            let mut pipe = redis::pipe();
            for mark in &batch {
                pipe.cmd("SET")
                    .arg(self.pending_key(mark.id))
                    .arg(1)
                    .arg("EX")
                    .arg(self.pending_ttl_secs)
                    .ignore();
            }
            let mut connection = self.connection.clone();
            let written = self
                .bounded(pipe.exec_async(&mut connection))
                .await
                .map_err(Arc::new);
            for mark in batch.drain(..) {
                let _ = mark.written.send(written.clone());
            }
        }
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
        let (written, done) = oneshot::channel();
        let queued = async {
            self.mark_writer()
                .send(Mark { id, written })
                .await
                .map_err(|_| CacheError::WriterGone)?;
            match done.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(CacheError::Batch(err)),
                Err(_) => Err(CacheError::WriterGone),
            }
        };
        // The batch bounds its own round trip; this bounds the wait for a
        // place in a batch as well.
        let limit = self.timeout * 2;
        tokio::time::timeout(limit, queued)
            .await
            .unwrap_or(Err(CacheError::Timeout(limit)))
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
