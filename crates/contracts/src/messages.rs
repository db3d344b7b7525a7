//! Message payloads. Each type names its routing key once, in its [`Message`] impl; the
//! JSON Schema of the same name in `schemas/` describes it for everyone outside Rust.
//!
//! Commands ask one service to do something (`<service>.cmd.<name>`); events say that
//! something happened (`<service>.evt.<name>`).

use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// A payload type bound to its routing key and schema version.
pub trait Message: Serialize + DeserializeOwned {
    /// The routing key, which is also the AMQP `type` and the schema's file name.
    const TYPE: &'static str;
    const SCHEMA_VERSION: u32 = 1;
}

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Persistent, confirmed and `mandatory`, through the sender's outbox: every message an
    /// effect, a compensation or an invariant depends on.
    Durable,
    /// Transient and not `mandatory`, handed to the publisher after the commit that caused it
    /// and never stored in an outbox: at most once, lost if the process or the broker stops
    /// first. Only for live views (the gateway's event streams, `/ui`, `warren bench`), which
    /// start from a snapshot read from the owner and so recover from a missed event.
    Live,
}

/// The message types that travel [`Delivery::Live`]: the events only people and views watch
/// (no consumer queue binds them; a test in `bus::topology` checks both ways). Every other
/// type is durable.
pub const LIVE: &[&str] = &[
    SagaUpdated::TYPE,
    NotificationCreated::TYPE,
    ImageProcessingStarted::TYPE,
    ImageVariantDone::TYPE,
    ProductUpserted::TYPE,
    AccountBalanceSet::TYPE,
];

/// How messages of this type travel.
pub fn delivery(message_type: &str) -> Delivery {
    if LIVE.contains(&message_type) {
        Delivery::Live
    } else {
        Delivery::Durable
    }
}

macro_rules! message {
    ($type:ty, $key:literal) => {
        impl Message for $type {
            const TYPE: &'static str = $key;
        }
    };
}

/// One line of an order as the customer asked for it; prices come from inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    pub sku: String,
    #[serde(deserialize_with = "crate::whole::deserialize")]
    pub quantity: u32,
}

/// One line priced by the inventory service at reservation time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricedLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// One processed variant of an image, stored under `key` in the image store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageVariant {
    /// The spec it was made from, e.g. `thumbnail:128`.
    pub name: String,
    pub key: String,
    pub width: u32,
    pub height: u32,
    /// png, jpeg or webp.
    pub format: String,
    pub bytes: u64,
}

/// A message type as [`messages!`] declares it: its routing key, its payload's field names and
/// the text of its schema file (`schemas/<type>.json`, embedded at build time).
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    pub message_type: &'static str,
    pub fields: &'static [&'static str],
    pub schema: &'static str,
}

/// Declares payload structs (all fields required, unknown fields refused), binds each to its
/// routing key, and lists them all in [`DECLARED`] with their schema files: one entry here is
/// the type's one declaration; the schema registry is derived from it, and a test holds each
/// schema's properties to the struct's fields.
macro_rules! messages {
    ($($(#[$doc:meta])* $key:literal => $name:ident { $($field:ident : $ty:ty),* $(,)? })*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $name {
                $(pub $field: $ty,)*
            }
            message!($name, $key);
        )*

        /// Every message type of this module but [`SagaUpdated`] (whose payload flattens a
        /// [`SagaView`]), in declaration order.
        pub const DECLARED: &[Declared] = &[$(Declared {
            message_type: $key,
            fields: &[$(stringify!($field)),*],
            schema: include_str!(concat!("../../../schemas/", $key, ".json")),
        }),*];
    };
}

