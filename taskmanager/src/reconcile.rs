//! The reconciler: every `usage_sleep_time` seconds, move work in progress along from what the database
//! says, so that it survives a taskmanager restart (Trove keeps these polls in a thread and loses them).
//!
//! 1. **Instances building** (task BUILDING): the guest reports its service status through the
//!    conductor. RUNNING, HEALTHY or INSTANCE_READY → task NONE. A failed status, or no success within
//!    `usage_timeout` → service FAILED_TIMEOUT_GUESTAGENT, task BUILDING_ERROR_TIMEOUT_GA and a fault
//!    (when `update_status_on_fail`). A failure the guest reported itself (`notify_exc_info`, recorded
//!    by the conductor since the build started) keeps its own fault. Two waits end sooner
//!    ([`guest_wait`]):
//!    - a guest that runs and heartbeats `new` has no `prepare` (it was lost with the broker, or with
//!      the guest's queue): after `prepare_resend_after`, and then at most once per that period, the
//!      guest's queue is declared again and `prepare` sent again, rebuilt from the database
//!      ([`instance::create_args_from_rows`]); the guest ignores a second one;
//!    - a guest launched that never reports at all (it exits at start again and again, cannot reach
//!      the broker, hangs) fails the build after `guest_start_timeout`, as a timeout does, with a
//!      fault that says so.
//!
//!    Both clocks are kept in memory from when the reconciler first sees the wait, so a restarted
//!    taskmanager starts them again.
//! 2. **Clusters building**: once every member is INSTANCE_READY (or already RUNNING), call
//!    `cluster_complete` on the ready ones, then set the cluster's task to NONE. A failed member, or no
//!    success within `cluster_usage_timeout` → every member BUILDING_ERROR_SERVER, cluster task NONE.
//! 3. **Guests kept running**: on start and on every pass, every live instance this host owns
//!    (`compute_host = [DEFAULT] host`, or none recorded) whose guest was started, that is not being
//!    deleted nor in an error task, and whose guest is not running (the host rebooted, the stack was
//!    restarted, the guest crashed) is launched again: same port, guest.conf rewritten, and the guest
//!    starts its database on its existing data directory. Per instance the attempts back off from
//!    [`RELAUNCH_BACKOFF_MIN`] doubling to [`RELAUNCH_BACKOFF_MAX`], reset once it is seen running;
//!    at most [`RELAUNCHES_IN_FLIGHT`] run at once. One query per pass and a `/proc` read per
//!    instance, so it scales to thousands of instances.
//! 4. **Safety nets**: a cluster DELETING without live members is marked deleted; an instance DELETING
//!    for longer than `cluster_delete_time_out` (its delete message was lost or dead-lettered) is
//!    deleted again.
//!
//! While an instance or a cluster is building, a cheap **build check** runs every
//! [`BUILD_CHECK_INTERVAL`] between the full passes ([`next_tick`]): steps 1 and 2 only, from one
//! indexed query of the building instances with their service statuses (`instances_building`), plus
//! the building clusters when there are any. It does no relaunch scan, no `/proc` read and no delete
//! safety net, so a build becomes ACTIVE within about 100 ms of its guest reporting, not up to
//! `usage_sleep_time` later. A wake ([`Ctx::wake_reconciler`]) runs a build check at once.
//!
//! Each pass reads everything it needs in one short database call, then does its I/O without holding
//! a connection. Slow guest calls (`cluster_complete`) and deletes run as tasks of their own so a pass
//! stays short; the instance locks and a busy set keep them from starting twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::NaiveDateTime;
use diesel::{
    Connection as _, NullableExpressionMethods as _, OptionalExtension as _, PgConnection,
    QueryDsl as _, RunQueryDsl as _, SelectableHelper as _,
};
use futures_util::future::join_all;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use trove_common::db::models::instance::record_fault;
use trove_common::db::models::{
    Cluster, DatastoreVersion, Instance, InstanceModule, ServiceStatusRow,
};
use trove_common::db::schema::{instances, service_statuses};
use trove_common::db::{self, DbError};
use trove_common::rpc::guest::{ClusterComplete, GuestMsg};
use trove_common::rpc::RpcContext;
use trove_common::status::{is_error_task, ClusterTask, InstanceTask, ServiceStatus};

use crate::handlers::instance;
use crate::{guest, Ctx};

/// The wait before the second attempt to start a guest that is not running (the first is at once).
pub const RELAUNCH_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const RELAUNCH_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How many guests are started again at the same time (after a host reboot, every one of them is).
pub const RELAUNCHES_IN_FLIGHT: usize = 32;

/// How often the build check runs while something builds (the full pass stays at
/// `usage_sleep_time`).
pub const BUILD_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// What the reconciler runs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Everything: builds, clusters, guests kept running, safety nets.
    Full,
    /// Builds and clusters being built only.
    Builds,
}

/// How long to sleep and what to run then, `since_full` after the last full pass began: a full pass
/// every `period`; while something builds (`building`), a build check every
/// [`BUILD_CHECK_INTERVAL`] in between. Pure.
pub fn next_tick(since_full: Duration, period: Duration, building: bool) -> (Duration, Tick) {
    let until_full = period.saturating_sub(since_full);
    if building && until_full > BUILD_CHECK_INTERVAL {
        (BUILD_CHECK_INTERVAL, Tick::Builds)
    } else {
        (until_full, Tick::Full)
    }
}

/// What a pass or a build check saw still building.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct InProgress {
    instances: bool,
    clusters: bool,
}

impl InProgress {
    fn any(self) -> bool {
        self.instances || self.clusters
    }
}

/// The wait after the `attempts`-th attempt to start a guest again: 1 s, 2 s, 4 s ... up to 60 s.
/// Pure.
pub fn relaunch_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (RELAUNCH_BACKOFF_MIN * 2u32.pow(doublings)).min(RELAUNCH_BACKOFF_MAX)
}

/// One instance's attempts at starting its guest again, since it was last seen running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Backoff {
    attempts: u32,
    /// No attempt before this.
    next_at: Instant,
}

impl Backoff {
    /// Whether an attempt may start at `now` (no attempt yet, or the wait is over).
    fn due(entry: Option<&Self>, now: Instant) -> bool {
        entry.is_none_or(|b| now >= b.next_at)
    }

    /// The state after one more attempt at `now`.
    fn next(entry: Option<&Self>, now: Instant) -> Self {
        let attempts = entry.map_or(0, |b| b.attempts) + 1;
        Self {
            attempts,
            next_at: now + relaunch_delay(attempts),
        }
    }
}

