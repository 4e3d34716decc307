//! The module rules of docs/module-semantics.md §2–§7: validation, admin options, datastore resolution,
//! uniqueness, live_update, md5 and encryption at rest.

use diesel::pg::PgConnection;
use diesel::Connection;
use serde_json::{Map, Value};
use trove_common::crypto::Keyring;
use trove_common::db::models::module::Caller;
use trove_common::db::models::Module;
use trove_common::db::{new_id, now};
use trove_common::module::contents_md5;

use super::catalog::Catalog;
use crate::error::{ApiError, ApiResult};
use crate::validate::{root, Checker};

const FLAGS: [&str; 6] = [
    "auto_apply",
    "all_tenants",
    "visible",
    "live_update",
    "priority_apply",
    "full_access",
];
/// Validates a module body (create: `required`; update: any subset) with Trove's schema wording.
/// Trove's schema allows properties it does not name (`additionalProperties: True`, in `datastore`
/// too), so unknown keys are ignored, and it does not decode `contents`: text that is not base64 is
/// stored as sent, and the guest reports it when it applies it (docs/module-semantics.md §4).
fn check_body(m: &Map<String, Value>, create: bool) -> ApiResult<()> {
    let mut c = Checker::default();
    let p = |k: &'static str| ["module", k];
    if create {
        for k in ["name", "module_type", "contents"] {
            c.required(m, &["module"], k);
        }
    }
    for k in ["name", "module_type", "type"] {
        if let Some(v) = m.get(k) {
            c.name_like(v, &p(k), 255);
        }
    }
    // Trove's schema has no null for these: `description` is a non-empty string, the all_* flags
    // integers (docs/rest-api.md, Modules).
    if let Some(v) = m.get("description") {
        c.name_like(v, &p("description"), 255);
    }
    if let Some(v) = m.get("contents") {
        c.non_empty_string(v, &p("contents"));
    }
    for k in FLAGS
        .iter()
        .copied()
        .chain(["all_datastores", "all_datastore_versions"])
    {
        if let Some(v) = m.get(k) {
            c.int_range(v, &p(k), 0, 1);
        }
    }
    if let Some(v) = m.get("apply_order") {
        c.int_range(v, &p("apply_order"), 0, 9);
    }
    if let Some(ds) = m.get("datastore") {
        if let Some(obj) = c.object(ds, &p("datastore")) {
            for k in ["type", "version"] {
                if let Some(v) = obj.get(k) {
                    c.non_empty_string(v, &["module", "datastore", k]);
                }
            }
        }
    }
    c.finish()
}

fn flag(m: &Map<String, Value>, k: &str) -> Option<i64> {
    m.get(k).and_then(Value::as_i64)
}

/// `validate_action` of §2: the admin-only options in use, or the full-access error.
fn admin_options(
    action: &str,
    tenant_all: bool,
    auto_apply: Option<i64>,
    visible: Option<i64>,
    priority_apply: Option<i64>,
    full_access: Option<i64>,
    is_admin: bool,
) -> ApiResult<bool> {
    let mut opts = Vec::new();
    if tenant_all {
        opts.push("Tenant: all".to_owned());
    }
    if let Some(v) = auto_apply.filter(|v| *v != 0) {
        opts.push(format!("Auto: {v}"));
    }
    if let Some(v) = visible.filter(|v| *v == 0) {
        opts.push(format!("Visible: {v}"));
    }
    if let Some(v) = priority_apply.filter(|v| *v != 0) {
        opts.push(format!("Priority: {v}"));
    }
    if let Some(fa) = full_access {
        if fa != 0 && !opts.is_empty() {
            return Err(ApiError::bad(format!(
                "The following values are invalid: Cannot make module full access: ({}).",
                opts.join(", ")
            )));
        }
        opts.push(format!("Full Access: {fa}"));
    }
    if !opts.is_empty() && !is_admin {
        return Err(ApiError::forbidden(format!(
            "You must be admin to {action} a module with these options. ({})",
            opts.join(", ")
        )));
    }
    Ok(!opts.is_empty())
}

