//! Gathers deliveries into batches: up to `max` messages, waiting at most
//! `wait` after the first one, and returning early (with what it holds) on
//! shutdown. Generic over the stream so it is tested without a broker.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

/// What one call to [`collect`] gathered.
#[derive(Debug)]
pub struct Collected<T, E> {
    pub items: Vec<T>,
    /// Why the stream stopped, if it did: an error, or `None` inside `Some`
    /// when it simply ended (the consumer was cancelled by the broker).
    pub ended: Option<Option<E>>,
}

pub async fn collect<S, T, E>(
    stream: &mut S,
    max: usize,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Collected<T, E>
where
    S: Stream<Item = Result<T, E>> + Unpin,
{
    let mut items = Vec::with_capacity(max);
    // The first message may take any time to come; shutdown interrupts the wait.
    let first = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Collected { items, ended: None },
        next = stream.next() => next,
    };
    if let Some(ended) = take(first, &mut items) {
        return Collected {
            items,
            ended: Some(ended),
        };
    }
    let deadline = tokio::time::Instant::now() + wait;
    while items.len() < max {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            next = stream.next() => next,
        };
        if let Some(ended) = take(next, &mut items) {
            return Collected {
                items,
                ended: Some(ended),
            };
        }
    }
    Collected { items, ended: None }
}

/// Keeps a delivered item; returns why the stream stopped if it did.
fn take<T, E>(next: Option<Result<T, E>>, items: &mut Vec<T>) -> Option<Option<E>> {
    match next {
        Some(Ok(item)) => {
            items.push(item);
            None
        }
        Some(Err(err)) => Some(Some(err)),
        None => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    type Item = Result<u32, &'static str>;

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_returns_at_once() {
        let mut source = stream::iter((0..10).map(Ok::<u32, &str>));
        let batch = collect(
            &mut source,
            4,
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(batch.items, vec![0, 1, 2, 3]);
        assert!(batch.ended.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_returns_when_the_wait_is_over() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Item>();
        let mut source = tokio_stream_from(rx);
        tx.send(Ok(1)).unwrap();
        tx.send(Ok(2)).unwrap();
        let started = tokio::time::Instant::now();
        let batch = collect(
            &mut source,
            100,
            Duration::from_millis(50),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(batch.items, vec![1, 2]);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_returns_what_is_in_hand() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Item>();
        let mut source = tokio_stream_from(rx);
        tx.send(Ok(7)).unwrap();
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            trigger.cancel();
        });
        let batch = collect(&mut source, 100, Duration::from_secs(60), &shutdown).await;
        assert_eq!(batch.items, vec![7]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_batch_and_keeps_the_items() {
        let mut source = stream::iter(vec![Ok(1), Err("boom"), Ok(2)]);
        let batch = collect(
            &mut source,
            10,
            Duration::from_secs(1),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(batch.items, vec![1]);
        assert_eq!(batch.ended, Some(Some("boom")));
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Item>,
    ) -> impl Stream<Item = Item> + Unpin {
        Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
