//! Casts from guests to the conductor (topic `conductor_queue`).

use serde::{Deserialize, Serialize};

use super::guest::ModuleResult;

/// `payload` of a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatPayload {
    /// A service status description (`running`, `building`, ...).
    pub service_status: String,
}

/// Every method the conductor serves, one struct of arguments per method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum ConductorMsg {
    Heartbeat(Heartbeat),
    ModuleResults(ModuleResults),
    ReportRoot(ReportRoot),
    NotifyExcInfo(NotifyExcInfo),
}

/// `heartbeat`: a guest's periodic report of its datastore's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub instance_id: String,
    pub payload: HeartbeatPayload,
    /// Guest clock, epoch seconds with microseconds; orders reports per (instance, method).
    pub sent: f64,
}

impl Heartbeat {
    /// A heartbeat of `instance_id` reporting `service_status` (`running`, `building`, ...), stamped
    /// `sent` by the guest's clock.
    pub fn new(
        instance_id: impl Into<String>,
        service_status: impl Into<String>,
        sent: f64,
    ) -> Self {
        Self {
            instance_id: instance_id.into(),
            payload: HeartbeatPayload {
                service_status: service_status.into(),
            },
            sent,
        }
    }
}

/// `module_results`, our extension: what a guest applied, during `prepare` or for a reapply job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleResults {
    pub instance_id: String,
    pub results: Vec<ModuleResult>,
    /// Guest clock, as for heartbeats.
    pub sent: f64,
    /// Set when the apply was part of a reapply job.
    #[serde(default)]
    pub job_id: Option<String>,
    /// Set when the whole apply failed before any driver ran (a check raised).
    #[serde(default)]
    pub error: Option<String>,
}

impl ModuleResults {
    /// A report of `results` outside any job and without a failure; set `job_id` and `error` with
    /// struct update syntax (`ModuleResults { job_id, ..ModuleResults::new(..) }`).
    pub fn new(instance_id: impl Into<String>, results: Vec<ModuleResult>, sent: f64) -> Self {
        Self {
            instance_id: instance_id.into(),
            results,
            sent,
            job_id: None,
            error: None,
        }
    }
}

/// `report_root`: a guest says root was enabled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportRoot {
    pub instance_id: String,
    #[serde(default)]
    pub user: Option<serde_json::Value>,
}

/// `notify_exc_info`: a guest operation failed (Trove's method name; our guests send it when
/// `prepare` or a restart of the datastore server fails). The conductor records it as the
/// instance's fault, which the API shows in `fault` once the instance is in ERROR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotifyExcInfo {
    pub instance_id: String,
    /// What failed, for the fault's `message` ("Failed to start redis-server.").
    pub message: String,
    /// Why, for the fault's `details` (the server's own words, never a secret).
    pub exception: String,
    /// Guest clock, as for heartbeats.
    pub sent: f64,
    /// Trove sends the request's notification context here; kept for the wire, unused.
    #[serde(default)]
    pub serialized_notification: Option<serde_json::Value>,
}

impl ConductorMsg {
    /// The instance the message is about (every method names one).
    pub fn instance_id(&self) -> &str {
        match self {
            Self::Heartbeat(Heartbeat { instance_id, .. })
            | Self::ModuleResults(ModuleResults { instance_id, .. })
            | Self::ReportRoot(ReportRoot { instance_id, .. })
            | Self::NotifyExcInfo(NotifyExcInfo { instance_id, .. }) => instance_id,
        }
    }

    /// The wire method name, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Heartbeat(_) => "heartbeat",
            Self::ModuleResults(_) => "module_results",
            Self::ReportRoot(_) => "report_root",
            Self::NotifyExcInfo(_) => "notify_exc_info",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::assert_wire;
    use serde_json::json;

    fn result() -> ModuleResult {
        ModuleResult {
            id: "m1".into(),
            name: "ping".into(),
            module_type: "ping".into(),
            datastore: "redis".into(),
            datastore_version: "3.2.6".into(),
            tenant: "t1".into(),
            md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
            status: Some("OK".into()),
            message: Some("Module applied".into()),
            created: Some("2017-06-02 17:06:21.51".into()),
            updated: Some("2017-06-02 17:06:21.51".into()),
            removed: None,
            auto_apply: false,
            visible: true,
            is_admin: false,
            contents: None,
        }
    }

