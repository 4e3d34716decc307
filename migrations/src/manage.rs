//! What `trove-manage` does, as functions tests and the stack script share.

use diesel::pg::PgConnection;
use diesel::Connection;
use trove_common::db::models::{Datastore, DatastoreVersion, Flavor};

/// `datastore_update <name> <default_version>`: creates the datastore, or sets its default version
/// (by name; empty leaves it unset).
pub fn datastore_update(
    conn: &mut PgConnection,
    name: &str,
    default_version: &str,
) -> anyhow::Result<Datastore> {
    conn.transaction(|conn| {
        let ds = Datastore::upsert(conn, name, None)?;
        if default_version.is_empty() {
            return Ok(ds);
        }
        let v = DatastoreVersion::by_name(conn, &ds.id, default_version)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                anyhow::anyhow!("Datastore version '{default_version}' cannot be found.")
            })?;
        Ok(Datastore::upsert(conn, name, Some(&v.id))?)
    })
}

/// `datastore_version_update <datastore> <version> <manager> <image_id> <packages> <active>`.
pub fn datastore_version_update(
    conn: &mut PgConnection,
    datastore: &str,
    version: &str,
    manager: &str,
    packages: Option<&str>,
    active: bool,
) -> anyhow::Result<DatastoreVersion> {
    conn.transaction(|conn| {
        let ds = Datastore::upsert(conn, datastore, None)?;
        Ok(DatastoreVersion::upsert(
            conn, &ds.id, version, manager, packages, active,
        )?)
    })
}

/// `flavor_create <id> <name> <ram> <vcpus> <disk> <ephemeral>`.
pub fn flavor_create(
    conn: &mut PgConnection,
    id: &str,
    name: &str,
    ram: i32,
    vcpus: i32,
    disk: i32,
    ephemeral: i32,
) -> anyhow::Result<()> {
    let f = Flavor {
        id: id.into(),
        name: name.into(),
        ram,
        vcpus,
        disk,
        ephemeral,
        deleted: false,
    };
    Ok(Flavor::upsert(conn, &f)?)
}

/// The walkthrough's catalogue: mysql 5.6 and redis 3.2.6 (each its datastore's default) and flavor 15.
pub fn seed_walkthrough(conn: &mut PgConnection) -> anyhow::Result<()> {
    datastore_version_update(conn, "mysql", "5.6", "mysql", None, true)?;
    datastore_update(conn, "mysql", "5.6")?;
    datastore_version_update(conn, "redis", "3.2.6", "redis", None, true)?;
    datastore_update(conn, "redis", "3.2.6")?;
    flavor_create(conn, "15", "anchor.seed-15", 1024, 1, 10, 0)?;
    Ok(())
}
