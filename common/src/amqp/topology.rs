//! The topology: the control exchange, the dead-letter exchange and queue (where a consumer rejects
//! what will never succeed), and each server's topic queue, durable or not ([`Names::durable`]).

use super::{AmqpError, Broker, Names};
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

impl Broker {
    /// Declares a server's topic queue and binds it: `guestagent.<id>`, `taskmanager`, ...
    /// ([`Names::durable`] says which survive a broker restart). On a channel of its own, so a
    /// declaration the broker refuses never closes a publishing channel.
    pub async fn declare_topic_queue(&self, topic: &str) -> Result<(), AmqpError> {
        let ch = self.declare_on_own_channel(topic).await?;
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }

    /// A new channel on which `topic`'s queue is declared and bound. A queue that exists with the
    /// other durability (declared before an upgrade changed [`Names::durable`]) is used as it is:
    /// RabbitMQ refuses the declaration and closes the channel, so a second channel checks it
    /// passively and binds it.
    pub(super) async fn declare_on_own_channel(&self, topic: &str) -> Result<Channel, AmqpError> {
        let ch = self.channel().await?;
        match declare_topic_queue(&ch, &self.names, topic, false).await {
            Err(AmqpError::Lapin(e)) if precondition_failed(&e) => {
                tracing::warn!(queue = %topic, "queue exists with other arguments; using it as it is");
                let ch = self.channel().await?;
                declare_topic_queue(&ch, &self.names, topic, true).await?;
                Ok(ch)
            }
            Err(e) => {
                let _ = ch.close(200, "declare failed".into()).await;
                Err(e)
            }
            Ok(()) => Ok(ch),
        }
    }

    /// Deletes a queue (a deleted guest's).
    pub async fn delete_queue(&self, queue: &str) -> Result<(), AmqpError> {
        let ch = self.channel().await?;
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        let _ = ch.close(200, "bye".into()).await;
        Ok(())
    }
}

/// `x-expires` for server queues when configured (test brokers), else no arguments.
pub(super) fn expiry_args(names: &Names) -> FieldTable {
    let mut args = FieldTable::default();
    if names.queue_expires_ms > 0 {
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(names.queue_expires_ms as i64),
        );
    }
    args
}

pub(super) async fn declare_base(ch: &Channel, names: &Names) -> Result<(), AmqpError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        names.exchange().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        names.dead_letter_exchange().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    let q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(names.dead_letter_queue().into(), q, expiry_args(names))
        .await?;
    ch.queue_bind(
        names.dead_letter_queue().into(),
        names.dead_letter_exchange().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// RabbitMQ's 406 PRECONDITION_FAILED (a queue redeclared with other properties).
pub(super) fn precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406
    )
}

/// Declares and binds `topic`'s queue; `passive` only checks that it exists.
pub(super) async fn declare_topic_queue(
    ch: &Channel,
    names: &Names,
    topic: &str,
    passive: bool,
) -> Result<(), AmqpError> {
    let mut args = expiry_args(names);
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.dead_letter_exchange().into()),
    );
    let q = QueueDeclareOptions {
        durable: names.durable(topic),
        passive,
        ..Default::default()
    };
    ch.queue_declare(topic.into(), q, args).await?;
    ch.queue_bind(
        topic.into(),
        names.exchange().into(),
        topic.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}
