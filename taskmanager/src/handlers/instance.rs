//! `create_instance` and `delete_instance` (docs/messaging.md §6, "Instance create" and "Delete").
//!
//! Both may run again for the same instance (a redelivery after a crash, the reconciler's safety net),
//! so each step looks at the current state first: a running guest is not started twice, a deleted
//! instance is not deleted twice. Each takes the instance's lock ([`crate::InstanceLocks`]) so a create,
//! a delete and the reconciler never act on one guest at the same time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use diesel::{Connection as _, OptionalExtension as _};
use secrecy::{ExposeSecret as _, SecretString};
use trove_common::db::models::instance::{record_fault, PortAllocation};
use trove_common::db::models::{DatastoreVersion, Flavor, Instance};
use trove_common::db::DbError;
use trove_common::rpc::guest::{DeleteQueue, GuestMsg, Prepare, StopDb};
use trove_common::rpc::taskmanager::CreateInstance;
use trove_common::rpc::RpcContext;
use trove_common::status::InstanceTask;

use crate::broker_users::{new_password, BrokerUserError};
use crate::compute::{process, ComputeError, GuestSpec, ServerHandle, ServerState};
use crate::{guest, Ctx};

/// The block device Trove hands every guest for its data.
pub const DEVICE_PATH: &str = "/dev/vdb";

/// How long a guest told to stop (`stop_db`, `delete_queue`) gets to exit by itself before it is
/// signalled.
const GUEST_EXIT_GRACE: Duration = Duration::from_secs(3);

/// `create_instance`: start the guest, record it, declare its queue and cast `prepare`. Whether the
/// build then succeeds is the reconciler's business (it polls the service status); this handler does
/// not wait.
pub async fn handle_create_instance(
    ctx: &Ctx,
    rpc: &RpcContext,
    msg: CreateInstance,
) -> anyhow::Result<()> {
    let id = msg.instance_id.clone();
    let _guard = ctx.locks.lock(&id).await;
    let loaded = {
        let key = id.clone();
        ctx.db
            .run(move |c| -> Result<_, DbError> {
                let Some(inst) = Instance::find_any(c, &key)? else {
                    return Ok(None);
                };
                let version = DatastoreVersion::find(c, &inst.datastore_version_id).optional()?;
                let image_id = version.as_ref().and_then(|v| v.image_id.clone());
                let manager = version.map(|v| v.manager);
                let ram = Flavor::find(c, &inst.flavor_id)?.map(|f| f.ram);
                Ok(Some((inst, manager, image_id, ram)))
            })
            .await
            .with_context(|| format!("loading instance {id}"))?
    };
    let Some((inst, db_manager, image_id, db_ram)) = loaded else {
        tracing::warn!("create_instance for an instance that does not exist; nothing to build");
        return Ok(());
    };
    if inst.deleted {
        tracing::info!("instance was deleted before it was built; nothing to do");
        return Ok(());
    }
    if inst.task_id != InstanceTask::Building.code() {
        tracing::info!(task = %inst.task_description, "instance is not building; nothing to do");
        return Ok(());
    }
    let manager = Some(msg.datastore_manager.clone())
        .filter(|m| !m.is_empty())
        .or(db_manager);
    let Some(manager) = manager else {
        return fail_server(
            ctx,
            &inst,
            "the instance's datastore version has no manager".into(),
        )
        .await;
    };
    let key = match guest::instance_key(&ctx.settings, inst.encrypted_key.as_deref()) {
        Ok(key) => key,
        Err(e) => {
            return fail_server(
                ctx,
                &inst,
                format!("cannot open the instance's RPC key: {e}"),
            )
            .await
        }
    };

    // Declare the guest's queue and cast `prepare` before the guest starts: a cast to a queue that
    // does not exist yet is lost (and `mandatory` would bounce it), and the message waits in the
    // queue for the guest, which takes it as soon as it is up, while the driver is still watching
    // the new process for an early exit. A redelivered create casts it again; prepare is idempotent.
    // A prepare the broker loses anyway is sent again by the reconciler (`resend_prepare`).
    let memory_mb = Some(msg.flavor.ram)
        .filter(|r| *r > 0)
        .or(db_ram)
        .unwrap_or(0);
    send_prepare(ctx, rpc, &id, key.as_deref(), &msg, memory_mb, &manager).await?;

    if let Err(e) = ensure_guest(ctx, &inst, &manager, image_id.as_deref(), key.as_deref()).await? {
        return fail_compute(ctx, &inst, &e).await;
    }
    tracing::info!(datastore.manager = %manager, modules = msg.modules.len(), "prepare sent; guest started");
    ctx.wake_reconciler();
    Ok(())
}

