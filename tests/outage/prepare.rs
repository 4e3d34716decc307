//! A build must end, one way or the other, whatever the broker loses: a `prepare` lost with the
//! broker is sent again (rebuilt from the database) once the guest reports `new` for
//! `prepare_resend_after`, and a guest that never starts fails its build with a fault, after which
//! the instance can be deleted.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use diesel::{QueryDsl as _, RunQueryDsl as _};
use lapin::options::BasicGetOptions;
use reqwest::Method;
use serde_json::{json, Value};
use trove_common::config::Settings;
use trove_common::db::models::Instance;
use trove_common::rpc::taskmanager::TaskManagerMsg;
use trove_taskmanager::handlers::instance::{create_args_from_rows, prepare_args};
use trove_tests::{bin, eventually, PrivateBroker, ProcessStack};

/// A 32-character project id (an ordinary member, not admin).
const TENANT: &str = "c2b3a4d5e6f708192a3b4c5d6e7f8091";

/// An HTTP call to the stack's API as [`TENANT`]: the status and the JSON body (null when empty).
async fn api(
    stack: &ProcessStack,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", stack.base(TENANT)))
        .header("X-Auth-Token", TENANT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates a live-update `ping` module with `message=<text>`; returns its id.
async fn create_module(stack: &ProcessStack, name: &str, text: &str) -> String {
    let contents = base64::engine::general_purpose::STANDARD.encode(format!("message={text}\n"));
    let body = json!({"module": {"name": name, "module_type": "ping", "contents": contents,
                                 "live_update": 1}});
    let (status, v) = api(stack, Method::POST, "/modules", Some(body)).await;
    assert_eq!(status, 200, "module create: {v}");
    v["module"]["id"].as_str().expect("module id").to_owned()
}

/// Creates a redis instance (the stack's default datastore), with `module` when given; returns its
/// id.
async fn create_instance(stack: &ProcessStack, name: &str, module: Option<&str>) -> String {
    let mut body = json!({"instance": {"name": name, "flavorRef": "15", "volume": {"size": 1}}});
    if let Some(m) = module {
        body["instance"]["modules"] = json!([{ "id": m }]);
    }
    let (status, v) = api(stack, Method::POST, "/instances", Some(body)).await;
    assert_eq!(status, 200, "instance create: {v}");
    v["instance"]["id"]
        .as_str()
        .expect("instance id")
        .to_owned()
}

/// `GET /instances/<id>`: the instance view, or None once it is gone (404).
async fn show(stack: &ProcessStack, id: &str) -> Option<Value> {
    let (status, v) = api(stack, Method::GET, &format!("/instances/{id}"), None).await;
    match status {
        200 => Some(v["instance"].clone()),
        404 => None,
        other => panic!("GET instance {id}: {other} {v}"),
    }
}

/// Waits until the instance's API status is `want`; returns its view.
async fn wait_status(stack: &ProcessStack, id: &str, want: &str, timeout: Duration) -> Value {
    eventually(timeout, &format!("instance {id} {want}"), || async {
        let view = show(stack, id).await?;
        (view["status"] == want).then_some(view)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()))
}

/// Deletes the instance and waits until the API no longer knows it.
async fn delete_and_wait_gone(stack: &ProcessStack, id: &str) {
    let (status, v) = api(stack, Method::DELETE, &format!("/instances/{id}"), None).await;
    assert_eq!(status, 202, "delete {id}: {v}");
    eventually(
        Duration::from_secs(30),
        &format!("instance {id} gone"),
        || async { show(stack, id).await.is_none().then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_owned()
}

/// The taskmanager's log of a stack.
fn taskmanager_log(stack: &ProcessStack) -> String {
    let dir = stack.config_files()[0].parent().unwrap().to_owned();
    std::fs::read_to_string(dir.join("logs/trove-taskmanager.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_lost_with_the_broker_is_sent_again_and_the_instance_becomes_active() {
    let mut broker = PrivateBroker::start().expect("private broker");
    let tmp = tempfile::tempdir().unwrap();
    // The guest waits for the test's go before it starts (at most 90 s), so the broker can lose
    // its prepare first. No exec until then: the shell's command line names guest.conf, as the
    // guest's does, so the taskmanager sees its guest running and does not start another.
    let go = tmp.path().join("go");
    let wrapper = script(
        &tmp.path().join("slow-guestagent"),
        &format!(
            "i=0\nwhile [ ! -e '{go}' ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done\n\
             exec '{guest}' \"$@\"",
            go = go.display(),
            guest = bin("trove-guestagent").display()
        ),
    );
    let stack = ProcessStack::start_with(&format!(
        "[DEFAULT]\ntransport_url = {}\nprepare_resend_after = 5\n\n[compute]\nguestagent_path = {}\n{}",
        broker.transport_url(),
        wrapper.display(),
        broker.management_section()
    ))
    .await
    .unwrap();
    let module = create_module(&stack, "sent-again", "prepared twice").await;
    let id = create_instance(&stack, "lost-prepare", Some(&module)).await;

    // The prepare is in the guest's queue, confirmed, and create_instance acked: from here on
    // only the guest's queue holds it.
    let guest_queue = format!("{}guestagent.{id}", stack.prefix);
    let tm_queue = format!("{}taskmanager", stack.prefix);
    eventually(
        Duration::from_secs(30),
        "prepare waiting in the guest's queue",
        || async {
            let queues = broker.queues().ok()?;
            let count = |q: &str| queues.iter().find(|(n, _)| n == q).map(|(_, c)| *c);
            (count(&guest_queue) == Some(1) && count(&tm_queue) == Some(0)).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));

    // The broker dies, and comes back without the guest's queue (as a queue that was not durable,
    // or a reset node, would): that prepare is gone. The node listens before it has recovered its
    // durable queues, so the queue is deleted once it is back.
    broker.kill();
    broker.restart().expect("broker restart");
    let back = Instant::now();
    let recovered = eventually(
        Duration::from_secs(20),
        "the guest's queue recovered",
        || async {
            let queues = broker.queues().ok()?;
            queues.iter().any(|(n, _)| n == &guest_queue).then_some(())
        },
    )
    .await;
    if recovered.is_ok() {
        broker
            .ctl(&["delete_queue", &guest_queue])
            .expect("delete the guest's queue");
    }
    assert!(
        broker
            .queues()
            .unwrap()
            .iter()
            .all(|(n, _)| n != &guest_queue),
        "the guest's queue is gone"
    );
    std::fs::write(&go, b"").unwrap();

    // The guest starts, finds no prepare, heartbeats `new`; the taskmanager sends prepare again.
    let view = wait_status(&stack, &id, "ACTIVE", Duration::from_secs(60)).await;
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "ACTIVE {took:?} after the broker came back"
    );
    assert!(view.get("fault").is_none(), "{view}");
    let log = taskmanager_log(&stack);
    assert!(
        log.contains("sending prepare again") && log.contains("prepare sent again"),
        "the taskmanager re-sent prepare:\n{}",
        stack.logs()
    );
    // The prepare sent again carried the module, contents included: the guest applied it.
    let mut conn = stack.db.conn();
    let applied: i64 = {
        use diesel::ExpressionMethods as _;
        use trove_common::db::schema::guest_module_results as r;
        r::table
            .filter(r::instance_id.eq(&id))
            .filter(r::module_id.eq(&module))
            .filter(r::status.eq("OK"))
            .count()
            .get_result(&mut conn)
            .unwrap()
    };
    assert_eq!(applied, 1, "the module of prepare applied");
    for line in log
        .lines()
        .filter(|l| l.contains("prepare again") || l.contains("sent again"))
    {
        eprintln!("taskmanager: {line}");
    }
    eprintln!("ACTIVE {took:?} after the broker came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_starts_ends_in_error_with_a_fault_and_can_be_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    // `exit`: the guest agent exits at once. `hang`: it runs but never reports (no exec, so its
    // command line keeps naming guest.conf and the taskmanager counts it as running).
    let mode = tmp.path().join("mode");
    let guest = script(
        &tmp.path().join("broken-guestagent"),
        &format!(
            "if [ \"$(cat '{mode}')\" = exit ]; then echo 'cannot start' >&2; exit 1; fi\n\
             trap 'kill $! 2>/dev/null; exit 0' TERM\nsleep 600 & wait",
            mode = mode.display()
        ),
    );
    // No outage here: the machine's broker, with a prefix of the stack's own.
    let stack = ProcessStack::start_with(&format!(
        "[DEFAULT]\nguest_start_timeout = 5\n\n[compute]\nguestagent_path = {}\n",
        guest.display()
    ))
    .await
    .unwrap();

    std::fs::write(&mode, "exit").unwrap();
    let exits = create_instance(&stack, "exits-at-once", None).await;
    let view = wait_status(&stack, &exits, "ERROR", Duration::from_secs(20)).await;
    let fault = &view["fault"];
    assert!(
        fault["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Error creating the guest")),
        "{view}"
    );
    assert!(
        fault["details"].as_str().is_some_and(|d| !d.is_empty()),
        "{view}"
    );

    std::fs::write(&mode, "hang").unwrap();
    let created = Instant::now();
    let hangs = create_instance(&stack, "never-reports", None).await;
    let view = wait_status(&stack, &hangs, "ERROR", Duration::from_secs(30)).await;
    let took = created.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "not before guest_start_timeout: {took:?}"
    );
    let fault = &view["fault"];
    assert_eq!(fault["message"], "The guest agent did not start.", "{view}");
    assert!(
        fault["details"]
            .as_str()
            .is_some_and(|d| d.contains("guest_start_timeout (5 s)")),
        "{view}"
    );

    for id in [&exits, &hangs] {
        delete_and_wait_gone(&stack, id).await;
    }
    assert!(
        !stack.state_path().join(&hangs).exists(),
        "the delete removed the guest's state"
    );
    eprintln!("never-reports ERROR after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_rebuilt_from_the_database_is_the_one_create_sent() {
    let mut stack = ProcessStack::start().await.unwrap();
    let module = create_module(&stack, "rebuilt", "v1").await;
    // No taskmanager: create_instance stays in its queue, where the test reads it.
    stack.kill_taskmanager();
    let id = create_instance(&stack, "rebuilt", Some(&module)).await;

    let mut settings = Settings::default();
    settings.default.transport_url = trove_tests::transport_url();
    let conn = lapin::Connection::connect(
        &trove_common::amqp::amqp_uri(&settings.default.transport_url),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("broker");
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{}taskmanager", stack.prefix);
    let body = eventually(
        Duration::from_secs(20),
        "create_instance queued",
        || async {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .ok()??;
            Some(got.delivery.data.clone())
        },
    )
    .await
    .unwrap();
    let keys = trove_common::rpc::keys::taskmanager_keyring(&settings);
    let (_, msg) = trove_taskmanager::dispatch::decode(&body, keys.as_ref()).unwrap();
    let TaskManagerMsg::CreateInstance(sent) = msg else {
        panic!("not create_instance: {msg:?}")
    };
    assert_eq!(sent.instance_id, id);
    assert_eq!(sent.modules.len(), 1);

    let rebuild = |settings: &Settings| {
        use trove_common::db::schema::instances;
        let mut c = stack.db.conn();
        let inst: Instance = instances::table
            .find(&id)
            .select(<Instance as diesel::SelectableHelper<_>>::as_select())
            .first(&mut c)
            .unwrap();
        create_args_from_rows(&mut c, settings, &inst)
            .unwrap()
            .expect("the version exists")
    };
    let rebuilt = rebuild(&settings);
    // The whole message, module contents included, and so the prepare built from it.
    assert_eq!(rebuilt.msg, *sent);
    assert_eq!(rebuilt.memory_mb, sent.flavor.ram);
    assert!(rebuilt.changed_modules.is_empty());
    let manager = &sent.datastore_manager;
    assert_eq!(
        prepare_args(&rebuilt.msg, rebuilt.memory_mb, manager),
        prepare_args(&sent, sent.flavor.ram, manager)
    );

    // The module updated since (live update): the module as it is now, to be recorded once sent.
    let contents = base64::engine::general_purpose::STANDARD.encode("message=v2\n");
    let (status, v) = api(
        &stack,
        Method::PUT,
        &format!("/modules/{module}"),
        Some(json!({"module": {"contents": contents}})),
    )
    .await;
    assert_eq!(status, 200, "module update: {v}");
    let md5 = v["module"]["md5"].as_str().unwrap().to_owned();
    let rebuilt = rebuild(&settings);
    assert_eq!(rebuilt.changed_modules, [(module.clone(), md5.clone())]);
    let payload = &rebuilt.msg.modules[0].module;
    assert_eq!(
        (payload.md5.as_str(), payload.contents.as_deref()),
        (md5.as_str(), Some(contents.as_str()))
    );
}
