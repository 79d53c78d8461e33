//! Coalesces concurrent work on the same key: while one caller computes the
//! value, the others with that key wait for its result instead of repeating
//! the work. Used so a burst of cache misses for one id is one query.
//! Small enough to own: a map of `OnceCell`s, with its tests below.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `work` unless a call for `key` is already in flight, in which case
    /// it waits for that call's result. If the running caller is cancelled,
    /// one of the waiters takes over (a property of [`OnceCell`]).
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .calls
            .lock()
            .expect("lock is never poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let value = cell.get_or_init(work).await.clone();
        let mut calls = self.calls.lock().expect("lock is never poisoned");
        if calls
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            calls.remove(&key);
        }
        value
    }

    /// Calls in flight, for tests and diagnostics.
    pub fn in_flight(&self) -> usize {
        self.calls.lock().expect("lock is never poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_for_one_key_run_the_work_once() {
        let flight = Arc::new(SingleFlight::<u32, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let flight = flight.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                flight
                    .run(7, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        42
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let flight = SingleFlight::<u32, u32>::default();
        let (a, b) = tokio::join!(flight.run(1, || async { 1 }), flight.run(2, || async { 2 }));
        assert_eq!((a, b), (1, 2));
    }

    #[tokio::test]
    async fn a_finished_call_is_not_reused_later() {
        let flight = SingleFlight::<u32, u32>::default();
        assert_eq!(flight.run(1, || async { 1 }).await, 1);
        assert_eq!(flight.run(1, || async { 2 }).await, 2);
    }
}