fn check_type(t: &str, allowed: &[String]) -> ApiResult<String> {
    let lower = t.to_lowercase();
    if allowed.iter().any(|a| a.to_lowercase() == lower) {
        Ok(lower)
    } else {
        Err(ApiError::not_found(format!(
            "Module type '{t}' was not found."
        )))
    }
}

fn duplicate_error(m: &Module) -> ApiError {
    ApiError::bad(format!(
        "A module with the name '{}' already exists for datastore '{}' and datastore version '{}'",
        m.name,
        m.datastore_id.as_deref().unwrap_or("all"),
        m.datastore_version_id.as_deref().unwrap_or("all")
    ))
}

/// Maps a unique-index violation (a concurrent create that won the race) to the duplicate error.
fn insert_or_duplicate(conn: &mut PgConnection, m: &Module, insert: bool) -> ApiResult<()> {
    let res = if insert {
        Module::insert(conn, m)
    } else {
        Module::save(conn, m)
    };
    match res {
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Err(duplicate_error(m)),
        other => Ok(other?),
    }
}

/// What a module body needs from the request besides the JSON.
pub struct Request<'a> {
    pub caller: Caller<'a>,
    pub tenant: &'a str,
    pub module_types: &'a [String],
    pub keys: &'a Keyring,
}

/// `POST /modules` (§3). Runs in one transaction.
pub fn create(conn: &mut PgConnection, req: &Request<'_>, body: &Value) -> ApiResult<Module> {
    let m = root(body, "module")?;
    check_body(m, true)?;
    let module_type = check_type(
        m["module_type"].as_str().unwrap_or_default(),
        req.module_types,
    )?;
    let all_tenants = flag(m, "all_tenants").unwrap_or(0) != 0;
    let auto_apply = flag(m, "auto_apply").unwrap_or(0);
    let visible = flag(m, "visible").unwrap_or(1);
    let priority_apply = flag(m, "priority_apply").unwrap_or(0);
    let full_access = flag(m, "full_access");
    admin_options(
        "create",
        all_tenants,
        Some(auto_apply),
        Some(visible),
        Some(priority_apply),
        full_access,
        req.caller.is_admin,
    )?;
    conn.transaction(|conn| {
        let cat = Catalog::load(conn)?;
        let ds = m.get("datastore");
        let ds_type = ds.and_then(|d| d.get("type")).and_then(Value::as_str);
        let ds_ver = ds.and_then(|d| d.get("version")).and_then(Value::as_str);
        let (datastore_id, datastore_version_id) = cat.resolve_for_module(ds_type, ds_ver)?;
        let contents = m["contents"].as_str().unwrap_or_default();
        let now = now();
        let module = Module {
            id: new_id(),
            name: m["name"].as_str().unwrap_or_default().to_owned(),
            module_type,
            contents: req.keys.encrypt(contents.as_bytes()),
            description: m
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            tenant_id: (!all_tenants).then(|| req.tenant.to_owned()),
            datastore_id,
            datastore_version_id,
            auto_apply: auto_apply != 0,
            visible: visible != 0,
            live_update: flag(m, "live_update").unwrap_or(0) != 0,
            priority_apply: priority_apply != 0,
            apply_order: flag(m, "apply_order").unwrap_or(5) as i16,
            is_admin: if full_access.is_some_and(|f| f != 0) {
                false
            } else {
                req.caller.is_admin
            },
            md5: contents_md5(contents),
            created: now,
            updated: now,
            deleted: false,
            deleted_at: None,
        };
        if Module::duplicate_exists(conn, &module)? {
            return Err(duplicate_error(&module));
        }
        insert_or_duplicate(conn, &module, true)?;
        Ok(module)
    })
}

