//! Exchanges, queues and bindings, described once in code.
//!
//! `warren topology apply` declares them over AMQP; `warren topology export` renders the same
//! description in RabbitMQ's definitions format, which `rabbitmq/definitions.json` must match
//! (a test checks it), so the broker looks the same whichever way it was set up. Declaring is
//! the operator's job: components only [`Topology::check`] that it was done, since their users
//! may not configure shared names ([`crate::access`]).
//!
//! Every consumer queue is a durable quorum queue with a delivery limit and at-least-once
//! dead-lettering into its parking queue `<queue>.dead`; each retry tier is a quorum queue
//! `<queue>.retry.<n>` whose TTL dead-letters back to the consumer queue.
//!
//! Each service also has a classic `<service>.queries` queue for reads ([`crate::rpc`]),
//! reached through the default exchange, with no bindings: transient requests, a short TTL and a
//! length cap, so a service that is down does not gather stale reads.

use std::time::Duration;

use contracts::{Component, routing};
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use serde_json::{Value, json};

use crate::{Bus, BusError, RetryPolicy};

/// Redeliveries a quorum queue allows before it dead-letters a message on its own (a handler
/// that crashes the process every time, say).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 10;
/// How many messages the audit queue keeps before dropping the oldest.
pub const AUDIT_MAX_LENGTH: u32 = 10_000;
/// The audit queue's binding key on `warren` while it is tapped: everything.
pub const AUDIT_KEY: &str = "#";
/// How long a query may wait in its queue: its requester gave up long before.
pub const QUERY_TTL: Duration = Duration::from_secs(10);
/// How many queries may wait in one queue; beyond that, requests are refused at once.
pub const QUERY_MAX_LENGTH: u32 = 10_000;
/// One consumer's queue and what it listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerQueue {
    pub name: String,
    /// Binding keys on the `warren` exchange.
    pub bindings: Vec<String>,
    pub delivery_limit: u32,
    pub retry: RetryPolicy,
}

impl ConsumerQueue {
    pub fn new(name: impl Into<String>, bindings: &[&str]) -> Self {
        Self {
            name: name.into(),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            retry: RetryPolicy::standard(),
        }
    }

    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    #[must_use]
    pub fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit;
        self
    }

    pub fn parking_queue(&self) -> String {
        routing::parking_queue(&self.name)
    }

    pub fn retry_queue(&self, tier: usize) -> String {
        routing::retry_queue(&self.name, tier)
    }
}

/// The whole broker layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub consumers: Vec<ConsumerQueue>,
    /// Query queues (`<service>.queries`), reached through the default exchange.
    pub queries: Vec<String>,
    /// The capped `warren.audit` queue; tests leave it out. It is bound (with `#`, a copy of
    /// every message) only while an operator taps it ([`Topology::tap_audit`]): each copy
    /// costs the broker as much again as the message's own queue.
    pub audit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueType {
    Quorum,
    Classic,
}

