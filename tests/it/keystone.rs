//! A real Keystone in front of our API: token validation, our CLI's `OS_*` login, python-troveclient's
//! library and legacy `trove` shell, and the latency token validation adds.
//!
//! Keystone itself comes from `scripts/keystone up` (PyPI's keystone 30.0.0 under gunicorn on
//! 127.0.0.1:5000, its tables in PostgreSQL; projects `trove-alpha`/alice and `trove-beta`/bob, admin,
//! and the service user `trove`). [`keystone`] runs that script once per test process; the script holds a lock file,
//! so test processes started together never bootstrap at the same time, and it returns at once when
//! Keystone already runs (`.ci/run` starts it before the tests).
//!
//! **Parallel tests and the catalog.** Every test has its own API on a random port, but python-troveclient
//! and our CLI find the API through Keystone's catalog. So each [`KeystoneEnv`] registers its own region
//! (`trove-test-<unix time>-<random>`) holding `database` endpoints that point at its API, and clients
//! select it with `OS_REGION_NAME`. Tests never touch each other's endpoints, so they run in parallel
//! without a lock. The region is deleted when the env drops; regions left behind by a killed test
//! process are swept (after two hours) by the next process that starts Keystone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::OnceCell;
use trove_common::config::{KeystoneAuthtokenSection, Settings};
use trove_tests::{bin, CliOutput, TestEnv};

/// The running Keystone and the passwords `scripts/keystone` made.
pub struct Keystone {
    /// `http://127.0.0.1:5000/v3`.
    pub auth_url: String,
    /// The virtual environment with keystone, gunicorn and python-troveclient.
    pub venv: PathBuf,
    admin_password: String,
    service_password: String,
    alice_password: String,
    bob_password: String,
}

/// A Keystone user with a project-scoped login.
#[derive(Clone, Debug)]
pub struct User {
    pub name: &'static str,
    pub password: String,
    pub project: &'static str,
}

/// A project-scoped token and what Keystone says about it.
#[derive(Clone, Debug)]
pub struct Token {
    pub token: String,
    pub project_id: String,
    pub roles: Vec<String>,
}

static KEYSTONE: OnceCell<Keystone> = OnceCell::const_new();

/// The repository root (the tests crate is one level down).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Keystone, started (and installed, the first time on a machine) by `scripts/keystone up` once per
/// test process. Panics with a setup hint when it cannot start; tests never skip.
pub async fn keystone() -> &'static Keystone {
    KEYSTONE
        .get_or_init(|| async {
            match start_keystone().await {
                Ok(k) => k,
                Err(e) => panic!(
                    "Keystone is not available: {e:#}\nhint: run `scripts/keystone up` (it needs python3 \
                     with venv and PyPI access the first time) and look at its log under \
                     ~/.local/share/trove-rs/keystone/keystone.log"
                ),
            }
        })
        .await
}

async fn start_keystone() -> anyhow::Result<Keystone> {
    let started = Instant::now();
    let out = tokio::process::Command::new("bash")
        .arg(repo().join("scripts/keystone"))
        .arg("up")
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/keystone up failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let vars: std::collections::HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let var = |k: &str| {
        vars.get(k)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("scripts/keystone up printed no {k}"))
    };
    let ks = Keystone {
        auth_url: var("OS_AUTH_URL")?,
        venv: PathBuf::from(var("TROVE_KEYSTONE_VENV")?),
        admin_password: var("TROVE_KEYSTONE_ADMIN_PASSWORD")?,
        service_password: var("TROVE_KEYSTONE_SERVICE_PASSWORD")?,
        alice_password: var("TROVE_KEYSTONE_ALICE_PASSWORD")?,
        bob_password: var("TROVE_KEYSTONE_BOB_PASSWORD")?,
    };
    eprintln!(
        "keystone: scripts/keystone up took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    sweep_old_regions(&ks).await;
    Ok(ks)
}