/// The live_update guard of §5/§6 with Trove's text.
fn live_update_guard(conn: &mut PgConnection, m: &Module) -> ApiResult<()> {
    if !m.live_update && Module::applied_to_live_instance(conn, &m.id, &m.md5)? {
        return Err(ApiError::forbidden(
            "A module cannot be deleted or its contents modified if it has been applied to a non-terminated \
             instance, unless the module has been marked as 'live_update.' Please remove the module from all \
             non-terminated instances and try again.",
        ));
    }
    Ok(())
}

/// Loads a module with §1 visibility, or 404.
pub fn load(conn: &mut PgConnection, id: &str, caller: Caller<'_>) -> ApiResult<Module> {
    Module::find_visible(conn, id, caller)?.ok_or_else(|| ApiError::module_not_found(id))
}

/// `PUT /modules/{id}` (§5). Runs in one transaction.
pub fn update(
    conn: &mut PgConnection,
    req: &Request<'_>,
    id: &str,
    body: &Value,
) -> ApiResult<Module> {
    let m = root(body, "module")?;
    check_body(m, false)?;
    conn.transaction(|conn| {
        let original = load(conn, id, req.caller)?;
        let ds = m.get("datastore").and_then(Value::as_object);
        let ds_type = ds.and_then(|d| d.get("type")).and_then(Value::as_str);
        let ds_ver = ds.and_then(|d| d.get("version")).and_then(Value::as_str);
        if m.contains_key("all_datastores") && ds_type.is_some() {
            return Err(ApiError::bad("The module is invalid: You cannot set a datastore and specify --all_datastores"));
        }
        if m.contains_key("all_datastore_versions") && ds_ver.is_some() {
            return Err(ApiError::bad(
                "The module is invalid: You cannot set a datastore version and specify --all_datastore_versions",
            ));
        }
        live_update_guard(conn, &original)?;
        if original.is_admin && !req.caller.is_admin {
            return Err(ApiError::forbidden(
                "You must be admin to update a module with these options. (Module is an admin module)",
            ));
        }
        let mut module = original.clone();
        if let Some(n) = m.get("name").and_then(Value::as_str) {
            module.name = n.to_owned();
        }
        if let Some(t) = m.get("module_type").or_else(|| m.get("type")).and_then(Value::as_str) {
            module.module_type = check_type(t, req.module_types)?;
        }
        if let Some(d) = m.get("description") {
            module.description = d.as_str().map(str::to_owned);
        }
        if let Some(v) = flag(m, "all_tenants") {
            module.tenant_id = (v == 0).then(|| req.tenant.to_owned());
        }
        if let Some(v) = flag(m, "auto_apply") {
            module.auto_apply = v != 0;
        }
        if let Some(v) = flag(m, "visible") {
            module.visible = v != 0;
        }
        if let Some(v) = flag(m, "live_update") {
            module.live_update = v != 0;
        }
        if let Some(v) = flag(m, "priority_apply") {
            module.priority_apply = v != 0;
        }
        if let Some(v) = flag(m, "apply_order") {
            module.apply_order = v as i16;
        }
        let full_access = flag(m, "full_access");
        let had_options = admin_options(
            "update",
            module.tenant_id.is_none(),
            Some(i64::from(module.auto_apply)),
            Some(i64::from(module.visible)),
            Some(i64::from(module.priority_apply)),
            full_access,
            req.caller.is_admin,
        )?;
        module.is_admin = original.is_admin || had_options;
        if let Some(fa) = full_access {
            module.is_admin = fa == 0;
        }
        // Datastore (§5 step 5): the values sent, else the stored ids, resolved again exactly as on
        // create, so a stored version must belong to a newly sent datastore and must still be active.
        let cat = Catalog::load(conn)?;
        let ds_value = match ds_type {
            Some(t) => Some(t.to_owned()),
            None if m.contains_key("all_datastores") => None,
            None => original.datastore_id.clone(),
        };
        let ver_value = match ds_ver {
            Some(v) => Some(v.to_owned()),
            None if m.contains_key("all_datastore_versions") => None,
            None => original.datastore_version_id.clone(),
        };
        let (datastore_id, datastore_version_id) =
            cat.resolve_for_module(ds_value.as_deref(), ver_value.as_deref())?;
        module.datastore_id = datastore_id;
        module.datastore_version_id = datastore_version_id;
        if let Some(contents) = m.get("contents").and_then(Value::as_str) {
            // A stored value that does not decrypt (altered, or written under a key we no longer hold) is
            // an integrity failure to surface, never a reason to treat the contents as changed.
            let stored = req.keys.decrypt_string(&original.contents).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!(
                    "module {} contents could not be decrypted: {e}",
                    original.id
                ))
            })?;
            if stored != contents {
                module.md5 = contents_md5(contents);
                module.contents = req.keys.encrypt(contents.as_bytes());
            }
        }
        module.updated = now();
        let key_changed = module.name != original.name
            || module.module_type != original.module_type
            || module.tenant_id != original.tenant_id
            || module.datastore_id != original.datastore_id
            || module.datastore_version_id != original.datastore_version_id;
        if key_changed && Module::duplicate_exists(conn, &module)? {
            return Err(duplicate_error(&module));
        }
        insert_or_duplicate(conn, &module, false)?;
        Ok(module)
    })
}

