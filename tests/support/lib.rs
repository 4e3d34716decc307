#![doc = include_str!("../README.md")]
//! Test support: a whole trove-rs control plane per test, against the real PostgreSQL and RabbitMQ.
//!
//! [`TestEnv::start`] gives each test its own database (cloned from a migrated template) and its own
//! exchange/queue prefix, runs api, taskmanager and conductor in-process through their `run` functions,
//! and lets the taskmanager start real `trove-guestagent` processes (the built binary) in a temporary
//! directory. [`TestEnv::trove`] runs the built `trove` CLI against it. Dropping the env stops
//! everything, kills leftover guests, removes their broker users and drops the database.
//!
//! Set `TROVE_TEST_DATABASE_URL` (default `postgresql://postgres@127.0.0.1:5432`),
//! `TROVE_TEST_TRANSPORT_URL` (default `rabbit://guest:guest@127.0.0.1:5672/`) and
//! `TROVE_TEST_MANAGEMENT_URL` (the broker's management API, default `http://127.0.0.1:15672`; each
//! guest gets a broker user of its own through it) to point elsewhere.
//! The binaries must be built first (`cargo build --workspace --bins`; `scripts/test` does it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use diesel::{Connection, PgConnection, RunQueryDsl};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::Broker;
use trove_common::config::Settings;
use trove_common::db::Db;

/// Where the test PostgreSQL server is (without a database name).
pub fn database_server() -> String {
    std::env::var("TROVE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432".into())
}

/// Where the test RabbitMQ is.
pub fn transport_url() -> String {
    std::env::var("TROVE_TEST_TRANSPORT_URL")
        .unwrap_or_else(|_| "rabbit://guest:guest@127.0.0.1:5672/".into())
}

/// `target/debug` (or wherever the test binary's profile directory is).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A built workspace binary; fails with a hint when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

fn admin_conn() -> anyhow::Result<PgConnection> {
    let url = format!("{}/postgres", database_server());
    PgConnection::establish(&url).with_context(|| {
        format!("cannot reach PostgreSQL at {url}: start it (scripts/stack services) or set TROVE_TEST_DATABASE_URL")
    })
}

/// The migrated template, named after the migrations so a schema change makes a new one. Creation is
/// serialised across test processes with an advisory lock.
fn template() -> anyhow::Result<String> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/migrations");
    let mut files: Vec<PathBuf> = walk(&dir);
    files.sort();
    for f in files {
        std::hash::Hash::hash(&std::fs::read(&f).unwrap_or_default(), &mut hasher);
    }
    let name = format!("trove_tpl_{:x}", std::hash::Hasher::finish(&hasher));
    let mut admin = admin_conn()?;
    diesel::sql_query("SELECT pg_advisory_lock(774411)").execute(&mut admin)?;
    let result = (|| -> anyhow::Result<()> {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let exists: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"
        ))
        .get_result(&mut admin)?;
        if exists.n == 0 {
            diesel::sql_query(format!("CREATE DATABASE {name}_build"))
                .execute(&mut admin)
                .ok();
            let mut conn = PgConnection::establish(&format!("{}/{name}_build", database_server()))?;
            trove_migrations::run_pending(&mut conn)?;
            trove_migrations::manage::seed_walkthrough(&mut conn)?;
            drop(conn);
            diesel::sql_query(format!("ALTER DATABASE {name}_build RENAME TO {name}"))
                .execute(&mut admin)?;
        }
        Ok(())
    })();
    diesel::sql_query("SELECT pg_advisory_unlock(774411)").execute(&mut admin)?;
    result?;
    Ok(name)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A database of its own for one test, dropped on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn create() -> anyhow::Result<Self> {
        let tpl = template()?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_conn()?;
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {tpl}")).execute(&mut admin)?;
        Ok(Self {
            url: format!("{}/{name}", database_server()),
            name,
        })
    }

    /// A direct connection, for assertions on rows.
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = admin_conn() {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

impl TestDb {
    /// A migrated database with no rows (no walkthrough seed), for tests that seed their own.
    pub fn migrated() -> anyhow::Result<Self> {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_conn()?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin)?;
        // Built before migrating, so a failure from here on still drops the database.
        let this = Self {
            url: format!("{}/{name}", database_server()),
            name,
        };
        let mut conn = PgConnection::establish(&this.url)?;
        trove_migrations::run_pending(&mut conn)?;
        Ok(this)
    }
}

