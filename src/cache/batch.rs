//! Collects small writes from concurrent callers into one round trip.
//!
//! Each caller hands over its item and gets a [`Ticket`] at once; one
//! background task flushes whatever has gathered, one flush at a time, so a
//! flush carries every item that arrived while the previous one was on the
//! wire. A caller can do other work (the broker's confirm) and look at its
//! ticket afterwards: by then the flush is usually over, and the ticket
//! answers without waking anyone. No timer per caller: the flush bounds its
//! own round trip, so a ticket waits at most for two of them (and a linger).
//!
//! Under load the task also lingers a moment before each flush, so that a
//! round trip carries tens of items instead of a handful. The linger never
//! makes anyone wait longer than a round trip: a caller that asks for its
//! outcome while its items are still gathering ends the linger at once. At
//! rest (the last flush carried little) there is no linger at all.
//!
//! Hand-written because no maintained crate hands each caller a ticket for
//! its part of a shared flush; one marker round trip per write cost Redis
//! more CPU than the rest of the write (the Redis column of the POST rows of
//! `scripts/bench.sh`).

use std::{
    future::Future,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use super::CacheError;

/// The outcome of one flush, shared by every item it carried.
#[derive(Default)]
struct Outcome {
    result: OnceLock<Result<(), Arc<CacheError>>>,
    settled: Notify,
    /// Someone is waiting for this outcome: no more lingering.
    awaited: AtomicBool,
    awaited_now: Notify,
}

impl Outcome {
    fn settle(&self, result: Result<(), Arc<CacheError>>) {
        let _ = self.result.set(result);
        self.settled.notify_waiters();
    }

    fn await_now(&self) {
        if !self.awaited.swap(true, Ordering::AcqRel) {
            self.awaited_now.notify_waiters();
        }
    }

    /// Lets items gather for `linger`, or less if someone awaits them.
    async fn linger(&self, linger: Duration) {
        let awaited = self.awaited_now.notified();
        tokio::pin!(awaited);
        // Registered before looking, so a caller arriving in between still ends it.
        awaited.as_mut().enable();
        if self.awaited.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(linger) => {}
            () = awaited => {}
        }
    }
}

/// Items waiting for the next flush, and the outcome they will share.
struct Gathering<T> {
    items: Vec<T>,
    outcome: Arc<Outcome>,
}

struct Shared<T> {
    gathering: Mutex<Gathering<T>>,
    /// Wakes the flushing task: a stored permit, so no wake-up is lost.
    work: Notify,
    /// Items that may wait at once; past it, callers are refused at once.
    max_waiting: usize,
}

/// How a [`Batcher`] gathers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items in one flush.
    pub max_batch: usize,
    /// Most items waiting at once; past it, callers are refused at once.
    pub max_waiting: usize,
    /// How long to let items gather before a flush, once the last flush
    /// carried at least `linger_from` items (a sign of load).
    pub linger: Duration,
    pub linger_from: usize,
}

/// A batching writer; dropping it stops its task once the last flush ends.
pub struct Batcher<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the task that passes gathered items to `flush`.
    pub fn spawn<F, Fut>(limits: Limits, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), CacheError>> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            gathering: Mutex::new(Gathering {
                items: Vec::new(),
                outcome: Arc::default(),
            }),
            work: Notify::new(),
            max_waiting: limits.max_waiting,
        });
        tokio::spawn(flush_while_used(shared.clone(), limits, flush));
        Self { shared }
    }

    /// Hands `item` to the next flush.
    pub fn push(&self, item: T) -> Ticket {
        let mut gathering = self.shared.gathering.lock().expect("never poisoned");
        if gathering.items.len() >= self.shared.max_waiting {
            return Ticket(Err(CacheError::Backlogged));
        }
        gathering.items.push(item);
        let outcome = gathering.outcome.clone();
        let first = gathering.items.len() == 1;
        drop(gathering);
        if first {
            self.shared.work.notify_one();
        }
        Ticket(Ok(outcome))
    }
}

impl<T> Drop for Batcher<T> {
    fn drop(&mut self) {
        self.shared.work.notify_one();
    }
}

async fn flush_while_used<T, F, Fut>(shared: Arc<Shared<T>>, limits: Limits, flush: F)
where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), CacheError>>,
{
    let mut last_flush = 0;
    loop {
        shared.work.notified().await;
        if last_flush >= limits.linger_from {
            // The outcome of what is gathering now: whoever awaits it ends the linger.
            let upcoming = shared
                .gathering
                .lock()
                .expect("never poisoned")
                .outcome
                .clone();
            upcoming.linger(limits.linger).await;
        }
        // Only this task holds it: every batcher handle is gone.
        let in_use = Arc::strong_count(&shared) > 1;
        let (mut items, outcome) = {
            let mut gathering = shared.gathering.lock().expect("never poisoned");
            // The next batch is likely the size of this one: room for it
            // now, rather than growing the buffer item by item.
            let next = Vec::with_capacity(gathering.items.len());
            (
                std::mem::replace(&mut gathering.items, next),
                std::mem::take(&mut gathering.outcome),
            )
        };
        last_flush = items.len();
        // Everything gathered shares one outcome, settled once all of it is
        // written (in round trips of at most `max_batch` items).
        let mut result = if in_use {
            Ok(())
        } else {
            Err(CacheError::WriterGone)
        };
        while result.is_ok() && !items.is_empty() {
            let rest = items.split_off(items.len().min(limits.max_batch));
            result = flush(items).await;
            items = rest;
        }
        outcome.settle(result.map_err(Arc::new));
        if !in_use {
            return;
        }
    }
}

