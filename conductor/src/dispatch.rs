//! From a delivery to a handler: find the guest's key, decode, authenticate, one exhaustive `match`.
//!
//! Guests seal every argument with their instance's key and tag the message with their id
//! (`_context_csz-instance-id`, docs/messaging.md §3). The conductor reads that id, opens the instance's
//! `encrypted_key` with the master key (cached: instance keys never change) and decodes with it.
//!
//! The outcome of each delivery:
//! - handled, or deliberately dropped (a stale report, a deleted instance) → ack, after the commit;
//! - a database error → retry (requeued after a pause, never lost);
//! - anything that will never succeed → dead-letter: an unknown instance, a message that does not
//!   decode or fails authentication, a message whose claimed instance is not the one that sealed it,
//!   an unknown method. A bad message never crashes the conductor or loops hot.

use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::{field, Instrument as _};
use trove_common::amqp::Outcome;
use trove_common::config::Settings;
use trove_common::crypto::{CryptoError, Keyring};
use trove_common::db::models::Instance;
use trove_common::db::{Db, DbError};
use trove_common::rpc::conductor::ConductorMsg;
use trove_common::rpc::keys::guest_keyring;
use trove_common::rpc::{take_message, Envelope};

use crate::handlers;

/// How many instance keyrings stay cached: a fleet's worth, so a reapply over every instance does
/// not look each key up again.
pub const KEY_CACHE_CAPACITY: u64 = 16_384;

/// Notifications a Trove guest may send that the conductor serves as no-ops (docs/messaging.md §4).
/// `notify_exc_info` is not one: it records the instance's fault ([`handlers::notify_exc_info`]).
const NOTIFICATIONS: [&str; 1] = ["notify_end"];

