//! Module views (`trove/module/views.py`) and the guest payload built from the same fields.

use serde_json::{json, Map, Value};
use trove_common::api_time;
use trove_common::db::models::Module;
use trove_common::rpc::guest::ModulePayload;

use crate::service::catalog::Catalog;

/// The list view: every field but `live_update`, `instance_count` and contents.
pub fn list_item(m: &Module, cat: &Catalog) -> Map<String, Value> {
    let v = json!({
        "id": m.id,
        "name": m.name,
        "type": m.module_type,
        "description": m.description,
        "tenant_id": m.tenant_id,
        "tenant": m.tenant_id.clone().unwrap_or_else(|| "all".into()),
        "datastore_id": m.datastore_id,
        "datastore": cat.datastore_name(m.datastore_id.as_deref()),
        "datastore_version_id": m.datastore_version_id,
        "datastore_version": cat.version_name(m.datastore_version_id.as_deref()),
        "auto_apply": m.auto_apply,
        "priority_apply": m.priority_apply,
        "apply_order": m.apply_order,
        "is_admin": m.is_admin,
        "md5": m.md5,
        "visible": m.visible,
        "created": api_time(m.created),
        "updated": api_time(m.updated),
    });
    match v {
        Value::Object(o) => o,
        _ => unreachable!(),
    }
}

/// The detailed view (create, show, update): the list view plus `live_update`.
pub fn detail(m: &Module, cat: &Catalog) -> Map<String, Value> {
    let mut o = list_item(m, cat);
    o.insert("live_update".into(), json!(m.live_update));
    o
}

/// What a guest receives: the detailed view plus the decrypted base64 contents (or none for remove).
pub fn payload(m: &Module, cat: &Catalog, contents: Option<String>) -> ModulePayload {
    ModulePayload {
        id: m.id.clone(),
        name: m.name.clone(),
        module_type: m.module_type.clone(),
        description: m.description.clone(),
        tenant_id: m.tenant_id.clone(),
        tenant: m.tenant_id.clone().unwrap_or_else(|| "all".into()),
        datastore_id: m.datastore_id.clone(),
        datastore: cat.datastore_name(m.datastore_id.as_deref()),
        datastore_version_id: m.datastore_version_id.clone(),
        datastore_version: cat.version_name(m.datastore_version_id.as_deref()),
        auto_apply: m.auto_apply,
        priority_apply: m.priority_apply,
        apply_order: i32::from(m.apply_order),
        is_admin: m.is_admin,
        visible: m.visible,
        live_update: m.live_update,
        md5: m.md5.clone(),
        created: Some(api_time(m.created)),
        updated: Some(api_time(m.updated)),
        contents,
    }
}
