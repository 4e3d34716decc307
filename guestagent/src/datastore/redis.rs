//! The `redis` manager: one `redis-server` per instance.
//!
//! `prepare` writes `<state_dir>/redis.conf` (the instance's port and bind address, `dir` = the data
//! directory, `appendonly yes`, `requirepass`/`masterauth` when a root password is set, and for a
//! cluster member `cluster-enabled yes` with its `nodes.conf` in the data directory), starts the server
//! and waits until it answers `PING`. `root-enable` sets `requirepass` on the running server and has it
//! rewrite its own configuration file (`CONFIG REWRITE`), so the password survives a restart.
//!
//! Cluster members are joined by the taskmanager through `cluster_meet` and `cluster_addslots`, as in
//! Trove's redis cluster strategy; `cluster_complete` waits for `cluster_state:ok`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use serde_json::{json, Value};
use trove_common::rpc::guest::Prepare;

use super::server::Server;
use super::{
    ensure_dir, generate_password, io_err, wait_until_answering, Datastore, DatastoreConfig,
    DatastoreError, Secrets, STOP_GRACE,
};

/// Redis's standard port, for a guest given none (as on a VM).
pub const DEFAULT_PORT: u16 = 6379;
const SERVER_NAMES: &[&str] = &["redis-server"];
const SOCKET: &str = "redis.sock";
/// Every hash slot of a Redis Cluster.
pub const CLUSTER_SLOTS: u32 = 16384;
/// A health check's budget.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Redis {
    cfg: DatastoreConfig,
    server: Server,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Redis {
    pub fn new(cfg: DatastoreConfig) -> Self {
        let conf = cfg.state_dir.join("redis.conf").into_os_string();
        let server = cfg.server(SERVER_NAMES, vec![conf]);
        Self {
            cfg,
            server,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    fn conf_path(&self) -> PathBuf {
        self.cfg.state_dir.join("redis.conf")
    }

    /// A connection to the server, made on first use and kept; forgotten on any error.
    async fn connection(&self) -> Result<MultiplexedConnection, DatastoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let secrets = Secrets::load(&self.cfg)?;
        let mut redis_info = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(pw) = &secrets.password {
            redis_info = redis_info.set_password(pw);
        }
        // The unix socket, not the TCP port: only this instance's own server listens on it, so a health
        // check can never be answered by another server that holds the port.
        let info = ConnectionAddr::Unix(self.cfg.socket(SOCKET))
            .into_connection_info()
            .map_err(server_err)?
            .set_redis_settings(redis_info);
        let client = redis::Client::open(info).map_err(server_err)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PING_TIMEOUT))
            .set_response_timeout(Some(PING_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(server_err)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one command; a failure drops the kept connection so the next call reconnects.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, DatastoreError> {
        let mut conn = self.connection().await?;
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                {
                    *self.conn.lock().await = None;
                }
                Err(server_err(e))
            }
        }
    }

    async fn start_server(&self) -> Result<(), DatastoreError> {
        if self.server.adopt().is_none() {
            self.cfg.binary(SERVER_NAMES)?;
            ensure_dir(&self.cfg.data_dir())?;
            self.server
                .spawn(&[])
                .map_err(|e| DatastoreError::Server(format!("cannot start redis-server: {e}")))?;
        }
        *self.conn.lock().await = None;
        wait_until_answering(&self.server, self.cfg.start_timeout, || self.ping_once()).await
    }

    async fn ping_once(&self) -> Result<(), DatastoreError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(DatastoreError::Server(format!("PING answered {pong:?}")))
        }
    }

    /// The slots this node owns, from `CLUSTER NODES`.
    async fn owned_slots(&self) -> Result<BTreeSet<u32>, DatastoreError> {
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok(parse_own_slots(&nodes))
    }
}

fn server_err(e: redis::RedisError) -> DatastoreError {
    DatastoreError::Server(format!("redis: {e}"))
}

/// A value for `redis.conf`: quoted, with `"` and `\` escaped (Redis reads it with `sdssplitargs`).
fn conf_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Redis's own `hz`, which cluster members keep.
pub const REDIS_DEFAULT_HZ: u16 = 10;

