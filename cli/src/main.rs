//! The `trove` binary: parse the command line, run it, and on failure print `ERROR: <message>`
//! on stderr and exit 1.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use trove_cli::{error_message, execute, Cli, Io, ProcessEnv};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = io::stdout().lock();
    let mut err = io::stderr();
    let err_is_tty = err.is_terminal();
    let io = Io {
        out: &mut out,
        err: &mut err,
        err_is_tty,
    };
    match execute(cli, &ProcessEnv, io) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            let _ = writeln!(io::stderr(), "ERROR: {}", error_message(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use trove_cli::Cli;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
