//! The `warren` binary: runs components and operates the system.
//!
//! - [`settings`]: one typed settings struct, from flags or `WARREN_*` variables.
//! - [`telemetry`]: logging and metrics set-up.
//! - [`ops`]: `/metrics`, `/healthz` and `/readyz` of processes without the gateway.
//! - [`run`]: the long-running components and their shutdown.
//! - [`topology`]: applying and exporting the broker layout.
//! - [`saga_cli`]: `warren saga ...`, seeing, replaying and repairing sagas.
//! - [`dlq`]: `warren dlq ...`, parked messages.
//! - [`auth_cli`]: `warren auth ...`, gateway tokens and API keys.
//! - [`bench`]: `warren bench`, saga throughput and latency next to the broker's floor.
//! - [`chaos`]: `warren chaos ...`, injected faults, poison messages and the invariants check
//!   ([`verify`]).
//! - [`broker`]: reaching the broker from operator commands.
//! - [`output`]: tables, colour and JSON for operators.

mod auth_cli;
mod bench;
mod broker;
mod chaos;
mod dlq;
mod history;
mod ops;
mod output;
mod run;
mod saga_cli;
mod saga_versions;
mod settings;
mod telemetry;
mod topology;
mod verify;

use anyhow::Context;
use clap::{Parser, Subcommand};

use settings::{LogFormat, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    about = "Event-driven sagas on RabbitMQ and PostgreSQL"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant (`run`) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run components until SIGTERM or SIGINT, then drain and exit.
    Run {
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        args: run::RunArgs,
    },
    /// Apply the database migrations.
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Declare or export the broker topology.
    Topology {
        #[command(flatten)]
        settings: Settings,
        #[command(subcommand)]
        command: topology::TopologyCommand,
    },
    /// See, replay and repair sagas.
    Saga {
        #[command(flatten)]
        settings: Settings,
        #[command(subcommand)]
        command: saga_cli::SagaCommand,
    },
    /// See, redrive and purge parked (dead-lettered) messages.
    Dlq {
        #[command(flatten)]
        settings: Settings,
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Rehearse failures: inject faults into running processes, poison a queue, verify the
    /// invariants afterwards.
    Chaos {
        #[command(flatten)]
        settings: Settings,
        #[command(subcommand)]
        command: chaos::ChaosCommand,
    },
    /// Gateway credentials: sign a token, make an API key.
    #[command(subcommand)]
    Auth(auth_cli::AuthCommand),
    /// Measure checkout sagas per second and their latency against the running system.
    Bench {
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// List the components: name, broker user, database role and metrics port, tab-separated
    /// (what `deploy/components.tsv` holds and `scripts/lib.sh` reads).
    Components,
}

impl Command {
    /// The connection settings of a subcommand that reaches the servers.
    fn settings_mut(&mut self) -> Option<&mut Settings> {
        match self {
            Self::Run { settings, .. }
            | Self::Migrate { settings }
            | Self::Topology { settings, .. }
            | Self::Saga { settings, .. }
            | Self::Dlq { settings, .. }
            | Self::Chaos { settings, .. }
            | Self::Bench { settings, .. } => Some(settings),
            Self::Auth(_) | Self::Components => None,
        }
    }
}

/// Exit codes scripts can rely on: 0 done, 1 a check or replay found a problem, 2 bad usage
/// (clap's own), 3 the thing named does not exist, 4 the broker or database is unreachable,
/// 5 anything else.
pub mod exit {
    pub const PROBLEM: u8 = 1;
    pub const NOT_FOUND: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const FAILURE: u8 = 5;
}

fn main() -> std::process::ExitCode {
    // Threads for async work; by default one per core. On a small machine running several
    // Warren processes, fewer threads per process mean fewer wake-ups across threads.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = std::env::var("WARREN_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        runtime.worker_threads(threads);
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(cli_main()),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::ExitCode::from(exit::FAILURE)
        }
    }
}

