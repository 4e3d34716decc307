//! Databases, users and root, shaped like Trove's `extensions/common/views.py` (and
//! `extensions/redis/views.py` for redis root).

use serde_json::{json, Value};
use trove_common::rpc::guest::{DatabaseSpec, UserSpec};

/// `SchemasView`: `{"databases": [{"name": ..}]}`.
pub fn databases(dbs: &[DatabaseSpec]) -> Value {
    let items: Vec<Value> = dbs.iter().map(|d| json!({"name": d.name})).collect();
    json!({ "databases": items })
}

/// `UsersView`: `{"users": [{"name", "host", "databases": [{"name"}]}]}`.
pub fn users(users: &[UserSpec]) -> Value {
    let items: Vec<Value> = users
        .iter()
        .map(|u| {
            let dbs: Vec<Value> = u
                .databases
                .iter()
                .map(|d| json!({"name": d.name}))
                .collect();
            json!({"name": u.name, "host": u.host.as_deref().unwrap_or("%"), "databases": dbs})
        })
        .collect();
    json!({ "users": items })
}

/// `RootCreatedView`: `{"user": {"name", "password"}}`; redis (`RedisRootCreatedView`) adds
/// `failed_slaves`.
pub fn root_created(user: &UserSpec, failed_slaves: Option<&[String]>) -> Value {
    let mut body = json!({"user": {"name": user.name, "password": user.password}});
    if let Some(failed) = failed_slaves {
        body["failed_slaves"] = json!(failed);
    }
    body
}

/// `RootEnabledView`: `{"rootEnabled": bool}`.
pub fn root_enabled(enabled: bool) -> Value {
    json!({ "rootEnabled": enabled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_trove_shaped() {
        let db = DatabaseSpec {
            name: "db1".into(),
            character_set: Some("utf8mb4".into()),
            collate: None,
        };
        assert_eq!(
            databases(std::slice::from_ref(&db)),
            json!({"databases": [{"name": "db1"}]})
        );
        let u = UserSpec {
            name: "bob".into(),
            host: None,
            password: Some("secret".into()),
            databases: vec![db],
        };
        assert_eq!(
            users(std::slice::from_ref(&u)),
            json!({"users": [{"name": "bob", "host": "%", "databases": [{"name": "db1"}]}]})
        );
        let root = UserSpec {
            name: "root".into(),
            host: Some("%".into()),
            password: Some("pw".into()),
            databases: vec![],
        };
        assert_eq!(
            root_created(&root, None),
            json!({"user": {"name": "root", "password": "pw"}})
        );
        assert_eq!(
            root_created(&root, Some(&[])),
            json!({"user": {"name": "root", "password": "pw"}, "failed_slaves": []})
        );
        assert_eq!(root_enabled(true), json!({"rootEnabled": true}));
    }
}
