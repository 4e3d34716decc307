//! The `mysql` manager: one MariaDB server per instance (MariaDB stands in for MySQL 5.6; the datastore
//! keeps Trove's names).
//!
//! `prepare`:
//! 1. a data directory: copied from the host's template for this server version when the guest has a
//!    `template_dir` (made once with `mariadb-install-db`, then renamed into place, so concurrent
//!    guests never see half a template), else initialised in place with `mariadb-install-db`;
//! 2. `<state_dir>/my.cnf`: its own port, address and socket, and a small footprint (16 MiB buffer
//!    pool, 8 MiB redo log, no performance schema, no native AIO: a host runs many of these);
//! 3. the first start runs an init file (0600, removed once the server answers) that creates the
//!    guest's own `os_admin@localhost` and sets `root@localhost`'s password (the one `prepare` carries,
//!    else a random one: root stays disabled until `root-enable`), as Trove's guest secures a fresh
//!    server; nobody can log in without a password while the server listens;
//! 4. once `SELECT 1` answers as `os_admin` over the socket, the databases and users `prepare` carries.
//!
//! Database, user and root calls are Trove's: users are `'name'@'host'` (`%` by default) with
//! `ALL PRIVILEGES` on their databases; `root-enable` creates `root@'%'` with every privilege. Names are
//! checked by the api; here they are only quoted, never trusted.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use mysql_async::prelude::Queryable as _;
use serde_json::{json, Value};
use trove_common::rpc::guest::{DatabaseSpec, PageQuery, Prepare, UserSpec};

use super::server::Server;
use super::{
    ensure_dir, generate_password, io_err, listing, paginate, wait_until_answering, Datastore,
    DatastoreConfig, DatastoreError, Secrets, STOP_GRACE,
};

/// MySQL's standard port, for a guest given none.
pub const DEFAULT_PORT: u16 = 3306;
/// The guest's own account (Trove's name).
pub const ADMIN_USER: &str = "os_admin";
/// Schemas the server keeps for itself: never listed, created or dropped through the API.
pub const SYSTEM_DATABASES: &[&str] = &[
    "mysql",
    "information_schema",
    "performance_schema",
    "sys",
    "lost+found",
    "#mysql50#lost+found",
];
/// Accounts the API never lists or touches (Trove's `ignore_users`).
pub const SYSTEM_USERS: &[&str] = &["os_admin", "root", "mariadb.sys", "mysql"];
/// Trove's defaults for a new database.
pub const DEFAULT_CHARACTER_SET: &str = "utf8";
pub const DEFAULT_COLLATE: &str = "utf8_general_ci";

const SERVER_NAMES: &[&str] = &["mariadbd", "mysqld"];
const SOCKET: &str = "mysqld.sock";
const INSTALL_NAMES: &[&str] = &["mariadb-install-db", "mysql_install_db"];
/// A query's budget for health checks and connects.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Mysql {
    cfg: DatastoreConfig,
    server: Server,
    conn: tokio::sync::Mutex<Option<mysql_async::Conn>>,
}

