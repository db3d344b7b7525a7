//! The checkout saga end to end, without a broker: `sagas/checkout.toml` run by the real
//! orchestrator engine, and every message delivered through the real `store::Transactional` of
//! its consumer (the orchestrator's and each participant's, committing in groups as `warren run`
//! does) by the bindings the broker has, for many orders at once. Delivery misbehaves: messages
//! are redelivered under the same id and commands re-sent under new ones, and some commands are
//! lost until their step times out (the engine's sweep) or an operator cancels the saga, then
//! arrive after the compensation, where they must change nothing. Stock and money must be
//! conserved, and every saga must end completed or compensated, as its participants' rows say.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bus::Topology;
use contracts::messages::{
    AccountSetBalance, InventoryReservationFailed, LineItem, PaymentDeclined, ProductUpsert,
    SagaStart,
};
use contracts::{Component, Envelope};
use inventory::queries::{ReservationView, get_reservation, stock_totals};
use inventory::{InventoryHandler, domain::ReservationStatus};
use orchestrator::{Clock, Engine, repo};
use order::queries::{OrderView, get_order};
use order::{OrderHandler, domain::OrderStatus};
use payment::queries::{ChargeView, charges_for, money_totals};
use payment::{PaymentHandler, domain::ChargeStatus};
use saga::Definition;
use saga::machine::{Input, Saga, SagaStatus, StepStatus};
use serde_json::{Value, json};
use sqlx::PgPool;
use store::Transactional;
use testkit::participant::{Rng, Service, apply, only, relay, send};
use uuid::Uuid;

const ORDERS: u64 = 200;
const SKUS: [(&str, i64, i64); 3] = [
    ("SKU-1", 250, 150),
    ("SKU-2", 400, 150),
    ("SKU-3", 1000, 150),
];
const CUSTOMERS: [&str; 5] = ["c-1", "c-2", "c-3", "c-4", "c-5"];
const BALANCE: i64 = 30_000;

/// Deliveries committed in one transaction, and the orchestrator's group transactions at once,
/// as `warren run` has them.
const GROUP_COMMIT: usize = 64;
const ORCHESTRATOR_GROUPS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Consumer {
    Orders,
    Inventory,
    Payments,
    Orchestrator,
}

/// The components under test, as each declares its queues and their bindings, and the consumer
/// those queues lead to here.
const COMPONENTS: [(Component, Consumer); 4] = [
    (orchestrator::COMPONENT, Consumer::Orchestrator),
    (order::COMPONENT, Consumer::Orders),
    (inventory::COMPONENT, Consumer::Inventory),
    (payment::COMPONENT, Consumer::Payments),
];

/// How one saga's commands go astray.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Trouble {
    Nothing,
    /// The first reserve is lost until its step times out and the engine sends it again; it
    /// arrives once the saga has ended.
    ReserveRetried,
    /// Both reserves are lost, and an operator cancels the saga: the release and the cancel
    /// overtake them.
    ReserveCancelled,
    /// The charge (the pivot, one attempt) is lost until its step times out: the refund, the
    /// release and the cancel overtake it.
    ChargeTimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Rejected,
    Compensated,
    Confirmed,
}

/// The orchestrator and the participants, each behind its inbox and outbox. Cheap to clone.
#[derive(Debug, Clone)]
struct Warren {
    pool: PgPool,
    engine: Engine,
    /// The broker layout `warren run` derives from the components.
    topology: Arc<Topology>,
    orchestrator: Service<Engine>,
    /// The orchestrator on a machine whose clock runs an hour behind: a step it starts is
    /// overdue at once, so the sweep times it out without a wait.
    overdue: Service<Engine>,
    orders: Service<OrderHandler>,
    inventory: Service<InventoryHandler>,
    payments: Service<PaymentHandler>,
}

