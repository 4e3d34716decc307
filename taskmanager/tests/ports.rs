//! Port allocation and the reconciler's "keep running" query against a real PostgreSQL: one fresh
//! database per test, migrated, and dropped at the end (even when the test fails).

use diesel::prelude::*;
use futures_util::future::join_all;
use trove_common::config::DatabaseSection;
use trove_common::db::models::instance::{record_fault, PortAllocation};
use trove_common::db::models::Instance;
use trove_common::status::InstanceTask;
use trove_tests::PooledTestDb;

/// A migrated database of its own (dropped at the end) with a redis datastore and its version `v1`.
async fn test_db() -> PooledTestDb {
    let cfg = DatabaseSection {
        pool_timeout: 10,
        max_pool_size: 24,
        ..DatabaseSection::default()
    };
    let t = PooledTestDb::new(&cfg).await;
    t.run(|conn| {
        diesel::sql_query("INSERT INTO datastores (id, name) VALUES ('ds1', 'redis')")
            .execute(conn)?;
        diesel::sql_query(
            "INSERT INTO datastore_versions (id, datastore_id, name, manager) \
             VALUES ('v1', 'ds1', '7.0', 'redis')",
        )
        .execute(conn)
        .map(drop)
    })
    .await;
    t
}

/// Inserts a live instance on `host`, started (server id set) when `started`; returns its id.
async fn insert_instance(t: &PooledTestDb, host: Option<&str>, started: bool) -> String {
    let mut i = trove_tests::instance_row(&uuid::Uuid::new_v4().to_string());
    i.compute_host = host.map(Into::into);
    if started {
        i.compute_instance_id = Some(i.id.clone());
        i.server_status = Some("ACTIVE".into());
    }
    let id = i.id.clone();
    t.run(move |c| Instance::insert(c, &i)).await;
    id
}

async fn allocate(
    t: &PooledTestDb,
    id: &str,
    host: &str,
    range: std::ops::RangeInclusive<u16>,
    busy: &'static [u16],
) -> PortAllocation {
    let (id, host) = (id.to_owned(), host.to_owned());
    t.run(move |c| {
        Instance::allocate_port(c, &id, &host, "127.0.0.1", range, |p| {
            // Widen the window between the read of the taken ports and the write, so that
            // concurrent allocations really race for the same port.
            std::thread::sleep(std::time::Duration::from_millis(2));
            !busy.contains(&p)
        })
    })
    .await
}

#[tokio::test]
async fn concurrent_allocations_get_distinct_lowest_ports_until_the_range_is_full() {
    let t = test_db().await;
    let mut ids = Vec::new();
    for _ in 0..17 {
        ids.push(insert_instance(&t, None, false).await);
    }
    let results = join_all(
        ids.iter()
            .map(|id| allocate(&t, id, "h1", 20000..=20015, &[])),
    )
    .await;
    let mut ports: Vec<u16> = results
        .iter()
        .filter_map(|r| match r {
            PortAllocation::Allocated(p) => Some(*p),
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, (20000..=20015).collect::<Vec<_>>(), "{results:?}");
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == PortAllocation::NoFreePort)
            .count(),
        1
    );
    // Each row records where it listens.
    let rows: Vec<(Option<String>, Option<String>, Option<i32>)> = t
        .run(|c| {
            trove_common::db::schema::instances::table
                .filter(trove_common::db::schema::instances::port.is_not_null())
                .select((
                    trove_common::db::schema::instances::compute_host,
                    trove_common::db::schema::instances::address,
                    trove_common::db::schema::instances::port,
                ))
                .load(c)
        })
        .await;
    assert_eq!(rows.len(), 16);
    assert!(rows
        .iter()
        .all(|r| r.0.as_deref() == Some("h1") && r.1.as_deref() == Some("127.0.0.1")));
}

#[tokio::test]
async fn busy_ports_are_skipped_ports_are_kept_and_freed_by_a_delete() {
    let t = test_db().await;
    let a = insert_instance(&t, None, false).await;
    // Another program holds 20000: the lowest free port is 20001.
    assert_eq!(
        allocate(&t, &a, "h1", 20000..=20009, &[20000]).await,
        PortAllocation::Allocated(20001)
    );
    // An instance keeps its port, whatever the probe says now.
    assert_eq!(
        allocate(&t, &a, "h1", 20000..=20009, &[20001]).await,
        PortAllocation::Kept(20001)
    );
    // Another host's instance on the same port does not count on this host.
    let other = insert_instance(&t, Some("h2"), false).await;
    assert_eq!(
        allocate(&t, &other, "h2", 20001..=20009, &[]).await,
        PortAllocation::Allocated(20001)
    );
    let b = insert_instance(&t, None, false).await;
    assert_eq!(
        allocate(&t, &b, "h1", 20000..=20009, &[]).await,
        PortAllocation::Allocated(20000)
    );
    // Every port busy or taken: a clear refusal.
    let c = insert_instance(&t, None, false).await;
    assert_eq!(
        allocate(&t, &c, "h1", 20000..=20001, &[]).await,
        PortAllocation::NoFreePort
    );
    // A deleted instance frees its port, and cannot get one itself.
    let a2 = a.clone();
    t.run(move |conn| Instance::mark_deleted(conn, &a2)).await;
    assert_eq!(
        allocate(&t, &c, "h1", 20000..=20001, &[]).await,
        PortAllocation::Allocated(20001)
    );
    assert_eq!(
        allocate(&t, &a, "h1", 20000..=20009, &[]).await,
        PortAllocation::Gone
    );
    assert_eq!(
        allocate(&t, "no-such-instance", "h1", 20000..=20009, &[]).await,
        PortAllocation::Gone
    );
}

#[tokio::test]
async fn the_reconciler_keeps_only_this_hosts_started_live_instances_running() {
    let t = test_db().await;
    let mine = insert_instance(&t, Some("h1"), true).await;
    let legacy = insert_instance(&t, None, true).await;
    let _theirs = insert_instance(&t, Some("h2"), true).await;
    let _never_started = insert_instance(&t, Some("h1"), false).await;
    let errored = insert_instance(&t, Some("h1"), true).await;
    let deleting = insert_instance(&t, Some("h1"), true).await;
    let failed = insert_instance(&t, Some("h1"), true).await;
    let gone = insert_instance(&t, Some("h1"), true).await;
    t.run(move |c| {
        Instance::set_server(c, &errored, Some(&errored), "ERROR")?;
        Instance::set_task(c, &deleting, InstanceTask::Deleting)?;
        Instance::set_task(c, &failed, InstanceTask::BuildingErrorTimeoutGa)?;
        Instance::mark_deleted(c, &gone)
    })
    .await;
    let mut kept: Vec<String> = t
        .run(|c| Instance::to_keep_running(c, "h1"))
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    kept.sort();
    let mut want = vec![mine, legacy];
    want.sort();
    assert_eq!(kept, want);
}

#[tokio::test]
async fn the_latest_fault_time_is_known() {
    let t = test_db().await;
    let id = insert_instance(&t, Some("h1"), true).await;
    let key = id.clone();
    assert_eq!(t.run(move |c| Instance::fault_updated(c, &key)).await, None);
    let before = trove_common::db::now();
    let key = id.clone();
    t.run(move |c| record_fault(c, &key, "Failed to start redis-server.", "exit 1"))
        .await;
    let key = id.clone();
    let at = t.run(move |c| Instance::fault_updated(c, &key)).await;
    assert!(at.is_some_and(|at| at >= before), "{at:?}");
}
