//! [`RecordCache`] on Redis through a self-reconnecting `ConnectionManager`.
//!
//! Keys, all under the configured prefix (`svc:` by default):
//! * `data:{id}`: the record's JSON body, with a TTL;
//! * `pending:{minute}`: a hash whose fields are the ids accepted in that
//!   minute (by the timestamp inside their UUID v7) and not persisted yet.
//!   One hash per minute rather than one key per id: the markers of a batch
//!   of writes go out as one `HSET` and one `EXPIREAT`, where a `SET ... EX`
//!   per write cost Redis more CPU than the rest of the write
//!   (docs/PERFORMANCE.md). Every serve that writes markers removes each
//!   hash with `UNLINK` `SVC_PENDING_TTL_SECS` after its minute ends (so a
//!   marker lives at least that long). `UNLINK` frees it off Redis's main
//!   thread: with the consumer stopped a minute's hash holds up to a million
//!   ids, and freeing that on expiry (or `DEL`) blocks every client of Redis
//!   for hundreds of milliseconds. The hash's expiry, two minutes later,
//!   only catches one that no serve was left to remove.

use std::{
    sync::{Arc, OnceLock, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
use crate::{config::SecretUrl, metrics::Metrics, tls::TlsSettings};

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
/// How long after its removal is due a pending hash expires by itself:
/// time for two sweeps, a minute apart, to try to `UNLINK` it first.
const PENDING_EXPIRY_GRACE_SECS: u64 = 2 * PENDING_BUCKET_SECS;
/// How far into each minute the sweep runs, so that the hash whose time
/// ended on the minute is due by then even if the wall clock and the
/// runtime's timer drift apart a little.
const SWEEP_OFFSET: Duration = Duration::from_secs(2);

/// Where the cache is and how it is used.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS, trusting `tls` besides the system's roots).
    pub url: SecretUrl,
    pub tls: TlsSettings,
    /// Longest wait for one command; past it the call counts as a miss.
    pub timeout: Duration,
    /// Prefix of every key.
    pub prefix: String,
    pub record_ttl_secs: u64,
    /// How long the pending marker of an accepted write lives at least.
    pub pending_ttl_secs: u64,
}

#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    record_ttl_secs: u64,
    pending_ttl_secs: u64,
    breaker: Arc<Breaker>,
    metrics: Metrics,
    /// The pending-marker writer, started on the first marker.
    marks: Arc<OnceLock<Batcher<Uuid>>>,
}

impl RedisCache {
    /// Creates the cache without connecting: the first command connects, and
    /// the manager reconnects in the background after a failure.
    pub fn new(settings: &RedisSettings, metrics: Metrics) -> Result<Self, CacheError> {
        crate::tls::install_crypto_provider();
        let url = settings.url.expose();
        let client = match settings.tls.for_redis() {
            Some(certificates) if url.starts_with("rediss:") => {
                redis::Client::build_with_tls(url, certificates)?
            }
            _ => redis::Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(settings.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        Ok(Self {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            record_ttl_secs: settings.record_ttl_secs,
            pending_ttl_secs: settings.pending_ttl_secs,
            breaker: Arc::new(Breaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN)),
            metrics,
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
            tokio::spawn(sweep_every_minute(
                writer.clone(),
                Arc::downgrade(&self.marks),
            ));
            Batcher::spawn(MARK_LIMITS, move |ids| {
                let writer = writer.clone();
                async move { writer.mark_all(&ids).await }
            })
        })
    }

    /// Removes, with `UNLINK`, the pending hashes whose markers' life ended
    /// by `now_secs` (Unix): the newest such minute's and the one before,
    /// in case a sweep failed. Removing one that is gone costs nothing.
    pub async fn sweep_pending(&self, now_secs: u64) -> Result<(), CacheError> {
        let Some(newest) = newest_finished_bucket(now_secs, self.pending_ttl_secs) else {
            return Ok(());
        };
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(self.bucket_key(newest));
        if let Some(previous) = newest.checked_sub(PENDING_BUCKET_SECS) {
            unlink.arg(self.bucket_key(previous));
        }
        let mut connection = self.connection.clone();
        self.bounded(unlink.exec_async(&mut connection)).await
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
                .arg(
                    bucket
                        + PENDING_BUCKET_SECS
                        + self.pending_ttl_secs
                        + PENDING_EXPIRY_GRACE_SECS,
                )
                .ignore();
        }
        let mut connection = self.connection.clone();
        self.bounded(pipe.exec_async(&mut connection)).await
    }

