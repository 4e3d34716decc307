//! Instances and their service statuses.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::{
    datastore_versions, datastores, instance_faults, instance_modules, instances, service_statuses,
};
use crate::status::{InstanceTask, ServiceStatus};

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = instances)]
pub struct Instance {
    pub id: String,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub name: String,
    pub hostname: Option<String>,
    pub compute_instance_id: Option<String>,
    pub server_status: Option<String>,
    pub task_id: i32,
    pub task_description: String,
    pub task_start_time: Option<NaiveDateTime>,
    pub volume_id: Option<String>,
    pub volume_size: Option<i32>,
    pub flavor_id: String,
    pub tenant_id: String,
    pub datastore_version_id: String,
    pub cluster_id: Option<String>,
    pub shard_id: Option<String>,
    #[diesel(column_name = type_)]
    pub instance_type: Option<String>,
    pub region_id: String,
    pub encrypted_key: Option<String>,
    pub configuration_id: Option<String>,
    pub slave_of_id: Option<String>,
    pub deleted: bool,
    pub deleted_at: Option<NaiveDateTime>,
    /// The `[DEFAULT] host` of the taskmanager whose compute driver runs the guest (None: a row from
    /// before hosts were recorded, which the taskmanager treats as its own).
    pub compute_host: Option<String>,
    /// The address the instance's database server listens on (the API's `ip`).
    pub address: Option<String>,
    /// The port it listens on, unique among the live instances of its host; kept while it lives.
    pub port: Option<i32>,
    /// Whether the instance holds its share of its tenant's quota usage: set by the create that
    /// reserved it, cleared by the database when the usage is given back (the row is marked deleted
    /// or enters a BUILDING_ERROR task; see [`crate::db::models::quota`]).
    pub quota_held: bool,
    /// The RAM (MB) its create counted against the tenant's `ram` usage, given back with it.
    pub quota_ram: i32,
}

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = service_statuses)]
pub struct ServiceStatusRow {
    pub id: String,
    pub instance_id: String,
    pub status_id: i32,
    pub status_description: String,
    pub updated_at: Option<NaiveDateTime>,
}

impl ServiceStatusRow {
    pub fn status(&self) -> Option<ServiceStatus> {
        ServiceStatus::from_code(self.status_id)
    }
}

/// An instance with everything its views need.
#[derive(Clone, Debug)]
pub struct InstanceDetail {
    pub instance: Instance,
    pub service: Option<ServiceStatusRow>,
    pub datastore_name: String,
    pub datastore_id: String,
    pub version_name: String,
    pub manager: String,
    pub fault: Option<(String, String, NaiveDateTime)>,
}

/// Which instances a query may see.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Only this tenant's.
    Tenant(&'a str),
    /// Any tenant (admins, services).
    Any,
}

/// What a new instance row is made of: the request's choices.
#[derive(Clone, Copy, Debug)]
pub struct NewInstance<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub tenant_id: &'a str,
    pub flavor_id: &'a str,
    pub datastore_version_id: &'a str,
    pub region_id: &'a str,
}

impl Instance {
    /// A new live instance as the api inserts it at create: server BUILD, task BUILDING since `now`,
    /// no volume, cluster, key, host or address yet, and no quota held. Callers set what the request
    /// carries.
    pub fn building(new: NewInstance<'_>, now: NaiveDateTime) -> Self {
        Self {
            id: new.id.into(),
            created: now,
            updated: now,
            name: new.name.into(),
            hostname: None,
            compute_instance_id: None,
            server_status: Some("BUILD".into()),
            task_id: InstanceTask::Building.code(),
            task_description: InstanceTask::Building.description().into(),
            task_start_time: Some(now),
            volume_id: None,
            volume_size: None,
            flavor_id: new.flavor_id.into(),
            tenant_id: new.tenant_id.into(),
            datastore_version_id: new.datastore_version_id.into(),
            cluster_id: None,
            shard_id: None,
            instance_type: None,
            region_id: new.region_id.into(),
            encrypted_key: None,
            configuration_id: None,
            slave_of_id: None,
            deleted: false,
            deleted_at: None,
            compute_host: None,
            address: None,
            port: None,
            quota_held: false,
            quota_ram: 0,
        }
    }

