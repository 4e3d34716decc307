//! `reapply_module` (docs/module-semantics.md §12): Trove's selection rules, executed as a durable job.
//!
//! The api writes a `reapply_jobs` row and casts `reapply_module` in one transaction. Here:
//! 1. **Select** (one transaction, then the message is acked): the candidates of §12 become
//!    `reapply_job_items` in `created, id` order; the ones Trove would skip are counted as skipped.
//!    The first `batch_size` items are claimed (`sent`, batch 0) as they are made.
//! 2. **Drive** (a task per job, outside any delivery, so nothing stays unacked for long): claim the
//!    next `batch_size` pending items (`sent`, and the job's `batch_sent_at` cleared), cast them
//!    `module_apply` **concurrently** with the job id (at most `module_reapply_casts_in_flight`
//!    awaiting their confirms at once), then stamp the batch (`batch_sent_at`, on the job row) once
//!    the broker has confirmed the casts; each guest reports to the conductor, which marks its item
//!    answered, and the driver records the answers in every 250 ms, from the batch's first cast on;
//!    when every item of the batch is answered or the batch has timed out
//!    (`module_reapply_instance_timeout` after the stamp), `record()` the answers left (§11) in one
//!    transaction, give each item its `sent_at`, wait `batch_delay`, and go on. Items still
//!    unanswered halfway through the timeout are cast once more (`recast_at`): the broker may have
//!    lost the first cast after confirming it (a transient cast and a broker restart).
//!
//! Every step reads and writes the item states and the job row, so a taskmanager killed at any point
//! resumes the job on start ([`resume_all`]): items already recorded are never sent again, items of a
//! stamped batch are waited for, pending ones are sent, and no instance is skipped. The one uncertain
//! case is a batch claimed but never stamped (killed between the claim and the confirms): its casts
//! may or may not have gone out, so its unanswered items are cast again. They are unanswered, so this
//! never re-sends a recorded result; at worst a guest applies the same md5 twice, which is harmless,
//! and the conductor counts only the first answer. An item of that batch that was already answered
//! is not cast again: the answer proves the send, and its `sent_at` becomes its `answered_at`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text, Timestamp};
use futures_util::StreamExt as _;
use tracing::Instrument as _;
use trove_common::db::models::instance::Scope;
use trove_common::db::models::module::Caller;
use trove_common::db::models::{
    Instance, InstanceModule, Module, NewReapplyJob, ReapplyItem, ReapplyJob,
};
use trove_common::db::schema::{reapply_job_items as items, reapply_jobs as jobs};
use trove_common::db::{new_id, now, DbError};
use trove_common::module::check_datastore;
use trove_common::rpc::guest::{GuestMsg, ModuleApply, ModuleEntry};
use trove_common::rpc::keys::module_keyring;
use trove_common::rpc::taskmanager::{truthy, ReapplyModule};
use trove_common::rpc::RpcContext;

use crate::Ctx;

/// How often a driver records the answers of a batch still in flight.
const RECORD_EVERY: Duration = Duration::from_millis(250);

/// Jobs driven in this process, by taskmanager context and job id: a redelivered cast or a resume
/// must not start a second driver for the same taskmanager. The context's address is part of the key
/// because tests restart a taskmanager in-process: the stopped one's driver may still be finishing a
/// step when the new one resumes the job, and must not keep the new one from driving it. (A `Ctx` is
/// alive while its drivers run, so its address is not reused meanwhile.)
fn running() -> &'static Mutex<HashSet<(usize, String)>> {
    static RUNNING: OnceLock<Mutex<HashSet<(usize, String)>>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

/// Handles `reapply_module`: selects the candidates into the job, then starts its driver.
pub async fn handle_reapply_module(
    ctx: &Arc<Ctx>,
    rpc: &RpcContext,
    args: ReapplyModule,
) -> anyhow::Result<()> {
    let job_id = match args.job_id.clone() {
        Some(id) => id,
        None => create_job(ctx, rpc, &args).await?,
    };
    let settings = ctx.settings.clone();
    let id = job_id.clone();
    let include_clustered = truthy(&args.include_clustered);
    let force = truthy(&args.force);
    ctx.db
        .run(move |c| {
            c.transaction(|c| {
                let Some(job) = ReapplyJob::lock(c, &id)? else {
                    return Ok::<_, DbError>(());
                };
                if job.state != "queued" {
                    return Ok(());
                }
                select(c, &settings, job, include_clustered, force)
            })
        })
        .await?;
    spawn_driver(ctx.clone(), job_id);
    Ok(())
}

