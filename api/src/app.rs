//! Shared state of the API.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::sync::Notify;
use trove_common::amqp::{Broker, RpcClient};
use trove_common::config::{parse_key_entry, Settings};
use trove_common::crypto::{Keyring, SecretKey};
use trove_common::db::Db;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub settings: Arc<Settings>,
    pub broker: Arc<Broker>,
    /// Synchronous calls to guests (module-apply, module-query, module-remove).
    pub rpc: Arc<RpcClient>,
    /// Seals module contents at rest.
    pub module_keys: Arc<Keyring>,
    /// Wakes the outbox relay after a commit that queued messages.
    pub outbox: Arc<Notify>,
}

impl AppState {
    pub fn new(settings: Arc<Settings>, db: Db, broker: Arc<Broker>) -> Self {
        Self {
            module_keys: Arc::new(module_keyring(&settings)),
            rpc: Arc::new(RpcClient::new(broker.clone())),
            outbox: Arc::new(Notify::new()),
            db,
            settings,
            broker,
        }
    }
}

/// The keyring for module contents: the active GCM key, older GCM keys, and Trove's CBC key.
pub fn module_keyring(settings: &Settings) -> Keyring {
    let d = &settings.default;
    let mut ring = Keyring::new(
        d.module_contents_key_id,
        SecretKey::from_passphrase(d.module_contents_key.expose_secret()),
    )
    .with_legacy_cbc(SecretKey::trove_cbc(d.module_aes_cbc_key.expose_secret()));
    for entry in &d.module_contents_old_keys {
        if let Some((id, key)) = parse_key_entry(entry) {
            ring = ring.with_old_key(id, SecretKey::from_passphrase(key));
        }
    }
    ring
}
