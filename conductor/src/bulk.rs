//! A batch's database work in a few set-based statements instead of a handful per message.
//!
//! [`apply_batch`] gives every message the outcome [`handlers::apply`] would have given it, applied
//! one after the other in the batch's order. The two messages a fleet sends most, heartbeats and
//! reapply answers (`module_results` with a `job_id`), are applied together: one statement per table
//! for the whole batch, where one at a time took six or seven round trips each. Everything else, and
//! every message of an instance that has more than one message in the batch, goes through
//! [`handlers::apply`] one by one, each in a savepoint of its own.
//!
//! The set-based part runs in a savepoint too. If any of its statements fails, the savepoint is
//! rolled back and those messages are applied one by one instead, so a bad message still only fails
//! (and retries) itself.
//!
//! Rows are locked in instance id order, table by table, as every other writer of these rows does
//! (see the dispatcher and the taskmanager's reapply driver).

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel::prelude::*;
use diesel::sql_types::{Array, Double, Nullable, Text, Timestamp};
use trove_common::db::models::{GuestModuleResult, ServiceStatusRow};
use trove_common::db::schema::{instances, reapply_job_items, reapply_jobs, service_statuses};
use trove_common::rpc::conductor::ConductorMsg;
use trove_common::rpc::guest::ModuleResult;
use trove_common::status::ServiceStatus;

use crate::handlers::{
    self, decide_status, job_verdict, result_row, Applied, HeartbeatOutcome, ModuleResultsOutcome,
    StatusDecision, HEARTBEAT,
};

/// Applies `msgs` (sorted by instance id) and returns one result per message, in order. Must run
/// inside a transaction: the savepoints it opens are part of it.
pub fn apply_batch(conn: &mut PgConnection, msgs: &[ConductorMsg]) -> Vec<QueryResult<Applied>> {
    let mut out: Vec<Option<QueryResult<Applied>>> = msgs.iter().map(|_| None).collect();
    let together = set_based(msgs);
    if !together.is_empty() {
        match conn.transaction(|c| apply_together(c, msgs, &together)) {
            Ok(applied) => {
                for (i, a) in together.iter().zip(applied) {
                    out[*i] = Some(Ok(a));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "set-based batch failed; applying its messages one by one");
            }
        }
    }
    for (slot, msg) in out.iter_mut().zip(msgs) {
        if slot.is_none() {
            *slot = Some(handlers::apply(conn, msg));
        }
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// The indices of the messages applied together: heartbeats and reapply answers of instances with
/// no other message in the batch, answers whose results name each module at most once.
fn set_based(msgs: &[ConductorMsg]) -> Vec<usize> {
    let mut per_instance: HashMap<&str, usize> = HashMap::new();
    for m in msgs {
        *per_instance.entry(m.instance_id()).or_default() += 1;
    }
    msgs.iter()
        .enumerate()
        .filter(|(_, m)| per_instance[m.instance_id()] == 1)
        .filter(|(_, m)| match m {
            ConductorMsg::Heartbeat { .. } => true,
            ConductorMsg::ModuleResults {
                job_id: Some(_),
                results,
                ..
            } => {
                let mut seen = HashSet::new();
                results.iter().all(|r| seen.insert(r.id.as_str()))
            }
            _ => false,
        })
        .map(|(i, _)| i)
        .collect()
}

/// One heartbeat of the batch.
struct Beat<'a> {
    slot: usize,
    instance_id: &'a str,
    description: &'a str,
    sent: f64,
}

/// One reapply answer of the batch.
struct Answer<'a> {
    slot: usize,
    instance_id: &'a str,
    job_id: &'a str,
    results: &'a [ModuleResult],
    error: Option<&'a str>,
}

/// The work of the messages at `idx` (one per instance, in instance order); one outcome each, in the
/// order of `idx`.
fn apply_together(
    c: &mut PgConnection,
    msgs: &[ConductorMsg],
    idx: &[usize],
) -> QueryResult<Vec<Applied>> {
    let ids: Vec<&str> = idx.iter().map(|&i| msgs[i].instance_id()).collect();
    let live: HashSet<String> = instances::table
        .filter(instances::id.eq_any(&ids))
        .filter(instances::deleted.eq(false))
        .select(instances::id)
        .load(c)?
        .into_iter()
        .collect();
    let mut out: Vec<Option<Applied>> = idx.iter().map(|_| None).collect();
    let mut beats = Vec::new();
    let mut answers = Vec::new();
    for (slot, &i) in idx.iter().enumerate() {
        let gone = !live.contains(msgs[i].instance_id());
        match &msgs[i] {
            ConductorMsg::Heartbeat { .. } if gone => {
                out[slot] = Some(Applied::Heartbeat(HeartbeatOutcome::InstanceGone));
            }
            ConductorMsg::ModuleResults { .. } if gone => {
                out[slot] = Some(Applied::ModuleResults(ModuleResultsOutcome::InstanceGone));
            }
            ConductorMsg::Heartbeat {
                instance_id,
                payload,
                sent,
            } => beats.push(Beat {
                slot,
                instance_id,
                description: &payload.service_status,
                sent: *sent,
            }),
            ConductorMsg::ModuleResults {
                instance_id,
                results,
                job_id: Some(job_id),
                error,
                ..
            } => answers.push(Answer {
                slot,
                instance_id,
                job_id,
                results,
                error: error.as_deref(),
            }),
            _ => unreachable!("set_based() chose only heartbeats and reapply answers"),
        }
    }
    heartbeats(c, &beats, &mut out)?;
    reapply_answers(c, &answers, &mut out)?;
    Ok(out
        .into_iter()
        .map(|a| a.expect("every message has an outcome"))
        .collect())
}

