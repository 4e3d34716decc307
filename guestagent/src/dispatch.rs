//! One message in, one decision out: decode, drop duplicates, dispatch on [`GuestMsg`] with one
//! exhaustive `match`, then reply (calls), ack, dead-letter or retry.
//!
//! Each `handle_<method>` returns a [`HandlerResult`]; [`settle`] turns it into what happens to the
//! delivery:
//! - a call gets its reply (a value, or a [`RemoteError`]: the module manager's class and message, such
//!   as `NotFound` / `Module 'x' has not been applied`, or `GuestError` for anything else), then the
//!   message is acked;
//! - a cast that failed is logged and acked (retrying would fail the same way);
//! - a report to the conductor that could not be delivered ([`HandlerError::Broker`]) requeues the
//!   message, so a reapply job never loses a guest's answer;
//! - a message that does not decode is dead-lettered (and a call gets an error reply first, so the
//!   caller does not wait for its timeout).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::{json, Value};
use tracing::Instrument as _;
use trove_common::amqp::{AmqpError, Outcome};
use trove_common::epoch_now;
use trove_common::rpc::conductor::{ConductorMsg, ModuleResults};
use trove_common::rpc::guest::{
    ClusterAddslots, ClusterComplete, ClusterMeet, CreateDatabase, CreateUser, DatabaseSpec,
    DeleteDatabase, DeleteQueue, DeleteUser, EnableRoot, EnableRootWithPassword,
    GetFilesystemStats, GuestMsg, IsRootEnabled, ModuleApply, ModuleEntry, ModuleList,
    ModuleRemove, ModuleResult, PageQuery, Prepare, Restart, RpcPing, StopDb, UserSpec,
};
use trove_common::rpc::{self, DecodeError, RemoteError, ReplyTo, Request, RpcContext};
use trove_common::status::ServiceStatus;

