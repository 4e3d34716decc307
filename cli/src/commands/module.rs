//! Module commands: `module-create`, `module-update`, `module-list`, `module-show`,
//! `module-delete`, `module-reapply` (with our `--wait`), `module-reapply-list`,
//! `module-instances`, `module-instance-count`, `module-list-instance`, `module-apply`,
//! `module-remove`, `module-query`, `module-retrieve`.
//!
//! Module create/update bodies carry their flags as the integers 0/1 (JSON booleans fail Trove's
//! schema) and the file as standard base64.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::Args;
use serde_json::{json, Map, Value};

use super::instance::{print_instances, py_bool};
use super::{array, find, item, object_properties, Context, DATASTORE, INSTANCE, MODULE};
use crate::client::{next_marker, segment, with_query};
use crate::json::{Json, Object};
use crate::table::Order;

/// `trove module-create <name> <type> <filename> [options]`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the module.
    #[arg(value_name = "name")]
    pub name: String,
    /// Type of the module. The type must be supported by a corresponding module plugin on the
    /// datastore it is applied to.
    #[arg(value_name = "type")]
    pub module_type: String,
    /// File containing data contents for the module.
    #[arg(value_name = "filename")]
    pub file: String,
    /// Description of the module.
    #[arg(long = "description", value_name = "description")]
    pub description: Option<String>,
    /// Name or ID of datastore this module can be applied to. If not specified, module can be
    /// applied to all datastores.
    #[arg(long = "datastore", value_name = "datastore")]
    pub datastore: Option<String>,
    /// Name or ID of datastore version this module can be applied to. If not specified, module
    /// can be applied to all versions.
    #[arg(long = "datastore_version", value_name = "version")]
    pub datastore_version: Option<String>,
    /// Automatically apply this module when creating an instance or cluster. Admin only.
    #[arg(long = "auto_apply")]
    pub auto_apply: bool,
    /// Module is valid for all tenants. Admin only.
    #[arg(long = "all_tenants")]
    pub all_tenants: bool,
    /// Hide this module from non-Admin. Admin only.
    #[arg(long = "hidden")]
    pub hidden: bool,
    /// Allow module to be updated even if it is already applied to a current instance or
    /// cluster.
    #[arg(long = "live_update")]
    pub live_update: bool,
    /// Sets a priority for applying the module. Admin only.
    #[arg(long = "priority_apply")]
    pub priority_apply: bool,
    /// Sets an order for applying the module (0-9, default 5).
    #[arg(long = "apply_order", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(0..=9))]
    pub apply_order: u8,
    /// Marks a module as 'non-admin', unless an admin-only option was specified. Admin only.
    #[arg(long = "full_access")]
    pub full_access: bool,
}

/// `trove module-update <module> [options]`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Name or ID of the module.
    #[arg(value_name = "module")]
    pub module: String,
    /// Name of the module.
    #[arg(long = "name", value_name = "name")]
    pub name: Option<String>,
    /// Type of the module.
    #[arg(long = "type", value_name = "type")]
    pub module_type: Option<String>,
    /// File containing data contents for the module.
    #[arg(long = "file", value_name = "filename")]
    pub file: Option<String>,
    /// Description of the module.
    #[arg(long = "description", value_name = "description")]
    pub description: Option<String>,
    /// Name or ID of datastore this module can be applied to.
    #[arg(long = "datastore", value_name = "datastore")]
    pub datastore: Option<String>,
    /// Module is valid for all datastores.
    #[arg(long = "all_datastores")]
    pub all_datastores: bool,
    /// Name or ID of datastore version this module can be applied to.
    #[arg(long = "datastore_version", value_name = "version")]
    pub datastore_version: Option<String>,
    /// Module is valid for all datastore versions.
    #[arg(long = "all_datastore_versions")]
    pub all_datastore_versions: bool,
    /// Automatically apply this module when creating an instance or cluster. Admin only.
    #[arg(long = "auto_apply", overrides_with = "no_auto_apply")]
    pub auto_apply: bool,
    /// Do not automatically apply this module. Admin only.
    #[arg(long = "no_auto_apply", overrides_with = "auto_apply")]
    pub no_auto_apply: bool,
    /// Module is valid for all tenants. Admin only.
    #[arg(long = "all_tenants", overrides_with = "no_all_tenants")]
    pub all_tenants: bool,
    /// Module is valid for current tenant only. Admin only.
    #[arg(long = "no_all_tenants", overrides_with = "all_tenants")]
    pub no_all_tenants: bool,
    /// Hide this module from non-admin users. Admin only.
    #[arg(long = "hidden", overrides_with = "no_hidden")]
    pub hidden: bool,
    /// Allow all users to see this module. Admin only.
    #[arg(long = "no_hidden", overrides_with = "hidden")]
    pub no_hidden: bool,
    /// Allow module to be updated or deleted even if it is already applied.
    #[arg(long = "live_update", overrides_with = "no_live_update")]
    pub live_update: bool,
    /// Restricts a module from being updated or deleted if it is already applied.
    #[arg(long = "no_live_update", overrides_with = "live_update")]
    pub no_live_update: bool,
    /// Sets a priority for applying the module. Admin only.
    #[arg(long = "priority_apply", overrides_with = "no_priority_apply")]
    pub priority_apply: bool,
    /// Removes apply priority from the module. Admin only.
    #[arg(long = "no_priority_apply", overrides_with = "priority_apply")]
    pub no_priority_apply: bool,
    /// Sets an order for applying the module (0-9).
    #[arg(long = "apply_order", value_parser = clap::value_parser!(u8).range(0..=9))]
    pub apply_order: Option<u8>,
    /// Marks a module as 'non-admin', unless an admin-only option was specified. Admin only.
    #[arg(long = "full_access", overrides_with = "no_full_access")]
    pub full_access: bool,
    /// Restricts modification access for non-admin. Admin only.
    #[arg(long = "no_full_access", overrides_with = "full_access")]
    pub no_full_access: bool,
}

/// `trove module-list [--datastore <datastore>]`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Name or ID of datastore to list modules for. Use 'all' to list modules that apply to all
    /// datastores.
    #[arg(long = "datastore", value_name = "datastore")]
    pub datastore: Option<String>,
}

/// A command taking one `<module>`.
#[derive(Debug, Args)]
pub struct ModuleArg {
    /// ID or name of the module.
    #[arg(value_name = "module")]
    pub module: String,
}

