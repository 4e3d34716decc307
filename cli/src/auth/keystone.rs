//! Keystone v3 password login for the CLI, and the token cache that lets later invocations skip it.
//!
//! [`Login::token`] answers from `<cache dir>/token-<hash>.json` while the cached token has more than
//! a minute left, and otherwise logs in with `POST /v3/auth/tokens` (password, project-scoped) and
//! picks the service's endpoint from the token's catalog. The hash covers every login input (auth
//! URL, user, password, project, domains, region, interface, service type), so a changed setting never
//! reuses another login's token. The file holds a token, so it is written 0600 in a 0700 directory.
//!
//! The cache directory is `TROVE_CLI_CACHE_DIR`, else `$XDG_CACHE_HOME/trove-rs`, else
//! `$HOME/.cache/trove-rs`; `TROVE_CLI_TOKEN_CACHE=0` turns the cache off.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{AuthError, Env};

/// A cached token is used only while it has more than this left.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// What a Keystone password login needs.
#[derive(Clone)]
pub struct Credentials {
    /// `OS_AUTH_URL`, e.g. `http://127.0.0.1:5000/v3` (a missing `/v3` is added).
    pub auth_url: String,
    /// `OS_USERNAME`.
    pub username: String,
    /// `OS_PASSWORD`.
    pub password: String,
    /// `OS_USER_DOMAIN_NAME` (default `Default`).
    pub user_domain_name: String,
    /// `OS_PROJECT_NAME`; `project_id` wins when both are set.
    pub project_name: Option<String>,
    /// `OS_PROJECT_ID`.
    pub project_id: Option<String>,
    /// `OS_PROJECT_DOMAIN_NAME` (default `Default`).
    pub project_domain_name: String,
    /// `OS_REGION_NAME`: only endpoints of this region are used, when set.
    pub region: Option<String>,
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// The catalog type of the Trove API (`database`).
    pub service_type: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("auth_url", &self.auth_url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("project_name", &self.project_name)
            .field("project_id", &self.project_id)
            .field("region", &self.region)
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

/// A token and what came with it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Grant {
    /// Sent as `X-Auth-Token`.
    pub token: String,
    /// RFC 3339, as Keystone wrote it.
    pub expires_at: String,
    /// The project the token is scoped to: the API's tenant.
    pub project_id: String,
    /// Role names on that project; `admin` shows the admin-only columns.
    pub roles: Vec<String>,
    /// The service's endpoint from the catalog, if it has one.
    pub endpoint: Option<String>,
}

impl Grant {
    fn fresh_enough(&self) -> bool {
        chrono::DateTime::parse_from_rfc3339(&self.expires_at)
            .ok()
            .and_then(|at| {
                (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .ok()
            })
            .is_some_and(|left| left > EXPIRY_MARGIN)
    }
}

/// How to get a token, and where it is cached.
#[derive(Clone, Debug)]
pub struct Login {
    credentials: Credentials,
    cache_file: Option<PathBuf>,
    timeout: Duration,
}

impl Login {
    /// A login for `credentials`, cached under `cache_dir` when there is one.
    pub fn new(credentials: Credentials, cache_dir: Option<PathBuf>, timeout: Duration) -> Self {
        let cache_file =
            cache_dir.map(|d| d.join(format!("token-{}.json", cache_key(&credentials))));
        Self {
            credentials,
            cache_file,
            timeout,
        }
    }

    /// The login settings.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The cache file, if caching is on.
    pub fn cache_file(&self) -> Option<&Path> {
        self.cache_file.as_deref()
    }

    /// A usable token: the cached one unless `fresh`, else a new login (which is then cached).
    pub fn token(&self, fresh: bool) -> Result<Grant, AuthError> {
        if !fresh {
            if let Some(grant) = self.read_cache() {
                return Ok(grant);
            }
        }
        let grant = self.login()?;
        self.write_cache(&grant);
        Ok(grant)
    }

