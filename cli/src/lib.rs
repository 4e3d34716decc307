#![doc = include_str!("../README.md")]
//!
//! ## Crate layout
//!
//! - [`commands`]: the clap definitions ([`Cli`]) and one module per resource;
//! - [`client`]: the blocking HTTP client and Trove's fault bodies;
//! - [`auth`]: endpoint, token and roles from flags and environment (Keystone can slot in here);
//! - [`table`]: prettytable-compatible `print_list` / `print_dict`;
//! - [`json`]: an order-preserving JSON value and Python's `str()` / `json.dumps` spellings.
//!
//! The binary calls [`execute`]; tests can run the whole CLI in-process with [`run`], giving it
//! the arguments, an environment map and two writers.

pub mod auth;
pub mod client;
pub mod commands;
pub mod json;
pub mod table;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

pub use auth::{Env, ProcessEnv};
pub use commands::Cli;

/// Where a run writes: stdout gets the tables and the commands' own lines, stderr everything
/// else.
pub struct Io<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error.
    pub err: &'a mut dyn Write,
    /// Whether stderr is a terminal (progress bars are drawn only then).
    pub err_is_tty: bool,
}

/// Whether an environment flag such as `OS_JSON_OUTPUT` is on: set, and not `0`, `false`, `no`
/// or `off`.
fn env_flag(env: &dyn Env, name: &str) -> bool {
    env.var(name).is_some_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

/// Runs a parsed command line. Errors come back for the caller to print as
/// `ERROR: <message>` (see [`error_message`]).
pub fn execute(cli: Cli, env: &dyn Env, io: Io<'_>) -> anyhow::Result<()> {
    let session = auth::resolve(&cli.global.auth_args(), env)?;
    let debug = cli.global.debug || env_flag(env, "TROVECLIENT_DEBUG");
    let client = client::Client::new(&session, debug)?;
    let mut ctx = commands::Context {
        client,
        is_admin: session.is_admin(),
        json: cli.global.json || env_flag(env, "OS_JSON_OUTPUT"),
        out: io.out,
        err: io.err,
        err_is_tty: io.err_is_tty,
        env,
    };
    let result = commands::dispatch(&mut ctx, cli.command);
    ctx.out.flush()?;
    result
}

/// The text after `ERROR: ` for a failed run: the error and its causes, joined by `: `.
pub fn error_message(error: &anyhow::Error) -> String {
    format!("{error:#}")
}

/// Runs the CLI in-process as the binary would, and returns its exit code: 0 on success, 1 after
/// printing `ERROR: <message>` on `err`, 2 for a usage error (clap's message on `err`; `--help`
/// and `--version` print on `out` and return 0).
pub fn run<I, T>(args: I, env: &dyn Env, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let target: &mut dyn Write = if e.use_stderr() { err } else { out };
            // A failed write of the usage text leaves nothing better to report.
            let _ = target.write_all(text.as_bytes());
            return e.exit_code();
        }
    };
    let io = Io {
        out,
        err: &mut *err,
        err_is_tty: false,
    };
    match execute(cli, env, io) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "ERROR: {}", error_message(&e));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::Command;

    fn parse(line: &str) -> Cli {
        let argv = std::iter::once("trove").chain(line.split_whitespace());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("`{line}` does not parse: {e}"))
    }

    #[test]
    fn every_walkthrough_command_line_parses() {
        let lines = [
            "module-create mymod ping ping1.dat --live_update --datastore mysql",
            "create myinst 15 --size 1 --module mymod --datastore mysql",
            "module-query myinst",
            "module-instance-count mymod",
            "module-instances mymod",
            "module-update mymod --file ping2.dat",
            "cluster-create myclust redis 3.2.6 --instance=flavor=15,volume=1,module=mymod \
             --instance=flavor=15,volume=1,module=mymod --instance=flavor=15,volume=1,module=mymod",
            "module-instance-count mymod --include_clustered",
            "cluster-instances myclust",
            "module-apply 393462d5-906d-4214-af0d-538b7f618b2d mymod",
            "create myinst_2 15 --size 1 --module mymod",
            "list",
            "module-reapply mymod --md5=869744bdd18e306a96c145df562065ab --include_clustered",
            "module-reapply mymod --md5=6e2c81c1547d640b4c6e7752ed0e33ab --include_clustered --force",
            "module-reapply mymod --include_clustered --batch_size=1 --delay=3",
        ];
        for line in lines {
            parse(line);
        }
        let Command::ClusterCreate(args) = parse(lines[6]).command else {
            panic!("expected cluster-create");
        };
        assert_eq!(args.instances, vec!["flavor=15,volume=1,module=mymod"; 3]);
    }

    #[test]
    fn hyphen_alias_globals_and_infer() {
        let cli = parse("list --include-clustered --json");
        assert!(cli.global.json);
        let Command::List(args) = cli.command else {
            panic!("expected list");
        };
        assert!(args.include_clustered);
        let cli = parse("--os-json-output module-instance-count mymod --include");
        assert!(cli.global.json);
        assert!(matches!(
            cli.command,
            Command::ModuleInstanceCount(ref a) if a.include_clustered
        ));
    }

    #[test]
    fn env_flags() {
        let env: std::collections::HashMap<&str, &str> = [("A", "1"), ("B", "False"), ("C", "")]
            .into_iter()
            .collect();
        assert!(env_flag(&env, "A"));
        assert!(!env_flag(&env, "B"));
        assert!(!env_flag(&env, "C"));
        assert!(!env_flag(&env, "D"));
    }
}