/// `trove module-reapply <module> [options]`.
#[derive(Debug, Args)]
pub struct ReapplyArgs {
    /// Name or ID of the module.
    #[arg(value_name = "module")]
    pub module: String,
    /// Reapply the module only to instances applied with the specific md5.
    #[arg(long = "md5", value_name = "md5")]
    pub md5: Option<String>,
    /// Include instances that are part of a cluster (default False).
    #[arg(long = "include_clustered")]
    pub include_clustered: bool,
    /// Number of instances to reapply the module to before sleeping.
    #[arg(
        long = "batch_size",
        value_name = "batch_size",
        allow_negative_numbers = true
    )]
    pub batch_size: Option<i64>,
    /// Time to sleep in seconds between applying batches.
    #[arg(long = "delay", value_name = "delay", allow_negative_numbers = true)]
    pub delay: Option<i64>,
    /// Force reapply even on modules already having the current MD5.
    #[arg(long = "force")]
    pub force: bool,
    /// Wait for the reapply job to finish, then print a summary line.
    #[arg(long = "wait")]
    pub wait: bool,
    /// Seconds between two polls of the job while waiting.
    #[arg(
        long = "poll_interval",
        value_name = "seconds",
        default_value_t = 1.0,
        hide = true
    )]
    pub poll_interval: f64,
    /// Give up waiting after this many seconds (default: wait until the job finishes).
    #[arg(long = "wait_timeout", value_name = "seconds", hide = true)]
    pub wait_timeout: Option<f64>,
}

/// `trove module-instances <module> [options]`.
#[derive(Debug, Args)]
pub struct InstancesArgs {
    /// ID or name of the module.
    #[arg(value_name = "module")]
    pub module: String,
    /// Include instances that are part of a cluster (default False).
    #[arg(long = "include_clustered")]
    pub include_clustered: bool,
    /// Return up to N number of the most recent results.
    #[arg(long = "limit", value_name = "limit")]
    pub limit: Option<String>,
    /// Begin displaying the results for IDs greater than the specified marker.
    #[arg(long = "marker", value_name = "ID")]
    pub marker: Option<String>,
}

/// `trove module-instance-count <module> [--include_clustered]`.
#[derive(Debug, Args)]
pub struct InstanceCountArgs {
    /// ID or name of the module.
    #[arg(value_name = "module")]
    pub module: String,
    /// Include instances that are part of a cluster (default False).
    #[arg(long = "include_clustered")]
    pub include_clustered: bool,
}

/// A command taking one `<instance>`.
#[derive(Debug, Args)]
pub struct InstanceArg {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
}

/// `trove module-apply <instance> <module> [<module> ...]`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
    /// ID or name of the module.
    #[arg(value_name = "module", required = true, num_args = 1..)]
    pub modules: Vec<String>,
}

/// `trove module-remove <instance> <module>`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
    /// ID or name of the module.
    #[arg(value_name = "module")]
    pub module: String,
}

/// `trove module-retrieve <instance> [--directory <directory>] [--prefix <filename_prefix>]`.
#[derive(Debug, Args)]
pub struct RetrieveArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
    /// Directory to write module content files in. It will be created if it does not exist.
    /// Defaults to the current directory.
    #[arg(long = "directory", value_name = "directory")]
    pub directory: Option<String>,
    /// Prefix to prepend to generated filename for each module.
    #[arg(long = "prefix", value_name = "filename_prefix")]
    pub prefix: Option<String>,
}

/// The id of a resolved object.
fn id_of(obj: &Object, kind: &str) -> anyhow::Result<String> {
    obj.get("id")
        .filter(|id| !id.is_null())
        .map(Json::py_str)
        .ok_or_else(|| anyhow!("Invalid response: the {kind} has no id"))
}

/// Reads a module file; an empty one is refused as troveclient refuses it.
pub fn read_contents(filename: &str) -> anyhow::Result<Vec<u8>> {
    let contents =
        std::fs::read(filename).with_context(|| format!("Unable to read file '{filename}'"))?;
    if contents.is_empty() {
        bail!("The file '{filename}' must contain some data");
    }
    Ok(contents)
}

fn flag(b: bool) -> Value {
    json!(i32::from(b))
}

/// The `POST /modules` body: the flags always sent as 0/1, `apply_order` as an int,
/// `full_access` only when given, the datastore as typed.
pub fn create_body(args: &CreateArgs, contents: &[u8]) -> Value {
    let mut module = Map::new();
    module.insert("name".into(), json!(args.name));
    module.insert("module_type".into(), json!(args.module_type));
    module.insert("contents".into(), json!(BASE64.encode(contents)));
    if let Some(description) = &args.description {
        module.insert("description".into(), json!(description));
    }
    if let Some(datastore) = datastore_object(&args.datastore, &args.datastore_version) {
        module.insert("datastore".into(), datastore);
    }
    module.insert("all_tenants".into(), flag(args.all_tenants));
    module.insert("auto_apply".into(), flag(args.auto_apply));
    module.insert("visible".into(), flag(!args.hidden));
    module.insert("live_update".into(), flag(args.live_update));
    module.insert("priority_apply".into(), flag(args.priority_apply));
    module.insert("apply_order".into(), json!(args.apply_order));
    if args.full_access {
        module.insert("full_access".into(), flag(true));
    }
    json!({ "module": module })
}

/// `{"type": .., "version": ..}` with the parts that were given (and not empty).
fn datastore_object(datastore: &Option<String>, version: &Option<String>) -> Option<Value> {
    let mut ds = Map::new();
    if let Some(d) = datastore.as_ref().filter(|d| !d.is_empty()) {
        ds.insert("type".into(), json!(d));
    }
    if let Some(v) = version.as_ref().filter(|v| !v.is_empty()) {
        ds.insert("version".into(), json!(v));
    }
    (!ds.is_empty()).then_some(Value::Object(ds))
}

/// A `--x` / `--no_x` pair: `Some(true)`, `Some(false)` or not given.
fn pair(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    }
}

/// The `PUT /modules/<id>` body: only the options given; booleans as 0/1, `--hidden` as
/// `visible` 0 and `--no_hidden` as `visible` 1, the `--all_*` flags as 1.
pub fn update_body(args: &UpdateArgs, contents: Option<&[u8]>) -> Value {
    let mut module = Map::new();
    if let Some(name) = &args.name {
        module.insert("name".into(), json!(name));
    }
    if let Some(module_type) = &args.module_type {
        module.insert("type".into(), json!(module_type));
    }
    if let Some(contents) = contents {
        module.insert("contents".into(), json!(BASE64.encode(contents)));
    }
    if let Some(description) = &args.description {
        module.insert("description".into(), json!(description));
    }
    if let Some(datastore) = datastore_object(&args.datastore, &args.datastore_version) {
        module.insert("datastore".into(), datastore);
    }
    if args.all_datastores {
        module.insert("all_datastores".into(), flag(true));
    }
    if args.all_datastore_versions {
        module.insert("all_datastore_versions".into(), flag(true));
    }
    let flags = [
        ("all_tenants", pair(args.all_tenants, args.no_all_tenants)),
        ("auto_apply", pair(args.auto_apply, args.no_auto_apply)),
        (
            "visible",
            pair(args.hidden, args.no_hidden).map(|hidden| !hidden),
        ),
        ("live_update", pair(args.live_update, args.no_live_update)),
        (
            "priority_apply",
            pair(args.priority_apply, args.no_priority_apply),
        ),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            module.insert(key.into(), flag(value));
        }
    }
    if let Some(order) = args.apply_order {
        module.insert("apply_order".into(), json!(order));
    }
    if let Some(full_access) = pair(args.full_access, args.no_full_access) {
        module.insert("full_access".into(), flag(full_access));
    }
    json!({ "module": module })
}

