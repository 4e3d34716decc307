//! `/v1.0/{tenant_id}/instances/{id}/modules...`: synchronous calls to the guest (docs/module-semantics.md
//! §9, §10, §14).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use diesel::Connection;
use serde_json::{json, Map, Value};
use trove_common::db::models::{InstanceModule, Module};
use trove_common::module::check_datastore;
use trove_common::rpc::guest::{GuestMsg, ModuleApply, ModuleEntry, ModuleList, ModuleRemove};

use super::{call_guest, load_instance, ok_empty};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Context, JsonBody};
use crate::handlers::instances::module_ids;
use crate::service::catalog::Catalog;
use crate::service::instances::payloads;
use crate::validate::Checker;
use crate::views::modules::payload;

/// `GET /instances/{id}/modules`: what the guest reports (module-query, module-retrieve).
pub async fn query(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let inst = load_instance(&st, &ctx, &id).await?.instance;
    let include_contents = q.get("include_contents").is_some_and(|v| !v.is_empty());
    let msg = GuestMsg::ModuleList(ModuleList { include_contents });
    let result = call_guest(&st, &ctx, &inst.id, inst.encrypted_key.as_deref(), &msg).await?;
    Ok(Json(json!({"modules": result})).into_response())
}

/// `POST /instances/{id}/modules`: module-apply.
pub async fn apply(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let mut c = Checker::default();
    let root: Map<String, Value> = body.as_object().cloned().unwrap_or_default();
    if !c.required(&root, &[], "modules") {
        return c.finish().map(|_| ok_empty());
    }
    let ids = module_ids(&mut c, root.get("modules"), &["modules"]);
    c.finish()?;
    let detail = load_instance(&st, &ctx, &id).await?;
    if detail.instance.server_status.as_deref() == Some("SHUTDOWN") {
        return Err(ApiError::Unprocessable(format!(
            "Instance {id} is not ready."
        )));
    }
    let keys = st.module_keys.clone();
    let ctx2 = ctx.clone();
    let (ds_id, ver_id) = (
        detail.datastore_id.clone(),
        detail.instance.datastore_version_id.clone(),
    );
    let (mods, entries) = st
        .db
        .run(move |conn| {
            let mods = Module::load_for_apply(conn, &ids, ctx2.caller())?;
            for m in &mods {
                check_datastore(
                    &m.name,
                    m.datastore_id.as_deref(),
                    m.datastore_version_id.as_deref(),
                    &ds_id,
                    &ver_id,
                )
                .map_err(|e| ApiError::bad(format!("The module is invalid: {e}")))?;
            }
            let cat = Catalog::load(conn)?;
            let entries: Vec<ModuleEntry> = payloads(&mods, &cat, &keys)?;
            Ok::<_, ApiError>((mods, entries))
        })
        .await?;
    let msg = GuestMsg::ModuleApply(ModuleApply {
        modules: entries,
        job_id: None,
    });
    let inst = &detail.instance;
    let result = call_guest(&st, &ctx, &inst.id, inst.encrypted_key.as_deref(), &msg).await?;
    let instance_id = inst.id.clone();
    let recorded: Vec<(String, String)> =
        mods.iter().map(|m| (m.id.clone(), m.md5.clone())).collect();
    st.db
        .run(move |conn| {
            conn.transaction(|conn| {
                for (mid, md5) in &recorded {
                    InstanceModule::record(conn, &instance_id, mid, md5)?;
                }
                Ok::<_, ApiError>(())
            })
        })
        .await?;
    Ok(Json(json!({"modules": result})).into_response())
}

/// `DELETE /instances/{id}/modules/{module_id}`: module-remove.
pub async fn remove(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id, module_id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let inst = load_instance(&st, &ctx, &id).await?.instance;
    let ctx2 = ctx.clone();
    let entry = st
        .db
        .run(move |conn| {
            let m = crate::service::modules::load(conn, &module_id, ctx2.caller())?;
            let cat = Catalog::load(conn)?;
            Ok::<_, ApiError>(ModuleEntry {
                module: payload(&m, &cat, None),
            })
        })
        .await?;
    let module_id = entry.module.id.clone();
    let msg = GuestMsg::ModuleRemove(ModuleRemove {
        module: Box::new(entry),
    });
    call_guest(&st, &ctx, &inst.id, inst.encrypted_key.as_deref(), &msg).await?;
    let instance_id = inst.id.clone();
    st.db
        .run(move |conn| {
            InstanceModule::retire(conn, &instance_id, &module_id).map_err(ApiError::from)
        })
        .await?;
    Ok(ok_empty())
}
