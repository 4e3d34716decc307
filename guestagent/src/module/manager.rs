//! [`ModuleManager`]: applies, removes and lists modules on this guest (docs/module-semantics.md §14).
//!
//! Each module lives in `<state_dir>/modules/<type>/<module_id>/`:
//!
//! - `contents.dat`: the decoded contents, which the driver reads;
//! - `result.json`: the [`ModuleResult`] record that module-apply and module-query return, plus this
//!   guest's apply sequence number (`applied_seq`), which orders modules applied within one
//!   timestamp tick.
//!
//! Both are written atomically (temporary file, fsync, rename; then one fsync of their directory for
//! both renames), so a crash leaves the old file or the new one, never a torn one. Both are private to the guest's user, because
//! contents can be licence keys.
//!
//! All methods block (file I/O, and drivers may run commands for up to tens of seconds): call them
//! from `tokio::task::spawn_blocking`.

use std::cmp::Reverse;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use trove_common::rpc::guest::{ModulePayload, ModuleResult};

use super::driver::{ApplyContext, ModuleDriver};
use super::drivers::DriverRegistry;
use super::error::ApplyError;

/// The datastore, version and tenant value that means "any".
const ALL: &str = "all";
const CONTENTS_FILE: &str = "contents.dat";
const RESULT_FILE: &str = "result.json";

/// Formats a module timestamp as Trove's guest does: `%Y-%m-%d %H:%M:%S.%f` cut to 22 characters,
/// e.g. `2017-06-02 17:23:40.50`. The strings sort in time order, which module-query relies on.
pub fn timestamp(at: DateTime<Utc>) -> String {
    let mut text = at.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    text.truncate(22);
    text
}

fn timestamp_now() -> String {
    // Trove uses the guest's local clock; we use UTC on every host (docs/module-semantics.md §0, row 3).
    timestamp(Utc::now())
}

/// Applies, removes and lists the modules of one guest.
pub struct ModuleManager {
    /// `<state_dir>/modules`: one directory per module type, then one per module id.
    root: PathBuf,
    /// The drivers enabled by `module_types`.
    registry: DriverRegistry,
    /// This guest's datastore manager (`mysql`, `redis`...), which datastore-bound modules must match.
    datastore_manager: String,
    /// Serialises apply and remove: each reads `result.json`, runs the driver and writes it back, and
    /// two calls for the same module interleaving would lose one of the updates (for example, a
    /// remove's `removed` stamp). Lists only read whole files, so they do not take it.
    ///
    /// It holds the last apply sequence number handed out, read from the stored records on the first
    /// apply after start (`None` until then).
    write_lock: Mutex<Option<u64>>,
    /// The clock, replaceable in tests so that timestamps differ and order predictably.
    now: fn() -> String,
}

impl std::fmt::Debug for ModuleManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleManager")
            .field("root", &self.root)
            .field("registry", &self.registry)
            .field("datastore_manager", &self.datastore_manager)
            .finish_non_exhaustive()
    }
}

/// A module that passed every check, ready to be written and applied.
struct Checked<'a> {
    module: &'a ModulePayload,
    driver: &'a dyn ModuleDriver,
    dir: PathBuf,
    contents: Vec<u8>,
}

impl ModuleManager {
    /// A manager that keeps modules under `<state_dir>/modules` and applies them with `registry`'s
    /// drivers on a guest whose datastore manager is `datastore_manager`. Nothing is created on disk
    /// until the first apply.
    pub fn new(
        state_dir: impl AsRef<Path>,
        registry: DriverRegistry,
        datastore_manager: impl Into<String>,
    ) -> Self {
        Self {
            root: state_dir.as_ref().join("modules"),
            registry,
            datastore_manager: datastore_manager.into(),
            write_lock: Mutex::new(None),
            now: timestamp_now,
        }
    }

    /// The modules directory, `<state_dir>/modules`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The loaded drivers.
    pub fn registry(&self) -> &DriverRegistry {
        &self.registry
    }

