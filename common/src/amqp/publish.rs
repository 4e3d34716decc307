//! Publishing with confirms: casts (persistent or transient, always `mandatory`, each waiting for the
//! broker's confirm; an unroutable message is an error) and replies to calls.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};

use super::connection::confirm_channel;
use super::{AmqpError, Broker};

impl Broker {
    /// Publishes a persistent, mandatory message to the control exchange with `topic` as routing key,
    /// and waits for the broker's confirm. Retries once on a dead connection.
    pub async fn cast(&self, topic: &str, body: &[u8]) -> Result<(), AmqpError> {
        self.cast_with(topic, body, true).await
    }

    /// [`Broker::cast`], persistent or transient (delivery mode 1: still mandatory and confirmed, so
    /// an unroutable message is an error, but a broker restart drops it from its queue).
    pub async fn cast_with(
        &self,
        topic: &str,
        body: &[u8],
        persistent: bool,
    ) -> Result<(), AmqpError> {
        let exchange = self.names.exchange();
        match self
            .publish_confirmed(&exchange, topic, body, persistent)
            .await
        {
            Err(AmqpError::Lapin(e)) => {
                tracing::warn!(error = %e, topic, "publish failed; reconnecting once");
                self.publish_confirmed(&exchange, topic, body, persistent)
                    .await
            }
            other => other,
        }
    }

    pub(super) async fn publish_confirmed(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        persistent: bool,
    ) -> Result<(), AmqpError> {
        let ch = self.publisher().await?;
        let mut props =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        if persistent {
            props = props.with_delivery_mode(2);
        }
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = match ch
            .basic_publish(exchange.into(), key.into(), opts, body, props)
            .await
        {
            Ok(confirm) => confirm,
            Err(e) => {
                self.discard_publisher(&ch).await;
                return Err(e.into());
            }
        };
        match tokio::time::timeout(self.publish_timeout, confirm).await {
            Err(_) => Err(AmqpError::ConfirmTimeout(key.to_owned())),
            Ok(Err(e)) => {
                self.discard_publisher(&ch).await;
                Err(e.into())
            }
            Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(AmqpError::Unroutable(key.to_owned())),
            Ok(Ok(Confirmation::Nack(_))) => Err(AmqpError::Nacked(key.to_owned())),
        }
    }

    /// A publish on `ch` failed: replace that publishing channel now, whatever state lapin shows for
    /// it yet, so one channel the broker closed (a channel error on one message) never fails the
    /// publishes that come after it. The connection is checked on the next use as usual.
    pub(super) async fn discard_publisher(&self, ch: &Channel) {
        let mut live = self.live.lock().await;
        let Some(l) = live.as_mut() else { return };
        if !l.conn.status().connected() {
            return;
        }
        if let Some(slot) = l.publishers.iter_mut().find(|p| p.id() == ch.id()) {
            match confirm_channel(&l.conn).await {
                Ok(fresh) => {
                    let _ = slot.close(200, "replaced".into()).await;
                    *slot = fresh;
                }
                Err(e) => tracing::warn!(error = %e, "cannot replace a failed publishing channel"),
            }
        }
    }

    /// Publishes a reply to a call's reply queue: on the control exchange with the queue's name as
    /// routing key (each [`super::RpcClient`] binds its queue so), not on the default exchange, where a
    /// guest allowed to reply could publish into any queue by name. A caller that has gone away is not
    /// an error worth more than a log line.
    pub async fn reply(&self, reply_q: &str, body: &[u8]) -> Result<(), AmqpError> {
        let exchange = self.names.exchange();
        match self
            .publish_confirmed(&exchange, reply_q, body, false)
            .await
        {
            Err(AmqpError::Unroutable(q)) => {
                tracing::warn!(reply_q = %q, "caller's reply queue is gone; reply dropped");
                Ok(())
            }
            other => other,
        }
    }
}
