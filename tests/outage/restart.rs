//! RabbitMQ killed and started again under running services (issue 2, "must show"; issue 14): they
//! reconnect by themselves, re-declare their topology and resubscribe, guests declare their queues
//! again (a guest's queue is not durable, so the restart dropped it), and the system keeps working.
//! Each guest logs in as its own broker user (`guest_broker_credentials = per_instance`), which the
//! node keeps through the kill, and which may declare its own queue again but nothing of the services'.
//! On a node of the test's own ([`PrivateBroker`]), so nobody else's tests see the outage.

use std::time::{Duration, Instant};

use trove_common::epoch_now;
use trove_tests::ok;
use trove_tests::{instance_create, wait_active as wait_active_as, PrivateBroker, TestEnv};

/// A 32-character project id (an ordinary member, not admin).
const TENANT: &str = "0b5e55ed5f60718293a4b5c6d7e8f90a";
/// How long the services get to come back after the broker does.
const RECOVERY: Duration = Duration::from_secs(90);

/// A mysql instance named `name` as the tenant.
async fn create(env: &TestEnv, name: &str) -> String {
    instance_create(env, TENANT, name, &["--datastore", "mysql"]).await
}

async fn wait_active(env: &TestEnv, id: &str, timeout: Duration) {
    wait_active_as(env, TENANT, id, timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_guests_reconnect_after_the_broker_is_killed_and_restarted() {
    let mut broker = PrivateBroker::start().expect("private broker");
    let started = Instant::now();
    // A short expiry, so a guest that never came back would show SHUTDOWN instead of a stale ACTIVE.
    let transport = broker.transport_url();
    let management = broker.management_url();
    let env = TestEnv::start_with(move |s| {
        s.default.transport_url = transport;
        s.rabbitmq_management.url = management;
        s.default.agent_heartbeat_expiry = 5;
        s.default.agent_heartbeat_time = 1;
    })
    .await
    .unwrap();
    let first = create(&env, "before").await;
    wait_active(&env, &first, Duration::from_secs(30)).await;
    // A call to the guest before the outage, so the api's reply queue exists and must be replaced.
    ok(&env.trove(TENANT, &["module-query", &first]).await);

    let outage = Instant::now();
    broker.kill();
    broker.restart().expect("broker restart");
    let down_for = outage.elapsed();
    let back_at = epoch_now();

    // A new instance: api (outbox relay) → taskmanager → a new guest → conductor, all reconnected.
    let recovering = Instant::now();
    let second = create(&env, "after").await;
    wait_active(&env, &second, RECOVERY).await;
    let second_active = recovering.elapsed();

    // The first guest reconnected too: the conductor stores heartbeats it sent after the restart, and the
    // instance is ACTIVE (the sweep would have made it SHUTDOWN otherwise).
    trove_tests::eventually(RECOVERY, "a heartbeat from the first guest", || async {
        (env.last_heartbeat(&first) > back_at).then_some(())
    })
    .await
    .unwrap();
    wait_active(&env, &first, RECOVERY).await;
    let first_active = recovering.elapsed();

    // Calls work again: the api's reply queue (exclusive, gone with its connection) was re-created.
    trove_tests::eventually(RECOVERY, "module-query answered", || async {
        (env.trove(TENANT, &["module-query", &first]).await.status == 0).then_some(())
    })
    .await
    .unwrap();
    // Both guests did all that as their own broker users, on the restarted node.
    let names = trove_common::amqp::Names::new(&env.settings);
    let mgmt = trove_tests::Management::for_settings(&env.settings);
    for id in [&first, &second] {
        let conf = env.state_dir.path().join(id).join("guest.conf");
        let url = trove_common::config::read_file(&conf)
            .unwrap()
            .default
            .transport_url;
        let uri: lapin::uri::AMQPUri = trove_common::amqp::amqp_uri(&url).parse().unwrap();
        assert_eq!(uri.authority.userinfo.username, names.guest_user(id));
        assert_eq!(mgmt.user_status(&names.guest_user(id)).await, 200);
    }
    eprintln!(
        "broker: killed and restarted in {down_for:?}; new instance ACTIVE {second_active:?} and old guest \
         heartbeating {first_active:?} after the broker was back; total {:?}",
        started.elapsed()
    );
}
