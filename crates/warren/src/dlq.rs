//! `warren dlq ...`: see, redrive and purge parked messages, picked one by one.
//!
//! A message lands in its consumer's parking queue `<queue>.dead` in one of two ways: the
//! consumer runner parks it (it could not be decoded, failed its schema, or failed for good)
//! with the headers `x-warren-parked-reason` and `x-warren-parked-from`, or the broker
//! dead-letters it on its own (the queue's delivery limit) and adds `x-death`. Where a shovel
//! moves a whole error queue, these commands choose messages by queue, saga, type or id.
//!
//! Every command reads a parking queue the same way ([`Reader`]): `basic.get` without ack, at
//! most as many messages as the queue held when the command began, never requeueing during the
//! run, so no message comes round twice. What the command acts on is acked; closing the channel
//! gives every other message back untouched, in its place.
//!
//! Redrive publishes a copy to the default exchange with the source queue as routing key (only
//! that consumer gets it, whatever else is bound to the message's type), confirmed, and acks the
//! parked copy only after the confirm. If the process dies in between, the message is back and
//! still parked; the next redrive sends it again and the consumer's inbox skips it by its message
//! id, so nothing takes effect twice.

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use bus::topology::topic_matches;
use bus::{Bus, BusError, Outgoing, Publisher, Topology, amqp};
use clap::{Args, Subcommand};
use contracts::routing;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use serde_json::{Value, json};
// The workspace's chrono, as sqlx re-exports it; only for showing AMQP timestamps.
use sqlx::types::chrono::{DateTime, Utc};

use crate::output::{self, Table, paint};
use crate::settings::Settings;
use crate::{broker, exit};

/// Bad usage, clap's own exit code.
const USAGE: u8 = 2;
/// How much of a reason a table shows; `show` and `--json` give all of it.
const REASON_WIDTH: usize = 60;

/// The header RabbitMQ adds when it dead-letters a message: a list of tables, most recent first.
const X_DEATH: &str = "x-death";
/// Headers a parking added (Warren's and the broker's) or the parking queue added on
/// redelivery; a redriven message goes back without them.
const PARKING_HEADERS: [&str; 10] = [
    routing::HEADER_PARKED_REASON,
    routing::HEADER_PARKED_FROM,
    X_DEATH,
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
];

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
pub struct FilterArgs {
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
    let topology = Topology::standard();
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

/// A parking queue that does not exist on the broker (the topology was never applied).
#[derive(Debug)]
struct MissingQueue(String);

impl std::fmt::Display for MissingQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the parking queue {} does not exist on the broker; declare the topology with \
             `warren topology apply`",
            self.0
        )
    }
}

impl std::error::Error for MissingQueue {}

// ---------------------------------------------------------------------------------------------
// Reading a parking queue

/// One parking queue being read on a channel of its own: each message it held at the start, at
/// most once, none taken from it until acked.
struct Reader {
    /// The consumer queue the parking queue belongs to.
    consumer: String,
    name: String,
    channel: Channel,
    /// Messages in the queue when it was opened.
    count: u32,
    left: u32,
}

impl Reader {
    async fn open(bus: &Bus, consumer: &str) -> anyhow::Result<Self> {
        let name = routing::parking_queue(consumer);
        let channel = bus.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(|error| {
                if is_not_found(&error) {
                    anyhow::Error::new(MissingQueue(name.clone()))
                } else {
                    BusError::Amqp {
                        operation: "queue.declare",
                        source: error,
                    }
                    .into()
                }
            })?;
        let count = queue.message_count();
        Ok(Self {
            consumer: consumer.to_owned(),
            name,
            channel,
            count,
            left: count,
        })
    }

    /// The next message, held (unacked) until acked or the reader is released. `None` once as
    /// many messages as the queue held at the start were taken, so messages published or
    /// returned meanwhile are not seen twice.
    async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let got = self
            .channel
            .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BusError::amqp("basic.get"))?;
        if got.is_none() {
            // Someone else took the rest (another `dlq` run holds them).
            self.left = 0;
        }
        Ok(got.map(|message| message.delivery))
    }

    /// Gives every message not acked back to the queue, in its place.
    async fn release(self) {
        if let Err(error) = self.channel.close(200, "warren dlq done".into()).await {
            tracing::warn!(%error, queue = %self.name, "closing the channel; unacked messages return when the connection closes");
        }
    }
}

