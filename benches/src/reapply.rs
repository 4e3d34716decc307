//! `trove-bench reapply`: fleet-wide module reapply throughput.
//!
//! The control plane runs as the real service binaries (`trove-api`, `trove-taskmanager`,
//! `trove-conductor`, from the directory this binary is in), each with its own pool and broker
//! connection, against a fresh database and a fresh exchange/queue prefix.
//!
//! - `--mode real`: N instances are created through the API with a ping module; the taskmanager's
//!   local compute driver starts one real `trove-guestagent` process per instance.
//! - `--mode fleet`: the N instances, their service statuses and their `instance_modules` rows are
//!   inserted with SQL (creating 10,000 instances through the API would measure the build path, not
//!   the reapply), and one `trove-bench fleet-host` process hosts the N guest agents
//!   ([`trove_guestagent::fleet`]).
//!
//! Either way the module is then updated and reapplied through the real API as an admin with
//! `batch_size` = N (`batch_delay` 0, which only matters between batches), and the benchmark polls
//! `GET /modules/{id}/instances?count_only=True` until it shows all N instances current. The
//! reapply itself goes through the api's outbox, the taskmanager, the broker, the guests and the
//! conductor, as in production.
//!
//! Real mode can also leave the fleet idle before the reapply (`--idle-secs`: the load's return to
//! idle, each guest's and server's CPU and memory) and restart the broker after it
//! (`--broker-restart`: how long until every guest reconnected, reported and is ACTIVE again); see
//! [`crate::idle_restart`] and `benches/fleet-on-one-host.sh`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use clap::{Args, ValueEnum};
use diesel::connection::SimpleConnection as _;
use diesel::sql_types::{BigInt, Double, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use trove_tests::TestDb;

use crate::fleet_host::{started_path, GuestLine, StatsFile};
use crate::idle_restart::{self, Created};
use crate::probe::{self, CpuMeter, Summary};

/// Where the guests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One real trove-guestagent process per instance (the taskmanager's local driver).
    Real,
    /// One process hosting every guest agent (trove-bench fleet-host).
    Fleet,
}

/// `trove-bench reapply` options.
#[derive(Debug, Args)]
pub struct ReapplyArgs {
    /// real: one guest process per instance; fleet: one process hosting all the guests.
    #[arg(long, value_enum, default_value = "real")]
    pub mode: Mode,
    /// Instances (and guests).
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Reapply rounds (module-update + module-reapply) measured one after the other.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Instance creates in flight (real mode).
    #[arg(long, default_value_t = 16)]
    pub create_concurrency: usize,
    /// Parent of the guests' state directories (default: a temporary directory; fleet mode defaults
    /// to one under /dev/shm, see BENCHMARKS.md).
    #[arg(long)]
    pub state_root: Option<PathBuf>,
    /// `report_interval` of the guests, seconds (Trove's default is 30).
    #[arg(long, default_value_t = 30.0)]
    pub report_interval: f64,
    /// RUST_LOG of the services and guests.
    #[arg(long, default_value = "info")]
    pub rust_log: String,
    /// Fleet mode: broker connections shared by the guests.
    #[arg(long, default_value_t = 4)]
    pub fleet_connections: usize,
    /// Fleet mode: guest queues per AMQP channel.
    #[arg(long, default_value_t = 250)]
    pub queues_per_channel: usize,
    /// A label printed with the results (e.g. "before", "after").
    #[arg(long, default_value = "")]
    pub label: String,
    /// `module_reapply_persistent_casts`: publish the reapply's module_apply casts persistent.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub persistent_casts: bool,
    /// `module_reapply_casts_in_flight`: a batch's casts awaiting their confirms at once.
    #[arg(long, default_value_t = trove_common::config::Settings::default().default.module_reapply_casts_in_flight)]
    pub casts_in_flight: u32,
    /// `[amqp] durable_guest_queues`: declare the guests' queues durable (persistent casts to them
    /// then cost the broker a disk write each).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub durable_guest_queues: bool,
    /// Keep the services' logs (their directory is printed) even when the run succeeds.
    #[arg(long)]
    pub keep_logs: bool,
    /// The guest agent binary real mode runs (default: `target/guest/trove-guestagent`, as guest
    /// images ship it, when it is built; otherwise the one beside this binary).
    #[arg(long)]
    pub guest_binary: Option<PathBuf>,
    /// Real mode: once every instance is ACTIVE, leave the fleet alone this many seconds and report
    /// the load's return to idle and the CPU and memory of each guest agent and datastore server
    /// (0: skip).
    #[arg(long, default_value_t = 0)]
    pub idle_secs: u64,
    /// Real mode: after the reapply rounds, restart the broker (`--broker-stop-cmd`, then
    /// `--broker-start-cmd`) and measure until every guest reported again and every instance is
    /// ACTIVE. This restarts the machine's broker: every other client of it is disconnected.
    #[arg(long)]
    pub broker_restart: bool,
    /// How `--broker-restart` stops the broker (`sh -c`).
    #[arg(long, default_value = "rabbitmqctl stop_app")]
    pub broker_stop_cmd: String,
    /// How `--broker-restart` starts it again (`sh -c`); the broker counts as back when it returns.
    #[arg(long, default_value = "rabbitmqctl start_app")]
    pub broker_start_cmd: String,
}

