//! Calls (request and reply): [`RpcClient`], one `reply_<uuid>` queue per process, correlation by
//! `_msg_id`, a timeout per call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio::sync::{oneshot, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{AmqpError, Broker};
use crate::crypto::Keyring;
use crate::rpc::{self, ReplyTo, RpcContext, Security};

/// Calls waiting for their reply, by `_msg_id`; each gets the raw reply body.
pub(super) type Pending = Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// Makes calls (request/reply) to RPC servers such as guests.
pub struct RpcClient {
    broker: Arc<Broker>,
    reply_q: Mutex<Option<(String, CancellationToken)>>,
    pending: Pending,
}

impl RpcClient {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            reply_q: Mutex::new(None),
            pending: Arc::default(),
        }
    }

    /// The reply queue, (re)created when its consumer died with the connection.
    async fn reply_queue(&self) -> Result<String, AmqpError> {
        let mut guard = self.reply_q.lock().await;
        if let Some((q, alive)) = guard.as_ref() {
            if !alive.is_cancelled() {
                return Ok(q.clone());
            }
        }
        let name = self.broker.names.reply_queue(Uuid::new_v4());
        let ch = self.broker.channel().await?;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(name.as_str().into(), opts, FieldTable::default())
            .await?;
        // Replies come through the control exchange (Broker::reply), routed by the queue's name.
        ch.queue_bind(
            name.as_str().into(),
            self.broker.names.exchange().into(),
            name.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let dead = CancellationToken::new();
        let pending = self.pending.clone();
        let dead2 = dead.clone();
        tokio::spawn(async move {
            let _ch = ch;
            let mut consumer = consumer;
            while let Some(Ok(d)) = consumer.next().await {
                // Replies are decoded by the waiting caller, who knows the key.
                if let Some(id) = peek_msg_id(&d.data) {
                    if let Some(tx) = pending.lock().expect("pending map poisoned").remove(&id) {
                        let _ = tx.send(d.data);
                    }
                }
            }
            dead2.cancel();
        });
        *guard = Some((name.clone(), dead));
        Ok(name)
    }

    /// Calls `method` on `topic` and waits up to `timeout` for the reply. `keys` protects the message
    /// (the instance key for guests).
    pub async fn call(
        &self,
        topic: &str,
        method: &str,
        args: serde_json::Map<String, Value>,
        context: &RpcContext,
        keys: Option<&Keyring>,
        timeout: Duration,
    ) -> Result<Value, AmqpError> {
        let reply_q = self.reply_queue().await?;
        let msg_id = Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending map poisoned")
            .insert(msg_id.clone(), tx);
        let security = keys
            .map(|k| Security::Secure(k.clone()))
            .unwrap_or(Security::Plain);
        let reply = ReplyTo {
            msg_id: msg_id.clone(),
            reply_q,
        };
        let body = rpc::encode_request(method, args, context, "1.0", Some(&reply), &security);
        if let Err(e) = self.broker.cast(topic, &body).await {
            self.pending
                .lock()
                .expect("pending map poisoned")
                .remove(&msg_id);
            return Err(e);
        }
        let body = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(body)) => body,
            _ => {
                self.pending
                    .lock()
                    .expect("pending map poisoned")
                    .remove(&msg_id);
                return Err(AmqpError::CallTimeout {
                    topic: topic.into(),
                    method: method.into(),
                });
            }
        };
        let reply = rpc::decode_reply(&body, keys)?;
        reply.result.map_err(AmqpError::Remote)
    }
}

pub(super) fn peek_msg_id(body: &[u8]) -> Option<String> {
    let outer: Value = serde_json::from_slice(body).ok()?;
    let inner: Value = serde_json::from_str(outer.get("oslo.message")?.as_str()?).ok()?;
    inner.get("_msg_id")?.as_str().map(str::to_owned)
}