/// `trove module-create`: creates the module, then prints it as `GET /modules/<id>` returns it
/// (so with `instance_count`, as in the walkthrough's table).
pub fn create(ctx: &mut Context<'_>, args: CreateArgs) -> anyhow::Result<()> {
    let contents = read_contents(&args.file)?;
    let response = ctx
        .client
        .post("/modules", &create_body(&args, &contents))?;
    let created = item(
        response
            .body
            .ok_or_else(|| anyhow!("Invalid response: the create call returned no body"))?,
        "module",
    )?;
    let id = id_of(&created, "module")?;
    let module = item(
        ctx.client.get(&format!("/modules/{}", segment(&id)))?,
        "module",
    )?;
    ctx.print_dict(&object_properties(&module))
}

/// `trove module-update`: prints the module as the update returned it (no `instance_count`, as
/// in the walkthrough's tables).
pub fn update(ctx: &mut Context<'_>, args: UpdateArgs) -> anyhow::Result<()> {
    let module = find(&ctx.client, &MODULE, &args.module)?;
    let id = id_of(&module, "module")?;
    let contents = match &args.file {
        Some(file) => {
            Some(std::fs::read(file).with_context(|| format!("Unable to read file '{file}'"))?)
        }
        None => None,
    };
    let response = ctx.client.put(
        &format!("/modules/{}", segment(&id)),
        &update_body(&args, contents.as_deref()),
    )?;
    let updated = item(
        response
            .body
            .ok_or_else(|| anyhow!("Invalid response: the update call returned no body"))?,
        "module",
    )?;
    ctx.print_dict(&object_properties(&updated))
}

/// The columns of `module-list`; a non-admin does not see the last two.
pub const LIST_FIELDS: [&str; 11] = [
    "id",
    "name",
    "type",
    "datastore",
    "datastore_version",
    "auto_apply",
    "priority_apply",
    "apply_order",
    "is_admin",
    "tenant",
    "visible",
];
/// The labels of `module-list` that differ from the generated ones.
pub const LIST_LABELS: [(&str, &str); 4] = [
    ("datastore_version", "Version"),
    ("priority_apply", "Priority"),
    ("apply_order", "Order"),
    ("is_admin", "Admin"),
];

/// `trove module-list`.
pub fn list(ctx: &mut Context<'_>, args: ListArgs) -> anyhow::Result<()> {
    let datastore = match args.datastore.filter(|d| !d.is_empty()) {
        None => None,
        Some(d) if d.eq_ignore_ascii_case("all") => Some("all".to_owned()),
        Some(d) => Some(id_of(&find(&ctx.client, &DATASTORE, &d)?, "datastore")?),
    };
    let body = ctx
        .client
        .get(&with_query("/modules", &[("datastore", datastore)]))?;
    let modules = array(&body, "modules")?.to_vec();
    let fields = if ctx.is_admin {
        &LIST_FIELDS[..]
    } else {
        &LIST_FIELDS[..LIST_FIELDS.len() - 2]
    };
    ctx.print_list(&modules, &modules, fields, &LIST_LABELS, Order::First)
}

/// `trove module-show`.
pub fn show(ctx: &mut Context<'_>, args: ModuleArg) -> anyhow::Result<()> {
    let module = find(&ctx.client, &MODULE, &args.module)?;
    ctx.print_dict(&object_properties(&module))
}

/// `trove module-delete`: no output.
pub fn delete(ctx: &mut Context<'_>, args: ModuleArg) -> anyhow::Result<()> {
    let module = find(&ctx.client, &MODULE, &args.module)?;
    let id = id_of(&module, "module")?;
    ctx.client.delete(&format!("/modules/{}", segment(&id)))?;
    Ok(())
}

/// The `PUT /modules/<id>/instances` body: `include_clustered` and `force` always (0/1), `md5`,
/// `batch_size` and `batch_delay` when given.
pub fn reapply_body(args: &ReapplyArgs) -> Value {
    let mut reapply = Map::new();
    if let Some(md5) = args.md5.as_ref().filter(|m| !m.is_empty()) {
        reapply.insert("md5".into(), json!(md5));
    }
    reapply.insert("include_clustered".into(), flag(args.include_clustered));
    if let Some(batch_size) = args.batch_size {
        reapply.insert("batch_size".into(), json!(batch_size));
    }
    if let Some(delay) = args.delay {
        reapply.insert("batch_delay".into(), json!(delay));
    }
    reapply.insert("force".into(), flag(args.force));
    json!({ "reapply": reapply })
}

/// `trove module-reapply`: no output, unless `--wait` asks to follow the job to its end.
pub fn reapply(ctx: &mut Context<'_>, args: ReapplyArgs) -> anyhow::Result<()> {
    let module = find(&ctx.client, &MODULE, &args.module)?;
    let id = id_of(&module, "module")?;
    let jobs_path = format!("/modules/{}/reapply", segment(&id));
    // Learn the jobs that exist already, so the new one can be told apart (and so a server
    // without the reapply-jobs extension fails before anything is reapplied).
    let known: HashSet<String> = if args.wait {
        let body = ctx
            .client
            .get(&jobs_path)
            .map_err(|e| anyhow!("Cannot wait for the reapply: GET {jobs_path} failed: {e}"))?;
        array(&body, "reapply_jobs")?
            .iter()
            .filter_map(|job| job.get("id").map(Json::py_str))
            .collect()
    } else {
        HashSet::new()
    };
    let response = ctx.client.put(
        &format!("/modules/{}/instances", segment(&id)),
        &reapply_body(&args),
    )?;
    if !args.wait {
        return Ok(());
    }
    let hint = response
        .body
        .as_ref()
        .and_then(|b| b.get("reapply_job").or(Some(b)))
        .and_then(|j| j.get("id"))
        .map(Json::py_str)
        .or_else(|| {
            response
                .location
                .as_deref()
                .filter(|l| l.contains("/reapply/"))
                .and_then(|l| l.rsplit('/').next())
                .map(str::to_owned)
        });
    let poll = Duration::from_secs_f64(args.poll_interval.clamp(0.01, 3600.0));
    let limit = args
        .wait_timeout
        .filter(|t| t.is_finite() && *t > 0.0)
        .map(Duration::from_secs_f64);
    wait_for_job(ctx, &jobs_path, &known, hint, poll, limit)
}

