//! Modules (docs/module-semantics.md §1–§7). Contents are stored encrypted; see `crate::crypto`.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::InstanceModule;
use crate::db::schema::modules;

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable, AsChangeset)]
#[diesel(table_name = modules, treat_none_as_null = true)]
pub struct Module {
    pub id: String,
    pub name: String,
    #[diesel(column_name = type_)]
    pub module_type: String,
    /// Ciphertext (never plaintext at rest).
    pub contents: String,
    pub description: Option<String>,
    pub tenant_id: Option<String>,
    pub datastore_id: Option<String>,
    pub datastore_version_id: Option<String>,
    pub auto_apply: bool,
    pub visible: bool,
    pub live_update: bool,
    pub priority_apply: bool,
    pub apply_order: i16,
    pub is_admin: bool,
    pub md5: String,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub deleted: bool,
    pub deleted_at: Option<NaiveDateTime>,
}

/// A module about to be inserted is a full row.
pub type NewModule = Module;
/// An update writes the whole row back (the service computes every field).
pub type ModuleChangeset = Module;

/// Who is asking: decides which modules are visible.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub project_id: &'a str,
    pub is_admin: bool,
}

/// `column = value OR column IS NULL`: a module of this project (datastore, version), or one for all
/// of them (docs/module-semantics.md §1, §13). The one spelling of that rule.
fn own_or_all<C>(
    column: C,
    value: &str,
) -> diesel::dsl::Or<diesel::dsl::Eq<C, String>, diesel::dsl::IsNull<C>>
where
    C: diesel::Expression<SqlType = diesel::sql_types::Nullable<diesel::sql_types::Text>>
        + diesel::ExpressionMethods
        + Copy,
{
    column.eq(value.to_owned()).or(column.is_null())
}

impl Module {
    /// Loads one module with §1 visibility: admins see any live module; others see live, visible modules
    /// of their project or of all tenants.
    pub fn find_visible(
        conn: &mut PgConnection,
        id: &str,
        caller: Caller<'_>,
    ) -> QueryResult<Option<Self>> {
        let mut q = modules::table
            .filter(modules::id.eq(id))
            .filter(diesel::dsl::not(modules::deleted))
            .into_boxed();
        if !caller.is_admin {
            q = q
                .filter(modules::visible.eq(true))
                .filter(own_or_all(modules::tenant_id, caller.project_id));
        }
        q.select(Self::as_select()).first(conn).optional()
    }

    /// Loads modules by id for applying (§1): live, and for non-admins of their project or all tenants;
    /// `visible` is not checked; ids out of reach are dropped. Keeps the order of `ids`.
    pub fn load_for_apply(
        conn: &mut PgConnection,
        ids: &[String],
        caller: Caller<'_>,
    ) -> QueryResult<Vec<Self>> {
        let mut q = modules::table
            .filter(modules::id.eq_any(ids))
            .filter(diesel::dsl::not(modules::deleted))
            .into_boxed();
        if !caller.is_admin {
            q = q.filter(own_or_all(modules::tenant_id, caller.project_id));
        }
        let found: Vec<Self> = q.select(Self::as_select()).load(conn)?;
        let mut out = Vec::with_capacity(found.len());
        for id in ids {
            if let Some(m) = found.iter().find(|m| &m.id == id) {
                if !out.iter().any(|o: &Self| o.id == m.id) {
                    out.push(m.clone());
                }
            }
        }
        Ok(out)
    }

    /// The auto-apply modules for an instance of (project, datastore, version) (§13 step 2).
    pub fn auto_apply_for(
        conn: &mut PgConnection,
        project: &str,
        ds_id: &str,
        ver_id: &str,
    ) -> QueryResult<Vec<Self>> {
        modules::table
            .filter(diesel::dsl::not(modules::deleted))
            .filter(modules::auto_apply.eq(true))
            .filter(own_or_all(modules::tenant_id, project))
            .filter(own_or_all(modules::datastore_id, ds_id))
            .filter(own_or_all(modules::datastore_version_id, ver_id))
            .order((modules::created, modules::id))
            .select(Self::as_select())
            .load(conn)
    }

    /// `GET /modules` (§1): admins every live module; others visible ones of their project or all.
    /// `datastore`: `Some(None)` → only modules for all datastores; `Some(Some(id))` → exactly that one.
    pub fn list(
        conn: &mut PgConnection,
        caller: Caller<'_>,
        datastore: Option<Option<&str>>,
    ) -> QueryResult<Vec<Self>> {
        let mut q = modules::table
            .filter(diesel::dsl::not(modules::deleted))
            .into_boxed();
        if !caller.is_admin {
            q = q
                .filter(modules::visible.eq(true))
                .filter(own_or_all(modules::tenant_id, caller.project_id));
        }
        match datastore {
            None => {}
            Some(None) => q = q.filter(modules::datastore_id.is_null()),
            Some(Some(id)) => q = q.filter(modules::datastore_id.eq(id.to_owned())),
        }
        q.order((modules::created, modules::id))
            .select(Self::as_select())
            .load(conn)
    }

