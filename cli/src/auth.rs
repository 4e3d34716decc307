//! Who the CLI talks to and as whom: the endpoint, the token and the caller's roles.
//!
//! Three ways in, chosen by `OS_AUTH_TYPE` (unset: `token_endpoint` when a token is given, else
//! `password` when `OS_AUTH_URL` is set):
//! - `password` (Keystone v3, python-troveclient's usual way): log in with `POST /v3/auth/tokens`
//!   from `OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME` (or `OS_PROJECT_ID`),
//!   `OS_USER_DOMAIN_NAME` and `OS_PROJECT_DOMAIN_NAME` (both default `Default`), then take the
//!   `database` endpoint from the token's catalog (interface `OS_INTERFACE` / `OS_ENDPOINT_TYPE`,
//!   default public; region `OS_REGION_NAME` when set) and the roles from the token. The token, its
//!   roles and the endpoint are cached in `~/.cache/trove-rs/token-<hash>.json` (mode 0600) until
//!   shortly before the token expires, so later invocations skip the login; see [`keystone`].
//! - `token_endpoint`: a ready-made token and an endpoint given directly;
//! - `noauth`: no token at all.
//!
//! Sources, first one set wins:
//! - token: `--os-auth-token`, `OS_TOKEN`, `OS_AUTH_TOKEN`;
//! - project (tenant): `--os-project-id`, `OS_PROJECT_ID`, `OS_TENANT_ID`;
//! - endpoint: `--bypass-url` / `TROVE_BYPASS_URL` (already the `/v1.0/<tenant>` base), else
//!   the catalog (password), else `--os-endpoint` / `OS_ENDPOINT` / `TROVE_URL` (the service root,
//!   e.g. `http://127.0.0.1:8779`; a trailing `/v1.0` or `/v1.0/<tenant>` is understood);
//! - roles: the token's (password), else `OS_ROLES`, comma separated; `admin` among them shows the
//!   admin-only columns;
//! - timeout: `TROVE_CLI_TIMEOUT`, seconds per HTTP request (default 60).

pub mod keystone;

use std::collections::HashMap;
use std::time::Duration;

/// Where configuration values come from: the process environment in the binary, a map in tests.
pub trait Env {
    /// The value of `name`, or `None` when it is unset or empty (troveclient's `utils.env`
    /// treats an empty variable as unset too).
    fn var(&self, name: &str) -> Option<String>;

    /// The first of `names` that is set.
    fn first(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| self.var(n))
    }
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
    }
}

/// The connection options given on the command line (each overrides its environment variable).
#[derive(Clone, Debug, Default)]
pub struct AuthArgs {
    /// `--os-auth-token`.
    pub token: Option<String>,
    /// `--os-project-id`.
    pub project_id: Option<String>,
    /// `--bypass-url`.
    pub bypass_url: Option<String>,
    /// `--os-endpoint`.
    pub endpoint: Option<String>,
    /// `--os-auth-url`.
    pub auth_url: Option<String>,
    /// `--os-username`.
    pub username: Option<String>,
    /// `--os-password`.
    pub password: Option<String>,
    /// `--os-project-name`.
    pub project_name: Option<String>,
    /// `--os-region-name`.
    pub region_name: Option<String>,
}

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    /// A ready-made token sent as `X-Auth-Token` to a known endpoint.
    TokenEndpoint,
    /// No token required; the caller's project and roles are sent as `X-Project-Id` and
    /// `X-Roles` for an API running without authentication.
    NoAuth,
    /// A Keystone v3 password login; the token, roles and endpoint come from Keystone.
    Password,
}

/// Everything the HTTP client needs to reach the API.
#[derive(Clone, Debug)]
pub struct Session {
    /// How requests are authenticated.
    pub auth_type: AuthType,
    /// The `/v1.0/<tenant>` base URL, without a trailing slash.
    pub base_url: String,
    /// Sent as `X-Auth-Token` when present.
    pub token: Option<String>,
    /// The tenant, when known.
    pub project_id: Option<String>,
    /// The caller's role names (`OS_ROLES`).
    pub roles: Vec<String>,
    /// The limit on each HTTP request.
    pub timeout: Duration,
    /// With [`AuthType::Password`]: how to log in again when the API rejects a cached token.
    pub keystone: Option<keystone::Login>,
}