/// A Trove-style cast without our job id: make the job row here.
async fn create_job(ctx: &Ctx, rpc: &RpcContext, args: &ReapplyModule) -> anyhow::Result<String> {
    let job = ReapplyJob::queued(
        NewReapplyJob {
            id: new_id(),
            module_id: args.module_id.clone(),
            tenant_id: rpc.project_id.clone().unwrap_or_default(),
            is_admin: rpc.is_admin,
            md5: args.md5.clone(),
            include_clustered: truthy(&args.include_clustered),
            force: truthy(&args.force),
            batch_size: args.batch_size.unwrap_or(0).clamp(0, i64::from(i32::MAX)) as i32,
            batch_delay: args.batch_delay.unwrap_or(0).clamp(0, i64::from(i32::MAX)) as i32,
            request_id: rpc.request_id.clone(),
        },
        now(),
    );
    let id = job.id.clone();
    ctx.db
        .run(move |c| ReapplyJob::insert(c, &job).map_err(DbError::from))
        .await?;
    Ok(id)
}

/// The effective batch size and delay (§12 step 1): 0 means the default; non-admins are clamped.
pub fn limits(
    batch_size: i64,
    batch_delay: i64,
    is_admin: bool,
    max_batch: i64,
    min_delay: i64,
) -> (i64, i64) {
    let mut size = if batch_size <= 0 {
        max_batch
    } else {
        batch_size
    };
    let mut delay = if batch_delay <= 0 {
        min_delay
    } else {
        batch_delay
    };
    if !is_admin {
        size = size.min(max_batch);
        delay = delay.max(min_delay);
    }
    (size, delay)
}

