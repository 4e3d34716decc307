//! What `prepare` was given, kept for operators, and the filesystem figures a guest reports.
//!
//! Each manager records the configuration `prepare` gave it in `<state_dir>/datastore/<manager>.json`,
//! without the secrets (the root password, user passwords) and without the module payloads, which the
//! module manager stores itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde_json::{json, Map, Value};
use trove_common::rpc::guest::Prepare;

use crate::state;

/// The directory below the state directory that holds the managers' records.
pub const DATASTORE_DIR: &str = "datastore";

/// Whether `manager` can name a record file: lower-case letters, digits, `-` and `_`.
pub fn valid_manager_name(manager: &str) -> bool {
    !manager.is_empty()
        && manager
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The record of a `prepare`: its arguments minus secrets and module payloads.
pub fn config_record(manager: &str, prepare: &Prepare, now: f64) -> Value {
    let users: Vec<Value> = prepare.users.iter().map(without_passwords).collect();
    json!({
        "manager": manager,
        "prepared_at": now,
        "memory_mb": prepare.memory_mb,
        "packages": prepare.packages,
        "databases": prepare.databases,
        "users": users,
        "device_path": prepare.device_path,
        "mount_point": prepare.mount_point,
        "backup_info": prepare.backup_info,
        "config_contents": prepare.config_contents,
        "root_password_set": prepare.root_password.is_some(),
        "overrides": prepare.overrides,
        "cluster_config": prepare.cluster_config,
        "snapshot": prepare.snapshot,
        "modules": prepare.modules.iter().map(|m| m.module.id.as_str()).collect::<Vec<_>>(),
        "ds_version": prepare.ds_version,
    })
}

/// A user entry with every password field removed (Trove's serialised users carry `_password`).
fn without_passwords(user: &Value) -> Value {
    match user {
        Value::Object(fields) => {
            let kept: Map<String, Value> = fields
                .iter()
                .filter(|(k, _)| !k.trim_start_matches('_').eq_ignore_ascii_case("password"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(kept)
        }
        other => other.clone(),
    }
}

/// Sets up the datastore for `prepare`: writes `<state_dir>/datastore/<manager>.json` atomically and
/// returns its path. Blocking file I/O.
pub fn prepare(
    state_dir: &Path,
    manager: &str,
    prepare: &Prepare,
    now: f64,
) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        valid_manager_name(manager),
        "datastore manager '{manager}' is not a valid manager name"
    );
    let dir = state_dir.join(DATASTORE_DIR);
    state::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{manager}.json"));
    let record = serde_json::to_vec_pretty(&config_record(manager, prepare, now))?;
    state::write_atomic(&path, &record).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `get_filesystem_stats`: Trove's figures (sizes in GB) for the filesystem holding `path`, read with
/// `df -Pk` (no unsafe `statvfs` binding). When `df` is unavailable, a 1 GB volume with nothing used.
/// Blocking: runs a command.
pub fn filesystem_stats(path: &Path) -> Value {
    let (total_kb, used_kb, free_kb) = df(path).unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "cannot read filesystem usage; reporting defaults");
        (1024 * 1024, 0, 1024 * 1024)
    });
    stats_from_kb(total_kb, used_kb, free_kb)
}

/// Trove's `get_filesystem_volume_stats` shape from kilobyte counts.
pub fn stats_from_kb(total_kb: u64, used_kb: u64, free_kb: u64) -> Value {
    const KB_PER_GB: f64 = 1024.0 * 1024.0;
    let gb = |kb: u64| kb as f64 / KB_PER_GB;
    json!({
        "block_size": 1024,
        "total_blocks": total_kb,
        "free_blocks": free_kb,
        "total": gb(total_kb),
        "free": gb(free_kb),
        "used": gb(used_kb),
    })
}

fn df(path: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let out = Command::new("df")
        .arg("-Pk")
        .arg(path)
        .output()
        .context("running df")?;
    anyhow::ensure!(out.status.success(), "df exited with {}", out.status);
    parse_df(&String::from_utf8_lossy(&out.stdout)).context("parsing df output")
}

/// Parses POSIX `df -Pk` output: `(total, used, available)` kilobytes of the first filesystem line.
pub fn parse_df(output: &str) -> Option<(u64, u64, u64)> {
    let line = output.lines().nth(1)?;
    let mut fields = line.split_whitespace().skip(1).map(str::parse::<u64>);
    Some((
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_common::rpc::guest::{ModuleEntry, ModulePayload};

    #[test]
    fn manager_names() {
        for ok in ["mysql", "redis", "percona-xtradb", "mongo_db"] {
            assert!(valid_manager_name(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", "MySQL", "my sql", "."] {
            assert!(!valid_manager_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_record_has_no_secrets_and_no_module_contents() {
        let p = Prepare {
            memory_mb: 512,
            root_password: Some("rootpw".into()),
            users: vec![
                json!({"_name": "bob", "_password": "bobpw", "password": "x", "_databases": []}),
            ],
            databases: vec![json!({"_name": "db1"})],
            config_contents: Some("maxmemory 1gb".into()),
            modules: vec![ModuleEntry {
                module: ModulePayload {
                    id: "m1".into(),
                    contents: Some("c2VjcmV0".into()),
                    ..Default::default()
                },
            }],
            ..Default::default()
        };
        let record = config_record("redis", &p, 1.0);
        let text = record.to_string();
        for secret in ["rootpw", "bobpw", "c2VjcmV0", "\"x\""] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(record["users"][0]["_name"], "bob");
        assert_eq!(record["root_password_set"], true);
        assert_eq!(record["modules"], json!(["m1"]));
        assert_eq!(record["config_contents"], "maxmemory 1gb");
    }

    #[test]
    fn prepare_writes_one_private_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = prepare(dir.path(), "mysql", &Prepare::default(), 1.0).unwrap();
        assert_eq!(path, dir.path().join("datastore/mysql.json"));
        let record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(record["manager"], "mysql");
        assert!(prepare(dir.path(), "../evil", &Prepare::default(), 1.0).is_err());
    }

    #[test]
    fn df_output_is_parsed() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vdb          10485760  1048576   9437184      11% /var/lib/trove\n";
        assert_eq!(parse_df(out), Some((10485760, 1048576, 9437184)));
        assert_eq!(parse_df("header only\n"), None);
        let stats = stats_from_kb(10485760, 1048576, 9437184);
        assert_eq!(stats["total"], 10.0);
        assert_eq!(stats["used"], 1.0);
    }

    #[test]
    fn stats_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let stats = filesystem_stats(dir.path());
        assert!(stats["total"].as_f64().unwrap() > 0.0);
        assert!(stats["used"].as_f64().unwrap() >= 0.0);
    }
}
