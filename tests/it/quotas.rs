//! Per-tenant quotas as Trove has them (issue 16): instance and cluster create reserve `instances`,
//! `ram` and `volumes` atomically with the rows they insert, over a limit is Trove's 413 and nothing
//! is written, concurrent creates never exceed a limit, a failed build and a delete give the usage
//! back exactly once, and the mgmt quota API, `/limits` and their CLI tables are Trove's.
//!
//! Most tests stop the taskmanager, so their instances stay rows (BUILD, no guest): quotas are the
//! api's and the database's business. The build-failure and delete tests run real guests.

use std::time::Duration;

use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};
use trove_common::config::{DefaultSection, Settings};
use trove_common::db::models::Instance;
use trove_tests::{http, ok, prop, TestEnv};

/// An admin (noauth: a token starting with `admin`).
const ADMIN: &str = "admin-quota";

/// Long enough for a build or a delete through the real taskmanager.
const BUILD: Duration = Duration::from_secs(90);

/// A control plane with Trove's default quotas (the harness runs without any).
async fn start() -> TestEnv {
    TestEnv::start_with(trove_defaults).await.unwrap()
}

/// Trove's `max_<resource>_per_tenant` defaults (10 instances, 40 GB, 50 backups, unlimited RAM).
fn trove_defaults(s: &mut Settings) {
    let d = DefaultSection::default();
    s.default.max_instances_per_tenant = d.max_instances_per_tenant;
    s.default.max_volumes_per_tenant = d.max_volumes_per_tenant;
    s.default.max_backups_per_tenant = d.max_backups_per_tenant;
    s.default.max_ram_per_tenant = d.max_ram_per_tenant;
}

/// `POST /instances` as `tenant`: a redis instance of flavor 15 (1024 MB) with a `size` GB volume.
async fn create(env: &TestEnv, tenant: &str, name: &str, size: i32) -> (u16, Value) {
    let body = json!({"instance": {"name": name, "flavorRef": "15", "volume": {"size": size}}});
    http(env, tenant, Method::POST, "/instances", Some(body)).await
}

/// [`create`], which must succeed; returns the instance id.
async fn create_ok(env: &TestEnv, tenant: &str, name: &str, size: i32) -> String {
    let (status, body) = create(env, tenant, name, size).await;
    assert_eq!(status, 200, "create {name}: {body}");
    body["instance"]["id"].as_str().expect("id").to_owned()
}

/// The admin's `PUT /mgmt/quotas/{tenant}`, which must succeed.
async fn set_quotas(env: &TestEnv, tenant: &str, quotas: Value) {
    let (status, body) = http(
        env,
        ADMIN,
        Method::PUT,
        &format!("/mgmt/quotas/{tenant}"),
        Some(json!({ "quotas": quotas.clone() })),
    )
    .await;
    assert_eq!((status, body), (200, json!({ "quotas": quotas })));
}

/// Trove's 413 body for `overs`.
fn over_limit(overs: &str) -> Value {
    json!({"overLimit": {"code": 413,
                         "message": format!("Quota exceeded for resources: {overs}.")}})
}

/// One number from SQL (`SELECT count(*) ...`).
fn count(env: &TestEnv, sql: &str) -> i64 {
    let v = env.query_strings(&format!("SELECT ({sql})::text AS v"));
    v[0].parse().expect("a number")
}

/// The tenant's rows of `quota_usages` as `resource=in_use` (reserved must be 0), in key order.
fn usage(env: &TestEnv, tenant: &str) -> Vec<String> {
    let rows = env.query_strings(&format!(
        "SELECT resource || '=' || in_use || '/' || reserved AS v FROM quota_usages \
         WHERE tenant_id = '{tenant}' ORDER BY resource"
    ));
    rows.into_iter()
        .map(|r| {
            let (used, reserved) = r.split_once('/').expect("in_use/reserved");
            assert_eq!(reserved, "0", "{r}");
            used.to_owned()
        })
        .collect()
}

/// `usage` for `instances`, `ram` and `volumes`.
fn used(instances: i64, ram: i64, volumes: i64) -> Vec<String> {
    vec![
        format!("instances={instances}"),
        format!("ram={ram}"),
        format!("volumes={volumes}"),
    ]
}

fn live_instances(env: &TestEnv, tenant: &str) -> i64 {
    count(
        env,
        &format!("SELECT count(*) FROM instances WHERE tenant_id = '{tenant}' AND NOT deleted"),
    )
}

