//! The handler order every participant follows, written once: begin a transaction, claim the
//! message in the inbox (a duplicate is skipped), apply the change, write the messages it
//! causes to the outbox, commit. The bus acks only after this returns `Ok`.

use std::future::Future;

use bus::HandlerError;
use contracts::Envelope;
use sqlx::{PgConnection, PgPool};
use tracing::debug;

use crate::{Inbox, Outbox, StoreError};

/// The part of a handler that is specific to a service: change its tables inside `tx` and
/// return the messages to publish. An error rolls everything back, inbox row included, so a
/// parked message can be redriven later.
pub trait TxHandler: Send + Sync + 'static {
    fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send;
}

/// Wraps a [`TxHandler`] into a [`bus::Handler`] with the inbox and outbox of one schema.
#[derive(Debug)]
pub struct Transactional<H> {
    pool: PgPool,
    consumer: String,
    inbox: Inbox,
    outbox: Outbox,
    inner: H,
}

impl<H> Transactional<H> {
    /// `consumer` names the inbox rows (one consumer can only take a message once).
    pub fn new(pool: PgPool, schema: &'static str, consumer: impl Into<String>, inner: H) -> Self {
        Self {
            pool,
            consumer: consumer.into(),
            inbox: Inbox::new(schema),
            outbox: Outbox::new(schema),
            inner,
        }
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: TxHandler> bus::Handler for Transactional<H> {
    async fn handle(&self, message: Envelope) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let first_time = self
            .inbox
            .claim(&mut tx, &self.consumer, message.message_id)
            .await
            .map_err(StoreError::from)?;
        if !first_time {
            debug!("duplicate; already handled");
            self.inbox
                .count_duplicate(&mut tx, &self.consumer, message.message_id)
                .await
                .map_err(StoreError::from)?;
            tx.commit().await.map_err(StoreError::from)?;
            return Ok(());
        }
        let caused = self.inner.apply(&mut tx, &message).await?;
        self.outbox
            .write(&mut tx, &caused)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }
}
