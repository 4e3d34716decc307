//! `trove-api`: the Trove v1.0 REST API.

/// mimalloc: glibc's malloc showed among the top costs of a 10,000-guest reapply (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use trove_common::{amqp::Broker, config, db::Db, shutdown, telemetry};

#[derive(Parser)]
#[command(name = "trove-api", version, about = "Trove REST API")]
struct Args {
    /// Configuration files, later ones win (default /etc/trove/trove.conf).
    #[arg(long = "config-file")]
    config_file: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Arc::new(config::load(&args.config_file)?);
    telemetry::init("trove-api");
    // Refuse a configuration that can authenticate nobody before waiting on the database and broker.
    trove_api::auth::Authenticator::from_settings(&settings).check()?;
    let db = Db::new(&settings.database);
    db.wait_ready(Duration::from_secs(60)).await?;
    let broker = Broker::connect_service(&settings, Duration::from_secs(60)).await?;
    let addr = format!(
        "{}:{}",
        settings.default.bind_host, settings.default.bind_port
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    trove_api::run(settings, db, broker, listener, shutdown::on_signal()).await
}
