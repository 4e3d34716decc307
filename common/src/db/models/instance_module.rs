//! `instance_modules`: "the control plane sent md5 M of module X to instance I" (docs/module-semantics.md §11).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text, Timestamp};

use crate::db::schema::{instance_modules, instances};

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = instance_modules)]
pub struct InstanceModule {
    pub id: String,
    pub instance_id: String,
    pub module_id: String,
    pub md5: String,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub deleted: bool,
    pub deleted_at: Option<NaiveDateTime>,
    /// The instance is a cluster member (set when the row is written; membership never changes).
    pub clustered: bool,
}

/// One row of the count-only summary (§8).
#[derive(Clone, Debug, QueryableByName)]
pub struct Md5Count {
    #[diesel(sql_type = Text)]
    pub module_md5: String,
    #[diesel(sql_type = BigInt)]
    pub instance_count: i64,
    #[diesel(sql_type = Bool)]
    pub current: bool,
    #[diesel(sql_type = Timestamp)]
    pub min_updated_date: NaiveDateTime,
    #[diesel(sql_type = Timestamp)]
    pub max_updated_date: NaiveDateTime,
}

impl InstanceModule {
    /// A new live row, created and updated `now`.
    fn live(
        instance_id: &str,
        module_id: &str,
        md5: &str,
        now: NaiveDateTime,
        clustered: bool,
    ) -> Self {
        Self {
            id: crate::db::new_id(),
            instance_id: instance_id.into(),
            module_id: module_id.into(),
            md5: md5.into(),
            created: now,
            updated: now,
            deleted: false,
            deleted_at: None,
            clustered,
        }
    }

    /// `record(instance, module, md5)`: keep the first live row with this md5 and refresh its `updated`,
    /// retire every other live row of the pair, or insert one. Call inside a transaction; the partial
    /// unique index on live pairs guards against two concurrent records.
    ///
    /// A deleted instance is never recorded: the instance row is locked `FOR SHARE` first, so a
    /// concurrent delete (which updates that row, then retires its modules) either commits first and
    /// this records nothing, or waits for this transaction and then retires what it recorded. Hence
    /// no deleted instance holds a live row, which the admin count query relies on. Returns whether
    /// the instance was live and the row recorded.
    pub fn record(
        conn: &mut PgConnection,
        instance_id: &str,
        module_id: &str,
        md5: &str,
    ) -> QueryResult<bool> {
        let Some(&clustered) = lock_live_instances(conn, &[instance_id])?.get(instance_id) else {
            return Ok(false);
        };
        let now = crate::db::now();
        let live: Vec<Self> = instance_modules::table
            .filter(instance_modules::instance_id.eq(instance_id))
            .filter(instance_modules::module_id.eq(module_id))
            .filter(diesel::dsl::not(instance_modules::deleted))
            .order((instance_modules::created, instance_modules::id))
            .for_update()
            .select(Self::as_select())
            .load(conn)?;
        let keep = live.iter().find(|r| r.md5 == md5).map(|r| r.id.clone());
        let retire: Vec<&str> = live
            .iter()
            .filter(|r| Some(&r.id) != keep.as_ref())
            .map(|r| r.id.as_str())
            .collect();
        if !retire.is_empty() {
            diesel::update(instance_modules::table.filter(instance_modules::id.eq_any(&retire)))
                .set((
                    instance_modules::deleted.eq(true),
                    instance_modules::deleted_at.eq(now),
                ))
                .execute(conn)?;
        }
        match keep {
            Some(id) => {
                diesel::update(instance_modules::table.find(id))
                    .set(instance_modules::updated.eq(now))
                    .execute(conn)?;
            }
            None => {
                diesel::insert_into(instance_modules::table)
                    .values(&Self::live(instance_id, module_id, md5, now, clustered))
                    .execute(conn)?;
            }
        }
        Ok(true)
    }