    /// Applies `modules` (the `module_apply` RPC and the `modules` of `prepare`) and returns their
    /// result records, in the order they were applied, without contents.
    ///
    /// The order is priority modules first, each group by ascending `apply_order`, ties in request
    /// order. A driver failure is recorded as status `ERROR` and does not stop the batch; a failed check
    /// (see [`ApplyError`]) fails the whole call.
    ///
    /// Unlike Trove, every module is checked before any is applied, so a bad module late in the batch
    /// does not leave the earlier ones applied behind an error reply; the error itself is the same.
    /// Applying the same contents again runs the driver again, as Trove does.
    pub fn apply(&self, mut modules: Vec<ModulePayload>) -> Result<Vec<ModuleResult>, ApplyError> {
        sort_for_apply(&mut modules);
        let checked = modules
            .iter()
            .map(|module| self.check(module))
            .collect::<Result<Vec<_>, _>>()?;
        let mut last_seq = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        checked
            .into_iter()
            .map(|module| {
                let seq = self.next_seq(&mut last_seq)?;
                self.apply_one(module, seq)
            })
            .collect()
    }

    /// Trove's per-module checks, in Trove's order, plus decoding the contents.
    fn check<'a>(&'a self, module: &'a ModulePayload) -> Result<Checked<'a>, ApplyError> {
        if module.name.is_empty() {
            return Err(ApplyError::NameMissing);
        }
        let encoded = match module.contents.as_deref() {
            Some(c) if !c.is_empty() => c,
            _ => return Err(ApplyError::ContentsMissing),
        };
        let driver = self.driver(&module.module_type)?;
        if !module.datastore.is_empty()
            && module.datastore != ALL
            && module.datastore != self.datastore_manager
        {
            return Err(ApplyError::WrongDatastore {
                manager: self.datastore_manager.clone(),
            });
        }
        let dir = self.module_dir(&module.module_type, &module.id)?;
        // Python's decoder skips line breaks; senders that wrap base64 should not fail here.
        let compact: Vec<u8> = encoded
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let contents = BASE64
            .decode(compact)
            .map_err(|source| ApplyError::InvalidContents {
                name: module.name.clone(),
                source,
            })?;
        Ok(Checked {
            module,
            driver,
            dir,
            contents,
        })
    }

    /// The next apply sequence number: one more than any this guest has stored.
    fn next_seq(&self, last: &mut Option<u64>) -> Result<u64, ApplyError> {
        let prev = match *last {
            Some(seq) => seq,
            None => {
                let mut max = 0;
                for file in self.result_files()? {
                    if let Ok(Some(stored)) = read_result(&file) {
                        max = max.max(stored.applied_seq);
                    }
                }
                max
            }
        };
        *last = Some(prev + 1);
        Ok(prev + 1)
    }

    fn apply_one(&self, checked: Checked<'_>, seq: u64) -> Result<ModuleResult, ApplyError> {
        let Checked {
            module,
            driver,
            dir,
            contents,
        } = checked;
        create_private_dir(&dir)?;
        let data_file = dir.join(CONTENTS_FILE);
        // The directory is synced once, after `result.json` (below) is renamed into the same one: that
        // makes both renames durable, and a crash before it leaves the old pair.
        write_atomic(&data_file, &contents, DirSync::Later)?;
        drop(contents);

        let now = (self.now)();
        let tenant = or_all(&module.tenant);
        let datastore = or_all(&module.datastore);
        let datastore_version = or_all(&module.datastore_version);

        let result_file = dir.join(RESULT_FILE);
        // Starting from the stored record is what keeps `created` across re-applies (even after a
        // removal). An unreadable record is replaced, as Trove falls back to the defaults.
        let mut result = match read_result(&result_file) {
            Ok(Some(existing)) => existing.result,
            Ok(None) => ModuleResult {
                created: Some(now.clone()),
                ..ModuleResult::default()
            },
            Err(err) => {
                tracing::warn!(module.id = %module.id, error = %err, "replacing unreadable module result");
                ModuleResult {
                    created: Some(now.clone()),
                    ..ModuleResult::default()
                }
            }
        };

        let outcome = driver.run_apply(&ApplyContext {
            name: &module.name,
            datastore,
            datastore_version,
            data_file: &data_file,
            admin_module: module.is_admin,
        });

        let status = outcome.status();
        result.status = Some(status.to_owned());
        result.message = Some(outcome.message);
        result.updated = Some(now);
        result.removed = None;
        result.id = module.id.clone();
        result.md5 = module.md5.clone();
        result.module_type = module.module_type.clone();
        result.name = module.name.clone();
        result.datastore = datastore.to_owned();
        result.datastore_version = datastore_version.to_owned();
        result.tenant = tenant.to_owned();
        result.auto_apply = module.auto_apply;
        result.visible = module.visible;
        result.is_admin = module.is_admin;
        result.contents = None;
        write_result(&result_file, &result, seq)?;

        tracing::info!(
            module.id = %module.id,
            module.md5 = %module.md5,
            module.r#type = %module.module_type,
            status,
            "applied module"
        );
        Ok(result)
    }

