//! The user's walkthrough (`docs/walkthrough.md`), command for command, with our `trove`
//! CLI against the real binaries, RabbitMQ and PostgreSQL. Each table is compared with the
//! walkthrough's after ids and dates are masked (they have fixed widths, so the layout still has to
//! match to the character).

use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use trove_tests::{ok, rows};
use trove_tests::{CliOutput, TestEnv};

/// A 32-character project id, like the walkthrough's, whose token is admin.
const ADMIN: &str = "admin00e46e5f7840e39012aff46a920";
const DOC_TENANT: &str = "eac1e46e5f7840e39012aff46a92073a";

fn mask(s: &str) -> String {
    let uuid = Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    let api_date = Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").unwrap();
    let guest_date = Regex::new(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d").unwrap();
    let s = uuid.replace_all(s, "UUUUUUUU-UUUU-UUUU-UUUU-UUUUUUUUUUUU");
    let s = api_date.replace_all(&s, "YYYY-MM-DDTHH:MM:SS");
    let s = guest_date.replace_all(&s, "YYYY-MM-DD HH:MM:SS.ff");
    let member = Regex::new(r"myclust-member-\d").unwrap();
    member
        .replace_all(&s.replace(DOC_TENANT, ADMIN), "myclust-member-N")
        .into_owned()
}

/// The walkthrough's table, dedented.
fn doc(table: &str) -> String {
    let lines: Vec<&str> = table
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    mask(&(lines.join("\n") + "\n"))
}

fn assert_table(out: &CliOutput, expected: &str) {
    assert_eq!(mask(ok(out)), doc(expected));
}

/// Returns once the wall clock has entered the next second, so rows written from now on carry a later
/// second than every row written before. The tables show dates to the second, and rows that tie on
/// them are ordered by their later columns (md5), as python-troveclient orders them. The
/// walkthrough's steps are seconds apart; ours can all land in one second.
async fn next_second() {
    let second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    };
    let start = second();
    while second() == start {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_active(env: &TestEnv, name_or_id: &str) {
    trove_tests::eventually(
        Duration::from_secs(60),
        &format!("{name_or_id} ACTIVE"),
        || async {
            let out = env.trove(ADMIN, &["show", name_or_id]).await;
            out.stdout
                .contains("| status ")
                .then_some(())
                .filter(|_| out.stdout.contains("| ACTIVE "))
        },
    )
    .await
    .unwrap();
}

async fn module_id(env: &TestEnv) -> String {
    let out = env.trove(ADMIN, &["module-show", "mymod"]).await;
    rows(ok(&out))
        .into_iter()
        .find(|r| r[0] == "id")
        .map(|r| r[1].clone())
        .unwrap()
}

/// Waits until the newest reapply job of the module is finished; returns it.
async fn wait_reapply(env: &TestEnv, module: &str) -> Value {
    let client = reqwest::Client::new();
    let url = format!("{}/modules/{module}/reapply", env.base(ADMIN));
    trove_tests::eventually(Duration::from_secs(90), "reapply job finished", || async {
        let r = client
            .get(&url)
            .header("X-Auth-Token", ADMIN)
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        let job = v["reapply_jobs"][0].clone();
        (job["state"] == "finished").then_some(job)
    })
    .await
    .unwrap()
}

const COUNT_HEAD: &str = "
+-------------+---------------------+---------------------+----------------------------------+---------+-------+
| Module Name | Min Updated Date    | Max Updated Date    | Module MD5                       | Current | Count |
+-------------+---------------------+---------------------+----------------------------------+---------+-------+";
const COUNT_FOOT: &str = "+-------------+---------------------+---------------------+----------------------------------+---------+-------+";

fn count_table(rows: &[&str]) -> String {
    format!("{COUNT_HEAD}\n{}\n{COUNT_FOOT}\n", rows.join("\n"))
}

const V1: &str = "7f700cc7b99606615f8b51946f6d3228";
const V2: &str = "ba7c204979c8de54be6efb70a17d40b9";
const V3: &str = "869744bdd18e306a96c145df562065ab";
const V4: &str = "6e2c81c1547d640b4c6e7752ed0e33ab";

fn count_row(md5: &str, current: bool, n: usize) -> String {
    let cur = if current { " True" } else { "False" };
    format!(
        "| mymod       | 2017-06-02T17:22:25 | 2017-06-02T17:22:25 | {md5} |   {cur} |     {n} |"
    )
}

fn module_table(md5: &str, with_count: Option<usize>) -> String {
    let count = with_count
        .map(|n| format!("| instance_count       | {n:<36} |\n"))
        .unwrap_or_default();
    format!(
        "+----------------------+--------------------------------------+
| Property             | Value                                |
+----------------------+--------------------------------------+
| apply_order          | 5                                    |
| auto_apply           | False                                |
| created              | 2017-06-02T17:06:21                  |
| datastore            | all                                  |
| datastore_id         | None                                 |
| datastore_version    | all                                  |
| datastore_version_id | None                                 |
| description          | None                                 |
| id                   | 0065a8ed-0668-4db5-a4ad-d88d0a166388 |
{count}| is_admin             | True                                 |
| live_update          | True                                 |
| md5                  | {md5}     |
| name                 | mymod                                |
| priority_apply       | False                                |
| tenant               | eac1e46e5f7840e39012aff46a92073a     |
| tenant_id            | eac1e46e5f7840e39012aff46a92073a     |
| type                 | ping                                 |
| updated              | 2017-06-02T17:06:21                  |
| visible              | True                                 |
+----------------------+--------------------------------------+"
    )
}

fn create_table(name: &str, ds: &str, ver: &str) -> String {
    let pad = |s: &str| format!("{s:<36}");
    format!(
        "+-------------------------+--------------------------------------+
| Property                | Value                                |
+-------------------------+--------------------------------------+
| created                 | 2017-06-02T17:22:24                  |
| datastore               | {} |
| datastore_version       | {} |
| encrypted_rpc_messaging | True                                 |
| flavor                  | 15                                   |
| id                      | 6221b30c-8292-4378-b624-c7e9b0f8ba9e |
| name                    | {} |
| region                  | RegionOne                            |
| server_id               | None                                 |
| status                  | BUILD                                |
| tenant_id               | eac1e46e5f7840e39012aff46a92073a     |
| updated                 | 2017-06-02T17:22:24                  |
| volume                  | 1                                    |
| volume_id               | None                                 |
+-------------------------+--------------------------------------+",
        pad(ds),
        pad(ver),
        pad(name)
    )
}

/// Masked dates of the count table's rows, by md5: (min, max).
fn count_dates(out: &str) -> Vec<(String, String, String, String, String)> {
    rows(out)
        .into_iter()
        .map(|r| {
            (
                r[1].clone(),
                r[2].clone(),
                r[3].clone(),
                r[4].clone(),
                r[5].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_module_walkthrough() {
    let env = TestEnv::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for v in 1..=4 {
        std::fs::write(
            dir.path().join(format!("ping{v}.dat")),
            format!("message=Module.V{v}\n"),
        )
        .unwrap();
    }
    let cli = |args: Vec<&'static str>| {
        let env = &env;
        let dir = dir.path().to_path_buf();
        async move { env.trove_in(ADMIN, &args, Some(&dir)).await }
    };

    // Create the module (without --datastore: docs/module-semantics.md §0 row 1). Our instance_count is real.
    let out = cli(vec![
        "module-create",
        "mymod",
        "ping",
        "ping1.dat",
        "--live_update",
    ])
    .await;
    assert_table(&out, &module_table(V1, Some(0)));

    let out = cli(vec![
        "create",
        "myinst",
        "15",
        "--size",
        "1",
        "--module",
        "mymod",
        "--datastore",
        "mysql",
    ])
    .await;
    assert_table(&out, &create_table("myinst", "mysql", "5.6"));
    wait_active(&env, "myinst").await;

    // The guest applies modules right after it reports ACTIVE: poll for its row.
    let query = trove_tests::eventually(Duration::from_secs(30), "module-query row", || async {
        let out = env.trove(ADMIN, &["module-query", "myinst"]).await;
        out.stdout.contains("Module.V1").then_some(out)
    })
    .await
    .unwrap();
    assert_table(
        &query,
        "
      +-------+------+-----------+---------+--------+-----------+------------------------+------------------------+
      | Name  | Type | Datastore | Version | Status | Message   | Created                | Updated                |
      +-------+------+-----------+---------+--------+-----------+------------------------+------------------------+
      | mymod | ping | all       | all     | OK     | Module.V1 | 2017-06-02 17:23:40.50 | 2017-06-02 17:23:40.50 |
      +-------+------+-----------+---------+--------+-----------+------------------------+------------------------+",
    );

    let out = cli(vec!["module-instance-count", "mymod"]).await;
    assert_table(&out, &count_table(&[&count_row(V1, true, 1)]));

    let out = cli(vec!["module-instances", "mymod"]).await;
    assert_table(&out, "
      +--------------------------------------+--------+-----------+-------------------+--------+-----------+------+-----------+----------------------------------+
      | ID                                   | Name   | Datastore | Datastore Version | Status | Flavor ID | Size | Region    | Tenant ID                        |
      +--------------------------------------+--------+-----------+-------------------+--------+-----------+------+-----------+----------------------------------+
      | 6221b30c-8292-4378-b624-c7e9b0f8ba9e | myinst | mysql     | 5.6               | ACTIVE | 15        |    1 | RegionOne | eac1e46e5f7840e39012aff46a92073a |
      +--------------------------------------+--------+-----------+-------------------+--------+-----------+------+-----------+----------------------------------+");

    let out = cli(vec!["module-update", "mymod", "--file", "ping2.dat"]).await;
    assert_table(&out, &module_table(V2, None));

    let out = cli(vec![
        "cluster-create",
        "myclust",
        "redis",
        "3.2.6",
        "--instance=flavor=15,volume=1,module=mymod",
        "--instance=flavor=15,volume=1,module=mymod",
        "--instance=flavor=15,volume=1,module=mymod",
    ])
    .await;
    assert_table(
        &out,
        "
   +-------------------+--------------------------------------+
   | Property          | Value                                |
   +-------------------+--------------------------------------+
   | created           | 2017-06-02T18:00:17                  |
   | datastore         | redis                                |
   | datastore_version | 3.2.6                                |
   | id                | e4d91ca6-5980-430c-94d0-bf7abc63f712 |
   | instance_count    | 3                                    |
   | name              | myclust                              |
   | task_description  | Building the initial cluster.        |
   | task_name         | BUILDING                             |
   | updated           | 2017-06-02T18:00:17                  |
   +-------------------+--------------------------------------+",
    );

    let out = cli(vec!["module-instance-count", "mymod"]).await;
    assert_table(&out, &count_table(&[&count_row(V1, false, 1)]));
    let out = cli(vec![
        "module-instance-count",
        "mymod",
        "--include_clustered",
    ])
    .await;
    assert_table(
        &out,
        &count_table(&[&count_row(V1, false, 1), &count_row(V2, true, 3)]),
    );

    // Wait for the cluster to finish building (members ACTIVE) before touching members.
    trove_tests::eventually(
        Duration::from_secs(90),
        "cluster members ACTIVE",
        || async {
            let out = env.trove(ADMIN, &["cluster-instances", "myclust"]).await;
            let r = rows(&out.stdout);
            (r.len() == 3 && r.iter().all(|r| r[4] == "ACTIVE")).then_some(())
        },
    )
    .await
    .unwrap();

    let out = cli(vec!["module-update", "mymod", "--file", "ping3.dat"]).await;
    assert_table(&out, &module_table(V3, None));
    let out = cli(vec![
        "module-instance-count",
        "mymod",
        "--include_clustered",
    ])
    .await;
    assert_table(
        &out,
        &count_table(&[&count_row(V1, false, 1), &count_row(V2, false, 3)]),
    );

    let out = cli(vec!["cluster-instances", "myclust"]).await;
    let members = rows(ok(&out));
    let mut ids: Vec<String> = members.iter().map(|r| r[0].clone()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted, "cluster-instances is sorted by ID");
    assert_table(
        &out,
        "
   +--------------------------------------+------------------+-----------+------+--------+
   | ID                                   | Name             | Flavor ID | Size | Status |
   +--------------------------------------+------------------+-----------+------+--------+
   | 393462d5-906d-4214-af0d-538b7f618b2d | myclust-member-2 | 15        |    1 | ACTIVE |
   | a3fc5326-e1b6-456a-a8b1-08ad6bbb2278 | myclust-member-2 | 15        |    1 | ACTIVE |
   | cba31d4b-d038-42c2-ab03-56c6c176b49d | myclust-member-2 | 15        |    1 | ACTIVE |
   +--------------------------------------+------------------+-----------+------+--------+",
    );
    let member = ids.remove(0);

    // The members' V2 rows were written at cluster-create; V3 must come in a later second.
    next_second().await;
    let out = env
        .trove_in(ADMIN, &["module-apply", &member, "mymod"], Some(dir.path()))
        .await;
    assert_table(
        &out,
        "
   +-------+------+-----------+---------+--------+-----------+
   | Name  | Type | Datastore | Version | Status | Message   |
   +-------+------+-----------+---------+--------+-----------+
   | mymod | ping | all       | all     | OK     | Module.V3 |
   +-------+------+-----------+---------+--------+-----------+",
    );
    let out = cli(vec![
        "module-instance-count",
        "mymod",
        "--include_clustered",
    ])
    .await;
    assert_table(
        &out,
        &count_table(&[
            &count_row(V1, false, 1),
            &count_row(V2, false, 2),
            &count_row(V3, true, 1),
        ]),
    );

    // --- The rest of the walkthrough: a second instance, V4, and the three reapplies.
    let out = cli(vec![
        "create", "myinst_2", "15", "--size", "1", "--module", "mymod",
    ])
    .await;
    assert_table(&out, &create_table("myinst_2", "redis", "3.2.6"));
    wait_active(&env, "myinst_2").await;
    let out = cli(vec!["module-update", "mymod", "--file", "ping4.dat"]).await;
    assert_table(&out, &module_table(V4, None));

    // `trove list` sorts by ID; with random ids the two rows come in either order, so compare as sets.
    let out = cli(vec!["list"]).await;
    let masked = mask(ok(&out));
    let mut lines: Vec<&str> = masked.lines().collect();
    lines[3..5].sort();
    let mut expected = doc("
   +--------------------------------------+----------+-----------+-------------------+--------+-----------+------+-----------+
   | ID                                   | Name     | Datastore | Datastore Version | Status | Flavor ID | Size | Region    |
   +--------------------------------------+----------+-----------+-------------------+--------+-----------+------+-----------+
   | 6221b30c-8292-4378-b624-c7e9b0f8ba9e | myinst   | mysql     | 5.6               | ACTIVE | 15        |    1 | RegionOne |
   | cdd85d94-13a0-4d90-89eb-9c05523d2ac6 | myinst_2 | redis     | 3.2.6             | ACTIVE | 15        |    1 | RegionOne |
   +--------------------------------------+----------+-----------+-------------------+--------+-----------+------+-----------+");
    expected.pop();
    let mut exp: Vec<&str> = expected.lines().collect();
    exp[3..5].sort();
    assert_eq!(lines, exp);

    let out = cli(vec![
        "module-instance-count",
        "mymod",
        "--include_clustered",
    ])
    .await;
    assert_table(
        &out,
        &count_table(&[
            &count_row(V1, false, 1),
            &count_row(V2, false, 2),
            &count_row(V3, false, 2),
        ]),
    );

    let mid = module_id(&env).await;
    next_second().await;
    let out = cli(vec![
        "module-reapply",
        "mymod",
        "--md5=869744bdd18e306a96c145df562065ab",
        "--include_clustered",
    ])
    .await;
    assert_eq!(ok(&out), "");
    let job = wait_reapply(&env, &mid).await;
    assert_eq!(
        (
            job["total"].as_i64(),
            job["applied"].as_i64(),
            job["failed"].as_i64()
        ),
        (Some(2), Some(2), Some(0))
    );
    let out = cli(vec![
        "module-instance-count",
        "mymod",
        "--include_clustered",
    ])
    .await;
    assert_table(
        &out,
        &count_table(&[
            &count_row(V1, false, 1),
            &count_row(V2, false, 2),
            &count_row(V4, true, 2),
        ]),
    );
    let before_force = count_dates(&out.stdout);

    next_second().await;
    let out = cli(vec![
        "module-reapply",
        "mymod",
        "--md5=6e2c81c1547d640b4c6e7752ed0e33ab",
        "--include_clustered",
        "--force",
    ])
    .await;
    assert_eq!(ok(&out), "");
    wait_reapply(&env, &mid).await;
    let out = cli(vec![
        "module-instance-count",
        "mymod",
        "--include_clustered",
    ])
    .await;
    assert_table(
        &out,
        &count_table(&[
            &count_row(V1, false, 1),
            &count_row(V2, false, 2),
            &count_row(V4, true, 2),
        ]),
    );
    let after_force = count_dates(&out.stdout);
    // Only the dates of the V4 row move.
    assert_eq!(before_force[..2], after_force[..2]);
    assert_eq!(
        (&before_force[2].2, &before_force[2].4),
        (&after_force[2].2, &after_force[2].4)
    );
    assert!(
        after_force[2].0 > before_force[2].0,
        "forced reapply moves the dates: {before_force:?} → {after_force:?}"
    );
    let forced_min = after_force[2].0.clone();

    let out = cli(vec![
        "module-reapply",
        "mymod",
        "--include_clustered",
        "--batch_size=1",
        "--delay=3",
    ])
    .await;
    assert_eq!(ok(&out), "");
    let job = wait_reapply(&env, &mid).await;
    assert_eq!(
        (
            job["applied"].as_i64(),
            job["skipped"].as_i64(),
            job["failed"].as_i64()
        ),
        (Some(3), Some(2), Some(0))
    );
    let out = cli(vec![
        "module-instance-count",
        "mymod",
        "--include_clustered",
    ])
    .await;
    assert_table(&out, &count_table(&[&count_row(V4, true, 5)]));
    let final_dates = count_dates(&out.stdout);
    assert_eq!(
        final_dates[0].0, forced_min,
        "the minimum date stays at the forced reapply"
    );

    // At least 3 s between consecutive applies of the batch_size=1 run.
    let times = env.query_strings(&format!(
        "SELECT to_char(updated, 'YYYY-MM-DD HH24:MI:SS.US') AS v FROM instance_modules
         WHERE module_id = '{mid}' AND NOT deleted AND created > (SELECT started FROM reapply_jobs WHERE module_id = '{mid}' ORDER BY created DESC LIMIT 1)
         ORDER BY updated"
    ));
    assert_eq!(times.len(), 3, "{times:?}");
    let parse = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
    for w in times.windows(2) {
        let gap = parse(&w[1]) - parse(&w[0]);
        assert!(
            gap >= chrono::Duration::milliseconds(2990),
            "applies only {gap} apart: {times:?}"
        );
    }
}
