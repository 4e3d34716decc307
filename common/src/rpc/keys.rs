//! Which key protects which channel (docs/messaging.md §3).

use secrecy::ExposeSecret;

use super::{rpc_keyring, Security};
use crate::config::Settings;
use crate::crypto::{CryptoError, Keyring, SecretKey};

/// The master keyring that seals each instance's RPC key in `instances.encrypted_key`. Reads Trove's
/// CBC form too, for databases migrated from Trove.
pub fn master_keyring(settings: &Settings) -> Keyring {
    let master = settings.default.inst_rpc_key_encr_key.expose_secret();
    Keyring::new(1, SecretKey::from_passphrase(master))
        .with_legacy_cbc(SecretKey::trove_cbc(master))
}

/// Seals a new instance RPC key for the `encrypted_key` column; `None` when secure messaging is off.
pub fn seal_instance_key(settings: &Settings, key: &str) -> Option<String> {
    settings
        .default
        .enable_secure_rpc_messaging
        .then(|| master_keyring(settings).encrypt(key.as_bytes()))
}

/// Opens `encrypted_key` back into the instance's RPC key.
pub fn open_instance_key(settings: &Settings, encrypted_key: &str) -> Result<String, CryptoError> {
    master_keyring(settings).decrypt_string(encrypted_key)
}

/// The keyring for one guest's channel, from its `encrypted_key` (None: plain messages).
pub fn guest_keyring(
    settings: &Settings,
    encrypted_key: Option<&str>,
) -> Result<Option<Keyring>, CryptoError> {
    match encrypted_key {
        Some(e) if settings.default.enable_secure_rpc_messaging => {
            Ok(Some(rpc_keyring(&open_instance_key(settings, e)?)))
        }
        _ => Ok(None),
    }
}

/// The keyring of the api → taskmanager channel, when secure messaging is on.
pub fn taskmanager_keyring(settings: &Settings) -> Option<Keyring> {
    settings
        .default
        .enable_secure_rpc_messaging
        .then(|| rpc_keyring(settings.default.taskmanager_rpc_encr_key.expose_secret()))
}

/// How messages to the taskmanager are protected.
pub fn taskmanager_security(settings: &Settings) -> Security {
    taskmanager_keyring(settings)
        .map(Security::Secure)
        .unwrap_or(Security::Plain)
}

/// How messages to a guest are protected.
pub fn guest_security(keys: Option<&Keyring>) -> Security {
    keys.cloned()
        .map(Security::Secure)
        .unwrap_or(Security::Plain)
}

/// The keyring for module contents at rest: the active GCM key, older GCM keys, and Trove's CBC key.
pub fn module_keyring(settings: &Settings) -> Keyring {
    let d = &settings.default;
    let mut ring = Keyring::new(
        d.module_contents_key_id,
        SecretKey::from_passphrase(d.module_contents_key.expose_secret()),
    )
    .with_legacy_cbc(SecretKey::trove_cbc(d.module_aes_cbc_key.expose_secret()));
    for entry in &d.module_contents_old_keys {
        if let Some((id, key)) = crate::config::parse_key_entry(entry) {
            ring = ring.with_old_key(id, SecretKey::from_passphrase(key));
        }
    }
    ring
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_round_trip() {
        let s = Settings::default();
        let sealed = seal_instance_key(&s, "abcdefghijklmnopqrstuvwxyz012345").unwrap();
        assert_eq!(
            open_instance_key(&s, &sealed).unwrap(),
            "abcdefghijklmnopqrstuvwxyz012345"
        );
        assert!(guest_keyring(&s, Some(&sealed)).unwrap().is_some());
        assert!(guest_keyring(&s, None).unwrap().is_none());
    }
}
