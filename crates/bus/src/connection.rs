//! One supervised connection per process.
//!
//! lapin's automatic recovery reconnects and replays channels, consumers, QoS and confirm mode
//! after a network failure or a forced close; we give it a patient back-off so a broker restart
//! of a minute is survived. The first connection is retried with the `backoff` crate, so a
//! process may start before the broker does.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tracing::{info, warn};

use crate::{BusError, Publisher};

/// Where and how to connect.
#[derive(Clone)]
pub struct BusSettings {
    /// `amqp://user:password@host:port/vhost`. Holds a secret: never logged.
    pub url: String,
    /// Shown in the management UI's connection list (`warren-<component>`).
    pub connection_name: String,
    /// How long to keep trying the first connection before giving up.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for BusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusSettings")
            .field("url", &redact(&self.url))
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The URL with its password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A handle on the process's connection. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    connection: Arc<Connection>,
    name: Arc<str>,
    user: Arc<str>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("connected", &self.connection.status().connected())
            .finish()
    }
}

impl Bus {
    /// Connects, retrying with exponential back-off until `connect_timeout` has passed.
    pub async fn connect(settings: &BusSettings) -> Result<Self, BusError> {
        let policy = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(100))
            .with_max_interval(Duration::from_secs(2))
            .with_max_elapsed_time(Some(settings.connect_timeout))
            .build();
        // lapin retries the TCP connect itself (the recovery back-off), so one attempt against
        // a broker that refuses connections would never end: bound the whole wait.
        let attempts = backoff::future::retry_notify(
            policy,
            || async {
                Connection::connect(&settings.url, connection_properties(settings))
                    .await
                    .map_err(|error| {
                        if is_refusal(&error) {
                            backoff::Error::permanent(error)
                        } else {
                            backoff::Error::transient(error)
                        }
                    })
            },
            |error, wait| warn!(%error, ?wait, "RabbitMQ not reachable yet; retrying"),
        );
        let connection = tokio::time::timeout(settings.connect_timeout, attempts)
            .await
            .map_err(|_| BusError::ConnectTimeout {
                url: redact(&settings.url),
                after: settings.connect_timeout,
            })?
            .map_err(|source| BusError::Connect {
                url: redact(&settings.url),
                source,
            })?;
        let user = user_of(&settings.url);
        info!(name = %settings.connection_name, %user, "connected to RabbitMQ");
        Ok(Self {
            connection: Arc::new(connection),
            name: settings.connection_name.as_str().into(),
            user: user.into(),
        })
    }

    /// A fresh channel.
    pub async fn channel(&self) -> Result<Channel, BusError> {
        self.connection
            .create_channel()
            .await
            .map_err(BusError::amqp("channel.open"))
    }

    /// A private queue for watching traffic (live events, control messages): exclusive,
    /// deleted with the connection, bound to `keys` on `exchange`, read without acks. Returns
    /// its channel (keep it for recovery) and the deliveries.
    ///
    /// The queue is named here, not by the broker: lapin's recovery declares a lost queue again
    /// under its old name, which the broker refuses for its own `amq.gen-*` names.
    pub async fn watch(
        &self,
        purpose: &str,
        exchange: &str,
        keys: &[&str],
    ) -> Result<(Channel, Consumer), BusError> {
        let channel = self.channel().await?;
        let name = format!("{}.{purpose}.{}", self.name, uuid::Uuid::now_v7().simple());
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.as_str().into(), private, FieldTable::default())
            .await
            .map_err(BusError::amqp("queue.declare"))?;
        for key in keys {
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BusError::amqp("queue.bind"))?;
        }
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                format!("{}@{purpose}", self.name).as_str().into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .map_err(BusError::amqp("basic.consume"))?;
        Ok((channel, consumer))
    }

    /// A publisher on its own channel in confirm mode.
    pub async fn publisher(&self) -> Result<Publisher, BusError> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BusError::amqp("confirm.select"))?;
        Ok(Publisher::new(channel))
    }

    /// Completes once the connection is gone for good: closed, failed, or down for longer than
    /// `patience` while lapin's recovery makes no progress. Watching, it counts recoveries
    /// (`warren_broker_reconnects_total`, from the twice-a-second look, so an outage shorter
    /// than that may go uncounted).
    pub async fn lost(&self, patience: Duration) {
        let mut down_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let status = self.connection.status();
            if status.errored() || status.closed() {
                warn!(errored = status.errored(), "the broker connection is gone");
                return;
            }
            metrics::gauge!("warren_broker_connected").set(f64::from(u8::from(status.connected())));
            if status.connected() {
                if down_since.take().is_some() {
                    // lapin's recovery brought the connection back.
                    metrics::counter!("warren_broker_reconnects_total").increment(1);
                    info!("the broker connection recovered");
                }
                continue;
            }
            let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > patience {
                warn!(
                    reconnecting = status.reconnecting(),
                    ?patience,
                    "the broker connection has not recovered"
                );
                return;
            }
        }
    }

    /// Whether the connection is up right now (for readiness probes).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user this connection logged in as: what the broker accepts as the `user_id` of the
    /// messages it publishes.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Closes the connection cleanly; unacked deliveries return to their queues.
    pub async fn close(&self) {
        if let Err(error) = self.connection.close(200, "shutting down".into()).await {
            warn!(%error, "closing the RabbitMQ connection");
        }
    }
}

/// The user of an AMQP URL, decoded as lapin decodes it (`guest` when the URL names none).
pub fn user_of(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_default()
}

/// A broker that answers but refuses us (unknown vhost, bad credentials) will not change its
/// mind by waiting: fail at once with its reason.
fn is_refusal(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                | AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
        ),
        _ => false,
    }
}

fn connection_properties(settings: &BusSettings) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_connection_name(settings.connection_name.as_str().into())
        .enable_auto_recover()
        // Keep reconnecting through a broker restart: up to ~5 s apart, for hours.
        .configure_backoff(|b| {
            b.with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(5_000)
                .with_jitter()
        })
}

#[cfg(test)]
mod tests {
    use super::{redact, user_of};

    #[test]
    fn the_user_comes_from_the_url() {
        assert_eq!(
            user_of("amqp://warren-payment:s3cret@broker:5672/warren"),
            "warren-payment"
        );
        assert_eq!(user_of("amqp://broker:5672/warren"), "guest");
        assert_eq!(user_of("amqp://a%40b@broker/warren"), "a@b");
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://warren:s3cret@broker:5672/warren"),
            "amqp://warren:***@broker:5672/warren"
        );
        assert_eq!(
            redact("amqp://broker:5672/warren"),
            "amqp://broker:5672/warren"
        );
    }
}
