//! The image service's handler: `image.cmd.process`, `image.cmd.delete_variants` and
//! `image.cmd.record`, on `images.images` and the image store.
//!
//! Every command is idempotent per image id (the orchestrator re-sends a timed-out command
//! under a new message id, which the inbox cannot recognise) and takes the image's row lock
//! first, so a process, its re-send and its compensation for one image run one after another.
//!
//! Processing holds the handler's transaction (and the row lock) open while it works, but
//! never blocks the async runtime: decoding and rendering run on tokio's blocking pool, and
//! store calls do too. Progress (`processing_started`, one `variant_done` per variant) is
//! committed to the outbox in small transactions of its own as it happens, so watchers see
//! it live; a run that is later rolled back and retried simply reports its progress again.
//! Each message in flight therefore uses up to two pooled connections at once.
//!
//! Business failures (an undecodable, truncated or oversized image, a bad spec, a crop out of
//! bounds, a missing original) are not errors: the variants written so far are deleted, the
//! row is stored `failed` with the reason, and `image.evt.failed` is the reply. Only
//! database and store I/O failures are errors (transient), besides messages that cannot be
//! handled at all (permanent).

use std::str::FromStr;
use std::sync::Arc;

use bus::HandlerError;
use contracts::messages::{
    ImageCompleted, ImageDeleteVariants, ImageFailed, ImageProcess, ImageProcessed,
    ImageProcessingStarted, ImageRecord, ImageVariant, ImageVariantDone, ImageVariantsDeleted,
};
use contracts::{Envelope, Message};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use store::{Outbox, StoreError, Transactional, TxHandler};
use tracing::{info, warn};
use uuid::Uuid;

use crate::process::{self, Limits};
use crate::spec;
use crate::store::{ImageStore, ImageStoreError, variant_key};

/// The inbox name of this participant.
pub const CONSUMER: &str = "image-service";
/// The `app_id` of the messages it produces.
pub const PRODUCER: &str = "image";
/// The schema holding its table, inbox and outbox.
pub const SCHEMA: &str = "images";

/// The longest failure reason (the `image.evt.failed` schema's `maxLength`).
const MAX_REASON_CHARS: usize = 2000;

/// The handler wrapped with this service's inbox and outbox, ready for a consumer.
pub fn handler(pool: PgPool, store: ImageStore, limits: Limits) -> Transactional<ImageHandler> {
    Transactional::new(
        pool.clone(),
        SCHEMA,
        CONSUMER,
        ImageHandler::new(pool, store, limits),
    )
}

/// Where an image stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Processing began (or began and was interrupted; a re-send starts over).
    Processing,
    /// Every variant is written.
    Processed,
    /// The saga recorded the variants.
    Completed,
    /// Processing failed; nothing is kept.
    Failed,
    /// The variants were deleted by compensation (or a tombstone, if it came first).
    Deleted,
}

impl ImageStatus {
    /// The spelling in the database and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Processed => "processed",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

/// A status column held a value this code does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for ImageStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            Self::Processing,
            Self::Processed,
            Self::Completed,
            Self::Failed,
            Self::Deleted,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
        .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}

impl std::fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Applies image commands to `images.images` and the image store.
#[derive(Debug, Clone)]
pub struct ImageHandler {
    pool: PgPool,
    store: ImageStore,
    limits: Limits,
    /// For progress events, committed outside the handler's transaction.
    progress: Outbox,
}

impl ImageHandler {
    /// `pool` serves the progress transactions; size it for two connections per message in
    /// flight.
    pub fn new(pool: PgPool, store: ImageStore, limits: Limits) -> Self {
        Self {
            pool,
            store,
            limits,
            progress: Outbox::new(SCHEMA),
        }
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl TxHandler for ImageHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        match message.message_type.as_str() {
            ImageProcess::TYPE => self.process(tx, message, decode(message)?).await,
            ImageDeleteVariants::TYPE => self.delete_variants(tx, message, decode(message)?).await,
            ImageRecord::TYPE => record(tx, message, decode(message)?).await,
            _ => Err(HandlerError::Permanent(format!(
                "the image service does not handle {}",
                message.message_type
            ))),
        }
    }
}