use crate::agent::{service_context, Agent};
use crate::datastore::{self, DatastoreError};
use crate::module::ApplyError;

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A module call failed as a whole; the message is Trove's (`Module 'x' has not been applied`...).
    #[error(transparent)]
    Module(#[from] ApplyError),
    /// A report to the conductor was not confirmed by the broker: retry the message.
    #[error("report not delivered: {0}")]
    Broker(#[from] AmqpError),
    /// The datastore server refused or could not do what was asked.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// Anything else that failed on the guest (a state file that cannot be written...).
    #[error("{0:#}")]
    Guest(#[from] anyhow::Error),
}

impl HandlerError {
    /// The failure a caller receives.
    pub fn to_remote(&self) -> RemoteError {
        match self {
            Self::Module(e) => {
                let mut remote = RemoteError::new(e.class_name(), e.to_string());
                remote.module = e.class_module().to_owned();
                remote
            }
            Self::Datastore(e) => RemoteError::new(e.class_name(), e.to_string()),
            Self::Broker(_) | Self::Guest(_) => RemoteError::new("GuestError", self.to_string()),
        }
    }
}

/// What a handler produced: the call's result (casts ignore it).
pub type HandlerResult = Result<Value, HandlerError>;

/// What happens to a delivery once its handler has returned.
#[derive(Debug)]
pub enum Settle {
    /// Send this reply, then ack.
    Reply(ReplyTo, Result<Value, RemoteError>),
    /// Ack.
    Ack,
    /// Requeue (the broker redelivers it).
    Retry(String),
}

/// Decides what happens to a message from whether it is a call (`reply`) and its handler's result.
pub fn settle(reply: Option<&ReplyTo>, result: &HandlerResult) -> Settle {
    match (reply, result) {
        (_, Err(HandlerError::Broker(e))) => Settle::Retry(format!("report not delivered: {e}")),
        (Some(to), Ok(value)) => Settle::Reply(to.clone(), Ok(value.clone())),
        (Some(to), Err(e)) => Settle::Reply(to.clone(), Err(e.to_remote())),
        (None, _) => Settle::Ack,
    }
}

/// The status `prepare` reports once the datastore is set up: a cluster member waits in `instance
/// ready` until `cluster_complete`; a single instance is `running`.
pub fn final_status(prepare: &Prepare) -> ServiceStatus {
    match &prepare.cluster_config {
        Some(config) if !config.is_null() => ServiceStatus::InstanceReady,
        _ => ServiceStatus::Running,
    }
}

/// Handles one delivery's body: the consumer's handler.
pub async fn handle_message(agent: Arc<Agent>, body: &[u8]) -> Outcome {
    let req = match rpc::decode_request(body, agent.keys()) {
        Ok(req) => req,
        Err(e) => {
            return Outcome::DeadLetter(format!(
                "undecodable message: {}",
                redact_quoted(&e.to_string())
            ))
        }
    };
    let span = tracing::info_span!(
        "rpc",
        rpc.method = %req.method,
        rpc.request_id = %req.context.request_id,
        instance.id = %agent.instance_id,
    );
    handle_request(&agent, req).instrument(span).await
}

/// Handles one decoded request (see the module docs).
pub async fn handle_request(agent: &Arc<Agent>, mut req: Request) -> Outcome {
    if !agent.first_sighting(&req.unique_id) {
        tracing::info!(unique_id = %req.unique_id, "duplicate message dropped");
        return Outcome::Ack;
    }
    let outcome = match rpc::take_message::<GuestMsg>(&mut req) {
        Ok(msg) => {
            let started = Instant::now();
            let result = dispatch(agent, &req, msg).await;
            let duration_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok(_) => tracing::debug!(duration_ms, "handled"),
                Err(HandlerError::Broker(_)) => {} // logged by the consumer when it requeues
                Err(e) if req.reply.is_some() => {
                    tracing::warn!(error = %e, duration_ms, "call failed")
                }
                Err(e) => tracing::error!(error = %e, duration_ms, "cast failed"),
            }
            let decision = settle(req.reply.as_ref(), &result);
            execute(agent, decision).await
        }
        Err(e) => {
            let why = redact_quoted(&e.to_string());
            if let Some(to) = &req.reply {
                let remote = RemoteError::new(bad_message_class(&e), why.clone());
                if let Err(e) = agent.reply(to, Err(remote)).await {
                    tracing::warn!(error = %e, "could not tell the caller its message was refused");
                }
            }
            Outcome::DeadLetter(why)
        }
    };
    if matches!(outcome, Outcome::Retry(_)) {
        agent.forget(&req.unique_id);
    }
    outcome
}

/// oslo's class for a message the server cannot handle.
fn bad_message_class(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Args { source, .. } if source.to_string().starts_with("unknown variant") => {
            "NoSuchMethod"
        }
        _ => "TypeError",
    }
}

async fn execute(agent: &Agent, decision: Settle) -> Outcome {
    match decision {
        Settle::Ack => Outcome::Ack,
        Settle::Retry(why) => Outcome::Retry(why),
        Settle::Reply(to, result) => match agent.reply(&to, result).await {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Retry(format!("reply not delivered: {e}")),
        },
    }
}

