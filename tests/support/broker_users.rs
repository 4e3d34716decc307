//! The guests' RabbitMQ users (`guest_broker_credentials = per_instance`) as the broker's HTTP
//! management API shows them, and their removal when a test's stack goes away.
//!
//! Every guest a test starts gets a user `<prefix>guest-<instance id>`; a test that ends without
//! deleting its instances would leave them on the shared broker, so [`crate::TestEnv`] and
//! [`crate::ProcessStack`] remove the users with their prefix when dropped.

use std::time::Duration;

use trove_common::amqp::amqp_uri;

/// Where the test RabbitMQ's management API is (`TROVE_TEST_MANAGEMENT_URL`, default
/// `http://127.0.0.1:15672`).
pub fn management_url() -> String {
    std::env::var("TROVE_TEST_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// A management API and the administrator it is called as.
#[derive(Clone, Debug)]
pub struct Management {
    url: String,
    user: String,
    password: String,
}

impl Management {
    /// The API at `url`, called as the user of `transport_url` (as the taskmanager does by default).
    pub fn new(url: &str, transport_url: &str) -> Self {
        let uri: lapin::uri::AMQPUri = amqp_uri(transport_url)
            .parse()
            .expect("transport_url parses");
        Self {
            url: url.trim_end_matches('/').to_owned(),
            user: uri.authority.userinfo.username,
            password: uri.authority.userinfo.password,
        }
    }

    /// The API the settings' taskmanager uses.
    pub fn for_settings(settings: &trove_common::config::Settings) -> Self {
        Self::new(
            &settings.rabbitmq_management.url,
            &settings.default.transport_url,
        )
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/{path}", self.url)
    }

    /// `GET /api/<path>` (percent-encode names yourself): the status and the JSON body (null when
    /// there is none).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = reqwest::Client::new()
            .get(self.api(path))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the management API at {} does not answer ({e}): enable the rabbitmq_management plugin (scripts/stack services) or set TROVE_TEST_MANAGEMENT_URL",
                    self.url
                )
            });
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// The status of `GET /api/users/<user>`: 200 while the user exists, 404 once it is gone.
    pub async fn user_status(&self, user: &str) -> u16 {
        self.get(&format!("users/{}", encode(user))).await.0
    }

    /// Removes every user whose name starts with `<prefix>guest-`; returns how many. Blocking, on a
    /// thread of its own, so a `Drop` inside a runtime can call it.
    pub fn remove_guest_users(&self, prefix: &str) -> usize {
        let this = self.clone();
        let start = format!("{prefix}guest-");
        std::thread::spawn(move || this.remove_users_blocking(&start))
            .join()
            .unwrap_or(0)
    }

    fn remove_users_blocking(&self, start: &str) -> usize {
        let Ok(client) = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        else {
            return 0;
        };
        let users: Vec<serde_json::Value> = match client
            .get(self.api("users?columns=name"))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .and_then(|r| r.json())
        {
            Ok(users) => users,
            Err(_) => return 0,
        };
        let mut removed = 0;
        for name in users.iter().filter_map(|u| u["name"].as_str()) {
            if name.starts_with(start)
                && client
                    .delete(self.api(&format!("users/{}", encode(name))))
                    .basic_auth(&self.user, Some(&self.password))
                    .send()
                    .is_ok()
            {
                removed += 1;
            }
        }
        removed
    }
}

/// A name as one percent-encoded path segment of the API (`/` is `%2F`).
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
