//! Instance commands: `create`, `list`, `show`, `delete`, `restart`, `reset-status`.

use anyhow::{anyhow, bail};
use clap::Args;
use serde_json::{json, Map, Value};

use super::{action_on_many, array, find, item, Context, BACKUP, FLAVOR, INSTANCE, MODULE};
use crate::client::{segment, with_query};
use crate::json::{Json, Object};
use crate::table::Order;

/// `trove create <name> <flavor> [options]`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the instance.
    #[arg(value_name = "name")]
    pub name: String,
    /// A flavor name or ID.
    #[arg(value_name = "flavor")]
    pub flavor: String,
    /// Size of the instance disk volume in GB. Required when volume support is enabled.
    #[arg(long = "size", value_name = "size", allow_negative_numbers = true)]
    pub size: Option<i64>,
    /// Volume type. Optional when volume support is enabled.
    #[arg(long = "volume_type", value_name = "volume_type")]
    pub volume_type: Option<String>,
    /// Optional list of databases.
    #[arg(long = "databases", value_name = "database", num_args = 1..)]
    pub databases: Vec<String>,
    /// Optional list of users.
    #[arg(long = "users", value_name = "user:password", num_args = 1..)]
    pub users: Vec<String>,
    /// A backup name or ID.
    #[arg(long = "backup", value_name = "backup")]
    pub backup: Option<String>,
    /// The Zone hint to give to Nova.
    #[arg(long = "availability_zone", value_name = "availability_zone")]
    pub availability_zone: Option<String>,
    /// A datastore name or ID.
    #[arg(long = "datastore", value_name = "datastore")]
    pub datastore: Option<String>,
    /// A datastore version name or ID.
    #[arg(long = "datastore_version", value_name = "datastore_version")]
    pub datastore_version: Option<String>,
    /// Create a NIC on the instance (repeatable): net-id (or port-id) and optionally
    /// v4-fixed-ip.
    #[arg(
        long = "nic",
        value_name = "net-id=<net-uuid>,v4-fixed-ip=<ip-addr>,port-id=<port-uuid>"
    )]
    pub nics: Vec<String>,
    /// ID of the configuration group to attach to the instance.
    #[arg(long = "configuration", value_name = "configuration")]
    pub configuration: Option<String>,
    /// ID or name of an existing instance to replicate from.
    #[arg(long = "replica_of", value_name = "source_instance")]
    pub replica_of: Option<String>,
    /// Number of replicas to create (defaults to 1 if replica_of specified).
    #[arg(long = "replica_count", value_name = "count")]
    pub replica_count: Option<i64>,
    /// ID or name of the module to apply. Specify multiple times to apply multiple modules.
    #[arg(long = "module", value_name = "module")]
    pub modules: Vec<String>,
    /// Locality policy to use when creating replicas.
    #[arg(long = "locality", value_name = "policy", value_parser = ["affinity", "anti-affinity"])]
    pub locality: Option<String>,
    /// Name of region in which to create the instance.
    #[arg(long = "region", value_name = "region", hide = true)]
    pub region: Option<String>,
}

/// `trove list [--limit <limit>] [--marker <ID>] [--include_clustered]`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Limit the number of results displayed.
    #[arg(long = "limit", value_name = "limit")]
    pub limit: Option<i64>,
    /// Begin displaying the results for IDs greater than the specified marker.
    #[arg(long = "marker", value_name = "ID")]
    pub marker: Option<String>,
    /// Include instances that are part of a cluster (default False).
    #[arg(long = "include_clustered", alias = "include-clustered")]
    pub include_clustered: bool,
}

/// `trove show <instance>`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
}

/// `trove delete <instance> [<instance> ...]`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// ID or name of the instance(s).
    #[arg(value_name = "instance", required = true, num_args = 1..)]
    pub instances: Vec<String>,
}

/// The columns of `trove list` (and of `module-instances`, which adds `tenant_id` for admins).
pub const LIST_FIELDS: [&str; 8] = [
    "id",
    "name",
    "datastore",
    "datastore_version",
    "status",
    "flavor_id",
    "size",
    "region",
];

