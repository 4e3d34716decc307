//! The conductor's rules for each method (docs/messaging.md §4) that are not statements of their own,
//! and what every method's outcome is and how it is logged.
//!
//! Every rule is idempotent under redelivery, because the broker may hand the same cast over twice
//! (a consumer died between commit and ack):
//! - **Ordering.** Guests stamp every report with `sent` (their clock). `conductor_lastseen` keeps the
//!   newest `sent` per (instance, method) and a report that is not newer is dropped, as Trove's
//!   `_message_too_old` does. The check and the write share one statement (or transaction), so two
//!   reports racing each other cannot both win.
//! - **Reapply answers** (`module_results` with a `job_id`) skip that check: answers for different
//!   jobs must all count, whatever their order. They are deduplicated by the job item's state instead
//!   (only an item still `sent` is answered).
//! - The conductor **never** writes `instance_modules` (docs/module-semantics.md §11): the taskmanager records
//!   the instances that answered OK. Guest results go to `guest_module_results`, for observability.
//!
//! Heartbeats and `module_results` are applied only by [`crate::batch`]'s statements, for a batch of
//! any size; [`apply_other`] applies the other methods, one message at a time.

use diesel::prelude::*;
use trove_common::db::models::instance::record_fault;
use trove_common::db::models::{lastseen, GuestModuleResult, Instance};
use trove_common::rpc::conductor::ConductorMsg;
use trove_common::rpc::guest::ModuleResult;
use trove_common::status::ServiceStatus;

/// The `conductor_lastseen` method names.
pub(crate) const HEARTBEAT: &str = "heartbeat";
pub(crate) const MODULE_RESULTS: &str = "module_results";
const NOTIFY_EXC_INFO: &str = "notify_exc_info";

/// Column limits of `instance_faults`: a longer message is cut (it only explains), never refused.
const FAULT_MESSAGE_MAX: usize = 255;

/// Column limits of `guest_module_results`: a guest that sends longer values must not make the insert
/// fail (which would retry the message for ever).
const MODULE_ID_MAX: usize = 64;
const MD5_MAX: usize = 32;
const STATUS_MAX: usize = 16;
const GUEST_TIME_MAX: usize = 32;

/// What a heartbeat did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// The status was set from the description.
    Applied(ServiceStatus),
    /// The status is RESTART_REQUIRED and was kept; `updated_at` was refreshed.
    KeptRestartRequired,
    /// A report with an equal or later `sent` was already seen: dropped.
    Stale,
    /// The description is not a known status: ignored.
    UnknownStatus,
    /// The instance is deleted (or gone): ignored.
    InstanceGone,
    /// The instance has no `service_statuses` row: nothing to update.
    NoStatusRow,
}

/// Logs what a heartbeat did.
fn log_heartbeat(outcome: HeartbeatOutcome, description: &str, instance_id: &str, sent: f64) {
    match outcome {
        HeartbeatOutcome::Applied(status) => {
            tracing::debug!(
                service_status = status.description(),
                "service status updated"
            )
        }
        HeartbeatOutcome::KeptRestartRequired => {
            tracing::debug!(service_status = %description, "status kept at restart required")
        }
        HeartbeatOutcome::Stale => {
            tracing::debug!(sent, "heartbeat older than the last one seen; dropped")
        }
        HeartbeatOutcome::UnknownStatus => {
            tracing::warn!(service_status = %description, "heartbeat with an unknown service status; ignored")
        }
        HeartbeatOutcome::InstanceGone => {
            tracing::debug!("heartbeat for a deleted instance; ignored")
        }
        HeartbeatOutcome::NoStatusRow => {
            tracing::warn!(instance.id = %instance_id, "instance has no service status row; heartbeat ignored")
        }
    }
}