/// A caller's claim on the flush that carries its item.
#[must_use = "a ticket says whether the item was written"]
pub struct Ticket(Result<Arc<Outcome>, CacheError>);

impl Ticket {
    /// Waits until the flush carrying the item is over, and says how it went.
    pub async fn written(self) -> Result<(), CacheError> {
        let outcome = self.0?;
        loop {
            let settled = outcome.settled.notified();
            tokio::pin!(settled);
            // Registered before looking, so a flush ending in between still wakes us.
            settled.as_mut().enable();
            if let Some(result) = outcome.result.get() {
                return result.clone().map_err(CacheError::Batch);
            }
            outcome.await_now();
            settled.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_batch: 16,
        max_waiting: 4,
        linger: Duration::from_millis(1),
        linger_from: 3,
    };

    /// A batcher whose flushes record their sizes, failing when told to.
    fn recording(max_batch: usize, fail: bool) -> (Batcher<u32>, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let limits = Limits {
            max_batch,
            ..LIMITS
        };
        let batcher = Batcher::spawn(limits, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if fail {
                    Err(CacheError::Timeout(Duration::from_millis(5)))
                } else {
                    Ok(())
                }
            }
        });
        (batcher, sizes)
    }

    /// Hands over all `items` before awaiting any, and expects each written.
    async fn write_all(batcher: &Batcher<u32>, items: std::ops::Range<u32>) {
        let tickets: Vec<Ticket> = items.map(|n| batcher.push(n)).collect();
        for ticket in tickets {
            ticket.written().await.unwrap();
        }
    }

    #[tokio::test]
    async fn items_handed_over_together_share_one_flush() {
        let (batcher, sizes) = recording(16, false);
        write_all(&batcher, 0..3).await;
        assert_eq!(*sizes.lock().unwrap(), vec![3]);
        // A later item gets a flush of its own.
        batcher.push(9).written().await.unwrap();
        assert_eq!(*sizes.lock().unwrap(), vec![3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_busy_flush_items_linger_to_gather() {
        let (batcher, sizes) = recording(16, false);
        write_all(&batcher, 0..3).await;
        // One item now, one half a millisecond later, neither awaited yet:
        // they share a flush.
        let first = batcher.push(10);
        tokio::time::sleep(Duration::from_micros(500)).await;
        let second = batcher.push(11);
        tokio::time::sleep(Duration::from_millis(2)).await;
        first.written().await.unwrap();
        second.written().await.unwrap();
        assert_eq!(*sizes.lock().unwrap(), vec![3, 2]);
        // That flush was small: the next item goes out at once.
        let started = tokio::time::Instant::now();
        batcher.push(12).written().await.unwrap();
        assert_eq!(*sizes.lock().unwrap(), vec![3, 2, 1]);
        assert!(
            started.elapsed() < LIMITS.linger + Duration::from_millis(5) + Duration::from_micros(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_waiting_for_its_item_ends_the_linger() {
        let (batcher, sizes) = recording(16, false);
        write_all(&batcher, 0..3).await;
        // The next flush would linger, but its only item is awaited at once.
        let started = tokio::time::Instant::now();
        batcher.push(10).written().await.unwrap();
        assert_eq!(*sizes.lock().unwrap(), vec![3, 1]);
        // (The flush itself takes 5 ms; the linger would add 1.)
        assert!(started.elapsed() < Duration::from_millis(6));
    }

    #[tokio::test]
    async fn a_gathering_larger_than_a_batch_takes_several_round_trips() {
        let (batcher, sizes) = recording(2, false);
        write_all(&batcher, 0..4).await;
        assert_eq!(*sizes.lock().unwrap(), vec![2, 2]);
    }

    #[tokio::test]
    async fn every_item_of_a_failed_flush_sees_the_failure() {
        let (batcher, _) = recording(16, true);
        let (first, second) = (batcher.push(1), batcher.push(2));
        assert!(matches!(first.written().await, Err(CacheError::Batch(_))));
        assert!(matches!(second.written().await, Err(CacheError::Batch(_))));
    }

    #[tokio::test]
    async fn past_the_waiting_bound_items_are_refused_at_once() {
        let (batcher, _) = recording(16, false);
        let accepted: Vec<Ticket> = (0..4).map(|n| batcher.push(n)).collect();
        assert!(matches!(
            batcher.push(5).written().await,
            Err(CacheError::Backlogged)
        ));
        for ticket in accepted {
            ticket.written().await.unwrap();
        }
    }

    #[tokio::test]
    async fn items_left_when_the_batcher_is_dropped_are_told_so() {
        let (batcher, sizes) = recording(16, false);
        let ticket = batcher.push(1);
        drop(batcher);
        assert!(matches!(
            ticket.written().await,
            Err(CacheError::Batch(err)) if matches!(*err, CacheError::WriterGone)
        ));
        assert!(sizes.lock().unwrap().is_empty());
    }
}
