//! Instance views (Pike's field set, docs/rest-api.md §Instances).

use serde_json::{json, Map, Value};
use trove_common::api_time;
use trove_common::db::models::instance::InstanceDetail;
use trove_common::db::models::Instance;
use trove_common::status::{api_status, StatusInputs};

use super::links;

/// The API status of an instance (docs/messaging.md §5).
pub fn status(d: &InstanceDetail, heartbeat_expiry: u64) -> &'static str {
    let now = trove_common::db::now();
    let svc = d.service.as_ref();
    api_status(&StatusInputs {
        task_id: d.instance.task_id,
        service_status: svc.and_then(|s| s.status()),
        server_status: d.instance.server_status.as_deref(),
        status_age_secs: svc
            .and_then(|s| s.updated_at)
            .map(|t| (now - t).num_milliseconds() as f64 / 1000.0),
        heartbeat_expiry_secs: heartbeat_expiry as f64,
    })
}

/// The list item; `tenant_id` only for admins. Links carry `project`, the caller's project, as
/// Trove's `create_links` builds them: an admin listing another tenant's instance gets links it can
/// follow (the URL tenant must be the caller's).
pub fn list_item(
    d: &InstanceDetail,
    base: &str,
    project: &str,
    is_admin: bool,
    expiry: u64,
) -> Map<String, Value> {
    let i = &d.instance;
    let mut o = Map::new();
    o.insert("id".into(), json!(i.id));
    o.insert("name".into(), json!(i.name));
    o.insert("status".into(), json!(status(d, expiry)));
    o.insert("links".into(), links(base, project, "instances", &i.id));
    o.insert(
        "flavor".into(),
        json!({"id": i.flavor_id, "links": links(base, project, "flavors", &i.flavor_id)}),
    );
    o.insert(
        "datastore".into(),
        json!({"type": d.datastore_name, "version": d.version_name}),
    );
    o.insert("region".into(), json!(i.region_id));
    if let Some(size) = i.volume_size {
        o.insert("volume".into(), json!({"size": size}));
    }
    if let Some(h) = &i.hostname {
        o.insert("hostname".into(), json!(h));
    }
    if let Some(addresses) = addresses(i) {
        o.insert("ip".into(), json!(ips(i)));
        o.insert("addresses".into(), addresses);
    }
    if is_admin {
        o.insert("tenant_id".into(), json!(i.tenant_id));
    }
    o
}

/// The addresses a user connects to, as Trove's `ip` (the addresses alone, which python-troveclient
/// joins for `trove show`): empty until the instance's server has an address.
pub fn ips(i: &Instance) -> Vec<String> {
    i.address.iter().cloned().collect()
}

/// Trove's `addresses` (`[{"address": .., "type": "private"}]`), with the database server's `port`
/// in each entry: our instances share their host, so the address alone does not say where to
/// connect. None until the instance has an address.
pub fn addresses(i: &Instance) -> Option<Value> {
    let address = i.address.as_ref()?;
    let mut entry = json!({"address": address, "type": "private"});
    if let Some(port) = i.port {
        entry["port"] = json!(port);
    }
    Some(json!([entry]))
}

/// The detail view.
pub fn detail(
    d: &InstanceDetail,
    base: &str,
    project: &str,
    is_admin: bool,
    expiry: u64,
) -> Map<String, Value> {
    let i = &d.instance;
    let mut o = list_item(d, base, project, is_admin, expiry);
    o.insert("created".into(), json!(api_time(i.created)));
    o.insert("updated".into(), json!(api_time(i.updated)));
    if let Some(c) = &i.cluster_id {
        o.insert("cluster_id".into(), json!(c));
    }
    if let Some(s) = &i.shard_id {
        o.insert("shard_id".into(), json!(s));
    }
    if let Some((message, details, created)) = &d.fault {
        o.insert(
            "fault".into(),
            json!({"message": message, "details": details, "created": api_time(*created)}),
        );
    }
    if is_admin {
        // Trove shows the compute server id; our driver's handle is an internal detail until it is set.
        o.insert("server_id".into(), json!(i.compute_instance_id));
        o.insert("volume_id".into(), json!(i.volume_id));
        o.insert(
            "encrypted_rpc_messaging".into(),
            json!(i.encrypted_key.is_some()),
        );
    }
    o
}
