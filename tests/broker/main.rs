//! RabbitMQ stopped and started again under running services (issue 2, "must show"): they reconnect by
//! themselves, re-declare their topology and resubscribe, and the system keeps working.
//!
//! This is a test binary of its own because it restarts the broker every other test shares: cargo runs
//! test binaries one after another, so the `it` tests never see the outage. It restarts RabbitMQ with
//! `rabbitmqctl stop_app` / `start_app`, which must be on the PATH (the test fails, it never skips).
//! `TROVE_TEST_RABBITMQ_NODE` names the node for `rabbitmqctl -n` when the broker of
//! `TROVE_TEST_TRANSPORT_URL` is not rabbitmqctl's default node (a private node keeps the outage away
//! from anyone else's tests on a shared machine).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use trove_tests::ok;
use trove_tests::{property, TestEnv};

/// A 32-character project id (an ordinary member, not admin).
const TENANT: &str = "0b5e55ed5f60718293a4b5c6d7e8f90a";
/// How long the services get to come back after the broker does.
const RECOVERY: Duration = Duration::from_secs(90);

/// `rabbitmqctl`, found on the PATH.
fn rabbitmqctl() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("rabbitmqctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "rabbitmqctl is not on the PATH: this test restarts RabbitMQ with it. Install RabbitMQ \
                 (scripts/stack up) or add its sbin directory (usually /usr/sbin) to the PATH"
            )
        })
}

/// Runs `rabbitmqctl [-n node] <args>` and fails the test with its output when it fails.
fn ctl(args: &[&str]) {
    let mut cmd = Command::new(rabbitmqctl());
    if let Ok(node) = std::env::var("TROVE_TEST_RABBITMQ_NODE") {
        cmd.args(["-n", &node]);
    }
    let out = cmd.args(args).output().expect("running rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the broker's application again if the test stops half-way, so a failure here never leaves
/// RabbitMQ down for everyone else.
struct Restore {
    stopped: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.stopped {
            ctl(&["start_app"]);
        }
    }
}

async fn create(env: &TestEnv, name: &str) -> String {
    let out = env
        .trove(
            TENANT,
            &["create", name, "15", "--size", "1", "--datastore", "mysql"],
        )
        .await;
    property(ok(&out), "id").expect("create prints the id")
}

async fn wait_active(env: &TestEnv, id: &str, timeout: Duration) {
    env.eventually(timeout, &format!("{id} ACTIVE"), || async {
        let out = env.trove(TENANT, &["show", id]).await;
        (property(&out.stdout, "status").as_deref() == Some("ACTIVE")).then_some(())
    })
    .await
    .unwrap();
}

/// The `sent` stamp (guest clock, epoch seconds) of the newest heartbeat the conductor stored.
fn last_heartbeat(env: &TestEnv, id: &str) -> f64 {
    env.query_strings(&format!(
        "SELECT sent::text AS v FROM conductor_lastseen \
         WHERE instance_id = '{id}' AND method_name = 'heartbeat'"
    ))
    .first()
    .and_then(|s| s.parse().ok())
    .unwrap_or(0.0)
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reconnect_after_a_broker_restart() {
    rabbitmqctl(); // fail before starting anything when it is missing
    let started = Instant::now();
    // A short expiry, so a guest that never came back would show SHUTDOWN instead of a stale ACTIVE.
    let env = TestEnv::start_with(|s| {
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
    let mut restore = Restore { stopped: true };
    ctl(&["stop_app"]);
    ctl(&["start_app"]);
    restore.stopped = false;
    ctl(&["await_startup"]);
    let down_for = outage.elapsed();
    let back_at = epoch_now();

    // A new instance: api (outbox relay) → taskmanager → a new guest → conductor, all reconnected.
    let recovering = Instant::now();
    let second = create(&env, "after").await;
    wait_active(&env, &second, RECOVERY).await;
    let second_active = recovering.elapsed();

    // The first guest reconnected too: the conductor stores heartbeats it sent after the restart, and the
    // instance is ACTIVE (the sweep would have made it SHUTDOWN otherwise).
    env.eventually(RECOVERY, "a heartbeat from the first guest", || async {
        (last_heartbeat(&env, &first) > back_at).then_some(())
    })
    .await
    .unwrap();
    wait_active(&env, &first, RECOVERY).await;
    let first_active = recovering.elapsed();

    // Calls work again: the api's reply queue (exclusive, gone with its connection) was re-created.
    env.eventually(RECOVERY, "module-query answered", || async {
        (env.trove(TENANT, &["module-query", &first]).await.status == 0).then_some(())
    })
    .await
    .unwrap();
    eprintln!(
        "broker: stop_app+start_app {down_for:?}; new instance ACTIVE {second_active:?} and old guest \
         heartbeating {first_active:?} after the broker was back; total {:?}",
        started.elapsed()
    );
}
