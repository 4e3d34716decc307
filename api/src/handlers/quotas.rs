//! `/v1.0/{tenant_id}/mgmt/quotas/{id}` (Trove's mgmt `QuotaController`) and
//! `/v1.0/{tenant_id}/limits` (`LimitsController`).

use axum::response::{IntoResponse, Response};
use axum::Json;
use diesel::Connection;
use trove_common::db::models::quota::Defaults;
use trove_common::db::models::{Quota, QuotaUsage};

use super::Scoped;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::service::quotas as svc;
use crate::views::quotas as views;

/// `GET /mgmt/quotas/{id}`: every resource of tenant `id` with its usage and limit.
pub async fn show(r: Scoped) -> ApiResult<Response> {
    let Scoped { st, ctx, path } = r;
    let id = path.1;
    svc::authorize_show(&ctx, &id)?;
    let defaults = Defaults::from_settings(&st.settings.default);
    let rows = st
        .db
        .run(move |c| Ok::<_, ApiError>(QuotaUsage::usages(c, &id, &defaults)?))
        .await?;
    Ok(Json(views::usages(&rows)).into_response())
}

/// `PUT /mgmt/quotas/{id}` with `{"quotas": {"<resource>": <limit>, ...}}` (admin): sets tenant
/// `id`'s own limits, all or none, and answers with the limits set.
pub async fn update(r: Scoped, JsonBody(body): JsonBody) -> ApiResult<Response> {
    let Scoped { st, ctx, path } = r;
    let id = path.1;
    svc::authorize_update(&ctx)?;
    let limits = svc::parse_update(&body)?;
    let set = limits.clone();
    st.db
        .run(move |c| {
            c.transaction(|c| Quota::set_limits(c, &id, &set))?;
            tracing::info!(tenant.id = %id, quota.limits = ?set, "quota limits updated");
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(Json(views::limits_set(&limits)).into_response())
}

/// `GET /limits`: the caller's absolute limits (its own, else the defaults).
pub async fn limits(r: Scoped<String>) -> ApiResult<Response> {
    let Scoped { st, ctx, .. } = r;
    let defaults = Defaults::from_settings(&st.settings.default);
    let tenant = ctx.project_id.clone();
    let absolute = st
        .db
        .run(move |c| Ok::<_, ApiError>(Quota::hard_limits(c, &tenant, &defaults)?))
        .await?;
    Ok(Json(views::limits(&absolute)).into_response())
}
