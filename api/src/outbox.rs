//! The outbox relay: publishes the messages handlers queued in their transactions, with confirms, and
//! deletes each row once the broker has it. A crash between commit and publish loses nothing: the row
//! is still there when the api starts again. Several api processes can relay at once
//! (`FOR UPDATE SKIP LOCKED`).

use std::time::Duration;

use diesel::Connection;
use tokio_util::sync::CancellationToken;
use trove_common::db::models::OutboxMessage;

use crate::app::AppState;

const BATCH: i64 = 100;

/// Runs until `shutdown`, woken by `state.outbox` after commits and every poll interval otherwise.
pub async fn relay(state: AppState, shutdown: CancellationToken) {
    let poll = Duration::from_secs_f64(state.settings.api.outbox_poll_interval.max(0.05));
    loop {
        match relay_once(&state).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "outbox relay failed; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = state.outbox.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Last sweep so accepted work queued just before shutdown leaves promptly.
    let _ = relay_once(&state).await;
}

/// Publishes one batch; returns how many rows it published.
pub async fn relay_once(state: &AppState) -> anyhow::Result<usize> {
    // Rows stay locked only while we read them; a row published twice after a crash is harmless because
    // every handler is idempotent.
    let rows = state
        .db
        .run(|c| {
            c.transaction(|c| OutboxMessage::lock_batch(c, BATCH))
                .map_err(anyhow::Error::from)
        })
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut done = Vec::with_capacity(rows.len());
    for row in &rows {
        match state.broker.cast(&row.topic, &row.body).await {
            Ok(()) => {
                tracing::debug!(rpc.method = %row.method, rpc.request_id = %row.request_id, "outbox message published");
                done.push(row.id);
            }
            Err(e) => {
                tracing::warn!(rpc.method = %row.method, rpc.request_id = %row.request_id, error = %e, "publish failed; kept for retry");
                break;
            }
        }
    }
    let n = done.len();
    state
        .db
        .run(move |c| OutboxMessage::delete(c, &done).map_err(anyhow::Error::from))
        .await?;
    Ok(n)
}
