//! Casts from the api to the taskmanager (topic `taskmanager_queue`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::guest::ModuleEntry;

/// The flavor as Trove passes it to the taskmanager.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorInfo {
    pub id: String,
    pub name: String,
    pub ram: i32,
    pub vcpus: i32,
    pub disk: i32,
    pub ephemeral: i32,
}

/// `cluster_config` of a cluster member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub id: String,
    pub instance_type: String,
}

/// Arguments of `create_instance` (docs/messaging.md §4). Fields Trove has but we do not use are kept so the
/// wire matches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateInstance {
    pub instance_id: String,
    pub name: String,
    pub flavor: FlavorInfo,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub databases: Vec<Value>,
    #[serde(default)]
    pub users: Vec<Value>,
    pub datastore_manager: String,
    #[serde(default)]
    pub packages: Option<String>,
    #[serde(default)]
    pub volume_size: Option<i32>,
    #[serde(default)]
    pub backup_id: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub root_password: Option<String>,
    #[serde(default)]
    pub nics: Vec<Value>,
    #[serde(default)]
    pub overrides: Value,
    #[serde(default)]
    pub slave_of_id: Option<String>,
    #[serde(default)]
    pub cluster_config: Option<ClusterConfig>,
    #[serde(default)]
    pub volume_type: Option<String>,
    /// `[{"module": <detailed view + contents>}]` (docs/module-semantics.md §13).
    #[serde(default)]
    pub modules: Vec<ModuleEntry>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub access: Option<Value>,
    #[serde(default)]
    pub ds_version: Option<String>,
}

/// Every method the taskmanager serves, one struct of arguments per method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum TaskManagerMsg {
    CreateInstance(Box<CreateInstance>),
    CreateCluster(CreateCluster),
    DeleteInstance(DeleteInstance),
    DeleteCluster(DeleteCluster),
    Restart(Restart),
    ReapplyModule(ReapplyModule),
}

/// `create_cluster`: build the members the api wrote for the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCluster {
    pub cluster_id: String,
}

/// `delete_instance`: tear down an instance the api marked DELETING.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteInstance {
    pub instance_id: String,
}

/// `delete_cluster`: tear down a cluster whose members the api marked DELETING.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteCluster {
    pub cluster_id: String,
}

/// Trove's `restart`: restart the instance's datastore (the api set the task to REBOOTING).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    pub instance_id: String,
}

/// `reapply_module` (docs/messaging.md §4): Trove's args plus `job_id`, the durable job row the api
/// wrote with this cast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReapplyModule {
    pub module_id: String,
    /// Only instances that have this md5 (`None`: any).
    #[serde(default)]
    pub md5: Option<String>,
    /// Trove's 0/1/bool flag; read it with [`truthy`].
    #[serde(default)]
    pub include_clustered: Option<Value>,
    #[serde(default)]
    pub batch_size: Option<i64>,
    #[serde(default)]
    pub batch_delay: Option<i64>,
    /// Trove's 0/1/bool flag; read it with [`truthy`].
    #[serde(default)]
    pub force: Option<Value>,
    /// The durable job row the api wrote with the cast (`None`: a Trove-style cast; the taskmanager
    /// writes the row).
    #[serde(default)]
    pub job_id: Option<String>,
}

#[cfg(feature = "db")]
impl ReapplyModule {
    /// The cast that starts reapply job `job`: the api sends it with the row, and the taskmanager
    /// sends it to itself to resume a job still queued. The flags travel as Trove's 0/1.
    pub fn for_job(job: &crate::db::models::ReapplyJob) -> Self {
        Self {
            module_id: job.module_id.clone(),
            md5: job.md5.clone(),
            include_clustered: Some(Value::from(i32::from(job.include_clustered))),
            batch_size: Some(i64::from(job.batch_size)),
            batch_delay: Some(i64::from(job.batch_delay)),
            force: Some(Value::from(i32::from(job.force))),
            job_id: Some(job.id.clone()),
        }
    }
}

