//! `trove-manage`: database administration (Trove's `trove-manage`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use diesel::{Connection, PgConnection};
use secrecy::ExposeSecret;
use trove_migrations::manage;

#[derive(Parser)]
#[command(
    name = "trove-manage",
    version,
    about = "Trove database administration"
)]
struct Cli {
    /// Configuration files, later ones win (default /etc/trove/trove.conf).
    #[arg(long = "config-file", global = true)]
    config_file: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the schema.
    #[command(name = "db_sync", alias = "db-sync")]
    DbSync,
    /// Create a datastore or set its default version.
    #[command(name = "datastore_update")]
    DatastoreUpdate {
        name: String,
        default_version: String,
    },
    /// Create or update a datastore version.
    #[command(name = "datastore_version_update")]
    DatastoreVersionUpdate {
        datastore: String,
        version: String,
        manager: String,
        image_id: Option<String>,
        packages: Option<String>,
        #[arg(default_value = "1")]
        active: String,
    },
    /// Create or replace a flavor.
    #[command(name = "flavor_create")]
    FlavorCreate {
        id: String,
        name: String,
        ram: i32,
        vcpus: i32,
        disk: i32,
        ephemeral: i32,
    },
    /// Register the walkthrough's datastores (mysql 5.6, redis 3.2.6) and flavor 15.
    #[command(name = "seed_walkthrough")]
    SeedWalkthrough,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = trove_common::config::load(&cli.config_file)?;
    let url = settings.database.connection.expose_secret();
    let mut conn = PgConnection::establish(url).context("connecting to [database] connection")?;
    match cli.command {
        Command::DbSync => println!(
            "{} migration(s) applied",
            trove_migrations::run_pending(&mut conn)?
        ),
        Command::DatastoreUpdate {
            name,
            default_version,
        } => {
            manage::datastore_update(&mut conn, &name, &default_version)?;
        }
        Command::DatastoreVersionUpdate {
            datastore,
            version,
            manager,
            packages,
            active,
            ..
        } => {
            let active = matches!(active.as_str(), "1" | "true" | "True");
            manage::datastore_version_update(
                &mut conn,
                &datastore,
                &version,
                &manager,
                packages.as_deref().filter(|p| !p.is_empty()),
                active,
            )?;
        }
        Command::FlavorCreate {
            id,
            name,
            ram,
            vcpus,
            disk,
            ephemeral,
        } => {
            manage::flavor_create(&mut conn, &id, &name, ram, vcpus, disk, ephemeral)?;
        }
        Command::SeedWalkthrough => manage::seed_walkthrough(&mut conn)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