/// An image row as the handler needs it.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    customer_id: Option<String>,
    status: String,
    outputs: Json<Vec<ImageVariant>>,
    reason: Option<String>,
}

impl Row {
    fn status(&self) -> Result<ImageStatus, HandlerError> {
        self.status.parse().map_err(corrupt)
    }
}

async fn lock(tx: &mut PgConnection, image_id: Uuid) -> Result<Option<Row>, HandlerError> {
    sqlx::query_as(
        "SELECT customer_id, status, outputs, reason FROM images.images \
         WHERE image_id = $1 FOR UPDATE",
    )
    .bind(image_id)
    .fetch_optional(tx)
    .await
    .map_err(db)
}

/// Why processing stopped.
enum Stop {
    /// The image's or the spec's fault: stored and answered with `image.evt.failed`.
    Failed(String),
    /// Database or store trouble, or a message that cannot be handled.
    Error(HandlerError),
}

impl From<HandlerError> for Stop {
    fn from(error: HandlerError) -> Self {
        Self::Error(error)
    }
}

impl ImageHandler {
    async fn process(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
        command: ImageProcess,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let image_id = command.image_id;
        // Committed at once so readers see `processing` while the work runs. A tombstone or
        // a finished image already there is left alone and answered from below.
        sqlx::query(
            "INSERT INTO images.images (image_id, customer_id, status, original) \
             VALUES ($1, $2, 'processing', $3) ON CONFLICT (image_id) DO NOTHING",
        )
        .bind(image_id)
        .bind(&command.customer_id)
        .bind(&command.original)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let row = lock(tx, image_id)
            .await?
            .ok_or_else(|| corrupt(format!("image {image_id} vanished after its insert")))?;
        let customer_id = row.customer_id.clone().or(command.customer_id.clone());
        match row.status()? {
            ImageStatus::Processed | ImageStatus::Completed => {
                let processed = ImageProcessed {
                    image_id,
                    customer_id,
                    outputs: row.outputs.0,
                };
                return Ok(vec![reply(&processed, message)]);
            }
            ImageStatus::Failed => {
                let reason = row
                    .reason
                    .unwrap_or_else(|| "image processing failed".to_owned());
                return Ok(vec![failed(image_id, customer_id, reason, message)]);
            }
            ImageStatus::Deleted => {
                info!(%image_id, "process after compensation refused");
                return Ok(vec![failed(
                    image_id,
                    customer_id,
                    "image was deleted".to_owned(),
                    message,
                )]);
            }
            ImageStatus::Processing => {}
        }

        match self.render_all(message, &command).await {
            Ok(outputs) => {
                sqlx::query(
                    "UPDATE images.images SET status = 'processed', customer_id = $2, \
                     original = $3, outputs = $4, reason = NULL, updated_at = now() \
                     WHERE image_id = $1",
                )
                .bind(image_id)
                .bind(&command.customer_id)
                .bind(&command.original)
                .bind(Json(&outputs))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                info!(%image_id, variants = outputs.len(), "image processed");
                let processed = ImageProcessed {
                    image_id,
                    customer_id: command.customer_id,
                    outputs,
                };
                Ok(vec![reply(&processed, message)])
            }
            Err(Stop::Failed(reason)) => {
                let reason = clip(reason);
                // Nothing is kept of a failed image.
                self.store
                    .delete_variants(image_id)
                    .await
                    .map_err(store_error)?;
                sqlx::query(
                    "UPDATE images.images SET status = 'failed', customer_id = $2, \
                     original = $3, outputs = '[]', reason = $4, updated_at = now() \
                     WHERE image_id = $1",
                )
                .bind(image_id)
                .bind(&command.customer_id)
                .bind(&command.original)
                .bind(&reason)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                info!(%image_id, %reason, "image failed");
                Ok(vec![failed(image_id, command.customer_id, reason, message)])
            }
            Err(Stop::Error(error)) => Err(error),
        }
    }

