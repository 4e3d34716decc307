//! The RPC wire format: oslo.messaging 2.0 envelopes, Trove's context keys and its per-instance
//! encryption (docs/messaging.md §2–§3), plus the typed message enums each server dispatches on.
//!
//! A message on the wire is `{"oslo.version": "2.0", "oslo.message": "<inner JSON as a string>"}`. The
//! inner request carries `method`, `args`, `version`, `_unique_id`, one `_context_<key>` per context key
//! and, for calls, `_msg_id`, `_reply_q` and `_timeout`.
//!
//! Typed enums ([`taskmanager::TaskManagerMsg`], [`guest::GuestMsg`], [`conductor::ConductorMsg`]) are
//! serialised with `tag = "method", content = "args"`, so Trove's method names show on the wire, then
//! split into the envelope's `method` and `args`. Each variant wraps one struct holding the method's
//! arguments (svix's `QueueTask::MessageV1(MessageTask)`), so a message is built the same way by its
//! sender, its server and the tests.

pub mod conductor;
pub mod guest;
pub mod keys;
pub mod taskmanager;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::crypto::{CryptoError, Keyring, SecretKey};

/// The caller's identity and request id, carried by every message as `_context_*` keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcContext {
    pub auth_token: Option<String>,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub tenant: Option<String>,
    pub is_admin: bool,
    pub roles: Vec<String>,
    /// `req-<uuid>`: one request can be followed across api, taskmanager, guest and conductor logs.
    pub request_id: String,
    pub limit: Option<i64>,
    pub marker: Option<String>,
}

impl RpcContext {
    /// A context for work the services start themselves (heartbeats, resumed jobs).
    pub fn service() -> Self {
        Self {
            is_admin: true,
            request_id: new_request_id(),
            ..Self::default()
        }
    }
}

/// `req-<uuid4>`, Trove's request id format.
pub fn new_request_id() -> String {
    format!("req-{}", Uuid::new_v4())
}

/// One decoded request, whatever its method.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub args: Map<String, Value>,
    pub version: String,
    pub unique_id: String,
    pub context: RpcContext,
    /// Present on calls: where and under which id to reply.
    pub reply: Option<ReplyTo>,
}

/// The reply address of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub msg_id: String,
    pub reply_q: String,
}

/// A remote failure, as oslo serialises it in a reply's `failure` string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub class: String,
    pub module: String,
    pub message: String,
    #[serde(default)]
    pub tb: Vec<String>,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl RemoteError {
    pub fn new(class: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            class: class.into(),
            module: "trove.common.exception".into(),
            args: vec![Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: Map::new(),
        }
    }
}

/// A decoded reply to a call.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub msg_id: String,
    pub result: Result<Value, RemoteError>,
}

/// Why a message could not be decoded. Such a message is dead-lettered, never retried.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not an oslo 2.0 envelope: {0}")]
    Envelope(String),
    #[error("message has no method")]
    NoMethod,
    #[error("argument {arg} failed to decrypt: {source}")]
    Crypto { arg: String, source: CryptoError },
    #[error("message arguments do not match method {method}: {source}")]
    Args {
        method: String,
        source: serde_json::Error,
    },
}

/// How the arguments of a message are protected.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plain JSON (secure messaging off).
    Plain,
    /// Trove's SecureSerializer with one key (taskmanager and guest channels).
    Secure(Keyring),
    /// Trove's ConductorGuestSerializer: the guest's key, tagged with its id so the conductor can find it.
    GuestToConductor { instance_id: String, keys: Keyring },
}

/// Builds the keyring used for RPC values from a shared passphrase (the taskmanager key or an
/// instance's key).
pub fn rpc_keyring(passphrase: &str) -> Keyring {
    Keyring::new(1, SecretKey::from_passphrase(passphrase))
}

/// Splits a typed message into `(method, args)`.
pub fn to_method_args<T: Serialize>(msg: &T) -> (String, Map<String, Value>) {
    let value = serde_json::to_value(msg).expect("RPC messages always serialise");
    let Value::Object(mut obj) = value else {
        panic!("RPC messages serialise to objects")
    };
    let method = obj
        .remove("method")
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_default();
    let args = match obj.remove("args") {
        Some(Value::Object(a)) => a,
        _ => Map::new(),
    };
    (method, args)
}

