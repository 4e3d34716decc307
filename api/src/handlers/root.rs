//! `/v1.0/{tenant_id}/instances/{id}/root`: enable root and ask whether it is enabled (Trove's
//! `RootController`; redis through `RedisRootController`, which sets `requirepass`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::load_instance;
use crate::app::AppState;
use crate::error::ApiResult;
use crate::extract::{Context, JsonBody};
use crate::service::databases as svc;
use crate::views::databases as views;

/// `POST /instances/{id}/root` (optional body `{"password": ..}`) → 200 with the root user.
pub async fn create(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let password = svc::root_password(&body)?;
    let d = load_instance(&st, &ctx, &id).await?;
    let user = svc::enable_root(&st, &ctx, &d, password).await?;
    // Redis lists the replicas it could not update; this build has no replicas.
    let failed: Option<&[String]> = (d.manager == "redis").then_some(&[]);
    Ok(Json(views::root_created(&user, failed)).into_response())
}

/// `GET /instances/{id}/root` → `{"rootEnabled": bool}`.
pub async fn show(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let d = load_instance(&st, &ctx, &id).await?;
    let enabled = svc::root_enabled(&st, &ctx, &d).await?;
    Ok(Json(views::root_enabled(enabled)).into_response())
}
