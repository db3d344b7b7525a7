//! The JSON Schemas of `schemas/`, embedded at build time and compiled once per process.
//!
//! Producers validate in tests; consumers validate every message before its handler sees it,
//! and park what fails.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::messages::{DECLARED, Message, SAGA_UPDATED_SCHEMA, SagaUpdated};

/// Every schema file, by message type, from the declared message types (a test checks them
/// against the directory, and each schema's properties against its struct's fields).
fn embedded() -> impl Iterator<Item = (&'static str, &'static str)> {
    DECLARED
        .iter()
        .map(|d| (d.message_type, d.schema))
        .chain([(SagaUpdated::TYPE, SAGA_UPDATED_SCHEMA)])
}

/// The schema documents, for static checks of saga definitions.
fn documents() -> &'static BTreeMap<&'static str, Value> {
    static DOCUMENTS: OnceLock<BTreeMap<&'static str, Value>> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        embedded()
            .filter_map(|(name, text)| Some((name, serde_json::from_str(text).ok()?)))
            .collect()
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("no schema for message type {0:?}")]
    UnknownType(String),
    #[error("{message_type} fails its schema: {errors}")]
    Invalid {
        message_type: String,
        errors: String,
    },
}

/// Compiled validators by message type. Cheap to clone.
#[derive(Clone)]
pub struct Schemas {
    validators: Arc<BTreeMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.validators.keys()).finish()
    }
}

impl Schemas {
    /// The schemas built into this binary, compiled on first use.
    pub fn embedded() -> Self {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS
            .get_or_init(|| {
                let validators = embedded()
                    .map(|(name, text)| {
                        let schema: Value = serde_json::from_str(text)
                            .unwrap_or_else(|e| panic!("schemas/{name}.json is not JSON: {e}"));
                        let validator = jsonschema::validator_for(&schema)
                            .unwrap_or_else(|e| panic!("schemas/{name}.json is not a schema: {e}"));
                        (name.to_owned(), Arc::new(validator))
                    })
                    .collect();
                Schemas {
                    validators: Arc::new(validators),
                }
            })
            .clone()
    }

