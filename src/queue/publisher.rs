//! [`Publisher`] on RabbitMQ: one connection, a small pool of long-lived
//! channels in confirm mode, each carrying many unconfirmed messages at once.
//!
//! A request never opens a channel. When the connection is lost, publishes
//! fail at once (the API answers 503) while one background task reconnects
//! with backoff and re-declares the topology. A publish whose connection is
//! lost between the publish and its confirm is sent once more, with the same
//! id, on the new connection if it comes up in time.

use std::{
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;

use super::{
    PublishError, Publisher, Topology, connection_name,
    link::{ConfirmLink, LinkError, LinkSettings, Settled},
};
use crate::{
    backoff::Backoff, config::SecretUrl, domain::DataMessage, metrics::Metrics,
    telemetry::error_chain, tls::TlsSettings,
};

#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub url: SecretUrl,
    pub tls: TlsSettings,
    pub topology: Topology,
    pub channels: u32,
    /// Most publishes awaiting a confirm at once; more wait their turn.
    pub window: u32,
    pub confirm_timeout: Duration,
}

/// How long a publish whose link was lost waits for the replacement link
/// before giving up (the publish timeout bounds it too).
const RELINK_WAIT: Duration = Duration::from_millis(500);

pub struct RabbitPublisher {
    settings: PublisherSettings,
    link: RwLock<Option<Arc<ConfirmLink>>>,
    reconnecting: AtomicBool,
    metrics: Metrics,
    this: Weak<Self>,
}

impl RabbitPublisher {
    /// Creates the publisher and connects in the background; until the
    /// broker answers, publishes fail fast with [`PublishError::Unavailable`].
    pub fn start(settings: PublisherSettings, metrics: Metrics) -> Arc<Self> {
        let publisher = Arc::new_cyclic(|this| Self {
            settings,
            link: RwLock::new(None),
            reconnecting: AtomicBool::new(false),
            metrics,
            this: this.clone(),
        });
        publisher.reconnect();
        publisher.watch();
        publisher
    }

    fn current(&self) -> Option<Arc<ConfirmLink>> {
        let link = self.link.read().expect("lock is never poisoned").clone()?;
        link.is_up().then_some(link)
    }

    /// Starts the reconnect task unless one is already running.
    fn reconnect(&self) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(this) = self.this.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                // Writes that lost the old link all ask for a new one; once
                // one is up, replacing it would lose the writes it carries.
                if this.current().is_some() {
                    break;
                }
                match this.open_link().await {
                    Ok(link) => {
                        let old = this
                            .link
                            .write()
                            .expect("lock is never poisoned")
                            .replace(Arc::new(link));
                        if let Some(old) = old {
                            old.close();
                        }
                        tracing::info!(url = %this.settings.url, "publisher connected to the broker");
                        break;
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            url = %this.settings.url,
                            error = %error_chain(&err),
                            retry_in_ms = delay.as_millis() as u64,
                            "publisher cannot reach the broker"
                        );
                        tokio::time::sleep(delay).await;
                    }
                }
                if Arc::strong_count(&this) == 1 {
                    break; // the publisher was dropped
                }
            }
            this.reconnecting.store(false, Ordering::Release);
        });
    }

    /// Notices a dead connection even while no request is publishing, so
    /// readiness turns red and recovery starts without waiting for traffic.
    fn watch(&self) {
        let this = self.this.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(publisher) = this.upgrade() else {
                    return;
                };
                if publisher.current().is_none() {
                    publisher.reconnect();
                }
            }
        });
    }

    /// Opens the publishing link, which declares the topology first.
    async fn open_link(&self) -> Result<ConfirmLink, LinkError> {
        let settings = LinkSettings {
            name: connection_name("serve"),
            channels: u16::try_from(self.settings.channels).unwrap_or(u16::MAX),
            topology: self.settings.topology.clone(),
            window: self.settings.window as usize,
        };
        ConfirmLink::open(self.settings.url.expose(), &self.settings.tls, &settings).await
    }

    async fn publish_on(
        &self,
        link: &ConfirmLink,
        message: &DataMessage,
    ) -> Result<(), PublishError> {
        match link.publish(message.id, &message.encode()).await {
            Settled::Ack => Ok(()),
            Settled::Nack => Err(PublishError::Nacked),
            Settled::Returned => Err(PublishError::Returned),
            Settled::Blocked => Err(PublishError::Blocked),
            Settled::Lost(reason) => Err(PublishError::Lost(reason)),
        }
    }

    /// Publishes on the next channel of the current link. If that link is lost
    /// before the confirm arrives, the broker may or may not have stored the
    /// message, so it is published once more, with the same id, on the link
    /// that replaces it: a duplicate is harmless (the consumer's insert keeps
    /// one row per id), a silent loss is not. The caller bounds the whole.
    async fn publish_with_one_retry(&self, message: &DataMessage) -> Result<(), PublishError> {
        let Some(link) = self.current() else {
            self.reconnect();
            return Err(PublishError::Unavailable);
        };
        let lost = match self.publish_on(&link, message).await {
            Err(PublishError::Lost(reason)) => reason,
            settled => return settled,
        };
        self.reconnect();
        tracing::info!(
            id = %message.id,
            error = %lost,
            "broker connection lost before the confirm; publishing the same id again"
        );
        self.metrics.publish_retried();
        let Some(fresh) = self.replacement_for(&link, RELINK_WAIT).await else {
            return Err(PublishError::Lost(lost));
        };
        self.publish_on(&fresh, message).await
    }

    /// Waits, at most `within`, for a live link other than `old`.
    async fn replacement_for(
        &self,
        old: &Arc<ConfirmLink>,
        within: Duration,
    ) -> Option<Arc<ConfirmLink>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(link) = self.current().filter(|link| !Arc::ptr_eq(link, old)) {
                return Some(link);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl Publisher for RabbitPublisher {
    async fn publish(&self, message: &DataMessage) -> Result<(), PublishError> {
        let started = Instant::now();
        let timeout = self.settings.confirm_timeout;
        let result = tokio::time::timeout(timeout, self.publish_with_one_retry(message))
            .await
            .unwrap_or(Err(PublishError::Timeout(timeout)));
        match &result {
            Ok(()) => self.metrics.publish_confirmed(started.elapsed()),
            Err(err) => {
                self.metrics.publish_failed(err.reason());
                if matches!(err, PublishError::Lost(_)) {
                    // A channel error closes the channel: start over on a fresh link.
                    self.reconnect();
                }
            }
        }
        result
    }

    fn is_connected(&self) -> bool {
        self.current().is_some()
    }
}
