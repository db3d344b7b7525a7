// Each test file uses a different part of this module.
#![allow(dead_code)]

//! Events as their producers publish them, channels that record what they were handed, and
//! reads of the notification tables.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contracts::messages::{ImageCompleted, ImageFailed, OrderCancelled, OrderConfirmed};
use contracts::{Envelope, Message};
use notifications::delivery::{Channel, DeliveryError, Notification};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// Long enough for a slow CI machine; reached only when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// An event as its producer publishes it: fresh message id, a saga id.
pub fn event<M: Message>(producer: &str, message: &M) -> Envelope {
    testkit::init_logging();
    Envelope::new(producer, message).with_correlation(Uuid::now_v7())
}

pub fn confirmed(order_id: Uuid, customer_id: &str) -> Envelope {
    event(
        "order",
        &OrderConfirmed {
            order_id,
            customer_id: customer_id.into(),
            total_cents: 2500,
        },
    )
}

pub fn cancelled(order_id: Uuid, customer_id: Option<&str>) -> Envelope {
    event(
        "order",
        &OrderCancelled {
            order_id,
            customer_id: customer_id.map(Into::into),
            reason: "payment declined".into(),
        },
    )
}

pub fn image_completed(image_id: Uuid, customer_id: Option<&str>) -> Envelope {
    event(
        "image",
        &ImageCompleted {
            image_id,
            customer_id: customer_id.map(Into::into),
            outputs: vec![],
        },
    )
}

pub fn image_failed(image_id: Uuid, customer_id: Option<&str>) -> Envelope {
    event(
        "image",
        &ImageFailed {
            image_id,
            customer_id: customer_id.map(Into::into),
            reason: "not an image".into(),
        },
    )
}

/// Handles `message` as the consumer would: inbox, handler, outbox, one transaction.
pub async fn deliver_event(pool: &PgPool, message: Envelope) -> Result<(), bus::HandlerError> {
    bus::Handler::handle(&notifications::handler(pool.clone()), message).await
}

pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

pub async fn notifications(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM notifications.notifications").await
}

pub async fn undelivered(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM notifications.notifications WHERE delivered_at IS NULL",
    )
    .await
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    message_id: Uuid,
    message_type: String,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    producer: String,
    payload: serde_json::Value,
}

/// The messages the handler left in its outbox, in commit order.
pub async fn outbox(pool: &PgPool) -> Vec<Envelope> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT message_id, message_type, correlation_id, causation_id, producer, payload \
         FROM notifications.outbox ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|row| Envelope {
            message_id: row.message_id,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            ..Envelope::raw(&row.producer, &row.message_type, row.payload)
        })
        .collect()
}

/// What a recording channel was handed, and by which deliverer.
#[derive(Debug, Default)]
pub struct Record {
    pub delivered: Mutex<Vec<(Uuid, &'static str)>>,
    pub changed: Notify,
}

impl Record {
    pub fn ids(&self) -> Vec<Uuid> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    /// Waits until `n` notifications were handed over (re-checked on every delivery).
    pub async fn until(&self, n: usize) {
        testkit::until(&self.changed, PATIENCE, &format!("{n} deliveries"), || {
            self.len() >= n
        })
        .await;
    }
}

/// Accepts everything, recording it; fails the first `failures` deliveries with `failure`.
#[derive(Debug, Clone)]
pub struct Recording {
    pub label: &'static str,
    pub record: Arc<Record>,
    failures: Arc<Mutex<(u32, Option<DeliveryError>)>>,
}

impl Recording {
    pub fn new() -> Self {
        Self {
            label: "first",
            record: Arc::default(),
            failures: Arc::new(Mutex::new((0, None))),
        }
    }

    /// Fails the next `n` deliveries with `error`, then accepts again.
    pub fn failing(n: u32, error: DeliveryError) -> Self {
        let channel = Self::new();
        *channel.failures.lock().unwrap() = (n, Some(error));
        channel
    }

    /// The same record under another label (a second deliverer).
    pub fn labelled(&self, label: &'static str) -> Self {
        Self {
            label,
            ..self.clone()
        }
    }
}

impl Channel for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        {
            let mut failures = self.failures.lock().unwrap();
            if failures.0 > 0 {
                failures.0 -= 1;
                return Err(failures.1.clone().unwrap());
            }
        }
        self.record
            .delivered
            .lock()
            .unwrap()
            .push((n.notification_id, self.label));
        self.record.changed.notify_waiters();
        Ok(())
    }
}
