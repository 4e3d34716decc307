//! One module per group of taskmanager methods; `dispatch.rs` routes each message to its handler.
//!
//! Handlers return `anyhow::Result<()>`. `Ok` means "done, ack" (including "nothing to do", e.g. the
//! instance is already deleted: messages may be redelivered, so every handler is idempotent). An error
//! is classified by `error::outcome`: database, broker and shutdown errors requeue the message;
//! anything else dead-letters it.

pub mod cluster;
pub mod instance;
pub mod reapply;
pub mod restart;

use serde_json::Value;

/// The arguments of `reapply_module` (docs/messaging.md §4), taken out of `TaskManagerMsg::ReapplyModule`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReapplyArgs {
    pub module_id: String,
    /// Only instances that have this md5 (`None`: any).
    pub md5: Option<String>,
    /// Trove's 0/1/bool flag; read it with `trove_common::rpc::taskmanager::truthy`.
    pub include_clustered: Option<Value>,
    pub batch_size: Option<i64>,
    pub batch_delay: Option<i64>,
    pub force: Option<Value>,
    /// The durable job row the api wrote with the cast.
    pub job_id: Option<String>,
}
