//! The instance data plane: databases, users and root on a running guest (Trove's
//! `extensions/common/{service,models,common}.py` with `common/db/mysql/models.py`'s rules).
//!
//! A request goes through the same gates, in the same order, as in Trove:
//! 1. the body's JSON schema (`apischema.dbschema` / `apischema.user`): `Validation error: ...` 400;
//! 2. the instance itself (404);
//! 3. the names, as `MySQLSchema` / `MySQLUser` check them (400, Trove's `ValueError` texts);
//! 4. `load_and_verify`: a datastore with this API (else 422 `Operation not supported for datastore
//!    <manager>.`) whose guest reports RUNNING or HEALTHY (else 422 `Instance <id> is not ready,
//!    status: <status>.`);
//! 5. what the guest already has (a database or user that exists: 400; one to delete that does
//!    not: 404);
//! 6. the guest call (the high timeout; failures are Trove's GuestError / GuestTimeout 400s, an
//!    operation the datastore lacks its `DatastoreOperationNotSupported` 501).
//!
//! So the guest only ever sees names that passed the mysql rules.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};
use trove_common::db::models::instance::InstanceDetail;
use trove_common::rpc::guest::{
    CreateDatabase, CreateUser, DatabaseSpec, DeleteDatabase, DeleteUser, EnableRoot,
    EnableRootWithPassword, GuestMsg, IsRootEnabled, PageQuery, UserSpec,
};
use trove_common::status::ServiceStatus;

use super::mysql_data::{CHARSETS, COLLATIONS};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Context;
use crate::handlers::call_guest;
use crate::validate::{py_path, py_repr, Checker, NON_EMPTY_PATTERN};

/// `[mysql] ignore_dbs`: never listed, never created or deleted through the API.
pub const IGNORE_DBS: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];
/// `[mysql] ignore_users`: never listed, never created or deleted through the API.
pub const IGNORE_USERS: [&str; 2] = ["os_admin", "root"];
/// `databases_page_size` and `users_page_size`.
pub const PAGE_SIZE: i64 = 20;
/// The managers `load_and_verify` lets through for databases and users.
pub const DATA_PLANE_MANAGERS: [&str; 3] = ["mysql", "mariadb", "postgresql"];
/// The managers with a `root_controller` in Trove's configuration.
pub const ROOT_MANAGERS: [&str; 12] = [
    "mysql",
    "mariadb",
    "percona",
    "pxc",
    "postgresql",
    "redis",
    "cassandra",
    "couchbase",
    "couchdb",
    "db2",
    "mongodb",
    "vertica",
];

/// `host_string`'s pattern in `apischema.py`.
pub const HOST_PATTERN: &str = r"^[%]?[\w(-).]*[%]?$";
/// `MySQLSchema.dbname`.
static DB_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9_-]+[\s\?\#\@]*[A-Za-z0-9_-]+$").expect("a valid pattern")
});
/// `MySQLUser.not_supported_chars`.
static NOT_SUPPORTED_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^\s|\s$|'|"|;|`|,|/|\\"#).expect("a valid pattern"));
static HOST: LazyLock<Regex> = LazyLock::new(|| Regex::new(HOST_PATTERN).expect("a valid pattern"));

/// Python's `str()` of a list of strings: `['a', 'b']`.
fn py_list(items: &[&str]) -> String {
    let inner: Vec<String> = items
        .iter()
        .map(|s| py_repr(&Value::String((*s).to_owned())))
        .collect();
    format!("[{}]", inner.join(", "))
}

/// True when Python's `repr()` of `s` would hold a backslash (a backslash itself, or a character
/// repr escapes: control and other non-printable characters).
fn repr_has_backslash(s: &str) -> bool {
    s.chars()
        .any(|c| c == '\\' || c.is_control() || (c.is_whitespace() && c != ' '))
}

// ---------------------------------------------------------------------------------------------
// The models' rules: each returns the `ValueError` text Trove raises.
// ---------------------------------------------------------------------------------------------

