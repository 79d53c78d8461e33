//! How accepted writes travel from `serve` to `consume`: RabbitMQ with
//! publisher confirms. Handlers see only [`Publisher`].

pub mod link;
pub mod publisher;
pub mod topology;

use async_trait::async_trait;

pub use publisher::RabbitPublisher;
pub use topology::Topology;

use crate::{domain::DataMessage, tls::TlsSettings};

/// Why a write could not be handed to the broker. Every variant means the
/// client must not be told 202.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no connection to the broker")]
    Unavailable,
    #[error("the broker did not confirm within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was returned unroutable: no queue is bound")]
    Returned,
    #[error("the broker does not take publishes now (resource alarm)")]
    Blocked,
    #[error("the broker connection was lost before the confirm: {0}")]
    Lost(std::sync::Arc<str>),
}

impl PublishError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Nacked => "nack",
            Self::Returned => "returned",
            Self::Blocked => "blocked",
            Self::Lost(_) => "lost",
        }
    }
}

#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one persistent message and resolves once the broker has
    /// confirmed that it is stored in a queue.
    async fn publish(&self, message: &DataMessage) -> Result<(), PublishError>;

    /// Whether a broker connection is currently up.
    fn is_connected(&self) -> bool;
}

/// How a connection of `role` is named in the broker's management UI.
pub fn connection_name(role: &str) -> String {
    format!("svc {role} (pid {})", std::process::id())
}

/// Opens a broker connection with a recognisable name in the management UI,
/// over TLS when the URL is `amqps://` (trusting `tls` besides the system's
/// roots).
pub async fn connect(url: &str, tls: &TlsSettings, role: &str) -> lapin::Result<lapin::Connection> {
    connect_named(url, tls, connection_name(role)).await
}

pub(crate) async fn connect_named(
    url: &str,
    tls: &TlsSettings,
    name: String,
) -> lapin::Result<lapin::Connection> {
    crate::tls::install_crypto_provider();
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    lapin::Connection::connect_with_config(url, properties, tls.for_lapin(), runtime).await
}

/// Messages ready in `queue` (neither delivered nor awaiting acknowledgement),
/// read with a passive declare. A missing queue closes `channel`.
pub async fn ready_messages(channel: &lapin::Channel, queue: &str) -> lapin::Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}
