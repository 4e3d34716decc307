//! What the services do when things go wrong (issue 2, "must show"): a guest killed with SIGKILL, and
//! garbage published to every service's queue. (Broker restarts and outages are in the `outage` test
//! binary, each on a RabbitMQ node of its own.)

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::{json, Map};
use trove_common::amqp::{amqp_uri, Names};
use trove_common::epoch_now;
use trove_common::rpc::{encode_request, RpcContext, Security};
use trove_tests::ok;
use trove_tests::{guest_pid, process_alive, property, sigkill_guest, transport_url, TestEnv};

/// A 32-character project id (an ordinary member, not admin).
const TENANT: &str = "c0ffee00e5f60718293a4b5c6d7e8f90";

/// `trove create <name> 15 --size 1 --datastore mysql`; returns the id.
async fn create(env: &TestEnv, name: &str) -> String {
    let out = env
        .trove(
            TENANT,
            &["create", name, "15", "--size", "1", "--datastore", "mysql"],
        )
        .await;
    property(ok(&out), "id").expect("create prints the id")
}

/// The status `trove show` prints.
async fn status(env: &TestEnv, id: &str) -> Option<String> {
    property(&env.trove(TENANT, &["show", id]).await.stdout, "status")
}

async fn wait_status(env: &TestEnv, id: &str, want: &str, timeout: Duration) {
    trove_tests::eventually(timeout, &format!("{id} {want}"), || async {
        (status(env, id).await.as_deref() == Some(want)).then_some(())
    })
    .await
    .unwrap();
}

/// A SIGKILLed guest stops heartbeating: the conductor marks its instance SHUTDOWN once the last
/// heartbeat is older than the expiry, and the taskmanager starts a new guest, which brings it back to
/// ACTIVE. The taskmanager starts a dead guest again within a reconciler pass, far sooner than the
/// expiry, so it is stopped while the guest is dead (as a taskmanager being restarted is) for the
/// SHUTDOWN phase to be seen; started again, it finds the guest dead and starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_guest_goes_shutdown_and_comes_back_active() {
    let started = Instant::now();
    let mut env = TestEnv::start_with(|s| {
        s.default.agent_heartbeat_expiry = 3;
        s.default.agent_heartbeat_time = 1;
    })
    .await
    .unwrap();
    let victim = create(&env, "victim").await;
    let bystander = create(&env, "bystander").await;
    wait_status(&env, &victim, "ACTIVE", Duration::from_secs(30)).await;
    wait_status(&env, &bystander, "ACTIVE", Duration::from_secs(30)).await;

    // SIGKILL: no goodbye, the heartbeats just stop. No taskmanager runs meanwhile, so nothing
    // starts the guest again before the conductor notices.
    env.stop_taskmanager().await;
    let killed = sigkill_guest(env.state_dir.path(), &victim).await;
    let kill_time = Instant::now();
    wait_status(&env, &victim, "SHUTDOWN", Duration::from_secs(30)).await;
    let to_shutdown = kill_time.elapsed();
    // The conductor's sweep stored it (the API is not merely guessing from the age), only once the last
    // heartbeat was older than the expiry, and without moving `updated_at`; the guest that still
    // heartbeats was left alone.
    let row = env.query_strings(&format!(
        "SELECT status_description || ' ' || extract(epoch FROM updated_at)::text AS v \
         FROM service_statuses WHERE instance_id = '{victim}'"
    ));
    let (stored, updated_at) = row[0].split_once(' ').unwrap();
    assert_eq!(stored, "shutdown");
    let silent_for = epoch_now() - updated_at.parse::<f64>().unwrap();
    assert!(
        silent_for >= 3.0,
        "marked SHUTDOWN after only {silent_for:.1} s without a heartbeat (expiry 3 s)"
    );
    assert_eq!(
        status(&env, &bystander).await.as_deref(),
        Some("ACTIVE"),
        "a heartbeating guest must stay ACTIVE"
    );

    // Nothing brought the guest back while the taskmanager was stopped.
    assert_eq!(
        guest_pid(env.state_dir.path(), &victim),
        Some(killed),
        "no other guest was started"
    );
    assert!(!process_alive(killed));

    // The taskmanager, started again, finds the guest dead and starts a new one (the same binary and
    // guest.conf, a new process), which brings the instance back.
    env.start_taskmanager().await.unwrap();
    let restart_time = Instant::now();
    let relaunched = trove_tests::eventually(
        Duration::from_secs(30),
        "a new guest for the victim",
        || async {
            guest_pid(env.state_dir.path(), &victim)
                .filter(|pid| *pid != killed && process_alive(*pid))
        },
    )
    .await
    .unwrap();
    let to_relaunch = restart_time.elapsed();
    wait_status(&env, &victim, "ACTIVE", Duration::from_secs(30)).await;
    // The guest that brought it back is the taskmanager's, still the one running.
    assert_eq!(guest_pid(env.state_dir.path(), &victim), Some(relaunched));
    assert!(process_alive(relaunched), "the new guest {relaunched} runs");
    let stored = env.query_strings(&format!(
        "SELECT status_description AS v FROM service_statuses WHERE instance_id = '{victim}'"
    ));
    assert!(
        matches!(stored[..], [ref s] if s == "running" || s == "healthy"),
        "the new guest's report replaced the sweep's shutdown: {stored:?}"
    );
    assert_eq!(
        status(&env, &bystander).await.as_deref(),
        Some("ACTIVE"),
        "the bystander stays ACTIVE throughout"
    );
    eprintln!(
        "resilience/killed guest: SHUTDOWN {to_shutdown:?} after SIGKILL, new guest \
         {to_relaunch:?} and ACTIVE {:?} after the taskmanager started, total {:?}",
        restart_time.elapsed(),
        started.elapsed()
    );
}

