//! Datastores, versions and flavors (read-only catalogue).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use trove_common::db::models::Flavor;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Context;
use crate::service::catalog::{is_uuid_like, Catalog};
use crate::views::datastores as views;

async fn catalog(st: &AppState) -> ApiResult<Catalog> {
    st.db
        .run(|c| Catalog::load(c).map_err(ApiError::from))
        .await
}

/// `GET /datastores`
pub async fn index(
    State(st): State<AppState>,
    ctx: Context,
    Path(t): Path<String>,
) -> ApiResult<Response> {
    let cat = catalog(&st).await?;
    let items: Vec<Value> = cat
        .datastores
        .iter()
        .filter_map(|d| {
            let vs: Vec<_> = cat
                .versions
                .iter()
                .filter(|v| v.datastore_id == d.id && (ctx.is_admin || v.active))
                .collect();
            (ctx.is_admin || !vs.is_empty())
                .then(|| Value::Object(views::datastore(d, &vs, &ctx.base_url, &t, ctx.is_admin)))
        })
        .collect();
    Ok(Json(json!({"datastores": items})).into_response())
}

/// `GET /datastores/{id or name}`: active versions only.
pub async fn show(
    State(st): State<AppState>,
    ctx: Context,
    Path((t, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    let cat = catalog(&st).await?;
    let d = cat.find_datastore(&key)?;
    let vs: Vec<_> = cat
        .versions
        .iter()
        .filter(|v| v.datastore_id == d.id && v.active)
        .collect();
    Ok(
        Json(json!({"datastore": views::datastore(d, &vs, &ctx.base_url, &t, ctx.is_admin)}))
            .into_response(),
    )
}

/// `GET /datastores/{ds}/versions`
pub async fn versions(
    State(st): State<AppState>,
    ctx: Context,
    Path((t, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    let cat = catalog(&st).await?;
    let d = cat.find_datastore(&key)?;
    let items: Vec<Value> = cat
        .versions
        .iter()
        .filter(|v| v.datastore_id == d.id && (ctx.is_admin || v.active))
        .map(|v| Value::Object(views::version(v, &ctx.base_url, &t, ctx.is_admin, false)))
        .collect();
    Ok(Json(json!({"versions": items})).into_response())
}

/// `GET /datastores/{ds}/versions/{id or name}`
pub async fn version(
    State(st): State<AppState>,
    ctx: Context,
    Path((t, key, ver)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let cat = catalog(&st).await?;
    let d = cat.find_datastore(&key)?;
    let v = cat.find_version(d, &ver)?;
    Ok(
        Json(json!({"version": views::version(v, &ctx.base_url, &t, ctx.is_admin, false)}))
            .into_response(),
    )
}

/// `GET /datastores/versions/{uuid}`
pub async fn version_by_id(
    State(st): State<AppState>,
    ctx: Context,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let cat = catalog(&st).await?;
    let v = is_uuid_like(&id)
        .then(|| cat.version(&id))
        .flatten()
        .ok_or_else(|| ApiError::bad(format!("Datastore version '{id}' cannot be found.")))?;
    Ok(
        Json(json!({"version": views::version(v, &ctx.base_url, &t, ctx.is_admin, false)}))
            .into_response(),
    )
}

/// `GET /flavors`
pub async fn flavors(
    State(st): State<AppState>,
    ctx: Context,
    Path(t): Path<String>,
) -> ApiResult<Response> {
    let all = st
        .db
        .run(|c| Flavor::all(c).map_err(ApiError::from))
        .await?;
    let items: Vec<Value> = all
        .iter()
        .map(|f| Value::Object(views::flavor(f, &ctx.base_url, &t)))
        .collect();
    Ok(Json(json!({"flavors": items})).into_response())
}

/// `GET /flavors/{id}`
pub async fn flavor(
    State(st): State<AppState>,
    ctx: Context,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let key = id.clone();
    let f = st
        .db
        .run(move |c| Flavor::find(c, &key).map_err(ApiError::from))
        .await?
        .ok_or_else(|| ApiError::resource_not_found(&id))?;
    Ok(Json(json!({"flavor": views::flavor(&f, &ctx.base_url, &t)})).into_response())
}
