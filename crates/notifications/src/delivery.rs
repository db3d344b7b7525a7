//! Delivery: handing committed notifications to a [`Channel`], after and outside the
//! transaction that stored them, so a rolled-back transaction can never have sent anything.
//!
//! A [`Deliverer`] claims undelivered rows with `FOR UPDATE SKIP LOCKED` in batches, hands each
//! to its channel and marks it delivered in the same claiming transaction; any number of
//! deliverers can run at once without two of them holding the same row. A failure records
//! `attempts` and `last_error` and moves `available_at` back by a growing back-off (as the
//! outbox relay does), so a failing row never blocks the ones behind it; a permanent failure
//! (a bad address, a 5xx answer) or the last allowed attempt parks the row for a person, with
//! `available_at` at infinity. The insert trigger's `NOTIFY warren_notifications` wakes the
//! deliverers; a slow poll catches anything missed.
//!
//! Delivery is at least once: a channel that accepted a notification just before the
//! deliverer lost its connection (so the mark never committed) is handed it again. E-mails
//! carry a `Message-ID` made from the notification id, so mail clients can drop the copy.
//!
//! Channels: [`LogChannel`] (the default) and [`SmtpChannel`], which is off unless
//! [`SmtpSettings`] are given.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use store::StoreError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::render::Kind;

/// The channel the notifications table's insert trigger notifies on.
pub const NOTIFY_CHANNEL: &str = "warren_notifications";

/// A stored notification, as a channel receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub notification_id: Uuid,
    pub customer_id: String,
    pub kind: Kind,
    pub subject: Option<String>,
    pub message: String,
    pub created_at: DateTime<Utc>,
    /// Failed attempts before this one.
    pub attempts: u32,
}

/// Why a channel did not deliver a notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Might work later (server unreachable, busy, timed out): retried after a back-off.
    #[error("delivery failed, will retry: {0}")]
    Transient(String),
    /// Will not work as it stands (no valid address, the server refused for good): parked.
    #[error("delivery refused: {0}")]
    Permanent(String),
}

impl DeliveryError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

/// Somewhere a notification can go.
pub trait Channel: Send + Sync + 'static {
    /// Recorded on each row it delivered.
    fn name(&self) -> &'static str;

    /// Hands `n` over; `Ok` means the channel accepted it and it must not be sent again.
    fn deliver(&self, n: &Notification) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}

/// Writes each notification to the log, at info. The channel when nothing else is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogChannel;

impl Channel for LogChannel {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        info!(
            notification_id = %n.notification_id,
            customer_id = %n.customer_id,
            kind = %n.kind,
            message = %n.message,
            "notification"
        );
        Ok(())
    }
}

/// Where e-mail goes. The recipient of a notification is `<customer_id>@<to_domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// The sender, `warren@example.com` or `Warren <warren@example.com>`.
    pub from: String,
    pub to_domain: String,
}

/// A setting that is missing or does not parse; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingsError {
    pub key: &'static str,
    pub reason: String,
}

impl SmtpSettings {
    pub const HOST: &'static str = "WARREN_SMTP_HOST";
    pub const PORT: &'static str = "WARREN_SMTP_PORT";
    pub const FROM: &'static str = "WARREN_SMTP_FROM";
    pub const TO_DOMAIN: &'static str = "WARREN_SMTP_TO_DOMAIN";
    pub const DEFAULT_PORT: u16 = 25;

    /// From the `WARREN_SMTP_*` environment: `None` (e-mail off) unless `WARREN_SMTP_HOST`
    /// is set, in which case `WARREN_SMTP_FROM` and `WARREN_SMTP_TO_DOMAIN` are required.
    pub fn from_env() -> Result<Option<Self>, SettingsError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// As [`Self::from_env`], reading variables through `var`.
    pub fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, SettingsError> {
        let set = |key: &'static str| var(key).filter(|v| !v.trim().is_empty());
        let Some(host) = set(Self::HOST) else {
            return Ok(None);
        };
        let required = |key: &'static str| {
            set(key).ok_or_else(|| SettingsError {
                key,
                reason: format!("required when {} is set", Self::HOST),
            })
        };
        let port = match set(Self::PORT) {
            None => Self::DEFAULT_PORT,
            Some(port) => port.trim().parse().map_err(|e| SettingsError {
                key: Self::PORT,
                reason: format!("{port:?} is not a port: {e}"),
            })?,
        };
        let settings = Self {
            host: host.trim().to_owned(),
            port,
            from: required(Self::FROM)?,
            to_domain: required(Self::TO_DOMAIN)?.trim().to_owned(),
        };
        settings.sender()?;
        Ok(Some(settings))
    }

    fn sender(&self) -> Result<Mailbox, SettingsError> {
        self.from.parse().map_err(|e| SettingsError {
            key: Self::FROM,
            reason: format!("{:?} is not a mailbox: {e}", self.from),
        })
    }
}

