//! Response bodies, shaped like Trove's `views.py` modules.

pub mod clusters;
pub mod databases;
pub mod datastores;
pub mod instances;
pub mod modules;
pub mod quotas;

use serde_json::{json, Value};

/// Trove's `self` and `bookmark` links (always `https`).
pub fn links(base_url: &str, tenant: &str, collection: &str, id: &str) -> Value {
    json!([
        {"href": format!("{base_url}/v1.0/{tenant}/{collection}/{id}"), "rel": "self"},
        {"href": format!("{base_url}/{collection}/{id}"), "rel": "bookmark"},
    ])
}
