//! Messages consumed by a guest agent on `guestagent.<instance_id>`, and the module records it returns.

use serde::{Deserialize, Serialize};

/// The detailed module view sent to a guest (docs/messaging.md §4), wrapped as `{"module": {...}}` on the wire.
///
/// Every field is what the control plane knew when it sent the message: the guest has no database, so
/// the payload must be complete. `contents` is the base64 text of the payload bytes (docs/module-semantics.md §4) and is
/// `None` for `module_remove`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulePayload {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub module_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// `tenant_id`, or `"all"`.
    #[serde(default = "all")]
    pub tenant: String,
    #[serde(default)]
    pub datastore_id: Option<String>,
    /// The datastore name, or `"all"`.
    #[serde(default = "all")]
    pub datastore: String,
    #[serde(default)]
    pub datastore_version_id: Option<String>,
    /// The datastore version name, or `"all"`.
    #[serde(default = "all")]
    pub datastore_version: String,
    #[serde(default)]
    pub auto_apply: bool,
    #[serde(default)]
    pub priority_apply: bool,
    #[serde(default = "default_apply_order")]
    pub apply_order: i32,
    #[serde(default)]
    pub is_admin: bool,
    #[serde(default = "yes")]
    pub visible: bool,
    #[serde(default)]
    pub live_update: bool,
    pub md5: String,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
    /// Base64 text of the payload; never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
}

fn all() -> String {
    "all".to_owned()
}
fn yes() -> bool {
    true
}
fn default_apply_order() -> i32 {
    5
}

/// `{"module": ModulePayload}`: the shape Trove puts in `modules` lists and in `module_remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub module: ModulePayload,
}

/// What a guest stores in `result.json` and returns from `module_apply` / `module_list` (docs/module-semantics.md §14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleResult {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub module_type: String,
    pub datastore: String,
    pub datastore_version: String,
    pub tenant: String,
    pub md5: String,
    /// `OK` or `ERROR`.
    pub status: Option<String>,
    pub message: Option<String>,
    /// Guest clock, `%Y-%m-%d %H:%M:%S.%f` cut to 22 characters.
    pub created: Option<String>,
    pub updated: Option<String>,
    pub removed: Option<String>,
    pub auto_apply: bool,
    pub visible: bool,
    pub is_admin: bool,
    /// Base64 of `contents.dat`, only when asked for.
    pub contents: Option<String>,
}

/// Every method a guest agent serves (docs/messaging.md §4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum GuestMsg {
    Prepare(Box<Prepare>),
    /// A call from the api, or a cast from the taskmanager for a reapply job (then `job_id` is set and
    /// the guest reports to the conductor instead of replying).
    ModuleApply {
        modules: Vec<ModuleEntry>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
    },
    ModuleRemove {
        module: Box<ModuleEntry>,
    },
    ModuleList {
        #[serde(default)]
        include_contents: bool,
    },
    RpcPing {},
    ClusterComplete {},
    GetFilesystemStats {
        #[serde(default)]
        fs_path: Option<String>,
    },
    StopDb {
        #[serde(default)]
        do_not_start_on_reboot: bool,
    },
    DeleteQueue {},
    /// Stop the datastore server and start it again (Trove's `trove restart`); a call.
    Restart {},
    /// Create databases (mysql); a call from the api. Names are checked by the api and again here.
    CreateDatabase {
        databases: Vec<DatabaseSpec>,
    },
    /// One page of databases (call) → `[[database...], next_marker]`, as Trove's guest answers.
    ListDatabases(PageQuery),
    DeleteDatabase {
        database: DatabaseSpec,
    },
    /// Create users with their grants (mysql); a call from the api.
    CreateUser {
        users: Vec<UserSpec>,
    },
    /// One page of users (call) → `[[user...], next_marker]`.
    ListUsers(PageQuery),
    DeleteUser {
        user: UserSpec,
    },
    /// Enable root with a generated password (call) → the root user, password included.
    EnableRoot {},
    /// Enable root with the caller's password, or a generated one when `None` (call) → the root user.
    EnableRootWithPassword {
        #[serde(default)]
        root_password: Option<String>,
    },
    /// Whether root is enabled (call) → bool.
    IsRootEnabled {},
    /// Redis Cluster: join the cluster `ip:port` belongs to (call, Trove's redis cluster strategy).
    ClusterMeet {
        ip: String,
        port: u16,
    },
    /// Redis Cluster: own the hash slots `first_slot..=last_slot` (call). Idempotent: slots this node
    /// already owns are skipped.
    ClusterAddslots {
        first_slot: u32,
        last_slot: u32,
    },
}