/// Sends each notification as a plain-text e-mail over SMTP, without TLS or authentication
/// (a relay on the local network, or a development mail catcher).
#[derive(Debug, Clone)]
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to_domain: String,
}

impl SmtpChannel {
    pub fn new(settings: &SmtpSettings) -> Result<Self, SettingsError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .build();
        Ok(Self {
            transport,
            from: settings.sender()?,
            to_domain: settings.to_domain.clone(),
        })
    }

    fn email(&self, n: &Notification) -> Result<lettre::Message, DeliveryError> {
        let address = format!("{}@{}", n.customer_id, self.to_domain);
        let to: Mailbox = address.parse().map_err(|e| {
            DeliveryError::Permanent(format!("{address:?} is not an e-mail address: {e}"))
        })?;
        let subject = n
            .subject
            .clone()
            .unwrap_or_else(|| format!("Warren: {}", n.kind));
        lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!(
                "<{}@warren.notifications>",
                n.notification_id
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(n.message.clone())
            .map_err(|e| DeliveryError::Permanent(format!("cannot build the e-mail: {e}")))
    }
}

impl Channel for SmtpChannel {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let email = self.email(n)?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            // A 5xx answer will be the same next time; anything else (4xx, network) may not.
            Err(e) if e.is_permanent() => Err(DeliveryError::Permanent(e.to_string())),
            Err(e) => Err(DeliveryError::Transient(e.to_string())),
        }
    }
}

/// The channel the settings ask for: e-mail when SMTP is configured, the log otherwise.
#[derive(Debug, Clone)]
pub enum AnyChannel {
    Log(LogChannel),
    Smtp(Box<SmtpChannel>),
}

impl AnyChannel {
    pub fn configured(smtp: Option<&SmtpSettings>) -> Result<Self, SettingsError> {
        Ok(match smtp {
            Some(settings) => Self::Smtp(Box::new(SmtpChannel::new(settings)?)),
            None => Self::Log(LogChannel),
        })
    }
}

impl Channel for AnyChannel {
    fn name(&self) -> &'static str {
        match self {
            Self::Log(c) => c.name(),
            Self::Smtp(c) => c.name(),
        }
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        match self {
            Self::Log(c) => c.deliver(n).await,
            Self::Smtp(c) => c.deliver(n).await,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Rows claimed per transaction. They stay locked while the batch is delivered.
    pub batch_size: i64,
    /// How often to look without a notification.
    pub poll_interval: Duration,
    /// How long one delivery may take before it counts as a transient failure.
    pub delivery_timeout: Duration,
    /// The wait after the first failure; it doubles with each further one, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Attempts before a row is parked for a person.
    pub max_attempts: u32,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            batch_size: 50,
            poll_interval: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(600),
            max_attempts: 12,
        }
    }
}

/// What one [`Deliverer::deliver_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    pub claimed: usize,
    pub delivered: usize,
    pub failed: usize,
}

/// Hands committed, undelivered notifications to one channel.
#[derive(Debug)]
pub struct Deliverer<C> {
    pool: PgPool,
    channel: C,
    settings: DeliverySettings,
}

/// Delivers through `channel` with the default settings until `shutdown`.
pub async fn run<C: Channel>(
    pool: PgPool,
    channel: C,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    Deliverer::new(pool, channel, DeliverySettings::default())
        .run(shutdown)
        .await
}

#[derive(sqlx::FromRow)]
struct Row {
    notification_id: Uuid,
    customer_id: String,
    kind: String,
    subject: Option<String>,
    message: String,
    created_at: DateTime<Utc>,
    attempts: i32,
}

impl Row {
    fn notification(self) -> Result<Notification, DeliveryError> {
        Ok(Notification {
            notification_id: self.notification_id,
            customer_id: self.customer_id,
            kind: self
                .kind
                .parse()
                .map_err(|e| DeliveryError::Permanent(format!("unexpected stored data: {e}")))?,
            subject: self.subject,
            message: self.message,
            created_at: self.created_at,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
        })
    }
}

impl<C: Channel> Deliverer<C> {
    pub fn new(pool: PgPool, channel: C, settings: DeliverySettings) -> Self {
        Self {
            pool,
            channel,
            settings,
        }
    }

    pub fn channel(&self) -> &C {
        &self.channel
    }

