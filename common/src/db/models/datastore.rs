//! Datastores and their versions.

use diesel::prelude::*;

use crate::db::schema::{datastore_versions, datastores};

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable, AsChangeset)]
#[diesel(table_name = datastores)]
pub struct Datastore {
    pub id: String,
    pub name: String,
    pub default_version_id: Option<String>,
}

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable, AsChangeset)]
#[diesel(table_name = datastore_versions)]
pub struct DatastoreVersion {
    pub id: String,
    pub datastore_id: String,
    pub name: String,
    pub version: Option<String>,
    pub manager: String,
    pub image_id: Option<String>,
    pub image_tags: Option<String>,
    pub packages: Option<String>,
    pub active: bool,
}

impl Datastore {
    /// By id, else by name (Trove's `get_by_id_or_name`).
    pub fn find_by_id_or_name(conn: &mut PgConnection, key: &str) -> QueryResult<Option<Self>> {
        if let Some(ds) = datastores::table
            .find(key)
            .select(Self::as_select())
            .first(conn)
            .optional()?
        {
            return Ok(Some(ds));
        }
        datastores::table
            .filter(datastores::name.eq(key))
            .select(Self::as_select())
            .first(conn)
            .optional()
    }

    pub fn find(conn: &mut PgConnection, id: &str) -> QueryResult<Self> {
        datastores::table
            .find(id)
            .select(Self::as_select())
            .first(conn)
    }

    pub fn all(conn: &mut PgConnection) -> QueryResult<Vec<Self>> {
        datastores::table
            .order(datastores::name)
            .select(Self::as_select())
            .load(conn)
    }

    /// Creates or updates a datastore by name (trove-manage datastore_update).
    pub fn upsert(
        conn: &mut PgConnection,
        name: &str,
        default_version_id: Option<&str>,
    ) -> QueryResult<Self> {
        let existing = datastores::table
            .filter(datastores::name.eq(name))
            .select(Self::as_select())
            .first(conn)
            .optional()?;
        match existing {
            Some(mut ds) => {
                if default_version_id.is_some() {
                    ds.default_version_id = default_version_id.map(str::to_owned);
                    diesel::update(datastores::table.find(&ds.id))
                        .set(&ds)
                        .execute(conn)?;
                }
                Ok(ds)
            }
            None => {
                let ds = Self {
                    id: super::super::new_id(),
                    name: name.into(),
                    default_version_id: default_version_id.map(Into::into),
                };
                diesel::insert_into(datastores::table)
                    .values(&ds)
                    .execute(conn)?;
                Ok(ds)
            }
        }
    }
}

impl DatastoreVersion {
    pub fn find(conn: &mut PgConnection, id: &str) -> QueryResult<Self> {
        datastore_versions::table
            .find(id)
            .select(Self::as_select())
            .first(conn)
    }

    pub fn for_datastore(conn: &mut PgConnection, ds_id: &str) -> QueryResult<Vec<Self>> {
        datastore_versions::table
            .filter(datastore_versions::datastore_id.eq(ds_id))
            .order(datastore_versions::name)
            .select(Self::as_select())
            .load(conn)
    }

    pub fn by_name(conn: &mut PgConnection, ds_id: &str, name: &str) -> QueryResult<Vec<Self>> {
        datastore_versions::table
            .filter(datastore_versions::datastore_id.eq(ds_id))
            .filter(datastore_versions::name.eq(name))
            .select(Self::as_select())
            .load(conn)
    }

    /// The name shown for this version's `version` number (defaults to the name).
    pub fn version_number(&self) -> &str {
        self.version.as_deref().unwrap_or(&self.name)
    }

    /// Creates or updates a version by (datastore, name) (trove-manage datastore_version_update).
    pub fn upsert(
        conn: &mut PgConnection,
        ds_id: &str,
        name: &str,
        manager: &str,
        packages: Option<&str>,
        active: bool,
    ) -> QueryResult<Self> {
        let existing = Self::by_name(conn, ds_id, name)?.into_iter().next();
        let v = Self {
            id: existing
                .as_ref()
                .map(|e| e.id.clone())
                .unwrap_or_else(super::super::new_id),
            datastore_id: ds_id.into(),
            name: name.into(),
            version: Some(
                existing
                    .as_ref()
                    .and_then(|e| e.version.clone())
                    .unwrap_or_else(|| name.into()),
            ),
            manager: manager.into(),
            image_id: existing.as_ref().and_then(|e| e.image_id.clone()),
            image_tags: existing.as_ref().and_then(|e| e.image_tags.clone()),
            packages: packages.map(Into::into),
            active,
        };
        diesel::insert_into(datastore_versions::table)
            .values(&v)
            .on_conflict(datastore_versions::id)
            .do_update()
            .set(&v)
            .execute(conn)?;
        Ok(v)
    }
}
