//! `restart` (Trove's `taskmanager/models.py::BuiltInstanceTasks.restart`): ask the guest to restart
//! its datastore, then clear the REBOOTING task the api set.
//!
//! As in Trove, a guest that fails or does not answer only gets logged: the task goes back to NONE
//! either way, so the instance does not stay in REBOOT. The task is moved with a compare-and-set from
//! REBOOTING, so a delete that started meanwhile keeps its DELETING task. A redelivered `restart`
//! for an instance no longer rebooting (or gone) is acknowledged without calling the guest.

use anyhow::Context as _;
use trove_common::db::models::Instance;
use trove_common::db::DbError;
use trove_common::rpc::guest::{GuestMsg, Restart};
use trove_common::rpc::RpcContext;
use trove_common::status::InstanceTask;

use crate::{guest, Ctx, Interrupted};

/// `restart`: call the guest's `restart` with the high timeout, then set the task back to NONE.
pub async fn handle_restart(ctx: &Ctx, rpc: &RpcContext, instance_id: &str) -> anyhow::Result<()> {
    let inst = super::instance::find_any(ctx, instance_id).await?;
    let Some(inst) = inst.filter(|i| !i.deleted) else {
        tracing::warn!(instance.id = %instance_id, "restart for an instance that does not exist");
        return Ok(());
    };
    if inst.task_id != InstanceTask::Rebooting.code() {
        tracing::info!(instance.id = %instance_id, task.id = inst.task_id, "restart for an instance that is not rebooting; nothing to do");
        return Ok(());
    }

    tracing::info!(instance.id = %instance_id, "initiating datastore restart");
    let result = match guest::instance_key(&ctx.settings, inst.encrypted_key.as_deref()) {
        Ok(key) => {
            let keys = guest::keyring(key.as_deref());
            let call = guest::call(
                ctx,
                instance_id,
                keys.as_ref(),
                rpc,
                &GuestMsg::Restart(Restart {}),
                ctx.settings.high_timeout(),
            );
            tokio::select! {
                r = call => r.map(|_| ()).map_err(anyhow::Error::from),
                // Shutting down: leave the task as it is and let the message be requeued.
                () = ctx.shutdown.cancelled() => return Err(Interrupted.into()),
            }
        }
        Err(e) => Err(anyhow::Error::from(e).context("opening the instance key")),
    };
    if let Err(e) = &result {
        tracing::error!(instance.id = %instance_id, error = %format!("{e:#}"), "failed to initiate datastore restart");
    }

    let id = instance_id.to_owned();
    ctx.db
        .run(move |c| {
            Instance::set_task_if(c, &id, InstanceTask::Rebooting, InstanceTask::None)
                .map_err(DbError::from)
        })
        .await
        .with_context(|| format!("resetting the task of instance {instance_id}"))?;
    Ok(())
}