    /// Claims one batch of due rows, delivers each and records the outcomes, all in one
    /// transaction that holds the rows' locks until the outcomes are written.
    pub async fn deliver_batch(&self) -> Result<Batch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT notification_id, customer_id, kind, subject, message, created_at, attempts \
             FROM notifications.notifications \
             WHERE delivered_at IS NULL AND available_at <= now() \
             ORDER BY available_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.settings.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        let mut batch = Batch {
            claimed: rows.len(),
            ..Batch::default()
        };
        let mut delivered = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.notification_id;
            let outcome = match row.notification() {
                Ok(n) => self.deliver(&n).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => delivered.push(id),
                Err(error) => {
                    warn!(notification_id = %id, channel = self.channel.name(), %error,
                          "notification not delivered");
                    self.record_failure(&mut tx, id, &error).await?;
                    batch.failed += 1;
                }
            }
        }
        if !delivered.is_empty() {
            sqlx::query(
                "UPDATE notifications.notifications SET delivered_at = now(), channel = $2 \
                 WHERE notification_id = ANY($1)",
            )
            .bind(&delivered)
            .bind(self.channel.name())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        batch.delivered = delivered.len();
        if batch.claimed > 0 {
            debug!(channel = self.channel.name(), ?batch, "notification batch");
        }
        Ok(batch)
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let timeout = self.settings.delivery_timeout;
        tokio::time::timeout(timeout, self.channel.deliver(n))
            .await
            .unwrap_or_else(|_| {
                Err(DeliveryError::Transient(format!(
                    "no answer within {timeout:?}"
                )))
            })
    }

    async fn record_failure(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        error: &DeliveryError,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications.notifications SET attempts = attempts + 1, last_error = $2, \
             available_at = CASE WHEN $3 OR attempts + 1 >= $4 THEN 'infinity'::timestamptz \
             ELSE now() + make_interval(secs => least($5 * power(2, attempts), $6)) END \
             WHERE notification_id = $1",
        )
        .bind(id)
        .bind(error.to_string())
        .bind(error.is_permanent())
        .bind(i32::try_from(self.settings.max_attempts).unwrap_or(i32::MAX))
        .bind(self.settings.retry_base.as_secs_f64())
        .bind(self.settings.retry_max.as_secs_f64())
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Delivers batches until none is full (or `shutdown`, between batches).
    pub async fn drain(&self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        while !shutdown.is_cancelled() {
            let batch = self.deliver_batch().await?;
            if i64::try_from(batch.claimed).unwrap_or(i64::MAX) < self.settings.batch_size {
                break;
            }
        }
        Ok(())
    }

    /// Runs until `shutdown`: drain, then sleep until a notification or the poll interval.
    /// A batch in hand when shutdown comes is finished first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let channel = self.channel.name();
        info!(channel, "notification deliverer running");
        while !shutdown.is_cancelled() {
            if let Err(error) = self.drain(&shutdown).await {
                error!(channel, %error, "notification delivery round failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.settings.poll_interval) => continue,
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                notification = listener.recv() => {
                    if let Err(error) = notification {
                        // The listener reconnects on the next recv; the poll covers the gap.
                        warn!(%error, "notification listener interrupted");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(self.settings.poll_interval) => {}
                        }
                    }
                }
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        info!(channel, "notification deliverer stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| vars.get(key).cloned()
    }

    #[test]
    fn smtp_is_off_unless_a_host_is_set() {
        assert_eq!(SmtpSettings::from_lookup(lookup(&[])), Ok(None));
        assert_eq!(
            SmtpSettings::from_lookup(lookup(&[(SmtpSettings::HOST, " ")])),
            Ok(None)
        );
        assert!(matches!(
            AnyChannel::configured(None),
            Ok(AnyChannel::Log(_))
        ));
    }

    #[test]
    fn smtp_settings_read_from_the_environment() {
        let settings = SmtpSettings::from_lookup(lookup(&[
            (SmtpSettings::HOST, "mail.internal"),
            (SmtpSettings::FROM, "Warren <warren@example.com>"),
            (SmtpSettings::TO_DOMAIN, "customers.example"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            settings,
            SmtpSettings {
                host: "mail.internal".into(),
                port: 25,
                from: "Warren <warren@example.com>".into(),
                to_domain: "customers.example".into(),
            }
        );
        let channel = AnyChannel::configured(Some(&settings)).unwrap();
        assert_eq!(channel.name(), "smtp");
    }

    #[test]
    fn incomplete_smtp_settings_name_what_is_wrong() {
        let error = |vars: &[(&str, &str)]| SmtpSettings::from_lookup(lookup(vars)).unwrap_err();
        let host = (SmtpSettings::HOST, "mail.internal");
        let from = (SmtpSettings::FROM, "warren@example.com");
        let domain = (SmtpSettings::TO_DOMAIN, "customers.example");
        assert_eq!(error(&[host, domain]).key, SmtpSettings::FROM);
        assert_eq!(error(&[host, from]).key, SmtpSettings::TO_DOMAIN);
        assert_eq!(
            error(&[host, domain, (SmtpSettings::FROM, "not a mailbox")]).key,
            SmtpSettings::FROM
        );
        let bad_port = error(&[host, from, domain, (SmtpSettings::PORT, "smtp")]);
        assert_eq!(bad_port.key, SmtpSettings::PORT);
        assert!(
            bad_port.to_string().starts_with("WARREN_SMTP_PORT: "),
            "{bad_port}"
        );
    }
}