    /// Reads the original, decodes it once and writes every variant, reporting progress.
    async fn render_all(
        &self,
        message: &Envelope,
        command: &ImageProcess,
    ) -> Result<Vec<ImageVariant>, Stop> {
        let image_id = command.image_id;
        let specs = spec::parse_all(&command.variants).map_err(|e| Stop::Failed(e.to_string()))?;
        let original = self.read_original(&command.original).await?;
        self.report(
            &ImageProcessingStarted {
                image_id,
                customer_id: command.customer_id.clone(),
                variants: u32::try_from(specs.len()).unwrap_or(u32::MAX),
            },
            message,
        )
        .await?;

        let limits = self.limits;
        let decoded = Arc::new(
            blocking(move || process::decode(&original, &limits))
                .await?
                .map_err(|e| Stop::Failed(e.to_string()))?,
        );
        let mut outputs = Vec::with_capacity(specs.len());
        for (name, spec) in command.variants.iter().zip(specs) {
            let key = variant_key(image_id, &spec);
            let rendered = {
                let decoded = Arc::clone(&decoded);
                blocking(move || process::render_decoded(&decoded, &spec, &limits))
                    .await?
                    .map_err(|e| Stop::Failed(format!("variant {name:?}: {e}")))?
            };
            let variant = ImageVariant {
                name: name.clone(),
                key: key.clone(),
                width: rendered.width,
                height: rendered.height,
                format: rendered.format.as_str().to_owned(),
                bytes: u64::try_from(rendered.bytes.len()).unwrap_or(u64::MAX),
            };
            self.store
                .put(&key, &rendered.bytes)
                .await
                .map_err(store_error)?;
            self.report(
                &ImageVariantDone {
                    image_id,
                    customer_id: command.customer_id.clone(),
                    variant: variant.clone(),
                },
                message,
            )
            .await?;
            outputs.push(variant);
        }
        Ok(outputs)
    }

    /// The original's bytes; a missing, malformed or oversized original is the command's
    /// fault, a failing disk is not.
    async fn read_original(&self, key: &str) -> Result<Vec<u8>, Stop> {
        let refused = |error: ImageStoreError| match error {
            ImageStoreError::NotFound { .. } => {
                Stop::Failed(format!("the original {key} is not in the image store"))
            }
            ImageStoreError::InvalidKey { .. } => Stop::Failed(error.to_string()),
            ImageStoreError::Io { .. } => Stop::Error(store_error(error)),
        };
        let size = self.store.size(key).await.map_err(refused)?;
        if size > self.limits.max_input_bytes {
            let error = process::ProcessError::InputTooLarge {
                bytes: size,
                max: self.limits.max_input_bytes,
            };
            return Err(Stop::Failed(error.to_string()));
        }
        self.store.get(key).await.map_err(refused)
    }