    /// A live instance, scoped.
    pub fn find(conn: &mut PgConnection, id: &str, scope: Scope<'_>) -> QueryResult<Option<Self>> {
        let mut q = instances::table
            .filter(instances::id.eq(id))
            .filter(diesel::dsl::not(instances::deleted))
            .into_boxed();
        if let Scope::Tenant(t) = scope {
            q = q.filter(instances::tenant_id.eq(t.to_owned()));
        }
        q.select(Self::as_select()).first(conn).optional()
    }

    /// The live instances among `ids`, scoped, by id: [`Instance::find`] for many ids in a few
    /// queries (a fleet-wide reapply looks up thousands).
    pub fn find_many(
        conn: &mut PgConnection,
        ids: &[&str],
        scope: Scope<'_>,
    ) -> QueryResult<std::collections::HashMap<String, Self>> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        // One array parameter per query; chunks keep each statement and its result moderate.
        for chunk in ids.chunks(5000) {
            let mut q = instances::table
                .filter(instances::id.eq_any(chunk))
                .filter(diesel::dsl::not(instances::deleted))
                .into_boxed();
            if let Scope::Tenant(t) = scope {
                q = q.filter(instances::tenant_id.eq(t.to_owned()));
            }
            for i in q.select(Self::as_select()).load::<Self>(conn)? {
                found.insert(i.id.clone(), i);
            }
        }
        Ok(found)
    }

    /// Any instance row, deleted or not (services resuming work).
    pub fn find_any(conn: &mut PgConnection, id: &str) -> QueryResult<Option<Self>> {
        instances::table
            .find(id)
            .select(Self::as_select())
            .first(conn)
            .optional()
    }

    /// Inserts an instance with its NEW service status.
    pub fn insert(conn: &mut PgConnection, i: &Self) -> QueryResult<()> {
        diesel::insert_into(instances::table)
            .values(i)
            .execute(conn)?;
        diesel::insert_into(service_statuses::table)
            .values(&ServiceStatusRow {
                id: crate::db::new_id(),
                instance_id: i.id.clone(),
                status_id: ServiceStatus::New.code(),
                status_description: ServiceStatus::New.description().into(),
                updated_at: Some(i.created),
            })
            .execute(conn)?;
        Ok(())
    }

    pub fn set_task(conn: &mut PgConnection, id: &str, task: InstanceTask) -> QueryResult<usize> {
        diesel::update(instances::table.find(id))
            .set((
                instances::task_id.eq(task.code()),
                instances::task_description.eq(task.description()),
                instances::updated.eq(crate::db::now()),
            ))
            .execute(conn)
    }

    pub fn set_server(
        conn: &mut PgConnection,
        id: &str,
        server_id: Option<&str>,
        server_status: &str,
    ) -> QueryResult<usize> {
        diesel::update(instances::table.find(id))
            .set((
                instances::compute_instance_id.eq(server_id),
                instances::server_status.eq(server_status),
                instances::updated.eq(crate::db::now()),
            ))
            .execute(conn)
    }

    /// Marks the instance deleted (the taskmanager, once the guest is gone).
    pub fn mark_deleted(conn: &mut PgConnection, id: &str) -> QueryResult<usize> {
        let now = crate::db::now();
        diesel::update(service_statuses::table.filter(service_statuses::instance_id.eq(id)))
            .set((
                service_statuses::status_id.eq(ServiceStatus::Deleted.code()),
                service_statuses::status_description.eq(ServiceStatus::Deleted.description()),
                service_statuses::updated_at.eq(now),
            ))
            .execute(conn)?;
        diesel::update(instances::table.find(id))
            .set((
                instances::deleted.eq(true),
                instances::deleted_at.eq(now),
                instances::updated.eq(now),
                instances::task_id.eq(InstanceTask::None.code()),
                instances::task_description.eq(InstanceTask::None.description()),
                instances::server_status.eq("SHUTDOWN"),
            ))
            .execute(conn)
    }

    /// Marks every live `instance_modules` row of the instance deleted (§11).
    pub fn retire_modules(conn: &mut PgConnection, id: &str) -> QueryResult<usize> {
        let now = crate::db::now();
        diesel::update(
            instance_modules::table
                .filter(instance_modules::instance_id.eq(id))
                .filter(diesel::dsl::not(instance_modules::deleted)),
        )
        .set((
            instance_modules::deleted.eq(true),
            instance_modules::deleted_at.eq(now),
        ))
        .execute(conn)
    }

    /// Live instances whose task is not NONE (builds and deletes in progress).
    pub fn in_progress(conn: &mut PgConnection) -> QueryResult<Vec<Self>> {
        instances::table
            .filter(diesel::dsl::not(instances::deleted))
            .filter(instances::task_id.ne(InstanceTask::None.code()))
            .select(Self::as_select())
            .load(conn)
    }

    pub fn cluster_members(conn: &mut PgConnection, cluster_id: &str) -> QueryResult<Vec<Self>> {
        instances::table
            .filter(instances::cluster_id.eq(cluster_id))
            .filter(diesel::dsl::not(instances::deleted))
            .order(instances::name)
            .select(Self::as_select())
            .load(conn)
    }

    /// Adds the service status, datastore names and fault for views.
    pub fn detail(conn: &mut PgConnection, rows: Vec<Self>) -> QueryResult<Vec<InstanceDetail>> {
        let ids: Vec<&str> = rows.iter().map(|i| i.id.as_str()).collect();
        let svcs: Vec<ServiceStatusRow> = service_statuses::table
            .filter(service_statuses::instance_id.eq_any(&ids))
            .select(ServiceStatusRow::as_select())
            .load(conn)?;
        let ver_ids: Vec<&str> = rows
            .iter()
            .map(|i| i.datastore_version_id.as_str())
            .collect();
        let versions: Vec<(String, String, String, String, String)> = datastore_versions::table
            .inner_join(datastores::table)
            .filter(datastore_versions::id.eq_any(&ver_ids))
            .select((
                datastore_versions::id,
                datastore_versions::name,
                datastore_versions::manager,
                datastores::id,
                datastores::name,
            ))
            .load(conn)?;
        let faults: Vec<(String, String, String, NaiveDateTime)> = instance_faults::table
            .filter(instance_faults::instance_id.eq_any(&ids))
            .filter(diesel::dsl::not(instance_faults::deleted))
            .select((
                instance_faults::instance_id,
                instance_faults::message,
                instance_faults::details,
                instance_faults::updated,
            ))
            .load(conn)?;
        Ok(rows
            .into_iter()
            .map(|instance| {
                let v = versions
                    .iter()
                    .find(|v| v.0 == instance.datastore_version_id);
                InstanceDetail {
                    service: svcs.iter().find(|s| s.instance_id == instance.id).cloned(),
                    datastore_name: v.map(|v| v.4.clone()).unwrap_or_default(),
                    datastore_id: v.map(|v| v.3.clone()).unwrap_or_default(),
                    version_name: v.map(|v| v.1.clone()).unwrap_or_default(),
                    manager: v.map(|v| v.2.clone()).unwrap_or_default(),
                    fault: faults
                        .iter()
                        .find(|f| f.0 == instance.id)
                        .map(|f| (f.1.clone(), f.2.clone(), f.3)),
                    instance,
                }
            })
            .collect())
    }

    /// One page of a tenant's live instances in id order (`limit + 1` rows so the caller sees "more").
    pub fn page(
        conn: &mut PgConnection,
        tenant: &str,
        include_clustered: bool,
        marker: Option<&str>,
        limit: i64,
    ) -> QueryResult<Vec<Self>> {
        let mut q = instances::table
            .filter(instances::tenant_id.eq(tenant))
            .filter(diesel::dsl::not(instances::deleted))
            .into_boxed();
        if !include_clustered {
            q = q.filter(instances::cluster_id.is_null());
        }
        if let Some(m) = marker {
            q = q.filter(instances::id.gt(m.to_owned()));
        }
        q.order(instances::id)
            .limit(limit + 1)
            .select(Self::as_select())
            .load(conn)
    }
}