/// `trove create`.
pub fn create(ctx: &mut Context<'_>, args: CreateArgs) -> anyhow::Result<()> {
    let flavor = find(&ctx.client, &FLAVOR, &args.flavor)?;
    // flavorRef goes out as the flavor's id as the API gave it (the number 15), falling back to
    // str_id for ids that are not plain integers.
    let flavor_ref = match flavor.get("id") {
        Some(Json::Null) | None => flavor.get("str_id").cloned().unwrap_or(Json::Null),
        Some(id) => id.clone(),
    };

    let mut body = Map::new();
    body.insert("name".into(), json!(args.name));
    body.insert("flavorRef".into(), Value::from(&flavor_ref));
    match args.size {
        Some(size) if size <= 0 => {
            bail!("Volume size '{size}' must be an integer and greater than 0.")
        }
        Some(size) => {
            body.insert(
                "volume".into(),
                json!({"size": size, "type": args.volume_type}),
            );
        }
        None => {}
    }
    if let Some(backup) = &args.backup {
        let backup = find(&ctx.client, &BACKUP, backup)?;
        body.insert(
            "restorePoint".into(),
            json!({"backupRef": Value::from(backup.get("id").unwrap_or(&Json::Null))}),
        );
    }
    let mut replica_count = args.replica_count;
    if let Some(source) = &args.replica_of {
        let source = find(&ctx.client, &INSTANCE, source)?;
        body.insert(
            "replica_of".into(),
            Value::from(source.get("id").unwrap_or(&Json::Null)),
        );
        replica_count = Some(replica_count.filter(|c| *c != 0).unwrap_or(1));
        if args.locality.is_some() {
            bail!("Cannot specify locality when adding replicas to existing master.");
        }
    }
    let databases: Vec<Value> = args
        .databases
        .iter()
        .map(|name| json!({"name": name}))
        .collect();
    let mut users = Vec::new();
    for user in &args.users {
        let mut parts = user.split(':');
        match (parts.next(), parts.next()) {
            (Some(name), Some(password)) => {
                users.push(json!({"name": name, "password": password, "databases": databases}))
            }
            _ => bail!("Invalid user '{user}': expected <user:password>."),
        }
    }
    let mut nics = Vec::new();
    for nic in &args.nics {
        nics.push(Value::Object(parse_nic(nic)?));
    }
    let mut modules = Vec::new();
    for module in &args.modules {
        let module = find(&ctx.client, &MODULE, module)?;
        modules.push(json!({"id": Value::from(module.get("id").unwrap_or(&Json::Null))}));
    }

    if !databases.is_empty() {
        body.insert("databases".into(), Value::Array(databases));
    }
    if !users.is_empty() {
        body.insert("users".into(), Value::Array(users));
    }
    insert_some(&mut body, "availability_zone", args.availability_zone);
    let mut datastore = Map::new();
    insert_some(&mut datastore, "type", args.datastore);
    insert_some(&mut datastore, "version", args.datastore_version);
    if !datastore.is_empty() {
        body.insert("datastore".into(), Value::Object(datastore));
    }
    if !nics.is_empty() {
        body.insert("nics".into(), Value::Array(nics));
    }
    insert_some(&mut body, "configuration", args.configuration);
    if let Some(count) = replica_count.filter(|c| *c != 0) {
        body.insert("replica_count".into(), json!(count));
    }
    if !modules.is_empty() {
        body.insert("modules".into(), Value::Array(modules));
    }
    insert_some(&mut body, "locality", args.locality);
    insert_some(&mut body, "region_name", args.region);

    let response = ctx
        .client
        .post("/instances", &json!({"instance": Value::Object(body)}))?;
    let instance = item(
        response
            .body
            .ok_or_else(|| anyhow!("Invalid response: the create call returned no body"))?,
        "instance",
    )?;
    ctx.print_dict(&instance_properties(&instance))
}

/// Inserts `value` under `key` when it is set and not empty (troveclient skips falsy options).
fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<String>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        map.insert(key.into(), Value::String(v));
    }
}