    fn read_cache(&self) -> Option<Grant> {
        let text = std::fs::read_to_string(self.cache_file.as_ref()?).ok()?;
        serde_json::from_str::<Grant>(&text)
            .ok()
            .filter(Grant::fresh_enough)
    }

    /// Best effort: a cache that cannot be written only costs the next run a login.
    fn write_cache(&self, grant: &Grant) {
        let Some(file) = &self.cache_file else {
            return;
        };
        let Some(dir) = file.parent() else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)?;
            let tmp = dir.join(format!(".token-{}.tmp", std::process::id()));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(serde_json::to_string(grant)?.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        };
        let _ = write();
    }

    fn login(&self) -> Result<Grant, AuthError> {
        let c = &self.credentials;
        let url = format!("{}/auth/tokens", identity_v3(&c.auth_url));
        let project = match &c.project_id {
            Some(id) => json!({"id": id}),
            None => json!({"name": c.project_name, "domain": {"name": c.project_domain_name}}),
        };
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": c.username,
                "domain": {"name": c.user_domain_name},
                "password": c.password,
            }}},
            "scope": {"project": project},
        }});
        let http = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .build()
            .map_err(|e| AuthError::Keystone(format!("Cannot build the HTTP client: {e}")))?;
        let response = http.post(&url).json(&body).send().map_err(|e| {
            AuthError::Keystone(format!(
                "Unable to establish connection to {url}: {}",
                causes(&e)
            ))
        })?;
        let status = response.status().as_u16();
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().unwrap_or_default();
        if status != 201 {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "Keystone login failed".into());
            return Err(AuthError::Keystone(format!("{message} (HTTP {status})")));
        }
        let token = token.ok_or_else(|| {
            AuthError::Keystone("Keystone's login answer has no X-Subject-Token".into())
        })?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| AuthError::Keystone(format!("Invalid login answer from {url}: {e}")))?;
        grant_from(token, &body["token"], c)
            .ok_or_else(|| AuthError::Keystone(format!("Invalid login answer from {url}")))
    }
}

/// The grant in a login answer's `token` object, with the endpoint `c` asks for.
fn grant_from(token: String, t: &Value, c: &Credentials) -> Option<Grant> {
    let endpoint = t["catalog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|svc| svc["type"].as_str() == Some(c.service_type.as_str()))
        .flat_map(|svc| svc["endpoints"].as_array().into_iter().flatten())
        .filter(|ep| ep["interface"].as_str() == Some(c.interface.as_str()))
        .find(|ep| {
            c.region.as_deref().is_none_or(|r| {
                ep["region_id"].as_str() == Some(r) || ep["region"].as_str() == Some(r)
            })
        })
        .and_then(|ep| ep["url"].as_str())
        .map(str::to_owned);
    Some(Grant {
        token,
        expires_at: t["expires_at"].as_str()?.to_owned(),
        project_id: t["project"]["id"].as_str()?.to_owned(),
        roles: t["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect(),
        endpoint,
    })
}

/// `http://h:5000`, `http://h:5000/v3/` → `http://h:5000/v3`.
pub fn identity_v3(auth_url: &str) -> String {
    let root = auth_url.trim().trim_end_matches('/');
    if root.ends_with("/v3") {
        root.to_owned()
    } else {
        format!("{root}/v3")
    }
}

/// `OS_INTERFACE` / `OS_ENDPOINT_TYPE` as Keystone v3 spells it: `publicURL` → `public`; unset →
/// `public`.
pub fn interface(raw: Option<&str>) -> String {
    let raw = raw
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("public");
    raw.strip_suffix("URL").unwrap_or(raw).to_ascii_lowercase()
}

/// Where tokens are cached, or `None` when caching is off or there is no home directory.
pub fn cache_dir(env: &dyn Env) -> Option<PathBuf> {
    if env.var("TROVE_CLI_TOKEN_CACHE").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    }) {
        return None;
    }
    if let Some(dir) = env.var("TROVE_CLI_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = env.var("XDG_CACHE_HOME") {
        return Some(Path::new(&xdg).join("trove-rs"));
    }
    env.var("HOME")
        .map(|home| Path::new(&home).join(".cache").join("trove-rs"))
}

