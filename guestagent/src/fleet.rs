//! Many guest agents in one process, for benchmarks and load tests (`trove-bench reapply --mode
//! fleet`).
//!
//! Each guest is a full [`Agent`]: its own `guestagent.<id>` queue, its own state directory, its own
//! instance key, its own heartbeats, and the same [`dispatch::handle_message`] a guest process runs.
//! What the guests share is the plumbing: a few broker connections (round robin) and, on each
//! connection, a few channels that each carry the consumers of many guest queues. RabbitMQ allows
//! 2,047 channels per connection by default, and a channel per queue would cost the broker a process
//! per guest, so one channel consumes up to [`FleetOptions::queues_per_channel`] queues. `basic_qos`
//! is per consumer, so every guest still holds at most `[amqp] prefetch` unacked deliveries.
//!
//! The acknowledgement rules are [`trove_common::amqp::consume`]'s: ack after the handler returns,
//! dead-letter what will never succeed, requeue (after `reconnect_delay`) what may. Unlike a guest
//! process, the fleet does not reconnect: a broker failure ends the run with an error, which is what a
//! benchmark wants to know. [`crate::run`], the single guest, is untouched by any of this.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt as _, TryStreamExt as _};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use secrecy::SecretString;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{self, AmqpError, Broker};
use trove_common::config::Settings;
use trove_common::epoch_now;

use crate::agent::{self, Agent, Transport};
use crate::dispatch;

/// One guest of the fleet: what a guest process reads from `[guest]`.
#[derive(Clone)]
pub struct FleetGuest {
    /// The instance id (`[guest] guest_id`).
    pub guest_id: String,
    /// Its own state directory (`[guest] state_dir`).
    pub state_dir: PathBuf,
    /// Its instance RPC key (`[guest] instance_rpc_encr_key`); None: plain messages.
    pub instance_rpc_encr_key: Option<SecretString>,
}

impl std::fmt::Debug for FleetGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("FleetGuest")
            .field("guest_id", &self.guest_id)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// How the guests share the broker.
#[derive(Clone, Copy, Debug)]
pub struct FleetOptions {
    /// Broker connections, shared round robin (each has one confirm-mode publishing channel).
    pub connections: usize,
    /// Guest queues consumed on one AMQP channel.
    pub queues_per_channel: usize,
    /// Guests being started (state read, queue declared, consumer registered) at the same time.
    pub start_concurrency: usize,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            queues_per_channel: 250,
            start_concurrency: 64,
        }
    }
}

/// Counters a benchmark reads while the fleet runs.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Guests consuming their queue and heartbeating.
    pub guests_ready: AtomicUsize,
    /// Deliveries taken from the guest queues.
    pub deliveries: AtomicU64,
    /// Casts to the conductor the broker confirmed (heartbeats and module results).
    pub casts: AtomicU64,
    /// Casts that failed (not confirmed, unroutable, refused).
    pub cast_failures: AtomicU64,
    /// Replies to calls the guests published.
    pub replies: AtomicU64,
    /// When each guest was ready (epoch seconds), in start order.
    pub started: Mutex<Vec<(String, f64)>>,
}

/// A [`Transport`] over one shared connection that counts what the guests send.
struct CountingTransport {
    broker: Arc<Broker>,
    stats: Arc<FleetStats>,
}

impl Transport for CountingTransport {
    fn cast<'a>(&'a self, topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), AmqpError>> {
        Box::pin(async move {
            let res = self.broker.cast(topic, body).await;
            let counter = match res {
                Ok(()) => &self.stats.casts,
                Err(_) => &self.stats.cast_failures,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            res
        })
    }

    fn reply<'a>(
        &'a self,
        reply_q: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), AmqpError>> {
        Box::pin(async move {
            let res = self.broker.reply(reply_q, body).await;
            if res.is_ok() {
                self.stats.replies.fetch_add(1, Ordering::Relaxed);
            }
            res
        })
    }
}

/// Runs `guests` in this process until `shutdown` is cancelled (see the module docs).
///
/// `settings` is the configuration every guest shares (`[DEFAULT]`, `[amqp]`, `[guest]
/// datastore_manager`); each guest's id, state directory and key come from its [`FleetGuest`].
/// `ready` is called once every guest consumes its queue. On the way out every guest stops
/// consuming, finishes and acks its deliveries in flight, and the connections close.
pub async fn run_fleet(
    settings: Settings,
    guests: Vec<FleetGuest>,
    options: FleetOptions,
    stats: Arc<FleetStats>,
    ready: impl FnOnce() + Send,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!guests.is_empty(), "a fleet needs at least one guest");
    let connections = options.connections.clamp(1, guests.len());
    let per_channel = options.queues_per_channel.max(1);
    let deadline = Duration::from_secs(settings.default.usage_timeout);
    let mut brokers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let broker = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            b = Broker::connect(&settings, deadline) => b.context("connecting to the broker")?,
        };
        brokers.push(broker);
    }
    let served = serve_fleet(
        &settings,
        guests,
        &brokers,
        per_channel,
        options.start_concurrency.max(1),
        stats,
        ready,
        &shutdown,
    )
    .await;
    for broker in &brokers {
        broker.close().await;
    }
    served
}