async fn cli_main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    let running = matches!(cli.command, Command::Run { .. });
    let service = match &cli.command {
        Command::Run { args, .. } => format!("warren-{}", args.label()),
        _ => "warren-cli".to_owned(),
    };
    let _telemetry = telemetry::init(
        &cli.log_format,
        if running { "info" } else { "warn" },
        &service,
    );
    if let Some(settings) = cli.command.settings_mut() {
        if !running {
            // An operator waiting at a terminal wants to hear soon that a server is down.
            settings
                .connect_timeout_secs
                .get_or_insert(settings::CLI_CONNECT_TIMEOUT_SECS);
        }
        if let Err(error) = settings.read_password_files() {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::from(exit::FAILURE);
        }
    }
    let success = |()| std::process::ExitCode::SUCCESS;
    let outcome = match cli.command {
        Command::Run { settings, args } => run::run(&settings, args).await.map(success),
        Command::Migrate { settings } => migrate(&settings).await,
        Command::Topology { settings, command } => {
            topology::execute(&settings, command).await.map(success)
        }
        Command::Saga { settings, command } => {
            saga_cli::execute(&settings, command, cli.json).await
        }
        Command::Dlq { settings, command } => dlq::execute(&settings, command, cli.json).await,
        Command::Chaos { settings, command } => chaos::execute(&settings, command, cli.json).await,
        Command::Bench { settings, args } => bench::execute(&settings, args, cli.json).await,
        Command::Components => {
            print!("{}", components::table());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Auth(command) => auth_cli::execute(command).map(success),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        let unreachable = error.chain().any(|cause| {
            cause
                .downcast_ref::<store::StoreError>()
                .is_some_and(|e| e.is_transient())
                || cause.downcast_ref::<bus::BusError>().is_some()
        });
        // Exit at once: a connection attempt still in flight (lapin's I/O thread) would
        // otherwise panic while the runtime shuts down.
        std::process::exit(i32::from(if unreachable {
            exit::UNREACHABLE
        } else {
            exit::FAILURE
        }))
    })
}

async fn migrate(settings: &Settings) -> anyhow::Result<std::process::ExitCode> {
    let pool = store::connect(&settings.db()).await?;
    store::migrate(&pool).await.context("applying migrations")?;
    println!("migrations applied");
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// The connection settings as a subcommand gets them with no flags or variables given.
    pub(crate) fn settings() -> crate::settings::Settings {
        match Cli::parse_from(["warren", "migrate"]).command {
            Command::Migrate { settings } => settings,
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn a_subcommand_takes_only_its_own_settings() {
        let run = Cli::try_parse_from(["warren", "run", "order", "--prefetch", "8"]);
        assert!(run.is_ok(), "{run:?}");
        for others in [
            vec!["warren", "bench", "--prefetch", "8"],
            vec!["warren", "dlq", "list", "--image-upload-limit", "1"],
            vec!["warren", "migrate", "--sweep-interval-ms", "5"],
            vec![
                "warren",
                "auth",
                "api-key",
                "--name",
                "n",
                "--scope",
                "ui",
                "--jwt-issuer",
                "x",
            ],
        ] {
            let parsed = Cli::try_parse_from(&others);
            assert!(parsed.is_err(), "{others:?} was taken");
        }
        let token = [
            "warren",
            "auth",
            "token",
            "--subject",
            "c-1",
            "--jwt-issuer",
            "x",
        ];
        assert!(Cli::try_parse_from(token).is_ok());
        // The connection settings reach every subcommand that talks to the servers, and only
        // those.
        let mut dlq =
            Cli::try_parse_from(["warren", "dlq", "list", "--amqp-url", "amqp://h/v"]).unwrap();
        assert_eq!(dlq.command.settings_mut().unwrap().amqp_url, "amqp://h/v");
        for others in [
            vec!["warren", "components", "--amqp-url", "amqp://h/v"],
            vec![
                "warren",
                "auth",
                "api-key",
                "--name",
                "n",
                "--scope",
                "ui",
                "--db-pool",
                "2",
            ],
        ] {
            assert!(
                Cli::try_parse_from(&others).is_err(),
                "{others:?} was taken"
            );
        }
    }
}
