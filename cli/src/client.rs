//! The HTTP client for the Trove v1.0 API.
//!
//! Every request carries `Accept: application/json`, the token as `X-Auth-Token` (and, without
//! authentication, the project and roles as `X-Project-Id` / `X-Roles`), and a timeout. Bodies are
//! JSON. A status of 400 or more becomes [`ApiError::Http`], whose message is the `message` of
//! Trove's fault body `{"<faultName>": {"code": N, "message": "..."}}` and which displays as
//! `<message> (HTTP <status>)`, as troveclient prints it.
//!
//! With a Keystone session, a 401 on a cached token (revoked, or Keystone reset) makes the client log
//! in again once and repeat the request, as keystoneauth's session does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::blocking::{Client as HttpClient, RequestBuilder};
use reqwest::Method;

use crate::auth::keystone::Login;
use crate::auth::{AuthType, Session};
use crate::json::Json;

/// What went wrong with one API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error status.
    #[error("{message} (HTTP {status})")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The fault message, or the status's reason phrase when the body has none.
        message: String,
    },
    /// The request did not finish within the timeout.
    #[error("Request {method} {url} timed out after {} seconds", .timeout.as_secs_f64())]
    Timeout {
        /// The request method.
        method: Method,
        /// The request URL.
        url: String,
        /// The configured limit.
        timeout: Duration,
    },
    /// The API could not be reached (refused, DNS, broken connection...).
    #[error("Unable to establish connection to {url}: {reason}")]
    Connection {
        /// The request URL.
        url: String,
        /// The underlying error chain.
        reason: String,
    },
    /// A successful response whose body is not what the call needs.
    #[error("Invalid response from {url}: {reason}")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ApiError {
    /// The HTTP status, for errors the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A successful (2xx) response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The decoded body, or `None` when it was empty.
    pub body: Option<Json>,
    /// The `Location` header, if any.
    pub location: Option<String>,
}

