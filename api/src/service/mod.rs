//! The rules behind the handlers, as plain functions over a connection.

pub mod actions;
pub mod catalog;
pub mod databases;
pub mod instances;
pub mod modules;
pub mod mysql_data;
pub mod quotas;