/// The one place every guest method is routed: a new [`GuestMsg`] variant does not compile until it
/// is handled here.
async fn dispatch(agent: &Arc<Agent>, req: &Request, msg: GuestMsg) -> HandlerResult {
    let ctx = &req.context;
    match msg {
        GuestMsg::Prepare(args) => handle_prepare(agent, ctx, *args).await,
        GuestMsg::ModuleApply(ModuleApply { modules, job_id }) => {
            handle_module_apply(agent, ctx, modules, job_id).await
        }
        GuestMsg::ModuleRemove(ModuleRemove { module }) => {
            handle_module_remove(agent, *module).await
        }
        GuestMsg::ModuleList(ModuleList { include_contents }) => {
            handle_module_list(agent, include_contents, ctx.is_admin).await
        }
        GuestMsg::RpcPing(RpcPing {}) => Ok(handle_rpc_ping()),
        GuestMsg::ClusterComplete(ClusterComplete {}) => handle_cluster_complete(agent, ctx).await,
        GuestMsg::GetFilesystemStats(GetFilesystemStats { fs_path }) => {
            handle_get_filesystem_stats(agent, fs_path).await
        }
        GuestMsg::StopDb(StopDb {
            do_not_start_on_reboot: _,
        }) => handle_stop_db(agent, ctx).await,
        GuestMsg::DeleteQueue(DeleteQueue {}) => Ok(handle_delete_queue(agent)),
        GuestMsg::Restart(Restart {}) => handle_restart(agent, ctx).await,
        GuestMsg::CreateDatabase(CreateDatabase { databases }) => {
            handle_create_database(agent, databases).await
        }
        GuestMsg::ListDatabases(page) => handle_list(agent, Listing::Databases, page).await,
        GuestMsg::DeleteDatabase(DeleteDatabase { database }) => {
            datastore_of(agent)?.delete_database(&database).await?;
            Ok(Value::Null)
        }
        GuestMsg::CreateUser(CreateUser { users }) => handle_create_user(agent, users).await,
        GuestMsg::ListUsers(page) => handle_list(agent, Listing::Users, page).await,
        GuestMsg::DeleteUser(DeleteUser { user }) => {
            datastore_of(agent)?.delete_user(&user).await?;
            Ok(Value::Null)
        }
        GuestMsg::EnableRoot(EnableRoot {}) => Ok(datastore_of(agent)?.enable_root(None).await?),
        GuestMsg::EnableRootWithPassword(EnableRootWithPassword { root_password }) => {
            Ok(datastore_of(agent)?
                .enable_root(root_password.as_deref())
                .await?)
        }
        GuestMsg::IsRootEnabled(IsRootEnabled {}) => {
            Ok(Value::Bool(datastore_of(agent)?.is_root_enabled().await?))
        }
        GuestMsg::ClusterMeet(ClusterMeet { ip, port }) => {
            datastore_of(agent)?.cluster_meet(&ip, port).await?;
            Ok(Value::Null)
        }
        GuestMsg::ClusterAddslots(ClusterAddslots {
            first_slot,
            last_slot,
        }) => {
            datastore_of(agent)?
                .cluster_addslots(first_slot, last_slot)
                .await?;
            Ok(Value::Null)
        }
    }
}

/// The datastore manager, or the call's failure when this guest has none.
fn datastore_of(agent: &Agent) -> anyhow::Result<Arc<dyn datastore::Datastore>> {
    agent
        .datastore()
        .cloned()
        .map_err(|why| anyhow::anyhow!("{why}"))
}

/// What `list_databases` and `list_users` list.
enum Listing {
    Databases,
    Users,
}

/// `list_databases` / `list_users` (call) → one page, `[items, next_marker]`.
async fn handle_list(agent: &Agent, what: Listing, page: PageQuery) -> HandlerResult {
    let ds = datastore_of(agent)?;
    let listed = match what {
        Listing::Databases => ds.list_databases(&page).await?,
        Listing::Users => ds.list_users(&page).await?,
    };
    Ok(listed)
}

/// `create_database` (call): the databases are created before the reply.
async fn handle_create_database(agent: &Agent, databases: Vec<DatabaseSpec>) -> HandlerResult {
    datastore_of(agent)?.create_databases(&databases).await?;
    Ok(Value::Null)
}

/// `create_user` (call): the users and their grants exist before the reply.
async fn handle_create_user(agent: &Agent, users: Vec<UserSpec>) -> HandlerResult {
    datastore_of(agent)?.create_users(&users).await?;
    Ok(Value::Null)
}

/// `restart` (call): stop the server and start it again; `shutdown`, then the healthy status (or
/// `crashed` when it does not come back, with a fault).
async fn handle_restart(agent: &Agent, ctx: &RpcContext) -> HandlerResult {
    let ds = datastore_of(agent)?;
    let report_ctx = service_context(Some(ctx));
    let _lifecycle = agent.lifecycle.lock().await;
    ds.stop().await?;
    agent
        .update_status(ServiceStatus::Shutdown, &report_ctx, |_| {})
        .await?;
    if let Err(e) = ds.start().await {
        agent
            .report_fault(
                "The datastore server did not restart.",
                &e.to_string(),
                &report_ctx,
            )
            .await;
        agent
            .update_status(ServiceStatus::Crashed, &report_ctx, |s| {
                s.server_stopped = false
            })
            .await?;
        return Err(e.into());
    }
    let healthy = if agent.state().await.cluster_pending {
        ServiceStatus::InstanceReady
    } else {
        ServiceStatus::Running
    };
    agent
        .update_status(healthy, &report_ctx, |s| s.server_stopped = false)
        .await?;
    tracing::info!("datastore server restarted");
    Ok(Value::Null)
}