async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(BusError::amqp("basic.ack"))?;
    Ok(())
}

fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

// ---------------------------------------------------------------------------------------------
// Pure: filters, where a message came from, what goes back

/// Which messages a command takes; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Filter {
    saga: Option<String>,
    /// An AMQP topic pattern over the message type.
    message_type: Option<String>,
    /// Any of these ids; empty for any message.
    message_ids: Vec<String>,
}

impl Filter {
    fn for_message(message_id: &str) -> Self {
        Self {
            message_ids: vec![message_id.to_owned()],
            ..Self::default()
        }
    }

    fn matches(&self, properties: &BasicProperties) -> bool {
        let same = |wanted: &str, actual: &Option<ShortString>| {
            actual
                .as_ref()
                .is_some_and(|actual| actual.as_str().eq_ignore_ascii_case(wanted.trim()))
        };
        self.saga
            .as_deref()
            .is_none_or(|saga| same(saga, properties.correlation_id()))
            && self.message_type.as_deref().is_none_or(|pattern| {
                properties
                    .kind()
                    .as_ref()
                    .is_some_and(|kind| topic_matches(pattern, kind.as_str()))
            })
            && (self.message_ids.is_empty()
                || self
                    .message_ids
                    .iter()
                    .any(|id| same(id, properties.message_id())))
    }
}

/// Who parked a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum ParkedBy {
    /// The consumer runner, with its headers.
    Warren,
    /// The broker's own dead-lettering (`x-death`), e.g. on the delivery limit.
    Broker,
    /// Neither left a trace (published into the parking queue by hand, say).
    Unknown,
}

impl ParkedBy {
    fn label(self) -> &'static str {
        match self {
            Self::Warren => "warren (consumer runner)",
            Self::Broker => "broker (dead-lettering)",
            Self::Unknown => "unknown",
        }
    }
}

/// What a parked message says about itself, for tables and `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Summary {
    message_id: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    saga_id: Option<String>,
    attempt: Option<i64>,
    parked_by: ParkedBy,
    /// The queue it was parked from: where a redrive sends it.
    parked_from: Option<String>,
    reason: Option<String>,
    /// When it was parked, if known: the broker records it; the consumer runner does not.
    parked_at: Option<String>,
    /// When it was first published (AMQP `timestamp`).
    sent_at: Option<String>,
}

fn text(property: &Option<ShortString>) -> Option<String> {
    property.as_ref().map(ToString::to_string)
}

fn headers(properties: &BasicProperties) -> &BTreeMap<ShortString, AMQPValue> {
    static EMPTY: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
    properties
        .headers()
        .as_ref()
        .map_or(&EMPTY, FieldTable::inner)
}