/// `MySQLSchema.name`: not empty, at most 64 characters, `dbname`, no backslash in its repr.
pub fn check_schema_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Schema name empty.".into());
    }
    if name.chars().count() > 64 {
        return Err(format!(
            "Schema name '{name}' is too long. Max length = 64."
        ));
    }
    if !DB_NAME.is_match(name) || repr_has_backslash(name) {
        return Err(format!("'{name}' is not a valid schema name."));
    }
    Ok(())
}

/// `DatastoreSchema.check_reserved`.
pub fn check_reserved_db(name: &str) -> Result<(), String> {
    if IGNORE_DBS.contains(&name) {
        return Err(format!(
            "Database name \"{name}\" is on the reserved list: {}.",
            py_list(&IGNORE_DBS)
        ));
    }
    Ok(())
}

/// `MySQLUser._is_valid_string`.
fn valid_user_string(v: &str) -> bool {
    !(v.is_empty() || NOT_SUPPORTED_CHARS.is_match(v) || repr_has_backslash(v))
}

/// `MySQLUser.name`: not empty, at most 16 characters, none of the unsupported characters.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("User name empty.".into());
    }
    if name.chars().count() > 16 {
        return Err(format!("User name '{name}' is too long. Max length = 16."));
    }
    if !valid_user_string(name) {
        return Err(format!("'{name}' is not a valid user name."));
    }
    Ok(())
}

/// `MySQLUser.password`.
pub fn check_password(password: &str) -> Result<(), String> {
    if valid_user_string(password) {
        Ok(())
    } else {
        Err(format!("'{password}' is not a valid password."))
    }
}

/// `MySQLUser.host` with `hostname_require_valid_ip = True`: `%`, or an IP address or network once
/// every `%` stands for a `1` (netaddr's `IPNetwork`).
pub fn check_host(host: &str) -> Result<(), String> {
    if host == "%" {
        return Ok(());
    }
    let candidate = host.replace('%', "1");
    let (addr, prefix) = match candidate.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (candidate.as_str(), None),
    };
    let valid = match addr.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|n| n <= max))
        }
        Err(_) => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!("'{host}' is not a valid hostname."))
    }
}

/// `DatastoreUser.check_reserved`.
pub fn check_reserved_user(name: &str) -> Result<(), String> {
    if IGNORE_USERS.contains(&name) {
        return Err(format!(
            "User name \"{name}\" is on the reserved list: {}.",
            py_list(&IGNORE_USERS)
        ));
    }
    Ok(())
}

/// `MySQLSchema.character_set` then `.collate`: the pair as it is serialised to the guest.
pub fn check_charset_collate(
    character_set: Option<&str>,
    collate: Option<&str>,
) -> Result<(Option<String>, Option<String>), String> {
    let mut cs = None;
    if let Some(v) = character_set.filter(|v| !v.is_empty()) {
        if !CHARSETS.iter().any(|(name, _)| *name == v) {
            return Err(format!("'{v}' not a valid character set."));
        }
        cs = Some(v.to_owned());
    }
    let mut co = None;
    if let Some(v) = collate.filter(|v| !v.is_empty()) {
        match &cs {
            Some(charset) => {
                let allowed = CHARSETS
                    .iter()
                    .find(|(name, _)| name == charset)
                    .map(|(_, c)| *c)
                    .unwrap_or_default();
                if !allowed.contains(&v) {
                    return Err(format!("{v} not a valid collation for charset {charset}."));
                }
            }
            None => match COLLATIONS.iter().find(|(c, _)| *c == v) {
                Some((_, charset)) => cs = Some((*charset).to_owned()),
                None => return Err(format!("'{v}' not a valid collation.")),
            },
        }
        co = Some(v.to_owned());
    }
    // The `collate` getter: a character set alone means its default (first) collation, so the guest
    // never pairs it with the server's default collation of another character set.
    if let (Some(charset), None) = (&cs, &co) {
        co = CHARSETS
            .iter()
            .find(|(name, _)| name == charset)
            .and_then(|(_, c)| c.first())
            .map(|c| (*c).to_owned());
    }
    Ok((cs, co))
}

// ---------------------------------------------------------------------------------------------
// Request bodies.
// ---------------------------------------------------------------------------------------------

