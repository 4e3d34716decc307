//! The `trove` command line: global options, one subcommand per python-troveclient shell command,
//! and the helpers the commands share (name-or-id resolution, printing).
//!
//! Each resource has a module with its clap argument structs and a `run` function per command;
//! [`dispatch`] is the one `match` that routes a parsed [`Command`] to it.

pub mod cluster;
pub mod database;
pub mod datastore;
pub mod flavor;
pub mod instance;
pub mod module;
pub mod quota;

use std::io::Write;

use anyhow::{anyhow, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::auth::{AuthArgs, Env};
use crate::client::{next_marker, segment, with_query, Client};
use crate::json::{Json, Object};
use crate::table::{self, Order};

/// Command-line interface to the Trove database service (trove-rs).
#[derive(Debug, Parser)]
#[command(name = "trove", version, infer_long_args = true)]
pub struct Cli {
    /// Connection and output options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts (before or after the command name).
///
/// Values not given here come from the environment (see [`crate::auth`]).
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Token sent as X-Auth-Token. Defaults to $OS_TOKEN or $OS_AUTH_TOKEN.
    #[arg(long = "os-auth-token", value_name = "auth-token", global = true)]
    pub os_auth_token: Option<String>,
    /// Project (tenant) id. Defaults to $OS_PROJECT_ID.
    #[arg(
        long = "os-project-id",
        alias = "os-tenant-id",
        value_name = "project-id",
        global = true
    )]
    pub os_project_id: Option<String>,
    /// The API's `/v1.0/<tenant>` base URL.
    #[arg(
        help = "The API's /v1.0/<tenant> base URL. Defaults to $TROVE_BYPASS_URL",
        long = "bypass-url",
        alias = "bypass_url",
        value_name = "bypass-url",
        global = true
    )]
    pub bypass_url: Option<String>,
    /// The service root, e.g. http://127.0.0.1:8779. Defaults to $OS_ENDPOINT or
    /// $TROVE_URL.
    #[arg(long = "os-endpoint", value_name = "endpoint", global = true)]
    pub os_endpoint: Option<String>,
    /// Output JSON instead of tables. Defaults to $OS_JSON_OUTPUT.
    #[arg(long = "json", alias = "os-json-output", global = true)]
    pub json: bool,
    /// Print the HTTP requests and responses on stderr. Defaults to $TROVECLIENT_DEBUG.
    #[arg(long = "debug", global = true)]
    pub debug: bool,
    /// Keystone v3 URL. Defaults to $OS_AUTH_URL.
    #[arg(long = "os-auth-url", value_name = "auth-url", global = true)]
    pub os_auth_url: Option<String>,
    /// Keystone user name. Defaults to $OS_USERNAME.
    #[arg(long = "os-username", global = true)]
    pub os_username: Option<String>,
    /// Keystone password. Defaults to $OS_PASSWORD.
    #[arg(long = "os-password", global = true)]
    pub os_password: Option<String>,
    /// Keystone project name. Defaults to $OS_PROJECT_NAME.
    #[arg(long = "os-project-name", alias = "os-tenant-name", global = true)]
    pub os_project_name: Option<String>,
    /// Region of the database endpoint in the catalog. Defaults to $OS_REGION_NAME.
    #[arg(long = "os-region-name", global = true)]
    pub os_region_name: Option<String>,
}

impl GlobalArgs {
    /// The connection options, for [`crate::auth::resolve`].
    pub fn auth_args(&self) -> AuthArgs {
        AuthArgs {
            token: self.os_auth_token.clone(),
            project_id: self.os_project_id.clone(),
            bypass_url: self.bypass_url.clone(),
            endpoint: self.os_endpoint.clone(),
            auth_url: self.os_auth_url.clone(),
            username: self.os_username.clone(),
            password: self.os_password.clone(),
            project_name: self.os_project_name.clone(),
            region_name: self.os_region_name.clone(),
        }
    }
}

