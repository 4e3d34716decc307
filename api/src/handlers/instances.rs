//! `/v1.0/{tenant_id}/instances...`

use std::collections::HashMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use diesel::Connection;
use serde_json::{json, Map, Value};
use trove_common::db::models::quota::Deltas;
use trove_common::db::models::{Flavor, Instance};

use super::{accepted, load_instance, next_link, paging};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Context, JsonBody};
use crate::service::catalog::Catalog;
use crate::service::instances::{self as svc, InstanceSpec};
use crate::service::quotas;
use crate::validate::{py_repr, root, Checker, UUID_PATTERN};
use crate::views::instances as views;

/// Module ids of a `modules: [{"id": uuid}]` list, with Trove's schema errors.
pub fn module_ids(c: &mut Checker, v: Option<&Value>, path: &[&str]) -> Vec<String> {
    let Some(v) = v else { return Vec::new() };
    let Some(items) = v.as_array() else {
        c.fail(path, format!("{} is not of type 'array'", py_repr(v)));
        return Vec::new();
    };
    let mut ids = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let idx = n.to_string();
        let mut p: Vec<&str> = path.to_vec();
        p.push(&idx);
        let Some(obj) = c.object(item, &p) else {
            continue;
        };
        if !c.required(obj, &p, "id") {
            continue;
        }
        let mut pid = p.clone();
        pid.push("id");
        match obj["id"].as_str() {
            Some(s) if crate::service::catalog::is_uuid_like(s) && s.len() == 36 => {
                ids.push(s.to_lowercase())
            }
            _ => c.fail(
                &pid,
                format!("{} does not match '{UUID_PATTERN}'", py_repr(&obj["id"])),
            ),
        }
    }
    ids
}