impl Warren {
    fn new(pool: &PgPool) -> Self {
        let checkout = include_str!("../../../sagas/checkout.toml");
        let engine = Engine::new(pool.clone(), vec![Definition::from_toml(checkout).unwrap()]);
        let overdue = engine
            .clone()
            .with_clock(Arc::new(Clock::skewed(chrono::Duration::hours(-1))));
        let orchestrator = |engine: Engine| {
            let handler = Transactional::new(
                pool.clone(),
                orchestrator::SCHEMA,
                orchestrator::PRODUCER,
                engine,
            )
            .with_group_commit(GROUP_COMMIT, ORCHESTRATOR_GROUPS);
            Service::new(pool, orchestrator::SCHEMA, handler)
        };
        Self {
            pool: pool.clone(),
            topology: Arc::new(
                Topology::of_components(COMPONENTS.iter().map(|(component, _)| component))
                    .with_saga_replies(engine.reply_types()),
            ),
            orchestrator: orchestrator(engine.clone()),
            overdue: orchestrator(overdue),
            engine,
            orders: Service::new(
                pool,
                order::SCHEMA,
                order::handler(pool.clone()).with_group_commit(GROUP_COMMIT, 1),
            ),
            inventory: Service::new(
                pool,
                inventory::SCHEMA,
                inventory::handler(pool.clone()).with_group_commit(GROUP_COMMIT, 1),
            ),
            payments: Service::new(
                pool,
                payment::SCHEMA,
                payment::handler(pool.clone(), None).with_group_commit(GROUP_COMMIT, 1),
            ),
        }
    }

    /// The consumers whose queues `message_type` reaches (inventory hears that an order was
    /// confirmed, to sell the stock it holds for it).
    fn consumers(&self, message_type: &str) -> Vec<Consumer> {
        self.topology
            .routes(message_type)
            .into_iter()
            .map(|queue| {
                let (_, consumer) = COMPONENTS
                    .iter()
                    .find(|(component, _)| component.consumes.iter().any(|q| q.name == queue))
                    .expect("every queue of the topology is a component's");
                *consumer
            })
            .collect()
    }

    /// Delivers `message` to `consumer` and returns what it caused; the bus parking it fails
    /// the test. `overdue` takes a reply to the orchestrator whose clock runs behind.
    async fn deliver(
        &self,
        consumer: Consumer,
        message: &Envelope,
        overdue: bool,
    ) -> Vec<Envelope> {
        let caused = match consumer {
            Consumer::Orders => apply(&self.orders, message).await,
            Consumer::Inventory => apply(&self.inventory, message).await,
            Consumer::Payments => apply(&self.payments, message).await,
            Consumer::Orchestrator if overdue => apply(&self.overdue, message).await,
            Consumer::Orchestrator => apply(&self.orchestrator, message).await,
        };
        caused.unwrap_or_else(|e| panic!("{consumer:?} parked {message:?}: {e}"))
    }

