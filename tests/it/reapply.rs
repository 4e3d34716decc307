//! Fleet-wide reapply (issue 5): a job survives a SIGKILLed taskmanager, guests that are down fail
//! without holding the job up, and non-admins are clamped to the configured limits.
//!
//! The first test runs the real binaries ([`ProcessStack`]) because an in-process taskmanager cannot
//! be SIGKILLed; the others run in-process ([`TestEnv`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::{PgConnection, RunQueryDsl};
use regex::Regex;
use serde_json::{json, Value};
use trove_tests::api::{count, md5_of, strings, wait_active, wait_guest_results, Api};
use trove_tests::{ok, rows};
use trove_tests::{ProcessStack, TestEnv};

/// A 32-character project id whose token is admin.
const ADMIN: &str = "admin00e46e5f7840e39012aff46a920";
/// A 32-character project id of an ordinary tenant.
const TENANT: &str = "eac1e46e5f7840e39012aff46a92073a";

/// A `compute_host` no taskmanager of these tests runs as.
const DOWN_HOST: &str = "a-host-that-is-down";

/// Records the instance as living on `host` (its `compute_host`) and returns the host it was on. A
/// taskmanager starts again only the dead guests of its own host (`[DEFAULT] host`), so a guest
/// SIGKILLed while its instance is on [`DOWN_HOST`] stays down, as the guest of a host that is down
/// does: its queue stays, and casts to it are accepted and never answered. Moved back, the
/// taskmanager finds the guest dead and starts a new one. (Its relaunch reads the instance again
/// before starting anything, so a reconciler pass already under way when the instance moves does not
/// start the guest either.)
fn move_to_host(conn: &mut PgConnection, id: &str, host: Option<&str>) -> Option<String> {
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use trove_common::db::schema::instances;
    let was: Option<String> = instances::table
        .find(id)
        .select(instances::compute_host)
        .first(conn)
        .expect("the instance's host");
    let moved = diesel::update(instances::table.find(id))
        .set(instances::compute_host.eq(host))
        .execute(conn)
        .expect("moving the instance");
    assert_eq!(moved, 1, "{id} moved to {host:?}");
    was
}

/// Asserts that nothing started the guest of `id` again since `killed` was SIGKILLed: `guest.pid`
/// still names the dead pid (a launch rewrites it), and no process of the instance's `guest.conf`
/// runs.
fn assert_still_down(state_path: &Path, id: &str, killed: u32) {
    assert_eq!(
        trove_tests::guest_pid(state_path, id),
        Some(killed),
        "{id}: a guest was started again"
    );
    assert!(!trove_tests::process_alive(killed), "{id}: {killed} runs");
    let conf = state_path.join(id).join("guest.conf");
    let running: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| trove_taskmanager::compute::process::is_guest_process(*pid, &conf))
        .collect();
    assert_eq!(
        running,
        Vec::<u32>::new(),
        "{id}: guests of its guest.conf run"
    );
}

/// Waits until the guest of `id` is a live process other than `killed` (the taskmanager started a new
/// one); returns its pid.
async fn wait_new_guest(state_path: &Path, id: &str, killed: u32, timeout: Duration) -> u32 {
    trove_tests::eventually(timeout, &format!("a new guest for {id}"), || async {
        trove_tests::guest_pid(state_path, id)
            .filter(|pid| *pid != killed && trove_tests::process_alive(*pid))
    })
    .await
    .unwrap()
}

/// Polls until every instance in `ids` is ACTIVE; fails fast on an error status.
/// Module `name` (contents `message=<v1>`) on `n` new instances `<name>-<i>`, every one ACTIVE (within
/// `active_within`) and its guest's result for it stored: (module id, instance ids).
async fn module_on_instances(
    env: &TestEnv,
    api: &Api,
    name: &str,
    v1: &str,
    n: usize,
    active_within: Duration,
) -> (String, Vec<String>) {
    let module = api.create_module(name, v1).await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(api.create_instance(&format!("{name}-{i}"), &module).await);
    }
    wait_active(api, &ids, active_within).await;
    let md5 = md5_of(v1);
    wait_guest_results(
        &env.db.url,
        &module,
        &md5,
        n as i64,
        Duration::from_secs(60),
    )
    .await;
    (module, ids)
}

