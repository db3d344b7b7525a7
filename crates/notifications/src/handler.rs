//! The notification service's handler: `order.evt.confirmed`, `order.evt.cancelled`,
//! `image.evt.completed`, `image.evt.failed`.
//!
//! It only stores: a notification row, committed with the inbox row and the
//! `notification.evt.created` event, and nothing else. Delivery reads committed rows later
//! (see [`crate::delivery`]), so a transaction that rolls back has sent nothing.

use bus::HandlerError;
use contracts::Envelope;
use contracts::messages::NotificationCreated;
use sqlx::PgConnection;
use store::{StoreError, TxHandler};
use tracing::{debug, info};
use uuid::Uuid;

use crate::PRODUCER;
use crate::render::{Event, render};

/// Stores one notification per fact an event announces (see the crate docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct NotificationHandler;

impl TxHandler for NotificationHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let event =
            Event::from_envelope(message).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let Some(draft) = render(&event) else {
            debug!(message_type = %message.message_type, "no customer to notify");
            return Ok(Vec::new());
        };
        let notification_id = Uuid::now_v7();
        // No conflict target: either key means this fact was already turned into a
        // notification (the same message again, or the same fact under another message id).
        // A concurrent insert of the same fact makes this wait for its commit, then skip.
        let inserted = sqlx::query(
            "INSERT INTO notifications.notifications \
             (notification_id, source_event, about, customer_id, kind, subject, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(notification_id)
        .bind(message.message_id)
        .bind(draft.about)
        .bind(&draft.customer_id)
        .bind(draft.kind.as_str())
        .bind(&draft.subject)
        .bind(&draft.message)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected()
            == 1;
        if !inserted {
            info!(kind = %draft.kind, about = %draft.about, "already notified; nothing new");
            return Ok(Vec::new());
        }
        let created = NotificationCreated {
            notification_id,
            customer_id: draft.customer_id,
            kind: draft.kind.as_str().to_owned(),
            message: draft.message,
            source_event: message.message_id,
        };
        Ok(vec![Envelope::caused_by(PRODUCER, &created, message)])
    }
}
