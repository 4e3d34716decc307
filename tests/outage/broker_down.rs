//! Issue 14: the broker away for 10 minutes under running guests. Each guest's memory stays flat
//! however many attempts it makes (lapin keeps memory for every failed connection attempt, which the
//! broker layer avoids with a TCP probe while the broker is away), and once the broker is back every
//! guest reconnects within a minute (the backoff is capped at `reconnect_max_delay`, 30 s).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use trove_tests::api::{count, strings, wait_active, Api};
use trove_tests::{PrivateBroker, ProcessStack};

const ADMIN: &str = "admin00e46e5f7840e39012aff46a920";

/// `TROVE_TEST_OUTAGE_SECS` (default 600: the 10 minutes).
fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("TROVE_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_keep_their_memory_through_a_ten_minute_outage_and_reconnect_within_a_minute() {
    const GUESTS: usize = 20;
    let mut broker = PrivateBroker::start().expect("private broker");
    // The production reconnect schedule (guests: 5 s doubling to 30 s), heartbeats every second: a
    // guest tries to publish every second for the whole outage.
    let overrides = format!(
        "[DEFAULT]\ntransport_url = {}\n\
         [amqp]\nreconnect_delay = 1\nguest_reconnect_delay = 5\nreconnect_max_delay = 30\n{}",
        broker.transport_url(),
        broker.management_section()
    );
    let stack = ProcessStack::start_with(&overrides).await.expect("stack");
    let api = Api::new(stack.base(ADMIN), ADMIN);
    let module = api.create_module("downmod", "v1").await;
    let mut ids = Vec::with_capacity(GUESTS);
    for i in 0..GUESTS {
        ids.push(api.create_instance(&format!("down-{i}"), &module).await);
    }
    wait_active(&api, &ids, Duration::from_secs(180)).await;
    let pids: BTreeMap<String, u32> = ids
        .iter()
        .map(|id| (id.clone(), stack.guest_pid(id).expect("guest pid")))
        .collect();

    let before: BTreeMap<&str, u64> = pids
        .iter()
        .map(|(id, p)| (id.as_str(), rss_kib(*p)))
        .collect();
    broker.stop_app().expect("stop_app");
    let down = Instant::now();
    let mut peak = before.clone();
    while down.elapsed() < outage() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for (id, pid) in &pids {
            let now = rss_kib(*pid);
            let p = peak.get_mut(id.as_str()).expect("known guest");
            *p = (*p).max(now);
        }
    }
    let mut conn = stack.db.conn();
    let back_at = strings(&mut conn, "SELECT (now() AT TIME ZONE 'utc')::text AS v").remove(0);
    broker.start_app().expect("start_app");
    let back = Instant::now();

    let mut grew = Vec::new();
    for (id, kib) in &before {
        let growth = peak[id].saturating_sub(*kib);
        eprintln!(
            "guest {id}: {kib} KiB before, peak {} KiB (+{growth})",
            peak[id]
        );
        if growth > 1024 {
            grew.push(format!("{id}: {kib} KiB -> {} KiB", peak[id]));
        }
    }
    assert!(grew.is_empty(), "guests grew by more than 1 MiB: {grew:?}");

    // Every guest reports again within a minute of the broker's return.
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let fresh = format!(
        "SELECT count(*) FROM service_statuses WHERE instance_id IN ({list}) \
         AND updated_at > '{back_at}'"
    );
    trove_tests::eventually(
        Duration::from_secs(60),
        "every guest reporting again",
        || async {
            let mut conn = stack.db.conn();
            (count(&mut conn, &fresh) == GUESTS as i64).then_some(())
        },
    )
    .await
    .unwrap();
    eprintln!(
        "all {GUESTS} guests reported within {:.1?} of the broker's return",
        back.elapsed()
    );
    wait_active(&api, &ids, Duration::from_secs(30)).await;
    for (id, pid) in &pids {
        assert_eq!(
            stack.guest_pid(id),
            Some(*pid),
            "guest of {id} was restarted instead of reconnecting"
        );
    }
}