/// Heartbeats of live instances.
fn heartbeats(
    c: &mut PgConnection,
    fresh: &[Beat<'_>],
    out: &mut [Option<Applied>],
) -> QueryResult<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    // The newer-than-last-seen check for all of them at once: the rows written are the reports
    // accepted.
    let accepted: HashSet<String> = diesel::sql_query(
        "INSERT INTO conductor_lastseen (instance_id, method_name, sent)
         SELECT u.instance_id, $2, u.sent FROM unnest($1::text[], $3::float8[]) AS u(instance_id, sent)
         ORDER BY u.instance_id
         ON CONFLICT (instance_id, method_name) DO UPDATE SET sent = excluded.sent
         WHERE excluded.sent > conductor_lastseen.sent
         RETURNING instance_id AS v",
    )
    .bind::<Array<Text>, _>(fresh.iter().map(|b| b.instance_id).collect::<Vec<_>>())
    .bind::<Text, _>(HEARTBEAT)
    .bind::<Array<Double>, _>(fresh.iter().map(|b| b.sent).collect::<Vec<_>>())
    .load::<Single>(c)?
    .into_iter()
    .map(|r| r.v)
    .collect();
    let mut kept: Vec<&Beat<'_>> = Vec::with_capacity(fresh.len());
    for b in fresh {
        if accepted.contains(b.instance_id) {
            kept.push(b);
        } else {
            out[b.slot] = Some(Applied::Heartbeat(HeartbeatOutcome::Stale));
        }
    }
    let accepted = kept;
    if accepted.is_empty() {
        return Ok(());
    }
    let rows: HashMap<String, ServiceStatusRow> = service_statuses::table
        .filter(service_statuses::instance_id.eq_any(accepted.iter().map(|b| b.instance_id)))
        .order(service_statuses::instance_id)
        .for_update()
        .select(ServiceStatusRow::as_select())
        .load(c)?
        .into_iter()
        .map(|r| (r.instance_id.clone(), r))
        .collect();
    // The rows are locked: what decide_status() sees is what the updates below change.
    let mut touch: Vec<&str> = Vec::new();
    let mut set: BTreeMap<i32, (ServiceStatus, Vec<&str>)> = BTreeMap::new();
    for b in accepted {
        let Some(row) = rows.get(b.instance_id) else {
            out[b.slot] = Some(Applied::Heartbeat(HeartbeatOutcome::NoStatusRow));
            continue;
        };
        out[b.slot] = Some(Applied::Heartbeat(
            match decide_status(row.status(), b.description) {
                StatusDecision::Touch => {
                    touch.push(b.instance_id);
                    HeartbeatOutcome::KeptRestartRequired
                }
                StatusDecision::Ignore => HeartbeatOutcome::UnknownStatus,
                StatusDecision::Set(status) => {
                    set.entry(status.code())
                        .or_insert_with(|| (status, Vec::new()))
                        .1
                        .push(b.instance_id);
                    HeartbeatOutcome::Applied(status)
                }
            },
        ));
    }
    let now = trove_common::db::now();
    if !touch.is_empty() {
        diesel::update(
            service_statuses::table.filter(service_statuses::instance_id.eq_any(&touch)),
        )
        .set(service_statuses::updated_at.eq(now))
        .execute(c)?;
    }
    for (status, ids) in set.values() {
        diesel::update(service_statuses::table.filter(service_statuses::instance_id.eq_any(ids)))
            .set((
                service_statuses::status_id.eq(status.code()),
                service_statuses::status_description.eq(status.description()),
                service_statuses::updated_at.eq(now),
            ))
            .execute(c)?;
    }
    Ok(())
}

