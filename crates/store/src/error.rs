//! Errors of the store layer.

use bus::HandlerError;
use sqlx::error::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

impl StoreError {
    /// Whether trying again later can succeed: lost connections, pool exhaustion, serialisation
    /// failures and deadlocks ([`Failure::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(error) => Failure::of(error).is_transient(),
            Self::Migrate(_) => false,
            Self::Bus(_) => true,
        }
    }
}

/// What a database error means to whoever asked: sqlx's own kinds where it has them (the
/// constraint violations, [`sqlx::error::ErrorKind`]), and PostgreSQL's SQLSTATE classes
/// (Appendix A of its manual) for the rest, which sqlx leaves as [`ErrorKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection or the pool failed (I/O, pool timed out or closed; class 08, connection
    /// exception): another try, on another connection, can work.
    Unreachable,
    /// The transaction lost a race (class 40, transaction rollback: serialisation failure,
    /// deadlock): running it again can work.
    RolledBack,
    /// The server ran short (class 53, insufficient resources: disk, memory, connections).
    Resources,
    /// The server is shutting down, crashed or not yet accepting (57P01, 57P02, 57P03).
    ShuttingDown,
    /// A constraint refused the change.
    Constraint(Constraint),
    /// Anything else (bad data, a bug): trying again cannot help.
    Other,
}

/// Which kind of constraint refused a change, as sqlx tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    Unique,
    ForeignKey,
    NotNull,
    Check,
}

/// SQLSTATE classes and codes this module tells apart.
mod sqlstate {
    pub const CONNECTION_EXCEPTION: &str = "08";
    pub const TRANSACTION_ROLLBACK: &str = "40";
    pub const INSUFFICIENT_RESOURCES: &str = "53";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
}

impl Failure {
    pub fn of(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unreachable,
            sqlx::Error::Database(db) => match db.kind() {
                ErrorKind::UniqueViolation => Self::Constraint(Constraint::Unique),
                ErrorKind::ForeignKeyViolation => Self::Constraint(Constraint::ForeignKey),
                ErrorKind::NotNullViolation => Self::Constraint(Constraint::NotNull),
                ErrorKind::CheckViolation => Self::Constraint(Constraint::Check),
                _ => db
                    .code()
                    .map_or(Self::Other, |code| Self::of_sqlstate(&code)),
            },
            _ => Self::Other,
        }
    }

    fn of_sqlstate(code: &str) -> Self {
        use sqlstate::*;
        match code {
            ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW => Self::ShuttingDown,
            _ if code.starts_with(CONNECTION_EXCEPTION) => Self::Unreachable,
            _ if code.starts_with(TRANSACTION_ROLLBACK) => Self::RolledBack,
            _ if code.starts_with(INSUFFICIENT_RESOURCES) => Self::Resources,
            _ => Self::Other,
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_transient(self) -> bool {
        match self {
            Self::Unreachable | Self::RolledBack | Self::Resources | Self::ShuttingDown => true,
            Self::Constraint(_) | Self::Other => false,
        }
    }
}

/// Database failures inside a message handler: transient ones are retried, the rest parked.
impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            Self::Transient(error.to_string())
        } else {
            Self::Permanent(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes_tell_a_race_or_an_outage_from_a_refusal() {
        let cases = [
            ("40001", Failure::RolledBack, true),   // serialization_failure
            ("40P01", Failure::RolledBack, true),   // deadlock_detected
            ("08006", Failure::Unreachable, true),  // connection_failure
            ("53300", Failure::Resources, true),    // too_many_connections
            ("57P01", Failure::ShuttingDown, true), // admin_shutdown
            ("57P03", Failure::ShuttingDown, true), // cannot_connect_now
            ("57014", Failure::Other, false),       // query_canceled: not a shutdown
            ("22012", Failure::Other, false),       // division_by_zero
            ("42501", Failure::Other, false),       // insufficient_privilege
        ];
        for (code, failure, transient) in cases {
            assert_eq!(Failure::of_sqlstate(code), failure, "{code}");
            assert_eq!(failure.is_transient(), transient, "{code}");
        }
        assert!(Failure::of(&sqlx::Error::PoolTimedOut).is_transient());
        assert!(!Failure::of(&sqlx::Error::RowNotFound).is_transient());
        assert!(!Failure::Constraint(Constraint::Check).is_transient());
    }
}