/// Makes sure the instance's guest runs: starts it unless the driver already reports it running, then
/// records `compute_instance_id` and `server_status = ACTIVE`. Before a start the instance gets its
/// port ([`allocate_port`]; one it has is kept), its broker user ([`guest_transport_url`]) and the
/// guest its configuration. `image_id` is the datastore version's (a directory of server binaries for
/// the local driver). The outer error is worth a retry (the database, the management API out of
/// reach); the inner one means the build failed (the compute driver, the management API refusing).
pub(crate) async fn ensure_guest(
    ctx: &Ctx,
    inst: &Instance,
    manager: &str,
    image_id: Option<&str>,
    key: Option<&str>,
) -> anyhow::Result<Result<(), ComputeError>> {
    let launched: Option<ServerHandle> =
        if ctx.compute.status(&inst.id).await == ServerState::Active {
            None
        } else {
            let port = match allocate_port(ctx, &inst.id).await? {
                Ok(port) => port,
                Err(e) => return Ok(Err(e)),
            };
            let transport_url = match guest_transport_url(ctx, &inst.id).await {
                Ok(url) => url,
                Err(e) if e.is_transient() => {
                    return Err(anyhow::Error::new(e).context("writing the guest's broker user"))
                }
                Err(e) => return Ok(Err(ComputeError::BrokerCredentials(e.to_string()))),
            };
            let spec = GuestSpec {
                instance_id: inst.id.clone(),
                datastore_manager: manager.to_owned(),
                instance_key: key.map(|k| SecretString::from(k.to_owned())),
                transport_url,
                bind_host: inst
                    .address
                    .clone()
                    .unwrap_or_else(|| ctx.settings.compute.instance_bind_host.clone()),
                port,
                image_dir: image_id
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(PathBuf::from),
            };
            match ctx.compute.launch(&spec).await {
                Ok(handle) => Some(handle),
                Err(e) => return Ok(Err(e)),
            }
        };
    let recorded =
        inst.compute_instance_id.is_some() && inst.server_status.as_deref() == Some("ACTIVE");
    if launched.is_some() || !recorded {
        let server_id = launched
            .map(|h| h.server_id)
            .or_else(|| inst.compute_instance_id.clone())
            .unwrap_or_else(|| inst.id.clone());
        let id = inst.id.clone();
        ctx.db
            .run(move |c| {
                Instance::set_server(
                    c,
                    &id,
                    Some(&server_id),
                    ServerState::Active.server_status(),
                )
                .map_err(DbError::from)
            })
            .await?;
    }
    Ok(Ok(()))
}

/// The `transport_url` the instance's guest is started with. With `guest_broker_credentials =
/// per_instance`, its own broker user is written first (created, or updated: idempotent), with the
/// password of its existing `guest.conf` when that is already this user's, so a relaunched guest and
/// anything still connected keep working, or else a new random one. With `shared`, the taskmanager's.
pub(crate) async fn guest_transport_url(
    ctx: &Ctx,
    instance_id: &str,
) -> Result<SecretString, BrokerUserError> {
    let Some(users) = &ctx.broker_users else {
        return Ok(SecretString::from(
            ctx.settings.default.transport_url.clone(),
        ));
    };
    let password = ctx
        .compute
        .guest_transport_url(instance_id)
        .and_then(|url| users.password_in(instance_id, url.expose_secret()))
        .unwrap_or_else(new_password);
    users.ensure(instance_id, &password).await?;
    Ok(users.guest_transport_url(instance_id, &password))
}

