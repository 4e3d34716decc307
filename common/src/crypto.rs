//! Encryption for module contents at rest and for RPC payloads.
//!
//! We **write** AES-256-GCM, which is authenticated: a ciphertext that someone altered fails to decrypt
//! instead of yielding altered plaintext. The text form is
//! `"g" ‖ <key id, 2 hex digits> ‖ ":" ‖ base64(nonce(12) ‖ ciphertext ‖ tag(16))`, so keys can rotate:
//! a [`Keyring`] holds the active key plus older ones, and reads whatever key id a value names.
//!
//! We also **read** Trove's format (docs/module-semantics.md §4): `base64(IV(16) ‖ AES-256-CBC(PKCS7))` with the
//! key `hex(md5(passphrase))`, so a database migrated from Trove keeps working. Trove's base64 alphabet
//! never contains `:`, so the two forms cannot be confused.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use md5::{Digest, Md5};
use rand::RngCore;
use sha2::Sha256;

type CbcDec = cbc::Decryptor<aes::Aes256>;
type CbcEnc = cbc::Encryptor<aes::Aes256>;

/// Why a value could not be decrypted. Never carries plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is not valid base64")]
    Encoding,
    #[error("ciphertext names key id {0}, which is not configured")]
    UnknownKey(u8),
    #[error("ciphertext failed authentication (wrong key or tampered data)")]
    Authentication,
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("plaintext is not UTF-8")]
    NotUtf8,
}

/// A 256-bit key derived from a configured passphrase.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Derives the GCM key from a passphrase with SHA-256 (configuration holds passphrases, not raw keys).
    pub fn from_passphrase(passphrase: &str) -> Self {
        Self(Sha256::digest(passphrase.as_bytes()).into())
    }

    /// Trove's CBC key: the 32 ASCII bytes of `hex(md5(passphrase))`.
    pub fn trove_cbc(passphrase: &str) -> Self {
        let hex = hex::encode(Md5::digest(passphrase.as_bytes()));
        let mut k = [0u8; 32];
        k.copy_from_slice(hex.as_bytes());
        Self(k)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// The active GCM key, older GCM keys for reading, and Trove's CBC key for reading legacy rows.
#[derive(Clone, Debug)]
pub struct Keyring {
    active_id: u8,
    /// The GCM keys, the active one first. Kept as 32 bytes, expanded at each use: the conductor
    /// caches thousands of keyrings, and an expanded AES-256 key schedule is about a kilobyte.
    keys: Vec<(u8, SecretKey)>,
    legacy_cbc: Option<SecretKey>,
}

fn gcm(key: &SecretKey) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key.0))
}

impl Keyring {
    /// A keyring that writes with `active` under `active_id`.
    pub fn new(active_id: u8, active: SecretKey) -> Self {
        Self {
            active_id,
            keys: vec![(active_id, active)],
            legacy_cbc: None,
        }
    }

    /// Adds a key that is accepted for reading only.
    pub fn with_old_key(mut self, id: u8, key: SecretKey) -> Self {
        if !self.keys.iter().any(|(k, _)| *k == id) {
            self.keys.push((id, key));
        }
        self
    }

    /// Also accept Trove's AES-CBC values encrypted with this key.
    pub fn with_legacy_cbc(mut self, key: SecretKey) -> Self {
        self.legacy_cbc = Some(key);
        self
    }

    /// Encrypts `plaintext` with the active key.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        let cipher = gcm(&self.keys[0].1);
        // A random 96-bit nonce from the thread's CSPRNG (seeded from the OS), without a system
        // call per value.
        let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
        let ct = cipher
            .encrypt(&nonce, plaintext)
            .expect("AES-GCM encryption cannot fail for in-memory data");
        let mut raw = Vec::with_capacity(12 + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        format!("g{:02x}:{}", self.active_id, B64.encode(raw))
    }

    /// Decrypts a value written by [`Keyring::encrypt`] or by Trove's CBC routine.
    pub fn decrypt(&self, text: &str) -> Result<Vec<u8>, CryptoError> {
        match parse_gcm_header(text) {
            Some((id, body)) => {
                let key = self
                    .keys
                    .iter()
                    .find(|(k, _)| *k == id)
                    .map(|(_, key)| key)
                    .ok_or(CryptoError::UnknownKey(id))?;
                let raw = B64.decode(body).map_err(|_| CryptoError::Encoding)?;
                if raw.len() < 12 + 16 {
                    return Err(CryptoError::Malformed);
                }
                let (nonce, ct) = raw.split_at(12);
                gcm(key)
                    .decrypt(Nonce::from_slice(nonce), ct)
                    .map_err(|_| CryptoError::Authentication)
            }
            None => match &self.legacy_cbc {
                Some(key) => cbc_decrypt(key, text),
                None => Err(CryptoError::Malformed),
            },
        }
    }