/// Reapply answers of live instances.
fn reapply_answers(
    c: &mut PgConnection,
    fresh: &[Answer<'_>],
    out: &mut [Option<Applied>],
) -> QueryResult<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    // guest_module_results: every storable result of every answer, in (instance, module) order.
    let now = trove_common::db::now();
    let mut rows: Vec<GuestModuleResult> = Vec::new();
    for a in fresh {
        for r in a.results {
            match result_row(a.instance_id, r, now) {
                Some(row) => rows.push(row),
                None => handlers::warn_malformed(r),
            }
        }
    }
    rows.sort_by(|x, y| (&x.instance_id, &x.module_id).cmp(&(&y.instance_id, &y.module_id)));
    let mut stored: HashMap<String, usize> = HashMap::new();
    if !rows.is_empty() {
        let written = diesel::sql_query(
            "INSERT INTO guest_module_results
               (instance_id, module_id, md5, status, message, guest_created, guest_updated, reported_at)
             SELECT u.instance_id, u.module_id, u.md5, u.status, u.message, u.guest_created,
                    u.guest_updated, $8
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[])
                    WITH ORDINALITY AS u(instance_id, module_id, md5, status, message, guest_created,
                                         guest_updated, n)
              ORDER BY u.n
             ON CONFLICT (instance_id, module_id) DO UPDATE SET
               md5 = excluded.md5, status = excluded.status, message = excluded.message,
               guest_created = excluded.guest_created, guest_updated = excluded.guest_updated,
               reported_at = excluded.reported_at
             WHERE excluded.guest_updated IS NULL OR guest_module_results.guest_updated IS NULL
                OR excluded.guest_updated >= guest_module_results.guest_updated
             RETURNING instance_id AS v",
        )
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
        .load::<Single>(c)?;
        for w in written {
            *stored.entry(w.v).or_default() += 1;
        }
    }
    // The jobs' modules, for the verdicts.
    let job_ids: HashSet<&str> = fresh.iter().map(|a| a.job_id).collect();
    let modules: HashMap<String, String> = reapply_jobs::table
        .filter(reapply_jobs::id.eq_any(job_ids.iter().copied()))
        .select((reapply_jobs::id, reapply_jobs::module_id))
        .load::<(String, String)>(c)?
        .into_iter()
        .collect();
    // The items, locked in instance order; only those still `sent` take the answer. Per job (a batch
    // almost always answers one): `instance_id = ANY(..)` under a known job id is a primary key
    // lookup, where a join with unnest() made the planner scan the job's items.
    let mut by_job: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for a in fresh {
        by_job.entry(a.job_id).or_default().push(a.instance_id);
    }
    let mut open: HashMap<&str, HashSet<String>> = HashMap::new();
    for (job_id, ids) in &by_job {
        let sent: HashSet<String> = reapply_job_items::table
            .filter(reapply_job_items::job_id.eq(job_id))
            .filter(reapply_job_items::instance_id.eq_any(ids))
            .order(reapply_job_items::instance_id)
            .for_update()
            .select((reapply_job_items::instance_id, reapply_job_items::state))
            .load::<(String, String)>(c)?
            .into_iter()
            .filter(|(_, state)| state == "sent")
            .map(|(instance_id, _)| instance_id)
            .collect();
        open.insert(job_id, sent);
    }
    // job → the items this batch answers.
    let mut answers: BTreeMap<&str, Vec<Verdict<'_>>> = BTreeMap::new();
    for a in fresh {
        let answered = open
            .get(a.job_id)
            .is_some_and(|ids| ids.contains(a.instance_id));
        if answered {
            let (status, message) = job_verdict(
                modules.get(a.job_id).map(String::as_str),
                a.results,
                a.error,
            );
            answers
                .entry(a.job_id)
                .or_default()
                .push((a.instance_id, status, message));
        }
        let stored = stored.get(a.instance_id).copied().unwrap_or(0);
        out[a.slot] = Some(Applied::ModuleResults(ModuleResultsOutcome::Stored {
            stored,
            // Malformed, or not newer than the stored row.
            skipped: a.results.len() - stored,
            item_answered: Some(answered),
        }));
    }
    for (job_id, mine) in &answers {
        diesel::sql_query(
            "UPDATE reapply_job_items i
                SET state = 'answered', answered_at = $5, status = u.status, message = u.message
               FROM unnest($2::text[], $3::text[], $4::text[]) AS u(instance_id, status, message)
              WHERE i.job_id = $1 AND i.instance_id = ANY($2) AND i.instance_id = u.instance_id",
        )
        .bind::<Text, _>(*job_id)
        .bind::<Array<Text>, _>(mine.iter().map(|a| a.0).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(mine.iter().map(|a| a.1).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(mine.iter().map(|a| a.2.as_deref()).collect::<Vec<_>>())
        .bind::<Timestamp, _>(now)
        .execute(c)?;
    }
    Ok(())
}

/// An item's answer: (instance id, `OK`/`ERROR`/`FAILED`, message).
type Verdict<'a> = (&'a str, &'static str, Option<String>);

#[derive(QueryableByName)]
struct Single {
    #[diesel(sql_type = Text)]
    v: String,
}
