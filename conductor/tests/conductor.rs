//! The conductor's rules (`batch::apply_batch`, the one path every message takes) and the dispatcher
//! against a real PostgreSQL: one fresh database per test, migrated, and dropped at the end (even when
//! the test fails).

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{Broker, Outcome};
use trove_common::config::{DatabaseSection, Settings};
use trove_common::db::models::{
    GuestModuleResult, Instance, ReapplyItem, ReapplyJob, ServiceStatusRow,
};
use trove_common::db::schema::{instance_modules, reapply_job_items, service_statuses};
use trove_common::db::DbError;
use trove_common::rpc::conductor::{ConductorMsg, Heartbeat, ModuleResults, NotifyExcInfo};
use trove_common::rpc::guest::ModuleResult;
use trove_common::rpc::keys::seal_instance_key;
use trove_common::rpc::{encode_request, rpc_keyring, RpcContext, Security};
use trove_common::status::{InstanceTask, ServiceStatus};
use trove_conductor::batch::apply_batch;
use trove_conductor::handlers::{self, Applied, HeartbeatOutcome, ModuleResultsOutcome};
use trove_conductor::Dispatcher;
use trove_tests::PooledTestDb;

const INSTANCE_KEY: &str = "abcdefghijklmnopqrstuvwxyz012345";

/// A migrated database of its own, dropped at the end (even when the test fails).
async fn test_db() -> PooledTestDb {
    let cfg = DatabaseSection {
        pool_timeout: 10,
        ..DatabaseSection::default()
    };
    PooledTestDb::new(&cfg).await
}

/// A datastore, a version, a module and a live instance (NEW) with an RPC key. Returns the instance id.
fn seed(conn: &mut PgConnection, settings: &Settings) -> QueryResult<String> {
    diesel::sql_query("INSERT INTO datastores (id, name) VALUES ('ds1', 'redis')").execute(conn)?;
    diesel::sql_query(
        "INSERT INTO datastore_versions (id, datastore_id, name, manager) VALUES ('v1', 'ds1', '3.2.6', 'redis')",
    )
    .execute(conn)?;
    diesel::sql_query(
        "INSERT INTO modules (id, name, type, contents, md5, created, updated)
         VALUES ('m1', 'mod1', 'ping', 'x', '0123456789abcdef0123456789abcdef', now(), now())",
    )
    .execute(conn)?;
    let id = uuid::Uuid::new_v4().to_string();
    Instance::insert(
        conn,
        &Instance {
            server_status: Some("ACTIVE".into()),
            encrypted_key: seal_instance_key(settings, INSTANCE_KEY),
            ..trove_tests::instance_row(&id)
        },
    )?;
    Ok(id)
}

/// A running reapply job for module m1 with one `sent` item for the instance.
fn seed_job(conn: &mut PgConnection, job_id: &str, instance_id: &str) -> QueryResult<()> {
    ReapplyJob::insert(
        conn,
        &ReapplyJob {
            id: job_id.into(),
            module_id: "m1".into(),
            tenant_id: "t1".into(),
            is_admin: true,
            md5: None,
            include_clustered: false,
            force: false,
            batch_size: 1,
            batch_delay: 0,
            state: "running".into(),
            current_md5: Some("0123456789abcdef0123456789abcdef".into()),
            total: 1,
            applied: 0,
            skipped: 0,
            failed: 0,
            next_batch_at: None,
            request_id: "req-1".into(),
            created: trove_common::db::now(),
            started: None,
            finished: None,
            batch_sent_at: None,
        },
    )?;
    diesel::insert_into(reapply_job_items::table)
        .values(ReapplyItem {
            job_id: job_id.into(),
            instance_id: instance_id.into(),
            seq: 0,
            state: "sent".into(),
            batch: Some(0),
            sent_at: Some(trove_common::db::now()),
            answered_at: None,
            status: None,
            message: None,
        })
        .execute(conn)
        .map(drop)
}

fn status_of(conn: &mut PgConnection, id: &str) -> QueryResult<ServiceStatusRow> {
    ServiceStatusRow::for_instance(conn, id).map(|r| r.expect("status row"))
}

fn result(module_id: &str, status: &str, message: &str, updated: &str) -> ModuleResult {
    ModuleResult {
        id: module_id.into(),
        name: format!("mod-{module_id}"),
        module_type: "ping".into(),
        datastore: "all".into(),
        datastore_version: "all".into(),
        tenant: "all".into(),
        md5: "0123456789abcdef0123456789abcdef".into(),
        status: Some(status.into()),
        message: Some(message.into()),
        created: Some("2026-11-26 10:00:00.00".into()),
        updated: Some(updated.into()),
        removed: None,
        auto_apply: false,
        visible: true,
        is_admin: false,
        contents: None,
    }
}

/// One message as a batch of one, outside a transaction, as the dispatcher applies a delivery alone.
async fn apply_one(t: &PooledTestDb, msg: ConductorMsg) -> Result<Applied, DbError> {
    t.db.run(move |c| {
        apply_batch(c, &[msg], &Default::default())
            .pop()
            .expect("one outcome")
            .map_err(DbError::from)
    })
    .await
}

