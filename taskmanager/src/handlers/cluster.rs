//! `create_cluster` and `delete_cluster` (docs/messaging.md §6, "Cluster create" and "Delete").
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
use crate::error::is_transient;
use crate::{guest, Ctx, Interrupted};
use trove_common::rpc::guest::{ClusterAddslots, ClusterMeet, GuestMsg};

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

/// Every hash slot of a Redis Cluster.
const REDIS_SLOTS: u32 = 16384;

/// The slot ranges of `members` members, as Trove's redis cluster strategy splits them: equal shares,
/// the first `16384 % n` members one slot more. Pure.
pub fn redis_slot_ranges(members: usize) -> Vec<(u32, u32)> {
    let n = u32::try_from(members).unwrap_or(u32::MAX).max(1);
    let share = REDIS_SLOTS / n;
    let mut leftover = REDIS_SLOTS % n;
    let mut first = 0;
    (0..members)
        .map(|_| {
            let mut size = share;
            if leftover > 0 {
                leftover -= 1;
                size += 1;
            }
            let range = (first, first + size - 1);
            first += size;
            range
        })
        .collect()
}

/// Joins a redis cluster's members into one Redis Cluster, as Trove's redis cluster strategy does:
/// every member but the first `cluster_meet`s the first, then each member `cluster_addslots` its share
/// of the 16,384 slots. Both steps are idempotent on the guest, so a pass that dies half-way is simply
/// done again. `cluster_complete` (which waits for `cluster_state:ok`) follows, from the reconciler.
/// Members are taken in creation order (member-1 first).
pub async fn join_redis_cluster(
    ctx: &Ctx,
    cluster_id: &str,
    members: &[Instance],
) -> anyhow::Result<()> {
    let mut members: Vec<&Instance> = members.iter().collect();
    members.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let Some(head) = members.first() else {
        return Ok(());
    };
    let (Some(head_ip), Some(head_port)) = (head.address.clone(), head.port) else {
        anyhow::bail!(
            "member {} of cluster {cluster_id} has no address yet",
            head.id
        );
    };
    let head_port = u16::try_from(head_port)
        .with_context(|| format!("member {} has port {head_port}", head.id))?;
    let rpc = RpcContext::service();
    let timeout = ctx.settings.high_timeout();
    let call = |member: &Instance, msg: GuestMsg| {
        let rpc = &rpc;
        let id = member.id.clone();
        let sealed = member.encrypted_key.clone();
        async move {
            let key = guest::instance_key(&ctx.settings, sealed.as_deref())
                .with_context(|| format!("opening the key of member {id}"))?;
            let keys = guest::keyring(key.as_deref());
            guest::call(ctx, &id, keys.as_ref(), rpc, &msg, timeout)
                .await
                .with_context(|| format!("{} on member {id}", msg.method()))
        }
    };
    let meets = members[1..].iter().map(|m| {
        call(
            m,
            GuestMsg::ClusterMeet(ClusterMeet {
                ip: head_ip.clone(),
                port: head_port,
            }),
        )
    });
    for res in join_all(meets).await {
        res?;
    }
    let ranges = redis_slot_ranges(members.len());
    let slots = members.iter().zip(&ranges).map(|(m, (first, last))| {
        call(
            m,
            GuestMsg::ClusterAddslots(ClusterAddslots {
                first_slot: *first,
                last_slot: *last,
            }),
        )
    });
    for res in join_all(slots).await {
        res?;
    }
    tracing::info!(cluster.id = %cluster_id, members = members.len(), "redis cluster joined: every slot assigned");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_split_as_trove_splits_them() {
        assert_eq!(
            redis_slot_ranges(3),
            [(0, 5461), (5462, 10922), (10923, 16383)]
        );
        assert_eq!(redis_slot_ranges(1), [(0, 16383)]);
        let seven = redis_slot_ranges(7);
        assert_eq!(seven.last().unwrap().1, 16383);
        let total: u32 = seven.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(total, 16384);
        assert!(redis_slot_ranges(0).is_empty());
    }
}