/// A hex digest of every login input (the password included, so a new password means a new login).
fn cache_key(c: &Credentials) -> String {
    let mut h = Sha256::new();
    for part in [
        identity_v3(&c.auth_url).as_str(),
        &c.username,
        &c.password,
        &c.user_domain_name,
        c.project_name.as_deref().unwrap_or(""),
        c.project_id.as_deref().unwrap_or(""),
        &c.project_domain_name,
        c.region.as_deref().unwrap_or(""),
        &c.interface,
        &c.service_type,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// reqwest's error causes, which say what actually happened.
fn causes(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn creds(region: Option<&str>) -> Credentials {
        Credentials {
            auth_url: "http://k:5000".into(),
            username: "alice".into(),
            password: "pw".into(),
            user_domain_name: "Default".into(),
            project_name: Some("p".into()),
            project_id: None,
            project_domain_name: "Default".into(),
            region: region.map(str::to_owned),
            interface: "public".into(),
            service_type: "database".into(),
        }
    }

    #[test]
    fn catalog_endpoint_by_interface_and_region() {
        let t = json!({"expires_at": "2999-01-01T00:00:00.000000Z", "project": {"id": "p1"},
            "roles": [{"name": "member"}, {"name": "admin"}],
            "catalog": [
                {"type": "identity", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://k"}]},
                {"type": "database", "endpoints": [
                    {"interface": "admin", "region_id": "R1", "url": "http://admin/v1.0/p1"},
                    {"interface": "public", "region_id": "R1", "url": "http://r1/v1.0/p1"},
                    {"interface": "public", "region_id": "R2", "url": "http://r2/v1.0/p1"}]}]});
        let g = grant_from("tok".into(), &t, &creds(Some("R2"))).unwrap();
        assert_eq!(g.endpoint.as_deref(), Some("http://r2/v1.0/p1"));
        assert_eq!(g.roles, ["member", "admin"]);
        assert!(g.fresh_enough());
        let g = grant_from("tok".into(), &t, &creds(None)).unwrap();
        assert_eq!(g.endpoint.as_deref(), Some("http://r1/v1.0/p1"));
        assert_eq!(
            grant_from("tok".into(), &t, &creds(Some("R9")))
                .unwrap()
                .endpoint,
            None
        );
    }

    #[test]
    fn cache_round_trip_is_private_and_honours_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let login = Login::new(
            creds(None),
            Some(dir.path().join("c")),
            Duration::from_secs(1),
        );
        let grant = Grant {
            token: "tok".into(),
            expires_at: "2999-01-01T00:00:00Z".into(),
            project_id: "p1".into(),
            roles: vec!["member".into()],
            endpoint: Some("http://x/v1.0/p1".into()),
        };
        login.write_cache(&grant);
        assert_eq!(login.read_cache(), Some(grant.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(login.cache_file().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        login.write_cache(&Grant {
            expires_at: "2000-01-01T00:00:00Z".into(),
            ..grant
        });
        assert_eq!(login.read_cache(), None, "an expired token is not reused");
        let other = Login::new(
            Credentials {
                password: "new".into(),
                ..creds(None)
            },
            Some(dir.path().join("c")),
            Duration::from_secs(1),
        );
        assert_ne!(other.cache_file(), login.cache_file());
    }

    #[test]
    fn settings_spellings() {
        assert_eq!(interface(None), "public");
        assert_eq!(interface(Some("publicURL")), "public");
        assert_eq!(interface(Some("internal")), "internal");
        assert_eq!(identity_v3("http://k:5000/v3/"), "http://k:5000/v3");
        let env: HashMap<&str, &str> = [("HOME", "/h")].into_iter().collect();
        assert_eq!(cache_dir(&env), Some(PathBuf::from("/h/.cache/trove-rs")));
        let off: HashMap<&str, &str> = [("HOME", "/h"), ("TROVE_CLI_TOKEN_CACHE", "0")]
            .into_iter()
            .collect();
        assert_eq!(cache_dir(&off), None);
    }
}
