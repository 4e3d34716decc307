//! Flavors (our own table; Trove asks Nova).

use diesel::prelude::*;

use crate::db::schema::flavors;

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable, AsChangeset)]
#[diesel(table_name = flavors)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub ram: i32,
    pub vcpus: i32,
    pub disk: i32,
    pub ephemeral: i32,
    pub deleted: bool,
}

impl Flavor {
    pub fn find(conn: &mut PgConnection, id: &str) -> QueryResult<Option<Self>> {
        flavors::table
            .find(id)
            .filter(diesel::dsl::not(flavors::deleted))
            .select(Self::as_select())
            .first(conn)
            .optional()
    }

    pub fn all(conn: &mut PgConnection) -> QueryResult<Vec<Self>> {
        flavors::table
            .filter(diesel::dsl::not(flavors::deleted))
            .order(flavors::id)
            .select(Self::as_select())
            .load(conn)
    }

    /// The flavor as `create_instance` and `prepare` carry it.
    pub fn info(&self) -> crate::rpc::taskmanager::FlavorInfo {
        crate::rpc::taskmanager::FlavorInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            ram: self.ram,
            vcpus: self.vcpus,
            disk: self.disk,
            ephemeral: self.ephemeral,
        }
    }

    /// Creates or replaces a flavor (trove-manage flavor_create).
    pub fn upsert(conn: &mut PgConnection, f: &Self) -> QueryResult<()> {
        diesel::insert_into(flavors::table)
            .values(f)
            .on_conflict(flavors::id)
            .do_update()
            .set(f)
            .execute(conn)?;
        Ok(())
    }
}