/// Every `trove` command.
#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per run; boxing would only complicate the derive"
)]
pub enum Command {
    /// Creates a new instance.
    Create(instance::CreateArgs),
    /// Lists all the instances.
    List(instance::ListArgs),
    /// Shows details of an instance.
    Show(instance::ShowArgs),
    /// Delete specified instance(s).
    Delete(instance::DeleteArgs),
    /// Restarts an instance.
    Restart(instance::ShowArgs),
    // troveclient's docstring; its command list shows the docstring's first line only.
    #[command(
        about = "Set the task status of an instance to NONE if the instance is in BUILD",
        long_about = "Set the task status of an instance to NONE if the instance is in BUILD or \
                      ERROR state. Resetting task status of an instance in BUILD state will allow \
                      the instance to be deleted."
    )]
    ResetStatus(instance::ShowArgs),
    /// Creates a new cluster.
    ClusterCreate(cluster::CreateArgs),
    /// Lists all the clusters.
    ClusterList(cluster::ListArgs),
    /// Shows details of a cluster.
    ClusterShow(cluster::ClusterArg),
    /// Lists all instances of a cluster.
    ClusterInstances(cluster::ClusterArg),
    /// Delete specified cluster(s).
    ClusterDelete(cluster::DeleteArgs),
    /// Set the cluster task to NONE.
    ClusterResetStatus(cluster::ClusterArg),
    /// Lists all modules for each instance of a cluster.
    ClusterModules(cluster::ClusterArg),
    /// Creates a database on an instance.
    DatabaseCreate(database::DatabaseCreateArgs),
    /// Lists available databases on an instance.
    DatabaseList(database::InstanceArg),
    /// Deletes a database from an instance.
    DatabaseDelete(database::DatabaseDeleteArgs),
    /// Creates a user on an instance.
    UserCreate(database::UserCreateArgs),
    /// Lists the users for an instance.
    UserList(database::InstanceArg),
    /// Deletes a user from an instance.
    UserDelete(database::UserDeleteArgs),
    /// Enables root for an instance and resets if already exists.
    RootEnable(database::RootEnableArgs),
    /// Gets status if root was ever enabled for an instance or cluster.
    RootShow(database::RootShowArgs),
    /// Lists available datastores.
    DatastoreList,
    /// Shows details of a datastore.
    DatastoreShow(datastore::ShowArgs),
    /// Lists available versions for a datastore.
    DatastoreVersionList(datastore::VersionListArgs),
    /// Shows details of a datastore version.
    DatastoreVersionShow(datastore::VersionShowArgs),
    /// Lists available flavors.
    FlavorList(flavor::ListArgs),
    /// Shows details of a flavor.
    FlavorShow(flavor::ShowArgs),
    /// Create a module.
    ModuleCreate(module::CreateArgs),
    /// Update a module.
    ModuleUpdate(module::UpdateArgs),
    /// Lists the modules available.
    ModuleList(module::ListArgs),
    /// Shows details of a module.
    ModuleShow(module::ModuleArg),
    /// Delete a module.
    ModuleDelete(module::ModuleArg),
    /// Reapply a module.
    ModuleReapply(module::ReapplyArgs),
    /// Lists the reapply jobs of a module, newest first.
    ModuleReapplyList(module::ModuleArg),
    /// Lists the instances that have a particular module applied.
    ModuleInstances(module::InstancesArgs),
    /// Lists a count of the instances for each module md5.
    ModuleInstanceCount(module::InstanceCountArgs),
    /// Lists the modules that have been applied to an instance.
    ModuleListInstance(module::InstanceArg),
    /// Apply modules to an instance.
    ModuleApply(module::ApplyArgs),
    /// Remove a module from an instance.
    ModuleRemove(module::RemoveArgs),
    /// Query the status of the modules on an instance.
    ModuleQuery(module::InstanceArg),
    /// Retrieve module contents from an instance.
    ModuleRetrieve(module::RetrieveArgs),
    /// Show quotas for a tenant.
    QuotaShow(quota::ShowArgs),
    /// Update quotas for a tenant.
    QuotaUpdate(quota::UpdateArgs),
    /// Lists the limits for a tenant.
    LimitList,
}

