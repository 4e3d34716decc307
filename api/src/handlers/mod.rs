//! HTTP handlers: extract, call a service function inside `Db::run`, map to a view. No SQL here.

pub mod actions;
pub mod clusters;
pub mod databases;
pub mod datastores;
pub mod instance_modules;
pub mod instances;
pub mod modules;
pub mod quotas;
pub mod root;
pub mod users;

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, Query, RawQuery, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use trove_common::amqp::AmqpError;
use trove_common::db::models::instance::InstanceDetail;
use trove_common::db::models::Instance;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Context;

/// The state, the caller and the path parameters of a `/v1.0/{tenant_id}/...` route (by default
/// `(tenant_id, id)`), extracted in that order, each failing as its own extractor does.
pub struct Scoped<P = (String, String)> {
    pub st: AppState,
    pub ctx: Context,
    pub path: P,
}

impl<P: DeserializeOwned + Send + 'static> FromRequestParts<AppState> for Scoped<P> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let State(st) = State::<AppState>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let ctx = Context::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path(path) = Path::<P>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self { st, ctx, path })
    }
}

/// A listing's query: its parameters (`limit`, `marker`, ...) and the raw query string (for the
/// `next` link).
pub struct PageQuery {
    pub q: HashMap<String, String>,
    pub raw: Option<String>,
}

impl FromRequestParts<AppState> for PageQuery {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Query(q) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self { q, raw })
    }
}

/// `202 Accepted` with an empty body.
pub fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// `200 OK` with an empty body.
pub fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

/// Trove's query-flag rule for module listings: true only when the value is `true` in any case.
pub fn flag_true(v: Option<&String>) -> bool {
    v.is_some_and(|s| s.eq_ignore_ascii_case("true"))
}

/// `limit` and `marker`: the effective limit is `min(limit or page_size, page_size)`.
pub fn paging(
    q: &std::collections::HashMap<String, String>,
    page_size: i64,
) -> ApiResult<(i64, Option<String>)> {
    let limit = match q.get("limit") {
        None => page_size,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad(format!("limit '{l}' is not an integer")))?
            .clamp(1, page_size),
    };
    Ok((limit, q.get("marker").cloned()))
}

/// Adds `links: [{"rel": "next", ...}]` when there was another page (`rows.len() > limit`).
pub fn next_link(
    body: &mut serde_json::Map<String, Value>,
    ctx: &Context,
    path: &str,
    raw_query: Option<&str>,
    last_id: Option<&str>,
    more: bool,
) {
    let (Some(last), true) = (last_id, more) else {
        return;
    };
    let mut parts: Vec<String> = raw_query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("marker="))
        .map(str::to_owned)
        .collect();
    let mut placed = false;
    if let Some(orig) = raw_query {
        // Keep `marker` where it was when the request had one.
        let mut rebuilt = Vec::new();
        for p in orig.split('&').filter(|p| !p.is_empty()) {
            if p.starts_with("marker=") {
                rebuilt.push(format!("marker={last}"));
                placed = true;
            } else {
                rebuilt.push(p.to_owned());
            }
        }
        if placed {
            parts = rebuilt;
        }
    }
    if !placed {
        parts.push(format!("marker={last}"));
    }
    let href = format!("{}{}?{}", ctx.base_url, path, parts.join("&"));
    body.insert(
        "links".into(),
        serde_json::json!([{"rel": "next", "href": href}]),
    );
}

/// Loads a live instance the caller may see (admins: any tenant), with its view data; 404 otherwise.
pub async fn load_instance(state: &AppState, ctx: &Context, id: &str) -> ApiResult<InstanceDetail> {
    let id = id.to_owned();
    let ctx = ctx.clone();
    state
        .db
        .run(move |c| {
            let inst = Instance::find(c, &id, ctx.instance_scope())?
                .ok_or_else(|| ApiError::resource_not_found(&id))?;
            Ok(Instance::detail(c, vec![inst])?.remove(0))
        })
        .await
}

/// Calls `msg` on the instance's guest with its key and the high timeout; failures are mapped by
/// [`guest_error`].
pub async fn call_guest(
    st: &AppState,
    ctx: &Context,
    instance_id: &str,
    encrypted_key: Option<&str>,
    msg: &trove_common::rpc::guest::GuestMsg,
) -> ApiResult<Value> {
    let keys = trove_common::rpc::keys::guest_keyring(&st.settings, encrypted_key)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("instance {instance_id} key: {e}")))?;
    let (method, args) = trove_common::rpc::to_method_args(msg);
    st.rpc
        .call(
            &st.broker.names().guest(instance_id),
            &method,
            args,
            &ctx.rpc(),
            keys.as_ref(),
            st.settings.high_timeout(),
        )
        .await
        .map_err(guest_error)
}

/// Maps a failed guest call to Trove's GuestError / GuestTimeout texts; an operation the
/// datastore lacks (the guest's `DatastoreOperationNotSupported`) is Trove's 501 with its text.
pub fn guest_error(e: AmqpError) -> ApiError {
    match e {
        AmqpError::Remote(r) if r.class == "DatastoreOperationNotSupported" => {
            ApiError::NotImplemented(r.message)
        }
        AmqpError::CallTimeout { .. } => {
            ApiError::bad("Timeout trying to connect to the Guest Agent.")
        }
        AmqpError::Remote(r) => {
            let msg = r.message.trim_end_matches('.');
            ApiError::bad(format!(
                "An error occurred communicating with the guest: {msg}."
            ))
        }
        AmqpError::Unroutable(_) => ApiError::bad(
            "An error occurred communicating with the guest: the guest agent is not listening.",
        ),
        other => ApiError::Unavailable(format!("The message broker is unavailable: {other}")),
    }
}