/// Decodes and dispatches conductor messages. One per process, shared by every delivery.
pub struct Dispatcher {
    settings: Arc<Settings>,
    db: Db,
    /// instance id → its keyring (None: the instance has no key, so its messages travel in plain).
    keys: moka::sync::Cache<String, Option<Keyring>>,
    /// job id → its module, for reapply answers.
    jobs: crate::batch::JobModules,
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
            keys: moka::sync::Cache::new(KEY_CACHE_CAPACITY),
            jobs: crate::batch::JobModules::default(),
        }
    }

    /// Handles one delivery body and says what to do with it. Database work is committed before this
    /// returns, so an [`Outcome::Ack`] can be sent at once.
    pub async fn dispatch(&self, body: &[u8]) -> Outcome {
        self.dispatch_batch(&[body])
            .await
            .pop()
            .unwrap_or_else(|| Outcome::Retry("no outcome".into()))
    }

    /// Handles a batch of delivery bodies and says what to do with each, in order. Each message is
    /// decoded and authenticated on its own; then the database work of the whole batch goes through
    /// [`crate::batch::apply_batch`], round by round: heartbeats in one statement, `module_results`
    /// reports in another, the rest one by one in a transaction with a savepoint each. One message's
    /// database error fails (and retries) only that message: a statement that fails over several is
    /// run again for each of them alone. Everything is committed before this returns.
    pub async fn dispatch_batch(&self, bodies: &[&[u8]]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(bodies.len());
        let mut work: Vec<(usize, ConductorMsg, tracing::Span)> = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let span = tracing::info_span!(
                "rpc",
                rpc.method = field::Empty,
                rpc.request_id = field::Empty,
                instance.id = field::Empty
            );
            match self.prepare(body).instrument(span.clone()).await {
                Ok(msg) => {
                    outcomes.push(None);
                    work.push((i, msg, span));
                }
                Err(outcome) => outcomes.push(Some(outcome)),
            }
        }
        if work.is_empty() {
            return outcomes.into_iter().flatten().collect();
        }
        // Rows are locked per instance (its reapply item, status, clocks and results): taking the
        // instances in one global order keeps concurrent batches, and the taskmanager's bulk updates
        // of reapply items (also by instance id), from deadlocking. The sort is stable, so one
        // instance's messages keep their order.
        work.sort_by(|(_, a, _), (_, b, _)| a.instance_id().cmp(b.instance_id()));
        // The messages move into the database closure and come back with their results; what an
        // error needs to say is kept here.
        let (slots, msgs): (Vec<_>, Vec<_>) = work
            .into_iter()
            .map(|(i, msg, span)| {
                let label = format!("{} from instance {}", msg.method(), msg.instance_id());
                ((i, span, label), msg)
            })
            .unzip();
        let jobs = self.jobs.clone();
        let done = self
            .db
            .run(move |conn| {
                let results = crate::batch::apply_batch(conn, &msgs, &jobs);
                Ok::<_, DbError>((msgs, results))
            })
            .await;
        match done {
            Ok((msgs, results)) => {
                for (((i, span, label), msg), result) in slots.into_iter().zip(msgs).zip(results) {
                    let _entered = span.enter();
                    outcomes[i] = Some(match result {
                        Ok(applied) => {
                            handlers::log_applied(&msg, &applied);
                            Outcome::Ack
                        }
                        Err(e) => Outcome::Retry(format!("{label}: {e}")),
                    });
                }
            }
            Err(e) => {
                for (i, span, label) in slots {
                    let _entered = span.enter();
                    outcomes[i] = Some(Outcome::Retry(format!("{label}: {e}")));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("no outcome".into())))
            .collect()
    }

    /// Finds the sealer's key, decodes, authenticates: the message to apply, or what to do with a
    /// delivery that needs no database work (a notification) or will never succeed.
    async fn prepare(&self, body: &[u8]) -> Result<ConductorMsg, Outcome> {
        let span = tracing::Span::current();
        let undecodable = |e| Outcome::DeadLetter(format!("undecodable conductor message: {e}"));
        // Parsed once: who sealed it picks the key, and its arguments are checked before opening.
        let envelope = Envelope::parse(body).map_err(undecodable)?;
        let sealer = envelope.guest_instance_id().map(str::to_owned);
        if let Some(id) = &sealer {
            span.record("instance.id", id.as_str());
        }
        let keys = match &sealer {
            Some(id) => self.keyring(id).await.map_err(KeyError::into_outcome)?,
            None => None,
        };
        // Only a message opened with a key must have every argument sealed.
        let args_sealed = keys.is_some()
            && sealer
                .as_deref()
                .is_some_and(|s| args_sealed_by(envelope.raw_args(), s));
        let mut req = envelope.open(keys.as_ref()).map_err(undecodable)?;
        span.record("rpc.method", req.method.as_str());
        span.record("rpc.request_id", req.context.request_id.as_str());
        if NOTIFICATIONS.contains(&req.method.as_str()) {
            tracing::debug!("notification ignored");
            return Err(Outcome::Ack);
        }
        let msg = take_message::<ConductorMsg>(&mut req)
            .map_err(|e| Outcome::DeadLetter(format!("unusable conductor message: {e}")))?;
        let claimed = msg.instance_id().to_owned();
        span.record("instance.id", claimed.as_str());
        self.authenticate(args_sealed, sealer.as_deref(), keys.is_some(), &claimed)
            .await?;
        Ok(msg)
    }

    /// Checks that the instance a message speaks for is the one that sealed it:
    /// - a sealed message must claim its sealer's id, and every argument must be sealed (plain values
    ///   would pass through [`Envelope::open`] unchecked): `args_sealed`, from [`args_sealed_by`];
    /// - a plain message is accepted only for an instance that has no key.
    async fn authenticate(
        &self,
        args_sealed: bool,
        sealer: Option<&str>,
        sealed: bool,
        claimed: &str,
    ) -> Result<(), Outcome> {
        match sealer {
            Some(s) if s != claimed => Err(Outcome::DeadLetter(format!(
                "message sealed by instance {s} speaks for instance {claimed}"
            ))),
            Some(s) if sealed && !args_sealed => Err(Outcome::DeadLetter(format!(
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

/// True when every argument of the message is the guest→conductor wrapper
/// `{"entity": <sealed>, "csz-instance-id": <sealer>}` (as a JSON string).
fn args_sealed_by(args: Option<&Map<String, Value>>, sealer: &str) -> bool {
    let Some(args) = args else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use trove_common::rpc::conductor::ReportRoot;
    use trove_common::rpc::{encode_request, rpc_keyring, RpcContext, Security};

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
        let sealed = Envelope::parse(&body).unwrap();
        assert_eq!(sealed.guest_instance_id(), Some("i1"));
        assert!(args_sealed_by(sealed.raw_args(), "i1"));
        assert!(!args_sealed_by(sealed.raw_args(), "i2"));
        let plain = encode_request(
            "heartbeat",
            heartbeat_args("i1"),
            &RpcContext::service(),
            "1.0",
            None,
            &Security::Plain,
        );
        let plain = Envelope::parse(&plain).unwrap();
        assert_eq!(plain.guest_instance_id(), None);
        assert!(!args_sealed_by(plain.raw_args(), "i1"));
        assert!(!args_sealed_by(None, "i1"));
        assert!(Envelope::parse(b"garbage").is_err());
    }

    #[test]
    fn every_message_names_its_instance() {
        let msg = ConductorMsg::ReportRoot(ReportRoot {
            instance_id: "i9".into(),
            user: None,
        });
        assert_eq!(msg.instance_id(), "i9");
    }
}
