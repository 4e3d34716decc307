#![doc = include_str!("../README.md")]

pub mod broker_users;
pub mod compute;
pub mod dispatch;
pub mod error;
pub mod guest;
pub mod handlers;
pub mod reconcile;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{self, Broker, RpcClient};
use trove_common::config::Settings;
use trove_common::crypto::Keyring;
use trove_common::db::Db;
use trove_common::rpc::keys::taskmanager_keyring;

use crate::broker_users::BrokerUsers;
use crate::compute::ComputeDriver;

/// Everything a handler or the reconciler needs, shared by all of them.
pub struct Ctx {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub broker: Arc<Broker>,
    /// Calls to guests (`cluster_complete`), with this process's one reply queue.
    pub rpc: RpcClient,
    /// Starts, checks and stops guest processes.
    pub compute: Arc<dyn ComputeDriver>,
    /// The guests' own broker users; None with `guest_broker_credentials = shared`.
    pub broker_users: Option<BrokerUsers>,
    /// One lock per instance, so a create, a delete and the reconciler never act on the same guest at
    /// the same time within this process.
    pub locks: InstanceLocks,
    /// Cancelled when the service shuts down: long waits inside handlers give up (and the message is
    /// requeued) instead of holding the shutdown.
    pub shutdown: CancellationToken,
    /// Opens messages on the api → taskmanager channel (None: plain messaging).
    pub(crate) taskmanager_keys: Option<Keyring>,
    /// Wakes the reconciler before its next tick (a build or cluster was just accepted).
    pub(crate) reconcile_now: Notify,
}

impl Ctx {
    /// Builds the shared context.
    pub fn new(
        settings: Arc<Settings>,
        db: Db,
        broker: Arc<Broker>,
        compute: Arc<dyn ComputeDriver>,
        broker_users: Option<BrokerUsers>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            broker_users,
            taskmanager_keys: taskmanager_keyring(&settings),
            rpc: RpcClient::new(broker.clone()),
            settings,
            db,
            broker,
            compute,
            locks: InstanceLocks::default(),
            shutdown,
            reconcile_now: Notify::new(),
        }
    }

    /// Asks the reconciler to run a pass now rather than at its next tick.
    pub fn wake_reconciler(&self) {
        self.reconcile_now.notify_one();
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("db", &self.db)
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

/// Per-instance async locks, created on demand and dropped once nobody holds them.
#[derive(Debug, Default)]
pub struct InstanceLocks {
    inner: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl InstanceLocks {
    fn entry(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inner.lock().expect("instance lock map poisoned");
        map.entry(id.to_owned()).or_default().clone()
    }

    /// Waits for the instance's lock.
    pub async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        self.entry(id).lock_owned().await
    }

    /// The instance's lock if nobody holds it (the reconciler skips busy instances).
    pub fn try_lock(&self, id: &str) -> Option<OwnedMutexGuard<()>> {
        self.entry(id).try_lock_owned().ok()
    }

    /// Forgets locks nobody holds or waits for (a guard keeps its own reference).
    pub fn prune(&self) {
        let mut map = self.inner.lock().expect("instance lock map poisoned");
        map.retain(|_, m| Arc::strong_count(m) > 1);
    }
}

/// A long wait inside a handler was cut short by the shutdown; the message is requeued.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by shutdown")]
pub struct Interrupted;

/// Runs the taskmanager until `shutdown` is cancelled: the consumer of the `taskmanager` queue and the
/// reconciler that watches builds, clusters and stalled deletes. Uses the compute driver named by
/// `[compute] driver`.
///
/// On cancel it stops taking deliveries, lets the handlers in flight finish and ack (long waits give
/// up and requeue their message), ends the reconciler after its current pass and returns. The broker
/// belongs to the caller, who closes it.
pub async fn run(
    settings: Arc<Settings>,
    db: Db,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let compute = compute::from_settings(&settings)?;
    run_with_compute(settings, db, broker, compute, shutdown).await
}

/// [`run`] with a given compute driver (tests can inject their own).
pub async fn run_with_compute(
    settings: Arc<Settings>,
    db: Db,
    broker: Arc<Broker>,
    compute: Arc<dyn ComputeDriver>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // If either half ends on its own, the other stops too: a taskmanager that consumes without
    // reconciling (or the reverse) would look alive and do half its job.
    let stop = shutdown.child_token();
    let broker_users =
        BrokerUsers::from_settings(&settings).context("the guests' broker credentials")?;
    let ctx = Arc::new(Ctx::new(
        settings.clone(),
        db,
        broker.clone(),
        compute,
        broker_users,
        stop.clone(),
    ));
    let queue = broker.names().taskmanager();
    tracing::info!(queue = %queue, "taskmanager ready");

    let handler_ctx = ctx.clone();
    let consumer = async {
        let res = amqp::consume(
            broker.clone(),
            queue.clone(),
            settings.amqp.prefetch.max(1),
            move |delivery| {
                let ctx = handler_ctx.clone();
                async move { dispatch::handle_delivery(ctx, &delivery.data).await }
            },
            stop.clone(),
        )
        .await;
        stop.cancel();
        res
    };
    // Reapply jobs a previous run left unfinished carry on where they stopped.
    tokio::spawn(handlers::reapply::resume_all(ctx.clone()));
    let reconciler = async {
        reconcile::run(ctx.clone(), stop.clone()).await;
        stop.cancel();
    };
    let (consumed, ()) = tokio::join!(consumer, reconciler);
    consumed.with_context(|| format!("consuming {queue}"))?;
    tracing::info!("taskmanager stopped");
    Ok(())
}
