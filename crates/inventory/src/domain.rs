//! Inventory rules, free of I/O: pricing a reservation, reserving every line or none, how
//! held stock moves, and what each command does to a reservation in each state.
//!
//! Stock is conserved: a product's `available + reserved + sold` changes only when someone
//! sets its stock; reserving, releasing and selling only move units between the three.

use std::collections::{BTreeMap, HashSet};

use contracts::messages::{LineItem, PricedLine};

host::status! {
    /// Where an order's reservation stands.
    ReservationStatus {
        /// The lines' stock is held for the order.
        Reserved = "reserved",
        /// Held stock went back (or a release came first and left a tombstone).
        Released = "released",
        /// Refused (out of stock, unknown SKU); nothing was held.
        Failed = "failed",
        /// The order was confirmed and its held stock sold.
        Committed = "committed",
    }
}

/// One product's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    /// On hand and free to reserve.
    pub available: i64,
    /// On hand and held for orders not yet confirmed.
    pub reserved: i64,
    /// Gone to confirmed orders.
    pub sold: i64,
}

/// A product as locked for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub sku: String,
    pub price_cents: i64,
    pub stock: Stock,
}

/// A way units move between the parts of [`Stock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockMove {
    /// available -> reserved
    Reserve,
    /// reserved -> available
    Release,
    /// reserved -> sold
    Sell,
}

impl Stock {
    /// The stock after moving `quantity` units, or `None` when the source holds fewer.
    pub fn after(self, movement: StockMove, quantity: i64) -> Option<Self> {
        if quantity < 0 {
            return None;
        }
        let take = |from: i64| from.checked_sub(quantity).filter(|left| *left >= 0);
        let give = |to: i64| to.checked_add(quantity);
        Some(match movement {
            StockMove::Reserve => Self {
                available: take(self.available)?,
                reserved: give(self.reserved)?,
                ..self
            },
            StockMove::Release => Self {
                available: give(self.available)?,
                reserved: take(self.reserved)?,
                ..self
            },
            StockMove::Sell => Self {
                reserved: take(self.reserved)?,
                sold: give(self.sold)?,
                ..self
            },
        })
    }

    pub fn total(self) -> i64 {
        self.available + self.reserved + self.sold
    }
}

/// The new stock of one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    pub sku: String,
    pub stock: Stock,
}

/// Why held stock cannot move as recorded: the stored reservation and the products disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("product {0} of a reservation does not exist")]
    UnknownSku(String),
    #[error("{sku}: cannot {movement:?} {quantity} units of {stock:?}")]
    Short {
        sku: String,
        movement: StockMove,
        quantity: i64,
        stock: Stock,
    },
}

/// The stock of each product after moving every line, one change per SKU in SKU order.
pub fn move_lines<'a>(
    products: &[Product],
    lines: impl IntoIterator<Item = (&'a str, i64)>,
    movement: StockMove,
) -> Result<Vec<StockChange>, MoveError> {
    let mut stock: BTreeMap<&str, Stock> =
        products.iter().map(|p| (p.sku.as_str(), p.stock)).collect();
    let mut touched = BTreeMap::new();
    for (sku, quantity) in lines {
        let current = stock
            .get_mut(sku)
            .ok_or_else(|| MoveError::UnknownSku(sku.to_owned()))?;
        *current = current
            .after(movement, quantity)
            .ok_or_else(|| MoveError::Short {
                sku: sku.to_owned(),
                movement,
                quantity,
                stock: *current,
            })?;
        touched.insert(sku, *current);
    }
    Ok(touched
        .into_iter()
        .map(|(sku, stock)| StockChange {
            sku: sku.to_owned(),
            stock,
        })
        .collect())
}

/// The stored lines of a reservation as the `(sku, quantity)` pairs that [`move_lines`] moves.
pub fn held(lines: &[PricedLine]) -> impl Iterator<Item = (&str, i64)> {
    lines
        .iter()
        .map(|l| (l.sku.as_str(), i64::from(l.quantity)))
}