/// How a reapply job item is answered, from one guest report. Pure.
///
/// - `FAILED` when the guest's `module_apply` failed as a whole (`error` is set: a check refused the
///   payload before any driver ran), or when the report holds no result for the job's module. The
///   guest did not take the module, so the taskmanager does not record it (Trove's call would have
///   raised before `record()`).
/// - `ERROR` when a driver ran and some result for the module is not `OK`. Trove records these (the
///   call returned), and so does the taskmanager.
/// - `OK` when every result for the module is `OK`.
///
/// The message is the error, else the first failing result's message, else the result's own
/// message. With `module_id` None (the job row is gone) every result counts.
pub fn job_verdict(
    module_id: Option<&str>,
    results: &[ModuleResult],
    error: Option<&str>,
) -> (&'static str, Option<String>) {
    if let Some(e) = error {
        return ("FAILED", Some(e.to_owned()));
    }
    let relevant: Vec<&ModuleResult> = results
        .iter()
        .filter(|r| module_id.is_none_or(|m| r.id == m))
        .collect();
    if relevant.is_empty() {
        let what = module_id
            .map(|m| format!("module {m}"))
            .unwrap_or_else(|| "any module".into());
        return (
            "FAILED",
            Some(format!("the guest reported no result for {what}")),
        );
    }
    match relevant.iter().find(|r| r.status.as_deref() != Some("OK")) {
        Some(failed) => {
            let message = failed.message.clone().unwrap_or_else(|| {
                format!("status {}", failed.status.as_deref().unwrap_or("missing"))
            });
            ("ERROR", Some(message))
        }
        None => ("OK", relevant[0].message.clone()),
    }
}

/// What a `module_results` report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleResultsOutcome {
    /// The results were stored.
    Stored {
        /// Rows written to `guest_module_results`.
        stored: usize,
        /// Results not stored: malformed, or older than the stored row.
        skipped: usize,
        /// With a `job_id`: whether this report answered the job item (false when it was already
        /// answered or failed: a redelivery or a late answer). None without a job.
        item_answered: Option<bool>,
    },
    /// A report without a job, not newer than the last one seen: dropped.
    Stale,
    /// The instance is deleted (or gone): ignored.
    InstanceGone,
}

/// Logs what a `module_results` report did.
fn log_module_results(outcome: &ModuleResultsOutcome, job_id: Option<&str>, sent: f64) {
    let job_id = job_id.unwrap_or("");
    match outcome {
        ModuleResultsOutcome::Stored {
            stored,
            skipped,
            item_answered,
        } => match item_answered {
            Some(true) => {
                tracing::info!(job.id = job_id, stored, skipped, "reapply answer recorded")
            }
            Some(false) => tracing::debug!(
                job.id = job_id,
                stored,
                skipped,
                "reapply item already settled; answer not counted again"
            ),
            None => tracing::info!(stored, skipped, "module results stored"),
        },
        ModuleResultsOutcome::Stale => {
            tracing::debug!(sent, "module results older than the last seen; dropped")
        }
        ModuleResultsOutcome::InstanceGone => {
            tracing::debug!("module results for a deleted instance; ignored")
        }
    }
}

/// What [`notify_exc_info`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExcInfoOutcome {
    /// The fault was recorded (or refreshed).
    Recorded,
    /// A report with an equal or later `sent` was already seen: dropped.
    Stale,
    /// The instance is deleted (or gone): ignored.
    InstanceGone,
}

/// Records a guest's failure report as the instance's fault, in one transaction: Trove's
/// `notify_exc_info` on a live instance, with the same ordering rule as the other reports.
pub fn notify_exc_info(
    conn: &mut PgConnection,
    instance_id: &str,
    message: &str,
    exception: &str,
    sent: f64,
) -> QueryResult<ExcInfoOutcome> {
    conn.transaction(|conn| {
        if !is_live(conn, instance_id)? {
            return Ok(ExcInfoOutcome::InstanceGone);
        }
        if !lastseen::accept(conn, instance_id, NOTIFY_EXC_INFO, sent)? {
            return Ok(ExcInfoOutcome::Stale);
        }
        let message = truncate(message, FAULT_MESSAGE_MAX);
        record_fault(conn, instance_id, message, exception)?;
        Ok(ExcInfoOutcome::Recorded)
    })
}

