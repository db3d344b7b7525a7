//! `warren dlq redrive` and `warren dlq purge`: matching parked messages sent back to the
//! queue they were parked from, or deleted, and the report of what happened to each.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use bus::{Bus, Outgoing, Publisher, Topology};
use contracts::routing;
use lapin::BasicProperties;
use lapin::message::Delivery;
use serde::Serialize;
use serde_json::{Value, json};

use super::or_dash;
use super::parked::{Filter, redriven_properties, summarize, text};
use super::queue::{Reader, ack};
use crate::exit;
use crate::output::{self, Table};

/// What happened to one matching message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// Published back to its queue (confirmed) and removed from the parking queue.
    Moved,
    /// Would be moved (`--dry-run`).
    WouldMove,
    /// Left parked: no queue to send it to.
    Skipped,
    /// Left parked: the publish or the ack failed.
    Failed,
    /// Left parked: another parked copy of the same message went back in this run. (Not
    /// removed: it may be a new parking of that message, which must not be lost.)
    Duplicate,
    Purged,
}

impl Outcome {
    /// As in `--json`.
    fn key(self) -> &'static str {
        match self {
            Self::Moved => "moved",
            Self::WouldMove => "would_move",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Duplicate => "duplicate",
            Self::Purged => "purged",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Moved => "moved",
            Self::WouldMove => "would move",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Duplicate => "duplicate",
            Self::Purged => "purged",
        }
    }

    fn style(self) -> &'static str {
        match self {
            Self::Moved | Self::Purged => "green",
            Self::WouldMove => "blue",
            Self::Skipped => "yellow",
            Self::Failed => "red",
            Self::Duplicate => "dim",
        }
    }

    /// Whether the message was meant to move but did not.
    fn is_problem(self) -> bool {
        matches!(self, Self::Skipped | Self::Failed)
    }
}

#[derive(Debug, Clone, Serialize)]
struct Handled {
    outcome: Outcome,
    message_id: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    saga_id: Option<String>,
    /// The parking queue it was in.
    from: String,
    /// The queue it went (or would go) back to.
    to: Option<String>,
    note: Option<String>,
}

impl Handled {
    fn new(outcome: Outcome, properties: &BasicProperties, from: &str) -> Self {
        Self {
            outcome,
            message_id: text(properties.message_id()),
            message_type: text(properties.kind()),
            saga_id: text(properties.correlation_id()),
            from: from.to_owned(),
            to: None,
            note: None,
        }
    }

