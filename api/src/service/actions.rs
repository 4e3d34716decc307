//! Instance actions (`POST /instances/{id}/action`, Trove's `InstanceController.action`): `restart`
//! and `reset_status` here.
//!
//! - `restart`: the api checks the instance can take an action, sets the REBOOTING task and queues
//!   the taskmanager's `restart` in the same transaction; the taskmanager calls the guest and clears
//!   the task.
//! - `reset_status` (admins): Trove's `Instance.reset_status`, written by the api alone in one
//!   transaction: task NONE and service status UNKNOWN (shown as ERROR), from any state, so an
//!   instance stuck in BUILD (or anything else) can then be deleted. A live guest's next heartbeat
//!   sets its real status again. Clusters have the same action (`reset-status`, [`reset_cluster`]).

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::Value;
use trove_common::config::Settings;
use trove_common::db::models::instance::InstanceDetail;
use trove_common::db::models::{Cluster, Instance, ServiceStatusRow};
use trove_common::db::schema::service_statuses;
use trove_common::rpc::taskmanager::{Restart, TaskManagerMsg};
use trove_common::status::{task_action, ClusterTask, InstanceTask, ServiceStatus};

use super::instances::enqueue_taskmanager;
use crate::error::{ApiError, ApiResult};
use crate::extract::Context;

/// The actions Trove's instance controller knows that are not built here.
const OTHER_ACTIONS: [&str; 3] = [
    "resize",
    "promote_to_replica_source",
    "eject_replica_source",
];

/// Trove's RESTART_REQUIRED task, which allows actions.
const RESTART_REQUIRED_TASK: i32 = 0x07;

/// What the body asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Restart,
    /// `{"reset_status": {}}`. With `force_delete` named in it, Trove checks the
    /// `instance:force_delete` rule (admin or owner) instead of `instance:reset_status` (admin).
    ResetStatus {
        force_delete: bool,
    },
}

/// Picks the action from the body: empty → `Invalid request body.`; a Trove action we lack → 501.
pub fn parse(body: &Value) -> ApiResult<Action> {
    let Some(obj) = body.as_object().filter(|o| !o.is_empty()) else {
        return Err(ApiError::bad("Invalid request body."));
    };
    if obj.contains_key("restart") {
        return Ok(Action::Restart);
    }
    if let Some(v) = obj.get("reset_status") {
        return Ok(Action::ResetStatus {
            force_delete: names_force_delete(v),
        });
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
    let scope = ctx.instance_scope();
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
        let msg = TaskManagerMsg::Restart(Restart {
            instance_id: id.to_owned(),
        });
        enqueue_taskmanager(c, settings, topic, &msg, &ctx.rpc())?;
        Ok(())
    })
}

/// The cluster actions Trove knows that are not built here (`reset-status` is).
const OTHER_CLUSTER_ACTIONS: [&str; 7] = [
    "grow",
    "shrink",
    "add_shard",
    "restart",
    "upgrade",
    "configuration_attach",
    "configuration_detach",
];

/// What a cluster action body asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClusterAction {
    /// `{"reset-status": {}}` (`force_delete` as for instances).
    ResetStatus { force_delete: bool },
    /// Any other action: refused once the cluster is found.
    Refused(RefusedAction),
}

/// A cluster action this API does not perform.
#[derive(Debug, PartialEq, Eq)]
pub enum RefusedAction {
    /// A Trove action we lack: 501.
    NotSupported(String),
    /// An action Trove does not know either: 400 `Action <name> not supported`.
    Unknown(String),
}

impl RefusedAction {
    pub fn error(&self) -> ApiError {
        match self {
            Self::NotSupported(name) => {
                ApiError::NotImplemented(format!("The '{name}' action is not supported."))
            }
            Self::Unknown(name) => ApiError::bad(format!("Action {name} not supported")),
        }
    }
}

