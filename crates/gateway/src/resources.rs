//! Orders, products and accounts: reads ask the owning service, writes publish its command.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use contracts::Envelope;
use contracts::messages::{AccountSetBalance, ProductUpsert};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{Principal, Scope};
use crate::extract::ApiJson;
use crate::{ApiError, AppState};

pub async fn get_order(
    State(state): State<AppState>,
    principal: Principal,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order_id = Uuid::parse_str(&order_id)
        .map_err(|_| ApiError::NotFound(format!("no order {order_id}")))?;
    let order = state
        .query("order.queries", "get_order", json!({"order_id": order_id}))
        .await?;
    principal.act_for(order["customer_id"].as_str().unwrap_or_default())?;
    Ok(Json(order))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    pub name: String,
    #[serde(deserialize_with = "contracts::whole::deserialize")]
    pub price_cents: i64,
    #[serde(deserialize_with = "contracts::whole::deserialize")]
    pub available: i64,
}

fn check_key(what: &str, key: &str, max: usize) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > max {
        return Err(ApiError::Invalid(format!(
            "{what} must be 1 to {max} characters"
        )));
    }
    Ok(())
}

pub async fn put_product(
    State(state): State<AppState>,
    principal: Principal,
    Path(sku): Path<String>,
    ApiJson(body): ApiJson<ProductBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Scope::Operator)?;
    check_key("sku", &sku, 64)?;
    let mut problems = Vec::new();
    if body.name.trim().is_empty() || body.name.len() > 200 {
        problems.push("name must be 1 to 200 characters");
    }
    if body.price_cents < 0 {
        problems.push("price_cents must not be negative");
    }
    if body.available < 0 {
        problems.push("available must not be negative");
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems.join("; ")));
    }
    let command = ProductUpsert {
        sku: sku.clone(),
        name: body.name,
        price_cents: body.price_cents,
        available: body.available,
    };
    state
        .publisher
        .publish(&Envelope::new(crate::PRODUCER, &command))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"sku": sku, "status": "accepted"})),
    ))
}

pub async fn get_product(
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        state
            .query("inventory.queries", "get_product", json!({"sku": sku}))
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    #[serde(deserialize_with = "contracts::whole::deserialize")]
    pub balance_cents: i64,
}

pub async fn put_account(
    State(state): State<AppState>,
    principal: Principal,
    Path(customer_id): Path<String>,
    ApiJson(body): ApiJson<AccountBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Scope::Operator)?;
    check_key("customer_id", &customer_id, 128)?;
    if body.balance_cents < 0 {
        return Err(ApiError::Invalid(
            "balance_cents must not be negative".into(),
        ));
    }
    let command = AccountSetBalance {
        customer_id: customer_id.clone(),
        balance_cents: body.balance_cents,
    };
    state
        .publisher
        .publish(&Envelope::new(crate::PRODUCER, &command))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"customer_id": customer_id, "status": "accepted"})),
    ))
}

pub async fn get_account(
    State(state): State<AppState>,
    principal: Principal,
    Path(customer_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.act_for(&customer_id)?;
    Ok(Json(
        state
            .query(
                "payment.queries",
                "get_account",
                json!({"customer_id": customer_id}),
            )
            .await?,
    ))
}
