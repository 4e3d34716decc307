#![doc = include_str!("../README.md")]

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod crypto;
#[cfg(feature = "db")]
pub mod db;
pub mod module;
pub mod rpc;
pub mod shutdown;
pub mod status;
pub mod telemetry;

/// Timestamps as the API writes them: UTC, no zone, microseconds truncated (`2017-06-02T17:06:21`).
pub fn api_time(t: chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Seconds since the epoch with microseconds, as guests stamp `sent`.
pub fn epoch_now() -> f64 {
    let now = chrono::Utc::now();
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_micros()) / 1e6
}
