//! Quotas: the reservation instance and cluster create make, and the rules of the mgmt quota API
//! (Trove's `extensions/mgmt/quota/service.py`) and of `GET /limits` (`limits/service.py`).

use diesel::pg::PgConnection;
use serde_json::Value;
use trove_common::config::Settings;
use trove_common::db::models::quota::{self, Defaults, Deltas, Reservation};
use trove_common::db::models::QuotaUsage;

use crate::error::{ApiError, ApiResult};
use crate::extract::Context;

/// Reserves `deltas` for `tenant` in the caller's transaction, which must also write the rows they
/// stand for. Over a limit: 413 with Trove's message, and the caller's transaction rolls back.
pub fn reserve(
    conn: &mut PgConnection,
    settings: &Settings,
    tenant: &str,
    deltas: &Deltas,
) -> ApiResult<()> {
    let defaults = Defaults::from_settings(&settings.default);
    match QuotaUsage::reserve(conn, tenant, deltas, &defaults)? {
        Reservation::Reserved => Ok(()),
        Reservation::Exceeded(overs) => {
            tracing::info!(tenant.id = %tenant, quota.over = ?overs, "create refused: over quota");
            Err(ApiError::OverLimit(quota::exceeded_message(&overs)))
        }
    }
}

/// Who may see `id`'s quotas: an admin any tenant's, anyone else only their own (Trove since Xena;
/// `TroveOperationAuthError`, 403, names the caller's tenant).
pub fn authorize_show(ctx: &Context, id: &str) -> ApiResult<()> {
    if id == ctx.project_id || ctx.is_admin {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "Operation not allowed for tenant {}.",
        ctx.project_id
    )))
}

/// Only an admin updates quotas (Trove's `@admin_context`, whose message this is).
///
/// **Deviation**: Trove raises `exception.Forbidden`, which its `exception_map` (looked up by exact
/// class) sends as 401 `unauthorized`; this answers 403 `forbidden`, the status every other
/// permission refusal here has, so a client does not take it for a bad token.
pub fn authorize_update(ctx: &Context) -> ApiResult<()> {
    if ctx.is_admin {
        return Ok(());
    }
    Err(ApiError::forbidden("User does not have admin privileges."))
}

/// The limits a `PUT /mgmt/quotas/{id}` body sets, checked the way Trove checks them, entry by
/// entry: a `null` limit is skipped; a limit below -1 is 400 `QuotaLimitTooSmall`; `xmlns` is
/// skipped; an unknown resource is 404 `QuotaResourceUnknown`.
///
/// **Deviations** (each where Trove answers 500): a body without a `quotas` object is 400
/// `Invalid request body.`, and a limit that is not an integer (a string, a fraction, a boolean,
/// beyond 32 bits) is 400. Entries are checked in key order (Trove: body order), and every entry is
/// checked before anything is written (Trove writes the entries before a bad one).
pub fn parse_update(body: &Value) -> ApiResult<Vec<(&'static str, i32)>> {
    let invalid = || ApiError::bad("Invalid request body.");
    let entries = body
        .as_object()
        .filter(|o| !o.is_empty())
        .ok_or_else(invalid)?
        .get("quotas")
        .and_then(Value::as_object)
        .ok_or_else(invalid)?;
    let mut limits = Vec::new();
    for (resource, limit) in entries {
        if limit.is_null() {
            continue;
        }
        let Some(limit) = limit.as_i64() else {
            return Err(ApiError::bad(format!(
                "Quota limit '{}' for '{resource}' is not an integer.",
                py_str(limit)
            )));
        };
        if limit < -1 {
            return Err(ApiError::bad(format!(
                "Quota limit '{limit}' for '{resource}' is too small - must be at least '-1'."
            )));
        }
        if resource == "xmlns" {
            continue;
        }
        let Some(known) = quota::resource(resource) else {
            return Err(ApiError::not_found(format!(
                "Unknown quota resources {resource}."
            )));
        };
        let limit = i32::try_from(limit).map_err(|_| {
            ApiError::bad(format!(
                "Quota limit '{limit}' for '{resource}' is not an integer."
            ))
        })?;
        limits.push((known, limit));
    }
    Ok(limits)
}

/// A JSON value as Python's `str()` prints what `json.loads` made of it (for messages).
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => crate::validate::py_repr(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: Value) -> (&'static str, String) {
        let e = parse_update(&body).unwrap_err();
        let kind = match e {
            ApiError::BadRequest(_) => "400",
            ApiError::NotFound(_) => "404",
            _ => "other",
        };
        (kind, e.to_string())
    }

    #[test]
    fn update_bodies_as_trove_reads_them() {
        assert_eq!(
            parse_update(&json!({"quotas": {"instances": 10, "backups": 30}})).unwrap(),
            [("backups", 30), ("instances", 10)]
        );
        assert_eq!(
            parse_update(&json!({"quotas": {"ram": -1, "volumes": null, "xmlns": 5}})).unwrap(),
            [("ram", -1)]
        );
        assert_eq!(
            err(json!({"quotas": {"instances": -2}})),
            (
                "400",
                "Quota limit '-2' for 'instances' is too small - must be at least '-1'.".into()
            )
        );
        // The size check comes first, as in Trove: even an unknown resource.
        assert_eq!(
            err(json!({"quotas": {"cores": -5}})).1,
            "Quota limit '-5' for 'cores' is too small - must be at least '-1'."
        );
        assert_eq!(
            err(json!({"quotas": {"cores": 5}})),
            ("404", "Unknown quota resources cores.".into())
        );
    }

    #[test]
    fn bad_bodies_are_400_not_500() {
        for body in [
            json!({}),
            json!([]),
            json!("quotas"),
            json!({"quota": {"instances": 1}}),
            json!({"quotas": [1]}),
        ] {
            assert_eq!(err(body), ("400", "Invalid request body.".into()));
        }
        for (limit, shown) in [
            (json!("ten"), "ten"),
            (json!(2.5), "2.5"),
            (json!(true), "True"),
            (json!([1]), "[1]"),
            (json!(1_i64 << 40), "1099511627776"),
        ] {
            assert_eq!(
                err(json!({"quotas": {"instances": limit}})),
                (
                    "400",
                    format!("Quota limit '{shown}' for 'instances' is not an integer.")
                )
            );
        }
    }
}
