//! Warren's checkout participants. Each service owns one PostgreSQL schema and answers the
//! commands of its own `<service>.cmd.*` routing keys; every handler is idempotent per
//! business key (order id, SKU, customer id), because the orchestrator re-sends a timed-out
//! command under a new message id, which the inbox cannot recognise.
//!
//! Each service module holds:
//! - `domain`: the rules as pure functions over plain values, unit-tested without a database.
//! - `handler`: a [`store::TxHandler`] that locks rows, asks `domain`, writes the outcome and
//!   returns the replies; wrapped by [`store::Transactional`] for the inbox and outbox.
//! - `group`: the same decisions for a whole group commit in a fixed number of set-based
//!   statements (read or lock every row the group names, decide each message in order in
//!   memory, write each table once); `handler`'s one-message path is the reference it is
//!   tested against.
//! - `queries`: reads for the gateway (over request/reply) and for test invariants.
//!
//! Modules:
//! - [`order`]: orders (`orders` schema): create, confirm, cancel.
//! - [`inventory`]: products and reservations (`inventory` schema): reserve all lines or
//!   none, release, and selling reserved stock when an order is confirmed.
//! - [`payment`]: accounts and charges (`payments` schema): charge, refund, set balance.
//!
//! Business outcomes (out of stock, declined, rejected) commit and reply with a failure
//! event; only messages a service cannot handle and database failures are errors.

/// A status column held a value this code does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

/// Declares a status enum stored as lowercase text, with its SQL spelling and parser.
macro_rules! status {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The spelling in the database and in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownStatus;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err($crate::UnknownStatus(other.to_owned())),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use status;

pub mod inventory;
pub mod order;
pub mod payment;

mod handling;