/// Logs what a `notify_exc_info` report did (its message, never the details: they are the server's
/// words and may be long).
fn log_exc_info(outcome: ExcInfoOutcome, message: &str, sent: f64) {
    match outcome {
        ExcInfoOutcome::Recorded => {
            tracing::warn!(fault = %message, "guest reported a failure; fault recorded")
        }
        ExcInfoOutcome::Stale => {
            tracing::debug!(sent, "failure report older than the last one seen; dropped")
        }
        ExcInfoOutcome::InstanceGone => {
            tracing::debug!("failure report for a deleted instance; ignored")
        }
    }
}

/// What applying one conductor message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Heartbeat(HeartbeatOutcome),
    ModuleResults(ModuleResultsOutcome),
    ReportRoot,
    NotifyExcInfo(ExcInfoOutcome),
}

/// The database work of a message that no statement of [`crate::batch`] covers, in a transaction
/// of its own (a savepoint inside a batch's). Errors are database errors.
pub fn apply_other(conn: &mut PgConnection, msg: &ConductorMsg) -> QueryResult<Applied> {
    match msg {
        ConductorMsg::ReportRoot(_) => Ok(Applied::ReportRoot),
        ConductorMsg::NotifyExcInfo(exc) => notify_exc_info(
            conn,
            &exc.instance_id,
            &exc.message,
            &exc.exception,
            exc.sent,
        )
        .map(Applied::NotifyExcInfo),
        ConductorMsg::Heartbeat(_) | ConductorMsg::ModuleResults(_) => {
            unreachable!("heartbeats and module reports go through crate::batch")
        }
    }
}

/// Logs what applying a message did, in the message's span.
pub fn log_applied(msg: &ConductorMsg, applied: &Applied) {
    match (msg, applied) {
        (ConductorMsg::Heartbeat(beat), Applied::Heartbeat(outcome)) => log_heartbeat(
            *outcome,
            &beat.payload.service_status,
            &beat.instance_id,
            beat.sent,
        ),
        (ConductorMsg::ModuleResults(report), Applied::ModuleResults(outcome)) => {
            log_module_results(outcome, report.job_id.as_deref(), report.sent)
        }
        (ConductorMsg::ReportRoot(root), _) => handle_report_root(&root.instance_id),
        (ConductorMsg::NotifyExcInfo(exc), Applied::NotifyExcInfo(outcome)) => {
            log_exc_info(*outcome, &exc.message, exc.sent)
        }
        _ => {}
    }
}

/// `report_root`: root enablement is not tracked by trove-rs; logged and acknowledged.
pub fn handle_report_root(instance_id: &str) {
    tracing::info!(instance.id = %instance_id, "guest reported root enabled (not recorded)");
}

/// True when the instance exists and is not deleted.
fn is_live(conn: &mut PgConnection, instance_id: &str) -> QueryResult<bool> {
    Ok(Instance::find_any(conn, instance_id)?.is_some_and(|i| !i.deleted))
}

/// Logs a result that cannot be stored (never its contents).
pub(crate) fn warn_malformed(r: &ModuleResult) {
    tracing::warn!(module.id = %truncate(&r.id, MODULE_ID_MAX), "malformed module result; not stored");
}