/// What a command runs with: the API client, how to print, and where.
pub struct Context<'a> {
    /// The API client.
    pub client: Client,
    /// Whether the caller's roles include `admin` (admin-only columns are shown).
    pub is_admin: bool,
    /// `--json`: print JSON instead of tables.
    pub json: bool,
    /// Standard output: tables and the commands' own lines only.
    pub out: &'a mut dyn Write,
    /// Standard error: progress, per-item failures.
    pub err: &'a mut dyn Write,
    /// Whether stderr is a terminal (progress bars are drawn only then).
    pub err_is_tty: bool,
    /// The environment (for `~` expansion and the like).
    pub env: &'a dyn Env,
}

impl Context<'_> {
    /// `utils.print_list`: a table of `display` rows, or with `--json` the `raw` API objects.
    pub fn print_list(
        &mut self,
        raw: &[Json],
        display: &[Json],
        fields: &[&str],
        labels: &[(&str, &str)],
        order: Order<'_>,
    ) -> anyhow::Result<()> {
        if self.json {
            let text = Json::Array(raw.to_vec()).to_python_json();
            writeln!(self.out, "{text}")?;
        } else {
            let text = table::print_list(display, fields, labels, order);
            self.out.write_all(text.as_bytes())?;
        }
        Ok(())
    }

    /// `utils.print_dict`: a property table of `d`, or with `--json` the dict itself.
    pub fn print_dict(&mut self, d: &Object) -> anyhow::Result<()> {
        if self.json {
            let text = Json::Object(d.clone()).to_python_json();
            writeln!(self.out, "{text}")?;
        } else {
            self.out.write_all(table::print_dict(d).as_bytes())?;
        }
        Ok(())
    }

    /// Prints one line on stdout.
    pub fn println(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.out, "{line}")?;
        Ok(())
    }

    /// Prints one line on stderr.
    pub fn eprintln(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.err, "{line}")?;
        Ok(())
    }
}

/// Runs one parsed command.
pub fn dispatch(ctx: &mut Context<'_>, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => instance::create(ctx, args),
        Command::List(args) => instance::list(ctx, args),
        Command::Show(args) => instance::show(ctx, args),
        Command::Delete(args) => instance::delete(ctx, args),
        Command::Restart(args) => instance::restart(ctx, args),
        Command::ResetStatus(args) => instance::reset_status(ctx, args),
        Command::DatabaseCreate(args) => database::database_create(ctx, args),
        Command::DatabaseList(args) => database::database_list(ctx, args),
        Command::DatabaseDelete(args) => database::database_delete(ctx, args),
        Command::UserCreate(args) => database::user_create(ctx, args),
        Command::UserList(args) => database::user_list(ctx, args),
        Command::UserDelete(args) => database::user_delete(ctx, args),
        Command::RootEnable(args) => database::root_enable(ctx, args),
        Command::RootShow(args) => database::root_show(ctx, args),
        Command::ClusterCreate(args) => cluster::create(ctx, args),
        Command::ClusterList(args) => cluster::list(ctx, args),
        Command::ClusterShow(args) => cluster::show(ctx, args),
        Command::ClusterInstances(args) => cluster::instances(ctx, args),
        Command::ClusterDelete(args) => cluster::delete(ctx, args),
        Command::ClusterResetStatus(args) => cluster::reset_status(ctx, args),
        Command::ClusterModules(args) => cluster::modules(ctx, args),
        Command::DatastoreList => datastore::list(ctx),
        Command::DatastoreShow(args) => datastore::show(ctx, args),
        Command::DatastoreVersionList(args) => datastore::version_list(ctx, args),
        Command::DatastoreVersionShow(args) => datastore::version_show(ctx, args),
        Command::FlavorList(args) => flavor::list(ctx, args),
        Command::FlavorShow(args) => flavor::show(ctx, args),
        Command::ModuleCreate(args) => module::create(ctx, args),
        Command::ModuleUpdate(args) => module::update(ctx, args),
        Command::ModuleList(args) => module::list(ctx, args),
        Command::ModuleShow(args) => module::show(ctx, args),
        Command::ModuleDelete(args) => module::delete(ctx, args),
        Command::ModuleReapply(args) => module::reapply(ctx, args),
        Command::ModuleReapplyList(args) => module::reapply_list(ctx, args),
        Command::ModuleInstances(args) => module::instances(ctx, args),
        Command::ModuleInstanceCount(args) => module::instance_count(ctx, args),
        Command::ModuleListInstance(args) => module::list_instance(ctx, args),
        Command::ModuleApply(args) => module::apply(ctx, args),
        Command::ModuleRemove(args) => module::remove(ctx, args),
        Command::ModuleQuery(args) => module::query(ctx, args),
        Command::ModuleRetrieve(args) => module::retrieve(ctx, args),
        Command::QuotaShow(args) => quota::show(ctx, args),
        Command::QuotaUpdate(args) => quota::update(ctx, args),
        Command::LimitList => quota::list(ctx),
    }
}

