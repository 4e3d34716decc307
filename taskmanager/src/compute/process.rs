//! The `local` compute driver: one real `trove-guestagent` process per instance on this host.
//!
//! Each instance gets `<[compute] state_path>/<instance id>/` (mode 0700) holding:
//! - `guest.conf`: the guest's INI configuration (mode 0600: it holds the instance's RPC key and
//!   the guest's broker password), rewritten at every launch from the taskmanager's settings;
//! - `guest.log`: the guest's stdout and stderr, appended across launches;
//! - `guest.pid`: the pid of the running guest;
//! - whatever the guest keeps itself (`guest_state.json`, `modules/`, `data/` (its datastore
//!   server's working directory), `datastore/server.pid`, ...).
//!
//! `<state_path>/.templates/` is shared by the guests of the host (`[guest] template_dir`): an
//! initialised data directory per server version, copied by new instances.
//!
//! Deleting an instance destroys it like a VM ([`ComputeDriver::destroy`]): every process whose
//! working directory is inside its state directory is killed ([`kill_processes_under`]), then the
//! directory is removed.
//!
//! Guests run detached, in their own process group with no terminal, so they outlive the taskmanager
//! (a restart, a Ctrl-C or a SIGKILL). A restarted taskmanager finds them again through the pid file:
//! a guest is running when that pid is alive *and* its command line names this instance's
//! `guest.conf`, so a recycled pid is never mistaken for a guest.
//!
//! Guests this process started are its children: their `Child` handles are kept and polled
//! (`try_wait`) on every status check and reconciler tick, so exited guests never linger as zombies.
//! Guests started by an earlier taskmanager were re-parented when it died and are not ours to reap.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use trove_common::config::Settings;

use super::{check_instance_id, ComputeDriver, ComputeError, GuestSpec, ServerHandle, ServerState};

/// The guest's configuration file inside its state directory.
pub const CONF_FILE: &str = "guest.conf";
/// The guest's stdout and stderr.
pub const LOG_FILE: &str = "guest.log";
/// The running guest's pid.
pub const PID_FILE: &str = "guest.pid";
/// The guest agent binary's file name.
pub const GUEST_BINARY: &str = "trove-guestagent";
/// The directory under `[compute] state_path` the guests share for data directory templates.
pub const TEMPLATE_DIR: &str = ".templates";
/// A Redis Cluster member also listens on its port plus this (the cluster bus).
pub const BUS_PORT_OFFSET: u16 = 10000;

/// How long a guest gets to shut down after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the kernel after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// A guest that exits within this time of its start failed to start (bad binary or configuration).
const START_CHECK: Duration = Duration::from_millis(200);
const POLL: Duration = Duration::from_millis(50);

/// Finds the guest agent binary: `[compute] guestagent_path` when set; otherwise `trove-guestagent`
/// next to the running executable, or in the parent directory when that executable is a test binary
/// in cargo's `target/<profile>/deps/`.
pub fn guest_binary(configured: &str, current_exe: Option<&Path>) -> PathBuf {
    let configured = configured.trim();
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    let Some(dir) = current_exe.and_then(Path::parent) else {
        // Nothing better to go on: let the PATH decide.
        return PathBuf::from(GUEST_BINARY);
    };
    let beside = dir.join(GUEST_BINARY);
    if !beside.exists() && dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(parent) = dir.parent() {
            return parent.join(GUEST_BINARY);
        }
    }
    beside
}

