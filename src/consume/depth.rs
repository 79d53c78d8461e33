//! Watches the depth of the ingest and dead-letter queues while consuming.
//!
//! The broker dead-letters a message on its own once the delivery limit is
//! spent (for example when consumers keep dying before they acknowledge it),
//! so the consumer never sees that moment. This watch does: when the
//! dead-letter queue grows it logs a warning and counts the arrivals, and the
//! depths are exported as gauges for dashboards and alerts.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use lapin::Channel;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    queue::{Topology, ready_messages},
    telemetry::error_chain,
};

/// The dead-letter queue's depth at the last look, kept across reconnects so
/// that arrivals during a broker outage are still counted. Starts unknown.
#[derive(Debug, Clone)]
pub struct LastSeen(Arc<AtomicI64>);

impl Default for LastSeen {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(-1)))
    }
}

impl LastSeen {
    /// Records `now` and returns the depth seen before, if any.
    fn replace(&self, now: u32) -> Option<u32> {
        u32::try_from(self.0.swap(i64::from(now), Ordering::AcqRel)).ok()
    }
}

/// Polls both queues every `interval` until `stop`, or until the channel fails.
pub async fn watch(
    channel: Channel,
    topology: Topology,
    interval: Duration,
    dead_letters: LastSeen,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let (ingest, dead) = match (
            ready_messages(&channel, &topology.queue).await,
            ready_messages(&channel, &topology.dead_letter_queue).await,
        ) {
            (Ok(ingest), Ok(dead)) => (ingest, dead),
            (Err(err), _) | (_, Err(err)) => {
                // The session's own error handling reconnects; this watch
                // restarts with the next session.
                tracing::debug!(error = %error_chain(&err), "queue depth watch stopped");
                return;
            }
        };
        metrics.queue_depth(&topology.queue, ingest);
        metrics.queue_depth(&topology.dead_letter_queue, dead);
        match dead_letters.replace(dead) {
            None if dead > 0 => tracing::warn!(
                queue = %topology.dead_letter_queue,
                messages = dead,
                "the dead-letter queue is not empty"
            ),
            Some(before) if dead > before => {
                let arrived = dead - before;
                metrics.dead_letters_seen(&topology.dead_letter_queue, u64::from(arrived));
                tracing::warn!(
                    queue = %topology.dead_letter_queue,
                    arrived,
                    messages = dead,
                    delivery_limit = topology.delivery_limit,
                    "messages were dead-lettered (poison, or delivered {} times without an acknowledgement)",
                    topology.delivery_limit
                );
            }
            _ => {}
        }
    }
}
