//! Module views (`trove/module/views.py`): the guest payload that [`Module::payload`] builds, seen
//! through the API.

use serde_json::{Map, Value};
use trove_common::db::models::Module;
use trove_common::rpc::guest::ModulePayload;

use crate::service::catalog::Catalog;

/// The list view: the detailed view without `live_update` (and never `instance_count` or contents).
pub fn list_item(m: &Module, cat: &Catalog) -> Map<String, Value> {
    let mut o = detail(m, cat);
    o.remove("live_update");
    o
}

/// The detailed view (create, show, update): the guest payload without contents.
pub fn detail(m: &Module, cat: &Catalog) -> Map<String, Value> {
    match serde_json::to_value(payload(m, cat, None)) {
        Ok(Value::Object(o)) => o,
        _ => unreachable!("a module payload serialises to an object"),
    }
}

/// What a guest receives: the detailed view plus the decrypted base64 contents (or none for remove).
pub fn payload(m: &Module, cat: &Catalog, contents: Option<String>) -> ModulePayload {
    let datastore = m
        .datastore_id
        .as_deref()
        .and_then(|id| cat.datastore(id))
        .map(|d| d.name.clone());
    let version = m
        .datastore_version_id
        .as_deref()
        .and_then(|id| cat.version(id))
        .map(|v| v.name.clone());
    m.payload(datastore, version, contents)
}
