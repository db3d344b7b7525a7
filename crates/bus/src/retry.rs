//! What to do with a message once its handler has run: a pure function, tested without a broker.

use std::time::Duration;

use crate::HandlerError;

/// Delays between attempts. A message gets `delays.len() + 1` attempts in all; the n-th retry
/// waits `delays[n - 1]` in its own TTL queue, so waiting messages never block the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub delays: Vec<Duration>,
}

impl RetryPolicy {
    pub fn new(delays: impl Into<Vec<Duration>>) -> Self {
        Self {
            delays: delays.into(),
        }
    }

    /// Warren's default tiers: 1 s, 5 s, 30 s; four attempts in all.
    pub fn standard() -> Self {
        Self::new([1, 5, 30].map(Duration::from_secs))
    }

    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }
}

/// The fate of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or a duplicate): ack it.
    Ack,
    /// Publish the next attempt to retry tier `tier` (0-based), then ack this delivery.
    Retry { tier: usize },
    /// Publish it to the parking queue with the reason, then ack this delivery.
    Park { kind: Parked, reason: String },
}

/// Why a handled message is parked, as the `x-park-kind` header and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// The handler said it can never work.
    Rejected,
    /// It kept failing in ways that might pass, until its attempts ran out.
    Exhausted,
}

impl Parked {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Exhausted => "exhausted",
        }
    }
}

/// Decides the fate of attempt `attempt` (1-based) after its handler returned `outcome`.
pub fn dispose(
    outcome: &Result<(), HandlerError>,
    attempt: u32,
    policy: &RetryPolicy,
) -> Disposition {
    match outcome {
        Ok(()) => Disposition::Ack,
        Err(HandlerError::Permanent(reason)) => Disposition::Park {
            kind: Parked::Rejected,
            reason: format!("rejected by handler: {reason}"),
        },
        Err(HandlerError::Transient(reason)) if attempt < policy.max_attempts() => {
            let tier = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
            Disposition::Retry {
                tier: tier.min(policy.delays.len().saturating_sub(1)),
            }
        }
        Err(HandlerError::Transient(reason)) => Disposition::Park {
            kind: Parked::Exhausted,
            reason: format!("gave up after {attempt} attempts: {reason}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> Result<(), HandlerError> {
        Err(HandlerError::Transient("database busy".into()))
    }

    #[test]
    fn success_is_acked() {
        assert_eq!(
            dispose(&Ok(()), 1, &RetryPolicy::standard()),
            Disposition::Ack
        );
    }

    #[test]
    fn transient_failures_climb_the_tiers_then_park() {
        let policy = RetryPolicy::standard();
        assert_eq!(policy.max_attempts(), 4);
        assert_eq!(
            dispose(&transient(), 1, &policy),
            Disposition::Retry { tier: 0 }
        );
        assert_eq!(
            dispose(&transient(), 2, &policy),
            Disposition::Retry { tier: 1 }
        );
        assert_eq!(
            dispose(&transient(), 3, &policy),
            Disposition::Retry { tier: 2 }
        );
        assert_eq!(
            dispose(&transient(), 4, &policy),
            Disposition::Park {
                kind: Parked::Exhausted,
                reason: "gave up after 4 attempts: database busy".into()
            }
        );
    }

    #[test]
    fn permanent_failures_park_at_once() {
        let outcome = Err(HandlerError::Permanent("unknown sku".into()));
        assert!(matches!(
            dispose(&outcome, 1, &RetryPolicy::standard()),
            Disposition::Park { kind: Parked::Rejected, reason } if reason.contains("unknown sku")
        ));
    }

    #[test]
    fn no_tiers_means_one_attempt() {
        let policy = RetryPolicy::new([]);
        assert!(matches!(
            dispose(&transient(), 1, &policy),
            Disposition::Park { .. }
        ));
    }

    #[test]
    fn an_attempt_beyond_the_policy_parks_rather_than_overflowing() {
        let policy = RetryPolicy::new([Duration::from_millis(10)]);
        assert!(matches!(
            dispose(&transient(), u32::MAX, &policy),
            Disposition::Park { .. }
        ));
    }
}
