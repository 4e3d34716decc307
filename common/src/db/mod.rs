//! The database layer: the diesel schema, one model file per table and the pool.
//!
//! Query functions take `&mut PgConnection`, so the caller decides between a pooled connection and a
//! transaction, and return `diesel::QueryResult` unchanged.

pub mod models;
pub mod pool;
pub mod prepared;
pub mod schema;

pub use pool::{Conn, Db, DbError};
pub use prepared::prepared;

/// Now, in UTC, as stored in `timestamp without time zone` columns.
pub fn now() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// A new lower-case UUID string id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
