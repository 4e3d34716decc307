#![doc = include_str!("../README.md")]

pub mod app;
pub mod auth;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod outbox;
pub mod router;
pub mod service;
pub mod validate;
pub mod views;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::Broker;
use trove_common::config::Settings;
use trove_common::db::Db;

pub use app::AppState;

/// Serves the API on `listener` and relays the outbox until `shutdown`; in-flight requests finish first.
pub async fn run(
    settings: Arc<Settings>,
    db: Db,
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AppState::new(settings, db, broker.clone());
    // A configuration that can authenticate nobody (noauth not allowed, keystone without credentials)
    // stops the api here, naming the option, instead of answering 401 to everyone.
    state.auth.check()?;
    let relay = tokio::spawn(outbox::relay(state.clone(), shutdown.clone()));
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let app = router::router(state);
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    shutdown.cancel();
    let _ = relay.await;
    broker.close().await;
    Ok(())
}