/// `prepare` (cast): `building` → set up the datastore (its server started and answering) → the final
/// status, reported at once → apply the modules → report their results to the conductor. A failure is
/// reported as the instance's fault, then `failed to spawn`. Idempotent: a `prepare` that arrives
/// while one runs is ignored (acked; the running one reports), and once prepared it only re-reports
/// the status. So the taskmanager may send it again (a guest that reports `new` for too long) and the
/// broker may redeliver it without harm.
async fn handle_prepare(agent: &Agent, ctx: &RpcContext, args: Prepare) -> HandlerResult {
    let report_ctx = service_context(Some(ctx));
    let Ok(_one_at_a_time) = agent.prepare_lock.try_lock() else {
        tracing::info!("a prepare is already running; this one is ignored");
        return Ok(Value::Null);
    };
    if agent.state().await.prepared {
        tracing::info!("already prepared; reporting the current status");
        agent.report_status(&report_ctx).await;
        return Ok(Value::Null);
    }
    agent
        .set_status(ServiceStatus::Building, Some(false), &report_ctx)
        .await?;

    let lifecycle = agent.lifecycle.lock().await;
    let (dir, manager) = (agent.state_dir.clone(), agent.datastore_manager.clone());
    let (args, recorded) = tokio::task::spawn_blocking(move || {
        let recorded = datastore::record::prepare(&dir, &manager, &args, epoch_now());
        (args, recorded)
    })
    .await
    .context("the datastore set-up task failed")?;
    let set_up = match (recorded, agent.datastore()) {
        (Err(e), _) => Err(format!("{e:#}")),
        (Ok(_), Err(why)) => Err(why.to_owned()),
        (Ok(_), Ok(ds)) => ds.prepare(&args).await.map_err(|e| e.to_string()),
    };
    if let Err(why) = set_up {
        tracing::error!(error = %why, "prepare failed");
        let message = format!(
            "Failed to prepare the {} datastore.",
            agent.datastore_manager
        );
        agent.report_fault(&message, &why, &report_ctx).await;
        agent
            .set_status(ServiceStatus::Failed, Some(false), &report_ctx)
            .await?;
        return Ok(Value::Null);
    }
    tracing::info!(datastore.manager = %agent.datastore_manager, "datastore ready");
    let status = final_status(&args);
    agent
        .update_status(status, &report_ctx, |s| {
            s.prepared = true;
            s.server_stopped = false;
            s.cluster_pending = status == ServiceStatus::InstanceReady;
        })
        .await?;
    drop(lifecycle);

    if !args.modules.is_empty() {
        apply_prepare_modules(agent, &report_ctx, args.modules).await;
    }
    Ok(Value::Null)
}

/// Applies `prepare`'s modules. Errors are logged and swallowed: the instance is built anyway. The
/// results go to the conductor so operators can see what applied.
async fn apply_prepare_modules(agent: &Agent, ctx: &RpcContext, modules: Vec<ModuleEntry>) {
    let payloads = modules.into_iter().map(|entry| entry.module).collect();
    let (results, error) = match agent.modules(move |m| m.apply(payloads)).await {
        Ok(Ok(results)) => (results, None),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "applying the modules of prepare failed");
            (Vec::new(), Some(e.to_string()))
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "applying the modules of prepare failed");
            (Vec::new(), Some(e.to_string()))
        }
    };
    log_summary(&results);
    let report = ConductorMsg::ModuleResults(ModuleResults {
        error,
        ..ModuleResults::new(&agent.instance_id, results, epoch_now())
    });
    if let Err(e) = agent.cast_conductor(&report, ctx).await {
        tracing::warn!(error = %e, "module results of prepare not delivered");
    }
}

