//! [`RecordCache`] on Redis through a self-reconnecting `ConnectionManager`.
//!
//! Keys, all under the configured prefix (`svc:` by default):
//! * `data:{id}`: the record's JSON body, with a TTL;
//! * `pending:{minute}`: a hash whose fields are the ids accepted in that
//!   minute (by the timestamp inside their UUID v7) and not persisted yet.
//!   One hash per minute rather than one key per id: the markers of a batch
//!   of writes go out as one `HSET` and one `EXPIREAT`, where a `SET ... EX`
//!   per write cost Redis more CPU than the rest of the write
//!   (docs/PERFORMANCE.md). The hash expires `SVC_PENDING_TTL_SECS` after
//!   its minute ends, so a marker lives at least that long.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

use super::{
    CacheError, Cached, RecordCache, Ticket,
    batch::{Batcher, Limits},
    breaker::Breaker,
};
use crate::{config::RedisArgs, metrics};

/// Failures in a row that open the circuit.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit skips Redis before one trial call.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// How pending markers are gathered into round trips: at most 512 in one,
/// at most 8,192 waiting (past that, writes go unmarked), and under load up
/// to a millisecond's wait so that one round trip carries tens of markers.
/// The wait hides behind the broker's confirm, which takes longer; a write
/// whose confirm comes first ends it.
const MARK_LIMITS: Limits = Limits {
    max_batch: 512,
    max_waiting: 8192,
    linger: Duration::from_millis(1),
    linger_from: 4,
};
/// The span of accept times whose pending markers share one hash.
const PENDING_BUCKET_SECS: u64 = 60;