impl Mysql {
    pub fn new(cfg: DatastoreConfig) -> Self {
        let defaults = format!("--defaults-file={}", cfg.state_dir.join("my.cnf").display());
        let server = cfg.server(SERVER_NAMES, vec![OsString::from(defaults)]);
        Self {
            cfg,
            server,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    fn socket(&self) -> PathBuf {
        self.cfg.socket(SOCKET)
    }

    fn init_file(&self) -> PathBuf {
        self.cfg.state_dir.join("init.sql")
    }

    fn binary(&self, names: &[&str]) -> Result<PathBuf, DatastoreError> {
        self.cfg.binary(names)
    }

    /// A kept connection as `os_admin` over the socket; forgotten on any error.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, DatastoreError>
    where
        F: for<'c> FnOnce(
            &'c mut mysql_async::Conn,
        ) -> BoxFuture<'c, Result<T, mysql_async::Error>>,
    {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            let secrets = Secrets::load(&self.cfg)?;
            let Some(pw) = secrets.admin_password else {
                return Err(DatastoreError::Server(
                    "the server has not been set up yet (no os_admin password)".into(),
                ));
            };
            let opts = mysql_async::OptsBuilder::default()
                .socket(Some(self.socket().to_string_lossy().into_owned()))
                .user(Some(ADMIN_USER))
                .pass(Some(pw))
                .stmt_cache_size(0);
            let conn = tokio::time::timeout(QUERY_TIMEOUT, mysql_async::Conn::new(opts))
                .await
                .map_err(|_| DatastoreError::Server("connecting to mariadbd timed out".into()))?
                .map_err(sql_err)?;
            *slot = Some(conn);
        }
        let conn = slot.as_mut().expect("connected above");
        match tokio::time::timeout(QUERY_TIMEOUT * 6, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let server_said = matches!(e, mysql_async::Error::Server(_));
                if !server_said {
                    *slot = None;
                }
                Err(sql_err(e))
            }
            Err(_) => {
                *slot = None;
                Err(DatastoreError::Server("the query timed out".into()))
            }
        }
    }

    /// Runs statements in order on the kept connection.
    async fn exec(&self, statements: Vec<String>) -> Result<(), DatastoreError> {
        self.with_conn(move |c| {
            Box::pin(async move {
                for s in &statements {
                    c.query_drop(s.as_str()).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn ping_once(&self) -> Result<(), DatastoreError> {
        let one: Option<i64> = self
            .with_conn(|c| Box::pin(c.query_first("SELECT 1")))
            .await?;
        match one {
            Some(1) => Ok(()),
            other => Err(DatastoreError::Server(format!(
                "SELECT 1 answered {other:?}"
            ))),
        }
    }

    /// `mariadbd --version` → `10.11.19-MariaDB...`: names the template, so an upgraded server gets a
    /// fresh one.
    async fn server_version(&self, server: &Path) -> Result<String, DatastoreError> {
        let out = tokio::process::Command::new(server)
            .arg("--version")
            .output()
            .await
            .map_err(|e| DatastoreError::Server(format!("{}: {e}", server.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .skip_while(|w| *w != "Ver")
            .nth(1)
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .collect::<String>();
        Ok(version)
    }

    /// The instance's own directory for the server's temporary files. MariaDB names them after
    /// its thread ids, so two servers sharing `/tmp` (two guests making the host's template at once)
    /// remove each other's and fail.
    fn tmp_dir(&self) -> Result<std::path::PathBuf, DatastoreError> {
        let dir = self.cfg.state_dir.join("tmp");
        ensure_dir(&dir)?;
        Ok(dir)
    }

    async fn install_db(&self, target: &Path) -> Result<(), DatastoreError> {
        let install = self.binary(INSTALL_NAMES)?;
        ensure_dir(target)?;
        let tmp = self.tmp_dir()?;
        let mut cmd = tokio::process::Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", target.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg("--innodb-log-file-size=8M")
            .arg("--innodb-buffer-pool-size=16M")
            .stdin(std::process::Stdio::null());
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--user=root");
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| DatastoreError::Server(format!("{}: {e}", install.display())))?;
        if !out.status.success() {
            let mut why = String::from_utf8_lossy(&out.stderr).into_owned();
            if why.trim().is_empty() {
                why = String::from_utf8_lossy(&out.stdout).into_owned();
            }
            let tail: Vec<&str> = why.lines().rev().take(5).collect();
            return Err(DatastoreError::Server(format!(
                "{} failed ({}): {}",
                install.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
        Ok(())
    }

    /// A fresh data directory at `data`: from the host's template when there is one, else made here.
    async fn initialise_data(&self, data: &Path) -> Result<(), DatastoreError> {
        let server = self.binary(SERVER_NAMES)?;
        if data.exists() {
            std::fs::remove_dir_all(data).map_err(io_err("removing", data))?;
        }
        let templates = &self.cfg.template_dir;
        if templates.as_os_str().is_empty() {
            return self.install_db(data).await;
        }
        let version = self.server_version(&server).await?;
        let template = templates.join(format!("mariadb-{version}"));
        if !template.is_dir() {
            ensure_dir(templates)?;
            let tmp = templates.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
            let made = self.install_db(&tmp).await;
            if made.is_ok() {
                // Another guest may have won the race: theirs stays, ours goes.
                if std::fs::rename(&tmp, &template).is_ok() {
                    tracing::info!(template = %template.display(), "mysql data template created");
                }
            }
            let _ = std::fs::remove_dir_all(&tmp);
            made?;
        }
        let out = tokio::process::Command::new("cp")
            .arg("-a")
            .arg(template.join("."))
            .arg(data)
            .output()
            .await
            .map_err(|e| DatastoreError::Server(format!("cp: {e}")))?;
        if !out.status.success() {
            return Err(DatastoreError::Server(format!(
                "copying the data template {}: {}",
                template.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn write_conf(&self) -> Result<(), DatastoreError> {
        let socket = self.cfg.checked_socket(SOCKET)?;
        let conf = render_conf(
            &self.cfg.data_dir(),
            &self.cfg.bind_host,
            self.cfg.port_or(DEFAULT_PORT),
            &socket,
            &self.cfg.record_path("mariadbd.pid"),
            &self.tmp_dir()?,
            nix::unistd::geteuid().is_root(),
        );
        let path = self.cfg.state_dir.join("my.cnf");
        crate::state::write_atomic(&path, conf.as_bytes()).map_err(io_err("writing", &path))
    }

    async fn start_server(&self, extra: &[OsString]) -> Result<(), DatastoreError> {
        if self.server.adopt().is_none() {
            self.binary(SERVER_NAMES)?;
            self.server
                .spawn(extra)
                .map_err(|e| DatastoreError::Server(format!("cannot start mariadbd: {e}")))?;
        }
        *self.conn.lock().await = None;
        wait_until_answering(&self.server, self.cfg.start_timeout, || self.ping_once()).await
    }

    async fn first_start(&self, root_password: Option<&str>) -> Result<(), DatastoreError> {
        let mut secrets = Secrets::load(&self.cfg)?;
        let admin = generate_password();
        let root = root_password
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(generate_password);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let mut sql = String::new();
        let _ = writeln!(
            sql,
            "CREATE USER IF NOT EXISTS {a}@'localhost' IDENTIFIED BY {p};",
            a = sql_str(ADMIN_USER),
            p = sql_str(&admin)
        );
        let _ = writeln!(
            sql,
            "GRANT ALL PRIVILEGES ON *.* TO {a}@'localhost' WITH GRANT OPTION;",
            a = sql_str(ADMIN_USER)
        );
        let _ = writeln!(
            sql,
            "ALTER USER 'root'@'localhost' IDENTIFIED BY {};",
            sql_str(&root)
        );
        for h in ["127.0.0.1", "::1", host.as_str()] {
            if !h.is_empty() && h != "localhost" {
                let _ = writeln!(sql, "DROP USER IF EXISTS 'root'@{h};", h = sql_str(h));
                let _ = writeln!(sql, "DROP USER IF EXISTS ''@{h};", h = sql_str(h));
            }
        }
        sql.push_str("DROP USER IF EXISTS ''@'localhost';\n");
        sql.push_str("FLUSH PRIVILEGES;\n");
        let init = self.init_file();
        crate::state::write_atomic(&init, sql.as_bytes()).map_err(io_err("writing", &init))?;
        secrets.admin_password = Some(admin);
        secrets.password = Some(root);
        secrets.save(&self.cfg)?;
        let started = self
            .start_server(&[OsString::from(format!("--init-file={}", init.display()))])
            .await;
        let _ = std::fs::remove_file(&init);
        started
    }
}

fn sql_err(e: mysql_async::Error) -> DatastoreError {
    match e {
        mysql_async::Error::Server(s) => {
            DatastoreError::BadRequest(format!("{} ({})", s.message, s.code))
        }
        other => DatastoreError::Server(format!("mariadb: {other}")),
    }
}

/// A string literal: quotes doubled, backslashes escaped.
pub fn sql_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An identifier: backticks doubled.
pub fn sql_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// A character set or collation name: letters, digits and `_` only.
fn charset_word(v: Option<&str>, default: &str) -> Result<String, DatastoreError> {
    let v = v.filter(|s| !s.is_empty()).unwrap_or(default);
    if v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(v.to_owned())
    } else {
        Err(DatastoreError::BadRequest(format!(
            "'{v}' is not a valid character set or collation"
        )))
    }
}

/// ` CHARACTER SET .. COLLATE ..` for a new database: Trove's defaults when neither is given; with
/// only one, the server picks the other (a set's default collation, a collation's set).
fn charset_clause(cs: Option<&str>, coll: Option<&str>) -> Result<String, DatastoreError> {
    let cs = cs.filter(|s| !s.is_empty());
    let coll = coll.filter(|s| !s.is_empty());
    Ok(match (cs, coll) {
        (None, None) => format!(" CHARACTER SET {DEFAULT_CHARACTER_SET} COLLATE {DEFAULT_COLLATE}"),
        (Some(cs), None) => format!(" CHARACTER SET {}", charset_word(Some(cs), "")?),
        (None, Some(coll)) => format!(" COLLATE {}", charset_word(Some(coll), "")?),
        (Some(cs), Some(coll)) => format!(
            " CHARACTER SET {} COLLATE {}",
            charset_word(Some(cs), "")?,
            charset_word(Some(coll), "")?
        ),
    })
}

fn check_name(kind: &str, name: &str) -> Result<(), DatastoreError> {
    if name.is_empty() || name.contains('\0') || name.len() > 64 {
        return Err(DatastoreError::BadRequest(format!(
            "'{name}' is not a valid {kind} name"
        )));
    }
    Ok(())
}

/// The server's option file.
pub fn render_conf(
    data: &Path,
    bind_host: &str,
    port: u16,
    socket: &Path,
    pid_file: &Path,
    tmp_dir: &Path,
    as_root: bool,
) -> String {
    let mut out = String::new();
    out.push_str("# Written by trove-guestagent at prepare.\n[mysqld]\n");
    if as_root {
        // mariadbd refuses to run as root unless told to; the guest's user owns the data.
        out.push_str("user = root\n");
    }
    let _ = writeln!(out, "datadir = {}", data.display());
    let _ = writeln!(out, "port = {port}");
    let _ = writeln!(out, "bind-address = {bind_host}");
    let _ = writeln!(out, "socket = {}", socket.display());
    let _ = writeln!(out, "pid-file = {}", pid_file.display());
    // Temporary tables in the instance's own directory, not the host's shared /tmp.
    let _ = writeln!(out, "tmpdir = {}", tmp_dir.display());
    out.push_str(
        "skip-name-resolve\n\
         innodb_buffer_pool_size = 16M\n\
         innodb_log_file_size = 8M\n\
         innodb_use_native_aio = 0\n\
         performance_schema = OFF\n\
         max_connections = 100\n\
         table_open_cache = 200\n\
         key_buffer_size = 1M\n\
         thread_cache_size = 4\n\
         character-set-server = utf8mb4\n\
         collation-server = utf8mb4_general_ci\n",
    );
    out
}

/// `(User, Host)` of `mysql.user`.
type Account = (String, String);
/// `(User, Host, Db)` of `mysql.db`.
type Grant = (String, String, String);

fn database_value(name: String, cs: Option<String>, coll: Option<String>) -> Value {
    json!({"_name": name, "_character_set": cs, "_collate": coll})
}

impl Datastore for Mysql {
    fn manager(&self) -> &str {
        &self.cfg.manager
    }

    fn server(&self) -> &Server {
        &self.server
    }

    fn prepare<'a>(&'a self, args: &'a Prepare) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            self.binary(SERVER_NAMES)?;
            let databases: Vec<DatabaseSpec> = args
                .databases
                .iter()
                .map(|d| serde_json::from_value(d.clone()))
                .collect::<Result<_, _>>()
                .map_err(|e| DatastoreError::BadRequest(format!("prepare's databases: {e}")))?;
            let users: Vec<UserSpec> = args
                .users
                .iter()
                .map(|u| serde_json::from_value(u.clone()))
                .collect::<Result<_, _>>()
                .map_err(|e| DatastoreError::BadRequest(format!("prepare's users: {e}")))?;
            ensure_dir(&self.cfg.state_dir.join(super::DATASTORE_DIR))?;
            self.write_conf()?;
            let data = self.cfg.data_dir();
            let set_up =
                Secrets::load(&self.cfg)?.admin_password.is_some() && data.join("mysql").is_dir();
            if set_up {
                // A prepare delivered again after a crash half-way: the server was set up already.
                self.start_server(&[]).await?;
            } else {
                self.server.stop(STOP_GRACE).await.ok();
                self.initialise_data(&data).await?;
                self.first_start(args.root_password.as_deref()).await?;
            }
            if !databases.is_empty() {
                self.create_databases(&databases).await?;
            }
            if !users.is_empty() {
                self.create_users(&users).await?;
            }
            Ok(())
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(async move {
            self.write_conf()?;
            self.start_server(&[]).await
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(self.ping_once())
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), DatastoreError>> {
        Box::pin(async move {
            if let Some(conn) = self.conn.lock().await.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
            }
            self.server
                .stop(STOP_GRACE)
                .await
                .map_err(|e| DatastoreError::Server(format!("cannot stop mariadbd: {e}")))
        })
    }

    fn create_databases<'a>(
        &'a self,
        databases: &'a [DatabaseSpec],
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            let mut statements = Vec::with_capacity(databases.len());
            for db in databases {
                check_name("database", &db.name)?;
                statements.push(format!(
                    "CREATE DATABASE IF NOT EXISTS {}{}",
                    sql_ident(&db.name),
                    charset_clause(db.character_set.as_deref(), db.collate.as_deref())?
                ));
            }
            self.exec(statements).await?;
            tracing::info!(count = databases.len(), "databases created");
            Ok(())
        })
    }

    fn list_databases<'a>(
        &'a self,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<Value, DatastoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, Option<String>, Option<String>)> = self
                .with_conn(|c| {
                    Box::pin(c.query(
                        "SELECT schema_name, default_character_set_name, default_collation_name \
                         FROM information_schema.schemata ORDER BY schema_name",
                    ))
                })
                .await?;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|(n, _, _)| !SYSTEM_DATABASES.contains(&n.as_str()))
                .collect();
            let (rows, next) = paginate(&rows, |r| r.0.clone(), page);
            let items = rows
                .into_iter()
                .map(|(n, cs, coll)| database_value(n, cs, coll))
                .collect();
            Ok(listing(items, next))
        })
    }

    fn delete_database<'a>(
        &'a self,
        database: &'a DatabaseSpec,
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            check_name("database", &database.name)?;
            if SYSTEM_DATABASES.contains(&database.name.as_str()) {
                return Err(DatastoreError::BadRequest(format!(
                    "'{}' is a system database",
                    database.name
                )));
            }
            self.exec(vec![format!(
                "DROP DATABASE IF EXISTS {}",
                sql_ident(&database.name)
            )])
            .await
        })
    }

    fn create_users<'a>(
        &'a self,
        users: &'a [UserSpec],
    ) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            let mut statements = Vec::new();
            for u in users {
                check_name("user", &u.name)?;
                let host = u.host.as_deref().filter(|h| !h.is_empty()).unwrap_or("%");
                let Some(pw) = u.password.as_deref() else {
                    return Err(DatastoreError::BadRequest(format!(
                        "user '{}' has no password",
                        u.name
                    )));
                };
                let account = format!("{}@{}", sql_str(&u.name), sql_str(host));
                statements.push(format!(
                    "CREATE USER {account} IDENTIFIED BY {}",
                    sql_str(pw)
                ));
                for db in &u.databases {
                    check_name("database", &db.name)?;
                    statements.push(format!(
                        "GRANT ALL PRIVILEGES ON {}.* TO {account}",
                        sql_ident(&db.name)
                    ));
                }
            }
            self.exec(statements).await?;
            tracing::info!(count = users.len(), "users created");
            Ok(())
        })
    }

    fn list_users<'a>(
        &'a self,
        page: &'a PageQuery,
    ) -> BoxFuture<'a, Result<Value, DatastoreError>> {
        Box::pin(async move {
            let (users, grants): (Vec<Account>, Vec<Grant>) = self
                .with_conn(|c| {
                    Box::pin(async move {
                        let users = c
                            .query("SELECT User, Host FROM mysql.user WHERE Host <> 'localhost' ORDER BY User, Host")
                            .await?;
                        let grants = c
                            .query("SELECT User, Host, Db FROM mysql.db ORDER BY Db")
                            .await?;
                        Ok((users, grants))
                    })
                })
                .await?;
            let users: Vec<(String, String)> = users
                .into_iter()
                .filter(|(u, _)| !u.is_empty() && !SYSTEM_USERS.contains(&u.as_str()))
                .collect();
            let (users, next) = paginate(&users, |(u, h)| format!("{u}@{h}"), page);
            let items = users
                .into_iter()
                .map(|(u, h)| {
                    let dbs: Vec<Value> = grants
                        .iter()
                        .filter(|(gu, gh, _)| *gu == u && *gh == h)
                        .map(|(_, _, db)| json!({"_name": db}))
                        .collect();
                    json!({"_name": u, "_host": h, "_databases": dbs})
                })
                .collect();
            Ok(listing(items, next))
        })
    }

    fn delete_user<'a>(&'a self, user: &'a UserSpec) -> BoxFuture<'a, Result<(), DatastoreError>> {
        Box::pin(async move {
            check_name("user", &user.name)?;
            let host = user
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .unwrap_or("%");
            self.exec(vec![format!(
                "DROP USER IF EXISTS {}@{}",
                sql_str(&user.name),
                sql_str(host)
            )])
            .await
        })
    }

    fn enable_root<'a>(
        &'a self,
        password: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Value, DatastoreError>> {
        Box::pin(async move {
            let password = password
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(generate_password);
            let pw = sql_str(&password);
            self.exec(vec![
                format!("CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY {pw}"),
                format!("ALTER USER 'root'@'%' IDENTIFIED BY {pw}"),
                "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION".into(),
            ])
            .await?;
            tracing::info!("root enabled");
            Ok(json!({"_name": "root", "_host": "%", "_password": password, "_databases": []}))
        })
    }

    fn is_root_enabled(&self) -> BoxFuture<'_, Result<bool, DatastoreError>> {
        Box::pin(async move {
            let n: Option<i64> = self
                .with_conn(|c| {
                    Box::pin(c.query_first(
                        "SELECT COUNT(*) FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'",
                    ))
                })
                .await?;
            Ok(n.unwrap_or(0) > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted() {
        assert_eq!(sql_str("it's"), "'it''s'");
        assert_eq!(sql_str("a\\b"), "'a\\\\b'");
        assert_eq!(sql_ident("we`ird"), "`we``ird`");
        assert!(charset_word(Some("utf8; DROP"), "x").is_err());
        assert_eq!(charset_word(None, "utf8").unwrap(), "utf8");
        assert_eq!(
            charset_clause(None, None).unwrap(),
            " CHARACTER SET utf8 COLLATE utf8_general_ci"
        );
        assert_eq!(
            charset_clause(Some("latin1"), None).unwrap(),
            " CHARACTER SET latin1"
        );
        assert_eq!(
            charset_clause(None, Some("utf8mb4_bin")).unwrap(),
            " COLLATE utf8mb4_bin"
        );
        assert!(charset_clause(Some("x;y"), None).is_err());
    }

    #[test]
    fn the_option_file_is_small_and_private_to_the_instance() {
        let conf = render_conf(
            Path::new("/s/data"),
            "127.0.0.1",
            10002,
            Path::new("/s/mysqld.sock"),
            Path::new("/s/datastore/mariadbd.pid"),
            Path::new("/s/tmp"),
            true,
        );
        for line in [
            "user = root",
            "tmpdir = /s/tmp",
            "datadir = /s/data",
            "port = 10002",
            "bind-address = 127.0.0.1",
            "socket = /s/mysqld.sock",
            "innodb_buffer_pool_size = 16M",
            "performance_schema = OFF",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing:\n{conf}");
        }
        assert!(conf.starts_with("# Written"));
    }
}
