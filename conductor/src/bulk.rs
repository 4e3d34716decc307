//! A batch's database work in a few set-based statements instead of a handful per message.
//!
//! [`apply_batch`] gives every message the outcome [`handlers::apply`] would have given it, applied
//! one after the other in the batch's order. The two messages a fleet sends most, heartbeats and
//! reapply answers (`module_results` with a `job_id`), are applied together: one statement for all
//! the heartbeats and one for all the answers, each checking the instances, writing every table it
//! touches through data-modifying CTEs and returning what it did. One at a time, each message took
//! six or seven round trips. Everything else, and every message of an instance that has more than one
//! message in the batch, goes through [`handlers::apply`] one by one, each in a savepoint of its own.
//!
//! A statement is atomic on its own, so outside a transaction each set-based statement commits by
//! itself (no `BEGIN`/`COMMIT` round trips); inside one (tests) it runs in a savepoint. If it fails,
//! its messages are applied one by one instead, so a bad message still only fails (and retries)
//! itself.

use std::collections::{HashMap, HashSet};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{Array, Double, Integer, Nullable, Text, Timestamp};
use trove_common::db::schema::reapply_jobs;
use trove_common::rpc::conductor::ConductorMsg;
use trove_common::rpc::guest::ModuleResult;
use trove_common::status::ServiceStatus;

use crate::handlers::{
    self, job_verdict, result_row, Applied, HeartbeatOutcome, ModuleResultsOutcome, HEARTBEAT,
};

/// The module of each reapply job, cached: a job's module never changes, and every answer of a
/// fleet-wide reapply names the same job.
#[derive(Clone)]
pub struct JobModules(moka::sync::Cache<String, String>);

impl Default for JobModules {
    fn default() -> Self {
        Self(moka::sync::Cache::new(1024))
    }
}

impl std::fmt::Debug for JobModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobModules")
            .field("cached", &self.0.entry_count())
            .finish()
    }
}

impl JobModules {
    /// job id → module id for `job_ids`; a job with no row (deleted) is absent.
    fn resolve<'a>(
        &self,
        c: &mut PgConnection,
        job_ids: impl IntoIterator<Item = &'a str>,
    ) -> QueryResult<HashMap<String, String>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        for id in job_ids {
            match self.0.get(id) {
                Some(m) => {
                    out.insert(id.to_owned(), m);
                }
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            let found: Vec<(String, String)> = reapply_jobs::table
                .filter(reapply_jobs::id.eq_any(&missing))
                .select((reapply_jobs::id, reapply_jobs::module_id))
                .load(c)?;
            for (job, module) in found {
                self.0.insert(job.clone(), module.clone());
                out.insert(job, module);
            }
        }
        Ok(out)
    }
}