/// A string schema (`minLength` 1, an optional `maxLength`, the letter-or-digit pattern), every
/// failure reported as jsonschema does (`'' is too short; '' does not match ...`).
fn string_schema(c: &mut Checker, v: &Value, path: &[&str], max: Option<usize>) {
    let Value::String(s) = v else {
        c.fail(path, format!("{} is not of type 'string'", py_repr(v)));
        return;
    };
    if s.is_empty() {
        c.fail(path, format!("{} is too short", py_repr(v)));
    }
    if max.is_some_and(|m| s.chars().count() > m) {
        c.fail(path, format!("{} is too long", py_repr(v)));
    }
    if !s.chars().any(|ch| ch.is_ascii_alphanumeric()) {
        c.fail(
            path,
            format!("{} does not match '{NON_EMPTY_PATTERN}'", py_repr(v)),
        );
    }
}

/// `non_empty_string`: 1..=255 characters with a letter or digit.
fn non_empty_string(c: &mut Checker, v: &Value, path: &[&str]) {
    string_schema(c, v, path, Some(255));
}

/// The items of the array at `obj[key]` (an error when it is another type).
fn array<'a>(
    c: &mut Checker,
    obj: &'a Map<String, Value>,
    key: &str,
    path: &[&str],
) -> Option<&'a Vec<Value>> {
    let v = obj.get(key)?;
    match v {
        Value::Array(a) => Some(a),
        other => {
            c.fail(path, format!("{} is not of type 'array'", py_repr(other)));
            None
        }
    }
}

/// A body that must be an object with a required array of objects at `key`: `item` checks each
/// object, given its index; every failure is reported as jsonschema does.
fn check_each(
    body: &Value,
    key: &str,
    mut item: impl FnMut(&mut Checker, &Map<String, Value>, &str),
) -> ApiResult<()> {
    let obj = root_object(body)?;
    let mut c = Checker::default();
    if c.required(obj, &[], key) {
        if let Some(items) = array(&mut c, obj, key, &[key]) {
            for (n, v) in items.iter().enumerate() {
                let idx = n.to_string();
                if let Some(o) = c.object(v, &[key, idx.as_str()]) {
                    item(&mut c, o, &idx);
                }
            }
        }
    }
    c.finish()
}

fn root_object(body: &Value) -> ApiResult<&Map<String, Value>> {
    match body {
        Value::Object(o) => Ok(o),
        other => Err(ApiError::bad(format!(
            "Validation error: {} is not of type 'object'",
            py_repr(other)
        ))),
    }
}

/// `apischema.dbschema['create']`.
pub fn check_databases_schema(body: &Value) -> ApiResult<()> {
    check_each(body, "databases", |c, db, idx| {
        let p = ["databases", idx];
        if c.required(db, &p, "name") {
            non_empty_string(c, &db["name"], &["databases", idx, "name"]);
        }
        for key in ["character_set", "collate"] {
            if let Some(v) = db.get(key) {
                non_empty_string(c, v, &["databases", idx, key]);
            }
        }
    })
}