/// A [`TestDb::migrated`] database with a pool on it, for the services' own tests that call their
/// queries directly. The database is dropped with it (after the pool).
pub struct PooledTestDb {
    pub db: Db,
    _test_db: TestDb,
}

impl PooledTestDb {
    /// A fresh migrated database, the pool configured by `cfg`.
    pub async fn new(cfg: &trove_common::config::DatabaseSection) -> Self {
        trove_common::telemetry::init_for_test();
        let test_db = tokio::task::spawn_blocking(TestDb::migrated)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("test database: {e:#}"));
        Self {
            db: Db::from_url(&test_db.url, cfg),
            _test_db: test_db,
        }
    }

    /// Runs `f` on a pooled connection; a failure panics.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PgConnection) -> diesel::QueryResult<T> + Send + 'static,
    ) -> T {
        self.db
            .run(move |conn| f(conn).map_err(trove_common::db::DbError::from))
            .await
            .expect("test query")
    }
}

/// A live instance row `id` of tenant `t1` on datastore version `v1`: no server yet (BUILD), no
/// task, no host, no address. Tests change what they need.
pub fn instance_row(id: &str) -> trove_common::db::models::Instance {
    use trove_common::db::models::{instance::NewInstance, Instance};
    let none = trove_common::status::InstanceTask::None;
    Instance {
        task_id: none.code(),
        task_description: none.description().into(),
        task_start_time: None,
        ..Instance::building(
            NewInstance {
                id,
                name: "inst",
                tenant_id: "t1",
                flavor_id: "15",
                datastore_version_id: "v1",
                region_id: "RegionOne",
            },
            trove_common::db::now(),
        )
    }
}

/// A block of 64 ports of its own for each test stack's instances: the tests of one binary run at the
/// same time, each with its own database, so their allocators cannot see each other's ports.
pub fn port_block() -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let block = (std::process::id().wrapping_mul(7).wrapping_add(n) % 140) as u16;
    let start = 10000 + block * 64;
    (start, start + 63)
}

