//! `trove-guestagent`: parse the arguments, load the configuration, start logging, run the agent.

use std::path::PathBuf;

use clap::Parser;
use trove_common::{config, shutdown, telemetry};

// The system allocator, unlike the services (mimalloc): a guest handles a few messages a minute, and
// every resident page counts against its memory target (BENCHMARKS.md).

/// The trove-rs guest agent: serves one instance's `guestagent.<guest_id>` queue.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// An oslo-style INI configuration file; repeat it to layer files (later files win).
    #[arg(long = "config-file", value_name = "PATH")]
    config_file: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = config::load(&args.config_file)?;
    telemetry::init("trove-guestagent");
    // One guest runs per instance: a single-threaded runtime and a small blocking pool (module drivers,
    // file writes) keep each process at a few megabytes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()?;
    runtime.block_on(async { trove_guestagent::run(settings, shutdown::on_signal()).await })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