/// Applies `msgs` (sorted by instance id) and returns one result per message, in order.
///
/// Outside a transaction, each set-based statement commits on its own and the messages applied one
/// by one share one transaction (a savepoint each). Inside a transaction everything is part of it.
pub fn apply_batch(
    conn: &mut PgConnection,
    msgs: &[ConductorMsg],
    jobs: &JobModules,
) -> Vec<QueryResult<Applied>> {
    let mut out: Vec<Option<QueryResult<Applied>>> = msgs.iter().map(|_| None).collect();
    let (beats, answers) = set_based(msgs);
    let in_transaction = matches!(
        AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth(),
        Ok(Some(_))
    );
    type Statement<'a> = &'a dyn Fn(&mut PgConnection) -> QueryResult<Vec<Applied>>;
    let statements: [(&str, &[usize], Statement<'_>); 2] = [
        ("heartbeats", &beats, &|c| heartbeats(c, msgs, &beats)),
        ("reapply answers", &answers, &|c| {
            reapply_answers(c, msgs, &answers, jobs)
        }),
    ];
    for (kind, idx, run) in statements {
        if idx.is_empty() {
            continue;
        }
        // A statement is atomic: only inside a transaction does it need a savepoint to fail alone.
        let applied = if in_transaction {
            conn.transaction(|c| run(c))
        } else {
            run(conn)
        };
        match applied {
            Ok(applied) => {
                for (&i, a) in idx.iter().zip(applied) {
                    out[i] = Some(Ok(a));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, kind, "set-based batch failed; applying its messages one by one");
            }
        }
    }
    let rest: Vec<usize> = (0..msgs.len()).filter(|&i| out[i].is_none()).collect();
    if !rest.is_empty() {
        let one_by_one = conn.transaction(|c| {
            Ok::<_, diesel::result::Error>(
                rest.iter()
                    .map(|&i| (i, handlers::apply(c, &msgs[i])))
                    .collect::<Vec<_>>(),
            )
        });
        match one_by_one {
            Ok(done) => {
                for (i, r) in done {
                    out[i] = Some(r);
                }
            }
            // The commit failed: none of them is applied.
            Err(e) => {
                for &i in &rest {
                    out[i] = Some(Err(clone_error(&e)));
                }
            }
        }
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// A database error for each of several messages (diesel's error is not `Clone`).
fn clone_error(e: &diesel::result::Error) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(e.to_string().into())
}

/// The indices of the heartbeats and of the reapply answers applied together: messages of instances
/// with no other message in the batch, answers whose results name each module at most once.
fn set_based(msgs: &[ConductorMsg]) -> (Vec<usize>, Vec<usize>) {
    let mut per_instance: HashMap<&str, usize> = HashMap::new();
    for m in msgs {
        *per_instance.entry(m.instance_id()).or_default() += 1;
    }
    let (mut beats, mut answers) = (Vec::new(), Vec::new());
    for (i, m) in msgs.iter().enumerate() {
        if per_instance[m.instance_id()] != 1 {
            continue;
        }
        match m {
            ConductorMsg::Heartbeat { .. } => beats.push(i),
            ConductorMsg::ModuleResults {
                job_id: Some(_),
                results,
                ..
            } => {
                let mut seen = HashSet::new();
                if results.iter().all(|r| seen.insert(r.id.as_str())) {
                    answers.push(i);
                }
            }
            _ => {}
        }
    }
    (beats, answers)
}

/// What a set-based statement returns: one row per fact about an instance.
#[derive(QueryableByName)]
struct Fact {
    #[diesel(sql_type = Text)]
    v: String,
    #[diesel(sql_type = Text)]
    k: String,
}

/// Tallies facts: instance → kind → how many.
fn tally(facts: Vec<Fact>) -> HashMap<String, HashMap<String, usize>> {
    let mut by: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for f in facts {
        *by.entry(f.v).or_default().entry(f.k).or_default() += 1;
    }
    by
}

/// The heartbeats at `idx` (one per instance), in one statement: the instance must be live, the
/// report newer than the last one seen (`conductor_lastseen`), then the status is set from the
/// description, except that RESTART_REQUIRED is kept (only `updated_at` moves) and an unknown
/// description changes nothing. One outcome per heartbeat, in the order of `idx`.
fn heartbeats(
    c: &mut PgConnection,
    msgs: &[ConductorMsg],
    idx: &[usize],
) -> QueryResult<Vec<Applied>> {
    let mut ids = Vec::with_capacity(idx.len());
    let mut sents = Vec::with_capacity(idx.len());
    let mut codes = Vec::with_capacity(idx.len());
    let mut descrs = Vec::with_capacity(idx.len());
    let mut statuses = Vec::with_capacity(idx.len());
    for &i in idx {
        let ConductorMsg::Heartbeat {
            instance_id,
            payload,
            sent,
        } = &msgs[i]
        else {
            unreachable!("set_based() chose heartbeats")
        };
        let status = ServiceStatus::from_description(&payload.service_status);
        ids.push(instance_id.as_str());
        sents.push(*sent);
        codes.push(status.map(ServiceStatus::code));
        descrs.push(status.map(ServiceStatus::description));
        statuses.push(status);
    }
    let facts = trove_common::db::prepared(
        "WITH u AS (
           SELECT * FROM unnest($1::text[], $2::float8[], $3::int4[], $4::text[])
                      AS u(instance_id, sent, code, descr)
         ), live AS (
           SELECT id FROM instances WHERE id = ANY($1) AND deleted = false
         ), seen AS (
           INSERT INTO conductor_lastseen (instance_id, method_name, sent)
           SELECT u.instance_id, $5, u.sent FROM u JOIN live ON live.id = u.instance_id
            ORDER BY u.instance_id
           ON CONFLICT (instance_id, method_name) DO UPDATE SET sent = excluded.sent
           WHERE excluded.sent > conductor_lastseen.sent
           RETURNING instance_id
         ), cur AS (
           SELECT s.instance_id, s.status_id FROM service_statuses s
            WHERE s.instance_id IN (SELECT instance_id FROM seen)
         ), changed AS (
           UPDATE service_statuses s
              SET status_id = CASE WHEN s.status_id = $6 THEN s.status_id ELSE u.code END,
                  status_description = CASE WHEN s.status_id = $6 THEN s.status_description
                                            ELSE u.descr END,
                  updated_at = $7
             FROM u
            WHERE s.instance_id = u.instance_id
              AND s.instance_id IN (SELECT instance_id FROM seen)
              AND (s.status_id = $6 OR u.code IS NOT NULL)
           RETURNING s.instance_id
         )
         SELECT id AS v, 'live' AS k FROM live
         UNION ALL SELECT instance_id, 'seen' FROM seen
         UNION ALL SELECT instance_id, CASE WHEN status_id = $6 THEN 'kept' ELSE 'row' END FROM cur
         UNION ALL SELECT instance_id, 'changed' FROM changed",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<Double>, _>(&sents)
    .bind::<Array<Nullable<Integer>>, _>(&codes)
    .bind::<Array<Nullable<Text>>, _>(&descrs)
    .bind::<Text, _>(HEARTBEAT)
    .bind::<Integer, _>(ServiceStatus::RestartRequired.code())
    .bind::<Timestamp, _>(trove_common::db::now())
    .load::<Fact>(c)?;
    let facts = tally(facts);
    let has = |id: &str, k: &str| facts.get(id).is_some_and(|f| f.contains_key(k));
    Ok(ids
        .iter()
        .zip(&statuses)
        .map(|(&id, status)| {
            Applied::Heartbeat(if !has(id, "live") {
                HeartbeatOutcome::InstanceGone
            } else if !has(id, "seen") {
                HeartbeatOutcome::Stale
            } else if has(id, "kept") {
                HeartbeatOutcome::KeptRestartRequired
            } else if !has(id, "row") {
                HeartbeatOutcome::NoStatusRow
            } else {
                match status {
                    Some(status) => HeartbeatOutcome::Applied(*status),
                    None => HeartbeatOutcome::UnknownStatus,
                }
            })
        })
        .collect())
}

/// The reapply answers at `idx` (one per instance), in one statement: for live instances, every
/// storable result goes to `guest_module_results` (unless the stored row is newer), and the job item
/// takes the answer if it is still `sent`. One outcome per answer, in the order of `idx`.
///
/// The item's state is tested with `IS NOT DISTINCT FROM` (the same for a `NOT NULL` column) so that
/// no index on `state` can serve it: `sent` is a passing state, the planner's statistics put few items
/// in it, and with `= 'sent'` it scanned every `sent` item of the job through the partial index
/// `reapply_job_items_sent` and hash-joined them with the answers: 10,000 items read to answer 58, at
/// every batch. Now each answer finds its item by primary key.
fn reapply_answers(
    c: &mut PgConnection,
    msgs: &[ConductorMsg],
    idx: &[usize],
    jobs: &JobModules,
) -> QueryResult<Vec<Applied>> {
    struct Answer<'a> {
        instance_id: &'a str,
        job_id: &'a str,
        results: &'a [ModuleResult],
        error: Option<&'a str>,
    }
    let answers: Vec<Answer<'_>> = idx
        .iter()
        .map(|&i| match &msgs[i] {
            ConductorMsg::ModuleResults {
                instance_id,
                results,
                job_id: Some(job_id),
                error,
                ..
            } => Answer {
                instance_id,
                job_id,
                results,
                error: error.as_deref(),
            },
            _ => unreachable!("set_based() chose reapply answers"),
        })
        .collect();
    let now = trove_common::db::now();
    // guest_module_results: every storable result of every answer, in (instance, module) order.
    let mut rows = Vec::new();
    for a in &answers {
        for r in a.results {
            match result_row(a.instance_id, r, now) {
                Some(row) => rows.push(row),
                None => handlers::warn_malformed(r),
            }
        }
    }
    rows.sort_by(|x, y| (&x.instance_id, &x.module_id).cmp(&(&y.instance_id, &y.module_id)));
    // The verdicts, from each job's module.
    let modules = jobs.resolve(c, answers.iter().map(|a| a.job_id))?;
    let verdicts: Vec<(&'static str, Option<String>)> = answers
        .iter()
        .map(|a| {
            job_verdict(
                modules.get(a.job_id).map(String::as_str),
                a.results,
                a.error,
            )
        })
        .collect();
    let facts = trove_common::db::prepared(
        "WITH live AS (
           SELECT id FROM instances WHERE id = ANY($1) AND deleted = false
         ), r AS (
           SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                $7::text[], $8::text[])
                    WITH ORDINALITY AS r(instance_id, module_id, md5, status, message,
                                         guest_created, guest_updated, n)
         ), stored AS (
           INSERT INTO guest_module_results
             (instance_id, module_id, md5, status, message, guest_created, guest_updated, reported_at)
           SELECT r.instance_id, r.module_id, r.md5, r.status, r.message, r.guest_created,
                  r.guest_updated, $9
             FROM r JOIN live ON live.id = r.instance_id
            ORDER BY r.n
           ON CONFLICT (instance_id, module_id) DO UPDATE SET
             md5 = excluded.md5, status = excluded.status, message = excluded.message,
             guest_created = excluded.guest_created, guest_updated = excluded.guest_updated,
             reported_at = excluded.reported_at
           WHERE excluded.guest_updated IS NULL OR guest_module_results.guest_updated IS NULL
              OR excluded.guest_updated >= guest_module_results.guest_updated
           RETURNING instance_id
         ), a AS (
           SELECT * FROM unnest($1::text[], $10::text[], $11::text[], $12::text[])
                      AS a(instance_id, job_id, status, message)
         ), answered AS (
           UPDATE reapply_job_items i
              SET state = 'answered', answered_at = $9, status = a.status, message = a.message
             FROM a
            WHERE i.job_id = a.job_id AND i.instance_id = a.instance_id
              AND i.state IS NOT DISTINCT FROM 'sent'
              AND a.instance_id IN (SELECT id FROM live)
           RETURNING i.instance_id
         )
         SELECT id AS v, 'live' AS k FROM live
         UNION ALL SELECT instance_id, 'stored' FROM stored
         UNION ALL SELECT instance_id, 'answered' FROM answered",
    )
    .bind::<Array<Text>, _>(answers.iter().map(|a| a.instance_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| &r.instance_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| &r.module_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| &r.md5).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| &r.status).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.message.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter().map(|r| r.guest_created.as_deref()).collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter().map(|r| r.guest_updated.as_deref()).collect::<Vec<_>>(),
    )
    .bind::<Timestamp, _>(now)
    .bind::<Array<Text>, _>(answers.iter().map(|a| a.job_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(verdicts.iter().map(|v| v.0).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(verdicts.iter().map(|v| v.1.as_deref()).collect::<Vec<_>>())
    .load::<Fact>(c)?;
    let facts = tally(facts);
    let count = |id: &str, k: &str| facts.get(id).and_then(|f| f.get(k)).copied().unwrap_or(0);
    Ok(answers
        .iter()
        .map(|a| {
            Applied::ModuleResults(if count(a.instance_id, "live") == 0 {
                ModuleResultsOutcome::InstanceGone
            } else {
                let stored = count(a.instance_id, "stored");
                ModuleResultsOutcome::Stored {
                    stored,
                    // Malformed, or not newer than the stored row.
                    skipped: a.results.len() - stored,
                    item_answered: Some(count(a.instance_id, "answered") > 0),
                }
            })
        })
        .collect())
}