/// Renders `guest.conf`: the `[DEFAULT]`, `[amqp]` and `[guest]` options `trove-guestagent` reads.
pub fn render_guest_conf(
    settings: &Settings,
    spec: &GuestSpec,
    state_dir: &Path,
) -> Result<String, ComputeError> {
    let d = &settings.default;
    let a = &settings.amqp;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by trove-taskmanager for instance {}; rewritten at every launch.",
        spec.instance_id
    );
    let _ = writeln!(
        out,
        "# It holds the instance's RPC key and broker password: keep it private."
    );
    out.push_str("\n[DEFAULT]\n");
    option(
        &mut out,
        "DEFAULT.transport_url",
        spec.transport_url.expose_secret(),
    )?;
    option(&mut out, "DEFAULT.control_exchange", &d.control_exchange)?;
    option(&mut out, "DEFAULT.conductor_queue", &d.conductor_queue)?;
    option(
        &mut out,
        "DEFAULT.report_interval",
        &d.report_interval.to_string(),
    )?;
    option(
        &mut out,
        "DEFAULT.usage_timeout",
        &d.usage_timeout.to_string(),
    )?;
    option(&mut out, "DEFAULT.module_types", &d.module_types.join(", "))?;
    // Secure only with a key: an instance created while secure messaging was off has none, and its
    // guest talks plain (as the taskmanager does with it, see `guest_keyring`).
    option(
        &mut out,
        "DEFAULT.enable_secure_rpc_messaging",
        &spec.instance_key.is_some().to_string(),
    )?;
    out.push_str("\n[amqp]\n");
    option(&mut out, "amqp.prefix", &a.prefix)?;
    option(&mut out, "amqp.prefetch", &a.prefetch.to_string())?;
    option(
        &mut out,
        "amqp.queue_expires_ms",
        &a.queue_expires_ms.to_string(),
    )?;
    option(
        &mut out,
        "amqp.publish_timeout",
        &a.publish_timeout.to_string(),
    )?;
    option(
        &mut out,
        "amqp.reconnect_delay",
        &a.guest_reconnect_delay.to_string(),
    )?;
    option(
        &mut out,
        "amqp.reconnect_backoff",
        &a.reconnect_backoff.to_string(),
    )?;
    option(
        &mut out,
        "amqp.reconnect_max_delay",
        &a.reconnect_max_delay.to_string(),
    )?;
    out.push_str("\n[guest]\n");
    option(&mut out, "guest.guest_id", &spec.instance_id)?;
    option(&mut out, "guest.datastore_manager", &spec.datastore_manager)?;
    if let Some(key) = &spec.instance_key {
        option(&mut out, "guest.instance_rpc_encr_key", key.expose_secret())?;
    }
    let dir = state_dir.to_str().ok_or(ComputeError::BadConfigValue {
        option: "guest.state_dir",
    })?;
    option(&mut out, "guest.state_dir", dir)?;
    option(&mut out, "guest.bind_host", &spec.bind_host)?;
    option(&mut out, "guest.port", &spec.port.to_string())?;
    let bin_dir = match &spec.image_dir {
        Some(p) => p.to_str().ok_or(ComputeError::BadConfigValue {
            option: "guest.datastore_bin_dir",
        })?,
        None => "",
    };
    option(&mut out, "guest.datastore_bin_dir", bin_dir)?;
    // The state directory is `<state_path>/<id>`: the templates sit beside the instances.
    let templates = state_dir.parent().unwrap_or(state_dir).join(TEMPLATE_DIR);
    let templates = templates.to_str().ok_or(ComputeError::BadConfigValue {
        option: "guest.template_dir",
    })?;
    option(&mut out, "guest.template_dir", templates)?;
    let g = &settings.guest;
    option(
        &mut out,
        "guest.health_check_interval",
        &g.health_check_interval.to_string(),
    )?;
    option(
        &mut out,
        "guest.server_start_timeout",
        &g.server_start_timeout.to_string(),
    )?;
    option(
        &mut out,
        "guest.server_restart_delay",
        &g.server_restart_delay.to_string(),
    )?;
    option(&mut out, "guest.redis_hz", &g.redis_hz.to_string())?;
    Ok(out)
}

/// True when nothing on this host holds `port` or `port + 10000` (a Redis Cluster member's bus) on
/// `host`: both can be bound right now. The port allocator's probe, so ports other programs listen
/// on are skipped.
pub fn ports_free(host: &str, port: u16) -> bool {
    let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else {
        return false;
    };
    let main = std::net::TcpListener::bind((host, port));
    let bus = std::net::TcpListener::bind((host, bus));
    main.is_ok() && bus.is_ok()
}

/// The pids of the processes whose working directory is `dir` or inside it, this process excepted.
/// Zombies have no working directory, and processes of other users whose `/proc/<pid>/cwd` cannot be
/// read are not seen.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd_under(&cwd, &dir))
        })
        .collect()
}

/// True when `cwd` is `dir` or inside it; a removed directory reads as `<path> (deleted)`.
fn cwd_under(cwd: &Path, dir: &Path) -> bool {
    cwd.starts_with(dir)
        || cwd
            .to_str()
            .and_then(|s| s.strip_suffix(" (deleted)"))
            .is_some_and(|s| Path::new(s).starts_with(dir))
}

