//! The consumer's business step, free of any broker type: decode a batch,
//! persist the valid messages in one statement (retrying with backoff while
//! the database is unavailable), and write the records through to the cache.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    backoff::Backoff,
    cache::RecordCache,
    domain::{DataMessage, MessageError, Record},
    metrics,
    storage::RecordStore,
    telemetry::error_chain,
};

/// The result of decoding one delivery's payload.
pub fn decode(payload: &[u8]) -> Result<DataMessage, MessageError> {
    DataMessage::decode(payload)
}

/// Persists `messages` (all valid) and returns the records the commit made
/// (those not already there). Returns `None` only when `give_up` (shutdown,
/// or the batch's channel closing) interrupted the retries before a commit:
/// then nothing may be acknowledged.
pub async fn persist(
    store: &Arc<dyn RecordStore>,
    messages: &[DataMessage],
    max_backoff: Duration,
    give_up: &CancellationToken,
) -> Option<Vec<Record>> {
    let mut backoff = Backoff::new(Duration::from_millis(50), max_backoff);
    let records = loop {
        let started = std::time::Instant::now();
        match store.insert_batch(messages).await {
            Ok(records) => {
                ::metrics::histogram!(metrics::CONSUMER_INSERT_DURATION)
                    .record(started.elapsed().as_secs_f64());
                break records;
            }
            Err(err) => {
                ::metrics::counter!(metrics::CONSUMER_DB_RETRIES).increment(1);
                let delay = backoff.next_delay();
                tracing::warn!(
                    messages = messages.len(),
                    error = %error_chain(&err),
                    retry_in_ms = delay.as_millis() as u64,
                    "batch not persisted; holding it (unacknowledged) and retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = give_up.cancelled() => {
                        tracing::warn!(
                            messages = messages.len(),
                            "giving up on the batch before it was persisted (shutdown or lost channel); the broker will redeliver it"
                        );
                        return None;
                    }
                }
            }
        }
    };
    let fresh = records.len().min(messages.len());
    ::metrics::counter!(metrics::CONSUMER_MESSAGES, "outcome" => "persisted")
        .increment(fresh as u64);
    Some(records)
}

/// Caches committed records and clears their pending markers. A failure
/// costs only speed: reads still find the records in the database.
pub async fn write_through(cache: &Arc<dyn RecordCache>, records: &[Record]) {
    let entries: Vec<(Uuid, Bytes)> = records
        .iter()
        .map(|record| (record.id, Bytes::from(record.to_json())))
        .collect();
    if let Err(err) = cache.store_persisted(&entries).await {
        ::metrics::counter!(metrics::CACHE_ERRORS).increment(1);
        tracing::warn!(records = entries.len(), error = %error_chain(&err), "cache write-through failed");
    }
}
