//! Images: upload (multipart), status, and variant download from the image store.
//!
//! The upload limit is enforced while the file streams in, before it is all buffered: a
//! declared `Content-Length` over the limit is refused at once, and the body is counted chunk
//! by chunk. Variant specs are checked before anything is written or published, so a request
//! with an unknown or malformed operation changes nothing.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contracts::Envelope;
use contracts::messages::SagaStart;
use serde_json::{Value, json};
use tracing::field::Empty;
use tracing::{Instrument, info, info_span};
use uuid::Uuid;

use crate::auth::{Principal, Scope};
use crate::extract::ApiMultipart;
use crate::trace::Trace;
use crate::{ApiError, AppState};

fn multipart_error(error: MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge("the upload is larger than allowed".into())
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", error.body_text()))
    }
}

async fn read_limited(
    field: &mut Field<'_>,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!(
                "{what} is larger than {limit} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    trace: Trace,
    headers: HeaderMap,
    ApiMultipart(mut multipart): ApiMultipart,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<Value>), ApiError> {
    let limit = state.images.upload_limit;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit + FORM_OVERHEAD) {
        return Err(ApiError::TooLarge(format!(
            "uploads are limited to {limit} bytes"
        )));
    }
    let (mut file, mut variants, mut customer_id) = (None, None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => file = Some(read_limited(&mut field, limit, "the file").await?),
            "variants" => {
                let text = read_limited(&mut field, 16 * 1024, "variants").await?;
                let list: Vec<String> = serde_json::from_slice(&text).map_err(|e| {
                    ApiError::Invalid(format!("variants must be a JSON list of strings: {e}"))
                })?;
                variants = Some(list);
            }
            "customer_id" => {
                // 128 characters of up to 4 bytes each, as a checkout's customer_id.
                let text = read_limited(&mut field, 4 * 128, "customer_id").await?;
                let text = String::from_utf8(text)
                    .map_err(|_| ApiError::Invalid("customer_id must be UTF-8".into()))?;
                if text.trim().is_empty() || text.chars().count() > 128 {
                    return Err(ApiError::Invalid(
                        "customer_id must be 1 to 128 characters, not all blank".into(),
                    ));
                }
                customer_id = Some(text);
            }
            other => {
                return Err(ApiError::Invalid(format!(
                    "unknown form field {other:?}; expected file, variants and customer_id"
                )));
            }
        }
    }
    let file = file
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::Invalid("a non-empty file field is required".into()))?;
    let variants =
        variants.ok_or_else(|| ApiError::Invalid("a variants field is required".into()))?;
    // A customer's upload is its own, named or not.
    let customer_id = principal.customer_for(customer_id)?;
    images::spec::parse_all(&variants).map_err(|e| ApiError::Invalid(e.to_string()))?;

    let image_id = Uuid::now_v7();
    let saga_id = Uuid::now_v7();
    let original = images::store::original_key(image_id);
    state
        .images
        .store
        .put(&original, &file)
        .await
        .map_err(|e| ApiError::Internal(format!("writing the original: {e}")))?;
    let input = json!({"image_id": image_id, "customer_id": customer_id,
                       "original": original, "variants": variants});
    let Value::Object(input) = input else {
        unreachable!("a JSON object literal")
    };
    let start = SagaStart {
        saga_id,
        saga: "image".into(),
        input,
        request_hash: None,
    };
    let span = info_span!("image_upload", saga_id = %saga_id, trace_id = Empty);
    let trace = trace.attach(&span);
    let message = Envelope::new(crate::PRODUCER, &start)
        .with_correlation(saga_id)
        .with_traceparent(trace.current.to_string());
    state
        .publisher
        .publish(&message)
        .instrument(span.clone())
        .await?;
    span.in_scope(|| info!(%image_id, "image upload accepted"));
    Ok((
        StatusCode::ACCEPTED,
        [trace.header()],
        Json(json!({"image_id": image_id, "saga_id": saga_id})),
    ))
}

/// Multipart boundaries and headers around the file.
const FORM_OVERHEAD: usize = 64 * 1024;

fn image_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("no image {text}")))
}

async fn image(state: &AppState, id: Uuid) -> Result<Value, ApiError> {
    Ok(state
        .query("image.queries", "get_image", json!({"image_id": id}))
        .await?)
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = image_id(&id)?;
    let mut view = image(&state, id).await?;
    check_owner(&principal, &view)?;
    if let Some(variants) = view["variants"].as_array_mut() {
        for variant in variants {
            let name = variant["name"].as_str().unwrap_or_default();
            variant["url"] = Value::String(format!("/v1/images/{id}/variants/{}", encode(name)));
        }
    }
    Ok(Json(view))
}

pub async fn variant(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = image_id(&id)?;
    let view = image(&state, id).await?;
    check_owner(&principal, &view)?;
    let found = view["variants"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == name.as_str()))
        .ok_or_else(|| ApiError::NotFound(format!("image {id} has no variant {name:?}")))?;
    let key = found["key"].as_str().unwrap_or_default();
    let content_type = match found["format"].as_str() {
        Some("jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    };
    let bytes = state.images.store.get(key).await.map_err(|_| {
        ApiError::NotFound(format!(
            "variant {name:?} of image {id} is not in the store"
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from(bytes)).into_response())
}

/// An image is its customer's; one uploaded for nobody is for back ends and operators only.
fn check_owner(principal: &Principal, view: &Value) -> Result<(), ApiError> {
    match view["customer_id"].as_str() {
        Some(customer) => principal.act_for(customer),
        None => principal.require(Scope::Customers),
    }
}

/// Percent-encodes a variant name for a URL path segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
