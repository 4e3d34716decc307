//! The datastore managers: the real database server each guest runs, one file per datastore behind
//! the [`Datastore`] trait, as Trove's guest has a manager per datastore.
//!
//! - [`redis`]: `redis-server` with its own `redis.conf` (port, `dir`, `appendonly yes`, `requirepass`
//!   once root is enabled, `cluster-enabled yes` for cluster members).
//! - [`mysql`]: MariaDB (standing in for MySQL 5.6; the datastore keeps Trove's names): a data directory
//!   from `mariadb-install-db` (copied from a per-host template when one is cached), `mariadbd` on its
//!   own port and socket with a small footprint, the guest's own `os_admin` account, the databases and
//!   users `prepare` carries.
//!
//! Every file lives under the instance's state directory:
//!
//! ```text
//! <state_dir>/data/                 the server's data and working directory
//! <state_dir>/redis.conf | my.cnf   the server's configuration (0600: it may hold a password)
//! <state_dir>/datastore/
//!   <manager>.json                  prepare's arguments minus secrets (record.rs)
//!   secrets.json                    the passwords the guest needs (0600)
//!   server.pid                      the server's pid (server.rs)
//!   server.log                      the server's stdout and stderr
//! ```
//!
//! The server is the guest's child; [`server`] explains how a restarted guest adopts it. The guest's
//! health monitor (`crate::health`) asks [`Datastore::ping`] and restarts a server that died.

pub mod mysql;
pub mod record;
pub mod redis;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trove_common::config::Settings;
use trove_common::rpc::guest::{DatabaseSpec, PageQuery, Prepare, UserSpec};

pub use record::{config_record, filesystem_stats, valid_manager_name, DATASTORE_DIR};
use server::Server;

/// How long a server gets to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// The longest unix socket path the kernel accepts (`sun_path`, less the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Trove's `default_password_length`.
pub const PASSWORD_LENGTH: usize = 36;

/// Why a datastore operation failed. The message is what the caller (and the instance's fault) shows.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// Trove's `DatastoreOperationNotSupported`.
    #[error("The '{operation}' operation is not supported for the '{datastore}' datastore.")]
    NotSupported {
        operation: &'static str,
        datastore: String,
    },
    /// The request itself is wrong (a name the server refuses, a user that exists...).
    #[error("{0}")]
    BadRequest(String),
    /// The server binary is not where the datastore version says.
    #[error("{binary} was not found ({place}); is the datastore version's server installed?")]
    BinaryMissing { binary: String, place: String },
    /// The server did not start or stopped answering; the details come from its own log.
    #[error("{0}")]
    Server(String),
    /// File work in the state directory failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DatastoreError {
    /// The oslo failure class a caller receives.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::NotSupported { .. } => "DatastoreOperationNotSupported",
            Self::BadRequest(_) => "BadRequest",
            _ => "GuestError",
        }
    }
}

/// `io::Error` → [`DatastoreError::Io`] for `path`.
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DatastoreError + 'a {
    move |source| DatastoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What a manager needs to know about its instance (from `[guest]`).
#[derive(Clone, Debug)]
pub struct DatastoreConfig {
    pub manager: String,
    pub state_dir: PathBuf,
    pub bind_host: String,
    /// The port to listen on; 0 means the datastore's standard port.
    pub port: u16,
    pub bin_dir: PathBuf,
    pub template_dir: PathBuf,
    pub start_timeout: Duration,
    /// `hz` for a redis server (`[guest] redis_hz`).
    pub redis_hz: u16,
}

