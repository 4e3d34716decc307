//! Cluster commands: `cluster-create`, `cluster-list`, `cluster-show`, `cluster-instances`,
//! `cluster-delete`, `cluster-reset-status`, `cluster-modules`.
//!
//! The `--instance "opt=<value>[,opt=<value> ...] "` parser reproduces troveclient's
//! `_strip_option` quirks: options are found by substring, each one is cut out of the string in
//! turn (flavor, volume, volume_type, nic, availability_zone, module, type, region) and whatever
//! is left over is an error.

use anyhow::{anyhow, bail};
use clap::Args;
use serde_json::{json, Map, Value};

use super::{action_on_many, array, find, item, Context, CLUSTER, FLAVOR, MODULE};
use crate::client::{segment, with_query};
use crate::json::{Json, Object};
use crate::table::Order;

/// The metavar troveclient uses in `--instance` messages.
pub const INSTANCE_METAVAR: &str = "\"opt=<value>[,opt=<value> ...] \"";

/// `trove cluster-create <name> <datastore> <datastore_version> --instance ... [options]`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the cluster.
    #[arg(value_name = "name")]
    pub name: String,
    /// A datastore name or ID.
    #[arg(value_name = "datastore")]
    pub datastore: String,
    /// A datastore version name or ID.
    #[arg(value_name = "datastore_version")]
    pub datastore_version: String,
    /// The `--instance` values, one per member (see [`parse_instance_options`]).
    #[arg(
        long = "instance",
        value_name = "opt=<value>[,opt=<value> ...] ",
        help = "Add an instance to the cluster. Specify multiple times to create multiple \
                instances. Valid options are: flavor=<flavor_name_or_id>, \
                volume=<disk_size_in_GB>, volume_type=<type>, nic='<net-id=<net-uuid>, \
                v4-fixed-ip=<ip-addr>, port-id=<port-uuid>>', \
                availability_zone=<AZ_hint_for_Nova>, module=<module_name_or_id>, \
                type=<type_of_cluster_node>, region=<region>"
    )]
    pub instances: Vec<String>,
    /// Locality policy to use when creating cluster.
    #[arg(long = "locality", value_name = "policy", value_parser = ["affinity", "anti-affinity"])]
    pub locality: Option<String>,
    /// Add extended properties for cluster create (k=v,...).
    #[arg(
        long = "extended_properties",
        value_name = "opt=<value>[,opt=<value> ...] "
    )]
    pub extended_properties: Option<String>,
    /// ID of the configuration group to attach to the cluster.
    #[arg(long = "configuration", value_name = "configuration")]
    pub configuration: Option<String>,
}

/// `trove cluster-list [--limit <limit>] [--marker <ID>]`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Limit the number of results displayed.
    #[arg(long = "limit", value_name = "limit")]
    pub limit: Option<i64>,
    /// Begin displaying the results for IDs greater than the specified marker.
    #[arg(long = "marker", value_name = "ID")]
    pub marker: Option<String>,
}

/// A command taking one `<cluster>`.
#[derive(Debug, Args)]
pub struct ClusterArg {
    /// ID or name of the cluster.
    #[arg(value_name = "cluster")]
    pub cluster: String,
}

/// `trove cluster-delete <cluster> [<cluster> ...]`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// ID or name of the cluster(s).
    #[arg(value_name = "cluster", required = true, num_args = 1..)]
    pub clusters: Vec<String>,
}

/// Turns the names in `--instance` options into ids (an API call in the CLI, a stub in tests).
pub trait InstanceResolver {
    /// The id of a flavor given by name or id.
    fn flavor_id(&mut self, flavor: &str) -> anyhow::Result<String>;
    /// The id of a module given by name or id.
    fn module_id(&mut self, module: &str) -> anyhow::Result<String>;
}

/// Resolves through the API, as troveclient's `_find_flavor` / `_find_module`.
struct ApiResolver<'c>(&'c crate::client::Client);

impl InstanceResolver for ApiResolver<'_> {
    fn flavor_id(&mut self, flavor: &str) -> anyhow::Result<String> {
        let flavor = find(self.0, &FLAVOR, flavor)?;
        super::resource_id(&Json::Object(flavor))
            .ok_or_else(|| anyhow!("Invalid response: the flavor has no id"))
    }

    fn module_id(&mut self, module: &str) -> anyhow::Result<String> {
        let module = find(self.0, &MODULE, module)?;
        module
            .get("id")
            .map(Json::py_str)
            .ok_or_else(|| anyhow!("Invalid response: the module has no id"))
    }
}

