//! Cluster views.

use serde_json::{json, Map, Value};
use trove_common::api_time;
use trove_common::db::models::instance::InstanceDetail;
use trove_common::db::models::Cluster;
use trove_common::status::ClusterTask;

use super::links;

/// The cluster view; `full` adds status, flavor and volume to each member (show). Links carry
/// `project`, the caller's project (see `instances::list_item`).
#[allow(clippy::too_many_arguments)]
pub fn view(
    c: &Cluster,
    ds: &str,
    ver: &str,
    members: &[InstanceDetail],
    base: &str,
    project: &str,
    full: bool,
    expiry: u64,
) -> Map<String, Value> {
    let task = ClusterTask::from_code(c.task_id);
    // Trove (`ClusterView._build_instances`): with the servers loaded (show), each member has its
    // `ip`, and the cluster lists the ips of its `member`-type instances.
    let mut cluster_ips: Vec<String> = Vec::new();
    let instances: Vec<Value> = members
        .iter()
        .map(|d| {
            let i = &d.instance;
            let mut m = json!({"id": i.id, "name": i.name, "type": i.instance_type.clone().unwrap_or_else(|| "member".into()),
                               "links": links(base, project, "instances", &i.id)});
            if full {
                m["status"] = json!(super::instances::status(d, expiry));
                m["flavor"] = json!({"id": i.flavor_id, "links": links(base, project, "flavors", &i.flavor_id)});
                if let Some(s) = i.volume_size {
                    m["volume"] = json!({"size": s});
                }
                let ips = super::instances::ips(i);
                if !ips.is_empty() {
                    if i.instance_type.as_deref().unwrap_or("member") == "member" {
                        cluster_ips.extend(ips.iter().cloned());
                    }
                    m["ip"] = json!(ips);
                    if let Some(addresses) = super::instances::addresses(i) {
                        m["addresses"] = addresses;
                    }
                }
            }
            m
        })
        .collect();
    let mut o = Map::new();
    o.insert("id".into(), json!(c.id));
    o.insert("name".into(), json!(c.name));
    o.insert(
        "task".into(),
        json!({"id": task.code(), "name": task.name(), "description": task.description()}),
    );
    o.insert("created".into(), json!(api_time(c.created)));
    o.insert("updated".into(), json!(api_time(c.updated)));
    o.insert("links".into(), links(base, project, "clusters", &c.id));
    o.insert("datastore".into(), json!({"type": ds, "version": ver}));
    o.insert("instances".into(), Value::Array(instances));
    if !cluster_ips.is_empty() {
        o.insert("ip".into(), json!(cluster_ips));
    }
    o
}