/// A queue as the broker sees it: name, type and arguments.
#[derive(Debug, Clone, PartialEq)]
struct QueueSpec {
    name: String,
    kind: QueueType,
    arguments: Vec<(&'static str, Arg)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Text(String),
    Number(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct BindingSpec {
    exchange: &'static str,
    queue: String,
    key: String,
}

impl Topology {
    /// The layout the components declare ([`Component::consumes`], their queries queues) and
    /// the capped audit queue. `saga.replies` is bound to nothing until
    /// [`Topology::with_saga_replies`] binds it to the replies of the saga definitions.
    pub fn of_components<'a>(components: impl IntoIterator<Item = &'a Component>) -> Self {
        let mut consumers = Vec::new();
        let mut queries = Vec::new();
        for component in components {
            consumers.extend(
                component
                    .consumes
                    .iter()
                    .map(|q| ConsumerQueue::new(q.name, q.bindings)),
            );
            queries.extend(component.query_queue());
        }
        Self {
            consumers,
            queries,
            audit: true,
        }
    }

    /// A topology of just these consumers, no query queues, no audit queue (for tests and single
    /// components).
    pub fn of(consumers: Vec<ConsumerQueue>) -> Self {
        Self {
            consumers,
            queries: Vec::new(),
            audit: false,
        }
    }

    /// Adds a query queue.
    #[must_use]
    pub fn with_query_queue(mut self, name: impl Into<String>) -> Self {
        self.queries.push(name.into());
        self
    }

    pub fn consumer(&self, name: &str) -> Option<&ConsumerQueue> {
        self.consumers.iter().find(|c| c.name == name)
    }

    /// The same topology with `saga.replies` bound to these reply types as well: the replies
    /// the saga definitions at hand wait for (`Definition::reply_types`), so that a new version
    /// that waits for a new reply gets it once `warren topology apply` has run with it.
    #[must_use]
    pub fn with_saga_replies<S: Into<String>>(
        mut self,
        replies: impl IntoIterator<Item = S>,
    ) -> Self {
        if let Some(queue) = self.consumers.iter_mut().find(|c| c.name == "saga.replies") {
            for reply in replies {
                let reply = reply.into();
                if !queue.bindings.contains(&reply) {
                    queue.bindings.push(reply);
                }
            }
        }
        self
    }

    /// Names of the consumer queues a routing key reaches (not counting the audit queue).
    pub fn routes(&self, routing_key: &str) -> Vec<&str> {
        self.consumers
            .iter()
            .filter(|c| c.bindings.iter().any(|b| topic_matches(b, routing_key)))
            .map(|c| c.name.as_str())
            .collect()
    }

    fn exchanges() -> [(&'static str, ExchangeKind, &'static str); 4] {
        [
            (routing::EXCHANGE, ExchangeKind::Topic, "topic"),
            (routing::CONTROL_EXCHANGE, ExchangeKind::Topic, "topic"),
            (
                routing::DEAD_LETTER_EXCHANGE,
                ExchangeKind::Direct,
                "direct",
            ),
            (routing::RETRY_EXCHANGE, ExchangeKind::Direct, "direct"),
        ]
    }

    fn queues(&self) -> Vec<QueueSpec> {
        let mut queues = Vec::new();
        for consumer in &self.consumers {
            queues.push(QueueSpec {
                name: consumer.name.clone(),
                kind: QueueType::Quorum,
                arguments: vec![
                    (
                        "x-delivery-limit",
                        Arg::Number(consumer.delivery_limit.into()),
                    ),
                    (
                        "x-dead-letter-exchange",
                        Arg::Text(routing::DEAD_LETTER_EXCHANGE.into()),
                    ),
                    (
                        "x-dead-letter-routing-key",
                        Arg::Text(consumer.name.clone()),
                    ),
                    ("x-dead-letter-strategy", Arg::Text("at-least-once".into())),
                    ("x-overflow", Arg::Text("reject-publish".into())),
                ],
            });
            queues.push(QueueSpec {
                name: consumer.parking_queue(),
                kind: QueueType::Quorum,
                arguments: vec![],
            });
            for (tier, delay) in consumer.retry.delays.iter().enumerate() {
                queues.push(QueueSpec {
                    name: consumer.retry_queue(tier),
                    kind: QueueType::Quorum,
                    arguments: vec![
                        ("x-message-ttl", Arg::Number(millis(*delay))),
                        // The default exchange delivers straight back to the consumer queue.
                        ("x-dead-letter-exchange", Arg::Text(String::new())),
                        (
                            "x-dead-letter-routing-key",
                            Arg::Text(consumer.name.clone()),
                        ),
                        ("x-dead-letter-strategy", Arg::Text("at-least-once".into())),
                        ("x-overflow", Arg::Text("reject-publish".into())),
                    ],
                });
            }
        }
        for name in &self.queries {
            queues.push(QueueSpec {
                name: name.clone(),
                kind: QueueType::Classic,
                arguments: vec![
                    ("x-message-ttl", Arg::Number(millis(QUERY_TTL))),
                    ("x-overflow", Arg::Text("reject-publish".into())),
                    ("x-max-length", Arg::Number(QUERY_MAX_LENGTH.into())),
                ],
            });
        }
        if self.audit {
            queues.push(QueueSpec {
                name: routing::AUDIT_QUEUE.into(),
                kind: QueueType::Classic,
                arguments: vec![("x-max-length", Arg::Number(AUDIT_MAX_LENGTH.into()))],
            });
        }
        queues
    }

    fn bindings(&self) -> Vec<BindingSpec> {
        let mut bindings = Vec::new();
        for consumer in &self.consumers {
            for key in &consumer.bindings {
                bindings.push(BindingSpec {
                    exchange: routing::EXCHANGE,
                    queue: consumer.name.clone(),
                    key: key.clone(),
                });
            }
            bindings.push(BindingSpec {
                exchange: routing::DEAD_LETTER_EXCHANGE,
                queue: consumer.parking_queue(),
                key: consumer.name.clone(),
            });
            for tier in 0..consumer.retry.delays.len() {
                let queue = consumer.retry_queue(tier);
                bindings.push(BindingSpec {
                    exchange: routing::RETRY_EXCHANGE,
                    key: queue.clone(),
                    queue,
                });
            }
        }
        bindings
    }

    /// Binds the audit queue to every message on `warren` (`on`) or unbinds it. Idempotent.
    pub async fn tap_audit(channel: &Channel, on: bool) -> Result<(), BusError> {
        let (queue, exchange) = (routing::AUDIT_QUEUE.into(), routing::EXCHANGE.into());
        if on {
            channel
                .queue_bind(
                    queue,
                    exchange,
                    AUDIT_KEY.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BusError::amqp("queue.bind"))
        } else {
            channel
                .queue_unbind(queue, exchange, AUDIT_KEY.into(), FieldTable::default())
                .await
                .map_err(BusError::amqp("queue.unbind"))
        }
    }

    /// Declares everything on the broker. Idempotent; fails if a queue exists with other
    /// arguments (the broker refuses to change a queue in place).
    pub async fn declare(&self, channel: &Channel) -> Result<(), BusError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind, _) in Self::exchanges() {
            channel
                .exchange_declare(name.into(), kind, durable, FieldTable::default())
                .await
                .map_err(BusError::amqp("exchange.declare"))?;
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        for queue in self.queues() {
            channel
                .queue_declare(queue.name.as_str().into(), durable, queue.field_table())
                .await
                .map_err(BusError::amqp("queue.declare"))?;
        }
        for binding in self.bindings() {
            channel
                .queue_bind(
                    binding.queue.as_str().into(),
                    binding.exchange.into(),
                    binding.key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BusError::amqp("queue.bind"))?;
        }
        Ok(())
    }

    /// Checks, changing nothing, that every exchange and queue of this topology exists: what a
    /// component does at start, leaving the declaring to the operator. Passive declares need no
    /// permission. Fails with the first name missing ([`BusError::Missing`]).
    pub async fn check(&self, bus: &Bus) -> Result<(), BusError> {
        let channel = bus.channel().await?;
        let exchange = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind, _) in Self::exchanges() {
            channel
                .exchange_declare(name.into(), kind, exchange, FieldTable::default())
                .await
                .map_err(|error| missing("exchange", name, error))?;
        }
        let queue = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        for spec in self.queues() {
            channel
                .queue_declare(spec.name.as_str().into(), queue, FieldTable::default())
                .await
                .map_err(|error| missing("queue", &spec.name, error))?;
        }
        let _ = channel.close(200, "topology checked".into()).await;
        Ok(())
    }

