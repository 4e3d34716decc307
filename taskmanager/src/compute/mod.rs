//! Compute: how the taskmanager starts, finds and stops the guest behind an instance.
//!
//! Trove asks Nova for a server and the guest agent runs inside it. We have no cloud, so a
//! [`ComputeDriver`] stands in for Nova. The only driver is [`process::ProcessDriver`] (`local`): one
//! real `trove-guestagent` process per instance on this host, each with its own state directory.
//!
//! The driver is also how a restarted taskmanager finds its guests again: [`ComputeDriver::status`]
//! answers from what is on the host (a pid file and the live process), not from memory.

pub mod process;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use trove_common::config::Settings;

/// What a driver needs to start one guest.
#[derive(Clone)]
pub struct GuestSpec {
    pub instance_id: String,
    /// The guest manager (`mysql`, `redis`): `[guest] datastore_manager`.
    pub datastore_manager: String,
    /// The instance's RPC key in clear, when secure messaging is on for it.
    pub instance_key: Option<SecretString>,
    /// The `transport_url` the guest connects with: its own broker user and password
    /// (`guest_broker_credentials = per_instance`), or the shared one.
    pub transport_url: SecretString,
    /// The address its datastore server listens on (`instances.address`): `[guest] bind_host`.
    pub bind_host: String,
    /// The port its datastore server listens on (`instances.port`, allocated once): `[guest] port`.
    pub port: u16,
    /// The datastore version's `image_id`: for the local driver, a directory of server binaries
    /// (`[guest] datastore_bin_dir`). None: the host's binaries.
    pub image_dir: Option<PathBuf>,
}

impl fmt::Debug for GuestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("GuestSpec")
            .field("instance_id", &self.instance_id)
            .field("datastore_manager", &self.datastore_manager)
            .field("bind_host", &self.bind_host)
            .field("port", &self.port)
            .field("image_dir", &self.image_dir)
            .field("secure", &self.instance_key.is_some())
            .finish_non_exhaustive()
    }
}

/// A started guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHandle {
    /// Stored in `instances.compute_instance_id` (the API's `server_id`).
    pub server_id: String,
    /// The guest's process id, when the driver has one.
    pub pid: Option<u32>,
}

/// What the driver sees of an instance's guest right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// The guest is running.
    Active,
    /// It was started once but is not running now (it exited, crashed or was stopped).
    Shutdown,
    /// It was never started here.
    Missing,
}

impl ServerState {
    /// The value for `instances.server_status`.
    pub fn server_status(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Shutdown | Self::Missing => "SHUTDOWN",
        }
    }
}

/// Why a guest could not be started (by its driver, or for want of its broker user) or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("instance id {0:?} cannot name a guest")]
    InvalidId(String),
    #[error("unknown compute driver {0:?}")]
    UnknownDriver(String),
    #[error("guest agent binary {} not found (set [compute] guestagent_path)", .0.display())]
    BinaryMissing(PathBuf),
    #[error("cannot write the guest configuration: option {option} holds a line break")]
    BadConfigValue { option: &'static str },
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("guest agent exited right after start ({status}); see {}", .log.display())]
    ExitedAtStart { status: String, log: PathBuf },
    #[error("guest of instance {instance_id} is still running {waited:?} after SIGKILL")]
    StopTimeout {
        instance_id: String,
        waited: Duration,
    },
    #[error("{count} process(es) of instance {instance_id} still run {waited:?} after SIGKILL")]
    DestroyTimeout {
        instance_id: String,
        count: usize,
        waited: Duration,
    },
    #[error("instance {0} is deleted")]
    Gone(String),
    #[error("No free port in {start}-{end} on host {host}")]
    NoFreePort { start: u16, end: u16, host: String },
    #[error("cannot give the guest its RabbitMQ user: {0}")]
    BrokerCredentials(String),
}

/// Starts, checks and stops guests. Object-safe (boxed futures), so the taskmanager holds an
/// `Arc<dyn ComputeDriver>` and tests can bring their own.
pub trait ComputeDriver: Send + Sync + 'static {
    /// Starts the guest of `spec.instance_id`. Idempotent: a guest already running is left alone and
    /// its handle returned.
    fn launch<'a>(
        &'a self,
        spec: &'a GuestSpec,
    ) -> BoxFuture<'a, Result<ServerHandle, ComputeError>>;

    /// Whether the guest is running.
    fn status<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, ServerState>;

    /// Whether the guest is running, answered at once from what the host shows (a `/proc` read for
    /// the local driver), without housekeeping: the reconciler asks this for every instance of the
    /// host on every pass, after one [`ComputeDriver::maintain`].
    fn is_running(&self, instance_id: &str) -> bool;

    /// Stops the guest (gracefully, then by force). A guest that is not running is not an error.
    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ComputeError>>;

    /// Destroys what is left of the instance once its guest is stopped, as a cloud deletes a VM: every
    /// process still running for it (its datastore server, even one the guest no longer watches) is
    /// killed, then its state directory (configuration with the RPC key, data, logs) is removed.
    /// Idempotent: an instance with nothing left is not an error.
    fn destroy<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ComputeError>>;

    /// Where the guest keeps its configuration, log and state.
    fn state_dir(&self, instance_id: &str) -> PathBuf;

    /// The `transport_url` in the guest's current configuration, if it has one: a relaunched guest
    /// keeps its broker password.
    fn guest_transport_url(&self, instance_id: &str) -> Option<SecretString>;

    /// Periodic housekeeping, called by the reconciler every tick (the process driver reaps exited
    /// children here).
    fn maintain(&self) {}
}

/// The driver `[compute] driver` names.
pub fn from_settings(settings: &Arc<Settings>) -> Result<Arc<dyn ComputeDriver>, ComputeError> {
    match settings.compute.driver.as_str() {
        "local" => Ok(Arc::new(process::ProcessDriver::new(settings.clone()))),
        other => Err(ComputeError::UnknownDriver(other.to_owned())),
    }
}

/// Instance ids become directory names: allow what a UUID can hold, nothing that walks paths.
pub(crate) fn check_instance_id(id: &str) -> Result<(), ComputeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ComputeError::InvalidId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_cannot_walk_paths() {
        check_instance_id("0b3c1f4e-8a9d-4c3e-9f0a-1b2c3d4e5f60").unwrap();
        for bad in ["", "..", "a/b", "-rf", "x y", "../etc"] {
            assert!(check_instance_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_driver_is_refused() {
        let mut s = Settings::default();
        s.compute.driver = "nova".into();
        assert!(matches!(
            from_settings(&Arc::new(s)),
            Err(ComputeError::UnknownDriver(_))
        ));
    }

    #[test]
    fn specs_never_print_the_key() {
        let spec = GuestSpec {
            instance_id: "i1".into(),
            datastore_manager: "redis".into(),
            instance_key: Some("topsecretkey".into()),
            transport_url: "rabbit://u:topsecretpassword@h:5672/".into(),
            bind_host: "127.0.0.1".into(),
            port: 10000,
            image_dir: None,
        };
        let shown = format!("{spec:?}");
        assert!(!shown.contains("topsecretkey"), "{shown}");
        assert!(!shown.contains("topsecretpassword"), "{shown}");
    }
}
