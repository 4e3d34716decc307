//! The rules behind the handlers, as plain functions over a connection.

pub mod catalog;
pub mod instances;
pub mod modules;
