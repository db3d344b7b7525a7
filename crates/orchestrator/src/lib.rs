//! Runs saga definitions on Warren's bus and database.
//!
//! - [`engine`]: every saga input (start, reply, timeout, operator action) as one transaction:
//!   lock the saga row, apply the pure state machine, save the row, append to the saga's log,
//!   write the commands to the outbox, commit; the `saga.evt.updated` event (live: transient,
//!   no outbox row on the hot path) is handed to the relay with them after the commit.
//! - [`isolate`]: one saga's transition kept from stopping the others: a saga whose definition
//!   version cannot be read, or whose transition panics, is halted with the reason.
//! - [`migrate`]: moves a running saga onto another version where its history replays
//!   through that version unchanged.
//! - [`clock`]: the database's time, so deadlines mean the same on every machine.
//! - [`repo`]: the SQL of `sagas.sagas` and `sagas.saga_log`.
//! - [`versions`]: the definition versions sagas run on; each saga advances by the one it
//!   started under, kept in `sagas.definitions`.
//! - [`view`]: the saga as people see it.
//! - [`sweeper`]: claims sagas whose deadline passed (`FOR UPDATE SKIP LOCKED`, so any number of
//!   orchestrators can run) and feeds them a timeout.
//!
//! Transitions of one saga are serialised by its row lock; replies for different sagas run in
//! parallel, up to the consumer's prefetch.

pub mod clock;
pub mod engine;
mod isolate;
pub mod migrate;
pub mod queries;
pub mod repo;
pub mod sweeper;
pub mod versions;
pub mod view;

use contracts::component::Queue;

pub use clock::Clock;
pub use engine::{Engine, EngineError};
pub use queries::SagaQueries;

/// The name the orchestrator publishes under and claims inbox rows with.
pub const PRODUCER: &str = "orchestrator";

/// The orchestrator as the broker and the database see it. `saga.replies` is bound to the
/// replies the saga definitions wait for (`bus::Topology::with_saga_replies`), so other events
/// never reach it.
pub const COMPONENT: contracts::Component = contracts::Component {
    name: "orchestrator",
    owns: Some("saga"),
    consumes: &[
        Queue {
            name: "saga.commands",
            bindings: &["saga.cmd.*"],
        },
        Queue {
            name: "saga.replies",
            bindings: &[],
        },
    ],
    answers_queries: true,
    publishes: &[],
    sends_saga_commands: true,
    watches: &[],
    db_role: "warren_sagas",
    schema: Some(SCHEMA),
    metrics_port: Some(9181),
};
/// The database schema the orchestrator owns.
pub const SCHEMA: &str = "sagas";
