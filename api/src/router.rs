//! Every route of the API.

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::error::ApiError;
use crate::handlers::{
    actions, clusters, databases, datastores, instance_modules, instances, modules, quotas, root,
    users,
};

/// `GET /`: the version document (no auth).
async fn versions(headers: axum::http::HeaderMap) -> Json<serde_json::Value> {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    Json(
        json!({"versions": [{"id": "v1.0", "status": "CURRENT", "updated": "2012-08-01T00:00:00Z",
        "links": [{"rel": "self", "href": format!("http://{host}/v1.0/")}]}]}),
    )
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("The resource could not be found.")
}

pub fn router(state: AppState) -> Router {
    let limit = state.settings.api.max_body_size;
    let t = "/v1.0/{tenant_id}";
    Router::new()
        .route("/", get(versions))
        .route(
            &format!("{t}/modules"),
            get(modules::index).post(modules::create),
        )
        .route(
            &format!("{t}/modules/{{id}}"),
            get(modules::show)
                .put(modules::update)
                .delete(modules::delete),
        )
        .route(
            &format!("{t}/modules/{{id}}/instances"),
            get(modules::instances).put(modules::reapply),
        )
        .route(
            &format!("{t}/modules/{{id}}/reapply"),
            get(modules::reapply_jobs),
        )
        .route(
            &format!("{t}/instances"),
            get(instances::index).post(instances::create),
        )
        .route(
            &format!("{t}/instances/detail"),
            get(instances::index_detail),
        )
        .route(
            &format!("{t}/instances/{{id}}"),
            get(instances::show).delete(instances::delete),
        )
        .route(
            &format!("{t}/instances/{{id}}/modules"),
            get(instance_modules::query).post(instance_modules::apply),
        )
        .route(
            &format!("{t}/instances/{{id}}/modules/{{module_id}}"),
            axum::routing::delete(instance_modules::remove),
        )
        .route(
            &format!("{t}/instances/{{id}}/action"),
            axum::routing::post(actions::action),
        )
        .route(
            &format!("{t}/instances/{{id}}/databases"),
            get(databases::index).post(databases::create),
        )
        .route(
            &format!("{t}/instances/{{id}}/databases/{{name}}"),
            axum::routing::delete(databases::delete),
        )
        .route(
            &format!("{t}/instances/{{id}}/users"),
            get(users::index).post(users::create),
        )
        .route(
            &format!("{t}/instances/{{id}}/users/{{name}}"),
            axum::routing::delete(users::delete),
        )
        .route(
            &format!("{t}/instances/{{id}}/root"),
            get(root::show).post(root::create),
        )
        .route(
            &format!("{t}/clusters"),
            get(clusters::index).post(clusters::create),
        )
        .route(
            &format!("{t}/clusters/{{id}}"),
            get(clusters::show)
                .post(clusters::action)
                .delete(clusters::delete),
        )
        .route(
            &format!("{t}/clusters/{{cid}}/instances/{{iid}}"),
            get(clusters::instance),
        )
        .route(&format!("{t}/datastores"), get(datastores::index))
        .route(
            &format!("{t}/datastores/versions/{{id}}"),
            get(datastores::version_by_id),
        )
        .route(&format!("{t}/datastores/{{ds}}"), get(datastores::show))
        .route(
            &format!("{t}/datastores/{{ds}}/versions"),
            get(datastores::versions),
        )
        .route(
            &format!("{t}/datastores/{{ds}}/versions/{{ver}}"),
            get(datastores::version),
        )
        .route(
            &format!("{t}/mgmt/quotas/{{id}}"),
            get(quotas::show).put(quotas::update),
        )
        .route(&format!("{t}/limits"), get(quotas::limits))
        .route(&format!("{t}/flavors"), get(datastores::flavors))
        .route(&format!("{t}/flavors/{{id}}"), get(datastores::flavor))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
