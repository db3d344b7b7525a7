//! The inbox: one row per `(consumer, message id)` taken inside the handler's transaction, so
//! a redelivered message finds its row and changes nothing.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::checked_schema;

#[derive(Debug, Clone)]
pub struct Inbox {
    claim: std::sync::Arc<str>,
    claim_all: std::sync::Arc<str>,
    count_duplicate: std::sync::Arc<str>,
}

impl Inbox {
    /// The inbox of one service schema.
    pub fn new(schema: &str) -> Self {
        let schema = checked_schema(schema);
        Self {
            claim: format!(
                "INSERT INTO {schema}.inbox (consumer, message_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING"
            )
            .into(),
            claim_all: format!(
                "INSERT INTO {schema}.inbox (consumer, message_id) \
                 SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING message_id"
            )
            .into(),
            count_duplicate: format!(
                "UPDATE {schema}.inbox SET duplicates = duplicates + 1 \
                 WHERE consumer = $1 AND message_id = $2"
            )
            .into(),
        }
    }

    /// Counts a duplicate delivery the inbox absorbed, for figures (`warren chaos verify`).
    pub async fn count_duplicate(
        &self,
        tx: &mut PgConnection,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(self.count_duplicate.clone()))
            .bind(consumer)
            .bind(message_id)
            .execute(tx)
            .await?;
        metrics::counter!("warren_inbox_duplicates_total", "consumer" => consumer.to_owned())
            .increment(1);
        Ok(())
    }

    /// Records that `consumer` handles `message_id` in this transaction. `false` means the
    /// message was handled before (or is being handled by a concurrent delivery, in which case
    /// this waits for that transaction): skip the effect and ack.
    pub async fn claim(
        &self,
        tx: &mut PgConnection,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(AssertSqlSafe(self.claim.clone()))
            .bind(consumer)
            .bind(message_id)
            .execute(tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// [`Inbox::claim`] for many messages in one statement: returns the ids taken now (each
    /// once, even if it appears twice in `message_ids`).
    pub async fn claim_all(
        &self,
        tx: &mut PgConnection,
        consumer: &str,
        message_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, sqlx::Error> {
        let fresh: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(self.claim_all.clone()))
            .bind(consumer)
            .bind(message_ids)
            .fetch_all(tx)
            .await?;
        Ok(fresh.into_iter().collect())
    }
}