/// A value found by [`strip_option`].
type Stripped<T> = (T, String);

fn invalid_parameter(name: &str) -> anyhow::Error {
    anyhow!(
        "Invalid '{name}' parameter. Instance argument(s) must be of the form --instance \
         {INSTANCE_METAVAR} - see help for details.."
    )
}

/// Python's `s.strip().strip(",")`.
fn strip_opts(s: &str) -> &str {
    s.trim().trim_matches(',')
}

/// troveclient's `_strip_option`: finds `name=` in `opts`, cuts its value out (up to the next
/// `,` or, for a quoted value, the next `<quote>,`) and returns every value found (in reverse
/// order of appearance, as the recursion collects them) with the rest of the string.
fn strip_all(
    opts: &str,
    name: &str,
    quotes_required: bool,
    multiple: bool,
) -> anyhow::Result<Stripped<Vec<String>>> {
    let mut values = Vec::new();
    let mut opts = strip_opts(opts).to_owned();
    if opts.contains(name) {
        let split_str = format!("{name}=");
        let parts: Vec<&str> = opts.split(split_str.as_str()).collect();
        let before = parts[0].to_owned();
        let mut after = parts
            .get(1)
            .map(|s| (*s).to_owned())
            .ok_or_else(|| invalid_parameter(name))?;
        if parts.len() > 2 {
            if !multiple {
                bail!(
                    "Option '{name}' found more than once in argument --instance \
                     {INSTANCE_METAVAR}"
                );
            }
            let rest = parts[1..].join(&split_str);
            let (inner, remaining) = strip_all(&rest, name, quotes_required, multiple)?;
            values.extend(inner);
            after = remaining;
        }
        let quote = match after.chars().next() {
            Some(q @ ('\'' | '"')) => {
                after.remove(0);
                q.to_string()
            }
            Some(_) if quotes_required => bail!(
                "Invalid '{name}' option. The value must be quoted. (Or perhaps you're missing \
                 quotes around the entire argument string)"
            ),
            Some(_) => String::new(),
            None => return Err(invalid_parameter(name)),
        };
        let split_str = format!("{quote},");
        let pieces: Vec<&str> = after.split(split_str.as_str()).collect();
        values.push(pieces[0].trim().to_owned());
        opts = format!("{before}{}", pieces[1..].join(&split_str));
    }
    Ok((values, strip_opts(&opts).to_owned()))
}

/// One option that may appear once.
fn strip_one(opts: &str, name: &str, required: bool) -> anyhow::Result<Stripped<Option<String>>> {
    let (values, rest) = strip_all(opts, name, false, false)?;
    let value = values.into_iter().next_back().filter(|v| !v.is_empty());
    if required && value.is_none() {
        return Err(missing_option(name));
    }
    Ok((value, rest))
}

/// One option that may repeat; duplicates are dropped, values in the order typed.
fn strip_many(opts: &str, name: &str, quotes: bool) -> anyhow::Result<Stripped<Vec<String>>> {
    let (values, rest) = strip_all(opts, name, quotes, true)?;
    let mut unique: Vec<String> = Vec::new();
    for value in values.into_iter().rev() {
        if !unique.contains(&value) {
            unique.push(value);
        }
    }
    Ok((unique, rest))
}

fn missing_option(name: &str) -> anyhow::Error {
    anyhow!("Missing option '{name}' for argument --instance {INSTANCE_METAVAR}")
}

/// Strips one layer of `'` and then of `"` from both ends.
fn unquote(value: &str) -> &str {
    value.trim_matches('\'').trim_matches('"')
}

