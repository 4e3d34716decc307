//! `POST /v1.0/{tenant_id}/instances/{id}/action`: `{"restart": {}}` and (admins)
//! `{"reset_status": {}}` → 202, empty (Trove's `InstanceController.action`). The rules live in
//! [`crate::service::actions`].

use axum::extract::{Path, State};
use axum::response::Response;

use super::accepted;
use crate::app::AppState;
use crate::error::ApiResult;
use crate::extract::{Context, JsonBody};
use crate::service::actions::{self as svc, Action};
use crate::views::instances as views;

/// `POST /instances/{id}/action`.
pub async fn action(
    State(st): State<AppState>,
    ctx: Context,
    Path((_t, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    match svc::parse(&body)? {
        Action::Restart => {
            let settings = st.settings.clone();
            let topic = st.broker.names().taskmanager();
            let expiry = settings.default.agent_heartbeat_expiry;
            st.db
                .run(move |c| {
                    svc::restart(c, &settings, &ctx, &id, &topic, |d| {
                        views::status(d, expiry)
                    })
                })
                .await?;
            st.outbox.notify_one();
            Ok(accepted())
        }
        Action::ResetStatus { force_delete } => {
            st.db
                .run(move |c| svc::reset_status(c, &ctx, &id, force_delete))
                .await?;
            Ok(accepted())
        }
    }
}