impl ServiceStatusRow {
    pub fn for_instance(conn: &mut PgConnection, instance_id: &str) -> QueryResult<Option<Self>> {
        service_statuses::table
            .filter(service_statuses::instance_id.eq(instance_id))
            .select(Self::as_select())
            .first(conn)
            .optional()
    }

    /// Sets the status (heartbeats, build failures). RESTART_REQUIRED is kept unless `force`.
    pub fn set(
        conn: &mut PgConnection,
        instance_id: &str,
        status: ServiceStatus,
        force: bool,
    ) -> QueryResult<usize> {
        let mut q = diesel::update(
            service_statuses::table.filter(service_statuses::instance_id.eq(instance_id)),
        )
        .into_boxed();
        if !force {
            q = q.filter(service_statuses::status_id.ne(ServiceStatus::RestartRequired.code()));
        }
        q.set((
            service_statuses::status_id.eq(status.code()),
            service_statuses::status_description.eq(status.description()),
            service_statuses::updated_at.eq(crate::db::now()),
        ))
        .execute(conn)
    }

    /// A guest found not running cannot vouch for its server: an instance reported `running` or
    /// `healthy` is recorded `shutdown` until its guest, started again, reports. Returns the rows changed.
    pub fn mark_down_if_up(conn: &mut PgConnection, instance_id: &str) -> QueryResult<usize> {
        diesel::update(
            service_statuses::table
                .filter(service_statuses::instance_id.eq(instance_id))
                .filter(
                    service_statuses::status_id
                        .eq_any([ServiceStatus::Running.code(), ServiceStatus::Healthy.code()]),
                ),
        )
        .set((
            service_statuses::status_id.eq(ServiceStatus::Shutdown.code()),
            service_statuses::status_description.eq(ServiceStatus::Shutdown.description()),
            service_statuses::updated_at.eq(crate::db::now()),
        ))
        .execute(conn)
    }
}

