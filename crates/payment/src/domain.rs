//! Payment rules, free of I/O: whether a charge goes through, and what each command does to
//! an order's charge in each state.
//!
//! Money is conserved: a customer's balance as last set equals the balance now plus the
//! amounts of the charges standing (`charged`); a refund pays a charge back exactly once.

host::status! {
    /// Where an order's charge stands.
    ChargeStatus {
        /// The amount was taken from the balance and stands.
        Charged = "charged",
        /// Refused (unknown customer, insufficient funds); nothing was taken.
        Declined = "declined",
        /// Taken, then paid back.
        Refunded = "refunded",
        /// A refund came before any charge; the tombstone keeps a late charge from landing.
        Voided = "voided",
    }
}

/// A charge command asked for a negative amount, which would credit the customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a charge cannot be negative ({0} cents)")]
pub struct NegativeAmount(pub i64);

/// What `payment.cmd.charge` does for an order payments has not heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Charge { balance_after: i64 },
    Decline { reason: String },
}

/// `balance` is the customer's locked balance, `None` when there is no such account.
pub fn decide_charge(
    customer_id: &str,
    balance: Option<i64>,
    amount_cents: i64,
) -> Result<ChargeOutcome, NegativeAmount> {
    if amount_cents < 0 {
        return Err(NegativeAmount(amount_cents));
    }
    Ok(match balance {
        None => ChargeOutcome::Decline {
            reason: format!("unknown customer {customer_id}"),
        },
        Some(balance) if balance < amount_cents => ChargeOutcome::Decline {
            reason: format!("insufficient funds: balance {balance}, amount {amount_cents}"),
        },
        Some(balance) => ChargeOutcome::Charge {
            balance_after: balance - amount_cents,
        },
    })
}

pub const REFUNDED_REASON: &str = "order was refunded";

/// What a charge command answers for an order payments already decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeAgain {
    /// Announce the stored charge again.
    Charged,
    Declined(String),
}

pub fn charge_again(status: ChargeStatus, stored_reason: Option<&str>) -> ChargeAgain {
    match status {
        ChargeStatus::Charged => ChargeAgain::Charged,
        ChargeStatus::Declined => {
            ChargeAgain::Declined(stored_reason.unwrap_or("declined").to_owned())
        }
        ChargeStatus::Refunded | ChargeStatus::Voided => {
            ChargeAgain::Declined(REFUNDED_REASON.to_owned())
        }
    }
}

/// What `payment.cmd.refund` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// No charge yet: leave a voided tombstone so a late charge is declined; refunds 0.
    Tombstone,
    /// Pay the standing charge back.
    Refund { amount_cents: i64 },
    /// Nothing (more) to pay back: answer with what was refunded before.
    Answer { amount_cents: i64 },
}

/// `existing` is the order's charge status and amount, if it has a charge row.
pub fn decide_refund(existing: Option<(ChargeStatus, i64)>) -> RefundOutcome {
    match existing {
        None => RefundOutcome::Tombstone,
        Some((ChargeStatus::Charged, amount_cents)) => RefundOutcome::Refund { amount_cents },
        Some((ChargeStatus::Refunded, amount_cents)) => RefundOutcome::Answer { amount_cents },
        Some((ChargeStatus::Declined | ChargeStatus::Voided, _)) => {
            RefundOutcome::Answer { amount_cents: 0 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_enough_balance_when_charged_then_the_amount_is_taken() {
        assert_eq!(
            decide_charge("c-1", Some(5000), 1250),
            Ok(ChargeOutcome::Charge {
                balance_after: 3750
            })
        );
        assert_eq!(
            decide_charge("c-1", Some(1250), 1250),
            Ok(ChargeOutcome::Charge { balance_after: 0 })
        );
    }

    #[test]
    fn given_a_balance_below_the_amount_when_charged_then_declined() {
        assert_eq!(
            decide_charge("c-1", Some(1249), 1250),
            Ok(ChargeOutcome::Decline {
                reason: "insufficient funds: balance 1249, amount 1250".into()
            })
        );
    }

    #[test]
    fn given_no_account_when_charged_then_declined() {
        assert_eq!(
            decide_charge("c-9", None, 1),
            Ok(ChargeOutcome::Decline {
                reason: "unknown customer c-9".into()
            })
        );
    }

    #[test]
    fn given_a_negative_amount_when_charged_then_refused_outright() {
        assert_eq!(decide_charge("c-1", Some(100), -5), Err(NegativeAmount(-5)));
    }

    #[test]
    fn given_an_existing_charge_when_charged_again_then_answered_as_stored() {
        assert_eq!(
            charge_again(ChargeStatus::Charged, None),
            ChargeAgain::Charged
        );
        assert_eq!(
            charge_again(ChargeStatus::Declined, Some("unknown customer c-9")),
            ChargeAgain::Declined("unknown customer c-9".into())
        );
        for status in [ChargeStatus::Refunded, ChargeStatus::Voided] {
            assert_eq!(
                charge_again(status, None),
                ChargeAgain::Declined(REFUNDED_REASON.into())
            );
        }
    }

    #[test]
    fn given_each_state_when_refunded_then_only_a_standing_charge_is_paid_back() {
        assert_eq!(decide_refund(None), RefundOutcome::Tombstone);
        assert_eq!(
            decide_refund(Some((ChargeStatus::Charged, 700))),
            RefundOutcome::Refund { amount_cents: 700 }
        );
        assert_eq!(
            decide_refund(Some((ChargeStatus::Refunded, 700))),
            RefundOutcome::Answer { amount_cents: 700 }
        );
        assert_eq!(
            decide_refund(Some((ChargeStatus::Declined, 700))),
            RefundOutcome::Answer { amount_cents: 0 }
        );
        assert_eq!(
            decide_refund(Some((ChargeStatus::Voided, 0))),
            RefundOutcome::Answer { amount_cents: 0 }
        );
    }
}
