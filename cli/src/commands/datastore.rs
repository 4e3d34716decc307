//! Datastore commands: `datastore-list`, `datastore-show`, `datastore-version-list`,
//! `datastore-version-show`.

use anyhow::bail;
use clap::Args;

use super::{array, item, object_properties, Context};
use crate::client::segment;
use crate::json::{Json, Object};
use crate::table::Order;

/// `trove datastore-show <datastore>`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// ID of the datastore.
    #[arg(value_name = "datastore")]
    pub datastore: String,
}

/// `trove datastore-version-list <datastore>`.
#[derive(Debug, Args)]
pub struct VersionListArgs {
    /// ID or name of the datastore.
    #[arg(value_name = "datastore")]
    pub datastore: String,
}

/// `trove datastore-version-show <datastore_version> [--datastore <datastore>]`.
#[derive(Debug, Args)]
pub struct VersionShowArgs {
    /// ID or name of the datastore version.
    #[arg(value_name = "datastore_version")]
    pub datastore_version: String,
    /// ID or name of the datastore. Optional if the ID of the datastore_version is provided.
    #[arg(long = "datastore", value_name = "datastore")]
    pub datastore: Option<String>,
}

/// `trove datastore-list`.
pub fn list(ctx: &mut Context<'_>) -> anyhow::Result<()> {
    let body = ctx.client.get("/datastores")?;
    let datastores = array(&body, "datastores")?.to_vec();
    ctx.print_list(&datastores, &datastores, &["id", "name"], &[], Order::First)
}

/// `trove datastore-show`: `GET /datastores/<arg>` as typed (no name lookup).
pub fn show(ctx: &mut Context<'_>, args: ShowArgs) -> anyhow::Result<()> {
    let body = ctx
        .client
        .get(&format!("/datastores/{}", segment(&args.datastore)))?;
    let datastore = item(body, "datastore")?;
    ctx.print_dict(&datastore_properties(&datastore))
}

/// troveclient's `do_datastore_show` dict: `versions (id)` holds one `<name> (<id>)` line per
/// version, `default_version` becomes the default version's *name*, and `versions` and `links`
/// are dropped.
pub fn datastore_properties(datastore: &Object) -> Object {
    let mut info = datastore.clone();
    let versions: Vec<Json> = datastore
        .get("versions")
        .and_then(Json::as_array)
        .map(<[Json]>::to_vec)
        .unwrap_or_default();
    let lines: Vec<String> = versions
        .iter()
        .map(|v| {
            format!(
                "{} ({})",
                v.get("name").map(Json::py_str).unwrap_or_default(),
                v.get("id").map(Json::py_str).unwrap_or_default()
            )
        })
        .collect();
    info.insert("versions (id)", lines.join("\n"));
    info.remove("versions");
    info.remove("links");
    if let Some(default) = datastore.get("default_version") {
        let name = versions
            .iter()
            .find(|v| v.get("id") == Some(default))
            .and_then(|v| v.get("name"))
            .cloned()
            .unwrap_or_else(|| default.clone());
        info.insert("default_version", name);
    }
    info
}

/// `trove datastore-version-list`.
pub fn version_list(ctx: &mut Context<'_>, args: VersionListArgs) -> anyhow::Result<()> {
    let body = ctx.client.get(&format!(
        "/datastores/{}/versions",
        segment(&args.datastore)
    ))?;
    let versions = array(&body, "versions")?.to_vec();
    ctx.print_list(&versions, &versions, &["id", "name"], &[], Order::First)
}

/// `trove datastore-version-show`.
pub fn version_show(ctx: &mut Context<'_>, args: VersionShowArgs) -> anyhow::Result<()> {
    let path = match &args.datastore {
        Some(datastore) => format!(
            "/datastores/{}/versions/{}",
            segment(datastore),
            segment(&args.datastore_version)
        ),
        None if is_uuid_like(&args.datastore_version) => {
            format!("/datastores/versions/{}", segment(&args.datastore_version))
        }
        None => {
            bail!("The datastore name or id is required to retrieve a datastore version by name.")
        }
    };
    let version = item(ctx.client.get(&path)?, "version")?;
    ctx.print_dict(&object_properties(&version))
}

/// troveclient's `is_uuid_like`: the canonical lower-case 8-4-4-4-12 hex form.
pub fn is_uuid_like(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| {
            g.len() == len
                && g.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::print_dict;

    #[test]
    fn datastore_show_lists_versions_by_line() {
        let body = Json::parse(
            r#"{"datastore": {"id": "8a5c", "name": "redis", "links": [],
                "default_version": "2f1e",
                "versions": [{"id": "2f1e", "name": "3.2.6", "links": []},
                             {"id": "77aa", "name": "4.0", "links": []}]}}"#,
        )
        .expect("json");
        let ds = item(body, "datastore").expect("datastore");
        assert_eq!(
            print_dict(&datastore_properties(&ds)),
            "\
+-----------------+--------------+
| Property        | Value        |
+-----------------+--------------+
| default_version | 3.2.6        |
| id              | 8a5c         |
| name            | redis        |
| versions (id)   | 3.2.6 (2f1e) |
|                 | 4.0 (77aa)   |
+-----------------+--------------+
"
        );
    }

    #[test]
    fn uuid_like() {
        assert!(is_uuid_like("2f1e8c2a-0668-4db5-a4ad-d88d0a166388"));
        assert!(!is_uuid_like("2F1E8C2A-0668-4db5-a4ad-d88d0a166388"));
        assert!(!is_uuid_like("5.6"));
    }
}