/// Polls the module's reapply jobs until ours has finished, drawing a progress bar on a terminal
/// stderr, then prints the summary line on stdout.
fn wait_for_job(
    ctx: &mut Context<'_>,
    jobs_path: &str,
    known: &HashSet<String>,
    mut job_id: Option<String>,
    poll: Duration,
    limit: Option<Duration>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut drew_progress = false;
    loop {
        let body = ctx.client.get(jobs_path)?;
        let jobs = array(&body, "reapply_jobs")?;
        let job = match &job_id {
            Some(id) => jobs
                .iter()
                .find(|j| j.get("id").map(Json::py_str).as_deref() == Some(id.as_str())),
            // Newest first: the first job we did not know before is ours.
            None => jobs.iter().find(|j| {
                j.get("id")
                    .map(Json::py_str)
                    .is_some_and(|id| !known.contains(&id))
            }),
        };
        if let Some(job) = job {
            job_id = job.get("id").map(Json::py_str);
            if ctx.err_is_tty {
                write!(ctx.err, "\r{}", progress_line(job))?;
                ctx.err.flush()?;
                drew_progress = true;
            }
            if job_finished(job) {
                if drew_progress {
                    writeln!(ctx.err)?;
                }
                ctx.println(&summary_line(job))?;
                for line in failure_lines(job) {
                    ctx.println(&line)?;
                }
                return Ok(());
            }
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            if drew_progress {
                writeln!(ctx.err)?;
            }
            match &job_id {
                Some(id) => bail!("Timed out waiting for reapply {id} to finish."),
                None => bail!("Timed out waiting for the reapply job to start."),
            }
        }
        thread::sleep(poll);
    }
}

/// Whether a reapply job is over: it has a `finished` time, or its state is a final one.
pub fn job_finished(job: &Json) -> bool {
    if job.get("finished").is_some_and(|f| !f.is_null()) {
        return true;
    }
    let state = job
        .get("state")
        .map(Json::py_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        state.as_str(),
        "completed"
            | "complete"
            | "done"
            | "finished"
            | "failed"
            | "error"
            | "cancelled"
            | "canceled"
    )
}

fn count(job: &Json, key: &str) -> i64 {
    job.get(key).and_then(Json::as_i64).unwrap_or(0)
}

/// `Reapply <id>: <state>, <applied> applied, <skipped> skipped, <failed> failed of <total>`.
pub fn summary_line(job: &Json) -> String {
    format!(
        "Reapply {}: {}, {} applied, {} skipped, {} failed of {}",
        job.get("id").map(Json::py_str).unwrap_or_default(),
        job.get("state").map(Json::py_str).unwrap_or_default(),
        count(job, "applied"),
        count(job, "skipped"),
        count(job, "failed"),
        count(job, "total"),
    )
}

/// One line per failed instance the job lists: `  failed <instance id>: <why>`.
pub fn failure_lines(job: &Json) -> Vec<String> {
    job.get("failures")
        .and_then(Json::as_array)
        .unwrap_or_default()
        .iter()
        .map(|f| {
            format!(
                "  failed {}: {}",
                f.get("instance_id").map(Json::py_str).unwrap_or_default(),
                f.get("message").map(Json::py_str).unwrap_or_default()
            )
        })
        .collect()
}

/// The progress bar drawn on a terminal: `[#####-----] 2/4 <state>`.
pub fn progress_line(job: &Json) -> String {
    const WIDTH: i64 = 30;
    let total = count(job, "total");
    let done = count(job, "applied") + count(job, "skipped") + count(job, "failed");
    let filled = if total > 0 {
        (done.min(total) * WIDTH / total).clamp(0, WIDTH)
    } else if job_finished(job) {
        WIDTH
    } else {
        0
    };
    let filled = usize::try_from(filled).unwrap_or(0);
    let empty = usize::try_from(WIDTH).unwrap_or(0) - filled;
    format!(
        "[{}{}] {done}/{total} {}",
        "#".repeat(filled),
        "-".repeat(empty),
        job.get("state").map(Json::py_str).unwrap_or_default()
    )
}

/// The columns of `module-reapply-list`.
pub const REAPPLY_FIELDS: [&str; 8] = [
    "id", "state", "total", "applied", "skipped", "failed", "started", "finished",
];

/// `trove module-reapply-list`: the module's reapply jobs, newest first as the API lists them.
pub fn reapply_list(ctx: &mut Context<'_>, args: ModuleArg) -> anyhow::Result<()> {
    let module = find(&ctx.client, &MODULE, &args.module)?;
    let id = id_of(&module, "module")?;
    let body = ctx
        .client
        .get(&format!("/modules/{}/reapply", segment(&id)))?;
    let jobs = array(&body, "reapply_jobs")?.to_vec();
    ctx.print_list(&jobs, &jobs, &REAPPLY_FIELDS, &[], Order::AsReceived)
}

/// `trove module-instances`: every page unless `--limit` is given, with `Tenant ID` for admins.
pub fn instances(ctx: &mut Context<'_>, args: InstancesArgs) -> anyhow::Result<()> {
    let module = find(&ctx.client, &MODULE, &args.module)?;
    let base = format!("/modules/{}/instances", segment(&id_of(&module, "module")?));
    let clustered = args.include_clustered.then(|| py_bool(true).to_owned());
    let limit = args.limit.filter(|l| !l.is_empty());
    let mut body = ctx.client.get(&with_query(
        &base,
        &[
            ("limit", limit.clone()),
            ("marker", args.marker),
            ("include_clustered", clustered.clone()),
        ],
    ))?;
    let mut all = array(&body, "instances")?.to_vec();
    // troveclient drops include_clustered on the later pages, which skips the cluster members
    // the first page counted on; we keep it.
    while limit.is_none() {
        let Some(marker) = next_marker(&body) else {
            break;
        };
        body = ctx.client.get(&with_query(
            &base,
            &[
                ("marker", Some(marker)),
                ("include_clustered", clustered.clone()),
            ],
        ))?;
        let page = array(&body, "instances")?;
        if page.is_empty() {
            break;
        }
        all.extend(page.iter().cloned());
    }
    let admin = ctx.is_admin;
    print_instances(ctx, &all, admin)
}