/// Settings for a test: fast timers, its own prefix and state directory.
pub fn test_settings(db_url: &str, prefix: &str, state: &Path) -> Settings {
    let mut s = Settings::default();
    s.database.connection = SecretString::from(db_url.to_owned());
    s.database.max_pool_size = 8;
    s.default.transport_url = transport_url();
    s.rabbitmq_management.url = management_url();
    s.default.default_datastore = Some("redis".into());
    s.default.report_interval = 1.0;
    s.default.usage_sleep_time = 0.2;
    s.default.agent_call_high_timeout = 20;
    s.default.agent_call_low_timeout = 5;
    s.default.module_reapply_instance_timeout = 10;
    // No default quota: fleets of one tenant are the tests' daily bread. The quota tests set Trove's
    // defaults back (or a tenant's own limits).
    s.default.max_instances_per_tenant = -1;
    s.default.max_volumes_per_tenant = -1;
    s.default.bind_host = "127.0.0.1".into();
    // The harness's tokens are noauth tokens (user = project = token); Keystone tests switch to
    // `keystone` in `TestEnv::start_with`.
    s.default.auth_strategy = "noauth".into();
    s.default.allow_noauth = true;
    s.amqp.prefix = prefix.into();
    // Five minutes unused, far beyond any test: test queues must not pile up on a shared broker,
    // whose restart (the broker test) recovers every durable queue left on it.
    s.amqp.queue_expires_ms = 5 * 60 * 1000;
    s.amqp.reconnect_delay = 0.2;
    s.amqp.guest_reconnect_delay = 0.2;
    s.api.outbox_poll_interval = 0.2;
    // The guests' database servers: checked twice a second, a dead one started again after a second
    // (long enough for a test to see the instance leave ACTIVE).
    s.guest.health_check_interval = 0.5;
    s.guest.server_restart_delay = 1.0;
    s.guest.server_start_timeout = 60;
    (s.compute.port_range_start, s.compute.port_range_end) = port_block();
    s.compute.state_path = state.to_path_buf();
    s.compute.guestagent_path = bin("trove-guestagent").to_string_lossy().into_owned();
    s
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A running control plane for one test.
pub struct TestEnv {
    pub db: TestDb,
    pub settings: Arc<Settings>,
    pub api_url: String,
    pub state_dir: tempfile::TempDir,
    pub pool: Db,
    shutdown: CancellationToken,
    services: Vec<tokio::task::JoinHandle<()>>,
    tm: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl TestEnv {
    /// Starts api, taskmanager and conductor in-process.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestEnv::start`], with a chance to change the settings first.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        trove_common::telemetry::init_for_test();
        let db = TestDb::create()?;
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let state_dir = tempfile::tempdir()?;
        let mut settings = test_settings(&db.url, &prefix, state_dir.path());
        tweak(&mut settings);
        let settings = Arc::new(settings);
        let pool = Db::from_url(&db.url, &settings.database);
        let shutdown = CancellationToken::new();
        let connect = || async {
            Broker::connect_service(&settings, Duration::from_secs(10))
                .await
                .context("cannot reach RabbitMQ: start it (scripts/stack services) or set TROVE_TEST_TRANSPORT_URL")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_url = format!("http://{}", listener.local_addr()?);
        let mut services = Vec::new();
        let (s, p, b, t) = (
            settings.clone(),
            pool.clone(),
            connect().await?,
            shutdown.clone(),
        );
        services.push(tokio::spawn(async move {
            if let Err(e) = trove_api::run(s, p, b, listener, t).await {
                tracing::error!(error = ?e, "api stopped");
            }
        }));
        let (s, p, b, t) = (
            settings.clone(),
            pool.clone(),
            connect().await?,
            shutdown.clone(),
        );
        services.push(tokio::spawn(async move {
            if let Err(e) = trove_conductor::run(s, p, b, t).await {
                tracing::error!(error = ?e, "conductor stopped");
            }
        }));
        let mut env = Self {
            db,
            settings,
            api_url,
            state_dir,
            pool,
            shutdown,
            services,
            tm: None,
        };
        env.start_taskmanager().await?;
        Ok(env)
    }

    /// (Re)starts the in-process taskmanager.
    pub async fn start_taskmanager(&mut self) -> anyhow::Result<()> {
        let token = self.shutdown.child_token();
        let b = Broker::connect_service(&self.settings, Duration::from_secs(10)).await?;
        let (s, p, t) = (self.settings.clone(), self.pool.clone(), token.clone());
        let handle = tokio::spawn(async move {
            if let Err(e) = trove_taskmanager::run(s, p, b.clone(), t).await {
                tracing::error!(error = ?e, "taskmanager stopped");
            }
            b.close().await;
        });
        self.tm = Some((token, handle));
        Ok(())
    }

    /// Stops the in-process taskmanager gracefully.
    pub async fn stop_taskmanager(&mut self) {
        if let Some((t, h)) = self.tm.take() {
            t.cancel();
            let _ = h.await;
        }
    }

    /// The API base for a tenant: `<url>/v1.0/<tenant>`.
    pub fn base(&self, tenant: &str) -> String {
        format!("{}/v1.0/{tenant}", self.api_url)
    }

    /// Runs the built `trove` CLI as `token` (noauth: the token is the user and project; `admin...` is admin).
    pub async fn trove(&self, token: &str, args: &[&str]) -> CliOutput {
        self.trove_in(token, args, None).await
    }

    /// [`TestEnv::trove`] in a working directory (for payload files).
    pub async fn trove_in(&self, token: &str, args: &[&str], cwd: Option<&Path>) -> CliOutput {
        trove_cli(&self.api_url, token, args, cwd).await
    }

    /// Registers `redis <version>` whose image (the local driver's directory of server binaries) is
    /// `image`, for builds that must fail or hang in a known way.
    pub fn register_redis_version(&self, version: &str, image: &Path) {
        let mut conn = self.db.conn();
        trove_migrations::manage::datastore_version_update(
            &mut conn, "redis", version, "redis", None, true,
        )
        .unwrap();
        diesel::sql_query(format!(
            "UPDATE datastore_versions SET image_id = '{}' WHERE name = '{version}'",
            image.display()
        ))
        .execute(&mut conn)
        .unwrap();
    }

    /// The `sent` stamp (guest clock, epoch seconds) of the newest heartbeat the conductor stored for
    /// `id` (0 before the first).
    pub fn last_heartbeat(&self, id: &str) -> f64 {
        self.query_strings(&format!(
            "SELECT sent::text AS v FROM conductor_lastseen \
             WHERE instance_id = '{id}' AND method_name = 'heartbeat'"
        ))
        .first()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
    }

    /// Runs SQL returning one text column, for assertions.
    pub fn query_strings(&self, sql: &str) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            v: String,
        }
        let rows: Vec<Row> = diesel::sql_query(sql)
            .load(&mut self.db.conn())
            .expect("query");
        rows.into_iter().map(|r| r.v).collect()
    }

    /// Kills every guest process this env's taskmanager started and every process still running
    /// under its state directory (the guests' datastore servers), and waits until they are gone.
    pub fn kill_guests(&self) {
        kill_guests_under(self.state_dir.path());
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for s in &self.services {
            s.abort();
        }
        if let Some((_, h)) = &self.tm {
            h.abort();
        }
        self.kill_guests();
        // The broker users of the guests the test did not delete.
        Management::for_settings(&self.settings).remove_guest_users(&self.settings.amqp.prefix);
    }
}

