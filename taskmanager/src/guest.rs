//! Talking to guests: the key that protects an instance's channel, and casts and calls on its
//! `guestagent.<instance_id>` topic.

use std::time::Duration;

use serde_json::Value;
use trove_common::amqp::AmqpError;
use trove_common::config::Settings;
use trove_common::crypto::{CryptoError, Keyring};
use trove_common::rpc::guest::GuestMsg;
use trove_common::rpc::keys::{guest_security, open_instance_key};
use trove_common::rpc::{encode_request, rpc_keyring, to_method_args, RpcContext};

use crate::Ctx;

/// The instance's RPC key in clear, from `instances.encrypted_key`; `None` when secure messaging is off
/// or the instance has no key (then its channel is plain).
pub fn instance_key(
    settings: &Settings,
    encrypted_key: Option<&str>,
) -> Result<Option<String>, CryptoError> {
    match encrypted_key {
        Some(sealed) if settings.default.enable_secure_rpc_messaging => {
            open_instance_key(settings, sealed).map(Some)
        }
        _ => Ok(None),
    }
}

/// The keyring for a guest's channel from its clear key (the same as `keys::guest_keyring`).
pub fn keyring(key: Option<&str>) -> Option<Keyring> {
    key.map(rpc_keyring)
}

/// Casts `msg` to the instance's guest. `prepare` travels as version 1.1 (with `ds_version`).
pub async fn cast(
    ctx: &Ctx,
    instance_id: &str,
    keys: Option<&Keyring>,
    rpc: &RpcContext,
    msg: &GuestMsg,
) -> Result<(), AmqpError> {
    cast_with(ctx, instance_id, keys, rpc, msg, true).await
}

/// [`cast`], persistent or transient.
pub async fn cast_with(
    ctx: &Ctx,
    instance_id: &str,
    keys: Option<&Keyring>,
    rpc: &RpcContext,
    msg: &GuestMsg,
    persistent: bool,
) -> Result<(), AmqpError> {
    let (method, args) = to_method_args(msg);
    let version = if matches!(msg, GuestMsg::Prepare(_)) {
        "1.1"
    } else {
        "1.0"
    };
    let body = encode_request(&method, args, rpc, version, None, &guest_security(keys));
    ctx.broker
        .cast_with(&ctx.broker.names().guest(instance_id), &body, persistent)
        .await
}

/// Calls `msg` on the instance's guest and waits up to `timeout` for the result.
pub async fn call(
    ctx: &Ctx,
    instance_id: &str,
    keys: Option<&Keyring>,
    rpc: &RpcContext,
    msg: &GuestMsg,
    timeout: Duration,
) -> Result<Value, AmqpError> {
    let (method, args) = to_method_args(msg);
    ctx.rpc
        .call(
            &ctx.broker.names().guest(instance_id),
            &method,
            args,
            rpc,
            keys,
            timeout,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_common::rpc::keys::seal_instance_key;

    #[test]
    fn instance_keys_follow_the_secure_switch() {
        let mut s = Settings::default();
        let sealed = seal_instance_key(&s, "abc").unwrap();
        assert_eq!(
            instance_key(&s, Some(&sealed)).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(instance_key(&s, None).unwrap(), None);
        assert!(instance_key(&s, Some("not sealed")).is_err());
        s.default.enable_secure_rpc_messaging = false;
        assert_eq!(instance_key(&s, Some(&sealed)).unwrap(), None);
    }
}
