//! One datastore server process (`redis-server`, `mariadbd`), watched by the guest.
//!
//! The guest starts its server as a child, with the instance's data directory as the server's working
//! directory, and keeps the pid in `<state_dir>/datastore/server.pid`. A child's exit is seen at once
//! (a task waits on it). If the guest itself is killed, the server keeps running, as `mysqld` outlives
//! a crashed agent on a Trove VM; the taskmanager starts the guest again and the new guest **adopts**
//! the server: the pid file names a live process whose working directory is this instance's data
//! directory, so a recycled pid is never mistaken for it. An adopted server is not our child, so its
//! exit is seen by polling `/proc`.
//!
//! Stopping sends SIGTERM (both servers shut down cleanly on it: redis writes its append-only file,
//! MariaDB flushes InnoDB), waits, then SIGKILL.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::state;

/// How often an adopted server (not our child) is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// How long SIGKILL gets.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What to run and where.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// For logs and errors: `redis-server`, `mariadbd`.
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The data directory: the server's working directory and its identity.
    pub work_dir: PathBuf,
    /// Where the guest records the pid.
    pub pid_file: PathBuf,
    /// The server's stdout and stderr (appended).
    pub log_file: PathBuf,
}

/// The server while it runs.
struct Running {
    pid: u32,
    adopted: bool,
    /// Becomes `true` once the process is gone.
    exited: watch::Receiver<bool>,
}

/// A supervised server process. Cheap to query; `start`, `adopt` and `stop` are serialised by the
/// caller (the datastore manager's lifecycle lock).
pub struct Server {
    spec: ServerSpec,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.spec.name)
            .field("pid", &self.pid())
            .finish()
    }
}

/// True when `pid` is alive (not a zombie) and its working directory is `work_dir`.
pub fn is_server_process(pid: u32, work_dir: &Path) -> bool {
    let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) else {
        return false;
    };
    let want = fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_owned());
    if cwd != want {
        return false;
    }
    // `/proc/<pid>/stat`: "pid (comm) S ...": the state follows the last ')'.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if let Err(e) = kill(Pid::from_raw(raw), sig) {
        // ESRCH: it is gone already, which is what we wanted.
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pid, signal = ?sig, error = %e, "cannot signal the datastore server");
        }
    }
}

impl Server {
    pub fn new(spec: ServerSpec) -> Self {
        Self {
            spec,
            running: Mutex::new(None),
        }
    }

    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// The pid of the running server, if one runs.
    pub fn pid(&self) -> Option<u32> {
        let running = self.running.lock().expect("server state poisoned");
        running
            .as_ref()
            .filter(|r| !*r.exited.borrow())
            .map(|r| r.pid)
    }

    /// Whether the server runs (started or adopted, and not exited since).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Whether the running server was adopted rather than started by this guest.
    pub fn is_adopted(&self) -> bool {
        let running = self.running.lock().expect("server state poisoned");
        running
            .as_ref()
            .is_some_and(|r| r.adopted && !*r.exited.borrow())
    }

    /// Waits until the running server exits; pending forever while none runs.
    pub async fn exited(&self) {
        let rx = {
            let running = self.running.lock().expect("server state poisoned");
            running.as_ref().map(|r| r.exited.clone())
        };
        match rx {
            Some(mut rx) => {
                let _ = rx.wait_for(|gone| *gone).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Takes over a server a previous guest started, when the pid file names one that still runs here.
    /// Returns its pid.
    pub fn adopt(&self) -> Option<u32> {
        if self.is_running() {
            return self.pid();
        }
        let pid: u32 = fs::read_to_string(&self.spec.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if !is_server_process(pid, &self.spec.work_dir) {
            return None;
        }
        let (tx, rx) = watch::channel(false);
        let work_dir = self.spec.work_dir.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(ADOPTED_POLL);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = ticks.tick() => {}
                }
                if !is_server_process(pid, &work_dir) {
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        *self.running.lock().expect("server state poisoned") = Some(Running {
            pid,
            adopted: true,
            exited: rx,
        });
        tracing::info!(
            server = self.spec.name,
            pid,
            "adopted the running datastore server"
        );
        Some(pid)
    }

    /// Starts the server as a child (use [`Server::adopt`] first). `extra_args` are for this start only
    /// (MariaDB's `--init-file` at its first start).
    pub fn spawn(&self, extra_args: &[OsString]) -> io::Result<u32> {
        if let Some(pid) = self.pid() {
            return Ok(pid);
        }
        let spec = &self.spec;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)?;
        let _ = writeln!(
            log,
            "--- trove-guestagent starting {} at {} ---",
            spec.program.display(),
            chrono::Utc::now()
        );
        let log_err = log.try_clone()?;
        let mut child = tokio::process::Command::new(&spec.program)
            .args(&spec.args)
            .args(extra_args)
            .current_dir(&spec.work_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", spec.program.display())))?;
        let pid = child.id().unwrap_or_default();
        if let Err(e) = state::write_atomic(&spec.pid_file, format!("{pid}\n").as_bytes()) {
            // Without the pid file a restarted guest could not find it again: do not leave it running.
            let _ = child.start_kill();
            return Err(e);
        }
        let (tx, rx) = watch::channel(false);
        let name = spec.name;
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    tracing::info!(server = name, pid, %status, "datastore server exited")
                }
                Err(e) => {
                    tracing::warn!(server = name, pid, error = %e, "cannot wait for the datastore server")
                }
            }
            let _ = tx.send(true);
        });
        *self.running.lock().expect("server state poisoned") = Some(Running {
            pid,
            adopted: false,
            exited: rx,
        });
        tracing::info!(server = name, pid, "datastore server started");
        Ok(pid)
    }