    pub fn types(&self) -> impl Iterator<Item = &str> + '_ {
        self.validators.keys().map(String::as_str)
    }

    /// These schemas plus one more (message types of tests and extensions).
    pub fn with(&self, message_type: &str, schema: &Value) -> Result<Self, SchemaError> {
        let validator = jsonschema::validator_for(schema).map_err(|e| SchemaError::Invalid {
            message_type: message_type.to_owned(),
            errors: format!("not a schema: {e}"),
        })?;
        let mut validators = (*self.validators).clone();
        validators.insert(message_type.to_owned(), Arc::new(validator));
        Ok(Self {
            validators: Arc::new(validators),
        })
    }

    /// The schema document of an embedded message type.
    pub fn schema(&self, message_type: &str) -> Option<&'static Value> {
        documents().get(message_type)
    }

    pub fn knows(&self, message_type: &str) -> bool {
        self.validators.contains_key(message_type)
    }

    /// Checks a payload against the schema of its type; every error is listed in the message.
    pub fn validate(&self, message_type: &str, payload: &Value) -> Result<(), SchemaError> {
        let validator = self
            .validators
            .get(message_type)
            .ok_or_else(|| SchemaError::UnknownType(message_type.to_owned()))?;
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Invalid {
                message_type: message_type.to_owned(),
                errors: errors.join("; "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use crate::{Envelope, Message};
    use serde_json::json;
    use uuid::Uuid;

    fn line(sku: &str, quantity: u32) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
        }
    }

    /// One produced message of every type, as producers build them.
    fn produced() -> Vec<Envelope> {
        let order_id = Uuid::now_v7();
        let items = vec![line("SKU-1", 2), line("SKU-2", 1)];
        let customer_id = || "c-1".to_owned();
        let reason = || "SKU-1: 2 requested, 1 available".to_owned();
        let priced = vec![PricedLine {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_cents: 1250,
        }];
        let mut input = serde_json::Map::new();
        input.insert("order_id".into(), json!(order_id));
        vec![
            sample(&OrderCreate {
                order_id,
                customer_id: customer_id(),
                items: items.clone(),
            }),
            sample(&OrderCreated {
                order_id,
                customer_id: customer_id(),
                items: items.clone(),
            }),
            sample(&OrderRejected {
                order_id,
                reason: reason(),
            }),
            sample(&OrderConfirm {
                order_id,
                total_cents: 2500,
            }),
            sample(&OrderConfirmed {
                order_id,
                customer_id: customer_id(),
                total_cents: 2500,
            }),
            sample(&OrderCancel {
                order_id,
                reason: reason(),
            }),
            sample(&OrderCancelled {
                order_id,
                customer_id: None,
                reason: reason(),
            }),
            sample(&InventoryReserve { order_id, items }),
            sample(&InventoryReserved {
                order_id,
                lines: priced,
                total_cents: 2500,
            }),
            sample(&InventoryReservationFailed {
                order_id,
                reason: reason(),
            }),
            sample(&InventoryRelease { order_id }),
            sample(&InventoryReleased { order_id }),
            sample(&ProductUpsert {
                sku: "SKU-1".into(),
                name: "Mug".into(),
                price_cents: 1250,
                available: 10,
            }),
            sample(&ProductUpserted {
                sku: "SKU-1".into(),
                name: "Mug".into(),
                price_cents: 1250,
                available: 10,
            }),
            sample(&PaymentCharge {
                order_id,
                customer_id: customer_id(),
                amount_cents: 2500,
            }),
            sample(&PaymentCharged {
                order_id,
                customer_id: customer_id(),
                amount_cents: 2500,
            }),
            sample(&PaymentDeclined {
                order_id,
                reason: reason(),
            }),
            sample(&PaymentRefund { order_id }),
            sample(&PaymentRefunded {
                order_id,
                amount_cents: 0,
            }),
            sample(&AccountSetBalance {
                customer_id: customer_id(),
                balance_cents: 10_000,
            }),
            sample(&AccountBalanceSet {
                customer_id: customer_id(),
                balance_cents: 10_000,
            }),
            sample(&SagaStart {
                saga_id: Uuid::now_v7(),
                saga: "checkout".into(),
                input,
                request_hash: None,
            }),
            sample(&ImageProcess {
                image_id: order_id,
                customer_id: Some(customer_id()),
                original: "images/x/original".into(),
                variants: vec!["thumbnail:128".into(), "grayscale|rotate:90@webp".into()],
            }),
            sample(&ImageProcessingStarted {
                image_id: order_id,
                customer_id: None,
                variants: 2,
            }),
            sample(&ImageVariantDone {
                image_id: order_id,
                customer_id: None,
                variant: variant(),
            }),
            sample(&ImageProcessed {
                image_id: order_id,
                customer_id: None,
                outputs: vec![variant()],
            }),
            sample(&ImageFailed {
                image_id: order_id,
                customer_id: None,
                reason: reason(),
            }),
            sample(&ImageDeleteVariants { image_id: order_id }),
            sample(&ImageVariantsDeleted {
                image_id: order_id,
                deleted: 2,
            }),
            sample(&ImageRecord {
                image_id: order_id,
                outputs: vec![variant()],
            }),
            sample(&ImageCompleted {
                image_id: order_id,
                customer_id: Some(customer_id()),
                outputs: vec![variant()],
            }),
            sample(&NotificationCreated {
                notification_id: Uuid::now_v7(),
                customer_id: customer_id(),
                kind: "order_confirmed".into(),
                message: "Your order is confirmed.".into(),
                source_event: Uuid::now_v7(),
            }),
            sample(&SagaUpdated {
                view: SagaView {
                    saga_id: Uuid::now_v7(),
                    saga: "checkout".into(),
                    state: "running".into(),
                    current_step: Some("create_order".into()),
                    order_id: Some(order_id),
                    steps: vec![StepView {
                        name: "create_order".into(),
                        state: "running".into(),
                        attempts: 1,
                        started_at: Some(chrono::Utc::now()),
                        finished_at: None,
                    }],
                    error: None,
                    created_at: chrono::Utc::now(),
                    updated_at: chrono::Utc::now(),
                    version: 1,
                    definition_version: Some("4f1c0a9e2b7d3c85".into()),
                },
                transition: "started; create_order sent".into(),
            }),
        ]
    }

    fn variant() -> ImageVariant {
        ImageVariant {
            name: "thumbnail:128".into(),
            key: "images/x/thumbnail-128.png".into(),
            width: 128,
            height: 96,
            format: "png".into(),
            bytes: 2048,
        }
    }

    fn sample<M: Message>(message: &M) -> Envelope {
        Envelope::new("test", message)
    }

    #[test]
    fn every_produced_message_is_valid_against_its_schema() {
        let schemas = Schemas::embedded();
        let produced = produced();
        for envelope in &produced {
            schemas
                .validate(&envelope.message_type, &envelope.payload)
                .unwrap();
        }
        let covered: Vec<&str> = produced.iter().map(|e| e.message_type.as_str()).collect();
        let missing: Vec<&str> = schemas.types().filter(|t| !covered.contains(t)).collect();
        assert!(missing.is_empty(), "no produced sample for {missing:?}");
    }

    /// The struct declared in `messages!` is the message type's one declaration: its schema
    /// file names exactly its fields, requires none other and refuses any other.
    #[test]
    fn every_schema_names_exactly_its_structs_fields() {
        let keys = |value: &Value| -> Vec<String> {
            let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        let mut checked = vec![];
        for declared in crate::messages::DECLARED {
            let name = declared.message_type;
            let schema: Value = serde_json::from_str(declared.schema).unwrap();
            let mut fields: Vec<String> = declared.fields.iter().map(|f| (*f).to_owned()).collect();
            fields.sort();
            assert_eq!(keys(&schema["properties"]), fields, "schemas/{name}.json");
            assert_eq!(schema["additionalProperties"], false, "schemas/{name}.json");
            for required in schema["required"].as_array().unwrap() {
                assert!(
                    fields.contains(&required.as_str().unwrap().to_owned()),
                    "{name}: {required}"
                );
            }
            checked.push(name);
        }
        // saga.evt.updated flattens a view: its schema names the keys a serialized one has.
        let updated = produced()
            .into_iter()
            .find(|m| m.message_type == SagaUpdated::TYPE)
            .unwrap();
        let schema: Value = serde_json::from_str(SAGA_UPDATED_SCHEMA).unwrap();
        assert_eq!(keys(&schema["properties"]), keys(&updated.payload));
        checked.push(SagaUpdated::TYPE);
        assert_eq!(checked.len(), Schemas::embedded().types().count());
    }

    #[test]
    fn every_schema_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
            .collect();
        on_disk.sort();
        let schemas = Schemas::embedded();
        let embedded: Vec<&str> = schemas.types().collect();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn invalid_payloads_are_refused_with_every_reason() {
        let schemas = Schemas::embedded();
        let error = schemas
            .validate(
                OrderCreate::TYPE,
                &json!({"order_id": "nope", "customer_id": "", "items": [], "extra": 1}),
            )
            .unwrap_err();
        let SchemaError::Invalid { errors, .. } = error else {
            panic!("expected Invalid, got {error:?}");
        };
        assert!(errors.contains("/order_id"), "{errors}");
        assert!(errors.contains("/items"), "{errors}");
        assert!(errors.contains("extra"), "{errors}");
    }

    #[test]
    fn unknown_types_are_refused() {
        assert_eq!(
            Schemas::embedded().validate("nobody.cmd.nothing", &json!({})),
            Err(SchemaError::UnknownType("nobody.cmd.nothing".into()))
        );
    }
}