/// The instance's port on this host (`[DEFAULT] host`): the one it has, or the lowest free one of
/// `[compute] port_range_start..=port_range_end` that nothing else on the host listens on (both the
/// port and its Redis Cluster bus port, probed by binding them on `[compute] instance_bind_host`).
pub(crate) async fn allocate_port(
    ctx: &Ctx,
    id: &str,
) -> Result<Result<u16, ComputeError>, DbError> {
    let c = &ctx.settings.compute;
    let (start, end) = (c.port_range_start, c.port_range_end);
    let host = ctx.settings.default.host.clone();
    let bind = c.instance_bind_host.clone();
    let (key, h) = (id.to_owned(), host.clone());
    let allocation = ctx
        .db
        .run(move |conn| {
            Instance::allocate_port(conn, &key, &h, &bind, start..=end, |p| {
                process::ports_free(&bind, p)
            })
            .map_err(DbError::from)
        })
        .await?;
    Ok(match allocation {
        PortAllocation::Kept(port) => Ok(port),
        PortAllocation::Allocated(port) => {
            tracing::info!(instance.id = %id, port, host = %host, "port allocated");
            Ok(port)
        }
        PortAllocation::NoFreePort => Err(ComputeError::NoFreePort { start, end, host }),
        PortAllocation::Gone => Err(ComputeError::Gone(id.to_owned())),
    })
}

/// [`fail_server`] for a compute error: a missing port is its own fault message, anything else the
/// generic one with the error as details.
pub(crate) async fn fail_compute(
    ctx: &Ctx,
    inst: &Instance,
    e: &ComputeError,
) -> anyhow::Result<()> {
    match e {
        ComputeError::NoFreePort { .. } => {
            fail_server_with(ctx, inst, e.to_string(), format!("{e}: every port of the range is held by a live instance of this host or by another program (it cannot be bound). Delete instances or widen [compute] port_range_start/port_range_end.")).await
        }
        _ => fail_server(ctx, inst, e.to_string()).await,
    }
}

/// The guest could not be started: server ERROR, task BUILDING_ERROR_SERVER and a fault, unless the
/// instance has moved on meanwhile (a delete). The message is done either way.
pub(crate) async fn fail_server(ctx: &Ctx, inst: &Instance, details: String) -> anyhow::Result<()> {
    let message = format!("Error creating the guest for instance {}.", inst.id);
    fail_server_with(ctx, inst, message, details).await
}

/// [`fail_server`] with the fault's message given.
pub(crate) async fn fail_server_with(
    ctx: &Ctx,
    inst: &Instance,
    message: String,
    details: String,
) -> anyhow::Result<()> {
    tracing::error!(error = %details, "cannot start the guest; the build failed");
    let id = inst.id.clone();
    let server_id = inst.compute_instance_id.clone();
    ctx.db
        .run(move |c| {
            c.transaction::<_, DbError, _>(|c| {
                if Instance::set_task_if(
                    c,
                    &id,
                    InstanceTask::Building,
                    InstanceTask::BuildingErrorServer,
                )? == 1
                {
                    Instance::set_server(c, &id, server_id.as_deref(), "ERROR")?;
                    record_fault(c, &id, &message, &details)?;
                }
                Ok(())
            })
        })
        .await
        .with_context(|| format!("recording the build failure of instance {}", inst.id))
}

