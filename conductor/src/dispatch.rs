//! From a delivery to a handler: find the guest's key, decode, authenticate, one exhaustive `match`.
//!
//! Guests seal every argument with their instance's key and tag the message with their id
//! (`_context_csz-instance-id`, messaging.md §3). The conductor reads that id, opens the instance's
//! `encrypted_key` with the master key (cached: instance keys never change) and decodes with it.
//!
//! The outcome of each delivery:
//! - handled, or deliberately dropped (a stale report, a deleted instance) → ack, after the commit;
//! - a database error → retry (requeued after a pause, never lost);
//! - anything that will never succeed → dead-letter: an unknown instance, a message that does not
//!   decode or fails authentication, a message whose claimed instance is not the one that sealed it,
//!   an unknown method. A bad message never crashes the conductor or loops hot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing::{field, Instrument as _};
use trove_common::amqp::Outcome;
use trove_common::config::Settings;
use trove_common::crypto::{CryptoError, Keyring};
use trove_common::db::models::Instance;
use trove_common::db::{Db, DbError};
use trove_common::rpc::conductor::ConductorMsg;
use trove_common::rpc::keys::guest_keyring;
use trove_common::rpc::{decode_request, from_request, peek_guest_instance_id};

use crate::handlers;

/// How many instance keyrings stay cached.
pub const KEY_CACHE_CAPACITY: usize = 1024;

/// Notifications a Trove guest may send; the conductor serves them as no-ops (messaging.md §4).
const NOTIFICATIONS: [&str; 2] = ["notify_end", "notify_exc_info"];

/// Decodes and dispatches conductor messages. One per process, shared by every delivery.
pub struct Dispatcher {
    settings: Arc<Settings>,
    db: Db,
    /// instance id → its keyring (None: the instance has no key, so its messages travel in plain).
    keys: LruMap<Option<Keyring>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Why an instance's keyring could not be had.
#[derive(Debug, thiserror::Error)]
enum KeyError {
    #[error("unknown instance {0}")]
    UnknownInstance(String),
    #[error("the RPC key of instance {0} cannot be opened: {1}")]
    BadKey(String, CryptoError),
    #[error("looking up the key of instance {0}: {1}")]
    Db(String, DbError),
}

impl KeyError {
    fn into_outcome(self) -> Outcome {
        match self {
            KeyError::Db(..) => Outcome::Retry(self.to_string()),
            _ => Outcome::DeadLetter(self.to_string()),
        }
    }
}

impl Dispatcher {
    pub fn new(settings: Arc<Settings>, db: Db) -> Self {
        Self {
            settings,
            db,
            keys: LruMap::new(KEY_CACHE_CAPACITY),
        }
    }

    /// Handles one delivery body and says what to do with it. Database work is committed before this
    /// returns, so an [`Outcome::Ack`] can be sent at once.
    pub async fn dispatch(&self, body: &[u8]) -> Outcome {
        let span = tracing::info_span!(
            "rpc",
            rpc.method = field::Empty,
            rpc.request_id = field::Empty,
            instance.id = field::Empty
        );
        self.dispatch_inner(body).instrument(span).await
    }

    async fn dispatch_inner(&self, body: &[u8]) -> Outcome {
        let span = tracing::Span::current();
        let sealer = peek_guest_instance_id(body);
        if let Some(id) = &sealer {
            span.record("instance.id", id.as_str());
        }
        let keys = match &sealer {
            Some(id) => match self.keyring(id).await {
                Ok(keys) => keys,
                Err(e) => return e.into_outcome(),
            },
            None => None,
        };
        let req = match decode_request(body, keys.as_ref()) {
            Ok(req) => req,
            Err(e) => return Outcome::DeadLetter(format!("undecodable conductor message: {e}")),
        };
        span.record("rpc.method", req.method.as_str());
        span.record("rpc.request_id", req.context.request_id.as_str());
        if NOTIFICATIONS.contains(&req.method.as_str()) {
            tracing::debug!("notification ignored");
            return Outcome::Ack;
        }
        let msg = match from_request::<ConductorMsg>(&req) {
            Ok(msg) => msg,
            Err(e) => return Outcome::DeadLetter(format!("unusable conductor message: {e}")),
        };
        let claimed = instance_of(&msg).to_owned();
        span.record("instance.id", claimed.as_str());
        if let Err(outcome) = self
            .authenticate(body, sealer.as_deref(), keys.is_some(), &claimed)
            .await
        {
            return outcome;
        }

        let method = msg.method();
        let result = match msg {
            ConductorMsg::Heartbeat {
                instance_id,
                payload,
                sent,
            } => handlers::handle_heartbeat(&self.db, instance_id, payload, sent)
                .await
                .map(drop),
            ConductorMsg::ModuleResults {
                instance_id,
                results,
                sent,
                job_id,
                error,
            } => {
                handlers::handle_module_results(&self.db, instance_id, results, sent, job_id, error)
                    .await
                    .map(drop)
            }
            ConductorMsg::ReportRoot {
                instance_id,
                user: _,
            } => {
                handlers::handle_report_root(&instance_id);
                Ok(())
            }
        };
        match result {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Retry(format!("{method} from instance {claimed}: {e}")),
        }
    }

