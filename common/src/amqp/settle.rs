//! What happens to a delivery after its handler: ack, requeue after a pause, or reject without
//! requeue so it is dead-lettered ([`Outcome`]); and, for batches, the multiple acks that never cover a
//! delivery still open ([`AckLedger`]).

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use tokio::sync::Mutex;

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

/// Settles a batch's deliveries on `ch`: dead-letters and requeues (after a pause) one by one, and
/// acks through the channel's [`AckLedger`], one `multiple` ack for every run of deliveries ready.
pub(super) async fn settle_batch(
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
pub(super) async fn send_acks(ch: &Channel, ledger: &mut AckLedger) {
    if let Some(upto) = ledger.take_ackable() {
        let res = ch.basic_ack(upto, BasicAckOptions { multiple: true }).await;
        warn_unsettled(res);
    }
}

pub(super) fn warn_unsettled(res: Result<(), lapin::Error>) {
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
}
