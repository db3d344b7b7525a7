//! `warren chaos ...`: inject faults into running processes, send poison messages, and check
//! the invariants afterwards.
//!
//! Faults reach only processes started with `warren run --allow-chaos`; `set`, `clear` and
//! `show` list the processes that answered, and fail when none did.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bus::chaos::{self, Action, Control, FaultPatch, ProcessFaults};
use bus::topology::topic_matches;
use clap::{Args, Subcommand};
use contracts::routing;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::json;
use uuid::Uuid;

use crate::output::{self, Table, paint};
use crate::settings::Settings;
use crate::verify::{self, Report};
use crate::{broker, exit};

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Change injected faults; the fields not given keep their value.
    Set {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Stop injecting faults.
    Clear {
        #[command(flatten)]
        target: Target,
    },
    /// What each allowing process injects, and has injected so far.
    Show {
        #[command(flatten)]
        target: Target,
    },
    /// Check the invariants: sagas terminal, stock and money conserved, no double charge,
    /// nothing held for cancelled orders, outboxes drained, nothing parked.
    Verify {
        /// Keep re-checking until everything holds or this much time has passed (the system
        /// settles after a rehearsal), e.g. `60s`.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait: Duration,
    },
    /// Send a consumer queue two messages it cannot take (a body that is not JSON, and one
    /// that breaks its schema); both must be parked with a reason, never applied or looped.
    Poison {
        /// The consumer queue (e.g. `payment.commands`).
        #[arg(long, default_value = "payment.commands")]
        queue: String,
    },
}

/// Which processes a control message is for.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Only processes running this component (`payment`, `orchestrator`, `gateway`, ...).
    #[arg(long)]
    target: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// Share of payment charges declined (0 to 1).
    #[arg(long, value_name = "SHARE")]
    decline_rate: Option<f64>,
    /// Delay before handling each message, e.g. `200ms`; `0s` for none.
    #[arg(long, value_parser = parse_duration)]
    latency: Option<Duration>,
    /// The message types to delay, as AMQP topic patterns (`payment.cmd.*`); all when none.
    #[arg(long = "latency-type", value_name = "PATTERN")]
    latency_types: Vec<String>,
    /// Share of saga replies lost between the outbox and the broker (0 to 1).
    #[arg(long, value_name = "SHARE")]
    drop_reply_rate: Option<f64>,
    /// Share of handled messages after whose commit the process aborts, before the ack.
    #[arg(long, value_name = "SHARE")]
    crash_rate: Option<f64>,
    /// Share of outgoing messages published twice (0 to 1).
    #[arg(long, value_name = "SHARE")]
    duplicate_rate: Option<f64>,
    /// Compensation commands fail for this long, e.g. `30s`; `0s` ends an outage.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    fail_compensations_for: Option<Duration>,
}