    /// Checks that the instance a message speaks for is the one that sealed it:
    /// - a sealed message must claim its sealer's id, and every argument must be sealed (plain values
    ///   would pass through `decode_request` unchecked);
    /// - a plain message is accepted only for an instance that has no key.
    async fn authenticate(
        &self,
        body: &[u8],
        sealer: Option<&str>,
        sealed: bool,
        claimed: &str,
    ) -> Result<(), Outcome> {
        match sealer {
            Some(s) if s != claimed => Err(Outcome::DeadLetter(format!(
                "message sealed by instance {s} speaks for instance {claimed}"
            ))),
            Some(s) if sealed && !args_sealed_by(body, s) => Err(Outcome::DeadLetter(format!(
                "message from instance {s} carries unsealed arguments"
            ))),
            Some(_) => Ok(()),
            None => match self.keyring(claimed).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) | Err(KeyError::BadKey(..)) => Err(Outcome::DeadLetter(format!(
                    "unsealed message for instance {claimed}, which has an RPC key"
                ))),
                Err(e) => Err(e.into_outcome()),
            },
        }
    }

    /// The keyring of an instance's channel, from the cache or the database.
    async fn keyring(&self, instance_id: &str) -> Result<Option<Keyring>, KeyError> {
        if let Some(keys) = self.keys.get(instance_id) {
            return Ok(keys);
        }
        let id = instance_id.to_owned();
        let instance = self
            .db
            .run(move |conn| Instance::find_any(conn, &id).map_err(DbError::from))
            .await
            .map_err(|e| KeyError::Db(instance_id.to_owned(), e))?;
        let Some(instance) = instance else {
            return Err(KeyError::UnknownInstance(instance_id.to_owned()));
        };
        let keys = guest_keyring(&self.settings, instance.encrypted_key.as_deref())
            .map_err(|e| KeyError::BadKey(instance_id.to_owned(), e))?;
        self.keys.insert(instance_id.to_owned(), keys.clone());
        Ok(keys)
    }
}

/// The instance a message speaks for.
fn instance_of(msg: &ConductorMsg) -> &str {
    match msg {
        ConductorMsg::Heartbeat { instance_id, .. }
        | ConductorMsg::ModuleResults { instance_id, .. }
        | ConductorMsg::ReportRoot { instance_id, .. } => instance_id,
    }
}

/// True when every argument of the message is the guest→conductor wrapper
/// `{"entity": <sealed>, "csz-instance-id": <sealer>}` (as a JSON string).
fn args_sealed_by(body: &[u8], sealer: &str) -> bool {
    let inner = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|outer| outer.get("oslo.message")?.as_str().map(str::to_owned))
        .and_then(|inner| serde_json::from_str::<Value>(&inner).ok());
    let Some(Value::Object(args)) = inner.as_ref().and_then(|i| i.get("args")) else {
        return false;
    };
    args.values().all(|v| {
        let Some(wrapped) = v
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
        else {
            return false;
        };
        wrapped.get("entity").is_some_and(Value::is_string)
            && wrapped.get("csz-instance-id").and_then(Value::as_str) == Some(sealer)
    })
}

/// A small map that forgets its least recently used entry when full. A linear scan on eviction is
/// cheap at a thousand entries, and keeps us free of another crate.
pub(crate) struct LruMap<V> {
    capacity: usize,
    inner: Mutex<LruInner<V>>,
}

struct LruInner<V> {
    /// Bumped on every access; an entry's stamp says when it was last used.
    clock: u64,
    entries: HashMap<String, (u64, V)>,
}

impl<V: Clone> LruMap<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(LruInner {
                clock: 0,
                entries: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruInner<V>> {
        // The map holds no invariant a panicking holder could break.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        inner.entries.get_mut(key).map(|(stamp, v)| {
            *stamp = now;
            v.clone()
        })
    }

    pub(crate) fn insert(&self, key: String, value: V) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(&key) {
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, (stamp, _))| *stamp)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.entries.remove(&oldest);
            }
        }
        inner.entries.insert(key, (now, value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};
    use trove_common::rpc::{encode_request, rpc_keyring, RpcContext, Security};

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let m = LruMap::new(3);
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        m.insert("c".into(), 3);
        assert_eq!(m.get("a"), Some(1)); // a is now the most recent
        m.insert("d".into(), 4); // evicts b
        assert_eq!(m.len(), 3);
        assert_eq!(m.get("b"), None);
        assert_eq!(m.get("a"), Some(1));
        assert_eq!(m.get("c"), Some(3));
        assert_eq!(m.get("d"), Some(4));
        // Replacing an entry never evicts another one.
        m.insert("a".into(), 10);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get("a"), Some(10));
        assert_eq!(m.get("c"), Some(3));
    }

    #[test]
    fn lru_capacity_is_at_least_one() {
        let m = LruMap::new(0);
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("b"), Some(2));
    }

    fn heartbeat_args(instance_id: &str) -> Map<String, Value> {
        let mut args = Map::new();
        args.insert("instance_id".into(), json!(instance_id));
        args.insert("payload".into(), json!({"service_status": "running"}));
        args.insert("sent".into(), json!(1.5));
        args
    }

    #[test]
    fn sealed_arguments_are_recognised() {
        let keys = rpc_keyring("k");
        let sec = Security::GuestToConductor {
            instance_id: "i1".into(),
            keys,
        };
        let body = encode_request(
            "heartbeat",
            heartbeat_args("i1"),
            &RpcContext::service(),
            "1.0",
            None,
            &sec,
        );
        assert!(args_sealed_by(&body, "i1"));
        assert!(!args_sealed_by(&body, "i2"));
        let plain = encode_request(
            "heartbeat",
            heartbeat_args("i1"),
            &RpcContext::service(),
            "1.0",
            None,
            &Security::Plain,
        );
        assert!(!args_sealed_by(&plain, "i1"));
        assert!(!args_sealed_by(b"garbage", "i1"));
    }

    #[test]
    fn every_message_names_its_instance() {
        let msg = ConductorMsg::ReportRoot {
            instance_id: "i9".into(),
            user: None,
        };
        assert_eq!(instance_of(&msg), "i9");
    }
}