#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    record_ttl_secs: u64,
    pending_ttl_secs: u64,
    breaker: Arc<Breaker>,
    /// The pending-marker writer, started on the first marker.
    marks: Arc<OnceLock<Batcher<Uuid>>>,
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
    /// round trip and one wake-up of Redis for a whole batch, where one
    /// command per write cost Redis more CPU than the write itself
    /// (docs/PERFORMANCE.md). Each caller still learns when its own marker
    /// is written, so a read right after the 202 sees it.
    fn mark_writer(&self) -> &Batcher<Uuid> {
        self.marks.get_or_init(|| {
            // The writer's own handle has no batcher of its own: when every
            // other handle is gone, the batcher is dropped and the writer ends.
            let writer = Self {
                marks: Arc::default(),
                ..self.clone()
            };
            Batcher::spawn(MARK_LIMITS, move |ids| {
                let writer = writer.clone();
                async move { writer.mark_all(&ids).await }
            })
        })
    }

    /// One round trip for a whole batch: an `HSET` of every id into its
    /// minute's hash, and that hash's expiry.
    async fn mark_all(&self, ids: &[Uuid]) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        for (bucket, ids) in by_bucket(ids) {
            let mut hset = redis::cmd("HSET");
            hset.arg(self.bucket_key(bucket));
            for id in ids {
                hset.arg(&*id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
                    .arg(1);
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("EXPIREAT")
                .arg(self.bucket_key(bucket))
                .arg(bucket + PENDING_BUCKET_SECS + self.pending_ttl_secs)
                .ignore();
        }
        let mut connection = self.connection.clone();
        self.bounded(pipe.exec_async(&mut connection)).await
    }

    pub fn record_key(&self, id: Uuid) -> String {
        format!("{}data:{}", self.prefix, id)
    }

    fn bucket_key(&self, bucket: u64) -> String {
        format!("{}pending:{}", self.prefix, bucket)
    }

    /// Adds to `pipe` the removal of the pending markers of `ids`.
    fn unmark(&self, pipe: &mut redis::Pipeline, ids: &[Uuid]) {
        for (bucket, ids) in by_bucket(ids) {
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(self.bucket_key(bucket));
            for id in ids {
                hdel.arg(&*id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
            }
            pipe.add_command(hdel).ignore();
        }
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
        let record_key = self.record_key(id);
        // An id with no accept time in it was never accepted: only its record is looked up.
        let Some((bucket_key, field)) = pending_marker(&self.prefix, id) else {
            let record: Option<Vec<u8>> = self
                .bounded(
                    redis::cmd("GET")
                        .arg(record_key)
                        .query_async(&mut connection),
                )
                .await?;
            return Ok(record.map_or(Cached::Miss, |body| Cached::Record(body.into())));
        };
        let (record, pending): (Option<Vec<u8>>, bool) = self
            .bounded(
                redis::pipe()
                    .get(record_key)
                    .hexists(bucket_key, field)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(match (record, pending) {
            (Some(body), _) => Cached::Record(body.into()),
            (None, true) => Cached::Pending,
            (None, false) => Cached::Miss,
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

    fn mark_pending(&self, id: Uuid) -> Ticket {
        self.mark_writer().push(id)
    }

    async fn clear_pending(&self, id: Uuid) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        self.unmark(&mut pipe, &[id]);
        let mut connection = self.connection.clone();
        self.bounded(pipe.exec_async(&mut connection)).await
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
        let ids: Vec<Uuid> = records.iter().map(|(id, _)| *id).collect();
        self.unmark(&mut pipe, &ids);
        let mut connection = self.connection.clone();
        self.bounded(pipe.exec_async(&mut connection)).await
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        self.bounded(redis::cmd("PING").exec_async(&mut connection))
            .await
    }
}

/// The hash holding `id`'s pending marker, as its key under `prefix` and
/// the field: `None` for an id with no accept time in it (not a UUID v7).
pub fn pending_marker(prefix: &str, id: Uuid) -> Option<(String, String)> {
    let bucket = pending_bucket(id)?;
    Some((format!("{prefix}pending:{bucket}"), id.to_string()))
}

/// The start (Unix seconds) of the minute in which `id` was accepted.
fn pending_bucket(id: Uuid) -> Option<u64> {
    let (secs, _) = id.get_timestamp()?.to_unix();
    Some(secs - secs % PENDING_BUCKET_SECS)
}

/// `ids` grouped by the minute they were accepted in (ids without one are
/// left out: they cannot be pending). A batch nearly always falls in one.
fn by_bucket(ids: &[Uuid]) -> Vec<(u64, Vec<Uuid>)> {
    let mut buckets: Vec<(u64, Vec<Uuid>)> = Vec::new();
    for &id in ids {
        let Some(bucket) = pending_bucket(id) else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, members)) => members.push(id),
            None => buckets.push((bucket, vec![id])),
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use uuid::{NoContext, Timestamp};

    use super::*;

    /// 2025-11-24 16:00:00 UTC, the start of a minute.
    const MINUTE: u64 = 1_764_000_000;

    fn accepted_at(unix_secs: u64) -> Uuid {
        Uuid::new_v7(Timestamp::from_unix(NoContext, unix_secs, 0))
    }

    #[test]
    fn ids_of_one_minute_share_a_bucket() {
        let start = MINUTE;
        assert_eq!(start % 60, 0);
        assert_eq!(pending_bucket(accepted_at(start)), Some(start));
        assert_eq!(pending_bucket(accepted_at(start + 59)), Some(start));
        assert_eq!(pending_bucket(accepted_at(start + 60)), Some(start + 60));
        assert_eq!(pending_bucket(Uuid::new_v4()), None);
    }

    #[test]
    fn a_batch_is_grouped_by_minute_and_keeps_its_order() {
        let start = MINUTE;
        let (a, b, c) = (
            accepted_at(start),
            accepted_at(start + 61),
            accepted_at(start + 1),
        );
        let grouped = by_bucket(&[a, b, Uuid::new_v4(), c]);
        assert_eq!(grouped, vec![(start, vec![a, c]), (start + 60, vec![b])]);
    }

    #[test]
    fn the_marker_is_found_under_the_prefix() {
        let id = accepted_at(MINUTE + 7);
        let (key, field) = pending_marker("svc:", id).unwrap();
        assert_eq!(key, format!("svc:pending:{MINUTE}"));
        assert_eq!(field, id.to_string());
    }
}
