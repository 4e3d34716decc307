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

/// Every method a guest agent serves (docs/messaging.md §4), one struct of arguments per method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum GuestMsg {
    Prepare(Box<Prepare>),
    ModuleApply(ModuleApply),
    ModuleRemove(ModuleRemove),
    ModuleList(ModuleList),
    RpcPing(RpcPing),
    ClusterComplete(ClusterComplete),
    GetFilesystemStats(GetFilesystemStats),
    StopDb(StopDb),
    DeleteQueue(DeleteQueue),
    Restart(Restart),
    CreateDatabase(CreateDatabase),
    /// One page of databases (call) → `[[database...], next_marker]`, as Trove's guest answers.
    ListDatabases(PageQuery),
    DeleteDatabase(DeleteDatabase),
    CreateUser(CreateUser),
    /// One page of users (call) → `[[user...], next_marker]`.
    ListUsers(PageQuery),
    DeleteUser(DeleteUser),
    EnableRoot(EnableRoot),
    EnableRootWithPassword(EnableRootWithPassword),
    IsRootEnabled(IsRootEnabled),
    ClusterMeet(ClusterMeet),
    ClusterAddslots(ClusterAddslots),
}

// Methods without arguments are structs with braces, never unit structs: serde writes `{}` for
// those, which is what oslo sends as `args`, where a unit struct would be `null`.

/// `module_apply`: a call from the api, or a cast from the taskmanager for a reapply job (then
/// `job_id` is set and the guest reports to the conductor instead of replying).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleApply {
    pub modules: Vec<ModuleEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// `module_remove`: remove a module from the guest (a call from the api) → null.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRemove {
    /// The module as the api knows it; `contents` is not sent.
    pub module: Box<ModuleEntry>,
}

/// `module_list`: what the guest has applied (call) → its [`ModuleResult`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleList {
    /// Also return each module's contents.
    #[serde(default)]
    pub include_contents: bool,
}

/// `rpc_ping`: is the guest alive (call) → true.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcPing {}

/// `cluster_complete` (call): every member of the guest's cluster is built; the guest reports
/// `running` once it sees its cluster ok.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterComplete {}

/// `get_filesystem_stats` (call) → Trove's figures for the guest's data filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetFilesystemStats {
    /// A path on a Trove guest; ours measures its state directory instead.
    #[serde(default)]
    pub fs_path: Option<String>,
}

/// `stop_db`: stop the datastore server before the instance is deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopDb {
    /// Trove's argument; our guest keeps the server stopped either way (until `restart`).
    #[serde(default)]
    pub do_not_start_on_reboot: bool,
}

/// `delete_queue` (cast): the instance is going away; the guest stops consuming and exits (the
/// taskmanager deletes the queue).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteQueue {}

/// `restart`: stop the datastore server and start it again (Trove's `trove restart`); a call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {}

/// `create_database`: create databases (mysql); a call from the api. Names are checked by the api
/// and again here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateDatabase {
    pub databases: Vec<DatabaseSpec>,
}

/// `delete_database`: drop one database (a call).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteDatabase {
    pub database: DatabaseSpec,
}

/// `create_user`: create users with their grants (mysql); a call from the api.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUser {
    pub users: Vec<UserSpec>,
}

/// `delete_user`: drop one user (a call).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteUser {
    pub user: UserSpec,
}

/// `enable_root`: enable root with a generated password (call) → the root user, password included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnableRoot {}

/// `enable_root_with_password`: enable root with the caller's password, or a generated one when
/// `None` (call) → the root user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnableRootWithPassword {
    #[serde(default)]
    pub root_password: Option<String>,
}

/// `is_root_enabled`: whether root is enabled (call) → bool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsRootEnabled {}

/// `cluster_meet`, Redis Cluster: join the cluster `ip:port` belongs to (call, Trove's redis cluster
/// strategy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeet {
    pub ip: String,
    pub port: u16,
}