    /// [`InstanceModule::record`] for many instances of one module at once, with the same rules per
    /// instance: keep its first live row (by `created, id`) with this md5 and refresh its `updated`,
    /// retire its other live rows, or insert one. A handful of statements whatever the number of
    /// instances (a fleet-wide reapply records thousands in one transaction). The live rows are locked
    /// in `instance_id, created, id` order, the order `record` uses within one pair, so the two never
    /// deadlock each other. Deleted instances are left out, under the same lock as in `record`; the
    /// instances recorded are returned. Call inside a transaction.
    pub fn record_many(
        conn: &mut PgConnection,
        instance_ids: &[&str],
        module_id: &str,
        md5: &str,
    ) -> QueryResult<std::collections::HashSet<String>> {
        let member = lock_live_instances(conn, instance_ids)?;
        let recorded: std::collections::HashSet<String> = member.keys().cloned().collect();
        if recorded.is_empty() {
            return Ok(recorded);
        }
        // Sorted: the live rows below are locked chunk by chunk, and the order must be global.
        let mut instance_ids: Vec<&str> = member.keys().map(String::as_str).collect();
        instance_ids.sort_unstable();
        let instance_ids = instance_ids.as_slice();
        let now = crate::db::now();
        let mut live: Vec<(String, String, String)> = Vec::new();
        for chunk in instance_ids.chunks(5000) {
            live.extend(
                instance_modules::table
                    .filter(instance_modules::instance_id.eq_any(chunk))
                    .filter(instance_modules::module_id.eq(module_id))
                    .filter(diesel::dsl::not(instance_modules::deleted))
                    .order((
                        instance_modules::instance_id,
                        instance_modules::created,
                        instance_modules::id,
                    ))
                    .for_update()
                    .select((
                        instance_modules::id,
                        instance_modules::instance_id,
                        instance_modules::md5,
                    ))
                    .load::<(String, String, String)>(conn)?,
            );
        }
        // Per instance, the first row with this md5 is kept; every other live row is retired.
        let mut kept_for: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let (mut keep, mut retire) = (Vec::new(), Vec::new());
        for (id, instance_id, row_md5) in &live {
            if row_md5 == md5 && kept_for.insert(instance_id.as_str()) {
                keep.push(id.as_str());
            } else {
                retire.push(id.as_str());
            }
        }
        for chunk in retire.chunks(5000) {
            diesel::update(instance_modules::table.filter(instance_modules::id.eq_any(chunk)))
                .set((
                    instance_modules::deleted.eq(true),
                    instance_modules::deleted_at.eq(now),
                ))
                .execute(conn)?;
        }
        for chunk in keep.chunks(5000) {
            diesel::update(instance_modules::table.filter(instance_modules::id.eq_any(chunk)))
                .set(instance_modules::updated.eq(now))
                .execute(conn)?;
        }
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<Self> = instance_ids
            .iter()
            .filter(|i| !kept_for.contains(**i) && seen.insert(**i))
            .map(|instance_id| Self::live(instance_id, module_id, md5, now, member[*instance_id]))
            .collect();
        // 8 parameters a row: 1,000 rows stay far below PostgreSQL's 65,535.
        for chunk in fresh.chunks(1000) {
            diesel::insert_into(instance_modules::table)
                .values(chunk)
                .execute(conn)?;
        }
        Ok(recorded)
    }

    /// Retires every live row of (instance, module) (module-remove, §10).
    pub fn retire(
        conn: &mut PgConnection,
        instance_id: &str,
        module_id: &str,
    ) -> QueryResult<usize> {
        diesel::update(
            instance_modules::table
                .filter(instance_modules::instance_id.eq(instance_id))
                .filter(instance_modules::module_id.eq(module_id))
                .filter(diesel::dsl::not(instance_modules::deleted)),
        )
        .set((
            instance_modules::deleted.eq(true),
            instance_modules::deleted_at.eq(crate::db::now()),
        ))
        .execute(conn)
    }

    /// The count-only summary (§8): per md5, live rows, current or not, min/max `updated`.
    ///
    /// A tenant's query starts from its own instances (the tenant index) and joins their rows. An
    /// admin's sees every tenant, so it reads the maintained `instance_module_counts` (kept by
    /// triggers, see the migration) for the counts, and takes min/max `updated` of each (md5,
    /// member or not) group from one descent of `instance_modules_module_md5` each: a few index
    /// lookups, however many instances hold the module. No deleted instance holds a live row
    /// ([`InstanceModule::record`] and the delete paths see to it), so neither needs `instances`.
    pub fn count_by_md5(
        conn: &mut PgConnection,
        module_id: &str,
        module_md5: &str,
        include_clustered: bool,
        tenant: Option<&str>,
    ) -> QueryResult<Vec<Md5Count>> {
        let sql = Self::count_by_md5_sql(include_clustered, tenant.is_some());
        let q = crate::db::prepared(&sql)
            .bind::<Text, _>(module_id)
            .bind::<Text, _>(module_md5);
        match tenant {
            Some(t) => q.bind::<Text, _>(t).load(conn),
            None => q.load(conn),
        }
    }

