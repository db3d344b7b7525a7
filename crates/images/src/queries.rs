//! Reads of the image service, for the gateway (over request/reply) and for tests.

use contracts::messages::ImageVariant;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::worker::ImageStatus;

/// An image as `GET /v1/images/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    pub image_id: Uuid,
    /// `None` for a tombstone (deleted before it was processed) or an anonymous upload.
    pub customer_id: Option<String>,
    pub status: ImageStatus,
    /// The variants in the order they were asked for; empty unless processed or completed.
    pub variants: Vec<ImageVariant>,
    /// Why it failed (or was deleted).
    pub reason: Option<String>,
}

/// The image, or `None` when the service never heard of it.
pub async fn get_image(pool: &PgPool, image_id: Uuid) -> Result<Option<ImageView>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT customer_id, status, outputs, reason FROM images.images WHERE image_id = $1",
    )
    .bind(image_id)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(ImageView {
            image_id,
            customer_id: row.customer_id,
            status: row
                .status
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            variants: row.outputs.0,
            reason: row.reason,
        })
    })
    .transpose()
}

#[derive(sqlx::FromRow)]
struct Row {
    customer_id: Option<String>,
    status: String,
    outputs: Json<Vec<ImageVariant>>,
    reason: Option<String>,
}

/// Answers `image.queries`: `get_image`.
pub fn answering(pool: PgPool) -> impl bus::rpc::QueryHandler {
    bus::rpc::OneMethod::new(
        "get_image",
        pool,
        |pool: PgPool, Params { image_id }| async move {
            bus::rpc::QueryError::found(get_image(&pool, image_id).await, || {
                format!("image {image_id}")
            })
        },
    )
}

#[derive(serde::Deserialize)]
struct Params {
    image_id: Uuid,
}
