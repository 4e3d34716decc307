//! Service statuses, instance tasks and cluster tasks (docs/messaging.md §5), and the API status rules.

/// A guest's service status as stored in `service_statuses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceStatus {
    Running,
    Blocked,
    Paused,
    Shutdown,
    Deleted,
    Crashed,
    Failed,
    Building,
    Unknown,
    New,
    FailedTimeoutGuestagent,
    InstanceReady,
    RestartRequired,
    Healthy,
}

use ServiceStatus::*;

const ALL: [ServiceStatus; 14] = [
    Running,
    Blocked,
    Paused,
    Shutdown,
    Deleted,
    Crashed,
    Failed,
    Building,
    Unknown,
    New,
    FailedTimeoutGuestagent,
    InstanceReady,
    RestartRequired,
    Healthy,
];

impl ServiceStatus {
    /// Trove's numeric code.
    pub fn code(self) -> i32 {
        match self {
            Running => 0x01,
            Blocked => 0x02,
            Paused => 0x03,
            Shutdown => 0x04,
            Deleted => 0x05,
            Crashed => 0x06,
            Failed => 0x08,
            Building => 0x09,
            Unknown => 0x16,
            New => 0x17,
            FailedTimeoutGuestagent => 0x18,
            InstanceReady => 0x19,
            RestartRequired => 0x20,
            Healthy => 0x21,
        }
    }

    /// The description that travels in heartbeats.
    pub fn description(self) -> &'static str {
        match self {
            Running => "running",
            Blocked => "blocked",
            Paused => "paused",
            Shutdown => "shutdown",
            Deleted => "deleted",
            Crashed => "crashed",
            Failed => "failed to spawn",
            Building => "building",
            Unknown => "unknown",
            New => "new",
            FailedTimeoutGuestagent => "guestagent error",
            InstanceReady => "instance ready",
            RestartRequired => "restart required",
            Healthy => "healthy",
        }
    }

    /// The status the API shows for it (rule 8 of docs/messaging.md §5).
    pub fn api_status(self) -> &'static str {
        match self {
            Running | Healthy => "ACTIVE",
            Blocked => "BLOCKED",
            Paused | Shutdown | Crashed => "SHUTDOWN",
            Deleted => "DELETED",
            Failed => "FAILED",
            Building | InstanceReady | New => "BUILD",
            Unknown | FailedTimeoutGuestagent => "ERROR",
            RestartRequired => "RESTART_REQUIRED",
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn from_description(d: &str) -> Option<Self> {
        ALL.into_iter().find(|s| s.description() == d)
    }
}

/// Instance tasks (`instances.task_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceTask {
    None,
    Deleting,
    /// Trove's REBOOTING: a `restart` action is in progress (the API shows `REBOOT`).
    Rebooting,
    Building,
    BuildingErrorServer,
    BuildingErrorTimeoutGa,
}

impl InstanceTask {
    pub fn code(self) -> i32 {
        match self {
            Self::None => 0x01,
            Self::Deleting => 0x02,
            Self::Rebooting => 0x03,
            Self::Building => 0x05,
            Self::BuildingErrorServer => 0x51,
            Self::BuildingErrorTimeoutGa => 0x5b,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::None => "No tasks for the instance.",
            Self::Deleting => "Deleting the instance.",
            Self::Rebooting => "Rebooting the instance.",
            Self::Building => "The instance is building.",
            Self::BuildingErrorServer => "Build error: Server.",
            Self::BuildingErrorTimeoutGa => "Build error: guestagent timeout.",
        }
    }
}

/// Trove's task `action` name for a stored task code (`NONE`, `REBOOTING`...; the build error tasks
/// are `BUILDING`), as `validate_can_perform_action` reports it.
pub fn task_action(code: i32) -> &'static str {
    match code {
        0x01 => "NONE",
        0x02 => "DELETING",
        0x03 => "REBOOTING",
        0x04 => "RESIZING",
        0x05 | 0x50..=0x54 | 0x5c => "BUILDING",
        0x06 => "MIGRATING",
        0x07 => "RESTART_REQUIRED",
        0x08 | 0x55 => "PROMOTING",
        0x09 | 0x56 => "EJECTING",
        0x0a => "LOGGING",
        0x0b => "DETACHING",
        0x0c | 0x5d => "UPDATING",
        0x57 => "GROWING",
        0x58 => "SHRINKING",
        0x59 | 0x5a => "UPGRADING",
        0x5b => "ERROR",
        _ => "UNKNOWN",
    }
}

/// Every 0x5x task code is an error task.
pub fn is_error_task(code: i32) -> bool {
    (0x50..0x60).contains(&code)
}

/// Cluster tasks (`clusters.task_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterTask {
    None,
    Building,
    Deleting,
    Growing,
    Shrinking,
}

impl ClusterTask {
    pub fn code(self) -> i32 {
        match self {
            Self::None => 1,
            Self::Building => 2,
            Self::Deleting => 3,
            Self::Growing => 5,
            Self::Shrinking => 6,
        }
    }

