#![doc = include_str!("../README.md")]

pub mod agent;
pub mod datastore;
pub mod dedup;
pub mod dispatch;
pub mod module;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{self, Broker};
use trove_common::config::Settings;

pub use agent::{Agent, Transport};

/// Runs one guest agent until `shutdown` is cancelled or a `delete_queue` message arrives.
///
/// Connects to the broker (retrying for up to `usage_timeout` seconds, the control plane's build
/// budget), declares and consumes `guestagent.<guest_id>`, and heartbeats the service status every
/// `report_interval` seconds. On the way out it stops consuming, lets the messages in flight finish
/// and be acked, stops the heartbeats and closes the connection.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_settings(&settings)?;
    let deadline = Duration::from_secs(settings.default.usage_timeout);
    let broker = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        broker = Broker::connect(&settings, deadline) => broker.context("connecting to the broker")?,
    };
    // Cancelled by the process's shutdown, or by `delete_queue` without touching the caller's token.
    let stop = shutdown.child_token();
    let agent = Arc::new(Agent::new(&settings, broker.clone(), stop.clone())?);
    // The taskmanager declares it too before casting `prepare`; declaring is idempotent.
    broker
        .declare_topic_queue(&agent.topic)
        .await
        .with_context(|| format!("declaring queue {}", agent.topic))?;
    tracing::info!(
        instance.id = %agent.instance_id,
        queue = %agent.topic,
        datastore.manager = %agent.datastore_manager,
        secure = agent.keys().is_some(),
        "guest agent ready"
    );

    let interval = heartbeat_interval(settings.default.report_interval);
    let heartbeats = tokio::spawn(agent::run_heartbeats(agent.clone(), interval, stop.clone()));
    let handler_agent = agent.clone();
    let consumed = amqp::consume(
        broker.clone(),
        agent.topic.clone(),
        settings.amqp.prefetch.max(1),
        move |delivery| {
            let agent = handler_agent.clone();
            async move { dispatch::handle_message(agent, &delivery.data).await }
        },
        stop.clone(),
    )
    .await;
    stop.cancel();
    if let Err(e) = heartbeats.await {
        tracing::warn!(error = %e, "heartbeat task ended abnormally");
    }
    broker.close().await;
    consumed.context("consuming the guest queue")?;
    tracing::info!("guest agent stopped");
    Ok(())
}

/// The `[guest]` options a guest cannot run without, checked before connecting.
fn check_settings(settings: &Settings) -> anyhow::Result<()> {
    let guest = &settings.guest;
    anyhow::ensure!(
        !guest.guest_id.trim().is_empty(),
        "invalid value for option guest.guest_id: must be set"
    );
    anyhow::ensure!(
        !guest.state_dir.as_os_str().is_empty(),
        "invalid value for option guest.state_dir: must be set"
    );
    Ok(())
}

/// `report_interval` as a period; a value tokio cannot use falls back to Trove's 30 s.
fn heartbeat_interval(report_interval: f64) -> Duration {
    Duration::try_from_secs_f64(report_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_interval_is_report_interval() {
        assert_eq!(heartbeat_interval(0.5), Duration::from_millis(500));
        assert_eq!(heartbeat_interval(0.0), Duration::from_secs(30));
        assert_eq!(heartbeat_interval(-1.0), Duration::from_secs(30));
        assert_eq!(heartbeat_interval(f64::NAN), Duration::from_secs(30));
    }

    #[test]
    fn guest_id_and_state_dir_are_required() {
        let mut settings = Settings::default();
        let err = check_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("guest.guest_id"), "{err}");
        settings.guest.guest_id = "i1".into();
        let err = check_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("guest.state_dir"), "{err}");
        settings.guest.state_dir = "/tmp/x".into();
        check_settings(&settings).unwrap();
    }
}