async fn heartbeat(t: &PooledTestDb, id: &str, description: &str, sent: f64) -> HeartbeatOutcome {
    let msg = ConductorMsg::Heartbeat(Heartbeat::new(id, description, sent));
    match apply_one(t, msg).await.unwrap() {
        Applied::Heartbeat(outcome) => outcome,
        other => panic!("not a heartbeat outcome: {other:?}"),
    }
}

/// A `module_results` report as a batch of one.
async fn module_results(
    t: &PooledTestDb,
    id: String,
    results: Vec<ModuleResult>,
    sent: f64,
    job_id: Option<String>,
    error: Option<String>,
) -> Result<ModuleResultsOutcome, DbError> {
    let msg = ConductorMsg::ModuleResults(ModuleResults {
        job_id,
        error,
        ..ModuleResults::new(id, results, sent)
    });
    apply_one(t, msg).await.map(|applied| match applied {
        Applied::ModuleResults(outcome) => outcome,
        other => panic!("not a module_results outcome: {other:?}"),
    })
}

/// The instance's live fault: (message, details).
fn fault_of(conn: &mut PgConnection, id: &str) -> QueryResult<Option<(String, String)>> {
    use trove_common::db::schema::instance_faults;
    instance_faults::table
        .filter(instance_faults::instance_id.eq(id))
        .filter(diesel::dsl::not(instance_faults::deleted))
        .select((instance_faults::message, instance_faults::details))
        .first(conn)
        .optional()
}

#[tokio::test]
async fn notify_exc_info_records_the_fault_in_order_for_live_instances() {
    let t = test_db().await;
    let settings = Settings::default();
    let id = t.run(move |c| seed(c, &settings)).await;
    let msg = |message: &str, exception: &str, sent: f64| {
        ConductorMsg::NotifyExcInfo(NotifyExcInfo {
            instance_id: id.clone(),
            message: message.into(),
            exception: exception.into(),
            sent,
            serialized_notification: None,
        })
    };
    let apply = |m: ConductorMsg| {
        let t = &t;
        async move { apply_one(t, m).await.unwrap() }
    };
    assert_eq!(
        apply(msg("Failed to start redis-server.", "port in use", 10.0)).await,
        handlers::Applied::NotifyExcInfo(handlers::ExcInfoOutcome::Recorded)
    );
    let key = id.clone();
    assert_eq!(
        t.run(move |c| fault_of(c, &key)).await,
        Some(("Failed to start redis-server.".into(), "port in use".into()))
    );
    // An older report (redelivered, or overtaken) changes nothing.
    assert_eq!(
        apply(msg("older", "older", 9.0)).await,
        handlers::Applied::NotifyExcInfo(handlers::ExcInfoOutcome::Stale)
    );
    // A newer one replaces the fault; an over-long message is cut to the column.
    let long = "m".repeat(300);
    assert_eq!(
        apply(msg(&long, "again", 11.0)).await,
        handlers::Applied::NotifyExcInfo(handlers::ExcInfoOutcome::Recorded)
    );
    let key = id.clone();
    let (message, details) = t.run(move |c| fault_of(c, &key)).await.unwrap();
    assert_eq!((message.len(), details.as_str()), (255, "again"));
    // A deleted instance records nothing.
    let key = id.clone();
    t.run(move |c| Instance::mark_deleted(c, &key)).await;
    assert_eq!(
        apply(msg("late", "late", 12.0)).await,
        handlers::Applied::NotifyExcInfo(handlers::ExcInfoOutcome::InstanceGone)
    );
}

