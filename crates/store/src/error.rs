//! Errors of the store layer.

use bus::HandlerError;

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
    /// failures and deadlocks, judged by SQLSTATE class rather than message text.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(error) => is_transient(error),
            Self::Migrate(_) => false,
            Self::Bus(_) => true,
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40: transaction rollback (serialisation, deadlock); 08: connection exception;
            // 53: insufficient resources; 57P01..03: admin shutdown, crash, cannot connect now.
            code.starts_with("40")
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
        }),
        _ => false,
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