/// SIGKILLs every process whose working directory is `dir` or inside it (an instance's guest and its
/// datastore server, whoever their parent is) and returns the pids signalled. One sweep: call it
/// until it returns nothing to be sure they are gone (a killed process leaves `/proc` once reaped,
/// and a dying parent may have forked meanwhile).
pub fn kill_processes_under(dir: &Path) -> Vec<u32> {
    let pids = processes_under(dir);
    for &pid in &pids {
        signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
    }
    pids
}

/// [`kill_processes_under`] until nothing is left under `dir`, for at most `limit` (blocking: for
/// synchronous callers such as a test harness's `Drop`). Returns how many processes are left.
pub fn kill_all_under_blocking(dir: &Path, limit: Duration) -> usize {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = kill_processes_under(dir).len();
        if left == 0 || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// Writes `name = value`, escaped for the INI reader (rust-ini): backslashes and quotes escaped, and
/// the value quoted when it has leading or trailing blanks.
fn option(out: &mut String, option: &'static str, value: &str) -> Result<(), ComputeError> {
    if value.contains(['\n', '\r']) {
        return Err(ComputeError::BadConfigValue { option });
    }
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\'' => escaped.push_str("\\'"),
            c => escaped.push(c),
        }
    }
    let name = option.split_once('.').map_or(option, |(_, n)| n);
    if value != value.trim() {
        let _ = writeln!(out, "{name} = \"{escaped}\"");
    } else {
        let _ = writeln!(out, "{name} = {escaped}");
    }
    Ok(())
}

/// True when `pid` is alive and its command line names `conf`: it is this instance's guest. A zombie
/// has an empty command line, so it does not count.
pub fn is_guest_process(pid: u32, conf: &Path) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = conf.as_os_str().as_bytes();
    raw.split(|b| *b == 0).any(|arg| arg == want)
}

/// Replaces `path` with `bytes` through a private temporary file, so a reader never sees half a file.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ComputeError + 'a {
    move |source| ComputeError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Sends `signal` to `pid` (nix's safe `kill(2)`: the workspace forbids `unsafe`).
fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal) {
        Ok(()) => {}
        // The process may have exited in between; the caller checks again.
        Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, signal = %signal, error = %e, "cannot signal the process"),
    }
}

/// Sends `signal` (`TERM`, `KILL`) to a guest.
fn send_signal(pid: u32, signal: &str) {
    let signal = match signal {
        "TERM" => nix::sys::signal::Signal::SIGTERM,
        _ => nix::sys::signal::Signal::SIGKILL,
    };
    signal_pid(pid, signal);
}

/// The `local` driver.
pub struct ProcessDriver {
    settings: Arc<Settings>,
    binary: PathBuf,
    /// Absolute, because guests run with their state directory as working directory.
    state_path: PathBuf,
    /// Guests this process started and has not reaped yet, by instance id.
    children: Mutex<HashMap<String, Child>>,
}

impl std::fmt::Debug for ProcessDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessDriver")
            .field("binary", &self.binary)
            .field("state_path", &self.state_path)
            .finish_non_exhaustive()
    }
}

impl ProcessDriver {
    pub fn new(settings: Arc<Settings>) -> Self {
        let exe = std::env::current_exe().ok();
        let binary = guest_binary(&settings.compute.guestagent_path, exe.as_deref());
        let state_path = &settings.compute.state_path;
        let state_path = std::path::absolute(state_path).unwrap_or_else(|_| state_path.clone());
        Self {
            settings,
            binary,
            state_path,
            children: Mutex::default(),
        }
    }