/// The configuration file of an instance's server.
pub fn render_conf(
    bind_host: &str,
    port: u16,
    data_dir: &std::path::Path,
    socket: &std::path::Path,
    password: Option<&str>,
    cluster: bool,
    hz: u16,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by trove-guestagent at prepare; the server rewrites it on root-enable."
    );
    let _ = writeln!(out, "bind {bind_host}");
    let _ = writeln!(out, "port {port}");
    let _ = writeln!(out, "dir {}", conf_value(&data_dir.to_string_lossy()));
    // The guest's own way in (health checks, root-enable, cluster calls): private to its user.
    let _ = writeln!(out, "unixsocket {}", conf_value(&socket.to_string_lossy()));
    out.push_str("unixsocketperm 700\n");
    out.push_str("daemonize no\n");
    // The guest supervises the process and reads its log from stdout.
    out.push_str("logfile \"\"\n");
    out.push_str("appendonly yes\n");
    out.push_str("appendfsync everysec\n");
    // The append-only file is the durable copy; no RDB snapshots on top of it.
    out.push_str("save \"\"\n");
    // Background tasks per second while idle ([guest] redis_hz): a host runs thousands of these. A
    // cluster member keeps Redis's own 10: its cluster bus (gossip, failure detection, the state
    // turning ok after a join) runs on the same clock.
    let _ = writeln!(out, "hz {}", if cluster { REDIS_DEFAULT_HZ } else { hz });
    if let Some(pw) = password {
        let _ = writeln!(out, "requirepass {}", conf_value(pw));
        let _ = writeln!(out, "masterauth {}", conf_value(pw));
    }
    if cluster {
        out.push_str("cluster-enabled yes\n");
        out.push_str("cluster-config-file nodes.conf\n");
        out.push_str("cluster-node-timeout 5000\n");
    }
    out
}

/// The slots of the `myself` line of `CLUSTER NODES` (importing/migrating entries are skipped).
pub fn parse_own_slots(nodes: &str) -> BTreeSet<u32> {
    let mut slots = BTreeSet::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || !fields[2].split(',').any(|f| f == "myself") {
            continue;
        }
        for entry in &fields[8..] {
            if entry.starts_with('[') {
                continue;
            }
            match entry.split_once('-') {
                Some((a, b)) => {
                    if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                        slots.extend(a..=b);
                    }
                }
                None => {
                    if let Ok(s) = entry.parse() {
                        slots.insert(s);
                    }
                }
            }
        }
    }
    slots
}

impl Datastore for Redis {
    fn manager(&self) -> &str {
        &self.cfg.manager
    }

    fn server(&self) -> &Server {
        &self.server
    }

