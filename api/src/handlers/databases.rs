//! `/v1.0/{tenant_id}/instances/{id}/databases[/{name}]`: the guest's databases (Trove's
//! `SchemaController`), and what they share with its users ([`super::users`]): the same three
//! routes, told apart by a [`Kind`]. The rules live in [`crate::service::databases`].

use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{accepted, load_instance, next_link, paging, PageQuery, Scoped};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::service::databases::{self as svc, DATA_PLANE_MANAGERS, PAGE_SIZE};
use crate::views::databases as views;
use trove_common::rpc::guest::{DatabaseSpec, UserSpec};

/// Which of the guest's collections a data-plane route is about.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Databases,
    Users,
}

impl Kind {
    /// The path segment after `/instances/{id}/`.
    fn segment(self) -> &'static str {
        match self {
            Kind::Databases => "databases",
            Kind::Users => "users",
        }
    }
}

/// `GET /instances/{id}/<kind>`: one page, `links` when there is another.
pub(super) async fn index_of(kind: Kind, r: Scoped, page: PageQuery) -> ApiResult<Response> {
    let Scoped { st, ctx, path } = r;
    let (tenant, id) = path;
    let (limit, marker) = paging(&page.q, PAGE_SIZE)?;
    let d = load_instance(&st, &ctx, &id).await?;
    svc::verify(&d, &DATA_PLANE_MANAGERS)?;
    let g = svc::Guest::new(&st, &ctx, &d);
    let (view, next) = match kind {
        Kind::Databases => {
            let (dbs, next) = g.list::<DatabaseSpec>(limit, marker, false).await?;
            (views::databases(&dbs), next)
        }
        Kind::Users => {
            let (users, next) = g.list::<UserSpec>(limit, marker, false).await?;
            (views::users(&users), next)
        }
    };
    let mut body = view.as_object().cloned().unwrap_or_default();
    let path = format!("/v1.0/{tenant}/instances/{id}/{}", kind.segment());
    next_link(
        &mut body,
        &ctx,
        &path,
        page.raw.as_deref(),
        next.as_deref(),
        next.is_some(),
    );
    Ok(Json(body).into_response())
}

/// `POST /instances/{id}/<kind>` → 202: the body's schema, the instance, the names, the guest.
pub(super) async fn create_of(
    kind: Kind,
    r: Scoped,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    match kind {
        Kind::Databases => svc::check_databases_schema(&body)?,
        Kind::Users => svc::check_users_schema(&body)?,
    }
    let Scoped { st, ctx, path } = r;
    let d = load_instance(&st, &ctx, &path.1).await?;
    let g = svc::Guest::new(&st, &ctx, &d);
    match kind {
        Kind::Databases => g.create_databases(svc::populate_databases(&body)?).await?,
        Kind::Users => g.create_users(svc::populate_users(&body)?).await?,
    }
    Ok(accepted())
}

/// `DELETE /instances/{id}/<kind>/{name}` → 202.
pub(super) async fn delete_of(
    kind: Kind,
    r: Scoped<(String, String, String)>,
) -> ApiResult<Response> {
    let Scoped { st, ctx, path } = r;
    let (_t, id, name) = path;
    let d = load_instance(&st, &ctx, &id).await?;
    let g = svc::Guest::new(&st, &ctx, &d);
    match kind {
        Kind::Databases => g.delete_database(&name).await?,
        Kind::Users => g.delete_user(&name).await?,
    }
    Ok(accepted())
}

/// `GET /instances/{id}/databases`: one page, `links` when there is another.
pub async fn index(r: Scoped, page: PageQuery) -> ApiResult<Response> {
    index_of(Kind::Databases, r, page).await
}

/// `POST /instances/{id}/databases` → 202.
pub async fn create(r: Scoped, body: JsonBody) -> ApiResult<Response> {
    create_of(Kind::Databases, r, body).await
}

/// `DELETE /instances/{id}/databases/{name}` → 202.
pub async fn delete(r: Scoped<(String, String, String)>) -> ApiResult<Response> {
    delete_of(Kind::Databases, r).await
}
