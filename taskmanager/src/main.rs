//! `trove-taskmanager`: parse the arguments, load the configuration, connect, run until SIGINT/SIGTERM.

/// mimalloc: glibc's malloc showed among the top costs of a 10,000-guest reapply (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use trove_common::amqp::Broker;
use trove_common::db::Db;
use trove_common::{config, shutdown, telemetry};

/// How long start-up waits for PostgreSQL and RabbitMQ (systemd may start us first).
const STARTUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The trove-rs taskmanager: builds and deletes instances and clusters, and drives module reapply.
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
    telemetry::init("trove-taskmanager");
    let db = Db::new(&settings.database);
    db.wait_ready(STARTUP_DEADLINE)
        .await
        .context("connecting to the database")?;
    let broker = Broker::connect_service(&settings, STARTUP_DEADLINE)
        .await
        .context("connecting to the broker")?;
    let res = trove_taskmanager::run(settings, db, broker.clone(), shutdown::on_signal()).await;
    broker.close().await;
    res
}
