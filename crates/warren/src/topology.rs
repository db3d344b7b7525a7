//! `warren topology apply|export`.

use std::path::PathBuf;

use anyhow::Context;
use bus::{Bus, Topology};
use clap::Subcommand;
use contracts::routing;
use serde_json::Value;

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare every exchange, queue and binding on the broker (idempotent).
    Apply,
    /// Print the exchanges, queues and bindings as RabbitMQ definitions, or rewrite those
    /// sections of a definitions file in place.
    Export {
        /// A definitions file whose other sections (users, vhosts, permissions) are kept.
        #[arg(long)]
        into: Option<PathBuf>,
    },
}

pub async fn execute(settings: &Settings, command: TopologyCommand) -> anyhow::Result<()> {
    let topology = Topology::standard();
    match command {
        TopologyCommand::Apply => {
            let bus = Bus::connect(&settings.bus("topology")).await?;
            let channel = bus.channel().await?;
            topology
                .declare(&channel)
                .await
                .context("declaring the topology")?;
            bus.close().await;
            println!(
                "topology applied: {} consumer queues with parking and retry queues",
                topology.consumers.len()
            );
        }
        TopologyCommand::Export { into: None } => {
            let definitions = topology.definitions(routing::VHOST);
            println!("{}", serde_json::to_string_pretty(&definitions)?);
        }
        TopologyCommand::Export { into: Some(path) } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut file: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let generated = topology.definitions(routing::VHOST);
            for section in ["exchanges", "queues", "bindings"] {
                file[section] = generated[section].clone();
            }
            std::fs::write(&path, serde_json::to_string_pretty(&file)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            println!("rewrote the topology sections of {}", path.display());
        }
    }
    Ok(())
}