impl DatastoreConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        let g = &settings.guest;
        Self {
            manager: g.datastore_manager.clone(),
            state_dir: g.state_dir.clone(),
            bind_host: g.bind_host.clone(),
            port: g.port,
            bin_dir: g.datastore_bin_dir.clone(),
            template_dir: g.template_dir.clone(),
            start_timeout: Duration::from_secs(g.server_start_timeout),
            redis_hz: g.redis_hz,
        }
    }

    /// The server's data and working directory.
    pub fn data_dir(&self) -> PathBuf {
        self.state_dir.join("data")
    }

    /// `<state_dir>/datastore/<name>`.
    pub fn record_path(&self, name: &str) -> PathBuf {
        self.state_dir.join(DATASTORE_DIR).join(name)
    }

    /// Where the server binaries were looked for, for error messages.
    pub fn bin_place(&self) -> String {
        if self.bin_dir.as_os_str().is_empty() {
            "PATH, /usr/sbin and /usr/local/sbin".into()
        } else {
            self.bin_dir.display().to_string()
        }
    }

    /// The first of `names` found where this instance's server binaries are.
    pub fn binary(&self, names: &[&str]) -> Result<PathBuf, DatastoreError> {
        server::find_binary(&self.bin_dir, names).ok_or_else(|| DatastoreError::BinaryMissing {
            binary: names[0].into(),
            place: self.bin_place(),
        })
    }

    /// The configured port, or the datastore's standard one (as on a VM) when none is.
    pub fn port_or(&self, standard: u16) -> u16 {
        if self.port == 0 {
            standard
        } else {
            self.port
        }
    }

    /// `<state_dir>/<name>`, the server's unix socket.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    /// [`DatastoreConfig::socket`], refused when the kernel could not bind it (too long a path).
    pub fn checked_socket(&self, name: &str) -> Result<PathBuf, DatastoreError> {
        let socket = self.socket(name);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(DatastoreError::Server(format!(
                "the socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter [compute] state_path",
                socket.display()
            )));
        }
        Ok(socket)
    }

    /// The supervised server: the first of `names` (or the first name, to fail at start when none is
    /// installed), run in the data directory, with its pid and log under `datastore/`.
    pub fn server(&self, names: &[&'static str], args: Vec<std::ffi::OsString>) -> Server {
        let program = self
            .binary(names)
            .unwrap_or_else(|_| PathBuf::from(names[0]));
        Server::new(server::ServerSpec {
            name: names[0],
            program,
            args,
            work_dir: self.data_dir(),
            pid_file: self.record_path("server.pid"),
            log_file: self.record_path("server.log"),
        })
    }
}

/// The passwords a guest keeps for its server, in `datastore/secrets.json` (0600).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Secrets {
    /// redis: `requirepass`; mysql: `root@localhost`.
    pub password: Option<String>,
    /// mysql: the guest's own `os_admin@localhost`.
    pub admin_password: Option<String>,
}

impl Secrets {
    pub fn load(cfg: &DatastoreConfig) -> Result<Self, DatastoreError> {
        let path = cfg.record_path("secrets.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DatastoreError::Io {
                action: "reading",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    pub fn save(&self, cfg: &DatastoreConfig) -> Result<(), DatastoreError> {
        let path = cfg.record_path("secrets.json");
        ensure_dir(&cfg.state_dir.join(DATASTORE_DIR))?;
        let bytes = serde_json::to_vec(self).expect("secrets serialise");
        crate::state::write_atomic(&path, &bytes).map_err(io_err("writing", &path))
    }
}

/// A new random password: Trove's alphabet (letters and digits) and length.
pub fn generate_password() -> String {
    trove_common::crypto::random_alphanumeric(PASSWORD_LENGTH)
}

/// Creates a private directory (and its parents).
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), DatastoreError> {
    crate::state::create_private_dir(dir).map_err(io_err("creating", dir))
}

/// One page of a listing, as Trove's guest returns it: `[items, next_marker]`.
pub fn listing(items: Vec<Value>, next_marker: Option<String>) -> Value {
    Value::Array(vec![
        Value::Array(items),
        next_marker.map_or(Value::Null, Value::String),
    ])
}

/// Cuts `names` (sorted) to the page after `marker` (or from it, with `include_marker`), `limit` long,
/// and returns the page with the next marker when more follow. Trove's `pagination` rules.
pub fn paginate<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> String,
    page: &PageQuery,
) -> (Vec<T>, Option<String>) {
    let (limit, marker, include_marker) = (page.limit, page.marker.as_deref(), page.include_marker);
    let start = match marker {
        Some(m) => items
            .iter()
            .position(|i| {
                let k = key(i);
                if include_marker {
                    k.as_str() >= m
                } else {
                    k.as_str() > m
                }
            })
            .unwrap_or(items.len()),
        None => 0,
    };
    let rest = &items[start..];
    let limit = limit.filter(|l| *l > 0).map(|l| l as usize);
    match limit {
        Some(n) if rest.len() > n => {
            let page = rest[..n].to_vec();
            let next = page.last().map(&key);
            (page, next)
        }
        _ => (rest.to_vec(), None),
    }
}