/// The guest's own record of the module (`modules/ping/<id>/result.json` in its state directory).
fn guest_result(state_path: &Path, instance: &str, module: &str) -> Value {
    let file = state_path
        .join(instance)
        .join("modules/ping")
        .join(module)
        .join("result.json");
    serde_json::from_slice(
        &std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
    )
    .expect("result.json")
}

const FLEET: usize = 50;

/// Issue 5, "Must show": SIGKILL the taskmanager in the middle of a reapply over 50 instances, start
/// it again, and the job finishes: every instance current, one live `instance_modules` row each, and
/// no instance re-sent after its result was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_taskmanager_resumes_the_reapply_job() {
    let t0 = Instant::now();
    // One page holds the whole fleet.
    let mut stack = ProcessStack::start_with("[DEFAULT]\ninstances_page_size = 100\n")
        .await
        .unwrap();
    let api = Api::new(stack.base(ADMIN), ADMIN);
    let (v1, v2) = (md5_of("Fleet.V1"), md5_of("Fleet.V2"));
    let module = api.create_module("fleetmod", "Fleet.V1").await;

    // 50 instances at once: 50 real guest processes.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..FLEET {
        let (base, module) = (stack.base(ADMIN), module.clone());
        creates.spawn(async move {
            Api::new(base, ADMIN)
                .create_instance(&format!("fleet-{i:02}"), &module)
                .await
        });
    }
    let ids: Vec<String> = creates.join_all().await;
    wait_active(&api, &ids, Duration::from_secs(300)).await;
    // The guests apply the module of prepare right after they report ACTIVE: wait for that, so the
    // reapply below is the only apply left to come.
    wait_guest_results(
        &stack.db.url,
        &module,
        &v1,
        FLEET as i64,
        Duration::from_secs(120),
    )
    .await;
    let built = t0.elapsed();

    api.update_module(&module, "Fleet.V2").await;
    let t_reapply = Instant::now();
    api.reapply(&module, json!({"batch_size": 5, "batch_delay": 1}))
        .await;
    // Kill once at least one batch is recorded, preferably while a batch is in flight (items sent or
    // answered but not recorded yet); if no poll catches one, kill during a delay before the end.
    let db_url = stack.db.url.clone();
    let (at_kill, in_flight) = trove_tests::eventually(
        Duration::from_secs(60),
        "some but not all applied",
        || async {
            let job = api.jobs(&module).await.first().cloned()?;
            let applied = job["applied"].as_i64()?;
            let mut conn = <PgConnection as diesel::Connection>::establish(&db_url).ok()?;
            let in_flight = count(
                &mut conn,
                &format!(
                    "SELECT count(*) FROM reapply_job_items WHERE job_id = '{}' \
                         AND state IN ('sent', 'answered')",
                    job["id"].as_str()?
                ),
            );
            let mid_way = (5..FLEET as i64).contains(&applied);
            (mid_way && (in_flight > 0 || applied >= 35)).then_some((job, in_flight))
        },
    )
    .await
    .unwrap();
    stack.kill_taskmanager();
    let job_id = at_kill["id"].as_str().unwrap().to_owned();

    // With the taskmanager dead nothing moves: the job is mid-way, with items still to send.
    let mut conn = stack.db.conn();
    let state = strings(
        &mut conn,
        &format!("SELECT state AS v FROM reapply_jobs WHERE id = '{job_id}'"),
    );
    assert_eq!(state, ["running"]);
    let pending_at_kill = count(
        &mut conn,
        &format!("SELECT count(*) FROM reapply_job_items WHERE job_id = '{job_id}' AND state = 'pending'"),
    );
    assert!(
        pending_at_kill > 0,
        "the kill came too late: nothing left to send"
    );
    // Items claimed but not confirmed sent when the process died (rare: a few ms per batch). The
    // restarted driver casts these again, so their guests may apply twice; every other guest must
    // apply exactly once.
    let unconfirmed: BTreeSet<String> = strings(
        &mut conn,
        &format!(
            "SELECT i.instance_id AS v FROM reapply_job_items i \
             JOIN reapply_jobs j ON j.id = i.job_id WHERE i.job_id = '{job_id}' \
             AND i.state = 'sent' AND j.batch_sent_at IS NULL"
        ),
    )
    .into_iter()
    .collect();

    stack.restart_taskmanager().unwrap();
    let job = trove_tests::eventually(Duration::from_secs(180), "the job finished", || async {
        let job = api.jobs(&module).await.first().cloned()?;
        (job["state"] == "finished").then_some(job)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let reapply_time = t_reapply.elapsed();
    assert_eq!(job["id"], job_id.as_str());
    assert_eq!(
        (
            &job["total"],
            &job["applied"],
            &job["skipped"],
            &job["failed"]
        ),
        (&json!(FLEET), &json!(FLEET), &json!(0), &json!(0)),
        "{job}"
    );

    // module-instance-count: one row, current, all 50.
    let counts = api.count_only(&module).await;
    assert_eq!(counts, BTreeMap::from([(v2.clone(), (true, FLEET as i64))]));

    // Exactly one live instance_modules row per instance, at V2 (no duplicate from a resumed record).
    let per_instance = strings(
        &mut conn,
        &format!(
            "SELECT i.id || ' ' || count(im.id) || ' ' || coalesce(string_agg(im.md5, ','), '') AS v \
             FROM instances i LEFT JOIN instance_modules im ON im.instance_id = i.id \
             AND im.module_id = '{module}' AND NOT im.deleted \
             WHERE NOT i.deleted GROUP BY i.id ORDER BY i.id"
        ),
    );
    assert_eq!(per_instance.len(), FLEET);
    for row in &per_instance {
        assert!(
            row.ends_with(&format!(" 1 {v2}")),
            "instance_modules: {row}"
        );
    }

    // Every item applied, in batches of at most 5, at least 1 s apart (the delay is kept across the
    // restart: `next_batch_at` is in the job row).
    let batches = strings(
        &mut conn,
        &format!(
            "WITH b AS (SELECT batch, count(*) AS n, bool_and(state = 'applied') AS ok, \
                        min(sent_at) AS s, max(answered_at) AS a \
                        FROM reapply_job_items WHERE job_id = '{job_id}' GROUP BY batch) \
             SELECT batch || ' ' || n || ' ' || ok || ' ' || \
                    coalesce(extract(epoch FROM s - lag(a) OVER (ORDER BY batch))::text, '-') AS v \
             FROM b ORDER BY batch"
        ),
    );
    let mut items = 0;
    for (k, row) in batches.iter().enumerate() {
        let f: Vec<&str> = row.split(' ').collect();
        assert_eq!(f[0], k.to_string(), "batches: {batches:?}");
        let n: usize = f[1].parse().unwrap();
        assert!(
            (1..=5).contains(&n) && f[2] == "true",
            "batches: {batches:?}"
        );
        if k > 0 {
            let gap: f64 = f[3].parse().unwrap();
            assert!(
                gap >= 1.0,
                "batch {k} was sent {gap} s after the previous answers: {batches:?}"
            );
        }
        items += n;
    }
    assert_eq!(items, FLEET);

    // None re-sent after its result was recorded. The observable: the guest's own `result.json`.
    // Every module_apply the guest runs rewrites `updated` (its UTC clock, cut to 10 ms, written
    // before it reports), and `record()` set the instance_modules row's `updated` when the taskmanager
    // recorded the answer. A cast sent after that (a resumed driver re-sending a recorded item, or a
    // selection run twice) would be applied after the recording, leaving the guest's `updated` later
    // than the row's. Same host, same clock.
    let recorded = strings(
        &mut conn,
        &format!(
            "SELECT instance_id || ' ' || to_char(updated, 'YYYY-MM-DD HH24:MI:SS.US') AS v \
             FROM instance_modules WHERE module_id = '{module}' AND NOT deleted"
        ),
    );
    assert_eq!(recorded.len(), FLEET);
    for row in &recorded {
        let (instance, at) = row.split_once(' ').unwrap();
        let recorded_at = NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        let r = guest_result(&stack.state_path(), instance, &module);
        assert_eq!(r["md5"], v2.as_str(), "{instance}: {r}");
        assert_eq!(r["status"], "OK", "{instance}: {r}");
        let updated = r["updated"].as_str().unwrap();
        let guest_at = NaiveDateTime::parse_from_str(updated, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        assert!(
            guest_at <= recorded_at,
            "{instance} applied the module at {guest_at} after its result was recorded at {recorded_at}"
        );
    }
    // And no extra send at all: each guest logs one "module results reported" line per job apply
    // (`guest.log`, appended across launches). A resumed driver that re-sent recorded items (and
    // recorded them again, which the check above would not see) shows up here.
    for id in &ids {
        let log = std::fs::read_to_string(stack.state_path().join(id).join("guest.log")).unwrap();
        let applies = log
            .lines()
            .filter(|l| l.contains("module results reported") && l.contains(&job_id))
            .count();
        let allowed = if unconfirmed.contains(id) {
            1..=2
        } else {
            1..=1
        };
        assert!(
            allowed.contains(&applies),
            "{id} applied the job's module {applies} times (info logs needed)"
        );
    }
    eprintln!(
        "timings: fleet of {FLEET} built in {built:.1?}; reapply 202→finished in {reapply_time:.1?} \
         (killed at applied={}, {in_flight} in flight, {pending_at_kill} pending, {} unconfirmed); \
         test {:.1?}",
        at_kill["applied"],
        unconfirmed.len(),
        t0.elapsed()
    );
}

/// Issue 5, "Must show": guests that are down do not hold the job up; they are reported failed, the
/// others end current, and the CLI shows the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_that_are_down_fail_and_the_rest_are_reapplied() {
    let t0 = Instant::now();
    let env = TestEnv::start_with(|s| s.default.module_reapply_instance_timeout = 3)
        .await
        .unwrap();
    let api = Api::new(env.base(ADMIN), ADMIN);
    let (v1, v2) = (md5_of("Down.V1"), md5_of("Down.V2"));
    let (module, ids) = module_on_instances(
        &env,
        &api,
        "downmod",
        "Down.V1",
        6,
        Duration::from_secs(120),
    )
    .await;

    // Two guests go down with their host: their instances move to a host that is down (so this
    // host's taskmanager does not start their guests again), then their guests are SIGKILLed (their
    // queues stay: casts to them are accepted and never answered).
    let down: BTreeSet<String> = [ids[1].clone(), ids[4].clone()].into();
    let mut conn = env.db.conn();
    let mut killed = BTreeMap::new();
    for id in &down {
        move_to_host(&mut conn, id, Some(DOWN_HOST));
        let pid = trove_tests::sigkill_guest(env.state_dir.path(), id).await;
        killed.insert(id.clone(), pid);
    }
    let built = t0.elapsed();

    api.update_module(&module, "Down.V2").await;
    let t_reapply = Instant::now();
    let out = env
        .trove(
            ADMIN,
            &[
                "module-reapply",
                "downmod",
                "--batch_size",
                "3",
                "--delay",
                "1",
                "--wait",
                "--wait_timeout",
                "120",
            ],
        )
        .await;
    let reapply_time = t_reapply.elapsed();
    // They were down throughout the job.
    for (id, pid) in &killed {
        assert_still_down(env.state_dir.path(), id, *pid);
    }
    // Not a terminal: no progress bar; the summary line, then one line per failed instance, in
    // the job's order, with why it failed.
    let summary =
        Regex::new(r"^Reapply [0-9a-f-]{36}: finished, 4 applied, 0 skipped, 2 failed of 6\n$")
            .unwrap();
    let mut lines = ok(&out).split_inclusive('\n');
    let first = lines.next().unwrap_or_default();
    assert!(summary.is_match(first), "summary: {:?}", out.stdout);
    let failures: Vec<&str> = lines.collect();
    let expected: Vec<String> = ids
        .iter()
        .filter(|id| down.contains(*id))
        .map(|id| format!("  failed {id}: no answer from the guest within the timeout\n"))
        .collect();
    assert_eq!(failures, expected, "failure lines: {:?}", out.stdout);
    assert!(
        !out.stderr.contains('#'),
        "no progress bar off a terminal: {:?}",
        out.stderr
    );

    let jobs = api.jobs(&module).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        (
            &job["state"],
            &job["total"],
            &job["applied"],
            &job["skipped"],
            &job["failed"]
        ),
        (
            &json!("finished"),
            &json!(6),
            &json!(4),
            &json!(0),
            &json!(2)
        ),
        "{job}"
    );
    assert!(out.stdout.contains(job["id"].as_str().unwrap()));

    // The failed items are exactly the dead guests, failed by the timeout.
    let failed: BTreeSet<String> = strings(
        &mut conn,
        &format!(
            "SELECT instance_id || ' ' || coalesce(message, '') AS v FROM reapply_job_items \
             WHERE job_id = '{}' AND state = 'failed'",
            job["id"].as_str().unwrap()
        ),
    )
    .into_iter()
    .collect();
    let expected: BTreeSet<String> = down
        .iter()
        .map(|id| format!("{id} no answer from the guest within the timeout"))
        .collect();
    assert_eq!(failed, expected);

    // The four live ones are current; the two dead ones keep the old md5.
    let counts = api.count_only(&module).await;
    assert_eq!(
        counts,
        BTreeMap::from([(v1.clone(), (false, 2)), (v2.clone(), (true, 4))])
    );
    let at_v1: BTreeSet<String> = strings(
        &mut conn,
        &format!(
            "SELECT instance_id AS v FROM instance_modules WHERE module_id = '{module}' \
             AND NOT deleted AND md5 = '{v1}'"
        ),
    )
    .into_iter()
    .collect();
    assert_eq!(at_v1, down);

    // module-reapply-list shows the same counts.
    let out = env.trove(ADMIN, &["module-reapply-list", "downmod"]).await;
    let listed = rows(ok(&out));
    let header: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        ["ID", "State", "Total", "Applied", "Skipped", "Failed", "Started", "Finished"]
    );
    assert_eq!(listed.len(), 1, "{}", out.stdout);
    assert_eq!(
        listed[0][..6],
        [job["id"].as_str().unwrap(), "finished", "6", "4", "0", "2"],
        "{}",
        out.stdout
    );
    eprintln!(
        "timings: 6 instances built (2 guests killed) in {built:.1?}; module-reapply --wait took \
         {reapply_time:.1?}; test {:.1?}",
        t0.elapsed()
    );
}

