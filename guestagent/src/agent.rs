//! [`Agent`]: what every handler shares. The guest's identity and keys, its [`GuestState`], the module
//! manager, the recent message ids, and the way out to the broker ([`Transport`]).
//!
//! Status changes go through [`Agent::set_status`]: persist first, then send the heartbeat at once, both
//! under the state lock. The periodic heartbeat ([`run_heartbeats`]) takes the same lock, so heartbeats
//! leave in the order their `sent` stamps were taken and the conductor never drops a newer status in
//! favour of an older one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{AmqpError, Broker, Names};
use trove_common::config::Settings;
use trove_common::crypto::Keyring;
use trove_common::epoch_now;
use trove_common::rpc::conductor::{ConductorMsg, Heartbeat, NotifyExcInfo};
use trove_common::rpc::{self, RemoteError, ReplyTo, RpcContext, Security};
use trove_common::status::ServiceStatus;

use crate::datastore::{self, Datastore, DatastoreConfig};
use crate::dedup::RecentIds;
use crate::module::{load_drivers, ModuleManager};
use crate::state::{self, GuestState};

/// Where the agent's outgoing messages go: the broker in production, a recorder in tests.
pub trait Transport: Send + Sync + 'static {
    /// Publishes a cast to `topic` on the control exchange and waits for the broker's confirm.
    fn cast<'a>(&'a self, topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), AmqpError>>;
    /// Publishes a call's reply to `reply_q`.
    fn reply<'a>(
        &'a self,
        reply_q: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), AmqpError>>;
}

impl Transport for Broker {
    fn cast<'a>(&'a self, topic: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<(), AmqpError>> {
        Box::pin(Broker::cast(self, topic, body))
    }

    fn reply<'a>(
        &'a self,
        reply_q: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), AmqpError>> {
        Box::pin(Broker::reply(self, reply_q, body))
    }
}

