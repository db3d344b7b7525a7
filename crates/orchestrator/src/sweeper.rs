//! The timeout sweeper: every `interval`, feeds a timeout to sagas whose deadline passed.
//! Deadlines are data in `sagas.sagas`, so a restarted or second orchestrator picks up where
//! another left off.
//!
//! Each pass first measures the database's clock if it has not for [`CLOCK_SYNC`] (see
//! [`crate::Clock`]; clocks drift slowly), then drains what is due in batches, then waits for the next pass or shutdown, whichever comes first. A batch
//! always moves every saga it claims (on to a retry, a compensation or a halt), so draining
//! ends; shutdown is also checked between batches.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Engine;

const BATCH: i64 = 100;
/// How often the database's clock is measured again.
const CLOCK_SYNC: Duration = Duration::from_secs(10);

pub async fn run(engine: Engine, interval: Duration, shutdown: CancellationToken) {
    info!(?interval, "timeout sweeper running");
    let mut synced: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        if synced.is_none_or(|at| at.elapsed() >= CLOCK_SYNC) {
            match engine.clock().sync(engine.pool()).await {
                Ok(_) => synced = Some(Instant::now()),
                Err(error) => {
                    warn!(%error, "cannot read the database's clock; keeping the last offset");
                }
            }
        }
        let mut handled = 0;
        while !shutdown.is_cancelled() {
            match engine.sweep(BATCH).await {
                Ok(n) => {
                    handled += n;
                    if (n as i64) < BATCH {
                        break;
                    }
                }
                Err(error) => {
                    warn!(%error, "timeout sweep failed");
                    break;
                }
            }
        }
        if handled > 0 {
            info!(timed_out = handled, "saga timeouts handled");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    info!("timeout sweeper stopped");
}
