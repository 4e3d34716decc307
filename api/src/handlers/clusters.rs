//! `/v1.0/{tenant_id}/clusters...`

use std::collections::HashMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use diesel::Connection;
use serde_json::{json, Map, Value};
use trove_common::db::models::quota::Deltas;
use trove_common::db::models::{Cluster, Flavor, Instance};
use trove_common::rpc::taskmanager::{CreateCluster, DeleteCluster, TaskManagerMsg};
use trove_common::status::ClusterTask;

use super::{accepted, next_link, paging};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Context, JsonBody};
use crate::handlers::instances::module_ids;
use crate::service::catalog::Catalog;
use crate::service::instances::{self as svc, enqueue_taskmanager, InstanceSpec};
use crate::service::quotas;
use crate::validate::{root, Checker};
use crate::views::clusters as views;

/// Managers that support clusters.
const CLUSTER_MANAGERS: [&str; 1] = ["redis"];

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Cluster '{id}' cannot be found."))
}

/// `POST /clusters`: validates every member (modules included) before anything is written.
pub async fn create(
    State(st): State<AppState>,
    ctx: Context,
    _t: Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let cl = root(&body, "cluster")?.clone();
    let mut c = Checker::default();
    if c.required(&cl, &["cluster"], "name") {
        c.name_like(&cl["name"], &["cluster", "name"], 255);
    }
    if c.required(&cl, &["cluster"], "datastore") {
        if let Some(d) = c.object(&cl["datastore"], &["cluster", "datastore"]) {
            for k in ["type", "version"] {
                if c.required(d, &["cluster", "datastore"], k) {
                    c.non_empty_string(&d[k], &["cluster", "datastore", k]);
                }
            }
        }
    }
    let mut members = Vec::new();
    if c.required(&cl, &["cluster"], "instances") {
        match cl["instances"].as_array() {
            Some(items) => {
                for (n, item) in items.iter().enumerate() {
                    let idx = n.to_string();
                    let Some(obj) = c.object(item, &["cluster", "instances", &idx]) else {
                        continue;
                    };
                    if !c.required(obj, &["cluster", "instances", &idx], "flavorRef") {
                        continue;
                    }
                    let ids = module_ids(
                        &mut c,
                        obj.get("modules"),
                        &["cluster", "instances", &idx, "modules"],
                    );
                    members.push((
                        svc::flavor_ref(&obj["flavorRef"]).unwrap_or_default(),
                        svc::volume_size(obj.get("volume")),
                        ids,
                    ));
                }
            }
            None => c.fail(&["cluster", "instances"], "is not of type 'array'"),
        }
    }
    if cl.get("configuration").is_some_and(|v| !v.is_null()) {
        c.finish()?;
        return Err(ApiError::bad(
            "Configuration groups not supported by the datastore.",
        ));
    }
    c.finish()?;
    let name = cl["name"].as_str().unwrap_or_default().to_owned();
    let ds_type = cl["datastore"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ds_ver = cl["datastore"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let settings = st.settings.clone();
    let keys = st.module_keys.clone();
    let topic = st.broker.names().taskmanager();
    let ctx2 = ctx.clone();
    let expiry = settings.default.agent_heartbeat_expiry;
    let view = st
        .db
        .run(move |conn| {
            let ctx = ctx2;
            conn.transaction(|conn| {
                let cat = Catalog::load(conn)?;
                let (ds, ver) = cat.resolve_for_instance(Some(&ds_type), Some(&ds_ver), None)?;
                if !CLUSTER_MANAGERS.contains(&ver.manager.as_str()) {
                    return Err(ApiError::NotImplemented(format!("Clusters not supported for {}-{}.", ds.name, ver.name)));
                }
                let mut flavors = Vec::new();
                for (f, _, _) in &members {
                    flavors.push(Flavor::find(conn, f)?.ok_or_else(|| ApiError::bad(format!("Resource {f} cannot be found.")))?);
                }
                let mut sizes = Vec::new();
                for (_, size, _) in &members {
                    if !matches!(size, Some(Some(s)) if *s >= 1) {
                        return Err(ApiError::bad("A volume size is required for each instance in the cluster."));
                    }
                    sizes.push(svc::check_volume(&settings, *size)?);
                }
                if flavors.windows(2).any(|w| w[0].id != w[1].id) {
                    return Err(ApiError::bad("The flavor for each instance in a cluster must be the same."));
                }
                if sizes.windows(2).any(|w| w[0] != w[1]) {
                    return Err(ApiError::bad("The volume size for each instance in a cluster must be the same."));
                }
                // Every member's modules are validated before the cluster row exists.
                let mut member_mods = Vec::new();
                for (_, _, ids) in &members {
                    let mods = svc::modules_for(conn, ctx.caller(), ids, ds, ver)?;
                    let entries = svc::payloads(&mods, &cat, &keys)?;
                    member_mods.push((mods, entries, ids.clone()));
                }
                // Every member at once (Trove's cluster check_quotas, then each member's own),
                // after every other check, so a refused request never takes the tenant's usage locks.
                let mut deltas = Deltas::default();
                for (flavor, size) in flavors.iter().zip(&sizes) {
                    deltas.add_instance(flavor.ram, *size);
                }
                quotas::reserve(conn, &settings, &ctx.project_id, &deltas)?;
                let cluster = svc::new_cluster(&name, &ctx.project_id, ver);
                Cluster::insert(conn, &cluster)?;
                let rpc = ctx.rpc();
                for (n, ((mods, entries, ids), (flavor, size))) in member_mods.into_iter().zip(flavors.into_iter().zip(sizes)).enumerate() {
                    let spec = InstanceSpec {
                        name: format!("{name}-member-{}", n + 1),
                        flavor,
                        volume_size: size,
                        module_ids: ids,
                        cluster: Some(cluster.id.clone()),
                    };
                    svc::insert_instance(conn, &settings, &rpc, &ctx.project_id, &spec, ds, ver, &mods, entries, &topic)?;
                }
                enqueue_taskmanager(conn, &settings, &topic, &TaskManagerMsg::CreateCluster(CreateCluster { cluster_id: cluster.id.clone() }), &rpc)?;
                let members = { let rows = Instance::cluster_members(conn, &cluster.id)?; Instance::detail(conn, rows)? };
                tracing::info!(cluster.id = %cluster.id, members = members.len(), "cluster accepted");
                Ok::<_, ApiError>(views::view(&cluster, &ds.name, &ver.name, &members, &ctx.base_url, &ctx.project_id, false, expiry))
            })
        })
        .await?;
    st.outbox.notify_one();
    Ok(Json(json!({"cluster": view})).into_response())
}

async fn load(st: &AppState, ctx: &Context, id: &str, full: bool) -> ApiResult<Map<String, Value>> {
    let id = id.to_owned();
    let tenant = ctx.project_id.clone();
    let admin = ctx.is_admin;
    let base = ctx.base_url.clone();
    let expiry = st.settings.default.agent_heartbeat_expiry;
    st.db
        .run(move |conn| {
            let c = Cluster::find(conn, &id, (!admin).then_some(tenant.as_str()))?
                .ok_or_else(|| not_found(&id))?;
            let cat = Catalog::load(conn)?;
            let ver = cat.version(&c.datastore_version_id).cloned();
            let ds = ver
                .as_ref()
                .and_then(|v| cat.datastore(&v.datastore_id))
                .map(|d| d.name.clone())
                .unwrap_or_default();
            let members = {
                let rows = Instance::cluster_members(conn, &c.id)?;
                Instance::detail(conn, rows)?
            };
            Ok::<_, ApiError>(views::view(
                &c,
                &ds,
                &ver.map(|v| v.name).unwrap_or_default(),
                &members,
                &base,
                &tenant,
                full,
                expiry,
            ))
        })
        .await
}

/// `GET /clusters/{id}`
pub async fn show(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(Json(json!({"cluster": load(&st, &ctx, &id, true).await?})).into_response())
}

/// `GET /clusters`
pub async fn index(
    State(st): State<AppState>,
    ctx: Context,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let (limit, marker) = paging(&q, st.settings.default.clusters_page_size)?;
    let project = ctx.project_id.clone();
    let (ids, more) = st
        .db
        .run(move |c| {
            let mut rows = Cluster::page(c, &project, marker.as_deref(), limit)?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            Ok::<_, ApiError>((rows.into_iter().map(|r| r.id).collect::<Vec<_>>(), more))
        })
        .await?;
    let mut items = Vec::new();
    for id in &ids {
        items.push(Value::Object(load(&st, &ctx, id, false).await?));
    }
    let mut body = Map::new();
    body.insert("clusters".into(), Value::Array(items));
    next_link(
        &mut body,
        &ctx,
        &format!("/v1.0/{tenant}/clusters"),
        raw.as_deref(),
        ids.last().map(String::as_str),
        more,
    );
    Ok(Json(Value::Object(body)).into_response())
}

/// `GET /clusters/{cid}/instances/{iid}`
pub async fn instance(
    State(st): State<AppState>,
    ctx: Context,
    Path((t, cid, iid)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    load(&st, &ctx, &cid, false).await?;
    super::instances::show(State(st), ctx, Path((t, iid))).await
}

/// `POST /clusters/{id}`: a cluster action (Trove's `ClusterController.action`). Only `reset-status`
/// (admins) is built: 202 with the cluster view as it is after the reset.
pub async fn action(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    use crate::service::actions::{self as actions, ClusterAction};
    let force_delete = match actions::parse_cluster(&body)? {
        ClusterAction::ResetStatus { force_delete } => force_delete,
        ClusterAction::Refused(refused) => {
            // Trove loads the cluster (404) before it judges the action.
            load(&st, &ctx, &id, false).await?;
            return Err(refused.error());
        }
    };
    {
        let (ctx, id) = (ctx.clone(), id.clone());
        st.db
            .run(move |c| actions::reset_cluster(c, &ctx, &id, force_delete))
            .await?;
    }
    let view = load(&st, &ctx, &id, false).await?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({"cluster": view})),
    )
        .into_response())
}