    /// The SQL of [`InstanceModule::count_by_md5`]: `$1` module id, `$2` its md5, `$3` the tenant
    /// (only when `tenant`).
    pub fn count_by_md5_sql(include_clustered: bool, tenant: bool) -> String {
        let members = if include_clustered {
            ""
        } else {
            " AND NOT clustered"
        };
        if tenant {
            format!(
                "SELECT im.md5 AS module_md5, count(*) AS instance_count, (im.md5 = $2) AS current, \
                        min(im.updated) AS min_updated_date, max(im.updated) AS max_updated_date \
                 FROM instance_modules im JOIN instances i ON i.id = im.instance_id \
                 WHERE im.module_id = $1 AND NOT im.deleted AND NOT i.deleted \
                 AND i.tenant_id = $3{} GROUP BY im.md5 ORDER BY min(im.updated)",
                if include_clustered {
                    ""
                } else {
                    " AND i.cluster_id IS NULL"
                }
            )
        } else {
            format!(
                "SELECT md5 AS module_md5, sum(instances)::bigint AS instance_count, \
                        (md5 = $2) AS current, min(lo) AS min_updated_date, \
                        max(hi) AS max_updated_date \
                 FROM (SELECT c.md5, c.instances, \
                         (SELECT min(im.updated) FROM instance_modules im \
                           WHERE im.module_id = c.module_id AND im.clustered = c.clustered \
                             AND im.md5 = c.md5 AND NOT im.deleted) AS lo, \
                         (SELECT max(im.updated) FROM instance_modules im \
                           WHERE im.module_id = c.module_id AND im.clustered = c.clustered \
                             AND im.md5 = c.md5 AND NOT im.deleted) AS hi \
                       FROM instance_module_counts c \
                       WHERE c.module_id = $1 AND c.instances > 0{members}) g \
                 GROUP BY md5 ORDER BY min(lo)"
            )
        }
    }

    /// Live rows of `module_id` with `md5`, on any instance (deleted instances hold none), from the
    /// maintained counts.
    pub fn live_count(conn: &mut PgConnection, module_id: &str, md5: &str) -> QueryResult<i64> {
        use crate::db::schema::instance_module_counts as c;
        c::table
            .filter(c::module_id.eq(module_id))
            .filter(c::md5.eq(md5))
            .select(c::instances)
            .load::<i64>(conn)
            .map(|n| n.iter().sum())
    }

    /// Instances (live) holding any live row of the module, one page in id order (`limit + 1` rows).
    pub fn instance_page(
        conn: &mut PgConnection,
        module_id: &str,
        include_clustered: bool,
        tenant: Option<&str>,
        marker: Option<&str>,
        limit: i64,
    ) -> QueryResult<Vec<super::Instance>> {
        let holders = instance_modules::table
            .filter(instance_modules::module_id.eq(module_id.to_owned()))
            .filter(diesel::dsl::not(instance_modules::deleted))
            .select(instance_modules::instance_id);
        let mut q = instances::table
            .filter(diesel::dsl::not(instances::deleted))
            .filter(instances::id.eq_any(holders))
            .into_boxed();
        if !include_clustered {
            q = q.filter(instances::cluster_id.is_null());
        }
        if let Some(t) = tenant {
            q = q.filter(instances::tenant_id.eq(t.to_owned()));
        }
        if let Some(m) = marker {
            q = q.filter(instances::id.gt(m.to_owned()));
        }
        q.order(instances::id)
            .limit(limit + 1)
            .select(super::Instance::as_select())
            .load(conn)
    }

    /// Live rows of a module, optionally with one md5, in `created, id` order (reapply candidates, §12).
    pub fn candidates(
        conn: &mut PgConnection,
        module_id: &str,
        md5: Option<&str>,
    ) -> QueryResult<Vec<Self>> {
        let mut q = instance_modules::table
            .filter(instance_modules::module_id.eq(module_id.to_owned()))
            .filter(diesel::dsl::not(instance_modules::deleted))
            .into_boxed();
        if let Some(m) = md5 {
            q = q.filter(instance_modules::md5.eq(m.to_owned()));
        }
        q.order((instance_modules::created, instance_modules::id))
            .select(Self::as_select())
            .load(conn)
    }

    /// Live rows of one instance.
    pub fn for_instance(conn: &mut PgConnection, instance_id: &str) -> QueryResult<Vec<Self>> {
        instance_modules::table
            .filter(instance_modules::instance_id.eq(instance_id))
            .filter(diesel::dsl::not(instance_modules::deleted))
            .select(Self::as_select())
            .load(conn)
    }
}

/// Locks the live rows of `ids` in `instances` `FOR SHARE`, in id order (so two callers never
/// deadlock), and returns them: id → is a cluster member. A delete, which updates the row, waits for
/// the lock.
fn lock_live_instances(
    conn: &mut PgConnection,
    ids: &[&str],
) -> QueryResult<std::collections::HashMap<String, bool>> {
    let mut live = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(5000) {
        live.extend(
            instances::table
                .filter(instances::id.eq_any(chunk))
                .filter(diesel::dsl::not(instances::deleted))
                .order(instances::id)
                .for_share()
                .select((instances::id, instances::cluster_id.is_not_null()))
                .load::<(String, bool)>(conn)?,
        );
    }
    Ok(live)
}