async fn status_of(env: &TestEnv, tenant: &str, id: &str) -> (u16, String) {
    let (code, body) = http(env, tenant, Method::GET, &format!("/instances/{id}"), None).await;
    let status = body["instance"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (code, status)
}

async fn wait_status(env: &TestEnv, tenant: &str, id: &str, want: &str) {
    trove_tests::eventually(BUILD, &format!("instance {id} {want}"), || async {
        (status_of(env, tenant, id).await == (200, want.to_owned())).then_some(())
    })
    .await
    .unwrap();
}

async fn wait_gone(env: &TestEnv, tenant: &str, id: &str) {
    trove_tests::eventually(BUILD, &format!("instance {id} deleted"), || async {
        (status_of(env, tenant, id).await.0 == 404).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_quota_is_troves_413_and_nothing_is_written() {
    const T: &str = "t-quota-over";
    let mut env = start().await;
    env.stop_taskmanager().await;
    set_quotas(&env, T, json!({"instances": 2, "volumes": 3})).await;

    let one = create_ok(&env, T, "a", 1).await;
    let two = create_ok(&env, T, "b", 1).await;
    assert_eq!(usage(&env, T), used(2, 2048, 2));
    let rows = |env: &TestEnv| {
        (
            live_instances(env, T),
            count(env, "SELECT count(*) FROM service_statuses"),
            count(env, "SELECT count(*) FROM clusters"),
        )
    };
    let before = rows(&env);
    assert_eq!(before, (2, 2, 0));

    // At the instance quota: Trove's body, and nothing written.
    assert_eq!(
        create(&env, T, "c", 1).await,
        (413, over_limit("['instances']"))
    );
    assert_eq!(rows(&env), before);
    // Over two quotas at once: Trove's sorted Python list.
    assert_eq!(
        create(&env, T, "d", 2).await,
        (413, over_limit("['instances', 'volumes']"))
    );
    assert_eq!(rows(&env), before);
    assert_eq!(usage(&env, T), used(2, 2048, 2));
    // The CLI shows Trove's message.
    let out = env.trove(T, &["create", "e", "15", "--size", "1"]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "ERROR: Quota exceeded for resources: ['instances']. (HTTP 413)\n"
    );

    // A cluster reserves for all its members at once: three members over a quota of five (two
    // used) is refused whole, with no cluster row.
    set_quotas(&env, T, json!({"instances": 5, "volumes": 10})).await;
    let cluster = |n: usize| {
        let members: Vec<Value> = (0..n)
            .map(|_| json!({"flavorRef": "15", "volume": {"size": 2}}))
            .collect();
        json!({"cluster": {"name": "c", "datastore": {"type": "redis", "version": "3.2.6"},
                           "instances": members}})
    };
    let (s, b) = http(&env, T, Method::POST, "/clusters", Some(cluster(4))).await;
    assert_eq!((s, b), (413, over_limit("['instances']")));
    assert_eq!(rows(&env), before);
    let (s, b) = http(&env, T, Method::POST, "/clusters", Some(cluster(3))).await;
    assert_eq!(s, 200, "{b}");
    let cid = b["cluster"]["id"].as_str().expect("cluster id").to_owned();
    assert_eq!(usage(&env, T), used(5, 5 * 1024, 8));
    assert_eq!(live_instances(&env, T), 5);

    // Deleting the cluster gives back every member: the admin takes it out of BUILD (it has no
    // guests), the owner deletes it, and the taskmanager deletes the members.
    ok(&env.trove(ADMIN, &["cluster-reset-status", &cid]).await);
    ok(&env.trove(T, &["cluster-delete", &cid]).await);
    assert_eq!(
        usage(&env, T),
        used(5, 5 * 1024, 8),
        "given back on delete, not before"
    );
    // The two single instances are taken out of BUILD too, so the taskmanager does not build them
    // (a reset gives nothing back: they still exist).
    for id in [&one, &two] {
        ok(&env.trove(ADMIN, &["reset-status", id]).await);
    }
    assert_eq!(usage(&env, T), used(5, 5 * 1024, 8));
    env.start_taskmanager().await.unwrap();
    trove_tests::eventually(BUILD, "the cluster's members deleted", || async {
        (live_instances(&env, T) == 2).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(usage(&env, T), used(2, 2048, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_stop_exactly_at_the_quota() {
    const T: &str = "t-quota-race";
    let mut env = start().await;
    env.stop_taskmanager().await;
    set_quotas(&env, T, json!({"instances": 10})).await;

    // Twenty requests in flight at once, each its own task and connection.
    let mut creates = tokio::task::JoinSet::new();
    for n in 0..20 {
        let url = format!("{}/instances", env.base(T));
        creates.spawn(async move {
            let body = json!({"instance": {"name": format!("race-{n}"), "flavorRef": "15",
                                           "volume": {"size": 1}}});
            let resp = reqwest::Client::new()
                .post(url)
                .header("X-Auth-Token", T)
                .json(&body)
                .send()
                .await
                .expect("POST /instances");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    let results = creates.join_all().await;
    let accepted = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&(u16, Value)> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(accepted, 10, "{results:?}");
    assert_eq!(refused.len(), 10);
    for r in refused {
        assert_eq!(r, &(413, over_limit("['instances']")));
    }
    assert_eq!(live_instances(&env, T), 10);
    assert_eq!(usage(&env, T), used(10, 10 * 1024, 10));
    assert_eq!(
        count(
            &env,
            &format!("SELECT count(*) FROM instances WHERE tenant_id = '{T}' AND quota_held")
        ),
        10
    );
}

/// Give-back is the database's (a trigger on `instances`), so it holds whoever writes the row: each
/// of Trove's BUILDING_ERROR tasks gives an instance's share back once, a later delete gives nothing
/// more, other tasks give nothing, and of two concurrent writes only the first gives back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_is_given_back_exactly_once() {
    const T: &str = "t-quota-once";
    let mut env = start().await;
    env.stop_taskmanager().await;
    let codes = [0x50, 0x51, 0x52, 0x53, 0x54, 0x5b, 0x5c];
    let mut failed = Vec::new();
    for n in 0..codes.len() {
        failed.push(create_ok(&env, T, &format!("f{n}"), 2).await);
    }
    let kept = create_ok(&env, T, "kept", 1).await;
    assert_eq!(usage(&env, T), used(8, 8 * 1024, 15));

    let mut c = env.db.conn();
    for (n, (id, code)) in failed.iter().zip(codes).enumerate() {
        diesel::sql_query(format!(
            "UPDATE instances SET task_id = {code} WHERE id = '{id}'"
        ))
        .execute(&mut c)
        .unwrap();
        let left = (codes.len() - n - 1) as i64;
        assert_eq!(
            usage(&env, T),
            used(left + 1, (left + 1) * 1024, 2 * left + 1),
            "task {code:#x}"
        );
    }
    // The failed instances are deleted later (the taskmanager's mark_deleted): nothing more back.
    for id in &failed {
        assert_eq!(Instance::mark_deleted(&mut c, id).unwrap(), 1);
    }
    assert_eq!(usage(&env, T), used(1, 1024, 1));
    // Tasks that are not build errors give nothing back.
    for task in [0x02, 0x01, 0x03] {
        diesel::sql_query(format!(
            "UPDATE instances SET task_id = {task} WHERE id = '{kept}'"
        ))
        .execute(&mut c)
        .unwrap();
    }
    assert_eq!(usage(&env, T), used(1, 1024, 1));

    // Two writers at once: a build failure holds the row; a delete waits for it, then finds the
    // usage given back already.
    let racer = create_ok(&env, T, "racer", 3).await;
    assert_eq!(usage(&env, T), used(2, 2048, 4));
    c.batch_execute(&format!(
        "BEGIN; UPDATE instances SET task_id = 81 WHERE id = '{racer}'"
    ))
    .unwrap();
    let url = env.db.url.clone();
    let id = racer.clone();
    let delete = std::thread::spawn(move || {
        let mut other = PgConnection::establish(&url).unwrap();
        Instance::mark_deleted(&mut other, &id).unwrap()
    });
    trove_tests::eventually(
        Duration::from_secs(10),
        "the delete to wait on the row lock",
        || {
            let waiting = count(
                &env,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'UPDATE \"instances\"%'",
            );
            async move { (waiting == 1).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        usage(&env, T),
        used(2, 2048, 4),
        "nothing is given back before the failure commits"
    );
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(delete.join().unwrap(), 1);
    assert_eq!(usage(&env, T), used(1, 1024, 1));

    // A row removed outright gives back too.
    diesel::sql_query(format!(
        "DELETE FROM service_statuses WHERE instance_id = '{kept}'"
    ))
    .execute(&mut c)
    .unwrap();
    diesel::sql_query(format!("DELETE FROM instances WHERE id = '{kept}'"))
        .execute(&mut c)
        .unwrap();
    assert_eq!(usage(&env, T), used(0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_build_and_a_delete_give_the_quota_back() {
    const T: &str = "t-quota-build";
    let mut env = start().await;
    set_quotas(&env, T, json!({"instances": 1})).await;
    // No build starts until the quota is checked at its limit.
    env.stop_taskmanager().await;

    // A datastore version without a redis-server: the guest's prepare fails, the build ends in ERROR.
    let empty = tempfile::tempdir().unwrap();
    env.register_redis_version("9.9-missing", empty.path());
    let body = json!({"instance": {"name": "broken", "flavorRef": "15", "volume": {"size": 1},
                                   "datastore": {"type": "redis", "version": "9.9-missing"}}});
    let (s, b) = http(&env, T, Method::POST, "/instances", Some(body)).await;
    assert_eq!(s, 200, "{b}");
    let broken = b["instance"]["id"].as_str().unwrap().to_owned();
    assert_eq!(usage(&env, T), used(1, 1024, 1));
    assert_eq!(
        create(&env, T, "early", 1).await,
        (413, over_limit("['instances']"))
    );
    env.start_taskmanager().await.unwrap();
    wait_status(&env, T, &broken, "ERROR").await;
    let task = count(
        &env,
        &format!("SELECT task_id FROM instances WHERE id = '{broken}'"),
    );
    assert!(
        [0x51, 0x5b].contains(&task),
        "a build error task, not {task:#x}"
    );
    assert_eq!(
        usage(&env, T),
        used(0, 0, 0),
        "given back when the build failed"
    );

    // So the tenant can create again; this one is built.
    let good = create_ok(&env, T, "good", 1).await;
    wait_status(&env, T, &good, "ACTIVE").await;
    assert_eq!(usage(&env, T), used(1, 1024, 1));
    assert_eq!(
        create(&env, T, "late", 1).await,
        (413, over_limit("['instances']"))
    );

    // Deleting the failed instance gives nothing back a second time.
    ok(&env.trove(T, &["delete", &broken]).await);
    wait_gone(&env, T, &broken).await;
    assert_eq!(usage(&env, T), used(1, 1024, 1));
    // Deleting the built one gives its share back.
    ok(&env.trove(T, &["delete", &good]).await);
    wait_gone(&env, T, &good).await;
    assert_eq!(usage(&env, T), used(0, 0, 0));
    assert_eq!(live_instances(&env, T), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_that_cannot_start_gives_the_quota_back() {
    const T: &str = "t-quota-noguest";
    // The state directory cannot be created (its parent is a file): BUILDING_ERROR_SERVER.
    let file = tempfile::NamedTempFile::new().unwrap();
    let env = TestEnv::start_with(|s| {
        trove_defaults(s);
        s.compute.state_path = file.path().join("guests");
    })
    .await
    .unwrap();
    set_quotas(&env, T, json!({"instances": 1})).await;
    let first = create_ok(&env, T, "first", 1).await;
    wait_status(&env, T, &first, "ERROR").await;
    assert_eq!(
        count(
            &env,
            &format!("SELECT task_id FROM instances WHERE id = '{first}'")
        ),
        0x51
    );
    assert_eq!(usage(&env, T), used(0, 0, 0));
    let second = create_ok(&env, T, "second", 1).await;
    wait_status(&env, T, &second, "ERROR").await;
    assert_eq!(usage(&env, T), used(0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_admin_updates_quotas_and_bad_limits_are_refused() {
    const T: &str = "t-quota-auth";
    const OTHER: &str = "t-quota-other";
    let mut env = start().await;
    env.stop_taskmanager().await;
    let quotas_rows = |env: &TestEnv| count(env, "SELECT count(*) FROM quotas");

    // A tenant cannot raise its own quota.
    let path = format!("/mgmt/quotas/{T}");
    let (s, b) = http(
        &env,
        T,
        Method::PUT,
        &path,
        Some(json!({"quotas": {"instances": 100}})),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            403,
            json!({"forbidden": {"code": 403, "message": "User does not have admin privileges."}})
        )
    );
    let out = env.trove(T, &["quota-update", T, "instances", "100"]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "ERROR: User does not have admin privileges. (HTTP 403)\n"
    );
    assert_eq!(quotas_rows(&env), 0);

    // It sees its own quotas (Trove since Xena), not another tenant's; an admin sees any.
    let defaults = json!({"quotas": [
        {"resource": "instances", "in_use": 0, "reserved": 0, "limit": 10},
        {"resource": "ram", "in_use": 0, "reserved": 0, "limit": -1},
        {"resource": "backups", "in_use": 0, "reserved": 0, "limit": 50},
        {"resource": "volumes", "in_use": 0, "reserved": 0, "limit": 40}]});
    assert_eq!(
        http(&env, T, Method::GET, &path, None).await,
        (200, defaults.clone())
    );
    assert_eq!(
        http(&env, T, Method::GET, &format!("/mgmt/quotas/{OTHER}"), None).await,
        (
            403,
            json!({"forbidden": {"code": 403,
                                 "message": format!("Operation not allowed for tenant {T}.")}})
        )
    );
    assert_eq!(
        http(&env, ADMIN, Method::GET, &path, None).await,
        (200, defaults)
    );

    // Bad limits, with Trove's faults; nothing is written.
    for (quotas, want) in [
        (
            json!({"cores": 5}),
            json!({"itemNotFound": {"code": 404, "message": "Unknown quota resources cores."}}),
        ),
        (
            json!({"instances": -2}),
            json!({"badRequest": {"code": 400, "message":
                "Quota limit '-2' for 'instances' is too small - must be at least '-1'."}}),
        ),
        (
            json!({"instances": "ten"}),
            json!({"badRequest": {"code": 400, "message":
                "Quota limit 'ten' for 'instances' is not an integer."}}),
        ),
        (
            json!({"volumes": 2.5}),
            json!({"badRequest": {"code": 400, "message":
                "Quota limit '2.5' for 'volumes' is not an integer."}}),
        ),
    ] {
        let (s, b) = http(
            &env,
            ADMIN,
            Method::PUT,
            &path,
            Some(json!({ "quotas": quotas.clone() })),
        )
        .await;
        let code = want.as_object().unwrap().values().next().unwrap()["code"].clone();
        assert_eq!((json!(s), b), (code, want), "{quotas}");
    }
    for body in [json!({}), json!({"quota": {"instances": 1}}), json!([1])] {
        let (s, b) = http(&env, ADMIN, Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(
            (s, b),
            (
                400,
                json!({"badRequest": {"code": 400, "message": "Invalid request body."}})
            ),
            "{body}"
        );
    }
    assert_eq!(quotas_rows(&env), 0);

    // -1 is unlimited: more than the default of 10 instances.
    let out = env
        .trove(ADMIN, &["quota-update", T, "instances", "-1"])
        .await;
    assert!(ok(&out).contains("| instances | -1    |"), "{out:?}");
    for n in 0..11 {
        create_ok(&env, T, &format!("many-{n}"), 1).await;
    }
    assert_eq!(usage(&env, T), used(11, 11 * 1024, 11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_show_update_and_limit_list_print_troveclients_tables() {
    const T: &str = "t-quota-cli";
    let mut env = start().await;
    env.stop_taskmanager().await;

    let out = env
        .trove(ADMIN, &["quota-update", T, "instances", "3"])
        .await;
    assert_eq!(
        ok(&out),
        "\
+-----------+-------+
| Property  | Value |
+-----------+-------+
| instances | 3     |
+-----------+-------+
"
    );
    let id = prop(
        ok(&env.trove(T, &["create", "one", "15", "--size", "2"]).await),
        "id",
    );
    assert!(!id.is_empty());

    let table = "\
+-----------+--------+----------+-------+
| Resource  | In Use | Reserved | Limit |
+-----------+--------+----------+-------+
| backups   |      0 |        0 |    50 |
| instances |      1 |        0 |     3 |
| ram       |   1024 |        0 |    -1 |
| volumes   |      2 |        0 |    40 |
+-----------+--------+----------+-------+
";
    assert_eq!(ok(&env.trove(T, &["quota-show", T]).await), table);
    assert_eq!(ok(&env.trove(ADMIN, &["quota-show", T]).await), table);

    assert_eq!(
        ok(&env.trove(T, &["limit-list"]).await),
        "\
+---------------+----------+
| Property      | Value    |
+---------------+----------+
| max_backups   | 50       |
| max_instances | 3        |
| max_ram       | -1       |
| max_volumes   | 40       |
| verb          | ABSOLUTE |
+---------------+----------+
+-------+------+-----------+------+
| Value | Verb | Remaining | Unit |
+-------+------+-----------+------+
+-------+------+-----------+------+
"
    );
    // The admin's own limits are the defaults.
    let (s, b) = http(&env, ADMIN, Method::GET, "/limits", None).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"limits": [{"verb": "ABSOLUTE", "max_instances": 10, "max_ram": -1,
                               "max_backups": 50, "max_volumes": 40}]})
        )
    );
}
