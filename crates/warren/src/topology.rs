//! `warren topology apply|export`.

use std::path::PathBuf;

use anyhow::Context;
use bus::{Access, Bus, Topology};
use clap::Subcommand;
use contracts::routing;
use saga::Definition;
use serde_json::Value;

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare every exchange, queue and binding on the broker (idempotent). An operator's job:
    /// components only check the layout is there.
    Apply,
    /// Print the exchanges, queues and bindings, and the users and their permissions, as
    /// RabbitMQ definitions, or rewrite those sections of a definitions file in place.
    Export {
        /// A definitions file whose other sections (vhosts, policies, ...) are kept.
        #[arg(long)]
        into: Option<PathBuf>,
    },
}

/// The sections of `rabbitmq/definitions.json` that come from the code.
pub const GENERATED: [&str; 6] = [
    "exchanges",
    "queues",
    "bindings",
    "users",
    "permissions",
    "topic_permissions",
];

/// Who may do what on the broker, for these saga definitions: the orchestrator may send their
/// commands and compensations, no other.
pub fn access(definitions: &[Definition]) -> Access {
    let commands = definitions.iter().flat_map(|d| &d.steps).flat_map(|step| {
        std::iter::once(step.command.clone())
            .chain(step.compensation.as_ref().map(|c| c.command.clone()))
    });
    Access::new(Topology::standard(), commands)
}

/// Every generated section, for the `warren` vhost.
fn generated(settings: &Settings) -> anyhow::Result<Value> {
    let mut definitions = Topology::standard().definitions(routing::VHOST);
    let users = access(&crate::run::definitions(settings)?).definitions(routing::VHOST);
    for section in ["users", "permissions", "topic_permissions"] {
        definitions[section] = users[section].clone();
    }
    Ok(definitions)
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
                .context("declaring the topology (as a user with every permission in the vhost)")?;
            bus.close().await;
            println!(
                "topology applied: {} consumer queues with parking and retry queues",
                topology.consumers.len()
            );
        }
        TopologyCommand::Export { into: None } => {
            println!("{}", serde_json::to_string_pretty(&generated(settings)?)?);
        }
        TopologyCommand::Export { into: Some(path) } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut file: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let generated = generated(settings)?;
            for section in GENERATED {
                file[section] = generated[section].clone();
            }
            std::fs::write(&path, serde_json::to_string_pretty(&file)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "rewrote the topology and access sections of {}",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_users_of_the_definitions_file_match_the_code() {
        let settings = crate::Cli::parse_from(["warren", "migrate"]).settings;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../rabbitmq/definitions.json"
        );
        let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let generated = generated(&settings).unwrap();
        for section in ["users", "permissions", "topic_permissions"] {
            assert_eq!(
                file[section], generated[section],
                "rabbitmq/definitions.json {section} differ from the code (regenerate with \
                 `warren topology export --into rabbitmq/definitions.json`)"
            );
        }
        // No secret in the file: users get their passwords from files at deployment.
        assert!(
            file["users"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["password_hash"] == "")
        );
    }

    #[test]
    fn the_orchestrator_may_send_every_command_of_the_built_in_sagas() {
        let settings = crate::Cli::parse_from(["warren", "migrate"]).settings;
        let access = access(&crate::run::definitions(&settings).unwrap());
        let write = &access.grant(bus::Role::Orchestrator).topics[0].write;
        for command in [
            "order.cmd.create",
            "order.cmd.cancel",
            "image.cmd.delete_variants",
        ] {
            assert!(
                write.contains(&command.replace('.', r"\.")),
                "{command}: {write}"
            );
        }
        assert!(!write.contains("set_balance"));
    }
}