/// The columns of `module-instance-count`.
pub const COUNT_FIELDS: [&str; 6] = [
    "module_name",
    "min_updated_date",
    "max_updated_date",
    "module_md5",
    "current",
    "instance_count",
];
/// The labels of `module-instance-count` that differ from the generated ones.
pub const COUNT_LABELS: [(&str, &str); 3] = [
    ("module_md5", "Module MD5"),
    ("instance_count", "Count"),
    ("module_id", "Module ID"),
];

/// `trove module-instance-count`.
pub fn instance_count(ctx: &mut Context<'_>, args: InstanceCountArgs) -> anyhow::Result<()> {
    let module = find(&ctx.client, &MODULE, &args.module)?;
    let path = with_query(
        &format!("/modules/{}/instances", segment(&id_of(&module, "module")?)),
        &[
            (
                "include_clustered",
                args.include_clustered.then(|| py_bool(true).to_owned()),
            ),
            ("count_only", Some(py_bool(true).to_owned())),
        ],
    );
    let body = ctx.client.get(&path)?;
    let rows = array(&body, "instances")?.to_vec();
    ctx.print_list(&rows, &rows, &COUNT_FIELDS, &COUNT_LABELS, Order::First)
}

/// The columns of `module-list-instance`.
pub const LIST_INSTANCE_FIELDS: [&str; 6] = ["id", "name", "type", "md5", "created", "updated"];

/// `trove module-list-instance`.
pub fn list_instance(ctx: &mut Context<'_>, args: InstanceArg) -> anyhow::Result<()> {
    let instance = find(&ctx.client, &INSTANCE, &args.instance)?;
    let body = ctx.client.get(&format!(
        "/instances/{}/modules",
        segment(&id_of(&instance, "instance")?)
    ))?;
    let modules = array(&body, "modules")?.to_vec();
    ctx.print_list(&modules, &modules, &LIST_INSTANCE_FIELDS, &[], Order::First)
}

/// The columns of `module-apply`.
pub const APPLY_FIELDS: [&str; 6] = [
    "name",
    "type",
    "datastore",
    "datastore_version",
    "status",
    "message",
];
/// The columns of `module-query`.
pub const QUERY_FIELDS: [&str; 8] = [
    "name",
    "type",
    "datastore",
    "datastore_version",
    "status",
    "message",
    "created",
    "updated",
];
/// `Version` = datastore_version in the apply and query tables.
pub const VERSION_LABEL: [(&str, &str); 1] = [("datastore_version", "Version")];

/// `trove module-apply`.
pub fn apply(ctx: &mut Context<'_>, args: ApplyArgs) -> anyhow::Result<()> {
    let instance = find(&ctx.client, &INSTANCE, &args.instance)?;
    let mut ids = Vec::new();
    for module in &args.modules {
        let module = find(&ctx.client, &MODULE, module)?;
        ids.push(json!({"id": id_of(&module, "module")?}));
    }
    let response = ctx.client.post(
        &format!(
            "/instances/{}/modules",
            segment(&id_of(&instance, "instance")?)
        ),
        &json!({ "modules": ids }),
    )?;
    let body = response
        .body
        .ok_or_else(|| anyhow!("Invalid response: the apply call returned no body"))?;
    let results = array(&body, "modules")?.to_vec();
    ctx.print_list(
        &results,
        &results,
        &APPLY_FIELDS,
        &VERSION_LABEL,
        Order::First,
    )
}

/// `trove module-remove`: no output.
pub fn remove(ctx: &mut Context<'_>, args: RemoveArgs) -> anyhow::Result<()> {
    let instance = find(&ctx.client, &INSTANCE, &args.instance)?;
    let module = find(&ctx.client, &MODULE, &args.module)?;
    ctx.client.delete(&format!(
        "/instances/{}/modules/{}",
        segment(&id_of(&instance, "instance")?),
        segment(&id_of(&module, "module")?)
    ))?;
    Ok(())
}

/// `trove module-query`: what the guest reports, dates as the guest wrote them.
pub fn query(ctx: &mut Context<'_>, args: InstanceArg) -> anyhow::Result<()> {
    let instance = find(&ctx.client, &INSTANCE, &args.instance)?;
    let body = ctx.client.get(&format!(
        "/instances/{}/modules?from_guest=True",
        segment(&id_of(&instance, "instance")?)
    ))?;
    let results = array(&body, "modules")?.to_vec();
    ctx.print_list(
        &results,
        &results,
        &QUERY_FIELDS,
        &VERSION_LABEL,
        Order::First,
    )
}

/// The file a retrieved module is written to: `<prefix>_<name>_<datastore>_<version>.dat` in
/// `directory` (`.` by default), joined as Python's `os.path.join` and with `~` expanded.
pub fn retrieve_path(
    directory: Option<&str>,
    prefix: Option<&str>,
    module: &Json,
    home: Option<&str>,
) -> String {
    let mut prefix = prefix.unwrap_or("").to_owned();
    if !prefix.is_empty() && !prefix.ends_with('_') {
        prefix.push('_');
    }
    let part = |key: &str| module.get(key).map(Json::py_str).unwrap_or_default();
    let filename = format!(
        "{prefix}{}_{}_{}.dat",
        part("name"),
        part("datastore"),
        part("datastore_version")
    );
    let directory = directory.filter(|d| !d.is_empty()).unwrap_or(".");
    let joined = if filename.starts_with('/') {
        filename
    } else if directory.ends_with('/') {
        format!("{directory}{filename}")
    } else {
        format!("{directory}/{filename}")
    };
    expand_user(&joined, home)
}

/// Python's `os.path.expanduser` for `~` and `~/...` (with `$HOME`).
fn expand_user(path: &str, home: Option<&str>) -> String {
    match (path.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", home.trim_end_matches('/'))
        }
        _ => path.to_owned(),
    }
}

