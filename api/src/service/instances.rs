//! Instance and cluster creation and deletion: everything written in one transaction together with the
//! outbox messages that announce it (docs/module-semantics.md §13, docs/messaging.md §6).

use chrono::NaiveDateTime;
use diesel::pg::PgConnection;
use diesel::Connection;
use serde_json::{json, Value};
use trove_common::config::Settings;
use trove_common::crypto::Keyring;
use trove_common::db::models::instance::Scope;
use trove_common::db::models::module::Caller;
use trove_common::db::models::{
    Cluster, Datastore, DatastoreVersion, Flavor, Instance, InstanceModule, Module, NewInstance,
    OutboxMessage, ServiceStatusRow,
};
use trove_common::db::{new_id, now};
use trove_common::module::check_datastore;
use trove_common::rpc::guest::ModuleEntry;
use trove_common::rpc::taskmanager::{
    ClusterConfig, CreateInstance, DeleteInstance, TaskManagerMsg,
};
use trove_common::rpc::{self, keys, RpcContext};
use trove_common::status::{ClusterTask, InstanceTask};

use super::catalog::Catalog;
use crate::error::{ApiError, ApiResult};
use crate::views::modules::payload;

/// Queues a cast to the taskmanager in the caller's transaction.
pub fn enqueue_taskmanager(
    conn: &mut PgConnection,
    settings: &Settings,
    topic: &str,
    msg: &TaskManagerMsg,
    ctx: &RpcContext,
) -> diesel::QueryResult<()> {
    let (method, args) = rpc::to_method_args(msg);
    let body = rpc::encode_request(
        &method,
        args,
        ctx,
        "1.0",
        None,
        &keys::taskmanager_security(settings),
    );
    OutboxMessage::push(conn, topic, &method, &body, &ctx.request_id)
}

/// One instance to create (a single instance, or a cluster member).
pub struct InstanceSpec {
    pub name: String,
    pub flavor: Flavor,
    pub volume_size: i32,
    pub module_ids: Vec<String>,
    pub cluster: Option<String>,
}

/// The modules an instance gets: the requested ones plus the auto-apply ones, validated (§13).
pub fn modules_for(
    conn: &mut PgConnection,
    caller: Caller<'_>,
    ids: &[String],
    ds: &Datastore,
    ver: &DatastoreVersion,
) -> ApiResult<Vec<Module>> {
    let mut mods = Module::load_for_apply(conn, ids, caller)?;
    for auto in Module::auto_apply_for(conn, caller.project_id, &ds.id, &ver.id)? {
        if !mods.iter().any(|m| m.id == auto.id) {
            mods.push(auto);
        }
    }
    for m in &mods {
        check_datastore(
            &m.name,
            m.datastore_id.as_deref(),
            m.datastore_version_id.as_deref(),
            &ds.id,
            &ver.id,
        )
        .map_err(|e| ApiError::bad(format!("The module is invalid: {e}")))?;
    }
    Ok(mods)
}

/// Decrypts each module into the payload guests receive.
pub fn payloads(mods: &[Module], cat: &Catalog, keys: &Keyring) -> ApiResult<Vec<ModuleEntry>> {
    mods.iter()
        .map(|m| {
            let contents = keys.decrypt_string(&m.contents).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("module {} contents: {e}", m.id))
            })?;
            Ok(ModuleEntry {
                module: payload(m, cat, Some(contents)),
            })
        })
        .collect()
}