/// Records (or refreshes) the one live fault of an instance.
pub fn record_fault(
    conn: &mut PgConnection,
    instance_id: &str,
    message: &str,
    details: &str,
) -> QueryResult<()> {
    let now = crate::db::now();
    let n = diesel::update(
        instance_faults::table
            .filter(instance_faults::instance_id.eq(instance_id))
            .filter(diesel::dsl::not(instance_faults::deleted)),
    )
    .set((
        instance_faults::message.eq(message),
        instance_faults::details.eq(details),
        instance_faults::updated.eq(now),
    ))
    .execute(conn)?;
    if n == 0 {
        diesel::insert_into(instance_faults::table)
            .values((
                instance_faults::id.eq(crate::db::new_id()),
                instance_faults::instance_id.eq(instance_id),
                instance_faults::message.eq(message),
                instance_faults::details.eq(details),
                instance_faults::created.eq(now),
                instance_faults::updated.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Queries the taskmanager's reconciler needs (added for trove-taskmanager).
impl Instance {
    /// Moves the task from `from` to `to` only if it is still `from` (compare-and-set), so a build
    /// check never overwrites a delete that started meanwhile. Returns the rows changed (0 or 1).
    pub fn set_task_if(
        conn: &mut PgConnection,
        id: &str,
        from: InstanceTask,
        to: InstanceTask,
    ) -> QueryResult<usize> {
        diesel::update(
            instances::table
                .find(id)
                .filter(instances::task_id.eq(from.code()))
                .filter(diesel::dsl::not(instances::deleted)),
        )
        .set((
            instances::task_id.eq(to.code()),
            instances::task_description.eq(to.description()),
            instances::updated.eq(crate::db::now()),
        ))
        .execute(conn)
    }

    /// Live instances whose task is one of `tasks` (the reconciler's builds and deletes; unlike
    /// [`Instance::in_progress`] it leaves out instances parked in an error task).
    pub fn with_tasks(conn: &mut PgConnection, tasks: &[InstanceTask]) -> QueryResult<Vec<Self>> {
        let codes: Vec<i32> = tasks.iter().map(|t| t.code()).collect();
        instances::table
            .filter(diesel::dsl::not(instances::deleted))
            .filter(instances::task_id.eq_any(codes))
            .select(Self::as_select())
            .load(conn)
    }
}

impl ServiceStatusRow {
    /// The service statuses of several instances at once (one query per reconciler pass).
    pub fn for_instances(
        conn: &mut PgConnection,
        instance_ids: &[String],
    ) -> QueryResult<Vec<Self>> {
        service_statuses::table
            .filter(service_statuses::instance_id.eq_any(instance_ids))
            .select(Self::as_select())
            .load(conn)
    }
}

/// The conductor's heartbeat sweep.
impl ServiceStatusRow {
    /// Marks SHUTDOWN every guest whose heartbeats stopped: live instances with task NONE whose status
    /// is RUNNING or HEALTHY and was last updated before `cutoff` (now minus `agent_heartbeat_expiry`).
    ///
    /// `updated_at` is left alone, so the age of the last heartbeat stays visible. It is one statement:
    /// PostgreSQL re-checks the conditions on a row after waiting for its lock, so a heartbeat that
    /// commits meanwhile wins and its instance is not touched. The next heartbeat sets RUNNING again.
    /// Returns the ids of the instances changed.
    pub fn shut_down_silent(
        conn: &mut PgConnection,
        cutoff: NaiveDateTime,
    ) -> QueryResult<Vec<String>> {
        let quiet_instances = instances::table
            .filter(diesel::dsl::not(instances::deleted))
            .filter(instances::task_id.eq(InstanceTask::None.code()))
            .select(instances::id);
        diesel::update(
            service_statuses::table
                .filter(service_statuses::instance_id.eq_any(quiet_instances))
                .filter(
                    service_statuses::status_id
                        .eq_any([ServiceStatus::Running.code(), ServiceStatus::Healthy.code()]),
                )
                .filter(service_statuses::updated_at.lt(cutoff)),
        )
        .set((
            service_statuses::status_id.eq(ServiceStatus::Shutdown.code()),
            service_statuses::status_description.eq(ServiceStatus::Shutdown.description()),
        ))
        .returning(service_statuses::instance_id)
        .get_results(conn)
    }
}

/// What [`Instance::allocate_port`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAllocation {
    /// The instance already had this port: kept.
    Kept(u16),
    /// The instance got this port now.
    Allocated(u16),
    /// Every port of the range is taken (by a live instance, or by whatever `is_free` refused).
    NoFreePort,
    /// The instance is deleted or does not exist.
    Gone,
}

/// How many times [`Instance::allocate_port`] picks again after losing a race.
const PORT_ALLOCATION_ATTEMPTS: usize = 64;

/// Port allocation for the `local` compute driver's instances, which share one host.
impl Instance {
    /// Gives the instance a port on `host`, once: an instance that has one keeps it (it survives
    /// restarts of its guest and of the host, and is never reallocated while the instance lives).
    /// Otherwise it takes the lowest port of `range` that no live instance of `host` holds and that
    /// `is_free` accepts (the caller probes that nothing else on the host listens on it), and records
    /// `compute_host`, `address` and `port` together.
    ///
    /// Concurrent allocations are safe without a lock: the write only applies to a row that still
    /// has no port, and the unique index on `(compute_host, port)` makes the loser of a race for one
    /// port fail, after which it reads the taken ports again and picks the next. Ports `is_free`
    /// refused are not probed again within one call. Takes no transaction of its own beyond a
    /// savepoint around the write, so it can run inside the caller's.
    pub fn allocate_port(
        conn: &mut PgConnection,
        id: &str,
        host: &str,
        address: &str,
        range: std::ops::RangeInclusive<u16>,
        mut is_free: impl FnMut(u16) -> bool,
    ) -> QueryResult<PortAllocation> {
        let mut refused = std::collections::HashSet::new();
        for _ in 0..PORT_ALLOCATION_ATTEMPTS {
            let current: Option<(bool, Option<i32>)> = instances::table
                .find(id)
                .select((instances::deleted, instances::port))
                .first(conn)
                .optional()?;
            match current {
                None | Some((true, _)) => return Ok(PortAllocation::Gone),
                Some((false, Some(port))) => {
                    return Ok(PortAllocation::Kept(
                        u16::try_from(port).unwrap_or_default(),
                    ))
                }
                Some((false, None)) => {}
            }
            let taken: std::collections::HashSet<i32> = instances::table
                .filter(instances::compute_host.eq(host))
                .filter(diesel::dsl::not(instances::deleted))
                .filter(instances::port.is_not_null())
                .select(instances::port.assume_not_null())
                .load::<i32>(conn)?
                .into_iter()
                .collect();
            let pick = range.clone().find(|&p| {
                if taken.contains(&i32::from(p)) || refused.contains(&p) {
                    return false;
                }
                let free = is_free(p);
                if !free {
                    refused.insert(p);
                }
                free
            });
            let Some(port) = pick else {
                return Ok(PortAllocation::NoFreePort);
            };
            let written = conn.transaction(|c| {
                diesel::update(
                    instances::table
                        .find(id)
                        .filter(instances::port.is_null())
                        .filter(diesel::dsl::not(instances::deleted)),
                )
                .set((
                    instances::compute_host.eq(host),
                    instances::address.eq(address),
                    instances::port.eq(i32::from(port)),
                    instances::updated.eq(crate::db::now()),
                ))
                .execute(c)
            });
            match written {
                Ok(1) => return Ok(PortAllocation::Allocated(port)),
                // The row changed meanwhile (another allocation for it, or a delete): read it again.
                Ok(_) => {}
                // Another instance of this host took the port first: pick again.
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                )) => {}
                Err(e) => return Err(e),
            }
        }
        Err(diesel::result::Error::QueryBuilderError(
            format!("no port could be allocated for instance {id} after {PORT_ALLOCATION_ATTEMPTS} attempts").into(),
        ))
    }

    /// When the instance's live fault was last written, if it has one.
    pub fn fault_updated(conn: &mut PgConnection, id: &str) -> QueryResult<Option<NaiveDateTime>> {
        instance_faults::table
            .filter(instance_faults::instance_id.eq(id))
            .filter(diesel::dsl::not(instance_faults::deleted))
            .select(instance_faults::updated)
            .order(instance_faults::updated.desc())
            .first(conn)
            .optional()
    }

    /// The live instances `host` runs (and those with no host recorded, from before hosts were),
    /// whose guest was started and should be running: a server id, a server status other than
    /// ERROR, and a task that is neither a delete nor an error. One query, for the reconciler's
    /// relaunch of guests that are not running.
    pub fn to_keep_running(conn: &mut PgConnection, host: &str) -> QueryResult<Vec<Self>> {
        instances::table
            .filter(diesel::dsl::not(instances::deleted))
            .filter(
                instances::compute_host
                    .eq(host)
                    .or(instances::compute_host.is_null()),
            )
            .filter(instances::compute_instance_id.is_not_null())
            .filter(
                instances::server_status
                    .ne("ERROR")
                    .or(instances::server_status.is_null()),
            )
            .filter(instances::task_id.ne(InstanceTask::Deleting.code()))
            // Every 0x5x code is an error task (`status::is_error_task`).
            .filter(diesel::dsl::not(instances::task_id.between(0x50, 0x5f)))
            .select(Self::as_select())
            .load(conn)
    }
}
