//! End-to-end runs of the CLI (in-process, through `trove_cli::run`) against a small fake Trove
//! API on a local port, checking the requests it sends and what it prints.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{json, Value};

/// One request the fake API received.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the request body is JSON")
    }
}

type Handler = dyn Fn(&Recorded) -> (u16, String) + Send + Sync;

/// A fake API: every request is recorded and answered by the handler.
struct Fake {
    root: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Fake {
    fn start(handler: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let root = format!("http://{}", listener.local_addr().expect("local addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let handler: Arc<Handler> = Arc::new(handler);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let recorded = Arc::clone(&recorded);
                let handler = Arc::clone(&handler);
                thread::spawn(move || serve(stream, &recorded, &*handler));
            }
        });
        Fake { root, requests }
    }

    /// The `/v1.0/<tenant>` base.
    fn base(&self) -> String {
        format!("{}/v1.0/t1", self.root)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// `METHOD path` of every request, in order.
    fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Runs the CLI as an admin against this API; returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let base = self.base();
        let env: HashMap<&str, &str> = [
            ("OS_AUTH_TYPE", "token_endpoint"),
            ("OS_TOKEN", "secret-token"),
            ("TROVE_BYPASS_URL", base.as_str()),
            ("OS_ROLES", "admin"),
        ]
        .into_iter()
        .collect();
        run_with(&env, args)
    }
}

fn run_with(env: &HashMap<&str, &str>, args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("trove").chain(args.iter().copied());
    let code = trove_cli::run(argv, env, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf-8 stdout"),
        String::from_utf8(err).expect("utf-8 stderr"),
    )
}

fn serve(stream: TcpStream, recorded: &Mutex<Vec<Recorded>>, handler: &Handler) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (status, text) = handler(&request);
    recorded.lock().expect("lock").push(request);
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    let mut stream = reader.into_inner();
    let _ = stream.write_all(response.as_bytes());
}

fn not_found(message: &str) -> (u16, String) {
    (
        404,
        json!({"itemNotFound": {"code": 404, "message": message}}).to_string(),
    )
}

const MODULE_ID: &str = "0065a8ed-0668-4db5-a4ad-d88d0a166388";

fn module(instance_count: Option<i64>) -> Value {
    let mut m = json!({"id": MODULE_ID, "name": "mymod", "type": "ping", "description": null,
        "tenant_id": "eac1e46e5f7840e39012aff46a92073a",
        "tenant": "eac1e46e5f7840e39012aff46a92073a", "datastore_id": null, "datastore": "all",
        "datastore_version_id": null, "datastore_version": "all", "auto_apply": false,
        "priority_apply": false, "apply_order": 5, "is_admin": true, "visible": true,
        "live_update": true, "md5": "7f700cc7b99606615f8b51946f6d3228",
        "created": "2017-06-02T17:06:21", "updated": "2017-06-02T17:06:21"});
    if let Some(count) = instance_count {
        m["instance_count"] = json!(count);
    }
    m
}

/// Answers module lookups: by id, and the module list (for names).
fn module_routes(r: &Recorded) -> Option<(u16, String)> {
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/v1.0/t1/modules") => Some((200, json!({"modules": [module(None)]}).to_string())),
        ("GET", p) if p == format!("/v1.0/t1/modules/{MODULE_ID}") => {
            Some((200, json!({"module": module(Some(2))}).to_string()))
        }
        ("GET", p) if p.starts_with("/v1.0/t1/modules/") && !p[17..].contains('/') => Some(
            not_found(&format!("Module with ID {} could not be found.", &p[17..])),
        ),
        _ => None,
    }
}

const CREATE_TABLE: &str = "\
+----------------------+--------------------------------------+
| Property             | Value                                |
+----------------------+--------------------------------------+
| apply_order          | 5                                    |
| auto_apply           | False                                |
| created              | 2017-06-02T17:06:21                  |
| datastore            | all                                  |
| datastore_id         | None                                 |
| datastore_version    | all                                  |
| datastore_version_id | None                                 |
| description          | None                                 |
| id                   | 0065a8ed-0668-4db5-a4ad-d88d0a166388 |
| instance_count       | 2                                    |
| is_admin             | True                                 |
| live_update          | True                                 |
| md5                  | 7f700cc7b99606615f8b51946f6d3228     |
| name                 | mymod                                |
| priority_apply       | False                                |
| tenant               | eac1e46e5f7840e39012aff46a92073a     |
| tenant_id            | eac1e46e5f7840e39012aff46a92073a     |
| type                 | ping                                 |
| updated              | 2017-06-02T17:06:21                  |
| visible              | True                                 |
+----------------------+--------------------------------------+
";

