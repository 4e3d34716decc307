//! The guest's own record, `<state_dir>/guest_state.json`: its service status and whether `prepare`
//! completed.
//!
//! The guest has no database, so this small file is what survives a restart: a restarted guest keeps
//! reporting the status it had, and a `prepare` delivered again (the broker redelivers a cast that was
//! not acked before a crash) only re-reports it once the first one has completed. Every write is
//! atomic (temporary file, fsync, rename, fsync of the directory), so a crash leaves the old record or
//! the new one, never a torn one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trove_common::status::ServiceStatus;

/// The file name of the record inside the state directory.
pub const STATE_FILE: &str = "guest_state.json";

/// What the guest remembers about itself across restarts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestState {
    /// The description of the current service status (`building`, `running`...), as heartbeats carry
    /// it. `None` until `prepare` starts: a guest that was never prepared heartbeats `new`, which tells
    /// the taskmanager that it runs but has no `prepare` (the taskmanager sends it again).
    pub service_status: Option<String>,
    /// Set once `prepare` has set up the datastore and reported the final status.
    pub prepared: bool,
    /// When the status last changed (epoch seconds, guest clock), for operators reading the file.
    pub updated: Option<f64>,
    /// Set by `stop_db`: the datastore server stays stopped (the health monitor does not restart it,
    /// nor does a restarted guest start it) until `restart`.
    pub server_stopped: bool,
    /// A cluster member whose cluster is not complete yet: its healthy status is `instance ready`,
    /// not `running`, until `cluster_complete`.
    pub cluster_pending: bool,
}

impl GuestState {
    /// The current service status, if one has been set (and is one we know).
    pub fn status(&self) -> Option<ServiceStatus> {
        self.service_status
            .as_deref()
            .and_then(ServiceStatus::from_description)
    }

    /// This state with `status` set and stamped `now`.
    pub fn with_status(&self, status: ServiceStatus, now: f64) -> Self {
        Self {
            service_status: Some(status.description().to_owned()),
            updated: Some(now),
            ..self.clone()
        }
    }
}

/// Reads the record; a missing file is a guest that has never been prepared.
pub fn load(path: &Path) -> io::Result<GuestState> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a guest state record: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GuestState::default()),
        Err(e) => Err(e),
    }
}

/// Writes the record atomically.
pub fn save(path: &Path, state: &GuestState) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    write_atomic(path, &json)
}

/// Creates `dir` and its parents, private to the guest's user (module contents live below it).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Replaces `path` with `bytes`: a private temporary file beside it, fsync, rename over it, then fsync
/// of the directory so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn missing_file_is_a_fresh_guest() {
        let dir = tempfile::tempdir().unwrap();
        let state = load(&dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(state, GuestState::default());
        assert_eq!(state.status(), None);
        assert!(!state.prepared);
    }

    #[test]
    fn round_trip_is_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let mut state = GuestState::default().with_status(ServiceStatus::Building, 1.5);
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap().status(), Some(ServiceStatus::Building));
        state = state.with_status(ServiceStatus::Running, 2.5);
        state.prepared = true;
        save(&path, &state).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.service_status.as_deref(), Some("running"));
        // Only the record is left behind, readable by the guest's user alone.
        assert_eq!(names(dir.path()), [STATE_FILE]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn failed_write_keeps_the_old_record_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        // A non-empty directory cannot be renamed over, so the last step fails.
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"old").unwrap();
        assert!(save(&path, &GuestState::default()).is_err());
        assert_eq!(names(dir.path()), [STATE_FILE]);
        assert_eq!(fs::read(path.join("keep")).unwrap(), b"old");
    }

    #[test]
    fn a_torn_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        fs::write(&path, b"{ torn").unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }

    #[test]
    fn unknown_fields_and_statuses_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        fs::write(
            &path,
            br#"{"service_status": "dancing", "prepared": true, "extra": 1}"#,
        )
        .unwrap();
        let state = load(&path).unwrap();
        assert!(state.prepared);
        assert_eq!(state.status(), None);
    }

    #[test]
    fn private_dirs_are_created_with_parents() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        create_private_dir(&nested).unwrap();
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