    fn prepare<'a>(&'a self, args: &'a Prepare) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            self.cfg.binary(SERVER_NAMES)?;
            ensure_dir(&self.cfg.data_dir())?;
            let password = args.root_password.clone().filter(|p| !p.is_empty());
            let mut secrets = Secrets::load(&self.cfg)?;
            secrets.password = password.clone();
            secrets.save(&self.cfg)?;
            let cluster = args.cluster_config.as_ref().is_some_and(|c| !c.is_null());
            let socket = self.cfg.checked_socket(SOCKET)?;
            let conf = render_conf(
                &self.cfg.bind_host,
                self.cfg.port_or(DEFAULT_PORT),
                &self.cfg.data_dir(),
                &socket,
                password.as_deref(),
                cluster,
                self.cfg.redis_hz,
            );
            let path = self.conf_path();
            crate::state::write_atomic(&path, conf.as_bytes()).map_err(io_err("writing", &path))?;
            self.start_server().await
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(self.start_server())
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(self.ping_once())
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(async move {
            *self.conn.lock().await = None;
            self.server
                .stop(STOP_GRACE)
                .await
                .map_err(|e| DatastoreError::Server(format!("cannot stop redis-server: {e}")))
        })
    }

    fn enable_root<'a>(
        &'a self,
        password: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Value, DatastoreError>> {
        Box::pin(async move {
            let password = password
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(generate_password);
            self.query::<()>(
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("requirepass")
                    .arg(&password),
            )
            .await?;
            // This connection stays authenticated; new ones need the password.
            let mut secrets = Secrets::load(&self.cfg)?;
            secrets.password = Some(password.clone());
            secrets.save(&self.cfg)?;
            self.query::<()>(
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("masterauth")
                    .arg(&password),
            )
            .await?;
            self.query::<()>(redis::cmd("CONFIG").arg("REWRITE"))
                .await?;
            *self.conn.lock().await = None;
            tracing::info!("root enabled: requirepass set");
            // Redis has no user names: Trove's redis root user is called "-".
            Ok(json!({"_name": "-", "_host": "%", "_password": password, "_databases": []}))
        })
    }

    fn is_root_enabled(&self) -> BoxFuture<'_, Result<bool, DatastoreError>> {
        Box::pin(async move {
            let got: Vec<String> = self
                .query(redis::cmd("CONFIG").arg("GET").arg("requirepass"))
                .await?;
            Ok(got.get(1).is_some_and(|p| !p.is_empty()))
        })
    }

    fn cluster_meet<'a>(
        &'a self,
        ip: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            self.query::<()>(redis::cmd("CLUSTER").arg("MEET").arg(ip).arg(port))
                .await?;
            tracing::info!(peer = %format!("{ip}:{port}"), "cluster meet sent");
            Ok(())
        })
    }

    fn cluster_addslots(&self, first: u32, last: u32) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(async move {
            if first > last || last >= CLUSTER_SLOTS {
                return Err(DatastoreError::BadRequest(format!(
                    "invalid slot range {first}-{last}"
                )));
            }
            let owned = self.owned_slots().await?;
            let missing: Vec<u32> = (first..=last).filter(|s| !owned.contains(s)).collect();
            for chunk in missing.chunks(1024) {
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("ADDSLOTS");
                for s in chunk {
                    cmd.arg(*s);
                }
                self.query::<()>(&cmd).await?;
            }
            tracing::info!(first, last, added = missing.len(), "cluster slots assigned");
            Ok(())
        })
    }

    fn cluster_wait_ok(&self, timeout: Duration) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let info: String = self.query(redis::cmd("CLUSTER").arg("INFO")).await?;
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    let state = info
                        .lines()
                        .find(|l| {
                            l.starts_with("cluster_state")
                                || l.starts_with("cluster_slots_assigned")
                        })
                        .unwrap_or("no cluster_state")
                        .trim()
                        .to_owned();
                    return Err(DatastoreError::Server(format!(
                        "the cluster is not ok after {} s ({state})",
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_what_the_instance_needs() {
        let conf = render_conf(
            "127.0.0.1",
            10001,
            std::path::Path::new("/s/data"),
            std::path::Path::new("/s/redis.sock"),
            Some("p\"w"),
            true,
            1,
        );
        for line in [
            "bind 127.0.0.1",
            "port 10001",
            "dir \"/s/data\"",
            "appendonly yes",
            "requirepass \"p\\\"w\"",
            "masterauth \"p\\\"w\"",
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            "hz 10",
            "unixsocket \"/s/redis.sock\"",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing in\n{conf}");
        }
        let plain = render_conf(
            "127.0.0.1",
            10001,
            std::path::Path::new("/s/data"),
            std::path::Path::new("/s/redis.sock"),
            None,
            false,
            1,
        );
        assert!(!plain.contains("requirepass") && !plain.contains("cluster-enabled"));
        // A single instance runs at the configured hz, a cluster member (above) at Redis's own.
        assert!(plain.lines().any(|l| l == "hz 1"), "{plain}");
    }

    #[test]
    fn own_slots_come_from_the_myself_line() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-3 7 [8->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
";
        let own = parse_own_slots(nodes);
        assert_eq!(own.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 7]);
        assert!(parse_own_slots("").is_empty());
    }
}
