//! Connecting and migrating.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tracing::{info, warn};

use crate::StoreError;

/// Where and how to connect.
#[derive(Clone)]
pub struct DbSettings {
    /// `postgres://user:password@host:port/database`. Holds a secret: never logged.
    pub url: String,
    pub max_connections: u32,
    /// How long to keep trying the first connection before giving up.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for DbSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSettings")
            .field("url", &bus::connection::redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A pooled connection idle for longer than this is pinged before it is handed out; one used
/// more recently is handed out as it is. sqlx's default pings every connection on every
/// acquire: one more round trip per transaction, the largest avoidable cost of a hop at light
/// load. A connection that died while in use fails its statement instead, the transaction
/// rolls back and the delivery is retried, as after any database error.
const CHECK_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool, once the database answers. Retries with exponential back-off up to
/// `connect_timeout`, so a process may start before the database does.
pub async fn connect(settings: &DbSettings) -> Result<PgPool, StoreError> {
    let options = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout.min(Duration::from_secs(10)))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_WHEN_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        });
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    let mut wait = Duration::from_millis(100);
    let connect: PgConnectOptions = settings.url.parse()?;
    // Slow statements are worth knowing about in a service's log (info), not worth a warning
    // in the middle of an operator command's answer (those log at warn).
    let connect = connect.log_slow_statements(log::LevelFilter::Info, Duration::from_secs(1));
    loop {
        match options.clone().connect_with(connect.clone()).await {
            Ok(pool) => {
                info!("connected to PostgreSQL");
                return Ok(pool);
            }
            Err(error) if tokio::time::Instant::now() + wait < deadline => {
                warn!(%error, ?wait, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Applies the migrations of `migrations/` (embedded at build time).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("../../migrations").run(pool).await?;
    Ok(())
}
