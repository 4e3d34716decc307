//! `create_cluster` and `delete_cluster` (messaging.md §6, "Cluster create" and "Delete").
//!
//! The api inserts the cluster and its members in one transaction and casts one `create_instance` per
//! member before `create_cluster`. So the members build themselves; what is left for the cluster
//! (waiting for every member to be INSTANCE_READY, `cluster_complete`, failing fast) is a state the
//! reconciler watches in the database, where it survives a restart.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::join_all;
use trove_common::db::models::{Cluster, Instance};
use trove_common::db::DbError;
use trove_common::rpc::RpcContext;
use trove_common::status::ClusterTask;

use super::instance;
use crate::dispatch::is_transient;
use crate::{Ctx, Interrupted};

/// Trove polls a cluster delete every 2 s.
const DELETE_POLL: Duration = Duration::from_secs(2);

/// `create_cluster`: nothing to start here (see the module docs); wake the reconciler so it looks at
/// the new cluster now.
pub async fn handle_create_cluster(
    ctx: &Ctx,
    _rpc: &RpcContext,
    cluster_id: &str,
) -> anyhow::Result<()> {
    let id = cluster_id.to_owned();
    let cluster = ctx
        .db
        .run(move |c| Cluster::find(c, &id, None).map_err(DbError::from))
        .await
        .with_context(|| format!("loading cluster {cluster_id}"))?;
    match cluster.map(|c| ClusterTask::from_code(c.task_id)) {
        None => tracing::info!("cluster is gone; nothing to build"),
        Some(ClusterTask::Building) => {
            tracing::info!("cluster accepted; waiting for its members");
            ctx.wake_reconciler();
        }
        Some(task) => tracing::info!(task = task.name(), "cluster is not building; nothing to do"),
    }
    Ok(())
}

/// `delete_cluster`: delete every live member (the instance delete path, concurrently), then mark the
/// cluster deleted with task NONE. Gives up after `cluster_delete_time_out` with the cluster left
/// DELETING; the reconciler finishes it once its last member is gone.
pub async fn handle_delete_cluster(
    ctx: &Ctx,
    rpc: &RpcContext,
    cluster_id: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(ctx.settings.default.cluster_delete_time_out);
    loop {
        let id = cluster_id.to_owned();
        let (cluster, members) = ctx
            .db
            .run(move |c| -> Result<_, DbError> {
                let Some(cluster) = Cluster::find(c, &id, None)? else {
                    return Ok((None, Vec::new()));
                };
                let members: Vec<String> = Instance::cluster_members(c, &id)?
                    .into_iter()
                    .map(|i| i.id)
                    .collect();
                Ok((Some(cluster), members))
            })
            .await
            .with_context(|| format!("loading cluster {cluster_id}"))?;
        if cluster.is_none() {
            tracing::info!("cluster already deleted");
            return Ok(());
        }
        if members.is_empty() {
            let id = cluster_id.to_owned();
            ctx.db
                .run(move |c| Cluster::mark_deleted(c, &id).map_err(DbError::from))
                .await
                .with_context(|| format!("marking cluster {cluster_id} deleted"))?;
            tracing::info!("cluster deleted");
            return Ok(());
        }

        let results = join_all(
            members
                .iter()
                .map(|m| instance::handle_delete_instance(ctx, rpc, m)),
        )
        .await;
        let mut stuck = 0;
        for (member, res) in members.iter().zip(results) {
            if let Err(e) = res {
                if is_transient(&e) {
                    return Err(e.context(format!("deleting member {member}")));
                }
                tracing::error!(instance.id = %member, error = format!("{e:#}"), "cannot delete cluster member");
                stuck += 1;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(
                members = stuck,
                "cluster members still live after cluster_delete_time_out; cluster left DELETING"
            );
            return Ok(());
        }
        if stuck == 0 {
            continue; // every member went: the next look finds none and marks the cluster
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Err(Interrupted.into()),
            _ = tokio::time::sleep(DELETE_POLL) => {}
        }
    }
}
