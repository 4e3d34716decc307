//! The connection and its reconnects: [`Broker`] owns one connection and its confirm-mode
//! publishing channels, reconnects on the next use after the broker went away (behind a jittered,
//! growing backoff that every caller shares: the gate), and probes the broker's address with a plain
//! TCP connect before asking lapin while it is failing.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::config::Settings;

use super::topology::declare_base;
use super::{amqp_uri, AmqpError, Names};

pub(super) struct Live {
    pub(super) conn: Connection,
    /// Confirm-mode channels, used in turn.
    pub(super) publishers: Vec<Channel>,
}

/// Publishing channels of a service ([`Broker::connect_service`]). RabbitMQ routes and confirms each
/// channel's publishes in one Erlang process, so with a single channel a taskmanager casting to
/// thousands of guests keeps that work on one broker core; several spread it (BENCHMARKS.md). A guest
/// publishes a few messages a minute and keeps one ([`Broker::connect`]).
pub const SERVICE_PUBLISHER_CHANNELS: usize = 4;

/// A new channel of `conn` in confirm mode.
pub(super) async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// One connection to RabbitMQ shared by a process, re-established on demand.
pub struct Broker {
    pub(super) uri: String,
    pub(super) names: Names,
    pub(super) publish_timeout: Duration,
    pub(super) reconnect_delay: Duration,
    /// The `[amqp]` reconnect options, for each consumer's own backoff.
    pub(super) amqp: crate::config::AmqpSection,
    pub(super) live: Mutex<Option<Live>>,
    /// When the last attempt to connect failed: the backoff, and the earliest moment for the next.
    /// Guarded with `live` (only taken while `live` is held).
    pub(super) gate: std::sync::Mutex<Gate>,
    /// How many publishing channels, and which one the next publish takes.
    pub(super) publisher_channels: usize,
    pub(super) next_publisher: std::sync::atomic::AtomicUsize,
    /// Whether each new connection declares the control exchange and the dead-letter exchange and
    /// queue. The services do; a guest does not ([`Broker::connect_guest`]).
    pub(super) declares_base: bool,
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
    /// ([`super::permissions::GuestPermissions`]); it declares only its own queue.
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
    pub(super) async fn publisher(&self) -> Result<Channel, AmqpError> {
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
    pub(super) async fn probe(&self) -> Result<(), AmqpError> {
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
    pub(super) async fn open(&self, turn: usize) -> Result<(Live, Channel), AmqpError> {
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

    /// Closes the connection (graceful shutdown).
    pub async fn close(&self) {
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.conn.close(200, "shutdown".into()).await;
        }
    }
}

/// A connection error that never reached lapin (the broker's address refused it, or the backoff
/// said not yet).
pub(super) fn unreachable(why: String) -> AmqpError {
    AmqpError::Lapin(lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why),
    ))))
}

/// The reconnect gate: after a failed attempt, the next waits for a jittered, growing delay, however
/// many callers ask for the connection meanwhile (they queue on `live` and share the attempt).
#[derive(Debug)]
pub(super) struct Gate {
    backoff: Backoff,
    not_before: Option<tokio::time::Instant>,
}

impl Gate {
    pub(super) fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            not_before: None,
        }
    }

    /// How long to wait before attempting now.
    pub(super) fn wait(&self) -> Duration {
        self.not_before
            .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or_default()
    }

    /// An attempt failed: the next one waits. Returns the wait.
    pub(super) fn failed(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.not_before = Some(tokio::time::Instant::now() + delay);
        delay
    }

    pub(super) fn opened(&mut self) {
        self.backoff.reset();
        self.not_before = None;
    }
}
