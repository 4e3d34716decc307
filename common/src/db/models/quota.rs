//! Per-tenant quotas, as Trove has them (`trove/quota/quota.py`, `DbQuotaDriver`): a hard limit per
//! resource (a tenant's row in `quotas`, else the `max_<resource>_per_tenant` default; -1 is
//! unlimited), what each tenant holds (`quota_usages`), and the reservation a create makes.
//!
//! **Reserving** ([`QuotaUsage::reserve`]) runs inside the transaction that inserts the instances: it
//! creates the tenant's usage rows on first use (`INSERT .. ON CONFLICT DO NOTHING`), locks them
//! (`SELECT .. ORDER BY resource FOR UPDATE`), applies Trove's check and adds the deltas to `in_use`.
//! A concurrent create of the same tenant waits on those row locks until this transaction ends, then
//! sees its usage, so no interleaving lets two creates exceed a limit; a create that is refused, or
//! whose transaction fails later, leaves nothing behind. Trove reserves first and commits after the
//! instance is written (`run_with_quotas`); here both are one transaction, so `reserved` stays 0.
//!
//! **Giving back** is the database's: a trigger on `instances` (migration `quotas`) subtracts an
//! instance's share (1 instance, its `volume_size` GB and the `quota_ram` MB its create counted) when
//! an instance with `quota_held` is marked deleted, enters a BUILDING_ERROR task or is removed, and
//! clears `quota_held` in the same write, so every path gives back exactly once.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::config::DefaultSection;
use crate::db::schema::{quota_usages, quotas};

/// Instances a tenant may have.
pub const INSTANCES: &str = "instances";
/// RAM (MB) across a tenant's instances.
pub const RAM: &str = "ram";
/// Backups a tenant may have (listed, never reserved: trove-rs has no backups).
pub const BACKUPS: &str = "backups";
/// Volume capacity (GB) across a tenant's instances.
pub const VOLUMES: &str = "volumes";

/// Trove's resources in the order it registers them (`quota.py`), the order the views list them.
pub const RESOURCES: [&str; 4] = [INSTANCES, RAM, BACKUPS, VOLUMES];

/// The registered resource named `name`, as a `'static` name.
pub fn resource(name: &str) -> Option<&'static str> {
    RESOURCES.into_iter().find(|r| *r == name)
}

/// The default hard limits (`[DEFAULT] max_<resource>_per_tenant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub instances: i32,
    pub ram: i32,
    pub backups: i32,
    pub volumes: i32,
}

impl Defaults {
    /// The defaults configured in `[DEFAULT]`.
    pub fn from_settings(d: &DefaultSection) -> Self {
        Self {
            instances: d.max_instances_per_tenant,
            ram: d.max_ram_per_tenant,
            backups: d.max_backups_per_tenant,
            volumes: d.max_volumes_per_tenant,
        }
    }

    /// The default limit of a registered resource (-1 for any other name, as Trove's `Resource`
    /// without a flag).
    pub fn get(&self, resource: &str) -> i32 {
        match resource {
            INSTANCES => self.instances,
            RAM => self.ram,
            BACKUPS => self.backups,
            VOLUMES => self.volumes,
            _ => -1,
        }
    }
}

/// A tenant's own hard limit for one resource (Trove's `Quota`).
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = quotas)]
pub struct Quota {
    pub id: String,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub tenant_id: String,
    pub resource: String,
    pub hard_limit: i32,
}

/// What a tenant holds of one resource (Trove's `QuotaUsage`).
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = quota_usages)]
pub struct QuotaUsage {
    pub id: String,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub tenant_id: String,
    pub resource: String,
    pub in_use: i32,
    pub reserved: i32,
}

/// One resource as the quota view lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceUsage {
    pub resource: &'static str,
    pub in_use: i32,
    pub reserved: i32,
    pub limit: i32,
}

/// What a create asks of its tenant's quota: Trove's deltas (`instances` +1 and `ram` + the
/// flavor's RAM per instance, `volumes` + its volume size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deltas {
    pub instances: i32,
    pub ram: i32,
    pub volumes: i32,
}

impl Deltas {
    /// Adds one instance of `ram` MB with a volume of `volume_size` GB.
    pub fn add_instance(&mut self, ram: i32, volume_size: i32) {
        self.instances = self.instances.saturating_add(1);
        self.ram = self.ram.saturating_add(ram);
        self.volumes = self.volumes.saturating_add(volume_size);
    }

