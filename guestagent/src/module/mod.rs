//! Database modules on the guest: apply, remove and list them (docs/module-semantics.md §14 and §15).
//!
//! The control plane sends complete module payloads ([`ModulePayload`], contents in base64) in
//! `module_apply`, `prepare` and `module_remove`. The guest keeps its own record of each module under
//! `<state_dir>/modules/<type>/<id>/` and answers `module_list` from those records alone; it has no
//! database.
//!
//! - [`ModuleManager`] (`manager.rs`) orders the batch, checks each module, writes `contents.dat` and
//!   `result.json` atomically and runs the driver.
//! - [`ModuleDriver`] (`driver.rs`) is the contract a module type implements; its wrappers turn a
//!   driver's result into the stored `OK`/`ERROR` status and message, as Trove's `output` decorator does.
//! - [`drivers`] holds the built-in drivers (`ping`, `new_relic_license`) and [`drivers::load`], which
//!   enables those listed in `module_types`.
//! - [`ApplyError`] is a failure of the whole call, with Trove's messages.
//!
//! Module contents can be licence keys: nothing here logs contents or driver messages derived from them.
//!
//! [`ModulePayload`]: trove_common::rpc::guest::ModulePayload

mod driver;
pub mod drivers;
mod error;
mod manager;

pub use driver::{ApplyContext, DriverError, ModuleDriver, Operation, Outcome};
pub use drivers::{load as load_drivers, DriverRegistry};
pub use error::ApplyError;
pub use manager::{timestamp, ModuleManager};
