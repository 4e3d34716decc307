//! `trove-bench fleet-host` (internal): hosts the guest agents of `reapply --mode fleet` in this
//! process, through [`trove_guestagent::fleet::run_fleet`].
//!
//! The parent passes the shared guest configuration (`--config`, the same INI a guest process reads)
//! and one JSON line per guest (`{"id", "key", "state_dir"}`). This process prints `ready` on stdout
//! once every guest consumes its queue, writes its counters to `--stats` every 100 ms (and when it
//! stops; the start times go to `<stats>.started` once), and stops on SIGTERM/SIGINT or when its stdin closes (the parent died).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use trove_guestagent::fleet::{run_fleet, FleetGuest, FleetOptions, FleetStats};

/// `trove-bench fleet-host` options.
#[derive(Debug, Args)]
pub struct FleetHostArgs {
    /// The guests' shared configuration (INI).
    #[arg(long)]
    pub config: PathBuf,
    /// One JSON object per line: {"id", "key", "state_dir"}.
    #[arg(long)]
    pub guests: PathBuf,
    /// Where to write the counters (JSON), replaced every 100 ms.
    #[arg(long)]
    pub stats: PathBuf,
    /// Broker connections shared by the guests.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Guest queues consumed per AMQP channel.
    #[arg(long, default_value_t = 250)]
    pub queues_per_channel: usize,
    /// Guests started at the same time.
    #[arg(long, default_value_t = 64)]
    pub start_concurrency: usize,
}

/// One line of `--guests`. The key is the instance's RPC key in clear: the file lives in the
/// benchmark's private temporary directory, as `guest.conf` does for a guest process.
#[derive(Debug, Serialize, Deserialize)]
pub struct GuestLine {
    pub id: String,
    pub key: String,
    pub state_dir: PathBuf,
}

/// What `--stats` holds.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct StatsFile {
    pub ready: usize,
    pub deliveries: u64,
    pub casts: u64,
    pub cast_failures: u64,
    pub replies: u64,
    /// (guest id, epoch seconds it was ready); only in the `.started` file.
    pub started: Vec<(String, f64)>,
}

fn snapshot(stats: &FleetStats, with_started: bool) -> StatsFile {
    StatsFile {
        ready: stats.guests_ready.load(Ordering::Relaxed),
        deliveries: stats.deliveries.load(Ordering::Relaxed),
        casts: stats.casts.load(Ordering::Relaxed),
        cast_failures: stats.cast_failures.load(Ordering::Relaxed),
        replies: stats.replies.load(Ordering::Relaxed),
        started: if with_started {
            stats
                .started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        } else {
            Vec::new()
        },
    }
}

fn write_stats(path: &Path, stats: &StatsFile) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(stats)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Where the start times go (written once, when every guest is ready): `<stats>.started`.
pub fn started_path(stats: &Path) -> PathBuf {
    let mut name = stats.as_os_str().to_owned();
    name.push(".started");
    PathBuf::from(name)
}

/// Runs the fleet until told to stop.
pub async fn run(args: FleetHostArgs) -> anyhow::Result<()> {
    let settings = trove_common::config::load(std::slice::from_ref(&args.config))?;
    let text = std::fs::read_to_string(&args.guests)
        .with_context(|| format!("reading {}", args.guests.display()))?;
    let mut guests = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let g: GuestLine = serde_json::from_str(line).context("a --guests line")?;
        guests.push(FleetGuest {
            guest_id: g.id,
            state_dir: g.state_dir,
            instance_rpc_encr_key: Some(SecretString::from(g.key)),
        });
    }
    let stats = Arc::new(FleetStats::default());
    let shutdown = trove_common::shutdown::on_signal();
    // The parent holds our stdin: when it goes away, so do we.
    let stdin_gone = shutdown.clone();
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        stdin_gone.cancel();
    });
    let writer_stats = stats.clone();
    let writer_path = args.stats.clone();
    let writer_stop = shutdown.clone();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = writer_stop.cancelled() => break,
                _ = tick.tick() => {
                    let snap = snapshot(&writer_stats, false);
                    if let Err(e) = write_stats(&writer_path, &snap) {
                        tracing::warn!(error = %e, "cannot write the fleet stats");
                    }
                }
            }
        }
    });
    let options = FleetOptions {
        connections: args.connections,
        queues_per_channel: args.queues_per_channel,
        start_concurrency: args.start_concurrency,
    };
    let ready_stats = stats.clone();
    let ready_path = started_path(&args.stats);
    let result = run_fleet(
        settings,
        guests,
        options,
        stats.clone(),
        move || {
            // The full stats (with every start time) before the parent hears "ready".
            let _ = write_stats(&ready_path, &snapshot(&ready_stats, true));
            println!("ready");
        },
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = writer.await;
    write_stats(&args.stats, &snapshot(&stats, false))?;
    result
}