impl TaskManagerMsg {
    /// The wire method name, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Self::CreateInstance(_) => "create_instance",
            Self::CreateCluster(_) => "create_cluster",
            Self::DeleteInstance(_) => "delete_instance",
            Self::DeleteCluster(_) => "delete_cluster",
            Self::Restart(_) => "restart",
            Self::ReapplyModule(_) => "reapply_module",
        }
    }
}

/// Trove's truthiness for the 0/1/bool/null flags clients send.
pub fn truthy(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::assert_wire;
    use crate::rpc::guest::ModulePayload;
    use serde_json::json;

    /// One value of every variant, with the text the serializer wrote for it before each variant
    /// became a struct of its own: the wire must not change.
    #[test]
    fn every_method_keeps_its_wire_format() {
        let cases: Vec<(TaskManagerMsg, &str)> = vec![
            (
                TaskManagerMsg::CreateInstance(Box::new(CreateInstance {
                    instance_id: "i1".into(),
                    name: "myredis".into(),
                    flavor: FlavorInfo {
                        id: "15".into(),
                        name: "test.small".into(),
                        ram: 512,
                        vcpus: 1,
                        disk: 5,
                        ephemeral: 0,
                    },
                    image_id: Some("img".into()),
                    databases: vec![json!({"_name": "shop"})],
                    users: vec![],
                    datastore_manager: "redis".into(),
                    packages: None,
                    volume_size: Some(1),
                    backup_id: None,
                    availability_zone: Some("nova".into()),
                    root_password: None,
                    nics: vec![],
                    overrides: json!({}),
                    slave_of_id: None,
                    cluster_config: Some(ClusterConfig {
                        id: "c1".into(),
                        instance_type: "member".into(),
                    }),
                    volume_type: None,
                    modules: vec![ModuleEntry {
                        module: ModulePayload {
                            id: "m1".into(),
                            name: "ping".into(),
                            module_type: "ping".into(),
                            md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
                            contents: Some("cGluZw==".into()),
                            ..ModulePayload::default()
                        },
                    }],
                    locality: None,
                    access: None,
                    ds_version: Some("3.2.6".into()),
                })),
                r#"{"method":"create_instance","args":{"instance_id":"i1","name":"myredis","flavor":{"id":"15","name":"test.small","ram":512,"vcpus":1,"disk":5,"ephemeral":0},"image_id":"img","databases":[{"_name":"shop"}],"users":[],"datastore_manager":"redis","packages":null,"volume_size":1,"backup_id":null,"availability_zone":"nova","root_password":null,"nics":[],"overrides":{},"slave_of_id":null,"cluster_config":{"id":"c1","instance_type":"member"},"volume_type":null,"modules":[{"module":{"id":"m1","name":"ping","type":"ping","description":null,"tenant_id":null,"tenant":"","datastore_id":null,"datastore":"","datastore_version_id":null,"datastore_version":"","auto_apply":false,"priority_apply":false,"apply_order":0,"is_admin":false,"visible":false,"live_update":false,"md5":"d41d8cd98f00b204e9800998ecf8427e","created":null,"updated":null,"contents":"cGluZw=="}}],"locality":null,"access":null,"ds_version":"3.2.6"}}"#,
            ),
            (
                TaskManagerMsg::CreateCluster(CreateCluster {
                    cluster_id: "c1".into(),
                }),
                r#"{"method":"create_cluster","args":{"cluster_id":"c1"}}"#,
            ),
            (
                TaskManagerMsg::DeleteInstance(DeleteInstance {
                    instance_id: "i1".into(),
                }),
                r#"{"method":"delete_instance","args":{"instance_id":"i1"}}"#,
            ),
            (
                TaskManagerMsg::DeleteCluster(DeleteCluster {
                    cluster_id: "c1".into(),
                }),
                r#"{"method":"delete_cluster","args":{"cluster_id":"c1"}}"#,
            ),
            (
                TaskManagerMsg::Restart(Restart {
                    instance_id: "i1".into(),
                }),
                r#"{"method":"restart","args":{"instance_id":"i1"}}"#,
            ),
            (
                TaskManagerMsg::ReapplyModule(ReapplyModule {
                    module_id: "m1".into(),
                    md5: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
                    include_clustered: Some(json!(true)),
                    batch_size: Some(1),
                    batch_delay: Some(3),
                    force: Some(json!(0)),
                    job_id: Some("job-1".into()),
                }),
                r#"{"method":"reapply_module","args":{"module_id":"m1","md5":"d41d8cd98f00b204e9800998ecf8427e","include_clustered":true,"batch_size":1,"batch_delay":3,"force":0,"job_id":"job-1"}}"#,
            ),
            (
                TaskManagerMsg::ReapplyModule(ReapplyModule {
                    module_id: "m1".into(),
                    md5: None,
                    include_clustered: None,
                    batch_size: None,
                    batch_delay: None,
                    force: None,
                    job_id: None,
                }),
                r#"{"method":"reapply_module","args":{"module_id":"m1","md5":null,"include_clustered":null,"batch_size":null,"batch_delay":null,"force":null,"job_id":null}}"#,
            ),
        ];
        let methods: std::collections::BTreeSet<_> =
            cases.iter().map(|(m, _)| m.method()).collect();
        assert_eq!(methods.len(), 6, "one case per variant");
        for (msg, wire) in &cases {
            assert_wire(msg, wire);
        }
    }

    /// Arguments a sender may leave out decode to the same defaults as before.
    #[test]
    fn omitted_arguments_keep_their_defaults() {
        let wire = r#"{"method":"reapply_module","args":{"module_id":"m1"}}"#;
        assert_eq!(
            serde_json::from_str::<TaskManagerMsg>(wire).unwrap(),
            TaskManagerMsg::ReapplyModule(ReapplyModule {
                module_id: "m1".into(),
                md5: None,
                include_clustered: None,
                batch_size: None,
                batch_delay: None,
                force: None,
                job_id: None,
            })
        );
        let wire = r#"{"method":"create_instance","args":{"instance_id":"i1","name":"n","flavor":{"id":"15","name":"f","ram":1,"vcpus":1,"disk":1,"ephemeral":0},"datastore_manager":"redis"}}"#;
        let TaskManagerMsg::CreateInstance(args) = serde_json::from_str(wire).unwrap() else {
            panic!("{wire}")
        };
        assert_eq!((args.databases.len(), &args.overrides), (0, &Value::Null));
    }

    #[test]
    fn method_names_are_trove_names() {
        let m = TaskManagerMsg::ReapplyModule(ReapplyModule {
            module_id: "m".into(),
            md5: None,
            include_clustered: Some(json!(1)),
            batch_size: Some(1),
            batch_delay: Some(3),
            force: Some(json!(0)),
            job_id: Some("j".into()),
        });
        let (method, args) = crate::rpc::to_method_args(&m);
        assert_eq!(method, "reapply_module");
        assert_eq!(args["batch_delay"], 3);
        let (method, args) = crate::rpc::to_method_args(&TaskManagerMsg::Restart(Restart {
            instance_id: "i".into(),
        }));
        assert_eq!(
            (method.as_str(), &args["instance_id"]),
            ("restart", &json!("i"))
        );
        assert!(truthy(&Some(json!(1))));
        assert!(!truthy(&Some(json!(0))));
    }

    /// The cast of a job carries the row's choices, flags as Trove's 0/1.
    #[cfg(feature = "db")]
    #[test]
    fn a_jobs_cast_says_what_its_row_says() {
        let created = chrono::DateTime::from_timestamp(1_496_423_181, 0)
            .unwrap()
            .naive_utc();
        let job = crate::db::models::ReapplyJob::queued(
            crate::db::models::NewReapplyJob {
                id: "job-1".into(),
                module_id: "m1".into(),
                tenant_id: "t1".into(),
                is_admin: false,
                md5: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
                include_clustered: true,
                force: false,
                batch_size: 1,
                batch_delay: 3,
                request_id: "req-1".into(),
            },
            created,
        );
        assert_wire(
            &TaskManagerMsg::ReapplyModule(ReapplyModule::for_job(&job)),
            r#"{"method":"reapply_module","args":{"module_id":"m1","md5":"d41d8cd98f00b204e9800998ecf8427e","include_clustered":1,"batch_size":1,"batch_delay":3,"force":0,"job_id":"job-1"}}"#,
        );
    }
}
