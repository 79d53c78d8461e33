//! The consumer's business step, free of any broker type: persist a batch of
//! valid messages in one statement, find the messages the database refuses
//! for good by halving the batch, and write the records through to the cache.
//!
//! Each failure has its own answer. While the database is unavailable the
//! batch is held and retried for as long as that lasts (the consumer takes no
//! more deliveries meanwhile). A refusal of the data itself (a data exception,
//! a broken constraint) is never retried: the batch is halved until the
//! refused messages stand alone, and they are dead-lettered while the rest is
//! committed. Any other error is retried [`QUERY_ATTEMPTS`] times and then
//! the batch goes back to the broker, whose delivery limit bounds how often.

use std::{ops::Range, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    backoff::Backoff,
    cache::RecordCache,
    domain::{DataMessage, Record},
    metrics::Metrics,
    storage::{RecordStore, StoreError},
    telemetry::error_chain,
};

/// Tries of one statement that fails neither for unavailability nor for its
/// data (a missing table, a permission): enough for a passing fault, and few
/// enough that the delivery limit, not this loop, decides the batch's fate.
pub const QUERY_ATTEMPTS: u32 = 5;

/// What became of a batch handed to [`persist`].
#[derive(Debug)]
pub enum Persisted {
    /// Committed: the stored record of every message the database took, and
    /// the position in the batch of each message it refused for good.
    Committed {
        records: Vec<Record>,
        refused: Vec<usize>,
    },
    /// Not committed: the database kept failing in a way retries did not
    /// cure. The batch goes back to the broker, which counts a delivery.
    HandBack,
    /// `give_up` (shutdown, or the batch's channel closing) came before the
    /// commit: nothing may be acknowledged.
    GivenUp,
}

/// What became of one statement.
enum Insert {
    Stored(Vec<Record>),
    Refused(StoreError),
    Failing,
    GivenUp,
}

/// Persists `messages` (all valid). Parts of the batch may be committed
/// before a `HandBack` or `GivenUp`; their redelivery is harmless, since
/// inserts ignore ids already stored.
pub async fn persist(
    store: &Arc<dyn RecordStore>,
    metrics: &Metrics,
    messages: &[DataMessage],
    max_backoff: Duration,
    give_up: &CancellationToken,
) -> Persisted {
    let mut records = Vec::with_capacity(messages.len());
    let mut refused = Vec::new();
    // A stack of ranges still to write, first half on top: k refused
    // messages in a batch of n cost about 2·k·log2(n) statements.
    #[allow(clippy::single_range_in_vec_init)] // one range, not its elements
    let mut to_write: Vec<Range<usize>> = vec![0..messages.len()];
    while let Some(range) = to_write.pop() {
        match insert(
            store,
            metrics,
            &messages[range.clone()],
            max_backoff,
            give_up,
        )
        .await
        {
            Insert::Stored(stored) => records.extend(stored),
            Insert::Refused(err) if range.len() == 1 => {
                tracing::warn!(
                    id = %messages[range.start].id,
                    error = %error_chain(&err),
                    "the database refuses this message for good: dead-lettering it"
                );
                refused.push(range.start);
            }
            Insert::Refused(err) => {
                tracing::debug!(
                    messages = range.len(),
                    error = %error_chain(&err),
                    "the database refused part of the batch: halving it"
                );
                let middle = range.start + range.len() / 2;
                to_write.push(middle..range.end);
                to_write.push(range.start..middle);
            }
            Insert::Failing => return Persisted::HandBack,
            Insert::GivenUp => return Persisted::GivenUp,
        }
    }
    metrics.messages_settled("persisted", messages.len() - refused.len());
    Persisted::Committed { records, refused }
}

/// One statement for `messages`, retried with backoff: for as long as the
/// database is unavailable, [`QUERY_ATTEMPTS`] times for any other error
/// but a refusal of the data, which is returned at once.
async fn insert(
    store: &Arc<dyn RecordStore>,
    metrics: &Metrics,
    messages: &[DataMessage],
    max_backoff: Duration,
    give_up: &CancellationToken,
) -> Insert {
    let mut backoff = Backoff::new(Duration::from_millis(50), max_backoff);
    let mut failures = 0;
    loop {
        let started = std::time::Instant::now();
        let err = match store.insert_batch(messages).await {
            Ok(records) => {
                metrics.insert_took(started.elapsed());
                return Insert::Stored(records);
            }
            Err(err @ StoreError::Refused(_)) => return Insert::Refused(err),
            Err(err) => err,
        };
        if matches!(err, StoreError::Query(_)) {
            failures += 1;
            if failures >= QUERY_ATTEMPTS {
                tracing::error!(
                    messages = messages.len(),
                    attempts = failures,
                    error = %error_chain(&err),
                    "batch not persisted and retries did not help; handing it back to the broker"
                );
                return Insert::Failing;
            }
        }
        metrics.database_retried();
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
                return Insert::GivenUp;
            }
        }
    }
}

/// Caches committed records and clears their pending markers. A failure
/// costs only speed: reads still find the records in the database.
pub async fn write_through(cache: &Arc<dyn RecordCache>, metrics: &Metrics, records: &[Record]) {
    let entries: Vec<(Uuid, Bytes)> = records
        .iter()
        .map(|record| (record.id, Bytes::from(record.to_json())))
        .collect();
    if let Err(err) = cache.store_persisted(&entries).await {
        metrics.cache_error();
        tracing::warn!(records = entries.len(), error = %error_chain(&err), "cache write-through failed");
    }
}