/// The guest agent binary of real mode: `--guest-binary`, else the `guest` profile's build, else
/// the one beside this binary.
pub fn guest_binary(args: &ReapplyArgs) -> PathBuf {
    if let Some(b) = &args.guest_binary {
        return b.clone();
    }
    let bin = trove_tests::bin_dir();
    let shipped = bin
        .parent()
        .map(|target| target.join("guest").join("trove-guestagent"));
    match shipped {
        Some(b) if b.is_file() => b,
        _ => bin.join("trove-guestagent"),
    }
}

/// A file's worth of INI for the services and the guests. Queues expire 10 s after their consumers
/// stop, so a run's 10,000 guest queues are gone before the next run measures anything (deleting
/// them costs RabbitMQ seconds of CPU, which landed in a later run's window when they lived 2 min).
fn config_text(db_url: &str, prefix: &str, port: u16, state: &Path, args: &ReapplyArgs) -> String {
    format!(
        "[DEFAULT]\n\
         transport_url = {transport}\n\
         bind_host = 127.0.0.1\n\
         bind_port = {port}\n\
         default_datastore = redis\n\
         auth_strategy = noauth\n\
         allow_noauth = true\n\
         report_interval = {report}\n\
         module_reapply_instance_timeout = 120\n\
         module_reapply_persistent_casts = {persistent}\n\
         module_reapply_casts_in_flight = {in_flight}\n\
         max_instances_per_tenant = -1\n\
         max_volumes_per_tenant = -1\n\
         [database]\n\
         connection = {db_url}\n\
         [amqp]\n\
         prefix = {prefix}\n\
         queue_expires_ms = 10000\n\
         durable_guest_queues = {durable}\n\
         [guest]\n\
         datastore_manager = redis\n\
         [compute]\n\
         state_path = {state}\n\
         guestagent_path = {guest}\n",
        transport = trove_tests::transport_url(),
        report = args.report_interval,
        persistent = args.persistent_casts,
        in_flight = args.casts_in_flight,
        durable = args.durable_guest_queues,
        state = state.display(),
        guest = guest_binary(args).display(),
    )
}

/// A service or fleet process this benchmark started.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// SIGTERM (kill(1): the workspace forbids `unsafe`), then SIGKILL after `grace`.
pub(crate) async fn stop(procs: &mut [Proc], grace: Duration) {
    let pids: Vec<String> = procs
        .iter()
        .filter_map(|p| p.child.id())
        .map(|p| p.to_string())
        .collect();
    if !pids.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .args(&pids)
            .status();
    }
    for p in procs.iter_mut() {
        if tokio::time::timeout(grace, p.child.wait()).await.is_err() {
            tracing::warn!(process = %p.name, "did not stop after SIGTERM; killing it");
            let _ = p.child.kill().await;
        }
    }
}

fn spawn_service(name: &str, conf: &Path, logs: &Path, rust_log: &str) -> anyhow::Result<Proc> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let child = Command::new(trove_tests::bin(name))
        .arg("--config-file")
        .arg(conf)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Instances ACTIVE: no task running and the guest's last status RUNNING.
pub(crate) const ACTIVE_SQL: &str =
    "SELECT count(*) AS n FROM instances i JOIN service_statuses s ON s.instance_id = i.id \
     WHERE NOT i.deleted AND i.task_id = 1 AND s.status_id = 1";

pub(crate) fn count(conn: &mut PgConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(diesel::sql_query(sql).get_result::<Count>(conn)?.n)
}