/// troveclient's `_get_networks`: the `nic='...'` options of one instance.
fn strip_nics(opts: &str) -> anyhow::Result<Stripped<Vec<Map<String, Value>>>> {
    let (nic_args, rest) = strip_many(opts, "nic", true)?;
    let mut nics = Vec::new();
    for nic in &nic_args {
        let original = unquote(nic);
        let (net_id, left) = strip_one(original, "net-id", false)?;
        let (port_id, left) = strip_one(&left, "port-id", false)?;
        let (fixed_ip, left) = strip_one(&left, "v4-fixed-ip", false)?;
        if !left.is_empty() {
            bail!("Unknown args '{left}' in 'nic' option");
        }
        if net_id.is_some() == port_id.is_some() {
            bail!(
                "Invalid NIC argument: nic='{original}'. Must specify either net-id or port-id \
                 but not both. Please refer to help."
            );
        }
        let mut info = Map::new();
        if let Some(net_id) = net_id {
            info.insert("network_id".into(), Value::String(net_id));
        }
        if let Some(port_id) = port_id {
            info.insert("port-id".into(), Value::String(port_id));
        }
        if let Some(ip) = fixed_ip {
            info.insert("v4-fixed-ip".into(), Value::String(ip));
        }
        nics.push(info);
    }
    Ok((nics, rest))
}

/// troveclient's `_parse_instance_options`: the `instances` list of a cluster-create body, one
/// item per `--instance` value, in the order the options are taken out of each value.
pub fn parse_instance_options(
    options: &[String],
    resolver: &mut dyn InstanceResolver,
) -> anyhow::Result<Vec<Value>> {
    let mut instances = Vec::new();
    for opts in options {
        let mut info = Map::new();

        let (flavor, rest) = strip_one(opts, "flavor", true)?;
        let flavor = flavor.ok_or_else(|| missing_option("flavor"))?;
        info.insert("flavorRef".into(), json!(resolver.flavor_id(&flavor)?));

        let (size, rest) = strip_one(&rest, "volume", true)?;
        let (volume_type, rest) = strip_one(&rest, "volume_type", false)?;
        let mut volume = Map::new();
        volume.insert("size".into(), json!(size));
        if let Some(volume_type) = volume_type {
            volume.insert("type".into(), json!(volume_type));
        }
        info.insert("volume".into(), Value::Object(volume));

        let (nics, rest) = strip_nics(&rest)?;
        if !nics.is_empty() {
            info.insert(
                "nics".into(),
                Value::Array(nics.into_iter().map(Value::Object).collect()),
            );
        }

        let (zone, rest) = strip_one(&rest, "availability_zone", false)?;
        if let Some(zone) = zone {
            info.insert("availability_zone".into(), json!(zone));
        }

        let (modules, rest) = strip_many(&rest, "module", false)?;
        if !modules.is_empty() {
            let mut ids = Vec::new();
            for module in &modules {
                ids.push(json!({"id": resolver.module_id(module)?}));
            }
            info.insert("modules".into(), Value::Array(ids));
        }

        let (types, rest) = strip_many(&rest, "type", false)?;
        if !types.is_empty() {
            info.insert("type".into(), json!(types));
        }

        let (region, rest) = strip_one(&rest, "region", false)?;
        if let Some(region) = region {
            info.insert("region".into(), json!(region));
        }

        if !rest.is_empty() {
            bail!("Unknown option(s) '{rest}' specified for instance");
        }
        instances.push(Value::Object(info));
    }
    if instances.is_empty() {
        bail!("Missing argument(s): instance");
    }
    Ok(instances)
}

/// troveclient's `_parse_extended_properties`: `k=v,k=v` into an object.
pub fn parse_extended_properties(raw: &str) -> anyhow::Result<Map<String, Value>> {
    let mut props = Map::new();
    for pair in raw.split(',') {
        let pair = pair.trim();
        let mut parts = pair.split('=');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(v), None) => {
                props.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            _ => bail!("Invalid extended property '{pair}': expected <key>=<value>."),
        }
    }
    Ok(props)
}

/// `trove cluster-create`.
pub fn create(ctx: &mut Context<'_>, args: CreateArgs) -> anyhow::Result<()> {
    let instances = parse_instance_options(&args.instances, &mut ApiResolver(&ctx.client))?;
    let mut body = Map::new();
    body.insert("name".into(), json!(args.name));
    body.insert(
        "datastore".into(),
        json!({"type": args.datastore, "version": args.datastore_version}),
    );
    body.insert("instances".into(), Value::Array(instances));
    if let Some(locality) = args.locality {
        body.insert("locality".into(), json!(locality));
    }
    if let Some(raw) = args.extended_properties.filter(|r| !r.is_empty()) {
        body.insert(
            "extended_properties".into(),
            Value::Object(parse_extended_properties(&raw)?),
        );
    }
    if let Some(configuration) = args.configuration.filter(|c| !c.is_empty()) {
        body.insert("configuration".into(), json!(configuration));
    }
    let response = ctx
        .client
        .post("/clusters", &json!({"cluster": Value::Object(body)}))?;
    let cluster = item(
        response
            .body
            .ok_or_else(|| anyhow!("Invalid response: the create call returned no body"))?,
        "cluster",
    )?;
    ctx.print_dict(&cluster_properties(&cluster, false))
}