/// Whether this host (`host`) must keep the instance's guest running: live, owned by this host (or
/// by nobody recorded: rows from before hosts were), started once (a server id, not ERROR), and
/// neither being deleted nor in an error task. The rule of [`Instance::to_keep_running`]. Pure.
pub fn should_keep_running(inst: &Instance, host: &str) -> bool {
    !inst.deleted
        && inst.compute_host.as_deref().is_none_or(|h| h == host)
        && inst.compute_instance_id.is_some()
        && inst.server_status.as_deref() != Some("ERROR")
        && inst.task_id != InstanceTask::Deleting.code()
        && !is_error_task(inst.task_id)
}

/// What a building instance waits for from its guest, beyond a status change. `None` from
/// [`guest_wait`]: nothing in particular (the guest prepares, or was not launched yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestWait {
    /// Launched, but its guest has never reported: it may not have started.
    Start,
    /// Its guest reports `new`: it runs, and its `prepare` never arrived.
    Prepare,
}

/// Which [`GuestWait`] a building instance is in, from its service status (`None`: no row),
/// whether its guest has ever sent a heartbeat (`reported`), and whether the guest was launched.
/// Pure.
pub fn guest_wait(
    status: Option<ServiceStatus>,
    reported: bool,
    launched: bool,
) -> Option<GuestWait> {
    if !matches!(status, None | Some(ServiceStatus::New)) {
        return None;
    }
    if reported {
        Some(GuestWait::Prepare)
    } else if launched {
        Some(GuestWait::Start)
    } else {
        None
    }
}

/// What to do about a [`GuestWait`] now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitAction {
    Nothing,
    /// Send `prepare` again.
    ResendPrepare,
    /// The guest did not start within `guest_start_timeout`: the build fails.
    NeverStarted,
}

/// One building instance's [`GuestWait`] as this reconciler has seen it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Watch {
    wait: GuestWait,
    /// When the wait was first seen.
    since: Instant,
    /// `prepare` re-sends so far, and when the last one was.
    resent: u32,
    resent_at: Option<Instant>,
}

impl Watch {
    /// The watch after seeing `wait` at `now`: its clock runs on while the wait stays the same.
    fn observe(prev: Option<&Self>, wait: GuestWait, now: Instant) -> Self {
        match prev {
            Some(w) if w.wait == wait => *w,
            _ => Self {
                wait,
                since: now,
                resent: 0,
                resent_at: None,
            },
        }
    }

    /// What to do at `now`: a guest silent for `start_timeout` never started; a guest reporting
    /// `new` for `resend_after` (since the wait began, or since the last re-send) gets `prepare`
    /// again. A zero period turns its action off.
    fn action(&self, now: Instant, resend_after: Duration, start_timeout: Duration) -> WaitAction {
        match self.wait {
            GuestWait::Start
                if !start_timeout.is_zero()
                    && now.saturating_duration_since(self.since) >= start_timeout =>
            {
                WaitAction::NeverStarted
            }
            GuestWait::Prepare
                if !resend_after.is_zero()
                    && now.saturating_duration_since(self.resent_at.unwrap_or(self.since))
                        >= resend_after =>
            {
                WaitAction::ResendPrepare
            }
            _ => WaitAction::Nothing,
        }
    }
}

/// What to do with a building instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildDecision {
    /// The guest reported success: task NONE.
    Ready,
    /// Keep waiting.
    Wait,
    /// The build failed: record it with this fault. `guest_reported`: the guest reported a failed
    /// status (rather than the build timing out), so a fault it reported itself is kept.
    Failed {
        message: String,
        details: String,
        guest_reported: bool,
    },
}

/// Decides a building instance's fate from its service status (docs/messaging.md §6 step 4). Pure.
pub fn build_decision(
    status: Option<ServiceStatus>,
    started: NaiveDateTime,
    now: NaiveDateTime,
    timeout: Duration,
) -> BuildDecision {
    use ServiceStatus::*;
    let status = status.unwrap_or(New);
    match status {
        Running | Healthy | InstanceReady => return BuildDecision::Ready,
        New | Building | Unknown | Deleted => {}
        failed => {
            return BuildDecision::Failed {
                message: format!("Service not active, status: {}", failed.description()),
                details: format!(
                    "The guest reported '{}' while the instance was building.",
                    failed.description()
                ),
                guest_reported: true,
            }
        }
    }
    if elapsed(started, now) > timeout {
        return BuildDecision::Failed {
            message: "Polling request timed out.".into(),
            details: format!(
                "The guest did not report an active status within usage_timeout ({} s); its status was '{}'.",
                timeout.as_secs(),
                status.description()
            ),
            guest_reported: false,
        };
    }
    BuildDecision::Wait
}

/// One cluster member as the cluster decision sees it.
#[derive(Clone, Copy, Debug)]
pub struct MemberView<'a> {
    pub id: &'a str,
    pub task_id: i32,
    pub status: Option<ServiceStatus>,
}

/// What to do with a building cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterDecision {
    Wait,
    /// Every member is ready: call `cluster_complete` on these (the INSTANCE_READY ones), then the
    /// cluster is built.
    Complete {
        to_complete: Vec<String>,
    },
    /// Fail every member and end the cluster's task.
    Failed(String),
}

