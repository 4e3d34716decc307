//! RabbitMQ: connecting, declaring the topology, publishing with confirms, one consume loop, and calls.
//!
//! Services write only handlers; everything about the broker lives here:
//! - [`Broker`] owns one connection and a confirm-mode publishing channel. When the broker goes away it
//!   reconnects on the next use (lapin does not do it by itself), and consumers re-declare their queues.
//! - Every exchange and queue name goes through [`Names`], which puts `[amqp] prefix` in front: tests
//!   get their own topology on a shared broker.
//! - [`Broker::cast`] publishes persistent and `mandatory`, then waits for the confirm. An unroutable
//!   message comes back as `Ack(Some(returned))` and is an error, never silently lost.
//! - [`consume`] runs a handler per delivery with a bounded number in flight and acks only after the
//!   handler returns (so after its database commit). A message that does not decode is rejected without
//!   requeue and lands in the dead-letter queue: it never crashes or hot-loops a consumer.
//! - [`RpcClient`] makes calls: one `reply_<uuid>` queue per process, bound to the control exchange
//!   under its own name, correlation by `_msg_id`, a timeout per call. Servers reply through the control
//!   exchange too ([`Broker::reply`]), never the default exchange: a guest with its own broker user
//!   ([`permissions`]) may then publish replies without being able to publish into any queue by name.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::sync::{oneshot, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::crypto::Keyring;
use crate::rpc::{self, RemoteError, ReplyTo, RpcContext, Security};

pub mod permissions;

/// Errors from the broker layer.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker error: {0}")]
    Lapin(#[from] lapin::Error),
    #[error("message to {0} was not routed to any queue")]
    Unroutable(String),
    #[error("broker refused message to {0}")]
    Nacked(String),
    #[error("timed out waiting for the broker to confirm a message to {0}")]
    ConfirmTimeout(String),
    #[error("timed out waiting for a reply to {method} on {topic}")]
    CallTimeout { topic: String, method: String },
    #[error("{}", .0.message)]
    Remote(RemoteError),
    #[error("undecodable reply: {0}")]
    Decode(#[from] rpc::DecodeError),
    #[error("shutting down")]
    Shutdown,
}

/// Exchange and queue names, all built from the settings and the prefix.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
    queue_expires_ms: u64,
    durable_guest_queues: bool,
    control_exchange: String,
    taskmanager: String,
    conductor: String,
}

impl Names {
    pub fn new(settings: &Settings) -> Self {
        Self {
            prefix: settings.amqp.prefix.clone(),
            queue_expires_ms: settings.amqp.queue_expires_ms,
            durable_guest_queues: settings.amqp.durable_guest_queues,
            control_exchange: settings.default.control_exchange.clone(),
            taskmanager: settings.default.taskmanager_queue.clone(),
            conductor: settings.default.conductor_queue.clone(),
        }
    }

    /// The topic exchange every server binds to.
    pub fn exchange(&self) -> String {
        format!("{}{}", self.prefix, self.control_exchange)
    }

    /// Where undecodable and rejected messages go.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}{}.dlx", self.prefix, self.control_exchange)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}{}.dead-letter", self.prefix, self.control_exchange)
    }

    /// The taskmanager's topic.
    pub fn taskmanager(&self) -> String {
        format!("{}{}", self.prefix, self.taskmanager)
    }

    /// The conductor's topic.
    pub fn conductor(&self) -> String {
        format!("{}{}", self.prefix, self.conductor)
    }

    /// A guest's topic, `guestagent.<instance_id>`.
    pub fn guest(&self, instance_id: &str) -> String {
        format!("{}guestagent.{instance_id}", self.prefix)
    }

    /// The RabbitMQ user of an instance's guest (`guest_broker_credentials = per_instance`),
    /// `guest-<instance_id>`.
    pub fn guest_user(&self, instance_id: &str) -> String {
        format!("{}guest-{instance_id}", self.prefix)
    }

    /// What every caller's reply queue name starts with; [`Names::reply_queue`] adds 32 hex digits.
    pub fn reply_queue_prefix(&self) -> String {
        format!("{}reply_", self.prefix)
    }

    /// A caller's reply queue, `reply_<uuid as 32 hex digits>`, which is also its routing key on the
    /// control exchange.
    pub fn reply_queue(&self, id: Uuid) -> String {
        format!("{}{}", self.reply_queue_prefix(), id.simple())
    }

    /// Whether `topic`'s queue survives a broker restart. The services' queues do: what waits there
    /// was accepted and has no other copy. A guest's does not unless `[amqp] durable_guest_queues`:
    /// its guest declares it again on reconnecting, and what is sent to it has its durable record in
    /// PostgreSQL (the outbox, the build the reconciler re-sends `prepare` for, a reapply job's
    /// items), so a broker restart only has to recover the few service queues, not thousands.
    pub fn durable(&self, topic: &str) -> bool {
        self.durable_guest_queues || !topic.starts_with(&format!("{}guestagent.", self.prefix))
    }

    /// The prefix itself (tests use it to clean up).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The AMQP URI lapin understands, from oslo's `transport_url`.