/// troveclient's `_print_cluster`: `datastore` = type, `datastore_version` = version,
/// `task_name` / `task_description` from the task, `instance_count` = the number of members
/// (when there are any), and `task`, `instances`, `links` dropped. With `include_all`
/// (cluster-show), `ip` is joined with `, `.
pub fn cluster_properties(cluster: &Object, include_all: bool) -> Object {
    let mut info = cluster.clone();
    let ds = cluster.get("datastore");
    info.insert(
        "datastore",
        ds.and_then(|d| d.get("type"))
            .cloned()
            .unwrap_or(Json::Null),
    );
    info.insert(
        "datastore_version",
        ds.and_then(|d| d.get("version"))
            .cloned()
            .unwrap_or(Json::Null),
    );
    let task = cluster.get("task");
    info.insert(
        "task_name",
        task.and_then(|t| t.get("name"))
            .cloned()
            .unwrap_or(Json::Null),
    );
    info.insert(
        "task_description",
        task.and_then(|t| t.get("description"))
            .cloned()
            .unwrap_or(Json::Null),
    );
    info.remove("task");
    if include_all {
        if let Some(ips) = cluster.get("ip").and_then(Json::as_array) {
            let joined: Vec<String> = ips.iter().map(Json::py_str).collect();
            info.insert("ip", joined.join(", "));
        }
    }
    if let Some(instances) = info.remove("instances") {
        if instances.is_truthy() {
            let count = instances.as_array().map_or(0, <[Json]>::len);
            info.insert("instance_count", count);
        }
    }
    info.remove("links");
    info
}

/// `trove cluster-list`.
pub fn list(ctx: &mut Context<'_>, args: ListArgs) -> anyhow::Result<()> {
    let path = with_query(
        "/clusters",
        &[
            ("limit", args.limit.map(|l| l.to_string())),
            ("marker", args.marker),
        ],
    );
    let body = ctx.client.get(&path)?;
    let clusters = array(&body, "clusters")?.to_vec();
    let rows = cluster_list_rows(&clusters);
    ctx.print_list(
        &clusters,
        &rows,
        &["id", "name", "datastore", "datastore_version", "task_name"],
        &[],
        Order::First,
    )
}

/// The display rows of `cluster-list`: datastore type and version, and the task name.
pub fn cluster_list_rows(clusters: &[Json]) -> Vec<Json> {
    clusters
        .iter()
        .map(|cluster| {
            let mut row = cluster.as_object().cloned().unwrap_or_default();
            let ds = cluster.get("datastore");
            row.insert(
                "datastore_version",
                ds.and_then(|d| d.get("version"))
                    .cloned()
                    .unwrap_or(Json::Null),
            );
            row.insert(
                "datastore",
                ds.and_then(|d| d.get("type"))
                    .cloned()
                    .unwrap_or(Json::Null),
            );
            row.insert(
                "task_name",
                cluster
                    .get("task")
                    .and_then(|t| t.get("name"))
                    .cloned()
                    .unwrap_or(Json::Null),
            );
            Json::Object(row)
        })
        .collect()
}

/// `trove cluster-show`.
pub fn show(ctx: &mut Context<'_>, args: ClusterArg) -> anyhow::Result<()> {
    let cluster = find(&ctx.client, &CLUSTER, &args.cluster)?;
    ctx.print_dict(&cluster_properties(&cluster, true))
}

/// The columns of `cluster-instances`.
pub const INSTANCE_FIELDS: [&str; 5] = ["id", "name", "flavor_id", "size", "status"];

