//! Pure module rules shared by the api and the taskmanager.

use md5::{Digest, Md5};

/// Trove's module md5: the hex md5 of the **base64 text** of the payload (docs/module-semantics.md §4), not of
/// the decoded bytes.
pub fn contents_md5(contents_b64: &str) -> String {
    hex::encode(Md5::digest(contents_b64.as_bytes()))
}

/// Why a module cannot go on an instance of some datastore (docs/module-semantics.md §9 step 3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleMismatch {
    /// Note the two spaces before the parenthesis: that is Trove's text.
    #[error(
        "Module '{name}' cannot be applied  (Wrong datastore '{module}' - expected '{expected}')"
    )]
    Datastore {
        name: String,
        module: String,
        expected: String,
    },
    #[error("Module '{name}' cannot be applied  (Wrong datastore version '{module}' - expected '{expected}')")]
    Version {
        name: String,
        module: String,
        expected: String,
    },
}

/// Checks a module's datastore binding against an instance's datastore and version ids.
pub fn check_datastore(
    name: &str,
    module_ds: Option<&str>,
    module_ver: Option<&str>,
    ds_id: &str,
    ver_id: &str,
) -> Result<(), ModuleMismatch> {
    if let Some(m) = module_ds.filter(|m| *m != ds_id) {
        return Err(ModuleMismatch::Datastore {
            name: name.into(),
            module: m.into(),
            expected: ds_id.into(),
        });
    }
    if let Some(m) = module_ver.filter(|m| *m != ver_id) {
        return Err(ModuleMismatch::Version {
            name: name.into(),
            module: m.into(),
            expected: ver_id.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// The walkthrough's four payloads, `echo "message=Module.Vn" > pingn.dat`.
    #[test]
    fn md5_matches_trove_for_the_walkthrough_payloads() {
        let expect = [
            ("V1", "7f700cc7b99606615f8b51946f6d3228"),
            ("V2", "ba7c204979c8de54be6efb70a17d40b9"),
            ("V3", "869744bdd18e306a96c145df562065ab"),
            ("V4", "6e2c81c1547d640b4c6e7752ed0e33ab"),
        ];
        for (v, md5) in expect {
            let b64 =
                base64::engine::general_purpose::STANDARD.encode(format!("message=Module.{v}\n"));
            assert_eq!(contents_md5(&b64), md5, "{v}");
        }
    }

    #[test]
    fn mismatch_texts_have_two_spaces() {
        let e = check_datastore("m", Some("a"), None, "b", "v").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Module 'm' cannot be applied  (Wrong datastore 'a' - expected 'b')"
        );
        let e = check_datastore("m", None, Some("x"), "b", "v").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Module 'm' cannot be applied  (Wrong datastore version 'x' - expected 'v')"
        );
        assert!(check_datastore("m", Some("b"), Some("v"), "b", "v").is_ok());
        assert!(check_datastore("m", None, None, "b", "v").is_ok());
    }
}