/// A kind of resource that can be named by id or by name.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// The word used in messages (`module`, `instance`...).
    pub name: &'static str,
    /// The URL collection (`modules`).
    pub collection: &'static str,
    /// The key of one item in a show body (`module`).
    pub item_key: &'static str,
    /// The query sent when listing to match names.
    pub list_query: &'static [(&'static str, &'static str)],
}

/// Database instances; cluster members are not listed, so they can only be named by id.
pub const INSTANCE: Kind = Kind {
    name: "instance",
    collection: "instances",
    item_key: "instance",
    list_query: &[("include_clustered", "False")],
};
/// Clusters.
pub const CLUSTER: Kind = Kind {
    name: "cluster",
    collection: "clusters",
    item_key: "cluster",
    list_query: &[],
};
/// Modules.
pub const MODULE: Kind = Kind {
    name: "module",
    collection: "modules",
    item_key: "module",
    list_query: &[],
};
/// Flavors.
pub const FLAVOR: Kind = Kind {
    name: "flavor",
    collection: "flavors",
    item_key: "flavor",
    list_query: &[],
};
/// Datastores.
pub const DATASTORE: Kind = Kind {
    name: "datastore",
    collection: "datastores",
    item_key: "datastore",
    list_query: &[],
};
/// Backups (only `create --backup` refers to them).
pub const BACKUP: Kind = Kind {
    name: "backup",
    collection: "backups",
    item_key: "backup",
    list_query: &[],
};

/// Finds a resource by id or name, as troveclient's `find_resource`: `GET /<collection>/<arg>`;
/// on a 404, list the collection (every page), keep the items whose `name` is exactly `arg`, and
/// fetch the single match by id.
pub fn find(client: &Client, kind: &Kind, arg: &str) -> anyhow::Result<Object> {
    let not_found = || anyhow!("No {} with a name or ID of '{arg}' exists.", kind.name);
    if arg.is_empty() {
        return Err(not_found());
    }
    match client.get(&format!("/{}/{}", kind.collection, segment(arg))) {
        Ok(body) => return item(body, kind.item_key),
        Err(e) if e.status() == Some(404) => {}
        Err(e) => return Err(e.into()),
    }
    let matches: Vec<Json> = list_all(client, kind)?
        .into_iter()
        .filter(|item| item.get("name").and_then(Json::as_str) == Some(arg))
        .collect();
    match matches.as_slice() {
        [] => Err(not_found()),
        [only] => {
            let id = resource_id(only).ok_or_else(not_found)?;
            let body = client.get(&format!("/{}/{}", kind.collection, segment(&id)))?;
            item(body, kind.item_key)
        }
        _ => Err(anyhow!(
            "Multiple {} matches found for '{arg}', use an ID to be more specific.",
            kind.name
        )),
    }
}

/// Every item of a collection, following `next` links.
fn list_all(client: &Client, kind: &Kind) -> anyhow::Result<Vec<Json>> {
    let mut items = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut query: Vec<(&str, Option<String>)> = vec![("marker", marker.clone())];
        query.extend(
            kind.list_query
                .iter()
                .map(|(k, v)| (*k, Some((*v).to_owned()))),
        );
        let body = client.get(&with_query(&format!("/{}", kind.collection), &query))?;
        items.extend(array(&body, kind.collection)?.iter().cloned());
        match next_marker(&body) {
            Some(next) if Some(&next) != marker.as_ref() => marker = Some(next),
            _ => return Ok(items),
        }
    }
}

