//! A circuit breaker for the cache: after a few failures in a row, calls are
//! skipped outright for a cooldown, so a dead or hanging Redis costs
//! requests nothing instead of a timeout each. After the cooldown one call
//! goes through as a trial; its success closes the circuit again.
//! Hand-written: tower-resilience's breaker wraps a tower `Service`, and the
//! cache is a trait of async methods, not a service.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// While set and in the future, calls are skipped.
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
        }
    }

    /// Whether a call may go through now. Once the cooldown is over, the
    /// first caller is let through as the trial and the others keep skipping
    /// until it reports back.
    pub fn allows(&self, now: Instant) -> bool {
        let mut open_until = self.open_until.lock().expect("never poisoned");
        match *open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => {
                *open_until = Some(now + self.cooldown);
                true
            }
        }
    }

    pub fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            *self.open_until.lock().expect("never poisoned") = None;
        }
    }

    pub fn failed(&self, now: Instant) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            *self.open_until.lock().expect("never poisoned") = Some(now + self.cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(1);

    #[test]
    fn failures_in_a_row_open_the_circuit() {
        let breaker = Breaker::new(3, COOLDOWN);
        let now = Instant::now();
        breaker.failed(now);
        breaker.failed(now);
        assert!(breaker.allows(now));
        breaker.failed(now);
        assert!(!breaker.allows(now));
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(3, COOLDOWN);
        let now = Instant::now();
        breaker.failed(now);
        breaker.failed(now);
        breaker.succeeded();
        breaker.failed(now);
        assert!(breaker.allows(now));
    }

    #[test]
    fn after_the_cooldown_one_trial_goes_through_and_its_success_closes_it() {
        let breaker = Breaker::new(1, COOLDOWN);
        let now = Instant::now();
        breaker.failed(now);
        let later = now + COOLDOWN;
        assert!(breaker.allows(later), "the trial");
        assert!(!breaker.allows(later), "others wait for the trial");
        breaker.succeeded();
        assert!(breaker.allows(later));
        assert!(breaker.allows(later), "closed: not just one more trial");
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let breaker = Breaker::new(1, COOLDOWN);
        let now = Instant::now();
        breaker.failed(now);
        let later = now + COOLDOWN;
        assert!(breaker.allows(later));
        breaker.failed(later);
        assert!(!breaker.allows(later + COOLDOWN / 2));
    }
}