pub mod api;
mod broker_users;
mod poll;
mod private_broker;
pub use broker_users::{encode, management_url, Management};
mod process_stack;
pub use poll::eventually;
pub use private_broker::PrivateBroker;
pub use process_stack::{
    guest_pid, kill_guests_under, process_alive, property, restart_guest, sigkill_guest, trove_cli,
    Detached, ProcessStack,
};

/// The data rows of a prettytable, as trimmed cells (the header row is skipped).
pub fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The stdout of a CLI run that must have succeeded.
pub fn ok(out: &CliOutput) -> &str {
    assert_eq!(
        out.status, 0,
        "trove failed: stdout={} stderr={}",
        out.stdout, out.stderr
    );
    &out.stdout
}

/// An HTTP call as `token`; returns the status and the JSON body (null when empty).
pub async fn http(
    env: &TestEnv,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", env.base(token)))
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (status, value)
}

/// One value of a property table (`trove show`, `trove create`).
pub fn prop(out: &str, key: &str) -> String {
    rows(out)
        .into_iter()
        .find(|r| r.first().map(String::as_str) == Some(key))
        .and_then(|r| r.get(1).cloned())
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

/// `trove create <name> 15 --size 1 <extra>` as `token`; returns the instance id.
pub async fn instance_create(env: &TestEnv, token: &str, name: &str, extra: &[&str]) -> String {
    let mut argv = vec!["create", name, "15", "--size", "1"];
    argv.extend_from_slice(extra);
    let out = env.trove(token, &argv).await;
    prop(ok(&out), "id")
}

/// Waits (up to `timeout`) until `trove show` reports the instance ACTIVE.
pub async fn wait_active(env: &TestEnv, token: &str, id: &str, timeout: Duration) {
    eventually(timeout, &format!("instance {id} ACTIVE"), || async {
        let out = env.trove(token, &["show", id]).await;
        (out.status == 0 && prop(&out.stdout, "status") == "ACTIVE").then_some(())
    })
    .await
    .unwrap();
}
