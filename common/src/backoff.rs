//! Reconnect delays: exponential, capped, with full jitter.
//!
//! When the broker restarts, every process notices in the same second. Were they all to retry on the
//! same schedule, 10,000 guests would knock together at every step; with full jitter each waits a
//! random time between zero and the current exponential step, so their attempts spread over the whole
//! window and the broker sees a ramp. The exponential steps come from `backon`; the jitter is drawn
//! over the whole step (backon's own jitter only adds up to one more step on top, which keeps every
//! process's first retry at least a full step away and bunched).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The delays before successive attempts; [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    steps: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Steps from `min`, times `factor` each attempt, never above `max`; each delay is drawn from
    /// `0..=step`.
    pub fn new(min: Duration, factor: f32, max: Duration) -> Self {
        let max = max.max(min);
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_factor(factor.max(1.0))
            .with_max_delay(max)
            .without_max_times();
        Self {
            steps: builder.build(),
            builder,
            max,
        }
    }

    /// From the `[amqp]` options: `reconnect_delay`, `reconnect_backoff`, `reconnect_max_delay`
    /// (seconds; oslo.messaging calls them `rabbit_retry_interval`, `rabbit_retry_backoff` and
    /// `rabbit_interval_max`).
    pub fn from_settings(amqp: &crate::config::AmqpSection) -> Self {
        let secs = |v: f64, floor: f64| Duration::from_secs_f64(v.max(floor));
        Self::new(
            secs(amqp.reconnect_delay, 0.05),
            amqp.reconnect_backoff as f32,
            secs(amqp.reconnect_max_delay, 0.05),
        )
    }

    /// The current step (before jitter).
    pub fn next_step(&mut self) -> Duration {
        self.steps.next().unwrap_or(self.max)
    }

    /// How long to wait before the next attempt: a uniform draw from `0..=step`, the step then grows.
    pub fn next_delay(&mut self) -> Duration {
        self.next_step().mul_f64(rand::random::<f64>())
    }

    /// Back to the first step (after a successful attempt).
    pub fn reset(&mut self) {
        self.steps = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(30));
        let steps: Vec<u64> = (0..8).map(|_| b.next_step().as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_step(), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_drawn_over_the_whole_step() {
        let mut b = Backoff::new(Duration::from_secs(10), 1.0, Duration::from_secs(10));
        let delays: Vec<Duration> = (0..400).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        // Full jitter: some attempts come early, some late, never all at one moment.
        assert!(
            delays.iter().any(|d| *d < Duration::from_secs(2)),
            "{delays:?}"
        );
        assert!(
            delays.iter().any(|d| *d > Duration::from_secs(8)),
            "{delays:?}"
        );
    }

    #[test]
    fn the_cap_is_never_below_the_first_step() {
        let mut b = Backoff::new(Duration::from_secs(5), 2.0, Duration::from_secs(1));
        assert_eq!(b.next_step(), Duration::from_secs(5));
        assert_eq!(b.next_step(), Duration::from_secs(5));
    }
}