    /// Commits one progress event to the outbox on its own, caused by the command.
    async fn report<M: Message>(&self, event: &M, cause: &Envelope) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        self.progress
            .write(&mut tx, &[reply(event, cause)])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn delete_variants(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
        command: ImageDeleteVariants,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let image_id = command.image_id;
        // No row: nothing was processed yet. The tombstone makes a late process answer
        // `failed` instead of writing variants nobody will delete.
        let tombstone = sqlx::query(
            "INSERT INTO images.images (image_id, status, reason) \
             VALUES ($1, 'deleted', 'deleted before it was processed') \
             ON CONFLICT (image_id) DO NOTHING",
        )
        .bind(image_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        if !tombstone {
            // Waits for a process of this image in flight; its variants are then deleted.
            let row = lock(tx, image_id)
                .await?
                .ok_or_else(|| corrupt(format!("image {image_id} vanished")))?;
            if row.status()? == ImageStatus::Completed {
                warn!(%image_id, "deleting the variants of a completed image");
            }
            sqlx::query(
                "UPDATE images.images SET status = 'deleted', outputs = '[]', \
                 updated_at = now() WHERE image_id = $1",
            )
            .bind(image_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let deleted = self
            .store
            .delete_variants(image_id)
            .await
            .map_err(store_error)?;
        info!(%image_id, deleted, tombstone, "variants deleted");
        Ok(vec![reply(
            &ImageVariantsDeleted { image_id, deleted },
            message,
        )])
    }
}

async fn record(
    tx: &mut PgConnection,
    message: &Envelope,
    command: ImageRecord,
) -> Result<Vec<Envelope>, HandlerError> {
    let image_id = command.image_id;
    let Some(row) = lock(tx, image_id).await? else {
        return Err(HandlerError::Permanent(format!(
            "image {image_id} cannot be recorded: it was never processed"
        )));
    };
    let outputs = match row.status()? {
        ImageStatus::Processed => {
            if command.outputs != row.outputs.0 {
                warn!(%image_id, "recording outputs that differ from the processed ones");
            }
            sqlx::query(
                "UPDATE images.images SET status = 'completed', outputs = $2, \
                 updated_at = now() WHERE image_id = $1",
            )
            .bind(image_id)
            .bind(Json(&command.outputs))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            command.outputs
        }
        // Answered as it was recorded the first time.
        ImageStatus::Completed => row.outputs.0,
        status => {
            return Err(HandlerError::Permanent(format!(
                "image {image_id} is {status}; only a processed image can be recorded"
            )));
        }
    };
    let completed = ImageCompleted {
        image_id,
        customer_id: row.customer_id,
        outputs,
    };
    Ok(vec![reply(&completed, message)])
}

/// Runs CPU-bound work on the blocking pool. A panic inside the image code is that image's
/// doing (it would panic again on every retry), so it fails the image instead of looping.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Stop> {
    tokio::task::spawn_blocking(work).await.map_err(|join| {
        if join.is_panic() {
            let panic = join.into_panic();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".to_owned());
            warn!(%what, "image processing panicked");
            Stop::Failed(format!("the image could not be processed: {what}"))
        } else {
            Stop::Error(HandlerError::Transient(
                "image processing was cancelled".to_owned(),
            ))
        }
    })
}

fn failed(
    image_id: Uuid,
    customer_id: Option<String>,
    reason: String,
    cause: &Envelope,
) -> Envelope {
    let failed = ImageFailed {
        image_id,
        customer_id,
        reason: clip(reason),
    };
    reply(&failed, cause)
}

/// A reason short enough for the `image.evt.failed` schema.
fn clip(reason: String) -> String {
    if reason.chars().count() <= MAX_REASON_CHARS {
        return reason;
    }
    let mut clipped: String = reason.chars().take(MAX_REASON_CHARS - 1).collect();
    clipped.push('…');
    clipped
}

fn reply<M: Message>(reply: &M, cause: &Envelope) -> Envelope {
    Envelope::caused_by(PRODUCER, reply, cause)
}

/// The payload as `M`; a payload that does not decode will never decode, so it is parked.
fn decode<M: Message>(message: &Envelope) -> Result<M, HandlerError> {
    message
        .decode::<M>()
        .map_err(|e| HandlerError::Permanent(e.to_string()))
}

/// A database failure: retried when transient (lost connection, deadlock), parked otherwise.
fn db(error: sqlx::Error) -> HandlerError {
    StoreError::from(error).into()
}

/// A store failure while writing or deleting: the disk may come back, so retry.
fn store_error(error: ImageStoreError) -> HandlerError {
    match error {
        ImageStoreError::InvalidKey { .. } => HandlerError::Permanent(error.to_string()),
        ImageStoreError::NotFound { .. } | ImageStoreError::Io { .. } => {
            HandlerError::Transient(error.to_string())
        }
    }
}

/// A stored value the code does not know (a row written by a newer version, or by hand).
fn corrupt(what: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(format!("unexpected stored data: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [
            ImageStatus::Processing,
            ImageStatus::Processed,
            ImageStatus::Completed,
            ImageStatus::Failed,
            ImageStatus::Deleted,
        ] {
            assert_eq!(status.as_str().parse::<ImageStatus>(), Ok(status));
        }
        assert!("gone".parse::<ImageStatus>().is_err());
    }

    #[test]
    fn long_reasons_are_clipped_to_the_schema() {
        assert_eq!(clip("short".into()), "short");
        let clipped = clip("é".repeat(3000));
        assert_eq!(clipped.chars().count(), MAX_REASON_CHARS);
        assert!(clipped.ends_with('…'));
    }
}