#[tokio::test]
async fn heartbeats_apply_in_order_and_keep_restart_required() {
    let t = test_db().await;
    let settings = Settings::default();
    let id = t.run(move |c| seed(c, &settings)).await;

    assert_eq!(
        heartbeat(&t, &id, "building", 10.0).await,
        HeartbeatOutcome::Applied(ServiceStatus::Building)
    );
    // Equal and older `sent` are dropped.
    assert_eq!(
        heartbeat(&t, &id, "running", 10.0).await,
        HeartbeatOutcome::Stale
    );
    assert_eq!(
        heartbeat(&t, &id, "running", 9.5).await,
        HeartbeatOutcome::Stale
    );
    let i = id.clone();
    assert_eq!(
        t.run(move |c| status_of(c, &i)).await.status(),
        Some(ServiceStatus::Building)
    );
    // Newer is applied.
    assert_eq!(
        heartbeat(&t, &id, "running", 10.000001).await,
        HeartbeatOutcome::Applied(ServiceStatus::Running)
    );
    let i = id.clone();
    let row = t.run(move |c| status_of(c, &i)).await;
    assert_eq!(
        (row.status(), row.status_description.as_str()),
        (Some(ServiceStatus::Running), "running")
    );
    // An unknown description changes nothing.
    assert_eq!(
        heartbeat(&t, &id, "on fire", 11.0).await,
        HeartbeatOutcome::UnknownStatus
    );
    let i = id.clone();
    assert_eq!(
        t.run(move |c| status_of(c, &i)).await.status(),
        Some(ServiceStatus::Running)
    );

    // RESTART_REQUIRED is kept; only updated_at moves.
    let i = id.clone();
    let old = chrono::NaiveDate::from_ymd_opt(2020, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    t.run(move |c| {
        ServiceStatusRow::set(c, &i, ServiceStatus::RestartRequired, true)?;
        diesel::update(service_statuses::table.filter(service_statuses::instance_id.eq(&i)))
            .set(service_statuses::updated_at.eq(old))
            .execute(c)
    })
    .await;
    assert_eq!(
        heartbeat(&t, &id, "running", 12.0).await,
        HeartbeatOutcome::KeptRestartRequired
    );
    let i = id.clone();
    let row = t.run(move |c| status_of(c, &i)).await;
    assert_eq!(row.status(), Some(ServiceStatus::RestartRequired));
    assert!(row.updated_at.unwrap() > old);

    // A deleted instance is ignored.
    let i = id.clone();
    t.run(move |c| Instance::mark_deleted(c, &i)).await;
    assert_eq!(
        heartbeat(&t, &id, "running", 13.0).await,
        HeartbeatOutcome::InstanceGone
    );
    // So is an unknown one.
    assert_eq!(
        heartbeat(&t, "no-such-instance", "running", 13.0).await,
        HeartbeatOutcome::InstanceGone
    );
}

#[tokio::test]
async fn module_results_are_stored_and_answer_job_items_once() {
    let t = test_db().await;
    let settings = Settings::default();
    let id = t.run(move |c| seed(c, &settings)).await;

    // Results of prepare (no job): ordered by `sent`.
    let prepare = vec![
        result("m1", "OK", "applied", "2026-11-26 10:00:01.00"),
        result("m2", "ERROR", "bad licence", "2026-11-26 10:00:01.00"),
    ];
    let out = module_results(&t, id.clone(), prepare.clone(), 5.0, None, None)
        .await
        .unwrap();
    assert_eq!(
        out,
        ModuleResultsOutcome::Stored {
            stored: 2,
            skipped: 0,
            item_answered: None
        }
    );
    let out = module_results(&t, id.clone(), prepare, 5.0, None, None)
        .await
        .unwrap();
    assert_eq!(out, ModuleResultsOutcome::Stale);
    let i = id.clone();
    let rows = t.run(move |c| GuestModuleResult::for_instance(c, &i)).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1].module_id.as_str(), rows[1].status.as_str()),
        ("m2", "ERROR")
    );
    assert_eq!(rows[1].message.as_deref(), Some("bad licence"));

    // A reapply answer: stored, and the item answered once.
    let i = id.clone();
    t.run(move |c| seed_job(c, "job1", &i)).await;
    let answer = vec![result("m1", "OK", "reapplied", "2026-11-26 10:05:00.00")];
    let out = module_results(
        &t,
        id.clone(),
        answer.clone(),
        1.0,
        Some("job1".into()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        ModuleResultsOutcome::Stored {
            stored: 1,
            skipped: 0,
            item_answered: Some(true)
        }
    );
    let i = id.clone();
    let item = t
        .run(move |c| ReapplyItem::find(c, "job1", &i))
        .await
        .unwrap();
    assert_eq!(item.state, "answered");
    assert_eq!(item.status.as_deref(), Some("OK"));
    assert_eq!(item.message.as_deref(), Some("reapplied"));
    let answered_at = item.answered_at.expect("answered_at set");

    // Redelivered: a no-op for the item (and an equal guest clock rewrites the same row).
    let out = module_results(&t, id.clone(), answer, 1.0, Some("job1".into()), None)
        .await
        .unwrap();
    assert_eq!(
        out,
        ModuleResultsOutcome::Stored {
            stored: 1,
            skipped: 0,
            item_answered: Some(false)
        }
    );
    let i = id.clone();
    let item = t
        .run(move |c| ReapplyItem::find(c, "job1", &i))
        .await
        .unwrap();
    assert_eq!(item.answered_at, Some(answered_at));

    // A late answer from an older apply neither rolls the stored result back nor counts.
    let stale = vec![result(
        "m1",
        "ERROR",
        "old failure",
        "2026-11-26 10:04:00.00",
    )];
    let out = module_results(&t, id.clone(), stale, 0.5, Some("job1".into()), None)
        .await
        .unwrap();
    assert_eq!(
        out,
        ModuleResultsOutcome::Stored {
            stored: 0,
            skipped: 1,
            item_answered: Some(false)
        }
    );
    let i = id.clone();
    let rows = t.run(move |c| GuestModuleResult::for_instance(c, &i)).await;
    assert_eq!(rows[0].message.as_deref(), Some("reapplied"));

    // An apply that failed as a whole answers FAILED with the error (the taskmanager does not record it).
    let i = id.clone();
    t.run(move |c| seed_job(c, "job2", &i)).await;
    let out = module_results(
        &t,
        id.clone(),
        Vec::new(),
        0.1,
        Some("job2".into()),
        Some("datastore not ready".into()),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        ModuleResultsOutcome::Stored {
            stored: 0,
            skipped: 0,
            item_answered: Some(true)
        }
    );
    let i = id.clone();
    let item = t
        .run(move |c| ReapplyItem::find(c, "job2", &i))
        .await
        .unwrap();
    assert_eq!(
        (item.status.as_deref(), item.message.as_deref()),
        (Some("FAILED"), Some("datastore not ready"))
    );

    // The conductor never writes instance_modules.
    let n: i64 = t
        .run(|c| instance_modules::table.count().get_result(c))
        .await;
    assert_eq!(n, 0);
}

