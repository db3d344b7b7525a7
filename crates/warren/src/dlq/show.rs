//! `warren dlq show`: everything about one parked message, with its AMQP properties and
//! headers rendered as JSON.

use std::process::ExitCode;

use bus::Bus;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Serialize;
use serde_json::{Value, json};

use super::or_dash;
use super::parked::{Filter, Summary, X_DEATH, headers, integer, summarize, time};
use super::queue::Reader;
use crate::exit;
use crate::output::{self, Table, paint};

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

pub(super) async fn show(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use contracts::routing;

    use super::*;
    use crate::dlq::fixtures::parked_by_broker;

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
    fn bodies_show_as_json_when_they_are() {
        assert_eq!(payload_json(br#"{"a": 1}"#), Some(json!({"a": 1})));
        assert_eq!(payload_json(b"{not json"), None);
    }
}
