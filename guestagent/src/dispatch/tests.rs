//! Dispatch end to end without a broker: requests are encoded as the api and taskmanager encode them,
//! and a recording [`Transport`] captures the replies and the reports to the conductor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use serde_json::{json, Map};
use tokio_util::sync::CancellationToken;
use trove_common::config::Settings;
use trove_common::crypto::Keyring;
use trove_common::rpc::{ReplyTo, Security};

use super::*;
use crate::agent::Transport;
use crate::state;

const GUEST: &str = "inst-1";
const KEY: &str = "instance-key-0123456789abcdefghij";

/// Records what the agent sends; casts can be made to fail.
#[derive(Default)]
struct Recorder {
    casts: Mutex<Vec<(String, Vec<u8>)>>,
    replies: Mutex<Vec<(String, Vec<u8>)>>,
    fail_casts: AtomicBool,
}

impl Transport for Recorder {
    fn cast<'a>(&'a self, topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), AmqpError>> {
        Box::pin(async move {
            if self.fail_casts.load(Ordering::SeqCst) {
                return Err(AmqpError::Unroutable(topic.to_owned()));
            }
            self.casts
                .lock()
                .unwrap()
                .push((topic.to_owned(), body.to_vec()));
            Ok(())
        })
    }

    fn reply<'a>(
        &'a self,
        reply_q: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), AmqpError>> {
        Box::pin(async move {
            self.replies
                .lock()
                .unwrap()
                .push((reply_q.to_owned(), body.to_vec()));
            Ok(())
        })
    }
}

struct Guest {
    _dir: tempfile::TempDir,
    settings: Settings,
    agent: Arc<Agent>,
    out: Arc<Recorder>,
    keys: Option<Keyring>,
}

/// A port nobody listens on now, for a test's own redis-server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for Guest {
    /// The test's redis-server must not outlive it.
    fn drop(&mut self) {
        let pid_file = self.settings.guest.state_dir.join("datastore/server.pid");
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Guest {
    /// A mysql guest that is never prepared here (module and RPC tests).
    fn new(secure: bool) -> Self {
        Self::with_manager(secure, "mysql")
    }

    /// A redis guest: `prepare` starts a real redis-server on a free port.
    fn redis(secure: bool) -> Self {
        Self::with_manager(secure, "redis")
    }

    fn with_manager(secure: bool, manager: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.amqp.prefix = "t1.".into();
        settings.guest.guest_id = GUEST.into();
        settings.guest.datastore_manager = manager.into();
        settings.guest.port = free_port();
        settings.guest.server_start_timeout = 20;
        settings.guest.state_dir = dir.path().join("guest");
        settings.default.enable_secure_rpc_messaging = secure;
        settings.guest.instance_rpc_encr_key = Some(KEY.into());
        let out = Arc::new(Recorder::default());
        let agent = Arc::new(Agent::new(&settings, out.clone(), CancellationToken::new()).unwrap());
        let keys = secure.then(|| rpc::rpc_keyring(KEY));
        Self {
            _dir: dir,
            settings,
            agent,
            out,
            keys,
        }
    }

    /// The same guest, restarted (a new process on the same state directory).
    fn restart(&self) -> Arc<Agent> {
        Arc::new(Agent::new(&self.settings, self.out.clone(), CancellationToken::new()).unwrap())
    }

    fn security(&self) -> Security {
        self.keys
            .clone()
            .map(Security::Secure)
            .unwrap_or(Security::Plain)
    }

    fn encode(&self, method: &str, args: Value, ctx: &RpcContext, call: bool) -> Vec<u8> {
        let Value::Object(args) = args else {
            panic!("args must be an object")
        };
        let reply = call.then(|| ReplyTo {
            msg_id: format!("msg-{method}"),
            reply_q: "reply_test".into(),
        });
        rpc::encode_request(method, args, ctx, "1.0", reply.as_ref(), &self.security())
    }

    async fn call_as(
        &self,
        method: &str,
        args: Value,
        ctx: &RpcContext,
    ) -> Result<Value, RemoteError> {
        let before = self.out.replies.lock().unwrap().len();
        let outcome =
            handle_message(self.agent.clone(), &self.encode(method, args, ctx, true)).await;
        assert!(matches!(outcome, Outcome::Ack), "{outcome:?}");
        let replies = self.out.replies.lock().unwrap();
        assert_eq!(replies.len(), before + 1, "exactly one reply");
        let (queue, body) = &replies[before];
        assert_eq!(queue, "reply_test");
        let reply = rpc::decode_reply(body, self.keys.as_ref()).unwrap();
        assert_eq!(reply.msg_id, format!("msg-{method}"));
        reply.result
    }

    async fn call(&self, method: &str, args: Value) -> Result<Value, RemoteError> {
        self.call_as(method, args, &admin()).await
    }

    async fn cast(&self, method: &str, args: Value) -> Outcome {
        handle_message(
            self.agent.clone(),
            &self.encode(method, args, &admin(), false),
        )
        .await
    }

    /// Every report sent to the conductor so far, decoded as the conductor decodes them.
    fn reports(&self) -> Vec<ConductorMsg> {
        self.out
            .casts
            .lock()
            .unwrap()
            .iter()
            .map(|(topic, body)| {
                assert_eq!(topic, "t1.trove-conductor");
                let mut req = rpc::decode_request(body, self.keys.as_ref()).unwrap();
                rpc::take_message(&mut req).unwrap()
            })
            .collect()
    }

    fn heartbeats(&self) -> Vec<String> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r {
                ConductorMsg::Heartbeat(beat) => {
                    assert_eq!(beat.instance_id, GUEST);
                    Some(beat.payload.service_status)
                }
                _ => None,
            })
            .collect()
    }

    fn module_reports(&self) -> Vec<(Vec<ModuleResult>, Option<String>, Option<String>)> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r {
                ConductorMsg::ModuleResults(report) => {
                    assert_eq!(report.instance_id, GUEST);
                    Some((report.results, report.job_id, report.error))
                }
                _ => None,
            })
            .collect()
    }
}