/// `DELETE /clusters/{id}`
pub async fn delete(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let settings = st.settings.clone();
    let topic = st.broker.names().taskmanager();
    let expiry = settings.default.agent_heartbeat_expiry;
    st.db
        .run(move |conn| {
            conn.transaction(|conn| {
                let admin = ctx.is_admin;
                let c = Cluster::find(conn, &id, (!admin).then_some(ctx.project_id.as_str()))?.ok_or_else(|| not_found(&id))?;
                let task = ClusterTask::from_code(c.task_id);
                if !matches!(task, ClusterTask::None | ClusterTask::Deleting) {
                    return Err(ApiError::Unprocessable(format!(
                        "This action cannot be performed on the cluster while the current cluster task is '{}'.",
                        task.name()
                    )));
                }
                let members = { let rows = Instance::cluster_members(conn, &c.id)?; Instance::detail(conn, rows)? };
                for d in &members {
                    let st = crate::views::instances::status(d, expiry);
                    let last_report = d.service.as_ref().and_then(|s| s.updated_at);
                    svc::check_deletable(&settings, &d.instance, st, last_report)?;
                }
                Cluster::set_task(conn, &c.id, ClusterTask::Deleting)?;
                let rpc = ctx.rpc();
                for d in &members {
                    Instance::set_task(conn, &d.instance.id, trove_common::status::InstanceTask::Deleting)?;
                    Instance::retire_modules(conn, &d.instance.id)?;
                }
                enqueue_taskmanager(conn, &settings, &topic, &TaskManagerMsg::DeleteCluster(DeleteCluster { cluster_id: c.id.clone() }), &rpc)?;
                Ok::<_, ApiError>(())
            })
        })
        .await?;
    st.outbox.notify_one();
    Ok(accepted())
}
