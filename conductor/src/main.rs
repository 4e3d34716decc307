//! `trove-conductor`: parse the arguments, load the configuration, start logging, connect, run.

/// mimalloc: glibc's malloc showed among the top costs of a 10,000-guest reapply (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use trove_common::{amqp::Broker, config, db::Db, shutdown, telemetry};

/// How long to wait for PostgreSQL and RabbitMQ at start-up; systemd restarts us after that.
const STARTUP_WAIT: Duration = Duration::from_secs(120);

/// The trove-rs conductor: stores what guests report (heartbeats, module results).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// An oslo-style INI configuration file; repeat it to layer files (later files win).
    #[arg(long = "config-file", value_name = "PATH")]
    config_file: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Arc::new(config::load(&args.config_file)?);
    telemetry::init("trove-conductor");
    let db = Db::new(&settings.database);
    db.wait_ready(STARTUP_WAIT)
        .await
        .context("waiting for the database")?;
    let broker = Broker::connect_service(&settings, STARTUP_WAIT)
        .await
        .context("connecting to the broker")?;
    let result = trove_conductor::run(settings, db, broker.clone(), shutdown::on_signal()).await;
    broker.close().await;
    result
}

#[test]
fn cli_is_well_formed() {
    <Args as clap::CommandFactory>::command().debug_assert();
}