fn admin() -> RpcContext {
    RpcContext {
        is_admin: true,
        request_id: "req-test".into(),
        ..Default::default()
    }
}

fn module(id: &str, contents: &str) -> Value {
    json!({"module": {
        "id": id, "name": format!("mod-{id}"), "type": "ping", "md5": format!("md5-{id}"),
        "datastore": "all", "datastore_version": "all", "tenant": "all",
        "contents": BASE64.encode(contents),
    }})
}

#[tokio::test]
async fn rpc_ping_answers_true() {
    for secure in [false, true] {
        let g = Guest::new(secure);
        assert_eq!(g.call("rpc_ping", json!({})).await.unwrap(), json!(true));
    }
}

#[tokio::test]
async fn duplicate_messages_are_dropped() {
    let g = Guest::new(false);
    let body = g.encode("rpc_ping", json!({}), &admin(), true);
    assert!(matches!(
        handle_message(g.agent.clone(), &body).await,
        Outcome::Ack
    ));
    assert!(matches!(
        handle_message(g.agent.clone(), &body).await,
        Outcome::Ack
    ));
    assert_eq!(g.out.replies.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn module_apply_list_and_remove() {
    let g = Guest::new(true);
    let results = g
        .call(
            "module_apply",
            json!({"modules": [module("m1", "message=Module.V1")]}),
        )
        .await
        .unwrap();
    assert_eq!(results[0]["id"], "m1");
    assert_eq!(results[0]["status"], "OK");
    assert_eq!(results[0]["message"], "Module.V1");
    assert_eq!(results[0]["contents"], Value::Null);

    let listed = g
        .call("module_list", json!({"include_contents": true}))
        .await
        .unwrap();
    assert_eq!(listed[0]["contents"], BASE64.encode("message=Module.V1"));

    let entry = module("m1", "");
    assert_eq!(
        g.call("module_remove", json!({"module": entry}))
            .await
            .unwrap(),
        Value::Null
    );
    assert_eq!(
        g.call("module_list", json!({"include_contents": false}))
            .await
            .unwrap(),
        json!([])
    );
    // A call replies; it never reports to the conductor.
    assert!(g.module_reports().is_empty());
}

#[tokio::test]
async fn removing_a_module_never_applied_is_not_found() {
    let g = Guest::new(false);
    let err = g
        .call("module_remove", json!({"module": module("nope", "")}))
        .await
        .unwrap_err();
    assert_eq!(err.class, "NotFound");
    assert_eq!(err.module, "trove.common.exception");
    assert_eq!(err.message, "Module 'mod-nope' has not been applied");
}

#[tokio::test]
async fn a_failed_check_fails_the_call_with_the_managers_message() {
    let g = Guest::new(false);
    let mut bad = module("m1", "message=x");
    bad["module"]["datastore"] = json!("redis");
    let err = g
        .call("module_apply", json!({"modules": [bad]}))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "The module is invalid: Module not valid for datastore mysql"
    );
    assert_eq!(err.class, "ModuleInvalid");
}

#[tokio::test]
async fn module_list_uses_the_callers_is_admin() {
    let g = Guest::new(false);
    let mut hidden = module("hid", "message=x");
    hidden["module"]["visible"] = json!(false);
    let mut admin_only = module("adm", "message=secret");
    admin_only["module"]["is_admin"] = json!(true);
    g.call("module_apply", json!({"modules": [hidden, admin_only]}))
        .await
        .unwrap();

    let user = RpcContext {
        is_admin: false,
        request_id: "req-user".into(),
        ..Default::default()
    };
    let listed = g
        .call_as("module_list", json!({"include_contents": true}), &user)
        .await
        .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the hidden module is not shown to a non-admin"
    );
    assert_eq!(listed[0]["id"], "adm");
    assert_eq!(
        listed[0]["contents"],
        BASE64.encode("Must be admin to retrieve contents for module mod-adm")
    );

    let listed = g
        .call("module_list", json!({"include_contents": false}))
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn prepare_reports_building_then_running_then_applies_modules() {
    let g = Guest::redis(true);
    let args = json!({
        "memory_mb": 512, "root_password": "rootpw", "users": [{"_name": "u", "_password": "pw"}],
        "modules": [module("m1", "message=hello"), module("m2", "no message here")],
    });
    assert!(matches!(
        g.cast("prepare", args.clone()).await,
        Outcome::Ack
    ));
    assert_eq!(g.heartbeats(), ["building", "running"]);
    let reports = g.module_reports();
    assert_eq!(reports.len(), 1);
    let (results, job_id, error) = &reports[0];
    assert_eq!((job_id, error), (&None, &None));
    let statuses: Vec<_> = results
        .iter()
        .map(|r| (r.id.as_str(), r.status.as_deref()))
        .collect();
    assert_eq!(statuses, [("m1", Some("OK")), ("m2", Some("ERROR"))]);
    // The heartbeat came before the modules were applied.
    assert!(matches!(g.reports()[1], ConductorMsg::Heartbeat(_)));

    let record = state::load(&g.agent.state_dir.join(state::STATE_FILE)).unwrap();
    assert!(record.prepared);
    assert_eq!(record.service_status.as_deref(), Some("running"));
    let config = std::fs::read_to_string(g.agent.state_dir.join("datastore/redis.json")).unwrap();
    assert!(config.contains("\"memory_mb\": 512"));
    assert!(
        !config.contains("rootpw") && !config.contains("\"pw\""),
        "{config}"
    );

    // Again (a redelivery after a restart): only the status is reported.
    let agent = g.restart();
    let again = g.encode("prepare", args, &admin(), false);
    assert!(matches!(handle_message(agent, &again).await, Outcome::Ack));
    assert_eq!(g.heartbeats(), ["building", "running", "running"]);
    assert_eq!(g.module_reports().len(), 1);
}

#[tokio::test]
async fn reports_to_the_conductor_are_tagged_with_the_guest_id() {
    let g = Guest::redis(true);
    g.cast("prepare", json!({"memory_mb": 1})).await;
    let casts = g.out.casts.lock().unwrap();
    for (_, body) in casts.iter() {
        assert_eq!(
            rpc::Envelope::parse(body).unwrap().guest_instance_id(),
            Some(GUEST)
        );
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains("building") && !text.contains("running"),
            "{text}"
        );
    }
    let req = rpc::decode_request(&casts[0].1, g.keys.as_ref()).unwrap();
    assert_eq!(
        req.context.request_id, "req-test",
        "reports carry the request id being handled"
    );
}

