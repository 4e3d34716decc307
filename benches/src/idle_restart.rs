//! What `trove-bench reapply --mode real` measures besides the reapply (issue 14):
//!
//! - `--idle-secs S` ([`idle`]): right after the last create, with every instance ACTIVE and the
//!   prepare module results in, the fleet is left alone for S seconds. The 1-minute load average and
//!   the instantaneous demand (`procs_running` in `/proc/stat`) are sampled every second; at the end,
//!   the CPU time each guest agent and each datastore server used in the window, the services',
//!   RabbitMQ's and PostgreSQL's totals, and the resident memory of the guests and the servers.
//! - `--broker-restart` ([`broker_restart`]): after the reapply rounds, the broker is stopped and
//!   started (`--broker-stop-cmd`, `--broker-start-cmd`, through `sh -c`), and the run polls until
//!   every guest has reported again (`service_statuses.updated_at` after the broker's return, by the
//!   database's clock) and every instance is ACTIVE on such a report, with the load, the broker's
//!   connections and whether any guest process was restarted.
//!
//! The whole machine's broker is restarted: every other client of it is disconnected too.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use diesel::sql_types::{Double, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::create;
use crate::probe::{self, CpuMeter, Summary};
use crate::reapply::{count, ReapplyArgs, Stack, ACTIVE_SQL};

/// How long the broker restart waits for every guest to report and every instance to be ACTIVE.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(300);

/// What `setup_real` saw when the last instance turned ACTIVE.
pub(crate) struct Created {
    /// When the poll saw every instance ACTIVE.
    pub(crate) active_at: Instant,
    /// The 1-minute load average then.
    pub(crate) load1: Option<f64>,
}

/// One reading of the machine's load.
#[derive(Debug, Clone, Copy)]
struct LoadSample {
    at: Instant,
    load1: f64,
    running: u64,
    blocked: u64,
}

/// Reads the load every `every` in a task of its own until [`Sampler::finish`] (or until dropped).
struct Sampler {
    stop: DropGuard,
    task: JoinHandle<Vec<LoadSample>>,
}

impl Sampler {
    fn start(every: Duration) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let (Some(load1), Some((running, blocked))) = (probe::load1(), probe::procs()) {
                    samples.push(LoadSample {
                        at: Instant::now(),
                        load1,
                        running,
                        blocked,
                    });
                }
            }
            samples
        });
        Self {
            stop: stop.drop_guard(),
            task,
        }
    }

    async fn finish(self) -> Vec<LoadSample> {
        drop(self.stop);
        self.task.await.unwrap_or_default()
    }
}

/// `p50 … / max …` of the samples' `procs_running`, and the largest `procs_blocked`.
fn demand(samples: &[LoadSample]) -> String {
    let running: Vec<f64> = samples.iter().map(|s| s.running as f64).collect();
    let blocked = samples.iter().map(|s| s.blocked).max().unwrap_or(0);
    match Summary::of(&running) {
        Some(s) => format!(
            "procs_running p50 {:.0} / p95 {:.0} / max {:.0} (n {}), procs_blocked max {blocked}",
            s.p50, s.p95, s.max, s.n
        ),
        None => "no samples".into(),
    }
}

/// `p50 … / p95 … / max …` with `digits` decimals.
fn pcts(values: &[f64], digits: usize) -> String {
    Summary::of(values).map_or("none".into(), |s| {
        format!(
            "p50 {:.d$} / p95 {:.d$} / max {:.d$}",
            s.p50,
            s.p95,
            s.max,
            d = digits
        )
    })
}

/// The broker's address, from the transport URL (`rabbit://user:pass@host:port/vhost`).
fn broker_addr(transport_url: &str) -> (String, u16) {
    let url = reqwest::Url::parse(transport_url).ok();
    let host = url
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = url.and_then(|u| u.port()).unwrap_or(5672);
    (host, port)
}

fn accepts(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs as _;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
        })
}

