//! A timer for hyper whose deadlines move forward without touching tokio's
//! timer wheel.
//!
//! hyper bounds how long a client may take to send its request headers by
//! arming a timer before every request and moving its deadline forward when
//! the next request starts. With tokio's own timer that is a timer-wheel
//! update, under a lock both worker threads share, on every request. Here a
//! deadline moved forward only records the new instant; the wheel entry
//! stays where it was and, when it fires, is re-armed for the deadline as it
//! then stands. A busy keep-alive connection costs one wheel update per
//! header timeout instead of one per request, and a timer still never fires
//! before its deadline.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::rt::{Sleep, Timer};
use pin_project_lite::pin_project;

#[derive(Debug, Clone, Copy, Default)]
pub struct LazyTimer;

impl Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock (the same as the system's, except in tests with time paused).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(LazySleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<LazySleep>() {
            Some(lazy) => lazy.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

pin_project! {
    /// Ready once `deadline` has passed; `wheel` is tokio's timer, armed for
    /// an instant at or before the deadline.
    pub struct LazySleep {
        deadline: Instant,
        #[pin]
        wheel: tokio::time::Sleep,
    }
}

impl LazySleep {
    fn until(deadline: Instant) -> Self {
        Self {
            deadline,
            wheel: tokio::time::sleep_until(deadline.into()),
        }
    }

    /// A later deadline is only recorded; an earlier one re-arms the wheel.
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.project();
        if deadline < *this.deadline {
            this.wheel.reset(deadline.into());
        }
        *this.deadline = deadline;
    }
}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if this.wheel.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if tokio::time::Instant::now() >= (*this.deadline).into() {
                return Poll::Ready(());
            }
            // Fired for a deadline since moved forward: wait for the new one.
            let deadline = *this.deadline;
            this.wheel.as_mut().reset(deadline.into());
        }
    }
}

impl Sleep for LazySleep {}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline_in(millis: u64) -> Instant {
        (tokio::time::Instant::now() + Duration::from_millis(millis)).into_std()
    }

    /// Polls `sleep` until it is ready, and says how long that took.
    async fn time_until_ready(sleep: &mut Pin<Box<dyn Sleep>>) -> Duration {
        let started = tokio::time::Instant::now();
        std::future::poll_fn(|cx| sleep.as_mut().poll(cx)).await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn it_fires_at_its_deadline() {
        let mut sleep = LazyTimer.sleep(Duration::from_millis(100));
        assert_eq!(
            time_until_ready(&mut sleep).await,
            Duration::from_millis(100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_is_kept_never_the_first() {
        let mut sleep = LazyTimer.sleep_until(deadline_in(100));
        // Polled once, so the wheel holds the first deadline.
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(60)).await;
        LazyTimer.reset(&mut sleep, deadline_in(100));
        assert_eq!(
            time_until_ready(&mut sleep).await,
            Duration::from_millis(100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_fires_early() {
        let mut sleep = LazyTimer.sleep_until(deadline_in(100));
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        LazyTimer.reset(&mut sleep, deadline_in(30));
        assert_eq!(
            time_until_ready(&mut sleep).await,
            Duration::from_millis(30)
        );
    }
}