fn heartbeat_args(instance_id: &str, status: &str, sent: f64) -> Map<String, Value> {
    let mut args = Map::new();
    args.insert("instance_id".into(), json!(instance_id));
    args.insert("payload".into(), json!({ "service_status": status }));
    args.insert("sent".into(), json!(sent));
    args
}

fn sealed_by(sealer: &str, key: &str, args: Map<String, Value>) -> Vec<u8> {
    let sec = Security::GuestToConductor {
        instance_id: sealer.into(),
        keys: rpc_keyring(key),
    };
    encode_request("heartbeat", args, &RpcContext::service(), "1.0", None, &sec)
}

#[tokio::test]
async fn dispatcher_authenticates_guests() {
    let t = test_db().await;
    let settings = Arc::new(Settings::default());
    let s = settings.clone();
    let id = t.run(move |c| seed(c, &s)).await;
    let d = Dispatcher::new(settings, t.db.clone());
    let current = |id: &str| {
        let id = id.to_owned();
        t.run(move |c| status_of(c, &id))
    };

    // A properly sealed heartbeat is applied and acked.
    let body = sealed_by(&id, INSTANCE_KEY, heartbeat_args(&id, "running", 1.0));
    assert!(matches!(d.dispatch(&body).await, Outcome::Ack));
    assert_eq!(current(&id).await.status(), Some(ServiceStatus::Running));
    // Redelivered: acked, nothing changes.
    assert!(matches!(d.dispatch(&body).await, Outcome::Ack));

    // The wrong key fails authentication.
    let forged = sealed_by(
        &id,
        "not-the-instance-key-0123456789ab",
        heartbeat_args(&id, "crashed", 2.0),
    );
    assert!(matches!(d.dispatch(&forged).await, Outcome::DeadLetter(_)));
    // A plain message for an instance that has a key.
    let plain = encode_request(
        "heartbeat",
        heartbeat_args(&id, "crashed", 3.0),
        &RpcContext::service(),
        "1.0",
        None,
        &Security::Plain,
    );
    assert!(matches!(d.dispatch(&plain).await, Outcome::DeadLetter(_)));
    // Sealed by the instance, speaking for another one.
    let other = sealed_by(
        &id,
        INSTANCE_KEY,
        heartbeat_args("some-other-instance", "crashed", 4.0),
    );
    assert!(matches!(d.dispatch(&other).await, Outcome::DeadLetter(_)));
    // Tagged with an unknown instance.
    let unknown = sealed_by(
        "no-such-instance",
        INSTANCE_KEY,
        heartbeat_args("no-such-instance", "running", 5.0),
    );
    assert!(matches!(d.dispatch(&unknown).await, Outcome::DeadLetter(_)));
    // Garbage and unknown methods.
    assert!(matches!(
        d.dispatch(b"not json").await,
        Outcome::DeadLetter(_)
    ));
    let sec = Security::GuestToConductor {
        instance_id: id.clone(),
        keys: rpc_keyring(INSTANCE_KEY),
    };
    let mut args = Map::new();
    args.insert("instance_id".into(), json!(id));
    let odd = encode_request(
        "self_destruct",
        args,
        &RpcContext::service(),
        "1.0",
        None,
        &sec,
    );
    assert!(matches!(d.dispatch(&odd).await, Outcome::DeadLetter(_)));
    assert_eq!(current(&id).await.status(), Some(ServiceStatus::Running));

    // Nothing above advanced the heartbeat clock: the next real heartbeat still applies.
    let body = sealed_by(&id, INSTANCE_KEY, heartbeat_args(&id, "healthy", 1.5));
    assert!(matches!(d.dispatch(&body).await, Outcome::Ack));
    assert_eq!(current(&id).await.status(), Some(ServiceStatus::Healthy));
}

