//! Names on the broker. The topology (`bus::topology`) and `rabbitmq/definitions.json` are
//! built from these, so a name is spelled in one place only.

/// The one topic exchange that carries every command and event.
pub const EXCHANGE: &str = "warren";
/// Where consumer queues dead-letter to; routes by source queue name to `<queue>.dead`.
pub const DEAD_LETTER_EXCHANGE: &str = "warren.dlx";
/// Where delayed retries are published; routes `<queue>.retry.<tier>` to the retry queue.
pub const RETRY_EXCHANGE: &str = "warren.retry";
/// Where operators' control messages go (`chaos` faults); only processes that allow them bind.
pub const CONTROL_EXCHANGE: &str = "warren.control";
/// The capped classic queue bound with `#`, for people watching traffic in the management UI.
pub const AUDIT_QUEUE: &str = "warren.audit";
/// The virtual host Warren lives in.
pub const VHOST: &str = "warren";

/// Header that carries why a message was parked.
pub const HEADER_PARKED_REASON: &str = "x-warren-parked-reason";
/// Header that carries the queue a parked message came from.
pub const HEADER_PARKED_FROM: &str = "x-warren-parked-from";
pub const HEADER_CAUSATION_ID: &str = "x-causation-id";
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Header that names the saga step a command or its reply belongs to.
pub const HEADER_STEP: &str = "x-saga-step";
pub const HEADER_SCHEMA_VERSION: &str = "x-schema-version";
pub const HEADER_ATTEMPT: &str = "x-attempt";

/// The parking queue of a consumer queue.
pub fn parking_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The retry queue of a consumer queue for one back-off tier (0-based).
pub fn retry_queue(queue: &str, tier: usize) -> String {
    format!("{queue}.retry.{}", tier + 1)
}
