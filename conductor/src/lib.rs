#![doc = include_str!("../README.md")]

pub mod batch;
pub mod dispatch;
pub mod handlers;
pub mod sweep;

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{self, Broker};
use trove_common::config::Settings;
use trove_common::db::Db;

pub use dispatch::Dispatcher;

/// Serves the conductor queue and runs the heartbeat sweep until `shutdown` is cancelled.
///
/// Declares and consumes `broker.names().conductor()`: the deliveries waiting, up to
/// `[amqp] conductor_batch_size` at a time, are applied together ([`batch::apply_batch`]) and acked
/// only after their work commits; up to `[amqp] conductor_batches_in_flight` batches are in flight,
/// and while others are, a batch waits up to `conductor_batch_linger_ms` to fill. Beside it,
/// [`sweep::run`] marks guests whose heartbeats stopped SHUTDOWN every `agent_heartbeat_time`
/// seconds. On cancel it stops taking deliveries, lets the ones in flight finish and be acked,
/// closes its channel, stops the sweep and returns. The broker connection belongs to the caller,
/// who closes it.
pub async fn run(
    settings: Arc<Settings>,
    db: Db,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let queue = broker.names().conductor();
    let batch = settings.amqp.conductor_batch_size.max(1);
    let in_flight = usize::from(settings.amqp.conductor_batches_in_flight.max(1));
    let linger = std::time::Duration::from_millis(settings.amqp.conductor_batch_linger_ms);
    let dispatcher = Arc::new(Dispatcher::new(settings.clone(), db.clone()));
    tracing::info!(queue = %queue, batch, "conductor consuming");
    // The sweep also stops if consuming ever ends on its own, so `run` never returns half-running.
    let sweep_stop = shutdown.child_token();
    let consuming = async {
        let consumed = amqp::consume_batches(
            broker,
            queue.clone(),
            batch,
            in_flight,
            linger,
            move |deliveries| {
                let dispatcher = dispatcher.clone();
                async move {
                    let bodies: Vec<&[u8]> = deliveries.iter().map(|d| d.data.as_slice()).collect();
                    dispatcher.dispatch_batch(&bodies).await
                }
            },
            shutdown,
        )
        .await;
        sweep_stop.cancel();
        consumed
    };
    let (consumed, ()) = tokio::join!(consuming, sweep::run(settings, db, sweep_stop.clone()));
    consumed.with_context(|| format!("consuming queue {queue}"))?;
    tracing::info!("conductor stopped");
    Ok(())
}
