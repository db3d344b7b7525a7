//! The participants' query handlers: `get_order`, `get_product`, `get_account`,
//! `list_notifications`.

use bus::rpc::{QueryError, QueryHandler};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Which service's reads to answer.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Order,
    Inventory,
    Payment,
    Notification,
    Image,
}

#[derive(Debug, Clone)]
pub struct ServiceQueries {
    pub service: Service,
    pub pool: PgPool,
}

#[derive(Deserialize)]
struct OrderParams {
    order_id: Uuid,
}

#[derive(Deserialize)]
struct ProductParams {
    sku: String,
}

#[derive(Deserialize)]
struct AccountParams {
    customer_id: String,
}

#[derive(Deserialize)]
struct ImageParams {
    image_id: Uuid,
}

#[derive(Deserialize)]
struct NotificationParams {
    customer_id: String,
    limit: Option<u32>,
}

fn params<T: for<'de> Deserialize<'de>>(params: Value) -> Result<T, QueryError> {
    serde_json::from_value(params).map_err(|e| QueryError::bad_request(e.to_string()))
}

fn answer<T: serde::Serialize>(
    found: Result<Option<T>, sqlx::Error>,
    what: String,
) -> Result<Value, QueryError> {
    let found = found.map_err(|e| QueryError::internal(e.to_string()))?;
    let found = found.ok_or_else(|| QueryError::not_found(format!("no {what}")))?;
    serde_json::to_value(found).map_err(|e| QueryError::internal(e.to_string()))
}

impl QueryHandler for ServiceQueries {
    async fn query(&self, method: &str, json: Value) -> Result<Value, QueryError> {
        match (self.service, method) {
            (Service::Order, "get_order") => {
                let OrderParams { order_id } = params(json)?;
                answer(
                    services::order::queries::get_order(&self.pool, order_id).await,
                    format!("order {order_id}"),
                )
            }
            (Service::Inventory, "get_product") => {
                let ProductParams { sku } = params(json)?;
                answer(
                    services::inventory::queries::get_product(&self.pool, &sku).await,
                    format!("product {sku}"),
                )
            }
            (Service::Payment, "get_account") => {
                let AccountParams { customer_id } = params(json)?;
                answer(
                    services::payment::queries::get_account(&self.pool, &customer_id).await,
                    format!("account {customer_id}"),
                )
            }
            (Service::Image, "get_image") => {
                let ImageParams { image_id } = params(json)?;
                answer(
                    images::queries::get_image(&self.pool, image_id).await,
                    format!("image {image_id}"),
                )
            }
            (Service::Notification, "list_notifications") => {
                let NotificationParams { customer_id, limit } = params(json)?;
                let list =
                    notifications::queries::list(&self.pool, &customer_id, limit.unwrap_or(50))
                        .await
                        .map_err(|e| QueryError::internal(e.to_string()))?;
                serde_json::to_value(list).map_err(|e| QueryError::internal(e.to_string()))
            }
            (_, other) => Err(QueryError::bad_request(format!("unknown method {other:?}"))),
        }
    }
}