impl FaultArgs {
    fn patch(&self) -> FaultPatch {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        FaultPatch {
            decline_rate: self.decline_rate,
            latency_ms: self.latency.map(millis),
            latency_types: (!self.latency_types.is_empty()).then(|| self.latency_types.clone()),
            drop_reply_rate: self.drop_reply_rate,
            crash_rate: self.crash_rate,
            duplicate_rate: self.duplicate_rate,
            fail_compensations_ms: self.fail_compensations_for.map(millis),
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, saga::duration::DurationError> {
    saga::duration::parse(text)
}

/// How long to wait for the first process to answer, then for more.
const FIRST_ANSWER: Duration = Duration::from_secs(2);
const MORE_ANSWERS: Duration = Duration::from_millis(300);

pub async fn execute(
    settings: &Settings,
    command: ChaosCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let control = |action, target: Target, faults| Control {
        action,
        target: target.target,
        faults,
    };
    let control = match command {
        ChaosCommand::Set { target, faults } => {
            let patch = faults.patch();
            if patch == FaultPatch::default() {
                eprintln!("error: name at least one fault to set (see `warren chaos set --help`)");
                return Ok(ExitCode::from(2));
            }
            if let Err(error) = patch.validate() {
                eprintln!("error: {error}");
                return Ok(ExitCode::from(2));
            }
            control(Action::Set, target, patch)
        }
        ChaosCommand::Clear { target } => control(Action::Clear, target, FaultPatch::default()),
        ChaosCommand::Show { target } => control(Action::Show, target, FaultPatch::default()),
        ChaosCommand::Verify { wait } => return verify(settings, wait, json).await,
        ChaosCommand::Poison { queue } => return poison(settings, &queue, json).await,
    };
    let Some(bus) = broker::connect_or_report(settings).await? else {
        return Ok(ExitCode::from(exit::UNREACHABLE));
    };
    let answers = chaos::send(&bus, &control, FIRST_ANSWER, MORE_ANSWERS).await;
    let sender = bus.user().to_owned();
    bus.close().await;
    let answers = answers.context("sending the chaos control message")?;
    if json {
        output::json(&json!({"processes": answers}))?;
    } else {
        print_processes(&answers);
    }
    if answers.is_empty() {
        eprintln!(
            "error: no running process accepts injected faults{} from {sender}; start them with \
             `warren run --allow-chaos` (or WARREN_ALLOW_CHAOS=true), and send as the operator \
             (the broker user they take controls from: WARREN_OPERATOR_USER, warren-operator \
             unless told otherwise)",
            control
                .target
                .map(|t| format!(" as {t}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::from(exit::PROBLEM));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_processes(answers: &[ProcessFaults]) {
    let mut table = Table::new(&["process", "pid", "faults", "injected so far"]);
    for answer in answers {
        let faults = describe(&answer.settings);
        let style = if faults == "none" { "dim" } else { "yellow" };
        let i = &answer.injected;
        table.row(vec![
            (answer.process.clone(), None),
            (answer.pid.to_string(), None),
            (faults, Some(style)),
            (
                format!(
                    "{} declines, {} delays, {} compensations failed, {} replies dropped, {} duplicates",
                    i.declines, i.delays, i.failed_compensations, i.dropped_replies, i.duplicates
                ),
                Some("dim"),
            ),
        ]);
    }
    if !table.is_empty() {
        table.print();
    }
}

fn describe(s: &chaos::FaultSettings) -> String {
    let mut parts = Vec::new();
    let mut rate = |name: &str, value: f64| {
        if value > 0.0 {
            parts.push(format!("{name} {value}"));
        }
    };
    rate("decline", s.decline_rate);
    rate("drop replies", s.drop_reply_rate);
    rate("crash", s.crash_rate);
    rate("duplicate", s.duplicate_rate);
    if s.latency_ms > 0 {
        let types = if s.latency_types.is_empty() {
            String::new()
        } else {
            format!(" on {}", s.latency_types.join(","))
        };
        parts.push(format!("latency {}ms{types}", s.latency_ms));
    }
    if let Some(until) = s.fail_compensations_until
        && until > chrono::Utc::now()
    {
        parts.push(format!(
            "compensations fail until {}",
            until.format("%H:%M:%S")
        ));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

async fn verify(settings: &Settings, wait: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let mut db = settings.db();
    db.max_connections = 2;
    let pool = store::connect(&db).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {}",
            bus::connection::redact(&settings.database_url)
        )
    })?;
    let bus = broker::connect_or_report(settings).await?;
    let report = verify::settle(&pool, bus.as_ref(), wait).await;
    if let Some(bus) = bus {
        bus.close().await;
    }
    pool.close().await;
    let report = report?;
    if json {
        output::json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(if report.holds {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEM)
    })
}

fn print_report(report: &Report) {
    let mut table = Table::new(&["invariant", "", "found"]);
    for check in &report.checks {
        let (mark, style) = if check.holds {
            ("ok", "green")
        } else {
            ("FAIL", "red")
        };
        table.row(vec![
            (check.name.to_owned(), None),
            (mark.to_owned(), Some(style)),
            (check.detail.clone(), None),
        ]);
        for example in &check.examples {
            table.row(vec![
                (String::new(), None),
                (String::new(), None),
                (format!("  {example}"), Some("dim")),
            ]);
        }
    }
    table.print();
    let f = &report.figures;
    println!(
        "\n{} sagas ({} completed, {} compensated, {} failed, {} open); {} duplicate deliveries \
         absorbed by inboxes; {} parked; {} unpublished",
        f.sagas,
        f.completed,
        f.compensated,
        f.failed,
        f.open,
        f.duplicates_absorbed,
        f.parked,
        f.outbox_backlog
    );
    if report.holds {
        println!("{}", paint("PASS: every invariant holds", "green"));
    } else {
        println!("{}", paint("FAIL: an invariant is broken", "red"));
    }
}

async fn poison(settings: &Settings, queue: &str, json: bool) -> anyhow::Result<ExitCode> {
    let topology = components::standard_topology();
    let Some(consumer) = topology.consumer(queue) else {
        eprintln!("error: no consumer queue {queue}");
        return Ok(ExitCode::from(exit::NOT_FOUND));
    };
    // A type the queue takes, so the message is a plausible one gone bad.
    let schemas = contracts::Schemas::embedded();
    let message_type = schemas
        .types()
        .filter(|t| consumer.bindings.iter().any(|key| topic_matches(key, t)))
        .min()
        .unwrap_or("chaos.cmd.poison")
        .to_owned();
    let Some(bus) = broker::connect_or_report(settings).await? else {
        return Ok(ExitCode::from(exit::UNREACHABLE));
    };
    let bodies: [(&str, Vec<u8>); 2] = [
        ("not JSON", b"\x00this is not json".to_vec()),
        (
            "breaks its schema",
            br#"{"poison": true, "order_id": "not-a-uuid"}"#.to_vec(),
        ),
    ];
    let channel = bus.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("confirm.select")?;
    let mut sent = Vec::new();
    for (what, body) in bodies {
        let id = Uuid::now_v7();
        let properties = BasicProperties::default()
            .with_message_id(id.to_string().into())
            .with_type(message_type.as_str().into())
            .with_app_id("warren-chaos".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            // Straight into a queue, it is taken only from the operator (checked by the broker),
            // and then parked for what it is.
            .with_user_id(bus.user().into());
        // Straight into the queue through the default exchange: no other consumer sees it.
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await
            .context("publishing a poison message")?
            .await
            .context("confirming a poison message")?;
        sent.push(json!({"message_id": id, "type": message_type, "body": what}));
    }
    let _ = channel.close(200, "poisoned".into()).await;
    bus.close().await;
    let parking = routing::parking_queue(queue);
    if json {
        output::json(&json!({"queue": queue, "parking_queue": parking, "sent": sent}))?;
    } else {
        for message in &sent {
            println!(
                "sent {} ({}) to {queue}; expect it in {parking}",
                message["message_id"].as_str().unwrap_or_default(),
                message["body"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
