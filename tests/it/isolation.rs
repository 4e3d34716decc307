//! Tenant isolation over every endpoint: another project's modules, instances, instance modules,
//! clusters and reapply jobs are invisible (404) and untouchable; non-admins cannot use admin-only
//! options; admin-only fields are hidden from non-admins.
//!
//! The same matrix runs twice: through a real Keystone (alice in trove-alpha, bob in trove-beta, and
//! admin), and under noauth (32-character tenants), so a regression in either strategy shows.

use std::time::Duration;

use serde_json::{json, Value};
use trove_tests::TestEnv;

use crate::keystone::{call, KeystoneEnv};

/// One caller: the token to send and the project it is scoped to (the URL tenant).
struct Caller {
    token: String,
    project: String,
}

fn ids(body: &Value, key: &str) -> Vec<String> {
    body[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list in {body}"))
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn ok(method: &str, url: &str, who: &Caller, body: Option<Value>) -> Value {
    let (s, b) = call(method, url, &who.token, body).await;
    assert!((200..300).contains(&s), "{method} {url}: {s} {b}");
    b
}

async fn wait_active(base: &str, who: &Caller, id: &str) {
    trove_tests::eventually(Duration::from_secs(90), "instance ACTIVE", || async {
        let (s, b) = call("GET", &format!("{base}/instances/{id}"), &who.token, None).await;
        (s == 200 && b["instance"]["status"] == "ACTIVE").then_some(())
    })
    .await
    .unwrap();
}

fn module(name: &str, extra: Value) -> Value {
    let mut m = json!({"name": name, "module_type": "ping", "contents": "bWVzc2FnZT1pc28K"});
    m.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({ "module": m })
}

async fn matrix(env: &TestEnv, alice: &Caller, bob: &Caller, admin: &Caller) {
    let a = env.base(&alice.project);
    let b = env.base(&bob.project);
    let adm = env.base(&admin.project);

    // Alice's resources: a module, an instance with it, a cluster with it, a reapply job.
    let amod = ok(
        "POST",
        &format!("{a}/modules"),
        alice,
        Some(module("amod", json!({}))),
    )
    .await;
    let amod = amod["module"]["id"].as_str().unwrap().to_owned();
    let inst = json!({"instance": {"name": "ainst", "flavorRef": "15", "volume": {"size": 1},
        "datastore": {"type": "mysql"}, "modules": [{"id": amod}]}});
    let ainst = ok("POST", &format!("{a}/instances"), alice, Some(inst)).await;
    let ainst = ainst["instance"]["id"].as_str().unwrap().to_owned();
    let member = json!({"flavorRef": "15", "volume": {"size": 1}, "modules": [{"id": amod}]});
    let clust = json!({"cluster": {"name": "aclust", "datastore": {"type": "redis", "version": "3.2.6"},
        "instances": [member, member, member]}});
    let aclust = ok("POST", &format!("{a}/clusters"), alice, Some(clust)).await;
    let aclust = aclust["cluster"]["id"].as_str().unwrap().to_owned();
    let shown = ok("GET", &format!("{a}/clusters/{aclust}"), alice, None).await;
    let amember = shown["cluster"]["instances"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_active(&a, alice, &ainst).await;
    // A non-admin's batch size and delay are clamped to the configured limits.
    let reapply =
        json!({"reapply": {"include_clustered": 1, "batch_size": 1000, "batch_delay": 0}});
    let (s, body) = call(
        "PUT",
        &format!("{a}/modules/{amod}/instances"),
        &alice.token,
        Some(reapply),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    // The taskmanager records the effective values when it starts the job.
    let job = trove_tests::eventually(Duration::from_secs(60), "reapply job started", || async {
        let (_, jobs) = call(
            "GET",
            &format!("{a}/modules/{amod}/reapply"),
            &alice.token,
            None,
        )
        .await;
        let job = jobs["reapply_jobs"][0].clone();
        (job["state"] != "queued" && !job.is_null()).then_some(job)
    })
    .await
    .unwrap();
    assert_eq!(
        (job["batch_size"].as_i64(), job["batch_delay"].as_i64()),
        (Some(50), Some(2)),
        "{job}"
    );

    // Bob, on his own URL: alice's things are not there, whatever he tries.
    let lists = [
        ("modules", format!("{b}/modules")),
        ("instances", format!("{b}/instances?include_clustered=true")),
        (
            "instances",
            format!("{b}/instances/detail?include_clustered=true"),
        ),
        ("clusters", format!("{b}/clusters")),
    ];
    for (key, url) in &lists {
        let body = ok("GET", url, bob, None).await;
        let seen = ids(&body, key);
        for theirs in [&amod, &ainst, &aclust, &amember] {
            assert!(!seen.contains(theirs), "bob sees {theirs} in {url}: {body}");
        }
    }
    let untouchable: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("{b}/modules/{amod}"), None),
        (
            "PUT",
            format!("{b}/modules/{amod}"),
            Some(json!({"module": {"name": "stolen"}})),
        ),
        ("DELETE", format!("{b}/modules/{amod}"), None),
        ("GET", format!("{b}/modules/{amod}/instances"), None),
        (
            "GET",
            format!("{b}/modules/{amod}/instances?count_only=true&include_clustered=true"),
            None,
        ),
        (
            "PUT",
            format!("{b}/modules/{amod}/instances"),
            Some(json!({"reapply": {"force": 1}})),
        ),
        ("GET", format!("{b}/modules/{amod}/reapply"), None),
        ("GET", format!("{b}/instances/{ainst}"), None),
        ("DELETE", format!("{b}/instances/{ainst}"), None),
        ("GET", format!("{b}/instances/{ainst}/modules"), None),
        (
            "POST",
            format!("{b}/instances/{ainst}/modules"),
            Some(json!({"modules": [{"id": amod}]})),
        ),
        (
            "DELETE",
            format!("{b}/instances/{ainst}/modules/{amod}"),
            None,
        ),
        ("GET", format!("{b}/instances/{amember}"), None),
        ("GET", format!("{b}/clusters/{aclust}"), None),
        ("DELETE", format!("{b}/clusters/{aclust}"), None),
        (
            "GET",
            format!("{b}/clusters/{aclust}/instances/{amember}"),
            None,
        ),
    ];
    for (method, url, body) in untouchable {
        let (s, resp) = call(method, &url, &bob.token, body).await;
        assert_eq!(s, 404, "bob {method} {url}: {resp}");
        assert_eq!(
            resp["itemNotFound"]["code"],
            json!(404),
            "{method} {url}: {resp}"
        );
    }
    // ... and alice's URL is closed to him.
    for path in [
        "/modules".to_owned(),
        format!("/modules/{amod}"),
        format!("/instances/{ainst}"),
        format!("/clusters/{aclust}"),
    ] {
        let (s, resp) = call("GET", &format!("{a}{path}"), &bob.token, None).await;
        assert_eq!(s, 403, "bob GET {a}{path}: {resp}");
        assert_eq!(
            resp["forbidden"]["message"],
            json!(format!(
                "User with tenant id {} cannot access this resource.",
                bob.project
            ))
        );
    }
    // Bob's own instance cannot take alice's module (an out-of-reach id is dropped, as in Trove).
    let binst = ok(
        "POST",
        &format!("{b}/instances"),
        bob,
        Some(json!({"instance": {"name": "binst", "flavorRef": "15", "volume": {"size": 1}}})),
    )
    .await;
    let binst = binst["instance"]["id"].as_str().unwrap().to_owned();
    wait_active(&b, bob, &binst).await;
    let (_, resp) = call(
        "POST",
        &format!("{b}/instances/{binst}/modules"),
        &bob.token,
        Some(json!({"modules": [{"id": amod}]})),
    )
    .await;
    assert!(!resp.to_string().contains(&amod), "{resp}");
    let rows = env.query_strings(&format!(
        "SELECT count(*)::text AS v FROM instance_modules WHERE instance_id = '{binst}' AND module_id = '{amod}'"
    ));
    assert_eq!(rows, ["0"]);

    // Nothing of alice's changed.
    let m = ok("GET", &format!("{a}/modules/{amod}"), alice, None).await;
    assert_eq!(m["module"]["name"], "amod");
    let i = ok("GET", &format!("{a}/instances/{ainst}"), alice, None).await;
    assert_eq!(i["instance"]["status"], "ACTIVE");
    let c = ok("GET", &format!("{a}/clusters/{aclust}"), alice, None).await;
    assert_ne!(c["cluster"]["task"]["name"], "DELETING");
    let jobs = ok("GET", &format!("{a}/modules/{amod}/reapply"), alice, None).await;
    assert_eq!(
        jobs["reapply_jobs"].as_array().unwrap().len(),
        1,
        "bob queued no reapply"
    );

    // Admin-only options.
    for (extra, opts) in [
        (json!({"all_tenants": 1}), "Tenant: all"),
        (json!({"auto_apply": 1}), "Auto: 1"),
        (json!({"visible": 0}), "Visible: 0"),
        (json!({"priority_apply": 1}), "Priority: 1"),
        (json!({"full_access": 0}), "Full Access: 0"),
    ] {
        let (s, resp) = call(
            "POST",
            &format!("{a}/modules"),
            &alice.token,
            Some(module("opt", extra)),
        )
        .await;
        assert_eq!(s, 403, "{opts}: {resp}");
        assert_eq!(
            resp["forbidden"]["message"],
            json!(format!(
                "You must be admin to create a module with these options. ({opts})"
            ))
        );
    }
    let (s, resp) = call(
        "PUT",
        &format!("{a}/modules/{amod}"),
        &alice.token,
        Some(json!({"module": {"visible": 0}})),
    )
    .await;
    assert_eq!(s, 403, "{resp}");
    let shared = ok(
        "POST",
        &format!("{adm}/modules"),
        admin,
        Some(module("shared", json!({"all_tenants": 1}))),
    )
    .await;
    let shared = shared["module"]["id"].as_str().unwrap().to_owned();
    let hidden = ok(
        "POST",
        &format!("{adm}/modules"),
        admin,
        Some(module("hidden", json!({"visible": 0}))),
    )
    .await;
    let hidden = hidden["module"]["id"].as_str().unwrap().to_owned();
    let seen = ids(
        &ok("GET", &format!("{a}/modules"), alice, None).await,
        "modules",
    );
    assert!(
        seen.contains(&shared) && !seen.contains(&hidden),
        "{seen:?}"
    );
    let (s, resp) = call(
        "PUT",
        &format!("{a}/modules/{shared}"),
        &alice.token,
        Some(json!({"module": {"description": "mine now"}})),
    )
    .await;
    assert_eq!(s, 403, "{resp}");
    assert_eq!(
        resp["forbidden"]["message"],
        "You must be admin to update a module with these options. (Module is an admin module)"
    );
    let (s, resp) = call(
        "DELETE",
        &format!("{a}/modules/{shared}"),
        &alice.token,
        None,
    )
    .await;
    assert_eq!(s, 403, "{resp}");
    assert_eq!(
        resp["forbidden"]["message"],
        "You must be admin to delete a module with these options. (Tenant: all)"
    );
    let (s, _) = call("GET", &format!("{a}/modules/{hidden}"), &alice.token, None).await;
    assert_eq!(s, 404);

    // Admin-only fields: hidden from alice, shown to the admin (who may read any tenant's instance).
    const ADMIN_FIELDS: [&str; 4] = [
        "tenant_id",
        "server_id",
        "volume_id",
        "encrypted_rpc_messaging",
    ];
    let mine = ok("GET", &format!("{a}/instances/{ainst}"), alice, None).await;
    for f in ADMIN_FIELDS {
        assert!(mine["instance"].get(f).is_none(), "alice sees {f}: {mine}");
    }
    for url in [format!("{a}/instances"), format!("{a}/instances/detail")] {
        let list = ok("GET", &url, alice, None).await;
        for item in list["instances"].as_array().unwrap() {
            for f in ADMIN_FIELDS {
                assert!(item.get(f).is_none(), "alice sees {f} in {url}: {item}");
            }
        }
    }
    let theirs = ok("GET", &format!("{adm}/instances/{ainst}"), admin, None).await;
    assert_eq!(theirs["instance"]["tenant_id"], json!(alice.project));
    for f in ADMIN_FIELDS {
        assert!(
            theirs["instance"].get(f).is_some(),
            "admin misses {f}: {theirs}"
        );
    }
    let m = ok("GET", &format!("{adm}/modules/{amod}"), admin, None).await;
    assert_eq!(m["module"]["tenant_id"], json!(alice.project));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_matrix_with_keystone() {
    let k = KeystoneEnv::start().await;
    let caller = |t: crate::keystone::Token| Caller {
        token: t.token,
        project: t.project_id,
    };
    let alice = caller(k.ks.login(&k.ks.alice()).await);
    let bob = caller(k.ks.login(&k.ks.bob()).await);
    let admin = caller(k.ks.login(&k.ks.admin()).await);
    matrix(&k.env, &alice, &bob, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_matrix_with_noauth() {
    let env = TestEnv::start().await.unwrap();
    let caller = |p: &str| Caller {
        token: p.to_owned(),
        project: p.to_owned(),
    };
    matrix(
        &env,
        &caller("a1ice0e46e5f7840e39012aff46a9201"),
        &caller("b0b00e46e5f7840e39012aff46a92012"),
        &caller("admin00e46e5f7840e39012aff46a920"),
    )
    .await;
}
