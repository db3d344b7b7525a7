//! `warren dlq list`: how many messages wait in each parking queue, and which.

use std::process::ExitCode;

use bus::Bus;
use serde::Serialize;
use serde_json::json;

use super::or_dash;
use super::parked::{Summary, summarize};
use super::queue::Reader;
use crate::output::{self, Table, paint, shorten};

/// How much of a reason a table shows; `show` and `--json` give all of it.
const REASON_WIDTH: usize = 60;

#[derive(Debug, Serialize)]
struct QueueListing {
    queue: String,
    parking_queue: String,
    count: u32,
    messages: Vec<Summary>,
}

pub(super) async fn list(
    bus: &Bus,
    queues: &[String],
    limit: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut listings = Vec::new();
    for queue in queues {
        let mut reader = Reader::open(bus, queue).await?;
        let mut messages = Vec::new();
        let peeked = async {
            while u32::try_from(messages.len()).unwrap_or(u32::MAX) < limit {
                let Some(delivery) = reader.next().await? else {
                    break;
                };
                messages.push(summarize(&delivery.properties));
            }
            anyhow::Ok(())
        }
        .await;
        let listing = QueueListing {
            queue: reader.consumer.clone(),
            parking_queue: reader.name.clone(),
            count: reader.count,
            messages,
        };
        reader.release().await;
        peeked?;
        listings.push(listing);
    }
    let total: u64 = listings.iter().map(|l| u64::from(l.count)).sum();
    if json {
        output::json(&json!({"queues": listings, "total": total}))?;
        return Ok(ExitCode::SUCCESS);
    }

    let mut counts = Table::new(&["queue", "parking queue", "parked"]);
    for listing in &listings {
        let style = if listing.count == 0 {
            Some("dim")
        } else {
            Some("yellow")
        };
        counts.row(vec![
            (listing.queue.clone(), None),
            (listing.parking_queue.clone(), None),
            (listing.count.to_string(), style),
        ]);
    }
    counts.print();
    if total == 0 {
        println!("\nno parked messages");
        return Ok(ExitCode::SUCCESS);
    }
    let mut messages = Table::new(&[
        "message id",
        "type",
        "saga",
        "attempt",
        "parked from",
        "reason",
        "parked at",
    ]);
    for message in listings.iter().flat_map(|l| &l.messages) {
        let when = match (&message.parked_at, &message.sent_at) {
            (Some(parked), _) => parked.clone(),
            (None, Some(sent)) => format!("sent {sent}"),
            (None, None) => "-".into(),
        };
        messages.row(vec![
            (or_dash(message.message_id.as_deref()), None),
            (or_dash(message.message_type.as_deref()), None),
            (or_dash(message.saga_id.as_deref()), Some("dim")),
            (message.attempt.map_or("-".into(), |a| a.to_string()), None),
            (or_dash(message.parked_from.as_deref()), None),
            (
                shorten(message.reason.as_deref().unwrap_or("-"), REASON_WIDTH),
                Some("red"),
            ),
            (when, Some("dim")),
        ]);
    }
    println!();
    messages.print();
    for listing in &listings {
        let shown = u32::try_from(listing.messages.len()).unwrap_or(u32::MAX);
        if shown < listing.count {
            println!(
                "{}",
                paint(
                    &format!(
                        "... {} more in {} (raise --limit to see them)",
                        listing.count - shown,
                        listing.parking_queue
                    ),
                    "dim"
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