/// Polls `check` until it holds, or fails the test after `secs` seconds ([`trove_tests::eventually`]).
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    trove_tests::eventually(Duration::from_secs(secs), what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn run_serves_the_queue_dead_letters_garbage_and_stops_on_cancel() {
    let t = test_db().await;
    let mut settings = Settings::default();
    settings.amqp.prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    settings.amqp.queue_expires_ms = 120_000;
    settings.amqp.reconnect_delay = 0.1;
    let settings = Arc::new(settings);
    let s = settings.clone();
    let id = t.run(move |c| seed(c, &s)).await;
    let broker = Broker::connect(&settings, Duration::from_secs(10))
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (guest/guest); start it with scripts/stack.sh");
    let names = broker.names().clone();
    // Declared up front (as the conductor will), so the casts below are routable at once.
    broker
        .declare_topic_queue(&names.conductor())
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(trove_conductor::run(
        settings.clone(),
        t.db.clone(),
        broker.clone(),
        shutdown.clone(),
    ));

    let body = sealed_by(&id, INSTANCE_KEY, heartbeat_args(&id, "running", 1.0));
    broker.cast(&names.conductor(), &body).await.unwrap();
    broker
        .cast(&names.conductor(), b"not an oslo envelope")
        .await
        .unwrap();
    eventually(10, "the heartbeat to be stored", || {
        let id = id.clone();
        let db = t.db.clone();
        async move {
            db.run(move |c| status_of(c, &id).map_err(DbError::from))
                .await
                .is_ok_and(|row| row.status() == Some(ServiceStatus::Running))
        }
    })
    .await;
    let ch = broker.channel().await.unwrap();
    let dlq = names.dead_letter_queue();
    eventually(10, "the garbage to reach the dead-letter queue", || {
        let (ch, dlq) = (ch.clone(), dlq.clone());
        async move {
            let opts = BasicGetOptions { no_ack: true };
            ch.basic_get(dlq.as_str().into(), opts)
                .await
                .unwrap()
                .is_some_and(|m| m.delivery.data == b"not an oslo envelope")
        }
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("run returns after cancel")
        .unwrap()
        .expect("run ends cleanly");

    for q in [names.conductor(), dlq] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [names.exchange(), names.dead_letter_exchange()] {
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    broker.close().await;
}

/// Another live instance like `template` (same datastore version), with `status` last updated
/// `age_secs` ago, in `task`, deleted or not. Returns its id.
fn instance_with(
    conn: &mut PgConnection,
    template: &str,
    task: InstanceTask,
    status: ServiceStatus,
    age_secs: i64,
    deleted: bool,
) -> QueryResult<String> {
    let mut inst = Instance::find_any(conn, template)?.expect("template instance");
    inst.id = uuid::Uuid::new_v4().to_string();
    inst.task_id = task.code();
    inst.task_description = task.description().into();
    inst.deleted = deleted;
    Instance::insert(conn, &inst)?;
    diesel::update(service_statuses::table.filter(service_statuses::instance_id.eq(&inst.id)))
        .set((
            service_statuses::status_id.eq(status.code()),
            service_statuses::status_description.eq(status.description()),
            service_statuses::updated_at
                .eq(trove_common::db::now() - chrono::Duration::seconds(age_secs)),
        ))
        .execute(conn)?;
    Ok(inst.id)
}

#[tokio::test]
async fn the_sweep_shuts_down_only_silent_running_guests() {
    use ServiceStatus::*;
    let t = test_db().await;
    let settings = Settings::default();
    let template = t.run(move |c| seed(c, &settings)).await;
    // (task, status, seconds since the last heartbeat, deleted) → the status after one sweep.
    let cases = [
        (InstanceTask::None, Running, 120, false, Shutdown),
        (InstanceTask::None, Healthy, 120, false, Shutdown),
        (InstanceTask::None, Running, 5, false, Running),
        (InstanceTask::Building, Running, 120, false, Running),
        (InstanceTask::Deleting, Running, 120, false, Running),
        (
            InstanceTask::None,
            RestartRequired,
            120,
            false,
            RestartRequired,
        ),
        (InstanceTask::None, Blocked, 120, false, Blocked),
        (InstanceTask::None, Running, 120, true, Running),
    ];
    let mut ids = Vec::new();
    for (task, status, age, deleted, _) in cases {
        let tpl = template.clone();
        ids.push(
            t.run(move |c| instance_with(c, &tpl, task, status, age, deleted))
                .await,
        );
    }
    let before: Vec<ServiceStatusRow> = {
        let ids = ids.clone();
        t.run(move |c| ids.iter().map(|id| status_of(c, id)).collect())
            .await
    };

    let mut swept = trove_conductor::sweep::sweep_once(&t.db, Duration::from_secs(90))
        .await
        .unwrap();
    swept.sort();
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(swept, want);
    for (i, (_, _, _, _, expected)) in cases.iter().enumerate() {
        let id = ids[i].clone();
        let row = t.run(move |c| status_of(c, &id)).await;
        assert_eq!(row.status(), Some(*expected), "case {i}");
        // The sweep never moves `updated_at`: the silence stays visible.
        assert_eq!(row.updated_at, before[i].updated_at, "case {i}");
    }
    // A second pass finds nothing new.
    assert!(
        trove_conductor::sweep::sweep_once(&t.db, Duration::from_secs(90))
            .await
            .unwrap()
            .is_empty()
    );

    // Heartbeats returning make it RUNNING again.
    assert_eq!(
        heartbeat(&t, &ids[0], "running", 10.0).await,
        HeartbeatOutcome::Applied(Running)
    );
    let id = ids[0].clone();
    assert_eq!(
        t.run(move |c| status_of(c, &id)).await.status(),
        Some(Running)
    );
}

/// A batch commits in one transaction, each message in its own savepoint: messages that cannot be
/// decoded are dead-lettered, one whose database work fails is retried alone, and the rest apply, in
/// order (a stale heartbeat after a newer one changes nothing).
#[tokio::test]
async fn a_batch_applies_in_order_and_isolates_a_failing_message() {
    let t = test_db().await;
    let settings = Arc::new(Settings::default());
    let s = settings.clone();
    let id = t.run(move |c| seed(c, &s)).await;
    // A database error only this message's work meets.
    t.run(|c| {
        diesel::sql_query(
            "ALTER TABLE guest_module_results ADD CONSTRAINT test_no_boom CHECK (status <> 'BOOM')",
        )
        .execute(c)
    })
    .await;
    let d = Dispatcher::new(settings, t.db.clone());
    let sec = Security::GuestToConductor {
        instance_id: id.clone(),
        keys: rpc_keyring(INSTANCE_KEY),
    };
    let results = |status: &str, sent: f64| {
        let mut args = Map::new();
        args.insert("instance_id".into(), json!(id));
        args.insert(
            "results".into(),
            json!([result("m1", status, "msg", "2026-11-26 10:00:01.00")]),
        );
        args.insert("sent".into(), json!(sent));
        encode_request(
            "module_results",
            args,
            &RpcContext::service(),
            "1.0",
            None,
            &sec,
        )
    };
    let bodies = [
        sealed_by(&id, INSTANCE_KEY, heartbeat_args(&id, "running", 1.0)),
        b"not json".to_vec(),
        results("BOOM", 1.0),
        sealed_by(&id, INSTANCE_KEY, heartbeat_args(&id, "healthy", 2.0)),
        sealed_by(&id, INSTANCE_KEY, heartbeat_args(&id, "crashed", 1.5)),
        // Sent at the same time as the failed one: stale if that one had left its clock behind.
        results("OK", 1.0),
    ];
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let outcomes = d.dispatch_batch(&refs).await;
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ack => "ack",
            Outcome::DeadLetter(_) => "dead-letter",
            Outcome::Retry(_) => "retry",
        })
        .collect();
    assert_eq!(
        kinds,
        ["ack", "dead-letter", "retry", "ack", "ack", "ack"],
        "{outcomes:?}"
    );
    let i = id.clone();
    assert_eq!(
        t.run(move |c| status_of(c, &i)).await.status(),
        Some(ServiceStatus::Healthy)
    );
    // The failed report left nothing behind (not even its lastseen clock), the later one is stored.
    let i = id.clone();
    let stored: Vec<String> = t
        .run(move |c| {
            diesel::sql_query(format!(
                "SELECT status AS v FROM guest_module_results WHERE instance_id = '{i}'"
            ))
            .load::<Text>(c)
            .map(|rows| rows.into_iter().map(|r| r.v).collect())
        })
        .await;
    assert_eq!(stored, ["OK"]);
}

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    v: String,
}

/// The fleet of [`every_batch_size_gives_each_message_its_outcome`]: instances `i01`…`i15` cloned from the seeded
/// one, each set up for one case, plus reapply job `j1` (items `sent` for every instance, except
/// `i09`'s, already answered) and stored results to be older than.
fn seed_cases(conn: &mut PgConnection, template: &str) -> QueryResult<()> {
    let old = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    for n in 1..=15 {
        let mut inst = Instance::find_any(conn, template)?.expect("template instance");
        inst.id = format!("i{n:02}");
        inst.deleted = n == 5;
        Instance::insert(conn, &inst)?;
    }
    diesel::update(service_statuses::table)
        .set(service_statuses::updated_at.eq(old))
        .execute(conn)?;
    diesel::update(service_statuses::table.filter(service_statuses::instance_id.eq("i03")))
        .set((
            service_statuses::status_id.eq(ServiceStatus::RestartRequired.code()),
            service_statuses::status_description.eq(ServiceStatus::RestartRequired.description()),
        ))
        .execute(conn)?;
    diesel::delete(service_statuses::table.filter(service_statuses::instance_id.eq("i06")))
        .execute(conn)?;
    diesel::sql_query(
        "INSERT INTO conductor_lastseen (instance_id, method_name, sent) VALUES
           ('i02', 'heartbeat', 50.0), ('i12', 'module_results', 150.0)",
    )
    .execute(conn)?;
    diesel::sql_query(
        "INSERT INTO guest_module_results
           (instance_id, module_id, md5, status, message, guest_created, guest_updated, reported_at)
         VALUES ('i10', 'm1', 'old', 'OK', 'newer than the report', NULL, '2026-11-26 11:00:00.00', now())",
    )
    .execute(conn)?;
    seed_job(conn, "j1", "i08")?;
    for n in [9, 10, 11, 13, 14, 15] {
        diesel::insert_into(reapply_job_items::table)
            .values(ReapplyItem {
                job_id: "j1".into(),
                instance_id: format!("i{n:02}"),
                seq: n,
                state: if n == 9 { "answered" } else { "sent" }.into(),
                batch: Some(0),
                sent_at: Some(trove_common::db::now()),
                answered_at: None,
                status: None,
                message: None,
            })
            .execute(conn)?;
    }
    Ok(())
}

/// One message of each kind the conductor meets, as the dispatcher hands them over (by instance id).
fn case_messages() -> Vec<ConductorMsg> {
    let beat =
        |id: &str, desc: &str, sent: f64| ConductorMsg::Heartbeat(Heartbeat::new(id, desc, sent));
    let answer = |id: &str, job: Option<&str>, results: Vec<ModuleResult>, error: Option<&str>| {
        ConductorMsg::ModuleResults(ModuleResults {
            job_id: job.map(Into::into),
            error: error.map(Into::into),
            ..ModuleResults::new(id, results, 100.0)
        })
    };
    let ok = || result("m1", "OK", "applied", "2026-11-26 10:00:01.00");
    let mut long_id = ok();
    long_id.id = "x".repeat(65);
    vec![
        beat("i01", "running", 100.0),
        beat("i02", "running", 40.0),  // older than the last one seen
        beat("i03", "running", 100.0), // RESTART_REQUIRED is kept
        beat("i04", "no such status", 100.0),
        beat("i05", "running", 100.0), // deleted instance
        beat("i06", "running", 100.0), // no status row
        beat("i07", "running", 100.0), // two from one instance: one by one, in order
        beat("i07", "crashed", 99.0),
        answer("i08", Some("j1"), vec![ok()], None),
        answer("i09", Some("j1"), vec![ok()], None), // item already answered
        answer("i10", Some("j1"), vec![ok()], None), // stored result is newer
        answer("i11", Some("j1"), vec![], Some("prepare check failed")),
        answer("i12", None, vec![ok()], None), // no job, older than last seen
        answer("i13", Some("j1"), vec![long_id, ok()], None),
        answer(
            "i14",
            Some("j1"),
            vec![result(
                "m2",
                "ERROR",
                "other module",
                "2026-11-26 10:00:01.00",
            )],
            None,
        ),
        answer("i15", Some("gone"), vec![ok()], None), // job row deleted
    ]
}

/// Everything the conductor writes, as comparable text.
fn written(conn: &mut PgConnection) -> QueryResult<Vec<String>> {
    let q = "SELECT concat_ws('|', 'status', instance_id, status_id, status_description,
                               updated_at > '2001-01-01') AS v FROM service_statuses
              WHERE instance_id LIKE 'i__' -- not the template
             UNION ALL SELECT concat_ws('|', 'seen', instance_id, method_name, sent) FROM conductor_lastseen
             UNION ALL SELECT concat_ws('|', 'result', instance_id, module_id, md5, status, message,
                                        guest_updated) FROM guest_module_results
             UNION ALL SELECT concat_ws('|', 'item', job_id, instance_id, state, status, message,
                                        answered_at IS NOT NULL) FROM reapply_job_items
             ORDER BY 1";
    Ok(diesel::sql_query(q)
        .load::<Text>(conn)?
        .into_iter()
        .map(|r| r.v)
        .collect())
}

