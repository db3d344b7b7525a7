//! Order rules, free of I/O: what a checkout may hold, and what each command does to an order
//! in each state. Commands are re-sent under new message ids, so every decision also covers
//! "this already happened".

use std::collections::HashSet;

use contracts::messages::LineItem;

/// Lines a checkout may hold.
pub const MAX_LINES: usize = 100;
/// Units of one SKU a line may ask for.
pub const MAX_QUANTITY: u32 = 1000;

host::status! {
    /// Where an order stands. `Cancelled` is final: nothing brings an order back.
    OrderStatus {
        Pending = "pending",
        Confirmed = "confirmed",
        Cancelled = "cancelled",
    }
}

/// Why a checkout's lines are refused; the text is the rejection reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrder {
    #[error("an order holds 1 to {MAX_LINES} lines, not {0}")]
    LineCount(usize),
    #[error("{0} appears on more than one line")]
    DuplicateSku(String),
    #[error("{sku}: quantity {quantity} is outside 1 to {MAX_QUANTITY}")]
    Quantity { sku: String, quantity: u32 },
}

/// 1 to 100 lines, distinct SKUs, 1 to 1,000 units each.
pub fn validate_items(items: &[LineItem]) -> Result<(), InvalidOrder> {
    if items.is_empty() || items.len() > MAX_LINES {
        return Err(InvalidOrder::LineCount(items.len()));
    }
    let mut seen = HashSet::with_capacity(items.len());
    for line in items {
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return Err(InvalidOrder::Quantity {
                sku: line.sku.clone(),
                quantity: line.quantity,
            });
        }
        if !seen.insert(line.sku.as_str()) {
            return Err(InvalidOrder::DuplicateSku(line.sku.clone()));
        }
    }
    Ok(())
}

/// What is stored about an order that already has a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing<'a> {
    pub status: OrderStatus,
    /// `None` for a tombstone: a cancel that arrived before any create.
    pub customer_id: Option<&'a str>,
}

/// What `order.cmd.create` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Store a new pending order and announce it.
    Insert,
    /// The order exists: announce it again as stored.
    AlreadyCreated,
    /// Refuse; nothing is stored.
    Reject(String),
}

pub const CANCELLED_REASON: &str = "order was cancelled";

pub fn decide_create(
    existing: Option<Existing<'_>>,
    customer_id: &str,
    items: &[LineItem],
) -> CreateOutcome {
    match existing {
        None => match validate_items(items) {
            Ok(()) => CreateOutcome::Insert,
            Err(invalid) => CreateOutcome::Reject(invalid.to_string()),
        },
        Some(Existing {
            status: OrderStatus::Cancelled,
            ..
        }) => CreateOutcome::Reject(CANCELLED_REASON.to_owned()),
        Some(Existing {
            customer_id: Some(owner),
            ..
        }) if owner == customer_id => CreateOutcome::AlreadyCreated,
        Some(_) => CreateOutcome::Reject("order id belongs to another customer".to_owned()),
    }
}

/// What `order.cmd.confirm` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Confirm,
    AlreadyConfirmed,
    /// Confirm only follows a successful charge, so this is a bug to park and look at.
    Refuse(String),
}

pub fn decide_confirm(status: Option<OrderStatus>) -> ConfirmOutcome {
    match status {
        Some(OrderStatus::Pending) => ConfirmOutcome::Confirm,
        Some(OrderStatus::Confirmed) => ConfirmOutcome::AlreadyConfirmed,
        Some(OrderStatus::Cancelled) => {
            ConfirmOutcome::Refuse("cannot confirm a cancelled order".to_owned())
        }
        None => ConfirmOutcome::Refuse("cannot confirm an order that does not exist".to_owned()),
    }
}

/// What `order.cmd.cancel` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No order yet: leave a cancelled tombstone so a late create is rejected.
    Tombstone,
    Cancel,
    AlreadyCancelled,
    /// A confirmed order was paid for; cancelling it is a bug to park and look at.
    Refuse(String),
}