/// Decides a building cluster's fate from its members (docs/messaging.md §6 "Cluster create"). Pure.
pub fn cluster_decision(
    members: &[MemberView<'_>],
    started: NaiveDateTime,
    now: NaiveDateTime,
    timeout: Duration,
) -> ClusterDecision {
    use ServiceStatus::*;
    for m in members {
        if matches!(m.status, Some(Failed | FailedTimeoutGuestagent)) || is_error_task(m.task_id) {
            return ClusterDecision::Failed(format!("member {} failed to build", m.id));
        }
    }
    let ready = |m: &MemberView<'_>| matches!(m.status, Some(InstanceReady | Running | Healthy));
    if !members.is_empty() && members.iter().all(ready) {
        let to_complete = members
            .iter()
            .filter(|m| m.status == Some(InstanceReady))
            .map(|m| m.id.to_owned())
            .collect();
        return ClusterDecision::Complete { to_complete };
    }
    if elapsed(started, now) > timeout {
        return ClusterDecision::Failed(format!(
            "members not ready within cluster_usage_timeout ({} s)",
            timeout.as_secs()
        ));
    }
    ClusterDecision::Wait
}

fn elapsed(from: NaiveDateTime, to: NaiveDateTime) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

/// A set of ids with work running in a task; the guard takes the id out when the task ends, however it
/// ends (even aborted).
#[derive(Clone, Default)]
struct BusySet(Arc<Mutex<HashSet<String>>>);

struct Busy {
    set: BusySet,
    id: String,
}

impl BusySet {
    fn claim(&self, id: &str) -> Option<Busy> {
        let mut set = self.0.lock().expect("busy set poisoned");
        set.insert(id.to_owned()).then(|| Busy {
            set: self.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .expect("busy set poisoned")
            .remove(&self.id);
    }
}

/// What the reconciler remembers between passes (all of it may be lost on restart).
struct State {
    /// Attempts at starting again the guests that are not running, by instance.
    relaunches: HashMap<String, Backoff>,
    /// Bounds the relaunches running at once.
    relaunch_slots: Arc<tokio::sync::Semaphore>,
    /// Failed builds already logged (with `update_status_on_fail` off they stay BUILDING).
    reported: HashSet<String>,
    /// Building instances waiting on their guest ([`guest_wait`]), by instance.
    watches: HashMap<String, Watch>,
    /// Clusters whose `cluster_complete` calls are running.
    completing: BusySet,
    /// When each stalled delete was last retried.
    delete_retries: HashMap<String, Instant>,
    tasks: JoinSet<()>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            relaunches: HashMap::new(),
            relaunch_slots: Arc::new(tokio::sync::Semaphore::new(RELAUNCHES_IN_FLIGHT)),
            reported: HashSet::new(),
            watches: HashMap::new(),
            completing: BusySet::default(),
            delete_retries: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }
}

/// Runs passes until `shutdown`. The current pass finishes; background calls are abandoned (they are
/// idempotent and the next taskmanager redoes them).
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let period = Duration::try_from_secs_f64(ctx.settings.default.usage_sleep_time)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(5));
    let mut st = State::default();
    let mut tick = Tick::Full;
    let mut last_full = Instant::now();
    let mut seen = InProgress::default();
    // A wake may announce a cluster the last look did not see: the next build check loads clusters.
    let mut woken = false;
    loop {
        while let Some(res) = st.tasks.try_join_next() {
            if let Err(e) = res {
                if e.is_panic() {
                    tracing::error!(error = %e, "reconciler task panicked");
                }
            }
        }
        match tick {
            Tick::Full => {
                last_full = Instant::now();
                match pass(&ctx, &mut st).await {
                    Ok(now) => seen = now,
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "reconcile pass failed; trying again next tick"
                    ),
                }
            }
            Tick::Builds => {
                let clusters = seen.clusters || std::mem::take(&mut woken);
                match check_builds(&ctx, &mut st, clusters).await {
                    Ok(now) => seen = now,
                    // The full pass reports the same failure at warn, once a period.
                    Err(e) => tracing::debug!(error = format!("{e:#}"), "build check failed"),
                }
            }
        }
        let (sleep, next) = next_tick(last_full.elapsed(), period, seen.any());
        tick = next;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(sleep) => {}
            _ = ctx.reconcile_now.notified() => {
                woken = true;
                if next_tick(last_full.elapsed(), period, true).1 == Tick::Builds {
                    tick = Tick::Builds;
                }
            }
        }
    }
    st.tasks.shutdown().await;
}

/// Instances with their service status (`None`: no row).
type WithStatus = Vec<(Instance, Option<ServiceStatus>)>;

/// A cluster being built, with its members.
type ClusterBuild = (Cluster, WithStatus);

/// A building instance as the build check sees it.
#[derive(Clone, Debug)]
struct Build {
    inst: Instance,
    /// Its service status (`None`: no row).
    status: Option<ServiceStatus>,
    /// Its guest has sent a heartbeat (the conductor's `conductor_lastseen` has one).
    reported: bool,
}

/// Everything one pass needs, read in one database call.
struct Snapshot {
    building: Vec<Build>,
    deleting: Vec<Instance>,
    clusters: Vec<(Cluster, WithStatus)>,
    /// The instances whose guests this host keeps running.
    keep_running: Vec<Instance>,
}

fn load_snapshot(c: &mut PgConnection, host: &str) -> Result<Snapshot, DbError> {
    let (building, _) = load_builds(c, false)?;
    let deleting = Instance::with_tasks(c, &[InstanceTask::Deleting])?;
    let clusters = Cluster::in_progress(c)?;
    let mut members = Vec::with_capacity(clusters.len());
    for cl in &clusters {
        members.push(Instance::cluster_members(c, &cl.id)?);
    }
    let ids: Vec<String> = members.iter().flatten().map(|i| i.id.clone()).collect();
    let statuses: HashMap<String, Option<ServiceStatus>> =
        ServiceStatusRow::for_instances(c, &ids)?
            .into_iter()
            .map(|s| (s.instance_id.clone(), s.status()))
            .collect();
    let status_of = |i: &Instance| statuses.get(&i.id).copied().flatten();
    let clusters = clusters
        .into_iter()
        .zip(members)
        .map(|(cl, ms)| {
            let ms = ms
                .into_iter()
                .map(|m| {
                    let status = status_of(&m);
                    (m, status)
                })
                .collect();
            (cl, ms)
        })
        .collect();
    let keep_running = Instance::to_keep_running(c, host)?;
    Ok(Snapshot {
        building,
        deleting,
        clusters,
        keep_running,
    })
}

/// The building instances with their service statuses and whether their guests have reported, in
/// one query on `instances_building` (`task_id` is a literal so the planner can match the index's
/// predicate; the heartbeat is one primary-key probe of `conductor_lastseen` per instance), and,
/// when `clusters`, the clusters being built with their members.
fn load_builds(
    c: &mut PgConnection,
    clusters: bool,
) -> Result<(Vec<Build>, Vec<ClusterBuild>), DbError> {
    let building_task = diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "instances.task_id = {}",
        InstanceTask::Building.code()
    ));
    // `heartbeat` is the conductor's `conductor_lastseen` method name for heartbeats.
    let reported = diesel::dsl::sql::<diesel::sql_types::Bool>(
        "EXISTS (SELECT 1 FROM conductor_lastseen l \
         WHERE l.instance_id = instances.id AND l.method_name = 'heartbeat')",
    );
    let building: Vec<(Instance, Option<i32>, bool)> = instances::table
        .left_join(service_statuses::table)
        .filter(diesel::dsl::not(instances::deleted))
        .filter(building_task)
        .select((
            Instance::as_select(),
            service_statuses::status_id.nullable(),
            reported,
        ))
        .load(c)?;
    let building = building
        .into_iter()
        .map(|(inst, s, reported)| Build {
            inst,
            status: s.and_then(ServiceStatus::from_code),
            reported,
        })
        .collect();
    let mut in_progress = Vec::new();
    if clusters {
        for cl in Cluster::in_progress(c)? {
            if cl.task_id != ClusterTask::Building.code() {
                continue;
            }
            let members = Instance::cluster_members(c, &cl.id)?;
            let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
            let statuses: HashMap<String, Option<ServiceStatus>> =
                ServiceStatusRow::for_instances(c, &ids)?
                    .into_iter()
                    .map(|s| (s.instance_id.clone(), s.status()))
                    .collect();
            let members = members
                .into_iter()
                .map(|m| {
                    let status = statuses.get(&m.id).copied().flatten();
                    (m, status)
                })
                .collect();
            in_progress.push((cl, members));
        }
    }
    Ok((building, in_progress))
}