/// What each of [`case_messages`] must do, in order.
fn case_outcomes() -> Vec<Applied> {
    use Applied::{Heartbeat as H, ModuleResults as M};
    let stored = |stored, skipped, answered| {
        M(ModuleResultsOutcome::Stored {
            stored,
            skipped,
            item_answered: Some(answered),
        })
    };
    vec![
        H(HeartbeatOutcome::Applied(ServiceStatus::Running)),
        H(HeartbeatOutcome::Stale),
        H(HeartbeatOutcome::KeptRestartRequired),
        H(HeartbeatOutcome::UnknownStatus),
        H(HeartbeatOutcome::InstanceGone),
        H(HeartbeatOutcome::NoStatusRow),
        H(HeartbeatOutcome::Applied(ServiceStatus::Running)),
        H(HeartbeatOutcome::Stale), // i07's second, older than its first
        stored(1, 0, true),
        stored(1, 0, false), // i09: its item was already answered
        stored(0, 1, true),  // i10: the stored result is newer
        stored(0, 0, true),  // i11: the call failed as a whole
        M(ModuleResultsOutcome::Stale),
        stored(1, 1, true),  // i13: one result's id is too long to store
        stored(1, 0, true),  // i14: FAILED, no result for the job's module
        stored(1, 0, false), // i15: the job row is gone
    ]
}

