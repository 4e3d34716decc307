//! `guest_module_results`: what each guest last reported about each of its modules (the conductor's
//! `module_results`, messaging.md §4). Observability only: it never changes `instance_modules`
//! (module-semantics §11).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamp};

use crate::db::schema::guest_module_results;

#[derive(Clone, Debug, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = guest_module_results)]
pub struct GuestModuleResult {
    pub instance_id: String,
    pub module_id: String,
    pub md5: String,
    /// `OK` or `ERROR`, as the guest said.
    pub status: String,
    pub message: Option<String>,
    /// The guest's own clock, `%Y-%m-%d %H:%M:%S.%f` cut to 22 characters (sorts as text).
    pub guest_created: Option<String>,
    pub guest_updated: Option<String>,
    /// When the conductor stored it.
    pub reported_at: NaiveDateTime,
}

impl GuestModuleResult {
    /// Inserts or replaces the row of (instance, module). A report whose `guest_updated` is older than
    /// the stored one changes nothing, so a redelivered old report never rolls the row back. Returns
    /// the number of rows written (0 or 1).
    pub fn upsert(conn: &mut PgConnection, r: &Self) -> QueryResult<usize> {
        crate::db::prepared(
            "INSERT INTO guest_module_results
               (instance_id, module_id, md5, status, message, guest_created, guest_updated, reported_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (instance_id, module_id) DO UPDATE SET
               md5 = excluded.md5, status = excluded.status, message = excluded.message,
               guest_created = excluded.guest_created, guest_updated = excluded.guest_updated,
               reported_at = excluded.reported_at
             WHERE excluded.guest_updated IS NULL OR guest_module_results.guest_updated IS NULL
                OR excluded.guest_updated >= guest_module_results.guest_updated",
        )
        .bind::<Text, _>(&r.instance_id)
        .bind::<Text, _>(&r.module_id)
        .bind::<Text, _>(&r.md5)
        .bind::<Text, _>(&r.status)
        .bind::<Nullable<Text>, _>(r.message.as_deref())
        .bind::<Nullable<Text>, _>(r.guest_created.as_deref())
        .bind::<Nullable<Text>, _>(r.guest_updated.as_deref())
        .bind::<Timestamp, _>(r.reported_at)
        .execute(conn)
    }

    /// Every result stored for an instance, by module id.
    pub fn for_instance(conn: &mut PgConnection, instance_id: &str) -> QueryResult<Vec<Self>> {
        guest_module_results::table
            .filter(guest_module_results::instance_id.eq(instance_id))
            .order(guest_module_results::module_id)
            .select(Self::as_select())
            .load(conn)
    }
}