/// The build check between full passes: steps 1 and 2 of the module docs only. Returns what is
/// still building (the clusters as seen when `clusters`, else none).
async fn check_builds(
    ctx: &Arc<Ctx>,
    st: &mut State,
    clusters: bool,
) -> anyhow::Result<InProgress> {
    let (building, clusters) = ctx
        .db
        .run(move |c| load_builds(c, clusters))
        .await
        .context("loading the builds in progress")?;
    let now = db::now();
    for b in &building {
        check_build(ctx, st, b, now).await?;
    }
    for (cluster, members) in &clusters {
        check_cluster(ctx, st, cluster, members, now).await?;
    }
    Ok(InProgress {
        instances: !building.is_empty(),
        clusters: !clusters.is_empty(),
    })
}

/// One full pass; returns what is still building.
async fn pass(ctx: &Arc<Ctx>, st: &mut State) -> anyhow::Result<InProgress> {
    ctx.compute.maintain();
    ctx.locks.prune();
    let host = ctx.settings.default.host.clone();
    let snap = ctx
        .db
        .run(move |c| load_snapshot(c, &host))
        .await
        .context("loading the work in progress")?;
    let now = db::now();

    let building: HashSet<String> = snap.building.iter().map(|b| b.inst.id.clone()).collect();
    st.reported.retain(|id| building.contains(id));
    st.watches.retain(|id, _| building.contains(id));
    keep_guests_running(ctx, st, &snap.keep_running);
    let deleting: HashSet<&str> = snap.deleting.iter().map(|i| i.id.as_str()).collect();
    st.delete_retries
        .retain(|id, _| deleting.contains(id.as_str()));

    for b in &snap.building {
        check_build(ctx, st, b, now).await?;
    }
    for (cluster, members) in &snap.clusters {
        match ClusterTask::from_code(cluster.task_id) {
            ClusterTask::Building => check_cluster(ctx, st, cluster, members, now).await?,
            ClusterTask::Deleting if members.is_empty() => {
                let id = cluster.id.clone();
                ctx.db
                    .run(move |c| Cluster::mark_deleted(c, &id).map_err(DbError::from))
                    .await?;
                tracing::info!(cluster.id = %cluster.id, "cluster has no members left; marked deleted");
            }
            _ => {}
        }
    }
    for inst in &snap.deleting {
        retry_stalled_delete(ctx, st, inst, now);
    }
    Ok(InProgress {
        instances: !snap.building.is_empty(),
        clusters: snap
            .clusters
            .iter()
            .any(|(cl, _)| cl.task_id == ClusterTask::Building.code()),
    })
}

async fn check_build(
    ctx: &Arc<Ctx>,
    st: &mut State,
    b: &Build,
    now: NaiveDateTime,
) -> anyhow::Result<()> {
    let (inst, status) = (&b.inst, b.status);
    let started = inst.task_start_time.unwrap_or(inst.created);
    let timeout = Duration::from_secs(ctx.settings.default.usage_timeout);
    let decision = build_decision(status, started, now, timeout);
    if decision != BuildDecision::Wait {
        st.watches.remove(&inst.id);
    }
    match decision {
        BuildDecision::Ready => {
            let id = inst.id.clone();
            let n = ctx
                .db
                .run(move |c| {
                    Instance::set_task_if(c, &id, InstanceTask::Building, InstanceTask::None)
                        .map_err(DbError::from)
                })
                .await?;
            if n > 0 {
                let status = status.map(ServiceStatus::description).unwrap_or_default();
                tracing::info!(instance.id = %inst.id, status, "instance built");
            }
        }
        // A guest that died meanwhile is started again by `keep_guests_running`.
        BuildDecision::Wait => watch_guest(ctx, st, b).await?,
        BuildDecision::Failed {
            message,
            details,
            guest_reported,
        } => fail_build(ctx, st, inst, message, details, guest_reported).await?,
    }
    Ok(())
}

/// While a build waits ([`guest_wait`]): fails it when its guest has not reported within
/// `guest_start_timeout` of being seen launched, and sends `prepare` again when its guest has
/// reported `new` for `prepare_resend_after` (this host's instances only; in a task of its own,
/// holding the instance's lock, so a delete or a relaunch in progress makes it wait for the next
/// check).
async fn watch_guest(ctx: &Arc<Ctx>, st: &mut State, b: &Build) -> anyhow::Result<()> {
    let inst = &b.inst;
    let Some(wait) = guest_wait(b.status, b.reported, inst.compute_instance_id.is_some()) else {
        st.watches.remove(&inst.id);
        return Ok(());
    };
    let now = Instant::now();
    let watch = Watch::observe(st.watches.get(&inst.id), wait, now);
    st.watches.insert(inst.id.clone(), watch);
    let d = &ctx.settings.default;
    let resend_after = Duration::from_secs(d.prepare_resend_after);
    let start_timeout = Duration::from_secs(d.guest_start_timeout);
    match watch.action(now, resend_after, start_timeout) {
        WaitAction::Nothing => {}
        WaitAction::NeverStarted => {
            let message = "The guest agent did not start.".to_owned();
            let details = format!(
                "The guest agent of this instance sent no status report within guest_start_timeout ({} s) of its launch: it exits at start, cannot reach the message broker, or hangs. See guest.log in the instance's state directory.",
                start_timeout.as_secs()
            );
            fail_build(ctx, st, inst, message, details, false).await?;
        }
        WaitAction::ResendPrepare => {
            if inst
                .compute_host
                .as_deref()
                .is_some_and(|h| h != ctx.settings.default.host)
            {
                return Ok(());
            }
            let Some(guard) = ctx.locks.try_lock(&inst.id) else {
                return Ok(());
            };
            let attempt = watch.resent + 1;
            let waited = now.saturating_duration_since(watch.resent_at.unwrap_or(watch.since));
            st.watches.insert(
                inst.id.clone(),
                Watch {
                    resent: attempt,
                    resent_at: Some(now),
                    ..watch
                },
            );
            tracing::warn!(
                instance.id = %inst.id,
                attempt,
                waited_s = waited.as_secs(),
                "the guest runs but reports new: its prepare was lost; sending prepare again"
            );
            let ctx = ctx.clone();
            let id = inst.id.clone();
            st.tasks.spawn(async move {
                let _guard = guard;
                if let Err(e) = resend_prepare(&ctx, &id, attempt).await {
                    tracing::warn!(instance.id = %id, attempt, error = format!("{e:#}"), "cannot send prepare again yet; trying again after prepare_resend_after");
                }
            });
        }
    }
    Ok(())
}

