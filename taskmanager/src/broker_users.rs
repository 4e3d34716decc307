//! The guests' own RabbitMQ users (`[DEFAULT] guest_broker_credentials = per_instance`).
//!
//! Before a guest first starts, the taskmanager creates a RabbitMQ user for its instance,
//! `<prefix>guest-<instance_id>`, with a random password and the permissions of
//! [`trove_common::amqp::permissions::GuestPermissions`], and writes that user into the guest's
//! `guest.conf` (its `transport_url`) and nowhere else. Deleting the instance removes the user, which
//! also closes any connection it still has.
//!
//! Users are managed through RabbitMQ's HTTP management API (`[rabbitmq_management]`), not
//! `rabbitmqctl`: each `rabbitmqctl` call boots an Erlang VM (about a CPU-second), needs the node's
//! Erlang cookie and runs on the broker's host, none of which scales to thousands of builds or to
//! taskmanagers on several hosts; the API is three small HTTP requests per build from anywhere.
//!
//! Everything is idempotent: a user is created or updated with PUT, removed with DELETE (a user already
//! gone is fine). A guest relaunched (a crash, a reboot, a restarted taskmanager) keeps the password
//! its existing `guest.conf` holds, so the user is written again with the same password and nothing
//! that is connected notices; a guest without one (its first start, or a lost state directory) gets a
//! new password, written to the broker before the new `guest.conf`.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use trove_common::amqp::permissions::GuestPermissions;
use trove_common::amqp::{amqp_uri, Names};
use trove_common::config::{GuestBrokerCredentials, Settings};

/// Length of a guest's password: 32 characters of `[A-Za-z0-9]`, about 190 bits.
pub const PASSWORD_LEN: usize = 32;

/// Why a guest's broker user could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerUserError {
    #[error("transport_url cannot carry a guest's credentials: {0}")]
    TransportUrl(String),
    #[error("invalid rabbitmq_management.url: {0}")]
    ManagementUrl(String),
    #[error("RabbitMQ management API {method} {url}: {error}")]
    Unreachable {
        method: Method,
        url: String,
        error: reqwest::Error,
    },
    #[error("RabbitMQ management API {method} {url} answered {status}: {body}")]
    Refused {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
}

impl BrokerUserError {
    /// Worth another try: the API did not answer, or answered that it could not serve now (5xx, 429).
    /// A refusal (401 wrong admin credentials, 403 not an administrator, 400) is the configuration's.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::TransportUrl(_) | Self::ManagementUrl(_) => false,
        }
    }
}

/// A new random password for a guest's user.
pub fn new_password() -> SecretString {
    SecretString::from(trove_common::crypto::random_alphanumeric(PASSWORD_LEN))
}

/// Writes and removes the guests' users through the management API.
pub struct BrokerUsers {
    http: reqwest::Client,
    /// `<[rabbitmq_management] url>/api/`.
    api: Url,
    admin_user: String,
    admin_password: SecretString,
    /// The vhost of `transport_url`, where the guests' permissions are granted.
    vhost: String,
    names: Names,
    /// `transport_url`, whose user and password each guest's URL replaces.
    transport_url: Url,
}

