//! The timeout sweeper: every `interval`, feeds a timeout to sagas whose deadline passed.
//! Deadlines are data in `sagas.sagas`, so a restarted or second orchestrator picks up where
//! another left off.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Engine;

const BATCH: i64 = 100;

pub async fn run(engine: Engine, interval: Duration, shutdown: CancellationToken) {
    info!(?interval, "timeout sweeper running");
    loop {
        // Drain what is due, then wait.
        loop {
            match engine.sweep(BATCH).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(0) => break,
                Ok(n) => {
                    info!(timed_out = n, "saga timeouts handled");
                    break;
                }
                Err(error) => {
                    warn!(%error, "timeout sweep failed");
                    break;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    info!("timeout sweeper stopped");
}
