//! Database, user and root commands: `database-create`, `database-list`, `database-delete`,
//! `user-create`, `user-list`, `user-delete`, `root-enable`, `root-show` (troveclient's
//! `v1/shell.py`, with `v1/{databases,users,root}.py` for the requests).

use anyhow::anyhow;
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use super::{array, find, Context, CLUSTER, INSTANCE};
use crate::client::{next_marker, segment, with_query, Client};
use crate::json::{Json, Object};
use crate::table::Order;

/// `trove database-create <instance> <name> [--character_set <cs>] [--collate <collate>]`.
#[derive(Debug, Args)]
pub struct DatabaseCreateArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
    /// Name of the database.
    #[arg(value_name = "name")]
    pub name: String,
    /// Optional character set for database.
    #[arg(long = "character_set", value_name = "character_set")]
    pub character_set: Option<String>,
    /// Optional collation type for database.
    #[arg(long = "collate", value_name = "collate")]
    pub collate: Option<String>,
}

/// `trove database-list <instance>` and `trove user-list <instance>`.
#[derive(Debug, Args)]
pub struct InstanceArg {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
}

/// `trove database-delete <instance> <database>`.
#[derive(Debug, Args)]
pub struct DatabaseDeleteArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
    /// Name of the database.
    #[arg(value_name = "database")]
    pub database: String,
}

/// `trove user-create <instance> <name> <password> [--host <host>] [--databases <db> ...]`.
#[derive(Debug, Args)]
pub struct UserCreateArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
    /// Name of user.
    #[arg(value_name = "name")]
    pub name: String,
    /// Password of user.
    #[arg(value_name = "password")]
    pub password: String,
    /// Optional host of user.
    #[arg(long = "host", value_name = "host")]
    pub host: Option<String>,
    /// Optional list of databases.
    #[arg(long = "databases", value_name = "databases", num_args = 1..)]
    pub databases: Vec<String>,
}

/// `trove user-delete <instance> <name> [--host <host>]`.
#[derive(Debug, Args)]
pub struct UserDeleteArgs {
    /// ID or name of the instance.
    #[arg(value_name = "instance")]
    pub instance: String,
    /// Name of user.
    #[arg(value_name = "name")]
    pub name: String,
    /// Optional host of user.
    #[arg(long = "host", value_name = "host")]
    pub host: Option<String>,
}

/// `trove root-enable <instance_or_cluster> [--root_password <root_password>]`.
#[derive(Debug, Args)]
pub struct RootEnableArgs {
    /// ID or name of the instance or cluster.
    #[arg(value_name = "instance_or_cluster")]
    pub instance_or_cluster: String,
    /// Root password to set.
    #[arg(long = "root_password", value_name = "root_password")]
    pub root_password: Option<String>,
}

/// `trove root-show <instance_or_cluster>`.
#[derive(Debug, Args)]
pub struct RootShowArgs {
    /// ID or name of the instance or cluster.
    #[arg(value_name = "instance_or_cluster")]
    pub instance_or_cluster: String,
}

/// troveclient's `_find_instance_or_cluster`: the instance, else the cluster, by id or name →
/// (URL collection, id).
fn find_instance_or_cluster(client: &Client, arg: &str) -> anyhow::Result<(&'static str, String)> {
    let id_of = |o: &Object| o.get("id").map(Json::py_str);
    if let Ok(instance) = find(client, &INSTANCE, arg) {
        if let Some(id) = id_of(&instance) {
            return Ok(("instances", id));
        }
    }
    match find(client, &CLUSTER, arg).ok().as_ref().and_then(id_of) {
        Some(id) => Ok(("clusters", id)),
        None => Err(anyhow!(
            "No instance or cluster with a name or ID of '{arg}' exists."
        )),
    }
}

/// `common.quote_user_host`: `user` or `user@host`, quoted, with `.` as `%2e`.
pub fn quote_user_host(user: &str, host: Option<&str>) -> String {
    let raw = match host.filter(|h| !h.is_empty()) {
        Some(h) => format!("{user}@{h}"),
        None => user.to_owned(),
    };
    segment(&raw).replace('.', "%2e")
}

/// Every item of a paginated listing (`_paginated`, following `next` links as the shell does).
fn list_pages(client: &Client, path: &str, key: &str) -> anyhow::Result<Vec<Json>> {
    let mut items = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let body = client.get(&with_query(path, &[("marker", marker.clone())]))?;
        items.extend(array(&body, key)?.iter().cloned());
        match next_marker(&body) {
            Some(next) if Some(&next) != marker.as_ref() => marker = Some(next),
            _ => return Ok(items),
        }
    }
}

/// `trove database-create`.
pub fn database_create(ctx: &mut Context<'_>, args: DatabaseCreateArgs) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance)?;
    let mut db = serde_json::Map::new();
    db.insert("name".into(), json!(args.name));
    if let Some(collate) = args.collate.filter(|c| !c.is_empty()) {
        db.insert("collate".into(), json!(collate));
    }
    if let Some(cs) = args.character_set.filter(|c| !c.is_empty()) {
        db.insert("character_set".into(), json!(cs));
    }
    let body = json!({"databases": [Value::Object(db)]});
    ctx.client
        .post(&format!("/{collection}/{}/databases", segment(&id)), &body)?;
    Ok(())
}

/// `trove database-list`: `print_list(databases, ['name'])`.
pub fn database_list(ctx: &mut Context<'_>, args: InstanceArg) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance)?;
    let path = format!("/{collection}/{}/databases", segment(&id));
    let dbs = list_pages(&ctx.client, &path, "databases")?;
    ctx.print_list(&dbs, &dbs, &["name"], &[], Order::First)
}