/// Step 1: Trove's candidate rules, recorded as items.
fn select(
    c: &mut PgConnection,
    settings: &trove_common::config::Settings,
    job: ReapplyJob,
    include_clustered: bool,
    force: bool,
) -> Result<(), DbError> {
    let d = &settings.default;
    let (size, delay) = limits(
        i64::from(job.batch_size),
        i64::from(job.batch_delay),
        job.is_admin,
        d.module_reapply_max_batch_size,
        d.module_reapply_min_batch_delay,
    );
    let caller = Caller {
        project_id: &job.tenant_id,
        is_admin: job.is_admin,
    };
    let module = Module::load_for_apply(c, std::slice::from_ref(&job.module_id), caller)?
        .into_iter()
        .next();
    let start = now();
    let Some(module) = module else {
        diesel::update(jobs::table.find(&job.id))
            .set((
                jobs::state.eq("finished"),
                jobs::started.eq(start),
                jobs::finished.eq(start),
            ))
            .execute(c)?;
        return Ok(());
    };
    let candidates = InstanceModule::candidates(c, &module.id, job.md5.as_deref())?;
    let total = candidates.len();
    let wanted = |row: &InstanceModule| {
        (row.md5 != module.md5 || force) && job.md5.as_deref().is_none_or(|m| m == row.md5)
    };
    // The instances and datastore versions in a few queries, not two per candidate (a fleet-wide
    // reapply has thousands); the rules below stay per candidate, in candidate order.
    let scope = if job.is_admin {
        Scope::Any
    } else {
        Scope::Tenant(&job.tenant_id)
    };
    let wanted_ids: Vec<&str> = candidates
        .iter()
        .filter(|r| wanted(r))
        .map(|r| r.instance_id.as_str())
        .collect();
    let instances = Instance::find_many(c, &wanted_ids, scope)?;
    let datastore_of: HashMap<String, String> = trove_common::db::schema::datastore_versions::table
        .select((
            trove_common::db::schema::datastore_versions::id,
            trove_common::db::schema::datastore_versions::datastore_id,
        ))
        .load::<(String, String)>(c)?
        .into_iter()
        .collect();
    let mut skipped = 0;
    let mut pending = Vec::new();
    for row in &candidates {
        if !wanted(row) {
            skipped += 1;
            continue;
        }
        let Some(inst) = instances.get(&row.instance_id) else {
            skipped += 1;
            continue;
        };
        if inst.cluster_id.is_some() && !include_clustered {
            skipped += 1;
            continue;
        }
        let ds_id = datastore_of.get(&inst.datastore_version_id);
        let valid = check_datastore(
            &module.name,
            module.datastore_id.as_deref(),
            module.datastore_version_id.as_deref(),
            ds_id.map(String::as_str).unwrap_or_default(),
            &inst.datastore_version_id,
        );
        if let Err(e) = valid {
            tracing::info!(instance.id = %inst.id, reason = %e, "reapply skips an invalid instance");
            skipped += 1;
            continue;
        }
        // The first batch is claimed here, in the transaction that makes the items: claiming it
        // later would lock and rewrite every one of them (all of them at batch_size = N).
        let first = (pending.len() as i64) < size;
        pending.push(ReapplyItem {
            job_id: job.id.clone(),
            instance_id: inst.id.clone(),
            seq: pending.len() as i32,
            state: if first { "sent" } else { "pending" }.into(),
            batch: first.then_some(0),
            sent_at: None,
            answered_at: None,
            status: None,
            message: None,
        });
    }
    for chunk in pending.chunks(1000) {
        diesel::insert_into(items::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(c)?;
    }
    diesel::update(jobs::table.find(&job.id))
        .set((
            jobs::state.eq("running"),
            jobs::current_md5.eq(&module.md5),
            jobs::total.eq(total as i32),
            jobs::skipped.eq(skipped),
            jobs::batch_size.eq(size as i32),
            jobs::batch_delay.eq(delay as i32),
            jobs::started.eq(start),
        ))
        .execute(c)?;
    tracing::info!(reapply.job = %job.id, module.id = %module.id, total, selected = pending.len(), skipped, "reapply selected");
    Ok(())
}

/// Resumes every unfinished job (called when the taskmanager starts).
pub async fn resume_all(ctx: Arc<Ctx>) {
    match ctx
        .db
        .run(|c| ReapplyJob::active(c).map_err(DbError::from))
        .await
    {
        Ok(active) => {
            for job in active {
                tracing::info!(reapply.job = %job.id, state = %job.state, "resuming reapply job");
                if job.state == "queued" {
                    let args = ReapplyModule::for_job(&job);
                    let rpc = RpcContext {
                        request_id: job.request_id.clone(),
                        ..RpcContext::service()
                    };
                    if let Err(e) = handle_reapply_module(&ctx, &rpc, args).await {
                        tracing::warn!(reapply.job = %job.id, error = %e, "could not resume job selection");
                    }
                } else {
                    spawn_driver(ctx.clone(), job.id);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list reapply jobs to resume"),
    }
}

fn spawn_driver(ctx: Arc<Ctx>, job_id: String) {
    let key = (Arc::as_ptr(&ctx) as usize, job_id.clone());
    if !running()
        .lock()
        .expect("running jobs poisoned")
        .insert(key.clone())
    {
        return;
    }
    let span = tracing::info_span!("reapply", reapply.job = %job_id);
    tokio::spawn(
        async move {
            loop {
                match drive(&ctx, &job_id).await {
                    Ok(()) => break,
                    Err(e) if ctx.shutdown.is_cancelled() => {
                        tracing::info!(error = %e, "reapply paused by shutdown; it resumes on restart");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reapply step failed; retrying");
                        if pause(&ctx, Duration::from_secs(1)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            running()
                .lock()
                .expect("running jobs poisoned")
                .remove(&key);
        }
        .instrument(span),
    );
}

/// Sleeps, or returns an error when the service shuts down.
async fn pause(ctx: &Ctx, d: Duration) -> anyhow::Result<()> {
    tokio::select! {
        _ = ctx.shutdown.cancelled() => anyhow::bail!("shutting down"),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

/// Step 2: sends batches until the job is finished.
async fn drive(ctx: &Ctx, job_id: &str) -> anyhow::Result<()> {
    let timeout =
        chrono::Duration::seconds(ctx.settings.default.module_reapply_instance_timeout as i64);
    // Items claimed by a driver that stopped before the broker confirmed their casts (see the module
    // docs): cast them again before waiting for the batch.
    let id = job_id.to_owned();
    let job = ctx
        .db
        .run(move |c| ReapplyJob::find(c, &id).map_err(DbError::from))
        .await?;
    if let Some(job) = job.filter(|j| j.state == "running" && j.batch_sent_at.is_none()) {
        let id = job_id.to_owned();
        let unconfirmed: Vec<String> = ctx
            .db
            .run(move |c| {
                items::table
                    .filter(items::job_id.eq(&id))
                    .filter(items::state.eq("sent"))
                    .order(items::seq)
                    .select(items::instance_id)
                    .load(c)
                    .map_err(DbError::from)
            })
            .await?;
        if !unconfirmed.is_empty() {
            // The first batch (claimed at selection), or one claimed by a driver that stopped
            // before the broker confirmed its casts.
            tracing::info!(
                count = unconfirmed.len(),
                "casting the claimed batch, whose sends are not confirmed yet"
            );
            cast_batch(ctx, &job, unconfirmed).await?;
        } else {
            // Every item of the claimed batch answered before the stamp: the answers prove the
            // send, so stamp the batch now (its end starts the delay before the next one).
            let id = job_id.to_owned();
            ctx.db
                .run(move |c| {
                    let answered: bool = diesel::select(diesel::dsl::exists(
                        items::table
                            .filter(items::job_id.eq(&id))
                            .filter(items::state.eq("answered")),
                    ))
                    .get_result(c)?;
                    if answered {
                        diesel::update(jobs::table.find(&id))
                            .filter(jobs::batch_sent_at.is_null())
                            .set(jobs::batch_sent_at.eq(now()))
                            .execute(c)?;
                    }
                    Ok::<_, DbError>(())
                })
                .await?;
        }
    }
    let mut last_record = std::time::Instant::now();
    loop {
        let id = job_id.to_owned();
        let Some(job) = ctx
            .db
            .run(move |c| ReapplyJob::find(c, &id).map_err(DbError::from))
            .await?
        else {
            return Ok(());
        };
        if job.state == "finished" {
            return Ok(());
        }
        // Wait for the batch in flight: every sent item answered or timed out. The batch's stamp is
        // on the job row; per poll, one lookup in the partial index `reapply_job_items_sent` (is an
        // item still unanswered), and once the batch is halfway through its timeout, which silent
        // items were not cast again yet.
        let id = job_id.to_owned();
        let recast_before = now() - timeout / 2;
        let halfway = job.batch_sent_at.is_some_and(|t| t < recast_before);
        let (unanswered, answers_in, silent): (bool, bool, Vec<String>) = ctx
            .db
            .run(move |c| {
                let in_state = |state: &'static str| {
                    items::table
                        .filter(items::job_id.eq(id.clone()))
                        .filter(items::state.eq(state))
                };
                let sent = || in_state("sent");
                let (unanswered, answers_in): (bool, bool) = diesel::select((
                    diesel::dsl::exists(sent()),
                    diesel::dsl::exists(in_state("answered")),
                ))
                .get_result(c)?;
                let silent = if unanswered && halfway {
                    sent()
                        .filter(items::recast_at.is_null())
                        .order(items::instance_id)
                        .select(items::instance_id)
                        .load(c)?
                } else {
                    Vec::new()
                };
                Ok::<_, DbError>((unanswered, answers_in, silent))
            })
            .await?;
        // A cast can be lost after its confirm (a transient cast and a broker restart): cast the
        // silent ones once more, halfway through their timeout, which still ends where it did.
        if !silent.is_empty() {
            tracing::info!(
                count = silent.len(),
                "casting again the items still unanswered halfway through their timeout"
            );
            cast_items(ctx, &job, silent, Stamp::Recast).await?;
            continue;
        }
        // No stamp yet: the cast is in progress (a driver that died mid-send was handled above).
        // Otherwise the batch waits while it is within the timeout.
        let waiting = unanswered && job.batch_sent_at.is_none_or(|t| now() - t < timeout);
        if waiting {
            // Record the answers in so far, every RECORD_EVERY, so the batch's end only records
            // what came last.
            if answers_in && last_record.elapsed() >= RECORD_EVERY {
                let id = job_id.to_owned();
                ctx.db.run(move |c| record_progress(c, &id)).await?;
                last_record = std::time::Instant::now();
            } else {
                pause(ctx, Duration::from_millis(50)).await?;
            }
            continue;
        }
        // The batch is complete: record answered instances, fail the silent ones, plan the next batch.
        let id = job_id.to_owned();
        let next = ctx
            .db
            .run(move |c| c.transaction(|c| settle(c, &id)))
            .await?;
        match next {
            Settled::Finished => return Ok(()),
            Settled::Next { at } => {
                let wait = (at - now()).to_std().unwrap_or_default();
                if !wait.is_zero() {
                    pause(ctx, wait).await?;
                }
                send_batch(ctx, &job).await?;
            }
        }
    }
}

enum Settled {
    Finished,
    Next { at: NaiveDateTime },
}

/// Records the answered items of the finished batch and decides what comes next. One transaction.
fn settle(c: &mut PgConnection, job_id: &str) -> Result<Settled, DbError> {
    let Some(job) = ReapplyJob::lock(c, job_id)? else {
        return Ok(Settled::Finished);
    };
    // The items this settles: the sent ones that timed out are locked in instance order, as every
    // bulk update of items locks them (see `lock_items`), against a late answer from the conductor.
    // That freezes the answered ones too: the conductor only ever answers a `sent` item.
    items::table
        .filter(items::job_id.eq(job_id))
        .filter(items::state.eq("sent"))
        .order(items::instance_id)
        .for_update()
        .select(items::instance_id)
        .load::<String>(c)?;
    record_answered(c, &job)?;
    // Sent items that never answered within the timeout (the driver only settles then).
    diesel::update(
        items::table
            .filter(items::job_id.eq(job_id))
            .filter(items::state.eq("sent")),
    )
    .set((
        items::state.eq("failed"),
        items::message.eq("no answer from the guest within the timeout"),
        items::sent_at.eq(
            diesel::dsl::sql::<Nullable<Timestamp>>("COALESCE(sent_at, ")
                .bind::<Nullable<Timestamp>, _>(job.batch_sent_at)
                .sql(")"),
        ),
    ))
    .execute(c)?;
    let Counts {
        applied,
        failed,
        pending,
    } = counts(c, job_id)?;
    let n = now();
    if pending == 0 {
        diesel::update(jobs::table.find(job_id))
            .set((
                jobs::applied.eq(applied),
                jobs::failed.eq(failed),
                jobs::state.eq("finished"),
                jobs::finished.eq(n),
                jobs::batch_sent_at.eq(None::<NaiveDateTime>),
            ))
            .execute(c)?;
        tracing::info!(
            applied,
            skipped = job.skipped,
            failed,
            "Reapplied module to {applied} instances (skipped {}, failed {failed}).",
            job.skipped
        );
        return Ok(Settled::Finished);
    }
    // The delay runs between batches only (not before the first one). Settling a stamped batch
    // starts it, and clears the stamp; a batch settled already (by a driver that stopped before
    // sending the next one) keeps the time planned then.
    let at = match (job.batch_sent_at.is_some(), job.next_batch_at) {
        (true, _) => n + chrono::Duration::seconds(i64::from(job.batch_delay)),
        (false, Some(t)) => t,
        (false, None) => n,
    };
    diesel::update(jobs::table.find(job_id))
        .set((
            jobs::applied.eq(applied),
            jobs::failed.eq(failed),
            jobs::next_batch_at.eq(at),
            jobs::batch_sent_at.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?;
    Ok(Settled::Next { at })
}

/// Records the answers in while the batch is still in flight, so that a large batch is not all
/// recorded at its end. One transaction; how many items it settled.
fn record_progress(c: &mut PgConnection, job_id: &str) -> Result<usize, DbError> {
    c.transaction(|c| {
        let Some(job) = ReapplyJob::lock(c, job_id)? else {
            return Ok(0);
        };
        if job.state != "running" {
            return Ok(0);
        }
        let settled = record_answered(c, &job)?;
        if settled > 0 {
            let Counts {
                applied, failed, ..
            } = counts(c, job_id)?;
            diesel::update(jobs::table.find(job_id))
                .set((jobs::applied.eq(applied), jobs::failed.eq(failed)))
                .execute(c)?;
        }
        Ok(settled)
    })
}

/// How many of a job's items are in the states its row counts.
struct Counts {
    applied: i32,
    failed: i32,
    pending: i32,
}

/// The job's items per state, in one query.
fn counts(c: &mut PgConnection, job_id: &str) -> Result<Counts, DbError> {
    let per_state: Vec<(String, i64)> = items::table
        .filter(items::job_id.eq(job_id))
        .filter(items::state.eq_any(["applied", "failed", "pending"]))
        .group_by(items::state)
        .select((items::state, diesel::dsl::count_star()))
        .load(c)?;
    let of = |state: &str| {
        per_state
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n as i32)
    };
    Ok(Counts {
        applied: of("applied"),
        failed: of("failed"),
        pending: of("pending"),
    })
}

/// Settles the answered items of `job` (its row locked by the caller): Trove's `record()` (§11) for
/// each instance whose guest ran the drivers (OK or ERROR: it received the module) and that is still
/// live, and `applied`; `failed` for a call that failed as a whole or a deleted instance. Set-based: a
/// batch can hold thousands of items. How many items it settled.
fn record_answered(c: &mut PgConnection, job: &ReapplyJob) -> Result<usize, DbError> {
    let job_id = job.id.as_str();
    // Answered items only change here: the conductor answers `sent` ones, and this runs with the job
    // row locked.
    let answered: Vec<(String, Option<String>)> = items::table
        .filter(items::job_id.eq(job_id))
        .filter(items::state.eq("answered"))
        .order(items::instance_id)
        .select((items::instance_id, items::status))
        .load(c)?;
    if answered.is_empty() {
        return Ok(0);
    }
    let module_md5 = job.current_md5.clone().unwrap_or_default();
    let reported: Vec<&str> = answered
        .iter()
        .filter(|(_, status)| status.as_deref() != Some("FAILED"))
        .map(|(id, _)| id.as_str())
        .collect();
    let live = InstanceModule::record_many(c, &reported, &job.module_id, &module_md5)?;
    let (ok, not_ok): (Vec<&str>, Vec<&str>) = answered
        .iter()
        .map(|(id, _)| id.as_str())
        // `live` holds only reported instances, so this is "reported and live".
        .partition(|id| live.contains(*id));
    // Each item takes its send time here, in the update that settles it: the batch's stamp, or its
    // answer if that came first (a guest may answer before the broker's confirm reaches the driver,
    // and an answer proves the send).
    for (state, ids) in [("applied", &ok), ("failed", &not_ok)] {
        for chunk in ids.chunks(5000) {
            trove_common::db::prepared(
                "UPDATE reapply_job_items
                    SET state = $3, sent_at = COALESCE(sent_at, LEAST(answered_at, $4))
                  WHERE job_id = $1 AND instance_id = ANY($2)",
            )
            .bind::<Text, _>(job_id)
            .bind::<Array<Text>, _>(chunk)
            .bind::<Text, _>(state)
            .bind::<Nullable<Timestamp>, _>(job.batch_sent_at)
            .execute(c)?;
        }
    }
    Ok(answered.len())
}

/// Claims the next batch (`sent`, the job's stamp cleared) and casts `module_apply` to its guests at
/// once.
async fn send_batch(ctx: &Ctx, job: &ReapplyJob) -> anyhow::Result<()> {
    let (job_id, size) = (job.id.clone(), i64::from(job.batch_size.max(1)));
    let batch = ctx
        .db
        .run(move |c| {
            c.transaction(|c| {
                let batch: Vec<String> = items::table
                    .filter(items::job_id.eq(&job_id))
                    .filter(items::state.eq("pending"))
                    .order(items::seq)
                    .limit(size)
                    .for_update()
                    .select(items::instance_id)
                    .load(c)?;
                let batch_no: Option<i32> = items::table
                    .filter(items::job_id.eq(&job_id))
                    .select(diesel::dsl::max(items::batch))
                    .first(c)?;
                diesel::update(
                    items::table
                        .filter(items::job_id.eq(&job_id))
                        .filter(items::instance_id.eq_any(&batch)),
                )
                .set((
                    items::state.eq("sent"),
                    items::batch.eq(batch_no.unwrap_or(-1) + 1),
                ))
                .execute(c)?;
                // The new batch is unconfirmed until its casts are.
                diesel::update(jobs::table.find(&job_id))
                    .set(jobs::batch_sent_at.eq(None::<NaiveDateTime>))
                    .execute(c)?;
                Ok::<_, DbError>(batch)
            })
        })
        .await?;
    cast_batch(ctx, job, batch).await
}

/// Casts a claimed batch and stamps it once the broker has confirmed the casts.
async fn cast_batch(ctx: &Ctx, job: &ReapplyJob, batch: Vec<String>) -> anyhow::Result<()> {
    // Guests answer while the rest of the batch is still being cast: record those answers as they
    // come, beside the casting.
    let cast_done = tokio_util::sync::CancellationToken::new();
    let casting = async {
        let cast = cast_items(ctx, job, batch, Stamp::Sent).await;
        cast_done.cancel();
        cast
    };
    let recording = async {
        loop {
            tokio::select! {
                _ = cast_done.cancelled() => break,
                _ = tokio::time::sleep(RECORD_EVERY) => {}
            }
            let id = job.id.clone();
            if let Err(e) = ctx.db.run(move |c| record_progress(c, &id)).await {
                // The driver's own loop records them later.
                tracing::warn!(error = %e, "could not record the answers in so far");
            }
        }
    };
    tokio::join!(casting, recording).0
}

/// What [`cast_items`] stamps once its casts are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    /// A batch's casts: the job's `batch_sent_at`, which starts the batch's timeout.
    Sent,
    /// A second cast of an unanswered item: `recast_at` (the timeout stays where it was).
    Recast,
}

/// Casts `module_apply` (the module as it is now, with the job id) to the guests of `instance_ids`
/// at once, then stamps the batch or the items as `stamp` says. An item whose guest queue is gone
/// fails at once; if the module itself is gone, every item fails.
async fn cast_items(
    ctx: &Ctx,
    job: &ReapplyJob,
    instance_ids: Vec<String>,
    stamp: Stamp,
) -> anyhow::Result<()> {
    if instance_ids.is_empty() {
        return Ok(());
    }
    let keys = module_keyring(&ctx.settings);
    let module_id = job.module_id.clone();
    let job_id = job.id.clone();
    let ids = instance_ids.clone();
    let (targets, entry) = ctx
        .db
        .run(move |c| {
            let module = modules_row(c, &module_id)?;
            // Guests get the module as it is now; record what they got, even if the module was
            // updated since the job started (settle() records `current_md5`).
            if let Some(m) = &module {
                diesel::update(jobs::table.find(&job_id))
                    .set(jobs::current_md5.eq(&m.md5))
                    .execute(c)?;
            }
            let contents = module
                .as_ref()
                .map(|m| keys.decrypt_string(&m.contents))
                .transpose()
                .map_err(|e| anyhow::anyhow!("module {module_id} contents: {e}"))?;
            let entry = match module {
                Some(m) => Some(ModuleEntry {
                    module: m.guest_payload(c, contents)?,
                }),
                None => None,
            };
            let targets: Vec<(String, Option<String>)> = trove_common::db::schema::instances::table
                .filter(trove_common::db::schema::instances::id.eq_any(&ids))
                .select((
                    trove_common::db::schema::instances::id,
                    trove_common::db::schema::instances::encrypted_key,
                ))
                .load(c)?;
            Ok::<_, anyhow::Error>((targets, entry))
        })
        .await?;
    let mut failed: Vec<(String, String)> = Vec::new();
    if let Some(entry) = entry {
        let rpc = RpcContext {
            request_id: job.request_id.clone(),
            ..RpcContext::service()
        };
        failed = cast_until_taken(ctx, job, &entry, &rpc, targets).await;
    } else {
        tracing::warn!(module.id = %job.module_id, "the module was deleted during its reapply");
        failed.extend(
            instance_ids
                .iter()
                .map(|id| (id.clone(), "the module was deleted".to_owned())),
        );
    }
    let job_id = job.id.clone();
    ctx.db
        .run(move |c| {
            c.transaction(|c| {
                // Items are locked in instance order first, the order the conductor answers them
                // in, so the two never deadlock.
                if !failed.is_empty() {
                    let ids: Vec<String> = failed.iter().map(|(id, _)| id.clone()).collect();
                    lock_items(c, &job_id, &ids)?;
                }
                for (id, message) in &failed {
                    diesel::update(items::table.find((&job_id, id)))
                        .filter(items::state.eq("sent"))
                        .set((items::state.eq("failed"), items::message.eq(message)))
                        .execute(c)?;
                }
                match stamp {
                    // The batch's stamp, on the job row: its timeout starts now.
                    Stamp::Sent => diesel::update(jobs::table.find(&job_id))
                        .set(jobs::batch_sent_at.eq(now()))
                        .execute(c)?,
                    Stamp::Recast => {
                        lock_items(c, &job_id, &instance_ids)?;
                        diesel::update(
                            items::table
                                .filter(items::job_id.eq(&job_id))
                                .filter(items::instance_id.eq_any(&instance_ids)),
                        )
                        .set(items::recast_at.eq(now()))
                        .execute(c)?
                    }
                };
                Ok::<_, DbError>(())
            })
        })
        .await?;
    Ok(())
}

/// Casts `entry` to every guest of `targets`, at most `module_reapply_casts_in_flight` awaiting their
/// confirms, and casts again, after a jittered backoff, the ones the broker did not take: a broker
/// that restarts or is unreachable for a while delays the batch, it does not fail it. What is still
/// not taken after `module_reapply_instance_timeout` fails, with the reason: the guest's queue is
/// gone (unroutable), or the broker's last error.
async fn cast_until_taken(
    ctx: &Ctx,
    job: &ReapplyJob,
    entry: &ModuleEntry,
    rpc: &RpcContext,
    mut todo: Vec<(String, Option<String>)>,
) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(ctx.settings.default.module_reapply_instance_timeout.max(1));
    let in_flight = ctx.settings.default.module_reapply_casts_in_flight.max(1) as usize;
    let mut backoff = ctx.broker.backoff();
    loop {
        let sends = todo.into_iter().map(|(instance_id, sealed)| {
            let msg = GuestMsg::ModuleApply(ModuleApply {
                modules: vec![entry.clone()],
                job_id: Some(job.id.clone()),
            });
            async move {
                let keys = crate::guest::instance_key(&ctx.settings, sealed.as_deref())
                    .ok()
                    .flatten();
                let res = crate::guest::cast_with(
                    ctx,
                    &instance_id,
                    crate::guest::keyring(keys.as_deref()).as_ref(),
                    rpc,
                    &msg,
                    ctx.settings.default.module_reapply_persistent_casts,
                )
                .await;
                (instance_id, sealed, res)
            }
        });
        // Bounded: all at once, a batch of thousands of persistent casts queues more disk writes in
        // the broker than it can confirm before everyone's confirms time out (BENCHMARKS.md).
        let results: Vec<_> = futures_util::stream::iter(sends)
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let mut again = Vec::new();
        let mut last_errors = Vec::new();
        for (id, sealed, res) in results {
            if let Err(e) = res {
                last_errors.push((id.clone(), e));
                again.push((id, sealed));
            }
        }
        let now = tokio::time::Instant::now();
        if again.is_empty() || now >= deadline {
            return last_errors
                .into_iter()
                .map(|(id, e)| {
                    tracing::warn!(instance.id = %id, error = %e, "guest unreachable for reapply");
                    let why = match e {
                        trove_common::amqp::AmqpError::Unroutable(_) => {
                            "the guest's queue is gone".to_owned()
                        }
                        e => format!("the broker did not take the cast: {e}"),
                    };
                    (id, why)
                })
                .collect();
        }
        let wait = backoff
            .next_delay()
            .max(ctx.broker.retry_in())
            .min(deadline - now);
        tracing::warn!(
            job.id = %job.id,
            casts = again.len(),
            error = %last_errors[0].1,
            retry_in = ?wait,
            "the broker did not take some casts; casting them again"
        );
        tokio::time::sleep(wait).await;
        todo = again;
    }
}

/// Locks the job's items of `instance_ids` (`FOR UPDATE`) in instance id order: every transaction
/// that updates many items takes them in this order, as the conductor does when it answers a batch.
fn lock_items(c: &mut PgConnection, job_id: &str, instance_ids: &[String]) -> QueryResult<()> {
    for chunk in sorted(instance_ids).chunks(5000) {
        items::table
            .filter(items::job_id.eq(job_id))
            .filter(items::instance_id.eq_any(chunk))
            .order(items::instance_id)
            .for_update()
            .select(items::instance_id)
            .load::<String>(c)?;
    }
    Ok(())
}

fn sorted(ids: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = ids.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

fn modules_row(c: &mut PgConnection, id: &str) -> QueryResult<Option<Module>> {
    use trove_common::db::schema::modules;
    modules::table
        .find(id)
        .filter(diesel::dsl::not(modules::deleted))
        .select(Module::as_select())
        .first(c)
        .optional()
}

#[cfg(test)]
mod tests {
    use super::limits;

    #[test]
    fn zero_means_default_and_non_admins_are_clamped() {
        assert_eq!(limits(0, 0, true, 50, 2), (50, 2));
        assert_eq!(limits(1, 3, true, 50, 2), (1, 3));
        assert_eq!(limits(500, 0, true, 50, 2), (500, 2));
        assert_eq!(limits(500, 1, false, 50, 2), (50, 2));
        assert_eq!(limits(10, 5, false, 50, 2), (10, 5));
    }
}