/// Parses one `--nic net-id=..,v4-fixed-ip=..,port-id=..` value into its keys; exactly one of
/// `net-id` and `port-id` must be given.
pub fn parse_nic(nic: &str) -> anyhow::Result<Map<String, Value>> {
    let invalid = || {
        anyhow!(
            "Invalid NIC argument: nic='{nic}'. Must specify either net-id or port-id but not \
             both. Please refer to help."
        )
    };
    let mut info = Map::new();
    for piece in nic.split(',') {
        let (k, v) = piece.split_once('=').ok_or_else(invalid)?;
        info.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let has = |k: &str| {
        info.get(k)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    if has("net-id") == has("port-id") {
        return Err(invalid());
    }
    Ok(info)
}

/// `trove list`.
pub fn list(ctx: &mut Context<'_>, args: ListArgs) -> anyhow::Result<()> {
    let path = with_query(
        "/instances",
        &[
            ("limit", args.limit.map(|l| l.to_string())),
            ("marker", args.marker),
            (
                "include_clustered",
                Some(py_bool(args.include_clustered).to_owned()),
            ),
        ],
    );
    let body = ctx.client.get(&path)?;
    let instances = array(&body, "instances")?.to_vec();
    print_instances(ctx, &instances, false)
}

/// Python's spelling of a boolean in a query string.
pub fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// troveclient's `_print_instances`: the instance list table, with `Tenant ID` for admins.
pub fn print_instances(
    ctx: &mut Context<'_>,
    instances: &[Json],
    with_tenant: bool,
) -> anyhow::Result<()> {
    let rows = instance_list_rows(instances);
    let mut fields = LIST_FIELDS.to_vec();
    if with_tenant {
        fields.push("tenant_id");
    }
    ctx.print_list(instances, &rows, &fields, &[], Order::First)
}

/// The display rows of an instance list: `flavor_id` = flavor id, `size` = volume size (or `-`
/// without a volume), `region` = `''` when missing, `datastore` = its type and
/// `datastore_version` = its version (when set).
pub fn instance_list_rows(instances: &[Json]) -> Vec<Json> {
    instances
        .iter()
        .map(|instance| {
            let mut row = instance.as_object().cloned().unwrap_or_default();
            let flavor_id = instance
                .get("flavor")
                .and_then(|f| f.get("id"))
                .cloned()
                .unwrap_or(Json::Null);
            row.insert("flavor_id", flavor_id);
            let size = match instance.get("volume") {
                Some(volume) => volume.get("size").cloned().unwrap_or(Json::Null),
                None => Json::from("-"),
            };
            row.insert("size", size);
            if !row.contains_key("region") {
                row.insert("region", "");
            }
            if let Some(ds) = instance.get("datastore").and_then(Json::as_object) {
                if let Some(version) = ds.get("version").filter(|v| v.is_truthy()) {
                    row.insert("datastore_version", version.clone());
                }
                row.insert("datastore", ds.get("type").cloned().unwrap_or(Json::Null));
            }
            Json::Object(row)
        })
        .collect()
}

/// `trove show`.
pub fn show(ctx: &mut Context<'_>, args: ShowArgs) -> anyhow::Result<()> {
    let instance = find(&ctx.client, &INSTANCE, &args.instance)?;
    ctx.print_dict(&instance_properties(&instance))
}

/// troveclient's `_print_instance`: the property dict of an instance, with `flavor` = flavor id,
/// `volume` = volume size (and `volume_used`), `ip` joined with `, `, `datastore` = type and
/// `datastore_version` = version, ids for `configuration` and `replica_of`, `fault` /
/// `fault_date` / `fault_details` from the fault, and `links` dropped.
pub fn instance_properties(instance: &Object) -> Object {
    let mut info = instance.clone();
    if let Some(flavor) = instance.get("flavor") {
        info.insert("flavor", flavor.get("id").cloned().unwrap_or(Json::Null));
    }
    if let Some(volume) = instance.get("volume") {
        info.insert("volume", volume.get("size").cloned().unwrap_or(Json::Null));
        if let Some(used) = volume.get("used") {
            info.insert("volume_used", used.clone());
        }
    }
    if let Some(ip) = instance.get("ip") {
        info.insert("ip", join(ip, |v| v.py_str()));
    }
    if let Some(ds) = instance.get("datastore").and_then(Json::as_object) {
        info.insert("datastore", ds.get("type").cloned().unwrap_or(Json::Null));
        info.insert(
            "datastore_version",
            ds.get("version").cloned().unwrap_or(Json::Null),
        );
    }
    if let Some(configuration) = instance.get("configuration") {
        info.insert(
            "configuration",
            configuration.get("id").cloned().unwrap_or(Json::Null),
        );
    }
    if let Some(source) = instance.get("replica_of") {
        info.insert(
            "replica_of",
            source.get("id").cloned().unwrap_or(Json::Null),
        );
    }
    if let Some(replicas) = instance.get("replicas") {
        info.insert(
            "replicas",
            join(replicas, |r| {
                r.get("id").map(Json::py_str).unwrap_or_default()
            }),
        );
    }
    if let Some(networks) = instance.get("networks") {
        info.insert(
            "networks",
            networks.get("name").cloned().unwrap_or(Json::Null),
        );
        info.insert(
            "networks_id",
            networks.get("id").cloned().unwrap_or(Json::Null),
        );
    }
    if let Some(fault) = instance.get("fault") {
        info.remove("fault");
        info.insert("fault", fault.get("message").cloned().unwrap_or(Json::Null));
        info.insert(
            "fault_date",
            fault.get("created").cloned().unwrap_or(Json::Null),
        );
        if let Some(details) = fault.get("details").filter(|d| d.is_truthy()) {
            info.insert("fault_details", details.clone());
        }
    }
    info.remove("links");
    info
}

/// Joins the items of a list with `, ` (a non-list is shown as it is).
fn join(list: &Json, show: impl Fn(&Json) -> String) -> Json {
    match list.as_array() {
        Some(items) => Json::from(items.iter().map(show).collect::<Vec<_>>().join(", ")),
        None => list.clone(),
    }
}

/// `trove delete`.
pub fn delete(ctx: &mut Context<'_>, args: DeleteArgs) -> anyhow::Result<()> {
    action_on_many(
        ctx,
        &args.instances,
        "Request to delete instance {} has been accepted.",
        "Unable to delete the specified instance(s).",
        |client, arg| {
            let instance = find(client, &INSTANCE, arg)?;
            let id = instance
                .get("id")
                .map(Json::py_str)
                .ok_or_else(|| anyhow!("Invalid response: the instance has no id"))?;
            client.delete(&format!("/instances/{}", segment(&id)))?;
            Ok(())
        },
    )
}

/// `trove restart <instance>`: `POST /instances/<id>/action` with `{"restart": {}}`.
pub fn restart(ctx: &mut Context<'_>, args: ShowArgs) -> anyhow::Result<()> {
    instance_action(ctx, &args.instance, &json!({"restart": {}}))
}

/// `trove reset-status <instance>` (troveclient's `do_reset_status`): `POST /instances/<id>/action`
/// with `{"reset_status": {}}`; prints nothing.
pub fn reset_status(ctx: &mut Context<'_>, args: ShowArgs) -> anyhow::Result<()> {
    instance_action(ctx, &args.instance, &json!({"reset_status": {}}))
}

/// Resolves `instance` and posts `body` to its action URL (troveclient's `instances._action`).
fn instance_action(ctx: &mut Context<'_>, instance: &str, body: &Value) -> anyhow::Result<()> {
    let instance = find(&ctx.client, &INSTANCE, instance)?;
    let id = instance
        .get("id")
        .map(Json::py_str)
        .ok_or_else(|| anyhow!("Invalid response: the instance has no id"))?;
    ctx.client
        .post(&format!("/instances/{}/action", segment(&id)), body)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{print_dict, print_list};

    /// The walkthrough's `trove create myinst 15 --size 1 --module mymod --datastore mysql`.
    const CREATE_TABLE: &str = "\
+-------------------------+--------------------------------------+
| Property                | Value                                |
+-------------------------+--------------------------------------+
| created                 | 2017-06-02T17:22:24                  |
| datastore               | mysql                                |
| datastore_version       | 5.6                                  |
| encrypted_rpc_messaging | True                                 |
| flavor                  | 15                                   |
| id                      | 6221b30c-8292-4378-b624-c7e9b0f8ba9e |
| name                    | myinst                               |
| region                  | RegionOne                            |
| server_id               | None                                 |
| status                  | BUILD                                |
| tenant_id               | eac1e46e5f7840e39012aff46a92073a     |
| updated                 | 2017-06-02T17:22:24                  |
| volume                  | 1                                    |
| volume_id               | None                                 |
+-------------------------+--------------------------------------+
";

    const CREATE_RESPONSE: &str = r#"{"instance": {
        "id": "6221b30c-8292-4378-b624-c7e9b0f8ba9e", "name": "myinst", "status": "BUILD",
        "links": [{"href": "https://h/v1.0/t/instances/6221b30c-8292-4378-b624-c7e9b0f8ba9e", "rel": "self"},
                  {"href": "https://h/instances/6221b30c-8292-4378-b624-c7e9b0f8ba9e", "rel": "bookmark"}],
        "flavor": {"id": "15", "links": [{"href": "https://h/v1.0/t/flavors/15", "rel": "self"}]},
        "datastore": {"type": "mysql", "version": "5.6"}, "region": "RegionOne",
        "tenant_id": "eac1e46e5f7840e39012aff46a92073a", "volume": {"size": 1},
        "created": "2017-06-02T17:22:24", "updated": "2017-06-02T17:22:24",
        "server_id": null, "volume_id": null, "encrypted_rpc_messaging": true}}"#;

    #[test]
    fn create_table_matches_the_walkthrough() {
        let body = Json::parse(CREATE_RESPONSE).expect("json");
        let instance = item(body, "instance").expect("instance");
        let props = instance_properties(&instance);
        assert_eq!(props.len(), 14);
        assert_eq!(print_dict(&props), CREATE_TABLE);
    }

    #[test]
    fn optional_instance_properties() {
        let body = Json::parse(
            r#"{"id": "i", "flavor": {"id": "15"}, "ip": ["10.0.0.2", "10.0.0.3"],
                "volume": {"size": 2, "used": 0.12},
                "fault": {"message": "boom", "created": "2017-06-02T17:22:24", "details": ""}}"#,
        )
        .expect("json");
        let props = instance_properties(body.as_object().expect("object"));
        assert_eq!(props.get("ip"), Some(&Json::from("10.0.0.2, 10.0.0.3")));
        assert_eq!(props.get("volume").map(Json::py_str).as_deref(), Some("2"));
        assert_eq!(
            props.get("volume_used").map(Json::py_str).as_deref(),
            Some("0.12")
        );
        assert_eq!(props.get("fault"), Some(&Json::from("boom")));
        assert!(props.contains_key("fault_date"));
        assert!(!props.contains_key("fault_details"));
    }

    /// The walkthrough's `trove list`.
    const LIST_TABLE: &str = "\
+--------------------------------------+----------+-----------+-------------------+--------+-----------+------+-----------+
| ID                                   | Name     | Datastore | Datastore Version | Status | Flavor ID | Size | Region    |
+--------------------------------------+----------+-----------+-------------------+--------+-----------+------+-----------+
| 6221b30c-8292-4378-b624-c7e9b0f8ba9e | myinst   | mysql     | 5.6               | ACTIVE | 15        |    1 | RegionOne |
| cdd85d94-13a0-4d90-89eb-9c05523d2ac6 | myinst_2 | redis     | 3.2.6             | ACTIVE | 15        |    1 | RegionOne |
+--------------------------------------+----------+-----------+-------------------+--------+-----------+------+-----------+
";

    #[test]
    fn list_table_matches_the_walkthrough() {
        // Given in reverse order to prove the rows are sorted by ID; the admin-only tenant_id is
        // present but not shown.
        let body = Json::parse(
            r#"{"instances": [
            {"id": "cdd85d94-13a0-4d90-89eb-9c05523d2ac6", "name": "myinst_2", "status": "ACTIVE",
             "links": [], "flavor": {"id": "15", "links": []},
             "datastore": {"type": "redis", "version": "3.2.6"}, "region": "RegionOne",
             "tenant_id": "eac1e46e5f7840e39012aff46a92073a", "volume": {"size": 1}},
            {"id": "6221b30c-8292-4378-b624-c7e9b0f8ba9e", "name": "myinst", "status": "ACTIVE",
             "links": [], "flavor": {"id": "15", "links": []},
             "datastore": {"type": "mysql", "version": "5.6"}, "region": "RegionOne",
             "tenant_id": "eac1e46e5f7840e39012aff46a92073a", "volume": {"size": 1}}]}"#,
        )
        .expect("json");
        let rows = instance_list_rows(array(&body, "instances").expect("list"));
        assert_eq!(
            print_list(&rows, &LIST_FIELDS, &[], Order::First),
            LIST_TABLE
        );
    }

    #[test]
    fn list_rows_without_volume_or_region() {
        let body = Json::parse(
            r#"[{"id": "a", "name": "n", "status": "BUILD", "flavor": {"id": "7"},
                 "datastore": {"type": "redis"}}]"#,
        )
        .expect("json");
        let rows = instance_list_rows(body.as_array().expect("array"));
        let out = print_list(&rows, &LIST_FIELDS, &[], Order::First);
        assert!(
            out.contains("| a  | n    | redis     |                   | BUILD  | 7         | -    |        |"),
            "{out}"
        );
    }

    #[test]
    fn nic_validation() {
        let ok = parse_nic("net-id=n1,v4-fixed-ip=10.0.0.5").expect("valid nic");
        assert_eq!(ok.get("net-id"), Some(&json!("n1")));
        assert_eq!(ok.get("v4-fixed-ip"), Some(&json!("10.0.0.5")));
        let both = parse_nic("net-id=n1,port-id=p1").expect_err("both ids");
        assert_eq!(
            both.to_string(),
            "Invalid NIC argument: nic='net-id=n1,port-id=p1'. Must specify either net-id or \
             port-id but not both. Please refer to help."
        );
        assert!(parse_nic("v4-fixed-ip=10.0.0.5").is_err());
        assert!(parse_nic("garbage").is_err());
    }
}
