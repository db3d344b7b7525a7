//! What a parked message says about itself, without I/O: which messages a filter takes, who
//! parked a message and from where, and the properties it goes back with.

use std::collections::BTreeMap;

use bus::amqp;
use bus::topology::topic_matches;
use contracts::routing;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Serialize;
// The workspace's chrono, as sqlx re-exports it; only for showing AMQP timestamps.
use sqlx::types::chrono::{DateTime, Utc};

/// The header RabbitMQ adds when it dead-letters a message: a list of tables, most recent first.
pub(super) const X_DEATH: &str = "x-death";
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

/// Which messages a command takes; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filter {
    pub(super) saga: Option<String>,
    /// An AMQP topic pattern over the message type.
    pub(super) message_type: Option<String>,
    /// Any of these ids; empty for any message.
    pub(super) message_ids: Vec<String>,
}

impl Filter {
    pub(super) fn for_message(message_id: &str) -> Self {
        Self {
            message_ids: vec![message_id.to_owned()],
            ..Self::default()
        }
    }

    pub(super) fn matches(&self, properties: &BasicProperties) -> bool {
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
pub(super) enum ParkedBy {
    /// The consumer runner, with its headers.
    Warren,
    /// The broker's own dead-lettering (`x-death`), e.g. on the delivery limit.
    Broker,
    /// Neither left a trace (published into the parking queue by hand, say).
    Unknown,
}

impl ParkedBy {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Warren => "warren (consumer runner)",
            Self::Broker => "broker (dead-lettering)",
            Self::Unknown => "unknown",
        }
    }
}

/// What a parked message says about itself, for tables and `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Summary {
    pub(super) message_id: Option<String>,
    #[serde(rename = "type")]
    pub(super) message_type: Option<String>,
    pub(super) saga_id: Option<String>,
    pub(super) attempt: Option<i64>,
    pub(super) parked_by: ParkedBy,
    /// The queue it was parked from: where a redrive sends it.
    pub(super) parked_from: Option<String>,
    pub(super) reason: Option<String>,
    /// When it was parked, if known: the broker records it; the consumer runner does not.
    pub(super) parked_at: Option<String>,
    /// When it was first published (AMQP `timestamp`).
    pub(super) sent_at: Option<String>,
}

pub(super) fn text(property: &Option<ShortString>) -> Option<String> {
    property.as_ref().map(ToString::to_string)
}

pub(super) fn headers(properties: &BasicProperties) -> &BTreeMap<ShortString, AMQPValue> {
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

pub(super) fn integer(value: &AMQPValue) -> Option<i64> {
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

pub(super) fn time(seconds: u64) -> Option<String> {
    let seconds = i64::try_from(seconds).ok()?;
    DateTime::<Utc>::from_timestamp(seconds, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

pub(super) fn summarize(properties: &BasicProperties) -> Summary {
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
pub(super) fn redriven_properties(parked: &BasicProperties) -> BasicProperties {
    let mut kept: BTreeMap<ShortString, AMQPValue> = headers(parked)
        .iter()
        .filter(|(name, _)| !PARKING_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    kept.insert(routing::HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(1));
    parked.clone().with_headers(FieldTable::from(kept))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::dlq::fixtures::{id, long, message, parked_by_broker, parked_by_warren};

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
}
