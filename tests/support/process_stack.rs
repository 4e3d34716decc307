//! [`ProcessStack`]: the real `trove-api`, `trove-taskmanager` and `trove-conductor` binaries as child
//! processes, configured through a `--config-file` exactly as an operator would, with a database, an
//! exchange/queue prefix, a port and a guest state directory of their own.
//!
//! Where [`crate::TestEnv`] runs the services in-process (fast, and easy to stop gracefully),
//! a `ProcessStack` proves the shipped binaries work end to end, and lets a test SIGKILL one of them
//! ([`ProcessStack::kill_taskmanager`]) and start it again ([`ProcessStack::restart_taskmanager`]).
//! Each child logs to `<tempdir>/logs/<binary>.log`; when a test panics, the ends of those logs are
//! printed. Dropping the stack kills the children and every guest they started, and removes their
//! broker users.
//!
//! Like [`crate::TestEnv`], the stack uses `auth_strategy = noauth`: the token is the user and the
//! project, and a token starting with `admin` is admin.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::poll::eventually;
use crate::{bin, management_url, transport_url, CliOutput, Management, TestDb};

/// How long the api gets to answer `GET /` after start.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How much of each log a failing test prints.
const LOG_TAIL_LINES: usize = 40;

/// The service binaries, in start order.
const API: &str = "trove-api";
const TASKMANAGER: &str = "trove-taskmanager";
const CONDUCTOR: &str = "trove-conductor";