/// `DELETE /modules/{id}` (§6): a soft delete. Runs in one transaction.
pub fn delete(conn: &mut PgConnection, caller: Caller<'_>, id: &str) -> ApiResult<()> {
    conn.transaction(|conn| {
        let mut module = load(conn, id, caller)?;
        admin_options(
            "delete",
            module.tenant_id.is_none(),
            Some(i64::from(module.auto_apply)),
            Some(i64::from(module.visible)),
            Some(i64::from(module.priority_apply)),
            None,
            caller.is_admin,
        )?;
        live_update_guard(conn, &module)?;
        let now = now();
        module.deleted = true;
        module.deleted_at = Some(now);
        module.updated = now;
        Module::save(conn, &module)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn admin_option_texts() {
        let e = admin_options("create", false, Some(1), Some(1), Some(0), None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "You must be admin to create a module with these options. (Auto: 1)"
        );
        let e =
            admin_options("create", true, Some(0), Some(0), Some(1), Some(1), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "The following values are invalid: Cannot make module full access: (Tenant: all, Visible: 0, Priority: 1)."
        );
        let e =
            admin_options("update", false, Some(0), Some(1), Some(0), Some(0), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "You must be admin to update a module with these options. (Full Access: 0)"
        );
        assert!(!admin_options("delete", false, Some(0), Some(1), Some(0), None, false).unwrap());
    }

    #[test]
    fn body_checks() {
        let m = json!({"name": "x", "module_type": "ping", "contents": "bWVzc2FnZQ==", "apply_order": 10});
        let e = check_body(m.as_object().unwrap(), true)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Validation error: module['apply_order'] 10 is greater than the maximum of 9"
        );
        let m = json!({"name": "x", "module_type": "ping", "contents": "", "bogus": 1});
        let e = check_body(m.as_object().unwrap(), true)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Validation error: module['contents'] '' is too short");
        // Unknown keys (also in `datastore`) and contents that are not base64 pass, as in Trove.
        let m = json!({"name": "x", "module_type": "ping", "contents": "@@@", "bogus": 1,
                       "datastore": {"type": "redis", "extra": true}});
        check_body(m.as_object().unwrap(), true).unwrap();
        let m = json!({"bogus": 1, "datastore": {"extra": 1}});
        check_body(m.as_object().unwrap(), false).unwrap();
        let m = json!({"type": "ping", "all_datastores": 1});
        check_body(m.as_object().unwrap(), false).unwrap();
    }

    #[test]
    fn module_type_is_checked_and_lowered() {
        let types = vec!["ping".to_owned()];
        assert_eq!(check_type("PING", &types).unwrap(), "ping");
        assert_eq!(
            check_type("nope", &types).unwrap_err().to_string(),
            "Module type 'nope' was not found."
        );
    }
}