    /// Stops the server: SIGTERM, up to `grace` to exit, then SIGKILL. A server that is not running is
    /// not an error. The pid file is removed.
    pub async fn stop(&self, grace: Duration) -> io::Result<()> {
        let running = self.running.lock().expect("server state poisoned").take();
        if let Some(mut r) = running {
            if !*r.exited.borrow() {
                signal(r.pid, Signal::SIGTERM);
                let clean = tokio::time::timeout(grace, r.exited.wait_for(|gone| *gone))
                    .await
                    .is_ok();
                if !clean {
                    tracing::warn!(
                        server = self.spec.name,
                        pid = r.pid,
                        "datastore server ignored SIGTERM; killing it"
                    );
                    signal(r.pid, Signal::SIGKILL);
                    if tokio::time::timeout(KILL_WAIT, r.exited.wait_for(|gone| *gone))
                        .await
                        .is_err()
                    {
                        return Err(io::Error::other(format!(
                            "{} (pid {}) is still running after SIGKILL",
                            self.spec.name, r.pid
                        )));
                    }
                }
                tracing::info!(
                    server = self.spec.name,
                    pid = r.pid,
                    clean,
                    "datastore server stopped"
                );
            }
        }
        match fs::remove_file(&self.spec.pid_file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The last `lines` lines of the server's log, for a fault's details.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.spec.log_file, lines)
    }
}

/// The last `lines` non-empty lines of a text file (a few KiB read from its end).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(16 * 1024);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--- trove-guestagent"))
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// Finds `names` (first match wins) in `bin_dir` when it is set, else on `PATH` and in the system's
/// sbin directories, where Debian installs `mariadbd`.
pub fn find_binary(bin_dir: &Path, names: &[&str]) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = if bin_dir.as_os_str().is_empty() {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for extra in [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
        ] {
            dirs.push(PathBuf::from(extra));
        }
        dirs
    } else {
        vec![bin_dir.to_owned()]
    };
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file() && is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> Server {
        let work = dir.join("data");
        fs::create_dir_all(&work).unwrap();
        Server::new(ServerSpec {
            name: "sleep",
            program: PathBuf::from("sleep"),
            args: vec!["300".into()],
            work_dir: work,
            pid_file: dir.join("server.pid"),
            log_file: dir.join("server.log"),
        })
    }

    #[tokio::test]
    async fn start_stop_and_see_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let server = sleeper(dir.path());
        assert!(!server.is_running());
        let pid = server.spawn(&[]).unwrap();
        assert!(server.is_running());
        assert!(is_server_process(pid, &server.spec().work_dir));
        assert_eq!(
            fs::read_to_string(dir.path().join("server.pid"))
                .unwrap()
                .trim(),
            pid.to_string()
        );
        // A kill from outside is seen at once.
        signal(pid, Signal::SIGKILL);
        tokio::time::timeout(Duration::from_secs(5), server.exited())
            .await
            .expect("exit seen");
        assert!(!server.is_running());
        // Started again, then stopped cleanly.
        let pid = server.spawn(&[]).unwrap();
        server.stop(Duration::from_secs(5)).await.unwrap();
        assert!(!is_server_process(pid, &server.spec().work_dir));
        assert!(!dir.path().join("server.pid").exists());
        server.stop(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_new_guest_adopts_the_server_and_never_a_stranger() {
        let dir = tempfile::tempdir().unwrap();
        let first = sleeper(dir.path());
        let pid = first.spawn(&[]).unwrap();
        // The guest dies; a new one on the same state directory takes the server over.
        let second = sleeper(dir.path());
        assert_eq!(second.adopt(), Some(pid));
        assert!(second.is_adopted());
        second.stop(Duration::from_secs(5)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), first.exited())
            .await
            .unwrap();

        // A pid file naming a process that runs elsewhere (this test) is not adopted.
        fs::write(
            dir.path().join("server.pid"),
            std::process::id().to_string(),
        )
        .unwrap();
        let third = sleeper(dir.path());
        assert_eq!(third.adopt(), None);
        assert!(!third.is_running());
    }

    #[tokio::test]
    async fn an_adopted_servers_death_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let first = sleeper(dir.path());
        let pid = first.spawn(&[]).unwrap();
        let second = sleeper(dir.path());
        second.adopt().unwrap();
        signal(pid, Signal::SIGKILL);
        tokio::time::timeout(Duration::from_secs(5), second.exited())
            .await
            .expect("an adopted server's exit is seen by polling");
    }

    #[test]
    fn binaries_are_found_in_the_image_directory_only_when_one_is_set() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_binary(Path::new(""), &["sh"]).is_some());
        assert_eq!(find_binary(dir.path(), &["sh"]), None);
        assert!(find_binary(Path::new(""), &["no-such-server-xyz"]).is_none());
    }

    #[test]
    fn the_tail_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("l");
        fs::write(&log, "a\n--- trove-guestagent starting\n\nb\nc\n").unwrap();
        assert_eq!(tail(&log, 2), "b\nc");
        assert_eq!(tail(&log, 10), "a\nb\nc");
        assert_eq!(tail(&dir.path().join("missing"), 3), "");
    }
}
