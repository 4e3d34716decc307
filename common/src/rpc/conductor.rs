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