#[tokio::test]
async fn a_cluster_member_waits_in_instance_ready() {
    let g = Guest::redis(false);
    g.cast(
        "prepare",
        json!({"memory_mb": 1, "cluster_config": {"id": "c1", "instance_type": "member"}}),
    )
    .await;
    assert_eq!(g.heartbeats(), ["building", "instance ready"]);
    // A cluster of one: every slot on this node, twice (the second call finds them all owned).
    for _ in 0..2 {
        assert_eq!(
            g.call(
                "cluster_addslots",
                json!({"first_slot": 0, "last_slot": 16383})
            )
            .await
            .unwrap(),
            Value::Null
        );
    }
    assert_eq!(
        g.call("cluster_complete", json!({})).await.unwrap(),
        Value::Null
    );
    assert_eq!(g.heartbeats(), ["building", "instance ready", "running"]);
    assert_eq!(
        g.agent.state().await.service_status.as_deref(),
        Some("running")
    );
}

#[tokio::test]
async fn a_bad_datastore_manager_fails_to_spawn() {
    let mut g = Guest::new(false);
    g.settings.guest.datastore_manager = "../x".into();
    g.agent = g.restart();
    g.cast("prepare", json!({"memory_mb": 1})).await;
    assert_eq!(g.heartbeats(), ["building", "failed to spawn"]);
    assert!(!g.agent.state().await.prepared);
}