/// Deletes test regions (and their endpoints) older than two hours: left by killed test processes.
async fn sweep_old_regions(ks: &Keystone) {
    let Ok(token) = ks.system_admin_token().await else {
        return;
    };
    let http = client();
    let Ok(regions) = get_json(&http, &format!("{}/regions", ks.auth_url), &token).await else {
        return;
    };
    let now = unix_now();
    for r in regions["regions"].as_array().into_iter().flatten() {
        let id = r["id"].as_str().unwrap_or_default();
        let born = id
            .strip_prefix("trove-test-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|t| t.parse::<u64>().ok());
        if born.is_some_and(|b| now.saturating_sub(b) > 2 * 3600) {
            delete_region(&http, &ks.auth_url, &token, id).await;
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let r = http.get(url).header("X-Auth-Token", token).send().await?;
    anyhow::ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    Ok(r.json().await?)
}

async fn delete_region(http: &reqwest::Client, auth_url: &str, token: &str, region: &str) {
    if let Ok(eps) = get_json(
        http,
        &format!("{auth_url}/endpoints?region_id={region}"),
        token,
    )
    .await
    {
        for ep in eps["endpoints"].as_array().into_iter().flatten() {
            let id = ep["id"].as_str().unwrap_or_default();
            let _ = http
                .delete(format!("{auth_url}/endpoints/{id}"))
                .header("X-Auth-Token", token)
                .send()
                .await;
        }
    }
    let _ = http
        .delete(format!("{auth_url}/regions/{region}"))
        .header("X-Auth-Token", token)
        .send()
        .await;
}

impl Keystone {
    pub fn admin(&self) -> User {
        User {
            name: "admin",
            password: self.admin_password.clone(),
            project: "admin",
        }
    }

    pub fn alice(&self) -> User {
        User {
            name: "alice",
            password: self.alice_password.clone(),
            project: "trove-alpha",
        }
    }

    pub fn bob(&self) -> User {
        User {
            name: "bob",
            password: self.bob_password.clone(),
            project: "trove-beta",
        }
    }

    /// trove-api's `[keystone_authtoken]` for this Keystone.
    pub fn authtoken_section(&self) -> KeystoneAuthtokenSection {
        KeystoneAuthtokenSection {
            auth_url: self.auth_url.clone(),
            username: "trove".into(),
            password: self.service_password.clone().into(),
            project_name: "service".into(),
            ..KeystoneAuthtokenSection::default()
        }
    }

    /// Switches `settings` to `auth_strategy = keystone` against this Keystone.
    pub fn configure(&self, settings: &mut Settings) {
        settings.default.auth_strategy = "keystone".into();
        settings.default.allow_noauth = false;
        settings.keystone_authtoken = self.authtoken_section();
    }

    /// A new project-scoped token for `user`.
    pub async fn login(&self, user: &User) -> Token {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user.name, "domain": {"name": "Default"}, "password": user.password}}},
            "scope": {"project": {"name": user.project, "domain": {"name": "Default"}}}}});
        let r = client()
            .post(format!("{}/auth/tokens?nocatalog", self.auth_url))
            .json(&body)
            .send()
            .await
            .expect("Keystone login");
        assert_eq!(r.status().as_u16(), 201, "login as {}", user.name);
        let token = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
        let v: Value = r.json().await.unwrap();
        Token {
            token,
            project_id: v["token"]["project"]["id"].as_str().unwrap().to_owned(),
            roles: v["token"]["roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect(),
        }
    }

    /// A system-scoped admin token, for catalog changes.
    async fn system_admin_token(&self) -> anyhow::Result<String> {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"name": "Default"}, "password": self.admin_password}}},
            "scope": {"system": {"all": true}}}});
        let r = client()
            .post(format!("{}/auth/tokens?nocatalog", self.auth_url))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 201, "admin login: {}", r.status());
        Ok(r.headers()["x-subject-token"].to_str()?.to_owned())
    }

    /// `OS_*` variables that log `user` in and pick `region`'s endpoint.
    pub fn os_env(&self, user: &User, region: &str) -> Vec<(&'static str, String)> {
        vec![
            ("OS_AUTH_URL", self.auth_url.clone()),
            ("OS_IDENTITY_API_VERSION", "3".into()),
            ("OS_USERNAME", user.name.into()),
            ("OS_PASSWORD", user.password.clone()),
            ("OS_PROJECT_NAME", user.project.into()),
            ("OS_USER_DOMAIN_NAME", "Default".into()),
            ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
            ("OS_REGION_NAME", region.into()),
        ]
    }
}

