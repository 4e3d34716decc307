//! The heartbeat sweep: a guest that stopped reporting turns SHUTDOWN.
//!
//! A dead guest sends nothing, so no message can tell the conductor about it. Every
//! `agent_heartbeat_time` seconds the conductor looks instead for live instances with no task whose
//! status is RUNNING or HEALTHY but was last updated more than `agent_heartbeat_expiry` seconds ago,
//! and sets their status to SHUTDOWN (issue 2; Trove shows such guests as SHUTDOWN too). `updated_at`
//! stays as it was, so the API can still tell how long the guest has been silent. When heartbeats
//! return, the next heartbeat ([`crate::batch`]) sets the reported status again and the instance is ACTIVE.
//!
//! Instances being built or deleted are the taskmanager's business and are left alone, as are
//! statuses a guest chose itself (RESTART_REQUIRED, BLOCKED, ...).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use trove_common::config::Settings;
use trove_common::db::models::ServiceStatusRow;
use trove_common::db::{self, Db, DbError};

/// One pass: marks the silent guests SHUTDOWN and returns their instance ids.
pub async fn sweep_once(db: &Db, expiry: Duration) -> Result<Vec<String>, DbError> {
    // `updated_at` is written from this host's clock (`db::now`), so the cutoff is too.
    let expiry = chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::MAX);
    let cutoff = db::now()
        .checked_sub_signed(expiry)
        .unwrap_or(chrono::NaiveDateTime::MIN);
    db.run(move |conn| ServiceStatusRow::shut_down_silent(conn, cutoff).map_err(DbError::from))
        .await
}

/// Sweeps every `agent_heartbeat_time` seconds until `shutdown`. A failed pass is logged and the next
/// one tries again: the sweep never stops the conductor.
pub async fn run(settings: Arc<Settings>, db: Db, shutdown: CancellationToken) {
    let every = Duration::from_secs(settings.default.agent_heartbeat_time.max(1));
    let expiry = Duration::from_secs(settings.default.agent_heartbeat_expiry);
    let mut ticks = tokio::time::interval(every);
    // After a slow pass (the database was busy), wait a whole period rather than sweep in a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(
        every_secs = every.as_secs(),
        expiry_secs = expiry.as_secs(),
        "heartbeat sweep started"
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match sweep_once(&db, expiry).await {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(
                        instance.id = %id,
                        expiry_secs = expiry.as_secs(),
                        "no heartbeat within agent_heartbeat_expiry; instance marked SHUTDOWN"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat sweep failed; retrying next period"),
        }
    }
    tracing::debug!("heartbeat sweep stopped");
}