/// Sends `prepare` again to a building instance (the caller holds its lock): rebuilt from the rows
/// ([`instance::create_args_from_rows`]), the guest's queue declared again first (it may have been
/// lost with the broker). Looks at the instance again first: still building, its guest still
/// reporting `new` (the first `prepare` may have arrived meanwhile). Modules updated since the
/// instance's rows were written are recorded at the md5 sent.
async fn resend_prepare(ctx: &Ctx, id: &str, attempt: u32) -> anyhow::Result<()> {
    let key = id.to_owned();
    let settings = ctx.settings.clone();
    let rebuilt = ctx
        .db
        .run(move |c| -> anyhow::Result<_> {
            let status = ServiceStatusRow::for_instance(c, &key)?.and_then(|s| s.status());
            if !matches!(status, None | Some(ServiceStatus::New)) {
                return Ok(None);
            }
            let Some(inst) = Instance::find_any(c, &key)? else {
                return Ok(None);
            };
            if inst.deleted || inst.task_id != InstanceTask::Building.code() {
                return Ok(None);
            }
            Ok(instance::create_args_from_rows(c, &settings, &inst)?.map(|r| (inst, r)))
        })
        .await
        .context("rebuilding prepare from the database")?;
    let Some((inst, rebuilt)) = rebuilt else {
        return Ok(());
    };
    let key = guest::instance_key(&ctx.settings, inst.encrypted_key.as_deref())
        .context("opening the instance's RPC key")?;
    let manager = rebuilt.msg.datastore_manager.clone();
    instance::send_prepare(
        ctx,
        &RpcContext::service(),
        id,
        key.as_deref(),
        &rebuilt.msg,
        rebuilt.memory_mb,
        &manager,
    )
    .await?;
    if !rebuilt.changed_modules.is_empty() {
        let (key, changed) = (id.to_owned(), rebuilt.changed_modules.clone());
        ctx.db
            .run(move |c| {
                c.transaction::<_, DbError, _>(|c| {
                    for (module_id, md5) in &changed {
                        InstanceModule::record(c, &key, module_id, md5)?;
                    }
                    Ok(())
                })
            })
            .await
            .context("recording the modules sent with prepare")?;
    }
    tracing::info!(instance.id = %id, attempt, modules = rebuilt.msg.modules.len(), "prepare sent again");
    Ok(())
}

/// Starts again, each in a task of its own, the guests of `instances` (this host's, from
/// [`Instance::to_keep_running`]) that are not running, with a backoff per instance. Skips instances
/// a handler is working on (their lock is held) and, when [`RELAUNCHES_IN_FLIGHT`] are already
/// running, leaves the rest to the next pass.
fn keep_guests_running(ctx: &Arc<Ctx>, st: &mut State, instances: &[Instance]) {
    let ids: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    st.relaunches.retain(|id, _| ids.contains(id.as_str()));
    let now = Instant::now();
    for inst in instances {
        if ctx.compute.is_running(&inst.id) {
            // Seen running: the next failure starts its backoff from the beginning.
            st.relaunches.remove(&inst.id);
            continue;
        }
        if !Backoff::due(st.relaunches.get(&inst.id), now) {
            continue;
        }
        // A handler (or a relaunch still running) is working on it.
        let Some(guard) = ctx.locks.try_lock(&inst.id) else {
            continue;
        };
        let Ok(slot) = st.relaunch_slots.clone().try_acquire_owned() else {
            return;
        };
        let backoff = Backoff::next(st.relaunches.get(&inst.id), now);
        st.relaunches.insert(inst.id.clone(), backoff);
        let ctx = ctx.clone();
        let id = inst.id.clone();
        st.tasks.spawn(async move {
            let _guard = guard;
            let _slot = slot;
            if let Err(e) = relaunch(&ctx, &id, backoff.attempts).await {
                tracing::warn!(instance.id = %id, error = format!("{e:#}"), "cannot start the guest again yet");
            }
        });
    }
}

/// Starts the instance's guest again (the caller holds its lock): same port, guest.conf rewritten;
/// the guest starts its datastore server on its existing data directory, and a `prepare` not done
/// yet is still in its durable queue (or, lost, is sent again by [`watch_guest`]). Looks at the instance again first: a delete may have finished
/// since the snapshot. A building instance whose guest cannot be started fails its build; any other
/// is tried again after its backoff.
async fn relaunch(ctx: &Arc<Ctx>, id: &str, attempt: u32) -> anyhow::Result<()> {
    let key = id.to_owned();
    let fresh = ctx
        .db
        .run(move |c| -> Result<_, DbError> {
            let Some(i) = Instance::find_any(c, &key)? else {
                return Ok(None);
            };
            let version = DatastoreVersion::find(c, &i.datastore_version_id).optional()?;
            Ok(Some((i, version)))
        })
        .await?;
    let Some((fresh, Some(version))) = fresh else {
        return Ok(());
    };
    if !should_keep_running(&fresh, &ctx.settings.default.host) || ctx.compute.is_running(id) {
        return Ok(());
    }
    let building = fresh.task_id == InstanceTask::Building.code();
    tracing::warn!(instance.id = %id, attempt, port = fresh.port, building, "guest is not running; starting it again");
    if !building {
        // Until the new guest reports, nothing says the server answers: not ACTIVE meanwhile.
        let key = id.to_owned();
        ctx.db
            .run(move |c| ServiceStatusRow::mark_down_if_up(c, &key).map_err(DbError::from))
            .await?;
    }
    let key = match guest::instance_key(&ctx.settings, fresh.encrypted_key.as_deref()) {
        Ok(key) => key,
        Err(e) if building => {
            return instance::fail_server(
                ctx,
                &fresh,
                format!("cannot open the instance's RPC key: {e}"),
            )
            .await
        }
        Err(e) => anyhow::bail!("cannot open the instance's RPC key: {e}"),
    };
    match instance::ensure_guest(
        ctx,
        &fresh,
        &version.manager,
        version.image_id.as_deref(),
        key.as_deref(),
    )
    .await?
    {
        Ok(()) => {
            tracing::info!(instance.id = %id, attempt, "guest started again");
            Ok(())
        }
        Err(e) if building => instance::fail_compute(ctx, &fresh, &e).await,
        Err(e) => Err(anyhow::Error::new(e).context("starting the guest")),
    }
}

