//! Shared state of the API.

use std::sync::Arc;

use tokio::sync::Notify;
use trove_common::amqp::{Broker, RpcClient};
use trove_common::config::Settings;
use trove_common::crypto::Keyring;
use trove_common::db::Db;

use crate::auth::Authenticator;

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
    /// Turns `X-Auth-Token` into a user, project and roles (keystone or noauth), with its token cache.
    pub auth: Arc<Authenticator>,
}

impl AppState {
    pub fn new(settings: Arc<Settings>, db: Db, broker: Arc<Broker>) -> Self {
        Self {
            module_keys: Arc::new(module_keyring(&settings)),
            rpc: Arc::new(RpcClient::new(broker.clone())),
            outbox: Arc::new(Notify::new()),
            auth: Arc::new(Authenticator::from_settings(&settings)),
            db,
            settings,
            broker,
        }
    }
}

pub use trove_common::rpc::keys::module_keyring;