/// Guest `i`'s place: its connection and its consuming channel on that connection.
fn placement(i: usize, connections: usize, per_channel: usize) -> (usize, usize) {
    (i % connections, (i / connections) / per_channel)
}

#[expect(clippy::too_many_arguments, reason = "the private body of run_fleet")]
async fn serve_fleet(
    settings: &Settings,
    guests: Vec<FleetGuest>,
    brokers: &[Arc<Broker>],
    per_channel: usize,
    start_concurrency: usize,
    stats: Arc<FleetStats>,
    ready: impl FnOnce() + Send,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let prefetch = settings.amqp.prefetch.max(1);
    // The consuming channels, created up front: [connection][channel].
    let mut channels: Vec<Vec<Channel>> = vec![Vec::new(); brokers.len()];
    for (i, _) in guests.iter().enumerate() {
        let (c, ch) = placement(i, brokers.len(), per_channel);
        if channels[c].len() <= ch {
            let channel = brokers[c].channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            channels[c].push(channel);
        }
    }
    let transports: Vec<Arc<dyn Transport>> = brokers
        .iter()
        .map(|b| {
            Arc::new(CountingTransport {
                broker: b.clone(),
                stats: stats.clone(),
            }) as Arc<dyn Transport>
        })
        .collect();
    let interval = crate::heartbeat_interval(settings.default.report_interval);
    // As the broker layer waits before requeueing a failed delivery.
    let retry_delay = Duration::from_secs_f64(settings.amqp.reconnect_delay.max(0.05));
    let stop = shutdown.child_token();
    let mut running = tokio::task::JoinSet::new();

    let starts = futures_util::stream::iter(guests.into_iter().enumerate().map(|(i, guest)| {
        let (c, ch) = placement(i, brokers.len(), per_channel);
        let broker = brokers[c].clone();
        let channel = channels[c][ch].clone();
        let transport = transports[c].clone();
        let stop = stop.clone();
        let mut own = settings.clone();
        async move {
            own.guest.guest_id = guest.guest_id;
            own.guest.state_dir = guest.state_dir;
            own.guest.instance_rpc_encr_key = guest.instance_rpc_encr_key;
            let guest_stop = stop.child_token();
            let agent =
                tokio::task::spawn_blocking(move || Agent::new(&own, transport, guest_stop))
                    .await
                    .context("the agent set-up task failed")??;
            let agent = Arc::new(agent);
            broker
                .declare_topic_queue(&agent.topic)
                .await
                .with_context(|| format!("declaring queue {}", agent.topic))?;
            let consumer = channel
                .basic_consume(
                    agent.topic.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming queue {}", agent.topic))?;
            Ok::<_, anyhow::Error>((agent, consumer))
        }
    }))
    .buffer_unordered(start_concurrency);
    let mut starts = std::pin::pin!(starts);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => None,
            next = starts.try_next() => next?,
        };
        let Some((agent, consumer)) = next else {
            break;
        };
        let guest_stop = agent.stop_token().clone();
        running.spawn(agent::run_heartbeats(
            agent.clone(),
            interval,
            guest_stop.clone(),
        ));
        running.spawn(serve_queue(
            agent.clone(),
            consumer,
            prefetch,
            retry_delay,
            stats.clone(),
            guest_stop,
        ));
        stats.guests_ready.fetch_add(1, Ordering::Relaxed);
        stats
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((agent.instance_id.clone(), epoch_now()));
    }
    if !shutdown.is_cancelled() {
        tracing::info!(
            guests = stats.guests_ready.load(Ordering::Relaxed),
            connections = brokers.len(),
            channels = channels.iter().map(Vec::len).sum::<usize>(),
            "guest fleet ready"
        );
        ready();
        shutdown.cancelled().await;
    }
    stop.cancel();
    while running.join_next().await.is_some() {}
    for channel in channels.iter().flatten() {
        let _ = channel.close(200, "shutdown".into()).await;
    }
    tracing::info!("guest fleet stopped");
    Ok(())
}

/// One guest's consumer: a handler task per delivery, at most `prefetch` at once, acked after the
/// handler returns (the rules of [`trove_common::amqp::consume`]).
async fn serve_queue(
    agent: Arc<Agent>,
    mut consumer: lapin::Consumer,
    prefetch: u16,
    retry_delay: Duration,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(usize::from(prefetch)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::error!(error = %e, queue = %agent.topic, "fleet consumer failed");
                break;
            }
            None => {
                tracing::error!(queue = %agent.topic, "fleet consumer ended");
                break;
            }
        };
        stats.deliveries.fetch_add(1, Ordering::Relaxed);
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closes");
        let agent = agent.clone();
        tasks.spawn(async move {
            let acker = delivery.acker.clone();
            let outcome = dispatch::handle_message(agent, &delivery.data).await;
            amqp::settle(&acker, outcome, retry_delay).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Stop taking deliveries, let the ones in flight finish and be acked.
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::placement;

    #[test]
    fn guests_spread_over_connections_then_fill_channels() {
        // Two connections, three queues per channel.
        let places: Vec<_> = (0..8).map(|i| placement(i, 2, 3)).collect();
        assert_eq!(
            places,
            [
                (0, 0),
                (1, 0),
                (0, 0),
                (1, 0),
                (0, 0),
                (1, 0),
                (0, 1),
                (1, 1)
            ]
        );
    }
}
