//! The handler order every participant follows, written once: begin a transaction, claim the
//! message in the inbox (a duplicate is skipped), apply the change, write the messages it
//! causes to the outbox, commit. The bus acks only after this returns `Ok`. With a
//! [`Handoff`], the committed messages then go straight to the process's relay.
//!
//! **Group commit** ([`Transactional::with_group_commit`]): deliveries that arrive while a
//! transaction of this handler is running wait, and the next transaction takes all of them at
//! once: one begin, one inbox insert, each message's change, one outbox insert, one commit.
//! Each message still gets its own answer, and an ack only after the commit that holds its
//! effects. If any message of a group fails, the group is rolled back and each message runs
//! again in a transaction of its own, so one bad message never takes others down with it.
//!
//! Live messages ([`Delivery::Live`], saga events that feed views) skip the outbox when there
//! is a hand-off: they go to the relay with the rest after the commit, at most once.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;

use bus::HandlerError;
use contracts::Envelope;
use contracts::messages::Delivery;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Semaphore, oneshot};
use tracing::debug;
use uuid::Uuid;

use crate::relay::Handoff;
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

    /// Applies the messages of a group commit, in order, in one transaction. A handler can do
    /// this in fewer statements than one [`TxHandler::apply`] each; any error fails the group.
    fn apply_all(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send {
        async move {
            let mut caused = Vec::new();
            for message in messages {
                caused.extend(self.apply(tx, message).await?);
            }
            Ok(caused)
        }
    }
}

/// Wraps a [`TxHandler`] into a [`bus::Handler`] with the inbox and outbox of one schema.
#[derive(Debug)]
pub struct Transactional<H> {
    pool: PgPool,
    consumer: String,
    inbox: Inbox,
    outbox: Outbox,
    handoff: Option<Handoff>,
    group: Option<Group>,
    inner: H,
}

/// Deliveries waiting for the next group transaction.
#[derive(Debug)]
struct Group {
    most: usize,
    waiting: Mutex<Vec<Waiting>>,
    /// Group transactions running at once; the next one takes everything that came meanwhile.
    turn: Semaphore,
}

#[derive(Debug)]
struct Waiting {
    message: Envelope,
    answer: oneshot::Sender<Result<(), HandlerError>>,
}

impl<H> Transactional<H> {
    /// `consumer` names the inbox rows (one consumer can only take a message once).
    pub fn new(pool: PgPool, schema: &'static str, consumer: impl Into<String>, inner: H) -> Self {
        Self {
            pool,
            consumer: consumer.into(),
            inbox: Inbox::new(schema),
            outbox: Outbox::new(schema),
            handoff: None,
            group: None,
            inner,
        }
    }

    /// Commits up to `most` deliveries in one transaction when they arrive together, with up to
    /// `at_once` such transactions running (see the module docs). Only for handlers whose work
    /// is short: a group waits for its slowest part. More than one at a time only where two
    /// messages rarely lock the same rows (saga rows, say): groups that wait on each other's
    /// locks in opposite orders deadlock, and PostgreSQL breaks that only after a second.
    #[must_use]
    pub fn with_group_commit(mut self, most: usize, at_once: usize) -> Self {
        self.group = (most > 1).then(|| Group {
            most,
            waiting: Mutex::new(Vec::new()),
            turn: Semaphore::new(at_once.max(1)),
        });
        self
    }

    /// Hands committed messages to a relay of the same schema for immediate publishing.
    #[must_use]
    pub fn with_handoff(mut self, handoff: Handoff) -> Self {
        self.handoff = Some(handoff);
        self
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: TxHandler> bus::Handler for Transactional<H> {
    async fn handle(&self, message: Envelope) -> Result<(), HandlerError> {
        match &self.group {
            None => self.handle_one(message).await,
            Some(group) => self.handle_in_group(group, message).await,
        }
    }
}

impl<H: TxHandler> Transactional<H> {
    /// Queues the message, then either waits for the group transaction that takes it or, when
    /// no group is running, runs one itself with whatever is queued.
    async fn handle_in_group(&self, group: &Group, message: Envelope) -> Result<(), HandlerError> {
        let (answer, mut answered) = oneshot::channel();
        group
            .waiting
            .lock()
            .expect("group lock")
            .push(Waiting { message, answer });
        let abandoned = || HandlerError::Transient("the group transaction was abandoned".into());
        loop {
            tokio::select! {
                biased;
                result = &mut answered => return result.unwrap_or_else(|_| Err(abandoned())),
                turn = group.turn.acquire() => {
                    let turn = turn.expect("never closed");
                    let taken: Vec<Waiting> = {
                        let mut waiting = group.waiting.lock().expect("group lock");
                        let n = waiting.len().min(group.most);
                        waiting.drain(..n).collect()
                    };
                    if taken.is_empty() {
                        // Another group took this message; its answer is on the way.
                        drop(turn);
                        return answered.await.unwrap_or_else(|_| Err(abandoned()));
                    }
                    self.commit_group(taken).await;
                    drop(turn);
                }
            }
        }
    }

    /// Commits a group in one transaction, or each of its messages alone if that fails.
    async fn commit_group(&self, group: Vec<Waiting>) {
        if group.len() > 1 {
            let messages: Vec<&Envelope> = group.iter().map(|w| &w.message).collect();
            match self.apply_group(&messages).await {
                Ok(()) => {
                    for waiting in group {
                        let _ = waiting.answer.send(Ok(()));
                    }
                    return;
                }
                Err(error) => debug!(%error, size = group.len(), "group failed; one at a time"),
            }
        }
        for waiting in group {
            let result = self.handle_one(waiting.message).await;
            let _ = waiting.answer.send(result);
        }
    }

    async fn apply_group(&self, messages: &[&Envelope]) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let ids: Vec<Uuid> = messages.iter().map(|m| m.message_id).collect();
        let mut fresh: HashSet<Uuid> = self
            .inbox
            .claim_all(&mut tx, &self.consumer, &ids)
            .await
            .map_err(StoreError::from)?;
        let mut first_times = Vec::with_capacity(messages.len());
        for message in messages {
            if fresh.remove(&message.message_id) {
                first_times.push(*message);
            } else {
                debug!(message_id = %message.message_id, "duplicate; already handled");
                self.inbox
                    .count_duplicate(&mut tx, &self.consumer, message.message_id)
                    .await
                    .map_err(StoreError::from)?;
            }
        }
        let caused = self.inner.apply_all(&mut tx, &first_times).await?;
        self.write_outbox(&mut tx, &caused).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if let Some(handoff) = &self.handoff {
            handoff.hand(caused).await;
        }
        Ok(())
    }

    /// Writes the outbox rows of what a transaction caused. With a hand-off, live messages
    /// ([`Delivery::Live`]) get no row: they are handed over after the commit and published
    /// at most once. Without one, everything goes through the outbox.
    async fn write_outbox(
        &self,
        tx: &mut PgConnection,
        caused: &[Envelope],
    ) -> Result<(), HandlerError> {
        let written = match &self.handoff {
            Some(handoff) => {
                let durable: Vec<&Envelope> = caused
                    .iter()
                    .filter(|m| m.delivery() == Delivery::Durable)
                    .collect();
                self.outbox.write_leased(tx, durable, handoff.lease()).await
            }
            None => self.outbox.write(tx, caused).await,
        };
        Ok(written.map_err(StoreError::from)?)
    }

    async fn handle_one(&self, message: Envelope) -> Result<(), HandlerError> {
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
        self.write_outbox(&mut tx, &caused).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if let Some(handoff) = &self.handoff {
            handoff.hand(caused).await;
        }
        Ok(())
    }
}
