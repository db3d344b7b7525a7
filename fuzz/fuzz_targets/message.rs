//! A hostile delivery through what a consumer does before its handler: decode the envelope,
//! validate the payload against its type's schema, read the trace context, park what fails.
//! An envelope that decodes must survive the wire: encoded and decoded again it is the same.

#![no_main]

use bus::amqp;
use contracts::messages::*;
use contracts::{Envelope, Message, Schemas, TraceParent};
use libfuzzer_sys::fuzz_target;
use warren_fuzz::delivery;

fuzz_target!(|data: &[u8]| {
    let Ok(delivery) = delivery::read(data) else {
        return;
    };
    let envelope = match amqp::decode(&delivery.properties, delivery.body) {
        Ok(envelope) => envelope,
        Err(error) => {
            amqp::parked_properties(&delivery.properties, "fuzz.queue", &error.to_string());
            return;
        }
    };

    if let Err(error) = Schemas::embedded().validate(&envelope.message_type, &envelope.payload) {
        amqp::parked_properties(&delivery.properties, "fuzz.queue", &error.to_string());
    } else {
        // Handlers take the payload as its Rust type; whether it decodes is not checked here
        // (the schemas are looser than the types in places), only that trying is safe.
        typed(&envelope);
    }

    if let Some(parent) = envelope.traceparent.as_deref().and_then(TraceParent::parse) {
        let child = parent.child();
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
        assert_eq!(envelope.trace_id(), Some(parent.trace_id_hex()));
    }

    let sent = amqp::properties(&envelope);
    let body = amqp::body(&envelope);
    let mut again = amqp::decode(&sent, &body)
        .unwrap_or_else(|e| panic!("{envelope:?} decoded, but not once encoded: {e}"));
    // AMQP timestamps have whole seconds; a missing one was read as now.
    assert_eq!(again.timestamp.timestamp(), envelope.timestamp.timestamp());
    again.timestamp = envelope.timestamp;
    assert_eq!(again, envelope);
});

/// Decodes the payload as the Rust type its message type names.
fn typed(envelope: &Envelope) {
    macro_rules! try_types {
        ($($type:ty),* $(,)?) => {
            match envelope.message_type.as_str() {
                $(<$type>::TYPE => drop(envelope.decode::<$type>()),)*
                _ => {}
            }
        };
    }
    try_types!(
        OrderCreate,
        OrderCreated,
        OrderRejected,
        OrderConfirm,
        OrderConfirmed,
        OrderCancel,
        OrderCancelled,
        InventoryReserve,
        InventoryReserved,
        InventoryReservationFailed,
        InventoryRelease,
        InventoryReleased,
        ProductUpsert,
        ProductUpserted,
        PaymentCharge,
        PaymentCharged,
        PaymentDeclined,
        PaymentRefund,
        PaymentRefunded,
        AccountSetBalance,
        AccountBalanceSet,
        ImageProcess,
        ImageProcessingStarted,
        ImageVariantDone,
        ImageProcessed,
        ImageFailed,
        ImageDeleteVariants,
        ImageVariantsDeleted,
        ImageRecord,
        ImageCompleted,
        NotificationCreated,
        SagaStart,
        SagaUpdated,
    );
}