    /// Removes `module` (the `module_remove` RPC): runs the driver's remove, then stamps `removed` in
    /// `result.json`. The files stay, so a later apply keeps the original `created`.
    ///
    /// Fails with [`ApplyError::NotApplied`] (Trove's `NotFound`) if the module was never applied here.
    /// A driver failure is logged and the module is still marked removed, as in Trove.
    pub fn remove(&self, module: &ModulePayload) -> Result<(), ApplyError> {
        if module.name.is_empty() {
            return Err(ApplyError::NameMissing);
        }
        let driver = self.driver(&module.module_type)?;
        let dir = self.module_dir(&module.module_type, &module.id)?;
        let result_file = dir.join(RESULT_FILE);

        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let not_applied = || ApplyError::NotApplied {
            name: module.name.clone(),
        };
        let Stored {
            mut result,
            applied_seq,
        } = read_result(&result_file)?.ok_or_else(not_applied)?;

        let outcome = driver.run_remove(&ApplyContext {
            name: &module.name,
            datastore: or_all(&module.datastore),
            datastore_version: or_all(&module.datastore_version),
            data_file: &dir.join(CONTENTS_FILE),
            admin_module: module.is_admin,
        });
        // The message is driver text that may echo contents (ping's does), so only the status is logged.
        tracing::info!(
            module.id = %module.id,
            module.r#type = %module.module_type,
            status = outcome.status(),
            "removed module"
        );

        result.removed = Some((self.now)());
        write_result(&result_file, &result, applied_seq)
    }

    /// Lists the applied modules (the `module_list` RPC behind module-query): every module not
    /// removed, newest `updated` first, as Trove's guest sorts them; modules with the same `updated`
    /// (applied within one 10 ms tick of the 22-character timestamp) are ordered by when they were
    /// applied, the later first.
    ///
    /// Modules with `visible` false are left out unless `caller_is_admin` (the RPC context's
    /// `is_admin`). With `include_contents`, each record carries base64 of `contents.dat`, except that a
    /// non-admin caller gets base64 of `Must be admin to retrieve contents for module <name>` for an
    /// admin module.
    pub fn list(
        &self,
        include_contents: bool,
        caller_is_admin: bool,
    ) -> Result<Vec<ModuleResult>, ApplyError> {
        let mut results = Vec::new();
        for result_file in self.result_files()? {
            let Some(Stored {
                mut result,
                applied_seq,
            }) = read_result(&result_file)?
            else {
                continue; // removed by hand between listing and reading
            };
            if result.removed.is_some() || !(caller_is_admin || result.visible) {
                continue;
            }
            result.contents = if !include_contents {
                None
            } else if !caller_is_admin && result.is_admin {
                let notice = format!(
                    "Must be admin to retrieve contents for module {}",
                    result.name
                );
                Some(BASE64.encode(notice))
            } else {
                let data_file = result_file.with_file_name(CONTENTS_FILE);
                let bytes = fs::read(&data_file).map_err(ApplyError::io(&data_file))?;
                Some(BASE64.encode(bytes))
            };
            results.push((result, applied_seq));
        }
        results.sort_by(|(a, a_seq), (b, b_seq)| {
            b.updated.cmp(&a.updated).then_with(|| b_seq.cmp(a_seq))
        });
        Ok(results.into_iter().map(|(result, _)| result).collect())
    }

    fn driver(&self, module_type: &str) -> Result<&dyn ModuleDriver, ApplyError> {
        self.registry
            .get(module_type)
            .ok_or_else(|| ApplyError::NoDriver {
                module_type: module_type.to_owned(),
            })
    }

