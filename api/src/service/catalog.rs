//! Datastores, versions and flavors, loaded once per request (they are a handful of rows).

use diesel::pg::PgConnection;
use diesel::QueryResult;
use trove_common::db::models::{Datastore, DatastoreVersion};

use crate::error::ApiError;

/// Every datastore and version, for name lookups and resolution.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub datastores: Vec<Datastore>,
    pub versions: Vec<DatastoreVersion>,
}

/// Looks like a UUID (Trove's `utils.is_uuid_like`).
pub fn is_uuid_like(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

impl Catalog {
    pub fn load(conn: &mut PgConnection) -> QueryResult<Self> {
        use diesel::prelude::*;
        use trove_common::db::schema::{datastore_versions, datastores};
        Ok(Self {
            datastores: datastores::table
                .order(datastores::name)
                .select(Datastore::as_select())
                .load(conn)?,
            versions: datastore_versions::table
                .order((datastore_versions::datastore_id, datastore_versions::name))
                .select(DatastoreVersion::as_select())
                .load(conn)?,
        })
    }

    pub fn version(&self, id: &str) -> Option<&DatastoreVersion> {
        self.versions.iter().find(|v| v.id == id)
    }

    pub fn datastore(&self, id: &str) -> Option<&Datastore> {
        self.datastores.iter().find(|d| d.id == id)
    }

    /// A datastore by id or name; 404 `Datastore '<x>' cannot be found.`
    pub fn find_datastore(&self, key: &str) -> Result<&Datastore, ApiError> {
        self.datastores
            .iter()
            .find(|d| d.id == key)
            .or_else(|| self.datastores.iter().find(|d| d.name == key))
            .ok_or_else(|| ApiError::not_found(format!("Datastore '{key}' cannot be found.")))
    }

    /// A version within a datastore: uuid-like → by id (404 `DBDatastoreVersion Not Found`), else by name
    /// (400 not found / multiple).
    pub fn find_version(&self, ds: &Datastore, key: &str) -> Result<&DatastoreVersion, ApiError> {
        if is_uuid_like(key) {
            return self
                .versions
                .iter()
                .find(|v| v.id == key && v.datastore_id == ds.id)
                .ok_or_else(|| ApiError::not_found("DBDatastoreVersion Not Found"));
        }
        let found: Vec<&DatastoreVersion> = self
            .versions
            .iter()
            .filter(|v| v.datastore_id == ds.id && v.name == key)
            .collect();
        match found.len() {
            0 => Err(ApiError::bad(format!("Datastore version '{key}' cannot be found."))),
            1 => Ok(found[0]),
            _ => Err(ApiError::bad(format!(
                "Multiple datastore versions found for '{key}', use an UUID or specify both the name and version number to be more specific."
            ))),
        }
    }

    /// `get_datastore_or_version` of module create/update (docs/module-semantics.md §3 step 4): returns the
    /// datastore id and version id to store. The version must be active.
    pub fn resolve_for_module(
        &self,
        ds: Option<&str>,
        ver: Option<&str>,
    ) -> Result<(Option<String>, Option<String>), ApiError> {
        match (ds, ver) {
            (None, None) => Ok((None, None)),
            (None, Some(v)) => Err(ApiError::bad(format!(
                "Datastore 'None' has no version '{v}'."
            ))),
            (Some(d), None) => Ok((Some(self.find_datastore(d)?.id.clone()), None)),
            (Some(d), Some(v)) => {
                let ds = self.find_datastore(d)?;
                let ver = self.find_version(ds, v)?;
                if !ver.active {
                    return Err(ApiError::bad(format!(
                        "Datastore version '{}' is not active.",
                        ver.name
                    )));
                }
                Ok((Some(ds.id.clone()), Some(ver.id.clone())))
            }
        }
    }

    /// Datastore and version for a new instance or cluster (defaults from configuration).
    pub fn resolve_for_instance(
        &self,
        ds: Option<&str>,
        ver: Option<&str>,
        default_datastore: Option<&str>,
    ) -> Result<(&Datastore, &DatastoreVersion), ApiError> {
        let ds = match ds {
            Some(d) => self.find_datastore(d)?,
            None => {
                let Some(def) = default_datastore else {
                    return Err(ApiError::bad(
                        "Please specify datastore. No default datastore is defined.",
                    ));
                };
                self.find_datastore(def).map_err(|_| {
                    ApiError::bad(format!(
                        "Please specify datastore. Default datastore '{def}' cannot be found."
                    ))
                })?
            }
        };
        let ver = match ver {
            Some(v) => self.find_version(ds, v)?,
            None => ds
                .default_version_id
                .as_deref()
                .and_then(|id| self.version(id))
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "Default version for datastore '{}' not found.",
                        ds.name
                    ))
                })?,
        };
        if !ver.active {
            return Err(ApiError::bad(format!(
                "Datastore version '{}' is not active.",
                ver.name
            )));
        }
        Ok((ds, ver))
    }
}