    /// [`Keyring::decrypt`] for values that must be text.
    pub fn decrypt_string(&self, text: &str) -> Result<String, CryptoError> {
        String::from_utf8(self.decrypt(text)?).map_err(|_| CryptoError::NotUtf8)
    }
}

fn parse_gcm_header(text: &str) -> Option<(u8, &str)> {
    let rest = text.strip_prefix('g')?;
    let (id, body) = rest.split_once(':')?;
    if id.len() != 2 {
        return None;
    }
    Some((u8::from_str_radix(id, 16).ok()?, body))
}

/// Trove's `encrypt_data` + `encode_data`: `base64(IV ‖ AES-256-CBC(PKCS7(data)))`. Kept for tests and
/// for tools that must produce rows a Trove database would hold.
pub fn cbc_encrypt(key: &SecretKey, plaintext: &[u8]) -> String {
    let mut iv = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut iv);
    let ct = CbcEnc::new(&key.0.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut raw = iv.to_vec();
    raw.extend_from_slice(&ct);
    B64.encode(raw)
}

/// Reads Trove's CBC format. Unauthenticated: only padding errors are detectable.
pub fn cbc_decrypt(key: &SecretKey, text: &str) -> Result<Vec<u8>, CryptoError> {
    let raw = B64.decode(text.trim()).map_err(|_| CryptoError::Encoding)?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(CryptoError::Malformed);
    }
    let (iv, ct) = raw.split_at(16);
    let iv: [u8; 16] = iv.try_into().map_err(|_| CryptoError::Malformed)?;
    CbcDec::new(&key.0.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ct)
        .map_err(|_| CryptoError::Authentication)
}

/// `len` random characters from `[A-Za-z0-9]` (from the thread's CSPRNG, seeded by the OS): keys
/// and passwords that travel in configuration files and URLs.
pub fn random_alphanumeric(len: usize) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

/// 32 random characters from `[A-Za-z0-9]`: a new instance's RPC key (docs/messaging.md §3).
pub fn random_rpc_key() -> String {
    random_alphanumeric(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(1, SecretKey::from_passphrase("k1"))
            .with_legacy_cbc(SecretKey::trove_cbc("module_aes_cbc_key"))
    }

    #[test]
    fn gcm_round_trip_and_versioned_prefix() {
        let r = ring();
        let ct = r.encrypt(b"bWVzc2FnZT1Nb2R1bGUuVjEK");
        assert!(ct.starts_with("g01:"), "{ct}");
        assert!(!ct.contains("bWVzc2FnZT1"));
        assert_eq!(r.decrypt(&ct).unwrap(), b"bWVzc2FnZT1Nb2R1bGUuVjEK");
    }

    #[test]
    fn tampering_is_detected() {
        let r = ring();
        let ct = r.encrypt(b"message=secret");
        let mut raw = B64.decode(&ct[4..]).unwrap();
        raw[14] ^= 1;
        let tampered = format!("g01:{}", B64.encode(raw));
        assert_eq!(r.decrypt(&tampered), Err(CryptoError::Authentication));
    }

    #[test]
    fn rotation_reads_old_keys() {
        let old = Keyring::new(1, SecretKey::from_passphrase("old"));
        let ct = old.encrypt(b"x");
        let new = Keyring::new(2, SecretKey::from_passphrase("new"));
        assert_eq!(new.decrypt(&ct), Err(CryptoError::UnknownKey(1)));
        let new = new.with_old_key(1, SecretKey::from_passphrase("old"));
        assert_eq!(new.decrypt(&ct).unwrap(), b"x");
        assert!(new.encrypt(b"y").starts_with("g02:"));
    }

    #[test]
    fn reads_trove_cbc_format() {
        let key = SecretKey::trove_cbc("module_aes_cbc_key");
        let ct = cbc_encrypt(&key, b"bWVzc2FnZT1Nb2R1bGUuVjEK");
        assert_eq!(
            ring().decrypt_string(&ct).unwrap(),
            "bWVzc2FnZT1Nb2R1bGUuVjEK"
        );
        // PKCS7 always pads: 24 bytes of plaintext become 32 of ciphertext after the IV.
        assert_eq!(B64.decode(&ct).unwrap().len(), 16 + 32);
    }

    #[test]
    fn trove_cbc_key_is_hex_md5() {
        let k = SecretKey::trove_cbc("module_aes_cbc_key");
        assert_eq!(
            &k.0,
            hex::encode(Md5::digest(b"module_aes_cbc_key")).as_bytes()
        );
    }

    #[test]
    fn rpc_keys_are_32_alphanumerics() {
        let k = random_rpc_key();
        assert_eq!(k.len(), 32);
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
