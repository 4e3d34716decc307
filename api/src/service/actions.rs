//! Instance actions (`POST /instances/{id}/action`, Trove's `InstanceController.action`): only
//! `restart` here. The api checks the instance can take an action, sets the REBOOTING task and queues
//! the taskmanager's `restart` in the same transaction; the taskmanager calls the guest and clears the
//! task.

use diesel::pg::PgConnection;
use diesel::Connection;
use serde_json::Value;
use trove_common::config::Settings;
use trove_common::db::models::instance::{InstanceDetail, Scope};
use trove_common::db::models::Instance;
use trove_common::rpc::taskmanager::TaskManagerMsg;
use trove_common::status::{task_action, InstanceTask, ServiceStatus};

use super::instances::enqueue_taskmanager;
use crate::error::{ApiError, ApiResult};
use crate::extract::Context;

/// The actions Trove's instance controller knows; all but `restart` are not built here.
const OTHER_ACTIONS: [&str; 4] = [
    "resize",
    "promote_to_replica_source",
    "eject_replica_source",
    "reset_status",
];

/// Trove's RESTART_REQUIRED task, which allows actions.
const RESTART_REQUIRED_TASK: i32 = 0x07;

/// What the body asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Restart,
}

/// Picks the action from the body: empty → `Invalid request body.`; a Trove action we lack → 501.
pub fn parse(body: &Value) -> ApiResult<Action> {
    let Some(obj) = body.as_object().filter(|o| !o.is_empty()) else {
        return Err(ApiError::bad("Invalid request body."));
    };
    if obj.contains_key("restart") {
        return Ok(Action::Restart);
    }
    match obj.keys().find(|k| OTHER_ACTIONS.contains(&k.as_str())) {
        Some(k) => Err(ApiError::NotImplemented(format!(
            "The '{k}' action is not supported."
        ))),
        None => Err(ApiError::bad("Invalid request body.")),
    }
}

/// `validate_can_perform_action`: the server ACTIVE, no task (or RESTART_REQUIRED), a guest status
/// that allows actions. `api_status` is the instance's API status (used for the last check).
pub fn can_perform_action(d: &InstanceDetail, api_status: &str) -> ApiResult<()> {
    let i = &d.instance;
    let server = i.server_status.as_deref();
    let (kind, status) = if !matches!(server, Some("ACTIVE" | "HEALTHY")) {
        ("instance", server.unwrap_or("None").to_owned())
    } else if i.task_id != InstanceTask::None.code() && i.task_id != RESTART_REQUIRED_TASK {
        ("task", task_action(i.task_id).to_owned())
    } else if !d
        .service
        .as_ref()
        .and_then(|s| s.status())
        .is_some_and(|s| {
            use ServiceStatus::*;
            matches!(
                s,
                Running | Shutdown | Crashed | Blocked | Healthy | RestartRequired
            )
        })
    {
        ("instance", api_status.to_owned())
    } else {
        return Ok(());
    };
    Err(ApiError::Unprocessable(format!(
        "Instance {} is not currently available for an action to be performed ({kind} status was \
         {status}).",
        i.id
    )))
}

/// `Instance.restart`: checks, REBOOTING, and the `restart` cast, in one transaction.
/// `status_of` gives the API status of an instance (the views' rules).
pub fn restart(
    conn: &mut PgConnection,
    settings: &Settings,
    ctx: &Context,
    id: &str,
    topic: &str,
    status_of: impl Fn(&InstanceDetail) -> &'static str,
) -> ApiResult<()> {
    let scope = if ctx.is_admin {
        Scope::Any
    } else {
        Scope::Tenant(&ctx.project_id)
    };
    conn.transaction(|c| {
        let inst = Instance::find(c, id, scope)?.ok_or_else(|| ApiError::resource_not_found(id))?;
        let d = Instance::detail(c, vec![inst])?.remove(0);
        can_perform_action(&d, status_of(&d))?;
        if d.instance.cluster_id.is_some() && !ctx.is_admin {
            return Err(ApiError::NotImplemented(
                "Operation not supported for instances that are part of a cluster.".into(),
            ));
        }
        if d.instance.task_id == InstanceTask::None.code() {
            // Compare-and-set from the task we checked, so a delete that just started is not undone.
            let n = Instance::set_task_if(c, id, InstanceTask::None, InstanceTask::Rebooting)?;
            if n == 0 {
                return Err(ApiError::Unprocessable(format!(
                    "Instance {id} is not currently available for an action to be performed."
                )));
            }
        } else {
            Instance::set_task(c, id, InstanceTask::Rebooting)?;
        }
        let msg = TaskManagerMsg::Restart {
            instance_id: id.to_owned(),
        };
        enqueue_taskmanager(c, settings, topic, &msg, &ctx.rpc())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies() {
        assert_eq!(parse(&json!({"restart": {}})).unwrap(), Action::Restart);
        assert_eq!(
            parse(&json!({})).unwrap_err().to_string(),
            "Invalid request body."
        );
        assert!(matches!(
            parse(&json!({"resize": {"volume": {"size": 2}}})),
            Err(ApiError::NotImplemented(_))
        ));
        assert!(matches!(
            parse(&json!({"reboot": {}})),
            Err(ApiError::BadRequest(_))
        ));
    }
}
