#![doc = include_str!("../README.md")]

pub mod agent;
pub mod datastore;
pub mod dedup;
pub mod dispatch;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod health;
pub mod module;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{self, Broker};
use trove_common::config::Settings;
use trove_common::status::ServiceStatus;

pub use agent::{Agent, Transport};

/// Runs one guest agent until `shutdown` is cancelled or a `delete_queue` message arrives.
///
/// Connects to the broker (retrying for up to `usage_timeout` seconds, the control plane's build
/// budget) as `transport_url`'s user (its own with `guest_broker_credentials = per_instance`, which
/// may touch nothing but its own queue, the conductor and callers' reply queues: so it never declares
/// the services' exchanges, [`Broker::connect_guest`]), declares and consumes `guestagent.<guest_id>`,
/// and heartbeats the service status every
/// `report_interval` seconds. On the way out it stops consuming, lets the messages in flight finish
/// and be acked, stops the heartbeats and closes the connection.
pub async fn run(mut settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_settings(&settings)?;
    settings.default.transport_url = guest_transport_url(&settings.default.transport_url);
    let deadline = Duration::from_secs(settings.default.usage_timeout);
    let broker = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        broker = Broker::connect_guest(&settings, deadline) => broker.context("connecting to the broker")?,
    };
    let served = serve(&settings, broker.clone(), &shutdown).await;
    broker.close().await;
    served?;
    tracing::info!("guest agent stopped");
    Ok(())
}

/// Everything between connecting and closing the connection (which [`run`] does on every path).
async fn serve(
    settings: &Settings,
    broker: Arc<Broker>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Cancelled by the process's shutdown, or by `delete_queue` without touching the caller's token.
    let stop = shutdown.child_token();
    let agent = Arc::new(Agent::new(settings, broker.clone(), stop.clone())?);
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
    let monitor = tokio::spawn(health::run(
        agent.clone(),
        seconds(
            settings.guest.health_check_interval,
            Duration::from_secs(10),
        ),
        seconds(settings.guest.server_restart_delay, Duration::from_secs(1)),
        stop.clone(),
    ));
    let handler_agent = agent.clone();
    let consumed = amqp::consume(
        broker,
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
    if let Err(e) = monitor.await {
        tracing::warn!(error = %e, "health monitor ended abnormally");
    }
    // The guest is going away (SIGTERM, as at a VM's shutdown, or delete_queue): stop the server
    // cleanly so its data is flushed. A guest that is killed leaves it running for the next guest to
    // adopt.
    if let Ok(ds) = agent.datastore() {
        let _lifecycle = agent.lifecycle.lock().await;
        if ds.server().is_running() {
            match ds.stop().await {
                // Down until a guest starts it again: the control plane must not show it ACTIVE
                // meanwhile. Not `server_stopped`: the next guest starts it.
                Ok(()) => {
                    let ctx = agent::service_context(None);
                    if let Err(e) = agent
                        .update_status(ServiceStatus::Shutdown, &ctx, |_| {})
                        .await
                    {
                        tracing::warn!(error = %format!("{e:#}"), "cannot record the shutdown");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot stop the datastore server"),
            }
        }
    }
    consumed.context("consuming the guest queue")
}

/// A period in seconds from the configuration; a value tokio cannot use falls back to `default`.
fn seconds(value: f64, default: Duration) -> Duration {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
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

/// The largest AMQP frame a guest negotiates, unless `transport_url` sets `frame_max` itself.
///
/// lapin keeps two buffers of 32 frames each per connection and fills them, so RabbitMQ's default
/// frame_max (128 KiB) costs 8 MiB of resident memory per guest; 8 KiB costs 512 KiB. Bigger messages
/// (module payloads) are simply split into more body frames.
pub const GUEST_FRAME_MAX: u32 = 8192;

/// `transport_url` as the `amqp://` URI the broker layer connects to, with `frame_max` set to
/// [`GUEST_FRAME_MAX`] when the operator did not choose one.
pub fn guest_transport_url(transport_url: &str) -> String {
    let uri = amqp::amqp_uri(transport_url);
    if uri.contains("frame_max=") {
        return uri;
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}frame_max={GUEST_FRAME_MAX}")
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
    fn guests_negotiate_small_frames() {
        assert_eq!(
            guest_transport_url("rabbit://guest:guest@127.0.0.1:5672/"),
            "amqp://guest:guest@127.0.0.1:5672?frame_max=8192"
        );
        assert_eq!(
            guest_transport_url("amqp://u:p@h:5672/vh"),
            "amqp://u:p@h:5672/vh?frame_max=8192"
        );
        assert_eq!(
            guest_transport_url("amqp://u:p@h/vh?heartbeat=10"),
            "amqp://u:p@h/vh?heartbeat=10&frame_max=8192"
        );
        assert_eq!(
            guest_transport_url("amqp://h/vh?frame_max=65536"),
            "amqp://h/vh?frame_max=65536"
        );
        // The default vhost stays the default vhost (an empty path), and the URI still parses.
        let uri: lapin::uri::AMQPUri = guest_transport_url("rabbit://guest:guest@127.0.0.1:5672/")
            .parse()
            .unwrap();
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.query.frame_max, Some(8192));
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
