//! The one error type of the API and how it renders: Trove's fault bodies,
//! `{"<faultName>": {"code": N, "message": "..."}}`.
//!
//! Handlers return `Result<_, ApiError>`. Unexpected failures (`Internal`) are logged once here with
//! an id, and the client gets Trove's generic 500 text carrying that id, never the cause.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use trove_common::db::DbError;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `badRequest`.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `itemNotFound`.
    #[error("{0}")]
    NotFound(String),
    /// 413 `overLimit`.
    #[error("{0}")]
    OverLimit(String),
    /// 422 `unprocessableEntity`.
    #[error("{0}")]
    Unprocessable(String),
    /// 501 `notImplemented`.
    #[error("{0}")]
    NotImplemented(String),
    /// 503: the database or broker is unreachable; safe to retry.
    #[error("{0}")]
    Unavailable(String),
    /// 500 `instanceFault`.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::Forbidden(msg.into())
    }

    /// `Module with ID <id> could not be found.`
    pub fn module_not_found(id: &str) -> Self {
        Self::NotFound(format!("Module with ID {id} could not be found."))
    }

    /// `Resource <id> cannot be found.` (instances, flavors in views).
    pub fn resource_not_found(id: &str) -> Self {
        Self::NotFound(format!("Resource {id} cannot be found."))
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "badRequest"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "itemNotFound"),
            Self::OverLimit(_) => (StatusCode::PAYLOAD_TOO_LARGE, "overLimit"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessableEntity"),
            Self::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "notImplemented"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "serviceUnavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "instanceFault"),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Pool(p) => Self::Unavailable(format!("The database is unavailable: {p}")),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        Self::from(DbError::Query(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, fault) = self.parts();
        let message = match &self {
            Self::Internal(e) => {
                let id = uuid::Uuid::new_v4();
                tracing::error!(error.id = %id, error = ?e, "internal error");
                format!("Internal Server Error. Please keep this ID to help us figure out what went wrong: ({id}).")
            }
            other => other.to_string(),
        };
        (
            status,
            Json(json!({ fault: { "code": status.as_u16(), "message": message } })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn body(e: ApiError) -> (u16, serde_json::Value) {
        let r = e.into_response();
        let status = r.status().as_u16();
        let b = to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn fault_bodies_are_trove_shaped() {
        let (s, b) = body(ApiError::module_not_found("nope")).await;
        assert_eq!(s, 404);
        assert_eq!(
            b,
            json!({"itemNotFound": {"code": 404, "message": "Module with ID nope could not be found."}})
        );
        let (s, b) = body(ApiError::bad("x")).await;
        assert_eq!((s, &b["badRequest"]["code"]), (400, &json!(400)));
        let (s, b) = body(ApiError::Internal(anyhow::anyhow!("secret cause"))).await;
        assert_eq!(s, 500);
        let msg = b["instanceFault"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Internal Server Error. Please keep this ID"),
            "{msg}"
        );
        assert!(!msg.contains("secret cause"));
    }
}