/// The state every handler shares. One per guest process.
pub struct Agent {
    /// This guest's instance id (`[guest] guest_id`): its queue name and the id in every report.
    pub instance_id: String,
    /// `[guest] datastore_manager`: which datastore manager `prepare` runs.
    pub datastore_manager: String,
    /// `[guest] state_dir`: `guest_state.json`, `modules/` and `datastore/` live here.
    pub state_dir: PathBuf,
    /// The guest's own topic, `guestagent.<instance_id>` with the prefix.
    pub topic: String,
    /// The conductor's topic.
    conductor_topic: String,
    /// The instance key, when secure messaging is on: opens requests and seals replies.
    keys: Option<Keyring>,
    /// How reports to the conductor are protected.
    conductor_security: Security,
    transport: Arc<dyn Transport>,
    /// Blocking: use [`Agent::modules`], which runs it on the blocking pool.
    modules: Arc<ModuleManager>,
    /// The record in `guest_state.json`; held across persist and heartbeat (see the module docs).
    state: tokio::sync::Mutex<GuestState>,
    /// Held while a `prepare` runs: another one meanwhile (a redelivery, or the taskmanager's re-send)
    /// is ignored; one after it sees `prepared` and only re-reports.
    pub(crate) prepare_lock: tokio::sync::Mutex<()>,
    /// The datastore manager, or why there is none (an unknown manager name).
    datastore: Result<Arc<dyn Datastore>, String>,
    /// Serialises what starts and stops the server: prepare, the health monitor, restart, stop_db.
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    seen: Mutex<RecentIds>,
    /// Cancelled by `delete_queue` (and by the process's shutdown): stop consuming and exit.
    stop: CancellationToken,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Agent")
            .field("instance_id", &self.instance_id)
            .field("datastore_manager", &self.datastore_manager)
            .field("state_dir", &self.state_dir)
            .field("secure", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Builds the agent from the settings: checks `[guest]`, creates the state directory and reads
    /// `guest_state.json`. `stop` is the token `delete_queue` cancels. Blocking file I/O (small).
    pub fn new(
        settings: &Settings,
        transport: Arc<dyn Transport>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let guest = &settings.guest;
        anyhow::ensure!(
            !guest.guest_id.trim().is_empty(),
            "invalid value for option guest.guest_id: must be set"
        );
        anyhow::ensure!(
            !guest.state_dir.as_os_str().is_empty(),
            "invalid value for option guest.state_dir: must be set"
        );
        state::create_private_dir(&guest.state_dir).with_context(|| {
            format!("creating the state directory {}", guest.state_dir.display())
        })?;
        let mut record = state::load(&guest.state_dir.join(state::STATE_FILE))?;
        if interrupted_prepare(&record) {
            // This process has just started, so nothing runs that prepare any more: report `new`
            // until one runs again (redelivered by the broker, or sent again by the taskmanager).
            tracing::warn!("the last prepare did not finish; waiting for prepare again");
            record.service_status = None;
        }

        let key = guest
            .instance_rpc_encr_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .filter(|k| !k.is_empty());
        let keys = match (settings.default.enable_secure_rpc_messaging, key) {
            (true, Some(key)) => Some(rpc::rpc_keyring(&key)),
            (true, None) => {
                tracing::warn!("enable_secure_rpc_messaging is on but guest.instance_rpc_encr_key is not set; messages travel in plain text");
                None
            }
            (false, _) => None,
        };
        let conductor_security = match &keys {
            Some(keys) => Security::GuestToConductor {
                instance_id: guest.guest_id.clone(),
                keys: keys.clone(),
            },
            None => Security::Plain,
        };
        let names = Names::new(settings);
        let modules = ModuleManager::new(
            &guest.state_dir,
            load_drivers(&settings.default.module_types),
            guest.datastore_manager.clone(),
        );
        let datastore = datastore::for_manager(DatastoreConfig::from_settings(settings))
            .map_err(|e| e.to_string());
        Ok(Self {
            datastore,
            lifecycle: tokio::sync::Mutex::new(()),
            instance_id: guest.guest_id.clone(),
            datastore_manager: guest.datastore_manager.clone(),
            state_dir: guest.state_dir.clone(),
            topic: names.guest(&guest.guest_id),
            conductor_topic: names.conductor(),
            keys,
            conductor_security,
            transport,
            modules: Arc::new(modules),
            state: tokio::sync::Mutex::new(record),
            prepare_lock: tokio::sync::Mutex::new(()),
            seen: Mutex::new(RecentIds::default()),
            stop,
        })
    }

    /// The instance keyring, when messages are encrypted.
    pub fn keys(&self) -> Option<&Keyring> {
        self.keys.as_ref()
    }

    /// The token that stops this agent.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// A copy of the current record.
    pub async fn state(&self) -> GuestState {
        self.state.lock().await.clone()
    }

    /// Records `unique_id` and returns whether the message is new.
    pub fn first_sighting(&self, unique_id: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(unique_id)
    }

    /// Forgets `unique_id`, so a redelivery of a message being retried is handled.
    pub fn forget(&self, unique_id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget(unique_id)
    }

    /// Runs `f` with the module manager on the blocking pool (its calls do file I/O and run drivers).
    pub async fn modules<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(&ModuleManager) -> T + Send + 'static,
        T: Send + 'static,
    {
        let manager = self.modules.clone();
        // Keep the message's span, so the manager's per-module logs carry rpc.request_id.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&manager)))
            .await
            .context("the module manager task failed")
    }

    /// The datastore manager, or why this guest has none.
    pub fn datastore(&self) -> Result<&Arc<dyn Datastore>, &str> {
        self.datastore.as_ref().map_err(String::as_str)
    }

    /// Sets the service status (and `prepared`, when given), persists it, then heartbeats it at once.
    /// On a write failure nothing changes and nothing is sent.
    pub async fn set_status(
        &self,
        status: ServiceStatus,
        prepared: Option<bool>,
        ctx: &RpcContext,
    ) -> anyhow::Result<()> {
        self.update_status(status, ctx, |s| {
            if let Some(prepared) = prepared {
                s.prepared = prepared;
            }
        })
        .await
    }

    /// Sets the service status and whatever `change` sets in the record, persists it, then heartbeats
    /// the status at once. On a write failure nothing changes and nothing is sent.
    pub async fn update_status(
        &self,
        status: ServiceStatus,
        ctx: &RpcContext,
        change: impl FnOnce(&mut GuestState),
    ) -> anyhow::Result<()> {
        let mut current = self.state.lock().await;
        let now = epoch_now();
        let mut next = current.with_status(status, now);
        change(&mut next);
        let changed = current.service_status != next.service_status;
        persist(self.state_dir.join(state::STATE_FILE), next.clone()).await?;
        *current = next;
        if changed {
            tracing::info!(
                service_status = status.description(),
                "service status changed"
            );
        }
        self.send_heartbeat(status.description(), ctx).await;
        Ok(())
    }

    /// Reports a failed guest operation to the conductor, which records it as the instance's fault.
    pub async fn report_fault(&self, message: &str, exception: &str, ctx: &RpcContext) {
        let msg = ConductorMsg::NotifyExcInfo(NotifyExcInfo {
            instance_id: self.instance_id.clone(),
            message: message.to_owned(),
            exception: exception.to_owned(),
            sent: epoch_now(),
            serialized_notification: None,
        });
        if let Err(e) = self.cast_conductor(&msg, ctx).await {
            tracing::warn!(error = %e, "fault report not delivered");
        }
    }

    /// Heartbeats the current status now: `new` for a guest that has not started a `prepare` yet, so
    /// the taskmanager sees a guest that runs without one (and sends it again).
    pub async fn report_status(&self, ctx: &RpcContext) {
        let current = self.state.lock().await;
        let description = current
            .service_status
            .as_deref()
            .unwrap_or(ServiceStatus::New.description());
        self.send_heartbeat(description, ctx).await;
    }

    /// Casts a heartbeat (the caller holds the state lock). A failure is logged: the next periodic
    /// heartbeat carries the same status.
    async fn send_heartbeat(&self, description: &str, ctx: &RpcContext) {
        let msg =
            ConductorMsg::Heartbeat(Heartbeat::new(&self.instance_id, description, epoch_now()));
        match self.cast_conductor(&msg, ctx).await {
            Ok(()) => tracing::debug!(service_status = description, "heartbeat sent"),
            Err(e) => {
                tracing::warn!(error = %e, service_status = description, "heartbeat not delivered")
            }
        }
    }

    /// Casts `msg` to the conductor, protected as the settings say, and waits for the confirm.
    pub async fn cast_conductor(
        &self,
        msg: &ConductorMsg,
        ctx: &RpcContext,
    ) -> Result<(), AmqpError> {
        let (method, args) = rpc::to_method_args(msg);
        let body = rpc::encode_request(&method, args, ctx, "1.0", None, &self.conductor_security);
        self.transport.cast(&self.conductor_topic, &body).await
    }

    /// Sends a call's reply, sealed with the instance key when messages are encrypted.
    pub async fn reply(
        &self,
        to: &ReplyTo,
        result: Result<Value, RemoteError>,
    ) -> Result<(), AmqpError> {
        let body = rpc::encode_reply(&to.msg_id, result, self.keys.as_ref());
        self.transport.reply(&to.reply_q, &body).await
    }
}

/// Whether `record` is a `prepare` that was under way when the guest stopped: `building`, never
/// prepared. Pure.
pub fn interrupted_prepare(record: &GuestState) -> bool {
    !record.prepared && record.status() == Some(ServiceStatus::Building)
}

async fn persist(path: PathBuf, record: GuestState) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        state::save(&path, &record).with_context(|| format!("writing {}", path.display()))
    })
    .await
    .context("the state writer task failed")?
}

/// The context of a message the guest sends on its own behalf while handling `request` (so the
/// conductor's logs carry the same request id), or of a periodic report.
pub fn service_context(request: Option<&RpcContext>) -> RpcContext {
    let mut ctx = RpcContext::service();
    if let Some(id) = request
        .map(|r| r.request_id.as_str())
        .filter(|id| !id.is_empty())
    {
        ctx.request_id = id.to_owned();
    }
    ctx
}

/// Heartbeats the current status every `interval` (the first at once, so a restarted guest reports
/// straight away) until `stop`.
pub async fn run_heartbeats(agent: Arc<Agent>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => agent.report_status(&service_context(None)).await,
        }
    }
}
