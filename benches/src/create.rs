//! `trove-bench create`: instance create → ACTIVE latency with real databases, the memory each
//! instance costs, and (with `--density`) how many redis instances one host holds with all of them
//! ACTIVE.
//!
//! The control plane is the real service binaries against a fresh database and queue prefix, as in
//! `trove-bench reapply` ([`reapply::start_stack`]). N instances are created through the REST API,
//! `--concurrency` at a time; each one's time from its POST to `GET /instances/{id}` showing ACTIVE
//! (polled every 20 ms) is recorded. Then the resident memory of each guest agent
//! (`<state>/<id>/guest.pid`) and of each datastore server (every process whose `/proc/<pid>/cwd`
//! is `<state>/<id>/data`) is read, and the instances are deleted through the API, checking that no
//! live row, process or state directory is left.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::{Args, ValueEnum};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::probe::{self, Summary};
use crate::reapply::{self, Stack};

/// The datastore the instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Datastore {
    /// redis-server.
    Redis,
    /// MariaDB (`mariadbd`), Trove's mysql datastore.
    Mysql,
}

impl Datastore {
    /// The registered datastore and version (`trove-manage` seeds mysql 5.6 and redis 3.2.6).
    fn type_version(self) -> (&'static str, &'static str) {
        match self {
            Self::Redis => ("redis", "3.2.6"),
            Self::Mysql => ("mysql", "5.6"),
        }
    }
}

/// `trove-bench create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The instances' datastore.
    #[arg(long, value_enum, default_value = "redis")]
    pub datastore: Datastore,
    /// Instances to create.
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Creates in flight (each one polls its instance every 20 ms until ACTIVE).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Density: keep the N instances, report the host's memory used per instance and its load, and
    /// check after `--hold` seconds that all of them are still ACTIVE (then delete them).
    #[arg(long, alias = "keep")]
    pub density: bool,
    /// Density: how long to watch the instances stay ACTIVE, seconds (several heartbeats).
    #[arg(long, default_value_t = 75)]
    pub hold: u64,
    /// Parent of the guests' state directories (default: a temporary directory).
    #[arg(long)]
    pub state_root: Option<PathBuf>,
    /// `report_interval` of the guests, seconds (Trove's default is 30).
    #[arg(long, default_value_t = 30.0)]
    pub report_interval: f64,
    /// RUST_LOG of the services and guests.
    #[arg(long, default_value = "info")]
    pub rust_log: String,
    /// A label printed with the results (e.g. "before", "after").
    #[arg(long, default_value = "")]
    pub label: String,
    /// Keep the services' logs (their directory is printed) even when the run succeeds.
    #[arg(long)]
    pub keep_logs: bool,
    /// The guest agent binary (default: `target/guest/trove-guestagent` when it is built).
    #[arg(long)]
    pub guest_binary: Option<PathBuf>,
}