/// Polls `check` every `every` until it is true or `deadline` passes.
pub(crate) async fn until(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The control plane under test and the handles to take it down.
pub(crate) struct Stack {
    pub(crate) db: TestDb,
    pub(crate) conf: PathBuf,
    /// The guests' state directories (`<state>/<instance id>/`).
    pub(crate) state: PathBuf,
    pub(crate) api: String,
    pub(crate) services: Vec<Proc>,
    pub(crate) http: reqwest::Client,
    pub(crate) admin: String,
    pub(crate) _work: tempfile::TempDir,
}

impl Stack {
    fn base(&self) -> String {
        format!("{}/v1.0/{}", self.api, self.admin)
    }

    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base()))
            .header("X-Auth-Token", &self.admin)
            .timeout(Duration::from_secs(120));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }
}

pub(crate) async fn start_stack(
    args: &ReapplyArgs,
    state_root: Option<PathBuf>,
) -> anyhow::Result<Stack> {
    let db = TestDb::create()?;
    let work = tempfile::tempdir()?;
    let state = match state_root {
        Some(root) => {
            std::fs::create_dir_all(&root)?;
            tempfile::Builder::new()
                .prefix("trove-bench-")
                .tempdir_in(root)?
                .keep()
        }
        None => work.path().join("guests"),
    };
    std::fs::create_dir_all(&state)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let prefix = format!("b{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let conf = work.path().join("trove.conf");
    std::fs::write(&conf, config_text(&db.url, &prefix, port, &state, args))?;
    // First heartbeat of each guest: a trigger stamps every service status update (epoch seconds,
    // the database's clock, which is this machine's).
    db.conn().batch_execute(
        "CREATE TABLE bench_status_log (instance_id varchar(36) NOT NULL, status_id integer NOT NULL, \
           at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()));
         CREATE FUNCTION bench_log_status() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO bench_status_log (instance_id, status_id) VALUES (NEW.instance_id, NEW.status_id);
           RETURN NEW; END $$;
         CREATE TRIGGER bench_status AFTER UPDATE ON service_statuses FOR EACH ROW EXECUTE FUNCTION bench_log_status();",
    )?;
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut services = Vec::new();
    for name in ["trove-conductor", "trove-taskmanager", "trove-api"] {
        services.push(spawn_service(name, &conf, &logs, &args.rust_log)?);
    }
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let probe = http.clone();
    let url = format!("{api}/");
    let start = Instant::now();
    loop {
        if let Ok(r) = probe.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        for s in &mut services {
            if let Some(status) = s.child.try_wait()? {
                let log = std::fs::read_to_string(logs.join(format!("{}.log", s.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                bail!(
                    "{} exited at start ({status}):\n{}",
                    s.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the api did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = format!("admin{}", &uuid::Uuid::new_v4().simple().to_string()[..27]);
    Ok(Stack {
        db,
        conf,
        state,
        api,
        services,
        http,
        admin,
        _work: work,
    })
}

fn payload(version: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("message=Bench.V{version}\n"))
}

/// Creates the module (admin) and returns (id, md5).
async fn create_module(stack: &Stack) -> anyhow::Result<(String, String)> {
    let (status, v) = stack
        .request(
            reqwest::Method::POST,
            "/modules",
            Some(json!({"module": {"name": "benchmod", "module_type": "ping", "contents": payload(1),
                "datastore": {"type": "redis", "version": "3.2.6"}, "visible": 1, "live_update": 1}})),
        )
        .await?;
    ensure!(status == 200, "module-create: {status} {v}");
    Ok((
        v["module"]["id"].as_str().context("module id")?.to_owned(),
        v["module"]["md5"]
            .as_str()
            .context("module md5")?
            .to_owned(),
    ))
}

/// What the guests of a run are.
enum Guests {
    /// Real processes, by instance id.
    Real(HashMap<String, u32>),
    /// The fleet host and where it writes its counters.
    Fleet { host: Proc, stats: PathBuf },
}

/// Runs the benchmark and prints the report.
pub async fn run(args: ReapplyArgs) -> anyhow::Result<()> {
    ensure!(args.n > 0, "--n must be at least 1");
    ensure!(
        args.mode == Mode::Real || (args.idle_secs == 0 && !args.broker_restart),
        "--idle-secs and --broker-restart are for --mode real"
    );
    let state_root = match (args.mode, &args.state_root) {
        (_, Some(root)) => Some(root.clone()),
        (Mode::Fleet, None) => Some(PathBuf::from("/dev/shm")),
        (Mode::Real, None) => None,
    };
    let mut stack = start_stack(&args, state_root.clone()).await?;
    let result = bench(&args, &mut stack).await;
    // Guests first, then the services; the database goes with `stack.db`.
    let (guests, outcome) = match result {
        Ok((g, report)) => (Some(g), Ok(report)),
        Err((g, e)) => (g, Err(e)),
    };
    match guests {
        Some(Guests::Real(pids)) => {
            let mut pids: Vec<String> = pids.values().map(u32::to_string).collect();
            pids.sort();
            for chunk in pids.chunks(500) {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .args(chunk)
                    .status();
            }
        }
        Some(Guests::Fleet { host, .. }) => stop(&mut [host], Duration::from_secs(30)).await,
        None => {}
    }
    stop(&mut stack.services, Duration::from_secs(15)).await;
    if state_root.is_some() {
        let _ = std::fs::remove_dir_all(&stack.state);
    }
    match outcome {
        Ok(report) => {
            print!("{report}");
            if args.keep_logs {
                let kept = std::mem::replace(&mut stack._work, tempfile::tempdir()?).keep();
                println!("service logs kept in {}", kept.display());
            }
            Ok(())
        }
        Err(e) => {
            // Keep the logs and the configuration for a look.
            let kept = std::mem::replace(&mut stack._work, tempfile::tempdir()?).keep();
            eprintln!("service logs kept in {}", kept.display());
            Err(e)
        }
    }
}

type BenchResult = Result<(Guests, String), (Option<Guests>, anyhow::Error)>;

async fn bench(args: &ReapplyArgs, stack: &mut Stack) -> BenchResult {
    let mut conn = stack.db.conn();
    let machine = probe::machine(&mut conn);
    let (module_id, _md5) = create_module(stack).await.map_err(|e| (None, e))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## trove-bench reapply --mode {:?} --n {} --persistent-casts {} --casts-in-flight {} --durable-guest-queues {} {}",
        args.mode, args.n, args.persistent_casts, args.casts_in_flight, args.durable_guest_queues, args.label
    );
    let _ = writeln!(out, "machine: {machine}");
    let _ = writeln!(out, "state directories: {}", stack.state.display());
    let setup = match args.mode {
        Mode::Real => setup_real(args, stack, &module_id, &mut out)
            .await
            .map(|(g, c)| (g, Some(c))),
        Mode::Fleet => setup_fleet(args, stack, &module_id, &mut out)
            .await
            .map(|g| (g, None)),
    };
    let (guests, created) = match setup {
        Ok(g) => g,
        Err((g, e)) => return Err((g, e)),
    };
    let measured = async {
        if let (Guests::Real(pids), Some(created)) = (&guests, &created) {
            if args.idle_secs > 0 {
                idle_restart::idle(args, stack, pids, created, &mut out).await?;
            }
        }
        measure(args, stack, &module_id, &guests, &mut out).await?;
        if let (Guests::Real(pids), true) = (&guests, args.broker_restart) {
            idle_restart::broker_restart(args, stack, pids, &mut out).await?;
        }
        anyhow::Ok(())
    }
    .await;
    match measured {
        Ok(()) => Ok((guests, out)),
        Err(e) => {
            print!("{out}");
            Err((Some(guests), e))
        }
    }
}

/// Real mode: N instances through the API, one guest process each.
async fn setup_real(
    args: &ReapplyArgs,
    stack: &Stack,
    module_id: &str,
    out: &mut String,
) -> Result<(Guests, Created), (Option<Guests>, anyhow::Error)> {
    let res: anyhow::Result<(Guests, Created)> = async {
        let mut conn = stack.db.conn();
        let create = |i: usize| {
            let body = json!({"instance": {"name": format!("bench-{i}"), "flavorRef": "15",
                "volume": {"size": 1}, "datastore": {"type": "redis", "version": "3.2.6"},
                "modules": [{"id": module_id}]}});
            async move {
                let (status, v) = stack
                    .request(reqwest::Method::POST, "/instances", Some(body))
                    .await?;
                ensure!(status == 200, "create: {status} {v}");
                Ok::<_, anyhow::Error>(v["instance"]["id"].as_str().context("instance id")?.to_owned())
            }
        };
        let active_sql = ACTIVE_SQL;
        // One guest alone on a quiet machine first: its start-to-first-heartbeat without contention.
        let load = probe::load();
        let t = Instant::now();
        let first = create(0).await?;
        let single_active = until("the first instance ACTIVE", Duration::from_secs(120), Duration::from_millis(10), || {
            Ok(count(&mut conn, active_sql)? >= 1)
        })
        .await?;
        let _ = writeln!(
            out,
            "single instance: POST /instances → ACTIVE {:.2} s (load {load})",
            (t.elapsed().max(single_active)).as_secs_f64()
        );
        let t = Instant::now();
        let load = probe::load();
        let mut ids = vec![first];
        let rest = futures_util::stream::iter((1..args.n).map(create))
            .buffer_unordered(args.create_concurrency.max(1));
        use futures_util::StreamExt as _;
        let rest: Vec<anyhow::Result<String>> = rest.collect().await;
        for r in rest {
            ids.push(r?);
        }
        let posted = t.elapsed();
        let n = args.n as i64;
        until("every instance ACTIVE", Duration::from_secs(600), Duration::from_millis(100), || {
            Ok(count(&mut conn, active_sql)? >= n)
        })
        .await?;
        let all_active = t.elapsed();
        let created = Created {
            active_at: Instant::now(),
            load1: probe::load1(),
        };
        // Prepare's module results reported for every instance: the conductor is idle again.
        until("every prepare's module results", Duration::from_secs(300), Duration::from_millis(100), || {
            Ok(count(&mut conn, "SELECT count(*) AS n FROM guest_module_results")? >= n)
        })
        .await?;
        let _ = writeln!(
            out,
            "created {} instances through the API ({} in flight): all POSTs answered {:.1} s, all ACTIVE {:.1} s (load at start {load}, now {})",
            args.n,
            args.create_concurrency,
            posted.as_secs_f64(),
            all_active.as_secs_f64(),
            probe::load()
        );
        let mut pids = HashMap::new();
        for id in &ids {
            let pid = probe::read_pid(&stack.state.join(id).join("guest.pid"))
                .with_context(|| format!("guest.pid of {id}"))?;
            pids.insert(id.clone(), pid);
        }
        let tck = CpuMeter::new().tck();
        let first_hb = first_heartbeats(&mut conn)?;
        let mut lat = Vec::new();
        let mut single = None;
        for (id, pid) in &pids {
            let (Some(start), Some(hb)) = (probe::start_epoch(*pid, tck), first_hb.get(id)) else {
                continue;
            };
            let ms = (hb - start) * 1000.0;
            if *id == ids[0] {
                single = Some(ms);
            }
            lat.push(ms);
        }
        let _ = writeln!(
            out,
            "guest start-to-first-heartbeat (process start → the conductor's first service-status update), ms: single guest {}, all {}",
            single.map_or("?".into(), |v| format!("{v:.0}")),
            Summary::of(&lat).map_or("?".into(), |s| s.to_string())
        );
        Ok((Guests::Real(pids), created))
    }
    .await;
    res.map_err(|e| (None, e))
}

/// The first service-status update per instance (epoch seconds).
fn first_heartbeats(conn: &mut PgConnection) -> anyhow::Result<HashMap<String, f64>> {
    #[derive(QueryableByName)]
    struct Hb {
        #[diesel(sql_type = Text)]
        instance_id: String,
        #[diesel(sql_type = Double)]
        at: f64,
    }
    let rows: Vec<Hb> = diesel::sql_query(
        "SELECT instance_id, min(at) AS at FROM bench_status_log GROUP BY instance_id",
    )
    .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.instance_id, r.at)).collect())
}

/// Fleet mode: rows by SQL, guests in one process.
async fn setup_fleet(
    args: &ReapplyArgs,
    stack: &Stack,
    module_id: &str,
    out: &mut String,
) -> Result<Guests, (Option<Guests>, anyhow::Error)> {
    let prepared: anyhow::Result<(PathBuf, PathBuf, usize)> = async {
        let mut conn = stack.db.conn();
        #[derive(QueryableByName)]
        struct Md5 {
            #[diesel(sql_type = Text)]
            md5: String,
            #[diesel(sql_type = Text)]
            dsv: String,
        }
        let m: Md5 = diesel::sql_query(
            "SELECT md5::text AS md5, datastore_version_id AS dsv FROM modules WHERE id = $1",
        )
        .bind::<Text, _>(module_id)
        .get_result(&mut conn)?;
        let settings = trove_common::config::load(std::slice::from_ref(&stack.conf))?;
        let t = Instant::now();
        let mut lines = String::new();
        let mut values_i = Vec::with_capacity(args.n);
        let mut values_s = Vec::with_capacity(args.n);
        let mut values_m = Vec::with_capacity(args.n);
        for i in 0..args.n {
            let id = uuid::Uuid::new_v4().to_string();
            let key = uuid::Uuid::new_v4().simple().to_string();
            let sealed = trove_common::rpc::keys::seal_instance_key(&settings, &key)
                .context("secure messaging is off")?;
            let dir = stack.state.join(&id);
            std::fs::create_dir_all(&dir)?;
            // A prepared, running guest, as `prepare` leaves it.
            std::fs::write(
                dir.join("guest_state.json"),
                r#"{"service_status": "running", "prepared": true}"#,
            )?;
            lines.push_str(&serde_json::to_string(&GuestLine {
                id: id.clone(),
                key,
                state_dir: dir,
            })?);
            lines.push('\n');
            values_i.push(format!(
                "('{id}', now() at time zone 'utc', now() at time zone 'utc', 'bench-{i}', 'ACTIVE', 1, \
                 'No tasks for the instance.', 1, '15', '{tenant}', '{dsv}', 'RegionOne', '{sealed}')",
                tenant = stack.admin,
                dsv = m.dsv,
            ));
            values_s.push(format!(
                "('{}', '{id}', 1, 'running', now() at time zone 'utc')",
                uuid::Uuid::new_v4()
            ));
            values_m.push(format!(
                "('{}', '{id}', '{module_id}', '{md5}', now() at time zone 'utc', now() at time zone 'utc')",
                uuid::Uuid::new_v4(),
                md5 = m.md5
            ));
        }
        for chunk in 0..args.n.div_ceil(1000) {
            let r = chunk * 1000..((chunk + 1) * 1000).min(args.n);
            conn.batch_execute(&format!(
                "INSERT INTO instances (id, created, updated, name, server_status, task_id, task_description, \
                 volume_size, flavor_id, tenant_id, datastore_version_id, region_id, encrypted_key) VALUES {};
                 INSERT INTO service_statuses (id, instance_id, status_id, status_description, updated_at) VALUES {};
                 INSERT INTO instance_modules (id, instance_id, module_id, md5, created, updated) VALUES {};",
                values_i[r.clone()].join(","),
                values_s[r.clone()].join(","),
                values_m[r].join(",")
            ))?;
        }
        conn.batch_execute("ANALYZE")?;
        let guests = stack.state.join("fleet-guests.jsonl");
        std::fs::write(&guests, lines)?;
        let stats = stack.state.join("fleet-stats.json");
        let _ = writeln!(
            out,
            "fleet setup: {} instances, service statuses and instance_modules rows inserted by SQL in {:.1} s",
            args.n,
            t.elapsed().as_secs_f64()
        );
        Ok((guests, stats, args.n))
    }
    .await;
    let (guests_file, stats, n) = prepared.map_err(|e| (None, e))?;
    let logs = stack._work.path().join("logs");
    let log = std::fs::File::create(logs.join("fleet-host.log")).map_err(|e| (None, e.into()))?;
    let spawned = Command::new(std::env::current_exe().map_err(|e| (None, e.into()))?)
        .arg("fleet-host")
        .arg("--config")
        .arg(&stack.conf)
        .arg("--guests")
        .arg(&guests_file)
        .arg("--stats")
        .arg(&stats)
        .arg("--connections")
        .arg(args.fleet_connections.to_string())
        .arg("--queues-per-channel")
        .arg(args.queues_per_channel.to_string())
        .env("RUST_LOG", &args.rust_log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn();
    let mut child =
        spawned.map_err(|e| (None, anyhow::Error::from(e).context("starting fleet-host")))?;
    let spawned_at = epoch_now();
    let t = Instant::now();
    let load = probe::load();
    let stdout = child.stdout.take().expect("piped");
    let mut host = Proc {
        name: "fleet-host".into(),
        child,
    };
    let ready: anyhow::Result<()> = async {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        loop {
            match tokio::time::timeout(Duration::from_secs(600), lines.next_line()).await {
                Ok(Ok(Some(l))) if l.trim() == "ready" => break,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => bail!("fleet-host exited before it was ready (see fleet-host.log)"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("fleet-host not ready after 600 s"),
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = ready {
        stop(std::slice::from_mut(&mut host), Duration::from_secs(5)).await;
        return Err((None, e));
    }
    let ready_after = t.elapsed();
    let guests = Guests::Fleet {
        host,
        stats: stats.clone(),
    };
    let rest: anyhow::Result<()> = async {
        let mut conn = stack.db.conn();
        let n = n as i64;
        let hb = until("every fleet guest's first heartbeat", Duration::from_secs(600), Duration::from_millis(100), || {
            Ok(count(&mut conn, "SELECT count(DISTINCT instance_id) AS n FROM bench_status_log")? >= n)
        })
        .await?;
        let started: StatsFile = serde_json::from_slice(&std::fs::read(started_path(&stats))?)?;
        let first = first_heartbeats(&mut conn)?;
        let lat: Vec<f64> = started
            .started
            .iter()
            .filter_map(|(id, at)| first.get(id).map(|hb| (hb - at) * 1000.0))
            .collect();
        let last_hb = first.values().cloned().fold(f64::MIN, f64::max);
        let _ = writeln!(
            out,
            "fleet host: {} guests ready {:.1} s after spawn (load at spawn {load}); every first heartbeat stored {:.1} s after spawn ({:.1} s after ready)",
            started.ready,
            ready_after.as_secs_f64(),
            last_hb - spawned_at,
            hb.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "guest start-to-first-heartbeat (guest ready in the fleet → the conductor's first service-status update), ms: {}",
            Summary::of(&lat).map_or("?".into(), |s| s.to_string())
        );
        // Let the start-up heartbeats drain out of the conductor before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }
    .await;
    match rest {
        Ok(()) => Ok(guests),
        Err(e) => Err((Some(guests), e)),
    }
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn read_fleet_stats(path: &Path) -> StatsFile {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The timeline of a job from its rows (the services' clock, UTC).
#[derive(QueryableByName, Debug)]
struct JobTimes {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    applied: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    failed: i32,
    #[diesel(sql_type = Double)]
    started: f64,
    #[diesel(sql_type = Double)]
    last_sent: f64,
    #[diesel(sql_type = Double)]
    last_answered: f64,
    #[diesel(sql_type = Double)]
    finished: f64,
}

fn job_times(conn: &mut PgConnection, module_id: &str) -> anyhow::Result<JobTimes> {
    let e = |c: &str| format!("extract(epoch FROM {c})::float8");
    Ok(diesel::sql_query(format!(
        "SELECT j.state::text AS state, j.applied, j.failed, {} AS started, \
           (SELECT {} FROM reapply_job_items WHERE job_id = j.id) AS last_sent, \
           (SELECT {} FROM reapply_job_items WHERE job_id = j.id) AS last_answered, \
           {} AS finished \
         FROM reapply_jobs j WHERE module_id = $1 ORDER BY created DESC LIMIT 1",
        e("j.started"),
        e("max(sent_at)"),
        e("max(answered_at)"),
        e("j.finished"),
    ))
    .bind::<Text, _>(module_id)
    .get_result(conn)?)
}

/// The measured part: update, reapply, wait until the count shows all N current. `rounds` times.
async fn measure(
    args: &ReapplyArgs,
    stack: &Stack,
    module_id: &str,
    guests: &Guests,
    out: &mut String,
) -> anyhow::Result<()> {
    let n = args.n as i64;
    let mut meter = CpuMeter::new();
    for s in &stack.services {
        meter.add(s.name.trim_start_matches("trove-"), vec![s.pid()]);
    }
    match guests {
        Guests::Real(pids) => meter.add("guests", pids.values().copied().collect()),
        Guests::Fleet { host, .. } => meter.add("fleet-host", vec![host.pid()]),
    }
    meter.add("rabbitmq", probe::pids_named("beam.smp"));
    meter.add("postgres (all backends)", probe::pids_named("postgres"));
    let mut conn = stack.db.conn();
    let count_url = format!("/modules/{module_id}/instances?count_only=True");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| round | 202 → all N current (s) | instance-applies/s | broker msgs received / apply | broker deliveries / apply | job after the 202 (s): selected / casts confirmed / last answer / recorded | CPU s in the window | load |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for round in 1..=args.rounds {
        let (status, v) = stack
            .request(
                reqwest::Method::PUT,
                &format!("/modules/{module_id}"),
                Some(json!({"module": {"contents": payload(round + 1)}})),
            )
            .await?;
        ensure!(status == 200, "module-update: {status} {v}");
        let new_md5 = v["module"]["md5"].as_str().context("md5")?.to_owned();
        // Quiet before the window: the previous round's stragglers and the counters' own traffic.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let broker_before = probe::broker_counters().unwrap_or_default();
        let fleet_before = match guests {
            Guests::Fleet { stats, .. } => Some(read_fleet_stats(stats)),
            Guests::Real(_) => None,
        };
        let load = probe::load();
        let cpu_before = meter.sample();
        let t0 = Instant::now();
        let (status, v) = stack
            .request(
                reqwest::Method::PUT,
                &format!("/modules/{module_id}/instances"),
                Some(json!({"reapply": {"batch_size": args.n, "batch_delay": 0,
                    "include_clustered": 0, "force": 0}})),
            )
            .await?;
        ensure!(status == 202, "module-reapply: {status} {v}");
        let t202 = Instant::now();
        let at202 = epoch_now();
        loop {
            let (status, v) = stack
                .request(reqwest::Method::GET, &count_url, None)
                .await?;
            ensure!(status == 200, "module-instance-count: {status} {v}");
            let rows = v["instances"].as_array().cloned().unwrap_or_default();
            let done = rows.len() == 1
                && rows[0]["module_md5"] == json!(new_md5)
                && rows[0]["instance_count"] == json!(n);
            if done {
                break;
            }
            // A job that finished with failures never shows all N current: stop waiting then.
            if count(
                &mut conn,
                "SELECT count(*) AS n FROM (SELECT state, failed FROM reapply_jobs ORDER BY created DESC LIMIT 1) j \
                 WHERE state = 'finished' AND failed > 0",
            )? > 0
            {
                let _ = writeln!(out, "round {round}: the job finished with failures: {v}");
                break;
            }
            ensure!(
                t202.elapsed() < Duration::from_secs(900),
                "not all current after 900 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = t202.elapsed();
        let cpu_after = meter.sample();
        let request_ms = probe::ms(t202 - t0);
        let broker_after = probe::broker_counters().unwrap_or_default();
        let job = job_times(&mut conn, module_id)?;
        ensure!(job.state == "finished", "job not finished: {job:?}");
        if job.failed > 0 {
            let _ = writeln!(
                out,
                "round {round}: {} applied, {} FAILED (see the taskmanager log)",
                job.applied, job.failed
            );
        }
        let received = broker_after.received.saturating_sub(broker_before.received);
        let delivered = broker_after
            .delivered
            .saturating_sub(broker_before.delivered);
        let per = |x: u64| x as f64 / args.n as f64;
        let _ = writeln!(
            out,
            "| {round} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {} | {load} |",
            elapsed.as_secs_f64(),
            args.n as f64 / elapsed.as_secs_f64(),
            per(received),
            per(delivered),
            job.started - at202,
            job.last_sent - at202,
            job.last_answered - at202,
            job.finished - at202,
            probe::cpu_delta(&cpu_before, &cpu_after),
        );
        let _ = writeln!(
            out,
            "|  | (PUT answered in {request_ms:.0} ms) |  |  |  |  |  |  |"
        );
        if let (Some(before), Guests::Fleet { stats, .. }) = (fleet_before, guests) {
            let after = read_fleet_stats(stats);
            let _ = writeln!(
                out,
                "|  | (fleet counters in the window: {} deliveries to guests, {} casts to the conductor confirmed, {} failed) |  |  |  |  |  |  |",
                after.deliveries - before.deliveries,
                after.casts - before.casts,
                after.cast_failures - before.cast_failures
            );
        }
    }
    let _ = writeln!(
        out,
        "\nbroker messages: counted by RabbitMQ (`rabbit_global_counters`, whole broker: other users' traffic in the window counts too); expected per apply: module_apply + module_results = 2, plus 1 reapply_module per job (1/N) and the heartbeats that fall in the window"
    );
    // Idle memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    match guests {
        Guests::Real(pids) => {
            let mut hwm = Vec::new();
            let mut rss = Vec::new();
            for pid in pids.values() {
                if let Some((h, r)) = probe::rss_kib(*pid) {
                    hwm.push(h as f64 / 1024.0);
                    rss.push(r as f64 / 1024.0);
                }
            }
            let guest = guest_binary(args);
            let _ = writeln!(
                out,
                "real guest processes ({} alive of {}; {}, {:.1} MB), MiB: peak RSS (VmHWM) {}; idle RSS (VmRSS) {}",
                rss.len(),
                pids.len(),
                guest.display(),
                std::fs::metadata(&guest).map_or(0.0, |m| m.len() as f64 / 1e6),
                Summary::of(&hwm).map_or("?".into(), |s| s.to_string()),
                Summary::of(&rss).map_or("?".into(), |s| s.to_string())
            );
        }
        Guests::Fleet { host, .. } => {
            if let Some((h, r)) = probe::rss_kib(host.pid()) {
                let _ = writeln!(
                    out,
                    "fleet host process: peak RSS {:.1} MiB, idle RSS {:.1} MiB for {} guests = {:.1} KiB per guest (idle)",
                    h as f64 / 1024.0,
                    r as f64 / 1024.0,
                    args.n,
                    r as f64 / args.n as f64
                );
            }
        }
    }
    Ok(())
}