/// Rebuilds a typed message from a decoded request, moving the arguments out of `req` (`req.args` is
/// left empty; the method, context and reply address stay).
pub fn take_message<T: DeserializeOwned>(req: &mut Request) -> Result<T, DecodeError> {
    let method = req.method.clone();
    let mut obj = Map::new();
    obj.insert("method".into(), Value::String(method.clone()));
    obj.insert("args".into(), Value::Object(std::mem::take(&mut req.args)));
    serde_json::from_value(Value::Object(obj))
        .map_err(|source| DecodeError::Args { method, source })
}

/// Encodes a request. `reply` makes it a call.
pub fn encode_request(
    method: &str,
    args: Map<String, Value>,
    context: &RpcContext,
    version: &str,
    reply: Option<&ReplyTo>,
    security: &Security,
) -> Vec<u8> {
    let mut inner = Map::new();
    inner.insert("method".into(), Value::String(method.into()));
    let ctx_value = serde_json::to_value(context).expect("context serialises");
    match security {
        Security::Plain => {
            inner.insert("args".into(), Value::Object(args));
            if let Value::Object(ctx) = ctx_value {
                for (k, v) in ctx {
                    inner.insert(format!("_context_{k}"), v);
                }
            }
        }
        Security::Secure(keys) => {
            let args = args
                .into_iter()
                .map(|(k, v)| (k, Value::String(seal(keys, &v))))
                .collect();
            inner.insert("args".into(), Value::Object(args));
            inner.insert(
                "_context_context".into(),
                Value::String(seal(keys, &ctx_value)),
            );
        }
        Security::GuestToConductor { instance_id, keys } => {
            let wrap = |v: &Value| {
                serde_json::json!({"entity": seal(keys, v), "csz-instance-id": instance_id})
                    .to_string()
            };
            let args = args
                .into_iter()
                .map(|(k, v)| (k, Value::String(wrap(&v))))
                .collect();
            inner.insert("args".into(), Value::Object(args));
            inner.insert(
                "_context_context".into(),
                Value::String(serde_json::json!({"context": seal(keys, &ctx_value), "csz-instance-id": instance_id}).to_string()),
            );
            inner.insert(
                "_context_csz-instance-id".into(),
                Value::String(instance_id.clone()),
            );
        }
    }
    inner.insert("version".into(), Value::String(version.into()));
    inner.insert(
        "_unique_id".into(),
        Value::String(Uuid::new_v4().simple().to_string()),
    );
    if let Some(r) = reply {
        inner.insert("_msg_id".into(), Value::String(r.msg_id.clone()));
        inner.insert("_reply_q".into(), Value::String(r.reply_q.clone()));
        inner.insert("_timeout".into(), Value::Null);
    }
    wrap_envelope(&Value::Object(inner))
}

fn seal(keys: &Keyring, v: &Value) -> String {
    keys.encrypt(v.to_string().as_bytes())
}

fn wrap_envelope(inner: &Value) -> Vec<u8> {
    serde_json::json!({"oslo.version": "2.0", "oslo.message": inner.to_string()})
        .to_string()
        .into_bytes()
}

fn unwrap_envelope(body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let outer: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::Envelope(e.to_string()))?;
    let inner = outer
        .get("oslo.message")
        .and_then(Value::as_str)
        .ok_or_else(|| DecodeError::Envelope("no oslo.message".into()))?;
    match serde_json::from_str(inner) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(DecodeError::Envelope(
            "oslo.message is not an object".into(),
        )),
        Err(e) => Err(DecodeError::Envelope(e.to_string())),
    }
}

/// Decodes a request. With `keys`, encrypted values are opened (authentication failures are errors);
/// values that are not ours pass through as they stand, as Trove's serializers do.
pub fn decode_request(body: &[u8], keys: Option<&Keyring>) -> Result<Request, DecodeError> {
    Envelope::parse(body)?.open(keys)
}

/// A request's inner message, parsed but not yet opened: a server that must look at it first (the
/// conductor reads who sealed it to find the key, and checks that every argument is sealed) parses
/// the body once.
#[derive(Clone, Debug)]
pub struct Envelope {
    inner: Map<String, Value>,
}

