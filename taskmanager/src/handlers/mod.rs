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
