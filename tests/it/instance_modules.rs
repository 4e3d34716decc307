//! Modules on instances and clusters (issue 4, "Must show"; docs/module-semantics.md §8–§15): datastore checks at
//! create, cluster-create and apply; auto-apply; the guest's apply order; module-remove; module-retrieve;
//! the ping driver's failure text; hidden modules and masked contents; module-instances paging; and the
//! retirement of `instance_modules` rows by cluster and instance delete.
//!
//! Everything goes through our `trove` CLI where a command exists, against the real api, taskmanager,
//! conductor and guest processes; error bodies and paging links are read over HTTP. Each test keeps its
//! number of instances small (guests take 1–2 s each to build).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{json, Value};
use trove_tests::{http, instance_create, prop, wait_active, CliOutput, TestEnv};
use trove_tests::{ok, rows};

/// 32-character project ids (the walkthrough's width). A token starting with `admin` is admin.
const ADMIN: &str = "admin00e46e5f7840e39012aff46a920";
const TENANT: &str = "tenant0e46e5f7840e39012aff46a921";

/// How long a guest may take to build (they take 1–2 s; the machine is shared).
const BUILD: Duration = Duration::from_secs(90);

/// Prints how long each test took (visible with `--nocapture`).
struct Timer(&'static str, Instant);

impl Timer {
    fn start(name: &'static str) -> Self {
        Self(name, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!(
            "timing: {} took {:.1} s",
            self.0,
            self.1.elapsed().as_secs_f64()
        );
    }
}

/// The stderr of a command that must fail with exit status 1.
fn failed(out: &CliOutput) -> &str {
    assert_eq!(
        out.status, 1,
        "trove should have failed: stdout={} stderr={}",
        out.stdout, out.stderr
    );
    &out.stderr
}

/// Masks the guest's dates (`2017-06-02 17:23:40.50`), which have a fixed width.
fn mask_dates(s: &str) -> String {
    Regex::new(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d")
        .unwrap()
        .replace_all(s, "YYYY-MM-DD HH:MM:SS.ff")
        .into_owned()
}

/// A table from the test source, dedented.
fn table(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("\n") + "\n"
}

/// A directory of payload files the CLI runs in.
struct Files(tempfile::TempDir);

impl Files {
    fn new(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Runs the CLI as `token` in the payload directory.
async fn cli(env: &TestEnv, files: &Files, token: &str, args: &[&str]) -> CliOutput {
    env.trove_in(token, args, Some(files.path())).await
}

/// `trove module-create <args>`; returns the module id.
async fn module_create(env: &TestEnv, files: &Files, token: &str, args: &[&str]) -> String {
    let mut argv = vec!["module-create"];
    argv.extend_from_slice(args);
    let out = cli(env, files, token, &argv).await;
    prop(ok(&out), "id")
}

/// Waits until module-query (as `token`) lists exactly `names`; returns the table.
async fn wait_query(env: &TestEnv, token: &str, id: &str, names: &[&str]) -> String {
    trove_tests::eventually(
        Duration::from_secs(30),
        &format!("module-query of {id} listing {names:?}"),
        || async {
            let out = env.trove(token, &["module-query", id]).await;
            let got: Vec<String> = rows(&out.stdout)
                .into_iter()
                .map(|r| r[0].clone())
                .collect();
            (out.status == 0 && got == names).then_some(out.stdout)
        },
    )
    .await
    .unwrap()
}

/// A single SQL value as text.
fn one(env: &TestEnv, sql: &str) -> String {
    let mut v = env.query_strings(sql);
    assert_eq!(v.len(), 1, "{sql}: {v:?}");
    v.remove(0)
}

/// Live `instance_modules` rows of an instance (all modules, or one).
fn live_rows(env: &TestEnv, instance: &str, module: Option<&str>) -> i64 {
    let module = module
        .map(|m| format!(" AND module_id = '{m}'"))
        .unwrap_or_default();
    one(
        env,
        &format!(
            "SELECT count(*)::text AS v FROM instance_modules
             WHERE instance_id = '{instance}' AND NOT deleted{module}"
        ),
    )
    .parse()
    .unwrap()
}

fn count(env: &TestEnv, table: &str) -> i64 {
    one(env, &format!("SELECT count(*)::text AS v FROM {table}"))
        .parse()
        .unwrap()
}

fn id_of(env: &TestEnv, sql_table: &str, name: &str) -> String {
    one(
        env,
        &format!("SELECT id AS v FROM {sql_table} WHERE name = '{name}'"),
    )
}

/// Datastore or version mismatch: refused with Trove's text (two spaces before the parenthesis) at
/// instance create, at cluster-create (no cluster row left behind) and at module-apply, before anything is
/// written or sent to a guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datastore_mismatch_is_refused_at_create_cluster_create_and_apply() {
    let _t = Timer::start("datastore_mismatch");
    let env = TestEnv::start().await.unwrap();
    // A second redis version, so a version-bound module can mismatch the default 3.2.6.
    trove_migrations::manage::datastore_version_update(
        &mut env.db.conn(),
        "redis",
        "4.0",
        "redis",
        None,
        true,
    )
    .unwrap();
    let files = Files::new(&[("ping.dat", b"message=Hello\n")]);
    let mysql = id_of(&env, "datastores", "mysql");
    let redis = id_of(&env, "datastores", "redis");
    let v326 = one(
        &env,
        &format!("SELECT id AS v FROM datastore_versions WHERE datastore_id = '{redis}' AND name = '3.2.6'"),
    );
    let v40 = one(
        &env,
        &format!("SELECT id AS v FROM datastore_versions WHERE datastore_id = '{redis}' AND name = '4.0'"),
    );

    let m = module_create(
        &env,
        &files,
        ADMIN,
        &["m", "ping", "ping.dat", "--datastore", "mysql"],
    )
    .await;
    let wrong_ds = format!(
        "ERROR: The module is invalid: Module 'm' cannot be applied  (Wrong datastore '{mysql}' - expected '{redis}') (HTTP 400)\n"
    );

    // Instance create (default datastore redis).
    let out = env
        .trove(
            ADMIN,
            &["create", "x", "15", "--size", "1", "--module", "m"],
        )
        .await;
    assert_eq!(failed(&out), wrong_ds);
    assert_eq!(out.stdout, "", "nothing printed on stdout");
    assert_eq!(count(&env, "instances"), 0);
    assert_eq!(count(&env, "instance_modules"), 0);

    // Cluster create: only the second member asks for the module, and still no cluster row is left.
    let out = env
        .trove(
            ADMIN,
            &[
                "cluster-create",
                "c",
                "redis",
                "3.2.6",
                "--instance",
                "flavor=15,volume=1",
                "--instance",
                "flavor=15,volume=1,module=m",
            ],
        )
        .await;
    assert_eq!(failed(&out), wrong_ds);
    assert_eq!(count(&env, "clusters"), 0);
    assert_eq!(count(&env, "instances"), 0);
    assert_eq!(count(&env, "instance_modules"), 0);

    // A datastore-version mismatch at create.
    let v4 = module_create(
        &env,
        &files,
        ADMIN,
        &[
            "v4",
            "ping",
            "ping.dat",
            "--datastore",
            "redis",
            "--datastore_version",
            "4.0",
        ],
    )
    .await;
    let wrong_ver = format!(
        "ERROR: The module is invalid: Module 'v4' cannot be applied  (Wrong datastore version '{v40}' - expected '{v326}') (HTTP 400)\n"
    );
    let out = env
        .trove(
            ADMIN,
            &["create", "y", "15", "--size", "1", "--module", "v4"],
        )
        .await;
    assert_eq!(failed(&out), wrong_ver);
    assert_eq!(count(&env, "instances"), 0);

    // At module-apply on an existing redis 3.2.6 instance.
    let ok_mod = module_create(
        &env,
        &files,
        ADMIN,
        &[
            "fits",
            "ping",
            "ping.dat",
            "--datastore",
            "redis",
            "--datastore_version",
            "3.2.6",
        ],
    )
    .await;
    let inst = instance_create(&env, ADMIN, "r1", &[]).await;
    wait_active(&env, ADMIN, &inst, BUILD).await;
    let out = env.trove(ADMIN, &["module-apply", &inst, "m"]).await;
    assert_eq!(failed(&out), wrong_ds);
    let out = env.trove(ADMIN, &["module-apply", &inst, "v4"]).await;
    assert_eq!(failed(&out), wrong_ver);
    // One bad module in a list refuses the whole list.
    let out = env
        .trove(ADMIN, &["module-apply", &inst, "fits", "m"])
        .await;
    assert_eq!(failed(&out), wrong_ds);
    assert_eq!(live_rows(&env, &inst, None), 0);

    // The error body, as python-troveclient parses it.
    let (status, body) = http(
        &env,
        ADMIN,
        reqwest::Method::POST,
        &format!("/instances/{inst}/modules"),
        Some(json!({"modules": [{"id": m}]})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"badRequest": {"code": 400, "message": format!(
            "The module is invalid: Module 'm' cannot be applied  (Wrong datastore '{mysql}' - expected '{redis}')"
        )}})
    );
    let (status, body) = http(
        &env,
        ADMIN,
        reqwest::Method::POST,
        &format!("/instances/{inst}/modules"),
        Some(json!({"modules": [{"id": v4}]})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["badRequest"]["message"],
        format!("The module is invalid: Module 'v4' cannot be applied  (Wrong datastore version '{v40}' - expected '{v326}')")
    );

    // The guest never saw the refused modules; the matching one applies (the check is not a blanket no).
    let out = env.trove(ADMIN, &["module-apply", &inst, "fits"]).await;
    assert_eq!(
        ok(&out),
        table(
            "
            +------+------+-----------+---------+--------+---------+
            | Name | Type | Datastore | Version | Status | Message |
            +------+------+-----------+---------+--------+---------+
            | fits | ping | redis     | 3.2.6   | OK     | Hello   |
            +------+------+-----------+---------+--------+---------+"
        )
    );
    wait_query(&env, ADMIN, &inst, &["fits"]).await;
    assert_eq!(live_rows(&env, &inst, None), 1);
    assert_eq!(live_rows(&env, &inst, Some(&ok_mod)), 1);
}

/// Auto-apply (§13): a new redis instance gets the auto-apply modules for all datastores and for redis,
/// owned by its tenant or by all tenants, without asking; not the mysql-bound one, not another tenant's,
/// and not an ordinary module. A module both requested and auto-applied is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_apply_modules_join_new_instances() {
    let _t = Timer::start("auto_apply");
    let env = TestEnv::start().await.unwrap();
    let files = Files::new(&[
        ("all.dat", b"message=For everyone\n"),
        ("redis.dat", b"message=For redis\n"),
        ("mysql.dat", b"message=For mysql\n"),
        ("own.dat", b"message=Admin's own\n"),
    ]);
    let auto_all = module_create(
        &env,
        &files,
        ADMIN,
        &[
            "auto_all",
            "ping",
            "all.dat",
            "--auto_apply",
            "--all_tenants",
        ],
    )
    .await;
    let auto_redis = module_create(
        &env,
        &files,
        ADMIN,
        &[
            "auto_redis",
            "ping",
            "redis.dat",
            "--auto_apply",
            "--all_tenants",
            "--datastore",
            "redis",
        ],
    )
    .await;
    let auto_mysql = module_create(
        &env,
        &files,
        ADMIN,
        &[
            "auto_mysql",
            "ping",
            "mysql.dat",
            "--auto_apply",
            "--all_tenants",
            "--datastore",
            "mysql",
        ],
    )
    .await;
    // The admin's own project's auto-apply module: not for another tenant's instances.
    let auto_admin = module_create(
        &env,
        &files,
        ADMIN,
        &["auto_admin", "ping", "own.dat", "--auto_apply"],
    )
    .await;
    let plain = module_create(
        &env,
        &files,
        ADMIN,
        &["plain", "ping", "all.dat", "--all_tenants"],
    )
    .await;

    // A tenant's instance; auto_all is also requested by name.
    let inst = instance_create(&env, TENANT, "t1", &["--module", "auto_all"]).await;
    // Recorded in the create's own transaction, before the guest does anything.
    for (m, n) in [
        (&auto_all, 1),
        (&auto_redis, 1),
        (&auto_mysql, 0),
        (&auto_admin, 0),
        (&plain, 0),
    ] {
        assert_eq!(live_rows(&env, &inst, Some(m)), n, "module {m}");
    }
    assert_eq!(live_rows(&env, &inst, None), 2);

    wait_active(&env, TENANT, &inst, BUILD).await;
    let query = wait_query(&env, TENANT, &inst, &["auto_all", "auto_redis"]).await;
    assert_eq!(
        mask_dates(&query),
        table(
            "
            +------------+------+-----------+---------+--------+--------------+------------------------+------------------------+
            | Name       | Type | Datastore | Version | Status | Message      | Created                | Updated                |
            +------------+------+-----------+---------+--------+--------------+------------------------+------------------------+
            | auto_all   | ping | all       | all     | OK     | For everyone | YYYY-MM-DD HH:MM:SS.ff | YYYY-MM-DD HH:MM:SS.ff |
            | auto_redis | ping | redis     | all     | OK     | For redis    | YYYY-MM-DD HH:MM:SS.ff | YYYY-MM-DD HH:MM:SS.ff |
            +------------+------+-----------+---------+--------+--------------+------------------------+------------------------+"
        )
    );
    // The admin sees the same: nothing else reached the guest.
    wait_query(&env, ADMIN, &inst, &["auto_all", "auto_redis"]).await;
    // The conductor kept what the guest reported for the modules of prepare.
    // (The guest reports after writing its files, so module-query can be ahead of it.)
    let mut expected = vec![format!("{auto_all} OK"), format!("{auto_redis} OK")];
    expected.sort();
    let sql = format!(
        "SELECT module_id || ' ' || status AS v FROM guest_module_results
         WHERE instance_id = '{inst}' ORDER BY module_id"
    );
    let reported =
        trove_tests::eventually(Duration::from_secs(30), "module results stored", || async {
            let got = env.query_strings(&sql);
            (got.len() >= expected.len()).then_some(got)
        })
        .await
        .unwrap();
    assert_eq!(reported, expected);
    // module-instance-count agrees.
    let out = env
        .trove(ADMIN, &["module-instance-count", "auto_mysql"])
        .await;
    assert!(rows(ok(&out)).is_empty(), "{}", out.stdout);
    let out = env
        .trove(ADMIN, &["module-instance-count", "auto_redis"])
        .await;
    let r = rows(ok(&out));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0][4].as_str(), r[0][5].as_str()), ("True", "1"));
}