/// What `inventory.cmd.reserve` does for an order inventory has not heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Hold every line, priced now at the products' prices.
    Reserve {
        lines: Vec<PricedLine>,
        total_cents: i64,
        changes: Vec<StockChange>,
    },
    /// Hold nothing; remember why.
    Fail { reason: String },
}

/// All or nothing: every line is priced and held, or, if any SKU is unknown or short, none is
/// and the reason names every line that failed (in SKU order).
pub fn decide_reservation(items: &[LineItem], products: &[Product]) -> ReserveOutcome {
    let fail = |reason: String| ReserveOutcome::Fail { reason };
    if items.is_empty() {
        return fail("no lines to reserve".to_owned());
    }
    let mut seen = HashSet::with_capacity(items.len());
    for line in items {
        if line.quantity == 0 {
            return fail(format!("{}: quantity 0", line.sku));
        }
        if !seen.insert(line.sku.as_str()) {
            return fail(format!("{} appears on more than one line", line.sku));
        }
    }

    let by_sku: BTreeMap<&str, &Product> = products.iter().map(|p| (p.sku.as_str(), p)).collect();
    let mut sorted: Vec<&LineItem> = items.iter().collect();
    sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
    let problems: Vec<String> = sorted
        .iter()
        .filter_map(|line| match by_sku.get(line.sku.as_str()) {
            None => Some(format!("unknown SKU {}", line.sku)),
            Some(product) if product.stock.available < i64::from(line.quantity) => Some(format!(
                "{}: {} requested, {} available",
                line.sku, line.quantity, product.stock.available
            )),
            Some(_) => None,
        })
        .collect();
    if !problems.is_empty() {
        return fail(problems.join("; "));
    }

    // Every SKU is known from here on; lines keep the order the customer gave.
    let lines: Vec<PricedLine> = items
        .iter()
        .filter_map(|line| {
            by_sku.get(line.sku.as_str()).map(|product| PricedLine {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price_cents: product.price_cents,
            })
        })
        .collect();
    let Some(total_cents) = lines.iter().try_fold(0_i64, |total, line| {
        i64::from(line.quantity)
            .checked_mul(line.unit_price_cents)
            .and_then(|amount| total.checked_add(amount))
    }) else {
        return fail("order total is out of range".to_owned());
    };
    match move_lines(products, held(&lines), StockMove::Reserve) {
        Ok(changes) => ReserveOutcome::Reserve {
            lines,
            total_cents,
            changes,
        },
        Err(error) => fail(error.to_string()),
    }
}

pub const RELEASED_REASON: &str = "reservation was released";

/// What a reserve command answers for an order inventory already decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveAgain {
    /// Announce the stored reservation again.
    Reserved,
    Failed(String),
}

pub fn reserve_again(status: ReservationStatus, stored_reason: Option<&str>) -> ReserveAgain {
    match status {
        ReservationStatus::Reserved | ReservationStatus::Committed => ReserveAgain::Reserved,
        ReservationStatus::Released => ReserveAgain::Failed(RELEASED_REASON.to_owned()),
        ReservationStatus::Failed => {
            ReserveAgain::Failed(stored_reason.unwrap_or("reservation failed").to_owned())
        }
    }
}

/// What `inventory.cmd.release` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// No reservation yet: leave a released tombstone so a late reserve fails.
    Tombstone,
    /// Move the held lines back from reserved to available.
    ReturnStock,
    /// Nothing was held; record that the order is released.
    MarkReleased,
    AlreadyReleased,
    /// The order was confirmed and its stock sold; undoing a sale is not a release.
    Refuse(String),
}

