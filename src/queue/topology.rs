//! The RabbitMQ layout, declared idempotently by `migrate`, `serve` and
//! `consume`:
//!
//! ```text
//! <p>.data (direct) ──<p>.data.ingest──▶ <p>.data.ingest (quorum, delivery limit)
//!                                              │ rejected / over the limit
//!                                              ▼
//! <p>.data.dlx (direct) ──<p>.data.dead──▶ <p>.data.dead (quorum)
//! ```

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Deliveries of a message before the broker dead-letters it.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: &str, delivery_limit: u32) -> Self {
        Self {
            exchange: format!("{prefix}.data"),
            queue: format!("{prefix}.data.ingest"),
            dead_letter_exchange: format!("{prefix}.data.dlx"),
            dead_letter_queue: format!("{prefix}.data.dead"),
            delivery_limit,
        }
    }

    /// Routing key of accepted writes: the ingest queue's name.
    pub fn routing_key(&self) -> &str {
        &self.queue
    }

    /// Declares everything; safe to repeat, and safe from many processes at once.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable_queue,
                quorum_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                self.dead_letter_queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable_queue,
                self.ingest_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                self.routing_key().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    fn ingest_arguments(&self) -> FieldTable {
        let mut arguments = quorum_arguments();
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_letter_queue.as_str().into()),
        );
        arguments
    }
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_layout() {
        let topology = Topology::new("svc", 5);
        assert_eq!(topology.exchange, "svc.data");
        assert_eq!(topology.queue, "svc.data.ingest");
        assert_eq!(topology.dead_letter_exchange, "svc.data.dlx");
        assert_eq!(topology.dead_letter_queue, "svc.data.dead");
    }
}
