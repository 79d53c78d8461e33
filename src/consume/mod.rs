//! `svc consume`: takes accepted writes off the ingest queue in batches,
//! persists each batch with one multi-row insert, writes the records through
//! to the cache, and only then acknowledges them.
//!
//! Guarantees: a message is acknowledged only after its row is committed; a
//! redelivery never makes a duplicate (inserts ignore known ids); a payload
//! that can never be persisted (malformed, or refused by the database) is
//! rejected to the dead-letter queue at once while the rest of its batch is
//! persisted; while the database is down the batch in hand is held and
//! retried, and no more deliveries are taken (prefetch bounds them); any
//! other database error goes back to the broker after a few retries, and the
//! delivery limit ends it. On shutdown the batch in hand is finished,
//! committed and acknowledged before the process exits.

mod batch;
mod depth;
mod persist;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    backoff::Backoff,
    cache::{RecordCache, redis::RedisCache},
    config::{ConsumeArgs, SecretUrl},
    domain::DataMessage,
    health,
    metrics::Metrics,
    queue::{Topology, connect},
    server::{self, ServerSettings},
    storage::{
        RecordStore,
        postgres::{PostgresStore, connect_lazy},
    },
    telemetry::error_chain,
    tls::TlsSettings,
};

use persist::Persisted;

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub amqp_url: SecretUrl,
    pub tls: TlsSettings,
    pub topology: Topology,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub prefetch: u16,
    pub retry_max_backoff: Duration,
    pub queue_watch: Duration,
}

pub struct Consumer {
    settings: ConsumerSettings,
    store: Arc<dyn RecordStore>,
    cache: Arc<dyn RecordCache>,
    consuming: Arc<AtomicBool>,
    dead_letters: depth::LastSeen,
    metrics: Metrics,
}

impl Consumer {
    pub fn new(
        settings: ConsumerSettings,
        store: Arc<dyn RecordStore>,
        cache: Arc<dyn RecordCache>,
        metrics: Metrics,
    ) -> Self {
        Self {
            settings,
            store,
            cache,
            consuming: Arc::new(AtomicBool::new(false)),
            dead_letters: depth::LastSeen::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The consumer's own listener: `/health/*` (ready while consuming with
    /// the database reachable) and its `/metrics`.
    pub fn router(&self) -> axum::Router {
        let consuming = self.consuming.clone();
        let probe = health::Probe {
            store: self.store.clone(),
            cache: self.cache.clone(),
            broker_up: Arc::new(move || consuming.load(Ordering::Acquire)),
        };
        let routes = health::router(probe).merge(server::metrics_router(self.metrics.clone()));
        server::observed(routes, self.metrics.clone(), Duration::from_secs(5))
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the
    /// broker connection is lost.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(err) => {
                    self.consuming.store(false, Ordering::Release);
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        url = %self.settings.amqp_url,
                        error = %error_chain(err.as_ref()),
                        retry_in_ms = delay.as_millis() as u64,
                        "consumer lost the broker; reconnecting"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
        self.consuming.store(false, Ordering::Release);
    }

    /// One connection's worth of consuming. `Ok` means a clean shutdown.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let topology = &self.settings.topology;
        let connection = connect(
            self.settings.amqp_url.expose(),
            &self.settings.tls,
            "consume",
        )
        .await
        .context("cannot connect to the broker")?;
        let channel = connection.create_channel().await?;
        topology
            .declare(&channel)
            .await
            .context("cannot declare the topology")?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions { global: false })
            .await?;
        let tag = format!(
            "svc-consume-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        );
        let mut deliveries = channel
            .basic_consume(
                topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consuming.store(true, Ordering::Release);
        backoff.reset();
        let watch_stop = CancellationToken::new();
        let _stop_watch_with_session = watch_stop.clone().drop_guard();
        tokio::spawn(depth::watch(
            connection.create_channel().await?,
            topology.clone(),
            self.settings.queue_watch,
            self.dead_letters.clone(),
            self.metrics.clone(),
            watch_stop,
        ));
        tracing::info!(queue = %topology.queue, prefetch = self.settings.prefetch, "consuming");

        loop {
            let collected = batch::collect(
                &mut deliveries,
                self.settings.batch_size,
                self.settings.batch_wait,
                shutdown,
            )
            .await;
            self.handle_batch(&channel, collected.items, shutdown)
                .await?;
            if let Some(ended) = collected.ended {
                return Err(match ended {
                    Some(err) => anyhow::Error::new(err).context("delivery stream failed"),
                    None => anyhow::anyhow!("the broker cancelled the consumer"),
                });
            }
            if shutdown.is_cancelled() {
                break;
            }
        }

        // Stop deliveries, then finish whatever the broker already handed over,
        // so as little as possible is redelivered to the next consumer.
        self.consuming.store(false, Ordering::Release);
        channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        let leftovers = batch::collect(
            &mut deliveries,
            usize::from(self.settings.prefetch).max(1),
            Duration::from_millis(100),
            &CancellationToken::new(),
        )
        .await;
        self.handle_batch(&channel, leftovers.items, &CancellationToken::new())
            .await?;
        close(&channel, &connection).await;
        tracing::info!("consumer stopped cleanly");
        Ok(())
    }

    /// Dead-letters what can never be persisted, persists the rest, and
    /// acknowledges them once committed.
    #[tracing::instrument(skip_all, fields(size = deliveries.len()))]
    async fn handle_batch(
        &self,
        channel: &Channel,
        deliveries: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.metrics.batch_taken(deliveries.len());
        let mut messages: Vec<DataMessage> = Vec::with_capacity(deliveries.len());
        let mut valid: Vec<&Delivery> = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            match DataMessage::decode(&delivery.data) {
                Ok(message) => {
                    messages.push(message);
                    valid.push(delivery);
                }
                Err(err) => {
                    tracing::warn!(
                        delivery_tag = delivery.delivery_tag,
                        message_id = ?delivery.properties.message_id(),
                        error = %error_chain(&err),
                        "poison message: dead-lettering it"
                    );
                    self.dead_letter(delivery, "malformed").await?;
                }
            }
        }
        let Some(&last_valid) = valid.last() else {
            return Ok(());
        };
        let (give_up, _stop_watching_channel) = give_up_on_batch(channel, shutdown);
        let (records, refused) = match persist::persist(
            &self.store,
            &self.metrics,
            &messages,
            self.settings.retry_max_backoff,
            &give_up,
        )
        .await
        {
            Persisted::Committed { records, refused } => (records, refused),
            Persisted::HandBack => {
                // One frame returns the whole batch, as one acknowledges it below.
                last_valid
                    .acker
                    .nack(BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    })
                    .await?;
                self.metrics.messages_settled("returned", messages.len());
                return Ok(());
            }
            Persisted::GivenUp => {
                anyhow::bail!("the batch was given up before it was committed")
            }
        };
        for &position in &refused {
            self.dead_letter(valid[position], "refused_by_store")
                .await?;
        }
        let last_stored = valid
            .iter()
            .enumerate()
            .rev()
            .find(|(position, _)| !refused.contains(position));
        let Some((_, last_stored)) = last_stored else {
            return Ok(());
        };
        // Committed: the acknowledgement and the cache write-through go out
        // together, so the next batch is not held back by a Redis round trip.
        // One frame acknowledges the whole batch: every earlier delivery on
        // this channel is either in this batch or was rejected above.
        let (acked, ()) = tokio::join!(
            last_stored.acker.ack(BasicAckOptions { multiple: true }),
            persist::write_through(&self.cache, &self.metrics, &records),
        );
        acked
            .context("cannot acknowledge a committed batch (it will be redelivered, harmlessly)")?;
        Ok(())
    }