    /// The deltas by resource, in key order (the order their rows are locked in).
    pub fn entries(&self) -> [(&'static str, i32); 3] {
        [
            (INSTANCES, self.instances),
            (RAM, self.ram),
            (VOLUMES, self.volumes),
        ]
    }
}

/// The resources a create would take over their limit, sorted (Trove's `check_quotas`): a positive
/// delta, a limit that is not negative (negative is unlimited) and `in_use + reserved + delta` above
/// it. Pure.
pub fn overs(
    deltas: &[(&'static str, i32)],
    limit: impl Fn(&str) -> i32,
    usage: impl Fn(&str) -> (i32, i32),
) -> Vec<&'static str> {
    let mut overs: Vec<&'static str> = deltas
        .iter()
        .filter(|(resource, delta)| {
            let hard = limit(resource);
            let (in_use, reserved) = usage(resource);
            *delta > 0
                && hard >= 0
                && i64::from(in_use) + i64::from(reserved) + i64::from(*delta) > i64::from(hard)
        })
        .map(|(resource, _)| *resource)
        .collect();
    overs.sort_unstable();
    overs
}

/// Trove's `QuotaExceeded` message: `Quota exceeded for resources: ['instances', 'volumes'].` (the
/// sorted list as Python prints it). Pure.
pub fn exceeded_message(overs: &[&str]) -> String {
    let items: Vec<String> = overs.iter().map(|r| format!("'{r}'")).collect();
    format!("Quota exceeded for resources: [{}].", items.join(", "))
}

/// What [`QuotaUsage::reserve`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The deltas were added to the tenant's usage.
    Reserved,
    /// These resources (sorted) would exceed their limit; nothing was added. The caller must roll
    /// its transaction back, which also drops usage rows created for the check.
    Exceeded(Vec<&'static str>),
}

impl Quota {
    /// The hard limit of every resource for `tenant`, in [`RESOURCES`] order: its own row, else the
    /// default (Trove's `get_all_quotas_by_tenant`).
    pub fn hard_limits(
        conn: &mut PgConnection,
        tenant: &str,
        defaults: &Defaults,
    ) -> QueryResult<Vec<(&'static str, i32)>> {
        let rows: Vec<(String, i32)> = quotas::table
            .filter(quotas::tenant_id.eq(tenant))
            .select((quotas::resource, quotas::hard_limit))
            .load(conn)?;
        Ok(RESOURCES
            .into_iter()
            .map(|r| {
                let own = rows.iter().find(|(name, _)| name == r).map(|(_, l)| *l);
                (r, own.unwrap_or_else(|| defaults.get(r)))
            })
            .collect())
    }

    /// Sets `tenant`'s own limits (Trove's quota update: the row is created or its `hard_limit`
    /// replaced). Call inside a transaction to set several at once.
    pub fn set_limits(
        conn: &mut PgConnection,
        tenant: &str,
        limits: &[(&'static str, i32)],
    ) -> QueryResult<()> {
        let now = crate::db::now();
        for (resource, limit) in limits {
            diesel::insert_into(quotas::table)
                .values(&Quota {
                    id: crate::db::new_id(),
                    created: now,
                    updated: now,
                    tenant_id: tenant.to_owned(),
                    resource: (*resource).to_owned(),
                    hard_limit: *limit,
                })
                .on_conflict((quotas::tenant_id, quotas::resource))
                .do_update()
                .set((quotas::hard_limit.eq(*limit), quotas::updated.eq(now)))
                .execute(conn)?;
        }
        Ok(())
    }
}

impl QuotaUsage {
    /// Every resource of `tenant` with its usage and limit, in [`RESOURCES`] order (Trove's quota
    /// show). A resource the tenant never used is 0 in use (Trove creates the row on read; nothing is
    /// written here).
    pub fn usages(
        conn: &mut PgConnection,
        tenant: &str,
        defaults: &Defaults,
    ) -> QueryResult<Vec<ResourceUsage>> {
        let limits = Quota::hard_limits(conn, tenant, defaults)?;
        let rows: Vec<(String, i32, i32)> = quota_usages::table
            .filter(quota_usages::tenant_id.eq(tenant))
            .select((
                quota_usages::resource,
                quota_usages::in_use,
                quota_usages::reserved,
            ))
            .load(conn)?;
        Ok(limits
            .into_iter()
            .map(|(resource, limit)| {
                let (in_use, reserved) = rows
                    .iter()
                    .find(|(name, _, _)| name == resource)
                    .map_or((0, 0), |(_, u, r)| (*u, *r));
                ResourceUsage {
                    resource,
                    in_use,
                    reserved,
                    limit,
                }
            })
            .collect())
    }

    /// Checks `deltas` against `tenant`'s limits and adds them to its usage, under a lock on the
    /// tenant's usage rows (module docs). Must run inside the transaction that writes what the deltas
    /// stand for; on [`Reservation::Exceeded`] that transaction must be rolled back.
    pub fn reserve(
        conn: &mut PgConnection,
        tenant: &str,
        deltas: &Deltas,
        defaults: &Defaults,
    ) -> QueryResult<Reservation> {
        let entries = deltas.entries();
        let names: Vec<&str> = entries.iter().map(|(r, _)| *r).collect();
        let now = crate::db::now();
        // Before the usage rows are locked: their lock does not guard the limits, and the shorter it
        // is held the less concurrent creates of the tenant wait.
        let limits = Quota::hard_limits(conn, tenant, defaults)?;
        // In key order, so two first creates of a tenant queue on the same row first.
        let fresh: Vec<QuotaUsage> = names
            .iter()
            .map(|resource| QuotaUsage {
                id: crate::db::new_id(),
                created: now,
                updated: now,
                tenant_id: tenant.to_owned(),
                resource: (*resource).to_owned(),
                in_use: 0,
                reserved: 0,
            })
            .collect();
        diesel::insert_into(quota_usages::table)
            .values(&fresh)
            .on_conflict((quota_usages::tenant_id, quota_usages::resource))
            .do_nothing()
            .execute(conn)?;
        let held: Vec<QuotaUsage> = quota_usages::table
            .filter(quota_usages::tenant_id.eq(tenant))
            .filter(quota_usages::resource.eq_any(&names))
            .order(quota_usages::resource)
            .for_update()
            .select(Self::as_select())
            .load(conn)?;
        let over = overs(
            &entries,
            |r| {
                limits
                    .iter()
                    .find(|(name, _)| *name == r)
                    .map_or(-1, |(_, l)| *l)
            },
            |r| {
                held.iter()
                    .find(|u| u.resource == r)
                    .map_or((0, 0), |u| (u.in_use, u.reserved))
            },
        );
        if !over.is_empty() {
            return Ok(Reservation::Exceeded(over));
        }
        for (resource, delta) in entries {
            if delta == 0 {
                continue;
            }
            diesel::update(
                quota_usages::table
                    .filter(quota_usages::tenant_id.eq(tenant))
                    .filter(quota_usages::resource.eq(resource)),
            )
            .set((
                quota_usages::in_use.eq(quota_usages::in_use + delta),
                quota_usages::updated.eq(now),
            ))
            .execute(conn)?;
        }
        Ok(Reservation::Reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deltas(instances: i32, ram: i32, volumes: i32) -> [(&'static str, i32); 3] {
        Deltas {
            instances,
            ram,
            volumes,
        }
        .entries()
    }

    #[test]
    fn troves_check_quotas() {
        let limits = |r: &str| match r {
            INSTANCES => 10,
            RAM => -1,
            _ => 40,
        };
        // At the limit is allowed, one above is not.
        assert!(overs(&deltas(1, 1024, 1), limits, |_| (9, 0)).is_empty());
        assert_eq!(
            overs(&deltas(1, 1024, 1), limits, |r| if r == INSTANCES {
                (10, 0)
            } else {
                (0, 0)
            }),
            [INSTANCES]
        );
        // Reserved counts; a negative limit is unlimited, whatever is in use.
        assert_eq!(
            overs(&deltas(1, 1 << 30, 1), limits, |_| (5, 5)),
            [INSTANCES]
        );
        // Several resources come sorted; zero and negative deltas are never over.
        assert_eq!(
            overs(&deltas(3, 0, 41), limits, |_| (8, 0)),
            [INSTANCES, VOLUMES]
        );
        assert!(overs(&deltas(0, 0, -5), |_| 0, |_| (100, 0)).is_empty());
        // A limit of 0 refuses any positive delta.
        assert_eq!(overs(&deltas(0, 0, 1), |_| 0, |_| (0, 0)), [VOLUMES]);
        // No overflow near i32::MAX.
        assert_eq!(
            overs(&deltas(i32::MAX, 0, 0), |_| i32::MAX, |_| (i32::MAX, 0)),
            [INSTANCES]
        );
    }

    #[test]
    fn the_message_is_troves_python_list() {
        assert_eq!(
            exceeded_message(&[INSTANCES]),
            "Quota exceeded for resources: ['instances']."
        );
        assert_eq!(
            exceeded_message(&[INSTANCES, VOLUMES]),
            "Quota exceeded for resources: ['instances', 'volumes']."
        );
    }

    #[test]
    fn deltas_add_up_per_instance() {
        let mut d = Deltas::default();
        d.add_instance(1024, 2);
        d.add_instance(1024, 2);
        assert_eq!(d.entries(), [(INSTANCES, 2), (RAM, 2048), (VOLUMES, 4)]);
        // Key order: the lock order of the usage rows.
        let names: Vec<&str> = d.entries().iter().map(|(r, _)| *r).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn defaults_and_names() {
        let d = Defaults {
            instances: 10,
            ram: -1,
            backups: 50,
            volumes: 40,
        };
        assert_eq!(RESOURCES.map(|r| d.get(r)), [10, -1, 50, 40]);
        assert_eq!(d.get("cores"), -1);
        assert_eq!(resource("ram"), Some(RAM));
        assert_eq!(resource("xmlns"), None);
        assert_eq!(
            Defaults::from_settings(&DefaultSection::default()),
            Defaults {
                instances: 10,
                ram: -1,
                backups: 50,
                volumes: 40,
            }
        );
    }
}
