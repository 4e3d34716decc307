//! `instance_modules`: "the control plane sent md5 M of module X to instance I" (module-semantics §11).

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
    /// `record(instance, module, md5)`: keep the first live row with this md5 and refresh its `updated`,
    /// retire every other live row of the pair, or insert one. Call inside a transaction; the partial
    /// unique index on live pairs guards against two concurrent records.
    pub fn record(
        conn: &mut PgConnection,
        instance_id: &str,
        module_id: &str,
        md5: &str,
    ) -> QueryResult<()> {
        let now = crate::db::now();
        let live: Vec<Self> = instance_modules::table
            .filter(instance_modules::instance_id.eq(instance_id))
            .filter(instance_modules::module_id.eq(module_id))
            .filter(instance_modules::deleted.eq(false))
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
                    .values(&Self {
                        id: crate::db::new_id(),
                        instance_id: instance_id.into(),
                        module_id: module_id.into(),
                        md5: md5.into(),
                        created: now,
                        updated: now,
                        deleted: false,
                        deleted_at: None,
                    })
                    .execute(conn)?;
            }
        }
        Ok(())
    }

    /// [`InstanceModule::record`] for many instances of one module at once, with the same rules per
    /// instance: keep its first live row (by `created, id`) with this md5 and refresh its `updated`,
    /// retire its other live rows, or insert one. A handful of statements whatever the number of
    /// instances (a fleet-wide reapply records thousands in one transaction). The live rows are locked
    /// in `instance_id, created, id` order, the order `record` uses within one pair, so the two never
    /// deadlock each other. Call inside a transaction.
    pub fn record_many(
        conn: &mut PgConnection,
        instance_ids: &[&str],
        module_id: &str,
        md5: &str,
    ) -> QueryResult<()> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        let now = crate::db::now();
        let mut live: Vec<(String, String, String)> = Vec::new();
        for chunk in instance_ids.chunks(5000) {
            live.extend(
                instance_modules::table
                    .filter(instance_modules::instance_id.eq_any(chunk))
                    .filter(instance_modules::module_id.eq(module_id))
                    .filter(instance_modules::deleted.eq(false))
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
            .map(|instance_id| Self {
                id: crate::db::new_id(),
                instance_id: (*instance_id).into(),
                module_id: module_id.into(),
                md5: md5.into(),
                created: now,
                updated: now,
                deleted: false,
                deleted_at: None,
            })
            .collect();
        // 8 parameters a row: 1,000 rows stay far below PostgreSQL's 65,535.
        for chunk in fresh.chunks(1000) {
            diesel::insert_into(instance_modules::table)
                .values(chunk)
                .execute(conn)?;
        }
        Ok(())
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
                .filter(instance_modules::deleted.eq(false)),
        )
        .set((
            instance_modules::deleted.eq(true),
            instance_modules::deleted_at.eq(crate::db::now()),
        ))
        .execute(conn)
    }

    /// The count-only summary of §8, grouped by md5, oldest first.
    pub fn count_by_md5(
        conn: &mut PgConnection,
        module_id: &str,
        module_md5: &str,
        include_clustered: bool,
        tenant: Option<&str>,
    ) -> QueryResult<Vec<Md5Count>> {
        let mut sql = String::from(
            "SELECT im.md5 AS module_md5, count(*) AS instance_count, (im.md5 = $2) AS current,
                    min(im.updated) AS min_updated_date, max(im.updated) AS max_updated_date
             FROM instance_modules im JOIN instances i ON i.id = im.instance_id
             WHERE im.module_id = $1 AND NOT im.deleted AND NOT i.deleted",
        );
        if !include_clustered {
            sql.push_str(" AND i.cluster_id IS NULL");
        }
        if tenant.is_some() {
            sql.push_str(" AND i.tenant_id = $3");
        }
        sql.push_str(" GROUP BY im.md5 ORDER BY min(im.updated)");
        let q = diesel::sql_query(sql)
            .bind::<Text, _>(module_id)
            .bind::<Text, _>(module_md5);
        match tenant {
            Some(t) => q.bind::<Text, _>(t).load(conn),
            None => q.load(conn),
        }
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
            .filter(instance_modules::deleted.eq(false))
            .select(instance_modules::instance_id);
        let mut q = instances::table
            .filter(instances::deleted.eq(false))
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
            .filter(instance_modules::deleted.eq(false))
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
            .filter(instance_modules::deleted.eq(false))
            .select(Self::as_select())
            .load(conn)
    }
}