#[tokio::test]
async fn reapply_jobs_report_to_the_conductor() {
    let g = Guest::new(false);
    let outcome = g
        .cast(
            "module_apply",
            json!({"modules": [module("m1", "message=x")], "job_id": "job-1"}),
        )
        .await;
    assert!(matches!(outcome, Outcome::Ack));
    let mut bad = module("m2", "message=x");
    bad["module"]["type"] = json!("nosuch");
    let outcome = g
        .cast("module_apply", json!({"modules": [bad], "job_id": "job-2"}))
        .await;
    assert!(
        matches!(outcome, Outcome::Ack),
        "a failed apply is reported, not retried"
    );
    let reports = g.module_reports();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].0[0].status.as_deref(), Some("OK"));
    assert_eq!(
        (reports[0].1.as_deref(), reports[0].2.as_deref()),
        (Some("job-1"), None)
    );
    assert!(reports[1].0.is_empty());
    assert_eq!(reports[1].1.as_deref(), Some("job-2"));
    assert_eq!(
        reports[1].2.as_deref(),
        Some("No driver implemented for module type 'nosuch'")
    );
}

#[tokio::test]
async fn an_undelivered_report_is_retried_and_the_redelivery_handled() {
    let g = Guest::new(false);
    let body = g.encode(
        "module_apply",
        json!({"modules": [module("m1", "message=x")], "job_id": "j"}),
        &admin(),
        false,
    );
    g.out.fail_casts.store(true, Ordering::SeqCst);
    assert!(matches!(
        handle_message(g.agent.clone(), &body).await,
        Outcome::Retry(_)
    ));
    g.out.fail_casts.store(false, Ordering::SeqCst);
    assert!(matches!(
        handle_message(g.agent.clone(), &body).await,
        Outcome::Ack
    ));
    assert_eq!(g.module_reports().len(), 1);
}