    /// Another live module with the same uniqueness key (§3 step 5), type compared lower-cased.
    pub fn duplicate_exists(conn: &mut PgConnection, m: &Self) -> QueryResult<bool> {
        let mut q = modules::table
            .filter(diesel::dsl::not(modules::deleted))
            .filter(modules::id.ne(&m.id))
            .filter(modules::name.eq(&m.name))
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("lower(type) = ")
                    .bind::<diesel::sql_types::Text, _>(m.module_type.to_lowercase()),
            )
            .into_boxed();
        q = match &m.tenant_id {
            Some(t) => q.filter(modules::tenant_id.eq(t.clone())),
            None => q.filter(modules::tenant_id.is_null()),
        };
        q = match &m.datastore_id {
            Some(t) => q.filter(modules::datastore_id.eq(t.clone())),
            None => q.filter(modules::datastore_id.is_null()),
        };
        q = match &m.datastore_version_id {
            Some(t) => q.filter(modules::datastore_version_id.eq(t.clone())),
            None => q.filter(modules::datastore_version_id.is_null()),
        };
        diesel::select(diesel::dsl::exists(q.select(modules::id))).get_result(conn)
    }

    pub fn insert(conn: &mut PgConnection, m: &Self) -> QueryResult<()> {
        diesel::insert_into(modules::table)
            .values(m)
            .execute(conn)
            .map(|_| ())
    }

    pub fn save(conn: &mut PgConnection, m: &Self) -> QueryResult<()> {
        diesel::update(modules::table.find(&m.id))
            .set(m)
            .execute(conn)
            .map(|_| ())
    }

    /// The live-update guard (§5/§6): is md5 `md5` of this module on a live instance?
    pub fn applied_to_live_instance(
        conn: &mut PgConnection,
        id: &str,
        md5: &str,
    ) -> QueryResult<bool> {
        Ok(InstanceModule::live_count(conn, id, md5)? > 0)
    }

    /// `instance_count` of show (§7): live rows with the current md5 on live instances.
    pub fn instance_count(conn: &mut PgConnection, id: &str, md5: &str) -> QueryResult<i64> {
        InstanceModule::live_count(conn, id, md5)
    }
}

impl Module {
    /// Trove's detailed module view as a guest receives it, with `contents` as given: the one place
    /// a module's view is built. The api's list and show views are this payload without `contents`
    /// (and, for the list, without `live_update`).
    ///
    /// `datastore` and `datastore_version` are the names of `datastore_id` and
    /// `datastore_version_id` where they were found; the view says `all` for a module bound to no
    /// datastore (or version), and the id itself for a row that no longer exists.
    pub fn payload(
        &self,
        datastore: Option<String>,
        datastore_version: Option<String>,
        contents: Option<String>,
    ) -> crate::rpc::guest::ModulePayload {
        let named = |id: &Option<String>, name: Option<String>| match id {
            None => "all".to_owned(),
            Some(id) => name.unwrap_or_else(|| id.clone()),
        };
        crate::rpc::guest::ModulePayload {
            id: self.id.clone(),
            name: self.name.clone(),
            module_type: self.module_type.clone(),
            description: self.description.clone(),
            tenant_id: self.tenant_id.clone(),
            tenant: self.tenant_id.clone().unwrap_or_else(|| "all".into()),
            datastore_id: self.datastore_id.clone(),
            datastore: named(&self.datastore_id, datastore),
            datastore_version_id: self.datastore_version_id.clone(),
            datastore_version: named(&self.datastore_version_id, datastore_version),
            auto_apply: self.auto_apply,
            priority_apply: self.priority_apply,
            apply_order: i32::from(self.apply_order),
            is_admin: self.is_admin,
            visible: self.visible,
            live_update: self.live_update,
            md5: self.md5.clone(),
            created: Some(crate::api_time(self.created)),
            updated: Some(crate::api_time(self.updated)),
            contents,
        }
    }

    /// [`Module::payload`] with the datastore and version names read from the database.
    pub fn guest_payload(
        &self,
        conn: &mut PgConnection,
        contents: Option<String>,
    ) -> QueryResult<crate::rpc::guest::ModulePayload> {
        use crate::db::schema::{datastore_versions, datastores};
        let datastore = match &self.datastore_id {
            Some(id) => datastores::table
                .find(id)
                .select(datastores::name)
                .first::<String>(conn)
                .optional()?,
            None => None,
        };
        let version = match &self.datastore_version_id {
            Some(id) => datastore_versions::table
                .find(id)
                .select(datastore_versions::name)
                .first::<String>(conn)
                .optional()?,
            None => None,
        };
        Ok(self.payload(datastore, version, contents))
    }
}