/// One datastore manager: the lifecycle of its server and the operations Trove's guest API offers.
/// Operations a datastore lacks answer [`DatastoreError::NotSupported`], as Trove's do.
pub trait Datastore: Send + Sync + 'static {
    /// `redis`, `mysql`.
    fn manager(&self) -> &str;

    /// The supervised server process.
    fn server(&self) -> &Server;

    /// First set-up of the instance: configuration, data directory, server started and answering,
    /// the databases and users `prepare` carries.
    fn prepare<'a>(&'a self, args: &'a Prepare) -> BoxFuture<'a, Result<(), DatastoreError>>;

    /// Starts the server on its existing data directory (or adopts the one still running) and waits
    /// until it answers.
    fn start(&self) -> BoxFuture<'_, Result<(), DatastoreError>>;

    /// One health check: a round trip to the server.
    fn ping(&self) -> BoxFuture<'_, Result<(), DatastoreError>>;

    /// Stops the server cleanly (and forgets any connection to it).
    fn stop(&self) -> BoxFuture<'_, Result<(), DatastoreError>>;

    fn create_databases<'a>(
        &'a self,
        _databases: &'a [DatabaseSpec],
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        unsupported(self.manager(), "create_database")
    }

    fn list_databases<'a>(
        &'a self,
        _page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<Value, DatastoreError>> {
        unsupported(self.manager(), "list_databases")
    }

    fn delete_database<'a>(
        &'a self,
        _database: &'a DatabaseSpec,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        unsupported(self.manager(), "delete_database")
    }

    fn create_users<'a>(
        &'a self,
        _users: &'a [UserSpec],
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        unsupported(self.manager(), "create_user")
    }

    fn list_users<'a>(
        &'a self,
        _page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<Value, DatastoreError>> {
        unsupported(self.manager(), "list_users")
    }

    fn delete_user<'a>(&'a self, _user: &'a UserSpec) -> BoxFuture<'a, Result<(), DatastoreError>> {
        unsupported(self.manager(), "delete_user")
    }

    /// Enables root with `password` (a generated one when `None`) and returns the root user as Trove
    /// serialises it (`_name`, `_host`, `_password`, `_databases`).
    fn enable_root<'a>(
        &'a self,
        _password: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Value, DatastoreError>> {
        unsupported(self.manager(), "enable_root")
    }

    fn is_root_enabled(&self) -> BoxFuture<'_, Result<bool, DatastoreError>> {
        unsupported(self.manager(), "is_root_enabled")
    }

    /// Redis Cluster: meet the node at `ip:port`.
    fn cluster_meet<'a>(
        &'a self,
        _ip: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        unsupported(self.manager(), "cluster_meet")
    }

    /// Redis Cluster: own `first..=last` (the slots this node owns already are skipped).
    fn cluster_addslots(
        &self,
        _first: u32,
        _last: u32,
    ) -> BoxFuture<'_, Result<(), DatastoreError>> {
        unsupported(self.manager(), "cluster_addslots")
    }

    /// Redis Cluster: waits up to `timeout` until this node sees `cluster_state:ok`.
    fn cluster_wait_ok(&self, _timeout: Duration) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The answer of an operation a datastore does not have.
