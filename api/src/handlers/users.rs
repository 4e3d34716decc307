//! `/v1.0/{tenant_id}/instances/{id}/users[/{name}]`: the guest's users (Trove's `UserController`),
//! on the routes they share with its databases ([`super::databases`]). The rules live in
//! [`crate::service::databases`].

use axum::response::Response;

use super::databases::{create_of, delete_of, index_of, Kind};
use super::{PageQuery, Scoped};
use crate::error::ApiResult;
use crate::extract::JsonBody;

/// `GET /instances/{id}/users`: one page, `links` when there is another.
pub async fn index(r: Scoped, page: PageQuery) -> ApiResult<Response> {
    index_of(Kind::Users, r, page).await
}

/// `POST /instances/{id}/users` → 202.
pub async fn create(r: Scoped, body: JsonBody) -> ApiResult<Response> {
    create_of(Kind::Users, r, body).await
}

/// `DELETE /instances/{id}/users/{name}` (`name`, or `name@host`) → 202.
pub async fn delete(r: Scoped<(String, String, String)>) -> ApiResult<Response> {
    delete_of(Kind::Users, r).await
}
