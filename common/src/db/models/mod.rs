//! One file per table; each model's queries are inherent methods.

pub mod cluster;
pub mod datastore;
pub mod flavor;
pub mod guest_module_result;
pub mod instance;
pub mod instance_module;
pub mod lastseen;
pub mod module;
pub mod outbox;
pub mod quota;
pub mod reapply;

pub use cluster::Cluster;
pub use datastore::{Datastore, DatastoreVersion};
pub use flavor::Flavor;
pub use guest_module_result::GuestModuleResult;
pub use instance::{Instance, NewInstance, ServiceStatusRow};
pub use instance_module::InstanceModule;
pub use module::{Module, ModuleChangeset, NewModule};
pub use outbox::OutboxMessage;
pub use quota::{Quota, QuotaUsage};
pub use reapply::{NewReapplyJob, ReapplyItem, ReapplyJob};
