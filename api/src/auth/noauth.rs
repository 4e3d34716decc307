//! `auth_strategy = noauth`: development and tests without Keystone.
//!
//! The token is both the user id and the project id, so the URL tenant must equal the token; a token
//! starting with `admin` also carries the `admin` role. Anyone can claim any project this way, which
//! is why the configuration refuses it unless `allow_noauth = true`.

use super::Identity;

/// The identity a noauth token claims.
pub fn identity(token: &str) -> Identity {
    let roles = if token.starts_with("admin") {
        vec!["admin".into(), "member".into()]
    } else {
        vec!["member".into()]
    };
    Identity {
        user_id: token.to_owned(),
        project_id: token.to_owned(),
        roles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_prefix_is_admin() {
        let i = identity("admin00e46e5f7840e39012aff46a920");
        assert_eq!(i.project_id, "admin00e46e5f7840e39012aff46a920");
        assert!(i.roles.contains(&"admin".to_owned()));
        assert_eq!(identity("t1").roles, ["member"]);
    }
}