/// Declares the guest's queue (idempotent), then casts it `prepare`, built by [`prepare_args`] from
/// `msg` (the create message, or [`create_args_from_rows`] for a re-send), sealed with the instance
/// key `key` when there is one.
pub(crate) async fn send_prepare(
    ctx: &Ctx,
    rpc: &RpcContext,
    instance_id: &str,
    key: Option<&str>,
    msg: &CreateInstance,
    memory_mb: i32,
    manager: &str,
) -> anyhow::Result<()> {
    let topic = ctx.broker.names().guest(instance_id);
    ctx.broker
        .declare_topic_queue(&topic)
        .await
        .with_context(|| format!("declaring {topic}"))?;
    let prepare = prepare_args(msg, memory_mb, manager);
    let keys = guest::keyring(key);
    guest::cast(
        ctx,
        instance_id,
        keys.as_ref(),
        rpc,
        &GuestMsg::Prepare(Box::new(prepare)),
    )
    .await
    .context("casting prepare")
}

/// What `prepare` is rebuilt from when it is sent again: the `create_instance` arguments as the api
/// built them (`api/src/service/instances.rs`, `insert_instance`), read back from the rows, the
/// flavor's memory, and the modules whose md5 the instance's rows do not hold yet.
#[derive(Clone, Debug)]
pub struct RebuiltCreate {
    pub msg: CreateInstance,
    pub memory_mb: i32,
    /// `(module_id, md5)` of modules updated since the instance's rows were written: the guest gets
    /// them as they are now, so record that once it is sent.
    pub changed_modules: Vec<(String, String)>,
}

/// Rebuilds the `create_instance` arguments of a building instance from the database, so `prepare`
/// can be sent again whenever the first one was lost. Everything the api puts in the message is in
/// the rows: the flavor (its row, even if deleted since), the datastore version (manager, packages,
/// name), the cluster membership, and the modules (the instance's live `instance_modules` rows, each
/// module as it is now, its contents decrypted with the module keys; a module deleted since is left
/// out). `overrides` is the api's constant `{}`; the api never sends databases, users nor a root
/// password at create, so there are none to rebuild. `None`: the datastore version is gone.
pub fn create_args_from_rows(
    c: &mut diesel::PgConnection,
    settings: &trove_common::config::Settings,
    inst: &Instance,
) -> anyhow::Result<Option<RebuiltCreate>> {
    use diesel::{ExpressionMethods as _, QueryDsl as _, RunQueryDsl as _, SelectableHelper as _};
    use trove_common::db::models::{InstanceModule, Module};
    use trove_common::db::schema::{flavors, modules};
    use trove_common::rpc::guest::ModuleEntry;
    use trove_common::rpc::taskmanager::{ClusterConfig, FlavorInfo};

    let Some(version) = DatastoreVersion::find(c, &inst.datastore_version_id).optional()? else {
        return Ok(None);
    };
    let flavor: Option<Flavor> = flavors::table
        .find(&inst.flavor_id)
        .select(Flavor::as_select())
        .first(c)
        .optional()?;
    let keys = trove_common::rpc::keys::module_keyring(settings);
    let mut entries = Vec::new();
    let mut changed_modules = Vec::new();
    for row in InstanceModule::for_instance(c, &inst.id)? {
        let module: Option<Module> = modules::table
            .find(&row.module_id)
            .filter(modules::deleted.eq(false))
            .select(Module::as_select())
            .first(c)
            .optional()?;
        let Some(module) = module else { continue };
        let contents = keys
            .decrypt_string(&module.contents)
            .map_err(|e| anyhow::anyhow!("module {} contents: {e}", module.id))?;
        if module.md5 != row.md5 {
            changed_modules.push((module.id.clone(), module.md5.clone()));
        }
        entries.push(ModuleEntry {
            module: module.guest_payload(c, Some(contents))?,
        });
    }
    let flavor_info = flavor
        .as_ref()
        .map(Flavor::info)
        .unwrap_or_else(|| FlavorInfo {
            id: inst.flavor_id.clone(),
            ..FlavorInfo::default()
        });
    let memory_mb = flavor_info.ram;
    let msg = CreateInstance {
        instance_id: inst.id.clone(),
        name: inst.name.clone(),
        flavor: flavor_info,
        datastore_manager: version.manager.clone(),
        packages: version.packages.clone(),
        volume_size: inst.volume_size,
        overrides: serde_json::json!({}),
        cluster_config: inst.cluster_id.clone().map(|id| ClusterConfig {
            id,
            instance_type: inst
                .instance_type
                .clone()
                .unwrap_or_else(|| "member".into()),
        }),
        modules: entries,
        ds_version: Some(version.name.clone()),
        ..CreateInstance::default()
    };
    Ok(Some(RebuiltCreate {
        msg,
        memory_mb,
        changed_modules,
    }))
}

