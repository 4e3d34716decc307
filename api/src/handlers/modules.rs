//! `/v1.0/{tenant_id}/modules...`

use std::collections::HashMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use diesel::Connection;
use serde_json::{json, Map, Value};
use trove_common::api_time;
use trove_common::db::models::{Instance, InstanceModule, Module, NewReapplyJob, ReapplyJob};
use trove_common::db::{new_id, now};
use trove_common::rpc::taskmanager::{truthy, ReapplyModule, TaskManagerMsg};

use super::{accepted, flag_true, next_link, ok_empty, paging};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Context, JsonBody};
use crate::service::catalog::Catalog;
use crate::service::instances::enqueue_taskmanager;
use crate::service::modules::{self as svc, Request};
use crate::views::{instances as iviews, modules as views};

type TenantId = Path<String>;

/// `GET /modules[?datastore=]`
pub async fn index(
    State(st): State<AppState>,
    ctx: Context,
    _t: TenantId,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    // An empty `datastore=` filters nothing, as in Trove (an empty string is false there).
    let filter = q.get("datastore").filter(|f| !f.is_empty()).cloned();
    let list = st
        .db
        .run(move |c| {
            let cat = Catalog::load(c)?;
            let ds = match filter.as_deref() {
                None => None,
                Some(f) if f.eq_ignore_ascii_case("all") => Some(None),
                Some(f) => Some(Some(cat.find_datastore(f)?.id.clone())),
            };
            let mods = Module::list(c, ctx.caller(), ds.as_ref().map(|d| d.as_deref()))?;
            Ok::<_, ApiError>(
                mods.iter()
                    .map(|m| Value::Object(views::list_item(m, &cat)))
                    .collect::<Vec<_>>(),
            )
        })
        .await?;
    Ok(Json(json!({ "modules": list })).into_response())
}

/// `POST /modules`
pub async fn create(
    State(st): State<AppState>,
    ctx: Context,
    _t: TenantId,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let keys = st.module_keys.clone();
    let types = st.settings.default.module_types.clone();
    let view = st
        .db
        .run(move |c| {
            let req = Request {
                caller: ctx.caller(),
                tenant: &ctx.project_id,
                module_types: &types,
                keys: &keys,
            };
            let m = svc::create(c, &req, &body)?;
            tracing::info!(module.id = %m.id, module.md5 = %m.md5, "module created");
            Ok::<_, ApiError>(views::detail(&m, &Catalog::load(c)?))
        })
        .await?;
    Ok(Json(json!({ "module": view })).into_response())
}

/// `GET /modules/{id}`: the detail view plus the real `instance_count`.
pub async fn show(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let view = st
        .db
        .run(move |c| {
            let m = svc::load(c, &id, ctx.caller())?;
            let mut v = views::detail(&m, &Catalog::load(c)?);
            v.insert(
                "instance_count".into(),
                json!(Module::instance_count(c, &m.id, &m.md5)?),
            );
            Ok::<_, ApiError>(v)
        })
        .await?;
    Ok(Json(json!({ "module": view })).into_response())
}

/// `PUT /modules/{id}`
pub async fn update(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let keys = st.module_keys.clone();
    let types = st.settings.default.module_types.clone();
    let view = st
        .db
        .run(move |c| {
            let req = Request {
                caller: ctx.caller(),
                tenant: &ctx.project_id,
                module_types: &types,
                keys: &keys,
            };
            let m = svc::update(c, &req, &id, &body)?;
            tracing::info!(module.id = %m.id, module.md5 = %m.md5, "module updated");
            Ok::<_, ApiError>(views::detail(&m, &Catalog::load(c)?))
        })
        .await?;
    Ok(Json(json!({ "module": view })).into_response())
}

/// `DELETE /modules/{id}`
pub async fn delete(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    st.db
        .run(move |c| svc::delete(c, ctx.caller(), &id))
        .await?;
    Ok(ok_empty())
}