/// The display rows of `cluster-instances`: `flavor_id` = flavor id, `size` = volume size (when
/// the member has a volume).
pub fn cluster_instance_rows(instances: &[Json]) -> Vec<Json> {
    instances
        .iter()
        .map(|instance| {
            let mut row = instance.as_object().cloned().unwrap_or_default();
            row.insert(
                "flavor_id",
                instance
                    .get("flavor")
                    .and_then(|f| f.get("id"))
                    .cloned()
                    .unwrap_or(Json::Null),
            );
            if let Some(volume) = instance.get("volume").filter(|v| v.is_truthy()) {
                row.insert("size", volume.get("size").cloned().unwrap_or(Json::Null));
            }
            Json::Object(row)
        })
        .collect()
}

/// `trove cluster-instances`.
pub fn instances(ctx: &mut Context<'_>, args: ClusterArg) -> anyhow::Result<()> {
    let cluster = Json::Object(find(&ctx.client, &CLUSTER, &args.cluster)?);
    let members = array(&cluster, "instances")?.to_vec();
    let rows = cluster_instance_rows(&members);
    ctx.print_list(&members, &rows, &INSTANCE_FIELDS, &[], Order::First)
}

/// `trove cluster-delete`.
pub fn delete(ctx: &mut Context<'_>, args: DeleteArgs) -> anyhow::Result<()> {
    action_on_many(
        ctx,
        &args.clusters,
        "Request to delete cluster {} has been accepted.",
        "Unable to delete the specified cluster(s).",
        |client, arg| {
            let cluster = find(client, &CLUSTER, arg)?;
            let id = cluster
                .get("id")
                .map(Json::py_str)
                .ok_or_else(|| anyhow!("Invalid response: the cluster has no id"))?;
            client.delete(&format!("/clusters/{}", segment(&id)))?;
            Ok(())
        },
    )
}

/// `trove cluster-reset-status <cluster>` (troveclient's `do_cluster_reset_status`):
/// `POST /clusters/<id>` with `{"reset-status": {}}`; prints nothing.
pub fn reset_status(ctx: &mut Context<'_>, args: ClusterArg) -> anyhow::Result<()> {
    let cluster = find(&ctx.client, &CLUSTER, &args.cluster)?;
    let id = cluster
        .get("id")
        .map(Json::py_str)
        .ok_or_else(|| anyhow!("Invalid response: the cluster has no id"))?;
    ctx.client.post(
        &format!("/clusters/{}", segment(&id)),
        &json!({"reset-status": {}}),
    )?;
    Ok(())
}