async fn fail_build(
    ctx: &Ctx,
    st: &mut State,
    inst: &Instance,
    message: String,
    details: String,
    guest_reported: bool,
) -> anyhow::Result<()> {
    if !ctx.settings.default.update_status_on_fail {
        if st.reported.insert(inst.id.clone()) {
            tracing::error!(instance.id = %inst.id, error = %details, "build failed; update_status_on_fail is off, so the instance is left as it is");
        }
        return Ok(());
    }
    let id = inst.id.clone();
    let (msg, det) = (message.clone(), details.clone());
    let started = inst.task_start_time.unwrap_or(inst.created);
    let n = ctx
        .db
        .run(move |c| {
            c.transaction::<_, DbError, _>(|c| {
                let n = Instance::set_task_if(
                    c,
                    &id,
                    InstanceTask::Building,
                    InstanceTask::BuildingErrorTimeoutGa,
                )?;
                if n > 0 {
                    ServiceStatusRow::set(c, &id, ServiceStatus::FailedTimeoutGuestagent, true)?;
                    // The guest's own report (`notify_exc_info`) says why better than we can.
                    let guest_fault = guest_reported
                        && Instance::fault_updated(c, &id)?.is_some_and(|at| at >= started);
                    if !guest_fault {
                        record_fault(c, &id, &msg, &det)?;
                    }
                }
                Ok(n)
            })
        })
        .await?;
    if n > 0 {
        tracing::error!(instance.id = %inst.id, error = %details, "{message}");
    }
    Ok(())
}

async fn check_cluster(
    ctx: &Arc<Ctx>,
    st: &mut State,
    cluster: &Cluster,
    members: &[(Instance, Option<ServiceStatus>)],
    now: NaiveDateTime,
) -> anyhow::Result<()> {
    let Some(busy) = st.completing.claim(&cluster.id) else {
        return Ok(());
    };
    let view: Vec<MemberView<'_>> = members
        .iter()
        .map(|(m, s)| MemberView {
            id: &m.id,
            task_id: m.task_id,
            status: *s,
        })
        .collect();
    let timeout = Duration::from_secs(ctx.settings.default.cluster_usage_timeout);
    match cluster_decision(&view, cluster.created, now, timeout) {
        ClusterDecision::Wait => {}
        ClusterDecision::Failed(reason) => {
            let id = cluster.id.clone();
            let member_ids: Vec<String> = members.iter().map(|(m, _)| m.id.clone()).collect();
            let n = ctx
                .db
                .run(move |c| {
                    c.transaction::<_, DbError, _>(|c| {
                        let n =
                            Cluster::set_task_if(c, &id, ClusterTask::Building, ClusterTask::None)?;
                        if n > 0 {
                            // Every member's row first, in id order: each task change gives the
                            // member's quota back under the tenant's usage locks (a trigger), and a
                            // delete or timeout of one member must not wait on those while holding its
                            // row.
                            use diesel::prelude::*;
                            use trove_common::db::schema::instances;
                            instances::table
                                .filter(instances::id.eq_any(&member_ids))
                                .order(instances::id)
                                .for_update()
                                .select(instances::id)
                                .load::<String>(c)?;
                            for m in &member_ids {
                                Instance::set_task(c, m, InstanceTask::BuildingErrorServer)?;
                            }
                        }
                        Ok(n)
                    })
                })
                .await?;
            if n > 0 {
                tracing::error!(cluster.id = %cluster.id, error = %reason, "cluster build failed; every member is in error");
            }
        }
        ClusterDecision::Complete { to_complete } if to_complete.is_empty() => {
            finish_cluster(ctx, &cluster.id).await?;
        }
        ClusterDecision::Complete { to_complete } => {
            let keys: HashMap<&str, Option<&str>> = members
                .iter()
                .map(|(m, _)| (m.id.as_str(), m.encrypted_key.as_deref()))
                .collect();
            let targets: Vec<(String, Option<String>)> = to_complete
                .into_iter()
                .map(|id| (id.clone(), keys[id.as_str()].map(str::to_owned)))
                .collect();
            let ctx = ctx.clone();
            let cluster_id = cluster.id.clone();
            let version_id = cluster.datastore_version_id.clone();
            let all: Vec<Instance> = members.iter().map(|(m, _)| m.clone()).collect();
            st.tasks.spawn(async move {
                let _busy = busy;
                if let Err(e) = complete_cluster(&ctx, &cluster_id, &version_id, &all, targets).await {
                    tracing::warn!(cluster.id = %cluster_id, error = format!("{e:#}"), "cannot complete the cluster yet; trying again next pass");
                }
            });
        }
    }
    Ok(())
}

/// Calls `cluster_complete` on each ready member (concurrently), then ends the cluster's task.
/// First joins the members into one cluster of their datastore (redis: Trove's meet and addslots, see
/// `handlers::cluster::join_redis_cluster`).
async fn complete_cluster(
    ctx: &Ctx,
    cluster_id: &str,
    version_id: &str,
    members: &[Instance],
    targets: Vec<(String, Option<String>)>,
) -> anyhow::Result<()> {
    let version = version_id.to_owned();
    let manager = ctx
        .db
        .run(move |c| {
            DatastoreVersion::find(c, &version)
                .optional()
                .map_err(DbError::from)
        })
        .await?
        .map(|v| v.manager);
    if manager.as_deref() == Some("redis") {
        crate::handlers::cluster::join_redis_cluster(ctx, cluster_id, members).await?;
    }
    tracing::info!(cluster.id = %cluster_id, members = targets.len(), "every member is ready; completing the cluster");
    let rpc = RpcContext::service();
    let timeout = ctx.settings.high_timeout();
    let calls = targets.iter().map(|(id, sealed)| {
        let rpc = &rpc;
        async move {
            let key = guest::instance_key(&ctx.settings, sealed.as_deref())
                .with_context(|| format!("opening the key of member {id}"))?;
            let keys = guest::keyring(key.as_deref());
            guest::call(
                ctx,
                id,
                keys.as_ref(),
                rpc,
                &GuestMsg::ClusterComplete(ClusterComplete {}),
                timeout,
            )
            .await
            .with_context(|| format!("cluster_complete on member {id}"))
        }
    });
    for res in join_all(calls).await {
        res?;
    }
    finish_cluster(ctx, cluster_id).await
}

