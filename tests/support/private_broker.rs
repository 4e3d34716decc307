//! A RabbitMQ node of the test's own, for tests that stop, kill or restart the broker.
//!
//! The machine's broker (127.0.0.1:5672) is shared by every other test running at the same time, so an
//! outage there would fail them. [`PrivateBroker::start`] runs a second node from the same
//! installation (`/usr/lib/rabbitmq/bin`, or `TROVE_TEST_RABBITMQ_BIN`): its own node name, AMQP,
//! management API and distribution ports, data directory and Erlang cookie (its `HOME` is a temporary
//! directory), and an open-file limit as high as the hard limit allows. The management plugin is on
//! (its statistics off, `management_agent.disable_metrics_collector`), so the taskmanager gives each
//! guest a broker user of its own there too ([`PrivateBroker::management_url`]), and the users, which
//! the node keeps on disk, are what guests log in with again after an outage. A test can then stop its application
//! (`rabbitmqctl stop_app`, connections refused, queues kept), kill the node (`SIGKILL`: non-durable
//! queues and transient messages lost) and start it again on the same data. Dropping it stops the
//! node and removes its directory.
//!
//! A node starts in about 5 to 7 s and holds about 150 MiB (the management plugin adds about a second
//! and 12 MiB).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a node gets to start accepting connections.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A private RabbitMQ node; see the module documentation.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    management_port: u16,
    dist_port: u16,
    server: Option<Child>,
}

/// Where the RabbitMQ scripts are.
fn rabbit_bin() -> PathBuf {
    std::env::var_os("TROVE_TEST_RABBITMQ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/rabbitmq/bin"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

impl PrivateBroker {
    /// Starts a node and waits until it accepts AMQP connections.
    pub fn start() -> anyhow::Result<Self> {
        let server = rabbit_bin().join("rabbitmq-server");
        if !server.is_file() {
            bail!(
                "{} is missing: install RabbitMQ (scripts/stack services) or set TROVE_TEST_RABBITMQ_BIN",
                server.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("trove-rabbit.").tempdir()?;
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let mut broker = Self {
            node: format!("trovetest{id}@localhost"),
            port: free_port()?,
            management_port: free_port()?,
            dist_port: free_port()?,
            dir,
            server: None,
        };
        std::fs::write(
            broker.dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n\
                 management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {}\n\
                 management_agent.disable_metrics_collector = true\n",
                broker.port, broker.management_port
            ),
        )?;
        std::fs::write(
            broker.dir.path().join("enabled_plugins"),
            "[rabbitmq_management].\n",
        )?;
        broker.boot()?;
        Ok(broker)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>` (the default vhost).
    pub fn transport_url(&self) -> String {
        format!("rabbit://guest:guest@127.0.0.1:{}/", self.port)
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: the node's management API (`[rabbitmq_management] url`).
    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }

    /// The `[rabbitmq_management]` section that points a stack's taskmanager at this node.
    pub fn management_section(&self) -> String {
        format!("[rabbitmq_management]\nurl = {}\n", self.management_url())
    }

    /// The node's name, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the node's Erlang VM (data kept from any earlier run) and waits for its listener.
    fn boot(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.home().join("server.log"))?;
        let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(65_536);
        let mut cmd = Command::new("/bin/sh");
        // A fleet test needs more than the 1,024 files a node gets by default (one per connection).
        cmd.arg("-c")
            .arg(format!(
                "ulimit -n {} 2>/dev/null; exec \"$0\"",
                hard.min(65_536)
            ))
            .arg(rabbit_bin().join("rabbitmq-server"));
        self.env(&mut cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.server = Some(cmd.spawn().context("starting rabbitmq-server")?);
        self.wait_listening()
    }

    fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let home = self.home();
        cmd.env("HOME", home)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", home.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                home.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", home.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", home.join("log"))
            .env("RABBITMQ_PID_FILE", home.join("rabbit.pid"))
            // The machine's rabbitmq-env.conf names the shared node; ours must not read it.
            .env("RABBITMQ_CONF_ENV_FILE", home.join("rabbitmq-env.conf"))
            .current_dir(home)
    }

    /// Waits for the AMQP listener and the management API's (the plugin starts after the broker).
    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        while !(listening(self.port) && listening(self.management_port)) {
            if let Some(child) = self.server.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("rabbitmq-server exited ({status}):\n{}", self.log_tail());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "RabbitMQ node {} not listening on {} (AMQP) and {} (management) after {START_DEADLINE:?}:\n{}",
                    self.node,
                    self.port,
                    self.management_port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.home().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs `rabbitmqctl -n <node> <args>`; its stdout.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .env(&mut Command::new(rabbit_bin().join("rabbitmqctl")))
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rabbitmqctl stop_app`: every connection closed, new ones refused; queues and messages kept.
    pub fn stop_app(&self) -> anyhow::Result<()> {
        self.ctl(&["stop_app"]).map(drop)
    }

    /// `rabbitmqctl start_app`, then waits for the listener.
    pub fn start_app(&mut self) -> anyhow::Result<()> {
        self.ctl(&["start_app"])?;
        self.wait_listening()
    }

    /// Kills the node (`SIGKILL`, as a crash or an OOM kill would): what was not on disk is gone.
    pub fn kill(&mut self) {
        if let Some(pid) = self.beam_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while listening(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the node again after [`PrivateBroker::kill`], on the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.boot()
    }

    /// The Erlang VM's pid, from the node's pid file.
    fn beam_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.home().join("rabbit.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Queue names and their message counts (`rabbitmqctl list_queues name messages`).
    pub fn queues(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let out = self.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
            })
            .collect())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