pub fn amqp_uri(transport_url: &str) -> String {
    let url = transport_url
        .strip_prefix("rabbit://")
        .map(|r| format!("amqp://{r}"))
        .unwrap_or_else(|| transport_url.to_owned());
    // oslo's trailing "/" means the default vhost; lapin would read it as the empty vhost.
    match url.strip_suffix('/') {
        Some(stripped) if !stripped.ends_with('/') && stripped.matches('/').count() == 2 => {
            stripped.to_owned()
        }
        _ => url,
    }
}

struct Live {
    conn: Connection,
    /// Confirm-mode channels, used in turn.
    publishers: Vec<Channel>,
}

/// Publishing channels of a service ([`Broker::connect_service`]). RabbitMQ routes and confirms each
/// channel's publishes in one Erlang process, so with a single channel a taskmanager casting to
/// thousands of guests keeps that work on one broker core; several spread it (BENCHMARKS.md). A guest
/// publishes a few messages a minute and keeps one ([`Broker::connect`]).
pub const SERVICE_PUBLISHER_CHANNELS: usize = 4;

/// A new channel of `conn` in confirm mode.
async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// One connection to RabbitMQ shared by a process, re-established on demand.
pub struct Broker {
    uri: String,
    names: Names,
    publish_timeout: Duration,
    reconnect_delay: Duration,
    /// The `[amqp]` reconnect options, for each consumer's own backoff.
    amqp: crate::config::AmqpSection,
    live: Mutex<Option<Live>>,
    /// When the last attempt to connect failed: the backoff, and the earliest moment for the next.
    /// Guarded with `live` (only taken while `live` is held).
    gate: std::sync::Mutex<Gate>,
    /// How many publishing channels, and which one the next publish takes.
    publisher_channels: usize,
    next_publisher: std::sync::atomic::AtomicUsize,
    /// Whether each new connection declares the control exchange and the dead-letter exchange and
    /// queue. The services do; a guest does not ([`Broker::connect_guest`]).
    declares_base: bool,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects, retrying until `deadline` passes (services start before the broker under systemd).
    /// One publishing channel.
    pub async fn connect(settings: &Settings, deadline: Duration) -> Result<Arc<Self>, AmqpError> {
        Self::connect_with(settings, deadline, 1, true).await
    }

    /// [`Broker::connect`] with [`SERVICE_PUBLISHER_CHANNELS`] publishing channels.
    pub async fn connect_service(
        settings: &Settings,
        deadline: Duration,
    ) -> Result<Arc<Self>, AmqpError> {
        Self::connect_with(settings, deadline, SERVICE_PUBLISHER_CHANNELS, true).await
    }

    /// [`Broker::connect`] for a guest: it never declares the services' topology (the control
    /// exchange, the dead-letter exchange and queue). The services declare those, durable, before any
    /// guest is started, and a guest's own broker user may not configure them
    /// ([`permissions::GuestPermissions`]); it declares only its own queue.
    pub async fn connect_guest(
        settings: &Settings,
        deadline: Duration,
    ) -> Result<Arc<Self>, AmqpError> {
        Self::connect_with(settings, deadline, 1, false).await
    }