impl Envelope {
    /// Parses the oslo envelope and the inner message it carries as a string.
    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        unwrap_envelope(body).map(|inner| Self { inner })
    }

    /// The instance id a guest tags its messages to the conductor with (`_context_csz-instance-id`).
    pub fn guest_instance_id(&self) -> Option<&str> {
        self.inner
            .get("_context_csz-instance-id")
            .and_then(Value::as_str)
    }

    /// The arguments as they travel (sealed values still sealed). None when `args` is missing or not
    /// an object (an empty object is `Some`).
    pub fn raw_args(&self) -> Option<&Map<String, Value>> {
        self.inner.get("args").and_then(Value::as_object)
    }

    /// Opens the request (see [`decode_request`]).
    pub fn open(self, keys: Option<&Keyring>) -> Result<Request, DecodeError> {
        let mut inner = self.inner;
        let method = match inner.remove("method") {
            Some(Value::String(m)) if !m.is_empty() => m,
            _ => return Err(DecodeError::NoMethod),
        };
        let raw_args = match inner.remove("args") {
            Some(Value::Object(a)) => a,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(DecodeError::Envelope("args is not an object".into())),
        };
        let mut args = Map::new();
        for (k, v) in raw_args {
            let opened = open_value(keys, v).map_err(|source| DecodeError::Crypto {
                arg: k.clone(),
                source,
            })?;
            args.insert(k, opened);
        }
        let mut ctx = Map::new();
        let mut reply_q = None;
        let mut msg_id = None;
        let mut version = "1.0".to_owned();
        let mut unique_id = String::new();
        for (k, v) in inner {
            match k.as_str() {
                "_msg_id" => msg_id = v.as_str().map(str::to_owned),
                "_reply_q" => reply_q = v.as_str().map(str::to_owned),
                "_unique_id" => unique_id = v.as_str().unwrap_or_default().to_owned(),
                "version" => version = v.as_str().unwrap_or("1.0").to_owned(),
                "_context_context" => {
                    let opened = open_value(keys, v).map_err(|source| DecodeError::Crypto {
                        arg: "context".into(),
                        source,
                    })?;
                    if let Value::Object(m) = opened {
                        ctx.extend(m);
                    }
                }
                _ => {
                    if let Some(key) = k.strip_prefix("_context_") {
                        ctx.insert(key.to_owned(), v);
                    }
                }
            }
        }
        ctx.remove("csz-instance-id");
        let context: RpcContext = serde_json::from_value(Value::Object(ctx)).unwrap_or_default();
        let reply = match (msg_id, reply_q) {
            (Some(msg_id), Some(reply_q)) => Some(ReplyTo { msg_id, reply_q }),
            _ => None,
        };
        Ok(Request {
            method,
            args,
            version,
            unique_id,
            context,
            reply,
        })
    }
}

/// Opens one value: our sealed strings, the guest→conductor wrapper, or plain values.
fn open_value(keys: Option<&Keyring>, v: Value) -> Result<Value, CryptoError> {
    let Value::String(s) = &v else { return Ok(v) };
    // The guest→conductor wrapper is a JSON string holding {"entity"|"context": sealed, "csz-instance-id"}.
    if s.starts_with('{') && s.contains("csz-instance-id") {
        if let Ok(Value::Object(w)) = serde_json::from_str::<Value>(s) {
            if let Some(Value::String(sealed)) = w.get("entity").or_else(|| w.get("context")) {
                return open_sealed(keys, sealed);
            }
        }
    }
    if is_sealed(s) {
        return open_sealed(keys, s);
    }
    Ok(v)
}

fn is_sealed(s: &str) -> bool {
    s.len() > 4
        && s.starts_with('g')
        && s.as_bytes()[3] == b':'
        && s[1..3].chars().all(|c| c.is_ascii_hexdigit())
}

fn open_sealed(keys: Option<&Keyring>, sealed: &str) -> Result<Value, CryptoError> {
    let Some(keys) = keys else {
        return Err(CryptoError::UnknownKey(0));
    };
    let plain = keys.decrypt(sealed)?;
    serde_json::from_slice(&plain).map_err(|_| CryptoError::Malformed)
}

/// Encodes a reply (oslo's inner reply, in the same envelope).
pub fn encode_reply(
    msg_id: &str,
    result: Result<Value, RemoteError>,
    keys: Option<&Keyring>,
) -> Vec<u8> {
    let (result, failure) = match result {
        Ok(v) => {
            let v = match keys {
                Some(k) if !v.is_null() => Value::String(seal(k, &v)),
                _ => v,
            };
            (v, Value::Null)
        }
        Err(e) => (
            Value::Null,
            Value::String(serde_json::to_string(&e).expect("errors serialise")),
        ),
    };
    let inner = serde_json::json!({
        "result": result, "failure": failure, "ending": true,
        "_msg_id": msg_id, "_unique_id": Uuid::new_v4().simple().to_string(),
    });
    wrap_envelope(&inner)
}

