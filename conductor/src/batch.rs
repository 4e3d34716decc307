//! The conductor's database work for a batch of messages of any size: the one path every message
//! takes, a single delivery being a batch of one.
//!
//! A batch is applied in **rounds**: round *k* holds the *k*-th message of each instance in it, so
//! one instance's messages apply in their order and no statement meets an instance twice. In each
//! round:
//! - every heartbeat goes through one statement (`sql/heartbeats.sql`),
//! - every `module_results` report, reapply answer or not, through another
//!   (`sql/module_reports.sql`),
//! - the rest (`notify_exc_info`, `report_root`) through [`handlers`], one by one in a transaction,
//!   each in a savepoint of its own.
//!
//! Each statement checks the instances, writes every table it touches through data-modifying CTEs,
//! and returns what it did, from which each message gets its outcome. A statement is atomic on its
//! own, so outside a transaction it commits by itself (no `BEGIN`/`COMMIT` round trips); inside one
//! (tests) it runs in a savepoint. If a statement over several messages fails, each of them is
//! applied again through the same statement alone, so a bad message only fails (and retries)
//! itself.

use std::collections::HashMap;
use std::sync::LazyLock;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{Array, Double, Integer, Nullable, Text, Timestamp};
use trove_common::db::prepared::strip_comments;
use trove_common::db::schema::reapply_jobs;
use trove_common::rpc::conductor::{ConductorMsg, ModuleResults};
use trove_common::status::ServiceStatus;

use crate::handlers::{
    self, job_verdict, result_row, Applied, HeartbeatOutcome, ModuleResultsOutcome, HEARTBEAT,
    MODULE_RESULTS,
};

static HEARTBEATS_SQL: LazyLock<String> =
    LazyLock::new(|| strip_comments(include_str!("sql/heartbeats.sql")));
static MODULE_REPORTS_SQL: LazyLock<String> =
    LazyLock::new(|| strip_comments(include_str!("sql/module_reports.sql")));

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