/// A blocking client bound to one `/v1.0/<tenant>` base URL.
#[derive(Clone, Debug)]
pub struct Client {
    http: HttpClient,
    base_url: String,
    headers: Vec<(&'static str, String)>,
    /// Sent as `X-Auth-Token`; replaced after a Keystone re-login.
    token: Arc<Mutex<Option<String>>>,
    /// How to log in again when the API rejects the token (Keystone sessions only).
    relogin: Option<Login>,
    timeout: Duration,
    debug: bool,
}

impl Client {
    /// A client for `session`. With `debug`, each request and response is logged to stderr (the
    /// token redacted).
    pub fn new(session: &Session, debug: bool) -> anyhow::Result<Self> {
        if session.base_url.starts_with("https://") {
            anyhow::bail!(
                "HTTPS endpoints are not supported by this build of trove (no TLS): {}",
                session.base_url
            );
        }
        let http = HttpClient::builder()
            .timeout(session.timeout)
            .connect_timeout(session.timeout)
            .user_agent(concat!("python-troveclient-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut headers = vec![("Accept", "application/json".to_owned())];
        if session.auth_type == AuthType::NoAuth {
            if let Some(project) = &session.project_id {
                headers.push(("X-Project-Id", project.clone()));
            }
            if !session.roles.is_empty() {
                headers.push(("X-Roles", session.roles.join(",")));
            }
        }
        Ok(Self {
            http,
            base_url: session.base_url.clone(),
            headers,
            token: Arc::new(Mutex::new(session.token.clone())),
            relogin: session.keystone.clone(),
            timeout: session.timeout,
            debug,
        })
    }

    /// The `/v1.0/<tenant>` base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET <base><path>`; the response must have a JSON body.
    pub fn get(&self, path: &str) -> Result<Json, ApiError> {
        let url = self.url(path);
        let response = self.send(Method::GET, path, None)?;
        response.body.ok_or_else(|| ApiError::BadResponse {
            url,
            reason: "the call did not return a body".into(),
        })
    }

    /// `POST <base><path>` with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<Response, ApiError> {
        self.send(Method::POST, path, Some(body))
    }

    /// `PUT <base><path>` with a JSON body.
    pub fn put(&self, path: &str, body: &serde_json::Value) -> Result<Response, ApiError> {
        self.send(Method::PUT, path, Some(body))
    }

    /// `DELETE <base><path>`.
    pub fn delete(&self, path: &str) -> Result<Response, ApiError> {
        self.send(Method::DELETE, path, None)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sends one request. `path` starts with `/` and is already percent-encoded (see
    /// [`segment`]).
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ApiError> {
        match self.send_once(method.clone(), path, body) {
            Err(ApiError::Http { status: 401, .. }) if self.relogin.is_some() => {
                self.login_again()?;
                self.send_once(method, path, body)
            }
            other => other,
        }
    }

    /// A fresh Keystone token, replacing the rejected (cached) one.
    fn login_again(&self) -> Result<(), ApiError> {
        let Some(login) = &self.relogin else {
            return Ok(());
        };
        let grant = login.token(true).map_err(|e| ApiError::Http {
            status: 401,
            message: e.to_string(),
        })?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(grant.token);
        Ok(())
    }

    fn current_token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ApiError> {
        let url = self.url(path);
        let mut request: RequestBuilder = self.http.request(method.clone(), &url);
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        if let Some(token) = self.current_token() {
            request = request.header("X-Auth-Token", token);
        }
        let body_text = body.map(serde_json::Value::to_string);
        if let Some(text) = &body_text {
            request = request
                .header("Content-Type", "application/json")
                .body(text.clone());
        }
        if self.debug {
            self.log_request(&method, &url, body_text.as_deref());
        }

        let response = request
            .send()
            .map_err(|e| self.transport_error(&method, &url, e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response
            .text()
            .map_err(|e| self.transport_error(&method, &url, e))?;
        if self.debug {
            eprintln!("RESP: [{}] {}", status.as_u16(), redact_contents(&text));
        }

        if status.as_u16() >= 400 {
            return Err(ApiError::Http {
                status: status.as_u16(),
                message: fault_message(&text)
                    .or_else(|| status.canonical_reason().map(str::to_owned))
                    .unwrap_or_else(|| "HTTP Error".to_owned()),
            });
        }
        let body = if text.trim().is_empty() {
            None
        } else {
            match Json::parse(&text) {
                Ok(json) => Some(json),
                // Only GET needs a body; an unexpected non-JSON body elsewhere is ignored.
                Err(e) if method == Method::GET => {
                    return Err(ApiError::BadResponse {
                        url,
                        reason: format!("the body is not JSON ({e})"),
                    })
                }
                Err(_) => None,
            }
        };
        Ok(Response {
            status: status.as_u16(),
            body,
            location,
        })
    }

    fn log_request(&self, method: &Method, url: &str, body: Option<&str>) {
        let mut line = format!("REQ: curl -g -i -X {method} {url}");
        for (name, value) in &self.headers {
            line.push_str(&format!(" -H \"{name}: {value}\""));
        }
        if self.current_token().is_some() {
            line.push_str(" -H \"X-Auth-Token: <redacted>\"");
        }
        if let Some(body) = body {
            let body = redact_contents(body);
            line.push_str(&format!(
                " -H \"Content-Type: application/json\" -d '{body}'"
            ));
        }
        eprintln!("{line}");
    }

    fn transport_error(&self, method: &Method, url: &str, e: reqwest::Error) -> ApiError {
        if e.is_timeout() {
            return ApiError::Timeout {
                method: method.clone(),
                url: url.to_owned(),
                timeout: self.timeout,
            };
        }
        // reqwest's own message repeats the URL; its causes say what happened.
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        let reason = if causes.is_empty() {
            e.to_string()
        } else {
            causes.join(": ")
        };
        ApiError::Connection {
            url: url.to_owned(),
            reason,
        }
    }
}

/// A body for the debug log with every string `contents` value (module payloads, which may be
/// licence keys) replaced by its length.
fn redact_contents(text: &str) -> String {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    match inner {
                        serde_json::Value::String(s) if key == "contents" => {
                            *inner = serde_json::Value::String(format!(
                                "<redacted, {} characters>",
                                s.len()
                            ));
                        }
                        _ => walk(inner),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if !text.contains("\"contents\"") {
        return text.to_owned();
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut value) => {
            walk(&mut value);
            value.to_string()
        }
        Err(_) => text.to_owned(),
    }
}

/// The message of a Trove fault body: `{"<fault>": {"message": ...}}`, or a flat
/// `{"message": ...}` (newer WebOb), as troveclient's `from_response` reads it.
pub fn fault_message(body: &str) -> Option<String> {
    let json = Json::parse(body).ok()?;
    let object = json.as_object()?;
    let message = match object.get("message") {
        Some(m) => m,
        None => object.iter().next()?.1.get("message")?,
    };
    if message.is_null() {
        return None;
    }
    Some(message.py_str())
}

/// Percent-encodes one path segment or query value (everything but RFC 3986's unreserved
/// characters), so names with spaces or slashes stay one segment.
pub fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Appends a query string built from the pairs whose value is set, in order, as troveclient's
/// `append_query_strings` does.
pub fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", segment(v))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// The `marker` of a paginated body's `next` link, if there is one (as troveclient's
/// `_paginated` extracts it).
pub fn next_marker(body: &Json) -> Option<String> {
    let links = body.get("links")?.as_array()?;
    let href = links
        .iter()
        .filter(|l| l.get("rel").and_then(Json::as_str) == Some("next"))
        .filter_map(|l| l.get("href").and_then(Json::as_str))
        .next_back()?;
    let query = href.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "marker")
        .map(|(_, v)| percent_decode(v))
        .next_back()
}

/// Decodes `%XX` escapes and `+` (as `parse_qsl` does).
fn percent_decode(raw: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_messages() {
        assert_eq!(
            fault_message(
                r#"{"itemNotFound": {"code": 404, "message": "Module with ID nope could not be found."}}"#
            )
            .as_deref(),
            Some("Module with ID nope could not be found.")
        );
        assert_eq!(
            fault_message(r#"{"message": "flat", "code": 400}"#).as_deref(),
            Some("flat")
        );
        assert_eq!(fault_message("<html>oops</html>"), None);
        let e = ApiError::Http {
            status: 404,
            message: "Module with ID nope could not be found.".into(),
        };
        assert_eq!(
            e.to_string(),
            "Module with ID nope could not be found. (HTTP 404)"
        );
    }

    #[test]
    fn debug_log_hides_module_contents() {
        let body = r#"{"module": {"name": "m", "contents": "c2VjcmV0"}}"#;
        let shown = redact_contents(body);
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("<redacted, 8 characters>"), "{shown}");
        assert_eq!(redact_contents("{\"name\": \"m\"}"), "{\"name\": \"m\"}");
    }

    #[test]
    fn query_and_segments() {
        assert_eq!(segment("my mod/x"), "my%20mod%2Fx");
        assert_eq!(
            with_query(
                "/instances",
                &[
                    ("limit", None),
                    ("marker", Some("abc".into())),
                    ("include_clustered", Some("False".into()))
                ]
            ),
            "/instances?marker=abc&include_clustered=False"
        );
        assert_eq!(with_query("/x", &[("a", None)]), "/x");
    }

    #[test]
    fn next_marker_from_links() {
        let body = Json::parse(
            r#"{"instances": [], "links": [{"rel": "next",
                "href": "https://h/v1.0/t/modules/m/instances?include_clustered=True&marker=abc%2Dd"}]}"#,
        )
        .expect("json");
        assert_eq!(next_marker(&body).as_deref(), Some("abc-d"));
        let last = Json::parse(r#"{"instances": []}"#).expect("json");
        assert_eq!(next_marker(&last), None);
    }
}