/// `trove module-retrieve`: writes each module's contents and prints where.
pub fn retrieve(ctx: &mut Context<'_>, args: RetrieveArgs) -> anyhow::Result<()> {
    let instance = find(&ctx.client, &INSTANCE, &args.instance)?;
    let home = ctx.env.var("HOME");
    if let Some(directory) = args.directory.as_deref().filter(|d| !d.is_empty()) {
        let directory = expand_user(directory, home.as_deref());
        std::fs::create_dir_all(&directory)
            .with_context(|| format!("Unable to create directory '{directory}'"))?;
    }
    let body = ctx.client.get(&format!(
        "/instances/{}/modules?from_guest=True&include_contents=True",
        segment(&id_of(&instance, "instance")?)
    ))?;
    // Keyed by module name like troveclient's dict: a later module of the same name replaces
    // the file shown for it, in the place of the first.
    let mut saved: Vec<(String, String)> = Vec::new();
    for module in array(&body, "modules")? {
        let name = module.get("name").map(Json::py_str).unwrap_or_default();
        let path = retrieve_path(
            args.directory.as_deref(),
            args.prefix.as_deref(),
            module,
            home.as_deref(),
        );
        let encoded = module
            .get("contents")
            .and_then(Json::as_str)
            .ok_or_else(|| anyhow!("The guest returned no contents for module '{name}'"))?;
        let contents = BASE64
            .decode(encoded.trim())
            .with_context(|| format!("The contents of module '{name}' are not valid base64"))?;
        std::fs::write(Path::new(&path), contents)
            .with_context(|| format!("Unable to write '{}'", PathBuf::from(&path).display()))?;
        match saved.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = path,
            None => saved.push((name, path)),
        }
    }
    for (name, path) in saved {
        ctx.println(&format!("Module contents for '{name}' written to '{path}'"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::instance::{instance_list_rows, LIST_FIELDS as INSTANCE_FIELDS};
    use crate::table::{print_dict, print_list};
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }

    fn parse<T: clap::Args>(argv: &[&str]) -> T {
        let argv = std::iter::once("test").chain(argv.iter().copied());
        Wrap::<T>::try_parse_from(argv)
            .expect("arguments parse")
            .args
    }

    const MODULE_SHOW: &str = r#"{"module": {"id": "0065a8ed-0668-4db5-a4ad-d88d0a166388",
        "name": "mymod", "type": "ping", "description": null,
        "tenant_id": "eac1e46e5f7840e39012aff46a92073a",
        "tenant": "eac1e46e5f7840e39012aff46a92073a", "datastore_id": null, "datastore": "all",
        "datastore_version_id": null, "datastore_version": "all", "auto_apply": false,
        "priority_apply": false, "apply_order": 5, "is_admin": true, "visible": true,
        "live_update": true, "md5": "7f700cc7b99606615f8b51946f6d3228",
        "created": "2017-06-02T17:06:21", "updated": "2017-06-02T17:06:21",
        "instance_count": 2}}"#;

    /// The walkthrough's module-create table (the show layout, with instance_count).
    const CREATE_TABLE: &str = "\
+----------------------+--------------------------------------+
| Property             | Value                                |
+----------------------+--------------------------------------+
| apply_order          | 5                                    |
| auto_apply           | False                                |
| created              | 2017-06-02T17:06:21                  |
| datastore            | all                                  |
| datastore_id         | None                                 |
| datastore_version    | all                                  |
| datastore_version_id | None                                 |
| description          | None                                 |
| id                   | 0065a8ed-0668-4db5-a4ad-d88d0a166388 |
| instance_count       | 2                                    |
| is_admin             | True                                 |
| live_update          | True                                 |
| md5                  | 7f700cc7b99606615f8b51946f6d3228     |
| name                 | mymod                                |
| priority_apply       | False                                |
| tenant               | eac1e46e5f7840e39012aff46a92073a     |
| tenant_id            | eac1e46e5f7840e39012aff46a92073a     |
| type                 | ping                                 |
| updated              | 2017-06-02T17:06:21                  |
| visible              | True                                 |
+----------------------+--------------------------------------+
";

    #[test]
    fn create_table_matches_the_walkthrough() {
        let module = item(Json::parse(MODULE_SHOW).expect("json"), "module").expect("module");
        assert_eq!(print_dict(&object_properties(&module)), CREATE_TABLE);
    }

    /// The walkthrough's second module-update table (no instance_count).
    const UPDATE_TABLE: &str = "\
+----------------------+--------------------------------------+
| Property             | Value                                |
+----------------------+--------------------------------------+
| apply_order          | 5                                    |
| auto_apply           | False                                |
| created              | 2017-06-02T17:06:21                  |
| datastore            | all                                  |
| datastore_id         | None                                 |
| datastore_version    | all                                  |
| datastore_version_id | None                                 |
| description          | None                                 |
| id                   | 0065a8ed-0668-4db5-a4ad-d88d0a166388 |
| is_admin             | True                                 |
| live_update          | True                                 |
| md5                  | 869744bdd18e306a96c145df562065ab     |
| name                 | mymod                                |
| priority_apply       | False                                |
| tenant               | eac1e46e5f7840e39012aff46a92073a     |
| tenant_id            | eac1e46e5f7840e39012aff46a92073a     |
| type                 | ping                                 |
| updated              | 2017-06-02T18:06:53                  |
| visible              | True                                 |
+----------------------+--------------------------------------+
";

    #[test]
    fn update_table_matches_the_walkthrough() {
        let text = r#"{"module": {"id": "0065a8ed-0668-4db5-a4ad-d88d0a166388",
            "name": "mymod", "type": "ping", "description": null,
            "tenant_id": "eac1e46e5f7840e39012aff46a92073a",
            "tenant": "eac1e46e5f7840e39012aff46a92073a", "datastore_id": null,
            "datastore": "all", "datastore_version_id": null, "datastore_version": "all",
            "auto_apply": false, "priority_apply": false, "apply_order": 5, "is_admin": true,
            "visible": true, "live_update": true, "md5": "869744bdd18e306a96c145df562065ab",
            "created": "2017-06-02T17:06:21", "updated": "2017-06-02T18:06:53"}}"#;
        let module = item(Json::parse(text).expect("json"), "module").expect("module");
        assert_eq!(print_dict(&object_properties(&module)), UPDATE_TABLE);
    }

    /// The walkthrough's third `module-instance-count mymod --include_clustered`.
    const COUNT_TABLE: &str = "\
+-------------+---------------------+---------------------+----------------------------------+---------+-------+
| Module Name | Min Updated Date    | Max Updated Date    | Module MD5                       | Current | Count |
+-------------+---------------------+---------------------+----------------------------------+---------+-------+
| mymod       | 2017-06-02T17:22:25 | 2017-06-02T17:22:25 | 7f700cc7b99606615f8b51946f6d3228 |   False |     1 |
| mymod       | 2017-06-02T18:00:18 | 2017-06-02T18:00:18 | ba7c204979c8de54be6efb70a17d40b9 |   False |     2 |
| mymod       | 2017-06-02T18:18:37 | 2017-06-02T18:18:37 | 869744bdd18e306a96c145df562065ab |    True |     1 |
+-------------+---------------------+---------------------+----------------------------------+---------+-------+
";

    #[test]
    fn instance_count_matches_the_walkthrough() {
        // Deliberately out of order: the table is sorted by name, then by the later columns.
        let body = Json::parse(
            r#"{"instances": [
            {"module_name": "mymod", "module_id": "0065a8ed-0668-4db5-a4ad-d88d0a166388",
             "module_md5": "869744bdd18e306a96c145df562065ab", "instance_count": 1, "current": true,
             "min_updated_date": "2017-06-02T18:18:37", "max_updated_date": "2017-06-02T18:18:37"},
            {"module_name": "mymod", "module_id": "0065a8ed-0668-4db5-a4ad-d88d0a166388",
             "module_md5": "7f700cc7b99606615f8b51946f6d3228", "instance_count": 1, "current": false,
             "min_updated_date": "2017-06-02T17:22:25", "max_updated_date": "2017-06-02T17:22:25"},
            {"module_name": "mymod", "module_id": "0065a8ed-0668-4db5-a4ad-d88d0a166388",
             "module_md5": "ba7c204979c8de54be6efb70a17d40b9", "instance_count": 2, "current": false,
             "min_updated_date": "2017-06-02T18:00:18", "max_updated_date": "2017-06-02T18:00:18"}]}"#,
        )
        .expect("json");
        let rows = array(&body, "instances").expect("list");
        assert_eq!(
            print_list(rows, &COUNT_FIELDS, &COUNT_LABELS, Order::First),
            COUNT_TABLE
        );
    }

    /// The walkthrough's `trove module-query myinst`.
    const QUERY_TABLE: &str = "\
+-------+------+-----------+---------+--------+-----------+------------------------+------------------------+
| Name  | Type | Datastore | Version | Status | Message   | Created                | Updated                |
+-------+------+-----------+---------+--------+-----------+------------------------+------------------------+
| mymod | ping | all       | all     | OK     | Module.V1 | 2017-06-02 17:23:40.50 | 2017-06-02 17:23:40.50 |
+-------+------+-----------+---------+--------+-----------+------------------------+------------------------+
";

    const GUEST_RESULT: &str = r#"{"modules": [{"id": "0065a8ed-0668-4db5-a4ad-d88d0a166388",
        "name": "mymod", "type": "ping", "datastore": "all", "datastore_version": "all",
        "tenant": "eac1e46e5f7840e39012aff46a92073a", "md5": "7f700cc7b99606615f8b51946f6d3228",
        "status": "OK", "message": "Module.V1", "created": "2017-06-02 17:23:40.50",
        "updated": "2017-06-02 17:23:40.50", "removed": null, "auto_apply": false,
        "visible": true, "is_admin": true, "contents": null}]}"#;

    #[test]
    fn query_matches_the_walkthrough() {
        let body = Json::parse(GUEST_RESULT).expect("json");
        let rows = array(&body, "modules").expect("list");
        assert_eq!(
            print_list(rows, &QUERY_FIELDS, &VERSION_LABEL, Order::First),
            QUERY_TABLE
        );
    }

    #[test]
    fn apply_matches_the_walkthrough() {
        let body = Json::parse(&GUEST_RESULT.replace("Module.V1", "Module.V3")).expect("json");
        let rows = array(&body, "modules").expect("list");
        assert_eq!(
            print_list(rows, &APPLY_FIELDS, &VERSION_LABEL, Order::First),
            "\
+-------+------+-----------+---------+--------+-----------+
| Name  | Type | Datastore | Version | Status | Message   |
+-------+------+-----------+---------+--------+-----------+
| mymod | ping | all       | all     | OK     | Module.V3 |
+-------+------+-----------+---------+--------+-----------+
"
        );
    }

    /// The walkthrough's `trove module-instances mymod` (admin: with Tenant ID).
    const INSTANCES_TABLE: &str = "\
+--------------------------------------+--------+-----------+-------------------+--------+-----------+------+-----------+----------------------------------+
| ID                                   | Name   | Datastore | Datastore Version | Status | Flavor ID | Size | Region    | Tenant ID                        |
+--------------------------------------+--------+-----------+-------------------+--------+-----------+------+-----------+----------------------------------+
| 6221b30c-8292-4378-b624-c7e9b0f8ba9e | myinst | mysql     | 5.6               | ACTIVE | 15        |    1 | RegionOne | eac1e46e5f7840e39012aff46a92073a |
+--------------------------------------+--------+-----------+-------------------+--------+-----------+------+-----------+----------------------------------+
";

    #[test]
    fn module_instances_match_the_walkthrough() {
        let body = Json::parse(
            r#"{"instances": [{"id": "6221b30c-8292-4378-b624-c7e9b0f8ba9e", "name": "myinst",
            "status": "ACTIVE", "links": [], "flavor": {"id": "15", "links": []},
            "datastore": {"type": "mysql", "version": "5.6"}, "region": "RegionOne",
            "tenant_id": "eac1e46e5f7840e39012aff46a92073a", "volume": {"size": 1}}]}"#,
        )
        .expect("json");
        let rows = instance_list_rows(array(&body, "instances").expect("list"));
        let mut fields = INSTANCE_FIELDS.to_vec();
        fields.push("tenant_id");
        assert_eq!(
            print_list(&rows, &fields, &[], Order::First),
            INSTANCES_TABLE
        );
    }

    #[test]
    fn module_list_admin_columns() {
        let body = Json::parse(
            &MODULE_SHOW
                .replace("{\"module\": {", "{\"modules\": [{")
                .replace("}}", "}]}"),
        )
        .expect("json");
        let rows = array(&body, "modules").expect("list");
        let out = print_list(rows, &LIST_FIELDS, &LIST_LABELS, Order::First);
        let header = "| ID                                   | Name  | Type | Datastore | Version | Auto Apply | Priority | Order | Admin | Tenant                           | Visible |";
        let row = "| 0065a8ed-0668-4db5-a4ad-d88d0a166388 | mymod | ping | all       | all     |      False |    False |     5 |  True | eac1e46e5f7840e39012aff46a92073a |    True |";
        assert_eq!(out.lines().nth(1), Some(header));
        assert_eq!(out.lines().nth(3), Some(row));
    }

    #[test]
    fn create_body_sends_integer_flags() {
        let args: CreateArgs = parse(&["mymod", "ping", "ping1.dat", "--live_update"]);
        let body = create_body(&args, b"message=Module.V1\n");
        assert_eq!(
            body,
            json!({"module": {
                "name": "mymod", "module_type": "ping",
                "contents": "bWVzc2FnZT1Nb2R1bGUuVjEK",
                "all_tenants": 0, "auto_apply": 0, "visible": 1, "live_update": 1,
                "priority_apply": 0, "apply_order": 5}})
        );
        let args: CreateArgs = parse(&[
            "m",
            "ping",
            "f",
            "--hidden",
            "--full_access",
            "--apply_order",
            "9",
            "--datastore",
            "mysql",
            "--datastore_version",
            "5.6",
            "--description",
            "d",
        ]);
        let body = create_body(&args, b"x");
        assert_eq!(body["module"]["visible"], json!(0));
        assert_eq!(body["module"]["full_access"], json!(1));
        assert_eq!(body["module"]["apply_order"], json!(9));
        assert_eq!(
            body["module"]["datastore"],
            json!({"type": "mysql", "version": "5.6"})
        );
        assert_eq!(body["module"]["description"], json!("d"));
    }

    #[test]
    fn apply_order_is_bounded() {
        let argv = ["test", "m", "ping", "f", "--apply_order", "10"];
        assert!(Wrap::<CreateArgs>::try_parse_from(argv).is_err());
    }

    #[test]
    fn update_body_sends_only_given_options() {
        let args: UpdateArgs = parse(&["mymod"]);
        assert_eq!(
            update_body(&args, Some(b"abc")),
            json!({"module": {"contents": "YWJj"}})
        );

        let args: UpdateArgs = parse(&[
            "mymod",
            "--hidden",
            "--no_hidden",
            "--no_auto_apply",
            "--all_datastores",
            "--type",
            "ping",
            "--no_full_access",
            "--apply_order",
            "0",
        ]);
        assert_eq!(
            update_body(&args, None),
            json!({"module": {"visible": 1, "auto_apply": 0, "all_datastores": 1,
                              "type": "ping", "full_access": 0, "apply_order": 0}})
        );
        let args: UpdateArgs = parse(&["mymod", "--no_hidden", "--hidden", "--live_update"]);
        assert_eq!(
            update_body(&args, None),
            json!({"module": {"visible": 0, "live_update": 1}})
        );
    }

    #[test]
    fn reapply_bodies_of_the_walkthrough() {
        let args: ReapplyArgs = parse(&[
            "mymod",
            "--md5=869744bdd18e306a96c145df562065ab",
            "--include_clustered",
        ]);
        assert_eq!(
            reapply_body(&args),
            json!({"reapply": {"md5": "869744bdd18e306a96c145df562065ab",
                               "include_clustered": 1, "force": 0}})
        );
        let args: ReapplyArgs = parse(&[
            "mymod",
            "--include_clustered",
            "--batch_size=1",
            "--delay=3",
        ]);
        assert_eq!(
            reapply_body(&args),
            json!({"reapply": {"include_clustered": 1, "batch_size": 1, "batch_delay": 3,
                               "force": 0}})
        );
        let args: ReapplyArgs = parse(&["mymod", "--force"]);
        assert_eq!(
            reapply_body(&args),
            json!({"reapply": {"include_clustered": 0, "force": 1}})
        );
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.dat");
        std::fs::write(&empty, b"").expect("write");
        let name = empty.to_string_lossy().into_owned();
        let err = read_contents(&name).expect_err("empty file");
        assert_eq!(
            err.to_string(),
            format!("The file '{name}' must contain some data")
        );
        let full = dir.path().join("ping1.dat");
        std::fs::write(&full, b"message=Module.V1\n").expect("write");
        assert_eq!(
            read_contents(&full.to_string_lossy()).expect("contents"),
            b"message=Module.V1\n"
        );
    }

    #[test]
    fn reapply_job_summary_and_progress() {
        let running = Json::parse(
            r#"{"id": "j1", "state": "RUNNING", "total": 4, "applied": 1, "skipped": 1,
                "failed": 0, "started": "2017-06-02T18:44:04", "finished": null}"#,
        )
        .expect("json");
        assert!(!job_finished(&running));
        assert_eq!(
            progress_line(&running),
            format!("[{}{}] 2/4 RUNNING", "#".repeat(15), "-".repeat(15))
        );
        let done = Json::parse(
            r#"{"id": "j1", "state": "COMPLETED", "total": 5, "applied": 3, "skipped": 2,
                "failed": 0, "started": "2017-06-02T18:44:04", "finished": "2017-06-02T18:44:10"}"#,
        )
        .expect("json");
        assert!(job_finished(&done));
        assert_eq!(
            summary_line(&done),
            "Reapply j1: COMPLETED, 3 applied, 2 skipped, 0 failed of 5"
        );
        let failed = Json::parse(r#"{"id": "j2", "state": "FAILED", "total": 0}"#).expect("json");
        assert!(job_finished(&failed));
        assert!(failure_lines(&done).is_empty());
        let some = Json::parse(
            r#"{"id": "j3", "state": "finished", "total": 2, "applied": 1, "failed": 1,
                "failures": [{"instance_id": "i2", "message": "the guest's queue is gone"}]}"#,
        )
        .expect("json");
        assert_eq!(
            failure_lines(&some),
            ["  failed i2: the guest's queue is gone"]
        );
    }

    #[test]
    fn reapply_list_keeps_the_api_order() {
        let body = Json::parse(
            r#"{"reapply_jobs": [
            {"id": "b2", "state": "RUNNING", "total": 5, "applied": 1, "skipped": 0, "failed": 0,
             "started": "2017-06-02T18:44:04", "finished": null},
            {"id": "a1", "state": "COMPLETED", "total": 2, "applied": 2, "skipped": 0, "failed": 0,
             "started": "2017-06-02T18:38:47", "finished": "2017-06-02T18:38:48"}]}"#,
        )
        .expect("json");
        let rows = array(&body, "reapply_jobs").expect("list");
        assert_eq!(
            print_list(rows, &REAPPLY_FIELDS, &[], Order::AsReceived),
            "\
+----+-----------+-------+---------+---------+--------+---------------------+---------------------+
| ID | State     | Total | Applied | Skipped | Failed | Started             | Finished            |
+----+-----------+-------+---------+---------+--------+---------------------+---------------------+
| b2 | RUNNING   |     5 |       1 |       0 |      0 | 2017-06-02T18:44:04 | None                |
| a1 | COMPLETED |     2 |       2 |       0 |      0 | 2017-06-02T18:38:47 | 2017-06-02T18:38:48 |
+----+-----------+-------+---------+---------+--------+---------------------+---------------------+
"
        );
    }

    #[test]
    fn retrieve_file_names() {
        let module =
            Json::parse(r#"{"name": "mymod", "datastore": "all", "datastore_version": "all"}"#)
                .expect("json");
        assert_eq!(
            retrieve_path(None, None, &module, None),
            "./mymod_all_all.dat"
        );
        assert_eq!(
            retrieve_path(Some("out/"), Some("pre"), &module, None),
            "out/pre_mymod_all_all.dat"
        );
        assert_eq!(
            retrieve_path(Some("~/x"), Some("pre_"), &module, Some("/home/u")),
            "/home/u/x/pre_mymod_all_all.dat"
        );
    }
}
