//! `auth_strategy = keystone`: validate `X-Auth-Token` against Keystone v3, as keystonemiddleware does.
//!
//! - The api logs in once as the `[keystone_authtoken]` service user (`POST /v3/auth/tokens`, password,
//!   project-scoped) and keeps that token until shortly before it expires, or until Keystone rejects it.
//! - A caller's token is checked with `GET /v3/auth/tokens?nocatalog`, `X-Auth-Token` = the service
//!   token, `X-Subject-Token` = the caller's. 200 gives `token.project.id`, `token.user.id`,
//!   `token.roles[].name` and `token.expires_at`; 404 means unknown, expired or revoked.
//! - Each answer is cached under the SHA-256 of the token (never the token itself) until the token
//!   expires or `token_cache_time` passes, whichever is first; rejections are cached too, so a client
//!   retrying a bad token does not hammer Keystone. A revoked token therefore stays accepted for at most
//!   `token_cache_time` seconds: the same trade-off keystonemiddleware makes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use trove_common::config::KeystoneAuthtokenSection;

use super::{AuthError, Identity, INVALID_TOKEN};

/// Renew the service token this long before Keystone says it expires.
const SERVICE_TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// A token validator bound to one Keystone and one service user.
pub struct KeystoneAuth {
    http: reqwest::Client,
    /// `<identity root>/v3/auth/tokens`.
    tokens_url: String,
    username: String,
    password: SecretString,
    project_name: String,
    user_domain_name: String,
    project_domain_name: String,
    cache_time: Duration,
    cache_size: usize,
    /// Held across the login so concurrent requests wait for one login instead of each doing one.
    service: tokio::sync::Mutex<Option<ServiceToken>>,
    /// Never held across an `.await`.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

struct ServiceToken {
    token: String,
    renew_at: Instant,
}

#[derive(Clone)]
struct Cached {
    answer: Result<Identity, String>,
    until: Instant,
}

/// Why the validator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl KeystoneAuth {
    /// A validator for `section` (already checked by [`KeystoneAuthtokenSection::validate`]). Nothing is
    /// sent until the first request.
    pub fn new(section: &KeystoneAuthtokenSection) -> Result<Self, SetupError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs_f64(section.http_connect_timeout))
            .timeout(Duration::from_secs_f64(section.http_request_timeout))
            .user_agent(concat!("trove-api/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            tokens_url: format!("{}/auth/tokens", identity_v3(&section.auth_url)),
            username: section.username.clone(),
            password: section.password.clone(),
            project_name: section.project_name.clone(),
            user_domain_name: section.user_domain_name.clone(),
            project_domain_name: section.project_domain_name.clone(),
            cache_time: Duration::from_secs(section.token_cache_time),
            cache_size: section.token_cache_size,
            service: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The identity behind `token`, from the cache or from Keystone.
    pub async fn validate(&self, token: &str) -> Result<Identity, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cached(&key) {
            return hit.map_err(AuthError::InvalidToken);
        }
        let (answer, expires) = self.ask_keystone(token).await?;
        let mut until = Instant::now() + self.cache_time;
        if let Some(left) = expires {
            until = until.min(Instant::now() + left);
        }
        self.remember(key, answer.clone(), until);
        answer.map_err(AuthError::InvalidToken)
    }

    /// Forgets every cached validation (tests measure cold validations with it).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Identity, String>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.answer.clone())
    }

    fn remember(&self, key: [u8; 32], answer: Result<Identity, String>, until: Instant) {
        if self.cache_time.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.cache_size {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            // Still full of live entries: start over rather than track recency; a miss only costs one
            // more validation.
            if cache.len() >= self.cache_size {
                cache.clear();
            }
        }
        cache.insert(key, Cached { answer, until });
    }

    /// One validation round trip. `Ok((Err(reason), _))` is a token Keystone rejected; the outer `Err`
    /// means Keystone could not answer.
    async fn ask_keystone(
        &self,
        token: &str,
    ) -> Result<(Result<Identity, String>, Option<Duration>), AuthError> {
        let mut service = self.service_token(None).await?;
        for attempt in 0..2 {
            let response = self
                .http
                .get(format!("{}?nocatalog", self.tokens_url))
                .header("X-Auth-Token", &service)
                .header("X-Subject-Token", token)
                .send()
                .await
                .map_err(|e| unavailable("validating a token", &e))?;
            let status = response.status().as_u16();
            match status {
                200 => {
                    let body: TokenBody = response
                        .json()
                        .await
                        .map_err(|e| unavailable("reading a token validation", &e))?;
                    let expires = body.token.expires_in();
                    return Ok((body.token.into_identity(), expires));
                }
                404 => return Ok((Err(INVALID_TOKEN.into()), None)),
                // Our own token expired or was revoked: log in again once.
                401 if attempt == 0 => {
                    service = self.service_token(Some(&service)).await?;
                }
                _ => {
                    let text = response.text().await.unwrap_or_default();
                    tracing::error!(
                        http.status = status,
                        keystone.user = %self.username,
                        "Keystone refused to validate a token for the service user: {}",
                        snippet(&text)
                    );
                    return Err(AuthError::Unavailable(format!(
                        "Keystone answered {status} to a token validation"
                    )));
                }
            }
        }
        Err(AuthError::Unavailable(
            "Keystone keeps rejecting the service token".into(),
        ))
    }

    /// The service token, logging in when there is none, it is about to expire, or it equals `stale`
    /// (the one Keystone just rejected).
    async fn service_token(&self, stale: Option<&str>) -> Result<String, AuthError> {
        let mut slot = self.service.lock().await;
        if let Some(current) = slot.as_ref() {
            let rejected = stale.is_some_and(|s| s == current.token);
            if !rejected && current.renew_at > Instant::now() {
                return Ok(current.token.clone());
            }
        }
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.username,
                "domain": {"name": self.user_domain_name},
                "password": self.password.expose_secret(),
            }}},
            "scope": {"project": {
                "name": self.project_name,
                "domain": {"name": self.project_domain_name},
            }},
        }});
        let response = self
            .http
            .post(format!("{}?nocatalog", self.tokens_url))
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable("logging in as the service user", &e))?;
        let status = response.status().as_u16();
        if status != 201 {
            let text = response.text().await.unwrap_or_default();
            tracing::error!(
                http.status = status,
                keystone.user = %self.username,
                "the [keystone_authtoken] service user cannot log in: {}",
                snippet(&text)
            );
            return Err(AuthError::Unavailable(format!(
                "the service user cannot log in to Keystone (HTTP {status})"
            )));
        }
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                AuthError::Unavailable("Keystone sent no X-Subject-Token on login".into())
            })?;
        let body: TokenBody = response
            .json()
            .await
            .map_err(|e| unavailable("reading the service login", &e))?;
        let left = body.token.expires_in().unwrap_or(SERVICE_TOKEN_MARGIN * 2);
        // Short-lived tokens: renew at half their life instead of never using them.
        let renew_in = left
            .checked_sub(SERVICE_TOKEN_MARGIN)
            .filter(|d| *d > left / 2)
            .unwrap_or(left / 2);
        tracing::info!(keystone.user = %self.username, "logged in to Keystone as the service user");
        *slot = Some(ServiceToken {
            token: token.clone(),
            renew_at: Instant::now() + renew_in,
        });
        Ok(token)
    }
}

