//! The connection pool and the one helper every database call goes through.
//!
//! Diesel is synchronous, so [`Db::run`] checks a connection out and runs the closure on tokio's
//! blocking pool: async worker threads never block on PostgreSQL. Never hold a connection across an
//! `.await`; read, drop the connection, then do the I/O.

use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::RunQueryDsl;
use secrecy::ExposeSecret;

use crate::config::DatabaseSection;

/// Errors from [`Db::run`]: the pool (exhausted or the database unreachable) or the query.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error("database task panicked or was cancelled")]
    Join,
}

impl DbError {
    /// True when the statement did not find its row.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DbError::Query(diesel::result::Error::NotFound))
    }
}

/// A pooled PostgreSQL connection, checked out by [`Db::run`].
pub type Conn = PooledConnection<ConnectionManager<PgConnection>>;

#[derive(Debug)]
struct SessionSettings {
    statement_timeout_ms: u64,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionSettings {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(&format!(
            "SET statement_timeout = {}; SET TIME ZONE 'UTC'",
            self.statement_timeout_ms
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The pool, cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager<PgConnection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("state", &self.pool.state())
            .finish()
    }
}

impl Db {
    /// Builds the pool without connecting; the first checkout connects (so services can start before
    /// PostgreSQL and retry).
    pub fn new(cfg: &DatabaseSection) -> Self {
        Self::from_url(cfg.connection.expose_secret(), cfg)
    }

    /// Like [`Db::new`] with another URL (tests use one database each).
    pub fn from_url(url: &str, cfg: &DatabaseSection) -> Self {
        let pool = Pool::builder()
            .max_size(cfg.max_pool_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(cfg.pool_timeout.max(1)))
            .connection_customizer(Box::new(SessionSettings {
                statement_timeout_ms: cfg.statement_timeout_ms,
            }))
            .build_unchecked(ConnectionManager::new(url));
        Self { pool }
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(DbError::from)?;
            f(&mut conn)
        })
        .await
        .map_err(|_| E::from(DbError::Join))?
    }

    /// Waits until a connection can be made, or `deadline` passes.
    pub async fn wait_ready(&self, deadline: Duration) -> Result<(), DbError> {
        let start = tokio::time::Instant::now();
        loop {
            match self
                .run(|c| {
                    diesel::sql_query("SELECT 1")
                        .execute(c)
                        .map_err(DbError::from)
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