/// `module_apply`: a call from the api (reply with the results), or a cast for a reapply job
/// (`job_id` set: report the results, or the whole call's failure, to the conductor; the message is
/// acked only once that report is confirmed).
async fn handle_module_apply(
    agent: &Agent,
    ctx: &RpcContext,
    modules: Vec<ModuleEntry>,
    job_id: Option<String>,
) -> HandlerResult {
    let payloads = modules.into_iter().map(|entry| entry.module).collect();
    let applied = agent.modules(move |m| m.apply(payloads)).await?;
    let Some(job_id) = job_id else {
        let results = applied?;
        log_summary(&results);
        return Ok(json!(results));
    };
    let (results, failure) = match applied {
        Ok(results) => (results, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    log_summary(&results);
    let value = json!(results);
    let report = ConductorMsg::ModuleResults(ModuleResults {
        job_id: Some(job_id.clone()),
        error: failure.as_ref().map(ToString::to_string),
        ..ModuleResults::new(&agent.instance_id, results, epoch_now())
    });
    agent
        .cast_conductor(&report, &service_context(Some(ctx)))
        .await?;
    tracing::info!(job.id = %job_id, "module results reported");
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(value),
    }
}

fn log_summary(results: &[ModuleResult]) {
    let failed = results
        .iter()
        .filter(|r| r.status.as_deref() != Some("OK"))
        .count();
    tracing::info!(applied = results.len(), failed, "modules applied");
}

/// `module_remove` (call) → null; a module never applied here is `NotFound`.
async fn handle_module_remove(agent: &Agent, entry: ModuleEntry) -> HandlerResult {
    agent.modules(move |m| m.remove(&entry.module)).await??;
    Ok(Value::Null)
}

/// `module_list` (call) → the results, filtered and masked for the caller (`is_admin` from the
/// request's context).
async fn handle_module_list(
    agent: &Agent,
    include_contents: bool,
    caller_is_admin: bool,
) -> HandlerResult {
    let results = agent
        .modules(move |m| m.list(include_contents, caller_is_admin))
        .await??;
    Ok(json!(results))
}

/// `rpc_ping` (call) → true.
fn handle_rpc_ping() -> Value {
    Value::Bool(true)
}

/// How long `cluster_complete` waits for this node to see `cluster_state:ok`.
const CLUSTER_OK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `cluster_complete` (call): once this node sees its cluster ok (redis: `cluster_state:ok`, every
/// slot served), report the real status, `running`. A cluster not ok in time is the call's failure, and
/// the taskmanager tries again.
async fn handle_cluster_complete(agent: &Agent, ctx: &RpcContext) -> HandlerResult {
    datastore_of(agent)?
        .cluster_wait_ok(CLUSTER_OK_WAIT)
        .await?;
    agent
        .update_status(ServiceStatus::Running, &service_context(Some(ctx)), |s| {
            s.cluster_pending = false
        })
        .await?;
    Ok(Value::Null)
}

/// `get_filesystem_stats` (call) → Trove's figures for the filesystem holding the state directory (our
/// stand-in for the data volume; `fs_path` names a path on a real guest and is not used).
async fn handle_get_filesystem_stats(agent: &Agent, _fs_path: Option<String>) -> HandlerResult {
    let dir = agent.state_dir.clone();
    let stats = tokio::task::spawn_blocking(move || datastore::filesystem_stats(&dir))
        .await
        .context("the filesystem stats task failed")?;
    Ok(stats)
}

/// `stop_db` (cast, before the guest is deleted): stop the datastore server and keep it stopped (the
/// health monitor leaves it alone until `restart`), report `shutdown`.
async fn handle_stop_db(agent: &Agent, ctx: &RpcContext) -> HandlerResult {
    let _lifecycle = agent.lifecycle.lock().await;
    if let Ok(ds) = agent.datastore() {
        ds.stop().await?;
    }
    agent
        .update_status(ServiceStatus::Shutdown, &service_context(Some(ctx)), |s| {
            s.server_stopped = true
        })
        .await?;
    Ok(Value::Null)
}

/// `delete_queue` (cast): the instance is going away. Stop consuming; the message is acked as the
/// consumer drains, then the process exits. The taskmanager deletes the queue.
fn handle_delete_queue(agent: &Agent) -> Value {
    tracing::info!("delete_queue received; stopping");
    agent.stop_token().cancel();
    Value::Null
}

/// Replaces every double-quoted part of `text` with `"…"`. Decode errors quote the offending values,
/// which could be module contents or keys; what is left (field names, positions) is safe to log.
pub fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            if quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