/// Applies `msgs` (sorted by instance id, each instance's messages in their order) and returns one
/// result per message, in order.
///
/// Outside a transaction, each statement commits on its own and a round's other messages share one
/// transaction (a savepoint each). Inside a transaction everything is part of it.
pub fn apply_batch(
    conn: &mut PgConnection,
    msgs: &[ConductorMsg],
    jobs: &JobModules,
) -> Vec<QueryResult<Applied>> {
    let mut out: Vec<Option<QueryResult<Applied>>> = msgs.iter().map(|_| None).collect();
    let in_transaction = matches!(
        AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth(),
        Ok(Some(_))
    );
    for round in rounds(msgs) {
        let (mut beats, mut reports, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        for i in round {
            match &msgs[i] {
                ConductorMsg::Heartbeat(_) => beats.push(i),
                ConductorMsg::ModuleResults(_) => reports.push(i),
                _ => rest.push(i),
            }
        }
        let statements: [(&str, &[usize], &Statement<'_>); 2] = [
            ("heartbeats", &beats, &|c, idx| heartbeats(c, msgs, idx)),
            ("module reports", &reports, &|c, idx| {
                module_reports(c, msgs, idx, jobs)
            }),
        ];
        for (kind, idx, run) in statements {
            run_statement(conn, in_transaction, kind, idx, run, &mut out);
        }
        if !rest.is_empty() {
            one_by_one(conn, msgs, &rest, &mut out);
        }
    }
    out.into_iter()
        .map(|o| o.expect("every message is in a round"))
        .collect()
}

/// The batch's indices by round: round `k` holds the `k`-th message of each instance, in order.
fn rounds(msgs: &[ConductorMsg]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let k = seen.entry(m.instance_id()).or_default();
        if rounds.len() == *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

/// One set-based statement over the messages at the given indices: one outcome per index.
type Statement<'a> = dyn Fn(&mut PgConnection, &[usize]) -> QueryResult<Vec<Applied>> + 'a;

/// Runs one set-based statement over `idx`; if it fails over several messages, runs it for each of
/// them alone, so that only the failing ones fail.
fn run_statement(
    conn: &mut PgConnection,
    in_transaction: bool,
    kind: &str,
    idx: &[usize],
    run: &Statement<'_>,
    out: &mut [Option<QueryResult<Applied>>],
) {
    if idx.is_empty() {
        return;
    }
    // A statement is atomic: only inside a transaction does it need a savepoint to fail alone.
    let attempt = |c: &mut PgConnection, idx: &[usize]| {
        if in_transaction {
            c.transaction(|c| run(c, idx))
        } else {
            run(c, idx)
        }
    };
    match attempt(conn, idx) {
        Ok(applied) => {
            for (&i, a) in idx.iter().zip(applied) {
                out[i] = Some(Ok(a));
            }
        }
        Err(e) if idx.len() == 1 => out[idx[0]] = Some(Err(e)),
        Err(e) => {
            tracing::warn!(error = %e, kind, messages = idx.len(), "batch statement failed; applying each of its messages alone");
            for &i in idx {
                out[i] = Some(
                    attempt(conn, &[i])
                        .map(|mut applied| applied.pop().expect("one outcome per message")),
                );
            }
        }
    }
}

/// The messages at `idx` that no statement covers, one by one in one transaction, each in a
/// savepoint of its own.
fn one_by_one(
    conn: &mut PgConnection,
    msgs: &[ConductorMsg],
    idx: &[usize],
    out: &mut [Option<QueryResult<Applied>>],
) {
    let done = conn.transaction(|c| {
        Ok::<_, diesel::result::Error>(
            idx.iter()
                .map(|&i| (i, handlers::apply_other(c, &msgs[i])))
                .collect::<Vec<_>>(),
        )
    });
    match done {
        Ok(done) => {
            for (i, r) in done {
                out[i] = Some(r);
            }
        }
        // The commit failed: none of them is applied.
        Err(e) => {
            for &i in idx {
                out[i] = Some(Err(clone_error(&e)));
            }
        }
    }
}

/// A database error for each of several messages (diesel's error is not `Clone`).
fn clone_error(e: &diesel::result::Error) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(e.to_string().into())
}

/// What a set-based statement returns: one row per fact about an instance.
#[derive(QueryableByName)]
struct Fact {
    #[diesel(sql_type = Text)]
    v: String,
    #[diesel(sql_type = Text)]
    k: String,
}

/// Facts tallied: instance → kind → how many.
struct Facts(HashMap<String, HashMap<String, usize>>);

impl Facts {
    fn new(facts: Vec<Fact>) -> Self {
        let mut by: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for f in facts {
            *by.entry(f.v).or_default().entry(f.k).or_default() += 1;
        }
        Self(by)
    }

    fn count(&self, instance_id: &str, kind: &str) -> usize {
        self.0
            .get(instance_id)
            .and_then(|f| f.get(kind))
            .copied()
            .unwrap_or(0)
    }

    fn has(&self, instance_id: &str, kind: &str) -> bool {
        self.count(instance_id, kind) > 0
    }
}

/// The heartbeats at `idx` (one per instance) through `sql/heartbeats.sql`. One outcome per
/// heartbeat, in the order of `idx`.
fn heartbeats(
    c: &mut PgConnection,
    msgs: &[ConductorMsg],
    idx: &[usize],
) -> QueryResult<Vec<Applied>> {
    let mut ids = Vec::with_capacity(idx.len());
    let mut sents = Vec::with_capacity(idx.len());
    let mut statuses = Vec::with_capacity(idx.len());
    for &i in idx {
        let ConductorMsg::Heartbeat(beat) = &msgs[i] else {
            unreachable!("apply_batch() chose heartbeats")
        };
        ids.push(beat.instance_id.as_str());
        sents.push(beat.sent);
        statuses.push(ServiceStatus::from_description(
            &beat.payload.service_status,
        ));
    }
    let facts = trove_common::db::prepared(&HEARTBEATS_SQL)
        .bind::<Array<Text>, _>(&ids)
        .bind::<Array<Double>, _>(&sents)
        .bind::<Array<Nullable<Integer>>, _>(
            statuses
                .iter()
                .map(|s| s.map(ServiceStatus::code))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            statuses
                .iter()
                .map(|s| s.map(ServiceStatus::description))
                .collect::<Vec<_>>(),
        )
        .bind::<Text, _>(HEARTBEAT)
        .bind::<Integer, _>(ServiceStatus::RestartRequired.code())
        .bind::<Timestamp, _>(trove_common::db::now())
        .load::<Fact>(c)?;
    let facts = Facts::new(facts);
    Ok(ids
        .iter()
        .zip(&statuses)
        .map(|(&id, status)| {
            Applied::Heartbeat(if !facts.has(id, "live") {
                HeartbeatOutcome::InstanceGone
            } else if !facts.has(id, "seen") {
                HeartbeatOutcome::Stale
            } else if facts.has(id, "kept") {
                HeartbeatOutcome::KeptRestartRequired
            } else if !facts.has(id, "row") {
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

/// The `module_results` reports at `idx` (one per instance) through `sql/module_reports.sql`. One
/// outcome per report, in the order of `idx`.
fn module_reports(
    c: &mut PgConnection,
    msgs: &[ConductorMsg],
    idx: &[usize],
    jobs: &JobModules,
) -> QueryResult<Vec<Applied>> {
    let reports: Vec<&ModuleResults> = idx
        .iter()
        .map(|&i| match &msgs[i] {
            ConductorMsg::ModuleResults(report) => report,
            _ => unreachable!("apply_batch() chose module reports"),
        })
        .collect();
    let now = trove_common::db::now();
    // guest_module_results: the storable results of every report, in (instance, module) order. A
    // report that names a module twice stores the one that would win applied in its order (the
    // later, unless it is older than the one before it).
    let mut rows = Vec::new();
    for r in &reports {
        let mut mine: Vec<trove_common::db::models::GuestModuleResult> = Vec::new();
        for result in &r.results {
            let Some(row) = result_row(&r.instance_id, result, now) else {
                handlers::warn_malformed(result);
                continue;
            };
            match mine.iter_mut().find(|m| m.module_id == row.module_id) {
                Some(earlier) => {
                    let newer = match (&row.guest_updated, &earlier.guest_updated) {
                        (Some(new), Some(old)) => new >= old,
                        _ => true,
                    };
                    if newer {
                        *earlier = row;
                    }
                }
                None => mine.push(row),
            }
        }
        rows.extend(mine);
    }
    rows.sort_by(|x, y| (&x.instance_id, &x.module_id).cmp(&(&y.instance_id, &y.module_id)));
    // The verdicts of the reapply answers, from each job's module.
    let modules = jobs.resolve(c, reports.iter().filter_map(|r| r.job_id.as_deref()))?;
    let verdicts: Vec<(Option<&'static str>, Option<String>)> = reports
        .iter()
        .map(|r| match r.job_id.as_deref() {
            Some(job) => {
                let (status, message) = job_verdict(
                    modules.get(job).map(String::as_str),
                    &r.results,
                    r.error.as_deref(),
                );
                (Some(status), message)
            }
            None => (None, None),
        })
        .collect();
    let facts = trove_common::db::prepared(&MODULE_REPORTS_SQL)
        .bind::<Array<Text>, _>(
            reports
                .iter()
                .map(|r| r.instance_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            reports
                .iter()
                .map(|r| r.job_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Double>, _>(reports.iter().map(|r| r.sent).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(verdicts.iter().map(|v| v.0).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            verdicts.iter().map(|v| v.1.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(rows.iter().map(|r| &r.instance_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| &r.module_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| &r.md5).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| &r.status).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            rows.iter()
                .map(|r| r.message.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            rows.iter()
                .map(|r| r.guest_created.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            rows.iter()
                .map(|r| r.guest_updated.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Text, _>(MODULE_RESULTS)
        .bind::<Timestamp, _>(now)
        .load::<Fact>(c)?;
    let facts = Facts::new(facts);
    Ok(reports
        .iter()
        .map(|r| {
            Applied::ModuleResults(if !facts.has(&r.instance_id, "live") {
                ModuleResultsOutcome::InstanceGone
            } else if r.job_id.is_none() && !facts.has(&r.instance_id, "seen") {
                ModuleResultsOutcome::Stale
            } else {
                let stored = facts.count(&r.instance_id, "stored");
                ModuleResultsOutcome::Stored {
                    stored,
                    // Malformed, named twice, or not newer than the stored row.
                    skipped: r.results.len() - stored,
                    item_answered: r
                        .job_id
                        .as_ref()
                        .map(|_| facts.has(&r.instance_id, "answered")),
                }
            })
        })
        .collect())
}
