#![doc = include_str!("../README.md")]

pub mod manage;

use diesel::pg::PgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Every migration, compiled into the binaries.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Applies the pending migrations; returns how many ran.
pub fn run_pending(conn: &mut PgConnection) -> anyhow::Result<usize> {
    let done = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    Ok(done.len())
}