impl Session {
    /// Whether the admin-only columns are shown: the roles include `admin`.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// Why no session could be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Neither a bypass URL nor an endpoint was given.
    #[error(
        "You must provide an endpoint via --bypass-url or env[TROVE_BYPASS_URL] (the API's \
         /v1.0/<tenant> base), or via --os-endpoint or env[OS_ENDPOINT] / env[TROVE_URL] \
         (the service root)."
    )]
    MissingEndpoint,
    /// The endpoint is a service root, so the tenant is needed to build the base URL.
    #[error("You must provide a project id via --os-project-id or env[OS_PROJECT_ID].")]
    MissingProject,
    /// `token_endpoint` without a token.
    #[error(
        "You must provide a token via --os-auth-token or env[OS_TOKEN] / env[OS_AUTH_TOKEN], \
         or set OS_AUTH_TYPE=noauth."
    )]
    MissingToken,
    /// An `OS_AUTH_TYPE` we cannot serve.
    #[error(
        "OS_AUTH_TYPE '{0}' is not supported; use 'password' (Keystone), 'token_endpoint' (with a \
         token and an endpoint) or 'noauth'."
    )]
    UnsupportedAuthType(String),
    /// A Keystone login lacks one of its settings.
    #[error("You must provide {0} for Keystone authentication.")]
    MissingCredential(&'static str),
    /// Keystone refused the login or could not be reached.
    #[error("{0}")]
    Keystone(String),
    /// The token's catalog has no matching `database` endpoint.
    #[error(
        "No '{service_type}' endpoint with interface '{interface}'{} in the service catalog.",
        region.as_deref().map(|r| format!(" in region '{r}'")).unwrap_or_default()
    )]
    NoEndpoint {
        /// The service type looked for.
        service_type: String,
        /// The interface looked for.
        interface: String,
        /// The region looked for, if any.
        region: Option<String>,
    },
    /// The endpoint is not an http(s) URL.
    #[error("Invalid endpoint URL '{0}': it must start with http:// or https://.")]
    BadUrl(String),
    /// `TROVE_CLI_TIMEOUT` is not a positive number.
    #[error("Invalid TROVE_CLI_TIMEOUT '{0}': expected a positive number of seconds.")]
    BadTimeout(String),
}

/// The default limit on each HTTP request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the session from the command-line options and the environment.
pub fn resolve(args: &AuthArgs, env: &dyn Env) -> Result<Session, AuthError> {
    let token = args
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| env.first(&["OS_TOKEN", "OS_AUTH_TOKEN"]));
    let project_id = args
        .project_id
        .clone()
        .filter(|p| !p.is_empty())
        .or_else(|| env.first(&["OS_PROJECT_ID", "OS_TENANT_ID"]));

    let auth_type = match env.var("OS_AUTH_TYPE").as_deref() {
        Some("token_endpoint") | Some("token") | Some("admin_token") => AuthType::TokenEndpoint,
        Some("noauth") | Some("none") => AuthType::NoAuth,
        Some("password") | Some("v3password") => AuthType::Password,
        Some(other) => return Err(AuthError::UnsupportedAuthType(other.to_owned())),
        None if token.is_some() => AuthType::TokenEndpoint,
        None if args.auth_url.is_some() || env.var("OS_AUTH_URL").is_some() => AuthType::Password,
        None => return Err(AuthError::MissingToken),
    };
    let timeout = timeout(env)?;
    if auth_type == AuthType::Password {
        return password_session(args, env, timeout);
    }
    if auth_type == AuthType::TokenEndpoint && token.is_none() {
        return Err(AuthError::MissingToken);
    }

    let bypass = args
        .bypass_url
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| env.var("TROVE_BYPASS_URL"));
    let base_url = match bypass {
        Some(url) => check_url(url.trim_end_matches('/'))?,
        None => {
            let root = args
                .endpoint
                .clone()
                .filter(|u| !u.is_empty())
                .or_else(|| env.first(&["OS_ENDPOINT", "TROVE_URL"]))
                .ok_or(AuthError::MissingEndpoint)?;
            base_from_root(&root, project_id.as_deref())?
        }
    };

    let roles = env
        .var("OS_ROLES")
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    Ok(Session {
        auth_type,
        base_url,
        token,
        project_id,
        roles,
        timeout,
        keystone: None,
    })
}