    fn to(mut self, queue: &str) -> Self {
        self.to = Some(queue.to_owned());
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Where a parked message goes back to, or why it cannot.
fn destination(topology: &Topology, properties: &BasicProperties) -> Result<String, String> {
    let from = summarize(properties).parked_from.ok_or_else(|| {
        format!(
            "no {} header and no x-death queue: nowhere to send it back",
            routing::HEADER_PARKED_FROM
        )
    })?;
    if topology.consumer(&from).is_none() {
        return Err(format!(
            "parked from {from:?}, which is not a consumer queue"
        ));
    }
    Ok(from)
}

pub(super) async fn redrive(
    bus: &Bus,
    topology: &Topology,
    queues: &[String],
    filter: &Filter,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let publisher = if dry_run {
        None
    } else {
        Some(bus.publisher().await?)
    };
    let mut handled = Vec::new();
    let mut left = 0_u64;
    // (queue, message id) sent back in this run: a second parked copy is not sent again.
    let mut sent: HashSet<(String, String)> = HashSet::new();
    let mut interrupted = None;
    for queue in queues {
        let mut reader = match Reader::open(bus, queue).await {
            Ok(reader) => reader,
            Err(error) => {
                interrupted = Some(error);
                break;
            }
        };
        let done = async {
            while let Some(delivery) = reader.next().await? {
                if !filter.matches(&delivery.properties) {
                    left += 1;
                    continue;
                }
                let outcome = redrive_one(
                    topology,
                    publisher.as_ref(),
                    bus.user(),
                    &delivery,
                    &reader.name,
                    &mut sent,
                )
                .await;
                if outcome.outcome != Outcome::Moved {
                    left += 1;
                }
                handled.push(outcome);
            }
            anyhow::Ok(())
        }
        .await;
        reader.release().await;
        if let Err(error) = done {
            interrupted = Some(error);
            break;
        }
    }
    match interrupted {
        None => report(&handled, left, dry_run, json),
        Some(error) if handled.is_empty() => Err(error),
        Some(error) => {
            // What was done before the interruption is reported all the same.
            report(&handled, left, dry_run, json)?;
            Err(error.context("redrive interrupted after the messages listed"))
        }
    }
}

async fn redrive_one(
    topology: &Topology,
    publisher: Option<&Publisher>,
    sender: &str,
    delivery: &Delivery,
    parking_queue: &str,
    sent: &mut HashSet<(String, String)>,
) -> Handled {
    let properties = &delivery.properties;
    let handled = |outcome| Handled::new(outcome, properties, parking_queue);
    let to = match destination(topology, properties) {
        Ok(to) => to,
        Err(why) => return handled(Outcome::Skipped).note(why),
    };
    let key = text(properties.message_id()).map(|id| (to.clone(), id));
    if key.as_ref().is_some_and(|key| sent.contains(key)) {
        return handled(Outcome::Duplicate)
            .to(&to)
            .note("another copy goes back in this run; left parked");
    }
    let Some(publisher) = publisher else {
        sent.extend(key);
        return handled(Outcome::WouldMove).to(&to);
    };
    let copy = Outgoing {
        exchange: String::new(),
        routing_key: to.clone(),
        // The consumer takes a message that did not come through `warren` only from the
        // operator (or itself), by its broker-checked user.
        properties: redriven_properties(properties).with_user_id(sender.into()),
        body: delivery.data.clone(),
    };
    if let Err(error) = publisher.send(&copy).await {
        return handled(Outcome::Failed)
            .to(&to)
            .note(format!("not sent, still parked: {error}"));
    }
    sent.extend(key);
    match ack(delivery).await {
        Ok(()) => handled(Outcome::Moved).to(&to),
        // Sent but still parked: a later redrive sends it again and the inbox skips it.
        Err(error) => handled(Outcome::Failed).to(&to).note(format!(
            "sent, but still parked ({error:#}); the inbox skips it if redriven again"
        )),
    }
}

pub(super) async fn purge(
    bus: &Bus,
    queues: &[String],
    filter: &Filter,
    yes: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Hold every matching message first: the question names exactly what will go.
    let mut readers = Vec::new();
    let mut matching: Vec<(usize, Delivery)> = Vec::new();
    let mut left = 0_u64;
    let mut scanned = anyhow::Ok(());
    for queue in queues {
        let mut reader = match Reader::open(bus, queue).await {
            Ok(reader) => reader,
            Err(error) => {
                scanned = Err(error);
                break;
            }
        };
        let index = readers.len();
        let result = async {
            while let Some(delivery) = reader.next().await? {
                if filter.matches(&delivery.properties) {
                    matching.push((index, delivery));
                } else {
                    left += 1;
                }
            }
            anyhow::Ok(())
        }
        .await;
        readers.push(reader);
        if let Err(error) = result {
            scanned = Err(error);
            break;
        }
    }
    let confirmed = match &scanned {
        Err(_) => Ok(false),
        Ok(()) if matching.is_empty() || yes => Ok(true),
        Ok(()) => {
            let n = matching.len();
            let noun = if n == 1 { "message" } else { "messages" };
            confirm(&format!("Purge {n} {noun}? [y/N] ")).await
        }
    };
    let confirmed = match confirmed {
        Ok(confirmed) => confirmed,
        Err(error) => {
            scanned = scanned.and(Err(error));
            false
        }
    };
    let mut handled = Vec::new();
    if confirmed {
        for (index, delivery) in &matching {
            let queue = &readers[*index].name;
            let outcome = match ack(delivery).await {
                Ok(()) => Handled::new(Outcome::Purged, &delivery.properties, queue),
                Err(error) => {
                    left += 1;
                    Handled::new(Outcome::Failed, &delivery.properties, queue)
                        .note(format!("{error:#}"))
                }
            };
            handled.push(outcome);
        }
    }
    for reader in readers {
        reader.release().await;
    }
    scanned?;
    if !confirmed {
        eprintln!("nothing purged");
        return Ok(ExitCode::from(exit::PROBLEM));
    }
    report(&handled, left, false, json)
}

/// Asks on the terminal; anything but yes is no.
async fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await?
    .context("reading the answer")?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

fn report(handled: &[Handled], left: u64, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    for h in handled {
        *counts.entry(h.outcome).or_default() += 1;
    }
    let problem = handled.iter().any(|h| h.outcome.is_problem());
    if json {
        let mut summary: serde_json::Map<String, Value> = counts
            .iter()
            .map(|(outcome, n)| (outcome.key().to_owned(), Value::from(*n)))
            .collect();
        summary.insert("left_parked".into(), Value::from(left));
        output::json(&json!({"dry_run": dry_run, "messages": handled, "summary": summary}))?;
    } else if handled.is_empty() {
        println!("no parked message matches; {left} left parked");
    } else {
        let mut table = Table::new(&["", "message id", "type", "from", "to", "note"]);
        for h in handled {
            table.row(vec![
                (h.outcome.label().to_owned(), Some(h.outcome.style())),
                (or_dash(h.message_id.as_deref()), None),
                (or_dash(h.message_type.as_deref()), None),
                (h.from.clone(), None),
                (
                    h.to.as_deref()
                        .map_or_else(String::new, |to| format!("→ {to}")),
                    None,
                ),
                (h.note.clone().unwrap_or_default(), Some("dim")),
            ]);
        }
        table.print();
        let parts: Vec<String> = counts
            .iter()
            .map(|(outcome, n)| format!("{n} {}", outcome.label()))
            .collect();
        println!("\n{}; {left} left parked", parts.join(", "));
    }
    Ok(if problem {
        ExitCode::from(exit::PROBLEM)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bus::amqp;

    use super::*;
    use crate::dlq::fixtures::{message, parked_by_broker, parked_by_warren};

    #[test]
    fn the_destination_is_a_consumer_queue_or_nothing() {
        let topology = components::standard_topology();
        assert_eq!(
            destination(&topology, &parked_by_warren()).as_deref(),
            Ok("payment.commands")
        );
        assert_eq!(
            destination(&topology, &parked_by_broker()).as_deref(),
            Ok("payment.commands")
        );
        let nowhere = destination(&topology, &message()).unwrap_err();
        assert!(nowhere.contains(routing::HEADER_PARKED_FROM), "{nowhere}");
        let elsewhere = amqp::parked_properties(&message(), "amq.gen-123", "why");
        assert!(destination(&topology, &elsewhere).is_err());
    }

    #[tokio::test]
    async fn a_run_sends_each_message_back_once_and_only_where_it_came_from() {
        let topology = components::standard_topology();
        let delivery = |properties: BasicProperties| {
            let mut delivery = Delivery::mock(1, "".into(), "".into(), false, b"{}".to_vec());
            delivery.properties = properties;
            delivery
        };
        let parked = delivery(parked_by_warren());
        let by_broker = delivery(parked_by_broker());
        let orphan = delivery(message());
        let mut sent = HashSet::new();
        let mut dry_run = Vec::new();
        // The same message parked twice: the second copy stays where it is.
        for delivery in [&parked, &orphan, &parked, &by_broker] {
            let handled = redrive_one(
                &topology,
                None,
                "warren-operator",
                delivery,
                "payment.commands.dead",
                &mut sent,
            )
            .await;
            dry_run.push((handled.outcome, handled.to));
        }
        let to = Some("payment.commands".to_owned());
        assert_eq!(
            dry_run,
            [
                (Outcome::WouldMove, to.clone()),
                (Outcome::Skipped, None),
                (Outcome::Duplicate, to.clone()),
                (Outcome::WouldMove, to),
            ]
        );
        assert!(Outcome::Skipped.is_problem() && !Outcome::Duplicate.is_problem());
    }
}
