//! Durable reapply jobs and their per-instance items.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::{reapply_job_items, reapply_jobs};

#[derive(Clone, Debug, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = reapply_jobs)]
pub struct ReapplyJob {
    pub id: String,
    pub module_id: String,
    pub tenant_id: String,
    pub is_admin: bool,
    pub md5: Option<String>,
    pub include_clustered: bool,
    pub force: bool,
    pub batch_size: i32,
    pub batch_delay: i32,
    /// `queued`, `running`, `finished`.
    pub state: String,
    pub current_md5: Option<String>,
    pub total: i32,
    pub applied: i32,
    pub skipped: i32,
    pub failed: i32,
    pub next_batch_at: Option<NaiveDateTime>,
    pub request_id: String,
    pub created: NaiveDateTime,
    pub started: Option<NaiveDateTime>,
    pub finished: Option<NaiveDateTime>,
    /// When the broker confirmed the casts of the batch in flight (None: not yet, or no batch). It
    /// starts the batch's `module_reapply_instance_timeout`.
    pub batch_sent_at: Option<NaiveDateTime>,
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = reapply_job_items)]
pub struct ReapplyItem {
    pub job_id: String,
    pub instance_id: String,
    pub seq: i32,
    /// `pending`, `sent`, `answered`, `applied`, `skipped`, `failed`.
    pub state: String,
    pub batch: Option<i32>,
    /// When the item's cast went out: set when its batch is settled, from the batch's stamp (or the
    /// answer, if that is earlier).
    pub sent_at: Option<NaiveDateTime>,
    pub answered_at: Option<NaiveDateTime>,
    pub status: Option<String>,
    pub message: Option<String>,
}

/// What a new reapply job is made of: the request's choices.
#[derive(Clone, Debug)]
pub struct NewReapplyJob {
    pub id: String,
    pub module_id: String,
    pub tenant_id: String,
    pub is_admin: bool,
    pub md5: Option<String>,
    pub include_clustered: bool,
    pub force: bool,
    pub batch_size: i32,
    pub batch_delay: i32,
    pub request_id: String,
}

impl ReapplyJob {
    /// A job as it is first written: `queued` since `now`, no instance selected or counted yet, no
    /// batch sent.
    pub fn queued(new: NewReapplyJob, now: NaiveDateTime) -> Self {
        Self {
            id: new.id,
            module_id: new.module_id,
            tenant_id: new.tenant_id,
            is_admin: new.is_admin,
            md5: new.md5,
            include_clustered: new.include_clustered,
            force: new.force,
            batch_size: new.batch_size,
            batch_delay: new.batch_delay,
            state: "queued".into(),
            current_md5: None,
            total: 0,
            applied: 0,
            skipped: 0,
            failed: 0,
            next_batch_at: None,
            request_id: new.request_id,
            created: now,
            started: None,
            finished: None,
            batch_sent_at: None,
        }
    }

    pub fn insert(conn: &mut PgConnection, j: &Self) -> QueryResult<()> {
        diesel::insert_into(reapply_jobs::table)
            .values(j)
            .execute(conn)
            .map(|_| ())
    }

    pub fn find(conn: &mut PgConnection, id: &str) -> QueryResult<Option<Self>> {
        reapply_jobs::table
            .find(id)
            .select(Self::as_select())
            .first(conn)
            .optional()
    }

    /// Locks a job row for one step of the driver.
    pub fn lock(conn: &mut PgConnection, id: &str) -> QueryResult<Option<Self>> {
        reapply_jobs::table
            .find(id)
            .for_update()
            .select(Self::as_select())
            .first(conn)
            .optional()
    }

    pub fn for_module(
        conn: &mut PgConnection,
        module_id: &str,
        tenant: Option<&str>,
    ) -> QueryResult<Vec<Self>> {
        let mut q = reapply_jobs::table
            .filter(reapply_jobs::module_id.eq(module_id.to_owned()))
            .into_boxed();
        if let Some(t) = tenant {
            q = q.filter(reapply_jobs::tenant_id.eq(t.to_owned()));
        }
        q.order((reapply_jobs::created.desc(), reapply_jobs::id))
            .select(Self::as_select())
            .load(conn)
    }

    /// The job's failed instances, in the job's order, with why each failed (at most `limit`).
    pub fn failures(
        conn: &mut PgConnection,
        job_id: &str,
        limit: i64,
    ) -> QueryResult<Vec<(String, Option<String>)>> {
        use crate::db::schema::reapply_job_items as items;
        items::table
            .filter(items::job_id.eq(job_id.to_owned()))
            .filter(items::state.eq("failed"))
            .order(items::seq)
            .limit(limit)
            .select((items::instance_id, items::message))
            .load(conn)
    }

    /// Jobs not finished yet (a restarted taskmanager resumes them).
    pub fn active(conn: &mut PgConnection) -> QueryResult<Vec<Self>> {
        reapply_jobs::table
            .filter(reapply_jobs::state.eq_any(["queued", "running"]))
            .order(reapply_jobs::created)
            .select(Self::as_select())
            .load(conn)
    }
}

impl ReapplyItem {
    pub fn find(
        conn: &mut PgConnection,
        job_id: &str,
        instance_id: &str,
    ) -> QueryResult<Option<Self>> {
        reapply_job_items::table
            .find((job_id, instance_id))
            .select(Self::as_select())
            .first(conn)
            .optional()
    }
}