/// §12 step 1: a non-admin's batch size and delay are clamped to `module_reapply_max_batch_size` and
/// `module_reapply_min_batch_delay`; an admin's are kept (0 still means the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_admin_reapply_is_clamped_and_admin_is_not() {
    let t0 = Instant::now();
    let env = TestEnv::start().await.unwrap();
    let tenant = Api::new(env.base(TENANT), TENANT);
    let admin = Api::new(env.base(ADMIN), ADMIN);
    let theirs = tenant.create_module("tenantmod", "Clamp.T").await;
    let ours = admin.create_module("adminmod", "Clamp.A").await;

    tenant
        .reapply(&theirs, json!({"batch_size": 500, "batch_delay": 0}))
        .await;
    tenant
        .reapply(&theirs, json!({"batch_size": 10, "batch_delay": 7}))
        .await;
    admin
        .reapply(&ours, json!({"batch_size": 500, "batch_delay": 0}))
        .await;
    admin
        .reapply(&ours, json!({"batch_size": 500, "batch_delay": 1}))
        .await;

    // The taskmanager stores the effective values when it selects (the job leaves `queued`).
    let sizes = |jobs: Vec<Value>| -> BTreeSet<(i64, i64)> {
        jobs.iter()
            .map(|j| {
                (
                    j["batch_size"].as_i64().unwrap(),
                    j["batch_delay"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let theirs_jobs = selected(&tenant, &theirs, 2).await;
    assert_eq!(sizes(theirs_jobs), [(50, 2), (10, 7)].into());
    let our_jobs = selected(&admin, &ours, 2).await;
    assert_eq!(sizes(our_jobs), [(500, 2), (500, 1)].into());

    // The job rows themselves, as the driver reads them.
    let mut conn = env.db.conn();
    let rows: BTreeSet<String> = strings(
        &mut conn,
        "SELECT tenant_id || ' ' || is_admin || ' ' || batch_size || ' ' || batch_delay AS v \
         FROM reapply_jobs",
    )
    .into_iter()
    .collect();
    assert_eq!(
        rows,
        [
            format!("{TENANT} false 50 2"),
            format!("{TENANT} false 10 7"),
            format!("{ADMIN} true 500 2"),
            format!("{ADMIN} true 500 1"),
        ]
        .into()
    );
    eprintln!("timings: test {:.1?}", t0.elapsed());
}

/// Waits until the module has `n` jobs and the taskmanager has selected them all (none `queued`).
async fn selected(api: &Api, module: &str, n: usize) -> Vec<Value> {
    trove_tests::eventually(Duration::from_secs(30), "jobs selected", || async {
        let jobs = api.jobs(module).await;
        (jobs.len() == n && jobs.iter().all(|j| j["state"] != "queued")).then_some(jobs)
    })
    .await
    .unwrap()
}

/// The one uncertain step of the driver: a taskmanager that died after claiming a batch (`sent`, no
/// `batch_sent_at` on the job) but before the broker confirmed the casts. On resume those items are cast again (they
/// are unanswered, so nothing recorded is re-sent) instead of waiting for an answer that may never
/// come, and the job finishes with every instance applied. A claimed item whose guest answered before
/// the driver died (the answer proves the send) is not cast again: its `sent_at` becomes its
/// `answered_at`. CI once caught the real kill landing there; this pins it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_claimed_but_never_sent_is_sent_on_resume() {
    use trove_common::db::models::{ReapplyItem, ReapplyJob};
    let t0 = Instant::now();
    // A long instance timeout: a timed-out item would fail, not pass, and the test must not wait it out.
    let mut env = TestEnv::start_with(|s| s.default.module_reapply_instance_timeout = 120)
        .await
        .unwrap();
    let api = Api::new(env.base(ADMIN), ADMIN);
    let v2 = md5_of("Claim.V2");
    let (module, ids) = module_on_instances(
        &env,
        &api,
        "claimmod",
        "Claim.V1",
        3,
        Duration::from_secs(60),
    )
    .await;
    api.update_module(&module, "Claim.V2").await;

    // The state a SIGKILL between the claim and the casts leaves: batch 0 claimed, nothing sent.
    env.stop_taskmanager().await;
    let now = trove_common::db::now();
    let job = ReapplyJob {
        id: uuid::Uuid::new_v4().to_string(),
        module_id: module.clone(),
        tenant_id: ADMIN.into(),
        is_admin: true,
        md5: None,
        include_clustered: false,
        force: false,
        batch_size: 2,
        batch_delay: 1,
        state: "running".into(),
        current_md5: Some(v2.clone()),
        total: 3,
        applied: 0,
        skipped: 0,
        failed: 0,
        next_batch_at: None,
        request_id: "req-claim".into(),
        created: now,
        started: Some(now),
        finished: None,
        batch_sent_at: None,
    };
    let items: Vec<ReapplyItem> = ids
        .iter()
        .enumerate()
        .map(|(seq, id)| ReapplyItem {
            job_id: job.id.clone(),
            instance_id: id.clone(),
            seq: seq as i32,
            // 0: claimed, cast unknown. 1: claimed, and its guest answered before the stamp.
            state: ["sent", "answered", "pending"][seq].into(),
            batch: (seq < 2).then_some(0),
            sent_at: None,
            answered_at: (seq == 1).then_some(now),
            status: (seq == 1).then(|| "OK".to_owned()),
            message: None,
        })
        .collect();
    let mut conn = env.db.conn();
    ReapplyJob::insert(&mut conn, &job).unwrap();
    diesel::insert_into(trove_common::db::schema::reapply_job_items::table)
        .values(&items)
        .execute(&mut conn)
        .unwrap();

    env.start_taskmanager().await.unwrap();
    let done = trove_tests::eventually(
        Duration::from_secs(30),
        "the resumed job finished",
        || async {
            let job = api.jobs(&module).await.first().cloned()?;
            (job["state"] == "finished").then_some(job)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (&done["applied"], &done["failed"]),
        (&json!(3), &json!(0)),
        "{done}"
    );
    assert_eq!(
        api.count_only(&module).await,
        BTreeMap::from([(v2.clone(), (true, 3))])
    );
    // The claimed batch kept its number; the pending item went out as the next one.
    let batches = strings(
        &mut conn,
        &format!(
            "SELECT instance_id || ' ' || batch || ' ' || state || ' ' || (sent_at IS NOT NULL) AS v \
             FROM reapply_job_items WHERE job_id = '{}' ORDER BY seq",
            job.id
        ),
    );
    let expected: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| format!("{id} {} applied true", usize::from(k >= 2)))
        .collect();
    assert_eq!(batches, expected);
    // The answered item is stamped with its answer time, and its guest never got the job's cast; the
    // other two did, once each.
    let stamped = strings(
        &mut conn,
        &format!(
            "SELECT (sent_at = answered_at)::text AS v FROM reapply_job_items \
             WHERE job_id = '{}' AND instance_id = '{}'",
            job.id, ids[1]
        ),
    );
    assert_eq!(stamped, ["true"]);
    for (k, id) in ids.iter().enumerate() {
        let log = std::fs::read_to_string(env.state_dir.path().join(id).join("guest.log"))
            .unwrap_or_default();
        let applies = log
            .lines()
            .filter(|l| l.contains("module results reported") && l.contains(&job.id))
            .count();
        assert_eq!(
            applies,
            usize::from(k != 1),
            "{id} (item {k}) applied {applies} times"
        );
    }
    eprintln!("timings: test {:.1?}", t0.elapsed());
}

/// A cast the broker loses after confirming it (a transient cast and a broker restart) is cast once
/// more halfway through `module_reapply_instance_timeout`, so the instance is reapplied, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_cast_is_cast_again_halfway_through_the_timeout() {
    use lapin::options::QueuePurgeOptions;

    let env = TestEnv::start_with(|s| {
        s.default.module_reapply_instance_timeout = 10;
        s.default.module_reapply_persistent_casts = false;
    })
    .await
    .unwrap();
    let api = Api::new(env.base(ADMIN), ADMIN);
    let v2 = md5_of("Lost.V2");
    let (module, ids) = module_on_instances(
        &env,
        &api,
        "lostmod",
        "Lost.V1",
        3,
        Duration::from_secs(120),
    )
    .await;

    // Stop one guest, on a host that is down so that no taskmanager starts it again yet: its queue
    // stays and takes the cast, which is then dropped from the queue.
    let victim = ids[1].clone();
    let home = move_to_host(&mut env.db.conn(), &victim, Some(DOWN_HOST));
    let killed = trove_tests::sigkill_guest(env.state_dir.path(), &victim).await;

    api.update_module(&module, "Lost.V2").await;
    ok(&env
        .trove(ADMIN, &["module-reapply", "lostmod", "--batch_size", "3"])
        .await);
    let db = &env.db;
    let sent = format!(
        "SELECT count(*) AS n FROM reapply_job_items i JOIN reapply_jobs j ON j.id = i.job_id \
         WHERE i.instance_id = '{victim}' AND i.state = 'sent' AND j.batch_sent_at IS NOT NULL"
    );
    trove_tests::eventually(
        Duration::from_secs(30),
        "the victim's cast confirmed",
        || async { (count(&mut db.conn(), &sent) == 1).then_some(()) },
    )
    .await
    .unwrap();
    // Lose it, as a broker restart loses a transient message.
    let names = trove_common::amqp::Names::new(&env.settings);
    let conn = lapin::Connection::connect(
        &trove_common::amqp::amqp_uri(&trove_tests::transport_url()),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let purged = ch
        .queue_purge(
            names.guest(&victim).as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(purged, 1, "the victim's queue held its cast");
    assert_still_down(env.state_dir.path(), &victim, killed);
    // Bring the guest back with nothing in its queue: its host is up again, and the taskmanager
    // starts a new guest.
    move_to_host(&mut env.db.conn(), &victim, home.as_deref());
    wait_new_guest(
        env.state_dir.path(),
        &victim,
        killed,
        Duration::from_secs(30),
    )
    .await;

    trove_tests::eventually(Duration::from_secs(60), "the job finished", || async {
        let jobs = api.jobs(&module).await;
        (jobs.len() == 1 && jobs[0]["state"] == "finished").then(|| jobs[0].clone())
    })
    .await
    .unwrap();
    let job = &api.jobs(&module).await[0];
    assert_eq!(
        (&job["applied"], &job["failed"]),
        (&json!(3), &json!(0)),
        "{job}"
    );
    let mut conn = env.db.conn();
    let recast: Vec<String> = strings(
        &mut conn,
        "SELECT instance_id AS v FROM reapply_job_items WHERE recast_at IS NOT NULL",
    );
    assert_eq!(
        recast,
        std::slice::from_ref(&victim),
        "only the silent item is cast again"
    );
    assert_eq!(
        api.count_only(&module).await,
        BTreeMap::from([(v2.clone(), (true, 3))])
    );
}