/// Trove's `ClusterController.action` body rules: no body → `Invalid request body.`; other than one
/// key → `Action request should have exactly one action specified in body`. A refused action is
/// reported after the cluster is loaded, as Trove does.
pub fn parse_cluster(body: &Value) -> ApiResult<ClusterAction> {
    let Some(obj) = body.as_object().filter(|o| !o.is_empty()) else {
        return Err(ApiError::bad("Invalid request body."));
    };
    let mut keys = obj.iter();
    let (Some((name, value)), None) = (keys.next(), keys.next()) else {
        return Err(ApiError::bad(
            "Action request should have exactly one action specified in body",
        ));
    };
    Ok(match name.as_str() {
        "reset-status" => ClusterAction::ResetStatus {
            force_delete: names_force_delete(value),
        },
        n if OTHER_CLUSTER_ACTIONS.contains(&n) => {
            ClusterAction::Refused(RefusedAction::NotSupported(name.clone()))
        }
        _ => ClusterAction::Refused(RefusedAction::Unknown(name.clone())),
    })
}

/// Trove's `'force_delete' in body['reset_status']` (Python `in`: a key of an object, an item of a
/// list, a substring of a string). Other values make Trove fail with a 500; here they name nothing.
pub fn names_force_delete(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key("force_delete"),
        Value::Array(a) => a.iter().any(|i| i == "force_delete"),
        Value::String(s) => s.contains("force_delete"),
        _ => false,
    }
}

/// Trove's policy check for a reset (`policies/instances.py`, `policies/clusters.py`): `rule`
/// (`instance:reset_status` or `cluster:reset-status`) is `rule:admin`. With `force_delete` Trove
/// checks `<kind>:force_delete` instead, `rule:admin_or_owner`, which the owner passes (the resource
/// was already found in the caller's scope).
pub fn authorize_reset(is_admin: bool, force_delete: bool, rule: &str) -> ApiResult<()> {
    if is_admin || force_delete {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "Policy doesn't allow {rule} to be performed."
    )))
}

/// Trove's `Instance.reset_status` on one live instance: task NONE and service status UNKNOWN (which
/// the API shows as ERROR), `updated_at` now, whatever they were (RESTART_REQUIRED included). An
/// instance without a service status row gets one. Call inside a transaction.
pub fn reset_instance(conn: &mut PgConnection, id: &str) -> QueryResult<()> {
    Instance::set_task(conn, id, InstanceTask::None)?;
    if ServiceStatusRow::set(conn, id, ServiceStatus::Unknown, true)? == 0 {
        diesel::insert_into(service_statuses::table)
            .values(&ServiceStatusRow {
                id: trove_common::db::new_id(),
                instance_id: id.to_owned(),
                status_id: ServiceStatus::Unknown.code(),
                status_description: ServiceStatus::Unknown.description().into(),
                updated_at: Some(trove_common::db::now()),
            })
            .execute(conn)?;
    }
    Ok(())
}

/// `reset_status` on an instance (Trove's `_action_reset_status`): 404 unless the caller may see
/// it, then the policy check (so a stranger learns nothing), then [`reset_instance`], in one
/// transaction. Allowed from any state, as in Trove since 9.0.0 (Pike allowed only BUILD and ERROR).
pub fn reset_status(
    conn: &mut PgConnection,
    ctx: &Context,
    id: &str,
    force_delete: bool,
) -> ApiResult<()> {
    let scope = ctx.instance_scope();
    conn.transaction(|c| {
        Instance::find(c, id, scope)?.ok_or_else(|| ApiError::resource_not_found(id))?;
        authorize_reset(ctx.is_admin, force_delete, "instance:reset_status")?;
        reset_instance(c, id)?;
        tracing::info!(instance.id = %id, "status reset: task NONE, service status UNKNOWN (ERROR)");
        Ok(())
    })
}

