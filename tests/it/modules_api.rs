//! Module management through the HTTP API (issue 3, docs/module-semantics.md §1–§7, docs/rest-api.md Modules):
//! two tenants and an admin, every error text of §2–§6 with its status and exact fault body, the
//! schema errors, list/show visibility across tenants, live_update enforcement, soft delete and the
//! real `instance_count`.
//!
//! No guest is needed: the tests that put a module on an instance stop the taskmanager first, because
//! the API records the `instance_modules` row when it accepts the instance (§13 step 4).

use base64::Engine as _;
use diesel::sql_types::Text;
use diesel::RunQueryDsl;
use regex::Regex;
use reqwest::Method;
use serde_json::{json, Map, Value};
use trove_tests::TestEnv;

/// Tenant A (a plain member).
pub(crate) const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// Tenant B (a plain member).
pub(crate) const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// An admin (noauth: a token starting with `admin` carries the admin role).
pub(crate) const ADMIN: &str = "adminccccccccccccccccccccccccccc";

/// The walkthrough's payload md5s (docs/module-semantics.md §4).
pub(crate) const V1_MD5: &str = "7f700cc7b99606615f8b51946f6d3228";
pub(crate) const V2_MD5: &str = "ba7c204979c8de54be6efb70a17d40b9";

const APPLIED: &str = "A module cannot be deleted or its contents modified if it has been applied to a \
non-terminated instance, unless the module has been marked as 'live_update.' Please remove the module \
from all non-terminated instances and try again.";

/// `echo "message=Module.V<n>" > ping<n>.dat`, base64 as the client sends it.
pub(crate) fn payload(n: u32) -> String {
    b64(&format!("message=Module.V{n}\n"))
}

/// Base64 of a text, as python-troveclient encodes a payload file.
pub(crate) fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A create body: name, type `ping`, the V1 payload, plus `extra` (which may override them).
pub(crate) fn module(name: &str, extra: Value) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("module_type".into(), json!("ping"));
    m.insert("contents".into(), json!(payload(1)));
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    json!({ "module": m })
}

/// Trove's fault body with its status.
pub(crate) fn fault(code: u16, name: &str, message: &str) -> (u16, Value) {
    (code, json!({ name: { "code": code, "message": message } }))
}

fn bad(message: &str) -> (u16, Value) {
    fault(400, "badRequest", message)
}

fn forbidden(message: &str) -> (u16, Value) {
    fault(403, "forbidden", message)
}

fn not_found(message: &str) -> (u16, Value) {
    fault(404, "itemNotFound", message)
}

fn module_not_found(id: &str) -> (u16, Value) {
    not_found(&format!("Module with ID {id} could not be found."))
}

/// A thin JSON client for one env; `token` is also the URL tenant unless a test says otherwise.
pub(crate) struct Api<'a> {
    pub env: &'a TestEnv,
    http: reqwest::Client,
}

impl<'a> Api<'a> {
    pub fn new(env: &'a TestEnv) -> Self {
        Self {
            env,
            http: reqwest::Client::new(),
        }
    }

    /// Sends raw bytes to `<base(tenant)><path>` as `token`; returns the status and body text.
    pub async fn raw(
        &self,
        method: Method,
        token: &str,
        tenant: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.env.base(tenant)))
            .header("X-Auth-Token", token);
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request reaches the API");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("response body"))
    }

    /// A JSON call; an empty response body reads as `null`.
    pub async fn call(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let (status, text) = self.raw(method, token, token, path, bytes).await;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"))
        };
        (status, v)
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(Method::GET, token, path, None).await
    }

    pub async fn post(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::POST, token, path, Some(body)).await
    }

    pub async fn put(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::PUT, token, path, Some(body)).await
    }

    pub async fn delete(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, token, path, None).await
    }

    /// `POST /modules` that must succeed; returns the module view.
    pub async fn create(&self, token: &str, body: Value) -> Value {
        let (s, v) = self.post(token, "/modules", &body).await;
        assert_eq!(s, 200, "create {body}: {v}");
        v["module"].clone()
    }

    /// `PUT /modules/{id}` with `{"module": fields}`.
    pub async fn update(&self, token: &str, id: &str, fields: Value) -> (u16, Value) {
        self.put(
            token,
            &format!("/modules/{id}"),
            &json!({ "module": fields }),
        )
        .await
    }

    /// `PUT /modules/{id}` that must succeed; returns the module view.
    pub async fn update_ok(&self, token: &str, id: &str, fields: Value) -> Value {
        let (s, v) = self.update(token, id, fields.clone()).await;
        assert_eq!(s, 200, "update {id} with {fields}: {v}");
        v["module"].clone()
    }

    /// `GET /modules/{id}` that must succeed; returns the module view.
    pub async fn show(&self, token: &str, id: &str) -> Value {
        let (s, v) = self.get(token, &format!("/modules/{id}")).await;
        assert_eq!(s, 200, "show {id}: {v}");
        v["module"].clone()
    }

    /// The names in `GET /modules<query>`, sorted.
    pub async fn list_names(&self, token: &str, query: &str) -> Vec<String> {
        let (s, v) = self.get(token, &format!("/modules{query}")).await;
        assert_eq!(s, 200, "list {query}: {v}");
        let mut names: Vec<String> = v["modules"]
            .as_array()
            .expect("modules array")
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    /// `POST /instances` on the default datastore (redis) with these modules; returns the instance id.
    pub async fn create_instance(&self, token: &str, name: &str, modules: &[&str]) -> String {
        let (s, v) = self
            .post(token, "/instances", &instance_body(name, modules))
            .await;
        assert_eq!(s, 200, "instance create: {v}");
        v["instance"]["id"].as_str().unwrap().to_owned()
    }
}

/// The body of `trove create <name> 15 --size 1 --module ...`.
pub(crate) fn instance_body(name: &str, modules: &[&str]) -> Value {
    let mods: Vec<Value> = modules.iter().map(|id| json!({ "id": id })).collect();
    json!({"instance": {"name": name, "flavorRef": 15, "volume": {"size": 1}, "modules": mods}})
}

fn id_of(view: &Value) -> String {
    view["id"].as_str().expect("module id").to_owned()
}

