//! `POST /v1/checkouts`: validate, then ask the orchestrator to start a checkout saga.
//!
//! With an `Idempotency-Key`, the saga id is derived from the customer and the key, so the same
//! request always names the same saga; the body's fingerprint travels with the start command,
//! and a later request with the same key and another body is refused with 409. Without a key,
//! every request is a new saga.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bus::rpc::{RemoteCode, RpcError};
use contracts::Envelope;
use contracts::messages::{LineItem, SagaStart};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::field::Empty;
use tracing::{Instrument, info, info_span};
use uuid::Uuid;

use crate::auth::Principal;
use crate::extract::ApiJson;
use crate::trace::Trace;
use crate::{ApiError, AppState};

/// Namespace of the ids derived from idempotency keys.
const NAMESPACE: Uuid = Uuid::from_u128(0x5a1d_7c1e_8f3b_4b8e_9c52_6d0e_a7f4_1b93);
const MAX_LINES: usize = 100;
const MAX_QUANTITY: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub customer_id: String,
    pub items: Vec<LineItem>,
}

/// Every rule of the contract a checkout breaks, or none.
pub fn validate(request: &CheckoutRequest) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    if request.customer_id.trim().is_empty() || request.customer_id.chars().count() > 128 {
        problems.push("customer_id must be 1 to 128 characters, not all blank".to_owned());
    }
    if request.items.is_empty() || request.items.len() > MAX_LINES {
        problems.push(format!("items must hold 1 to {MAX_LINES} lines"));
    }
    let mut skus = BTreeSet::new();
    for (i, line) in request.items.iter().enumerate() {
        if line.sku.is_empty() || line.sku.len() > 64 {
            problems.push(format!("items[{i}].sku must be 1 to 64 characters"));
        }
        if line.quantity == 0 || line.quantity > MAX_QUANTITY {
            problems.push(format!("items[{i}].quantity must be 1 to {MAX_QUANTITY}"));
        }
        if !skus.insert(line.sku.as_str()) {
            problems.push(format!("items[{i}].sku {:?} appears twice", line.sku));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(problems.join("; ")))
    }
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    trace: Trace,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CheckoutRequest>,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<Value>), ApiError> {
    validate(&request)?;
    principal.act_for(&request.customer_id)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                    )
                })?;
            Some(key.to_owned())
        }
    };
    let fingerprint = Uuid::new_v5(
        &NAMESPACE,
        json!({"customer_id": request.customer_id, "items": request.items})
            .to_string()
            .as_bytes(),
    )
    .to_string();
    let (saga_id, order_id) = match &key {
        Some(key) => {
            let saga_id = Uuid::new_v5(
                &NAMESPACE,
                format!("{}\n{key}", request.customer_id).as_bytes(),
            );
            (saga_id, Uuid::new_v5(&saga_id, b"order"))
        }
        None => (Uuid::now_v7(), Uuid::now_v7()),
    };
    let span = info_span!("checkout", saga_id = %saga_id, trace_id = Empty);
    let trace = trace.attach(&span);
    accept(state, trace, key, fingerprint, saga_id, order_id, request)
        .instrument(span)
        .await
}

/// Starts the saga, or answers with the one an earlier request with the same key started.
async fn accept(
    state: AppState,
    trace: Trace,
    key: Option<String>,
    fingerprint: String,
    saga_id: Uuid,
    order_id: Uuid,
    request: CheckoutRequest,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<Value>), ApiError> {
    if key.is_some() {
        match state
            .query("saga.queries", "get_start", json!({"saga_id": saga_id}))
            .await
        {
            Ok(existing) => {
                if existing["request_hash"].as_str() != Some(fingerprint.as_str()) {
                    return Err(ApiError::Conflict(
                        "this Idempotency-Key was used with another request body".into(),
                    ));
                }
                info!("checkout repeated with its idempotency key");
                return Ok((
                    StatusCode::ACCEPTED,
                    [trace.header()],
                    Json(json!({"saga_id": saga_id, "state": existing["state"]})),
                ));
            }
            Err(RpcError::Remote {
                code: RemoteCode::NotFound,
                ..
            }) => {}
            Err(error) => return Err(error.into()),
        }
    }

    let input =
        json!({"order_id": order_id, "customer_id": request.customer_id, "items": request.items});
    let Value::Object(input) = input else {
        unreachable!("a JSON object literal")
    };
    let start = SagaStart {
        saga_id,
        saga: "checkout".into(),
        input,
        request_hash: Some(fingerprint),
    };
    let message = Envelope::new(crate::PRODUCER, &start)
        .with_correlation(saga_id)
        .with_traceparent(trace.current.to_string());
    state.publisher.publish(&message).await?;
    info!(message_id = %message.message_id, "checkout accepted");
    Ok((
        StatusCode::ACCEPTED,
        [trace.header()],
        Json(json!({"saga_id": saga_id, "state": "running"})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(customer: &str, items: &[(&str, u32)]) -> CheckoutRequest {
        CheckoutRequest {
            customer_id: customer.into(),
            items: items
                .iter()
                .map(|(sku, quantity)| LineItem {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
        }
    }

    #[test]
    fn a_good_checkout_passes() {
        assert!(validate(&request("c-1", &[("SKU-1", 2), ("SKU-2", 1000)])).is_ok());
    }

    #[test]
    fn every_broken_rule_is_named() {
        let Err(ApiError::Invalid(message)) =
            validate(&request("", &[("SKU-1", 0), ("SKU-1", 1001)]))
        else {
            panic!("expected Invalid");
        };
        assert!(message.contains("customer_id"), "{message}");
        assert!(message.contains("items[0].quantity"), "{message}");
        assert!(message.contains("appears twice"), "{message}");
        assert!(message.contains("items[1].quantity"), "{message}");
    }

    /// The OpenAPI document says `integer`, which JSON Schema satisfies with `2.0` as well.
    #[test]
    fn a_quantity_written_as_a_whole_float_is_taken_and_a_fraction_is_not() {
        let body = r#"{"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 2.0}]}"#;
        let parsed: CheckoutRequest = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.items[0].quantity, 2);
        assert!(validate(&parsed).is_ok());
        let half = body.replace("2.0", "2.5");
        assert!(serde_json::from_str::<CheckoutRequest>(&half).is_err());
    }

    #[test]
    fn line_counts_are_bounded() {
        assert!(validate(&request("c-1", &[])).is_err());
        let many: Vec<(String, u32)> = (0..101).map(|i| (format!("S{i}"), 1)).collect();
        let many: Vec<(&str, u32)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        assert!(validate(&request("c-1", &many)).is_err());
    }
}