/// The AMQP connections the broker holds (every client's, not only this run's), or `None` when
/// `rabbitmqctl` cannot say.
fn broker_connections() -> Option<usize> {
    let out = probe::command_output(
        "rabbitmqctl",
        &["list_connections", "-q", "--no-table-headers", "name"],
    )?;
    Some(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// The processes of `pids` that hold an established TCP connection to `port` on this host.
fn connected(pids: &[u32], port: u16) -> HashSet<u32> {
    let sockets = probe::connections_to(port);
    pids.iter()
        .copied()
        .filter(|p| probe::holds_socket(*p, &sockets))
        .collect()
}

/// Idle: see the module documentation.
pub(crate) async fn idle(
    args: &ReapplyArgs,
    stack: &Stack,
    guests: &HashMap<String, u32>,
    created: &Created,
    out: &mut String,
) -> anyhow::Result<()> {
    let n = guests.len();
    let window = Duration::from_secs(args.idle_secs);
    let tck = CpuMeter::new().tck();
    let guest_pids: Vec<u32> = guests.values().copied().collect();
    let server_pids: Vec<u32> = create::processes_under(&stack.state)
        .into_values()
        .flatten()
        .collect();
    let mut meter = CpuMeter::new();
    for s in &stack.services {
        meter.add(s.name.trim_start_matches("trove-"), vec![s.pid()]);
    }
    meter.add("guests (all)", guest_pids.clone());
    meter.add("redis-servers (all)", server_pids.clone());
    meter.add("rabbitmq (beam.smp)", probe::pids_named("beam.smp"));
    meter.add("postgres (all backends)", probe::pids_named("postgres"));
    let cpu = |pids: &[u32]| -> Vec<Option<f64>> {
        pids.iter().map(|p| probe::cpu_seconds(*p, tck)).collect()
    };
    let guests_before = cpu(&guest_pids);
    let servers_before = cpu(&server_pids);
    let totals_before = meter.sample();
    let started = Instant::now();
    let sampler = Sampler::start(Duration::from_secs(1));
    tokio::time::sleep(window).await;
    let samples = sampler.finish().await;
    let guests_after = cpu(&guest_pids);
    let servers_after = cpu(&server_pids);
    let totals_after = meter.sample();
    let secs = started.elapsed().as_secs_f64();

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "idle: {n} instances left alone for {secs:.0} s, from {:.1} s after the last one turned ACTIVE (the prepare module results were in)",
        (started - created.active_at).as_secs_f64()
    );
    let since_active = |s: &LoadSample| (s.at - created.active_at).as_secs_f64();
    let below = samples.iter().find(|s| s.load1 < 1.0);
    let bound = created
        .load1
        .map_or("?".into(), |l| format!("{:.0}", 60.0 * l.max(1.0).ln()));
    let at_active = created.load1.map_or("?".into(), |l| format!("{l:.2}"));
    match below {
        Some(s) => {
            let t = since_active(s);
            let _ = writeln!(
                out,
                "idle: 1-min load average {at_active} at the last ACTIVE, below 1 ({:.2}) {t:.0} s after it (within a minute: {}); from {at_active}, an idle machine needs about 60·ln(L) = {bound} s (the kernel recomputes it every 5 s)",
                s.load1,
                if t <= 60.0 { "yes" } else { "NO" }
            );
        }
        None => {
            let lowest = samples
                .iter()
                .map(|s| s.load1)
                .fold(f64::INFINITY, f64::min);
            let last = samples.last().map_or(f64::NAN, |s| s.load1);
            let _ = writeln!(
                out,
                "idle: 1-min load average {at_active} at the last ACTIVE, NOT below 1 within the {secs:.0} s window (lowest {lowest:.2}, {last:.2} at the end); from {at_active}, an idle machine needs about 60·ln(L) = {bound} s (the kernel recomputes it every 5 s)"
            );
        }
    }
    let _ = writeln!(
        out,
        "idle: instantaneous demand (/proc/stat every second, counting the sampling thread): {}; 1-min load average {} at the end of the window",
        demand(&samples),
        samples.last().map_or("?".into(), |s| format!("{:.2}", s.load1))
    );
    for (what, before, after) in [
        ("guest agent", &guests_before, &guests_after),
        ("redis-server", &servers_before, &servers_after),
    ] {
        let used: Vec<f64> = before
            .iter()
            .zip(after.iter())
            .filter_map(|(b, a)| Some(a.as_ref()? - b.as_ref()?))
            .collect();
        let share: Vec<f64> = used.iter().map(|c| c / secs * 100.0).collect();
        let tick = 1.0 / tck;
        let total: f64 = used.iter().sum();
        let _ = writeln!(
            out,
            "idle: CPU per {what} process over the {secs:.0} s ({} of {} processes alive at both ends): CPU-s (in clock ticks of {tick:.2} s) {}; % of one core {}; all of them {total:.2} CPU-s = {:.2} % of one core",
            used.len(),
            before.len(),
            pcts(&used, 2),
            pcts(&share, 3),
            total / secs * 100.0
        );
    }
    let _ = writeln!(
        out,
        "idle: CPU in the window (whole processes: rabbitmq and postgres serve others too): {}",
        probe::cpu_delta(&totals_before, &totals_after)
    );
    let rss = |pids: &[u32]| -> Vec<f64> {
        pids.iter()
            .filter_map(|p| probe::rss_kib(*p))
            .map(|(_, rss)| rss as f64 / 1024.0)
            .collect()
    };
    let (guest_rss, server_rss) = (rss(&guest_pids), rss(&server_pids));
    let p50_max = |v: &[f64]| {
        Summary::of(v).map_or("none".into(), |s| {
            format!("p50 {:.1} / max {:.1} (n {})", s.p50, s.max, s.n)
        })
    };
    let _ = writeln!(
        out,
        "idle: RSS at the end of the window, MiB: guest agent {}; redis-server {}",
        p50_max(&guest_rss),
        p50_max(&server_rss)
    );
    let mut conn = stack.db.conn();
    let active = count(&mut conn, ACTIVE_SQL)?;
    let (host, port) = broker_addr(&trove_tests::transport_url());
    let _ = writeln!(
        out,
        "idle: at the end, {active} of {n} ACTIVE; the broker at {host}:{port} accepts connections: {}",
        if accepts(&host, port) { "yes" } else { "NO" }
    );
    Ok(())
}

/// Runs `cmd` through `sh -c`; its time, or why it failed.
async fn sh(cmd: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running `{cmd}`"))?;
    if !output.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(t.elapsed())
}

/// Watches the broker's port every 100 ms: when it first refused a connection, and when it first
/// accepted one after that (then it stops probing, so the broker sees one probe after its return).
/// Stops when finished or dropped.
struct PortWatch {
    stop: DropGuard,
    task: JoinHandle<(Option<Instant>, Option<Instant>)>,
}

impl PortWatch {
    fn start(host: String, port: u16) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let (mut down, mut up) = (None, None);
            while !token.is_cancelled() && up.is_none() {
                let open = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect((host.as_str(), port)),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                let now = Instant::now();
                match (open, down) {
                    (false, None) => down = Some(now),
                    (true, Some(_)) => up = Some(now),
                    _ => {}
                }
                tokio::select! {
                    () = token.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            (down, up)
        });
        Self {
            stop: stop.drop_guard(),
            task,
        }
    }

    async fn finish(self) -> (Option<Instant>, Option<Instant>) {
        drop(self.stop);
        self.task.await.unwrap_or_default()
    }
}