/// `trove cluster-modules`: the modules of every member, sorted by instance name.
pub fn modules(ctx: &mut Context<'_>, args: ClusterArg) -> anyhow::Result<()> {
    let cluster = Json::Object(find(&ctx.client, &CLUSTER, &args.cluster)?);
    let mut raw = Vec::new();
    let mut rows = Vec::new();
    for member in array(&cluster, "instances")? {
        let id = member.get("id").map(Json::py_str).unwrap_or_default();
        let name = member.get("name").cloned().unwrap_or(Json::Null);
        let body = ctx
            .client
            .get(&format!("/instances/{}/modules", segment(&id)))?;
        for module in array(&body, "modules")? {
            raw.push(module.clone());
            let mut row = module.as_object().cloned().unwrap_or_default();
            row.insert("instance_id", id.clone());
            row.insert("instance_name", name.clone());
            rows.push(Json::Object(row));
        }
    }
    ctx.print_list(
        &raw,
        &rows,
        &["instance_name", "name", "type", "md5", "created", "updated"],
        &[("name", "Module Name"), ("type", "Module Type")],
        Order::First,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{print_dict, print_list};

    /// Resolves names by table, recording the calls.
    #[derive(Default)]
    struct Stub {
        calls: Vec<String>,
    }

    impl InstanceResolver for Stub {
        fn flavor_id(&mut self, flavor: &str) -> anyhow::Result<String> {
            self.calls.push(format!("flavor {flavor}"));
            match flavor {
                "15" | "anchor.seed-15" => Ok("15".into()),
                other => bail!("No flavor with a name or ID of '{other}' exists."),
            }
        }

        fn module_id(&mut self, module: &str) -> anyhow::Result<String> {
            self.calls.push(format!("module {module}"));
            Ok(format!("id-{module}"))
        }
    }

    fn parse(opts: &[&str]) -> anyhow::Result<Vec<Value>> {
        let opts: Vec<String> = opts.iter().map(|s| (*s).to_owned()).collect();
        parse_instance_options(&opts, &mut Stub::default())
    }

    fn error(opts: &[&str]) -> String {
        format!("{:#}", parse(opts).expect_err("the options are invalid"))
    }

    #[test]
    fn walkthrough_instances() {
        let parsed = parse(&[
            "flavor=15,volume=1,module=mymod",
            "flavor=anchor.seed-15,volume=1,module=mymod",
        ])
        .expect("valid options");
        let expected = json!({"flavorRef": "15", "volume": {"size": "1"},
                              "modules": [{"id": "id-mymod"}]});
        assert_eq!(parsed, vec![expected.clone(), expected]);
    }

    #[test]
    fn every_option() {
        let parsed = parse(&[
            "flavor=15,volume=2,volume_type=ssd,nic='net-id=n1,v4-fixed-ip=10.0.0.9',\
             availability_zone=az1,module=a,module=b,module=a,type=member,region=r1",
        ])
        .expect("valid options");
        assert_eq!(
            parsed,
            vec![json!({
                "flavorRef": "15",
                "volume": {"size": "2", "type": "ssd"},
                "nics": [{"network_id": "n1", "v4-fixed-ip": "10.0.0.9"}],
                "availability_zone": "az1",
                "modules": [{"id": "id-a"}, {"id": "id-b"}],
                "type": ["member"],
                "region": "r1",
            })]
        );
    }

    #[test]
    fn option_order_does_not_matter() {
        let parsed = parse(&["volume_type=ssd,volume=1,flavor=15"]).expect("valid options");
        assert_eq!(
            parsed,
            vec![json!({"flavorRef": "15", "volume": {"size": "1", "type": "ssd"}})]
        );
    }

    #[test]
    fn missing_and_unknown_options() {
        assert_eq!(
            error(&["volume=1"]),
            "Missing option 'flavor' for argument --instance \"opt=<value>[,opt=<value> ...] \""
        );
        assert_eq!(
            error(&["flavor=15"]),
            "Missing option 'volume' for argument --instance \"opt=<value>[,opt=<value> ...] \""
        );
        assert_eq!(
            error(&["flavor=15,volume=1,color=red"]),
            "Unknown option(s) 'color=red' specified for instance"
        );
        assert_eq!(error(&[]), "Missing argument(s): instance");
        assert_eq!(
            error(&["flavor=15,volume=1,flavor=16"]),
            "Option 'flavor' found more than once in argument --instance \
             \"opt=<value>[,opt=<value> ...] \""
        );
        assert_eq!(
            error(&["flavor=15,volume=1,nic=net-id=n1"]),
            "Invalid 'nic' option. The value must be quoted. (Or perhaps you're missing quotes \
             around the entire argument string)"
        );
        assert_eq!(
            error(&["flavor=15,volume=1,nic='net-id=n1,port-id=p1'"]),
            "Invalid NIC argument: nic='net-id=n1,port-id=p1'. Must specify either net-id or \
             port-id but not both. Please refer to help."
        );
        assert_eq!(
            error(&["flavor"]),
            "Invalid 'flavor' parameter. Instance argument(s) must be of the form --instance \
             \"opt=<value>[,opt=<value> ...] \" - see help for details.."
        );
    }

    #[test]
    fn flavor_is_resolved_before_the_volume_is_checked() {
        let mut stub = Stub::default();
        let err = parse_instance_options(&["flavor=bogus".to_owned()], &mut stub)
            .expect_err("unknown flavor");
        assert_eq!(
            err.to_string(),
            "No flavor with a name or ID of 'bogus' exists."
        );
        assert_eq!(stub.calls, ["flavor bogus"]);
    }

    #[test]
    fn extended_properties() {
        let props = parse_extended_properties("num_configsvr=3, num_mongos=2").expect("valid");
        assert_eq!(
            Value::Object(props),
            json!({"num_configsvr": "3", "num_mongos": "2"})
        );
        assert!(parse_extended_properties("novalue").is_err());
    }

    /// The walkthrough's cluster-create table.
    const CREATE_TABLE: &str = "\
+-------------------+--------------------------------------+
| Property          | Value                                |
+-------------------+--------------------------------------+
| created           | 2017-06-02T18:00:17                  |
| datastore         | redis                                |
| datastore_version | 3.2.6                                |
| id                | e4d91ca6-5980-430c-94d0-bf7abc63f712 |
| instance_count    | 3                                    |
| name              | myclust                              |
| task_description  | Building the initial cluster.        |
| task_name         | BUILDING                             |
| updated           | 2017-06-02T18:00:17                  |
+-------------------+--------------------------------------+
";

    #[test]
    fn create_table_matches_the_walkthrough() {
        let body = Json::parse(
            r#"{"cluster": {"id": "e4d91ca6-5980-430c-94d0-bf7abc63f712", "name": "myclust",
            "task": {"id": 2, "name": "BUILDING", "description": "Building the initial cluster."},
            "created": "2017-06-02T18:00:17", "updated": "2017-06-02T18:00:17", "links": [],
            "datastore": {"type": "redis", "version": "3.2.6"},
            "instances": [{"id": "a", "name": "myclust-member-1", "type": "member", "links": []},
                          {"id": "b", "name": "myclust-member-2", "type": "member", "links": []},
                          {"id": "c", "name": "myclust-member-3", "type": "member", "links": []}]}}"#,
        )
        .expect("json");
        let cluster = item(body, "cluster").expect("cluster");
        assert_eq!(
            print_dict(&cluster_properties(&cluster, false)),
            CREATE_TABLE
        );
    }

    #[test]
    fn show_joins_ips_and_hides_count_without_members() {
        let cluster = Json::parse(
            r#"{"id": "c", "name": "n", "task": {"name": "NONE", "description": "d"},
                "datastore": {"type": "redis", "version": "3.2.6"}, "instances": [],
                "ip": ["10.0.0.1", "10.0.0.2"]}"#,
        )
        .expect("json");
        let cluster = cluster.as_object().expect("object");
        let shown = cluster_properties(cluster, true);
        assert_eq!(shown.get("ip"), Some(&Json::from("10.0.0.1, 10.0.0.2")));
        assert!(!shown.contains_key("instance_count"));
        let created = cluster_properties(cluster, false);
        assert_eq!(
            created.get("ip").map(Json::py_str).as_deref(),
            Some("['10.0.0.1', '10.0.0.2']")
        );
    }

    /// The walkthrough's `trove cluster-instances myclust`.
    const INSTANCES_TABLE: &str = "\
+--------------------------------------+------------------+-----------+------+--------+
| ID                                   | Name             | Flavor ID | Size | Status |
+--------------------------------------+------------------+-----------+------+--------+
| 393462d5-906d-4214-af0d-538b7f618b2d | myclust-member-2 | 15        |    1 | ACTIVE |
| a3fc5326-e1b6-456a-a8b1-08ad6bbb2278 | myclust-member-3 | 15        |    1 | ACTIVE |
| cba31d4b-d038-42c2-ab03-56c6c176b49d | myclust-member-1 | 15        |    1 | ACTIVE |
+--------------------------------------+------------------+-----------+------+--------+
";

    #[test]
    fn cluster_instances_sorted_by_id() {
        let body = Json::parse(
            r#"{"id": "e4d91ca6-5980-430c-94d0-bf7abc63f712", "instances": [
            {"id": "cba31d4b-d038-42c2-ab03-56c6c176b49d", "name": "myclust-member-1", "type": "member",
             "status": "ACTIVE", "flavor": {"id": "15", "links": []}, "volume": {"size": 1}, "links": []},
            {"id": "393462d5-906d-4214-af0d-538b7f618b2d", "name": "myclust-member-2", "type": "member",
             "status": "ACTIVE", "flavor": {"id": "15", "links": []}, "volume": {"size": 1}, "links": []},
            {"id": "a3fc5326-e1b6-456a-a8b1-08ad6bbb2278", "name": "myclust-member-3", "type": "member",
             "status": "ACTIVE", "flavor": {"id": "15", "links": []}, "volume": {"size": 1}, "links": []}]}"#,
        )
        .expect("json");
        let rows = cluster_instance_rows(array(&body, "instances").expect("list"));
        assert_eq!(
            print_list(&rows, &INSTANCE_FIELDS, &[], Order::First),
            INSTANCES_TABLE
        );
    }
}