/// Which page of a listing (`list_databases`, `list_users`): Trove's `limit`, `marker` and
/// `include_marker` arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub marker: Option<String>,
    #[serde(default)]
    pub include_marker: bool,
}

/// A database as Trove serialises it between api and guest (`MySQLSchema.serialize()`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSpec {
    #[serde(rename = "_name")]
    pub name: String,
    #[serde(rename = "_character_set", default)]
    pub character_set: Option<String>,
    #[serde(rename = "_collate", default)]
    pub collate: Option<String>,
}

/// A user as Trove serialises it between api and guest (`MySQLUser.serialize()`). Its `Debug` never
/// shows the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    #[serde(rename = "_name")]
    pub name: String,
    /// `%` when not given.
    #[serde(rename = "_host", default)]
    pub host: Option<String>,
    #[serde(rename = "_password", default)]
    pub password: Option<String>,
    #[serde(rename = "_databases", default)]
    pub databases: Vec<DatabaseSpec>,
}

impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("databases", &self.databases)
            .finish()
    }
}

impl GuestMsg {
    pub fn method(&self) -> &'static str {
        match self {
            Self::Prepare(_) => "prepare",
            Self::ModuleApply { .. } => "module_apply",
            Self::ModuleRemove { .. } => "module_remove",
            Self::ModuleList { .. } => "module_list",
            Self::RpcPing {} => "rpc_ping",
            Self::ClusterComplete {} => "cluster_complete",
            Self::GetFilesystemStats { .. } => "get_filesystem_stats",
            Self::StopDb { .. } => "stop_db",
            Self::DeleteQueue {} => "delete_queue",
            Self::Restart {} => "restart",
            Self::CreateDatabase { .. } => "create_database",
            Self::ListDatabases(_) => "list_databases",
            Self::DeleteDatabase { .. } => "delete_database",
            Self::CreateUser { .. } => "create_user",
            Self::ListUsers(_) => "list_users",
            Self::DeleteUser { .. } => "delete_user",
            Self::EnableRoot {} => "enable_root",
            Self::EnableRootWithPassword { .. } => "enable_root_with_password",
            Self::IsRootEnabled {} => "is_root_enabled",
            Self::ClusterMeet { .. } => "cluster_meet",
            Self::ClusterAddslots { .. } => "cluster_addslots",
        }
    }
}

/// Arguments of `prepare` (version 1.1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prepare {
    pub memory_mb: i32,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub databases: Vec<serde_json::Value>,
    #[serde(default)]
    pub users: Vec<serde_json::Value>,
    #[serde(default)]
    pub device_path: Option<String>,
    #[serde(default)]
    pub mount_point: Option<String>,
    #[serde(default)]
    pub backup_info: Option<serde_json::Value>,
    #[serde(default)]
    pub config_contents: Option<String>,
    #[serde(default)]
    pub root_password: Option<String>,
    #[serde(default)]
    pub overrides: Option<serde_json::Value>,
    #[serde(default)]
    pub cluster_config: Option<serde_json::Value>,
    #[serde(default)]
    pub snapshot: Option<serde_json::Value>,
    #[serde(default)]
    pub modules: Vec<ModuleEntry>,
    #[serde(default)]
    pub ds_version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_calls_keep_troves_argument_names() {
        let msg = GuestMsg::ListUsers(PageQuery {
            limit: Some(20),
            marker: Some("bob@%".into()),
            include_marker: false,
        });
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            serde_json::json!({"method": "list_users",
                "args": {"limit": 20, "marker": "bob@%", "include_marker": false}})
        );
        let back: GuestMsg =
            serde_json::from_value(serde_json::json!({"method": "list_databases", "args": {}}))
                .unwrap();
        assert_eq!(back, GuestMsg::ListDatabases(PageQuery::default()));
    }
}
