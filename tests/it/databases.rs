//! The instance data plane (issue 13): databases, users, root and `restart`, against the real api,
//! taskmanager, conductor and guests.
//!
//! The first tests need no running guest: the api answers bad input, unknown instances, instances
//! that are not ready and datastores without this API before anything reaches a guest. The last one
//! builds a mysql instance (a MariaDB server under its guest) and goes through the CLI end to end.

use std::time::Duration;

use serde_json::{json, Value};
use trove_tests::{http, instance_create, ok, prop, rows, wait_active, CliOutput, TestEnv};

/// 32-character noauth project ids.
const TENANT: &str = "tenant0e46e5f7840e39012aff46a913";
/// An instance id nobody has.
const MISSING: &str = "0a0a0a0a-0b0b-4c0c-8d0d-0e0e0e0e0e0e";
/// How long a guest may take to build (a mysql guest initialises a MariaDB data directory).
const BUILD: Duration = Duration::from_secs(120);

/// The `(status, message)` of a fault body.
fn fault(status: u16, body: &Value) -> (u16, String) {
    let inner = body
        .as_object()
        .and_then(|o| o.values().next())
        .unwrap_or_else(|| panic!("not a fault body: {body}"));
    assert_eq!(inner["code"], json!(status), "{body}");
    (
        status,
        inner["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Calls `method` on `path` (as [`TENANT`]) and returns the fault.
async fn call_fault(
    env: &TestEnv,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let (s, b) = http(env, TENANT, method, path, body).await;
    fault(s, &b)
}

/// `POST`s `body` to `path` and returns the fault.
async fn post_fault(env: &TestEnv, path: &str, body: Value) -> (u16, String) {
    call_fault(env, reqwest::Method::POST, path, Some(body)).await
}

/// Waits until the instance is ACTIVE again after a restart, its task back to NONE.
async fn wait_restarted(env: &TestEnv, id: &str) {
    trove_tests::eventually(
        BUILD,
        &format!("instance {id} ACTIVE after restart"),
        || async {
            let task: Vec<String> = env.query_strings(&format!(
                "SELECT task_id::text AS v FROM instances WHERE id = '{id}'"
            ));
            let out = env.trove(TENANT, &["show", id]).await;
            (task == ["1"] && out.status == 0 && prop(&out.stdout, "status") == "ACTIVE")
                .then_some(())
        },
    )
    .await
    .unwrap();
}

fn failed(out: &CliOutput) -> &str {
    assert_ne!(out.status, 0, "trove succeeded: {}", out.stdout);
    &out.stderr
}

/// Unknown instances are 404s, bodies are validated with Trove's texts, and instances that are still
/// building (or whose datastore has no such API) are 422s, all without a guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_before_the_guest() {
    let mut env = TestEnv::start().await.unwrap();
    // No taskmanager: the instances stay BUILD and no guest ever runs.
    env.stop_taskmanager().await;

    // Unknown instance: 404 on every route.
    let missing = format!("Resource {MISSING} cannot be found.");
    for (method, path, body) in [
        (reqwest::Method::GET, "databases", None),
        (
            reqwest::Method::POST,
            "databases",
            Some(json!({"databases": [{"name": "db1"}]})),
        ),
        (reqwest::Method::DELETE, "databases/db1", None),
        (reqwest::Method::GET, "users", None),
        (reqwest::Method::DELETE, "users/bob", None),
        (reqwest::Method::GET, "root", None),
        (reqwest::Method::POST, "root", None),
        (
            reqwest::Method::POST,
            "action",
            Some(json!({"restart": {}})),
        ),
    ] {
        let path_of = format!("/instances/{MISSING}/{path}");
        assert_eq!(
            call_fault(&env, method.clone(), &path_of, body).await,
            (404, missing.clone()),
            "{method} {path}"
        );
    }

    let mysql = instance_create(&env, TENANT, "dbs-mysql", &["--datastore", "mysql"]).await;
    let redis = instance_create(&env, TENANT, "dbs-redis", &["--datastore", "redis"]).await;
    let dbs = format!("/instances/{mysql}/databases");
    let users = format!("/instances/{mysql}/users");

    // Body schema (before the instance is even looked at) and the mysql name rules.
    let cases: Vec<(&str, Value, (u16, &str))> = vec![
        (
            &dbs,
            json!({}),
            (400, "Validation error: 'databases' is a required property"),
        ),
        (
            &dbs,
            json!({"databases": [{"name": ""}]}),
            (
                400,
                "Validation error: databases[0]['name'] '' is too short; databases[0]['name'] '' \
                 does not match '^.*[0-9a-zA-Z]+.*$'",
            ),
        ),
        (
            &dbs,
            json!({"databases": [{"name": "a;b"}]}),
            (400, "'a;b' is not a valid schema name."),
        ),
        (
            &dbs,
            json!({"databases": [{"name": "mysql"}]}),
            (
                400,
                "Database name \"mysql\" is on the reserved list: ['mysql', 'information_schema', \
                 'performance_schema', 'sys'].",
            ),
        ),
        (
            &dbs,
            json!({"databases": [{"name": "db1", "character_set": "klingon"}]}),
            (400, "'klingon' not a valid character set."),
        ),
        (
            &dbs,
            json!({"databases": [{"name": "db1"}, {"name": "db1"}]}),
            (
                400,
                "Two or more databases share the same name in the initial databases list. Please \
                 correct the names or remove the duplicate entries.",
            ),
        ),
        (
            &users,
            json!({"users": [{"name": "bob"}]}),
            (
                400,
                "Validation error: users[0] 'password' is a required property",
            ),
        ),
        (
            &users,
            json!({"users": [{"name": "root", "password": "pw1"}]}),
            (
                400,
                "User create error: User name \"root\" is on the reserved list: ['os_admin', 'root'].",
            ),
        ),
        (
            &users,
            json!({"users": [{"name": "bob", "password": "pw1", "host": "localhost"}]}),
            (400, "User create error: 'localhost' is not a valid hostname."),
        ),
        (
            &users,
            json!({"users": [{"name": "b'ob", "password": "pw1"}]}),
            (400, "User create error: 'b'ob' is not a valid user name."),
        ),
        (
            &users,
            json!({"users": [{"name": "bob", "password": "pw1"}, {"name": "bob", "password": "pw2"}]}),
            (
                400,
                "Two or more users share the same name and host in the initial users list. Please \
                 correct the names or remove the duplicate entries.",
            ),
        ),
    ];
    for (path, body, (status, message)) in cases {
        assert_eq!(
            post_fault(&env, path, body.clone()).await,
            (status, message.to_owned()),
            "{body}"
        );
    }
    let reserved = format!("{dbs}/mysql");
    assert_eq!(
        call_fault(&env, reqwest::Method::DELETE, &reserved, None)
            .await
            .1,
        "Database delete error: Cannot delete database: Database name \"mysql\" is on the reserved \
         list: ['mysql', 'information_schema', 'performance_schema', 'sys']."
    );

    // Valid input on an instance that is still building: Trove's load_and_verify.
    let (s, m) = post_fault(&env, &dbs, json!({"databases": [{"name": "db1"}]})).await;
    assert_eq!(s, 422);
    assert!(
        m.starts_with(&format!("Instance {mysql} is not ready, status: ")),
        "{m}"
    );
    // Redis has no databases or users.
    let redis_users = format!("/instances/{redis}/users");
    assert_eq!(
        call_fault(&env, reqwest::Method::GET, &redis_users, None).await,
        (422, "Operation not supported for datastore redis.".into())
    );

    // Restart: a body without an action, then an instance that is not available.
    let action = format!("/instances/{mysql}/action");
    assert_eq!(
        post_fault(&env, &action, json!({})).await,
        (400, "Invalid request body.".into())
    );
    assert_eq!(
        post_fault(&env, &action, json!({"restart": {}})).await,
        (
            422,
            format!(
                "Instance {mysql} is not currently available for an action to be performed \
                 (instance status was BUILD)."
            )
        )
    );

    // The CLI shows the API's message.
    let out = env.trove(TENANT, &["database-list", &redis]).await;
    assert!(
        failed(&out).contains("Operation not supported for datastore redis. (HTTP 422)"),
        "{}",
        out.stderr
    );
    let out = env.trove(TENANT, &["user-list", MISSING]).await;
    assert!(
        failed(&out).contains(&format!(
            "No instance or cluster with a name or ID of '{MISSING}' exists."
        )),
        "{}",
        out.stderr
    );
}

/// A mysql instance end to end through the CLI: create a database and a user, list them (Trove's
/// tables), refuse a duplicate user, enable root, delete the user, then restart (REBOOT, then ACTIVE).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_databases_users_and_root_through_the_cli() {
    let env = TestEnv::start().await.unwrap();
    let id = instance_create(&env, TENANT, "dbs-e2e", &["--datastore", "mysql"]).await;
    wait_active(&env, TENANT, &id, BUILD).await;

    ok(&env.trove(TENANT, &["database-create", &id, "db1"]).await);
    ok(&env
        .trove(
            TENANT,
            &["database-create", &id, "db2", "--character_set", "latin1"],
        )
        .await);
    let out = env.trove(TENANT, &["database-list", &id]).await;
    assert_eq!(
        ok(&out),
        "+------+\n| Name |\n+------+\n| db1  |\n| db2  |\n+------+\n"
    );
    let out = env.trove(TENANT, &["database-create", &id, "db1"]).await;
    assert!(
        failed(&out).contains("A database with the name \"db1\" already exists. (HTTP 400)"),
        "{}",
        out.stderr
    );

    ok(&env
        .trove(
            TENANT,
            &[
                "user-create",
                &id,
                "bob",
                "pw1secret",
                "--databases",
                "db1",
                "db2",
            ],
        )
        .await);
    let out = env.trove(TENANT, &["user-list", &id]).await;
    assert_eq!(
        ok(&out),
        "+------+------+-----------+\n\
         | Name | Host | Databases |\n\
         +------+------+-----------+\n\
         | bob  | %    | db1, db2  |\n\
         +------+------+-----------+\n"
    );
    let out = env
        .trove(TENANT, &["user-create", &id, "bob", "other1"])
        .await;
    assert!(
        failed(&out).contains("A user with the name \"bob\" already exists. (HTTP 400)"),
        "{}",
        out.stderr
    );

    let out = env.trove(TENANT, &["root-show", &id]).await;
    assert_eq!(rows(ok(&out)), [["is_root_enabled", "False"]]);
    let out = env
        .trove(TENANT, &["root-enable", &id, "--root_password", "r00tpass"])
        .await;
    assert_eq!(rows(ok(&out)), [["name", "root"], ["password", "r00tpass"]]);
    let out = env.trove(TENANT, &["root-show", &id]).await;
    assert_eq!(rows(ok(&out)), [["is_root_enabled", "True"]]);
    // Root never shows among the users.
    let out = env.trove(TENANT, &["user-list", &id]).await;
    assert_eq!(rows(ok(&out)).len(), 1);

    ok(&env.trove(TENANT, &["user-delete", &id, "bob"]).await);
    let out = env.trove(TENANT, &["user-list", &id]).await;
    assert!(rows(ok(&out)).is_empty(), "{}", out.stdout);
    let out = env.trove(TENANT, &["user-delete", &id, "bob"]).await;
    assert!(
        failed(&out).contains("User bob cannot be found on the instance. (HTTP 404)"),
        "{}",
        out.stderr
    );
    ok(&env.trove(TENANT, &["database-delete", &id, "db2"]).await);
    let out = env.trove(TENANT, &["database-list", &id]).await;
    assert_eq!(rows(ok(&out)), [["db1"]]);

    // Restart: REBOOT right away (the api set the task), then ACTIVE again once the guest is back.
    ok(&env.trove(TENANT, &["restart", &id]).await);
    let out = env.trove(TENANT, &["show", &id]).await;
    let status = prop(ok(&out), "status");
    assert!(status == "REBOOT" || status == "ACTIVE", "{status}");
    wait_restarted(&env, &id).await;
    // The data survived the restart.
    let out = env.trove(TENANT, &["database-list", &id]).await;
    assert_eq!(rows(ok(&out)), [["db1"]]);
}

/// Redis: root-enable sets `requirepass` (Trove's redis view, with `failed_slaves`), root-show sees
/// it, databases and users are refused, and restart brings the instance back ACTIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_root_enable_and_restart() {
    let mut env = TestEnv::start().await.unwrap();
    let id = instance_create(&env, TENANT, "dbs-redis-e2e", &["--datastore", "redis"]).await;
    wait_active(&env, TENANT, &id, BUILD).await;

    let out = env.trove(TENANT, &["root-show", &id]).await;
    assert_eq!(rows(ok(&out)), [["is_root_enabled", "False"]]);
    let (s, b) = http(
        &env,
        TENANT,
        reqwest::Method::POST,
        &format!("/instances/{id}/root"),
        Some(json!({"password": "redispw1"})),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"user": {"name": "-", "password": "redispw1"}, "failed_slaves": []})
        )
    );
    let out = env.trove(TENANT, &["root-show", &id]).await;
    assert_eq!(rows(ok(&out)), [["is_root_enabled", "True"]]);
    let out = env.trove(TENANT, &["database-create", &id, "db1"]).await;
    assert!(
        failed(&out).contains("Operation not supported for datastore redis. (HTTP 422)"),
        "{}",
        out.stderr
    );

    // With the taskmanager away the restart stays queued: the instance shows REBOOT and refuses
    // another action; once the taskmanager is back it restarts the guest and clears the task.
    env.stop_taskmanager().await;
    ok(&env.trove(TENANT, &["restart", &id]).await);
    let out = env.trove(TENANT, &["show", &id]).await;
    assert_eq!(prop(ok(&out), "status"), "REBOOT");
    assert_eq!(
        post_fault(
            &env,
            &format!("/instances/{id}/action"),
            json!({"restart": {}})
        )
        .await,
        (
            422,
            format!(
                "Instance {id} is not currently available for an action to be performed (task \
                 status was REBOOTING)."
            )
        )
    );
    env.start_taskmanager().await.unwrap();
    wait_restarted(&env, &id).await;
    // Still protected after the restart.
    let out = env.trove(TENANT, &["root-show", &id]).await;
    assert_eq!(rows(ok(&out)), [["is_root_enabled", "True"]]);
}