/// `populate_validated_databases` with the mysql rules (the body passed
/// [`check_databases_schema`]). Its failures are bare 400s.
pub fn populate_databases(body: &Value) -> ApiResult<Vec<DatabaseSpec>> {
    let items = body["databases"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<DatabaseSpec> = Vec::new();
    for db in &items {
        let name = db.get("name").and_then(Value::as_str).unwrap_or_default();
        check_schema_name(name).map_err(ApiError::bad)?;
        check_reserved_db(name).map_err(ApiError::bad)?;
        if out.iter().any(|d| d.name == name) {
            return Err(ApiError::bad(
                "Two or more databases share the same name in the initial databases list. \
                 Please correct the names or remove the duplicate entries.",
            ));
        }
        let (character_set, collate) = check_charset_collate(
            db.get("character_set").and_then(Value::as_str),
            db.get("collate").and_then(Value::as_str),
        )
        .map_err(ApiError::bad)?;
        out.push(DatabaseSpec {
            name: name.to_owned(),
            character_set,
            collate,
        });
    }
    Ok(out)
}

/// `apischema.user['create']`.
pub fn check_users_schema(body: &Value) -> ApiResult<()> {
    check_each(body, "users", |c, user, idx| {
        let p = ["users", idx];
        if c.required(user, &p, "name") {
            // `name_string`: no maximum length in the schema (the model has one).
            string_schema(c, &user["name"], &["users", idx, "name"], None);
        }
        if c.required(user, &p, "password") {
            non_empty_string(c, &user["password"], &["users", idx, "password"]);
        }
        if let Some(host) = user.get("host") {
            let hp = ["users", idx, "host"];
            match host {
                Value::String(s) if s.is_empty() => {
                    c.fail(&hp, format!("{} is too short", py_repr(host)))
                }
                Value::String(s) if !HOST.is_match(s) => c.fail(
                    &hp,
                    format!(
                        "{} does not match {}",
                        py_repr(host),
                        py_repr(&Value::String(HOST_PATTERN.into()))
                    ),
                ),
                Value::String(_) => {}
                other => c.fail(&hp, format!("{} is not of type 'string'", py_repr(other))),
            }
        }
        let dp = ["users", idx, "databases"];
        if let Some(dbs) = array(c, user, "databases", &dp) {
            if (0..dbs.len()).any(|m| dbs[..m].contains(&dbs[m])) {
                c.fail(
                    &dp,
                    format!(
                        "{} has non-unique elements",
                        py_repr(&Value::Array(dbs.clone()))
                    ),
                );
            }
            for (m, db) in dbs.iter().enumerate() {
                let midx = m.to_string();
                let p = ["users", idx, "databases", midx.as_str()];
                let Some(dbo) = c.object(db, &p) else {
                    continue;
                };
                if c.required(dbo, &p, "name") {
                    non_empty_string(c, &dbo["name"], &["users", idx, "databases", &midx, "name"]);
                }
            }
        }
    })
}

/// `populate_users` with the mysql rules (the body passed [`check_users_schema`]): model errors are
/// `User create error: <reason>` 400s.
pub fn populate_users(body: &Value) -> ApiResult<Vec<UserSpec>> {
    let create_err = |e: String| ApiError::bad(format!("User create error: {e}"));
    let items = body["users"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<UserSpec> = Vec::new();
    for user in &items {
        let name = user.get("name").and_then(Value::as_str).unwrap_or_default();
        check_user_name(name).map_err(create_err)?;
        let host = user.get("host").and_then(Value::as_str).unwrap_or("%");
        if !host.is_empty() {
            check_host(host).map_err(create_err)?;
        }
        let host = if host.is_empty() { "%" } else { host };
        check_reserved_user(name).map_err(create_err)?;
        if out
            .iter()
            .any(|u| u.name == name && u.host.as_deref() == Some(host))
        {
            return Err(ApiError::bad(
                "Two or more users share the same name and host in the initial users list. \
                 Please correct the names or remove the duplicate entries.",
            ));
        }
        let password = user
            .get("password")
            .and_then(Value::as_str)
            .unwrap_or_default();
        check_password(password).map_err(create_err)?;
        let mut databases: Vec<DatabaseSpec> = Vec::new();
        for db in user
            .get("databases")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let db_name = db.get("name").and_then(Value::as_str).unwrap_or_default();
            check_schema_name(db_name).map_err(create_err)?;
            // `_is_valid_database`: a database named twice is granted once.
            if !databases.iter().any(|d| d.name == db_name) {
                databases.push(DatabaseSpec {
                    name: db_name.to_owned(),
                    ..DatabaseSpec::default()
                });
            }
        }
        out.push(UserSpec {
            name: name.to_owned(),
            host: Some(host.to_owned()),
            password: Some(password.to_owned()),
            databases,
        });
    }
    Ok(out)
}

/// Decodes `%XX` escapes (Python's `unquote`); anything malformed stays as it is.
fn unquote(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `unquote_user_host`: `name@host` (the last `@` splits; no `@`, or a trailing one, means host
/// `%`).
pub fn unquote_user_host(id: &str) -> (String, String) {
    let unquoted = unquote(id);
    if !unquoted.contains('@') || unquoted.ends_with('@') {
        return (unquoted, "%".into());
    }
    let (user, host) = unquoted.rsplit_once('@').unwrap_or((&unquoted, "%"));
    (user.to_owned(), host.to_owned())
}

/// `_get_password_from_body`: `password` when the body has one (an empty one means "generate").
pub fn root_password(body: &Value) -> ApiResult<Option<String>> {
    match body.get("password") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad(format!(
            "Validation error: {} {} is not of type 'string'",
            py_path(&["password"]),
            py_repr(other)
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The instance and its guest.
// ---------------------------------------------------------------------------------------------

/// `load_and_verify`: the datastore must be one of `managers` and its guest RUNNING or HEALTHY.
pub fn verify(d: &InstanceDetail, managers: &[&str]) -> ApiResult<()> {
    if !managers.contains(&d.manager.as_str()) {
        return Err(ApiError::Unprocessable(format!(
            "Operation not supported for datastore {}.",
            d.manager
        )));
    }
    verify_running(d)
}

/// The second half of `load_and_verify`: `is_datastore_running`.
pub fn verify_running(d: &InstanceDetail) -> ApiResult<()> {
    let status = d.service.as_ref().and_then(|s| s.status());
    match status {
        Some(ServiceStatus::Running | ServiceStatus::Healthy) => Ok(()),
        other => Err(ApiError::Unprocessable(format!(
            "Instance {} is not ready, status: {}.",
            d.instance.id,
            other.map_or("new", ServiceStatus::description)
        ))),
    }
}

fn unexpected(method: &str, e: serde_json::Error) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("unexpected answer to {method}: {e}"))
}

/// What a guest lists a page of: databases or users.
pub trait Listed: serde::de::DeserializeOwned {
    /// The names never listed (`ignore_dbs` / `ignore_users`).
    const IGNORED: &'static [&'static str];
    /// The guest call for one page.
    fn list_msg(limit: i64, marker: Option<String>, include_marker: bool) -> GuestMsg;
    fn name(&self) -> &str;
}

impl Listed for DatabaseSpec {
    const IGNORED: &'static [&'static str] = &IGNORE_DBS;
    fn list_msg(limit: i64, marker: Option<String>, include_marker: bool) -> GuestMsg {
        GuestMsg::ListDatabases(PageQuery {
            limit: Some(limit),
            marker,
            include_marker,
        })
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Listed for UserSpec {
    const IGNORED: &'static [&'static str] = &IGNORE_USERS;
    fn list_msg(limit: i64, marker: Option<String>, include_marker: bool) -> GuestMsg {
        GuestMsg::ListUsers(PageQuery {
            limit: Some(limit),
            marker,
            include_marker,
        })
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// An instance's guest, as one request reaches it.
#[derive(Clone, Copy)]
pub struct Guest<'a> {
    pub st: &'a AppState,
    pub ctx: &'a Context,
    pub d: &'a InstanceDetail,
}

impl<'a> Guest<'a> {
    pub fn new(st: &'a AppState, ctx: &'a Context, d: &'a InstanceDetail) -> Self {
        Self { st, ctx, d }
    }

    /// Calls `msg` on the instance's guest (high timeout, Trove's error mapping).
    async fn call(&self, msg: &GuestMsg) -> ApiResult<Value> {
        let inst = &self.d.instance;
        call_guest(
            self.st,
            self.ctx,
            &inst.id,
            inst.encrypted_key.as_deref(),
            msg,
        )
        .await
    }

    /// Calls `msg` and reads its answer as a `T`.
    async fn call_for<T: serde::de::DeserializeOwned>(&self, msg: &GuestMsg) -> ApiResult<T> {
        let v = self.call(msg).await?;
        serde_json::from_value(v).map_err(|e| unexpected(msg.method(), e))
    }

    /// One page of `list_databases` or `list_users`, reserved names left out → (items, next
    /// marker).
    pub async fn list<T: Listed>(
        &self,
        limit: i64,
        marker: Option<String>,
        include_marker: bool,
    ) -> ApiResult<(Vec<T>, Option<String>)> {
        let msg = T::list_msg(limit, marker, include_marker);
        let (items, next): (Vec<T>, Option<String>) = self.call_for(&msg).await?;
        let items = items
            .into_iter()
            .filter(|i| !T::IGNORED.contains(&i.name()))
            .collect();
        Ok((items, next))
    }

    /// `Schema.create`: refuses a database the guest already has, then `create_database`.
    pub async fn create_databases(&self, dbs: Vec<DatabaseSpec>) -> ApiResult<()> {
        verify(self.d, &DATA_PLANE_MANAGERS)?;
        for db in &dbs {
            let (found, _) = self
                .list::<DatabaseSpec>(1, Some(db.name.clone()), true)
                .await?;
            if found.first().is_some_and(|f| f.name == db.name) {
                return Err(already_exists("database", &db.name));
            }
        }
        self.call(&GuestMsg::CreateDatabase(CreateDatabase { databases: dbs }))
            .await?;
        Ok(())
    }

    /// `SchemaController.delete`: reserved names 400, a database the guest lacks 404.
    pub async fn delete_database(&self, name: &str) -> ApiResult<()> {
        check_reserved_db(name).map_err(|e| {
            ApiError::bad(format!(
                "Database delete error: Cannot delete database: {e}"
            ))
        })?;
        verify(self.d, &DATA_PLANE_MANAGERS)?;
        let (found, _) = self
            .list::<DatabaseSpec>(1, Some(name.to_owned()), true)
            .await?;
        if found.first().is_none_or(|f| f.name != name) {
            return Err(ApiError::not_found(format!(
                "Database {name} cannot be found on the instance."
            )));
        }
        let database = DatabaseSpec {
            name: name.to_owned(),
            ..DatabaseSpec::default()
        };
        self.call(&GuestMsg::DeleteDatabase(DeleteDatabase { database }))
            .await?;
        Ok(())
    }

    /// The guest's user `name`@`host`, if it has it (Trove's `get_user`, as a one-item page).
    async fn find_user(&self, name: &str, host: &str) -> ApiResult<Option<UserSpec>> {
        let marker = format!("{name}@{host}");
        let (found, _) = self.list::<UserSpec>(1, Some(marker), true).await?;
        Ok(found
            .into_iter()
            .next()
            .filter(|u| u.name == name && u.host.as_deref().unwrap_or("%") == host))
    }

    /// `User.create`: refuses a user@host the guest already has, then `create_user`.
    pub async fn create_users(&self, users: Vec<UserSpec>) -> ApiResult<()> {
        verify(self.d, &DATA_PLANE_MANAGERS)?;
        for u in &users {
            let host = u.host.as_deref().unwrap_or("%");
            if self.find_user(&u.name, host).await?.is_some() {
                return Err(already_exists("user", &u.name));
            }
        }
        self.call(&GuestMsg::CreateUser(CreateUser { users }))
            .await?;
        Ok(())
    }

    /// `UserController.delete` for the path's `id` (`name`, `name@host`, percent-encoded or not).
    pub async fn delete_user(&self, id: &str) -> ApiResult<()> {
        let err = |e: String| ApiError::bad(format!("User delete error: {e}"));
        let (name, host) = unquote_user_host(id);
        if name.is_empty() {
            return Err(err("User name empty.".into()));
        }
        verify(self.d, &DATA_PLANE_MANAGERS)?;
        check_reserved_user(&name).map_err(err)?;
        if self.find_user(&name, &host).await?.is_none() {
            return Err(ApiError::not_found(format!(
                "User {id} cannot be found on the instance."
            )));
        }
        let user = UserSpec {
            name,
            host: Some(host),
            ..UserSpec::default()
        };
        self.call(&GuestMsg::DeleteUser(DeleteUser { user }))
            .await?;
        Ok(())
    }

    /// `root_create`: enables root (with the caller's password, or a generated one) → the root
    /// user. Redis (`RedisRootController`) refuses replicas.
    pub async fn enable_root(&self, password: Option<String>) -> ApiResult<UserSpec> {
        let d = self.d;
        root_supported(d)?;
        if d.manager == "redis" && d.instance.slave_of_id.is_some() {
            return Err(ApiError::bad(
                "The 'enable_root' operation is not supported for slaves in replication.",
            ));
        }
        verify_running(d)?;
        let msg = match password {
            Some(root_password) => GuestMsg::EnableRootWithPassword(EnableRootWithPassword {
                root_password: Some(root_password),
            }),
            None => GuestMsg::EnableRoot(EnableRoot {}),
        };
        self.call_for(&msg).await
    }

    /// `root_index`: whether root is enabled, as the guest says.
    pub async fn root_enabled(&self) -> ApiResult<bool> {
        root_supported(self.d)?;
        verify_running(self.d)?;
        self.call_for(&GuestMsg::IsRootEnabled(IsRootEnabled {}))
            .await
    }
}

/// The 400 for a database or user the guest already has.
fn already_exists(what: &str, name: &str) -> ApiError {
    ApiError::bad(format!("A {what} with the name \"{name}\" already exists."))
}

/// `load_root_controller`: only datastores with a root controller (501 otherwise).
fn root_supported(d: &InstanceDetail) -> ApiResult<()> {
    if ROOT_MANAGERS.contains(&d.manager.as_str()) {
        Ok(())
    } else {
        Err(ApiError::NotImplemented(format!(
            "The 'root' operation is not supported for the '{}' datastore.",
            d.manager
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(r: ApiResult<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn schema_names_follow_mysql_schema() {
        assert!(check_schema_name("db1").is_ok());
        assert!(check_schema_name("my-db_2").is_ok());
        assert!(check_schema_name("my db").is_ok());
        assert_eq!(
            check_schema_name("a").unwrap_err(),
            "'a' is not a valid schema name."
        );
        assert_eq!(
            check_schema_name("a;b").unwrap_err(),
            "'a;b' is not a valid schema name."
        );
        assert_eq!(
            check_schema_name("a\\b").unwrap_err(),
            "'a\\b' is not a valid schema name."
        );
        let long = "d".repeat(65);
        assert_eq!(
            check_schema_name(&long).unwrap_err(),
            format!("Schema name '{long}' is too long. Max length = 64.")
        );
        assert_eq!(
            check_reserved_db("mysql").unwrap_err(),
            "Database name \"mysql\" is on the reserved list: ['mysql', 'information_schema', \
             'performance_schema', 'sys']."
        );
    }

    #[test]
    fn users_follow_mysql_user() {
        assert!(check_user_name("bob").is_ok());
        assert_eq!(
            check_user_name("b'ob").unwrap_err(),
            "'b'ob' is not a valid user name."
        );
        assert_eq!(
            check_user_name(" bob").unwrap_err(),
            "' bob' is not a valid user name."
        );
        assert_eq!(
            check_user_name("abcdefghijklmnopq").unwrap_err(),
            "User name 'abcdefghijklmnopq' is too long. Max length = 16."
        );
        assert!(check_password("s3cret").is_ok());
        assert_eq!(
            check_password("a;b").unwrap_err(),
            "'a;b' is not a valid password."
        );
        for ok in ["%", "10.0.0.1", "192.168.0.%", "10.0.0.0/8", "::1"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            check_host("localhost").unwrap_err(),
            "'localhost' is not a valid hostname."
        );
        assert_eq!(
            check_reserved_user("root").unwrap_err(),
            "User name \"root\" is on the reserved list: ['os_admin', 'root']."
        );
    }

    #[test]
    fn charsets_and_collations() {
        assert_eq!(check_charset_collate(None, None).unwrap(), (None, None));
        assert_eq!(
            check_charset_collate(None, Some("latin1_bin")).unwrap(),
            (Some("latin1".into()), Some("latin1_bin".into()))
        );
        assert_eq!(
            check_charset_collate(Some("latin1"), None).unwrap(),
            (Some("latin1".into()), Some("latin1_swedish_ci".into()))
        );
        assert_eq!(
            check_charset_collate(Some("nope"), None).unwrap_err(),
            "'nope' not a valid character set."
        );
        assert_eq!(
            check_charset_collate(Some("latin1"), Some("utf8mb4_bin")).unwrap_err(),
            "utf8mb4_bin not a valid collation for charset latin1."
        );
        assert_eq!(
            check_charset_collate(None, Some("nope")).unwrap_err(),
            "'nope' not a valid collation."
        );
    }

    #[test]
    fn database_bodies() {
        assert_eq!(
            msg(check_databases_schema(&json!({}))),
            "Validation error: 'databases' is a required property"
        );
        assert_eq!(
            msg(check_databases_schema(
                &json!({"databases": [{"name": ""}]})
            )),
            "Validation error: databases[0]['name'] '' is too short; \
             databases[0]['name'] '' does not match '^.*[0-9a-zA-Z]+.*$'"
        );
        assert_eq!(
            msg(check_databases_schema(&json!({"databases": [{}]}))),
            "Validation error: databases[0] 'name' is a required property"
        );
        let ok = json!({"databases": [{"name": "db1", "character_set": "utf8mb4"}]});
        check_databases_schema(&ok).unwrap();
        assert_eq!(
            populate_databases(&ok).unwrap(),
            vec![DatabaseSpec {
                name: "db1".into(),
                character_set: Some("utf8mb4".into()),
                collate: Some("utf8mb4_general_ci".into()),
            }]
        );
        assert_eq!(
            msg(populate_databases(&json!({"databases": [{"name": "sys"}]}))),
            "Database name \"sys\" is on the reserved list: ['mysql', 'information_schema', \
             'performance_schema', 'sys']."
        );
        assert!(msg(populate_databases(
            &json!({"databases": [{"name": "db1"}, {"name": "db1"}]})
        ))
        .starts_with("Two or more databases share the same name"));
    }

    #[test]
    fn user_bodies() {
        assert_eq!(
            msg(check_users_schema(&json!({"users": [{"name": "bob"}]}))),
            "Validation error: users[0] 'password' is a required property"
        );
        assert_eq!(
            msg(check_users_schema(
                &json!({"users": [{"name": "bob", "password": "x1", "host": "a:b"}]})
            )),
            "Validation error: users[0]['host'] 'a:b' does not match '^[%]?[\\\\w(-).]*[%]?$'"
        );
        let ok =
            json!({"users": [{"name": "bob", "password": "pw1", "databases": [{"name": "db1"}]}]});
        check_users_schema(&ok).unwrap();
        let users = populate_users(&ok).unwrap();
        assert_eq!(users[0].host.as_deref(), Some("%"));
        assert_eq!(users[0].databases[0].name, "db1");
        assert_eq!(
            msg(populate_users(
                &json!({"users": [{"name": "root", "password": "pw1"}]})
            )),
            "User create error: User name \"root\" is on the reserved list: ['os_admin', 'root']."
        );
        assert_eq!(
            msg(populate_users(
                &json!({"users": [{"name": "bob", "password": "pw1", "host": "localhost"}]})
            )),
            "User create error: 'localhost' is not a valid hostname."
        );
        assert!(msg(populate_users(&json!({"users": [
            {"name": "bob", "password": "pw1"}, {"name": "bob", "password": "pw2"}
        ]})))
        .starts_with("Two or more users share the same name and host"));
    }

    #[test]
    fn user_ids_split_on_the_last_at() {
        assert_eq!(unquote_user_host("bob"), ("bob".into(), "%".into()));
        assert_eq!(unquote_user_host("bob@"), ("bob@".into(), "%".into()));
        assert_eq!(
            unquote_user_host("bob@10.0.0.1"),
            ("bob".into(), "10.0.0.1".into())
        );
        assert_eq!(
            unquote_user_host("bob%4010%2e0.0.1"),
            ("bob".into(), "10.0.0.1".into())
        );
        assert_eq!(unquote_user_host("a@b@%"), ("a@b".into(), "%".into()));
    }

    #[test]
    fn root_passwords() {
        assert_eq!(root_password(&json!({})).unwrap(), None);
        assert_eq!(root_password(&json!({"password": ""})).unwrap(), None);
        assert_eq!(
            root_password(&json!({"password": "pw"}))
                .unwrap()
                .as_deref(),
            Some("pw")
        );
        assert!(root_password(&json!({"password": 1})).is_err());
    }
}