/// The `prepare` arguments for a create message.
pub fn prepare_args(msg: &CreateInstance, memory_mb: i32, manager: &str) -> Prepare {
    Prepare {
        memory_mb,
        packages: split_packages(msg.packages.as_deref()),
        databases: msg.databases.clone(),
        users: msg.users.clone(),
        device_path: Some(DEVICE_PATH.to_owned()),
        mount_point: Some(mount_point(manager)),
        // Backups are not supported: nothing to restore from.
        backup_info: None,
        config_contents: None,
        root_password: msg.root_password.clone(),
        overrides: Some(msg.overrides.clone()).filter(|o| !o.is_null()),
        cluster_config: msg
            .cluster_config
            .as_ref()
            .map(|c| serde_json::to_value(c).expect("cluster_config serialises")),
        snapshot: None,
        modules: msg.modules.clone(),
        ds_version: msg.ds_version.clone(),
    }
}

/// Trove's per-datastore `mount_point` defaults.
pub fn mount_point(manager: &str) -> String {
    match manager {
        "mysql" | "mariadb" | "percona" | "pxc" => "/var/lib/mysql".into(),
        "db2" => "/home/db2inst1/db2inst1".into(),
        other => format!("/var/lib/{other}"),
    }
}

/// `datastore_versions.packages` is one comma (or space) separated string; `prepare` takes a list.
fn split_packages(packages: Option<&str>) -> Vec<String> {
    packages
        .unwrap_or_default()
        .split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `delete_instance`: stop the guest, delete its queue and its broker user, then mark the instance
/// deleted and retire its `instance_modules` rows in one transaction. Idempotent.
pub async fn handle_delete_instance(
    ctx: &Ctx,
    rpc: &RpcContext,
    instance_id: &str,
) -> anyhow::Result<()> {
    let _guard = ctx.locks.lock(instance_id).await;
    delete_locked(ctx, rpc, instance_id).await
}

/// The instance row, deleted or not (`None` when there is none).
pub(crate) async fn find_any(ctx: &Ctx, instance_id: &str) -> anyhow::Result<Option<Instance>> {
    let id = instance_id.to_owned();
    ctx.db
        .run(move |c| Instance::find_any(c, &id).map_err(DbError::from))
        .await
        .with_context(|| format!("loading instance {instance_id}"))
}

/// The delete path; the caller holds the instance's lock.
pub(crate) async fn delete_locked(
    ctx: &Ctx,
    rpc: &RpcContext,
    instance_id: &str,
) -> anyhow::Result<()> {
    let Some(inst) = find_any(ctx, instance_id).await? else {
        tracing::warn!(instance.id = %instance_id, "delete_instance for an instance that does not exist");
        return Ok(());
    };

    // Ask the guest to stop its datastore and leave; whatever it does, the process is stopped below.
    if ctx.compute.status(instance_id).await == ServerState::Active {
        let keys = match guest::instance_key(&ctx.settings, inst.encrypted_key.as_deref()) {
            Ok(key) => guest::keyring(key.as_deref()),
            Err(e) => {
                tracing::warn!(instance.id = %instance_id, error = %e, "cannot open the instance key; stopping the guest without telling it");
                None
            }
        };
        for msg in [
            GuestMsg::StopDb(StopDb {
                do_not_start_on_reboot: true,
            }),
            GuestMsg::DeleteQueue(DeleteQueue {}),
        ] {
            if let Err(e) = guest::cast(ctx, instance_id, keys.as_ref(), rpc, &msg).await {
                tracing::warn!(instance.id = %instance_id, rpc.method = msg.method(), error = %e, "guest did not take the cast; stopping it anyway");
            }
        }
        let deadline = tokio::time::Instant::now() + GUEST_EXIT_GRACE;
        while ctx.compute.status(instance_id).await == ServerState::Active
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if let Err(e) = ctx.compute.stop(instance_id).await {
        // The destroy below kills it (and whatever else runs for the instance) anyway.
        tracing::warn!(instance.id = %instance_id, error = %e, "the guest did not stop; destroying it");
    }
    // Like a VM's delete: nothing of the instance may outlive it, neither its datastore server (even
    // one the guest no longer watches) nor its state directory (guest.conf holds the RPC key).
    ctx.compute
        .destroy(instance_id)
        .await
        .with_context(|| format!("destroying the guest of instance {instance_id}"))?;
    let topic = ctx.broker.names().guest(instance_id);
    ctx.broker
        .delete_queue(&topic)
        .await
        .with_context(|| format!("deleting {topic}"))?;
    // Also for a build that failed, and for one that never got as far as creating it (a user that does
    // not exist is fine). The row is only marked deleted once the user is gone, so a management API
    // out of reach leaves the instance DELETING, and the delete is retried.
    if let Some(users) = &ctx.broker_users {
        users
            .delete(instance_id)
            .await
            .with_context(|| format!("removing the broker user of instance {instance_id}"))?;
    }

    if !inst.deleted {
        let id = instance_id.to_owned();
        ctx.db
            .run(move |c| {
                c.transaction::<_, DbError, _>(|c| {
                    Instance::mark_deleted(c, &id)?;
                    Instance::retire_modules(c, &id)?;
                    Ok(())
                })
            })
            .await
            .with_context(|| format!("marking instance {instance_id} deleted"))?;
        tracing::info!(instance.id = %instance_id, "instance deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use trove_common::rpc::guest::{ModuleEntry, ModulePayload};
    use trove_common::rpc::taskmanager::{ClusterConfig, FlavorInfo};

    #[test]
    fn prepare_carries_the_create_arguments() {
        let msg = CreateInstance {
            instance_id: "i1".into(),
            name: "n".into(),
            flavor: FlavorInfo {
                id: "15".into(),
                ram: 1024,
                ..Default::default()
            },
            datastore_manager: "redis".into(),
            packages: Some("redis-server, redis-tools".into()),
            overrides: serde_json::Value::Null,
            cluster_config: Some(ClusterConfig {
                id: "c1".into(),
                instance_type: "member".into(),
            }),
            modules: vec![ModuleEntry {
                module: ModulePayload {
                    id: "m1".into(),
                    md5: "x".into(),
                    ..Default::default()
                },
            }],
            ds_version: Some("3.2.6".into()),
            ..Default::default()
        };
        let p = prepare_args(&msg, 1024, "redis");
        assert_eq!(p.memory_mb, 1024);
        assert_eq!(p.packages, ["redis-server", "redis-tools"]);
        assert_eq!(p.device_path.as_deref(), Some("/dev/vdb"));
        assert_eq!(p.mount_point.as_deref(), Some("/var/lib/redis"));
        assert_eq!(
            p.cluster_config,
            Some(json!({"id": "c1", "instance_type": "member"}))
        );
        assert_eq!(p.overrides, None);
        assert_eq!(p.modules.len(), 1);
        assert_eq!(p.ds_version.as_deref(), Some("3.2.6"));
        let (method, args) = trove_common::rpc::to_method_args(&GuestMsg::Prepare(Box::new(p)));
        assert_eq!(method, "prepare");
        assert_eq!(args["modules"][0]["module"]["id"], "m1");
    }

    #[test]
    fn mount_points_follow_trove() {
        assert_eq!(mount_point("mysql"), "/var/lib/mysql");
        assert_eq!(mount_point("percona"), "/var/lib/mysql");
        assert_eq!(mount_point("redis"), "/var/lib/redis");
        assert_eq!(mount_point("postgresql"), "/var/lib/postgresql");
        assert_eq!(split_packages(None), Vec::<String>::new());
    }
}