/// Inserts one instance (BUILDING, NEW, a fresh RPC key), records its modules and queues
/// `create_instance`. The instance holds its share of the tenant's quota usage (`quota_held`), so
/// the caller must have reserved it ([`super::quotas::reserve`]) in the same transaction.
#[allow(clippy::too_many_arguments)]
pub fn insert_instance(
    conn: &mut PgConnection,
    settings: &Settings,
    ctx: &RpcContext,
    tenant: &str,
    spec: &InstanceSpec,
    ds: &Datastore,
    ver: &DatastoreVersion,
    mods: &[Module],
    entries: Vec<ModuleEntry>,
    topic: &str,
) -> ApiResult<Instance> {
    let id = new_id();
    let instance = Instance {
        volume_size: Some(spec.volume_size),
        cluster_id: spec.cluster.clone(),
        instance_type: spec.cluster.as_ref().map(|_| "member".into()),
        encrypted_key: keys::seal_instance_key(settings, &trove_common::crypto::random_rpc_key()),
        quota_held: true,
        quota_ram: spec.flavor.ram,
        ..Instance::building(
            NewInstance {
                id: &id,
                name: &spec.name,
                tenant_id: tenant,
                flavor_id: &spec.flavor.id,
                datastore_version_id: &ver.id,
                region_id: &settings.default.region,
            },
            now(),
        )
    };
    Instance::insert(conn, &instance)?;
    for m in mods {
        InstanceModule::record(conn, &instance.id, &m.id, &m.md5)?;
    }
    let msg = TaskManagerMsg::CreateInstance(Box::new(CreateInstance {
        instance_id: instance.id.clone(),
        name: instance.name.clone(),
        flavor: spec.flavor.info(),
        datastore_manager: ver.manager.clone(),
        packages: ver.packages.clone(),
        volume_size: Some(spec.volume_size),
        overrides: json!({}),
        cluster_config: spec.cluster.as_ref().map(|c| ClusterConfig {
            id: c.clone(),
            instance_type: "member".into(),
        }),
        modules: entries,
        ds_version: Some(ver.name.clone()),
        ..Default::default()
    }));
    enqueue_taskmanager(conn, settings, topic, &msg, ctx)?;
    let _ = ds;
    Ok(instance)
}

