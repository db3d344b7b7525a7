//! The orchestrator's clock: the database's time, read through the local one.
//!
//! Deadlines are written by whichever orchestrator applied a step and compared by whichever one
//! sweeps, possibly on other machines. If each used its own clock, a machine running behind
//! would see deadlines that the database already counts as passed (the sweeper claims the saga,
//! the machine says "no deadline has passed", and the next pass claims it again), and one
//! running ahead would time steps out early. So every orchestrator tells time as the database
//! does: it measures the offset between its clock and PostgreSQL's at start and every 10 s while
//! it sweeps, and adds it to the local clock. The sweeper itself compares deadlines with the database's
//! `now()` and hands that same instant to the state machine.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sqlx::PgPool;

#[derive(Debug, Default)]
pub struct Clock {
    /// How far this machine's clock is off, on purpose: only tests set it, to stand for a
    /// machine whose clock is wrong.
    skew: Duration,
    /// The database's clock minus the local one, in microseconds, as last measured.
    offset_us: AtomicI64,
}

impl Clock {
    /// The local clock, until [`Clock::sync`] measures the database's.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that is `skew` off the machine's, as on a machine whose clock is wrong.
    pub fn skewed(skew: Duration) -> Self {
        Self {
            skew,
            ..Self::default()
        }
    }

    /// Now, on the database's clock as last measured, at PostgreSQL's precision (microseconds)
    /// so that a replayed log reproduces the stored state to the last digit.
    pub fn now(&self) -> DateTime<Utc> {
        let offset = Duration::microseconds(self.offset_us.load(Ordering::Relaxed));
        (self.local() + offset).trunc_subsecs(6)
    }

    /// Measures the database's clock against the local one (the midpoint of one round trip)
    /// and uses the difference from now on. Returns it.
    pub async fn sync(&self, db: &PgPool) -> Result<Duration, sqlx::Error> {
        let before = self.local();
        let theirs: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(db)
            .await?;
        let after = self.local();
        let offset = theirs - (before + (after - before) / 2);
        let micros = offset.num_microseconds().unwrap_or(i64::MAX);
        self.offset_us.store(micros, Ordering::Relaxed);
        metrics::gauge!("warren_orchestrator_clock_offset_seconds").set(micros as f64 / 1e6);
        Ok(offset)
    }

    fn local(&self) -> DateTime<Utc> {
        Utc::now() + self.skew
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_reads_off_by_its_skew_until_synced() {
        let clock = Clock::skewed(Duration::minutes(-10));
        let behind = Utc::now() - clock.now();
        assert!(behind > Duration::minutes(9), "{behind}");
        assert!(behind < Duration::minutes(11), "{behind}");
    }
}