/// `POST /instances`
pub async fn create(
    State(st): State<AppState>,
    ctx: Context,
    _t: Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let inst = root(&body, "instance")?.clone();
    let mut c = Checker::default();
    if c.required(&inst, &["instance"], "name") {
        c.name_like(&inst["name"], &["instance", "name"], 255);
    }
    let flavor = if c.required(&inst, &["instance"], "flavorRef") {
        let f = svc::flavor_ref(&inst["flavorRef"]);
        if f.is_none() {
            c.fail(
                &["instance", "flavorRef"],
                format!(
                    "{} is not valid under any of the given schemas",
                    py_repr(&inst["flavorRef"])
                ),
            );
        }
        f
    } else {
        None
    };
    let ids = module_ids(&mut c, inst.get("modules"), &["instance", "modules"]);
    let ds = inst.get("datastore").and_then(Value::as_object);
    for k in ["type", "version"] {
        if let Some(v) = ds.and_then(|d| d.get(k)) {
            c.non_empty_string(v, &["instance", "datastore", k]);
        }
    }
    c.finish()?;
    let ds_type = ds
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ds_ver = ds
        .and_then(|d| d.get("version"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = inst["name"].as_str().unwrap_or_default().to_owned();
    let flavor = flavor.unwrap_or_default();
    let size = svc::volume_size(inst.get("volume"));
    let settings = st.settings.clone();
    let keys = st.module_keys.clone();
    let topic = st.broker.names().taskmanager();
    let ctx2 = ctx.clone();
    let detail = st
        .db
        .run(move |conn| {
            let ctx = ctx2;
            conn.transaction(|conn| {
                let cat = Catalog::load(conn)?;
                let (ds, ver) = cat.resolve_for_instance(
                    ds_type.as_deref(),
                    ds_ver.as_deref(),
                    settings.default.default_datastore.as_deref(),
                )?;
                let flavor = Flavor::find(conn, &flavor)?
                    .ok_or_else(|| ApiError::bad(format!("Resource {flavor} cannot be found.")))?;
                let volume_size = svc::check_volume(&settings, size)?;
                let mods = svc::modules_for(conn, ctx.caller(), &ids, ds, ver)?;
                let entries = svc::payloads(&mods, &cat, &keys)?;
                // After every other check, so a refused request never takes the tenant's usage locks (held to commit).
                let mut deltas = Deltas::default();
                deltas.add_instance(flavor.ram, volume_size);
                quotas::reserve(conn, &settings, &ctx.project_id, &deltas)?;
                let spec = InstanceSpec {
                    name,
                    flavor,
                    volume_size,
                    module_ids: ids.clone(),
                    cluster: None,
                };
                let inst = svc::insert_instance(
                    conn,
                    &settings,
                    &ctx.rpc(),
                    &ctx.project_id,
                    &spec,
                    ds,
                    ver,
                    &mods,
                    entries,
                    &topic,
                )?;
                tracing::info!(instance.id = %inst.id, modules = mods.len(), "instance accepted");
                Ok::<_, ApiError>(Instance::detail(conn, vec![inst])?.remove(0))
            })
        })
        .await?;
    st.outbox.notify_one();
    let expiry = st.settings.default.agent_heartbeat_expiry;
    Ok(
        Json(json!({"instance": views::detail(&detail, &ctx.base_url, &ctx.project_id, ctx.is_admin, expiry)}))
            .into_response(),
    )
}

/// `GET /instances` and `GET /instances/detail`: the caller's project only, one page.
async fn list(
    st: AppState,
    ctx: Context,
    tenant: String,
    q: HashMap<String, String>,
    raw: Option<String>,
    detail: bool,
) -> ApiResult<Response> {
    let include_clustered = super::flag_true(q.get("include_clustered"));
    let (limit, marker) = paging(&q, st.settings.default.instances_page_size)?;
    let project = ctx.project_id.clone();
    let (rows, more) = st
        .db
        .run(move |c| {
            let mut rows =
                Instance::page(c, &project, include_clustered, marker.as_deref(), limit)?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            Ok::<_, ApiError>((Instance::detail(c, rows)?, more))
        })
        .await?;
    let expiry = st.settings.default.agent_heartbeat_expiry;
    let items: Vec<Value> = rows
        .iter()
        .map(|d| {
            Value::Object(if detail {
                views::detail(d, &ctx.base_url, &ctx.project_id, ctx.is_admin, expiry)
            } else {
                views::list_item(d, &ctx.base_url, &ctx.project_id, ctx.is_admin, expiry)
            })
        })
        .collect();
    let mut body = Map::new();
    body.insert("instances".into(), Value::Array(items));
    let suffix = if detail { "/detail" } else { "" };
    let last = rows.last().map(|d| d.instance.id.clone());
    next_link(
        &mut body,
        &ctx,
        &format!("/v1.0/{tenant}/instances{suffix}"),
        raw.as_deref(),
        last.as_deref(),
        more,
    );
    Ok(Json(Value::Object(body)).into_response())
}

pub async fn index(
    State(st): State<AppState>,
    ctx: Context,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    list(st, ctx, tenant, q, raw, false).await
}

pub async fn index_detail(
    State(st): State<AppState>,
    ctx: Context,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    list(st, ctx, tenant, q, raw, true).await
}

/// `GET /instances/{id}`
pub async fn show(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let d = load_instance(&st, &ctx, &id).await?;
    let expiry = st.settings.default.agent_heartbeat_expiry;
    Ok(
        Json(json!({"instance": views::detail(&d, &ctx.base_url, &ctx.project_id, ctx.is_admin, expiry)}))
            .into_response(),
    )
}

/// `DELETE /instances/{id}`
pub async fn delete(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let settings = st.settings.clone();
    let topic = st.broker.names().taskmanager();
    let expiry = settings.default.agent_heartbeat_expiry;
    st.db
        .run(move |c| {
            let scope = ctx.instance_scope();
            svc::delete_instance(c, &settings, &ctx.rpc(), scope, &id, &topic, |c, inst| {
                let d = Instance::detail(c, vec![inst.clone()])?.remove(0);
                Ok(views::status(&d, expiry))
            })
        })
        .await?;
    st.outbox.notify_one();
    Ok(accepted())
}