messages! {
    /// Create a pending order; idempotent per order id.
    "order.cmd.create" => OrderCreate { order_id: Uuid, customer_id: String, items: Vec<LineItem> }
    "order.evt.created" => OrderCreated { order_id: Uuid, customer_id: String, items: Vec<LineItem> }
    "order.evt.rejected" => OrderRejected { order_id: Uuid, reason: String }
    /// Confirm a pending order at its final total.
    "order.cmd.confirm" => OrderConfirm { order_id: Uuid, total_cents: i64 }
    "order.evt.confirmed" => OrderConfirmed { order_id: Uuid, customer_id: String, total_cents: i64 }
    /// Cancel an order; succeeds for an order that was never created (and keeps it from being).
    "order.cmd.cancel" => OrderCancel { order_id: Uuid, reason: String }
    "order.evt.cancelled" => OrderCancelled { order_id: Uuid, customer_id: Option<String>, reason: String }

    /// Reserve every line of an order or none.
    "inventory.cmd.reserve" => InventoryReserve { order_id: Uuid, items: Vec<LineItem> }
    "inventory.evt.reserved" => InventoryReserved { order_id: Uuid, lines: Vec<PricedLine>, total_cents: i64 }
    "inventory.evt.reservation_failed" => InventoryReservationFailed { order_id: Uuid, reason: String }
    /// Release an order's reservation; succeeds when there is none (and keeps one from being made).
    "inventory.cmd.release" => InventoryRelease { order_id: Uuid }
    "inventory.evt.released" => InventoryReleased { order_id: Uuid }
    /// Create or change a product; `available` is the stock on hand not reserved.
    "inventory.cmd.upsert_product" => ProductUpsert { sku: String, name: String, price_cents: i64, available: i64 }
    "inventory.evt.product_upserted" => ProductUpserted { sku: String, name: String, price_cents: i64, available: i64 }

    /// Charge a customer for an order; declined above the balance.
    "payment.cmd.charge" => PaymentCharge { order_id: Uuid, customer_id: String, amount_cents: i64 }
    "payment.evt.charged" => PaymentCharged { order_id: Uuid, customer_id: String, amount_cents: i64 }
    "payment.evt.declined" => PaymentDeclined { order_id: Uuid, reason: String }
    /// Refund an order's charge; succeeds when there is none (and keeps one from being made).
    "payment.cmd.refund" => PaymentRefund { order_id: Uuid }
    "payment.evt.refunded" => PaymentRefunded { order_id: Uuid, amount_cents: i64 }
    /// Set a customer's balance.
    "payment.cmd.set_balance" => AccountSetBalance { customer_id: String, balance_cents: i64 }
    "payment.evt.balance_set" => AccountBalanceSet { customer_id: String, balance_cents: i64 }

    /// Process an uploaded original into variants (each a spec such as `thumbnail:128`,
    /// `grayscale|rotate:90@webp`); images travel by store key, never inside messages.
    "image.cmd.process" => ImageProcess { image_id: Uuid, customer_id: Option<String>, original: String, variants: Vec<String> }
    /// Progress: processing began.
    "image.evt.processing_started" => ImageProcessingStarted { image_id: Uuid, customer_id: Option<String>, variants: u32 }
    /// Progress: one variant is written.
    "image.evt.variant_done" => ImageVariantDone { image_id: Uuid, customer_id: Option<String>, variant: ImageVariant }
    "image.evt.processed" => ImageProcessed { image_id: Uuid, customer_id: Option<String>, outputs: Vec<ImageVariant> }
    /// The image could not be processed (undecodable, too large, a bad operation); nothing is kept.
    "image.evt.failed" => ImageFailed { image_id: Uuid, customer_id: Option<String>, reason: String }
    /// Delete an image's variants; succeeds when there are none.
    "image.cmd.delete_variants" => ImageDeleteVariants { image_id: Uuid }
    "image.evt.variants_deleted" => ImageVariantsDeleted { image_id: Uuid, deleted: u32 }
    /// Record the variants as the image's: it is complete.
    "image.cmd.record" => ImageRecord { image_id: Uuid, outputs: Vec<ImageVariant> }
    "image.evt.completed" => ImageCompleted { image_id: Uuid, customer_id: Option<String>, outputs: Vec<ImageVariant> }

    /// A notification was stored (and handed to its delivery channel).
    "notification.evt.created" => NotificationCreated { notification_id: Uuid, customer_id: String, kind: String, message: String, source_event: Uuid }

    /// Start a saga; idempotent per saga id. `request_hash` identifies the request that asked
    /// for it, so a reused idempotency key with another body can be told apart.
    "saga.cmd.start" => SagaStart { saga_id: Uuid, saga: String, input: serde_json::Map<String, serde_json::Value>, request_hash: Option<String> }
}

/// One step of a saga as people see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepView {
    pub name: String,
    /// pending, running, succeeded, failed, timed_out, compensating or compensated.
    pub state: String,
    pub attempts: u32,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The states a saga can be in, as views, the HTTP API and the CLI name them.
pub const SAGA_STATES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
];

/// A saga as people see it (the HTTP API's saga resource).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaView {
    pub saga_id: Uuid,
    pub saga: String,
    /// One of [`SAGA_STATES`].
    pub state: String,
    pub current_step: Option<String>,
    pub order_id: Option<Uuid>,
    pub steps: Vec<StepView>,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub version: i64,
    /// The version of its definition the saga runs on (the digest of the definition's
    /// canonical form); none for a saga started before versions were recorded.
    #[serde(default)]
    pub definition_version: Option<String>,
}

/// Published on every saga transition: the saga after it, and what happened. Travels
/// [`Delivery::Live`]: it feeds views, never an effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SagaUpdated {
    #[serde(flatten)]
    pub view: SagaView,
    pub transition: String,
}
message!(SagaUpdated, "saga.evt.updated");

/// The schema of [`SagaUpdated`], kept apart from [`DECLARED`] because its payload is a
/// flattened view.
pub const SAGA_UPDATED_SCHEMA: &str = include_str!("../../../schemas/saga.evt.updated.json");
