//! Who is calling: the authentication strategies behind the [`crate::extract::Context`] extractor.
//!
//! `[DEFAULT] auth_strategy` picks one [`Authenticator`] at start-up:
//! - `keystone` ([`keystone::KeystoneAuth`]): `X-Auth-Token` is a Keystone token, validated with
//!   `GET /v3/auth/tokens` under the `[keystone_authtoken]` service credentials and cached;
//! - `noauth` ([`noauth`]): development only, and only with `allow_noauth = true`. The token names the
//!   user and the project; a token starting with `admin` carries the admin role.
//!
//! Both answer the same question, "which user, project and roles does this token stand for"; the
//! extractor then applies Trove's rules (admin roles, URL tenant = token project) the same way for both.

pub mod keystone;
pub mod noauth;

use trove_common::config::Settings;

use crate::error::ApiError;

/// The caller a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user's id (Keystone's `token.user.id`).
    pub user_id: String,
    /// The project the token is scoped to (`token.project.id`); the URL tenant must equal it.
    pub project_id: String,
    /// Role names on that project, implied roles included.
    pub roles: Vec<String>,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown, expired, revoked or unscoped token: 401.
    #[error("{0}")]
    InvalidToken(String),
    /// Keystone could not be asked (down, timing out, or refusing our service user): 503, so clients
    /// retry instead of dropping their credentials.
    #[error("The authentication service is unavailable: {0}")]
    Unavailable(String),
    /// The configured strategy cannot authenticate anyone (e.g. noauth without `allow_noauth`).
    #[error("{0}")]
    Refused(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidToken(m) | AuthError::Refused(m) => ApiError::Unauthorized(m),
            e @ AuthError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// The text of a 401 for a token Keystone does not know (keystonemiddleware's wording).
pub const INVALID_TOKEN: &str = "The request you have made requires authentication.";

/// The configured strategy. Built once per API process; cheap to share behind an `Arc`.
pub enum Authenticator {
    /// `auth_strategy = noauth` with `allow_noauth = true`.
    NoAuth,
    /// `auth_strategy = keystone`.
    Keystone(Box<keystone::KeystoneAuth>),
    /// A configuration that must not authenticate anyone; the reason names the option. `trove_api::run`
    /// refuses to start with it ([`Authenticator::check`]); requests, should one get through, are 401.
    Refused(String),
}

impl Authenticator {
    /// The strategy `settings` ask for. Never fails: a bad configuration becomes
    /// [`Authenticator::Refused`], which [`Authenticator::check`] reports at start-up.
    pub fn from_settings(settings: &Settings) -> Self {
        let d = &settings.default;
        match d.auth_strategy.as_str() {
            "noauth" if d.allow_noauth => Self::NoAuth,
            "noauth" => Self::Refused(
                "auth_strategy = noauth is refused unless [DEFAULT] allow_noauth = true.".into(),
            ),
            "keystone" => match settings.keystone_authtoken.validate() {
                Ok(()) => match keystone::KeystoneAuth::new(&settings.keystone_authtoken) {
                    Ok(k) => Self::Keystone(Box::new(k)),
                    Err(e) => Self::Refused(format!("[keystone_authtoken]: {e}")),
                },
                Err(e) => Self::Refused(e.to_string()),
            },
            other => Self::Refused(format!("Unknown auth_strategy '{other}'.")),
        }
    }

    /// Fails when this strategy cannot authenticate anyone, so the API stops at start-up with the
    /// option's name instead of answering 401 to everybody.
    pub fn check(&self) -> anyhow::Result<()> {
        match self {
            Self::Refused(reason) => anyhow::bail!("cannot authenticate requests: {reason}"),
            _ => Ok(()),
        }
    }

    /// The identity `token` stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        match self {
            Self::NoAuth => Ok(noauth::identity(token)),
            Self::Keystone(k) => k.validate(token).await,
            Self::Refused(reason) => Err(AuthError::Refused(reason.clone())),
        }
    }
}