    /// What the saga and its order look like in every table that holds them.
    async fn rows(&self, saga_id: Uuid, order_id: Uuid) -> Rows {
        Rows {
            saga: repo::get(&self.pool, saga_id).await.unwrap().unwrap(),
            order: get_order(&self.pool, order_id).await.unwrap(),
            reservation: get_reservation(&self.pool, order_id).await.unwrap(),
            charges: charges_for(&self.pool, order_id).await.unwrap(),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Rows {
    saga: Saga,
    order: Option<OrderView>,
    reservation: Option<ReservationView>,
    charges: Vec<ChargeView>,
}

/// One checkout on its way through Warren.
struct Checkout {
    warren: Warren,
    rng: Rng,
    saga_id: Uuid,
    order_id: Uuid,
    trouble: Trouble,
    /// Messages published and not delivered yet, in order.
    transit: VecDeque<Envelope>,
    /// Commands lost on the way, with where they were going.
    lost: Vec<(Consumer, Envelope)>,
    /// Once the saga has ended, nothing is lost any more.
    ended: bool,
}

impl Checkout {
    /// Delivers everything the saga sends until it ends, unsticking it when it waits for a
    /// lost command.
    async fn run(&mut self) {
        loop {
            while let Some(message) = self.transit.pop_front() {
                self.route(message).await;
            }
            let saga = repo::get(&self.warren.pool, self.saga_id)
                .await
                .unwrap()
                .unwrap();
            if matches!(saga.status, SagaStatus::Completed | SagaStatus::Compensated) {
                return;
            }
            assert!(
                !saga.status.is_terminal(),
                "saga {} ended {:?}: {:?}",
                self.saga_id,
                saga.status,
                saga.error
            );
            self.unstick().await;
        }
    }

    /// Delivers `message` to every consumer it reaches, unless it is lost. A consumer sometimes
    /// gets a delivery twice (its inbox must absorb it), and a participant the same message
    /// again under a new message id (it must answer alike).
    async fn route(&mut self, message: Envelope) {
        for consumer in self.warren.consumers(&message.message_type) {
            if self.loses(&message) {
                self.lost.push((consumer, message.clone()));
                continue;
            }
            let overdue = consumer == Consumer::Orchestrator && self.starts_trouble(&message);
            let caused = self.warren.deliver(consumer, &message, overdue).await;
            if self.rng.chance(10) {
                let again = self.warren.deliver(consumer, &message, overdue).await;
                assert!(
                    again.is_empty(),
                    "a redelivered {} caused {again:?}",
                    message.message_type
                );
            }
            self.transit.extend(caused.iter().cloned());
            if consumer != Consumer::Orchestrator && self.rng.chance(25) {
                let resent = Envelope {
                    message_id: Uuid::now_v7(),
                    ..message.clone()
                };
                let again = self.warren.deliver(consumer, &resent, false).await;
                assert_eq!(
                    payloads(&caused),
                    payloads(&again),
                    "a re-sent {} is answered alike",
                    message.message_type
                );
                self.transit.extend(again);
            }
        }
    }

    fn loses(&self, message: &Envelope) -> bool {
        if self.ended {
            return false;
        }
        match (self.trouble, message.message_type.as_str()) {
            (Trouble::ReserveRetried, "inventory.cmd.reserve") => self.lost.is_empty(),
            (Trouble::ReserveCancelled, "inventory.cmd.reserve") => true,
            (Trouble::ChargeTimedOut, "payment.cmd.charge") => true,
            _ => false,
        }
    }

    /// Whether `reply` starts the step whose command this saga loses.
    fn starts_trouble(&self, reply: &Envelope) -> bool {
        let starts = match self.trouble {
            Trouble::Nothing => return false,
            Trouble::ReserveRetried | Trouble::ReserveCancelled => "order.evt.created",
            Trouble::ChargeTimedOut => "inventory.evt.reserved",
        };
        reply.message_type == starts
    }

    /// The saga waits for a lost command: time its step out (a sweep, which may be another
    /// saga's to run first) or, once the reserve is lost twice, have an operator cancel it.
    async fn unstick(&mut self) {
        assert!(
            !self.lost.is_empty(),
            "saga {} waits for nothing that was lost",
            self.saga_id
        );
        let cancel = self.trouble == Trouble::ReserveCancelled && self.lost.len() == 2;
        for _ in 0..500 {
            if cancel {
                let reason = "the reserve never answered".to_owned();
                let (_, changed) = self
                    .warren
                    .engine
                    .operate(self.saga_id, Input::Cancel { reason })
                    .await
                    .unwrap();
                assert!(changed, "saga {}: the cancel was ignored", self.saga_id);
            } else {
                self.warren.engine.sweep(ORDERS as i64).await.unwrap();
            }
            let sent = relay(&self.warren.orchestrator, self.saga_id).await;
            if !sent.is_empty() {
                self.transit.extend(sent);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "saga {}: the lost command's step never timed out",
            self.saga_id
        );
    }

    /// Delivers the lost commands after the saga has ended, and their replies to the
    /// orchestrator: neither the participants' rows nor the saga may change, and the
    /// orchestrator sends nothing.
    async fn deliver_late(&mut self) {
        self.ended = true;
        let before = self.warren.rows(self.saga_id, self.order_id).await;
        for (consumer, command) in std::mem::take(&mut self.lost) {
            let replies = self.warren.deliver(consumer, &command, false).await;
            match self.trouble {
                Trouble::ReserveCancelled => {
                    let _: InventoryReservationFailed = only(&replies);
                }
                Trouble::ChargeTimedOut => {
                    let _: PaymentDeclined = only(&replies);
                }
                Trouble::ReserveRetried | Trouble::Nothing => {}
            }
            for reply in replies {
                for consumer in self.warren.consumers(&reply.message_type) {
                    let sent = self.warren.deliver(consumer, &reply, false).await;
                    assert!(
                        sent.is_empty(),
                        "the late {} made {consumer:?} send {sent:?}",
                        command.message_type
                    );
                }
            }
        }
        let after = self.warren.rows(self.saga_id, self.order_id).await;
        assert_eq!(after, before, "late commands changed saga {}", self.saga_id);
    }
}

fn payloads(messages: &[Envelope]) -> Vec<&Value> {
    messages.iter().map(|m| &m.payload).collect()
}

/// What one checkout was, and which trouble it met (`Trouble::Nothing` if its lost command's
/// step was never reached).
struct Ended {
    saga_id: Uuid,
    order_id: Uuid,
    items: Vec<LineItem>,
    trouble: Trouble,
}

async fn checkout(warren: Warren, n: u64) -> Ended {
    let mut rng = Rng::new(1000 + n);
    let saga_id = Uuid::now_v7();
    let order_id = Uuid::now_v7();
    let customer_id = CUSTOMERS[rng.below(CUSTOMERS.len() as u64) as usize];
    let mut items = Vec::new();
    for (sku, _, _) in SKUS {
        if rng.chance(60) {
            items.push(LineItem {
                sku: sku.into(),
                quantity: 1 + rng.below(4) as u32,
            });
        }
    }
    if items.is_empty() {
        items.push(LineItem {
            sku: SKUS[0].0.into(),
            quantity: 1,
        });
    }
    if rng.chance(8) {
        // Sometimes an order the order service must refuse: one SKU on two lines.
        items.extend(items.first().cloned());
    }
    let trouble = match rng.below(100) {
        0..8 => Trouble::ReserveRetried,
        8..16 => Trouble::ReserveCancelled,
        16..26 => Trouble::ChargeTimedOut,
        _ => Trouble::Nothing,
    };
    let Value::Object(input) = json!({
        "order_id": order_id,
        "customer_id": customer_id,
        "items": items,
    }) else {
        unreachable!("a JSON object literal")
    };
    let start = SagaStart {
        saga_id,
        saga: "checkout".into(),
        input,
        request_hash: None,
    };
    let mut flight = Checkout {
        warren,
        rng,
        saga_id,
        order_id,
        trouble,
        // As the gateway sends it.
        transit: VecDeque::from([Envelope::new("gateway", &start).with_correlation(saga_id)]),
        lost: Vec::new(),
        ended: false,
    };
    flight.run().await;
    let met = !flight.lost.is_empty();
    flight.deliver_late().await;
    Ended {
        saga_id,
        order_id,
        items,
        trouble: if met { trouble } else { Trouble::Nothing },
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_checkouts_conserve_stock_and_money(pool: PgPool) {
    let warren = Warren::new(&pool);
    for (sku, price_cents, available) in SKUS {
        let upsert = ProductUpsert {
            sku: sku.into(),
            name: format!("Product {sku}"),
            price_cents,
            available,
        };
        apply(&warren.inventory, &send(&upsert)).await.unwrap();
    }
    for customer_id in CUSTOMERS {
        let set = AccountSetBalance {
            customer_id: customer_id.into(),
            balance_cents: BALANCE,
        };
        apply(&warren.payments, &send(&set)).await.unwrap();
    }

    let tasks: Vec<_> = (0..ORDERS)
        .map(|n| tokio::spawn(checkout(warren.clone(), n)))
        .collect();
    let mut checkouts = Vec::new();
    for task in tasks {
        checkouts.push(task.await.unwrap());
    }

    let mut counts: HashMap<Outcome, usize> = HashMap::new();
    let mut troubles: HashMap<Trouble, usize> = HashMap::new();
    let mut sold_units: HashMap<String, i64> = HashMap::new();
    for ended in &checkouts {
        let Rows {
            saga,
            order,
            reservation,
            charges,
        } = warren.rows(ended.saga_id, ended.order_id).await;
        let outcome = match saga.status {
            SagaStatus::Completed => Outcome::Confirmed,
            SagaStatus::Compensated if saga.steps[0].status == StepStatus::Failed => {
                Outcome::Rejected
            }
            SagaStatus::Compensated => Outcome::Compensated,
            other => panic!("saga {} is {other:?}: {:?}", ended.saga_id, saga.error),
        };
        *counts.entry(outcome).or_default() += 1;
        *troubles.entry(ended.trouble).or_default() += 1;
        let skus: HashSet<&str> = ended.items.iter().map(|l| l.sku.as_str()).collect();
        assert_eq!(
            outcome == Outcome::Rejected,
            skus.len() < ended.items.len(),
            "saga {}: only an order that repeats a SKU is rejected",
            ended.saga_id
        );
        if matches!(
            ended.trouble,
            Trouble::ReserveCancelled | Trouble::ChargeTimedOut
        ) {
            assert_eq!(outcome, Outcome::Compensated, "saga {}", ended.saga_id);
        }
        let standing: Vec<_> = charges
            .iter()
            .filter(|c| c.status == ChargeStatus::Charged)
            .collect();
        match outcome {
            Outcome::Rejected => {
                assert_eq!(order, None);
                assert_eq!(reservation, None);
                assert!(charges.is_empty());
            }
            Outcome::Compensated => {
                assert_eq!(
                    order.map(|o| o.status),
                    Some(OrderStatus::Cancelled),
                    "saga {}",
                    ended.saga_id
                );
                let status = reservation.map(|r| r.status);
                assert!(
                    matches!(
                        status,
                        Some(ReservationStatus::Released | ReservationStatus::Failed)
                    ),
                    "no stock stays held: {status:?}"
                );
                assert!(
                    standing.is_empty(),
                    "a compensated order has no charge left"
                );
            }
            Outcome::Confirmed => {
                let order = order.unwrap();
                let reservation = reservation.unwrap();
                assert_eq!(order.status, OrderStatus::Confirmed);
                assert_eq!(reservation.status, ReservationStatus::Committed);
                assert_eq!(
                    standing.len(),
                    1,
                    "a confirmed order has exactly one charge"
                );
                assert_eq!(order.total_cents, Some(reservation.total_cents));
                assert_eq!(standing[0].amount_cents, reservation.total_cents);
                for line in &ended.items {
                    *sold_units.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
                }
            }
        }
    }
    println!("{} orders: {counts:?}, {troubles:?}", checkouts.len());
    for outcome in [Outcome::Rejected, Outcome::Compensated, Outcome::Confirmed] {
        assert!(counts.get(&outcome).copied().unwrap_or(0) > 0, "{counts:?}");
    }
    for trouble in [
        Trouble::ReserveRetried,
        Trouble::ReserveCancelled,
        Trouble::ChargeTimedOut,
    ] {
        assert!(
            troubles.get(&trouble).copied().unwrap_or(0) > 0,
            "{troubles:?}"
        );
    }
    // Everything any component sent was delivered.
    for schema in ["orders", "inventory", "payments", "sagas"] {
        let unpublished: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(unpublished, 0, "{schema}");
    }

    // Stock: initial available = available + reserved + sold, nothing held once every saga
    // has finished, nothing negative, and sold is exactly what confirmed orders bought.
    for (sku, _, initial) in SKUS {
        let (available, reserved, sold): (i64, i64, i64) = sqlx::query_as(
            "SELECT available, reserved, sold FROM inventory.products WHERE sku = $1",
        )
        .bind(sku)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(available + reserved + sold, initial, "{sku}");
        assert_eq!(reserved, 0, "{sku}");
        assert_eq!(sold, sold_units.get(sku).copied().unwrap_or(0), "{sku}");
    }
    let stock = stock_totals(&pool).await.unwrap();
    assert_eq!(
        stock.available + stock.reserved + stock.sold,
        SKUS.iter().map(|(_, _, a)| a).sum::<i64>()
    );

    // Money: initial balance = balance + standing charges, per customer and in total.
    let money = money_totals(&pool).await.unwrap();
    assert_eq!(
        money.balance_cents + money.charged_cents,
        BALANCE * CUSTOMERS.len() as i64,
        "{money:?}"
    );
    let per_customer: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.customer_id, a.balance_cents, \
                COALESCE(SUM(c.amount_cents) FILTER (WHERE c.status = 'charged'), 0)::bigint \
         FROM payments.accounts a LEFT JOIN payments.charges c USING (customer_id) \
         GROUP BY a.customer_id, a.balance_cents",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_customer.len(), CUSTOMERS.len());
    for (customer_id, balance, standing) in per_customer {
        assert_eq!(balance + standing, BALANCE, "{customer_id}");
    }
}