    /// Rejects `delivery` without requeueing it: the broker moves it to the
    /// dead-letter queue. `reason` labels the count.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &'static str,
    ) -> Result<(), lapin::Error> {
        delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await?;
        self.metrics.messages_dead_lettered(reason, 1);
        Ok(())
    }
}

/// Cancelled on shutdown, or as soon as `channel` closes: the broker then
/// redelivers the batch (counting one more delivery of each message), so
/// retrying its write here would only hold the consumer back from reconnecting.
/// The guard ends the watch when the batch is done.
fn give_up_on_batch(
    channel: &Channel,
    shutdown: &CancellationToken,
) -> (CancellationToken, DropGuard) {
    let give_up = shutdown.child_token();
    let watched = channel.clone();
    let token = give_up.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while watched.status().connected() {
            tokio::select! {
                _ = tick.tick() => {}
                () = token.cancelled() => return,
            }
        }
        token.cancel();
    });
    (give_up.clone(), give_up.drop_guard())
}

async fn close(channel: &lapin::Channel, connection: &Connection) {
    if let Err(err) = channel.close(200, "shutdown".into()).await {
        tracing::debug!(error = %err, "closing the channel");
    }
    if let Err(err) = connection.close(200, "shutdown".into()).await {
        tracing::debug!(error = %err, "closing the connection");
    }
}

/// The real consumer for `args`: Postgres primary, Redis, RabbitMQ.
pub fn build(args: &ConsumeArgs) -> anyhow::Result<Consumer> {
    let metrics = Metrics::new();
    let pool = connect_lazy(&args.postgres.pool_settings(
        &args.postgres.database_url,
        "svc consume",
        &args.tls,
    ))
    .context("cannot configure the database pool")?;
    let cache = RedisCache::new(&args.redis.settings(&args.tls), metrics.clone())
        .context("cannot configure the cache")?;
    Ok(Consumer::new(
        args.consumer_settings(),
        Arc::new(PostgresStore::new(pool)),
        Arc::new(cache),
        metrics,
    ))
}

/// `svc consume`: the consumer plus its `/metrics` and `/health/*` listener.
pub async fn run(args: ConsumeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumer = build(&args)?;
    let listener = server::bind(args.metrics_listen)
        .with_context(|| format!("cannot listen on {}", args.metrics_listen))?;
    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, "consumer health and metrics listening");
    let settings = ServerSettings {
        header_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(2),
    };
    let server = tokio::spawn(server::serve(
        listener,
        consumer.router(),
        settings,
        shutdown.clone(),
    ));
    consumer.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}
