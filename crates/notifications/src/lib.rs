//! Warren's notification participant. It reacts to order and image events (choreography:
//! the queue `notification.events` is bound to `order.evt.confirmed`, `order.evt.cancelled`,
//! `image.evt.completed` and `image.evt.failed`; no saga calls it), stores what to tell the
//! customer in `notifications.notifications`, and delivers it once the row is committed.
//!
//! Modules:
//! - [`render`]: pure: an event to a [`render::Draft`] (kind, subject, message), or nothing
//!   when the event has no customer.
//! - [`handler`]: the [`store::TxHandler`] that stores one notification per fact and emits
//!   `notification.evt.created`; wrapped by [`handler()`] with the inbox and outbox.
//! - [`delivery`]: channels (log, SMTP) and the [`delivery::Deliverer`] loop that hands
//!   committed rows to one, outside any handler's transaction.
//! - [`queries`]: a customer's notifications, newest first.
//!
//! # One notification per fact
//!
//! A notification is keyed twice, both `UNIQUE`, and inserted with `ON CONFLICT DO NOTHING`:
//! - `source_event`, the message id of the event: a redelivery keeps its message id (broker
//!   redelivery, a relay re-send after a lost confirm, a redrive from the parking queue), so
//!   even once the inbox row is pruned the same event cannot create a second notification.
//! - `(kind, about)`, the fact itself (order X confirmed, image Y failed): participants answer
//!   a re-sent command with a fresh event under a new message id (the order service answers
//!   a repeated `order.cmd.confirm` with another `order.evt.confirmed`), which no message-id
//!   key can recognise. The customer is told each fact once, whichever event said it first.
//!
//! `notification.evt.created` is emitted only when the row was inserted.

pub mod delivery;
pub mod handler;
pub mod queries;
pub mod render;

pub use delivery::{Channel, Deliverer, DeliveryError, DeliverySettings, LogChannel, SmtpChannel};
pub use handler::NotificationHandler;

use contracts::Component;
use contracts::component::Queue;
use futures_util::future::BoxFuture;
use host::{Host, Participant, Tasks};
use sqlx::PgPool;
use store::Transactional;

/// The inbox name of this participant.
pub const CONSUMER: &str = "notification-service";
/// The `app_id` of the messages it produces.
pub const PRODUCER: &str = "notification";
/// The schema holding its table, inbox and outbox.
pub const SCHEMA: &str = "notifications";

/// The notification service as the broker, the database and the deployment see it: it hears
/// of confirmed and cancelled orders and of finished images.
pub const COMPONENT: Component = Component {
    consumes: &[Queue {
        name: "notification.events",
        bindings: &[
            "order.evt.confirmed",
            "order.evt.cancelled",
            "image.evt.completed",
            "image.evt.failed",
        ],
    }],
    ..Component::participant("notification", SCHEMA, "warren_notifications", 9186)
};

/// The notification service as `warren run notification` starts it: its relay, consumer and
/// queries, and the deliverer (with a `LISTEN` connection of its own) that hands committed
/// notifications to the configured channel (SMTP when `WARREN_SMTP_*` say so, else the log).
pub const PARTICIPANT: Participant = Participant {
    component: COMPONENT,
    listeners: 2,
    start,
};

fn start<'a>(host: &'a Host, tasks: &'a mut Tasks) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move {
        let smtp = delivery::SmtpSettings::from_env()?;
        let channel = delivery::AnyChannel::configured(smtp.as_ref())?;
        let queries = queries::answering(host.pool.clone());
        host.run_transactional(tasks, &COMPONENT, handler(host.pool.clone()), queries)
            .await?;
        let (pool, token) = (host.pool.clone(), host.shutdown.clone());
        tasks.spawn(async move { Ok(delivery::run(pool, channel, token).await?) });
        Ok(())
    })
}

/// The handler wrapped with this service's inbox and outbox, ready for a consumer.
pub fn handler(pool: PgPool) -> Transactional<NotificationHandler> {
    Transactional::new(pool, SCHEMA, CONSUMER, NotificationHandler)
}