    /// One value of every variant, with the text the serializer wrote for it before each variant
    /// became a struct of its own: the wire must not change.
    #[test]
    fn every_method_keeps_its_wire_format() {
        let cases: Vec<(ConductorMsg, &str)> = vec![
            (
                ConductorMsg::Heartbeat(Heartbeat {
                    instance_id: "i1".into(),
                    payload: HeartbeatPayload {
                        service_status: "running".into(),
                    },
                    sent: 1_496_423_181.512_345,
                }),
                r#"{"method":"heartbeat","args":{"instance_id":"i1","payload":{"service_status":"running"},"sent":1496423181.512345}}"#,
            ),
            (
                ConductorMsg::ModuleResults(ModuleResults {
                    instance_id: "i1".into(),
                    results: vec![result()],
                    sent: 1_496_423_181.5,
                    job_id: Some("job-1".into()),
                    error: Some("check failed".into()),
                }),
                r#"{"method":"module_results","args":{"instance_id":"i1","results":[{"id":"m1","name":"ping","type":"ping","datastore":"redis","datastore_version":"3.2.6","tenant":"t1","md5":"d41d8cd98f00b204e9800998ecf8427e","status":"OK","message":"Module applied","created":"2017-06-02 17:06:21.51","updated":"2017-06-02 17:06:21.51","removed":null,"auto_apply":false,"visible":true,"is_admin":false,"contents":null}],"sent":1496423181.5,"job_id":"job-1","error":"check failed"}}"#,
            ),
            (
                ConductorMsg::ReportRoot(ReportRoot {
                    instance_id: "i1".into(),
                    user: Some(json!("root")),
                }),
                r#"{"method":"report_root","args":{"instance_id":"i1","user":"root"}}"#,
            ),
            (
                ConductorMsg::NotifyExcInfo(NotifyExcInfo {
                    instance_id: "i1".into(),
                    message: "Failed to start redis-server.".into(),
                    exception: "port in use".into(),
                    sent: 1_496_423_181.0,
                    serialized_notification: Some(json!({"request_id": "req-1"})),
                }),
                r#"{"method":"notify_exc_info","args":{"instance_id":"i1","message":"Failed to start redis-server.","exception":"port in use","sent":1496423181.0,"serialized_notification":{"request_id":"req-1"}}}"#,
            ),
        ];
        let methods: std::collections::BTreeSet<_> =
            cases.iter().map(|(m, _)| m.method()).collect();
        assert_eq!(methods.len(), 4, "one case per variant");
        for (msg, wire) in &cases {
            assert_eq!(msg.instance_id(), "i1");
            assert_wire(msg, wire);
        }
    }

    /// Arguments a guest may leave out decode to the same defaults as before; a `null` optional
    /// argument is written out, as Trove's guests write it.
    #[test]
    fn omitted_arguments_keep_their_defaults() {
        let cases: Vec<(&str, ConductorMsg)> = vec![
            (
                r#"{"method":"module_results","args":{"instance_id":"i1","results":[],"sent":1.5}}"#,
                ConductorMsg::ModuleResults(ModuleResults {
                    instance_id: "i1".into(),
                    results: vec![],
                    sent: 1.5,
                    job_id: None,
                    error: None,
                }),
            ),
            (
                r#"{"method":"report_root","args":{"instance_id":"i1"}}"#,
                ConductorMsg::ReportRoot(ReportRoot {
                    instance_id: "i1".into(),
                    user: None,
                }),
            ),
            (
                r#"{"method":"notify_exc_info","args":{"instance_id":"i1","message":"m","exception":"e","sent":2.0}}"#,
                ConductorMsg::NotifyExcInfo(NotifyExcInfo {
                    instance_id: "i1".into(),
                    message: "m".into(),
                    exception: "e".into(),
                    sent: 2.0,
                    serialized_notification: None,
                }),
            ),
        ];
        for (wire, msg) in cases {
            assert_eq!(
                serde_json::from_str::<ConductorMsg>(wire).unwrap(),
                msg,
                "{wire}"
            );
        }
        assert_wire(
            &ConductorMsg::ReportRoot(ReportRoot {
                instance_id: "i1".into(),
                user: None,
            }),
            r#"{"method":"report_root","args":{"instance_id":"i1","user":null}}"#,
        );
    }

    /// The constructors leave what a sender may omit unset.
    #[test]
    fn constructors_leave_the_optional_arguments_unset() {
        assert_wire(
            &ConductorMsg::Heartbeat(Heartbeat::new("i1", "running", 1.5)),
            r#"{"method":"heartbeat","args":{"instance_id":"i1","payload":{"service_status":"running"},"sent":1.5}}"#,
        );
        assert_wire(
            &ConductorMsg::ModuleResults(ModuleResults::new("i1", vec![result()], 1.5)),
            &format!(
                r#"{{"method":"module_results","args":{{"instance_id":"i1","results":[{}],"sent":1.5,"job_id":null,"error":null}}}}"#,
                serde_json::to_string(&result()).unwrap()
            ),
        );
    }
}