/// The id of an API object as a string: `id`, or `str_id` when `id` is null (flavors).
pub fn resource_id(obj: &Json) -> Option<String> {
    match obj.get("id") {
        Some(Json::Null) | None => obj.get("str_id").and_then(Json::as_str).map(str::to_owned),
        Some(id) => Some(id.py_str()),
    }
}

/// `body[key]` as an object.
pub fn item(body: Json, key: &str) -> anyhow::Result<Object> {
    match body {
        Json::Object(mut o) => match o.remove(key) {
            Some(Json::Object(inner)) => Ok(inner),
            _ => Err(anyhow!("Invalid response: no '{key}' object in the body")),
        },
        _ => Err(anyhow!("Invalid response: the body is not an object")),
    }
}

/// `body[key]` as an array.
pub fn array<'b>(body: &'b Json, key: &str) -> anyhow::Result<&'b [Json]> {
    body.get(key)
        .and_then(Json::as_array)
        .with_context(|| format!("Invalid response: no '{key}' list in the body"))
}

/// Drops `links` and normalises ids and datastores, as troveclient's `_print_object` does before
/// printing a property table: `id` falls back to `str_id` (which is removed), and a datastore
/// object becomes `datastore` = type and `datastore_version` = version.
pub fn object_properties(obj: &Object) -> Object {
    let mut info = obj.clone();
    info.remove("links");
    if info.contains_key("str_id") {
        let id = resource_id(&Json::Object(obj.clone()))
            .map(Json::from)
            .unwrap_or(Json::Null);
        info.insert("id", id);
        info.remove("str_id");
    }
    if let Some(Json::Object(ds)) = obj.get("datastore") {
        if let Some(kind) = ds.get("type") {
            info.insert("datastore", kind.clone());
            info.insert(
                "datastore_version",
                ds.get("version").cloned().unwrap_or(Json::Null),
            );
        }
    }
    info
}

/// Runs `action` on each argument as troveclient's `do_action_on_many`: prints `success` (with
/// `{}` replaced by the argument as typed) for each one that works, the error text on stderr for
/// each one that fails, and finally fails with `failure` if any did.
pub fn action_on_many(
    ctx: &mut Context<'_>,
    args: &[String],
    success: &str,
    failure: &str,
    mut action: impl FnMut(&Client, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut failed = false;
    for arg in args {
        match action(&ctx.client, arg) {
            Ok(()) => ctx.println(&success.replace("{}", arg))?,
            Err(e) => {
                failed = true;
                ctx.eprintln(&format!("{e:#}"))?;
            }
        }
    }
    if failed {
        anyhow::bail!("{failure}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_properties_normalises_flavors_and_datastores() {
        let flavor =
            Json::parse(r#"{"id": null, "str_id": "abc", "name": "m1", "ram": 512, "links": []}"#)
                .expect("json");
        let props = object_properties(flavor.as_object().expect("object"));
        let keys: Vec<&str> = props.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["id", "name", "ram"]);
        assert_eq!(props.get("id"), Some(&Json::from("abc")));

        let version = Json::parse(
            r#"{"id": "v1", "datastore": {"type": "mysql", "version": "5.6"}, "links": []}"#,
        )
        .expect("json");
        let props = object_properties(version.as_object().expect("object"));
        assert_eq!(props.get("datastore"), Some(&Json::from("mysql")));
        assert_eq!(props.get("datastore_version"), Some(&Json::from("5.6")));

        let module = Json::parse(r#"{"id": "m", "datastore": "all"}"#).expect("json");
        let props = object_properties(module.as_object().expect("object"));
        assert_eq!(props.get("datastore"), Some(&Json::from("all")));
        assert!(!props.contains_key("datastore_version"));
    }

    #[test]
    fn resource_ids() {
        let int_id = Json::parse(r#"{"id": 15, "str_id": "15"}"#).expect("json");
        assert_eq!(resource_id(&int_id).as_deref(), Some("15"));
        let str_id = Json::parse(r#"{"id": null, "str_id": "015"}"#).expect("json");
        assert_eq!(resource_id(&str_id).as_deref(), Some("015"));
    }
}
