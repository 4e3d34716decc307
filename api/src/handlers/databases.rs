//! `/v1.0/{tenant_id}/instances/{id}/databases[/{name}]`: the guest's databases (Trove's
//! `SchemaController`). The rules live in [`crate::service::databases`].

use std::collections::HashMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{accepted, load_instance, next_link, paging};
use crate::app::AppState;
use crate::error::ApiResult;
use crate::extract::{Context, JsonBody};
use crate::service::databases::{self as svc, DATA_PLANE_MANAGERS, PAGE_SIZE};
use crate::views::databases as views;

/// `GET /instances/{id}/databases`: one page, `links` when there is another.
pub async fn index(
    State(st): State<AppState>,
    ctx: Context,
    Path((tenant, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let (limit, marker) = paging(&q, PAGE_SIZE)?;
    let d = load_instance(&st, &ctx, &id).await?;
    svc::verify(&d, &DATA_PLANE_MANAGERS)?;
    let (dbs, next) = svc::list_databases(&st, &ctx, &d, limit, marker, false).await?;
    let mut body = views::databases(&dbs)
        .as_object()
        .cloned()
        .unwrap_or_default();
    let path = format!("/v1.0/{tenant}/instances/{id}/databases");
    next_link(
        &mut body,
        &ctx,
        &path,
        raw.as_deref(),
        next.as_deref(),
        next.is_some(),
    );
    Ok(Json(body).into_response())
}

/// `POST /instances/{id}/databases` → 202.
pub async fn create(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    svc::check_databases_schema(&body)?;
    let d = load_instance(&st, &ctx, &id).await?;
    let dbs = svc::populate_databases(&body)?;
    svc::create_databases(&st, &ctx, &d, dbs).await?;
    Ok(accepted())
}

/// `DELETE /instances/{id}/databases/{name}` → 202.
pub async fn delete(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let d = load_instance(&st, &ctx, &id).await?;
    svc::delete_database(&st, &ctx, &d, &name).await?;
    Ok(accepted())
}