    /// The guest agent binary this driver starts.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn conf_path(&self, instance_id: &str) -> PathBuf {
        self.state_path.join(instance_id).join(CONF_FILE)
    }

    fn pid_path(&self, instance_id: &str) -> PathBuf {
        self.state_path.join(instance_id).join(PID_FILE)
    }

    /// Collects the exit status of every child that has exited.
    fn reap(&self) {
        let mut children = self.children.lock().expect("children map poisoned");
        children.retain(|id, child| match child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(instance.id = %id, %status, "guest agent exited");
                false
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(instance.id = %id, error = %e, "cannot poll guest agent; forgetting it");
                false
            }
        });
    }

    /// The pid of the instance's running guest, if any.
    fn running_pid(&self, instance_id: &str) -> Option<u32> {
        let text = fs::read_to_string(self.pid_path(instance_id)).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        is_guest_process(pid, &self.conf_path(instance_id)).then_some(pid)
    }

    /// The exit status of a child that has already exited (it is reaped).
    fn exited_child(&self, instance_id: &str) -> Option<String> {
        let mut children = self.children.lock().expect("children map poisoned");
        let status = children.get_mut(instance_id)?.try_wait().ok()??;
        children.remove(instance_id);
        Some(status.to_string())
    }

    /// Writes the configuration and spawns the guest. Quick file work and a fork: fine on an async
    /// thread.
    fn spawn_guest(&self, spec: &GuestSpec) -> Result<ServerHandle, ComputeError> {
        let id = spec.instance_id.as_str();
        if let Some(pid) = self.running_pid(id) {
            return Ok(ServerHandle {
                server_id: id.to_owned(),
                pid: Some(pid),
            });
        }
        if self.binary.components().count() > 1 && !self.binary.is_file() {
            return Err(ComputeError::BinaryMissing(self.binary.clone()));
        }
        let dir = self.state_dir(id);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("creating", &dir))?;
        let conf = dir.join(CONF_FILE);
        let text = render_guest_conf(&self.settings, spec, &dir)?;
        write_private(&conf, text.as_bytes()).map_err(io_err("writing", &conf))?;

        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_err("opening", &log_path))?;
        let _ = writeln!(
            log,
            "--- trove-taskmanager starting {} at {} ---",
            self.binary.display(),
            chrono::Utc::now()
        );
        let log_err = log.try_clone().map_err(io_err("opening", &log_path))?;

        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config-file")
            .arg(&conf)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C or a signal to the taskmanager's group does not reach it.
            .process_group(0);
        // guest.conf is the whole configuration: our own TROVE__* overrides must not leak into it.
        for (key, _) in std::env::vars_os() {
            if key.as_bytes().starts_with(b"TROVE__") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().map_err(io_err("starting", &self.binary))?;
        let pid = child.id();
        let pid_path = dir.join(PID_FILE);
        if let Err(e) = write_private(&pid_path, format!("{pid}\n").as_bytes()) {
            // Without a pid file we could never find or stop it again: do not leave it running.
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(io_err("writing", &pid_path)(e));
        }
        self.children
            .lock()
            .expect("children map poisoned")
            .insert(id.to_owned(), child);
        tracing::info!(instance.id = %id, pid, binary = %self.binary.display(), "guest agent started");
        Ok(ServerHandle {
            server_id: id.to_owned(),
            pid: Some(pid),
        })
    }

    /// Waits up to `limit` for the guest to be gone.
    async fn wait_gone(&self, instance_id: &str, pid: u32, limit: Duration) -> bool {
        let conf = self.conf_path(instance_id);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.reap();
            if !is_guest_process(pid, &conf) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn launch_guest(&self, spec: &GuestSpec) -> Result<ServerHandle, ComputeError> {
        check_instance_id(&spec.instance_id)?;
        self.reap();
        let handle = self.spawn_guest(spec)?;
        if !self
            .children
            .lock()
            .expect("children map poisoned")
            .contains_key(&spec.instance_id)
        {
            return Ok(handle); // already running, not started by us now
        }
        tokio::time::sleep(START_CHECK).await;
        // A status check meanwhile (the reconciler's) may have reaped it already: then it is gone.
        let exited = self.exited_child(&spec.instance_id).or_else(|| {
            self.running_pid(&spec.instance_id)
                .is_none()
                .then(|| "exited".to_owned())
        });
        match exited {
            Some(status) => {
                let _ = fs::remove_file(self.pid_path(&spec.instance_id));
                Err(ComputeError::ExitedAtStart {
                    status,
                    log: self.state_dir(&spec.instance_id).join(LOG_FILE),
                })
            }
            None => Ok(handle),
        }
    }

    async fn stop_guest(&self, instance_id: &str) -> Result<(), ComputeError> {
        check_instance_id(instance_id)?;
        self.reap();
        let pid_path = self.pid_path(instance_id);
        if let Some(pid) = self.running_pid(instance_id) {
            send_signal(pid, "TERM");
            if !self.wait_gone(instance_id, pid, STOP_GRACE).await {
                tracing::warn!(instance.id = %instance_id, pid, "guest agent ignored SIGTERM; killing it");
                send_signal(pid, "KILL");
                if !self.wait_gone(instance_id, pid, KILL_WAIT).await {
                    return Err(ComputeError::StopTimeout {
                        instance_id: instance_id.to_owned(),
                        waited: KILL_WAIT,
                    });
                }
            }
            tracing::info!(instance.id = %instance_id, pid, "guest agent stopped");
        }
        match fs::remove_file(&pid_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &pid_path)(e)),
            _ => Ok(()),
        }
    }

    /// Kills every process left under the instance's state directory, waits until they are gone
    /// (up to [`KILL_WAIT`]), then removes the directory.
    async fn destroy_instance(&self, instance_id: &str) -> Result<(), ComputeError> {
        check_instance_id(instance_id)?;
        let dir = self.state_dir(instance_id);
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        let mut killed = HashSet::new();
        loop {
            let scan = dir.clone();
            let signalled = tokio::task::spawn_blocking(move || kill_processes_under(&scan))
                .await
                .unwrap_or_default();
            self.reap();
            if signalled.is_empty() {
                break;
            }
            killed.extend(signalled.iter().copied());
            if tokio::time::Instant::now() >= deadline {
                return Err(ComputeError::DestroyTimeout {
                    instance_id: instance_id.to_owned(),
                    count: signalled.len(),
                    waited: KILL_WAIT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
        if !killed.is_empty() {
            tracing::warn!(instance.id = %instance_id, processes = killed.len(), "killed the processes left in the instance's state directory");
        }
        let remove = dir.clone();
        let removed = tokio::task::spawn_blocking(move || fs::remove_dir_all(&remove))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match removed {
            // NotFound: gone already; NotADirectory: it could never be made (a parent is a file).
            Err(e)
                if !matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(io_err("removing", &dir)(e))
            }
            _ => {}
        }
        self.children
            .lock()
            .expect("children map poisoned")
            .remove(instance_id);
        tracing::info!(instance.id = %instance_id, "instance destroyed: no process left, state directory removed");
        Ok(())
    }

    fn guest_state(&self, instance_id: &str) -> ServerState {
        if check_instance_id(instance_id).is_err() {
            return ServerState::Missing;
        }
        self.reap();
        if self.running_pid(instance_id).is_some() {
            ServerState::Active
        } else if self.conf_path(instance_id).exists() {
            ServerState::Shutdown
        } else {
            ServerState::Missing
        }
    }
}

impl ComputeDriver for ProcessDriver {
    fn launch<'a>(
        &'a self,
        spec: &'a GuestSpec,
    ) -> BoxFuture<'a, Result<ServerHandle, ComputeError>> {
        Box::pin(self.launch_guest(spec))
    }

    fn status<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, ServerState> {
        Box::pin(async move { self.guest_state(instance_id) })
    }

    fn is_running(&self, instance_id: &str) -> bool {
        check_instance_id(instance_id).is_ok() && self.running_pid(instance_id).is_some()
    }

    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ComputeError>> {
        Box::pin(self.stop_guest(instance_id))
    }

    fn destroy<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ComputeError>> {
        Box::pin(self.destroy_instance(instance_id))
    }

    fn state_dir(&self, instance_id: &str) -> PathBuf {
        self.state_path.join(instance_id)
    }

    fn guest_transport_url(&self, instance_id: &str) -> Option<SecretString> {
        check_instance_id(instance_id).ok()?;
        let conf = trove_common::config::read_file(&self.conf_path(instance_id)).ok()?;
        Some(SecretString::from(conf.default.transport_url))
    }

    fn maintain(&self) {
        self.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spec(key: Option<&str>) -> GuestSpec {
        GuestSpec {
            instance_id: "6d0d8f0e-3f7c-4f55-9a37-1f1c5a0e0c11".into(),
            datastore_manager: "redis".into(),
            instance_key: key.map(Into::into),
            transport_url: "rabbit://guest:guest@127.0.0.1:5672/".into(),
            bind_host: "127.0.0.1".into(),
            port: 10007,
            image_dir: Some(PathBuf::from("/opt/redis 7/bin")),
        }
    }

    #[test]
    fn guest_conf_round_trips_through_the_guest_config_loader() {
        let tmp = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        // The guest's own URL is written, not the taskmanager's.
        settings.default.transport_url = "rabbit://taskmanager:tm@127.0.0.1:5672/".into();
        let guest_url = "rabbit://user:p;a#s\\s\"w'@127.0.0.1:5672/";
        settings.default.control_exchange = "trove".into();
        settings.default.conductor_queue = "trove-conductor".into();
        settings.default.report_interval = 0.5;
        settings.default.module_types = vec!["ping".into(), "new_relic_license".into()];
        settings.amqp.prefix = " t42. ".into();
        settings.guest.health_check_interval = 2.5;
        settings.guest.server_start_timeout = 45;
        settings.guest.server_restart_delay = 0.25;
        let dir = tmp.path().join("guest dir");
        let mut spec = spec(Some("AbCdEf0123456789AbCdEf0123456789"));
        spec.transport_url = guest_url.into();
        let text = render_guest_conf(&settings, &spec, &dir).unwrap();
        let path = tmp.path().join("guest.conf");
        fs::write(&path, text).unwrap();

        assert_eq!(
            trove_common::config::read_file(&path)
                .unwrap()
                .default
                .transport_url,
            guest_url
        );
        let loaded = trove_common::config::load(&[path]).unwrap();
        assert_eq!(loaded.default.transport_url, guest_url);
        assert_eq!(loaded.default.control_exchange, "trove");
        assert_eq!(loaded.default.conductor_queue, "trove-conductor");
        assert_eq!(loaded.default.report_interval, 0.5);
        assert_eq!(loaded.default.module_types, ["ping", "new_relic_license"]);
        assert!(loaded.default.enable_secure_rpc_messaging);
        assert_eq!(loaded.amqp.prefix, " t42. ");
        assert_eq!(
            loaded.guest.guest_id,
            "6d0d8f0e-3f7c-4f55-9a37-1f1c5a0e0c11"
        );
        assert_eq!(loaded.guest.datastore_manager, "redis");
        assert_eq!(
            loaded
                .guest
                .instance_rpc_encr_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned())
                .as_deref(),
            Some("AbCdEf0123456789AbCdEf0123456789")
        );
        assert_eq!(loaded.guest.state_dir, dir);
        assert_eq!(loaded.guest.bind_host, "127.0.0.1");
        assert_eq!(loaded.guest.port, 10007);
        assert_eq!(
            loaded.guest.datastore_bin_dir,
            PathBuf::from("/opt/redis 7/bin")
        );
        assert_eq!(loaded.guest.template_dir, tmp.path().join(TEMPLATE_DIR));
        assert_eq!(loaded.guest.health_check_interval, 2.5);
        assert_eq!(loaded.guest.server_start_timeout, 45);
        assert_eq!(loaded.guest.server_restart_delay, 0.25);
    }

    #[test]
    fn guest_conf_without_image_uses_the_host_binaries() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = spec(None);
        spec.image_dir = None;
        let text = render_guest_conf(&Settings::default(), &spec, &tmp.path().join("i1")).unwrap();
        let path = tmp.path().join("guest.conf");
        fs::write(&path, text).unwrap();
        let loaded = trove_common::config::load(&[path]).unwrap();
        assert_eq!(loaded.guest.datastore_bin_dir, PathBuf::new());
        // The taskmanager's defaults reach the guest.
        let d = Settings::default().guest;
        assert_eq!(loaded.guest.health_check_interval, d.health_check_interval);
        assert_eq!(loaded.guest.server_start_timeout, d.server_start_timeout);
        assert_eq!(loaded.guest.server_restart_delay, d.server_restart_delay);
    }

    #[test]
    fn a_port_something_listens_on_is_not_free() {
        // A port (and its bus port) nobody holds, found by binding port 0.
        let probe = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let held = probe.local_addr().unwrap().port();
        if held.checked_add(BUS_PORT_OFFSET).is_none() {
            return; // the kernel gave a port too high to have a bus port; nothing to check
        }
        assert!(!ports_free("127.0.0.1", held), "port {held} is held");
        drop(probe);
        // The bus port held makes the port busy too.
        let (main, bus) = loop {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let p = l.local_addr().unwrap().port();
            if p > BUS_PORT_OFFSET {
                break (p - BUS_PORT_OFFSET, l);
            }
        };
        assert!(!ports_free("127.0.0.1", main), "bus port of {main} is held");
        drop(bus);
        assert!(
            !ports_free("127.0.0.1", u16::MAX - 1),
            "no room for a bus port"
        );
    }

    #[tokio::test]
    async fn destroy_kills_every_process_under_the_state_dir_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("guests");
        let driver = driver_with(&tmp.path().join("unused"), &state);
        let id = "1f0e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let data = driver.state_dir(id).join("data");
        fs::create_dir_all(&data).unwrap();
        fs::write(driver.conf_path(id), b"secret").unwrap();
        // A "datastore server" the guest no longer watches: its own session, cwd in data/.
        let mut server = Command::new("sleep")
            .arg("300")
            .current_dir(&data)
            .process_group(0)
            .spawn()
            .unwrap();
        // A process elsewhere is left alone.
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        let mut other = Command::new("sleep")
            .arg("300")
            .current_dir(&elsewhere)
            .spawn()
            .unwrap();
        let pid = server.id();
        assert_eq!(processes_under(&driver.state_dir(id)), vec![pid]);
        assert_eq!(processes_under(&state), vec![pid]);

        driver.destroy(id).await.unwrap();
        let status = server.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "SIGKILLed"
        );
        assert!(!driver.state_dir(id).exists(), "state directory removed");
        assert!(processes_under(&state).is_empty());
        assert!(
            other.try_wait().unwrap().is_none(),
            "a process outside is not touched"
        );
        let _ = other.kill();
        let _ = other.wait();
        // Nothing left: destroying again is fine.
        driver.destroy(id).await.unwrap();
    }

    #[test]
    fn the_blocking_sweep_kills_and_waits() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep")
            .arg("300")
            .current_dir(tmp.path())
            .spawn()
            .unwrap();
        // Our own child stays a zombie (no cwd) until we reap it, so the sweep does not wait on us.
        assert_eq!(
            kill_all_under_blocking(tmp.path(), Duration::from_secs(5)),
            0
        );
        assert!(child.wait().is_ok());
        assert!(processes_under(tmp.path()).is_empty());
        assert!(cwd_under(Path::new("/a/b/c (deleted)"), Path::new("/a/b")));
        assert!(!cwd_under(Path::new("/a/bc"), Path::new("/a/b")));
    }

    #[test]
    fn guest_conf_without_key_is_plain() {
        let settings = Settings::default();
        let text = render_guest_conf(&settings, &spec(None), Path::new("/x")).unwrap();
        assert!(text.contains("enable_secure_rpc_messaging = false"));
        assert!(!text.contains("instance_rpc_encr_key"));
        assert!(text.contains("prefix = \n"));
    }

    #[test]
    fn line_breaks_are_refused() {
        let mut settings = Settings::default();
        settings.default.control_exchange = "a\nb = c".into();
        let err = render_guest_conf(&settings, &spec(None), Path::new("/x")).unwrap_err();
        assert!(
            err.to_string().contains("DEFAULT.control_exchange"),
            "{err}"
        );
    }

    #[test]
    fn binary_lookup() {
        let tmp = tempfile::tempdir().unwrap();
        // Configured path wins.
        assert_eq!(
            guest_binary(" /opt/bin/ga ", None),
            PathBuf::from("/opt/bin/ga")
        );
        // No executable known: PATH lookup.
        assert_eq!(guest_binary("", None), PathBuf::from(GUEST_BINARY));
        // Next to the service binary.
        let debug = tmp.path().join("debug");
        let deps = debug.join("deps");
        fs::create_dir_all(&deps).unwrap();
        assert_eq!(
            guest_binary("", Some(&debug.join("trove-taskmanager"))),
            debug.join(GUEST_BINARY)
        );
        // A test binary in deps/ looks in the parent...
        assert_eq!(
            guest_binary("", Some(&deps.join("it-0123abcd"))),
            debug.join(GUEST_BINARY)
        );
        // ...unless deps/ has one itself.
        fs::write(deps.join(GUEST_BINARY), b"").unwrap();
        assert_eq!(
            guest_binary("", Some(&deps.join("it-0123abcd"))),
            deps.join(GUEST_BINARY)
        );
    }

    fn driver_with(binary: &Path, state: &Path) -> ProcessDriver {
        let mut settings = Settings::default();
        settings.compute.guestagent_path = binary.to_string_lossy().into_owned();
        settings.compute.state_path = state.to_owned();
        ProcessDriver::new(Arc::new(settings))
    }

    /// A stand-in guest: a shell script that ignores its arguments.
    fn fake_guest(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-guestagent");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn launch_status_stop_and_find_again() {
        let tmp = tempfile::tempdir().unwrap();
        // No exec: the shell's own command line must keep naming guest.conf, as the real guest's does.
        let bin = fake_guest(
            tmp.path(),
            "echo started; trap 'kill $! 2>/dev/null; exit 0' TERM; sleep 30 & wait",
        );
        let state = tmp.path().join("guests");
        let driver = driver_with(&bin, &state);
        let spec = spec(Some("k3y"));
        let id = spec.instance_id.clone();
        assert_eq!(driver.status(&id).await, ServerState::Missing);

        assert!(driver.guest_transport_url(&id).is_none());
        let handle = driver.launch(&spec).await.unwrap();
        assert_eq!(handle.server_id, id);
        // The URL in guest.conf is found again (a relaunch keeps the guest's password).
        assert_eq!(
            driver.guest_transport_url(&id).unwrap().expose_secret(),
            spec.transport_url.expose_secret()
        );
        assert_eq!(driver.status(&id).await, ServerState::Active);
        let dir = driver.state_dir(&id);
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.join(CONF_FILE)), 0o600);
        assert_eq!(mode(dir.clone()), 0o700);
        assert_eq!(
            fs::read_to_string(dir.join(PID_FILE)).unwrap().trim(),
            handle.pid.unwrap().to_string()
        );

        // Launch is idempotent.
        assert_eq!(driver.launch(&spec).await.unwrap().pid, handle.pid);
        // A second driver (a restarted taskmanager) finds the guest from the pid file.
        let again = driver_with(&bin, &state);
        assert_eq!(again.status(&id).await, ServerState::Active);

        driver.stop(&id).await.unwrap();
        assert_eq!(driver.status(&id).await, ServerState::Shutdown);
        assert!(
            driver.children.lock().unwrap().is_empty(),
            "the stopped guest is reaped"
        );
        // Stopping again is fine.
        driver.stop(&id).await.unwrap();
        let log = fs::read_to_string(dir.join(LOG_FILE)).unwrap();
        assert!(log.contains("started"), "{log}");
    }

    #[tokio::test]
    async fn a_guest_that_dies_at_once_is_an_error_even_when_a_status_check_reaps_it_first() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake_guest(tmp.path(), "exit 3");
        let driver = Arc::new(driver_with(&bin, &tmp.path().join("guests")));
        let launching = {
            let driver = driver.clone();
            tokio::spawn(async move { driver.launch(&spec(None)).await })
        };
        // The reconciler checks its guests meanwhile, and collects the exit status first.
        tokio::time::sleep(START_CHECK / 2).await;
        driver.reap();
        let err = launching.await.unwrap().unwrap_err();
        assert!(matches!(err, ComputeError::ExitedAtStart { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_guest_that_dies_at_once_is_an_error_and_a_stale_pid_is_not_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake_guest(tmp.path(), "exit 3");
        let driver = driver_with(&bin, &tmp.path().join("guests"));
        let spec = spec(None);
        let err = driver.launch(&spec).await.unwrap_err();
        assert!(matches!(err, ComputeError::ExitedAtStart { .. }), "{err}");
        // A pid file naming some other live process (ours) does not make the guest active.
        fs::write(
            driver.pid_path(&spec.instance_id),
            std::process::id().to_string(),
        )
        .unwrap();
        assert_eq!(
            driver.status(&spec.instance_id).await,
            ServerState::Shutdown
        );
        driver.stop(&spec.instance_id).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_binary_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let driver = driver_with(
            &tmp.path().join("nope/trove-guestagent"),
            &tmp.path().join("guests"),
        );
        let err = driver.launch(&spec(None)).await.unwrap_err();
        assert!(matches!(err, ComputeError::BinaryMissing(_)), "{err}");
    }
}
