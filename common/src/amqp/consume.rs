//! Consuming: one delivery at a time ([`consume`]) or in batches ([`consume_batches`]), a bounded
//! number in flight, acked only after the handler returns (so after its database commit), the channel
//! re-opened with its own backoff when it dies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use super::settle::settle_batch;
use super::{AckLedger, AmqpError, Broker, Outcome};

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
pub(super) async fn open_consumer(
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

/// Adds a consumer's next item to `batch`; false when the consumer failed or ended.
pub(super) fn take_delivery(
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