impl std::fmt::Debug for BrokerUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords.
        f.debug_struct("BrokerUsers")
            .field("api", &self.api.as_str())
            .field("admin_user", &self.admin_user)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl BrokerUsers {
    /// The guests' users as the settings say, or None with `guest_broker_credentials = shared`.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, BrokerUserError> {
        if settings.default.guest_broker_credentials == GuestBrokerCredentials::Shared {
            return Ok(None);
        }
        let raw = &settings.default.transport_url;
        let shared: lapin::uri::AMQPUri = amqp_uri(raw)
            .parse()
            .map_err(|e: String| BrokerUserError::TransportUrl(e))?;
        let transport_url = Url::parse(raw)
            .ok()
            .filter(|u| u.has_host())
            .ok_or_else(|| BrokerUserError::TransportUrl("no host".into()))?;
        let m = &settings.rabbitmq_management;
        let (admin_user, admin_password) = if m.username.trim().is_empty() {
            (
                shared.authority.userinfo.username.clone(),
                SecretString::from(shared.authority.userinfo.password.clone()),
            )
        } else {
            (m.username.trim().to_owned(), m.password.clone())
        };
        let api = Url::parse(&format!("{}/api/", m.url.trim().trim_end_matches('/')))
            .ok()
            .filter(|u| u.scheme() == "http" && u.has_host())
            .ok_or_else(|| BrokerUserError::ManagementUrl(m.url.clone()))?;
        // `validate` has checked that it is positive and finite.
        let timeout = Duration::from_secs_f64(m.timeout);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| BrokerUserError::ManagementUrl(e.to_string()))?;
        Ok(Some(Self {
            http,
            api,
            admin_user,
            admin_password,
            vhost: shared.vhost,
            names: Names::new(settings),
            transport_url,
        }))
    }

    /// The user of `instance_id`'s guest.
    pub fn user(&self, instance_id: &str) -> String {
        self.names.guest_user(instance_id)
    }

    /// `transport_url` with the guest's user and `password` in it: what its `guest.conf` gets.
    pub fn guest_transport_url(&self, instance_id: &str, password: &SecretString) -> SecretString {
        let mut url = self.transport_url.clone();
        // Cannot fail: the URL has a host (checked in from_settings).
        let _ = url.set_username(&self.user(instance_id));
        let _ = url.set_password(Some(password.expose_secret()));
        SecretString::from(String::from(url))
    }

    /// The password in `transport_url` (a guest's current `guest.conf`) when it is this instance's
    /// user's: the one to keep.
    pub fn password_in(&self, instance_id: &str, transport_url: &str) -> Option<SecretString> {
        let uri: lapin::uri::AMQPUri = amqp_uri(transport_url).parse().ok()?;
        let info = uri.authority.userinfo;
        (info.username == self.user(instance_id) && info.password.len() >= PASSWORD_LEN)
            .then(|| SecretString::from(info.password))
    }

    /// Creates (or updates) the guest's user with `password` and its permissions. Idempotent.
    pub async fn ensure(
        &self,
        instance_id: &str,
        password: &SecretString,
    ) -> Result<(), BrokerUserError> {
        let p = GuestPermissions::new(&self.names, instance_id);
        self.send(
            Method::PUT,
            &["users", &p.user],
            Some(json!({"password": password.expose_secret(), "tags": ""})),
        )
        .await?;
        self.send(
            Method::PUT,
            &["permissions", &self.vhost, &p.user],
            Some(json!({"configure": p.configure, "write": p.write, "read": p.read})),
        )
        .await?;
        self.send(
            Method::PUT,
            &["topic-permissions", &self.vhost, &p.user],
            Some(
                json!({"exchange": p.topic_exchange, "write": p.topic_write, "read": p.topic_read}),
            ),
        )
        .await?;
        tracing::info!(instance.id = %instance_id, broker.user = %p.user, "guest's broker user written");
        Ok(())
    }

    /// Removes the guest's user (its permissions go with it, and the broker closes its connections).
    /// A user that does not exist is fine.
    pub async fn delete(&self, instance_id: &str) -> Result<(), BrokerUserError> {
        let user = self.user(instance_id);
        match self.send(Method::DELETE, &["users", &user], None).await {
            Ok(()) => {
                tracing::info!(instance.id = %instance_id, broker.user = %user, "guest's broker user removed");
                Ok(())
            }
            Err(BrokerUserError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `<api>/<segments, each percent-encoded>` (user names and vhosts may hold `/`).
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .expect("from_settings checked that the API URL is http:// with a host")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// One request to [`BrokerUsers::endpoint`]; any 2xx is success.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<(), BrokerUserError> {
        let url = self.endpoint(segments);
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .basic_auth(&self.admin_user, Some(self.admin_password.expose_secret()));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|error| BrokerUserError::Unreachable {
                method: method.clone(),
                url: url.to_string(),
                error: error.without_url(),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(300);
        Err(BrokerUserError::Refused {
            method,
            url: url.to_string(),
            status,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(transport_url: &str, prefix: &str) -> BrokerUsers {
        let mut s = Settings::default();
        s.default.transport_url = transport_url.into();
        s.amqp.prefix = prefix.into();
        BrokerUsers::from_settings(&s).unwrap().unwrap()
    }

    const ID: &str = "0b3c1f4e-8a9d-4c3e-9f0a-1b2c3d4e5f60";

    #[test]
    fn shared_credentials_need_no_users() {
        let mut s = Settings::default();
        s.default.guest_broker_credentials = GuestBrokerCredentials::Shared;
        assert!(BrokerUsers::from_settings(&s).unwrap().is_none());
    }

    #[test]
    fn the_admin_is_the_transport_url_user_unless_configured() {
        let u = users("rabbit://adm%40in:s%3Acret@10.0.0.5:5672/trove", "");
        assert_eq!(u.admin_user, "adm@in");
        assert_eq!(u.admin_password.expose_secret(), "s:cret");
        assert_eq!(u.vhost, "trove");
        assert_eq!(u.api.as_str(), "http://127.0.0.1:15672/api/");
        let mut s = Settings::default();
        s.rabbitmq_management.url = "http://mq:15672/".into();
        s.rabbitmq_management.username = "ops".into();
        s.rabbitmq_management.password = "pw".into();
        let u = BrokerUsers::from_settings(&s).unwrap().unwrap();
        assert_eq!(
            (u.admin_user.as_str(), u.admin_password.expose_secret()),
            ("ops", "pw")
        );
        assert_eq!(u.api.as_str(), "http://mq:15672/api/");
        assert_eq!(u.vhost, "/");
    }

    #[test]
    fn a_guest_url_carries_its_own_user_and_a_kept_password_is_found_again() {
        let u = users("rabbit://guest:guest@127.0.0.1:5672/", "t1.");
        let pw = new_password();
        assert_eq!(pw.expose_secret().len(), PASSWORD_LEN);
        assert!(pw
            .expose_secret()
            .chars()
            .all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(pw.expose_secret(), new_password().expose_secret());
        let url = u.guest_transport_url(ID, &pw);
        assert_eq!(
            url.expose_secret(),
            &format!(
                "rabbit://t1.guest-{ID}:{}@127.0.0.1:5672/",
                pw.expose_secret()
            )
        );
        // What the guest connects with: the same user and password, the default vhost.
        let uri: lapin::uri::AMQPUri = amqp_uri(url.expose_secret()).parse().unwrap();
        assert_eq!(uri.authority.userinfo.username, format!("t1.guest-{ID}"));
        assert_eq!(uri.authority.userinfo.password, pw.expose_secret());
        assert_eq!(uri.vhost, "/");
        assert_eq!(
            u.password_in(ID, url.expose_secret())
                .unwrap()
                .expose_secret(),
            pw.expose_secret()
        );
        // Another instance's URL, the shared one, or one with no password give nothing to keep.
        assert!(u.password_in("other", url.expose_secret()).is_none());
        assert!(u
            .password_in(ID, "rabbit://guest:guest@127.0.0.1:5672/")
            .is_none());
        assert!(u
            .password_in(ID, &format!("rabbit://t1.guest-{ID}@127.0.0.1:5672/"))
            .is_none());
    }

    #[test]
    fn user_names_and_vhosts_are_escaped_in_api_paths() {
        let u = users("rabbit://guest:guest@127.0.0.1:5672/", "a/b?");
        let url = u.endpoint(&["permissions", "/", &u.user("i1")]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:15672/api/permissions/%2F/a%2Fb%3Fguest-i1"
        );
    }

    #[test]
    fn refusals_are_the_configuration_and_outages_are_transient() {
        let refused = |status| BrokerUserError::Refused {
            method: Method::PUT,
            url: "u".into(),
            status,
            body: String::new(),
        };
        assert!(!refused(StatusCode::UNAUTHORIZED).is_transient());
        assert!(!refused(StatusCode::BAD_REQUEST).is_transient());
        assert!(refused(StatusCode::SERVICE_UNAVAILABLE).is_transient());
        assert!(!BrokerUserError::TransportUrl("x".into()).is_transient());
    }
}