    /// Deletes every queue of this topology (not the shared exchanges). For tests.
    pub async fn delete_queues(&self, channel: &Channel) -> Result<(), BusError> {
        for queue in self.queues() {
            channel
                .queue_delete(queue.name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(BusError::amqp("queue.delete"))?;
        }
        Ok(())
    }

    /// The `exchanges`, `queues` and `bindings` sections of RabbitMQ definitions for `vhost`.
    pub fn definitions(&self, vhost: &str) -> Value {
        let exchanges: Vec<Value> = Self::exchanges()
            .iter()
            .map(|(name, _, kind)| {
                json!({"name": name, "vhost": vhost, "type": kind, "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}})
            })
            .collect();
        let queues: Vec<Value> = self
            .queues()
            .iter()
            .map(|q| {
                json!({"name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                       "arguments": q.json_arguments()})
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings()
            .iter()
            .map(|b| {
                json!({"source": b.exchange, "vhost": vhost, "destination": b.queue,
                       "destination_type": "queue", "routing_key": b.key, "arguments": {}})
            })
            .collect();
        json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
    }
}

impl QueueSpec {
    fn all_arguments(&self) -> Vec<(&'static str, Arg)> {
        let kind = match self.kind {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        let mut arguments = vec![("x-queue-type", Arg::Text(kind.into()))];
        arguments.extend(self.arguments.iter().cloned());
        arguments
    }

    fn field_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in self.all_arguments() {
            let value = match value {
                Arg::Text(text) => AMQPValue::LongString(LongString::from(text.into_bytes())),
                Arg::Number(n) => AMQPValue::LongLongInt(n),
            };
            table.insert(key.into(), value);
        }
        table
    }

    fn json_arguments(&self) -> Value {
        self.all_arguments()
            .into_iter()
            .map(|(key, value)| {
                let value = match value {
                    Arg::Text(text) => Value::from(text),
                    Arg::Number(n) => Value::from(n),
                };
                (key.to_owned(), value)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// A failed passive declare: `NOT_FOUND` means the name is missing, anything else is trouble
/// reaching the broker.
fn missing(kind: &'static str, name: &str, error: lapin::Error) -> BusError {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
        {
            BusError::Missing {
                kind,
                name: name.to_owned(),
            }
        }
        _ => BusError::Amqp {
            operation: "passive declare",
            source: error,
        },
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// AMQP topic matching: `*` is one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                go(&pattern[1..], key) || (!key.is_empty() && go(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => go(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k => go(&pattern[1..], &key[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}

#[cfg(test)]
mod tests;