fn unsupported<T: Send + 'static>(
    datastore: &str,
    operation: &'static str,
) -> BoxFuture<'static, Result<T, DatastoreError>> {
    let err = DatastoreError::NotSupported {
        operation,
        datastore: datastore.to_owned(),
    };
    Box::pin(std::future::ready(Err(err)))
}

/// The manager `[guest] datastore_manager` names.
pub fn for_manager(cfg: DatastoreConfig) -> Result<Arc<dyn Datastore>, DatastoreError> {
    match cfg.manager.as_str() {
        "redis" => Ok(Arc::new(redis::Redis::new(cfg))),
        "mysql" | "mariadb" => Ok(Arc::new(mysql::Mysql::new(cfg))),
        other => Err(DatastoreError::NotSupported {
            operation: "prepare",
            datastore: other.to_owned(),
        }),
    }
}

/// Waits until `ping` answers, failing early when the server exits and after `timeout`. The error
/// carries the end of the server's log.
pub(crate) async fn wait_until_answering<F, Fut>(
    server: &Server,
    timeout: Duration,
    mut ping: F,
) -> Result<(), DatastoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DatastoreError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last_error = match ping().await {
            Ok(()) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if !server.is_running() {
            return Err(DatastoreError::Server(format!(
                "{} exited while starting: {}",
                server.spec().name,
                log_or(server, &last_error)
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DatastoreError::Server(format!(
                "{} did not answer within {} s: {}",
                server.spec().name,
                timeout.as_secs(),
                log_or(server, &last_error)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_or(server: &Server, fallback: &str) -> String {
    let tail = server.log_tail(5);
    if tail.is_empty() {
        fallback.to_owned()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_trove() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let k = |s: &String| s.clone();
        assert_eq!(
            paginate(
                &names,
                k,
                &PageQuery {
                    limit: Some(2),
                    marker: None,
                    include_marker: false
                }
            ),
            (vec!["a".into(), "b".into()], Some("b".into()))
        );
        assert_eq!(
            paginate(
                &names,
                k,
                &PageQuery {
                    limit: Some(2),
                    marker: Some("b".into()),
                    include_marker: false
                }
            ),
            (vec!["c".into(), "d".into()], None)
        );
        assert_eq!(
            paginate(
                &names,
                k,
                &PageQuery {
                    limit: Some(2),
                    marker: Some("b".into()),
                    include_marker: true
                }
            ),
            (vec!["b".into(), "c".into()], Some("c".into()))
        );
        assert_eq!(
            paginate(
                &names,
                k,
                &PageQuery {
                    limit: None,
                    marker: Some("zz".into()),
                    include_marker: false
                }
            )
            .0
            .len(),
            0
        );
        assert_eq!(
            paginate(
                &names,
                k,
                &PageQuery {
                    limit: Some(0),
                    marker: None,
                    include_marker: false
                }
            )
            .0
            .len(),
            4
        );
        assert_eq!(listing(vec![], None), serde_json::json!([[], null]));
    }

    #[test]
    fn passwords_are_long_and_alphanumeric() {
        let p = generate_password();
        assert_eq!(p.len(), PASSWORD_LENGTH);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(p, generate_password());
    }

    #[test]
    fn unknown_managers_are_refused() {
        let cfg = DatastoreConfig {
            manager: "cassandra".into(),
            state_dir: "/x".into(),
            bind_host: "127.0.0.1".into(),
            port: 1,
            bin_dir: PathBuf::new(),
            template_dir: PathBuf::new(),
            start_timeout: Duration::from_secs(1),
            redis_hz: 1,
        };
        let err = for_manager(cfg).err().unwrap();
        assert_eq!(err.class_name(), "DatastoreOperationNotSupported");
        assert!(err.to_string().contains("'cassandra'"), "{err}");
    }
}