    async fn connect_with(
        settings: &Settings,
        deadline: Duration,
        publisher_channels: usize,
        declares_base: bool,
    ) -> Result<Arc<Self>, AmqpError> {
        let broker = Arc::new(Self {
            uri: amqp_uri(&settings.default.transport_url),
            names: Names::new(settings),
            publish_timeout: Duration::from_secs(settings.amqp.publish_timeout),
            reconnect_delay: Duration::from_secs_f64(settings.amqp.reconnect_delay.max(0.05)),
            amqp: settings.amqp.clone(),
            live: Mutex::new(None),
            gate: std::sync::Mutex::new(Gate::new(Backoff::from_settings(&settings.amqp))),
            publisher_channels: publisher_channels.max(1),
            next_publisher: std::sync::atomic::AtomicUsize::new(0),
            declares_base,
        });
        let start = tokio::time::Instant::now();
        loop {
            match broker.publisher().await {
                Ok(_) => return Ok(broker),
                Err(e) if start.elapsed() >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "broker not reachable yet; retrying");
                    let wait = broker.retry_in().max(Duration::from_millis(10));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// How long until the connection's backoff allows the next attempt (zero: now).
    pub fn retry_in(&self) -> Duration {
        self.gate.lock().expect("gate lock").wait()
    }

    /// A backoff for a loop of this process's own (a consumer re-opening its channel), from the
    /// same `[amqp]` options as the connection's.
    pub fn backoff(&self) -> Backoff {
        Backoff::from_settings(&self.amqp)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// A confirm-mode publishing channel (the next in turn), reconnecting when the connection or the
    /// channel died.
    async fn publisher(&self) -> Result<Channel, AmqpError> {
        let turn = self
            .next_publisher
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.publisher_channels;
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_mut() {
            if l.conn.status().connected() {
                if !l.publishers[turn].status().connected() {
                    l.publishers[turn] = confirm_channel(&l.conn).await?;
                }
                return Ok(l.publishers[turn].clone());
            }
        }
        // A dead connection is dropped (and its resources with it) before the next attempt.
        if let Some(old) = live.take() {
            drop(old);
        }
        let (wait, failing) = {
            let gate = self.gate.lock().expect("gate lock");
            (gate.wait(), gate.not_before.is_some())
        };
        // Until the backoff says so, nobody tries: callers fail at once and retry on their own
        // schedule (a consumer's backoff, a reapply's deadline), so a thousand casts waiting for the
        // broker make no attempt of their own.
        if !wait.is_zero() {
            return Err(unreachable(format!(
                "the broker is unreachable; next attempt in {:.1} s",
                wait.as_secs_f64()
            )));
        }
        // lapin keeps about 10 KiB for every connection attempt that fails (amqp-rs/lapin#368), which
        // a guest retrying for hours would pile up. While the broker is away, a bare TCP connection
        // tells whether it is back before lapin is asked.
        let opened = if failing {
            match self.probe().await {
                Ok(()) => self.open(turn).await,
                Err(e) => Err(e),
            }
        } else {
            self.open(turn).await
        };
        match opened {
            Ok((new, publisher)) => {
                self.gate.lock().expect("gate lock").opened();
                *live = Some(new);
                tracing::info!("connected to the broker");
                Ok(publisher)
            }
            Err(e) => {
                let next = self.gate.lock().expect("gate lock").failed();
                tracing::debug!(error = %e, next_attempt_in = ?next, "cannot connect to the broker");
                Err(e)
            }
        }
    }

    /// Whether the broker's address accepts TCP connections (within `publish_timeout`).
    async fn probe(&self) -> Result<(), AmqpError> {
        let uri: lapin::uri::AMQPUri = self
            .uri
            .parse()
            .map_err(|e: String| unreachable(format!("bad transport_url: {e}")))?;
        let addr = (uri.authority.host.clone(), uri.authority.port);
        match tokio::time::timeout(self.publish_timeout, tokio::net::TcpStream::connect(addr)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(format!(
                "{}:{}: {e}",
                uri.authority.host, uri.authority.port
            ))),
            Err(_) => Err(unreachable(format!(
                "{}:{}: no answer within {:?}",
                uri.authority.host, uri.authority.port, self.publish_timeout
            ))),
        }
    }

    /// Opens the connection, its publishing channels and the base topology.
    async fn open(&self, turn: usize) -> Result<(Live, Channel), AmqpError> {
        let conn = Connection::connect(&self.uri, ConnectionProperties::default()).await?;
        let mut publishers = Vec::with_capacity(self.publisher_channels);
        let opened = async {
            for _ in 0..self.publisher_channels {
                publishers.push(confirm_channel(&conn).await?);
            }
            if self.declares_base {
                declare_base(&publishers[0], &self.names).await?;
            }
            Ok::<(), AmqpError>(())
        };
        if let Err(e) = opened.await {
            let _ = conn.close(200, "setup failed".into()).await;
            return Err(e);
        }
        let publisher = publishers[turn].clone();
        Ok((Live { conn, publishers }, publisher))
    }

    /// A fresh channel on the shared connection (consumers each get their own).
    pub async fn channel(&self) -> Result<Channel, AmqpError> {
        self.publisher().await?;
        let live = self.live.lock().await;
        let conn = &live.as_ref().expect("publisher() connected").conn;
        Ok(conn.create_channel().await?)
    }

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

    async fn publish_confirmed(
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
    async fn discard_publisher(&self, ch: &Channel) {
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
    /// routing key (each [`RpcClient`] binds its queue so), not on the default exchange, where a
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
    async fn declare_on_own_channel(&self, topic: &str) -> Result<Channel, AmqpError> {
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

    /// Closes the connection (graceful shutdown).
    pub async fn close(&self) {
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.conn.close(200, "shutdown".into()).await;
        }
    }
}

/// A connection error that never reached lapin (the broker's address refused it, or the backoff
/// said not yet).
fn unreachable(why: String) -> AmqpError {
    AmqpError::Lapin(lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why),
    ))))
}

