//! Errors of the bus layer. Each variant says whether retrying can help.

/// A failure to talk to the broker at all.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ at {url} did not accept a connection within {after:?}; is it running?")]
    ConnectTimeout {
        url: String,
        after: std::time::Duration,
    },
    #[error("broker operation {operation} failed: {source}")]
    Amqp {
        operation: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// Part of the topology is not on the broker: nobody applied it yet.
    #[error(
        "the broker has no {kind} {name:?} in this vhost: apply the topology first \
         (`warren topology apply` as the operator, or load rabbitmq/definitions.json)"
    )]
    Missing { kind: &'static str, name: String },
}

impl BusError {
    /// Wraps a lapin error with the operation that failed, for `map_err`.
    pub fn amqp(operation: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { operation, source }
    }
}

/// Why one message was not confirmed by the broker. The caller keeps the message (an outbox row
/// stays unpublished, a consumed message stays unacked) and tries again later.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No queue is bound for the routing key (the broker returned the `mandatory` message).
    #[error("unroutable: exchange {exchange:?} has no queue bound for {routing_key:?} ({reply})")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    /// The broker refused to take responsibility (a full queue with `reject-publish`, an
    /// internal error).
    #[error("nacked by the broker: exchange {exchange:?}, routing key {routing_key:?}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    /// The channel was not in confirm mode, so nothing vouches for the message.
    #[error("the broker was not asked to confirm the message")]
    Unconfirmed,
    /// The broker refused the publish (`ACCESS_REFUSED`): this user may not publish to that
    /// exchange or with that routing key. Sending it again cannot help; the permissions
    /// (`crate::access`) or the code are wrong.
    #[error("refused by the broker: {0}")]
    Refused(#[source] lapin::Error),
    /// The broker did not confirm in time: it may be blocked by a resource alarm (memory or
    /// disk), or the connection is hanging. Whether it took the message is unknown, so the
    /// sender must send it again later (a duplicate is absorbed by the receiver's inbox).
    #[error("the broker did not confirm within {0:?} (blocked by a resource alarm?)")]
    TimedOut(std::time::Duration),
    /// The connection failed and did not recover within the attempts allowed.
    #[error("connection lost while publishing: {0}")]
    Connection(#[source] lapin::Error),
}