/// `TROVE_CLI_TIMEOUT`, or the default.
fn timeout(env: &dyn Env) -> Result<Duration, AuthError> {
    match env.var("TROVE_CLI_TIMEOUT") {
        None => Ok(DEFAULT_TIMEOUT),
        Some(raw) => raw
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or(AuthError::BadTimeout(raw)),
    }
}

/// A Keystone password session: a (cached) token, its roles, and the endpoint from its catalog
/// unless `--bypass-url` names one.
fn password_session(
    args: &AuthArgs,
    env: &dyn Env,
    timeout: Duration,
) -> Result<Session, AuthError> {
    let flag = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let required =
        |value: Option<String>, what: &'static str| value.ok_or(AuthError::MissingCredential(what));
    let project_id =
        flag(&args.project_id).or_else(|| env.first(&["OS_PROJECT_ID", "OS_TENANT_ID"]));
    let project_name =
        flag(&args.project_name).or_else(|| env.first(&["OS_PROJECT_NAME", "OS_TENANT_NAME"]));
    if project_id.is_none() && project_name.is_none() {
        return Err(AuthError::MissingCredential(
            "a project via --os-project-name or env[OS_PROJECT_NAME] (or env[OS_PROJECT_ID])",
        ));
    }
    let credentials = keystone::Credentials {
        auth_url: check_url(&required(
            flag(&args.auth_url).or_else(|| env.var("OS_AUTH_URL")),
            "an auth url via --os-auth-url or env[OS_AUTH_URL]",
        )?)?,
        username: required(
            flag(&args.username).or_else(|| env.var("OS_USERNAME")),
            "a username via --os-username or env[OS_USERNAME]",
        )?,
        password: required(
            flag(&args.password).or_else(|| env.var("OS_PASSWORD")),
            "a password via --os-password or env[OS_PASSWORD]",
        )?,
        user_domain_name: env
            .var("OS_USER_DOMAIN_NAME")
            .unwrap_or_else(|| "Default".into()),
        project_name,
        project_id,
        project_domain_name: env
            .var("OS_PROJECT_DOMAIN_NAME")
            .unwrap_or_else(|| "Default".into()),
        region: flag(&args.region_name).or_else(|| env.var("OS_REGION_NAME")),
        interface: keystone::interface(
            env.first(&["OS_INTERFACE", "OS_ENDPOINT_TYPE", "TROVE_ENDPOINT_TYPE"])
                .as_deref(),
        ),
        service_type: env
            .var("OS_DATABASE_SERVICE_TYPE")
            .unwrap_or_else(|| "database".into()),
    };
    let login = keystone::Login::new(credentials, keystone::cache_dir(env), timeout);
    let grant = login.token(false)?;
    let bypass = flag(&args.bypass_url).or_else(|| env.var("TROVE_BYPASS_URL"));
    let base_url = match bypass {
        Some(url) => check_url(url.trim_end_matches('/'))?,
        None => {
            let endpoint = grant
                .endpoint
                .clone()
                .ok_or_else(|| AuthError::NoEndpoint {
                    service_type: login.credentials().service_type.clone(),
                    interface: login.credentials().interface.clone(),
                    region: login.credentials().region.clone(),
                })?;
            base_from_root(&endpoint, Some(&grant.project_id))?
        }
    };
    Ok(Session {
        auth_type: AuthType::Password,
        base_url,
        token: Some(grant.token),
        project_id: Some(grant.project_id),
        roles: grant.roles,
        timeout,
        keystone: Some(login),
    })
}

/// The `/v1.0/<tenant>` base from a service root. A root that already ends with
/// `/v1.0/<something>` is used as it is; one ending with `/v1.0` gets the tenant appended.
pub fn base_from_root(root: &str, project_id: Option<&str>) -> Result<String, AuthError> {
    let root = check_url(root.trim_end_matches('/'))?;
    let path_start = root
        .find("://")
        .map(|i| i + 3)
        .and_then(|i| root[i..].find('/').map(|j| i + j))
        .unwrap_or(root.len());
    let segments: Vec<&str> = root[path_start..]
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segments.as_slice() {
        [.., "v1.0", _tenant] => Ok(root),
        [.., "v1.0"] => {
            let project = project_id.ok_or(AuthError::MissingProject)?;
            Ok(format!("{root}/{project}"))
        }
        _ => {
            let project = project_id.ok_or(AuthError::MissingProject)?;
            Ok(format!("{root}/v1.0/{project}"))
        }
    }
}

