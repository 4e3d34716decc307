//! Port allocation and the reconciler's "keep running" query against a real PostgreSQL: one fresh
//! database per test, migrated, and dropped at the end (even when the test fails).

use diesel::prelude::*;
use futures_util::future::join_all;
use trove_common::config::DatabaseSection;
use trove_common::db::models::instance::{record_fault, PortAllocation};
use trove_common::db::models::Instance;
use trove_common::db::{Db, DbError};
use trove_common::status::InstanceTask;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own, dropped on `Drop`.
struct TestDb {
    admin_url: String,
    name: String,
    db: Db,
}

impl TestDb {
    async fn new() -> Self {
        trove_common::telemetry::init_for_test();
        let admin_url = std::env::var("TROVE_TEST_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let (admin, db_name) = (admin_url.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&admin).unwrap_or_else(|e| {
                panic!(
                    "cannot reach PostgreSQL at {admin}: {e}. Start it (scripts/stack.sh) or point \
                     TROVE_TEST_ADMIN_DATABASE_URL at a server where user postgres may create databases"
                )
            });
            diesel::sql_query(format!("CREATE DATABASE {db_name}"))
                .execute(&mut conn)
                .expect("CREATE DATABASE");
        })
        .await
        .unwrap();
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("the admin URL names a database");
        let cfg = DatabaseSection {
            pool_timeout: 10,
            max_pool_size: 24,
            ..DatabaseSection::default()
        };
        let this = Self {
            db: Db::from_url(&format!("{base}/{name}"), &cfg),
            admin_url,
            name,
        };
        this.run(|conn| {
            trove_migrations::run_pending(conn)
                .map(drop)
                .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))
        })
        .await;
        this.run(|conn| {
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
        this
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PgConnection) -> QueryResult<T> + Send + 'static,
    ) -> T {
        self.db
            .run(move |conn| f(conn).map_err(DbError::from))
            .await
            .expect("test query")
    }

    /// Inserts a live instance, started (server id set) when `started`; returns its id.
    async fn instance(&self, host: Option<&str>, started: bool) -> String {
        let mut i = instance_row(host);
        if started {
            i.compute_instance_id = Some(i.id.clone());
            i.server_status = Some("ACTIVE".into());
        }
        let id = i.id.clone();
        self.run(move |c| Instance::insert(c, &i)).await;
        id
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match PgConnection::establish(&self.admin_url) {
            Ok(mut conn) => {
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                if let Err(e) = diesel::sql_query(sql).execute(&mut conn) {
                    eprintln!("could not drop test database {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("could not drop test database {}: {e}", self.name),
        }
    }
}

fn instance_row(host: Option<&str>) -> Instance {
    let now = trove_common::db::now();
    Instance {
        id: uuid::Uuid::new_v4().to_string(),
        created: now,
        updated: now,
        name: "inst".into(),
        hostname: None,
        compute_instance_id: None,
        server_status: Some("BUILD".into()),
        task_id: InstanceTask::None.code(),
        task_description: InstanceTask::None.description().into(),
        task_start_time: None,
        volume_id: None,
        volume_size: None,
        flavor_id: "15".into(),
        tenant_id: "t1".into(),
        datastore_version_id: "v1".into(),
        cluster_id: None,
        shard_id: None,
        instance_type: None,
        region_id: "RegionOne".into(),
        encrypted_key: None,
        configuration_id: None,
        slave_of_id: None,
        deleted: false,
        deleted_at: None,
        compute_host: host.map(Into::into),
        address: None,
        port: None,
    }
}

async fn allocate(
    t: &TestDb,
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
    let t = TestDb::new().await;
    let mut ids = Vec::new();
    for _ in 0..17 {
        ids.push(t.instance(None, false).await);
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
    let t = TestDb::new().await;
    let a = t.instance(None, false).await;
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
    let other = t.instance(Some("h2"), false).await;
    assert_eq!(
        allocate(&t, &other, "h2", 20001..=20009, &[]).await,
        PortAllocation::Allocated(20001)
    );
    let b = t.instance(None, false).await;
    assert_eq!(
        allocate(&t, &b, "h1", 20000..=20009, &[]).await,
        PortAllocation::Allocated(20000)
    );
    // Every port busy or taken: a clear refusal.
    let c = t.instance(None, false).await;
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
    let t = TestDb::new().await;
    let mine = t.instance(Some("h1"), true).await;
    let legacy = t.instance(None, true).await;
    let _theirs = t.instance(Some("h2"), true).await;
    let _never_started = t.instance(Some("h1"), false).await;
    let errored = t.instance(Some("h1"), true).await;
    let deleting = t.instance(Some("h1"), true).await;
    let failed = t.instance(Some("h1"), true).await;
    let gone = t.instance(Some("h1"), true).await;
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
    let t = TestDb::new().await;
    let id = t.instance(Some("h1"), true).await;
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