pub fn decide_cancel(status: Option<OrderStatus>) -> CancelOutcome {
    match status {
        None => CancelOutcome::Tombstone,
        Some(OrderStatus::Pending) => CancelOutcome::Cancel,
        Some(OrderStatus::Cancelled) => CancelOutcome::AlreadyCancelled,
        Some(OrderStatus::Confirmed) => {
            CancelOutcome::Refuse("cannot cancel a confirmed order".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: u32) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
        }
    }

    fn existing(status: OrderStatus, customer_id: Option<&str>) -> Option<Existing<'_>> {
        Some(Existing {
            status,
            customer_id,
        })
    }

    #[test]
    fn given_distinct_lines_within_limits_when_validated_then_accepted() {
        let items: Vec<LineItem> = (0..MAX_LINES)
            .map(|n| line(&format!("SKU-{n}"), MAX_QUANTITY))
            .collect();
        assert_eq!(validate_items(&items), Ok(()));
        assert_eq!(validate_items(&[line("SKU-1", 1)]), Ok(()));
    }

    #[test]
    fn given_no_lines_or_too_many_when_validated_then_refused() {
        assert_eq!(validate_items(&[]), Err(InvalidOrder::LineCount(0)));
        let items: Vec<LineItem> = (0..=MAX_LINES)
            .map(|n| line(&format!("SKU-{n}"), 1))
            .collect();
        assert_eq!(validate_items(&items), Err(InvalidOrder::LineCount(101)));
    }

    #[test]
    fn given_a_repeated_sku_when_validated_then_refused() {
        let error =
            validate_items(&[line("SKU-1", 1), line("SKU-2", 1), line("SKU-1", 2)]).unwrap_err();
        assert_eq!(error, InvalidOrder::DuplicateSku("SKU-1".into()));
        assert_eq!(error.to_string(), "SKU-1 appears on more than one line");
    }

    #[test]
    fn given_a_quantity_out_of_range_when_validated_then_refused() {
        for quantity in [0, MAX_QUANTITY + 1] {
            assert_eq!(
                validate_items(&[line("SKU-1", quantity)]),
                Err(InvalidOrder::Quantity {
                    sku: "SKU-1".into(),
                    quantity
                })
            );
        }
    }

    #[test]
    fn given_no_order_when_created_then_inserted_or_rejected_by_validation() {
        assert_eq!(
            decide_create(None, "c-1", &[line("SKU-1", 2)]),
            CreateOutcome::Insert
        );
        assert_eq!(
            decide_create(None, "c-1", &[line("SKU-1", 0)]),
            CreateOutcome::Reject("SKU-1: quantity 0 is outside 1 to 1000".into())
        );
    }

    #[test]
    fn given_an_order_of_the_same_customer_when_created_again_then_already_created() {
        for status in [OrderStatus::Pending, OrderStatus::Confirmed] {
            assert_eq!(
                decide_create(existing(status, Some("c-1")), "c-1", &[line("SKU-1", 2)]),
                CreateOutcome::AlreadyCreated
            );
        }
    }

    #[test]
    fn given_a_cancelled_order_or_tombstone_when_created_then_rejected() {
        for owner in [Some("c-1"), None] {
            assert_eq!(
                decide_create(
                    existing(OrderStatus::Cancelled, owner),
                    "c-1",
                    &[line("SKU-1", 2)]
                ),
                CreateOutcome::Reject(CANCELLED_REASON.into())
            );
        }
    }

    #[test]
    fn given_an_order_of_another_customer_when_created_then_rejected() {
        assert!(matches!(
            decide_create(
                existing(OrderStatus::Pending, Some("c-2")),
                "c-1",
                &[line("SKU-1", 2)]
            ),
            CreateOutcome::Reject(_)
        ));
    }

    #[test]
    fn given_each_state_when_confirmed_then_only_pending_and_confirmed_succeed() {
        assert_eq!(
            decide_confirm(Some(OrderStatus::Pending)),
            ConfirmOutcome::Confirm
        );
        assert_eq!(
            decide_confirm(Some(OrderStatus::Confirmed)),
            ConfirmOutcome::AlreadyConfirmed
        );
        assert!(matches!(
            decide_confirm(Some(OrderStatus::Cancelled)),
            ConfirmOutcome::Refuse(_)
        ));
        assert!(matches!(decide_confirm(None), ConfirmOutcome::Refuse(_)));
    }

    #[test]
    fn given_each_state_when_cancelled_then_a_confirmed_order_is_refused() {
        assert_eq!(decide_cancel(None), CancelOutcome::Tombstone);
        assert_eq!(
            decide_cancel(Some(OrderStatus::Pending)),
            CancelOutcome::Cancel
        );
        assert_eq!(
            decide_cancel(Some(OrderStatus::Cancelled)),
            CancelOutcome::AlreadyCancelled
        );
        assert_eq!(
            decide_cancel(Some(OrderStatus::Confirmed)),
            CancelOutcome::Refuse("cannot cancel a confirmed order".into())
        );
    }

    #[test]
    fn statuses_round_trip_through_their_stored_spelling() {
        for status in [
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        assert!("shipped".parse::<OrderStatus>().is_err());
    }
}
