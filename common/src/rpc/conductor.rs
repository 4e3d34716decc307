//! Casts from guests to the conductor (topic `conductor_queue`).

use serde::{Deserialize, Serialize};

use super::guest::ModuleResult;

/// `payload` of a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatPayload {
    /// A service status description (`running`, `building`, ...).
    pub service_status: String,
}

/// Every method the conductor serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum ConductorMsg {
    Heartbeat {
        instance_id: String,
        payload: HeartbeatPayload,
        /// Guest clock, epoch seconds with microseconds; orders reports per (instance, method).
        sent: f64,
    },
    /// Our extension: what a guest applied, during `prepare` or for a reapply job.
    ModuleResults {
        instance_id: String,
        results: Vec<ModuleResult>,
        sent: f64,
        /// Set when the apply was part of a reapply job.
        #[serde(default)]
        job_id: Option<String>,
        /// Set when the whole apply failed before any driver ran (a check raised).
        #[serde(default)]
        error: Option<String>,
    },
    ReportRoot {
        instance_id: String,
        #[serde(default)]
        user: Option<serde_json::Value>,
    },
    /// A guest operation failed (Trove's method name; our guests send it when `prepare` or a restart
    /// of the datastore server fails). The conductor records it as the instance's fault, which the
    /// API shows in `fault` once the instance is in ERROR.
    NotifyExcInfo {
        instance_id: String,
        /// What failed, for the fault's `message` ("Failed to start redis-server.").
        message: String,
        /// Why, for the fault's `details` (the server's own words, never a secret).
        exception: String,
        /// Guest clock, as for heartbeats.
        sent: f64,
        /// Trove sends the request's notification context here; kept for the wire, unused.
        #[serde(default)]
        serialized_notification: Option<serde_json::Value>,
    },
}

impl ConductorMsg {
    /// The instance the message is about (every method names one).
    pub fn instance_id(&self) -> &str {
        match self {
            Self::Heartbeat { instance_id, .. }
            | Self::ModuleResults { instance_id, .. }
            | Self::ReportRoot { instance_id, .. }
            | Self::NotifyExcInfo { instance_id, .. } => instance_id,
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Self::Heartbeat { .. } => "heartbeat",
            Self::ModuleResults { .. } => "module_results",
            Self::ReportRoot { .. } => "report_root",
            Self::NotifyExcInfo { .. } => "notify_exc_info",
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
                ConductorMsg::Heartbeat {
                    instance_id: "i1".into(),
                    payload: HeartbeatPayload {
                        service_status: "running".into(),
                    },
                    sent: 1_496_423_181.512_345,
                },
                r#"{"method":"heartbeat","args":{"instance_id":"i1","payload":{"service_status":"running"},"sent":1496423181.512345}}"#,
            ),
            (
                ConductorMsg::ModuleResults {
                    instance_id: "i1".into(),
                    results: vec![result()],
                    sent: 1_496_423_181.5,
                    job_id: Some("job-1".into()),
                    error: Some("check failed".into()),
                },
                r#"{"method":"module_results","args":{"instance_id":"i1","results":[{"id":"m1","name":"ping","type":"ping","datastore":"redis","datastore_version":"3.2.6","tenant":"t1","md5":"d41d8cd98f00b204e9800998ecf8427e","status":"OK","message":"Module applied","created":"2017-06-02 17:06:21.51","updated":"2017-06-02 17:06:21.51","removed":null,"auto_apply":false,"visible":true,"is_admin":false,"contents":null}],"sent":1496423181.5,"job_id":"job-1","error":"check failed"}}"#,
            ),
            (
                ConductorMsg::ReportRoot {
                    instance_id: "i1".into(),
                    user: Some(json!("root")),
                },
                r#"{"method":"report_root","args":{"instance_id":"i1","user":"root"}}"#,
            ),
            (
                ConductorMsg::NotifyExcInfo {
                    instance_id: "i1".into(),
                    message: "Failed to start redis-server.".into(),
                    exception: "port in use".into(),
                    sent: 1_496_423_181.0,
                    serialized_notification: Some(json!({"request_id": "req-1"})),
                },
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
                ConductorMsg::ModuleResults {
                    instance_id: "i1".into(),
                    results: vec![],
                    sent: 1.5,
                    job_id: None,
                    error: None,
                },
            ),
            (
                r#"{"method":"report_root","args":{"instance_id":"i1"}}"#,
                ConductorMsg::ReportRoot {
                    instance_id: "i1".into(),
                    user: None,
                },
            ),
            (
                r#"{"method":"notify_exc_info","args":{"instance_id":"i1","message":"m","exception":"e","sent":2.0}}"#,
                ConductorMsg::NotifyExcInfo {
                    instance_id: "i1".into(),
                    message: "m".into(),
                    exception: "e".into(),
                    sent: 2.0,
                    serialized_notification: None,
                },
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
            &ConductorMsg::ReportRoot {
                instance_id: "i1".into(),
                user: None,
            },
            r#"{"method":"report_root","args":{"instance_id":"i1","user":null}}"#,
        );
    }
}
