//! Clusters.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::clusters;
use crate::status::ClusterTask;

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = clusters)]
pub struct Cluster {
    pub id: String,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    pub name: String,
    pub task_id: i32,
    pub tenant_id: String,
    pub datastore_version_id: String,
    pub configuration_id: Option<String>,
    pub deleted: bool,
    pub deleted_at: Option<NaiveDateTime>,
}

impl Cluster {
    pub fn find(
        conn: &mut PgConnection,
        id: &str,
        tenant: Option<&str>,
    ) -> QueryResult<Option<Self>> {
        let mut q = clusters::table
            .filter(clusters::id.eq(id))
            .filter(diesel::dsl::not(clusters::deleted))
            .into_boxed();
        if let Some(t) = tenant {
            q = q.filter(clusters::tenant_id.eq(t.to_owned()));
        }
        q.select(Self::as_select()).first(conn).optional()
    }

    pub fn insert(conn: &mut PgConnection, c: &Self) -> QueryResult<()> {
        diesel::insert_into(clusters::table)
            .values(c)
            .execute(conn)
            .map(|_| ())
    }

    pub fn set_task(conn: &mut PgConnection, id: &str, task: ClusterTask) -> QueryResult<usize> {
        diesel::update(clusters::table.find(id))
            .set((
                clusters::task_id.eq(task.code()),
                clusters::updated.eq(crate::db::now()),
            ))
            .execute(conn)
    }

    pub fn mark_deleted(conn: &mut PgConnection, id: &str) -> QueryResult<usize> {
        let now = crate::db::now();
        diesel::update(clusters::table.find(id))
            .set((
                clusters::deleted.eq(true),
                clusters::deleted_at.eq(now),
                clusters::updated.eq(now),
                clusters::task_id.eq(ClusterTask::None.code()),
            ))
            .execute(conn)
    }

    /// Live clusters with a task in progress (the taskmanager resumes them after a restart).
    pub fn in_progress(conn: &mut PgConnection) -> QueryResult<Vec<Self>> {
        clusters::table
            .filter(diesel::dsl::not(clusters::deleted))
            .filter(clusters::task_id.ne(ClusterTask::None.code()))
            .select(Self::as_select())
            .load(conn)
    }

    pub fn page(
        conn: &mut PgConnection,
        tenant: &str,
        marker: Option<&str>,
        limit: i64,
    ) -> QueryResult<Vec<Self>> {
        let mut q = clusters::table
            .filter(clusters::tenant_id.eq(tenant))
            .filter(diesel::dsl::not(clusters::deleted))
            .into_boxed();
        if let Some(m) = marker {
            q = q.filter(clusters::id.gt(m.to_owned()));
        }
        q.order(clusters::id)
            .limit(limit + 1)
            .select(Self::as_select())
            .load(conn)
    }
}

/// Queries the taskmanager's reconciler needs (added for trove-taskmanager).
impl Cluster {
    /// Moves the task from `from` to `to` only if it is still `from` (compare-and-set). Returns the
    /// rows changed (0 or 1).
    pub fn set_task_if(
        conn: &mut PgConnection,
        id: &str,
        from: ClusterTask,
        to: ClusterTask,
    ) -> QueryResult<usize> {
        diesel::update(
            clusters::table
                .find(id)
                .filter(clusters::task_id.eq(from.code()))
                .filter(diesel::dsl::not(clusters::deleted)),
        )
        .set((
            clusters::task_id.eq(to.code()),
            clusters::updated.eq(crate::db::now()),
        ))
        .execute(conn)
    }
}