/// The reconnect gate: after a failed attempt, the next waits for a jittered, growing delay, however
/// many callers ask for the connection meanwhile (they queue on `live` and share the attempt).
#[derive(Debug)]
struct Gate {
    backoff: Backoff,
    not_before: Option<tokio::time::Instant>,
}

impl Gate {
    fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            not_before: None,
        }
    }

    /// How long to wait before attempting now.
    fn wait(&self) -> Duration {
        self.not_before
            .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or_default()
    }

    /// An attempt failed: the next one waits. Returns the wait.
    fn failed(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.not_before = Some(tokio::time::Instant::now() + delay);
        delay
    }

    fn opened(&mut self) {
        self.backoff.reset();
        self.not_before = None;
    }
}

/// `x-expires` for server queues when configured (test brokers), else no arguments.
fn expiry_args(names: &Names) -> FieldTable {
    let mut args = FieldTable::default();
    if names.queue_expires_ms > 0 {
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(names.queue_expires_ms as i64),
        );
    }
    args
}

async fn declare_base(ch: &Channel, names: &Names) -> Result<(), AmqpError> {
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
fn precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406
    )
}

/// Declares and binds `topic`'s queue; `passive` only checks that it exists.
async fn declare_topic_queue(
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

/// What a handler decided about a delivery.
#[derive(Debug)]
pub enum Outcome {
    /// Done (its database work committed): ack.
    Ack,
    /// It will never succeed (undecodable, unknown method): reject without requeue → dead-letter queue.
    DeadLetter(String),
    /// A transient failure (database down): requeue after a pause, so it is not lost and not hot-looped.
    Retry(String),
}

/// Consumes `topic` (declaring and binding it first) until `shutdown`, running `handler` for each delivery
/// with at most `prefetch` in flight. Reconnects and re-declares after broker failures. On shutdown it
/// stops taking deliveries, lets the ones in flight finish and ack, and returns.
pub async fn consume<H, F>(
    broker: Arc<Broker>,
    topic: String,
    prefetch: u16,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), AmqpError>
where
    H: Fn(lapin::message::Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    // Batches of one, `prefetch` of them at once.
    consume_batches(
        broker,
        topic,
        1,
        usize::from(prefetch.max(1)),
        Duration::ZERO,
        move |mut batch: Vec<lapin::message::Delivery>| {
            let one = batch.pop().map(&handler);
            async move {
                match one {
                    Some(outcome) => vec![outcome.await],
                    None => Vec::new(),
                }
            }
        },
        shutdown,
    )
    .await
}

/// A channel consuming `topic` (declared and bound first) with `prefetch` unacked deliveries.
async fn open_consumer(
    broker: &Broker,
    topic: &str,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer), AmqpError> {
    let ch = broker.declare_on_own_channel(topic).await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            topic.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// Acks, dead-letters or (after a pause) requeues one delivery, as its outcome says.
pub async fn settle(acker: &lapin::Acker, outcome: Outcome, reconnect_delay: Duration) {
    let res = match outcome {
        Outcome::Ack => acker.ack(BasicAckOptions::default()).await,
        Outcome::DeadLetter(why) => {
            tracing::error!(reason = %why, "message dead-lettered");
            acker.reject(BasicRejectOptions { requeue: false }).await
        }
        Outcome::Retry(why) => {
            tracing::warn!(reason = %why, "message will be retried");
            tokio::time::sleep(reconnect_delay).await;
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = res {
        // The channel died: the broker redelivers the message to the next consumer.
        tracing::warn!(error = %e, "could not settle a delivery; it will be redelivered");
    }
}

/// [`consume`], but the handler takes the deliveries that are waiting, up to `max_batch` at a time,
/// and returns one outcome per delivery, in order. At most `in_flight` batches run at once, and the
/// channel's prefetch is `in_flight × max_batch`. A lone message is handled at once when nothing
/// else is; while other batches run, a batch waits up to `linger` to fill. For consumers whose work
/// commits once per batch.
pub async fn consume_batches<H, F>(
    broker: Arc<Broker>,
    topic: String,
    max_batch: u16,
    in_flight: usize,
    linger: Duration,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), AmqpError>
where
    H: Fn(Vec<lapin::message::Delivery>) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<Outcome>> + Send + 'static,
{
    use futures_util::FutureExt as _;
    let max_batch = usize::from(max_batch.max(1));
    let in_flight = in_flight.max(1);
    let prefetch = u16::try_from(max_batch * in_flight).unwrap_or(u16::MAX);
    let handler = Arc::new(handler);
    let limit = Arc::new(Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    // Between losing the channel and opening the next: a jittered, growing wait, reset once a
    // channel consumes again. The connection has its own gate (Broker::publisher); this one also
    // spaces out a channel the broker keeps closing while the connection lives.
    let mut backoff = broker.backoff();
    while !shutdown.is_cancelled() {
        let (ch, mut consumer) = match open_consumer(&broker, &topic, prefetch).await {
            Ok(s) => s,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, queue = %topic, retry_in = ?wait, "cannot consume yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        backoff.reset();
        tracing::debug!(queue = %topic, max_batch, "consuming in batches");
        // Delivery tags are per channel: a new channel, a new ledger.
        let ledger = Arc::new(Mutex::new(AckLedger::default()));
        let mut ended = false;
        while !ended {
            // A free slot first, so the deliveries gathered below are not held while none is free.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = limit.clone().acquire_owned() => p.expect("semaphore never closes"),
            };
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            let mut batch = Vec::with_capacity(max_batch);
            ended = !take_delivery(&mut batch, first, &topic);
            // Whatever else is already here, without waiting.
            while !ended && batch.len() < max_batch {
                match consumer.next().now_or_never() {
                    Some(next) => ended = !take_delivery(&mut batch, next, &topic),
                    None => break,
                }
            }
            // While other batches are being handled the work is queueing anyway: wait up to
            // `linger` for this one to fill, so a busy consumer writes fewer, larger batches. An
            // idle one handles a lone message at once.
            let busy = limit.available_permits() + 1 < in_flight;
            if busy && !linger.is_zero() && !ended && batch.len() < max_batch {
                let until = tokio::time::Instant::now() + linger;
                while !ended && batch.len() < max_batch {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until(until) => break,
                        next = consumer.next() => ended = !take_delivery(&mut batch, next, &topic),
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let handler = handler.clone();
            let reconnect_delay = broker.reconnect_delay;
            let tags: Vec<u64> = batch.iter().map(|d| d.delivery_tag).collect();
            ledger.lock().await.delivered(&tags);
            let (ch, ledger) = (ch.clone(), ledger.clone());
            tasks.spawn(async move {
                let mut outcomes = handler(batch).await.into_iter();
                let settled: Vec<(u64, Outcome)> = tags
                    .into_iter()
                    .map(|tag| {
                        // A handler that returned too few outcomes leaves the rest for redelivery.
                        let outcome = outcomes.next().unwrap_or_else(|| {
                            Outcome::Retry("the batch handler gave no outcome".into())
                        });
                        (tag, outcome)
                    })
                    .collect();
                settle_batch(&ch, &ledger, settled, reconnect_delay).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        if shutdown.is_cancelled() {
            // Let deliveries in flight finish and be acked before the channel closes.
            while tasks.join_next().await.is_some() {}
            let _ = ch.close(200, "shutdown".into()).await;
            break;
        }
        // The channel or the connection went away. Everyone consuming noticed in the same moment:
        // spread the way back.
        let wait = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Settles a batch's deliveries on `ch`: dead-letters and requeues (after a pause) one by one, and
/// acks through the channel's [`AckLedger`], one `multiple` ack for every run of deliveries ready.
async fn settle_batch(
    ch: &Channel,
    ledger: &Mutex<AckLedger>,
    settled: Vec<(u64, Outcome)>,
    reconnect_delay: Duration,
) {
    let mut retries = Vec::new();
    {
        // Held while the frames go out, so two batches' multiple acks leave in tag order.
        let mut ledger = ledger.lock().await;
        for (tag, outcome) in settled {
            match outcome {
                Outcome::Ack => ledger.ready(tag),
                Outcome::DeadLetter(why) => {
                    tracing::error!(reason = %why, "message dead-lettered");
                    let res = ch
                        .basic_reject(tag, BasicRejectOptions { requeue: false })
                        .await;
                    warn_unsettled(res);
                    ledger.settled(tag);
                }
                Outcome::Retry(why) => {
                    tracing::warn!(reason = %why, "message will be retried");
                    retries.push(tag);
                }
            }
        }
        send_acks(ch, &mut ledger).await;
    }
    if retries.is_empty() {
        return;
    }
    tokio::time::sleep(reconnect_delay).await;
    let mut ledger = ledger.lock().await;
    for tag in retries {
        let res = ch
            .basic_nack(
                tag,
                BasicNackOptions {
                    requeue: true,
                    multiple: false,
                },
            )
            .await;
        warn_unsettled(res);
        ledger.settled(tag);
    }
    send_acks(ch, &mut ledger).await;
}

/// Sends the one `multiple` ack the ledger allows now, if any.
async fn send_acks(ch: &Channel, ledger: &mut AckLedger) {
    if let Some(upto) = ledger.take_ackable() {
        let res = ch.basic_ack(upto, BasicAckOptions { multiple: true }).await;
        warn_unsettled(res);
    }
}

fn warn_unsettled(res: Result<(), lapin::Error>) {
    if let Err(e) = res {
        // The channel died: the broker redelivers what it had not been told about.
        tracing::warn!(error = %e, "could not settle deliveries; they will be redelivered");
    }
}

/// Which deliveries of one channel one `basic.ack` with `multiple` may cover.
///
/// A multiple ack of tag T settles every unsettled delivery up to T, so T may only go out once every
/// delivery at or below it has been handled and is to be acked; a delivery still being handled, or
/// waiting to be requeued, holds back the acks above it until it is settled on its own.
#[derive(Debug, Default)]
pub struct AckLedger {
    /// Delivered, not yet settled with the broker.
    open: std::collections::BTreeSet<u64>,
    /// Of those, the ones handled and to be acked.
    ready: std::collections::BTreeSet<u64>,
}

impl AckLedger {
    /// Tags taken from the consumer, to be handled.
    pub fn delivered(&mut self, tags: &[u64]) {
        self.open.extend(tags);
    }

    /// `tag` was handled and is to be acked.
    pub fn ready(&mut self, tag: u64) {
        if self.open.contains(&tag) {
            self.ready.insert(tag);
        }
    }

    /// `tag` was settled on its own (rejected or requeued).
    pub fn settled(&mut self, tag: u64) {
        self.open.remove(&tag);
        self.ready.remove(&tag);
    }

    /// The highest tag a multiple ack may cover now (every open tag up to it is ready), forgetting
    /// the tags it covers; None when the lowest open tag is still being handled.
    pub fn take_ackable(&mut self) -> Option<u64> {
        let upto = self
            .open
            .iter()
            .take_while(|t| self.ready.contains(t))
            .last()
            .copied()?;
        self.open = self.open.split_off(&(upto + 1));
        self.ready = self.ready.split_off(&(upto + 1));
        Some(upto)
    }
}

/// Adds a consumer's next item to `batch`; false when the consumer failed or ended.
fn take_delivery(
    batch: &mut Vec<lapin::message::Delivery>,
    next: Option<Result<lapin::message::Delivery, lapin::Error>>,
    topic: &str,
) -> bool {
    match next {
        Some(Ok(d)) => {
            batch.push(d);
            true
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, queue = %topic, "consumer failed; reconnecting");
            false
        }
        None => {
            tracing::warn!(queue = %topic, "consumer ended; reconnecting");
            false
        }
    }
}

/// Calls waiting for their reply, by `_msg_id`; each gets the raw reply body.
type Pending = Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

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

fn peek_msg_id(body: &[u8]) -> Option<String> {
    let outer: Value = serde_json::from_slice(body).ok()?;
    let inner: Value = serde_json::from_str(outer.get("oslo.message")?.as_str()?).ok()?;
    inner.get("_msg_id")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_still_open() {
        let mut l = AckLedger::default();
        l.delivered(&[1, 2, 3]);
        l.delivered(&[4, 5]);
        // The second batch is done first: nothing may go out while 1..3 are being handled.
        l.ready(4);
        l.ready(5);
        assert_eq!(l.take_ackable(), None);
        // 1 and 2 done, 3 to be requeued later: one ack up to 2.
        l.ready(1);
        l.ready(2);
        assert_eq!(l.take_ackable(), Some(2));
        assert_eq!(l.take_ackable(), None);
        // 3 requeued on its own: 4 and 5 go out together.
        l.settled(3);
        assert_eq!(l.take_ackable(), Some(5));
        assert_eq!(l.take_ackable(), None);
        // A tag never delivered (or already covered) is not acked again.
        l.ready(5);
        assert_eq!(l.take_ackable(), None);
        l.delivered(&[6]);
        l.settled(6);
        l.delivered(&[7]);
        l.ready(7);
        assert_eq!(l.take_ackable(), Some(7));
    }

    #[test]
    fn transport_url_becomes_amqp_uri() {
        assert_eq!(
            amqp_uri("rabbit://guest:guest@127.0.0.1:5672/"),
            "amqp://guest:guest@127.0.0.1:5672"
        );
        assert_eq!(amqp_uri("amqp://u:p@h:5672/vh"), "amqp://u:p@h:5672/vh");
        assert_eq!(amqp_uri("rabbit://u:p@h:5672"), "amqp://u:p@h:5672");
    }

    #[test]
    fn names_carry_the_prefix() {
        let mut s = Settings::default();
        s.amqp.prefix = "t1.".into();
        let n = Names::new(&s);
        assert_eq!(n.exchange(), "t1.trove");
        assert_eq!(n.taskmanager(), "t1.taskmanager");
        assert_eq!(n.conductor(), "t1.trove-conductor");
        assert_eq!(n.guest("abc"), "t1.guestagent.abc");
        assert_eq!(n.guest_user("abc"), "t1.guest-abc");
        let id = Uuid::parse_str("0b3c1f4e-8a9d-4c3e-9f0a-1b2c3d4e5f60").unwrap();
        assert_eq!(
            n.reply_queue(id),
            "t1.reply_0b3c1f4e8a9d4c3e9f0a1b2c3d4e5f60"
        );
    }
}