    pub fn record_key(&self, id: Uuid) -> String {
        format!("{}data:{}", self.prefix, id)
    }

    fn bucket_key(&self, bucket: u64) -> String {
        pending_key(&self.prefix, bucket)
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
            self.metrics.cache_skipped();
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
    Some((pending_key(prefix, bucket), id.to_string()))
}

/// The key, under `prefix`, of the hash of the pending markers accepted in
/// the minute starting at `bucket` (Unix seconds).
pub fn pending_key(prefix: &str, bucket: u64) -> String {
    format!("{prefix}pending:{bucket}")
}

/// The start (Unix seconds) of the minute in which `id` was accepted.
fn pending_bucket(id: Uuid) -> Option<u64> {
    let (secs, _) = id.get_timestamp()?.to_unix();
    Some(secs - secs % PENDING_BUCKET_SECS)
}

/// The newest minute whose pending markers' life (`ttl_secs` after the
/// minute's end) is over at `now_secs`, if any.
fn newest_finished_bucket(now_secs: u64, ttl_secs: u64) -> Option<u64> {
    let last_start = now_secs.checked_sub(PENDING_BUCKET_SECS + ttl_secs)?;
    Some(last_start - last_start % PENDING_BUCKET_SECS)
}

/// How long from `now` (since the Unix epoch) until the next sweep:
/// `SWEEP_OFFSET` into the next minute.
fn until_next_sweep(now: Duration) -> Duration {
    let minute = Duration::from_secs(PENDING_BUCKET_SECS);
    let into_minute = Duration::from_nanos((now.as_nanos() % minute.as_nanos()) as u64);
    if into_minute < SWEEP_OFFSET {
        SWEEP_OFFSET - into_minute
    } else {
        minute - into_minute + SWEEP_OFFSET
    }
}

/// Once a minute, removes the pending hashes whose time is over (see
/// [`RedisCache::sweep_pending`]), for as long as the cache that started
/// it (`alive`) is in use.
async fn sweep_every_minute(cache: RedisCache, alive: Weak<OnceLock<Batcher<Uuid>>>) {
    loop {
        tokio::time::sleep(until_next_sweep(since_epoch())).await;
        if alive.strong_count() == 0 {
            return;
        }
        if let Err(err) = cache.sweep_pending(since_epoch().as_secs()).await {
            // The hash's own expiry, two minutes on, removes it if no sweep can.
            tracing::warn!(error = %err, "could not remove a finished minute's pending markers");
        }
    }
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
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
    fn a_minute_is_swept_once_its_markers_life_is_over() {
        let ttl = 600;
        // MINUTE's markers live until MINUTE + 60 + ttl.
        let end = MINUTE + 60 + ttl;
        assert_eq!(newest_finished_bucket(end - 1, ttl), Some(MINUTE - 60));
        assert_eq!(newest_finished_bucket(end, ttl), Some(MINUTE));
        assert_eq!(newest_finished_bucket(end + 59, ttl), Some(MINUTE));
        assert_eq!(newest_finished_bucket(end + 60, ttl), Some(MINUTE + 60));
        assert_eq!(newest_finished_bucket(ttl, ttl), None);
    }

    #[test]
    fn the_sweep_runs_just_after_each_minute_begins() {
        let at = |secs: u64, millis: u64| {
            until_next_sweep(Duration::from_secs(MINUTE + secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), SWEEP_OFFSET);
        assert_eq!(at(1, 500), Duration::from_millis(500));
        assert_eq!(at(2, 0), Duration::from_secs(60));
        assert_eq!(at(59, 0), Duration::from_secs(3));
    }

    #[test]
    fn the_marker_is_found_under_the_prefix() {
        let id = accepted_at(MINUTE + 7);
        let (key, field) = pending_marker("svc:", id).unwrap();
        assert_eq!(key, format!("svc:pending:{MINUTE}"));
        assert_eq!(field, id.to_string());
    }
}
