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

/// Every method the taskmanager serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum TaskManagerMsg {
    CreateInstance(Box<CreateInstance>),
    CreateCluster {
        cluster_id: String,
    },
    DeleteInstance {
        instance_id: String,
    },
    DeleteCluster {
        cluster_id: String,
    },
    /// Trove's `restart`: restart the instance's datastore (the api set the task to REBOOTING).
    Restart {
        instance_id: String,
    },
    /// Trove's args plus `job_id`: the durable job row the api wrote with this cast.
    ReapplyModule {
        module_id: String,
        #[serde(default)]
        md5: Option<String>,
        #[serde(default)]
        include_clustered: Option<Value>,
        #[serde(default)]
        batch_size: Option<i64>,
        #[serde(default)]
        batch_delay: Option<i64>,
        #[serde(default)]
        force: Option<Value>,
        #[serde(default)]
        job_id: Option<String>,
    },
}

impl TaskManagerMsg {
    /// The wire method name, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Self::CreateInstance(_) => "create_instance",
            Self::CreateCluster { .. } => "create_cluster",
            Self::DeleteInstance { .. } => "delete_instance",
            Self::DeleteCluster { .. } => "delete_cluster",
            Self::Restart { .. } => "restart",
            Self::ReapplyModule { .. } => "reapply_module",
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
    use serde_json::json;

    #[test]
    fn method_names_are_trove_names() {
        let m = TaskManagerMsg::ReapplyModule {
            module_id: "m".into(),
            md5: None,
            include_clustered: Some(json!(1)),
            batch_size: Some(1),
            batch_delay: Some(3),
            force: Some(json!(0)),
            job_id: Some("j".into()),
        };
        let (method, args) = crate::rpc::to_method_args(&m);
        assert_eq!(method, "reapply_module");
        assert_eq!(args["batch_delay"], 3);
        let (method, args) = crate::rpc::to_method_args(&TaskManagerMsg::Restart {
            instance_id: "i".into(),
        });
        assert_eq!(
            (method.as_str(), &args["instance_id"]),
            ("restart", &json!("i"))
        );
        assert!(truthy(&Some(json!(1))));
        assert!(!truthy(&Some(json!(0))));
    }
}
