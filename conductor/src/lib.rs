#![doc = include_str!("../README.md")]

pub mod dispatch;
pub mod handlers;

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{self, Broker};
use trove_common::config::Settings;
use trove_common::db::Db;

pub use dispatch::Dispatcher;

/// Serves the conductor queue until `shutdown` is cancelled.
///
/// Declares and consumes `broker.names().conductor()` with at most `[amqp] prefetch` messages in
/// flight, each acked only after its transaction commits. On cancel it stops taking deliveries, lets
/// the ones in flight finish and be acked, closes its channel and returns. The broker connection
/// belongs to the caller, who closes it.
pub async fn run(
    settings: Arc<Settings>,
    db: Db,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let queue = broker.names().conductor();
    let prefetch = settings.amqp.prefetch.max(1);
    let dispatcher = Arc::new(Dispatcher::new(settings, db));
    tracing::info!(queue = %queue, prefetch, "conductor consuming");
    amqp::consume(
        broker,
        queue.clone(),
        prefetch,
        move |delivery| {
            let dispatcher = dispatcher.clone();
            async move { dispatcher.dispatch(&delivery.data).await }
        },
        shutdown,
    )
    .await
    .with_context(|| format!("consuming queue {queue}"))?;
    tracing::info!("conductor stopped");
    Ok(())
}
