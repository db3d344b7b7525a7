//! A toy participant, `loyalty`, written as `docs/extending.md` says: it is not part of the
//! shipped system. It hears of confirmed orders (choreography, like notifications), awards a
//! point per whole currency unit once per order, announces `loyalty.evt.awarded`, and answers
//! `get_points`. Everything below would be its folder; its migration is `migration.sql`.

use bus::HandlerError;
use bus::rpc::{OneMethod, QueryError, QueryHandler};
use contracts::component::Queue;
use contracts::messages::OrderConfirmed;
use contracts::{Component, Envelope, Message};
use futures_util::future::BoxFuture;
use host::{Host, Participant, Tasks};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use store::{StoreError, Transactional, TxHandler};
use uuid::Uuid;

/// The schema holding its table, inbox and outbox.
pub const SCHEMA: &str = "loyalty";
/// The inbox name of this participant.
pub const CONSUMER: &str = "loyalty-service";

/// Step 3 of docs/extending.md: the participant declares itself.
pub const COMPONENT: Component = Component {
    consumes: &[Queue {
        name: "loyalty.events",
        bindings: &["order.evt.confirmed"],
    }],
    ..Component::participant("loyalty", SCHEMA, "warren_loyalty", 9187)
};

/// ... and how it starts.
pub const PARTICIPANT: Participant = Participant {
    component: COMPONENT,
    listeners: 1,
    start,
};

fn start<'a>(host: &'a Host, tasks: &'a mut Tasks) -> BoxFuture<'a, anyhow::Result<()>> {
    let handler = Transactional::new(host.pool.clone(), SCHEMA, CONSUMER, LoyaltyHandler);
    let queries = answering(host.pool.clone());
    Box::pin(host.run_transactional(tasks, &COMPONENT, handler, queries))
}

/// Step 1: its message type. (A shipped participant declares it in `contracts::messages` with
/// a schema in `schemas/`; a toy outside the system declares it here.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsAwarded {
    pub order_id: Uuid,
    pub customer_id: String,
    pub points: i64,
}

impl Message for PointsAwarded {
    const TYPE: &'static str = "loyalty.evt.awarded";
}

/// Awards the points of a confirmed order once, whatever the message id it comes under.
#[derive(Debug, Clone, Copy)]
pub struct LoyaltyHandler;

impl TxHandler for LoyaltyHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let confirmed: OrderConfirmed = message
            .decode()
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let points = confirmed.total_cents / 100;
        let inserted = sqlx::query(
            "INSERT INTO loyalty.points (order_id, customer_id, points) VALUES ($1, $2, $3) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(confirmed.order_id)
        .bind(&confirmed.customer_id)
        .bind(points)
        .execute(&mut *tx)
        .await
        .map_err(|e| HandlerError::from(StoreError::from(e)))?
        .rows_affected();
        if inserted == 0 {
            return Ok(Vec::new());
        }
        let awarded = PointsAwarded {
            order_id: confirmed.order_id,
            customer_id: confirmed.customer_id,
            points,
        };
        Ok(vec![Envelope::caused_by("loyalty", &awarded, message)])
    }
}

/// Answers `loyalty.queries`: `get_points` of a customer.
pub fn answering(pool: PgPool) -> impl QueryHandler {
    OneMethod::new(
        "get_points",
        pool,
        |pool: PgPool, Params { customer_id }| async move {
            let points: Option<i64> = sqlx::query_scalar(
                "SELECT sum(points)::bigint FROM loyalty.points WHERE customer_id = $1",
            )
            .bind(&customer_id)
            .fetch_one(&pool)
            .await
            .map_err(|e| QueryError::internal(e.to_string()))?;
            QueryError::answer(json!({"customer_id": customer_id, "points": points.unwrap_or(0)}))
        },
    )
}

#[derive(Deserialize)]
struct Params {
    customer_id: String,
}
