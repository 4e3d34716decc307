//! Module contents at rest (docs/module-semantics.md §4): the `modules.contents` column holds AES-256-GCM
//! ciphertext with a versioned key prefix, never the payload; an altered ciphertext makes the API fail
//! instead of sending altered contents anywhere; and rows in Trove's AES-CBC format still work.

use std::time::Duration;

use base64::Engine as _;
use regex::Regex;
use reqwest::Method;
use serde_json::{json, Value};
use trove_common::crypto::{cbc_encrypt, CryptoError, SecretKey};
use trove_common::module::contents_md5;
use trove_common::rpc::keys::module_keyring;
use trove_tests::TestEnv;

use crate::modules_api::{
    b64, db_contents, db_updated, instance_body, module, payload, sql_exec, sql_one, Api, A, B,
    V1_MD5, V2_MD5,
};

/// A payload nobody could mistake: a licence key as a tenant might upload it.
const SECRET: &str = "message=Licence.OK\nlicense_key=PLAINTEXT-MARKER-7f3a9c1d0e\n";

fn row_text(env: &TestEnv, id: &str) -> String {
    sql_one(
        env,
        &format!("SELECT row_to_json(m)::text AS v FROM modules m WHERE id = '{id}'"),
    )
}

/// Neither the payload nor its base64 text (nor a recognisable piece of either) is in `text`.
fn assert_no_plaintext(text: &str, plain: &str) {
    let encoded = b64(plain);
    for needle in [plain, "PLAINTEXT-MARKER", encoded.as_str(), &encoded[..16]] {
        assert!(!text.contains(needle), "{needle:?} found in {text}");
    }
}

/// Trove's generic 500, with the id of the logged error.
fn assert_internal_error(status: u16, text: &str) {
    assert_eq!(status, 500, "{text}");
    let v: Value = serde_json::from_str(text).expect("a JSON fault body");
    let generic = Regex::new(
        r"^Internal Server Error\. Please keep this ID to help us figure out what went wrong: \([0-9a-f-]{36}\)\.$",
    )
    .unwrap();
    assert_eq!(v["instanceFault"]["code"], 500, "{v}");
    assert!(
        generic.is_match(v["instanceFault"]["message"].as_str().unwrap_or_default()),
        "{v}"
    );
}

#[tokio::test]
async fn contents_are_encrypted_at_rest() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let api = Api::new(&env);
    let encoded = b64(SECRET);
    let m = api
        .create(A, module("licence", json!({"contents": encoded})))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(m["md5"], contents_md5(&encoded));

    let stored = db_contents(&env, &id);
    // The whole row, not only the column, is free of the payload.
    assert_no_plaintext(&row_text(&env, &id), SECRET);
    // Our GCM format: "g" + key id (01, the default) + ":" + base64(nonce 12 ‖ ciphertext ‖ tag 16).
    let body = stored
        .strip_prefix("g01:")
        .unwrap_or_else(|| panic!("not the GCM format: {stored}"));
    let raw = base64::engine::general_purpose::STANDARD.decode(body)?;
    assert_eq!(raw.len(), 12 + encoded.len() + 16);
    // It really is the payload, under the configured key.
    let keys = module_keyring(&env.settings);
    assert_eq!(keys.decrypt_string(&stored)?, encoded);
    // A random nonce: the same payload never gives the same ciphertext.
    let again = api
        .create(B, module("licence", json!({"contents": encoded})))
        .await;
    let stored_b = db_contents(&env, again["id"].as_str().unwrap());
    assert_ne!(stored_b, stored);
    assert_eq!(again["md5"], m["md5"]);

    // New contents are encrypted the same way.
    let second = SECRET.replace("7f3a9c1d0e", "0e1d9c3a7f");
    let v = api
        .update_ok(A, &id, json!({"contents": b64(&second)}))
        .await;
    assert_eq!(v["md5"], contents_md5(&b64(&second)));
    let stored2 = db_contents(&env, &id);
    assert!(stored2.starts_with("g01:"), "{stored2}");
    assert_no_plaintext(&row_text(&env, &id), &second);
    assert_no_plaintext(&row_text(&env, &id), SECRET);
    // No view ever carries contents.
    let (_, list) = api.get(A, "/modules").await;
    assert_no_plaintext(&list.to_string(), SECRET);
    assert_no_plaintext(&api.show(A, &id).await.to_string(), &second);
    Ok(())
}

