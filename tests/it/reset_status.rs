//! Nothing stuck (issue 14): an admin's `reset-status` (Trove's `reset_status` instance action and
//! the cluster `reset-status` action) takes an instance or a cluster out of BUILD, so it can be
//! deleted; others get Trove's policy error. An instance in BUILD whose guest is gone (no status
//! report for `build_delete_grace` seconds) may be deleted; a younger build is refused as in Trove.
//!
//! The taskmanager is stopped while the instances are created, so they stay in BUILD with no guest
//! (their `create_instance` waits in its queue); it is started again to carry out the deletes, which
//! shows the delete path copes with an instance whose guest never started.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};
use trove_common::db::schema::{clusters, instances, service_statuses};
use trove_tests::{http, instance_create, ok, prop, wait_active, TestEnv};

/// An admin (noauth: a token starting with `admin`).
const ADMIN: &str = "admin-reset";
/// The owner of the instances, not an admin.
const OWNER: &str = "t-reset-owner";
/// Another tenant.
const STRANGER: &str = "t-reset-stranger";

/// Long enough for a delete through the real taskmanager.
const GONE: Duration = Duration::from_secs(60);

fn fault(status: u16, body: &Value) -> (u16, String) {
    let (_, inner) = body
        .as_object()
        .and_then(|o| o.iter().next())
        .unwrap_or_else(|| panic!("no fault body ({status}): {body}"));
    assert_eq!(inner["code"], json!(status), "{body}");
    (
        status,
        inner["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The owner's DELETE of `id` is refused with Trove's 422 for a build.
async fn assert_delete_refused_not_ready(env: &TestEnv, id: &str) {
    let (s, b) = http(
        env,
        OWNER,
        Method::DELETE,
        &format!("/instances/{id}"),
        None,
    )
    .await;
    assert_eq!(
        fault(s, &b),
        (
            422,
            format!("Instance {id} is not ready. (Status is BUILD).")
        )
    );
}

async fn status_of(env: &TestEnv, token: &str, id: &str) -> String {
    let (code, body) = http(env, token, Method::GET, &format!("/instances/{id}"), None).await;
    assert_eq!(code, 200, "{body}");
    body["instance"]["status"].as_str().unwrap().to_owned()
}

async fn wait_gone(env: &TestEnv, path: &str) {
    trove_tests::eventually(GONE, &format!("{path} deleted"), || async {
        (http(env, ADMIN, Method::GET, path, None).await.0 == 404).then_some(())
    })
    .await
    .unwrap();
}

/// Moves the instance's creation and its guest's last report back in time.
fn backdate(env: &TestEnv, id: &str, created: NaiveDateTime, last_report: NaiveDateTime) {
    let mut c = env.db.conn();
    let n = diesel::update(instances::table.find(id))
        .set(instances::created.eq(created))
        .execute(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let n = diesel::update(service_statuses::table.filter(service_statuses::instance_id.eq(id)))
        .set(service_statuses::updated_at.eq(Some(last_report)))
        .execute(&mut c)
        .unwrap();
    assert_eq!(n, 1);
}

/// (task_id, service status_id) of an instance.
fn codes(env: &TestEnv, id: &str) -> (i32, i32) {
    let mut c = env.db.conn();
    let task = instances::table
        .find(id)
        .select(instances::task_id)
        .first(&mut c)
        .unwrap();
    let svc = service_statuses::table
        .filter(service_statuses::instance_id.eq(id))
        .select(service_statuses::status_id)
        .first(&mut c)
        .unwrap();
    (task, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_resets_a_stuck_build_and_others_get_troves_errors() {
    let mut env = TestEnv::start().await.unwrap();
    env.stop_taskmanager().await;
    let id = instance_create(&env, OWNER, "stuck", &[]).await;
    assert_eq!(status_of(&env, OWNER, &id).await, "BUILD");

    // Trove's rule: a build cannot be deleted (it is seconds old, well within the grace).
    assert_delete_refused_not_ready(&env, &id).await;

    // The owner is not an admin: Trove's policy error, through the API and the CLI.
    let action = format!("/instances/{id}/action");
    let policy = "Policy doesn't allow instance:reset_status to be performed.";
    let (s, b) = http(
        &env,
        OWNER,
        Method::POST,
        &action,
        Some(json!({"reset_status": {}})),
    )
    .await;
    assert_eq!(fault(s, &b), (403, policy.to_owned()));
    assert_eq!(b["forbidden"]["code"], 403, "{b}");
    let out = env.trove(OWNER, &["reset-status", &id]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(out.stderr, format!("ERROR: {policy} (HTTP 403)\n"));
    // Another tenant does not even see it.
    let (s, b) = http(
        &env,
        STRANGER,
        Method::POST,
        &action,
        Some(json!({"reset_status": {}})),
    )
    .await;
    assert_eq!(
        fault(s, &b),
        (404, format!("Resource {id} cannot be found."))
    );
    assert_eq!(status_of(&env, OWNER, &id).await, "BUILD");

    // The admin resets it: nothing printed; task NONE, service status UNKNOWN, shown as ERROR.
    let out = env.trove(ADMIN, &["reset-status", &id]).await;
    assert_eq!(ok(&out), "");
    assert_eq!(out.stderr, "");
    assert_eq!(codes(&env, &id), (0x01, 0x16));
    assert_eq!(status_of(&env, OWNER, &id).await, "ERROR");
    assert_eq!(status_of(&env, ADMIN, &id).await, "ERROR");
    // Again, from ERROR: still 202, still ERROR.
    let (s, b) = http(
        &env,
        ADMIN,
        Method::POST,
        &action,
        Some(json!({"reset_status": {}})),
    )
    .await;
    assert_eq!((s, b), (202, Value::Null));
    assert_eq!(status_of(&env, OWNER, &id).await, "ERROR");

    // Now the owner can delete it, and the taskmanager deletes an instance whose guest never ran.
    let out = env.trove(OWNER, &["delete", &id]).await;
    assert_eq!(
        ok(&out),
        format!("Request to delete instance {id} has been accepted.\n")
    );
    // Task DELETING; the status stays ERROR (docs/messaging.md §5: UNKNOWN is ERROR before DELETING is
    // SHUTDOWN), as Trove master shows ERROR for a delete whose server is not ACTIVE.
    assert_eq!(codes(&env, &id), (0x02, 0x16));
    assert_eq!(status_of(&env, OWNER, &id).await, "ERROR");
    env.start_taskmanager().await.unwrap();
    wait_gone(&env, &format!("/instances/{id}")).await;
    assert!(!env.state_dir.path().join(&id).exists());
}

/// Trove lets an owner reset when the body names `force_delete` (`instance:force_delete` is
/// `admin_or_owner`); other actions still answer as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_delete_in_the_body_is_the_owners_rule() {
    let mut env = TestEnv::start().await.unwrap();
    env.stop_taskmanager().await;
    let id = instance_create(&env, OWNER, "forced", &[]).await;
    let action = format!("/instances/{id}/action");
    let (s, b) = http(
        &env,
        OWNER,
        Method::POST,
        &action,
        Some(json!({"reset_status": {"force_delete": true}})),
    )
    .await;
    assert_eq!((s, b), (202, Value::Null));
    assert_eq!(status_of(&env, OWNER, &id).await, "ERROR");
    let (s, b) = http(&env, OWNER, Method::POST, &action, Some(json!({}))).await;
    assert_eq!(fault(s, &b), (400, "Invalid request body.".to_owned()));
    let (s, b) = http(
        &env,
        OWNER,
        Method::POST,
        &action,
        Some(json!({"resize": {"volume": {"size": 2}}})),
    )
    .await;
    assert_eq!(s, 501, "{b}");
}

/// A reset is no lie about a live guest: its next heartbeat sets its real status again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_guest_reports_its_way_back_after_a_reset() {
    let env = TestEnv::start().await.unwrap();
    let id = instance_create(&env, OWNER, "alive", &[]).await;
    wait_active(&env, OWNER, &id, GONE).await;
    let out = env.trove(ADMIN, &["reset-status", &id]).await;
    assert_eq!(ok(&out), "");
    wait_active(&env, OWNER, &id, Duration::from_secs(20)).await;
    assert_eq!(codes(&env, &id).0, 0x01);
    ok(&env.trove(OWNER, &["delete", &id]).await);
    wait_gone(&env, &format!("/instances/{id}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_reset_status_lets_a_stuck_cluster_be_deleted() {
    let mut env = TestEnv::start().await.unwrap();
    env.stop_taskmanager().await;
    let out = env
        .trove(
            OWNER,
            &[
                "cluster-create",
                "stuckc",
                "redis",
                "3.2.6",
                "--instance",
                "flavor=15,volume=1",
                "--instance",
                "flavor=15,volume=1",
            ],
        )
        .await;
    let cid = prop(ok(&out), "id");
    let path = format!("/clusters/{cid}");
    let (s, b) = http(&env, OWNER, Method::DELETE, &path, None).await;
    assert_eq!(
        fault(s, &b),
        (
            422,
            "This action cannot be performed on the cluster while the current cluster task is \
             'BUILDING'."
                .to_owned()
        )
    );

    // Not an admin: Trove's policy error. Unknown and unbuilt actions, and bad bodies.
    let reset = json!({"reset-status": {}});
    let (s, b) = http(&env, OWNER, Method::POST, &path, Some(reset.clone())).await;
    assert_eq!(
        fault(s, &b),
        (
            403,
            "Policy doesn't allow cluster:reset-status to be performed.".to_owned()
        )
    );
    let out = env.trove(OWNER, &["cluster-reset-status", &cid]).await;
    assert_eq!(
        out.stderr,
        "ERROR: Policy doesn't allow cluster:reset-status to be performed. (HTTP 403)\n"
    );
    for (body, want) in [
        (json!({}), (400, "Invalid request body.")),
        (
            json!({"reset-status": {}, "grow": []}),
            (
                400,
                "Action request should have exactly one action specified in body",
            ),
        ),
        (
            json!({"grow": []}),
            (501, "The 'grow' action is not supported."),
        ),
        (json!({"reboot": {}}), (400, "Action reboot not supported")),
    ] {
        let (s, b) = http(&env, OWNER, Method::POST, &path, Some(body.clone())).await;
        assert_eq!(fault(s, &b), (want.0, want.1.to_owned()), "{body}");
    }
    let missing = "/clusters/00000000-0000-0000-0000-000000000000";
    let (s, b) = http(&env, ADMIN, Method::POST, missing, Some(reset.clone())).await;
    assert_eq!(
        fault(s, &b),
        (
            404,
            "Cluster '00000000-0000-0000-0000-000000000000' cannot be found.".to_owned()
        )
    );

    // The admin's reset: 202 with the cluster view (task NONE); the members show ERROR.
    let (s, b) = http(&env, ADMIN, Method::POST, &path, Some(reset)).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["cluster"]["id"], json!(cid), "{b}");
    assert_eq!(b["cluster"]["task"]["name"], "NONE", "{b}");
    assert_eq!(
        b["cluster"]["instances"].as_array().unwrap().len(),
        2,
        "{b}"
    );
    let (_, shown) = http(&env, OWNER, Method::GET, &path, None).await;
    assert_eq!(shown["cluster"]["task"]["name"], "NONE", "{shown}");
    for m in shown["cluster"]["instances"].as_array().unwrap() {
        assert_eq!(m["status"], "ERROR", "{shown}");
    }
    // The CLI prints nothing.
    let out = env.trove(ADMIN, &["cluster-reset-status", &cid]).await;
    assert_eq!(ok(&out), "");

    let out = env.trove(OWNER, &["cluster-delete", &cid]).await;
    assert_eq!(
        ok(&out),
        format!("Request to delete cluster {cid} has been accepted.\n")
    );
    env.start_taskmanager().await.unwrap();
    wait_gone(&env, &path).await;
    let deleted: bool = clusters::table
        .find(&cid)
        .select(clusters::deleted)
        .first(&mut env.db.conn())
        .unwrap();
    assert!(deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_whose_guest_is_gone_can_be_deleted_after_the_grace() {
    let mut env = TestEnv::start_with(|s| s.default.build_delete_grace = 60)
        .await
        .unwrap();
    env.stop_taskmanager().await;
    let never = instance_create(&env, OWNER, "never-reported", &[]).await;
    let silent = instance_create(&env, OWNER, "went-silent", &[]).await;
    let recent = instance_create(&env, OWNER, "reported-lately", &[]).await;
    let young = instance_create(&env, OWNER, "young", &[]).await;
    let now = trove_common::db::now();
    let long_ago = now - chrono::Duration::minutes(10);
    // Created 10 minutes ago and never reported (the row keeps updated_at = created).
    backdate(&env, &never, long_ago, long_ago);
    // Created 10 minutes ago, last report 2 minutes ago.
    backdate(&env, &silent, long_ago, now - chrono::Duration::minutes(2));
    // Created 10 minutes ago, last report 5 seconds ago: its guest is alive.
    backdate(&env, &recent, long_ago, now - chrono::Duration::seconds(5));
    for id in [&never, &silent, &recent, &young] {
        assert_eq!(status_of(&env, OWNER, id).await, "BUILD");
    }

    for id in [&recent, &young] {
        assert_delete_refused_not_ready(&env, id).await;
    }
    let out = env.trove(OWNER, &["delete", &young]).await;
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains(&format!(
            "Instance {young} is not ready. (Status is BUILD). (HTTP 422)"
        )),
        "{out:?}"
    );

    let out = env.trove(OWNER, &["delete", &never, &silent]).await;
    assert_eq!(
        ok(&out),
        format!(
            "Request to delete instance {never} has been accepted.\n\
             Request to delete instance {silent} has been accepted.\n"
        )
    );
    for id in [&never, &silent] {
        assert_eq!(status_of(&env, OWNER, id).await, "SHUTDOWN");
    }
    env.start_taskmanager().await.unwrap();
    for id in [&never, &silent] {
        wait_gone(&env, &format!("/instances/{id}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zero_grace_keeps_troves_rule() {
    let mut env = TestEnv::start_with(|s| s.default.build_delete_grace = 0)
        .await
        .unwrap();
    env.stop_taskmanager().await;
    let id = instance_create(&env, OWNER, "old-build", &[]).await;
    let long_ago = trove_common::db::now() - chrono::Duration::days(1);
    backdate(&env, &id, long_ago, long_ago);
    assert_delete_refused_not_ready(&env, &id).await;
}