/// The stored form of one result, or None when it cannot be stored as it stands (an id or md5 longer
/// than its column: cutting those would change what they name).
pub(crate) fn result_row(
    instance_id: &str,
    r: &ModuleResult,
    now: chrono::NaiveDateTime,
) -> Option<GuestModuleResult> {
    if r.id.is_empty() || r.id.len() > MODULE_ID_MAX || r.md5.len() > MD5_MAX {
        return None;
    }
    Some(GuestModuleResult {
        instance_id: instance_id.to_owned(),
        module_id: r.id.clone(),
        md5: r.md5.clone(),
        status: truncate(r.status.as_deref().unwrap_or("UNKNOWN"), STATUS_MAX).to_owned(),
        message: r.message.clone(),
        guest_created: r
            .created
            .as_deref()
            .map(|t| truncate(t, GUEST_TIME_MAX).to_owned()),
        guest_updated: r
            .updated
            .as_deref()
            .map(|t| truncate(t, GUEST_TIME_MAX).to_owned()),
        reported_at: now,
    })
}

/// At most `max` characters of `s` (varchar limits count characters).
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, status: Option<&str>, message: Option<&str>) -> ModuleResult {
        ModuleResult {
            id: id.into(),
            name: format!("mod-{id}"),
            module_type: "ping".into(),
            datastore: "all".into(),
            datastore_version: "all".into(),
            tenant: "all".into(),
            md5: "0123456789abcdef0123456789abcdef".into(),
            status: status.map(Into::into),
            message: message.map(Into::into),
            created: Some("2026-11-26 10:00:00.12".into()),
            updated: Some("2026-11-26 10:00:00.12".into()),
            removed: None,
            auto_apply: false,
            visible: true,
            is_admin: false,
            contents: None,
        }
    }

    #[test]
    fn verdict_ok_only_when_everything_for_the_module_is_ok() {
        let ok = result("m1", Some("OK"), Some("Module applied"));
        let other_failed = result("m2", Some("ERROR"), Some("boom"));
        assert_eq!(
            job_verdict(Some("m1"), &[ok.clone(), other_failed.clone()], None),
            ("OK", Some("Module applied".into()))
        );
        // Without the job's module id every result counts.
        assert_eq!(
            job_verdict(None, &[ok.clone(), other_failed], None),
            ("ERROR", Some("boom".into()))
        );
        let failed = result("m1", Some("ERROR"), None);
        assert_eq!(
            job_verdict(Some("m1"), &[ok.clone(), failed], None),
            ("ERROR", Some("status ERROR".into()))
        );
        let unset = result("m1", None, Some("half done"));
        assert_eq!(
            job_verdict(Some("m1"), &[unset], None),
            ("ERROR", Some("half done".into()))
        );
    }

    #[test]
    fn verdict_a_failed_call_or_missing_result_is_failed_not_error() {
        // FAILED (not recorded by the taskmanager) must stay apart from a driver's ERROR (recorded).
        let ok = result("m1", Some("OK"), None);
        assert_eq!(
            job_verdict(Some("m1"), std::slice::from_ref(&ok), Some("check failed")),
            ("FAILED", Some("check failed".into()))
        );
        let (status, message) = job_verdict(Some("m1"), &[], None);
        assert_eq!(status, "FAILED");
        assert!(message.unwrap().contains("m1"));
        // Results for other modules only: nothing was applied for this one.
        let (status, _) = job_verdict(Some("m2"), &[ok], None);
        assert_eq!(status, "FAILED");
        let driver_error = result("m1", Some("ERROR"), Some("bad licence"));
        assert_eq!(job_verdict(Some("m1"), &[driver_error], None).0, "ERROR");
    }

    #[test]
    fn rows_respect_column_limits() {
        let now = trove_common::db::now();
        let mut r = result("m1", Some("A_VERY_LONG_STATUS_VALUE"), None);
        r.updated = Some("x".repeat(40));
        let row = result_row("i1", &r, now).unwrap();
        assert_eq!(row.status.len(), STATUS_MAX);
        assert_eq!(row.guest_updated.unwrap().len(), GUEST_TIME_MAX);
        r.md5 = "f".repeat(33);
        assert!(result_row("i1", &r, now).is_none());
        let r = result(&"m".repeat(65), Some("OK"), None);
        assert!(result_row("i1", &r, now).is_none());
        assert_eq!(truncate("héllo", 2), "hé");
    }
}