/// Cluster `reset-status` (Trove's `Cluster.reset_status`): task NONE, and every live member reset
/// as by [`reset_instance`], in one transaction. 404 `Cluster '<id>' cannot be found.` unless the
/// caller may see it, then the `cluster:reset-status` policy (admin; `force_delete` named in the
/// body: admin or owner).
pub fn reset_cluster(
    conn: &mut PgConnection,
    ctx: &Context,
    id: &str,
    force_delete: bool,
) -> ApiResult<()> {
    let tenant = (!ctx.is_admin).then_some(ctx.project_id.as_str());
    conn.transaction(|c| {
        Cluster::find(c, id, tenant)?
            .ok_or_else(|| ApiError::not_found(format!("Cluster '{id}' cannot be found.")))?;
        authorize_reset(ctx.is_admin, force_delete, "cluster:reset-status")?;
        Cluster::set_task(c, id, ClusterTask::None)?;
        let members = Instance::cluster_members(c, id)?;
        for m in &members {
            reset_instance(c, &m.id)?;
        }
        tracing::info!(cluster.id = %id, members = members.len(), "cluster status reset: task NONE, members ERROR");
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

    #[test]
    fn reset_status_bodies() {
        assert_eq!(
            parse(&json!({"reset_status": {}})).unwrap(),
            Action::ResetStatus {
                force_delete: false
            }
        );
        // Trove's `'force_delete' in body['reset_status']`, for each kind of value.
        for (v, force) in [
            (json!({"force_delete": true}), true),
            (json!({"force_delete": false}), true),
            (json!(["force_delete"]), true),
            (json!("do force_delete"), true),
            (json!({"other": 1}), false),
            (json!(null), false),
            (json!(5), false),
        ] {
            assert_eq!(
                parse(&json!({ "reset_status": v.clone() })).unwrap(),
                Action::ResetStatus {
                    force_delete: force
                },
                "{v}"
            );
        }
    }

    #[test]
    fn reset_needs_an_admin_unless_force_delete() {
        authorize_reset(true, false, "instance:reset_status").unwrap();
        authorize_reset(false, true, "instance:reset_status").unwrap();
        let e = authorize_reset(false, false, "instance:reset_status").unwrap_err();
        assert!(matches!(e, ApiError::Forbidden(_)));
        assert_eq!(
            e.to_string(),
            "Policy doesn't allow instance:reset_status to be performed."
        );
        assert_eq!(
            authorize_reset(false, false, "cluster:reset-status")
                .unwrap_err()
                .to_string(),
            "Policy doesn't allow cluster:reset-status to be performed."
        );
    }

    #[test]
    fn cluster_action_bodies() {
        assert_eq!(
            parse_cluster(&json!({"reset-status": {}})).unwrap(),
            ClusterAction::ResetStatus {
                force_delete: false
            }
        );
        assert_eq!(
            parse_cluster(&json!({"reset-status": {"force_delete": true}})).unwrap(),
            ClusterAction::ResetStatus { force_delete: true }
        );
        for body in [json!({}), json!(null), json!([1])] {
            assert_eq!(
                parse_cluster(&body).unwrap_err().to_string(),
                "Invalid request body."
            );
        }
        assert_eq!(
            parse_cluster(&json!({"reset-status": {}, "grow": []}))
                .unwrap_err()
                .to_string(),
            "Action request should have exactly one action specified in body"
        );
        let ClusterAction::Refused(grow) = parse_cluster(&json!({"grow": []})).unwrap() else {
            panic!("grow is refused");
        };
        let e = grow.error();
        assert!(matches!(e, ApiError::NotImplemented(_)));
        assert_eq!(e.to_string(), "The 'grow' action is not supported.");
        let ClusterAction::Refused(odd) = parse_cluster(&json!({"reboot": {}})).unwrap() else {
            panic!("reboot is refused");
        };
        let e = odd.error();
        assert!(matches!(e, ApiError::BadRequest(_)));
        assert_eq!(e.to_string(), "Action reboot not supported");
        // The instance action's underscore spelling is not a cluster action.
        assert!(matches!(
            parse_cluster(&json!({"reset_status": {}})).unwrap(),
            ClusterAction::Refused(RefusedAction::Unknown(_))
        ));
    }
}