/// The queue a dead-lettered message came from, and why (its first `x-death` entry).
fn death(props: &BasicProperties) -> Option<(String, String)> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |key: &str| match first.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    Some((text("queue")?, text("reason")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dead_lettered_and_every_service_keeps_serving() {
    let started = Instant::now();
    let env = TestEnv::start().await.unwrap();
    let first = create(&env, "first").await;
    wait_status(&env, &first, "ACTIVE", Duration::from_secs(30)).await;

    let names = Names::new(&env.settings);
    let conn = Connection::connect(&amqp_uri(&transport_url()), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let dlq = names.dead_letter_queue();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let dead_letters = || async {
        ch.queue_declare(dlq.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    };
    assert_eq!(dead_letters().await, 0, "nothing dead-lettered yet");

    let targets = [names.taskmanager(), names.conductor(), names.guest(&first)];
    let mut expected = 0;
    for queue in &targets {
        let mut args = Map::new();
        args.insert("instance_id".into(), json!(first));
        let unknown = encode_request(
            "no_such_method",
            args,
            &RpcContext::service(),
            "1.0",
            None,
            &Security::Plain,
        );
        for body in [b"\x00this is not JSON {".to_vec(), unknown] {
            // Through the control exchange, as services publish: mandatory + confirmed, so a message that
            // reaches no queue fails here instead of passing the test by vanishing.
            let confirm = ch
                .basic_publish(
                    names.exchange().as_str().into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(
                matches!(confirm, Confirmation::Ack(None)),
                "{queue}: {confirm:?}"
            );
        }
        expected += 2;
        trove_tests::eventually(
            Duration::from_secs(20),
            &format!("{expected} messages in {dlq} (after {queue})"),
            || async { (dead_letters().await >= expected).then_some(()) },
        )
        .await
        .unwrap();
    }

    // Each service rejected exactly its own two messages; nothing else was dead-lettered.
    let mut deaths = Vec::new();
    while let Some(msg) = ch
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        deaths.push(death(&msg.delivery.properties).expect("x-death header"));
    }
    deaths.sort();
    let mut want: Vec<(String, String)> = targets
        .iter()
        .flat_map(|q| vec![(q.clone(), "rejected".to_owned()); 2])
        .collect();
    want.sort();
    assert_eq!(deaths, want);

    // And everyone still serves: a new instance goes through api, taskmanager, its guest and the
    // conductor to ACTIVE, and the first guest answers a call.
    let second = create(&env, "second").await;
    wait_status(&env, &second, "ACTIVE", Duration::from_secs(30)).await;
    let out = env.trove(TENANT, &["module-query", &first]).await;
    ok(&out);
    // The guest consumer is still attached (a crashed consumer would leave its queue without one).
    let guest_q = ch
        .queue_declare(
            names.guest(&first).as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(guest_q.consumer_count(), 1);
    let _ = conn.close(200, "bye".into()).await;
    eprintln!("resilience/garbage: total {:?}", started.elapsed());
}