/// Apply order (§14): priority modules first, each group by ascending `apply_order`, ties in request
/// order.
///
/// What is observed, and why it can fail: module-query shows the guest's `updated` with two decimals,
/// and a ping apply takes well under 10 ms, so the dates of one batch usually tie and module-query
/// alone cannot show the order. Instead:
/// - the guest's `module_apply` reply lists the results in the order it applied them (the api passes it
///   through unchanged); it must be the expected order, for two request orders (which fixes the tie
///   rule). This fails if the api drops `priority_apply` or `apply_order` from the payload, or if the
///   guest sorts wrongly;
/// - each `result.json` on the guest's disk is written in that order: their modification times (ns)
///   must not decrease along the expected order, and neither may their `updated` stamps;
/// - module-query (the api's list, newest first) must agree with those stamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_apply_in_priority_then_apply_order() {
    let _t = Timer::start("apply_order");
    let env = TestEnv::start().await.unwrap();
    let files = Files::new(&[("p.dat", b"message=x\n")]);
    // name, priority, apply_order
    let spec: [(&str, bool, u8); 7] = [
        ("o_a", false, 5),
        ("o_b", true, 9),
        ("o_c", false, 1),
        ("o_d", true, 2),
        ("o_e", false, 5),
        ("o_f", true, 9),
        ("o_g", false, 0),
    ];
    let mut ids = std::collections::HashMap::new();
    for (name, priority, order) in spec {
        let order = order.to_string();
        let mut args = vec![name, "ping", "p.dat", "--apply_order", &order];
        if priority {
            args.push("--priority_apply");
        }
        ids.insert(name, module_create(&env, &files, ADMIN, &args).await);
    }
    let inst = instance_create(&env, ADMIN, "ordered", &[]).await;
    wait_active(&env, ADMIN, &inst, BUILD).await;

    let apply = |names: Vec<&'static str>| {
        let env = &env;
        let body =
            json!({"modules": names.iter().map(|n| json!({"id": ids[n]})).collect::<Vec<_>>()});
        let inst = inst.clone();
        async move {
            let (status, body) = http(
                env,
                ADMIN,
                reqwest::Method::POST,
                &format!("/instances/{inst}/modules"),
                Some(body),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["modules"].as_array().unwrap().clone()
        }
    };
    let names = |results: &[Value]| -> Vec<String> {
        results
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let result_file = |inst: &str, name: &str| {
        env.state_dir
            .path()
            .join(inst)
            .join("modules/ping")
            .join(&ids[name])
            .join("result.json")
    };
    let check_disk_order = |inst: &str, order: &[String]| {
        let mut last_mtime = None;
        let mut last_updated = String::new();
        let mut distinct = BTreeSet::new();
        for name in order {
            let file = result_file(inst, name);
            let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
            let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            let updated = stored["updated"].as_str().unwrap().to_owned();
            if let Some(prev) = last_mtime {
                assert!(
                    mtime >= prev,
                    "{name}'s result.json was written before its predecessor's"
                );
            }
            assert!(
                updated >= last_updated,
                "{name} stamped {updated} < {last_updated}"
            );
            distinct.insert(mtime);
            last_mtime = Some(mtime);
            last_updated = updated;
        }
        eprintln!(
            "apply_order: {} distinct result.json mtimes over {} modules",
            distinct.len(),
            order.len()
        );
    };

    let first = apply(vec!["o_a", "o_b", "o_c", "o_d", "o_e", "o_f", "o_g"]).await;
    assert_eq!(
        names(&first),
        ["o_d", "o_b", "o_f", "o_g", "o_c", "o_a", "o_e"]
    );
    assert!(first
        .iter()
        .all(|r| r["status"] == "OK" && r["created"] == r["updated"]));
    check_disk_order(&inst, &names(&first));

    // The same modules requested in reverse: only the ties (o_b/o_f, o_a/o_e) swap.
    let second = apply(vec!["o_g", "o_f", "o_e", "o_d", "o_c", "o_b", "o_a"]).await;
    assert_eq!(
        names(&second),
        ["o_d", "o_f", "o_b", "o_g", "o_c", "o_e", "o_a"]
    );
    check_disk_order(&inst, &names(&second));
    let stamps: Vec<&str> = second
        .iter()
        .map(|r| r["updated"].as_str().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");

    // module-query: newest first, with the dates of the second apply.
    let (status, listed) = http(
        &env,
        ADMIN,
        reqwest::Method::GET,
        &format!("/instances/{inst}/modules?from_guest=True"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let listed = listed["modules"].as_array().unwrap().clone();
    let listed_stamps: Vec<&str> = listed
        .iter()
        .map(|r| r["updated"].as_str().unwrap())
        .collect();
    assert!(
        listed_stamps.windows(2).all(|w| w[0] >= w[1]),
        "{listed_stamps:?}"
    );
    // Exactly the reverse of the apply order, ties within one 10 ms timestamp tick included (issue
    // 16): the module applied later comes first.
    let mut newest_first = names(&second);
    newest_first.reverse();
    assert_eq!(names(&listed), newest_first);
    eprintln!(
        "apply_order: module-query had {} pairs sharing a timestamp",
        listed_stamps.windows(2).filter(|w| w[0] == w[1]).count()
    );
    let by_name = |rs: &[Value]| -> BTreeSet<(String, String)> {
        rs.iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    r["updated"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(by_name(&listed), by_name(&second));
    // And the CLI table shows those dates (sorted by name, as troveclient prints it).
    let out = env.trove(ADMIN, &["module-query", &inst]).await;
    let table_dates: BTreeSet<(String, String)> = rows(ok(&out))
        .into_iter()
        .map(|r| (r[0].clone(), r[7].clone()))
        .collect();
    assert_eq!(table_dates, by_name(&second));

    // The same order on the create path (api → taskmanager → the guest's `prepare`), where only the
    // files on disk show it: the guest reports those results to the conductor, not to a caller.
    let created = instance_create(
        &env,
        ADMIN,
        "ordered2",
        &[
            "--module", "o_a", "--module", "o_b", "--module", "o_c", "--module", "o_d", "--module",
            "o_e", "--module", "o_f", "--module", "o_g",
        ],
    )
    .await;
    wait_active(&env, ADMIN, &created, BUILD).await;
    wait_query(
        &env,
        ADMIN,
        &created,
        &["o_a", "o_b", "o_c", "o_d", "o_e", "o_f", "o_g"],
    )
    .await;
    let expected: Vec<String> = ["o_d", "o_b", "o_f", "o_g", "o_c", "o_a", "o_e"]
        .map(str::to_owned)
        .to_vec();
    check_disk_order(&created, &expected);
}

/// module-remove (§10, §14): the module leaves module-query and its `instance_modules` rows are retired;
/// removing a module the guest never applied is Trove's guest error; applying it again brings it back
/// with its original `created`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn module_remove_then_query_and_reapply() {
    let _t = Timer::start("module_remove");
    let env = TestEnv::start().await.unwrap();
    let files = Files::new(&[
        ("rm.dat", b"message=Removable\n"),
        ("n.dat", b"message=Never\n"),
    ]);
    let rm = module_create(&env, &files, ADMIN, &["rm", "ping", "rm.dat"]).await;
    let never = module_create(&env, &files, ADMIN, &["never", "ping", "n.dat"]).await;
    let inst = instance_create(&env, ADMIN, "rmi", &["--module", "rm"]).await;
    wait_active(&env, ADMIN, &inst, BUILD).await;
    let before = wait_query(&env, ADMIN, &inst, &["rm"]).await;
    let created = rows(&before)[0][6].clone();
    assert_eq!(live_rows(&env, &inst, Some(&rm)), 1);

    let out = env.trove(ADMIN, &["module-remove", &inst, "rm"]).await;
    assert_eq!(ok(&out), "");
    let out = env.trove(ADMIN, &["module-query", &inst]).await;
    assert_eq!(
        ok(&out),
        table(
            "
            +------+------+-----------+---------+--------+---------+---------+---------+
            | Name | Type | Datastore | Version | Status | Message | Created | Updated |
            +------+------+-----------+---------+--------+---------+---------+---------+
            +------+------+-----------+---------+--------+---------+---------+---------+"
        )
    );
    assert_eq!(live_rows(&env, &inst, Some(&rm)), 0);
    assert_eq!(
        one(
            &env,
            &format!(
                "SELECT count(*)::text AS v FROM instance_modules
                 WHERE instance_id = '{inst}' AND module_id = '{rm}' AND deleted AND deleted_at IS NOT NULL"
            )
        ),
        "1"
    );

    // A module this guest never applied.
    let out = env.trove(ADMIN, &["module-remove", &inst, "never"]).await;
    assert_eq!(
        failed(&out),
        "ERROR: An error occurred communicating with the guest: Module 'never' has not been applied. (HTTP 400)\n"
    );
    let (status, body) = http(
        &env,
        ADMIN,
        reqwest::Method::DELETE,
        &format!("/instances/{inst}/modules/{never}"),
        None,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"badRequest": {"code": 400, "message":
                "An error occurred communicating with the guest: Module 'never' has not been applied."}})
        )
    );
    // Removing `rm` a second time: its result.json is still there (marked removed), so the guest
    // accepts it, as Trove's does (docs/module-semantics.md §14: only a missing result.json is "not applied").
    let out = env.trove(ADMIN, &["module-remove", &inst, "rm"]).await;
    assert_eq!(ok(&out), "");
    assert!(rows(ok(&env.trove(ADMIN, &["module-query", &inst]).await)).is_empty());

    // Applying again: back in module-query with the original `created` (bug 1571799), a new row.
    let out = env.trove(ADMIN, &["module-apply", &inst, "rm"]).await;
    assert_eq!(
        rows(ok(&out)),
        [["rm", "ping", "all", "all", "OK", "Removable"]]
    );
    let after = wait_query(&env, ADMIN, &inst, &["rm"]).await;
    let row = &rows(&after)[0];
    assert_eq!(row[6], created, "created survives the removal");
    assert!(row[7] > created, "updated moved on: {row:?}");
    assert_eq!(live_rows(&env, &inst, Some(&rm)), 1);
    assert_eq!(live_rows(&env, &inst, None), 1);
}

/// module-retrieve writes each module's exact bytes (binary, not UTF-8, with newlines) to
/// `<dir>/<prefix>_<name>_<datastore>_<version>.dat`; a ping payload without `message=` is status ERROR
/// with Trove's text; hidden modules are left out of a non-admin's module-query and module-retrieve; a
/// non-admin retrieving an admin module gets Trove's notice instead of its contents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retrieve_hidden_masking_and_ping_errors() {
    let _t = Timer::start("retrieve_hidden_masking");
    let env = TestEnv::start().await.unwrap();
    let binary: &[u8] = b"message=bin\n\xff\xfe\x00\x80 \r\n\n\xc3\x28tail\n";
    let files = Files::new(&[
        ("bin.dat", binary),
        ("nomsg.dat", b"# no message here\ngreeting = hi\n"),
        ("adm.dat", b"message=Admin secret\n"),
        ("hid.dat", b"message=Hidden\n"),
    ]);
    // The tenant's own modules.
    module_create(
        &env,
        &files,
        TENANT,
        &[
            "own",
            "ping",
            "bin.dat",
            "--datastore",
            "redis",
            "--datastore_version",
            "3.2.6",
        ],
    )
    .await;
    let nomsg = module_create(&env, &files, TENANT, &["nomsg", "ping", "nomsg.dat"]).await;
    // The admin's: is_admin is set on both; one is hidden.
    module_create(&env, &files, ADMIN, &["adm", "ping", "adm.dat"]).await;
    module_create(&env, &files, ADMIN, &["hid", "ping", "hid.dat", "--hidden"]).await;

    let inst = instance_create(
        &env,
        TENANT,
        "ti",
        &["--module", "own", "--module", "nomsg"],
    )
    .await;
    wait_active(&env, TENANT, &inst, BUILD).await;
    let query = wait_query(&env, TENANT, &inst, &["nomsg", "own"]).await;
    let r = rows(&query);
    assert_eq!(r[0][4..6], ["ERROR", "Message not found in contents file"]);
    // Not UTF-8: the ping driver's parse failure.
    assert_eq!(r[1][4], "ERROR");
    assert!(
        r[1][5].starts_with("Could not extract ping message: "),
        "{:?}",
        r[1]
    );
    // The conductor stored what the guest reported at prepare.
    let sql = format!(
        "SELECT status || '|' || message AS v FROM guest_module_results
         WHERE instance_id = '{inst}' AND module_id = '{nomsg}'"
    );
    let stored =
        trove_tests::eventually(Duration::from_secs(30), "module results stored", || async {
            env.query_strings(&sql).pop()
        })
        .await
        .unwrap();
    assert_eq!(stored, "ERROR|Message not found in contents file");
    // module-apply shows the same.
    let out = cli(&env, &files, TENANT, &["module-apply", &inst, "nomsg"]).await;
    assert_eq!(
        ok(&out),
        table(
            "
            +-------+------+-----------+---------+--------+------------------------------------+
            | Name  | Type | Datastore | Version | Status | Message                            |
            +-------+------+-----------+---------+--------+------------------------------------+
            | nomsg | ping | all       | all     | ERROR  | Message not found in contents file |
            +-------+------+-----------+---------+--------+------------------------------------+"
        )
    );

    // The admin applies its two modules to the tenant's instance.
    let out = cli(&env, &files, ADMIN, &["module-apply", &inst, "adm", "hid"]).await;
    assert_eq!(
        rows(ok(&out)),
        [
            ["adm", "ping", "all", "all", "OK", "Admin secret"],
            ["hid", "ping", "all", "all", "OK", "Hidden"]
        ]
    );
    // Hidden: the tenant does not see it, the admin does.
    wait_query(&env, TENANT, &inst, &["adm", "nomsg", "own"]).await;
    wait_query(&env, ADMIN, &inst, &["adm", "hid", "nomsg", "own"]).await;

    // The tenant's retrieve: real bytes of its own modules, the notice for the admin module, no hidden one.
    let out = cli(
        &env,
        &files,
        TENANT,
        &[
            "module-retrieve",
            &inst,
            "--directory",
            "out",
            "--prefix",
            "t",
        ],
    )
    .await;
    let lines: BTreeSet<&str> = ok(&out).lines().collect();
    assert_eq!(
        lines,
        BTreeSet::from([
            "Module contents for 'adm' written to 'out/t_adm_all_all.dat'",
            "Module contents for 'nomsg' written to 'out/t_nomsg_all_all.dat'",
            "Module contents for 'own' written to 'out/t_own_redis_3.2.6.dat'",
        ])
    );
    let read = |p: &str| std::fs::read(files.path().join(p)).unwrap();
    assert_eq!(read("out/t_own_redis_3.2.6.dat"), binary);
    assert_eq!(
        read("out/t_nomsg_all_all.dat"),
        b"# no message here\ngreeting = hi\n"
    );
    assert_eq!(
        read("out/t_adm_all_all.dat"),
        b"Must be admin to retrieve contents for module adm"
    );
    let mut written: Vec<String> = std::fs::read_dir(files.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "t_adm_all_all.dat",
            "t_nomsg_all_all.dat",
            "t_own_redis_3.2.6.dat"
        ]
    );

    // The admin's retrieve: every module's real bytes (no prefix: no leading `_`).
    let out = cli(
        &env,
        &files,
        ADMIN,
        &["module-retrieve", &inst, "--directory", "adm_out"],
    )
    .await;
    assert_eq!(ok(&out).lines().count(), 4, "{}", out.stdout);
    assert!(out
        .stdout
        .contains("Module contents for 'hid' written to 'adm_out/hid_all_all.dat'\n"));
    assert_eq!(read("adm_out/own_redis_3.2.6.dat"), binary);
    assert_eq!(read("adm_out/adm_all_all.dat"), b"message=Admin secret\n");
    assert_eq!(read("adm_out/hid_all_all.dat"), b"message=Hidden\n");
    assert_eq!(
        read("adm_out/nomsg_all_all.dat"),
        b"# no message here\ngreeting = hi\n"
    );

    // Over HTTP: the tenant's include_contents has the notice, base64.
    let (status, body) = http(
        &env,
        TENANT,
        reqwest::Method::GET,
        &format!("/instances/{inst}/modules?from_guest=True&include_contents=True"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let adm = body["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "adm")
        .unwrap()
        .clone();
    use base64::Engine as _;
    assert_eq!(
        adm["contents"],
        base64::engine::general_purpose::STANDARD
            .encode("Must be admin to retrieve contents for module adm")
    );
    assert_eq!(adm["is_admin"], true);
}

/// module-instances (§8) pages by `modules_page_size` and the CLI follows `next` links; cluster members
/// only with `--include_clustered`; a non-admin counts only its own instances. cluster-delete and
/// instance delete retire the rows, so the counts drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn module_instances_pages_and_deletes_retire_rows() {
    let _t = Timer::start("module_instances_paging");
    let env = TestEnv::start_with(|s| s.default.modules_page_size = 2)
        .await
        .unwrap();
    let files = Files::new(&[("pg.dat", b"message=Paged\n")]);
    let pg = module_create(
        &env,
        &files,
        ADMIN,
        &["pg", "ping", "pg.dat", "--all_tenants"],
    )
    .await;

    let t1 = instance_create(&env, TENANT, "t1", &["--module", "pg"]).await;
    let t2 = instance_create(&env, TENANT, "t2", &["--module", "pg"]).await;
    let a1 = instance_create(&env, ADMIN, "a1", &["--module", "pg"]).await;
    let out = env
        .trove(
            ADMIN,
            &[
                "cluster-create",
                "pc",
                "redis",
                "3.2.6",
                "--instance",
                "flavor=15,volume=1,module=pg",
                "--instance",
                "flavor=15,volume=1,module=pg",
            ],
        )
        .await;
    let cluster = prop(ok(&out), "id");
    let members = env.query_strings(&format!(
        "SELECT id AS v FROM instances WHERE cluster_id = '{cluster}' ORDER BY id"
    ));
    assert_eq!(members.len(), 2);

    let ids_of = |out: &CliOutput| -> Vec<String> {
        let mut ids: Vec<String> = rows(ok(out)).into_iter().map(|r| r[0].clone()).collect();
        ids.sort();
        ids
    };
    let sorted = |v: &[&String]| -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| (*s).clone()).collect();
        v.sort();
        v
    };

    // The first page over HTTP: two instances and a `next` link with the marker.
    let (status, page1) = http(
        &env,
        ADMIN,
        reqwest::Method::GET,
        &format!("/modules/{pg}/instances"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let first: Vec<&str> = page1["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(first.len(), 2, "{page1}");
    let links = page1["links"].as_array().unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["rel"], "next");
    let href = links[0]["href"].as_str().unwrap();
    assert!(
        href.ends_with(&format!(
            "/v1.0/{ADMIN}/modules/{pg}/instances?marker={}",
            first[1]
        )),
        "{href}"
    );
    let (_, page2) = http(
        &env,
        ADMIN,
        reqwest::Method::GET,
        &format!("/modules/{pg}/instances?marker={}", first[1]),
        None,
    )
    .await;
    assert_eq!(page2["instances"].as_array().unwrap().len(), 1);
    assert!(page2.get("links").is_none(), "last page: {page2}");
    // Each instance's links carry the caller's project, as Trove builds them, so an admin can follow
    // the link of another tenant's instance (the URL tenant must be the caller's).
    for item in page1["instances"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["instances"].as_array().unwrap())
    {
        let id = item["id"].as_str().unwrap();
        let href = item["links"][0]["href"].as_str().unwrap();
        assert!(
            href.ends_with(&format!("/v1.0/{ADMIN}/instances/{id}")),
            "{href}"
        );
        let (status, shown) = http(
            &env,
            ADMIN,
            reqwest::Method::GET,
            &format!("/instances/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{shown}");
        let flavor_href = shown["instance"]["flavor"]["links"][0]["href"]
            .as_str()
            .unwrap();
        assert!(
            flavor_href.contains(&format!("/v1.0/{ADMIN}/flavors/")),
            "{flavor_href}"
        );
    }
    assert!(
        [&t1, &t2]
            .iter()
            .any(|t| first.contains(&t.as_str()) || page2["instances"][0]["id"] == json!(t)),
        "a tenant's instance is among those the admin followed"
    );

    // The CLI follows the links: all three single instances, with the admin's Tenant ID column.
    let out = env.trove(ADMIN, &["module-instances", "pg"]).await;
    assert_eq!(ids_of(&out), sorted(&[&t1, &t2, &a1]));
    assert!(out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .ends_with("| Tenant ID                        |"));
    // --limit takes one page only.
    let out = env
        .trove(ADMIN, &["module-instances", "pg", "--limit", "1"])
        .await;
    assert_eq!(rows(ok(&out)).len(), 1);
    // --include_clustered adds the members, across three pages.
    let out = env
        .trove(ADMIN, &["module-instances", "pg", "--include_clustered"])
        .await;
    assert_eq!(
        ids_of(&out),
        sorted(&[&t1, &t2, &a1, &members[0], &members[1]])
    );
    // The tenant sees only its own instances, without the Tenant ID column.
    let out = env
        .trove(TENANT, &["module-instances", "pg", "--include_clustered"])
        .await;
    assert_eq!(ids_of(&out), sorted(&[&t1, &t2]));
    assert!(!out.stdout.contains("Tenant ID"));

    let counts = |token: &'static str, clustered: bool| {
        let env = &env;
        async move {
            let mut args = vec!["module-instance-count", "pg"];
            if clustered {
                args.push("--include_clustered");
            }
            let out = env.trove(token, &args).await;
            let r = rows(ok(&out));
            assert!(r.len() <= 1, "one md5: {}", out.stdout);
            r.first()
                .map(|r| r[5].clone())
                .unwrap_or_else(|| "0".into())
        }
    };
    assert_eq!(counts(ADMIN, false).await, "3");
    assert_eq!(counts(ADMIN, true).await, "5");
    assert_eq!(counts(TENANT, true).await, "2");

    // cluster-delete retires the members' rows. The cluster must have finished building first:
    // its members ACTIVE, then joined into one Redis Cluster (task NONE again).
    trove_tests::eventually(BUILD, "cluster members ACTIVE", || async {
        let out = env.trove(ADMIN, &["cluster-instances", "pc"]).await;
        let r = rows(&out.stdout);
        (r.len() == 2 && r.iter().all(|r| r[4] == "ACTIVE")).then_some(())
    })
    .await
    .unwrap();
    trove_tests::eventually(BUILD, "cluster built (task NONE)", || async {
        let out = env.trove(ADMIN, &["cluster-show", "pc"]).await;
        (prop(&out.stdout, "task_name") == "NONE").then_some(())
    })
    .await
    .unwrap();
    let out = env.trove(ADMIN, &["cluster-delete", "pc"]).await;
    assert_eq!(
        ok(&out),
        "Request to delete cluster pc has been accepted.\n"
    );
    for m in &members {
        assert_eq!(live_rows(&env, m, None), 0, "member {m}");
    }
    assert_eq!(counts(ADMIN, true).await, "3");
    let out = env
        .trove(ADMIN, &["module-instances", "pg", "--include_clustered"])
        .await;
    assert_eq!(ids_of(&out), sorted(&[&t1, &t2, &a1]));

    // Instance delete too.
    wait_active(&env, ADMIN, &a1, BUILD).await;
    let out = env.trove(ADMIN, &["delete", "a1"]).await;
    ok(&out);
    assert_eq!(live_rows(&env, &a1, None), 0);
    assert_eq!(counts(ADMIN, true).await, "2");
    let out = env.trove(ADMIN, &["module-instances", "pg"]).await;
    assert_eq!(ids_of(&out), sorted(&[&t1, &t2]));
    // The module's own instance_count follows (docs/module-semantics.md §7).
    let out = env.trove(ADMIN, &["module-show", "pg"]).await;
    assert_eq!(prop(ok(&out), "instance_count"), "2");
    // The members and a1 go away for good once the taskmanager is done.
    trove_tests::eventually(Duration::from_secs(60), "cluster and a1 deleted", || async {
        let left = one(
            &env,
            &format!("SELECT count(*)::text AS v FROM instances WHERE NOT deleted AND (cluster_id = '{cluster}' OR id = '{a1}')"),
        );
        (left == "0").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        live_rows(&env, &t1, Some(&pg)) + live_rows(&env, &t2, Some(&pg)),
        2
    );
}