#[test]
fn module_show_by_name_falls_back_to_the_list() {
    let api = Fake::start(|r| module_routes(r).unwrap_or_else(|| not_found("no route")));
    let (code, out, err) = api.run(&["module-show", "mymod"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, CREATE_TABLE);
    assert_eq!(
        api.calls(),
        [
            "GET /v1.0/t1/modules/mymod",
            "GET /v1.0/t1/modules",
            &format!("GET /v1.0/t1/modules/{MODULE_ID}"),
        ]
    );
    let first = &api.requests()[0];
    assert_eq!(
        first.headers.get("x-auth-token").map(String::as_str),
        Some("secret-token")
    );
}

#[test]
fn unknown_and_ambiguous_names() {
    let api = Fake::start(|r| match r.path.as_str() {
        "/v1.0/t1/modules" => (
            200,
            json!({"modules": [{"id": "a", "name": "twin"}, {"id": "b", "name": "twin"}]})
                .to_string(),
        ),
        p => not_found(&format!("Module with ID {} could not be found.", &p[17..])),
    });
    let (code, out, err) = api.run(&["module-show", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "ERROR: No module with a name or ID of 'nope' exists.\n"
    );
    let (code, _, err) = api.run(&["module-delete", "twin"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "ERROR: Multiple module matches found for 'twin', use an ID to be more specific.\n"
    );
}

#[test]
fn http_errors_show_the_fault_message_and_status() {
    let api = Fake::start(|r| {
        if let Some(answer) = module_routes(r) {
            return answer;
        }
        match r.method.as_str() {
            "DELETE" => (
                403,
                json!({"forbidden": {"code": 403, "message":
                    "You must be admin to delete a module with these options. (Module is an admin module)"}})
                .to_string(),
            ),
            _ => (500, "not json".to_owned()),
        }
    });
    let (code, out, err) = api.run(&["module-delete", MODULE_ID]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "ERROR: You must be admin to delete a module with these options. (Module is an admin \
         module) (HTTP 403)\n"
    );
    let (code, _, err) = api.run(&["module-query", "i1"]);
    assert_eq!(code, 1);
    assert_eq!(err, "ERROR: Internal Server Error (HTTP 500)\n");
}

#[test]
fn module_create_sends_base64_and_prints_the_show_view() {
    let api = Fake::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/v1.0/t1/modules") => (200, json!({"module": module(None)}).to_string()),
        _ => module_routes(r).unwrap_or_else(|| not_found("no route")),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ping1.dat");
    std::fs::write(&file, "message=Module.V1\n").expect("write the module file");
    let file = file.to_string_lossy().into_owned();
    let (code, out, err) = api.run(&["module-create", "mymod", "ping", &file, "--live_update"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, CREATE_TABLE);
    let requests = api.requests();
    assert_eq!(
        requests[0].json(),
        json!({"module": {"name": "mymod", "module_type": "ping",
            "contents": "bWVzc2FnZT1Nb2R1bGUuVjEK", "all_tenants": 0, "auto_apply": 0,
            "visible": 1, "live_update": 1, "priority_apply": 0, "apply_order": 5}})
    );
    assert_eq!(
        requests[0].headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(api.calls()[1], format!("GET /v1.0/t1/modules/{MODULE_ID}"));

    let empty = dir.path().join("empty.dat");
    std::fs::write(&empty, "").expect("write the empty file");
    let empty = empty.to_string_lossy().into_owned();
    let before = api.requests().len();
    let (code, out, err) = api.run(&["module-create", "m2", "ping", &empty]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("ERROR: The file '{empty}' must contain some data\n")
    );
    assert_eq!(
        api.requests().len(),
        before,
        "nothing is sent for an empty file"
    );
}

#[test]
fn module_update_prints_the_put_response() {
    let api = Fake::start(|r| match r.method.as_str() {
        "PUT" => (200, json!({"module": module(None)}).to_string()),
        _ => module_routes(r).unwrap_or_else(|| not_found("no route")),
    });
    let (code, out, _) = api.run(&["module-update", "mymod", "--no_live_update", "--name", "x"]);
    assert_eq!(code, 0);
    assert!(!out.contains("instance_count"), "{out}");
    assert!(out.contains("| live_update          | True "), "{out}");
    let put = api
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("a PUT was sent");
    assert_eq!(put.path, format!("/v1.0/t1/modules/{MODULE_ID}"));
    assert_eq!(
        put.json(),
        json!({"module": {"name": "x", "live_update": 0}})
    );
}

#[test]
fn delete_carries_on_after_a_failure() {
    let api = Fake::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/v1.0/t1/instances/good") => (
            200,
            json!({"instance": {"id": "good", "name": "g", "status": "ACTIVE"}}).to_string(),
        ),
        ("GET", "/v1.0/t1/instances/busy") => (
            200,
            json!({"instance": {"id": "busy", "name": "b", "status": "BUILD"}}).to_string(),
        ),
        ("DELETE", "/v1.0/t1/instances/good") => (202, String::new()),
        ("DELETE", "/v1.0/t1/instances/busy") => (
            422,
            json!({"unprocessableEntity": {"code": 422,
                "message": "Instance busy is not ready. (Status is BUILD)."}})
            .to_string(),
        ),
        ("GET", "/v1.0/t1/instances?include_clustered=False") => {
            (200, json!({"instances": []}).to_string())
        }
        _ => not_found("Resource cannot be found."),
    });
    let (code, out, err) = api.run(&["delete", "good", "busy", "ghost"]);
    assert_eq!(code, 1);
    assert_eq!(out, "Request to delete instance good has been accepted.\n");
    assert_eq!(
        err,
        "Instance busy is not ready. (Status is BUILD). (HTTP 422)\n\
         No instance with a name or ID of 'ghost' exists.\n\
         ERROR: Unable to delete the specified instance(s).\n"
    );
}

#[test]
fn module_instances_follow_every_page() {
    let instance = |id: &str| {
        json!({"id": id, "name": format!("n-{id}"), "status": "ACTIVE", "links": [],
            "flavor": {"id": "15", "links": []}, "datastore": {"type": "redis", "version": "3.2.6"},
            "region": "RegionOne", "tenant_id": "t1", "volume": {"size": 1}})
    };
    let page1 = json!({"instances": [instance("a1")], "links": [{"rel": "next",
        "href": format!("https://h/v1.0/t1/modules/{MODULE_ID}/instances?include_clustered=True&marker=a1")}]});
    let page2 = json!({"instances": [instance("b2")]});
    let api = Fake::start(move |r| {
        let base = format!("/v1.0/t1/modules/{MODULE_ID}/instances");
        if r.path == format!("{base}?include_clustered=True") {
            (200, page1.to_string())
        } else if r.path == format!("{base}?marker=a1&include_clustered=True") {
            (200, page2.to_string())
        } else {
            module_routes(r).unwrap_or_else(|| not_found("no route"))
        }
    });
    let (code, out, err) = api.run(&["module-instances", MODULE_ID, "--include_clustered"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let ids: Vec<&str> = out
        .lines()
        .skip(3)
        .filter(|l| l.starts_with("| "))
        .map(|l| l[2..].split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["a1", "b2"]);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|h| h.ends_with("| Tenant ID |")),
        "{out}"
    );
}

#[test]
fn module_instance_count_query_and_table() {
    let api = Fake::start(|r| {
        if r.path
            == format!(
                "/v1.0/t1/modules/{MODULE_ID}/instances?include_clustered=True&count_only=True"
            )
        {
            return (
                200,
                json!({"instances": [{"module_name": "mymod", "module_id": MODULE_ID,
                    "module_md5": "7f700cc7b99606615f8b51946f6d3228", "instance_count": 1,
                    "current": true, "min_updated_date": "2017-06-02T17:22:25",
                    "max_updated_date": "2017-06-02T17:22:25"}]})
                .to_string(),
            );
        }
        module_routes(r).unwrap_or_else(|| not_found("no route"))
    });
    let (code, out, _) = api.run(&["module-instance-count", "mymod", "--include_clustered"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "\
+-------------+---------------------+---------------------+----------------------------------+---------+-------+
| Module Name | Min Updated Date    | Max Updated Date    | Module MD5                       | Current | Count |
+-------------+---------------------+---------------------+----------------------------------+---------+-------+
| mymod       | 2017-06-02T17:22:25 | 2017-06-02T17:22:25 | 7f700cc7b99606615f8b51946f6d3228 |    True |     1 |
+-------------+---------------------+---------------------+----------------------------------+---------+-------+
"
    );
}

#[test]
fn reapply_prints_nothing_and_wait_prints_a_summary() {
    let polls = Arc::new(Mutex::new(0u32));
    let counter = Arc::clone(&polls);
    let api = Fake::start(move |r| {
        let jobs = format!("/v1.0/t1/modules/{MODULE_ID}/reapply");
        let old = json!({"id": "old", "state": "COMPLETED", "total": 1, "applied": 1,
            "skipped": 0, "failed": 0, "started": "2017-06-02T18:00:00",
            "finished": "2017-06-02T18:00:01"});
        match (r.method.as_str(), r.path.as_str()) {
            ("PUT", _) => (202, String::new()),
            ("GET", p) if p == jobs => {
                let mut n = counter.lock().expect("lock");
                *n += 1;
                let body = match *n {
                    1 => json!({"reapply_jobs": [old]}),
                    2 => json!({"reapply_jobs": [{"id": "new", "state": "RUNNING", "total": 5,
                        "applied": 1, "skipped": 0, "failed": 0,
                        "started": "2017-06-02T18:44:04", "finished": null}, old]}),
                    _ => json!({"reapply_jobs": [{"id": "new", "state": "COMPLETED", "total": 5,
                        "applied": 3, "skipped": 2, "failed": 0,
                        "started": "2017-06-02T18:44:04", "finished": "2017-06-02T18:44:10"},
                        old]}),
                };
                (200, body.to_string())
            }
            _ => module_routes(r).unwrap_or_else(|| not_found("no route")),
        }
    });

    let (code, out, err) = api.run(&[
        "module-reapply",
        "mymod",
        "--md5=869744bdd18e306a96c145df562065ab",
        "--include_clustered",
    ]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let put = api
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("a PUT was sent");
    assert_eq!(put.path, format!("/v1.0/t1/modules/{MODULE_ID}/instances"));
    assert_eq!(
        put.json(),
        json!({"reapply": {"md5": "869744bdd18e306a96c145df562065ab", "include_clustered": 1,
            "force": 0}})
    );

    let (code, out, err) = api.run(&[
        "module-reapply",
        "mymod",
        "--include_clustered",
        "--batch_size=1",
        "--delay=3",
        "--wait",
        "--poll_interval=0.01",
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "Reapply new: COMPLETED, 3 applied, 2 skipped, 0 failed of 5\n"
    );
    assert_eq!(*polls.lock().expect("lock"), 3);
}

#[test]
fn json_output_prints_the_api_objects() {
    // The API's key order (not sorted) is kept, as Python's dicts keep it.
    const LIST: &str = r#"{"modules": [{"id": "m1", "name": "mymod", "type": "ping",
        "apply_order": 5, "auto_apply": false, "description": null, "label": "é"}]}"#;
    let api = Fake::start(|_| (200, LIST.to_owned()));
    let (code, out, _) = api.run(&["--json", "module-list"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "[\n  {\n    \"id\": \"m1\",\n    \"name\": \"mymod\",\n    \"type\": \"ping\",\n    \
         \"apply_order\": 5,\n    \"auto_apply\": false,\n    \"description\": null,\n    \
         \"label\": \"\\u00e9\"\n  }\n]\n"
    );
}

#[test]
fn usage_and_auth_errors() {
    let api = Fake::start(|_| not_found("no route"));
    let (code, out, err) = api.run(&["cluster-create", "c", "redis", "3.2.6"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "ERROR: Missing argument(s): instance\n");
    assert!(api.requests().is_empty());

    let (code, _, err) = api.run(&["module-create", "m", "ping", "f", "--apply_order", "12"]);
    assert_eq!(code, 2);
    assert!(err.contains("--apply_order"), "{err}");

    let env: HashMap<&str, &str> = [("OS_AUTH_TYPE", "token_endpoint")].into_iter().collect();
    let (code, _, err) = run_with(&env, &["module-list"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("ERROR: You must provide a token"), "{err}");
}

#[test]
fn service_root_and_project_build_the_base_url() {
    let api = Fake::start(|r| match r.path.as_str() {
        "/v1.0/proj9/datastores" => (
            200,
            json!({"datastores": [{"id": "8a5c", "name": "redis", "links": [], "versions": []}]})
                .to_string(),
        ),
        _ => not_found("no route"),
    });
    let root = api.root.clone();
    let env: HashMap<&str, &str> = [
        ("OS_AUTH_TYPE", "noauth"),
        ("OS_PROJECT_ID", "proj9"),
        ("TROVE_URL", root.as_str()),
        ("OS_ROLES", "member"),
    ]
    .into_iter()
    .collect();
    let (code, out, err) = run_with(&env, &["datastore-list"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "+------+-------+\n| ID   | Name  |\n+------+-------+\n| 8a5c | redis |\n+------+-------+\n"
    );
    let request = &api.requests()[0];
    assert_eq!(
        request.headers.get("x-project-id").map(String::as_str),
        Some("proj9")
    );
    assert_eq!(
        request.headers.get("x-roles").map(String::as_str),
        Some("member")
    );
    assert!(!request.headers.contains_key("x-auth-token"));
}

const INSTANCE_ID: &str = "5a1a0b3e-7b4c-4a43-9a5e-0a6f0f1c2d3e";

/// Answers an instance lookup by id, pages of databases and users, root and the restart action.
fn data_plane_routes(r: &Recorded) -> (u16, String) {
    let inst = format!("/v1.0/t1/instances/{INSTANCE_ID}");
    let path = r.path.as_str();
    match (r.method.as_str(), path) {
        ("GET", p) if p == inst => (
            200,
            json!({"instance": {"id": INSTANCE_ID, "name": "inst1"}}).to_string(),
        ),
        ("GET", p) if p == format!("{inst}/databases") => (
            200,
            json!({"databases": [{"name": "db2"}],
                   "links": [{"rel": "next", "href": format!("https://x{inst}/databases?marker=db2")}]})
            .to_string(),
        ),
        ("GET", p) if p == format!("{inst}/databases?marker=db2") => {
            (200, json!({"databases": [{"name": "db1"}]}).to_string())
        }
        ("GET", p) if p == format!("{inst}/users") => (
            200,
            json!({"users": [{"name": "bob", "host": "%",
                              "databases": [{"name": "db1"}, {"name": "db2"}]},
                             {"name": "amy", "host": "10.0.0.1", "databases": []}]})
            .to_string(),
        ),
        ("POST", p) if p == format!("{inst}/root") => (
            200,
            json!({"user": {"name": "root", "password": "pw123"}}).to_string(),
        ),
        ("GET", p) if p == format!("{inst}/root") => {
            (200, json!({"rootEnabled": false}).to_string())
        }
        ("POST" | "DELETE", _) => (202, String::new()),
        _ => not_found("The resource could not be found."),
    }
}

#[test]
fn database_user_and_root_commands_print_troveclient_tables() {
    let fake = Fake::start(data_plane_routes);
    let (code, out, err) = fake.run(&["database-list", INSTANCE_ID]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "+------+\n| Name |\n+------+\n| db1  |\n| db2  |\n+------+\n"
    );

    let (code, out, _) = fake.run(&["user-list", INSTANCE_ID]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "+------+----------+-----------+\n\
         | Name | Host     | Databases |\n\
         +------+----------+-----------+\n\
         | amy  | 10.0.0.1 |           |\n\
         | bob  | %        | db1, db2  |\n\
         +------+----------+-----------+\n"
    );

    let (code, out, _) = fake.run(&["root-enable", INSTANCE_ID]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "+----------+-------+\n\
         | Property | Value |\n\
         +----------+-------+\n\
         | name     | root  |\n\
         | password | pw123 |\n\
         +----------+-------+\n"
    );
    let (code, out, _) = fake.run(&["root-show", INSTANCE_ID]);
    assert_eq!(code, 0);
    assert!(out.contains("| is_root_enabled | False |"), "{out}");

    let (code, _, _) = fake.run(&["root-enable", INSTANCE_ID, "--root_password", "s3cret"]);
    assert_eq!(code, 0);
    let (code, _, _) = fake.run(&[
        "database-create",
        INSTANCE_ID,
        "db3",
        "--character_set",
        "utf8mb4",
    ]);
    assert_eq!(code, 0);
    let (code, _, _) = fake.run(&[
        "user-create",
        INSTANCE_ID,
        "carl",
        "pw1",
        "--host",
        "10.0.0.2",
        "--databases",
        "db1",
        "db3",
    ]);
    assert_eq!(code, 0);
    let (code, _, _) = fake.run(&["user-delete", INSTANCE_ID, "carl", "--host", "10.0.0.2"]);
    assert_eq!(code, 0);
    let (code, _, _) = fake.run(&["database-delete", INSTANCE_ID, "db3"]);
    assert_eq!(code, 0);
    let (code, _, _) = fake.run(&["restart", INSTANCE_ID]);
    assert_eq!(code, 0);

    let writes: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    let inst = format!("/v1.0/t1/instances/{INSTANCE_ID}");
    let calls: Vec<String> = writes
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        [
            format!("POST {inst}/root"),
            format!("POST {inst}/root"),
            format!("POST {inst}/databases"),
            format!("POST {inst}/users"),
            format!("DELETE {inst}/users/carl%4010%2e0%2e0%2e2"),
            format!("DELETE {inst}/databases/db3"),
            format!("POST {inst}/action"),
        ]
    );
    assert_eq!(
        writes[0].body, "",
        "root-enable without a password sends no body"
    );
    assert_eq!(writes[1].json(), json!({"password": "s3cret"}));
    assert_eq!(
        writes[2].json(),
        json!({"databases": [{"name": "db3", "character_set": "utf8mb4"}]})
    );
    assert_eq!(
        writes[3].json(),
        json!({"users": [{"name": "carl", "password": "pw1", "host": "10.0.0.2",
                          "databases": [{"name": "db1"}, {"name": "db3"}]}]})
    );
    assert_eq!(writes[6].json(), json!({"restart": {}}));
}

#[test]
fn data_plane_commands_name_a_missing_instance_or_cluster() {
    let fake = Fake::start(|_| not_found("The resource could not be found."));
    let (code, _, err) = fake.run(&["database-list", "nope"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("No instance or cluster with a name or ID of 'nope' exists."),
        "{err}"
    );
}

const CLUSTER_ID: &str = "9c1e2f4a-3b5d-4e6f-8a7b-0c1d2e3f4a5b";

#[test]
fn reset_status_posts_troves_bodies_and_prints_nothing() {
    let fake = Fake::start(|r| {
        let inst = format!("/v1.0/t1/instances/{INSTANCE_ID}");
        let cluster = format!("/v1.0/t1/clusters/{CLUSTER_ID}");
        match (r.method.as_str(), r.path.as_str()) {
            // By name: the lookup by id misses, the list has it.
            ("GET", "/v1.0/t1/instances/inst1") => not_found("Resource inst1 cannot be found."),
            ("GET", "/v1.0/t1/instances?include_clustered=False") => (
                200,
                json!({"instances": [{"id": INSTANCE_ID, "name": "inst1"}]}).to_string(),
            ),
            ("GET", p) if p == inst => (
                200,
                json!({"instance": {"id": INSTANCE_ID, "name": "inst1", "status": "BUILD"}})
                    .to_string(),
            ),
            ("POST", p) if p == format!("{inst}/action") => (202, String::new()),
            ("GET", p) if p == cluster => (
                200,
                json!({"cluster": {"id": CLUSTER_ID, "name": "c1", "instances": []}}).to_string(),
            ),
            // Trove answers a cluster action with the cluster view.
            ("POST", p) if p == cluster => (
                202,
                json!({"cluster": {"id": CLUSTER_ID, "name": "c1",
                                   "task": {"id": 1, "name": "NONE"}, "instances": []}})
                .to_string(),
            ),
            _ => not_found("The resource could not be found."),
        }
    });
    assert_eq!(
        fake.run(&["reset-status", "inst1"]),
        (0, String::new(), String::new())
    );
    assert_eq!(
        fake.run(&["cluster-reset-status", CLUSTER_ID]),
        (0, String::new(), String::new())
    );
    let writes: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(writes.len(), 2);
    assert_eq!(
        writes[0].path,
        format!("/v1.0/t1/instances/{INSTANCE_ID}/action")
    );
    assert_eq!(writes[0].json(), json!({"reset_status": {}}));
    assert_eq!(writes[1].path, format!("/v1.0/t1/clusters/{CLUSTER_ID}"));
    assert_eq!(writes[1].json(), json!({"reset-status": {}}));
}

#[test]
fn reset_status_by_a_non_admin_shows_troves_policy_error() {
    let fake = Fake::start(|r| match r.method.as_str() {
        "GET" => (
            200,
            json!({"instance": {"id": INSTANCE_ID, "name": "inst1"}}).to_string(),
        ),
        _ => (
            403,
            json!({"forbidden": {"code": 403,
                "message": "Policy doesn't allow instance:reset_status to be performed."}})
            .to_string(),
        ),
    });
    let (code, out, err) = fake.run(&["reset-status", INSTANCE_ID]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "ERROR: Policy doesn't allow instance:reset_status to be performed. (HTTP 403)\n"
    );
    let (code, _, err) = fake.run(&["reset-status"]);
    assert_eq!(code, 2, "a missing <instance> is a usage error: {err}");
}