async fn finish_cluster(ctx: &Ctx, cluster_id: &str) -> anyhow::Result<()> {
    let id = cluster_id.to_owned();
    let n = ctx
        .db
        .run(move |c| {
            Cluster::set_task_if(c, &id, ClusterTask::Building, ClusterTask::None)
                .map_err(DbError::from)
        })
        .await?;
    if n > 0 {
        tracing::info!(cluster.id = %cluster_id, "cluster built");
    }
    Ok(())
}

/// Deletes again an instance whose delete has not finished for `cluster_delete_time_out` seconds (its
/// message was dead-lettered, or the guest could not be stopped). Runs as a task holding the
/// instance's lock; retried no more often than that same period.
fn retry_stalled_delete(ctx: &Arc<Ctx>, st: &mut State, inst: &Instance, now: NaiveDateTime) {
    let stall = Duration::from_secs(ctx.settings.default.cluster_delete_time_out.max(30));
    if elapsed(inst.updated, now) < stall {
        return;
    }
    if st
        .delete_retries
        .get(&inst.id)
        .is_some_and(|last| last.elapsed() < stall)
    {
        return;
    }
    let Some(guard) = ctx.locks.try_lock(&inst.id) else {
        return;
    };
    st.delete_retries.insert(inst.id.clone(), Instant::now());
    tracing::warn!(instance.id = %inst.id, "delete has not finished; deleting again");
    let ctx = ctx.clone();
    let id = inst.id.clone();
    st.tasks.spawn(async move {
        let _guard = guard;
        if let Err(e) = instance::delete_locked(&ctx, &RpcContext::service(), &id).await {
            tracing::error!(instance.id = %id, error = format!("{e:#}"), "delete failed again");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use ServiceStatus::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_700_000_000, 0)
            .unwrap()
            .naive_utc()
    }

    fn at(secs: i64) -> NaiveDateTime {
        t0() + TimeDelta::seconds(secs)
    }

    #[test]
    fn build_succeeds_on_running_healthy_or_ready() {
        for s in [Running, Healthy, InstanceReady] {
            assert_eq!(
                build_decision(Some(s), t0(), at(10), HOUR),
                BuildDecision::Ready
            );
        }
        // Success beats the timeout when both are true.
        assert_eq!(
            build_decision(Some(Running), t0(), at(7200), HOUR),
            BuildDecision::Ready
        );
    }

    #[test]
    fn build_waits_while_new_building_unknown_or_deleted() {
        for s in [
            None,
            Some(New),
            Some(Building),
            Some(Unknown),
            Some(Deleted),
        ] {
            assert_eq!(
                build_decision(s, t0(), at(10), HOUR),
                BuildDecision::Wait,
                "{s:?}"
            );
        }
        // Clock skew (start in the future) waits too.
        assert_eq!(
            build_decision(Some(New), at(10), t0(), HOUR),
            BuildDecision::Wait
        );
    }

    #[test]
    fn build_fails_on_other_statuses_and_on_timeout() {
        for s in [
            Failed,
            FailedTimeoutGuestagent,
            Shutdown,
            Crashed,
            Blocked,
            Paused,
            RestartRequired,
        ] {
            let d = build_decision(Some(s), t0(), at(10), HOUR);
            assert!(
                matches!(&d, BuildDecision::Failed { message, .. } if message.contains(s.description())),
                "{s:?}: {d:?}"
            );
        }
        let d = build_decision(Some(Building), t0(), at(3601), HOUR);
        assert!(
            matches!(&d, BuildDecision::Failed { message, details, guest_reported: false } if message == "Polling request timed out." && details.contains("3600 s")),
            "{d:?}"
        );
        assert_eq!(
            build_decision(Some(Building), t0(), at(3600), HOUR),
            BuildDecision::Wait
        );
    }

    fn m(id: &str, task: InstanceTask, status: Option<ServiceStatus>) -> MemberView<'_> {
        MemberView {
            id,
            task_id: task.code(),
            status,
        }
    }

    #[test]
    fn cluster_completes_when_every_member_is_ready() {
        let members = [
            m("a", InstanceTask::None, Some(InstanceReady)),
            m("b", InstanceTask::Building, Some(InstanceReady)),
            m("c", InstanceTask::None, Some(Running)),
        ];
        assert_eq!(
            cluster_decision(&members, t0(), at(5), HOUR),
            ClusterDecision::Complete {
                to_complete: vec!["a".into(), "b".into()]
            }
        );
        let done = [
            m("a", InstanceTask::None, Some(Running)),
            m("b", InstanceTask::None, Some(Healthy)),
        ];
        assert_eq!(
            cluster_decision(&done, t0(), at(5), HOUR),
            ClusterDecision::Complete {
                to_complete: vec![]
            }
        );
    }

    #[test]
    fn cluster_waits_then_times_out() {
        let members = [
            m("a", InstanceTask::None, Some(InstanceReady)),
            m("b", InstanceTask::Building, Some(Building)),
        ];
        assert_eq!(
            cluster_decision(&members, t0(), at(5), HOUR),
            ClusterDecision::Wait
        );
        assert!(matches!(
            cluster_decision(&members, t0(), at(3601), HOUR),
            ClusterDecision::Failed(_)
        ));
        assert_eq!(
            cluster_decision(&[], t0(), at(5), HOUR),
            ClusterDecision::Wait
        );
    }

    #[test]
    fn cluster_fails_fast() {
        for bad in [
            m("b", InstanceTask::Building, Some(Failed)),
            m("b", InstanceTask::Building, Some(FailedTimeoutGuestagent)),
            m("b", InstanceTask::BuildingErrorServer, Some(New)),
            m("b", InstanceTask::BuildingErrorTimeoutGa, Some(Building)),
        ] {
            let members = [m("a", InstanceTask::None, Some(InstanceReady)), bad];
            assert_eq!(
                cluster_decision(&members, t0(), at(5), HOUR),
                ClusterDecision::Failed("member b failed to build".into())
            );
        }
    }

    #[test]
    fn relaunches_back_off_from_one_second_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| relaunch_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(relaunch_delay(u32::MAX), RELAUNCH_BACKOFF_MAX);

        let t = Instant::now();
        // The first attempt is at once; each next one waits for the delay of the attempts so far.
        assert!(Backoff::due(None, t));
        let first = Backoff::next(None, t);
        assert_eq!(first.attempts, 1);
        assert!(!Backoff::due(Some(&first), t + Duration::from_millis(999)));
        assert!(Backoff::due(Some(&first), t + Duration::from_secs(1)));
        let second = Backoff::next(Some(&first), t + Duration::from_secs(1));
        assert_eq!(second.attempts, 2);
        assert_eq!(second.next_at, t + Duration::from_secs(3));
        let mut b = second;
        for _ in 0..20 {
            b = Backoff::next(Some(&b), b.next_at);
        }
        let last = Backoff::next(Some(&b), b.next_at);
        assert_eq!(last.next_at - b.next_at, RELAUNCH_BACKOFF_MAX);
    }

    fn instance(host: Option<&str>) -> Instance {
        let now = t0();
        Instance {
            created: now,
            updated: now,
            name: "n".into(),
            compute_instance_id: Some("i1".into()),
            server_status: Some("ACTIVE".into()),
            task_description: String::new(),
            tenant_id: "t".into(),
            datastore_version_id: "v".into(),
            compute_host: host.map(Into::into),
            address: Some("127.0.0.1".into()),
            port: Some(10000),
            ..trove_tests::instance_row("i1")
        }
    }

    #[test]
    fn only_this_hosts_started_live_instances_are_kept_running() {
        assert!(should_keep_running(&instance(Some("h1")), "h1"));
        // Rows from before hosts were recorded are this host's.
        assert!(should_keep_running(&instance(None), "h1"));
        assert!(!should_keep_running(&instance(Some("h2")), "h1"));
        let mut building = instance(Some("h1"));
        building.task_id = InstanceTask::Building.code();
        assert!(should_keep_running(&building, "h1"));
        let mut never_started = instance(Some("h1"));
        never_started.compute_instance_id = None;
        assert!(!should_keep_running(&never_started, "h1"));
        let mut error = instance(Some("h1"));
        error.server_status = Some("ERROR".into());
        assert!(!should_keep_running(&error, "h1"));
        for task in [
            InstanceTask::Deleting,
            InstanceTask::BuildingErrorServer,
            InstanceTask::BuildingErrorTimeoutGa,
        ] {
            let mut i = instance(Some("h1"));
            i.task_id = task.code();
            assert!(!should_keep_running(&i, "h1"), "{task:?}");
        }
        let mut deleted = instance(Some("h1"));
        deleted.deleted = true;
        assert!(!should_keep_running(&deleted, "h1"));
    }

    #[test]
    fn builds_are_checked_every_100_ms_between_full_passes() {
        let period = Duration::from_secs(5);
        let ms = Duration::from_millis;
        // Nothing building: sleep until the next full pass.
        assert_eq!(
            next_tick(Duration::ZERO, period, false),
            (period, Tick::Full)
        );
        assert_eq!(next_tick(ms(4200), period, false), (ms(800), Tick::Full));
        // Building: a build check every 100 ms until the full pass is due.
        assert_eq!(
            next_tick(Duration::ZERO, period, true),
            (BUILD_CHECK_INTERVAL, Tick::Builds)
        );
        assert_eq!(
            next_tick(ms(4850), period, true),
            (BUILD_CHECK_INTERVAL, Tick::Builds)
        );
        assert_eq!(next_tick(ms(4950), period, true), (ms(50), Tick::Full));
        // Overdue (a long pass): the full pass at once, building or not.
        assert_eq!(
            next_tick(ms(7000), period, true),
            (Duration::ZERO, Tick::Full)
        );
        // A period shorter than the check interval: full passes only.
        assert_eq!(
            next_tick(Duration::ZERO, ms(50), true),
            (ms(50), Tick::Full)
        );
    }

    #[test]
    fn a_guest_is_waited_for_only_while_it_reports_new_or_nothing() {
        // Reporting `new`: it runs without its prepare, launched or not (rows from before launches
        // were recorded).
        for launched in [true, false] {
            assert_eq!(
                guest_wait(Some(New), true, launched),
                Some(GuestWait::Prepare)
            );
            assert_eq!(guest_wait(None, true, launched), Some(GuestWait::Prepare));
        }
        // Launched but never reported: it may not have started. Not launched yet: the create is
        // still on its way, only usage_timeout applies.
        assert_eq!(guest_wait(Some(New), false, true), Some(GuestWait::Start));
        assert_eq!(guest_wait(None, false, true), Some(GuestWait::Start));
        assert_eq!(guest_wait(Some(New), false, false), None);
        // Any other status: the guest has its prepare (or the build decision handles it).
        for s in [Building, Running, InstanceReady, Failed, Unknown, Shutdown] {
            assert_eq!(guest_wait(Some(s), true, true), None, "{s:?}");
            assert_eq!(guest_wait(Some(s), false, true), None, "{s:?}");
        }
    }

    #[test]
    fn prepare_is_sent_again_once_per_period_and_a_silent_guest_times_out() {
        let s = Duration::from_secs;
        let (resend, start) = (s(20), s(120));
        let t = Instant::now();
        let w = Watch::observe(None, GuestWait::Prepare, t);
        assert_eq!(w.action(t, resend, start), WaitAction::Nothing);
        assert_eq!(w.action(t + s(19), resend, start), WaitAction::Nothing);
        assert_eq!(
            w.action(t + s(20), resend, start),
            WaitAction::ResendPrepare
        );
        // The clock runs on while the wait stays the same.
        assert_eq!(Watch::observe(Some(&w), GuestWait::Prepare, t + s(30)), w);
        // After a re-send, the next one waits a whole period again.
        let sent = Watch {
            resent: 1,
            resent_at: Some(t + s(20)),
            ..w
        };
        assert_eq!(sent.action(t + s(39), resend, start), WaitAction::Nothing);
        assert_eq!(
            sent.action(t + s(40), resend, start),
            WaitAction::ResendPrepare
        );
        // Zero turns re-sending off; a guest reporting `new` never times out here.
        assert_eq!(sent.action(t + s(3600), s(0), start), WaitAction::Nothing);

        let silent = Watch::observe(None, GuestWait::Start, t);
        assert_eq!(
            silent.action(t + s(119), resend, start),
            WaitAction::Nothing
        );
        assert_eq!(
            silent.action(t + s(120), resend, start),
            WaitAction::NeverStarted
        );
        assert_eq!(
            silent.action(t + s(3600), resend, s(0)),
            WaitAction::Nothing
        );
        // A guest that starts reporting begins a new wait, with a clock of its own.
        let up = Watch::observe(Some(&silent), GuestWait::Prepare, t + s(100));
        assert_eq!(
            (up.wait, up.since, up.resent),
            (GuestWait::Prepare, t + s(100), 0)
        );
        assert_eq!(up.action(t + s(119), resend, start), WaitAction::Nothing);
    }

    #[test]
    fn busy_ids_free_themselves() {
        let set = BusySet::default();
        let a = set.claim("c1").unwrap();
        assert!(set.claim("c1").is_none());
        drop(a);
        assert!(set.claim("c1").is_some());
    }
}
