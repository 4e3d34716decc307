//! Request extractors: the caller's [`Context`] (authenticated by [`crate::auth`]) and a JSON body that
//! fails the Trove way.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde_json::Value;
use trove_common::rpc::RpcContext;

use crate::app::AppState;
use crate::error::ApiError;

/// The authenticated caller of a `/v1.0/{tenant_id}/...` request.
#[derive(Clone, Debug)]
pub struct Context {
    pub user_id: String,
    pub project_id: String,
    pub roles: Vec<String>,
    pub is_admin: bool,
    pub auth_token: String,
    pub request_id: String,
    /// `https://<Host header>`, for links.
    pub base_url: String,
}

impl Context {
    /// The RPC context carried by messages this request causes.
    pub fn rpc(&self) -> RpcContext {
        RpcContext {
            auth_token: Some(self.auth_token.clone()),
            user_id: Some(self.user_id.clone()),
            project_id: Some(self.project_id.clone()),
            tenant: Some(self.project_id.clone()),
            is_admin: self.is_admin,
            roles: self.roles.clone(),
            request_id: self.request_id.clone(),
            limit: None,
            marker: None,
        }
    }

    /// The instances the caller may see: all of them for an admin, else its project's.
    pub fn instance_scope(&self) -> trove_common::db::models::instance::Scope<'_> {
        if self.is_admin {
            trove_common::db::models::instance::Scope::Any
        } else {
            trove_common::db::models::instance::Scope::Tenant(&self.project_id)
        }
    }

    /// The caller as the module queries see it.
    pub fn caller(&self) -> trove_common::db::models::module::Caller<'_> {
        trove_common::db::models::module::Caller {
            project_id: &self.project_id,
            is_admin: self.is_admin,
        }
    }
}

impl FromRequestParts<AppState> for Context {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("Authentication required.".into()))?
            .to_owned();
        // The strategy (keystone or noauth) says who the token stands for; Trove's rules follow.
        let identity = state.auth.authenticate(&token).await?;
        let settings = &state.settings.default;
        let is_admin = identity
            .roles
            .iter()
            .any(|r| settings.admin_roles.contains(r));
        let Path(params): Path<std::collections::HashMap<String, String>> =
            Path::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::not_found("The resource could not be found."))?;
        let tenant = params.get("tenant_id").cloned().unwrap_or_default();
        if tenant != identity.project_id {
            return Err(ApiError::forbidden(format!(
                "User with tenant id {} cannot access this resource.",
                identity.project_id
            )));
        }
        let request_id = parts
            .headers
            .get("x-openstack-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(trove_common::rpc::new_request_id);
        let host = parts
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        Ok(Self {
            user_id: identity.user_id,
            project_id: identity.project_id,
            roles: identity.roles,
            is_admin,
            auth_token: token,
            request_id,
            base_url: format!("https://{host}"),
        })
    }
}

/// A JSON body: malformed JSON or an oversized body is a 400 with Trove's body, never axum's default.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings.api.max_body_size;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::bad(format!(
                    "Request body is larger than the limit of {limit} bytes."
                ))
            } else {
                ApiError::bad(format!("Malformed request body: {e}"))
            }
        })?;
        if bytes.is_empty() {
            return Ok(Self(Value::Object(Default::default())));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| ApiError::bad(format!("Malformed request body: {e}")))
    }
}