#[tokio::test]
async fn tampered_ciphertext_is_an_error_not_altered_contents() -> anyhow::Result<()> {
    let mut env = TestEnv::start().await?;
    env.stop_taskmanager().await;
    let api = Api::new(&env);
    let encoded = b64(SECRET);
    let m = api
        .create(
            A,
            module("secret", json!({"contents": encoded, "live_update": 1})),
        )
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let md5 = m["md5"].as_str().unwrap().to_owned();

    // Flip one character in the middle of the ciphertext body, in SQL, as a database writer could.
    let before = db_contents(&env, &id);
    let pos = 4 + (before.len() - 4) / 2;
    let old = before.as_bytes()[pos] as char;
    let new = if old == 'A' { "B" } else { "A" };
    sql_exec(
        &env,
        "UPDATE modules SET contents = overlay(contents placing $1 from $2::int for 1) WHERE id = $3",
        &[new, &(pos + 1).to_string(), &id],
    );
    let tampered = db_contents(&env, &id);
    assert_eq!(tampered.len(), before.len());
    assert_ne!(tampered, before);
    assert_eq!(
        module_keyring(&env.settings).decrypt(&tampered),
        Err(CryptoError::Authentication)
    );
    let updated = db_updated(&env, &id);

    // module-update with the same contents decrypts the stored value to compare it: an error, and the
    // tampered row is left as it is (not silently re-encrypted, which would hide the tampering).
    for contents in [encoded.clone(), payload(2)] {
        let body = serde_json::to_vec(&json!({"module": {"contents": contents}}))?;
        let (s, text) = api
            .raw(Method::PUT, A, A, &format!("/modules/{id}"), Some(body))
            .await;
        assert_internal_error(s, &text);
        assert_no_plaintext(&text, SECRET);
        assert_eq!(db_contents(&env, &id), tampered);
        assert_eq!(db_updated(&env, &id), updated);
    }

    // Instance create sends the decrypted contents to the taskmanager: refused, nothing is created.
    let body = serde_json::to_vec(&instance_body("victim", &[&id]))?;
    let (s, text) = api.raw(Method::POST, A, A, "/instances", Some(body)).await;
    assert_internal_error(s, &text);
    assert_no_plaintext(&text, SECRET);
    assert_eq!(
        sql_one(&env, "SELECT count(*)::text AS v FROM instances"),
        "0"
    );
    assert_eq!(
        sql_one(&env, "SELECT count(*)::text AS v FROM instance_modules"),
        "0"
    );
    assert_eq!(sql_one(&env, "SELECT count(*)::text AS v FROM outbox"), "0");

    // What does not need the contents still works, so the module can be inspected and removed.
    let shown = api.show(A, &id).await;
    assert_eq!(shown["md5"], md5);
    api.update_ok(A, &id, json!({"description": "tampered"}))
        .await;
    assert_eq!(db_contents(&env, &id), tampered);

    // A ciphertext that names a key we do not hold fails the same way.
    let other = api
        .create(A, module("rotated", json!({"contents": encoded})))
        .await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    sql_exec(
        &env,
        "UPDATE modules SET contents = 'g07:' || substr(contents, 5) WHERE id = $1",
        &[&other_id],
    );
    let body = serde_json::to_vec(&json!({"module": {"contents": encoded}}))?;
    let (s, text) = api
        .raw(
            Method::PUT,
            A,
            A,
            &format!("/modules/{other_id}"),
            Some(body),
        )
        .await;
    assert_internal_error(s, &text);

    assert_eq!(
        api.delete(A, &format!("/modules/{id}")).await,
        (200, Value::Null)
    );
    Ok(())
}

#[tokio::test]
async fn trove_cbc_rows_still_work() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let api = Api::new(&env);
    let m = api
        .create(A, module("legacy", json!({"live_update": 1})))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    // The row as a Trove database holds it: base64(IV ‖ AES-256-CBC(PKCS7(base64 payload))) under
    // hex(md5(module_aes_cbc_key)).
    let cbc = cbc_encrypt(
        &SecretKey::trove_cbc("module_aes_cbc_key"),
        payload(1).as_bytes(),
    );
    sql_exec(
        &env,
        "UPDATE modules SET contents = $1 WHERE id = $2",
        &[&cbc, &id],
    );
    let updated = db_updated(&env, &id);

    // Same contents: decrypting the CBC row succeeded and compared equal, so md5 and ciphertext stay.
    let v = api.update_ok(A, &id, json!({"contents": payload(1)})).await;
    assert_eq!(v["md5"], V1_MD5);
    assert_eq!(db_contents(&env, &id), cbc);
    assert_ne!(db_updated(&env, &id), updated);

    // The decrypted payload is what reaches the guest: it reports the V1 message.
    let inst = api.create_instance(A, "legacy-inst", &[&id]).await;
    let results = trove_tests::eventually(
        Duration::from_secs(90),
        "the guest applied the legacy module",
        || async {
            let (s, v) = api.get(A, &format!("/instances/{inst}/modules")).await;
            (s == 200 && v["modules"][0]["status"] == "OK").then_some(v)
        },
    )
    .await?;
    assert_eq!(results["modules"][0]["message"], "Module.V1");
    assert_eq!(results["modules"][0]["md5"], V1_MD5);

    // New contents replace the legacy row with our authenticated format.
    let v = api.update_ok(A, &id, json!({"contents": payload(2)})).await;
    assert_eq!(v["md5"], V2_MD5);
    let stored = db_contents(&env, &id);
    assert!(stored.starts_with("g01:"), "{stored}");
    assert_eq!(
        module_keyring(&env.settings).decrypt_string(&stored)?,
        payload(2)
    );
    Ok(())
}
