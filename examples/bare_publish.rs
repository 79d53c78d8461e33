//! The ceiling for `POST /data`: a bare axum handler that publishes one
//! persistent message to a quorum queue and answers 202 once the broker has
//! confirmed it (mandatory, so a message no queue takes is a failure). No
//! validation, no cache, no metrics: only the confirmed publish, done well (a few long-lived confirm channels, each with many
//! confirms in flight). `scripts/bench.sh` measures svc against it.
//!
//!     cargo run --release --example bare_publish -- 127.0.0.1:18300 amqp://guest:guest@127.0.0.1:5672/%2f bench.bare 4

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::signal::unix::{SignalKind, signal};

struct Publisher {
    channels: Vec<Channel>,
    next: AtomicUsize,
    failures: AtomicUsize,
    queue: String,
}

async fn publish(State(publisher): State<Arc<Publisher>>, body: Bytes) -> StatusCode {
    let index = publisher.next.fetch_add(1, Ordering::Relaxed) % publisher.channels.len();
    let confirm = publisher.channels[index]
        .basic_publish(
            "".into(),
            publisher.queue.as_str().into(),
            // As svc does: a message no queue takes comes back as a failure
            // instead of being confirmed.
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    let failure = match confirm {
        Ok(confirm) => match confirm.await {
            Ok(Confirmation::Ack(None)) => return StatusCode::ACCEPTED,
            Ok(confirmation) => format!("not acknowledged: {confirmation:?}"),
            Err(err) => format!("confirm failed: {err}"),
        },
        Err(err) => format!("publish failed: {err}"),
    };
    // The benchmark counts these as errors; say why, once in a while.
    if publisher.failures.fetch_add(1, Ordering::Relaxed) % 10_000 == 0 {
        eprintln!("bare_publish: {failure}");
    }
    StatusCode::SERVICE_UNAVAILABLE
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:18300".into());
    let url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = args.next().unwrap_or_else(|| "bench.bare".into());
    let channel_count: usize = args.next().map_or(Ok(4), |n| n.parse())?;

    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let mut channels = Vec::with_capacity(channel_count);
    for _ in 0..channel_count {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channels[0]
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    let cleanup = channels[0].clone();

    let publisher = Arc::new(Publisher {
        channels,
        next: AtomicUsize::new(0),
        failures: AtomicUsize::new(0),
        queue: queue.clone(),
    });
    let app = Router::new()
        .route("/data", post(publish))
        .with_state(publisher);
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("bare_publish listening on {address}");
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await?;
    // A benchmark leaves nothing behind. (No `x-expires` instead: publishing
    // does not count as using a queue, so it would vanish mid-run and the
    // unroutable publishes would be confirmed at once, flattering this
    // baseline.)
    cleanup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn stopped() {
    let mut terminate = signal(SignalKind::terminate()).expect("can watch SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
