//! Datastore, version and flavor views.

use serde_json::{json, Map, Value};
use trove_common::db::models::{Datastore, DatastoreVersion, Flavor};

use super::links;

/// A version object; `in_list` leaves out `datastore` (inside a datastore's `versions`).
pub fn version(
    v: &DatastoreVersion,
    base: &str,
    tenant: &str,
    is_admin: bool,
    in_list: bool,
) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), json!(v.id));
    o.insert("name".into(), json!(v.name));
    o.insert(
        "links".into(),
        links(base, tenant, "datastores/versions", &v.id),
    );
    if !in_list {
        o.insert("datastore".into(), json!(v.datastore_id));
    }
    o.insert("version".into(), json!(v.version_number()));
    if is_admin {
        o.insert("active".into(), json!(v.active));
        o.insert(
            "packages".into(),
            json!(v.packages.clone().unwrap_or_default()),
        );
        o.insert(
            "image".into(),
            json!(v.image_id.clone().unwrap_or_default()),
        );
    }
    o
}

pub fn datastore(
    d: &Datastore,
    versions: &[&DatastoreVersion],
    base: &str,
    tenant: &str,
    is_admin: bool,
) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), json!(d.id));
    o.insert("name".into(), json!(d.name));
    o.insert("links".into(), links(base, tenant, "datastores", &d.id));
    if let Some(dv) = &d.default_version_id {
        o.insert("default_version".into(), json!(dv));
    }
    o.insert(
        "versions".into(),
        Value::Array(
            versions
                .iter()
                .map(|v| Value::Object(version(v, base, tenant, is_admin, true)))
                .collect(),
        ),
    );
    o
}

/// `id` is an integer when the id is a plain integer without leading zeros, else null.
pub fn flavor(f: &Flavor, base: &str, tenant: &str) -> Map<String, Value> {
    let int_id = f.id.parse::<i64>().ok().filter(|n| n.to_string() == f.id);
    let v = json!({
        "id": int_id, "str_id": f.id, "name": f.name, "ram": f.ram, "vcpus": f.vcpus, "disk": f.disk,
        "ephemeral": f.ephemeral, "links": links(base, tenant, "flavors", &f.id),
    });
    match v {
        Value::Object(o) => o,
        _ => unreachable!(),
    }
}
