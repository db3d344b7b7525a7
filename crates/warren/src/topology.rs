//! `warren topology apply|audit|export|render`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bus::{Bus, Topology};
use clap::Subcommand;
use contracts::routing;
use serde_json::Value;

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare every exchange, queue and binding on the broker (idempotent). An operator's job:
    /// components only check the layout is there.
    Apply,
    /// Tap the audit queue (`on`: bind `warren.audit` to every message on `warren`, so the
    /// management UI can show them) or stop tapping it (`off`, the default). A copy of every
    /// message costs the broker about as much again as the message itself.
    Audit {
        #[arg(value_enum)]
        tap: Tap,
    },
    /// Print the exchanges, queues and bindings, and the users and their permissions, as
    /// RabbitMQ definitions, or rewrite those sections of a definitions file in place.
    Export {
        /// A definitions file whose other sections (vhosts, policies, ...) are kept.
        #[arg(long)]
        into: Option<PathBuf>,
    },
    /// Write a definitions file in which each user has the password of its file in a folder
    /// (named after the user), for a broker that loads its definitions at boot (the containers
    /// of docker-compose.yml). Only salted hashes reach the output; a user without a file keeps
    /// no password, so nobody can log in as it.
    Render {
        /// The definitions to start from (users without passwords).
        #[arg(long, default_value = "rabbitmq/definitions.json")]
        from: PathBuf,
        /// The folder of password files, one per user, named after it.
        #[arg(long)]
        passwords: PathBuf,
        /// Where to write the result.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tap {
    On,
    Off,
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

/// Every generated section, for the `warren` vhost.
fn generated(settings: &Settings) -> anyhow::Result<Value> {
    let sagas = crate::run::definitions(settings)?;
    let mut definitions = components::topology(&sagas).definitions(routing::VHOST);
    let users = components::access(&sagas).definitions(routing::VHOST);
    for section in ["users", "permissions", "topic_permissions"] {
        definitions[section] = users[section].clone();
    }
    Ok(definitions)
}

pub async fn execute(settings: &Settings, command: TopologyCommand) -> anyhow::Result<()> {
    let topology = components::topology(&crate::run::definitions(settings)?);
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
        TopologyCommand::Audit { tap } => {
            let bus = Bus::connect(&settings.bus("topology")).await?;
            let channel = bus.channel().await?;
            Topology::tap_audit(&channel, tap == Tap::On)
                .await
                .context(
                    "binding the audit queue (as a user with every permission in the vhost)",
                )?;
            bus.close().await;
            println!(
                "{}",
                match tap {
                    Tap::On => format!(
                        "{} now gets a copy of every message on {} (capped at {} messages); \
                         `warren topology audit off` stops it",
                        routing::AUDIT_QUEUE,
                        routing::EXCHANGE,
                        bus::topology::AUDIT_MAX_LENGTH
                    ),
                    Tap::Off => format!("{} is no longer tapped", routing::AUDIT_QUEUE),
                }
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
        TopologyCommand::Render {
            from,
            passwords,
            out,
        } => render(&from, &passwords, &out)?,
    }
    Ok(())
}

/// `warren topology render`.
fn render(from: &Path, passwords: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut file: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", from.display()))?;
    let users = file["users"]
        .as_array_mut()
        .with_context(|| format!("{} has no users", from.display()))?;
    let mut given = Vec::new();
    for user in users {
        let Some(name) = user["name"].as_str().map(str::to_owned) else {
            continue;
        };
        let secret = passwords.join(&name);
        if !secret.exists() {
            continue;
        }
        let password = crate::settings::read_secret(&secret)?;
        user["password_hash"] = Value::from(password_hash(&password, fastrand::u32(..)));
        user["hashing_algorithm"] = Value::from(HASHING_ALGORITHM);
        given.push(name);
    }
    std::fs::write(out, serde_json::to_string_pretty(&file)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} with passwords for {}",
        out.display(),
        if given.is_empty() {
            "no user".to_owned()
        } else {
            given.join(", ")
        }
    );
    Ok(())
}

/// RabbitMQ's `rabbit_password_hashing_sha256`.
const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// A password as RabbitMQ stores it: base64 of a 4-byte salt followed by SHA-256 of the salt
/// and the password's UTF-8 bytes.
fn password_hash(password: &str, salt: u32) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let salt = salt.to_be_bytes();
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let mut salted = salt.to_vec();
    salted.extend_from_slice(&digest);
    base64::engine::general_purpose::STANDARD.encode(salted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga::Definition;

    #[test]
    fn the_users_of_the_definitions_file_match_the_code() {
        let settings = crate::tests::settings();
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
                 `scripts/generate.sh`, which runs `warren topology export`)"
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
    fn password_hashes_are_salted_sha256_as_rabbitmq_keeps_them() {
        // `guest` as a fresh RabbitMQ 3.10 node stores it (salt 0x908dc60a).
        assert_eq!(
            password_hash("guest", 0x908d_c60a),
            "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe"
        );
        assert_ne!(password_hash("guest", 1), password_hash("guest", 2));
    }

    #[test]
    fn the_orchestrator_may_send_every_command_of_the_built_in_sagas() {
        let settings = crate::tests::settings();
        let access = components::access(&crate::run::definitions(&settings).unwrap());
        let write = &access.grant(&orchestrator::COMPONENT).topics[0].write;
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

    #[test]
    fn a_reply_a_new_definition_waits_for_is_bound_to_saga_replies() {
        let mut checkout =
            Definition::from_toml(include_str!("../../../sagas/checkout.toml")).unwrap();
        checkout.steps[3].success = "order.evt.shipped".into();
        let topology = components::topology(&[checkout]);
        assert_eq!(topology.routes("order.evt.shipped"), ["saga.replies"]);
        assert!(
            components::topology(&[])
                .routes("order.evt.shipped")
                .is_empty()
        );
        let bindings = topology.definitions(routing::VHOST)["bindings"].clone();
        assert!(
            bindings.as_array().unwrap().iter().any(|b| {
                b["destination"] == "saga.replies" && b["routing_key"] == "order.evt.shipped"
            }),
            "{bindings:#}"
        );
    }
}
