//! Quota and limit bodies, shaped like Trove's `extensions/mgmt/quota/views.py` and
//! `limits/views.py`.

use serde_json::{json, Map, Value};
use trove_common::db::models::quota::ResourceUsage;

/// `QuotaUsageView`: `{"quotas": [{"resource", "in_use", "reserved", "limit"}, ...]}`.
pub fn usages(rows: &[ResourceUsage]) -> Value {
    let quotas: Vec<Value> = rows
        .iter()
        .map(|u| {
            json!({"resource": u.resource, "in_use": u.in_use, "reserved": u.reserved,
                   "limit": u.limit})
        })
        .collect();
    json!({ "quotas": quotas })
}

/// `QuotaView`: `{"quotas": {"<resource>": <hard_limit>, ...}}` for the limits just set.
pub fn limits_set(limits: &[(&str, i32)]) -> Value {
    let quotas: Map<String, Value> = limits
        .iter()
        .map(|(r, l)| ((*r).to_owned(), json!(l)))
        .collect();
    json!({ "quotas": quotas })
}

/// `LimitViews`: the absolute limits first, `{"verb": "ABSOLUTE", "max_<resource>": <limit>, ..}`,
/// then one entry per rate limit.
///
/// **Deviation**: Trove appends the rate limits its `RateLimitingMiddleware` keeps in memory (200
/// requests a minute per verb by default, `http_*_rate`); trove-rs enforces no rate limits, so it
/// lists none rather than limits it does not apply.
pub fn limits(absolute: &[(&str, i32)]) -> Value {
    let mut abs = Map::new();
    abs.insert("verb".into(), json!("ABSOLUTE"));
    for (resource, limit) in absolute {
        abs.insert(format!("max_{resource}"), json!(limit));
    }
    json!({ "limits": [Value::Object(abs)] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_troves() {
        let rows = [
            ResourceUsage {
                resource: "instances",
                in_use: 5,
                reserved: 0,
                limit: 15,
            },
            ResourceUsage {
                resource: "ram",
                in_use: 5120,
                reserved: 0,
                limit: -1,
            },
        ];
        assert_eq!(
            usages(&rows),
            json!({"quotas": [
                {"resource": "instances", "in_use": 5, "reserved": 0, "limit": 15},
                {"resource": "ram", "in_use": 5120, "reserved": 0, "limit": -1}]})
        );
        assert_eq!(
            limits_set(&[("instances", 10), ("backups", 30)]),
            json!({"quotas": {"instances": 10, "backups": 30}})
        );
        assert_eq!(
            limits(&[
                ("instances", 10),
                ("ram", -1),
                ("backups", 50),
                ("volumes", 40)
            ]),
            json!({"limits": [{"verb": "ABSOLUTE", "max_instances": 10, "max_ram": -1,
                               "max_backups": 50, "max_volumes": 40}]})
        );
    }
}
