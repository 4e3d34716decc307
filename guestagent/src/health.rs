//! The health monitor: the service status comes from the datastore server's own health.
//!
//! Once the guest is prepared, every `health_check_interval` (and at once when the server process
//! exits) the monitor looks at the server:
//! - it answers its health query (`PING`, `SELECT 1`) → `running` (`instance ready` for a cluster member
//!   whose cluster is not complete);
//! - it stopped answering three checks in a row while its process runs → `crashed`;
//! - its process died → `crashed` at once, then it is started again after `server_restart_delay`
//!   (doubling after each death within a minute of the last start, up to 30 s); a start that fails is
//!   reported to the conductor as the instance's fault;
//! - after `stop_db` it stays down (`shutdown`) until `restart`.
//!
//! When the guest itself starts (a host or stack restart, or a guest that was killed), the monitor's
//! first look starts the server on its existing data directory, or adopts the one still running, as a
//! VM's init starts `mysqld` at boot.
//!
//! Every status change goes through [`Agent::update_status`], which heartbeats it at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use trove_common::status::ServiceStatus;

use crate::agent::{service_context, Agent};
use crate::datastore::Datastore;

/// Failed health queries in a row before a running server counts as crashed.
const FAILED_CHECKS: u32 = 3;
/// The longest wait before a dead server is started again.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A server that stays up this long resets the restart delay.
const STABLE: Duration = Duration::from_secs(60);

/// What the monitor remembers between looks.
struct Watch {
    /// The server was seen running by this guest process (a later absence is a death, not a boot).
    seen_running: bool,
    failures: u32,
    delay: Duration,
    base_delay: Duration,
    restart_at: Option<Instant>,
    started_at: Option<Instant>,
}

/// Runs until `stop`.
pub async fn run(
    agent: Arc<Agent>,
    interval: Duration,
    restart_delay: Duration,
    stop: CancellationToken,
) {
    let Ok(ds) = agent.datastore().cloned() else {
        return;
    };
    let mut watch = Watch {
        seen_running: false,
        failures: 0,
        delay: restart_delay,
        base_delay: restart_delay,
        restart_at: None,
        started_at: None,
    };
    loop {
        look(&agent, ds.as_ref(), &mut watch).await;
        let mut wait = interval;
        if let Some(at) = watch.restart_at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        if ds.server().is_running() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = ds.server().exited() => {}
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// One look at the server (see the module docs).
async fn look(agent: &Agent, ds: &dyn Datastore, w: &mut Watch) {
    let _lifecycle = agent.lifecycle.lock().await;
    let state = agent.state().await;
    if !state.prepared || state.server_stopped {
        w.seen_running = false;
        return;
    }
    let healthy = if state.cluster_pending {
        ServiceStatus::InstanceReady
    } else {
        ServiceStatus::Running
    };
    let current = state.status();
    let ctx_owned = service_context(None);
    let ctx = &ctx_owned;
    let set = move |status: ServiceStatus| async move {
        if current != Some(status) {
            if let Err(e) = agent.update_status(status, ctx, |_| {}).await {
                tracing::error!(error = %format!("{e:#}"), "cannot record the service status");
            }
        }
    };

    if !ds.server().is_running() {
        if w.seen_running {
            // It died under our watch.
            w.seen_running = false;
            let quick = w.started_at.is_some_and(|t| t.elapsed() < STABLE);
            w.delay = if quick {
                (w.delay * 2).min(MAX_RESTART_DELAY)
            } else {
                w.base_delay
            };
            w.restart_at = Some(Instant::now() + w.delay);
            tracing::warn!(
                server = ds.server().spec().name,
                restart_in_ms = w.delay.as_millis() as u64,
                "the datastore server died"
            );
            set(ServiceStatus::Crashed).await;
            return;
        }
        if w.restart_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        if w.restart_at.is_none() && matches!(current, Some(s) if s == healthy) {
            // The guest has just started and the server is not running: it is down until it answers.
            set(ServiceStatus::Shutdown).await;
        }
        match ds.start().await {
            Ok(()) => {
                w.seen_running = true;
                w.failures = 0;
                w.restart_at = None;
                w.started_at = Some(Instant::now());
                tracing::info!(
                    server = ds.server().spec().name,
                    adopted = ds.server().is_adopted(),
                    "the datastore server is up"
                );
                set(healthy).await;
            }
            Err(e) => {
                w.delay = (w.delay * 2).clamp(w.base_delay, MAX_RESTART_DELAY);
                w.restart_at = Some(Instant::now() + w.delay);
                tracing::error!(error = %e, retry_in_ms = w.delay.as_millis() as u64, "cannot start the datastore server");
                agent
                    .report_fault(
                        "The datastore server could not be started.",
                        &e.to_string(),
                        ctx,
                    )
                    .await;
                set(ServiceStatus::Crashed).await;
            }
        }
        return;
    }

    w.seen_running = true;
    match ds.ping().await {
        Ok(()) => {
            w.failures = 0;
            if w.started_at.is_some_and(|t| t.elapsed() >= STABLE) {
                w.delay = w.base_delay;
            }
            set(healthy).await;
        }
        Err(e) => {
            w.failures += 1;
            tracing::warn!(error = %e, failures = w.failures, "health check failed");
            if w.failures >= FAILED_CHECKS {
                set(ServiceStatus::Crashed).await;
            }
        }
    }
}