/// The one path gives every message the same outcome and writes the same rows whatever the batch:
/// all the cases in one batch as the dispatcher runs it (each statement committing by itself), the
/// same batch inside a transaction (savepoints), and each message as a batch of one.
#[tokio::test]
async fn every_batch_size_gives_each_message_its_outcome() {
    let (whole, inside, singles) = (test_db().await, test_db().await, test_db().await);
    let settings = Settings::default();
    for t in [&whole, &inside, &singles] {
        let s = settings.clone();
        t.run(move |c| {
            let template = seed(c, &s)?;
            seed_cases(c, &template)
        })
        .await;
    }
    let expected = case_outcomes();
    let msgs = case_messages();
    let m = msgs.clone();
    let (got, rows) = whole
        .run(move |c| {
            let applied = apply_batch(c, &m, &Default::default())
                .into_iter()
                .collect::<QueryResult<Vec<_>>>()?;
            Ok((applied, written(c)?))
        })
        .await;
    assert_eq!(got, expected, "one batch");
    let m = msgs.clone();
    let (got, inside_rows) = inside
        .run(move |c| {
            let applied = c.transaction(|c| {
                apply_batch(c, &m, &Default::default())
                    .into_iter()
                    .collect::<QueryResult<Vec<_>>>()
            })?;
            Ok((applied, written(c)?))
        })
        .await;
    assert_eq!(got, expected, "one batch in a transaction");
    assert_eq!(inside_rows, rows);
    let mut got = Vec::new();
    for msg in msgs {
        got.push(apply_one(&singles, msg).await.unwrap());
    }
    assert_eq!(got, expected, "batches of one");
    let single_rows = singles.run(written).await;
    assert_eq!(single_rows, rows);
    // And the rows are the ones the cases are named for.
    for row in [
        "item|j1|i08|answered|OK|applied|t",
        "item|j1|i14|answered|FAILED|the guest reported no result for module m1|t",
        "item|j1|i11|answered|FAILED|prepare check failed|t",
        "seen|i07|heartbeat|100",
        "seen|i12|module_results|150",
    ] {
        assert!(rows.contains(&row.to_owned()), "{row} not in {rows:#?}");
    }
    // md5 is char(32): the seeded 'old' is padded.
    assert!(
        rows.contains(&format!(
            "result|i10|m1|{:<32}|OK|newer than the report|2026-11-26 11:00:00.00",
            "old"
        )),
        "{rows:#?}"
    );
    assert!(
        !rows.iter().any(|r| r.starts_with("result|i12|")),
        "a stale report stores nothing: {rows:#?}"
    );
}