#[derive(QueryableByName)]
struct DbNow {
    /// `now() at time zone 'utc'`, as `service_statuses.updated_at` is stored.
    #[diesel(sql_type = Text)]
    utc: String,
    /// The same instant, epoch seconds (`bench_status_log.at`'s clock).
    #[diesel(sql_type = Double)]
    epoch: f64,
}

/// Per instance, seconds from `since` (epoch) to its first service-status update after it.
fn first_reports_after(conn: &mut PgConnection, since: f64) -> anyhow::Result<Vec<f64>> {
    #[derive(QueryableByName)]
    struct First {
        #[diesel(sql_type = Double)]
        after: f64,
    }
    let rows: Vec<First> = diesel::sql_query(
        "SELECT min(at) - $1 AS after FROM bench_status_log WHERE at > $1 GROUP BY instance_id",
    )
    .bind::<Double, _>(since)
    .load(conn)?;
    Ok(rows.into_iter().map(|r| r.after).collect())
}

/// Broker restart: see the module documentation.
pub(crate) async fn broker_restart(
    args: &ReapplyArgs,
    stack: &Stack,
    guests: &HashMap<String, u32>,
    out: &mut String,
) -> anyhow::Result<()> {
    let n = guests.len();
    let tck = CpuMeter::new().tck();
    let (host, port) = broker_addr(&trove_tests::transport_url());
    let guest_pids: Vec<u32> = guests.values().copied().collect();
    let started: HashMap<u32, Option<f64>> = guest_pids
        .iter()
        .map(|p| (*p, probe::start_epoch(*p, tck)))
        .collect();
    let servers_before = create::processes_under(&stack.state);
    let connections_before = broker_connections();
    let connected_before = connected(&guest_pids, port).len();
    // Which services hold a connection: a publisher reconnects on its next publish, not before.
    let services_connected = || {
        let pids: Vec<u32> = stack.services.iter().map(|s| s.pid()).collect();
        let holding = connected(&pids, port);
        let names: Vec<&str> = stack
            .services
            .iter()
            .filter(|s| holding.contains(&s.pid()))
            .map(|s| s.name.trim_start_matches("trove-"))
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let services_before = services_connected();
    let mut conn = stack.db.conn();

    let sampler = Sampler::start(Duration::from_secs(1));
    let watch = PortWatch::start(host.clone(), port);
    let t_stop = Instant::now();
    let stopped = sh(&args.broker_stop_cmd).await;
    // Started whatever the stop did: a failed stop may have half-stopped it.
    let start_took = match sh(&args.broker_start_cmd).await {
        Ok(d) => d,
        Err(e) => {
            sampler.finish().await;
            watch.finish().await;
            return Err(e.context(format!(
                "the broker may still be stopped: start it (`{}`)",
                args.broker_start_cmd
            )));
        }
    };
    let t_up = Instant::now();
    let up: DbNow = diesel::sql_query(
        "SELECT (now() at time zone 'utc')::text AS utc, extract(epoch FROM now())::float8 AS epoch",
    )
    .get_result(&mut conn)?;
    let stop_took = stopped.context("stopping the broker")?;

    // Until every guest reported after `up` and every instance is ACTIVE on such a report.
    let reported_sql = format!(
        "SELECT count(*) AS n FROM instances i JOIN service_statuses s ON s.instance_id = i.id \
         WHERE NOT i.deleted AND s.updated_at > '{}'::timestamp",
        up.utc
    );
    let fresh_active_sql = format!("{ACTIVE_SQL} AND s.updated_at > '{}'::timestamp", up.utc);
    let total = n as i64;
    let mut waiting: Vec<u32> = guest_pids.clone();
    let (mut all_connected, mut all_reported, mut all_active) = (None, None, None);
    let mut fewest_active = i64::MAX;
    let (reported, fresh_active) = loop {
        let seen = connected(&waiting, port);
        waiting.retain(|p| !seen.contains(p));
        let since = t_up.elapsed();
        if waiting.is_empty() && all_connected.is_none() {
            all_connected = Some(since);
        }
        let reported = count(&mut conn, &reported_sql)?;
        let fresh_active = count(&mut conn, &fresh_active_sql)?;
        fewest_active = fewest_active.min(count(&mut conn, ACTIVE_SQL)?);
        if reported >= total && all_reported.is_none() {
            all_reported = Some(since);
        }
        if fresh_active >= total && all_active.is_none() {
            all_active = Some(since);
        }
        if (all_reported.is_some() && all_active.is_some()) || since > RECOVERY_DEADLINE {
            break (reported, fresh_active);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let recovered_at = t_up.elapsed();
    let samples = sampler.finish().await;
    let (down_at, back_at) = watch.finish().await;
    let connections_after = broker_connections();
    let connections_after_at = t_up.elapsed();
    let services_after = services_connected();
    let firsts = first_reports_after(&mut conn, up.epoch)?;

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "broker restart: `{}` took {:.1} s, then `{}` {:.1} s (the whole broker: every client of it reconnects)",
        args.broker_stop_cmd,
        stop_took.as_secs_f64(),
        args.broker_start_cmd,
        start_took.as_secs_f64()
    );
    let rel = |t: Instant| (t - t_stop).as_secs_f64();
    let down = match (down_at, back_at) {
        (Some(d), Some(b)) => format!(
            "{:.1} s ({host}:{port} refused connections from {:.1} s to {:.1} s after the stop command began)",
            (b - d).as_secs_f64(),
            rel(d),
            rel(b)
        ),
        (Some(d), None) => format!(
            "? ({host}:{port} refused connections from {:.1} s after the stop command began, and was not seen back)",
            rel(d)
        ),
        _ => format!("? ({host}:{port} was never seen refusing connections)"),
    };
    let _ = writeln!(
        out,
        "broker restart: down {down}; stop command began → start command returned {:.1} s",
        rel(t_up)
    );
    let secs = |d: Option<Duration>| {
        d.map_or(
            format!("NOT within {} s", RECOVERY_DEADLINE.as_secs()),
            |d| format!("{:.1} s", d.as_secs_f64()),
        )
    };
    let opt = |c: Option<usize>| c.map_or("?".into(), |c| c.to_string());
    let _ = writeln!(
        out,
        "broker restart: reconnected: guests holding a TCP connection to :{port} (from /proc) {connected_before} of {n} before, all {n} again {} after the broker's return ({} not seen); AMQP connections the broker holds (rabbitmqctl list_connections, every client's) {} before, {} {:.0} s after its return; services holding one before: {services_before}, after: {services_after}",
        secs(all_connected),
        waiting.len(),
        opt(connections_before),
        opt(connections_after),
        connections_after_at.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "broker restart: from the broker's return (the start command's exit; DB time {} UTC): (a) every guest reported (service_statuses.updated_at after it) {} ({reported} of {n}; per guest, its first report after the return, s: {}); (b) every instance ACTIVE on such a report {} ({fresh_active} of {n}); fewest ACTIVE at any poll {fewest_active} of {n}",
        up.utc,
        secs(all_reported),
        pcts(&firsts, 1),
        secs(all_active)
    );
    let _ = writeln!(
        out,
        "broker restart: the guests report every {} s (--report-interval), so (a) can lag the reconnect by up to that",
        args.report_interval
    );
    let max_load = samples.iter().map(|s| s.load1).fold(f64::NAN, f64::max);
    let _ = writeln!(
        out,
        "broker restart: load over the recovery (the stop command → (a) and (b), {:.0} s, every second): 1-min load average max {max_load:.2} (under 8: {}), {:.2} at the end; {}",
        ((t_up - t_stop) + recovered_at).as_secs_f64(),
        if max_load < 8.0 { "yes" } else { "NO" },
        samples.last().map_or(f64::NAN, |s| s.load1),
        demand(&samples)
    );
    let restarted = guests
        .iter()
        .filter(|(id, pid)| {
            let file = probe::read_pid(&stack.state.join(id.as_str()).join("guest.pid"));
            let same_process = matches!(started.get(*pid), Some(Some(at)) if probe::start_epoch(**pid, tck) == Some(*at));
            file != Some(**pid) || !same_process || create::is_zombie(**pid)
        })
        .count();
    let servers_after = create::processes_under(&stack.state);
    let servers_same = servers_before
        .iter()
        .filter(|(id, pids)| {
            let mut a = (*pids).clone();
            let mut b = servers_after.get(*id).cloned().unwrap_or_default();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        })
        .count();
    let _ = writeln!(
        out,
        "broker restart: guest processes restarted or gone: {restarted} of {n} (pid file and process start time compared with before); redis-servers unchanged for {servers_same} of {} instances",
        servers_before.len()
    );
    if all_reported.is_none() || all_active.is_none() {
        bail!(
            "not recovered {} s after the broker's return: {reported} of {n} reported, {fresh_active} ACTIVE on a report",
            RECOVERY_DEADLINE.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_address_from_the_transport_url() {
        assert_eq!(
            broker_addr("rabbit://guest:guest@127.0.0.1:5672/"),
            ("127.0.0.1".into(), 5672)
        );
        assert_eq!(
            broker_addr("rabbit://u:p@broker.example:5673/vh"),
            ("broker.example".into(), 5673)
        );
        assert_eq!(broker_addr("rabbit://u:p@h/"), ("h".into(), 5672));
    }
}