/// One text value from SQL (`... AS v`).
pub(crate) fn sql_one(env: &TestEnv, sql: &str) -> String {
    let rows = env.query_strings(sql);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows.into_iter().next().unwrap()
}

/// Runs one statement with text binds ($1, $2, ...).
pub(crate) fn sql_exec(env: &TestEnv, sql: &str, binds: &[&str]) -> usize {
    let mut conn = env.db.conn();
    let q = diesel::sql_query(sql).into_boxed();
    let q = binds
        .iter()
        .fold(q, |q, b| q.bind::<Text, _>(b.to_string()));
    q.execute(&mut conn).expect("sql statement")
}

/// The module's `updated` column with its microseconds (the API shows seconds only).
pub(crate) fn db_updated(env: &TestEnv, id: &str) -> String {
    sql_one(
        env,
        &format!("SELECT updated::text AS v FROM modules WHERE id = '{id}'"),
    )
}

/// The module's stored `contents` column, as it is at rest.
pub(crate) fn db_contents(env: &TestEnv, id: &str) -> String {
    sql_one(
        env,
        &format!("SELECT contents AS v FROM modules WHERE id = '{id}'"),
    )
}

struct Catalogue {
    mysql: String,
    mysql_56: String,
    redis: String,
    redis_326: String,
}

fn catalogue(env: &TestEnv) -> Catalogue {
    let ds = |n: &str| {
        sql_one(
            env,
            &format!("SELECT id AS v FROM datastores WHERE name = '{n}'"),
        )
    };
    let ver = |n: &str| {
        sql_one(
            env,
            &format!("SELECT id AS v FROM datastore_versions WHERE name = '{n}'"),
        )
    };
    Catalogue {
        mysql: ds("mysql"),
        mysql_56: ver("5.6"),
        redis: ds("redis"),
        redis_326: ver("3.2.6"),
    }
}

/// mysql 5.5, registered inactive (`trove-manage datastore_version_update mysql 5.5 mysql "" "" 0`).
fn add_inactive_mysql_55(env: &TestEnv) {
    trove_migrations::manage::datastore_version_update(
        &mut env.db.conn(),
        "mysql",
        "5.5",
        "mysql",
        None,
        false,
    )
    .expect("register mysql 5.5");
}