#[tokio::test]
async fn undecodable_messages_are_dead_lettered() {
    let g = Guest::new(true);
    assert!(matches!(
        handle_message(g.agent.clone(), b"not json").await,
        Outcome::DeadLetter(_)
    ));
    // Sealed with another key: rejected, never read as plain text.
    let mut args = Map::new();
    args.insert("modules".into(), json!([]));
    let forged = rpc::encode_request(
        "module_apply",
        args,
        &admin(),
        "1.0",
        None,
        &Security::Secure(rpc::rpc_keyring("other")),
    );
    assert!(matches!(
        handle_message(g.agent.clone(), &forged).await,
        Outcome::DeadLetter(_)
    ));
    assert!(g.out.replies.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_method_call_gets_an_error_reply_and_is_dead_lettered() {
    let g = Guest::new(false);
    let body = g.encode("resize_fs", json!({}), &admin(), true);
    assert!(matches!(
        handle_message(g.agent.clone(), &body).await,
        Outcome::DeadLetter(_)
    ));
    let replies = g.out.replies.lock().unwrap();
    let err = rpc::decode_reply(&replies[0].1, None)
        .unwrap()
        .result
        .unwrap_err();
    assert_eq!(err.class, "NoSuchMethod");
}

#[tokio::test]
async fn bad_arguments_are_not_echoed() {
    let g = Guest::new(false);
    let body = g.encode(
        "module_list",
        json!({"include_contents": "c2VjcmV0"}),
        &admin(),
        true,
    );
    let Outcome::DeadLetter(why) = handle_message(g.agent.clone(), &body).await else {
        panic!("not dead-lettered")
    };
    assert!(!why.contains("c2VjcmV0"), "{why}");
    let replies = g.out.replies.lock().unwrap();
    let err = rpc::decode_reply(&replies[0].1, None)
        .unwrap()
        .result
        .unwrap_err();
    assert_eq!(err.class, "TypeError");
    assert!(!err.message.contains("c2VjcmV0"), "{}", err.message);
}

#[tokio::test]
async fn stop_db_reports_shutdown_and_delete_queue_stops() {
    let g = Guest::redis(false);
    g.cast("prepare", json!({"memory_mb": 1})).await;
    let ds = g.agent.datastore().unwrap().clone();
    let pid = ds.server().pid().expect("prepare started redis-server");
    assert!(matches!(g.cast("stop_db", json!({})).await, Outcome::Ack));
    assert!(!ds.server().is_running());
    assert!(
        !crate::datastore::server::is_server_process(pid, &ds.server().spec().work_dir),
        "stop_db stops the server process"
    );
    assert!(g.agent.state().await.server_stopped);
    assert_eq!(g.heartbeats().last().map(String::as_str), Some("shutdown"));
    assert_eq!(
        g.restart().state().await.service_status.as_deref(),
        Some("shutdown")
    );

    assert!(!g.agent.stop_token().is_cancelled());
    assert!(matches!(
        g.cast("delete_queue", json!({})).await,
        Outcome::Ack
    ));
    assert!(g.agent.stop_token().is_cancelled());
}

#[tokio::test]
async fn filesystem_stats_have_trove_keys() {
    let g = Guest::new(false);
    let stats = g
        .call("get_filesystem_stats", json!({"fs_path": null}))
        .await
        .unwrap();
    for key in [
        "used",
        "total",
        "free",
        "block_size",
        "total_blocks",
        "free_blocks",
    ] {
        assert!(stats.get(key).is_some(), "{key} missing: {stats}");
    }
}

#[tokio::test(start_paused = true)]
async fn periodic_heartbeats_say_new_until_there_is_a_status() {
    let g = Guest::new(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(crate::agent::run_heartbeats(
        g.agent.clone(),
        std::time::Duration::from_secs(30),
        stop.clone(),
    ));
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    // Up but never prepared: the taskmanager reads `new` as "prepare did not arrive".
    assert_eq!(g.heartbeats(), ["new", "new", "new"]);
    g.agent
        .set_status(ServiceStatus::Running, Some(true), &admin())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        g.heartbeats(),
        ["new", "new", "new", "running", "running", "running"]
    );
}

#[tokio::test]
async fn a_prepare_while_one_runs_is_ignored_and_one_after_only_reports() {
    let g = Guest::redis(false);
    let args = json!({"memory_mb": 64, "modules": [module("m1", "message=hello")]});
    // The taskmanager's re-send arriving while the first prepare still runs.
    let first = g.encode("prepare", args.clone(), &admin(), false);
    let second = g.encode("prepare", args.clone(), &admin(), false);
    let (a, b) = tokio::join!(
        handle_message(g.agent.clone(), &first),
        handle_message(g.agent.clone(), &second)
    );
    assert!(matches!((a, b), (Outcome::Ack, Outcome::Ack)));
    assert_eq!(g.heartbeats(), ["building", "running"]);
    assert_eq!(g.module_reports().len(), 1, "the modules were applied once");
    let pid = g.agent.datastore().unwrap().server().pid();
    // One more after it: the status again, nothing set up again.
    assert!(matches!(g.cast("prepare", args).await, Outcome::Ack));
    assert_eq!(g.heartbeats(), ["building", "running", "running"]);
    assert_eq!(g.module_reports().len(), 1);
    assert_eq!(g.agent.datastore().unwrap().server().pid(), pid);
}

#[tokio::test]
async fn a_prepare_interrupted_by_a_restart_is_new_again_and_runs_again() {
    let g = Guest::redis(false);
    // The guest was killed while it prepared: `building`, not prepared.
    let path = g.agent.state_dir.join(state::STATE_FILE);
    state::save(
        &path,
        &state::GuestState::default().with_status(ServiceStatus::Building, 1.0),
    )
    .unwrap();
    let agent = g.restart();
    agent.report_status(&admin()).await;
    assert_eq!(g.heartbeats(), ["new"]);
    let again = g.encode("prepare", json!({"memory_mb": 64}), &admin(), false);
    assert!(matches!(
        handle_message(agent.clone(), &again).await,
        Outcome::Ack
    ));
    assert_eq!(g.heartbeats(), ["new", "building", "running"]);
    assert!(agent.state().await.prepared);
    // A prepare that failed is not an interrupted one: its status stays.
    let failed = state::GuestState::default().with_status(ServiceStatus::Failed, 2.0);
    assert!(!crate::agent::interrupted_prepare(&failed));
    let done = state::GuestState {
        prepared: true,
        ..state::GuestState::default().with_status(ServiceStatus::Building, 3.0)
    };
    assert!(!crate::agent::interrupted_prepare(&done));
}

#[test]
fn settle_decisions() {
    let to = ReplyTo {
        msg_id: "m".into(),
        reply_q: "q".into(),
    };
    let ok: HandlerResult = Ok(json!(true));
    let not_found: HandlerResult = Err(ApplyError::NotApplied { name: "x".into() }.into());
    let broker: HandlerResult = Err(AmqpError::Unroutable("c".into()).into());
    let other: HandlerResult = Err(anyhow::anyhow!("disk full").into());

    assert!(matches!(settle(Some(&to), &ok), Settle::Reply(_, Ok(v)) if v == json!(true)));
    match settle(Some(&to), &not_found) {
        Settle::Reply(r, Err(e)) => {
            assert_eq!(r, to);
            assert_eq!(
                (e.class.as_str(), e.message.as_str()),
                ("NotFound", "Module 'x' has not been applied")
            );
        }
        other => panic!("{other:?}"),
    }
    match settle(Some(&to), &other) {
        Settle::Reply(_, Err(e)) => assert_eq!(
            (e.class.as_str(), e.message.as_str()),
            ("GuestError", "disk full")
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(settle(Some(&to), &broker), Settle::Retry(_)));
    assert!(matches!(settle(None, &broker), Settle::Retry(_)));
    assert!(matches!(settle(None, &ok), Settle::Ack));
    assert!(matches!(settle(None, &other), Settle::Ack));
}

#[test]
fn final_status_depends_on_cluster_config() {
    assert_eq!(final_status(&Prepare::default()), ServiceStatus::Running);
    let member = Prepare {
        cluster_config: Some(json!({"id": "c1"})),
        ..Default::default()
    };
    assert_eq!(final_status(&member), ServiceStatus::InstanceReady);
}

#[test]
fn quoted_values_are_redacted() {
    assert_eq!(
        redact_quoted(r#"invalid type: string "c2VjcmV0", expected a boolean"#),
        r#"invalid type: string "…", expected a boolean"#
    );
    assert_eq!(redact_quoted("missing field `md5`"), "missing field `md5`");
    assert_eq!(redact_quoted(r#"unterminated "secret"#), "unterminated ");
}

#[tokio::test]
async fn a_mysql_guest_runs_mariadb_with_its_databases_users_and_root() {
    let mut g = Guest::new(false);
    g.settings.guest.template_dir = g._dir.path().join("templates");
    g.agent = g.restart();
    let args = json!({
        "memory_mb": 512,
        "databases": [{"_name": "db1", "_character_set": "utf8", "_collate": "utf8_general_ci"}],
        "users": [{"_name": "bob", "_host": "%", "_password": "bobpw", "_databases": [{"_name": "db1"}]}],
    });
    assert!(matches!(g.cast("prepare", args).await, Outcome::Ack));
    assert_eq!(g.heartbeats(), ["building", "running"], "{:?}", g.reports());
    assert!(
        !g.agent.state_dir.join("init.sql").exists(),
        "the init file with the passwords is gone once the server answers"
    );

    let dbs = g.call("list_databases", json!({})).await.unwrap();
    assert_eq!(dbs[0][0]["_name"], "db1", "{dbs}");
    assert_eq!(
        dbs[0].as_array().unwrap().len(),
        1,
        "system schemas are hidden: {dbs}"
    );
    g.call("create_database", json!({"databases": [{"_name": "db2"}]}))
        .await
        .unwrap();
    let page = g.call("list_databases", json!({"limit": 1})).await.unwrap();
    assert_eq!(
        page,
        json!([[{"_name": "db1", "_character_set": "utf8mb3", "_collate": "utf8mb3_general_ci"}], "db1"])
    );

    let users = g.call("list_users", json!({})).await.unwrap();
    assert_eq!(
        users[0],
        json!([{"_name": "bob", "_host": "%", "_databases": [{"_name": "db1"}]}])
    );
    let dup = g
        .call(
            "create_user",
            json!({"users": [{"_name": "bob", "_host": "%", "_password": "x"}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(dup.class, "BadRequest", "{dup:?}");

    assert_eq!(
        g.call("is_root_enabled", json!({})).await.unwrap(),
        json!(false)
    );
    let root = g
        .call(
            "enable_root_with_password",
            json!({"root_password": "r00t"}),
        )
        .await
        .unwrap();
    assert_eq!(root["_name"], "root");
    assert_eq!(root["_password"], "r00t");
    assert_eq!(
        g.call("is_root_enabled", json!({})).await.unwrap(),
        json!(true)
    );

    g.call(
        "delete_user",
        json!({"user": {"_name": "bob", "_host": "%"}}),
    )
    .await
    .unwrap();
    let users = g.call("list_users", json!({})).await.unwrap();
    assert_eq!(users, json!([[], null]));

    // restart: down, then up again with its data.
    let ds = g.agent.datastore().unwrap().clone();
    let before = ds.server().pid().unwrap();
    assert_eq!(g.call("restart", json!({})).await.unwrap(), Value::Null);
    assert_ne!(ds.server().pid().unwrap(), before);
    let dbs = g.call("list_databases", json!({})).await.unwrap();
    assert_eq!(dbs[0].as_array().unwrap().len(), 2, "{dbs}");
    assert_eq!(g.heartbeats().last().map(String::as_str), Some("running"));
    ds.stop().await.unwrap();
}

#[tokio::test]
async fn the_monitor_restarts_a_server_that_died_and_reports_it() {
    let g = Guest::redis(false);
    g.cast("prepare", json!({"memory_mb": 1})).await;
    let ds = g.agent.datastore().unwrap().clone();
    let first = ds.server().pid().unwrap();
    let stop = CancellationToken::new();
    let monitor = tokio::spawn(crate::health::run(
        g.agent.clone(),
        std::time::Duration::from_millis(100),
        std::time::Duration::from_millis(300),
        stop.clone(),
    ));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let beats = g.heartbeats();
        if beats.ends_with(&["crashed".to_owned(), "running".to_owned()]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no crash and recovery: {beats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let second = ds.server().pid().expect("started again");
    assert_ne!(first, second);
    stop.cancel();
    monitor.await.unwrap();

    // A guest started on the same state directory (the old one was killed) adopts the server.
    let again = g.restart();
    let ds2 = again.datastore().unwrap().clone();
    ds2.start().await.unwrap();
    assert_eq!(ds2.server().pid(), Some(second));
    assert!(ds2.server().is_adopted());
    ds2.stop().await.unwrap();
}
