//! Warren's generic saga orchestrator, as pure code: no broker, no database.
//!
//! - [`definition`]: saga definitions as data (`sagas/*.toml`), loaded and checked statically.
//! - [`machine`]: the state machine: (state, input) -> (new state, commands to send).
//! - [`fold`]: a log folded through a definition one input at a time: replay, the replay
//!   gate and `warren saga replay` all read history through it.
//! - [`history`]: recorded histories folded through a changed definition: where each would
//!   have taken another path (the replay gate before a deploy).
//! - [`failure`]: why a failed saga failed, in kinds a report can count.
//! - [`duration`]: the `"10s"`-style durations definitions are written with.
//!
//! The `orchestrator` crate wraps this in persistence (saga rows, an append-only log and the
//! outbox in one transaction) and runs it on the bus.

pub mod definition;
pub mod duration;
pub mod failure;
pub mod fold;
pub mod history;
pub mod machine;

pub use definition::{CheckError, Definition, Step};
pub use machine::{Command, Input, Outcome, Saga, SagaStatus, StepState, StepStatus, Transition};
