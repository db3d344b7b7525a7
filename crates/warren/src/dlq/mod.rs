//! `warren dlq ...`: see, redrive and purge parked messages, picked one by one.
//!
//! A message lands in its consumer's parking queue `<queue>.dead` in one of two ways: the
//! consumer runner parks it (it could not be decoded, failed its schema, or failed for good)
//! with the headers `x-warren-parked-reason` and `x-warren-parked-from`, or the broker
//! dead-letters it on its own (the queue's delivery limit) and adds `x-death`. Where a shovel
//! moves a whole error queue, these commands choose messages by queue, saga, type or id.
//!
//! Every command reads a parking queue the same way ([`Reader`](queue::Reader)): `basic.get`
//! without ack, at most as many messages as the queue held when the command began, never
//! requeueing during the run, so no message comes round twice. What the command acts on is
//! acked; closing the channel gives every other message back untouched, in its place.
//!
//! Redrive publishes a copy to the default exchange with the source queue as routing key (only
//! that consumer gets it, whatever else is bound to the message's type), confirmed, and acks the
//! parked copy only after the confirm. If the process dies in between, the message is back and
//! still parked; the next redrive sends it again and the consumer's inbox skips it by its message
//! id, so nothing takes effect twice.
//!
//! The modules, one per concern:
//! - [`queue`]: reading a parking queue, and the error for one the broker lacks.
//! - [`parked`]: what a parked message says, without I/O: filters, who parked it and from
//!   where, the properties it goes back with.
//! - [`list`], [`show`]: the `list` and `show` commands.
//! - [`redrive`]: the `redrive` and `purge` commands and their report.
//!
//! This module holds the command line, the dispatch, and the helpers they share.

#[cfg(test)]
mod fixtures;
mod list;
mod parked;
mod queue;
mod redrive;
mod show;

use std::io::IsTerminal;
use std::process::ExitCode;

use bus::Topology;
use clap::{Args, Subcommand};
use contracts::routing;

use self::list::list;
use self::parked::Filter;
use self::queue::MissingQueue;
use self::redrive::{purge, redrive};
use self::show::show;
use crate::settings::Settings;
use crate::{broker, exit};

/// Bad usage, clap's own exit code.
const USAGE: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// How many messages wait in each parking queue, and which.
    List {
        /// Only this consumer queue's parking queue (e.g. `payment.commands`).
        #[arg(long)]
        queue: Option<String>,
        /// Show at most this many messages per queue (the counts are always complete).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Everything about one parked message: properties, headers, reason and payload.
    Show {
        /// The message id (AMQP `message_id`).
        message_id: String,
    },
    /// Send matching parked messages back to the queue they were parked from, once each.
    Redrive {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only print what would move.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete matching parked messages.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask for confirmation (required without a terminal).
        #[arg(long, short)]
        yes: bool,
    },
}

/// Which parked messages a redrive or purge takes; all of them when nothing is given.
#[derive(Debug, Clone, Args)]
pub(crate) struct FilterArgs {
    /// Only this consumer queue's parked messages (e.g. `payment.commands`).
    #[arg(long)]
    queue: Option<String>,
    /// Only messages of this saga (their correlation id).
    #[arg(long, value_name = "SAGA_ID")]
    saga: Option<String>,
    /// Only messages of this type; `*` and `#` work as in AMQP topic patterns.
    #[arg(long = "type", value_name = "TYPE")]
    message_type: Option<String>,
    /// Only this message; repeat for several.
    #[arg(long = "message-id", value_name = "ID")]
    message_ids: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            saga: self.saga.clone(),
            message_type: self.message_type.clone(),
            message_ids: self.message_ids.clone(),
        }
    }
}

pub async fn execute(
    settings: &Settings,
    command: DlqCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let topology = components::standard_topology();
    let wanted = match &command {
        DlqCommand::List { queue, .. } => queue.as_deref(),
        DlqCommand::Show { .. } => None,
        DlqCommand::Redrive { filter, .. } | DlqCommand::Purge { filter, .. } => {
            filter.queue.as_deref()
        }
    };
    let queues = match select_queues(&topology, wanted) {
        Ok(queues) => queues,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    if let DlqCommand::Purge { yes: false, .. } = &command
        && !std::io::stdin().is_terminal()
    {
        eprintln!(
            "error: refusing to purge without confirmation: standard input is not a terminal; \
             pass --yes to purge anyway"
        );
        return Ok(ExitCode::from(exit::PROBLEM));
    }

    let Some(bus) = broker::connect_or_report(settings).await? else {
        return Ok(ExitCode::from(exit::UNREACHABLE));
    };
    let outcome = match command {
        DlqCommand::List { limit, .. } => list(&bus, &queues, limit, json).await,
        DlqCommand::Show { message_id } => show(&bus, &queues, &message_id, json).await,
        DlqCommand::Redrive { filter, dry_run } => {
            redrive(&bus, &topology, &queues, &filter.filter(), dry_run, json).await
        }
        DlqCommand::Purge { filter, yes } => {
            purge(&bus, &queues, &filter.filter(), yes, json).await
        }
    };
    bus.close().await;
    match outcome {
        Err(error) if error.downcast_ref::<MissingQueue>().is_some() => {
            eprintln!("error: {error:#}");
            Ok(ExitCode::from(exit::NOT_FOUND))
        }
        other => other,
    }
}

/// The consumer queues whose parking queues a command reads: all of them, or the one named
/// (by its own name or its parking queue's).
fn select_queues(topology: &Topology, wanted: Option<&str>) -> Result<Vec<String>, String> {
    let names: Vec<String> = topology.consumers.iter().map(|c| c.name.clone()).collect();
    let Some(wanted) = wanted else {
        return Ok(names);
    };
    names
        .iter()
        .find(|name| wanted == name.as_str() || wanted == routing::parking_queue(name))
        .map(|name| vec![name.clone()])
        .ok_or_else(|| {
            format!(
                "unknown queue {wanted:?}; parked messages are kept for: {}",
                names.join(", ")
            )
        })
}

pub(super) fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn queues_are_named_by_consumer_queue_or_parking_queue() {
        let topology = components::standard_topology();
        assert_eq!(
            select_queues(&topology, None).unwrap().len(),
            topology.consumers.len()
        );
        assert_eq!(
            select_queues(&topology, Some("order.commands")).unwrap(),
            ["order.commands"]
        );
        assert_eq!(
            select_queues(&topology, Some("order.commands.dead")).unwrap(),
            ["order.commands"]
        );
        let unknown = select_queues(&topology, Some("orders")).unwrap_err();
        assert!(
            unknown.contains("\"orders\"") && unknown.contains("payment.commands"),
            "{unknown}"
        );
    }
}
