//! The shipped binaries, end to end (issue 2, "must show"): `trove-api`, `trove-taskmanager` and
//! `trove-conductor` started as processes from a configuration file, driven through the `trove` CLI,
//! with a real `trove-guestagent` process per instance.

use std::time::{Duration, Instant};

use trove_tests::{ok, rows};
use trove_tests::{process_alive, property, ProcessStack};

/// A 32-character project id (an ordinary member, not admin).
const TENANT: &str = "b1a2c3d4e5f60718293a4b5c6d7e8f90";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binaries_create_show_list_delete() {
    let started = Instant::now();
    let stack = ProcessStack::start().await.unwrap();
    let up = started.elapsed();

    // Create: the walkthrough's command prints the instance in BUILD.
    let out = stack
        .trove(
            TENANT,
            &[
                "create",
                "myinst",
                "15",
                "--size",
                "1",
                "--datastore",
                "mysql",
            ],
        )
        .await;
    let table = ok(&out);
    assert_eq!(
        property(table, "status").as_deref(),
        Some("BUILD"),
        "{table}"
    );
    assert_eq!(property(table, "name").as_deref(), Some("myinst"));
    assert_eq!(property(table, "datastore").as_deref(), Some("mysql"));
    assert_eq!(property(table, "flavor").as_deref(), Some("15"));
    let id = property(table, "id").expect("create prints the id");

    // ACTIVE within seconds: the guest process heartbeats `running` through the conductor.
    let created = Instant::now();
    trove_tests::eventually(Duration::from_secs(30), "myinst ACTIVE", || async {
        let out = stack.trove(TENANT, &["show", "myinst"]).await;
        (property(&out.stdout, "status").as_deref() == Some("ACTIVE")).then_some(())
    })
    .await
    .unwrap();
    let to_active = created.elapsed();
    // The status is the conductor's work: it stored the guest's heartbeat.
    let mut conn = stack.db.conn();
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    let seen: Vec<Row> = diesel::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT s.status_description AS v FROM service_statuses s \
             JOIN conductor_lastseen l ON l.instance_id = s.instance_id AND l.method_name = 'heartbeat' \
             WHERE s.instance_id = $1",
        )
        .bind::<diesel::sql_types::Text, _>(&id),
        &mut conn,
    )
    .unwrap();
    assert_eq!(
        seen.iter().map(|r| r.v.as_str()).collect::<Vec<_>>(),
        ["running"]
    );

    // The list shows it.
    let out = stack.trove(TENANT, &["list"]).await;
    let listed = rows(ok(&out));
    let row = listed
        .iter()
        .find(|r| r.first() == Some(&id))
        .unwrap_or_else(|| panic!("{id} not in the list:\n{}", out.stdout));
    assert!(row.contains(&"myinst".to_owned()), "{row:?}");
    assert!(row.contains(&"mysql".to_owned()), "{row:?}");
    assert!(row.contains(&"ACTIVE".to_owned()), "{row:?}");

    // Its guest is a real process.
    let pid = stack.guest_pid(&id).expect("guest.pid");
    assert!(process_alive(pid), "guest {pid} is not running");

    // Delete: the guest process stops and the instance leaves the list.
    let deleting = Instant::now();
    let out = stack.trove(TENANT, &["delete", "myinst"]).await;
    assert!(ok(&out).contains("has been accepted"), "{}", out.stdout);
    trove_tests::eventually(
        Duration::from_secs(30),
        "the guest process gone",
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await
    .unwrap();
    trove_tests::eventually(
        Duration::from_secs(30),
        "myinst gone from the list",
        || async {
            let out = stack.trove(TENANT, &["list"]).await;
            (out.status == 0 && !out.stdout.contains(&id)).then_some(())
        },
    )
    .await
    .unwrap();
    let out = stack.trove(TENANT, &["show", &id]).await;
    assert_eq!(out.status, 1, "a deleted instance is not found: {out:?}");
    eprintln!(
        "binaries: stack up in {up:?}, BUILD→ACTIVE in {to_active:?}, delete in {:?}, total {:?}",
        deleting.elapsed(),
        started.elapsed()
    );
}
