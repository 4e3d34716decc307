//! `trove-bench`: the benchmarks of BENCHMARKS.md (not tests; nothing here runs under `cargo test`
//! except the unit tests of its helpers).
//!
//! - `trove-bench count`: `module-instance-count` latency at a million `instance_modules` rows.
//! - `trove-bench reapply --mode real|fleet --n N`: fleet-wide reapply throughput, with real guest
//!   processes or with one process hosting N guest agents; in real mode, `--idle-secs S` and
//!   `--broker-restart` add an idle fleet's load and CPU and a broker restart's recovery
//!   (`benches/fleet-on-one-host.sh` runs them at 2,000 instances).
//! - `trove-bench create --datastore redis|mysql --n N --concurrency C [--density]`: create →
//!   ACTIVE latency with real databases, memory per instance, and instances one host holds.
//! - `trove-bench broker`: the broker alone (publish with confirms, consume), to tell its ceiling
//!   from the control plane's costs.
//!
//! Build with `cargo build --release --workspace --bins` and run `target/release/trove-bench`: it finds
//! the service binaries beside itself. PostgreSQL and RabbitMQ as for the tests
//! (`TROVE_TEST_DATABASE_URL`, `TROVE_TEST_TRANSPORT_URL`).

/// mimalloc: glibc's malloc showed among the top costs of a 10,000-guest reapply (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod broker_probe;
mod count;
mod create;
mod fleet_host;
mod idle_restart;
mod probe;
mod reapply;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "trove-bench",
    about = "trove-rs benchmarks (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// module-instance-count latency at a million instance_modules rows.
    Count(count::CountArgs),
    /// Instance create → ACTIVE latency with real databases, and memory per instance.
    Create(create::CreateArgs),
    /// Fleet-wide module reapply throughput.
    Reapply(reapply::ReapplyArgs),
    /// The broker alone: publish with confirms, then consume, over many queues.
    Broker(broker_probe::BrokerArgs),
    /// (internal) Hosts the guest agents of `reapply --mode fleet` in this process.
    #[command(hide = true)]
    FleetHost(fleet_host::FleetHostArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Our own subscriber first (the test support's try_init then leaves it alone): warnings only, on
    // stderr, so the report on stdout stays readable.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Count(args) => count::run(args).await,
            Command::Create(args) => create::run(args).await,
            Command::Reapply(args) => reapply::run(args).await,
            Command::Broker(args) => broker_probe::run(args).await,
            Command::FleetHost(args) => fleet_host::run(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