/// `GET /modules/{id}/instances[?count_only][&include_clustered][&limit&marker]`
pub async fn instances(
    State(st): State<AppState>,
    ctx: Context,
    Path((tenant, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let count_only = flag_true(q.get("count_only"));
    let include_clustered = flag_true(q.get("include_clustered"));
    let (limit, marker) = paging(&q, st.settings.default.modules_page_size)?;
    let expiry = st.settings.default.agent_heartbeat_expiry;
    let ctx2 = ctx.clone();
    let path = format!("/v1.0/{tenant}/modules/{id}/instances");
    let body = st
        .db
        .run(move |c| {
            let ctx = ctx2;
            let m = svc::load(c, &id, ctx.caller())?;
            let tenant_filter = (!ctx.is_admin).then_some(ctx.project_id.as_str());
            let mut body = Map::new();
            if count_only {
                let rows = InstanceModule::count_by_md5(
                    c,
                    &m.id,
                    &m.md5,
                    include_clustered,
                    tenant_filter,
                )?;
                let items: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({"module_name": m.name, "module_id": m.id, "module_md5": r.module_md5,
                               "instance_count": r.instance_count, "current": r.current,
                               "min_updated_date": api_time(r.min_updated_date),
                               "max_updated_date": api_time(r.max_updated_date)})
                    })
                    .collect();
                body.insert("instances".into(), Value::Array(items));
                return Ok::<_, ApiError>((body, None, false));
            }
            let mut rows = InstanceModule::instance_page(
                c,
                &m.id,
                include_clustered,
                tenant_filter,
                marker.as_deref(),
                limit,
            )?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let last = rows.last().map(|r| r.id.clone());
            let details = Instance::detail(c, rows)?;
            let items: Vec<Value> = details
                .iter()
                .map(|d| {
                    Value::Object(iviews::list_item(
                        d,
                        &ctx.base_url,
                        &ctx.project_id,
                        ctx.is_admin,
                        expiry,
                    ))
                })
                .collect();
            body.insert("instances".into(), Value::Array(items));
            Ok((body, last, more))
        })
        .await?;
    let (mut body, last, more) = body;
    next_link(
        &mut body,
        &ctx,
        &path,
        raw.as_deref(),
        last.as_deref(),
        more,
    );
    Ok(Json(Value::Object(body)).into_response())
}

/// `PUT /modules/{id}/instances`: reapply. Writes a durable job and its cast in one transaction; 202.
pub async fn reapply(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let settings = st.settings.clone();
    let topic = st.broker.names().taskmanager();
    let r = body
        .get("reapply")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let int = |k: &str| {
        r.get(k).and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
    };
    let md5 = r
        .get("md5")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .filter(|s| !s.is_empty());
    let include_clustered = truthy(&r.get("include_clustered").cloned());
    let force = truthy(&r.get("force").cloned());
    let batch_size = int("batch_size").unwrap_or(settings.default.module_reapply_max_batch_size);
    let batch_delay = int("batch_delay").unwrap_or(settings.default.module_reapply_min_batch_delay);
    st.db
        .run(move |c| {
            c.transaction(|c| {
                let m = svc::load(c, &id, ctx.caller())?;
                let job = ReapplyJob::queued(
                    NewReapplyJob {
                        id: new_id(),
                        module_id: m.id.clone(),
                        tenant_id: ctx.project_id.clone(),
                        is_admin: ctx.is_admin,
                        md5,
                        include_clustered,
                        force,
                        batch_size: batch_size.clamp(i64::from(i32::MIN), i64::from(i32::MAX))
                            as i32,
                        batch_delay: batch_delay.clamp(i64::from(i32::MIN), i64::from(i32::MAX))
                            as i32,
                        request_id: ctx.request_id.clone(),
                    },
                    now(),
                );
                ReapplyJob::insert(c, &job)?;
                let msg = TaskManagerMsg::ReapplyModule(ReapplyModule::for_job(&job));
                enqueue_taskmanager(c, &settings, &topic, &msg, &ctx.rpc())?;
                tracing::info!(module.id = %m.id, reapply.job = %job.id, "reapply accepted");
                Ok::<_, ApiError>(())
            })
        })
        .await?;
    st.outbox.notify_one();
    Ok(accepted())
}

/// How many failed instances a reapply job's view lists (its `failed` count has them all).
const FAILURES_SHOWN: i64 = 100;

/// `GET /modules/{id}/reapply` (our extension): the module's reapply jobs, newest first, each with
/// its first [`FAILURES_SHOWN`] failed instances and why they failed.
pub async fn reapply_jobs(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let jobs = st
        .db
        .run(move |c| {
            let m = svc::load(c, &id, ctx.caller())?;
            let tenant = (!ctx.is_admin).then_some(ctx.project_id.as_str());
            let jobs = ReapplyJob::for_module(c, &m.id, tenant)?;
            let mut failures = Vec::with_capacity(jobs.len());
            for j in &jobs {
                failures.push(if j.failed > 0 {
                    ReapplyJob::failures(c, &j.id, FAILURES_SHOWN)?
                } else {
                    Vec::new()
                });
            }
            Ok::<_, ApiError>(jobs.into_iter().zip(failures).collect::<Vec<_>>())
        })
        .await?;
    let t = |x: Option<chrono::NaiveDateTime>| x.map(api_time);
    let items: Vec<Value> = jobs
        .iter()
        .map(|(j, failures)| {
            let failures: Vec<Value> = failures
                .iter()
                .map(|(id, why)| json!({"instance_id": id, "message": why}))
                .collect();
            json!({"id": j.id, "module_id": j.module_id, "state": j.state, "md5": j.md5,
                   "include_clustered": j.include_clustered, "force": j.force,
                   "batch_size": j.batch_size, "batch_delay": j.batch_delay,
                   "total": j.total, "applied": j.applied, "skipped": j.skipped, "failed": j.failed,
                   "failures": failures,
                   "created": api_time(j.created), "started": t(j.started), "finished": t(j.finished)})
        })
        .collect();
    Ok(Json(json!({ "reapply_jobs": items })).into_response())
}