/// A [`TestEnv`] whose API validates Keystone tokens, with its own catalog region.
pub struct KeystoneEnv {
    pub env: TestEnv,
    pub ks: &'static Keystone,
    /// This env's region: clients pass it as `OS_REGION_NAME`.
    pub region: String,
    /// Our CLI's token cache, private to this env.
    pub cli_cache: tempfile::TempDir,
}

impl KeystoneEnv {
    pub async fn start() -> Self {
        let ks = keystone().await;
        let env = TestEnv::start_with(|s| ks.configure(s)).await.unwrap();
        let region = format!(
            "trove-test-{}-{}",
            unix_now(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let token = ks.system_admin_token().await.expect("admin token");
        let http = client();
        let post = |path: &str, body: Value| {
            let (http, token) = (&http, &token);
            let url = format!("{}{path}", ks.auth_url);
            async move {
                let r = http
                    .post(&url)
                    .header("X-Auth-Token", token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "POST {url}: {}", r.status());
                r.json::<Value>().await.unwrap()
            }
        };
        post("/regions", json!({"region": {"id": region}})).await;
        let services = get_json(
            &http,
            &format!("{}/services?type=database", ks.auth_url),
            &token,
        )
        .await
        .unwrap();
        let service = services["services"][0]["id"]
            .as_str()
            .expect("scripts/keystone registers the database service")
            .to_owned();
        for interface in ["public", "internal", "admin"] {
            post(
                "/endpoints",
                json!({"endpoint": {"service_id": service, "interface": interface,
                    "region_id": region, "url": format!("{}/v1.0/$(project_id)s", env.api_url)}}),
            )
            .await;
        }
        Self {
            env,
            ks,
            region,
            cli_cache: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs our built `trove` CLI as `user`, logging in through Keystone (`OS_*`) with this env's
    /// region and token cache.
    pub async fn trove(&self, user: &User, args: &[&str], cwd: Option<&Path>) -> CliOutput {
        let mut cmd = tokio::process::Command::new(bin("trove"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TROVE_CLI_CACHE_DIR", self.cli_cache.path())
            .envs(self.ks.os_env(user, &self.region));
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        output(cmd).await
    }

    /// Runs python-troveclient's legacy `trove` shell as `user` against this env. With `py2_cells`, a
    /// `sitecustomize` shim decodes the `bytes` cells its `print_list` makes on Python 3 (see
    /// [`python_trove_shell_prints_our_tables`]), so the table is what the shell printed on Python 2.
    pub async fn python_trove(&self, user: &User, args: &[&str], py2_cells: bool) -> CliOutput {
        let shim = tempfile::tempdir().unwrap();
        let mut cmd = tokio::process::Command::new(self.ks.venv.join("bin/trove"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.cli_cache.path())
            .envs(self.ks.os_env(user, &self.region));
        if py2_cells {
            std::fs::write(
                shim.path().join("sitecustomize.py"),
                "import prettytable\n\
                 _add_row = prettytable.PrettyTable.add_row\n\
                 def add_row(self, row, *a, **k):\n    \
                     return _add_row(self, [c.decode('utf-8') if isinstance(c, bytes) else c for c in row], *a, **k)\n\
                 prettytable.PrettyTable.add_row = add_row\n",
            )
            .unwrap();
            cmd.env("PYTHONPATH", shim.path());
        }
        output(cmd).await
    }
}

async fn output(mut cmd: tokio::process::Command) -> CliOutput {
    cmd.stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the command finished within 300 s")
        .expect("running the command");
    CliOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Drop for KeystoneEnv {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, where blocking is not allowed: a thread of its own
        // with its own small runtime deletes the region.
        let (auth_url, region) = (self.ks.auth_url.clone(), self.region.clone());
        let password = self.ks.admin_password.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let ks = Keystone {
                    auth_url: auth_url.clone(),
                    venv: PathBuf::new(),
                    admin_password: password,
                    service_password: String::new(),
                    alice_password: String::new(),
                    bob_password: String::new(),
                };
                if let Ok(token) = ks.system_admin_token().await {
                    delete_region(&client(), &auth_url, &token, &region).await;
                }
            });
        })
        .join();
    }
}

/// `(status, JSON body or Null)` of one API call with `token`.
pub async fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let http = client();
    let mut req = http
        .request(method.parse().expect("method"), url)
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("API reachable");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn ok(out: &CliOutput, what: &str) -> String {
    assert_eq!(
        out.status, 0,
        "{what} failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out.stdout.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_tokens_decide_user_project_and_admin() {
    let k = KeystoneEnv::start().await;
    let (ks, env) = (k.ks, &k.env);
    let alice = ks.login(&ks.alice()).await;
    let bob = ks.login(&ks.bob()).await;
    let admin = ks.login(&ks.admin()).await;
    assert_eq!(
        alice.project_id.len(),
        32,
        "Keystone project ids are 32 hex"
    );

    // No token, a garbage token, and a token of another project.
    let r = client()
        .get(format!("{}/modules", env.base(&alice.project_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, b) = call(
        "GET",
        &format!("{}/modules", env.base(&alice.project_id)),
        "garbage",
        None,
    )
    .await;
    assert_eq!((s, &b["unauthorized"]["code"]), (401, &json!(401)), "{b}");
    let (s, b) = call(
        "GET",
        &format!("{}/modules", env.base(&alice.project_id)),
        &bob.token,
        None,
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(
        b["forbidden"]["message"],
        format!(
            "User with tenant id {} cannot access this resource.",
            bob.project_id
        )
    );
    // The noauth convention (token = project) means nothing under keystone.
    let (s, _) = call(
        "GET",
        &format!("{}/modules", env.base(&alice.project_id)),
        &alice.project_id,
        None,
    )
    .await;
    assert_eq!(s, 401);

    // Alice's own project works; her roles are not admin, so admin-only options are refused.
    let body = |name: &str, extra: Value| {
        let mut m = json!({"name": name, "module_type": "ping", "contents": "bWVzc2FnZT1oaQo="});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "module": m })
    };
    let alice_modules = format!("{}/modules", env.base(&alice.project_id));
    let (s, b) = call(
        "POST",
        &alice_modules,
        &alice.token,
        Some(body("am", json!({}))),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["module"]["tenant_id"], json!(alice.project_id));
    assert_eq!(b["module"]["is_admin"], json!(false));
    let (s, b) = call(
        "POST",
        &alice_modules,
        &alice.token,
        Some(body("am2", json!({"all_tenants": 1}))),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    // The admin role in Keystone makes an admin: same option accepted, module marked is_admin.
    assert!(admin.roles.contains(&"admin".to_owned()));
    let (s, b) = call(
        "POST",
        &format!("{}/modules", env.base(&admin.project_id)),
        &admin.token,
        Some(body("shared", json!({"all_tenants": 1}))),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["module"]["is_admin"], json!(true));
    assert_eq!(b["module"]["tenant"], json!("all"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_without_allow_noauth_or_credentials_refuses_to_start() {
    let mut s = Settings::default();
    s.default.auth_strategy = "noauth".into();
    let auth = trove_api::auth::Authenticator::from_settings(&s);
    let err = auth.check().unwrap_err().to_string();
    assert!(err.contains("allow_noauth"), "{err}");
    let s = Settings::default();
    assert_eq!(s.default.auth_strategy, "keystone");
    let err = trove_api::auth::Authenticator::from_settings(&s)
        .check()
        .unwrap_err()
        .to_string();
    assert!(err.contains("keystone_authtoken.auth_url"), "{err}");
    // A wrong service password: the API runs, but callers get 503 (retry), never a false 401.
    let ks = keystone().await;
    let mut section = ks.authtoken_section();
    section.password = "wrong".to_owned().into();
    let auth = trove_api::auth::keystone::KeystoneAuth::new(&section).unwrap();
    let alice = ks.login(&ks.alice()).await;
    let err = auth.validate(&alice.token).await.unwrap_err();
    assert!(
        matches!(err, trove_api::auth::AuthError::Unavailable(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_cli_logs_in_from_os_variables_and_caches_the_token() {
    let k = KeystoneEnv::start().await;
    let alice = k.ks.alice();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.dat"), "message=hi\n").unwrap();
    let out = k
        .trove(
            &alice,
            &["module-create", "climod", "ping", "p.dat"],
            Some(dir.path()),
        )
        .await;
    let created = ok(&out, "module-create through Keystone");
    let project = k.ks.login(&alice).await.project_id;
    assert!(
        created.contains(&project),
        "owned by alice's project:\n{created}"
    );

    // One cache file, private, with the token and the catalog endpoint of this env's region.
    let files: Vec<_> = std::fs::read_dir(k.cli_cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let cached: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(
        cached["endpoint"],
        json!(format!("{}/v1.0/{project}", k.env.api_url))
    );

    // The next run reuses it instead of logging in again: the cached token is unchanged.
    let t0 = Instant::now();
    let out = k.trove(&alice, &["module-list"], None).await;
    let warm = t0.elapsed();
    assert!(ok(&out, "module-list").contains("climod"));
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(again["token"], cached["token"]);

    // A revoked/unknown cached token: the API answers 401, the CLI logs in again once and succeeds.
    let mut broken = cached.clone();
    broken["token"] = json!("gAAAAAnot-a-real-token");
    std::fs::write(&files[0], broken.to_string()).unwrap();
    let out = k.trove(&alice, &["module-list"], None).await;
    assert!(ok(&out, "module-list after a bad cached token").contains("climod"));
    let renewed: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_ne!(
        renewed["token"], broken["token"],
        "the new token was cached"
    );

    // Bob cannot see alice's module; roles come from the token (no admin columns for alice).
    let out = k.trove(&k.ks.bob(), &["module-list"], None).await;
    assert!(!ok(&out, "bob's module-list").contains("climod"));
    let out = k.trove(&alice, &["module-list"], None).await;
    let header = ok(&out, "module-list")
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(!header.contains("Tenant"), "{header}");
    let out = k.trove(&k.ks.admin(), &["module-list"], None).await;
    let header = ok(&out, "admin module-list")
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(header.contains("Tenant"), "{header}");

    // A wrong password fails with Keystone's message (and no cached token of the right one is used).
    let mut wrong = alice.clone();
    wrong.password = "nope".into();
    let out = k.trove(&wrong, &["module-list"], None).await;
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("(HTTP 401)"), "{}", out.stderr);
    eprintln!("figures: our CLI module-list with a cached token took {warm:?}");
}

/// The python-troveclient library, through a keystoneauth1 password session and the catalog, runs the
/// whole module walkthrough against our API (tests/python/test_troveclient.py checks every answer's
/// field names and types).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_troveclient_library_runs_the_walkthrough() {
    let k = KeystoneEnv::start().await;
    let work = tempfile::tempdir().unwrap();
    let script = repo().join("tests/python/test_troveclient.py");
    let mut cmd = tokio::process::Command::new(k.ks.venv.join("bin/python"));
    cmd.arg(&script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", work.path())
        .env("TROVE_TEST_WORKDIR", work.path())
        .envs(k.ks.os_env(&k.ks.admin(), &k.region))
        .env("TROVE_TEST_ALICE_PASSWORD", &k.ks.alice().password);
    let started = Instant::now();
    let out = output(cmd).await;
    let took = started.elapsed();
    let stdout = ok(&out, "tests/python/test_troveclient.py");
    assert!(
        stdout.contains("troveclient walkthrough: all calls OK"),
        "{stdout}\n{}",
        out.stderr
    );
    // The calls had effects: the module is on 5 instances (2 single, 3 cluster members), current.
    let rows = k.env.query_strings(
        "SELECT count(*)::text AS v FROM instance_modules im JOIN modules m ON m.id = im.module_id \
         WHERE m.name = 'pymod' AND NOT im.deleted",
    );
    assert_eq!(rows, ["5"], "{stdout}");
    eprintln!("figures: python-troveclient walkthrough took {took:?}\n{stdout}");
}

/// The cells of a table, row by row (header included), with python-troveclient's Python 3 `b'...'`
/// wrapping of string cells removed.
fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| {
                    let c = c.trim();
                    c.strip_prefix("b'")
                        .and_then(|c| c.strip_suffix('\''))
                        .unwrap_or(c)
                        .to_owned()
                })
                .collect()
        })
        .collect()
}

/// python-troveclient's legacy `trove` shell prints the same tables as our CLI.
///
/// python-troveclient 8.11.0's `print_list` encodes every string cell to `bytes` (a Python 2 leftover),
/// so on Python 3 the real shell prints `b'mymod'` and its columns are three characters wider; nobody
/// can match that byte for byte, and the walkthrough's tables (Python 2) do not show it. So each
/// command is compared twice: with the unmodified shell, cell by cell (same header, rows, order and
/// values once the `b'...'` is removed); and with a shim that only decodes those cells back to text,
/// byte for byte, which checks widths and alignment too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_trove_shell_prints_our_tables() {
    let k = KeystoneEnv::start().await;
    let (admin, alice) = (k.ks.admin(), k.ks.alice());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.dat"), "message=Module.V1\n").unwrap();
    for (user, module, inst) in [
        (&admin, "admmod", "adminst"),
        (&alice, "alicemod", "aliceinst"),
    ] {
        ok(
            &k.trove(
                user,
                &["module-create", module, "ping", "p.dat"],
                Some(dir.path()),
            )
            .await,
            "module-create",
        );
        ok(
            &k.trove(
                user,
                &[
                    "create",
                    inst,
                    "15",
                    "--size",
                    "1",
                    "--module",
                    module,
                    "--datastore",
                    "mysql",
                ],
                None,
            )
            .await,
            "create",
        );
        trove_tests::eventually(Duration::from_secs(60), "instance ACTIVE", || async {
            let out = k.trove(user, &["show", inst], None).await;
            out.stdout.contains("| ACTIVE ").then_some(())
        })
        .await
        .unwrap();
        trove_tests::eventually(Duration::from_secs(30), "module applied", || async {
            let out = k
                .trove(user, &["module-instance-count", module], None)
                .await;
            out.stdout.contains(" True ").then_some(())
        })
        .await
        .unwrap();
    }
    for user in [&admin, &alice] {
        let module = if user.name == "admin" {
            "admmod"
        } else {
            "alicemod"
        };
        for args in [
            vec!["module-list"],
            vec!["module-instance-count", module],
            vec!["list"],
        ] {
            // python's start-up dominates (about 2 s of CPU per run): run the three side by side.
            let (ours, raw, py2) = tokio::join!(
                k.trove(user, &args, None),
                k.python_trove(user, &args, false),
                k.python_trove(user, &args, true)
            );
            let ours = ok(&ours, &format!("our trove {args:?} as {}", user.name));
            let raw = ok(&raw, &format!("python trove {args:?} as {}", user.name));
            assert_eq!(
                cells(&ours),
                cells(&raw),
                "`trove {}` as {}: our cells differ from python-troveclient's\nours:\n{ours}\ntheirs:\n{raw}",
                args.join(" "),
                user.name
            );
            let py2 = ok(
                &py2,
                &format!("python trove {args:?} as {} (shim)", user.name),
            );
            assert_eq!(
                ours,
                py2,
                "`trove {}` as {}: our table differs from python-troveclient's",
                args.join(" "),
                user.name
            );
            assert!(ours.contains(module) || args[0] == "list", "{ours}");
        }
    }
}

/// python-troveclient's `quota-update`, `quota-show` and `limit-list` print the same tables as ours
/// (compared as in [`python_trove_shell_prints_our_tables`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_trove_shell_prints_our_quota_tables() {
    let mut k = KeystoneEnv::start().await;
    // Alice's instance stays a row: quotas are the api's business.
    k.env.stop_taskmanager().await;
    let (admin, alice) = (k.ks.admin(), k.ks.alice());
    let project = k.ks.login(&alice).await.project_id;
    ok(
        &k.trove(&alice, &["create", "quota1", "15", "--size", "2"], None)
            .await,
        "create",
    );
    for (user, args) in [
        (
            &admin,
            vec!["quota-update", project.as_str(), "instances", "7"],
        ),
        (
            &admin,
            vec!["quota-update", project.as_str(), "volumes", "-1"],
        ),
        (&admin, vec!["quota-show", project.as_str()]),
        (&alice, vec!["quota-show", project.as_str()]),
        (&alice, vec!["limit-list"]),
    ] {
        let (ours, raw, py2) = tokio::join!(
            k.trove(user, &args, None),
            k.python_trove(user, &args, false),
            k.python_trove(user, &args, true)
        );
        let what = format!("`trove {}` as {}", args.join(" "), user.name);
        let ours = ok(&ours, &format!("our {what}"));
        let raw = ok(&raw, &format!("python {what}"));
        assert_eq!(
            cells(&ours),
            cells(&raw),
            "{what}: our cells differ from python-troveclient's\nours:\n{ours}\ntheirs:\n{raw}"
        );
        let py2 = ok(&py2, &format!("python {what} (shim)"));
        assert_eq!(
            ours, py2,
            "{what}: our table differs from python-troveclient's"
        );
    }
    let shown = k.trove(&alice, &["quota-show", &project], None).await;
    let shown = ok(&shown, "quota-show");
    assert!(
        shown.contains("| instances |      1 |        0 |     7 |"),
        "{shown}"
    );
    assert!(
        shown.contains("| volumes   |      2 |        0 |    -1 |"),
        "{shown}"
    );
}

/// Per-request latency that token validation adds, with a warm and a cold cache. Reported, not
/// asserted (beyond sanity): the machine is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_validation_latency_figures() {
    let k = KeystoneEnv::start().await;
    let ks = k.ks;
    let auth = trove_api::auth::keystone::KeystoneAuth::new(&ks.authtoken_section()).unwrap();
    let alice = ks.login(&ks.alice()).await;
    auth.validate(&alice.token).await.unwrap(); // service login
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut cold = Vec::new();
    for _ in 0..20 {
        auth.clear_cache();
        let t = Instant::now();
        let id = auth.validate(&alice.token).await.unwrap();
        cold.push(t.elapsed());
        assert_eq!(id.project_id, alice.project_id);
    }
    let mut warm = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        auth.validate(&alice.token).await.unwrap();
        warm.push(t.elapsed());
    }
    let (cold_m, warm_m) = (median(cold), median(warm));
    assert!(warm_m < cold_m, "a cache hit is cheaper than Keystone");

    // Through the API: the same request with a warm token vs. fresh tokens (each validated once).
    let url = format!("{}/flavors", k.env.base(&alice.project_id));
    for _ in 0..3 {
        assert_eq!(call("GET", &url, &alice.token, None).await.0, 200);
    }
    let mut http_warm = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(call("GET", &url, &alice.token, None).await.0, 200);
        http_warm.push(t.elapsed());
    }
    let mut fresh = Vec::new();
    for _ in 0..20 {
        fresh.push(ks.login(&ks.alice()).await.token);
    }
    let mut http_cold = Vec::new();
    for t in &fresh {
        let s = Instant::now();
        assert_eq!(call("GET", &url, t, None).await.0, 200);
        http_cold.push(s.elapsed());
    }
    eprintln!(
        "figures: token validation in-process: cold (Keystone round trip) median {:?}, warm (cache hit) \
         median {:?}; GET /flavors through the API: warm token median {:?}, fresh token median {:?}",
        cold_m,
        warm_m,
        median(http_warm),
        median(http_cold)
    );
}