/// The most recent broker dead-lettering of a message (`x-death` holds the latest first).
fn last_death(properties: &BasicProperties) -> Option<&FieldTable> {
    match headers(properties).get(X_DEATH)? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

fn time(seconds: u64) -> Option<String> {
    let seconds = i64::try_from(seconds).ok()?;
    DateTime::<Utc>::from_timestamp(seconds, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn summarize(properties: &BasicProperties) -> Summary {
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let header = |name: &str| amqp::header_text(table, name);
    let death = last_death(properties);
    let death_text = |name: &str| death.and_then(|d| amqp::header_text(d, name));
    let (parked_by, parked_from, reason, parked_at) =
        match (header(routing::HEADER_PARKED_FROM), death) {
            (Some(from), _) => (
                ParkedBy::Warren,
                Some(from),
                header(routing::HEADER_PARKED_REASON),
                None,
            ),
            (None, Some(death)) => {
                let why = death_text("reason").unwrap_or_else(|| "unknown".into());
                let count = death.inner().get("count").and_then(integer);
                let reason = match count {
                    Some(count) => format!("dead-lettered by the broker: {why} (count {count})"),
                    None => format!("dead-lettered by the broker: {why}"),
                };
                let at = match death.inner().get("time") {
                    Some(AMQPValue::Timestamp(seconds)) => time(*seconds),
                    _ => None,
                };
                (ParkedBy::Broker, death_text("queue"), Some(reason), at)
            }
            (None, None) => (
                ParkedBy::Unknown,
                None,
                header(routing::HEADER_PARKED_REASON),
                None,
            ),
        };
    Summary {
        message_id: text(properties.message_id()),
        message_type: text(properties.kind()),
        saga_id: text(properties.correlation_id()),
        attempt: headers(properties)
            .get(routing::HEADER_ATTEMPT)
            .and_then(integer),
        parked_by,
        parked_from,
        reason,
        parked_at,
        sent_at: properties.timestamp().and_then(time),
    }
}

/// The properties a redriven message goes back with: the original ones, without the parking
/// headers, on its first attempt again (so it gets every retry tier anew).
fn redriven_properties(parked: &BasicProperties) -> BasicProperties {
    let mut kept: BTreeMap<ShortString, AMQPValue> = headers(parked)
        .iter()
        .filter(|(name, _)| !PARKING_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    kept.insert(routing::HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(1));
    parked.clone().with_headers(FieldTable::from(kept))
}

/// An AMQP value as JSON: text as strings, AMQP timestamps as RFC 3339.
fn value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::Float(n) => Value::from(*n),
        AMQPValue::Double(n) => Value::from(*n),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10_f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(items) => items.as_slice().iter().map(value_json).collect(),
        AMQPValue::Timestamp(seconds) => time(*seconds).map_or(Value::from(*seconds), Value::from),
        AMQPValue::FieldTable(table) => table_json(table),
        AMQPValue::ByteArray(bytes) => Value::from(
            bytes
                .as_slice()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        ),
        AMQPValue::Void => Value::Null,
        number => integer(number).map_or(Value::Null, Value::from),
    }
}

fn table_json(table: &FieldTable) -> Value {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.to_string(), value_json(value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Every property that is set, headers aside.
fn properties_json(p: &BasicProperties) -> Value {
    let mut map = serde_json::Map::new();
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            map.insert(name.to_owned(), value);
        }
    };
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| Value::from(s.as_str()));
    put("message_id", text(p.message_id()));
    put("correlation_id", text(p.correlation_id()));
    put("type", text(p.kind()));
    put("app_id", text(p.app_id()));
    put(
        "timestamp",
        p.timestamp()
            .map(|seconds| time(seconds).map_or(Value::from(seconds), Value::from)),
    );
    put("content_type", text(p.content_type()));
    put("content_encoding", text(p.content_encoding()));
    put("delivery_mode", p.delivery_mode().map(Value::from));
    put("priority", p.priority().map(Value::from));
    put("reply_to", text(p.reply_to()));
    put("expiration", text(p.expiration()));
    put("user_id", text(p.user_id()));
    put("cluster_id", text(p.cluster_id()));
    map.into()
}

/// The body as JSON when it is JSON.
fn payload_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// At most `width` characters of `text` on one line.
fn shorten(text: &str, width: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= width {
        return line;
    }
    let cut: String = line.chars().take(width.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

// ---------------------------------------------------------------------------------------------
// dlq list

#[derive(Debug, Serialize)]
struct QueueListing {
    queue: String,
    parking_queue: String,
    count: u32,
    messages: Vec<Summary>,
}

async fn list(bus: &Bus, queues: &[String], limit: u32, json: bool) -> anyhow::Result<ExitCode> {
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

// ---------------------------------------------------------------------------------------------
// dlq show

#[derive(Debug, Serialize)]
struct Shown {
    queue: String,
    parking_queue: String,
    /// How many parked copies carry this id (the same message parked twice).
    copies: usize,
    #[serde(flatten)]
    summary: Summary,
    properties: Value,
    headers: Value,
    x_death: Option<Value>,
    /// The body as JSON, when it is JSON.
    payload: Option<Value>,
    /// The body as text, when it is not JSON.
    body: Option<String>,
}

async fn show(
    bus: &Bus,
    queues: &[String],
    message_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let filter = Filter::for_message(message_id);
    let mut found: Vec<(String, String, Delivery)> = Vec::new();
    for queue in queues {
        let mut reader = Reader::open(bus, queue).await?;
        let searched = async {
            while let Some(delivery) = reader.next().await? {
                if filter.matches(&delivery.properties) {
                    found.push((reader.consumer.clone(), reader.name.clone(), delivery));
                }
            }
            anyhow::Ok(())
        }
        .await;
        reader.release().await;
        searched?;
    }
    let copies = found.len();
    let Some((queue, parking_queue, delivery)) = found.into_iter().next() else {
        eprintln!("error: no parked message with id {message_id}");
        return Ok(ExitCode::from(exit::NOT_FOUND));
    };
    let properties = &delivery.properties;
    let payload = payload_json(&delivery.data);
    let shown = Shown {
        queue,
        parking_queue,
        copies,
        summary: summarize(properties),
        properties: properties_json(properties),
        headers: properties
            .headers()
            .as_ref()
            .map_or_else(|| json!({}), table_json),
        x_death: headers(properties).get(X_DEATH).map(value_json),
        body: payload
            .is_none()
            .then(|| String::from_utf8_lossy(&delivery.data).into_owned()),
        payload,
    };
    if json {
        output::json(&shown)?;
    } else {
        print_shown(&shown)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_shown(shown: &Shown) -> anyhow::Result<()> {
    let summary = &shown.summary;
    println!(
        "{} {}  {}",
        paint("message", "bold"),
        or_dash(summary.message_id.as_deref()),
        or_dash(summary.message_type.as_deref())
    );
    let fact = |name: &str, value: String, style: Option<&str>| {
        let value = style.map_or_else(|| value.clone(), |style| paint(&value, style));
        println!("  {name:<12} {value}");
    };
    fact("parked in", shown.parking_queue.clone(), None);
    if shown.copies > 1 {
        fact(
            "copies",
            format!("{} (the same message parked more than once)", shown.copies),
            Some("yellow"),
        );
    }
    fact("parked from", or_dash(summary.parked_from.as_deref()), None);
    fact("parked by", summary.parked_by.label().to_owned(), None);
    fact("reason", or_dash(summary.reason.as_deref()), Some("red"));
    fact("parked at", or_dash(summary.parked_at.as_deref()), None);
    fact("saga", or_dash(summary.saga_id.as_deref()), None);
    fact(
        "attempt",
        summary.attempt.map_or("-".into(), |a| a.to_string()),
        None,
    );

    let print_map = |title: &str, map: &Value| {
        println!("\n{}", paint(title, "bold"));
        let mut table = Table::new(&["name", "value"]);
        if let Value::Object(entries) = map {
            for (name, value) in entries {
                let shown = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                table.row(vec![(name.clone(), None), (shown, None)]);
            }
        }
        if table.is_empty() {
            println!("(none)");
        } else {
            table.print();
        }
    };
    print_map("properties", &shown.properties);
    print_map("headers", &shown.headers);
    if let Some(deaths) = &shown.x_death {
        println!("\n{}", paint("x-death", "bold"));
        println!("{}", serde_json::to_string_pretty(deaths)?);
    }
    println!("\n{}", paint("payload", "bold"));
    match (&shown.payload, &shown.body) {
        (Some(payload), _) => println!("{}", serde_json::to_string_pretty(payload)?),
        (None, Some(body)) if !body.is_empty() => println!("{body}"),
        (None, _) => println!("(empty)"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dlq redrive and purge

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

async fn redrive(
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

async fn purge(
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

    use super::*;
    use lapin::types::{FieldArray, LongString};

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
    }

    fn message() -> BasicProperties {
        let mut envelope = contracts::Envelope::raw(
            "test",
            "payment.cmd.set_balance",
            json!({"customer_id": "c-1", "balance_cents": 100}),
        )
        .with_correlation(uuid::Uuid::now_v7())
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        envelope.attempt = 4;
        amqp::properties(&envelope)
    }

    fn parked_by_warren() -> BasicProperties {
        amqp::parked_properties(&message(), "payment.commands", "handler failed for good")
    }

    /// What the broker does on a delivery limit, history of an earlier retry included.
    fn parked_by_broker() -> BasicProperties {
        let death = |queue: &str, reason: &str, time: u64| {
            let mut table = FieldTable::default();
            table.insert("queue".into(), long(queue));
            table.insert("reason".into(), long(reason));
            table.insert("count".into(), AMQPValue::LongLongInt(1));
            table.insert("time".into(), AMQPValue::Timestamp(time));
            table.insert("exchange".into(), long(""));
            AMQPValue::FieldTable(table)
        };
        let original = message();
        let mut headers = original.headers().clone().unwrap();
        headers.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("payment.commands", "delivery_limit", 1_800_000_000),
                death("payment.commands.retry.1", "expired", 1_700_000_000),
            ])),
        );
        headers.insert(
            "x-first-death-queue".into(),
            long("payment.commands.retry.1"),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        original.with_headers(headers)
    }

    fn id(properties: &BasicProperties) -> String {
        properties.message_id().as_ref().unwrap().to_string()
    }

    #[test]
    fn an_empty_filter_takes_everything() {
        assert!(Filter::default().matches(&message()));
        assert!(Filter::default().matches(&BasicProperties::default()));
    }

    #[test]
    fn filters_pick_by_type_saga_and_id_and_all_must_hold() {
        let parked = parked_by_warren();
        let saga = parked.correlation_id().as_ref().unwrap().to_string();
        let by_type = |t: &str| Filter {
            message_type: Some(t.into()),
            ..Filter::default()
        };
        assert!(by_type("payment.cmd.set_balance").matches(&parked));
        assert!(by_type("payment.cmd.*").matches(&parked));
        assert!(by_type("payment.#").matches(&parked));
        assert!(!by_type("payment.cmd.charge").matches(&parked));
        assert!(!by_type("order.cmd.*").matches(&parked));

        let by_saga = |s: &str| Filter {
            saga: Some(s.into()),
            ..Filter::default()
        };
        assert!(by_saga(&saga).matches(&parked));
        assert!(by_saga(&saga.to_uppercase()).matches(&parked));
        assert!(!by_saga(&uuid::Uuid::now_v7().to_string()).matches(&parked));

        assert!(Filter::for_message(&id(&parked)).matches(&parked));
        assert!(!Filter::for_message("0190aaaa-0000-7000-8000-000000000000").matches(&parked));
        let any_of = Filter {
            message_ids: vec!["nope".into(), id(&parked)],
            ..Filter::default()
        };
        assert!(any_of.matches(&parked));

        let both = Filter {
            saga: Some(saga.clone()),
            message_type: Some("order.cmd.create".into()),
            ..Filter::default()
        };
        assert!(!both.matches(&parked), "every condition must hold");
    }

    #[test]
    fn a_message_without_the_property_never_matches_a_filter_on_it() {
        let bare = BasicProperties::default();
        assert!(
            !Filter {
                message_type: Some("#".into()),
                ..Filter::default()
            }
            .matches(&bare)
        );
        assert!(
            !Filter {
                saga: Some("x".into()),
                ..Filter::default()
            }
            .matches(&bare)
        );
        assert!(!Filter::for_message("x").matches(&bare));
    }

    #[test]
    fn warren_parking_names_the_queue_and_the_reason() {
        let summary = summarize(&parked_by_warren());
        assert_eq!(summary.parked_by, ParkedBy::Warren);
        assert_eq!(summary.parked_from.as_deref(), Some("payment.commands"));
        assert_eq!(summary.reason.as_deref(), Some("handler failed for good"));
        assert_eq!(summary.attempt, Some(4));
        assert_eq!(
            summary.message_type.as_deref(),
            Some("payment.cmd.set_balance")
        );
        assert!(
            summary.parked_at.is_none(),
            "the consumer runner records no time"
        );
        assert!(summary.sent_at.is_some());
    }

    #[test]
    fn broker_dead_lettering_is_read_from_the_latest_x_death_entry() {
        let summary = summarize(&parked_by_broker());
        assert_eq!(summary.parked_by, ParkedBy::Broker);
        assert_eq!(summary.parked_from.as_deref(), Some("payment.commands"));
        assert_eq!(
            summary.reason.as_deref(),
            Some("dead-lettered by the broker: delivery_limit (count 1)")
        );
        assert_eq!(summary.parked_at.as_deref(), Some("2027-01-15T08:00:00Z"));
    }

    #[test]
    fn warren_headers_win_over_an_earlier_x_death() {
        // A message that went through a retry queue carries x-death from that TTL expiry;
        // where it was parked from is still Warren's header.
        let mut properties = parked_by_broker();
        let mut headers = properties.headers().clone().unwrap();
        headers.insert(routing::HEADER_PARKED_FROM.into(), long("payment.commands"));
        headers.insert(
            routing::HEADER_PARKED_REASON.into(),
            long("declined for good"),
        );
        properties = properties.with_headers(headers);
        let summary = summarize(&properties);
        assert_eq!(summary.parked_by, ParkedBy::Warren);
        assert_eq!(summary.reason.as_deref(), Some("declined for good"));
        assert!(summary.parked_at.is_none());
    }

    #[test]
    fn the_destination_is_a_consumer_queue_or_nothing() {
        let topology = Topology::standard();
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

    #[test]
    fn a_redriven_message_loses_the_parking_headers_and_starts_at_attempt_one() {
        for parked in [parked_by_warren(), parked_by_broker()] {
            let redriven = redriven_properties(&parked);
            let headers = redriven.headers().as_ref().unwrap();
            for name in PARKING_HEADERS {
                assert!(!headers.contains_key(name), "{name} was kept");
            }
            assert_eq!(
                headers.inner().get(routing::HEADER_ATTEMPT),
                Some(&AMQPValue::LongLongInt(1))
            );
            // Everything else is the original message, so inboxes still know it.
            assert_eq!(redriven.message_id(), parked.message_id());
            assert_eq!(redriven.correlation_id(), parked.correlation_id());
            assert_eq!(redriven.kind(), parked.kind());
            assert_eq!(redriven.timestamp(), parked.timestamp());
            assert_eq!(redriven.delivery_mode(), parked.delivery_mode());
            assert_eq!(
                amqp::header_text(headers, routing::HEADER_TRACEPARENT),
                amqp::header_text(
                    parked.headers().as_ref().unwrap(),
                    routing::HEADER_TRACEPARENT
                )
            );
            let decoded = amqp::decode(&redriven, b"{}").unwrap();
            assert_eq!(decoded.attempt, 1);
        }
        // A message that never had headers gets just the attempt.
        let bare = redriven_properties(&BasicProperties::default());
        assert_eq!(bare.headers().as_ref().unwrap().inner().len(), 1);
    }

    #[tokio::test]
    async fn a_run_sends_each_message_back_once_and_only_where_it_came_from() {
        let topology = Topology::standard();
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

    #[test]
    fn header_values_become_readable_json() {
        let properties = parked_by_broker();
        let deaths = value_json(headers(&properties).get(X_DEATH).unwrap());
        assert_eq!(deaths[0]["queue"], "payment.commands");
        assert_eq!(deaths[0]["reason"], "delivery_limit");
        assert_eq!(deaths[0]["count"], 1);
        assert_eq!(deaths[0]["time"], "2027-01-15T08:00:00Z");
        assert_eq!(deaths[1]["reason"], "expired");
        let all = table_json(properties.headers().as_ref().unwrap());
        assert_eq!(all[routing::HEADER_ATTEMPT], 4);
        assert_eq!(value_json(&AMQPValue::Void), Value::Null);
        assert_eq!(value_json(&AMQPValue::Boolean(true)), Value::from(true));
        let shown = properties_json(&properties);
        assert_eq!(shown["type"], "payment.cmd.set_balance");
        assert_eq!(shown["delivery_mode"], 2);
        assert!(
            shown.get("reply_to").is_none(),
            "unset properties are left out"
        );
    }

    #[test]
    fn queues_are_named_by_consumer_queue_or_parking_queue() {
        let topology = Topology::standard();
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

    #[test]
    fn reasons_are_shortened_to_one_line() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("a\n  b", 10), "a b");
        let long = shorten(&"x".repeat(100), 10);
        assert_eq!(long.chars().count(), 10);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn bodies_show_as_json_when_they_are() {
        assert_eq!(payload_json(br#"{"a": 1}"#), Some(json!({"a": 1})));
        assert_eq!(payload_json(b"{not json"), None);
    }
}