pub fn decide_release(status: Option<ReservationStatus>) -> ReleaseOutcome {
    match status {
        None => ReleaseOutcome::Tombstone,
        Some(ReservationStatus::Reserved) => ReleaseOutcome::ReturnStock,
        Some(ReservationStatus::Failed) => ReleaseOutcome::MarkReleased,
        Some(ReservationStatus::Released) => ReleaseOutcome::AlreadyReleased,
        Some(ReservationStatus::Committed) => {
            ReleaseOutcome::Refuse("cannot release the stock of a confirmed order".to_owned())
        }
    }
}

/// Whether `order.evt.confirmed` sells the order's held stock: only a standing reservation
/// has any; for every other state the event changes nothing.
pub fn sells_on_confirmation(status: Option<ReservationStatus>) -> bool {
    status == Some(ReservationStatus::Reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, price_cents: i64, available: i64) -> Product {
        Product {
            sku: sku.into(),
            price_cents,
            stock: Stock {
                available,
                reserved: 0,
                sold: 0,
            },
        }
    }

    fn line(sku: &str, quantity: u32) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
        }
    }

    fn stock(available: i64, reserved: i64, sold: i64) -> Stock {
        Stock {
            available,
            reserved,
            sold,
        }
    }

    #[test]
    fn given_stock_when_units_move_then_the_total_is_conserved() {
        let start = stock(10, 2, 1);
        let reserved = start.after(StockMove::Reserve, 3).unwrap();
        assert_eq!(reserved, stock(7, 5, 1));
        let released = reserved.after(StockMove::Release, 2).unwrap();
        assert_eq!(released, stock(9, 3, 1));
        let sold = released.after(StockMove::Sell, 3).unwrap();
        assert_eq!(sold, stock(9, 0, 4));
        for s in [reserved, released, sold] {
            assert_eq!(s.total(), start.total());
        }
    }

    #[test]
    fn given_too_few_units_when_moved_then_nothing_goes_negative() {
        assert_eq!(stock(2, 0, 0).after(StockMove::Reserve, 3), None);
        assert_eq!(stock(5, 1, 0).after(StockMove::Release, 2), None);
        assert_eq!(stock(5, 1, 0).after(StockMove::Sell, 2), None);
        assert_eq!(stock(5, 1, 0).after(StockMove::Reserve, -1), None);
        assert_eq!(
            stock(2, 0, 0).after(StockMove::Reserve, 2),
            Some(stock(0, 2, 0))
        );
    }

    #[test]
    fn given_enough_stock_when_reserving_then_every_line_is_priced_and_held() {
        let products = [product("SKU-1", 1250, 5), product("SKU-2", 300, 1)];
        let outcome = decide_reservation(&[line("SKU-2", 1), line("SKU-1", 2)], &products);
        let ReserveOutcome::Reserve {
            lines,
            total_cents,
            changes,
        } = outcome
        else {
            panic!("expected a reservation, got {outcome:?}");
        };
        assert_eq!(
            lines,
            vec![
                PricedLine {
                    sku: "SKU-2".into(),
                    quantity: 1,
                    unit_price_cents: 300
                },
                PricedLine {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_cents: 1250
                },
            ]
        );
        assert_eq!(total_cents, 2 * 1250 + 300);
        assert_eq!(
            changes,
            vec![
                StockChange {
                    sku: "SKU-1".into(),
                    stock: stock(3, 2, 0)
                },
                StockChange {
                    sku: "SKU-2".into(),
                    stock: stock(0, 1, 0)
                },
            ]
        );
    }

    #[test]
    fn given_one_short_line_when_reserving_then_nothing_is_held() {
        let products = [product("SKU-1", 100, 2), product("SKU-2", 100, 50)];
        let outcome = decide_reservation(&[line("SKU-2", 5), line("SKU-1", 3)], &products);
        assert_eq!(
            outcome,
            ReserveOutcome::Fail {
                reason: "SKU-1: 3 requested, 2 available".into()
            }
        );
    }

    #[test]
    fn given_an_unknown_sku_when_reserving_then_every_problem_is_named_in_sku_order() {
        let products = [product("SKU-1", 100, 2)];
        let outcome = decide_reservation(&[line("SKU-9", 1), line("SKU-1", 3)], &products);
        assert_eq!(
            outcome,
            ReserveOutcome::Fail {
                reason: "SKU-1: 3 requested, 2 available; unknown SKU SKU-9".into()
            }
        );
    }

    #[test]
    fn given_malformed_lines_when_reserving_then_refused() {
        let products = [product("SKU-1", 100, 20)];
        for items in [
            vec![],
            vec![line("SKU-1", 0)],
            vec![line("SKU-1", 10), line("SKU-1", 10)],
        ] {
            assert!(
                matches!(
                    decide_reservation(&items, &products),
                    ReserveOutcome::Fail { .. }
                ),
                "{items:?}"
            );
        }
    }

    #[test]
    fn given_a_total_beyond_range_when_reserving_then_refused() {
        let products = [product("SKU-1", i64::MAX / 2, 10)];
        assert_eq!(
            decide_reservation(&[line("SKU-1", 3)], &products),
            ReserveOutcome::Fail {
                reason: "order total is out of range".into()
            }
        );
    }

    #[test]
    fn given_held_lines_when_released_or_sold_then_the_reserved_units_move() {
        let mut products = vec![product("SKU-1", 100, 0)];
        products[0].stock = stock(1, 4, 0);
        let lines = [PricedLine {
            sku: "SKU-1".into(),
            quantity: 3,
            unit_price_cents: 100,
        }];
        assert_eq!(
            move_lines(&products, held(&lines), StockMove::Release).unwrap()[0].stock,
            stock(4, 1, 0)
        );
        assert_eq!(
            move_lines(&products, held(&lines), StockMove::Sell).unwrap()[0].stock,
            stock(1, 1, 3)
        );
        assert!(matches!(
            move_lines(&[], held(&lines), StockMove::Sell),
            Err(MoveError::UnknownSku(_))
        ));
    }

    #[test]
    fn given_an_existing_reservation_when_reserved_again_then_answered_as_stored() {
        assert_eq!(
            reserve_again(ReservationStatus::Reserved, None),
            ReserveAgain::Reserved
        );
        assert_eq!(
            reserve_again(ReservationStatus::Committed, None),
            ReserveAgain::Reserved
        );
        assert_eq!(
            reserve_again(ReservationStatus::Released, None),
            ReserveAgain::Failed(RELEASED_REASON.into())
        );
        assert_eq!(
            reserve_again(ReservationStatus::Failed, Some("unknown SKU SKU-9")),
            ReserveAgain::Failed("unknown SKU SKU-9".into())
        );
    }

    #[test]
    fn given_each_state_when_released_then_only_held_stock_moves_back() {
        assert_eq!(decide_release(None), ReleaseOutcome::Tombstone);
        assert_eq!(
            decide_release(Some(ReservationStatus::Reserved)),
            ReleaseOutcome::ReturnStock
        );
        assert_eq!(
            decide_release(Some(ReservationStatus::Failed)),
            ReleaseOutcome::MarkReleased
        );
        assert_eq!(
            decide_release(Some(ReservationStatus::Released)),
            ReleaseOutcome::AlreadyReleased
        );
        assert!(matches!(
            decide_release(Some(ReservationStatus::Committed)),
            ReleaseOutcome::Refuse(_)
        ));
    }

    #[test]
    fn given_each_state_when_the_order_is_confirmed_then_only_a_standing_reservation_sells() {
        assert!(sells_on_confirmation(Some(ReservationStatus::Reserved)));
        for status in [
            None,
            Some(ReservationStatus::Released),
            Some(ReservationStatus::Failed),
            Some(ReservationStatus::Committed),
        ] {
            assert!(!sells_on_confirmation(status), "{status:?}");
        }
    }
}