fn check_url(url: &str) -> Result<String, AuthError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_owned())
    } else {
        Err(AuthError::BadUrl(url.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn token_endpoint_from_service_root() {
        let e = env(&[
            ("OS_AUTH_TYPE", "token_endpoint"),
            ("OS_TOKEN", "tok"),
            ("OS_PROJECT_ID", "t1"),
            ("OS_ENDPOINT", "http://127.0.0.1:8779/"),
            ("OS_ROLES", "member, admin"),
        ]);
        let s = resolve(&AuthArgs::default(), &e).expect("session");
        assert_eq!(s.base_url, "http://127.0.0.1:8779/v1.0/t1");
        assert_eq!(s.token.as_deref(), Some("tok"));
        assert!(s.is_admin());
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn root_with_version_or_tenant_is_understood() {
        assert_eq!(
            base_from_root("http://h:8779/v1.0", Some("t")).as_deref(),
            Ok("http://h:8779/v1.0/t")
        );
        assert_eq!(
            base_from_root("http://h:8779/v1.0/other/", Some("t")).as_deref(),
            Ok("http://h:8779/v1.0/other")
        );
        assert_eq!(
            base_from_root("http://h:8779", None),
            Err(AuthError::MissingProject)
        );
    }

    #[test]
    fn flags_override_env_and_bypass_wins() {
        let e = env(&[
            ("OS_AUTH_TOKEN", "env-token"),
            ("TROVE_URL", "http://ignored:1"),
            ("TROVE_CLI_TIMEOUT", "2.5"),
        ]);
        let args = AuthArgs {
            token: Some("flag-token".into()),
            bypass_url: Some("http://h:8779/v1.0/t9/".into()),
            ..AuthArgs::default()
        };
        let s = resolve(&args, &e).expect("session");
        assert_eq!(s.token.as_deref(), Some("flag-token"));
        assert_eq!(s.base_url, "http://h:8779/v1.0/t9");
        assert!(!s.is_admin());
        assert_eq!(s.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn errors_are_explained() {
        let no_token = env(&[
            ("OS_AUTH_TYPE", "token_endpoint"),
            ("TROVE_BYPASS_URL", "http://h/v1.0/t"),
        ]);
        assert_eq!(
            resolve(&AuthArgs::default(), &no_token).err(),
            Some(AuthError::MissingToken)
        );
        let unknown = env(&[("OS_AUTH_TYPE", "v2password")]);
        assert!(matches!(
            resolve(&AuthArgs::default(), &unknown),
            Err(AuthError::UnsupportedAuthType(_))
        ));
        let password = env(&[
            ("OS_AUTH_URL", "http://127.0.0.1:1/v3"),
            ("OS_USERNAME", "u"),
        ]);
        assert!(matches!(
            resolve(&AuthArgs::default(), &password),
            Err(AuthError::MissingCredential(m)) if m.contains("OS_PROJECT_NAME")
        ));
        let noauth = env(&[("OS_AUTH_TYPE", "noauth"), ("OS_PROJECT_ID", "t")]);
        assert_eq!(
            resolve(&AuthArgs::default(), &noauth).err(),
            Some(AuthError::MissingEndpoint)
        );
        let bad_timeout = env(&[
            ("OS_AUTH_TYPE", "noauth"),
            ("TROVE_BYPASS_URL", "http://h/v1.0/t"),
            ("TROVE_CLI_TIMEOUT", "0"),
        ]);
        assert!(matches!(
            resolve(&AuthArgs::default(), &bad_timeout),
            Err(AuthError::BadTimeout(_))
        ));
    }

    #[test]
    fn noauth_needs_no_token() {
        let e = env(&[
            ("OS_AUTH_TYPE", "noauth"),
            ("OS_PROJECT_ID", "t"),
            ("TROVE_URL", "http://h:8779"),
        ]);
        let s = resolve(&AuthArgs::default(), &e).expect("session");
        assert_eq!(s.auth_type, AuthType::NoAuth);
        assert_eq!(s.token, None);
        assert_eq!(s.base_url, "http://h:8779/v1.0/t");
    }
}
