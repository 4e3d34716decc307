//! Flavor commands: `flavor-list`, `flavor-show`.

use anyhow::bail;
use clap::Args;

use super::{array, find, object_properties, Context, FLAVOR};
use crate::client::segment;
use crate::json::Json;
use crate::table::Order;

/// `trove flavor-list [--datastore_type <datastore_type> --datastore_version_id <id>]`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Type of the datastore. For eg: mysql.
    #[arg(long = "datastore_type", value_name = "datastore_type")]
    pub datastore_type: Option<String>,
    /// ID of the datastore version.
    #[arg(long = "datastore_version_id", value_name = "datastore_version_id")]
    pub datastore_version_id: Option<String>,
}

/// `trove flavor-show <flavor>`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// ID or name of the flavor.
    #[arg(value_name = "flavor")]
    pub flavor: String,
}

/// The columns of `flavor-list` and their labels.
pub const LIST_FIELDS: [&str; 6] = ["id", "name", "ram", "vcpus", "disk", "ephemeral"];
/// Labels that differ from the generated ones.
pub const LIST_LABELS: [(&str, &str); 3] = [("ram", "RAM"), ("vcpus", "vCPUs"), ("disk", "Disk")];

/// `trove flavor-list`: sorted by RAM, as text.
pub fn list(ctx: &mut Context<'_>, args: ListArgs) -> anyhow::Result<()> {
    let ds_type = args.datastore_type.filter(|s| !s.is_empty());
    let version = args.datastore_version_id.filter(|s| !s.is_empty());
    let path = match (ds_type, version) {
        (Some(ds), Some(v)) => format!(
            "/datastores/{}/versions/{}/flavors",
            segment(&ds),
            segment(&v)
        ),
        (None, None) => "/flavors".to_owned(),
        _ => bail!("Missing argument(s): datastore_type, datastore_version_id"),
    };
    let body = ctx.client.get(&path)?;
    let flavors = array(&body, "flavors")?.to_vec();
    let rows = flavor_rows(&flavors);
    ctx.print_list(
        &flavors,
        &rows,
        &LIST_FIELDS,
        &LIST_LABELS,
        Order::By("ram"),
    )
}

/// The display rows of `flavor-list`: `id` falls back to `str_id` when it is null.
pub fn flavor_rows(flavors: &[Json]) -> Vec<Json> {
    flavors
        .iter()
        .map(|flavor| {
            let mut row = flavor.as_object().cloned().unwrap_or_default();
            let id_missing = !flavor.get("id").is_some_and(Json::is_truthy);
            if id_missing {
                if let Some(str_id) = flavor.get("str_id") {
                    row.insert("id", str_id.clone());
                }
            }
            Json::Object(row)
        })
        .collect()
}

/// `trove flavor-show`: the flavor with `links` dropped and `id` replacing `str_id`.
pub fn show(ctx: &mut Context<'_>, args: ShowArgs) -> anyhow::Result<()> {
    let flavor = find(&ctx.client, &FLAVOR, &args.flavor)?;
    ctx.print_dict(&object_properties(&flavor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::print_list;

    #[test]
    fn sorted_by_ram_as_text_with_str_id_fallback() {
        let body = Json::parse(
            r#"{"flavors": [
              {"id": 15, "str_id": "15", "name": "anchor.seed-15", "ram": 1024, "vcpus": 1,
               "disk": 10, "ephemeral": 0, "links": []},
              {"id": null, "str_id": "007", "name": "tiny", "ram": 512, "vcpus": 1,
               "disk": 1, "ephemeral": 0, "links": []},
              {"id": 2, "str_id": "2", "name": "big", "ram": 16384, "vcpus": 8,
               "disk": 80, "ephemeral": 0, "links": []}]}"#,
        )
        .expect("json");
        let rows = flavor_rows(array(&body, "flavors").expect("list"));
        assert_eq!(
            print_list(&rows, &LIST_FIELDS, &LIST_LABELS, Order::By("ram")),
            "\
+-----+----------------+-------+-------+------+-----------+
|  ID | Name           |   RAM | vCPUs | Disk | Ephemeral |
+-----+----------------+-------+-------+------+-----------+
|  15 | anchor.seed-15 |  1024 |     1 |   10 |         0 |
|   2 | big            | 16384 |     8 |   80 |         0 |
| 007 | tiny           |   512 |     1 |    1 |         0 |
+-----+----------------+-------+-------+------+-----------+
"
        );
    }
}
