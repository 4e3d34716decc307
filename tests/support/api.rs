//! A small client for one tenant of the API, for tests that drive modules, instances and reapplies
//! over HTTP, and the waits they share.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use diesel::{PgConnection, RunQueryDsl};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The md5 (over the base64 text, docs/module-semantics.md §4) of `message=<text>\n`.
pub fn md5_of(text: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("message={text}\n"));
    trove_common::module::contents_md5(&b64)
}

/// A small HTTP client for one tenant of the API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: String, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
            token: token.to_owned(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a live-update `ping` module with `message=<text>`; returns its id.
    pub async fn create_module(&self, name: &str, text: &str) -> String {
        let contents =
            base64::engine::general_purpose::STANDARD.encode(format!("message={text}\n"));
        let body = json!({"module": {"name": name, "module_type": "ping", "contents": contents,
                                     "live_update": 1}});
        let (status, v) = self
            .send(reqwest::Method::POST, "/modules", Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "module create: {v}");
        v["module"]["id"].as_str().expect("module id").to_owned()
    }

    pub async fn update_module(&self, id: &str, text: &str) {
        let contents =
            base64::engine::general_purpose::STANDARD.encode(format!("message={text}\n"));
        let body = json!({"module": {"contents": contents}});
        let (status, v) = self
            .send(reqwest::Method::PUT, &format!("/modules/{id}"), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "module update: {v}");
        assert_eq!(v["module"]["md5"], md5_of(text));
    }

    /// Creates a redis instance (the default datastore) with the module; returns its id.
    pub async fn create_instance(&self, name: &str, module: &str) -> String {
        let body = json!({"instance": {"name": name, "flavorRef": "15", "volume": {"size": 1},
                                       "modules": [{"id": module}]}});
        let (status, v) = self
            .send(reqwest::Method::POST, "/instances", Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "instance create: {v}");
        v["instance"]["id"]
            .as_str()
            .expect("instance id")
            .to_owned()
    }

    /// `PUT /modules/{id}/instances` with `{"reapply": body}`; must be accepted.
    pub async fn reapply(&self, module: &str, body: Value) {
        let (status, v) = self
            .send(
                reqwest::Method::PUT,
                &format!("/modules/{module}/instances"),
                Some(json!({ "reapply": body })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "reapply: {v}");
    }

    /// The module's reapply jobs, newest first.
    pub async fn jobs(&self, module: &str) -> Vec<Value> {
        let (status, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/modules/{module}/reapply"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "reapply jobs: {v}");
        v["reapply_jobs"].as_array().cloned().unwrap_or_default()
    }

    /// `module-instance-count` as data: md5 → (current, count).
    pub async fn count_only(&self, module: &str) -> BTreeMap<String, (bool, i64)> {
        let (status, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/modules/{module}/instances?count_only=true"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "count_only: {v}");
        v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["module_md5"].as_str().unwrap_or_default().to_owned(),
                    (
                        r["current"].as_bool().unwrap_or(false),
                        r["instance_count"].as_i64().unwrap_or(-1),
                    ),
                )
            })
            .collect()
    }

    /// Statuses of all the tenant's instances, page after page.
    pub async fn all_statuses(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        let mut marker: Option<String> = None;
        loop {
            let path = match &marker {
                Some(m) => format!("/instances?limit=100&marker={m}"),
                None => "/instances?limit=100".to_owned(),
            };
            let (status, v) = self.send(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "instance list: {v}");
            let page = v["instances"].as_array().cloned().unwrap_or_default();
            for i in &page {
                all.insert(
                    i["id"].as_str().unwrap_or_default().to_owned(),
                    i["status"].as_str().unwrap_or_default().to_owned(),
                );
            }
            // The api may clamp the page to its own size: the end is an empty page.
            match page.last() {
                Some(last) => marker = last["id"].as_str().map(str::to_owned),
                None => return all,
            }
        }
    }

    /// Statuses of the tenant's instances (one page: tests keep it under the page size).
    pub async fn statuses(&self) -> BTreeMap<String, String> {
        let (status, v) = self.send(reqwest::Method::GET, "/instances", None).await;
        assert_eq!(status, StatusCode::OK, "instance list: {v}");
        v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or_default().to_owned(),
                    i["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

pub async fn wait_active(api: &Api, ids: &[String], timeout: Duration) {
    crate::eventually(timeout, "every instance ACTIVE", || async {
        let statuses = if ids.len() < 20 {
            api.statuses().await
        } else {
            api.all_statuses().await
        };
        for id in ids {
            let s = statuses.get(id).map(String::as_str).unwrap_or("missing");
            if s.contains("ERROR") || s == "FAILED" {
                let (_, view) = api
                    .send(reqwest::Method::GET, &format!("/instances/{id}"), None)
                    .await;
                panic!("instance {id} is {s}: {}", view["instance"]["fault"]);
            }
        }
        ids.iter()
            .all(|id| statuses.get(id).is_some_and(|s| s == "ACTIVE"))
            .then_some(())
    })
    .await
    .unwrap();
}

/// Polls until the guest of every instance has reported module `module` at `md5` as OK.
pub async fn wait_guest_results(db_url: &str, module: &str, md5: &str, n: i64, timeout: Duration) {
    let sql = format!(
        "SELECT count(*) FROM guest_module_results WHERE module_id = '{module}' AND md5 = '{md5}' \
         AND status = 'OK'"
    );
    crate::eventually(timeout, "the guests' module results", || async {
        let mut conn = <PgConnection as diesel::Connection>::establish(db_url).ok()?;
        (count(&mut conn, &sql) == n).then_some(())
    })
    .await
    .unwrap();
}

/// Runs SQL returning one text column `v`.
pub fn strings(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    diesel::sql_query(sql)
        .load::<Row>(conn)
        .expect("query")
        .into_iter()
        .map(|r| r.v)
        .collect()
}

/// Runs `SELECT (<sql>)` for one count.
pub fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    strings(conn, &format!("SELECT ({sql})::text AS v"))[0]
        .parse()
        .expect("a count")
}