#[tokio::test]
async fn create_errors_follow_trove_order() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let api = Api::new(&env);
    let cat = catalogue(&env);
    add_inactive_mysql_55(&env);
    // Two mysql versions called "multi" (different version numbers): a name lookup is ambiguous.
    for (n, id) in [("1", uuid::Uuid::new_v4()), ("2", uuid::Uuid::new_v4())] {
        sql_exec(
            &env,
            "INSERT INTO datastore_versions (id, datastore_id, name, version, manager, active) \
             VALUES ($1, $2, 'multi', $3, 'mysql', true)",
            &[&id.to_string(), &cat.mysql, n],
        );
    }
    let create = |token: &'static str, body: Value| {
        let api = &api;
        async move { api.post(token, "/modules", &body).await }
    };

    // §3 step 2: the type, as given in the message, checked before the admin options.
    assert_eq!(
        create(A, module("m", json!({"module_type": "NoSuchType"}))).await,
        not_found("Module type 'NoSuchType' was not found.")
    );
    assert_eq!(
        create(
            A,
            module("m", json!({"module_type": "bogus", "auto_apply": 1}))
        )
        .await,
        not_found("Module type 'bogus' was not found.")
    );

    // §2: full access together with admin options is refused for everyone, before the admin check.
    for token in [A, ADMIN] {
        assert_eq!(
            create(
                token,
                module("m", json!({"auto_apply": 1, "full_access": 1}))
            )
            .await,
            bad("The following values are invalid: Cannot make module full access: (Auto: 1).")
        );
    }
    let all_options = json!({"all_tenants": 1, "auto_apply": 1, "visible": 0, "priority_apply": 1});
    let mut with_fa = all_options.clone();
    with_fa["full_access"] = json!(1);
    assert_eq!(
        create(ADMIN, module("m", with_fa)).await,
        bad(
            "The following values are invalid: Cannot make module full access: \
             (Tenant: all, Auto: 1, Visible: 0, Priority: 1)."
        )
    );

    // §2: each admin option, as received, in Trove's order.
    let mut every = all_options.clone();
    every["full_access"] = json!(0);
    let cases = [
        (json!({"all_tenants": 1}), "Tenant: all"),
        (json!({"auto_apply": 1}), "Auto: 1"),
        (json!({"visible": 0}), "Visible: 0"),
        (json!({"priority_apply": 1}), "Priority: 1"),
        (json!({"full_access": 0}), "Full Access: 0"),
        (json!({"full_access": 1}), "Full Access: 1"),
        (
            every,
            "Tenant: all, Auto: 1, Visible: 0, Priority: 1, Full Access: 0",
        ),
    ];
    for (opts, text) in cases {
        assert_eq!(
            create(A, module("m", opts.clone())).await,
            forbidden(&format!(
                "You must be admin to create a module with these options. ({text})"
            )),
            "{opts}"
        );
    }
    // The admin options come before the datastore.
    assert_eq!(
        create(
            A,
            module(
                "m",
                json!({"auto_apply": 1, "datastore": {"type": "nosuch"}})
            )
        )
        .await,
        forbidden("You must be admin to create a module with these options. (Auto: 1)")
    );
    // Values that are not admin options are fine for a tenant.
    let plain = api
        .create(
            A,
            module(
                "plain",
                json!({"all_tenants": 0, "auto_apply": 0, "visible": 1, "priority_apply": 0,
                       "live_update": 1, "apply_order": 9}),
            ),
        )
        .await;
    assert_eq!(plain["is_admin"], false);
    assert_eq!(plain["apply_order"], 9);
    assert_eq!(plain["live_update"], true);

    // §3 step 4: datastore and version resolution.
    let ds = |d: Value| module("m", json!({ "datastore": d }));
    assert_eq!(
        create(A, ds(json!({"type": "nosuch"}))).await,
        not_found("Datastore 'nosuch' cannot be found.")
    );
    assert_eq!(
        create(A, ds(json!({"type": "nosuch", "version": "5.6"}))).await,
        not_found("Datastore 'nosuch' cannot be found.")
    );
    assert_eq!(
        create(A, ds(json!({"type": "mysql", "version": "9.9"}))).await,
        bad("Datastore version '9.9' cannot be found.")
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        create(A, ds(json!({"type": "mysql", "version": unknown}))).await,
        not_found("DBDatastoreVersion Not Found")
    );
    // A version id of another datastore is not found within this one.
    assert_eq!(
        create(A, ds(json!({"type": "mysql", "version": cat.redis_326}))).await,
        not_found("DBDatastoreVersion Not Found")
    );
    assert_eq!(
        create(A, ds(json!({"version": "5.6"}))).await,
        bad("Datastore 'None' has no version '5.6'.")
    );
    assert_eq!(
        create(A, ds(json!({"type": "mysql", "version": "5.5"}))).await,
        bad("Datastore version '5.5' is not active.")
    );
    assert_eq!(
        create(A, ds(json!({"type": "mysql", "version": "multi"}))).await,
        bad(
            "Multiple datastore versions found for 'multi', use an UUID or specify both the name \
             and version number to be more specific."
        )
    );
    // Ids work as well as names, and are what is stored.
    let by_id = api
        .create(
            A,
            module(
                "byid",
                json!({"datastore": {"type": cat.mysql, "version": cat.mysql_56}}),
            ),
        )
        .await;
    assert_eq!(
        (
            &by_id["datastore"],
            &by_id["datastore_version"],
            &by_id["datastore_id"],
            &by_id["datastore_version_id"]
        ),
        (
            &json!("mysql"),
            &json!("5.6"),
            &json!(cat.mysql),
            &json!(cat.mysql_56)
        )
    );

    // §3 step 5: uniqueness over (name, type, tenant, datastore, version), no final period.
    api.create(A, module("dup", json!({}))).await;
    let dup_all =
        bad("A module with the name 'dup' already exists for datastore 'all' and datastore version 'all'");
    assert_eq!(create(A, module("dup", json!({}))).await, dup_all);
    // Deviation: the type is compared lower-cased.
    assert_eq!(
        create(A, module("dup", json!({"module_type": "PING"}))).await,
        dup_all
    );
    // The datastore is resolved (and can fail) before the duplicate check.
    assert_eq!(
        create(A, module("dup", json!({"datastore": {"type": "nosuch"}}))).await,
        not_found("Datastore 'nosuch' cannot be found.")
    );
    // Names are case-sensitive; another tenant, all tenants or another type is another key.
    api.create(A, module("Dup", json!({}))).await;
    api.create(B, module("dup", json!({}))).await;
    api.create(ADMIN, module("dup", json!({"all_tenants": 1})))
        .await;
    api.create(
        A,
        module("dup", json!({"module_type": "new_relic_license"})),
    )
    .await;
    // Bound to a datastore, and to a version: the ids appear in the message.
    api.create(A, module("dup", json!({"datastore": {"type": "mysql"}})))
        .await;
    assert_eq!(
        create(A, module("dup", json!({"datastore": {"type": "mysql"}}))).await,
        bad(&format!(
            "A module with the name 'dup' already exists for datastore '{}' and datastore version 'all'",
            cat.mysql
        ))
    );
    api.create(
        A,
        module(
            "dup",
            json!({"datastore": {"type": "mysql", "version": "5.6"}}),
        ),
    )
    .await;
    assert_eq!(
        create(
            A,
            module("dup", json!({"datastore": {"type": cat.mysql, "version": "5.6"}}))
        )
        .await,
        bad(&format!(
            "A module with the name 'dup' already exists for datastore '{}' and datastore version '{}'",
            cat.mysql, cat.mysql_56
        ))
    );
    // A deleted module no longer holds its key.
    let gone = api.create(A, module("reuse", json!({}))).await;
    assert_eq!(
        api.delete(A, &format!("/modules/{}", id_of(&gone))).await,
        (200, Value::Null)
    );
    api.create(A, module("reuse", json!({}))).await;
    // Nothing refused was written.
    assert_eq!(
        sql_one(
            &env,
            "SELECT count(*)::text AS v FROM modules WHERE name = 'm'"
        ),
        "0"
    );
    Ok(())
}

#[tokio::test]
async fn create_view_md5_type_and_is_admin() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let api = Api::new(&env);

    let m = api
        .create(ADMIN, module("adm", json!({"module_type": "PING"})))
        .await;
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "apply_order",
            "auto_apply",
            "created",
            "datastore",
            "datastore_id",
            "datastore_version",
            "datastore_version_id",
            "description",
            "id",
            "is_admin",
            "live_update",
            "md5",
            "name",
            "priority_apply",
            "tenant",
            "tenant_id",
            "type",
            "updated",
            "visible"
        ],
        "create returns the detailed view without instance_count or contents"
    );
    // The type is stored lower-cased; an admin's ordinary module is an admin module.
    assert_eq!(m["type"], "ping");
    assert_eq!(
        sql_one(
            &env,
            &format!("SELECT type AS v FROM modules WHERE id = '{}'", id_of(&m))
        ),
        "ping"
    );
    assert_eq!(m["is_admin"], true);
    assert_eq!(
        (&m["tenant"], &m["tenant_id"]),
        (&json!(ADMIN), &json!(ADMIN))
    );
    assert_eq!(
        (
            &m["datastore"],
            &m["datastore_id"],
            &m["datastore_version"],
            &m["datastore_version_id"]
        ),
        (&json!("all"), &Value::Null, &json!("all"), &Value::Null)
    );
    assert_eq!(
        (
            &m["auto_apply"],
            &m["visible"],
            &m["live_update"],
            &m["priority_apply"]
        ),
        (&json!(false), &json!(true), &json!(false), &json!(false))
    );
    assert_eq!(
        (&m["apply_order"], &m["description"]),
        (&json!(5), &Value::Null)
    );
    let date = Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$").unwrap();
    assert!(date.is_match(m["created"].as_str().unwrap()), "{m}");
    assert_eq!(m["created"], m["updated"]);
    // Show adds the real instance_count.
    let shown = api.show(ADMIN, &id_of(&m)).await;
    assert_eq!(shown["instance_count"], 0);
    assert_eq!(shown["live_update"], false);
    assert!(shown.get("contents").is_none());

    // The walkthrough's payloads: md5 over the base64 text (§4).
    for (n, md5) in [
        (1, V1_MD5),
        (2, V2_MD5),
        (3, "869744bdd18e306a96c145df562065ab"),
        (4, "6e2c81c1547d640b4c6e7752ed0e33ab"),
    ] {
        let v = api
            .create(A, module(&format!("v{n}"), json!({"contents": payload(n)})))
            .await;
        assert_eq!(v["md5"], md5, "V{n}");
    }

    // is_admin: full_access=1 → not an admin module; full_access=0 → admin; a tenant's → not.
    let fa1 = api
        .create(ADMIN, module("fa1", json!({"full_access": 1})))
        .await;
    assert_eq!(fa1["is_admin"], false);
    let fa0 = api
        .create(ADMIN, module("fa0", json!({"full_access": 0})))
        .await;
    assert_eq!(fa0["is_admin"], true);
    let mine = api
        .create(A, module("mine", json!({"description": "tenant's own"})))
        .await;
    assert_eq!(
        (&mine["is_admin"], &mine["tenant"], &mine["description"]),
        (&json!(false), &json!(A), &json!("tenant's own"))
    );
    // all_tenants: tenant "all", tenant_id null.
    let all = api
        .create(
            ADMIN,
            module(
                "everyone",
                json!({"all_tenants": 1, "auto_apply": 1, "priority_apply": 1, "apply_order": 0}),
            ),
        )
        .await;
    assert_eq!(
        (
            &all["tenant"],
            &all["tenant_id"],
            &all["auto_apply"],
            &all["priority_apply"],
            &all["apply_order"]
        ),
        (
            &json!("all"),
            &Value::Null,
            &json!(true),
            &json!(true),
            &json!(0)
        )
    );
    Ok(())
}

