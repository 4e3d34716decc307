//! `guest_module_results`: what each guest last reported about each of its modules (the conductor's
//! `module_results`, docs/messaging.md §4). Observability only: it never changes `instance_modules`
//! (docs/module-semantics.md §11).

use chrono::NaiveDateTime;
use diesel::prelude::*;

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
    /// Every result stored for an instance, by module id.
    pub fn for_instance(conn: &mut PgConnection, instance_id: &str) -> QueryResult<Vec<Self>> {
        guest_module_results::table
            .filter(guest_module_results::instance_id.eq(instance_id))
            .order(guest_module_results::module_id)
            .select(Self::as_select())
            .load(conn)
    }
}
