//! [`ConfirmLink`]: one lapin connection that does nothing but publish, on a
//! few long-lived channels in confirm mode, with a window of confirms in
//! flight over all of them.
//!
//! What the link answers for, on top of lapin:
//! - every publish is mandatory: a message the broker confirms but returns
//!   unroutable settles as [`Settled::Returned`], never as a success;
//! - connection.blocked (a broker resource alarm) refuses publishes at once,
//!   including those waiting for a turn in the window, until it is lifted;
//! - a lost connection or channel settles every publish awaiting a confirm
//!   as [`Settled::Lost`], and the owner opens a new link.
//!
//! A publish is one `basic_publish` and one await of its confirm, in the
//! caller's task: no task is spawned per publish.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, Event,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::Topology;
use crate::tls::TlsSettings;

/// How long opening a link may take, handshake and topology included.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the broker did not complete the opening within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// How one publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Confirmed: stored in a queue.
    Ack,
    /// Refused by the broker.
    Nack,
    /// Confirmed, but returned: no queue holds it.
    Returned,
    /// Not sent: the broker blocks publishers (a resource alarm).
    Blocked,
    /// The link went down before the confirm; the message may or may not be stored.
    Lost(Arc<str>),
}

/// What a link publishes to, and how.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Shown in the broker's management UI.
    pub name: String,
    pub channels: u16,
    pub topology: Topology,
    /// Most publishes awaiting their confirm at once, over all channels.
    pub window: usize,
}

/// An open publishing connection. Dropping it closes the connection.
pub struct ConfirmLink {
    connection: Arc<Connection>,
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
    exchange: ShortString,
    routing_key: ShortString,
    /// A permit per publish whose caller awaits its confirm (one that gave
    /// up, past the publish timeout, frees its permit). Past the window,
    /// publishes wait here, first come first served, rather than in the
    /// broker: with a thousand writes in flight, a broker holding all of
    /// them confirms them out of step (some twice as late as the rest),
    /// while one holding a few hundred keeps the same pace and confirms in
    /// turn (docs/PERFORMANCE.md, "Decisions measurement drove").
    window: Semaphore,
    /// Wakes the publishes waiting for a turn when the broker blocks.
    blocking: Arc<Notify>,
    /// Cancelled once the connection reports an error; ends the watch.
    down: CancellationToken,
    _stop_watch: DropGuard,
}

impl ConfirmLink {
    /// Connects to `url`, declares the topology, and opens the channels in
    /// confirm mode.
    pub async fn open(
        url: &str,
        tls: &TlsSettings,
        settings: &LinkSettings,
    ) -> Result<Self, LinkError> {
        tokio::time::timeout(OPEN_TIMEOUT, Self::open_now(url, tls, settings))
            .await
            .map_err(|_| LinkError::Timeout(OPEN_TIMEOUT))?
    }

    async fn open_now(
        url: &str,
        tls: &TlsSettings,
        settings: &LinkSettings,
    ) -> Result<Self, LinkError> {
        let connection = super::connect_named(url, tls, settings.name.clone()).await?;
        let declaring = connection.create_channel().await?;
        settings.topology.declare(&declaring).await?;
        declaring.close(200, "declared".into()).await?;
        let mut channels = Vec::with_capacity(usize::from(settings.channels));
        for _ in 0..settings.channels.max(1) {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        let blocking = Arc::new(Notify::new());
        let down = CancellationToken::new();
        tokio::spawn(watch(
            connection.events_listener(),
            blocking.clone(),
            down.clone(),
        ));
        Ok(Self {
            channels,
            next_channel: AtomicUsize::new(0),
            exchange: settings.topology.exchange.as_str().into(),
            routing_key: settings.topology.routing_key().into(),
            window: Semaphore::new(settings.window.max(1)),
            blocking,
            _stop_watch: down.clone().drop_guard(),
            down,
            connection: Arc::new(connection),
        })
    }

    /// Whether the link can still carry publishes.
    pub fn is_up(&self) -> bool {
        !self.down.is_cancelled()
            && self.connection.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
    }

    /// Publishes `body` as a persistent, mandatory JSON message with message
    /// id `id`, and waits for the broker's verdict.
    pub async fn publish(&self, id: Uuid, body: &[u8]) -> Settled {
        // Held until the verdict.
        let _turn = match self.window.try_acquire() {
            Ok(turn) => turn,
            Err(_) => match self.wait_for_turn().await {
                Ok(turn) => turn,
                Err(refused) => return refused,
            },
        };
        if self.connection.status().blocked() {
            return Settled::Blocked;
        }
        let index = self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        let mut id_text = Uuid::encode_buffer();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(id.hyphenated().encode_lower(&mut id_text).to_owned().into());
        let confirm = self.channels[index]
            .basic_publish(
                self.exchange.clone(),
                self.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await;
        let confirmed = match confirm {
            Ok(confirm) => confirm.await,
            Err(err) => Err(err),
        };
        match confirmed {
            Ok(Confirmation::Ack(None)) => Settled::Ack,
            Ok(Confirmation::Ack(Some(_))) => Settled::Returned,
            Ok(Confirmation::Nack(_)) => Settled::Nack,
            Ok(Confirmation::NotRequested) => {
                Settled::Lost("the channel is not in confirm mode".into())
            }
            Err(err) => {
                self.down.cancel();
                Settled::Lost(err.to_string().into())
            }
        }
    }

    /// Waits for a turn in a full window, unless the broker blocks
    /// publishing meanwhile: then the publish is refused at once, as one
    /// arriving now would be.
    async fn wait_for_turn(&self) -> Result<SemaphorePermit<'_>, Settled> {
        let blocking = self.blocking.notified();
        tokio::pin!(blocking);
        // Registered before looking, so a block arriving in between still wakes it.
        blocking.as_mut().enable();
        if self.connection.status().blocked() {
            return Err(Settled::Blocked);
        }
        tokio::select! {
            turn = self.window.acquire() => Ok(turn.expect("the window is never closed")),
            () = blocking => Err(Settled::Blocked),
        }
    }

    /// Closes the connection: publishes still awaiting a confirm settle as lost.
    pub fn close(&self) {
        self.down.cancel();
        // Dropped outside a runtime (a process ending), the socket closes with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let connection = self.connection.clone();
        runtime.spawn(async move {
            if let Err(err) = connection.close(200, "closed by svc".into()).await {
                tracing::debug!(error = %err, "closing the publishing connection");
            }
        });
    }
}

impl Drop for ConfirmLink {
    fn drop(&mut self) {
        if self.connection.status().connected() {
            self.close();
        }
    }
}

/// Follows the connection's events until `down`: wakes the publishes
/// waiting for a turn when the broker blocks publishing, and marks the link
/// down on a connection error (a missed heartbeat, a socket error, a close
/// from the broker).
async fn watch(
    events: impl Stream<Item = Event> + Send,
    blocking: Arc<Notify>,
    down: CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            () = down.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Event::ConnectionBlocked(reason)) => {
                tracing::warn!(%reason, "the broker blocks publishing");
                blocking.notify_waiters();
            }
            Some(Event::ConnectionUnblocked) => {
                tracing::info!("the broker takes publishes again");
            }
            Some(Event::Error(err)) => {
                tracing::warn!(error = %err, "the publishing connection failed");
                down.cancel();
                return;
            }
            Some(_) => {}
            None => return,
        }
    }
}
