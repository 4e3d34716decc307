//! Every instance is a real database (issue 13): a mysql instance is a MariaDB server and a redis
//! instance a redis-server that a client connects to at the address the API reports; a redis cluster
//! is one Redis Cluster; a guest's server never outlives it unobserved, and a deleted instance leaves
//! no process and no state directory behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::Queryable as _;
use serde_json::{json, Value};
use trove_tests::{eventually, ok, property, rows, sigkill_guest, ProcessStack, TestEnv};

const ADMIN: &str = "admin-realdb";

/// The processes whose working directory is `dir` (a guest's datastore server runs in its data
/// directory).
fn processes_in(dir: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == want)
            && trove_tests::process_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Every process with a working directory inside `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&want))
            && trove_tests::process_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .header("X-Auth-Token", ADMIN)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("X-Auth-Token", ADMIN)
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn instance(base: &str, id: &str) -> Value {
    let (status, body) = get_json(&format!("{base}/instances/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["instance"].clone()
}

async fn wait_status(base: &str, id: &str, want: &str, timeout: Duration) -> Value {
    eventually(timeout, &format!("instance {id} {want}"), || async {
        let i = instance(base, id).await;
        (i["status"] == want).then_some(i)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `(ip, port)` from the instance view: `ip[0]` and the port of `addresses[0]`.
fn endpoint(view: &Value) -> (String, u16) {
    let ip = view["ip"][0].as_str().expect("ip").to_owned();
    let port = view["addresses"][0]["port"].as_u64().expect("port") as u16;
    (ip, port)
}

/// `trove create <name> 15 --size 1` (the default datastore, redis), waited for until ACTIVE.
async fn create_redis(env: &TestEnv, name: &str) -> (String, Value) {
    let out = env
        .trove(ADMIN, &["create", name, "15", "--size", "1"])
        .await;
    let id = id_of(ok(&out));
    let view = wait_status(&env.base(ADMIN), &id, "ACTIVE", Duration::from_secs(60)).await;
    (id, view)
}

/// `SET key value` on the redis at `url`.
async fn redis_set(url: &str, key: &str, value: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// `GET key` on the redis at `url`.
async fn redis_get(url: &str, key: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn id_of(table: &str) -> String {
    property(table, "id").expect("id in the table")
}

async fn mysql_conn(ip: &str, port: u16, user: &str, pw: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(ip)
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(pw));
    eventually(
        Duration::from_secs(30),
        &format!("{user} to connect"),
        || {
            let opts = opts.clone();
            async move { mysql_async::Conn::new(opts).await.ok() }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_mysql_instance_is_a_real_mariadb_that_comes_back_with_its_data() {
    let env = TestEnv::start().await.unwrap();
    let base = env.base(ADMIN);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ping1.dat"), "message=Module.V1\n").unwrap();
    ok(&env
        .trove_in(
            ADMIN,
            &[
                "module-create",
                "mymod",
                "ping",
                "ping1.dat",
                "--live_update",
            ],
            Some(dir.path()),
        )
        .await);
    let out = env
        .trove(
            ADMIN,
            &[
                "create",
                "myinst",
                "15",
                "--size",
                "1",
                "--datastore",
                "mysql",
                "--module",
                "mymod",
            ],
        )
        .await;
    let id = id_of(ok(&out));
    let view = wait_status(&base, &id, "ACTIVE", Duration::from_secs(120)).await;
    let (ip, port) = endpoint(&view);
    assert_eq!(ip, "127.0.0.1");

    // The module still works on a real instance.
    let query = env.trove(ADMIN, &["module-query", &id]).await;
    let table = rows(ok(&query));
    assert_eq!(table[0][0], "mymod");
    assert_eq!(table[0][4], "OK");

    // Root, a database and a user, through Trove's API.
    let (status, body) = post_json(&format!("{base}/instances/{id}/root"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["name"], "root");
    let root_pw = body["user"]["password"].as_str().unwrap().to_owned();
    let (status, body) = post_json(
        &format!("{base}/instances/{id}/databases"),
        json!({"databases": [{"name": "shop"}]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post_json(
        &format!("{base}/instances/{id}/users"),
        json!({"users": [{"name": "bob", "password": "bobpw", "databases": [{"name": "shop"}]}]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let mut root = mysql_conn(&ip, port, "root", &root_pw).await;
    root.query_drop("CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(32))")
        .await
        .unwrap();
    root.query_drop("INSERT INTO shop.items VALUES (1, 'anchor')")
        .await
        .unwrap();
    drop(root);
    let mut bob = mysql_conn(&ip, port, "bob", "bobpw").await;
    let name: Option<String> = bob
        .query_first("SELECT name FROM shop.items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("anchor"));
    drop(bob);

    // kill -9 the server: the instance leaves ACTIVE, comes back, and the row is still there.
    let data = env.state_dir.path().join(&id).join("data");
    let servers = processes_in(&data);
    assert_eq!(servers.len(), 1, "one mariadbd runs in {}", data.display());
    sigkill(servers[0]);
    eventually(
        Duration::from_secs(20),
        "the instance to leave ACTIVE",
        || async { (instance(&base, &id).await["status"] != "ACTIVE").then_some(()) },
    )
    .await
    .unwrap();
    wait_status(&base, &id, "ACTIVE", Duration::from_secs(60)).await;
    let again = processes_in(&data);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0], servers[0], "a new mariadbd");
    let mut bob = mysql_conn(&ip, port, "bob", "bobpw").await;
    let name: Option<String> = bob
        .query_first("SELECT name FROM shop.items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("anchor"));
}

#[tokio::test]
async fn a_redis_instance_answers_with_its_password() {
    let env = TestEnv::start().await.unwrap();
    let base = env.base(ADMIN);
    let (id, view) = create_redis(&env, "myredis").await;
    assert_eq!(view["datastore"]["type"], "redis");
    let (ip, port) = endpoint(&view);

    let (status, body) = post_json(
        &format!("{base}/instances/{id}/root"),
        json!({"password": "s3cret-pw"}),
    )
    .await;
    if status != 200 {
        let d = env.state_dir.path().join(&id);
        for f in [
            "guest.conf",
            "guest.log",
            "redis.conf",
            "datastore/server.log",
        ] {
            eprintln!(
                "=== {f}\n{}",
                std::fs::read_to_string(d.join(f)).unwrap_or_default()
            );
        }
    }
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["password"], "s3cret-pw");

    let open = redis::Client::open(format!("redis://{ip}:{port}/")).unwrap();
    let mut anon = open.get_multiplexed_async_connection().await.unwrap();
    let refused: redis::RedisResult<String> =
        redis::cmd("GET").arg("k").query_async(&mut anon).await;
    let err = refused.expect_err("requirepass refuses a client without the password");
    assert!(err.to_string().contains("NOAUTH"), "{err}");

    let authed = format!("redis://:s3cret-pw@{ip}:{port}/");
    redis_set(&authed, "anchor", "seed-15").await;
    assert_eq!(redis_get(&authed, "anchor").await, "seed-15");
}

#[tokio::test]
async fn a_redis_cluster_is_one_redis_cluster() {
    let env = TestEnv::start().await.unwrap();
    let base = env.base(ADMIN);
    let member = "--instance=flavor=15,volume=1";
    let out = env
        .trove(
            ADMIN,
            &[
                "cluster-create",
                "myclust",
                "redis",
                "3.2.6",
                member,
                member,
                member,
            ],
        )
        .await;
    let cluster_id = id_of(ok(&out));
    let cluster = eventually(
        Duration::from_secs(120),
        "the cluster to be built",
        || async {
            let (status, body) = get_json(&format!("{base}/clusters/{cluster_id}")).await;
            assert_eq!(status, 200, "{body}");
            let c = body["cluster"].clone();
            let members = c["instances"].as_array().cloned().unwrap_or_default();
            (c["task"]["name"] == "NONE"
                && members.len() == 3
                && members.iter().all(|m| m["status"] == "ACTIVE"))
            .then_some(c)
        },
    )
    .await
    .unwrap();
    assert_eq!(cluster["ip"].as_array().map(Vec::len), Some(3), "{cluster}");
    let mut nodes = Vec::new();
    for m in cluster["instances"].as_array().unwrap() {
        let view = instance(&base, m["id"].as_str().unwrap()).await;
        nodes.push(endpoint(&view));
    }

    for (ip, port) in &nodes {
        let client = redis::Client::open(format!("redis://{ip}:{port}/")).unwrap();
        let mut conn = client.get_connection().unwrap();
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap();
        for want in [
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            "cluster_known_nodes:3",
        ] {
            assert!(info.lines().any(|l| l.trim() == want), "{want} in {info}");
        }
    }

    // A key written through one member is read, with redirection, from another.
    let url = |(ip, port): &(String, u16)| format!("redis://{ip}:{port}/");
    let first = redis::cluster::ClusterClient::new(vec![url(&nodes[0])]).unwrap();
    let mut writer = first.get_connection().unwrap();
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("key-{i}"))
            .arg(i)
            .query(&mut writer)
            .unwrap();
    }
    let second = redis::cluster::ClusterClient::new(vec![url(&nodes[2])]).unwrap();
    let mut reader = second.get_connection().unwrap();
    for i in 0..20 {
        let v: i64 = redis::cmd("GET")
            .arg(format!("key-{i}"))
            .query(&mut reader)
            .unwrap();
        assert_eq!(v, i);
    }
    // A plain connection to one node is redirected for a key another node owns.
    let plain = redis::Client::open(url(&nodes[1])).unwrap();
    let mut conn = plain.get_connection().unwrap();
    let moved = (0..20)
        .filter_map(|i| {
            redis::cmd("GET")
                .arg(format!("key-{i}"))
                .query::<Option<i64>>(&mut conn)
                .err()
        })
        .count();
    assert!(moved > 0, "some keys live on other nodes (MOVED)");

    // cluster-delete stops every member's server.
    let dirs: Vec<PathBuf> = cluster["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| env.state_dir.path().join(m["id"].as_str().unwrap()))
        .collect();
    ok(&env.trove(ADMIN, &["cluster-delete", &cluster_id]).await);
    eventually(Duration::from_secs(60), "every member gone", || async {
        dirs.iter()
            .all(|d| !d.exists() && processes_under(d).is_empty())
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_killed_guests_server_is_adopted_and_a_deleted_instance_leaves_nothing() {
    let env = TestEnv::start().await.unwrap();
    let base = env.base(ADMIN);
    let (id, _) = create_redis(&env, "adopted").await;
    let dir = env.state_dir.path().join(&id);
    let server = processes_in(&dir.join("data"));
    assert_eq!(server.len(), 1);

    // SIGKILL the guest: its server runs on, and the guest the taskmanager starts again adopts it.
    let old_guest = sigkill_guest(env.state_dir.path(), &id).await;
    let new_guest = eventually(Duration::from_secs(30), "a new guest", || async {
        trove_tests::guest_pid(env.state_dir.path(), &id)
            .filter(|p| *p != old_guest && trove_tests::process_alive(*p))
    })
    .await
    .unwrap();
    assert_ne!(new_guest, old_guest);
    eventually(Duration::from_secs(30), "the server adopted", || async {
        let log = std::fs::read_to_string(dir.join("guest.log")).unwrap_or_default();
        log.contains("adopted the running datastore server")
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        processes_in(&dir.join("data")),
        server,
        "the same server, never two"
    );
    // It is watched: killed now, it is started again by the new guest.
    sigkill(server[0]);
    eventually(Duration::from_secs(30), "a new server", || async {
        let now = processes_in(&dir.join("data"));
        (now.len() == 1 && now != server).then_some(())
    })
    .await
    .unwrap();
    wait_status(&base, &id, "ACTIVE", Duration::from_secs(60)).await;

    // Delete: no process of the instance is left, and its state directory (guest.conf holds its RPC
    // key) is gone.
    ok(&env.trove(ADMIN, &["delete", &id]).await);
    eventually(Duration::from_secs(60), "the instance gone", || async {
        let (status, _) = get_json(&format!("{base}/instances/{id}")).await;
        (status == 404 && !dir.exists()).then_some(())
    })
    .await
    .unwrap();
    assert!(processes_under(&dir).is_empty());
    assert!(!trove_tests::process_alive(new_guest));
}

#[tokio::test]
async fn the_whole_stack_stops_and_starts_with_every_instance_and_its_data() {
    let mut stack = ProcessStack::start().await.unwrap();
    let base = stack.base(ADMIN);
    let redis_id = id_of(ok(&stack
        .trove(ADMIN, &["create", "keep-redis", "15", "--size", "1"])
        .await));
    let mysql_id = id_of(ok(&stack
        .trove(
            ADMIN,
            &[
                "create",
                "keep-mysql",
                "15",
                "--size",
                "1",
                "--datastore",
                "mysql",
            ],
        )
        .await));
    let redis_view = wait_status(&base, &redis_id, "ACTIVE", Duration::from_secs(60)).await;
    let mysql_view = wait_status(&base, &mysql_id, "ACTIVE", Duration::from_secs(120)).await;
    let (rip, rport) = endpoint(&redis_view);
    let (mip, mport) = endpoint(&mysql_view);

    redis_set(&format!("redis://{rip}:{rport}/"), "survives", "yes").await;
    let (status, body) = post_json(
        &format!("{base}/instances/{mysql_id}/root"),
        json!({"password": "rootpw"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut root = mysql_conn(&mip, mport, "root", "rootpw").await;
    root.query_drop("CREATE DATABASE keep").await.unwrap();
    root.query_drop("CREATE TABLE keep.t (v VARCHAR(8))")
        .await
        .unwrap();
    root.query_drop("INSERT INTO keep.t VALUES ('row')")
        .await
        .unwrap();
    drop(root);

    // Down: services, guests and their servers.
    stack.stop_all().await.unwrap();
    let guests = stack.state_path();
    eventually(
        Duration::from_secs(30),
        "no process of any instance",
        || async { processes_under(&guests).is_empty().then_some(()) },
    )
    .await
    .unwrap();

    // Up again: every instance ACTIVE within a minute, with its data.
    stack.start_all().await.unwrap();
    wait_status(&base, &redis_id, "ACTIVE", Duration::from_secs(60)).await;
    wait_status(&base, &mysql_id, "ACTIVE", Duration::from_secs(60)).await;
    let after = endpoint(&instance(&base, &redis_id).await);
    assert_eq!(after, (rip.clone(), rport), "the port survives a restart");
    assert_eq!(
        redis_get(&format!("redis://{rip}:{rport}/"), "survives").await,
        "yes"
    );
    let mut root = mysql_conn(&mip, mport, "root", "rootpw").await;
    let v: Option<String> = root.query_first("SELECT v FROM keep.t").await.unwrap();
    assert_eq!(v.as_deref(), Some("row"));
}

/// `trove create <name> 15 --size 1 --datastore redis --datastore_version <version>`.
fn redis_version_args<'a>(name: &'a str, version: &'a str) -> [&'a str; 9] {
    [
        "create",
        name,
        "15",
        "--size",
        "1",
        "--datastore",
        "redis",
        "--datastore_version",
        version,
    ]
}

/// Creates an instance and waits for ERROR; returns the instance view.
async fn create_until_error(env: &TestEnv, args: &[&str]) -> Value {
    let base = env.base(ADMIN);
    let id = id_of(ok(&env.trove(ADMIN, args).await));
    let view = wait_status(&base, &id, "ERROR", Duration::from_secs(60)).await;
    // Never stuck: it can be deleted, and it goes.
    ok(&env.trove(ADMIN, &["delete", &id]).await);
    eventually(
        Duration::from_secs(30),
        "the failed instance gone",
        || async { (get_json(&format!("{base}/instances/{id}")).await.0 == 404).then_some(()) },
    )
    .await
    .unwrap();
    assert!(!env.state_dir.path().join(&id).exists());
    view
}

#[tokio::test]
async fn a_build_that_cannot_finish_ends_in_error_with_a_clear_fault() {
    let env = TestEnv::start_with(|s| s.guest.server_start_timeout = 3)
        .await
        .unwrap();

    // The datastore version's server binary is missing.
    let empty = tempfile::tempdir().unwrap();
    env.register_redis_version("9.9-missing", empty.path());
    let view = create_until_error(&env, &redis_version_args("nobinary", "9.9-missing")).await;
    let fault = &view["fault"];
    assert_eq!(
        fault["message"], "Failed to prepare the redis datastore.",
        "{view}"
    );
    let details = fault["details"].as_str().unwrap_or_default();
    assert!(details.contains("redis-server was not found"), "{details}");

    // A server that never answers.
    let hanging = tempfile::tempdir().unwrap();
    let script = hanging.path().join("redis-server");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.register_redis_version("9.9-hangs", hanging.path());
    let view = create_until_error(&env, &redis_version_args("hangs", "9.9-hangs")).await;
    let details = view["fault"]["details"].as_str().unwrap_or_default();
    assert!(details.contains("did not answer within 3 s"), "{view}");
}

#[tokio::test]
async fn no_free_port_and_no_state_directory_end_in_error() {
    // The one port of the range is held by someone else.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let env = TestEnv::start_with(|s| {
        s.compute.port_range_start = port;
        s.compute.port_range_end = port;
    })
    .await
    .unwrap();
    let view = create_until_error(&env, &["create", "noport", "15", "--size", "1"]).await;
    let details = view["fault"]["details"].as_str().unwrap_or_default();
    assert!(
        details.contains(&format!("No free port in {port}-{port}")),
        "{view}"
    );
    drop(holder);

    // The state directory cannot be created (its parent is a file).
    let file = tempfile::NamedTempFile::new().unwrap();
    let env = TestEnv::start_with(|s| s.compute.state_path = file.path().join("guests"))
        .await
        .unwrap();
    let base = env.base(ADMIN);
    let id = id_of(ok(&env
        .trove(ADMIN, &["create", "nodir", "15", "--size", "1"])
        .await));
    let view = wait_status(&base, &id, "ERROR", Duration::from_secs(60)).await;
    let details = view["fault"]["details"].as_str().unwrap_or_default();
    assert!(details.contains("creating"), "{view}");
    ok(&env.trove(ADMIN, &["delete", &id]).await);
    eventually(
        Duration::from_secs(30),
        "the failed instance gone",
        || async { (get_json(&format!("{base}/instances/{id}")).await.0 == 404).then_some(()) },
    )
    .await
    .unwrap();
}