#[tokio::test]
async fn schema_errors_are_trove_400s() -> anyhow::Result<()> {
    let env = TestEnv::start_with(|s| s.api.max_body_size = 2048).await?;
    let api = Api::new(&env);
    let existing = id_of(&api.create(A, module("existing", json!({}))).await);
    let v = |items: &str| bad(&format!("Validation error: {items}"));

    let mut no_contents = module("m", json!({}));
    no_contents["module"]
        .as_object_mut()
        .unwrap()
        .remove("contents");
    let cases = [
        (no_contents, v("module 'contents' is a required property")),
        (
            module("m", json!({"apply_order": 10})),
            v("module['apply_order'] 10 is greater than the maximum of 9"),
        ),
        (
            module("m", json!({"apply_order": -1})),
            v("module['apply_order'] -1 is less than the minimum of 0"),
        ),
        (
            module("m", json!({"apply_order": "5"})),
            v("module['apply_order'] '5' is not of type 'integer'"),
        ),
        (
            module("m", json!({"auto_apply": true})),
            v("module['auto_apply'] True is not of type 'integer'"),
        ),
        (
            module("m", json!({"live_update": false})),
            v("module['live_update'] False is not of type 'integer'"),
        ),
        (
            module("m", json!({"visible": 2})),
            v("module['visible'] 2 is greater than the maximum of 1"),
        ),
        (
            module("m", json!({"contents": ""})),
            v("module['contents'] '' is too short"),
        ),
        (
            module("m", json!({"contents": 12})),
            v("module['contents'] 12 is not of type 'string'"),
        ),
        (
            module("m", json!({"name": ""})),
            v("module['name'] '' is too short"),
        ),
        (
            module("m", json!({"name": "---"})),
            v("module['name'] '---' does not match '^.*[0-9a-zA-Z]+.*$'"),
        ),
        (
            module("m", json!({"description": null})),
            v("module['description'] None is not of type 'string'"),
        ),
        (
            module("m", json!({"datastore": "mysql"})),
            v("module['datastore'] 'mysql' is not of type 'object'"),
        ),
        (
            module("m", json!({"datastore": {"type": ""}})),
            v("module['datastore']['type'] '' is too short"),
        ),
        (
            module("m", json!({"name": "", "contents": "", "apply_order": 10})),
            v(
                "module['name'] '' is too short; module['contents'] '' is too short; \
               module['apply_order'] 10 is greater than the maximum of 9",
            ),
        ),
        (json!({"modules": {}}), v("'module' is a required property")),
        (json!([]), v("'module' is a required property")),
        (json!({"module": 5}), v("module 5 is not of type 'object'")),
    ];
    for (body, expected) in cases {
        assert_eq!(api.post(A, "/modules", &body).await, expected, "{body}");
    }
    let update_cases = [
        (
            json!({"module": {"visible": true}}),
            v("module['visible'] True is not of type 'integer'"),
        ),
        (
            json!({"module": {"all_datastores": 2}}),
            v("module['all_datastores'] 2 is greater than the maximum of 1"),
        ),
        (
            json!({"module": {"all_datastore_versions": null}}),
            v("module['all_datastore_versions'] None is not of type 'integer'"),
        ),
        (
            json!({"module": {"contents": ""}}),
            v("module['contents'] '' is too short"),
        ),
        (json!({}), v("'module' is a required property")),
    ];
    for (body, expected) in update_cases {
        assert_eq!(
            api.put(A, &format!("/modules/{existing}"), &body).await,
            expected,
            "{body}"
        );
    }

    // Malformed JSON and an empty body.
    let garbage = b"{\"module\": {\"name\": ".to_vec();
    let serde_err = serde_json::from_slice::<Value>(&garbage).unwrap_err();
    for (method, path) in [
        (Method::POST, "/modules".to_owned()),
        (Method::PUT, format!("/modules/{existing}")),
    ] {
        let (s, text) = api
            .raw(method.clone(), A, A, &path, Some(garbage.clone()))
            .await;
        assert_eq!(
            (s, serde_json::from_str::<Value>(&text)?),
            bad(&format!("Malformed request body: {serde_err}")),
            "{method} {path}"
        );
        let (s, text) = api.raw(method, A, A, &path, Some(Vec::new())).await;
        assert_eq!(
            (s, serde_json::from_str::<Value>(&text)?),
            v("'module' is a required property")
        );
    }
    // A body beyond api.max_body_size (here 2048 bytes): Trove's 400 body, never a 500 or a bare 413.
    let big = module("big", json!({"contents": b64(&"x".repeat(4096))}));
    let (s, text) = api
        .raw(
            Method::POST,
            A,
            A,
            "/modules",
            Some(serde_json::to_vec(&big)?),
        )
        .await;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&text)?),
        bad("Request body is larger than the limit of 2048 bytes.")
    );
    // Nothing refused was written, and the module that exists is untouched.
    assert_eq!(
        sql_one(&env, "SELECT count(*)::text AS v FROM modules"),
        "1"
    );
    assert_eq!(api.show(A, &existing).await["md5"], V1_MD5);

    // Trove's schema allows properties it does not name (in `datastore` too) and does not decode
    // `contents`: such bodies are accepted, the unknown keys ignored, the text stored as sent.
    let (status, created) = api
        .post(
            A,
            "/modules",
            &module(
                "lenient",
                json!({"bogus": 1, "contents": "not base64 at all!",
                       "datastore": {"type": "redis", "extra": true}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        created["module"]["md5"],
        json!(trove_common::module::contents_md5("not base64 at all!"))
    );
    assert_eq!(created["module"]["datastore"], json!("redis"));
    assert!(created["module"].get("bogus").is_none(), "{created}");
    let (status, updated) = api
        .put(
            A,
            &format!("/modules/{existing}"),
            &json!({"module": {"bogus": 1, "other": 2, "description": "kept"}}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["module"]["description"], json!("kept"));
    Ok(())
}

#[tokio::test]
async fn update_rules() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let api = Api::new(&env);
    let cat = catalogue(&env);
    add_inactive_mysql_55(&env);

    let u1 = id_of(
        &api.create(
            A,
            module(
                "u1",
                json!({"datastore": {"type": "mysql", "version": "5.6"}}),
            ),
        )
        .await,
    );

    // §5 step 1: the all_* flags conflict with a datastore that is sent (any value of the flag).
    for flag in [0, 1] {
        assert_eq!(
            api.update(
                A,
                &u1,
                json!({"all_datastores": flag, "datastore": {"type": "mysql"}})
            )
            .await,
            bad("The module is invalid: You cannot set a datastore and specify --all_datastores")
        );
        assert_eq!(
            api.update(
                A,
                &u1,
                json!({"all_datastore_versions": flag, "datastore": {"version": "5.6"}})
            )
            .await,
            bad(
                "The module is invalid: You cannot set a datastore version and specify \
                 --all_datastore_versions"
            )
        );
    }

    // §5 step 5: re-resolution with the stored ids for what was not sent.
    assert_eq!(
        api.update(A, &u1, json!({"datastore": {"type": "redis"}}))
            .await,
        not_found("DBDatastoreVersion Not Found"),
        "the stored mysql version does not belong to redis"
    );
    assert_eq!(
        api.update(A, &u1, json!({"all_datastores": 1})).await,
        bad(&format!(
            "Datastore 'None' has no version '{}'.",
            cat.mysql_56
        ))
    );
    assert_eq!(
        api.update(A, &u1, json!({"datastore": {"type": "nosuch"}}))
            .await,
        not_found("Datastore 'nosuch' cannot be found.")
    );
    assert_eq!(
        api.update(A, &u1, json!({"datastore": {"version": "9.9"}}))
            .await,
        bad("Datastore version '9.9' cannot be found.")
    );
    assert_eq!(
        api.update(
            A,
            &u1,
            json!({"datastore": {"version": uuid::Uuid::new_v4().to_string()}})
        )
        .await,
        not_found("DBDatastoreVersion Not Found")
    );
    assert_eq!(
        api.update(A, &u1, json!({"datastore": {"version": "5.5"}}))
            .await,
        bad("Datastore version '5.5' is not active.")
    );
    let v = api
        .update_ok(
            A,
            &u1,
            json!({"datastore": {"type": "redis"}, "all_datastore_versions": 1}),
        )
        .await;
    assert_eq!(
        (
            &v["datastore"],
            &v["datastore_id"],
            &v["datastore_version"],
            &v["datastore_version_id"]
        ),
        (
            &json!("redis"),
            &json!(cat.redis),
            &json!("all"),
            &Value::Null
        )
    );
    // A version alone is looked up within the stored datastore, and stored as its id.
    let v = api
        .update_ok(A, &u1, json!({"datastore": {"version": "3.2.6"}}))
        .await;
    assert_eq!(
        (
            &v["datastore"],
            &v["datastore_version"],
            &v["datastore_version_id"]
        ),
        (&json!("redis"), &json!("3.2.6"), &json!(cat.redis_326))
    );
    let v = api
        .update_ok(
            A,
            &u1,
            json!({"all_datastores": 1, "all_datastore_versions": 1}),
        )
        .await;
    assert_eq!(
        (
            &v["datastore"],
            &v["datastore_id"],
            &v["datastore_version"],
            &v["datastore_version_id"]
        ),
        (&json!("all"), &Value::Null, &json!("all"), &Value::Null)
    );
    assert_eq!(
        api.update(A, &u1, json!({"datastore": {"version": "5.6"}}))
            .await,
        bad("Datastore 'None' has no version '5.6'.")
    );
    // A module bound to a version that has since been deactivated cannot be updated (as on create).
    let old = id_of(
        &api.create(
            A,
            module(
                "old",
                json!({"datastore": {"type": "mysql", "version": "5.6"}}),
            ),
        )
        .await,
    );
    sql_exec(
        &env,
        "UPDATE datastore_versions SET active = false WHERE id = $1",
        &[&cat.mysql_56],
    );
    assert_eq!(
        api.update(A, &old, json!({"description": "x"})).await,
        bad("Datastore version '5.6' is not active.")
    );
    sql_exec(
        &env,
        "UPDATE datastore_versions SET active = true WHERE id = $1",
        &[&cat.mysql_56],
    );
    api.update_ok(A, &old, json!({"description": "x"})).await;

    // §2 on update: a tenant's own module, admin options refused with the values as received.
    for (fields, text) in [
        (json!({"auto_apply": 1}), "Auto: 1"),
        (json!({"visible": 0}), "Visible: 0"),
        (json!({"all_tenants": 1}), "Tenant: all"),
        (json!({"priority_apply": 1}), "Priority: 1"),
        (json!({"full_access": 0}), "Full Access: 0"),
        (json!({"full_access": 1}), "Full Access: 1"),
    ] {
        assert_eq!(
            api.update(A, &u1, fields.clone()).await,
            forbidden(&format!(
                "You must be admin to update a module with these options. ({text})"
            )),
            "{fields}"
        );
    }
    assert_eq!(
        api.update(A, &u1, json!({"priority_apply": 1, "full_access": 1}))
            .await,
        bad("The following values are invalid: Cannot make module full access: (Priority: 1).")
    );

    // An admin module: a tenant may not update it at all (its all_tenants module is visible to A).
    let g = id_of(
        &api.create(ADMIN, module("global", json!({"all_tenants": 1})))
            .await,
    );
    assert_eq!(api.show(A, &g).await["is_admin"], true);
    let admin_module = forbidden(
        "You must be admin to update a module with these options. (Module is an admin module)",
    );
    assert_eq!(
        api.update(A, &g, json!({"description": "x"})).await,
        admin_module
    );
    assert_eq!(api.update(A, &g, json!({})).await, admin_module);

    // is_admin on update (§2): original OR options present; full_access flips it.
    let t = id_of(&api.create(A, module("flip", json!({}))).await);
    assert_eq!(
        api.update_ok(ADMIN, &t, json!({"description": "by admin"}))
            .await["is_admin"],
        false,
        "no admin option, not an admin module before"
    );
    assert_eq!(
        api.update_ok(ADMIN, &t, json!({"auto_apply": 1})).await["is_admin"],
        true
    );
    assert_eq!(
        api.update(A, &t, json!({"description": "mine"})).await,
        admin_module
    );
    assert_eq!(
        api.update(ADMIN, &t, json!({"full_access": 1})).await,
        bad("The following values are invalid: Cannot make module full access: (Auto: 1).")
    );
    let v = api
        .update_ok(ADMIN, &t, json!({"auto_apply": 0, "full_access": 1}))
        .await;
    assert_eq!(
        (&v["is_admin"], &v["auto_apply"]),
        (&json!(false), &json!(false))
    );
    api.update_ok(A, &t, json!({"description": "mine again"}))
        .await;
    assert_eq!(
        api.update_ok(ADMIN, &t, json!({"full_access": 0})).await["is_admin"],
        true
    );
    assert_eq!(api.update(A, &t, json!({})).await, admin_module);
    // The admin's edits left the module in A's tenant (all_tenants was never sent).
    assert_eq!(api.show(A, &t).await["tenant"], A);

    // `updated` moves on every update; md5 and ciphertext only when the contents change.
    let u2 = id_of(&api.create(A, module("u2", json!({}))).await);
    let mut last_updated = db_updated(&env, &u2);
    let mut last_cipher = db_contents(&env, &u2);
    let created = api.show(A, &u2).await["created"].clone();
    let steps = [
        (json!({"description": "d"}), V1_MD5, false),
        (json!({"contents": payload(1)}), V1_MD5, false),
        (json!({"live_update": 1, "apply_order": 3}), V1_MD5, false),
        (json!({"contents": payload(2)}), V2_MD5, true),
        (json!({"name": "u2-renamed"}), V2_MD5, false),
        (
            json!({"contents": payload(2), "description": "e"}),
            V2_MD5,
            false,
        ),
    ];
    for (fields, md5, cipher_changes) in steps {
        let v = api.update_ok(A, &u2, fields.clone()).await;
        assert_eq!(v["md5"], md5, "{fields}");
        assert_eq!(v["created"], created);
        assert!(
            v.get("instance_count").is_none(),
            "update has no instance_count"
        );
        let updated = db_updated(&env, &u2);
        assert_ne!(updated, last_updated, "updated must move: {fields}");
        let cipher = db_contents(&env, &u2);
        assert_eq!(
            cipher != last_cipher,
            cipher_changes,
            "ciphertext after {fields}"
        );
        assert_eq!(
            sql_one(
                &env,
                &format!("SELECT md5 AS v FROM modules WHERE id = '{u2}'")
            ),
            md5
        );
        (last_updated, last_cipher) = (updated, cipher);
    }
    let v = api.show(A, &u2).await;
    assert_eq!(
        (
            &v["name"],
            &v["description"],
            &v["live_update"],
            &v["apply_order"]
        ),
        (&json!("u2-renamed"), &json!("e"), &json!(true), &json!(3))
    );

    // Deviation: the client's "type" key is honoured, checked and lower-cased (so is module_type).
    let v = api
        .update_ok(A, &u2, json!({"type": "NEW_RELIC_LICENSE"}))
        .await;
    assert_eq!(v["type"], "new_relic_license");
    assert_eq!(
        sql_one(
            &env,
            &format!("SELECT type AS v FROM modules WHERE id = '{u2}'")
        ),
        "new_relic_license"
    );
    assert_eq!(
        api.update_ok(A, &u2, json!({"module_type": "Ping"})).await["type"],
        "ping"
    );
    for key in ["type", "module_type"] {
        assert_eq!(
            api.update(A, &u2, json!({ key: "Bogus" })).await,
            not_found("Module type 'Bogus' was not found.")
        );
    }

    // Deviation: uniqueness is re-checked on update when the key changes.
    let d1 = id_of(&api.create(A, module("d1", json!({}))).await);
    let d2 = id_of(&api.create(A, module("d2", json!({}))).await);
    let d3 = id_of(
        &api.create(A, module("d1", json!({"module_type": "new_relic_license"})))
            .await,
    );
    let dup_d1 =
        bad("A module with the name 'd1' already exists for datastore 'all' and datastore version 'all'");
    assert_eq!(api.update(A, &d2, json!({"name": "d1"})).await, dup_d1);
    assert_eq!(api.update(A, &d3, json!({"type": "PING"})).await, dup_d1);
    api.update_ok(
        A,
        &d2,
        json!({"name": "d1", "datastore": {"type": "mysql"}}),
    )
    .await;
    assert_eq!(
        api.update(A, &d2, json!({"all_datastores": 1})).await,
        dup_d1
    );
    // Renaming to its own key is not a duplicate of itself.
    api.update_ok(A, &d1, json!({"name": "d1"})).await;
    // Every refused update left the rows as they were.
    assert_eq!(api.show(A, &d3).await["type"], "new_relic_license");
    assert_eq!(api.show(A, &d2).await["datastore"], "mysql");

    // Another tenant's module is not found.
    assert_eq!(
        api.update(B, &d1, json!({"description": "x"})).await,
        module_not_found(&d1)
    );
    Ok(())
}

#[tokio::test]
async fn live_update_guards_update_and_delete() -> anyhow::Result<()> {
    let mut env = TestEnv::start().await?;
    // The API records instance_modules when it accepts an instance; no guest needs to run.
    env.stop_taskmanager().await;
    let api = Api::new(&env);
    let fixed = id_of(&api.create(A, module("fixed", json!({}))).await);
    let live = id_of(
        &api.create(A, module("live", json!({"live_update": 1})))
            .await,
    );
    let inst = api.create_instance(A, "i1", &[&fixed, &live]).await;
    assert_eq!(
        sql_one(
            &env,
            &format!(
                "SELECT string_agg(md5, ',') AS v FROM instance_modules \
                 WHERE instance_id = '{inst}' AND NOT deleted"
            )
        ),
        format!("{V1_MD5},{V1_MD5}")
    );
    assert_eq!(api.show(A, &fixed).await["instance_count"], 1);

    // §5 step 2: every update of a non-live module on a live instance, even turning live_update on,
    // and for an admin too.
    let applied = forbidden(APPLIED);
    for fields in [
        json!({"description": "x"}),
        json!({"live_update": 1}),
        json!({"contents": payload(2)}),
        json!({}),
    ] {
        assert_eq!(
            api.update(A, &fixed, fields.clone()).await,
            applied,
            "{fields}"
        );
    }
    assert_eq!(
        api.update(ADMIN, &fixed, json!({"description": "x"})).await,
        applied
    );
    // It is checked before the admin-option rules.
    assert_eq!(
        api.update(A, &fixed, json!({"auto_apply": 1})).await,
        applied
    );
    // §6: delete too.
    assert_eq!(api.delete(A, &format!("/modules/{fixed}")).await, applied);
    assert_eq!(
        api.delete(ADMIN, &format!("/modules/{fixed}")).await,
        applied
    );
    assert_eq!(api.show(A, &fixed).await["md5"], V1_MD5);

    // A live_update module may change while applied, and be deleted.
    let v = api
        .update_ok(A, &live, json!({"contents": payload(2)}))
        .await;
    assert_eq!(v["md5"], V2_MD5);
    api.update_ok(A, &live, json!({"description": "still live"}))
        .await;

    // Only a row with the module's current md5 counts.
    sql_exec(
        &env,
        "UPDATE instance_modules SET md5 = $1 WHERE module_id = $2",
        &[V2_MD5, &fixed],
    );
    api.update_ok(A, &fixed, json!({"description": "old md5 only"}))
        .await;
    sql_exec(
        &env,
        "UPDATE instance_modules SET md5 = $1 WHERE module_id = $2",
        &[V1_MD5, &fixed],
    );
    assert_eq!(
        api.update(A, &fixed, json!({"description": "x"})).await,
        applied
    );
    // Once the instance is terminated the module is free again. (Deleting an instance retires its
    // rows in the same transaction, as every delete path does.)
    {
        use diesel::Connection as _;
        let mut conn = env.db.conn();
        conn.transaction(|c| {
            trove_common::db::models::Instance::mark_deleted(c, &inst)?;
            trove_common::db::models::Instance::retire_modules(c, &inst)
        })?;
    }
    let rows_of = |env: &TestEnv| {
        sql_one(
            env,
            &format!(
                "SELECT string_agg(id || ' ' || md5 || ' ' || deleted || ' ' || \
                 coalesce(deleted_at::text, '-'), ',' ORDER BY id) AS v \
                 FROM instance_modules WHERE instance_id = '{inst}'"
            ),
        )
    };
    let before = rows_of(&env);
    api.update_ok(A, &fixed, json!({"contents": payload(2)}))
        .await;
    assert_eq!(
        api.delete(A, &format!("/modules/{fixed}")).await,
        (200, Value::Null)
    );
    assert_eq!(
        api.delete(A, &format!("/modules/{live}")).await,
        (200, Value::Null)
    );
    // Deleting a module leaves its instance_modules rows as they are (§6).
    assert_eq!(rows_of(&env).matches(',').count(), 1, "two rows");
    assert_eq!(rows_of(&env), before);
    Ok(())
}

#[tokio::test]
async fn list_and_show_visibility_across_tenants() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let api = Api::new(&env);
    let cat = catalogue(&env);

    let a1 = id_of(&api.create(A, module("a1", json!({}))).await);
    let a2 = id_of(&api.create(A, module("a2", json!({}))).await);
    let am = id_of(
        &api.create(A, module("am", json!({"datastore": {"type": "mysql"}})))
            .await,
    );
    let b1 = id_of(&api.create(B, module("b1", json!({}))).await);
    let g = id_of(
        &api.create(
            ADMIN,
            module(
                "g",
                json!({"all_tenants": 1, "auto_apply": 1, "priority_apply": 1}),
            ),
        )
        .await,
    );
    let h = id_of(&api.create(ADMIN, module("h", json!({"visible": 0}))).await);
    let hg = id_of(
        &api.create(ADMIN, module("hg", json!({"all_tenants": 1, "visible": 0})))
            .await,
    );
    // An admin hides one of A's modules: A no longer sees it.
    api.update_ok(ADMIN, &a2, json!({"visible": 0})).await;

    // GET /modules: own + all-tenants visible ones; the admin sees everything.
    assert_eq!(api.list_names(A, "").await, ["a1", "am", "g"]);
    assert_eq!(api.list_names(B, "").await, ["b1", "g"]);
    assert_eq!(
        api.list_names(ADMIN, "").await,
        ["a1", "a2", "am", "b1", "g", "h", "hg"]
    );
    // The list view has no live_update and no instance_count.
    let (_, list) = api.get(A, "/modules").await;
    for item in list["modules"].as_array().unwrap() {
        assert!(item.get("live_update").is_none(), "{item}");
        assert!(item.get("instance_count").is_none(), "{item}");
        assert!(item.get("contents").is_none(), "{item}");
    }
    // ?datastore=: all (any case) → only modules for every datastore; a name or id → exactly that one.
    assert_eq!(api.list_names(A, "?datastore=all").await, ["a1", "g"]);
    assert_eq!(api.list_names(A, "?datastore=ALL").await, ["a1", "g"]);
    assert_eq!(api.list_names(A, "?datastore=mysql").await, ["am"]);
    assert_eq!(
        api.list_names(A, &format!("?datastore={}", cat.mysql))
            .await,
        ["am"]
    );
    assert!(api.list_names(A, "?datastore=redis").await.is_empty());
    // An empty value filters nothing, as in Trove.
    assert_eq!(api.list_names(A, "?datastore=").await, ["a1", "am", "g"]);
    assert_eq!(
        api.list_names(B, "?datastore=mysql").await,
        Vec::<String>::new()
    );
    assert_eq!(
        api.list_names(ADMIN, "?datastore=all").await,
        ["a1", "a2", "b1", "g", "h", "hg"]
    );
    assert_eq!(
        api.get(A, "/modules?datastore=nosuch").await,
        not_found("Datastore 'nosuch' cannot be found.")
    );

    // GET /modules/{id}: the same visibility, 404 otherwise (names are not ids).
    for (token, id) in [(A, &b1), (A, &h), (A, &hg), (A, &a2), (B, &a1), (B, &am)] {
        assert_eq!(
            api.get(token, &format!("/modules/{id}")).await,
            module_not_found(id),
            "{token} must not see {id}"
        );
    }
    assert_eq!(api.get(A, "/modules/a1").await, module_not_found("a1"));
    for id in [&a1, &a2, &b1, &h, &hg] {
        assert_eq!(api.show(ADMIN, id).await["id"], json!(id));
    }
    assert_eq!(api.show(A, &g).await["tenant"], "all");
    assert_eq!(api.show(B, &g).await["tenant"], "all");
    // Update and delete load with the same rules.
    assert_eq!(
        api.update(B, &a1, json!({"description": "x"})).await,
        module_not_found(&a1)
    );
    assert_eq!(
        api.delete(B, &format!("/modules/{a1}")).await,
        module_not_found(&a1)
    );
    assert_eq!(
        api.delete(A, &format!("/modules/{hg}")).await,
        module_not_found(&hg)
    );
    // The URL tenant must be the caller's.
    let (s, text) = api
        .raw(Method::GET, A, B, &format!("/modules/{b1}"), None)
        .await;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&text)?),
        forbidden(&format!(
            "User with tenant id {A} cannot access this resource."
        ))
    );

    // §6: deleting a module with admin options needs an admin (values from the stored row).
    assert_eq!(
        api.delete(A, &format!("/modules/{g}")).await,
        forbidden("You must be admin to delete a module with these options. (Tenant: all, Auto: 1, Priority: 1)")
    );
    // Delete does not look at is_admin (Trove): an admin module of A's without options is A's to delete.
    assert_eq!(
        api.update_ok(ADMIN, &a1, json!({"full_access": 0})).await["is_admin"],
        true
    );
    assert_eq!(api.update(A, &a1, json!({"description": "x"})).await.0, 403);
    assert_eq!(
        api.delete(A, &format!("/modules/{a1}")).await,
        (200, Value::Null)
    );
    // Soft delete: the row stays, marked; show, list and a second delete no longer find it.
    assert_eq!(
        sql_one(
            &env,
            &format!(
                "SELECT (deleted AND deleted_at IS NOT NULL AND updated = deleted_at)::text AS v \
                 FROM modules WHERE id = '{a1}'"
            )
        ),
        "true"
    );
    assert_eq!(
        api.get(A, &format!("/modules/{a1}")).await,
        module_not_found(&a1)
    );
    assert_eq!(
        api.get(ADMIN, &format!("/modules/{a1}")).await,
        module_not_found(&a1)
    );
    assert_eq!(
        api.delete(A, &format!("/modules/{a1}")).await,
        module_not_found(&a1)
    );
    assert_eq!(api.list_names(A, "").await, ["am", "g"]);
    assert!(!api.list_names(ADMIN, "").await.contains(&"a1".to_owned()));
    // The admin can delete the global one.
    assert_eq!(
        api.delete(ADMIN, &format!("/modules/{g}")).await,
        (200, Value::Null)
    );
    assert_eq!(api.list_names(B, "").await, ["b1"]);
    Ok(())
}

