//! Quota and limit commands: `quota-show`, `quota-update` (admin) and `limit-list`, printed as
//! python-troveclient's `do_quota_show`, `do_quota_update` and `do_limit_list` print them.

use anyhow::anyhow;
use clap::Args;
use serde_json::json;

use super::{array, object_properties, Context};
use crate::client::segment;
use crate::table::Order;

/// `trove quota-show <tenant_id>`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Id of tenant for which to show quotas.
    #[arg(value_name = "tenant_id")]
    pub tenant_id: String,
}

/// `trove quota-update <tenant_id> <resource> <limit>`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Id of tenant for which to update quotas.
    #[arg(value_name = "tenant_id")]
    pub tenant_id: String,
    /// Id of resource to change.
    #[arg(value_name = "resource")]
    pub resource: String,
    /// New limit to set for the named resource.
    #[arg(value_name = "limit", allow_negative_numbers = true)]
    pub limit: i64,
}

/// The columns of `quota-show`.
pub const SHOW_FIELDS: [&str; 4] = ["resource", "in_use", "reserved", "limit"];
/// The columns of `limit-list`'s rate limits.
pub const RATE_FIELDS: [&str; 4] = ["value", "verb", "remaining", "unit"];

/// `trove quota-show`: `GET /mgmt/quotas/<tenant_id>`, one row per resource, sorted by resource.
pub fn show(ctx: &mut Context<'_>, args: ShowArgs) -> anyhow::Result<()> {
    let path = format!("/mgmt/quotas/{}", segment(&args.tenant_id));
    let body = ctx.client.get(&path)?;
    let quotas = body
        .get("quotas")
        .ok_or_else(|| anyhow!("Missing key value 'quotas' in response body."))?
        .as_array()
        .ok_or_else(|| anyhow!("Invalid response: no 'quotas' list in the body"))?
        .to_vec();
    ctx.print_list(&quotas, &quotas, &SHOW_FIELDS, &[], Order::First)
}

/// `trove quota-update`: `PUT /mgmt/quotas/<tenant_id>` with `{"quotas": {<resource>: <limit>}}`;
/// prints the limits the API set as a property table.
pub fn update(ctx: &mut Context<'_>, args: UpdateArgs) -> anyhow::Result<()> {
    let path = format!("/mgmt/quotas/{}", segment(&args.tenant_id));
    let body = json!({"quotas": {args.resource.as_str(): args.limit}});
    let response = ctx.client.put(&path, &body)?;
    let body = response
        .body
        .ok_or_else(|| anyhow!("Call to {path} did not return a body."))?;
    let quotas = body
        .get("quotas")
        .ok_or_else(|| anyhow!("Missing key value 'quotas' in response body."))?
        .as_object()
        .ok_or_else(|| anyhow!("Invalid response: no 'quotas' object in the body"))?
        .clone();
    ctx.print_dict(&quotas)
}

/// `trove limit-list`: `GET /limits`; the first entry (the absolute limits) as a property table,
/// then the rate limits as a list sorted by value.
pub fn list(ctx: &mut Context<'_>) -> anyhow::Result<()> {
    let body = ctx.client.get("/limits")?;
    let mut limits = array(&body, "limits")?.to_vec();
    if limits.is_empty() {
        anyhow::bail!("Invalid response: the 'limits' list is empty");
    }
    let absolute = limits.remove(0);
    let absolute = absolute
        .as_object()
        .ok_or_else(|| anyhow!("Invalid response: the absolute limits are not an object"))?;
    ctx.print_dict(&object_properties(absolute))?;
    ctx.print_list(&limits, &limits, &RATE_FIELDS, &[], Order::First)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;
    use crate::table::{print_dict, print_list};

    #[test]
    fn quota_show_is_troveclients_table() {
        let body = Json::parse(
            r#"{"quotas": [
              {"resource": "instances", "in_use": 5, "reserved": 0, "limit": 15},
              {"resource": "ram", "in_use": 5120, "reserved": 0, "limit": -1},
              {"resource": "backups", "in_use": 0, "reserved": 0, "limit": 50},
              {"resource": "volumes", "in_use": 5, "reserved": 0, "limit": 40}]}"#,
        )
        .expect("json");
        let rows = array(&body, "quotas").expect("list");
        assert_eq!(
            print_list(rows, &SHOW_FIELDS, &[], Order::First),
            "\
+-----------+--------+----------+-------+
| Resource  | In Use | Reserved | Limit |
+-----------+--------+----------+-------+
| backups   |      0 |        0 |    50 |
| instances |      5 |        0 |    15 |
| ram       |   5120 |        0 |    -1 |
| volumes   |      5 |        0 |    40 |
+-----------+--------+----------+-------+
"
        );
    }

    #[test]
    fn limit_list_is_troveclients_two_tables() {
        let body = Json::parse(
            r#"{"limits": [{"verb": "ABSOLUTE", "max_instances": 10, "max_ram": -1,
                            "max_backups": 50, "max_volumes": 40}]}"#,
        )
        .expect("json");
        let limits = array(&body, "limits").expect("list");
        let absolute = object_properties(limits[0].as_object().expect("object"));
        assert_eq!(
            print_dict(&absolute),
            "\
+---------------+----------+
| Property      | Value    |
+---------------+----------+
| max_backups   | 50       |
| max_instances | 10       |
| max_ram       | -1       |
| max_volumes   | 40       |
| verb          | ABSOLUTE |
+---------------+----------+
"
        );
        assert_eq!(
            print_list(&limits[1..], &RATE_FIELDS, &[], Order::First),
            "\
+-------+------+-----------+------+
| Value | Verb | Remaining | Unit |
+-------+------+-----------+------+
+-------+------+-----------+------+
"
        );
    }
}