    pub fn from_code(code: i32) -> Self {
        match code {
            2 => Self::Building,
            3 => Self::Deleting,
            5 => Self::Growing,
            6 => Self::Shrinking,
            _ => Self::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Building => "BUILDING",
            Self::Deleting => "DELETING",
            Self::Growing => "GROWING_CLUSTER",
            Self::Shrinking => "SHRINKING_CLUSTER",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::None => "No tasks for the cluster.",
            Self::Building => "Building the initial cluster.",
            Self::Deleting => "Deleting the cluster.",
            Self::Growing => "Increasing the size of the cluster.",
            Self::Shrinking => "Decreasing the size of the cluster.",
        }
    }
}

/// Inputs of the API status rules.
pub struct StatusInputs<'a> {
    pub task_id: i32,
    pub service_status: Option<ServiceStatus>,
    pub server_status: Option<&'a str>,
    /// Seconds since the service status was last updated.
    pub status_age_secs: Option<f64>,
    pub heartbeat_expiry_secs: f64,
}

/// The API `status` of an instance: the first rule of docs/messaging.md §5 that matches.
pub fn api_status(i: &StatusInputs<'_>) -> &'static str {
    if is_error_task(i.task_id) {
        return "ERROR";
    }
    if i.service_status == Some(Unknown) {
        return "ERROR";
    }
    if i.task_id == InstanceTask::Building.code() {
        return if i.server_status == Some("ERROR") {
            "ERROR"
        } else {
            "BUILD"
        };
    }
    if i.task_id == InstanceTask::Rebooting.code() {
        return "REBOOT";
    }
    if i.task_id == InstanceTask::Deleting.code() {
        return "SHUTDOWN";
    }
    match i.server_status {
        Some("BUILD") => return "BUILD",
        Some("ERROR") => return "ERROR",
        _ => {}
    }
    let Some(svc) = i.service_status else {
        return "BUILD";
    };
    if svc == New {
        return "BUILD";
    }
    // A guest the conductor already marked SHUTDOWN for missing heartbeats keeps its old `updated_at`
    // (so its silence stays visible): it must show SHUTDOWN, not ERROR.
    if i.task_id == InstanceTask::None.code()
        && svc != RestartRequired
        && svc != Shutdown
        && i.status_age_secs
            .is_some_and(|age| age >= i.heartbeat_expiry_secs)
    {
        return "ERROR";
    }
    svc.api_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(task: InstanceTask, svc: ServiceStatus, age: f64) -> StatusInputs<'static> {
        StatusInputs {
            task_id: task.code(),
            service_status: Some(svc),
            server_status: Some("ACTIVE"),
            status_age_secs: Some(age),
            heartbeat_expiry_secs: 90.0,
        }
    }

    #[test]
    fn codes_round_trip() {
        for s in ALL {
            assert_eq!(ServiceStatus::from_code(s.code()), Some(s));
            assert_eq!(ServiceStatus::from_description(s.description()), Some(s));
        }
    }

    #[test]
    fn status_rules() {
        assert_eq!(
            api_status(&inputs(InstanceTask::Building, Running, 1.0)),
            "BUILD"
        );
        assert_eq!(
            api_status(&inputs(InstanceTask::None, Running, 1.0)),
            "ACTIVE"
        );
        assert_eq!(
            api_status(&inputs(InstanceTask::None, Running, 91.0)),
            "ERROR"
        );
        assert_eq!(
            api_status(&inputs(InstanceTask::None, RestartRequired, 91.0)),
            "RESTART_REQUIRED"
        );
        assert_eq!(
            api_status(&inputs(InstanceTask::Deleting, Running, 1.0)),
            "SHUTDOWN"
        );
        assert_eq!(
            api_status(&inputs(InstanceTask::BuildingErrorTimeoutGa, Running, 1.0)),
            "ERROR"
        );
        assert_eq!(
            api_status(&inputs(InstanceTask::None, InstanceReady, 1.0)),
            "BUILD"
        );
        assert_eq!(
            api_status(&inputs(InstanceTask::None, Shutdown, 1.0)),
            "SHUTDOWN"
        );
        // The conductor's heartbeat sweep leaves `updated_at` old: still SHUTDOWN, not ERROR.
        assert_eq!(
            api_status(&inputs(InstanceTask::None, Shutdown, 91.0)),
            "SHUTDOWN"
        );
        // A restart in progress shows Trove's REBOOT, whatever the guest last reported.
        assert_eq!(
            api_status(&inputs(InstanceTask::Rebooting, Shutdown, 1.0)),
            "REBOOT"
        );
        assert_eq!(task_action(InstanceTask::Rebooting.code()), "REBOOTING");
        assert_eq!(
            task_action(InstanceTask::BuildingErrorServer.code()),
            "BUILDING"
        );
        // Other statuses still go stale.
        assert_eq!(
            api_status(&inputs(InstanceTask::None, Crashed, 91.0)),
            "ERROR"
        );
    }
}