#[tokio::test]
async fn show_counts_current_md5_on_live_instances() -> anyhow::Result<()> {
    let mut env = TestEnv::start().await?;
    env.stop_taskmanager().await;
    let api = Api::new(&env);
    let m = id_of(
        &api.create(A, module("counted", json!({"live_update": 1})))
            .await,
    );
    let count = |token: &'static str| {
        let api = &api;
        let m = m.clone();
        async move { api.show(token, &m).await["instance_count"].clone() }
    };
    assert_eq!(count(A).await, 0);
    let i1 = api.create_instance(A, "i1", &[&m]).await;
    let i2 = api.create_instance(A, "i2", &[&m]).await;
    // The admin may put A's module on its own instance; the count has no tenant filter (§7).
    let i3 = api.create_instance(ADMIN, "i3", &[&m]).await;
    assert_eq!(count(A).await, 3);
    assert_eq!(count(ADMIN).await, 3);
    // A deleted instance no longer counts (deleting one retires its rows), nor does a deleted row.
    {
        use diesel::Connection as _;
        let mut conn = env.db.conn();
        conn.transaction(|c| {
            trove_common::db::models::Instance::mark_deleted(c, &i3)?;
            trove_common::db::models::Instance::retire_modules(c, &i3)
        })?;
    }
    assert_eq!(count(A).await, 2);
    sql_exec(
        &env,
        "UPDATE instance_modules SET deleted = true, deleted_at = now() WHERE instance_id = $1",
        &[&i2],
    );
    assert_eq!(count(A).await, 1);
    // New contents: the remaining row holds the old md5, so nothing is current.
    api.update_ok(A, &m, json!({"contents": payload(2)})).await;
    assert_eq!(count(A).await, 0);
    sql_exec(
        &env,
        "UPDATE instance_modules SET md5 = $1 WHERE instance_id = $2",
        &[V2_MD5, &i1],
    );
    assert_eq!(count(A).await, 1);
    Ok(())
}