/// `cluster_addslots`, Redis Cluster: own the hash slots `first_slot..=last_slot` (call).
/// Idempotent: slots this node already owns are skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAddslots {
    pub first_slot: u32,
    pub last_slot: u32,
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
    /// The wire method name, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Prepare(_) => "prepare",
            Self::ModuleApply(_) => "module_apply",
            Self::ModuleRemove(_) => "module_remove",
            Self::ModuleList(_) => "module_list",
            Self::RpcPing(_) => "rpc_ping",
            Self::ClusterComplete(_) => "cluster_complete",
            Self::GetFilesystemStats(_) => "get_filesystem_stats",
            Self::StopDb(_) => "stop_db",
            Self::DeleteQueue(_) => "delete_queue",
            Self::Restart(_) => "restart",
            Self::CreateDatabase(_) => "create_database",
            Self::ListDatabases(_) => "list_databases",
            Self::DeleteDatabase(_) => "delete_database",
            Self::CreateUser(_) => "create_user",
            Self::ListUsers(_) => "list_users",
            Self::DeleteUser(_) => "delete_user",
            Self::EnableRoot(_) => "enable_root",
            Self::EnableRootWithPassword(_) => "enable_root_with_password",
            Self::IsRootEnabled(_) => "is_root_enabled",
            Self::ClusterMeet(_) => "cluster_meet",
            Self::ClusterAddslots(_) => "cluster_addslots",
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
    use crate::rpc::assert_wire;
    use serde_json::json;

    fn entry(contents: Option<&str>) -> ModuleEntry {
        ModuleEntry {
            module: ModulePayload {
                id: "m1".into(),
                name: "ping".into(),
                module_type: "ping".into(),
                tenant_id: Some("t1".into()),
                tenant: "t1".into(),
                md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
                contents: contents.map(str::to_owned),
                ..ModulePayload::default()
            },
        }
    }

    fn bob() -> UserSpec {
        UserSpec {
            name: "bob".into(),
            host: Some("%".into()),
            password: Some("bobpw".into()),
            databases: vec![shop()],
        }
    }

    fn shop() -> DatabaseSpec {
        DatabaseSpec {
            name: "shop".into(),
            character_set: Some("utf8".into()),
            collate: None,
        }
    }

    /// One value of every variant, with the text the serializer wrote for it before each variant
    /// became a struct of its own: the wire must not change.
    #[test]
    fn every_method_keeps_its_wire_format() {
        let cases: Vec<(GuestMsg, &str)> = vec![
            (
                GuestMsg::Prepare(Box::new(Prepare {
                    memory_mb: 512,
                    packages: vec!["redis-server".into()],
                    databases: vec![json!({"_name": "shop"})],
                    users: vec![],
                    device_path: Some("/dev/vdb".into()),
                    mount_point: Some("/var/lib/redis".into()),
                    backup_info: None,
                    config_contents: Some("port 6379".into()),
                    root_password: None,
                    overrides: Some(json!({})),
                    cluster_config: None,
                    snapshot: None,
                    modules: vec![entry(Some("cGluZw=="))],
                    ds_version: Some("3.2.6".into()),
                })),
                r#"{"method":"prepare","args":{"memory_mb":512,"packages":["redis-server"],"databases":[{"_name":"shop"}],"users":[],"device_path":"/dev/vdb","mount_point":"/var/lib/redis","backup_info":null,"config_contents":"port 6379","root_password":null,"overrides":{},"cluster_config":null,"snapshot":null,"modules":[{"module":{"id":"m1","name":"ping","type":"ping","description":null,"tenant_id":"t1","tenant":"t1","datastore_id":null,"datastore":"","datastore_version_id":null,"datastore_version":"","auto_apply":false,"priority_apply":false,"apply_order":0,"is_admin":false,"visible":false,"live_update":false,"md5":"d41d8cd98f00b204e9800998ecf8427e","created":null,"updated":null,"contents":"cGluZw=="}}],"ds_version":"3.2.6"}}"#,
            ),
            (
                GuestMsg::ModuleApply(ModuleApply {
                    modules: vec![entry(Some("cGluZw=="))],
                    job_id: Some("job-1".into()),
                }),
                r#"{"method":"module_apply","args":{"modules":[{"module":{"id":"m1","name":"ping","type":"ping","description":null,"tenant_id":"t1","tenant":"t1","datastore_id":null,"datastore":"","datastore_version_id":null,"datastore_version":"","auto_apply":false,"priority_apply":false,"apply_order":0,"is_admin":false,"visible":false,"live_update":false,"md5":"d41d8cd98f00b204e9800998ecf8427e","created":null,"updated":null,"contents":"cGluZw=="}}],"job_id":"job-1"}}"#,
            ),
            (
                GuestMsg::ModuleApply(ModuleApply {
                    modules: vec![],
                    job_id: None,
                }),
                r#"{"method":"module_apply","args":{"modules":[]}}"#,
            ),
            (
                GuestMsg::ModuleRemove(ModuleRemove {
                    module: Box::new(entry(None)),
                }),
                r#"{"method":"module_remove","args":{"module":{"module":{"id":"m1","name":"ping","type":"ping","description":null,"tenant_id":"t1","tenant":"t1","datastore_id":null,"datastore":"","datastore_version_id":null,"datastore_version":"","auto_apply":false,"priority_apply":false,"apply_order":0,"is_admin":false,"visible":false,"live_update":false,"md5":"d41d8cd98f00b204e9800998ecf8427e","created":null,"updated":null}}}}"#,
            ),
            (
                GuestMsg::ModuleList(ModuleList {
                    include_contents: true,
                }),
                r#"{"method":"module_list","args":{"include_contents":true}}"#,
            ),
            (
                GuestMsg::RpcPing(RpcPing {}),
                r#"{"method":"rpc_ping","args":{}}"#,
            ),
            (
                GuestMsg::ClusterComplete(ClusterComplete {}),
                r#"{"method":"cluster_complete","args":{}}"#,
            ),
            (
                GuestMsg::GetFilesystemStats(GetFilesystemStats {
                    fs_path: Some("/var/lib/redis".into()),
                }),
                r#"{"method":"get_filesystem_stats","args":{"fs_path":"/var/lib/redis"}}"#,
            ),
            (
                GuestMsg::StopDb(StopDb {
                    do_not_start_on_reboot: true,
                }),
                r#"{"method":"stop_db","args":{"do_not_start_on_reboot":true}}"#,
            ),
            (
                GuestMsg::DeleteQueue(DeleteQueue {}),
                r#"{"method":"delete_queue","args":{}}"#,
            ),
            (
                GuestMsg::Restart(Restart {}),
                r#"{"method":"restart","args":{}}"#,
            ),
            (
                GuestMsg::CreateDatabase(CreateDatabase {
                    databases: vec![shop()],
                }),
                r#"{"method":"create_database","args":{"databases":[{"_name":"shop","_character_set":"utf8","_collate":null}]}}"#,
            ),
            (
                GuestMsg::ListDatabases(PageQuery {
                    limit: Some(20),
                    marker: Some("shop".into()),
                    include_marker: true,
                }),
                r#"{"method":"list_databases","args":{"limit":20,"marker":"shop","include_marker":true}}"#,
            ),
            (
                GuestMsg::DeleteDatabase(DeleteDatabase { database: shop() }),
                r#"{"method":"delete_database","args":{"database":{"_name":"shop","_character_set":"utf8","_collate":null}}}"#,
            ),
            (
                GuestMsg::CreateUser(CreateUser { users: vec![bob()] }),
                r#"{"method":"create_user","args":{"users":[{"_name":"bob","_host":"%","_password":"bobpw","_databases":[{"_name":"shop","_character_set":"utf8","_collate":null}]}]}}"#,
            ),
            (
                GuestMsg::ListUsers(PageQuery::default()),
                r#"{"method":"list_users","args":{"limit":null,"marker":null,"include_marker":false}}"#,
            ),
            (
                GuestMsg::DeleteUser(DeleteUser { user: bob() }),
                r#"{"method":"delete_user","args":{"user":{"_name":"bob","_host":"%","_password":"bobpw","_databases":[{"_name":"shop","_character_set":"utf8","_collate":null}]}}}"#,
            ),
            (
                GuestMsg::EnableRoot(EnableRoot {}),
                r#"{"method":"enable_root","args":{}}"#,
            ),
            (
                GuestMsg::EnableRootWithPassword(EnableRootWithPassword {
                    root_password: Some("rootpw".into()),
                }),
                r#"{"method":"enable_root_with_password","args":{"root_password":"rootpw"}}"#,
            ),
            (
                GuestMsg::IsRootEnabled(IsRootEnabled {}),
                r#"{"method":"is_root_enabled","args":{}}"#,
            ),
            (
                GuestMsg::ClusterMeet(ClusterMeet {
                    ip: "127.0.0.1".into(),
                    port: 30001,
                }),
                r#"{"method":"cluster_meet","args":{"ip":"127.0.0.1","port":30001}}"#,
            ),
            (
                GuestMsg::ClusterAddslots(ClusterAddslots {
                    first_slot: 0,
                    last_slot: 5460,
                }),
                r#"{"method":"cluster_addslots","args":{"first_slot":0,"last_slot":5460}}"#,
            ),
        ];
        let methods: std::collections::BTreeSet<_> =
            cases.iter().map(|(m, _)| m.method()).collect();
        assert_eq!(methods.len(), 21, "one case per variant");
        for (msg, wire) in &cases {
            assert_wire(msg, wire);
        }
    }

    /// Arguments a sender may leave out decode to the same defaults as before.
    #[test]
    fn omitted_arguments_keep_their_defaults() {
        let cases: Vec<(&str, GuestMsg)> = vec![
            (
                r#"{"method":"module_apply","args":{"modules":[]}}"#,
                GuestMsg::ModuleApply(ModuleApply {
                    modules: vec![],
                    job_id: None,
                }),
            ),
            (
                r#"{"method":"module_list","args":{}}"#,
                GuestMsg::ModuleList(ModuleList {
                    include_contents: false,
                }),
            ),
            (
                r#"{"method":"get_filesystem_stats","args":{}}"#,
                GuestMsg::GetFilesystemStats(GetFilesystemStats { fs_path: None }),
            ),
            (
                r#"{"method":"stop_db","args":{}}"#,
                GuestMsg::StopDb(StopDb {
                    do_not_start_on_reboot: false,
                }),
            ),
            (
                r#"{"method":"enable_root_with_password","args":{}}"#,
                GuestMsg::EnableRootWithPassword(EnableRootWithPassword {
                    root_password: None,
                }),
            ),
            (
                r#"{"method":"create_user","args":{"users":[{"_name":"bob"}]}}"#,
                GuestMsg::CreateUser(CreateUser {
                    users: vec![UserSpec {
                        name: "bob".into(),
                        ..UserSpec::default()
                    }],
                }),
            ),
            (
                r#"{"method":"rpc_ping","args":{}}"#,
                GuestMsg::RpcPing(RpcPing {}),
            ),
            (
                r#"{"method":"prepare","args":{"memory_mb":512}}"#,
                GuestMsg::Prepare(Box::new(Prepare {
                    memory_mb: 512,
                    ..Prepare::default()
                })),
            ),
        ];
        for (wire, msg) in cases {
            assert_eq!(
                serde_json::from_str::<GuestMsg>(wire).unwrap(),
                msg,
                "{wire}"
            );
        }
    }

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