/// `http://h:5000`, `http://h:5000/`, `http://h:5000/v3/` → `http://h:5000/v3`.
pub fn identity_v3(auth_url: &str) -> String {
    let root = auth_url.trim().trim_end_matches('/');
    if root.ends_with("/v3") {
        root.to_owned()
    } else {
        format!("{root}/v3")
    }
}

fn unavailable(doing: &str, e: &reqwest::Error) -> AuthError {
    tracing::error!(error = %e, "Keystone unreachable while {doing}");
    AuthError::Unavailable(format!("Keystone is unreachable ({doing})"))
}

/// The start of a body for a log line (Keystone's error bodies are short JSON).
fn snippet(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(300)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    &text[..end]
}

#[derive(Deserialize)]
struct TokenBody {
    token: Token,
}

#[derive(Deserialize)]
struct Token {
    expires_at: Option<String>,
    user: Option<Named>,
    project: Option<Named>,
    #[serde(default)]
    roles: Vec<Role>,
}

#[derive(Deserialize)]
struct Named {
    id: String,
}

#[derive(Deserialize)]
struct Role {
    name: String,
}

impl Token {
    /// Time left before `expires_at` (`None` when it is missing or unreadable).
    fn expires_in(&self) -> Option<Duration> {
        let at = chrono::DateTime::parse_from_rfc3339(self.expires_at.as_deref()?).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .ok()
    }

    fn into_identity(self) -> Result<Identity, String> {
        let project = self
            .project
            .ok_or("The token is not scoped to a project.")?;
        let user = self.user.ok_or("The token names no user.")?;
        Ok(Identity {
            user_id: user.id,
            project_id: project.id,
            roles: self.roles.into_iter().map(|r| r.name).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_url_forms() {
        for url in [
            "http://k:5000",
            "http://k:5000/",
            "http://k:5000/v3",
            " http://k:5000/v3/ ",
        ] {
            assert_eq!(identity_v3(url), "http://k:5000/v3", "{url}");
        }
    }

    #[test]
    fn token_body_to_identity() {
        let body: TokenBody = serde_json::from_str(
            r#"{"token": {"expires_at": "2999-01-01T00:00:00.000000Z",
                "user": {"id": "u1", "name": "alice"},
                "project": {"id": "p1", "name": "trove-alpha"},
                "roles": [{"id": "r", "name": "member"}, {"id": "s", "name": "reader"}]}}"#,
        )
        .unwrap();
        assert!(body.token.expires_in().unwrap() > Duration::from_secs(3600));
        let id = body.token.into_identity().unwrap();
        assert_eq!(
            id,
            Identity {
                user_id: "u1".into(),
                project_id: "p1".into(),
                roles: vec!["member".into(), "reader".into()],
            }
        );
        let unscoped: TokenBody =
            serde_json::from_str(r#"{"token": {"user": {"id": "u1"}, "roles": []}}"#).unwrap();
        assert!(unscoped.token.into_identity().is_err());
    }
}
