//! What the benchmarks read about the machine and its processes: `/proc`, `rabbitmqctl`, PostgreSQL.
//!
//! Everything here reads; nothing changes the machine. `/proc` figures are Linux's (kB for memory,
//! clock ticks for CPU time).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use diesel::{PgConnection, RunQueryDsl};

/// The machine a figure was measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub postgres: String,
    pub rabbitmq: String,
    pub kernel: String,
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nproc {}, CPU {}, RAM {} MiB, PostgreSQL {}, RabbitMQ {}, Linux {}",
            self.nproc,
            self.cpu_model,
            self.mem_total_mib,
            self.postgres,
            self.rabbitmq,
            self.kernel
        )
    }
}

/// Reads the machine's description (`conn` answers `SHOW server_version`).
pub fn machine(conn: &mut PgConnection) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo_kib(&meminfo, "MemTotal").unwrap_or(0);
    #[derive(diesel::QueryableByName)]
    struct V {
        #[diesel(sql_type = diesel::sql_types::Text)]
        server_version: String,
    }
    let postgres = diesel::sql_query("SHOW server_version")
        .get_result::<V>(conn)
        .map(|v| v.server_version)
        .unwrap_or_else(|_| "unknown".into());
    let rabbitmq = command_output("rabbitmqctl", &["version"])
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        mem_total_mib: mem_kib / 1024,
        postgres,
        rabbitmq,
        kernel,
    }
}

/// The value of `key:` in a `/proc/meminfo`-style text (`/proc/<pid>/status`, `smaps_rollup`), kB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A command's stdout when it succeeds.
pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The load averages (1, 5, 15 minutes), as `uptime` prints them.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The 1-minute load average.
pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `procs_running` and `procs_blocked` of `/proc/stat`: the tasks runnable (or running) and in
/// uninterruptible sleep right now, the instantaneous demand the load average smooths. Reading it
/// counts the reading thread, so `procs_running` is at least 1.
pub fn procs() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let field = |key: &str| -> Option<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))?
            .trim()
            .parse()
            .ok()
    };
    Some((field("procs_running")?, field("procs_blocked")?))
}

/// The inodes of the ESTABLISHED TCP sockets whose remote port is `port`, in a `/proc/net/tcp` or
/// `/proc/net/tcp6` text (addresses and ports in hex, state `01` = ESTABLISHED). Pure.
pub fn established_to(text: &str, port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for line in text.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(remote), Some(state), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
            continue;
        };
        let remote_port = remote
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if *state == "01" && remote_port == Some(port) {
            if let Ok(inode) = inode.parse() {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// The inodes of this network namespace's TCP connections to `port` (IPv4 and IPv6).
pub fn connections_to(port: u16) -> HashSet<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| established_to(&text, port))
        .collect()
}

/// Whether a process has one of `sockets` (inodes) open.
pub fn holds_socket(pid: u32, sockets: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| sockets.contains(&inode))
    })
}

/// `VmHWM` (peak resident) and `VmRSS` (resident now) of a process, in kB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        meminfo_kib(&status, "VmHWM")?,
        meminfo_kib(&status, "VmRSS")?,
    ))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we run on).
fn clk_tck() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32, tck: f64) -> Option<f64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / tck)
}

/// When a process started, in epoch seconds (boot time + field 22, `starttime`).
pub fn start_epoch(pid: u32, tck: f64) -> Option<f64> {
    let f = stat_fields(pid)?;
    let start_ticks: f64 = f.get(19)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime + start_ticks / tck)
}

/// Every pid whose `comm` is `name` (`postgres`, `beam.smp`).
pub fn pids_named(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            pids.push(pid);
        }
    }
    pids
}

/// CPU time of named groups of processes, to split a run's CPU between the components.
pub struct CpuMeter {
    tck: f64,
    groups: Vec<(String, Vec<u32>)>,
}

impl CpuMeter {
    pub fn new() -> Self {
        Self {
            tck: clk_tck(),
            groups: Vec::new(),
        }
    }

    pub fn tck(&self) -> f64 {
        self.tck
    }

    /// Adds a group of processes under `label`.
    pub fn add(&mut self, label: &str, pids: Vec<u32>) {
        self.groups.push((label.to_owned(), pids));
    }

    /// The CPU seconds of each group now.
    pub fn sample(&self) -> Vec<(String, f64)> {
        self.groups
            .iter()
            .map(|(label, pids)| {
                let total = pids.iter().filter_map(|p| cpu_seconds(*p, self.tck)).sum();
                (label.clone(), total)
            })
            .collect()
    }
}

/// `after - before` per group, as "label 1.23 s" items.
pub fn cpu_delta(before: &[(String, f64)], after: &[(String, f64)]) -> String {
    before
        .iter()
        .zip(after)
        .map(|((label, b), (_, a))| format!("{label} {:.2} s", a - b))
        .collect::<Vec<_>>()
        .join(", ")
}

/// RabbitMQ's global message counters (RabbitMQ ≥ 3.9 keeps them in core, no plugin needed).
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerCounters {
    /// Messages published to the broker (every protocol).
    pub received: u64,
    /// Messages delivered to consumers.
    pub delivered: u64,
}

/// Reads the counters through `rabbitmqctl eval` (about a second: it boots an Erlang node).
pub fn broker_counters() -> anyhow::Result<BrokerCounters> {
    let out = command_output(
        "rabbitmqctl",
        &["eval", "rabbit_global_counters:overview()."],
    )
    .context("rabbitmqctl eval failed")?;
    let sum = |key: &str| -> u64 {
        let re = regex::Regex::new(&format!(r"\b{key} => (\d+)")).expect("valid regex");
        re.captures_iter(&out)
            .filter_map(|c| c[1].parse::<u64>().ok())
            .sum()
    };
    Ok(BrokerCounters {
        // Counted once per protocol; AMQP 0-9-1 is the only one with traffic here.
        received: sum("messages_received_total"),
        // Counted per queue type (classic, quorum, stream).
        delivered: sum("messages_delivered_total"),
    })
}

/// Percentiles of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Nearest-rank percentiles; `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Self {
            n: v.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} / p95 {:.1} / max {:.1} (mean {:.1}, n {})",
            self.p50, self.p95, self.max, self.mean, self.n
        )
    }
}

/// Milliseconds of a duration, as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p95, s.max), (50.0, 95.0, 100.0));
        let s = Summary::of(&[3.0]).unwrap();
        assert_eq!((s.p50, s.p95, s.max), (3.0, 3.0, 3.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn established_connections_to_a_port() {
        // 127.0.0.1:40000 -> 127.0.0.1:5672 ESTABLISHED (inode 111); the broker's side of it (local
        // port 5672, inode 222); one to 5672 in TIME_WAIT (06, inode 0); a listener (0A, inode 333).
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:9C40 0100007F:1628 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1\n\
            1: 0100007F:1628 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   107        0 222 1 0 20 4 30 10 -1\n\
            2: 0100007F:9C41 0100007F:1628 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0\n\
            3: 00000000:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 333 1 0\n";
        assert_eq!(established_to(text, 5672), HashSet::from([111]));
        assert!(established_to(text, 6379).is_empty());
    }

    #[test]
    fn meminfo_lines_parse() {
        let text = "VmPeak:\t  10 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(meminfo_kib(text, "VmHWM"), Some(5120));
        assert_eq!(meminfo_kib(text, "VmRSS"), Some(4096));
        assert_eq!(meminfo_kib(text, "VmSwap"), None);
    }
}