/// Decodes a reply.
pub fn decode_reply(body: &[u8], keys: Option<&Keyring>) -> Result<Reply, DecodeError> {
    let inner = unwrap_envelope(body)?;
    let msg_id = inner
        .get("_msg_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(Value::String(f)) = inner.get("failure") {
        let err = serde_json::from_str::<RemoteError>(f)
            .unwrap_or_else(|_| RemoteError::new("RemoteError", f.clone()));
        return Ok(Reply {
            msg_id,
            result: Err(err),
        });
    }
    let result = inner.get("result").cloned().unwrap_or(Value::Null);
    let result = open_value(keys, result).map_err(|source| DecodeError::Crypto {
        arg: "result".into(),
        source,
    })?;
    Ok(Reply {
        msg_id,
        result: Ok(result),
    })
}

/// Test support for the message enums' wire tests: serialises `msg`, compares the text with `wire`
/// byte for byte, and parses `wire` back into `msg`.
#[cfg(test)]
pub(crate) fn assert_wire<T>(msg: &T, wire: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert_eq!(serde_json::to_string(msg).unwrap(), wire, "{msg:?}");
    assert_eq!(&serde_json::from_str::<T>(wire).unwrap(), msg, "{wire}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> RpcContext {
        RpcContext {
            project_id: Some("project-kept-secret".into()),
            is_admin: true,
            request_id: "req-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn plain_round_trip_keeps_trove_keys() {
        let mut args = Map::new();
        args.insert("module_id".into(), json!("m1"));
        let reply = ReplyTo {
            msg_id: "abc".into(),
            reply_q: "reply_x".into(),
        };
        let body = encode_request(
            "reapply_module",
            args,
            &ctx(),
            "1.0",
            Some(&reply),
            &Security::Plain,
        );
        let outer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["method"], "reapply_module");
        assert_eq!(inner["_context_project_id"], "project-kept-secret");
        assert_eq!(inner["_reply_q"], "reply_x");
        let req = decode_request(&body, None).unwrap();
        assert_eq!(req.args["module_id"], "m1");
        assert_eq!(req.context, ctx());
        assert_eq!(req.reply, Some(reply));
    }

    #[test]
    fn secure_round_trip_hides_values() {
        let keys = rpc_keyring("instancekey");
        let mut args = Map::new();
        args.insert(
            "modules".into(),
            json!([{"module": {"contents": "c2VjcmV0"}}]),
        );
        let body = encode_request(
            "module_apply",
            args,
            &ctx(),
            "1.0",
            None,
            &Security::Secure(keys.clone()),
        );
        assert!(!String::from_utf8_lossy(&body).contains("c2VjcmV0"));
        assert!(!String::from_utf8_lossy(&body).contains("project-kept-secret"));
        let req = decode_request(&body, Some(&keys)).unwrap();
        assert_eq!(req.args["modules"][0]["module"]["contents"], "c2VjcmV0");
        assert_eq!(
            req.context.project_id.as_deref(),
            Some("project-kept-secret")
        );
        // The wrong key is an error, never silently plain.
        assert!(decode_request(&body, Some(&rpc_keyring("other"))).is_err());
    }

    #[test]
    fn guest_to_conductor_wrapper() {
        let keys = rpc_keyring("k");
        let mut args = Map::new();
        args.insert("instance_id".into(), json!("i1"));
        let sec = Security::GuestToConductor {
            instance_id: "i1".into(),
            keys: keys.clone(),
        };
        let body = encode_request("heartbeat", args, &ctx(), "1.0", None, &sec);
        assert_eq!(
            Envelope::parse(&body).unwrap().guest_instance_id(),
            Some("i1")
        );
        let req = decode_request(&body, Some(&keys)).unwrap();
        assert_eq!(req.args["instance_id"], "i1");
        assert!(req.context.is_admin);
    }

    #[test]
    fn replies_round_trip() {
        let keys = rpc_keyring("k");
        let body = encode_reply("m1", Ok(json!([1, 2])), Some(&keys));
        let r = decode_reply(&body, Some(&keys)).unwrap();
        assert_eq!(r.msg_id, "m1");
        assert_eq!(r.result.unwrap(), json!([1, 2]));
        let body = encode_reply(
            "m2",
            Err(RemoteError::new(
                "NotFound",
                "Module 'x' has not been applied",
            )),
            None,
        );
        let r = decode_reply(&body, None).unwrap();
        assert_eq!(
            r.result.unwrap_err().message,
            "Module 'x' has not been applied"
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode_request(b"not json", None).is_err());
        assert!(decode_request(br#"{"oslo.version":"2.0","oslo.message":"{}"}"#, None).is_err());
    }
}
