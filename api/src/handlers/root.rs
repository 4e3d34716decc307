//! `/v1.0/{tenant_id}/instances/{id}/root`: enable root and ask whether it is enabled (Trove's
//! `RootController`; redis through `RedisRootController`, which sets `requirepass`).

use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{load_instance, Scoped};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::service::databases as svc;
use crate::views::databases as views;

/// `POST /instances/{id}/root` (optional body `{"password": ..}`) → 200 with the root user.
pub async fn create(r: Scoped, JsonBody(body): JsonBody) -> ApiResult<Response> {
    let password = svc::root_password(&body)?;
    let Scoped { st, ctx, path } = r;
    let d = load_instance(&st, &ctx, &path.1).await?;
    let user = svc::Guest::new(&st, &ctx, &d).enable_root(password).await?;
    // Redis lists the replicas it could not update; this build has no replicas.
    let failed: Option<&[String]> = (d.manager == "redis").then_some(&[]);
    Ok(Json(views::root_created(&user, failed)).into_response())
}

/// `GET /instances/{id}/root` → `{"rootEnabled": bool}`.
pub async fn show(r: Scoped) -> ApiResult<Response> {
    let Scoped { st, ctx, path } = r;
    let d = load_instance(&st, &ctx, &path.1).await?;
    let enabled = svc::Guest::new(&st, &ctx, &d).root_enabled().await?;
    Ok(Json(views::root_enabled(enabled)).into_response())
}