/// Runs the built `trove` CLI against `api_url` as `token` (noauth: the token is the user and project;
/// `admin...` is admin), in `cwd` when given. The environment is exactly what a user would export.
pub async fn trove_cli(api_url: &str, token: &str, args: &[&str], cwd: Option<&Path>) -> CliOutput {
    let mut cmd = tokio::process::Command::new(bin("trove"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OS_AUTH_TYPE", "noauth")
        .env("OS_TOKEN", token)
        .env("OS_PROJECT_ID", token)
        .env("TROVE_URL", api_url)
        .env(
            "OS_ROLES",
            if token.starts_with("admin") {
                "admin"
            } else {
                "member"
            },
        );
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().await.expect("running trove");
    CliOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value of `name` in a `Property | Value` table the CLI printed (`trove show`, `trove create`).
pub fn property(table: &str, name: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let mut cells = line.trim().strip_prefix('|')?.strip_suffix('|')?.split('|');
        let key = cells.next()?.trim();
        (key == name).then(|| cells.next().unwrap_or_default().trim().to_owned())
    })
}

/// The pid a guest's `guest.pid` names, under a taskmanager's `[compute] state_path`.
pub fn guest_pid(state_path: &Path, instance_id: &str) -> Option<u32> {
    fs::read_to_string(state_path.join(instance_id).join("guest.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// True while `/proc/<pid>` exists and the process is not a zombie (a killed child not yet reaped).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGKILLs the guest of `instance_id` under `state_path` and waits (up to 10 s) until it is gone.
/// Returns its pid.
pub async fn sigkill_guest(state_path: &Path, instance_id: &str) -> u32 {
    let pid = guest_pid(state_path, instance_id).expect("guest.pid");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "kill -9 {pid}");
    eventually(Duration::from_secs(10), "the killed guest gone", || async {
        (!process_alive(pid)).then_some(())
    })
    .await
    .expect("the killed guest is gone");
    pid
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Detached(pub Child);

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the guest of `instance_id` again by hand, as a guest image's init system would: the same
/// binary and `guest.conf`, its output appended to `guest-restart.log`. Rewrites `guest.pid`, so the
/// harness (and a later delete) find it.
///
/// A running taskmanager starts a dead guest of its host again by itself (its reconciler, within a
/// pass), so a test that wants a guest back normally waits for that. Use this only while no
/// taskmanager can do it (stopped, or the instance recorded on another host): two guests of one
/// instance would consume its queue side by side. Panics when a guest of the instance already runs
/// (any live process whose command line names its `guest.conf`, whatever `guest.pid` says).
pub fn restart_guest(state_path: &Path, instance_id: &str) -> Detached {
    use std::os::unix::process::CommandExt as _;
    let state = state_path.join(instance_id);
    let conf = state.join("guest.conf");
    let running: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            process_alive(*pid)
                && trove_taskmanager::compute::process::is_guest_process(*pid, &conf)
        })
        .collect();
    assert!(
        running.is_empty(),
        "restart_guest({instance_id}): a guest of its guest.conf runs already: {running:?}"
    );
    let log = File::options()
        .create(true)
        .append(true)
        .open(state.join("guest-restart.log"))
        .expect("guest-restart.log");
    let child = Command::new(bin("trove-guestagent"))
        .arg("--config-file")
        .arg(&conf)
        .current_dir(&state)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("trove-guestagent starts");
    let guest = Detached(child);
    fs::write(state.join("guest.pid"), format!("{}\n", guest.0.id())).expect("guest.pid");
    guest
}

/// Kills (SIGKILL) every guest whose pid file is under `state_path`, then every process whose
/// working directory is under it (the datastore servers: `redis-server`, `mariadbd`, which outlive a
/// SIGKILLed guest), and waits (up to 10 s) until none is left. Guests go first so none of them
/// starts a server again meanwhile.
pub fn kill_guests_under(state_path: &Path) {
    use nix::sys::signal::{kill, Signal};
    for e in fs::read_dir(state_path).into_iter().flatten().flatten() {
        if let Some(pid) = fs::read_to_string(e.path().join("guest.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let left = trove_taskmanager::compute::process::kill_all_under_blocking(
        state_path,
        Duration::from_secs(10),
    );
    if left > 0 {
        eprintln!(
            "{left} process(es) still run under {} after SIGKILL",
            state_path.display()
        );
    }
}

/// SIGTERM to `pid`; a process already gone is fine.
fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// The real service binaries for one test.
pub struct ProcessStack {
    /// The stack's own database.
    pub db: TestDb,
    /// `[amqp] prefix`.
    pub prefix: String,
    /// The main configuration file (and an optional override after it).
    config_files: Vec<PathBuf>,
    api_url: String,
    /// Holds `trove.conf`, `logs/` and `guests/` (`[compute] state_path`).
    dir: tempfile::TempDir,
    /// Running children by binary name.
    children: Vec<(&'static str, Child)>,
}

impl ProcessStack {
    /// Starts api, taskmanager and conductor with the test defaults (fast timers, `default_datastore =
    /// redis`) and waits for the api to answer.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with("").await
    }

    /// Like [`ProcessStack::start`], with `overrides` (INI text, e.g. `"[DEFAULT]\nreport_interval =
    /// 2\n"`) in a second `--config-file` that wins over the first.
    pub async fn start_with(overrides: &str) -> anyhow::Result<Self> {
        let db = TestDb::create()?;
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("logs"))?;
        let state = dir.path().join("guests");
        fs::create_dir_all(&state)?;
        // A free port: bind port 0, read it, let it go. The api binds it again a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let ports = crate::port_block();
        let conf = format!(
            "# Written by trove_tests::ProcessStack.\n\
             [DEFAULT]\n\
             bind_host = 127.0.0.1\n\
             bind_port = {port}\n\
             auth_strategy = noauth\n\
             allow_noauth = true\n\
             transport_url = {transport}\n\
             default_datastore = redis\n\
             report_interval = 1\n\
             usage_sleep_time = 0.2\n\
             agent_call_high_timeout = 20\n\
             agent_call_low_timeout = 5\n\
             module_reapply_instance_timeout = 10\n\
             # No default quota (the fleet tests create tens of instances in one tenant).\n\
             max_instances_per_tenant = -1\n\
             max_volumes_per_tenant = -1\n\
             \n\
             [database]\n\
             connection = {db_url}\n\
             max_pool_size = 8\n\
             \n\
             [amqp]\n\
             prefix = {prefix}\n\
             queue_expires_ms = 300000\n\
             reconnect_delay = 0.2\n\
             guest_reconnect_delay = 0.2\n\
             \n\
             [api]\n\
             outbox_poll_interval = 0.2\n\
             \n\
             [rabbitmq_management]\n\
             url = {management}\n\
             \n\
             [compute]\n\
             state_path = {state}\n\
             guestagent_path = {guest}\n\
             port_range_start = {port_start}\n\
             port_range_end = {port_end}\n\
             \n\
             [guest]\n\
             health_check_interval = 0.5\n\
             server_restart_delay = 1\n\
             server_start_timeout = 60\n",
            transport = transport_url(),
            management = management_url(),
            db_url = db.url,
            state = state.display(),
            guest = bin("trove-guestagent").display(),
            port_start = ports.0,
            port_end = ports.1,
        );
        let main_conf = dir.path().join("trove.conf");
        fs::write(&main_conf, conf)?;
        let mut config_files = vec![main_conf];
        if !overrides.trim().is_empty() {
            let extra = dir.path().join("override.conf");
            fs::write(&extra, overrides)?;
            config_files.push(extra);
        }
        let mut stack = Self {
            db,
            prefix,
            config_files,
            api_url: format!("http://127.0.0.1:{port}"),
            dir,
            children: Vec::new(),
        };
        for name in [API, TASKMANAGER, CONDUCTOR] {
            stack.spawn(name)?;
        }
        stack.wait_api().await?;
        Ok(stack)
    }

    /// Starts one service binary with our configuration, appending to its log.
    fn spawn(&mut self, name: &'static str) -> anyhow::Result<()> {
        let log_path = self.log_path(name);
        let log = File::options().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(bin(name));
        for f in &self.config_files {
            cmd.arg("--config-file").arg(f);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // An error that stops a service ends its log with its message, not a long backtrace (panics
            // still print theirs).
            .env("RUST_LIB_BACKTRACE", "0");
        // The configuration file is the whole configuration: no TROVE__* override of ours leaks in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TROVE__") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin(name).display()))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Waits until `GET /` answers, failing early (with the logs) when a service exits.
    async fn wait_api(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited at start ({status}):\n{}",
                        tail(&self.dir.path().join("logs").join(format!("{name}.log")))
                    );
                }
            }
            if let Ok(resp) = client.get(&self.api_url).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{API} did not answer GET {} within {START_DEADLINE:?}:\n{}",
                    self.api_url,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The API base for a tenant: `<url>/v1.0/<tenant>`.
    pub fn base(&self, tenant: &str) -> String {
        format!("{}/v1.0/{tenant}", self.api_url)
    }

    /// `[compute] state_path`: each guest's `<id>/guest.conf`, `guest.pid` and `guest.log`.
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("guests")
    }

    /// The configuration files every service was started with, in order.
    pub fn config_files(&self) -> &[PathBuf] {
        &self.config_files
    }

    /// Runs the built `trove` CLI against this stack as `token`.
    pub async fn trove(&self, token: &str, args: &[&str]) -> CliOutput {
        trove_cli(&self.api_url, token, args, None).await
    }

    /// [`ProcessStack::trove`] in a working directory (for payload files).
    pub async fn trove_in(&self, token: &str, args: &[&str], cwd: &Path) -> CliOutput {
        trove_cli(&self.api_url, token, args, Some(cwd)).await
    }

    /// The pid in an instance's `guest.pid`.
    pub fn guest_pid(&self, instance_id: &str) -> Option<u32> {
        guest_pid(&self.state_path(), instance_id)
    }

    /// SIGKILLs the taskmanager (no graceful shutdown: deliveries in flight stay unacked) and reaps it.
    /// Its guests run on, in their own process groups.
    pub fn kill_taskmanager(&mut self) {
        self.children.retain_mut(|(name, child)| {
            if *name != TASKMANAGER {
                return true;
            }
            let _ = child.kill();
            let _ = child.wait();
            false
        });
    }

    /// Starts the taskmanager again (after [`ProcessStack::kill_taskmanager`]); it finds its guests
    /// through their pid files and resumes unfinished work.
    pub fn restart_taskmanager(&mut self) -> anyhow::Result<()> {
        self.kill_taskmanager();
        self.spawn(TASKMANAGER)
    }

    /// Stops the whole stack in `scripts/stack down`'s order: the api (no new work) and the
    /// taskmanager (it would start the guests again) with SIGTERM, then every guest with SIGTERM (each
    /// stops its database server and reports `shutdown`), then, once the conductor has recorded those
    /// reports, the conductor. Waits until all of them are gone.
    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        self.stop_services(&[API, TASKMANAGER]).await?;
        let state = self.state_path();
        let pids: Vec<u32> = fs::read_dir(&state)?
            .flatten()
            .filter_map(|e| guest_pid(&state, &e.file_name().to_string_lossy()))
            .filter(|pid| process_alive(*pid))
            .collect();
        for pid in &pids {
            terminate(*pid);
        }
        eventually(Duration::from_secs(60), "every guest to stop", || async {
            pids.iter().all(|p| !process_alive(*p)).then_some(())
        })
        .await?;
        let url = self.db.url.clone();
        eventually(
            Duration::from_secs(30),
            "the conductor to record every guest's shutdown",
            || {
                let url = url.clone();
                async move {
                    use diesel::{Connection as _, RunQueryDsl as _};
                    #[derive(diesel::QueryableByName)]
                    struct Up {
                        #[diesel(sql_type = diesel::sql_types::BigInt)]
                        n: i64,
                    }
                    let mut conn = diesel::PgConnection::establish(&url).ok()?;
                    let up: Up = diesel::sql_query(
                        "SELECT count(*) AS n FROM service_statuses s JOIN instances i \
                         ON i.id = s.instance_id WHERE NOT i.deleted \
                         AND s.status_description IN ('running', 'healthy', 'instance ready')",
                    )
                    .get_result(&mut conn)
                    .ok()?;
                    (up.n == 0).then_some(())
                }
            },
        )
        .await?;
        self.stop_services(&[CONDUCTOR]).await
    }

    /// SIGTERMs the named services and waits (30 s at most) until they have exited.
    async fn stop_services(&mut self, names: &[&str]) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if names.contains(name) {
                terminate(child.id());
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (name, child) in &mut self.children {
            if !names.contains(name) {
                continue;
            }
            while child.try_wait()?.is_none() {
                if tokio::time::Instant::now() >= deadline {
                    bail!("{name} did not stop within 30 s of SIGTERM");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.children.retain(|(name, _)| !names.contains(name));
        Ok(())
    }

    /// Starts api, taskmanager and conductor again (after [`ProcessStack::stop_all`]) and waits for
    /// the api; the taskmanager starts every instance's guest again.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for name in [API, TASKMANAGER, CONDUCTOR] {
            self.spawn(name)?;
        }
        self.wait_api().await
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    /// The last lines of every service's log, for failure messages.
    pub fn logs(&self) -> String {
        [API, TASKMANAGER, CONDUCTOR]
            .iter()
            .map(|n| format!("--- {n} ---\n{}", tail(&self.log_path(n))))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ProcessStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "ProcessStack logs ({}):\n{}",
                self.dir.path().display(),
                self.logs()
            );
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_guests_under(&self.state_path());
        // The broker users of the guests the test did not delete, on the broker the stack used.
        if let Ok(settings) = trove_common::config::load(&self.config_files) {
            Management::for_settings(&settings).remove_guest_users(&self.prefix);
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a file.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