    /// `<root>/<type>/<id>`. The type has a driver, so it is one of ours; the id comes from the
    /// message and must be a single plain path component.
    fn module_dir(&self, module_type: &str, id: &str) -> Result<PathBuf, ApplyError> {
        let mut components = Path::new(id).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(part)), None) if part == id => {
                Ok(self.root.join(module_type).join(id))
            }
            _ => Err(ApplyError::InvalidId { id: id.to_owned() }),
        }
    }

    /// Every `<root>/<type>/<id>/result.json`, sorted by path.
    fn result_files(&self) -> Result<Vec<PathBuf>, ApplyError> {
        let mut files = Vec::new();
        for type_dir in sub_dirs(&self.root)? {
            for module_dir in sub_dirs(&type_dir)? {
                let file = module_dir.join(RESULT_FILE);
                if file.is_file() {
                    files.push(file);
                }
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Trove's apply order: stable-sort by `apply_order`, then stable-sort by `priority_apply` descending,
/// so priority modules come first, each group by `apply_order`, ties in request order.
fn sort_for_apply(modules: &mut [ModulePayload]) {
    modules.sort_by_key(|m| m.apply_order);
    modules.sort_by_key(|m| Reverse(m.priority_apply));
}

/// Trove stores `all` for an empty tenant, datastore or version.
fn or_all(value: &str) -> &str {
    if value.is_empty() {
        ALL
    } else {
        value
    }
}

/// The directories directly inside `dir`; none if `dir` does not exist yet.
fn sub_dirs(dir: &Path) -> Result<Vec<PathBuf>, ApplyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(ApplyError::io(dir)(err)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ApplyError::io(dir))?;
        if entry
            .file_type()
            .map_err(ApplyError::io(entry.path()))?
            .is_dir()
        {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Reads a result record; `None` if the file does not exist.
/// What `result.json` holds: the record the RPCs return, and when this guest applied it relative to
/// its other modules. Records written before the sequence existed read as 0 (oldest).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(flatten)]
    result: ModuleResult,
    #[serde(default)]
    applied_seq: u64,
}

fn read_result(path: &Path) -> Result<Option<Stored>, ApplyError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ApplyError::io(path)(err)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ApplyError::CorruptResult {
            path: path.to_owned(),
            source,
        })
}

fn write_result(path: &Path, result: &ModuleResult, applied_seq: u64) -> Result<(), ApplyError> {
    #[derive(serde::Serialize)]
    struct StoredRef<'a> {
        #[serde(flatten)]
        result: &'a ModuleResult,
        applied_seq: u64,
    }
    let json = serde_json::to_vec(&StoredRef {
        result,
        applied_seq,
    })
    .map_err(|source| ApplyError::CorruptResult {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &json, DirSync::Now)
}

/// Creates `dir` and its parents, readable by the guest's user only.
fn create_private_dir(dir: &Path) -> Result<(), ApplyError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(ApplyError::io(dir))
}

/// Whether [`write_atomic`] syncs the directory after its rename.
#[derive(Clone, Copy, Debug)]
enum DirSync {
    /// Sync it: the rename survives a crash once this returns.
    Now,
    /// The caller renames another file into the same directory next and syncs it then.
    Later,
}