/// A report that names a module twice stores the one applied last in its order, unless that one is
/// older, in any batch (PostgreSQL refuses to upsert one row twice in a statement).
#[tokio::test]
async fn a_report_naming_a_module_twice_stores_the_later_result() {
    let t = test_db().await;
    let settings = Settings::default();
    let id = t.run(move |c| seed(c, &settings)).await;
    let report = |results: Vec<ModuleResult>, sent: f64| {
        ConductorMsg::ModuleResults(ModuleResults::new(&id, results, sent))
    };
    let first = result("m1", "OK", "first", "2026-11-26 10:00:01.00");
    let second = result("m1", "ERROR", "second", "2026-11-26 10:00:02.00");
    let outcome = apply_one(&t, report(vec![first.clone(), second.clone()], 1.0))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Applied::ModuleResults(ModuleResultsOutcome::Stored {
            stored: 1,
            skipped: 1,
            item_answered: None
        })
    );
    let i = id.clone();
    let stored = t.run(move |c| GuestModuleResult::for_instance(c, &i)).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message.as_deref(), Some("second"));
    // An older result after a newer one does not win.
    apply_one(&t, report(vec![second, first], 2.0))
        .await
        .unwrap();
    let i = id.clone();
    let stored = t.run(move |c| GuestModuleResult::for_instance(c, &i)).await;
    assert_eq!(stored[0].message.as_deref(), Some("second"));
}

#[tokio::test]
async fn a_failing_set_based_batch_falls_back_to_one_by_one() {
    let t = test_db().await;
    let settings = Settings::default();
    t.run(move |c| {
        let template = seed(c, &settings)?;
        seed_cases(c, &template)?;
        diesel::sql_query(
            "ALTER TABLE guest_module_results ADD CONSTRAINT test_no_boom CHECK (status <> 'BOOM')",
        )
        .execute(c)
    })
    .await;
    let answer = |id: &str, status: &str| {
        let results = vec![result("m1", status, "applied", "2026-11-26 10:00:01.00")];
        ConductorMsg::ModuleResults(ModuleResults {
            job_id: Some("j1".into()),
            ..ModuleResults::new(id, results, 100.0)
        })
    };
    let msgs = vec![answer("i08", "BOOM"), answer("i13", "OK")];
    // As the dispatcher runs it: no transaction around the batch.
    let (outcomes, rows) = t
        .run(move |c| {
            let outcomes = apply_batch(c, &msgs, &Default::default());
            Ok((outcomes, written(c)?))
        })
        .await;
    assert!(outcomes[0].is_err(), "{outcomes:?}");
    assert_eq!(
        outcomes[1].as_ref().ok(),
        Some(&Applied::ModuleResults(ModuleResultsOutcome::Stored {
            stored: 1,
            skipped: 0,
            item_answered: Some(true)
        }))
    );
    assert!(rows.contains(&"item|j1|i08|sent|f".to_owned()), "{rows:#?}");
    assert!(
        rows.contains(&"item|j1|i13|answered|OK|applied|t".to_owned()),
        "{rows:#?}"
    );
}