impl CreateArgs {
    /// The options `reapply::start_stack` reads (the reapply-only ones at their defaults).
    fn stack_args(&self) -> reapply::ReapplyArgs {
        let defaults = trove_common::config::Settings::default();
        reapply::ReapplyArgs {
            mode: reapply::Mode::Real,
            n: self.n,
            rounds: 0,
            create_concurrency: self.concurrency,
            state_root: self.state_root.clone(),
            report_interval: self.report_interval,
            rust_log: self.rust_log.clone(),
            fleet_connections: 1,
            queues_per_channel: 1,
            label: self.label.clone(),
            persistent_casts: defaults.default.module_reapply_persistent_casts,
            casts_in_flight: defaults.default.module_reapply_casts_in_flight,
            durable_guest_queues: defaults.amqp.durable_guest_queues,
            keep_logs: self.keep_logs,
            guest_binary: self.guest_binary.clone(),
            idle_secs: 0,
            broker_restart: false,
            broker_stop_cmd: String::new(),
            broker_start_cmd: String::new(),
        }
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(args: CreateArgs) -> anyhow::Result<()> {
    ensure!(args.n > 0, "--n must be at least 1");
    let stack_args = args.stack_args();
    let mut stack = reapply::start_stack(&stack_args, args.state_root.clone()).await?;
    let mut out = String::new();
    let result = bench(&args, &stack, &mut out).await;
    reapply::stop(&mut stack.services, Duration::from_secs(15)).await;
    // Whatever a failed run left behind: its guests and their servers.
    let leftovers = processes_under(&stack.state);
    if !leftovers.is_empty() {
        let pids: Vec<String> = leftovers.values().flatten().map(u32::to_string).collect();
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .status();
    }
    if args.state_root.is_some() {
        let _ = std::fs::remove_dir_all(&stack.state);
    }
    print!("{out}");
    let keep = args.keep_logs || result.is_err();
    if keep {
        let kept = std::mem::replace(&mut stack._work, tempfile::tempdir()?).keep();
        println!("service logs kept in {}", kept.display());
    }
    result
}

async fn bench(args: &CreateArgs, stack: &Stack, out: &mut String) -> anyhow::Result<()> {
    let mut conn = stack.db.conn();
    let machine = probe::machine(&mut conn);
    let (ds, version) = args.datastore.type_version();
    let _ = writeln!(
        out,
        "## trove-bench create --datastore {ds} --n {} --concurrency {}{} {}",
        args.n,
        args.concurrency,
        if args.density { " --density" } else { "" },
        args.label
    );
    let _ = writeln!(out, "machine: {machine}");
    let _ = writeln!(
        out,
        "servers: {}; {}",
        first_line(probe::command_output("redis-server", &["--version"])),
        first_line(probe::command_output("mariadbd", &["--version"]))
    );
    let _ = writeln!(out, "state directories: {}", stack.state.display());
    let mem_before = mem_available_kib();
    let load_before = probe::load();

    // Create, each one timed from its POST to ACTIVE.
    let t = Instant::now();
    let creates = futures_util::stream::iter(0..args.n)
        .map(|i| create_until_active(stack, ds, version, i))
        .buffer_unordered(args.concurrency.max(1));
    let results: Vec<anyhow::Result<(String, f64, f64)>> = creates.collect().await;
    let wall = t.elapsed();
    let mut ids = Vec::new();
    let mut to_active = Vec::new();
    let mut posts = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok((id, post_ms, active_ms)) => {
                ids.push(id);
                posts.push(post_ms);
                to_active.push(active_ms);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let _ = writeln!(
        out,
        "created {} of {} in {:.1} s (load before {load_before}, after {})",
        ids.len(),
        args.n,
        wall.as_secs_f64(),
        probe::load()
    );
    for f in failures.iter().take(5) {
        let _ = writeln!(out, "  failed: {f}");
    }
    let _ = writeln!(out, "create → ACTIVE, ms: {}", min_summary(&to_active));
    let _ = writeln!(out, "POST /instances answered, ms: {}", min_summary(&posts));

    // Memory, with everything ACTIVE.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let servers = processes_under(&stack.state);
    let mut guest_rss = Vec::new();
    let mut server_rss = Vec::new();
    let mut per_instance_rss = Vec::new();
    let mut per_instance_pss = Vec::new();
    let mut guest_pids = Vec::new();
    let tck = probe::CpuMeter::new().tck();
    for id in &ids {
        let dir = stack.state.join(id);
        let guest = probe::read_pid(&dir.join("guest.pid"));
        guest_pids.extend(guest.map(|p| (p, probe::start_epoch(p, tck))));
        let g = guest.and_then(probe::rss_kib).map(|(_, rss)| rss);
        let server_pids = servers.get(id).cloned().unwrap_or_default();
        let s: u64 = server_pids
            .iter()
            .filter_map(|p| probe::rss_kib(*p))
            .map(|(_, rss)| rss)
            .sum();
        if let Some(g) = g {
            guest_rss.push(g as f64 / 1024.0);
        }
        if !server_pids.is_empty() {
            server_rss.push(s as f64 / 1024.0);
        }
        per_instance_rss.push((g.unwrap_or(0) + s) as f64 / 1024.0);
        let pss: u64 = guest
            .into_iter()
            .chain(server_pids.iter().copied())
            .filter_map(pss_kib)
            .sum();
        per_instance_pss.push(pss as f64 / 1024.0);
    }
    let _ = writeln!(
        out,
        "RSS (VmRSS), MiB: guest agent {}; {ds} server {}; sum per instance {}; PSS sum per instance {}",
        min_summary(&guest_rss),
        min_summary(&server_rss),
        min_summary(&per_instance_rss),
        min_summary(&per_instance_pss)
    );

    if args.density {
        density(args, stack, &ids, mem_before, out).await?;
    }

    // Delete, then check nothing is left.
    let t = Instant::now();
    let deletes = futures_util::stream::iter(ids.iter())
        .map(|id| async move {
            let (status, v) = stack
                .request(reqwest::Method::DELETE, &format!("/instances/{id}"), None)
                .await?;
            ensure!(status == 202, "delete {id}: {status} {v}");
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(16);
    let deleted: Vec<anyhow::Result<()>> = deletes.collect().await;
    for d in deleted {
        d?;
    }
    let state = stack.state.clone();
    // A pid still there with the same start time (pids are reused: others compile meanwhile).
    let alive = |pids: &[(u32, Option<f64>)]| {
        pids.iter()
            .filter(|(p, started)| {
                started.is_some() && probe::start_epoch(*p, tck) == *started && !is_zombie(*p)
            })
            .count()
    };
    let left = reapply::until(
        "every instance deleted",
        Duration::from_secs(300),
        Duration::from_millis(100),
        || {
            Ok(reapply::count(
                &mut conn,
                "SELECT count(*) AS n FROM instances WHERE NOT deleted",
            )? == 0
                && processes_under(&state).is_empty()
                && alive(&guest_pids) == 0
                && ids.iter().all(|id| !state.join(id).exists()))
        },
    )
    .await;
    match left {
        Ok(took) => {
            let _ = writeln!(
                out,
                "deleted {} in {:.1} s; nothing left (no live rows, no guest agent, no server, no state directory)",
                ids.len(),
                (t.elapsed().max(took)).as_secs_f64()
            );
        }
        Err(e) => {
            let rows = reapply::count(
                &mut conn,
                "SELECT count(*) AS n FROM instances WHERE NOT deleted",
            )?;
            let procs = processes_under(&state)
                .values()
                .map(Vec::len)
                .sum::<usize>();
            let dirs = ids.iter().filter(|id| state.join(id).exists()).count();
            let _ = writeln!(
                out,
                "delete: LEFT OVER after 300 s: {rows} live rows, {} guest agents, {procs} servers, {dirs} state directories",
                alive(&guest_pids)
            );
            return Err(e);
        }
    }
    ensure!(
        failures.is_empty(),
        "{} creates failed (see above)",
        failures.len()
    );
    Ok(())
}

/// Density: the host's memory per instance, its load, and whether every instance stays ACTIVE.
async fn density(
    args: &CreateArgs,
    stack: &Stack,
    ids: &[String],
    mem_before: Option<u64>,
    out: &mut String,
) -> anyhow::Result<()> {
    let n = ids.len().max(1) as f64;
    let used = |now: Option<u64>| match (mem_before, now) {
        (Some(b), Some(a)) => format!("{:.1}", b.saturating_sub(a) as f64 / 1024.0 / n),
        _ => "?".into(),
    };
    let _ = writeln!(
        out,
        "density: {} ACTIVE; host memory used (MemAvailable drop since before the creates) {} MiB per instance; load {}",
        ids.len(),
        used(mem_available_kib()),
        probe::load()
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let states = futures_util::stream::iter(ids.iter())
        .map(|id| async move {
            let (status, v) = stack
                .request(reqwest::Method::GET, &format!("/instances/{id}"), None)
                .await?;
            ensure!(status == 200, "GET {id}: {status} {v}");
            Ok::<_, anyhow::Error>(v["instance"]["status"].as_str().unwrap_or("?").to_owned())
        })
        .buffer_unordered(16);
    let states: Vec<anyhow::Result<String>> = states.collect().await;
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for s in states {
        *by_status.entry(s?).or_default() += 1;
    }
    let mut counts: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
    counts.sort();
    let all_active = by_status.get("ACTIVE").copied() == Some(ids.len());
    let _ = writeln!(
        out,
        "density: after {} s: {} (all ACTIVE: {}); host memory used {} MiB per instance; load {}",
        args.hold,
        counts.join(", "),
        if all_active { "yes" } else { "NO" },
        used(mem_available_kib()),
        probe::load()
    );
    Ok(())
}

/// Creates one instance and polls it every 20 ms until ACTIVE. Returns its id, the POST's time and
/// the time from the POST to ACTIVE, in ms.
async fn create_until_active(
    stack: &Stack,
    ds: &str,
    version: &str,
    i: usize,
) -> anyhow::Result<(String, f64, f64)> {
    let body = json!({"instance": {"name": format!("bench-{i}"), "flavorRef": "15",
        "volume": {"size": 1}, "datastore": {"type": ds, "version": version}}});
    let t = Instant::now();
    let (status, v) = stack
        .request(reqwest::Method::POST, "/instances", Some(body))
        .await?;
    ensure!(status == 200, "create: {status} {v}");
    let posted = t.elapsed();
    let id = v["instance"]["id"]
        .as_str()
        .context("instance id")?
        .to_owned();
    let path = format!("/instances/{id}");
    loop {
        let (status, v): (u16, Value) = stack.request(reqwest::Method::GET, &path, None).await?;
        ensure!(status == 200, "GET {path}: {status} {v}");
        match v["instance"]["status"].as_str() {
            Some("ACTIVE") => break,
            Some(s @ ("ERROR" | "FAILED")) => bail!("instance {id} went {s}: {v}"),
            _ => {}
        }
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "instance {id} not ACTIVE after 300 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((id, probe::ms(posted), probe::ms(t.elapsed())))
}

/// The processes whose working directory is `<state>/<id>/data` (the datastore servers), by
/// instance id. A deleted directory reads as `<path> (deleted)`, which still counts.
pub(crate) fn processes_under(state: &Path) -> HashMap<String, Vec<u32>> {
    let mut by_id: HashMap<String, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if let Some(id) = instance_of_data_dir(state, &cwd) {
            by_id.entry(id).or_default().push(pid);
        }
    }
    by_id
}

/// The instance id when `cwd` is `<state>/<id>/data` (or that path, deleted). Pure.
fn instance_of_data_dir(state: &Path, cwd: &Path) -> Option<String> {
    let text = cwd.to_str()?;
    let text = text.strip_suffix(" (deleted)").unwrap_or(text);
    let rest = Path::new(text).strip_prefix(state).ok()?;
    let mut parts = rest.components();
    let id = parts.next()?.as_os_str().to_str()?.to_owned();
    (parts.next()?.as_os_str() == "data" && parts.next().is_none()).then_some(id)
}

/// Whether a process has exited and waits for its parent to reap it (state `Z`).
pub(crate) fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? == "Z"))
        .unwrap_or(false)
}

/// Proportional set size (shared pages split between the processes sharing them), kB.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    probe::meminfo_kib(&text, "Pss")
}

fn mem_available_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    probe::meminfo_kib(&text, "MemAvailable")
}

fn first_line(s: Option<String>) -> String {
    s.and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "not installed".into())
}

/// `min … / p50 … / p95 … / max …` of a sample.
fn min_summary(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    Summary::of(values).map_or("none".into(), |s| format!("min {min:.1} / {s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directories_name_their_instance() {
        let state = Path::new("/tmp/s");
        assert_eq!(
            instance_of_data_dir(state, Path::new("/tmp/s/abc/data")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            instance_of_data_dir(state, Path::new("/tmp/s/abc/data (deleted)")).as_deref(),
            Some("abc")
        );
        assert_eq!(instance_of_data_dir(state, Path::new("/tmp/s/abc")), None);
        assert_eq!(
            instance_of_data_dir(state, Path::new("/tmp/s/abc/data/x")),
            None
        );
        assert_eq!(
            instance_of_data_dir(state, Path::new("/tmp/other/abc/data")),
            None
        );
    }
}