/// Replaces `path` with `bytes` so that readers and crashes see the old file or the new one, never a
/// mix: the bytes go to a fresh temporary file in the same directory (a rename is only atomic within
/// one file system), which is synced and renamed over `path`; the directory is then synced (now, or
/// by the caller's next write there) so that the rename itself survives a crash. The temporary file is
/// removed if any step fails.
fn write_atomic(path: &Path, bytes: &[u8], dir_sync: DirSync) -> Result<(), ApplyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));

    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        match dir_sync {
            DirSync::Now => File::open(dir)?.sync_all(),
            DirSync::Later => Ok(()),
        }
    })();
    if let Err(err) = written {
        // After a successful rename there is nothing left to remove, and that is fine.
        let _ = fs::remove_file(&tmp);
        return Err(ApplyError::io(path)(err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use chrono::TimeZone;

    use super::*;
    use crate::module::drivers;

    /// A clock that ticks 10 ms per call, so every timestamp differs and later calls sort later.
    fn ticking_now() -> String {
        static TICKS: AtomicU64 = AtomicU64::new(0);
        let tick = TICKS.fetch_add(1, Ordering::Relaxed);
        let start = Utc.with_ymd_and_hms(2017, 6, 2, 17, 0, 0).unwrap();
        timestamp(start + chrono::Duration::milliseconds(10 * tick as i64))
    }

    struct Guest {
        _state: tempfile::TempDir,
        manager: ModuleManager,
    }

    fn guest(datastore_manager: &str) -> Guest {
        let state = tempfile::tempdir().unwrap();
        let types = vec!["ping".to_owned(), "new_relic_license".to_owned()];
        let mut manager =
            ModuleManager::new(state.path(), drivers::load(&types), datastore_manager);
        manager.now = ticking_now;
        Guest {
            _state: state,
            manager,
        }
    }

    fn module(id: &str, contents: &str) -> ModulePayload {
        ModulePayload {
            id: id.to_owned(),
            name: format!("mod-{id}"),
            module_type: "ping".to_owned(),
            tenant: "all".to_owned(),
            datastore: "all".to_owned(),
            datastore_version: "all".to_owned(),
            apply_order: 5,
            visible: true,
            md5: format!("md5-{id}"),
            contents: Some(BASE64.encode(contents)),
            ..ModulePayload::default()
        }
    }

    fn ids(results: &[ModuleResult]) -> Vec<&str> {
        results.iter().map(|r| r.id.as_str()).collect()
    }

    /// Every file name in the module's directory.
    fn files_in(manager: &ModuleManager, module_type: &str, id: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(manager.root().join(module_type).join(id))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn timestamp_is_cut_to_22_characters() {
        let at = Utc.with_ymd_and_hms(2017, 6, 2, 17, 23, 40).unwrap()
            + chrono::Duration::microseconds(501_234);
        assert_eq!(timestamp(at), "2017-06-02 17:23:40.50");
        let whole = Utc.with_ymd_and_hms(2017, 6, 2, 17, 23, 40).unwrap();
        assert_eq!(timestamp(whole), "2017-06-02 17:23:40.00");
        assert_eq!(timestamp_now().len(), 22);
    }

    #[test]
    fn order_is_priority_then_apply_order_then_request_order() {
        let g = guest("mysql");
        let spec = [
            ("a", false, 5),
            ("b", true, 9),
            ("c", false, 1),
            ("d", true, 2),
            ("e", false, 5),
            ("f", true, 9),
            ("g", false, 0),
        ];
        let modules = spec
            .iter()
            .map(|(id, priority, order)| ModulePayload {
                priority_apply: *priority,
                apply_order: *order,
                ..module(id, "message=x")
            })
            .collect();
        let results = g.manager.apply(modules).unwrap();
        assert_eq!(ids(&results), ["d", "b", "f", "g", "c", "a", "e"]);
        // Results are stamped in that order too.
        let updated: Vec<_> = results.iter().map(|r| r.updated.clone()).collect();
        let mut sorted = updated.clone();
        sorted.sort();
        assert_eq!(updated, sorted);
    }

    #[test]
    fn ping_applies_and_files_are_written() {
        let g = guest("mysql");
        let payload = ModulePayload {
            tenant: String::new(),
            datastore: "mysql".into(),
            datastore_version: String::new(),
            auto_apply: true,
            is_admin: true,
            ..module("m1", "message=Module.V1\n")
        };
        let results = g.manager.apply(vec![payload]).unwrap();
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert_eq!(r.status.as_deref(), Some("OK"));
        assert_eq!(r.message.as_deref(), Some("Module.V1"));
        assert_eq!(r.id, "m1");
        assert_eq!(r.name, "mod-m1");
        assert_eq!(r.module_type, "ping");
        assert_eq!(r.md5, "md5-m1");
        assert_eq!(r.tenant, "all");
        assert_eq!(r.datastore, "mysql");
        assert_eq!(r.datastore_version, "all");
        assert!(r.auto_apply && r.visible && r.is_admin);
        assert_eq!(r.created, r.updated);
        assert_eq!(r.removed, None);
        assert_eq!(r.contents, None);

        let dir = g.manager.root().join("ping").join("m1");
        assert_eq!(
            fs::read(dir.join("contents.dat")).unwrap(),
            b"message=Module.V1\n"
        );
        let stored: ModuleResult =
            serde_json::from_slice(&fs::read(dir.join("result.json")).unwrap()).unwrap();
        assert_eq!(&stored, r);
    }

    #[test]
    fn ping_without_message_is_recorded_as_error() {
        let g = guest("mysql");
        let results = g
            .manager
            .apply(vec![module("m1", "greeting=hi\n")])
            .unwrap();
        assert_eq!(results[0].status.as_deref(), Some("ERROR"));
        assert_eq!(
            results[0].message.as_deref(),
            Some("Message not found in contents file")
        );
    }

    #[test]
    fn ping_parse_error_is_recorded_as_error() {
        let g = guest("mysql");
        let results = g.manager.apply(vec![module("m1", "message\n")]).unwrap();
        assert_eq!(results[0].status.as_deref(), Some("ERROR"));
        assert_eq!(
            results[0].message.as_deref(),
            Some("Could not extract ping message: line 1 has no '=' delimiter")
        );
    }

    #[test]
    fn new_relic_without_license_key() {
        let g = guest("mysql");
        let payload = ModulePayload {
            module_type: "new_relic_license".into(),
            ..module("nr", "message=hi\n")
        };
        let results = g.manager.apply(vec![payload]).unwrap();
        assert_eq!(results[0].status.as_deref(), Some("ERROR"));
        assert_eq!(
            results[0].message.as_deref(),
            Some("'license_key' not found in contents file")
        );
    }

    #[test]
    fn created_survives_reapply_and_removal() {
        let g = guest("mysql");
        let first = g.manager.apply(vec![module("m1", "message=V1")]).unwrap();
        let created = first[0].created.clone();
        assert!(created.is_some());

        let second = g.manager.apply(vec![module("m1", "message=V2")]).unwrap();
        assert_eq!(second[0].created, created);
        assert!(second[0].updated > first[0].updated);
        assert_eq!(second[0].message.as_deref(), Some("V2"));

        g.manager.remove(&module("m1", "")).unwrap();
        let stored = read_result(&g.manager.root().join("ping/m1/result.json"))
            .unwrap()
            .unwrap()
            .result;
        assert!(stored.removed.is_some());
        assert_eq!(stored.created, created);
        assert!(g.manager.list(false, true).unwrap().is_empty());
        // The files stay after a removal.
        assert_eq!(
            files_in(&g.manager, "ping", "m1"),
            ["contents.dat", "result.json"]
        );

        let third = g.manager.apply(vec![module("m1", "message=V3")]).unwrap();
        assert_eq!(third[0].created, created);
        assert_eq!(third[0].removed, None);
        assert_eq!(ids(&g.manager.list(false, false).unwrap()), ["m1"]);
    }

    #[test]
    fn remove_without_apply_is_not_found() {
        let g = guest("mysql");
        let err = g.manager.remove(&module("m1", "")).unwrap_err();
        assert!(matches!(err, ApplyError::NotApplied { .. }));
        assert_eq!(err.to_string(), "Module 'mod-m1' has not been applied");
        assert!(err.is_not_found());
    }

    #[test]
    fn remove_checks_name_and_driver() {
        let g = guest("mysql");
        let nameless = ModulePayload {
            name: String::new(),
            ..module("m1", "")
        };
        assert!(matches!(
            g.manager.remove(&nameless),
            Err(ApplyError::NameMissing)
        ));
        let unknown = ModulePayload {
            module_type: "nosuch".into(),
            ..module("m1", "")
        };
        assert_eq!(
            g.manager.remove(&unknown).unwrap_err().to_string(),
            "No driver implemented for module type 'nosuch'"
        );
    }

    #[test]
    fn list_masks_admin_contents_for_non_admins() {
        let g = guest("mysql");
        let admin_module = ModulePayload {
            is_admin: true,
            ..module("adm", "license_key=secret")
        };
        let plain = module("pln", "message=hello");
        g.manager.apply(vec![admin_module, plain]).unwrap();

        let contents_of = |results: &[ModuleResult], id: &str| -> Vec<u8> {
            let r = results.iter().find(|r| r.id == id).unwrap();
            BASE64.decode(r.contents.as_deref().unwrap()).unwrap()
        };

        let user = g.manager.list(true, false).unwrap();
        assert_eq!(
            contents_of(&user, "adm"),
            b"Must be admin to retrieve contents for module mod-adm"
        );
        assert_eq!(contents_of(&user, "pln"), b"message=hello");

        let admin = g.manager.list(true, true).unwrap();
        assert_eq!(contents_of(&admin, "adm"), b"license_key=secret");
        assert_eq!(contents_of(&admin, "pln"), b"message=hello");

        assert!(g
            .manager
            .list(false, true)
            .unwrap()
            .iter()
            .all(|r| r.contents.is_none()));
    }

    #[test]
    fn hidden_modules_are_listed_for_admins_only() {
        let g = guest("mysql");
        let hidden = ModulePayload {
            visible: false,
            ..module("hid", "message=x")
        };
        g.manager
            .apply(vec![hidden, module("vis", "message=y")])
            .unwrap();
        assert_eq!(ids(&g.manager.list(false, false).unwrap()), ["vis"]);
        let mut all = ids(&g.manager.list(false, true).unwrap())
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        all.sort();
        assert_eq!(all, ["hid", "vis"]);
    }

    #[test]
    fn list_is_newest_update_first() {
        let g = guest("mysql");
        g.manager
            .apply(vec![module("a", "message=1"), module("b", "message=2")])
            .unwrap();
        g.manager.apply(vec![module("a", "message=3")]).unwrap();
        g.manager
            .apply(vec![ModulePayload {
                module_type: "new_relic_license".into(),
                ..module("c", "x=1")
            }])
            .unwrap();
        assert_eq!(ids(&g.manager.list(false, false).unwrap()), ["c", "a", "b"]);
    }

    /// A clock that never moves: every apply lands in the same 10 ms tick.
    fn frozen_now() -> String {
        timestamp(Utc.with_ymd_and_hms(2017, 6, 2, 17, 0, 0).unwrap())
    }

    #[test]
    fn list_orders_one_tick_by_apply_order_later_first() {
        let mut g = guest("mysql");
        g.manager.now = frozen_now;
        // Ids chosen so that path order (a, b, c, d) is not the apply order.
        g.manager.apply(vec![module("c", "message=1")]).unwrap();
        g.manager
            .apply(vec![module("a", "message=2"), module("d", "message=3")])
            .unwrap();
        g.manager.apply(vec![module("b", "message=4")]).unwrap();
        assert_eq!(
            ids(&g.manager.list(false, false).unwrap()),
            ["b", "d", "a", "c"]
        );
        // Applying one again makes it the latest.
        g.manager.apply(vec![module("c", "message=5")]).unwrap();
        assert_eq!(
            ids(&g.manager.list(false, false).unwrap()),
            ["c", "b", "d", "a"]
        );
        // A removal does not move the others.
        g.manager.remove(&module("d", "")).unwrap();
        assert_eq!(ids(&g.manager.list(false, false).unwrap()), ["c", "b", "a"]);
    }

    #[test]
    fn apply_sequence_continues_after_a_restart() {
        let state = tempfile::tempdir().unwrap();
        let types = vec!["ping".to_owned()];
        let mut first = ModuleManager::new(state.path(), drivers::load(&types), "redis");
        first.now = frozen_now;
        first.apply(vec![module("z", "message=1")]).unwrap();
        first.apply(vec![module("y", "message=2")]).unwrap();
        drop(first);
        // A new guest process over the same state directory picks the sequence up from the files.
        let mut second = ModuleManager::new(state.path(), drivers::load(&types), "redis");
        second.now = frozen_now;
        second.apply(vec![module("z", "message=3")]).unwrap();
        assert_eq!(ids(&second.list(false, false).unwrap()), ["z", "y"]);
        // The RPC record carries no sequence: result.json's extra key stays private.
        let listed = serde_json::to_value(&second.list(false, false).unwrap()[0]).unwrap();
        assert!(listed.get("applied_seq").is_none());
        let raw: serde_json::Value = serde_json::from_slice(
            &fs::read(state.path().join("modules/ping/z/result.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(raw["applied_seq"], 3);
    }

    #[test]
    fn list_on_a_fresh_guest_is_empty() {
        let g = guest("mysql");
        assert!(g.manager.list(true, true).unwrap().is_empty());
        assert!(
            !g.manager.root().exists(),
            "listing must not create the directory"
        );
    }

    #[test]
    fn writes_leave_no_temporary_files() {
        let g = guest("mysql");
        for _ in 0..3 {
            g.manager.apply(vec![module("m1", "message=x")]).unwrap();
        }
        g.manager.remove(&module("m1", "")).unwrap();
        assert_eq!(
            files_in(&g.manager, "ping", "m1"),
            ["contents.dat", "result.json"]
        );
    }

    #[test]
    fn failed_atomic_write_cleans_up_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("result.json");
        // A non-empty directory cannot be renamed over, so the last step fails.
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"old").unwrap();
        let err = write_atomic(&target, b"new", DirSync::Now).unwrap_err();
        assert!(matches!(err, ApplyError::Io { .. }));
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["result.json"]);
        assert_eq!(fs::read(target.join("keep")).unwrap(), b"old");
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let g = guest("mysql");
        g.manager.apply(vec![module("m1", "message=x")]).unwrap();
        let dir = g.manager.root().join("ping/m1");
        for path in [dir.join("contents.dat"), dir.join("result.json")] {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn datastore_must_match_unless_all() {
        let g = guest("redis");
        let bound = ModulePayload {
            datastore: "mysql".into(),
            ..module("m1", "message=x")
        };
        let err = g.manager.apply(vec![bound]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The module is invalid: Module not valid for datastore redis"
        );
        assert_eq!(err.class_name(), "ModuleInvalid");

        let ok = ModulePayload {
            datastore: "redis".into(),
            ..module("m2", "message=x")
        };
        let any = module("m3", "message=x");
        assert_eq!(g.manager.apply(vec![ok, any]).unwrap().len(), 2);
    }

    #[test]
    fn unknown_type_fails_the_whole_call_before_anything_is_applied() {
        let g = guest("mysql");
        let good = ModulePayload {
            priority_apply: true,
            ..module("good", "message=x")
        };
        let bad = ModulePayload {
            module_type: "nosuch".into(),
            ..module("bad", "message=x")
        };
        let err = g.manager.apply(vec![bad, good]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "No driver implemented for module type 'nosuch'"
        );
        assert_eq!(err.class_name(), "ModuleTypeNotFound");
        assert!(!g.manager.root().exists(), "no module may be applied");
    }

    #[test]
    fn driver_not_in_module_types_is_unknown() {
        let state = tempfile::tempdir().unwrap();
        let manager = ModuleManager::new(state.path(), drivers::load(&["ping".into()]), "mysql");
        let nr = ModulePayload {
            module_type: "new_relic_license".into(),
            ..module("nr", "license_key=k")
        };
        assert_eq!(
            manager.apply(vec![nr]).unwrap_err().to_string(),
            "No driver implemented for module type 'new_relic_license'"
        );
    }

    #[test]
    fn name_and_contents_are_required() {
        let g = guest("mysql");
        let nameless = ModulePayload {
            name: String::new(),
            ..module("m1", "message=x")
        };
        assert_eq!(
            g.manager.apply(vec![nameless]).unwrap_err().to_string(),
            "Module name not specified"
        );
        for contents in [None, Some(String::new())] {
            let empty = ModulePayload {
                contents,
                ..module("m1", "")
            };
            assert_eq!(
                g.manager.apply(vec![empty]).unwrap_err().to_string(),
                "Module contents not specified"
            );
        }
    }

    #[test]
    fn bad_ids_and_bad_base64_are_rejected() {
        let g = guest("mysql");
        for id in ["", "..", "a/b", "../x", "/abs"] {
            let err = g.manager.apply(vec![module(id, "message=x")]).unwrap_err();
            assert!(matches!(err, ApplyError::InvalidId { .. }), "{id}: {err}");
        }
        let garbled = ModulePayload {
            contents: Some("not base64!".into()),
            ..module("m1", "")
        };
        let err = g.manager.apply(vec![garbled]).unwrap_err();
        assert!(matches!(err, ApplyError::InvalidContents { .. }));
        assert!(!g.manager.root().exists());
    }

    #[test]
    fn wrapped_base64_is_accepted() {
        let g = guest("mysql");
        let encoded = BASE64.encode("message=wrapped");
        let (head, tail) = encoded.split_at(8);
        let payload = ModulePayload {
            contents: Some(format!("{head}\n{tail}\n")),
            ..module("m1", "")
        };
        let results = g.manager.apply(vec![payload]).unwrap();
        assert_eq!(results[0].message.as_deref(), Some("wrapped"));
    }

    #[test]
    fn unreadable_result_is_replaced_on_apply_but_fails_a_list() {
        let g = guest("mysql");
        g.manager.apply(vec![module("m1", "message=x")]).unwrap();
        let file = g.manager.root().join("ping/m1/result.json");
        fs::write(&file, b"{ torn").unwrap();
        assert!(matches!(
            g.manager.list(false, true),
            Err(ApplyError::CorruptResult { .. })
        ));
        let results = g.manager.apply(vec![module("m1", "message=y")]).unwrap();
        assert_eq!(results[0].message.as_deref(), Some("y"));
        assert_eq!(ids(&g.manager.list(false, true).unwrap()), ["m1"]);
    }
}