/// `trove database-delete` (the name goes in the path as typed, as troveclient sends it; only
/// what would break the path is escaped).
pub fn database_delete(ctx: &mut Context<'_>, args: DatabaseDeleteArgs) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance)?;
    ctx.client.delete(&format!(
        "/{collection}/{}/databases/{}",
        segment(&id),
        segment(&args.database)
    ))?;
    Ok(())
}

/// `trove user-create`: `databases` is always sent (possibly empty), `host` only when given.
pub fn user_create(ctx: &mut Context<'_>, args: UserCreateArgs) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance)?;
    let databases: Vec<Value> = args.databases.iter().map(|d| json!({"name": d})).collect();
    let mut user = serde_json::Map::new();
    user.insert("name".into(), json!(args.name));
    user.insert("password".into(), json!(args.password));
    user.insert("databases".into(), Value::Array(databases));
    if let Some(host) = args.host.filter(|h| !h.is_empty()) {
        user.insert("host".into(), json!(host));
    }
    let body = json!({"users": [Value::Object(user)]});
    ctx.client
        .post(&format!("/{collection}/{}/users", segment(&id)), &body)?;
    Ok(())
}

/// `trove user-list`: `print_list(users, ['name', 'host', 'databases'])`, the database names
/// joined with `, `.
pub fn user_list(ctx: &mut Context<'_>, args: InstanceArg) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance)?;
    let path = format!("/{collection}/{}/users", segment(&id));
    let users = list_pages(&ctx.client, &path, "users")?;
    let rows: Vec<Json> = users
        .iter()
        .map(|u| {
            let mut row = u.as_object().cloned().unwrap_or_default();
            let names: Vec<String> = u
                .get("databases")
                .and_then(Json::as_array)
                .unwrap_or_default()
                .iter()
                .map(|db| db.get("name").map(Json::py_str).unwrap_or_default())
                .collect();
            row.insert("databases", names.join(", "));
            Json::Object(row)
        })
        .collect();
    ctx.print_list(
        &users,
        &rows,
        &["name", "host", "databases"],
        &[],
        Order::First,
    )
}

/// `trove user-delete`.
pub fn user_delete(ctx: &mut Context<'_>, args: UserDeleteArgs) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance)?;
    let user = quote_user_host(&args.name, args.host.as_deref());
    ctx.client
        .delete(&format!("/{collection}/{}/users/{user}", segment(&id)))?;
    Ok(())
}

/// `trove root-enable`: `print_dict({'name': .., 'password': ..})`. The body is
/// `{"password": ..}` only when a password is given; otherwise the POST has no body.
pub fn root_enable(ctx: &mut Context<'_>, args: RootEnableArgs) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance_or_cluster)?;
    let path = format!("/{collection}/{}/root", segment(&id));
    let response = match args.root_password.filter(|p| !p.is_empty()) {
        Some(password) => ctx.client.post(&path, &json!({"password": password}))?,
        None => ctx.client.send(Method::POST, &path, None)?,
    };
    let user = response
        .body
        .as_ref()
        .and_then(|b| b.get("user"))
        .ok_or_else(|| anyhow!("Invalid response: no 'user' object in the body"))?;
    let mut d = Object::new();
    d.insert("name", user.get("name").cloned().unwrap_or(Json::Null));
    d.insert(
        "password",
        user.get("password").cloned().unwrap_or(Json::Null),
    );
    ctx.print_dict(&d)
}

/// `trove root-show`: `print_dict({'is_root_enabled': rootEnabled})`.
pub fn root_show(ctx: &mut Context<'_>, args: RootShowArgs) -> anyhow::Result<()> {
    let (collection, id) = find_instance_or_cluster(&ctx.client, &args.instance_or_cluster)?;
    let body = ctx
        .client
        .get(&format!("/{collection}/{}/root", segment(&id)))?;
    let mut d = Object::new();
    d.insert(
        "is_root_enabled",
        body.get("rootEnabled").cloned().unwrap_or(Json::Null),
    );
    ctx.print_dict(&d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{print_dict, print_list};

    #[test]
    fn user_ids_are_quoted_as_troveclient_does() {
        assert_eq!(quote_user_host("bob", None), "bob");
        assert_eq!(quote_user_host("bob", Some("%")), "bob%40%25");
        assert_eq!(
            quote_user_host("bob", Some("10.0.0.1")),
            "bob%4010%2e0%2e0%2e1"
        );
    }

    #[test]
    fn tables_match_troveclient() {
        let rows = Json::parse(r#"[{"name": "db2"}, {"name": "db1"}]"#).expect("json");
        assert_eq!(
            print_list(
                rows.as_array().expect("array"),
                &["name"],
                &[],
                Order::First
            ),
            "+------+\n| Name |\n+------+\n| db1  |\n| db2  |\n+------+\n"
        );
        let users = Json::parse(r#"[{"name": "bob", "host": "%", "databases": "db1, db2"}]"#)
            .expect("json");
        assert_eq!(
            print_list(
                users.as_array().expect("array"),
                &["name", "host", "databases"],
                &[],
                Order::First
            ),
            "+------+------+-----------+\n\
             | Name | Host | Databases |\n\
             +------+------+-----------+\n\
             | bob  | %    | db1, db2  |\n\
             +------+------+-----------+\n"
        );
        let mut d = Object::new();
        d.insert("is_root_enabled", true);
        assert_eq!(
            print_dict(&d),
            "+-----------------+-------+\n\
             | Property        | Value |\n\
             +-----------------+-------+\n\
             | is_root_enabled | True  |\n\
             +-----------------+-------+\n"
        );
    }
}
