//! The notification service's handler: `order.evt.confirmed`, `order.evt.cancelled`,
//! `image.evt.completed`, `image.evt.failed`.
//!
//! It only stores: a notification row, committed with the inbox row and the
//! `notification.evt.created` event, and nothing else. Delivery reads committed rows later
//! (see [`crate::delivery`]), so a transaction that rolls back has sent nothing.
//!
//! A group commit stores all its notifications with one insert: rows that conflict (with a
//! stored fact, or with an earlier row of the same insert) are skipped, as one insert each
//! would skip them in order.

use std::collections::HashSet;

use bus::HandlerError;
use contracts::Envelope;
use contracts::messages::NotificationCreated;
use sqlx::PgConnection;
use store::{StoreError, TxHandler};
use tracing::{debug, info};
use uuid::Uuid;

use crate::PRODUCER;
use crate::render::{Draft, Event, render};

/// Stores one notification per fact an event announces (see the crate docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct NotificationHandler;

impl TxHandler for NotificationHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        self.apply_all(tx, &[message]).await
    }

    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
    ) -> Result<Vec<Envelope>, HandlerError> {
        let mut drafts = Vec::with_capacity(messages.len());
        for message in messages {
            let event = Event::from_envelope(message)
                .map_err(|e| HandlerError::Permanent(e.to_string()))?;
            match render(&event) {
                Some(draft) => drafts.push((Uuid::now_v7(), *message, draft)),
                None => debug!(message_type = %message.message_type, "no customer to notify"),
            }
        }
        let stored = insert(tx, &drafts).await?;
        let mut created = Vec::with_capacity(stored.len());
        for (notification_id, message, draft) in drafts {
            if !stored.contains(&notification_id) {
                info!(kind = %draft.kind, about = %draft.about, "already notified; nothing new");
                continue;
            }
            let event = NotificationCreated {
                notification_id,
                customer_id: draft.customer_id,
                kind: draft.kind.as_str().to_owned(),
                message: draft.message,
                source_event: message.message_id,
            };
            created.push(Envelope::caused_by(PRODUCER, &event, message));
        }
        Ok(created)
    }
}

/// Inserts the notifications in one statement; returns the ids stored now.
///
/// No conflict target: either key means this fact was already turned into a notification (the
/// same message again, or the same fact under another message id). A concurrent insert of the
/// same fact makes this wait for its commit, then skip.
async fn insert(
    tx: &mut PgConnection,
    drafts: &[(Uuid, &Envelope, Draft)],
) -> Result<HashSet<Uuid>, HandlerError> {
    if drafts.is_empty() {
        return Ok(HashSet::new());
    }
    let stored: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO notifications.notifications \
         (notification_id, source_event, about, customer_id, kind, subject, message) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
                              $6::text[], $7::text[]) \
         ON CONFLICT DO NOTHING RETURNING notification_id",
    )
    .bind(drafts.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())
    .bind(
        drafts
            .iter()
            .map(|(_, m, _)| m.message_id)
            .collect::<Vec<_>>(),
    )
    .bind(drafts.iter().map(|(_, _, d)| d.about).collect::<Vec<_>>())
    .bind(
        drafts
            .iter()
            .map(|(_, _, d)| d.customer_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        drafts
            .iter()
            .map(|(_, _, d)| d.kind.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        drafts
            .iter()
            .map(|(_, _, d)| d.subject.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        drafts
            .iter()
            .map(|(_, _, d)| d.message.as_str())
            .collect::<Vec<_>>(),
    )
    .fetch_all(tx)
    .await
    .map_err(StoreError::from)?;
    Ok(stored.into_iter().collect())
}