/// Reads `flavorRef` (string, integer, or an href whose last segment is the id).
pub fn flavor_ref(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => s
            .rsplit('/')
            .next()
            .map(str::to_owned)
            .filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// Reads `volume.size` (an integer ≥ 1, or a string of one).
pub fn volume_size(v: Option<&Value>) -> Option<Option<i64>> {
    let size = v?.get("size")?;
    Some(match size {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// Checks the size limit (413) and returns the size.
pub fn check_volume(settings: &Settings, size: Option<Option<i64>>) -> ApiResult<i32> {
    let Some(size) = size else {
        return Err(ApiError::bad("Volume size was not specified."));
    };
    let Some(size) = size.filter(|s| *s >= 1) else {
        return Err(ApiError::bad("Volume size was not specified."));
    };
    let max = i64::from(settings.default.max_accepted_volume_size);
    if size > max {
        return Err(ApiError::OverLimit(format!(
            "Volume 'size' cannot exceed maximum of {max} GB, {size} cannot be accepted."
        )));
    }
    Ok(size as i32)
}

/// Whether an instance in BUILD counts as having lost its guest, so that it may be deleted:
/// `grace_secs` (`build_delete_grace`; 0 never) have passed since the guest's last status report
/// (`service_statuses.updated_at`, which every heartbeat moves), or, when it never reported, since
/// the instance was created (the row is written with `updated_at = created`). Pure.
pub fn guest_gone(
    created: NaiveDateTime,
    last_report: Option<NaiveDateTime>,
    now: NaiveDateTime,
    grace_secs: u64,
) -> bool {
    if grace_secs == 0 {
        return false;
    }
    let since = last_report.map_or(created, |r| r.max(created));
    let grace = chrono::Duration::seconds(i64::try_from(grace_secs).unwrap_or(i64::MAX / 1000));
    now - since > grace
}

/// Trove's refusal to delete an instance whose status is BUILD (422 `Instance <id> is not ready.
/// (Status is BUILD).`), unless its guest is gone ([`guest_gone`]).
pub fn check_deletable(
    settings: &Settings,
    inst: &Instance,
    status: &str,
    last_report: Option<NaiveDateTime>,
) -> ApiResult<()> {
    if status != "BUILD" {
        return Ok(());
    }
    let grace = settings.default.build_delete_grace;
    if guest_gone(inst.created, last_report, now(), grace) {
        tracing::info!(
            instance.id = %inst.id,
            build_delete_grace = grace,
            "deleting an instance in BUILD whose guest has not reported within the grace period"
        );
        return Ok(());
    }
    Err(ApiError::Unprocessable(format!(
        "Instance {} is not ready. (Status is {status}).",
        inst.id
    )))
}

/// `DELETE /instances/{id}` (docs/rest-api.md): checks, task DELETING, modules retired, cast queued.
pub fn delete_instance(
    conn: &mut PgConnection,
    settings: &Settings,
    ctx: &RpcContext,
    scope: Scope<'_>,
    id: &str,
    topic: &str,
    status: impl Fn(&mut PgConnection, &Instance) -> ApiResult<&'static str>,
) -> ApiResult<()> {
    conn.transaction(|conn| {
        let inst =
            Instance::find(conn, id, scope)?.ok_or_else(|| ApiError::resource_not_found(id))?;
        let st = status(conn, &inst)?;
        if st == "BUILD" {
            let last_report = ServiceStatusRow::for_instance(conn, id)?.and_then(|s| s.updated_at);
            check_deletable(settings, &inst, st, last_report)?;
        }
        if let Some(cid) = &inst.cluster_id {
            let deleting = Cluster::find(conn, cid, None)?
                .is_some_and(|c| c.task_id == ClusterTask::Deleting.code());
            if !deleting {
                return Err(ApiError::NotImplemented(
                    "Operation not supported for instances that are part of a cluster.".into(),
                ));
            }
        }
        Instance::set_task(conn, id, InstanceTask::Deleting)?;
        Instance::retire_modules(conn, id)?;
        enqueue_taskmanager(
            conn,
            settings,
            topic,
            &TaskManagerMsg::DeleteInstance(DeleteInstance {
                instance_id: id.into(),
            }),
            ctx,
        )?;
        Ok(())
    })
}

/// A cluster row in BUILDING.
pub fn new_cluster(name: &str, tenant: &str, ver: &DatastoreVersion) -> Cluster {
    let now = now();
    Cluster {
        id: new_id(),
        created: now,
        updated: now,
        name: name.into(),
        task_id: ClusterTask::Building.code(),
        tenant_id: tenant.into(),
        datastore_version_id: ver.id.clone(),
        configuration_id: None,
        deleted: false,
        deleted_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0)
            .unwrap()
            .naive_utc()
    }

    #[test]
    fn a_build_is_deletable_once_its_guest_is_silent_for_the_grace() {
        let created = at(0);
        // Never reported (the row's updated_at is the creation time, or missing).
        assert!(!guest_gone(created, Some(created), at(300), 300));
        assert!(guest_gone(created, Some(created), at(301), 300));
        assert!(guest_gone(created, None, at(301), 300));
        assert!(!guest_gone(created, None, at(299), 300));
        // Reported, then went silent: counted from the last report.
        assert!(!guest_gone(created, Some(at(1000)), at(1200), 300));
        assert!(guest_gone(created, Some(at(1000)), at(1301), 300));
        // A report stamped before the creation (clock skew) counts from the creation.
        assert!(!guest_gone(created, Some(at(-1000)), at(100), 300));
        // 0: Trove's rule, never.
        assert!(!guest_gone(created, None, at(1_000_000), 0));
        // An absurd grace does not overflow.
        assert!(!guest_gone(created, None, at(1_000_000), u64::MAX));
    }

    #[test]
    fn only_build_is_checked_and_the_refusal_is_troves() {
        let mut settings = Settings::default();
        settings.default.build_delete_grace = 300;
        let now = now();
        let mut inst = trove_instance("i1", now);
        check_deletable(&settings, &inst, "ACTIVE", Some(now)).unwrap();
        check_deletable(&settings, &inst, "ERROR", Some(now)).unwrap();
        let e = check_deletable(&settings, &inst, "BUILD", Some(now)).unwrap_err();
        assert!(matches!(e, ApiError::Unprocessable(_)));
        assert_eq!(
            e.to_string(),
            "Instance i1 is not ready. (Status is BUILD)."
        );

        let old = now - chrono::Duration::seconds(301);
        inst.created = old;
        check_deletable(&settings, &inst, "BUILD", Some(old)).unwrap();
        settings.default.build_delete_grace = 0;
        assert!(check_deletable(&settings, &inst, "BUILD", Some(old)).is_err());
    }

    #[test]
    fn the_grace_is_an_oslo_option() {
        assert_eq!(Settings::default().default.build_delete_grace, 300);
        let path = std::env::temp_dir().join(format!("trove-grace-{}.conf", uuid::Uuid::new_v4()));
        std::fs::write(&path, "[DEFAULT]\nbuild_delete_grace = 7\n").unwrap();
        let loaded = trove_common::config::load(std::slice::from_ref(&path));
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded.unwrap().default.build_delete_grace, 7);
    }

    fn trove_instance(id: &str, created: NaiveDateTime) -> Instance {
        Instance {
            name: "n".into(),
            volume_size: Some(1),
            ..Instance::building(
                NewInstance {
                    id,
                    name: "n",
                    tenant_id: "t1",
                    flavor_id: "15",
                    datastore_version_id: "v1",
                    region_id: "RegionOne",
                },
                created,
            )
        }
    }
}
