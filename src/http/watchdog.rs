//! Closes a connection that makes no progress: no request head completed,
//! no request being answered and nothing written for the header timeout.
//! That drops a client that sends its headers slowly or not at all
//! (slowloris) and an idle keep-alive connection, as hyper's header-read
//! timeout does, without its cost: hyper arms a timer for every request (a
//! clock read, a boxed sleep, a timer-wheel insert and removal under a lock:
//! about 5 % of serve's CPU on a warm read, docs/PERFORMANCE.md). Here each
//! request and each write bumps a counter of its connection, and a task per
//! connection looks at them four times per timeout.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    task::JoinHandle,
};

/// What a connection has done so far, counted by its own task and read by
/// its watchdog.
#[derive(Debug, Default)]
pub struct Progress {
    begun: AtomicU64,
    answered: AtomicU64,
    writes: AtomicU64,
}

impl Progress {
    /// A request head has arrived; the request counts as in progress until
    /// the returned guard is dropped (answered, or abandoned).
    pub fn begin(self: &Arc<Self>) -> Answering {
        self.begun.fetch_add(1, Relaxed);
        Answering(self.clone())
    }

    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.begun.load(Relaxed),
            self.answered.load(Relaxed),
            self.writes.load(Relaxed),
        )
    }
}

/// A request in progress on its connection.
pub struct Answering(Arc<Progress>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Relaxed);
    }
}

/// Aborts `connection` once it has made no progress for `limit` (checked
/// every quarter of it, so it is closed within 1.25 × `limit`); ends with
/// the connection.
pub async fn watch<T>(progress: Arc<Progress>, connection: JoinHandle<T>, limit: Duration) {
    let period = limit / 4;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = progress.snapshot();
    let mut quiet = Duration::ZERO;
    loop {
        ticks.tick().await;
        if connection.is_finished() {
            return;
        }
        let now = progress.snapshot();
        let (begun, answered, _) = now;
        if now != seen || begun != answered {
            seen = now;
            quiet = Duration::ZERO;
            continue;
        }
        quiet += period;
        if quiet >= limit {
            tracing::debug!(
                limit_ms = limit.as_millis() as u64,
                "closing a connection without a request"
            );
            connection.abort();
            return;
        }
    }
}

/// A connection's stream, counting the writes that make progress (a
/// response going out, however slowly the client reads it).
pub struct Watched<S> {
    stream: S,
    progress: Arc<Progress>,
}

impl<S> Watched<S> {
    pub fn new(stream: S, progress: Arc<Progress>) -> Self {
        Self { stream, progress }
    }

    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.progress.writes.fetch_add(1, Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked() -> JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_progress_is_aborted_after_the_limit() {
        let connection = parked();
        let abort = connection.abort_handle();
        let started = tokio::time::Instant::now();
        watch(Arc::default(), connection, Duration::from_secs(8)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        tokio::task::yield_now().await;
        assert!(abort.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_keeps_its_connection_however_long_it_takes() {
        let progress = Arc::new(Progress::default());
        let connection = parked();
        let abort = connection.abort_handle();
        let answering = progress.begin();
        let watchdog = tokio::spawn(watch(progress.clone(), connection, Duration::from_secs(8)));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!watchdog.is_finished());
        drop(answering);
        let answered = tokio::time::Instant::now();
        watchdog.await.unwrap();
        let idle = answered.elapsed();
        assert!(
            idle >= Duration::from_secs(8) && idle <= Duration::from_secs(10),
            "{idle:?}"
        );
        tokio::task::yield_now().await;
        assert!(abort.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_going_out_slowly_is_progress() {
        use tokio::io::AsyncWriteExt;

        let progress = Arc::new(Progress::default());
        let (near, _far) = tokio::io::duplex(1024);
        let mut stream = Watched::new(near, progress.clone());
        let watchdog = tokio::spawn(watch(progress, parked(), Duration::from_secs(8)));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stream.write_all(b"a chunk").await.unwrap();
        }
        assert!(!watchdog.is_finished(), "closed while writing");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_ends_with_its_connection() {
        let connection = tokio::spawn(tokio::time::sleep(Duration::from_secs(3)));
        let started = tokio::time::Instant::now();
        watch(Arc::default(), connection, Duration::from_secs(8)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }
}
