//! The invariants of ARCHITECTURE.md, read off the system's tables and parking queues: what
//! `warren chaos verify` reports after a failure rehearsal, and what the chaos tests assert.
//!
//! Each check holds or lists up to [`EXAMPLES`] of what breaks it. Cross-checks between
//! services only hold once the system has settled (sagas terminal, outboxes drained, events
//! consumed), so [`settle`] re-reads until every check holds or the patience runs out.

use std::collections::BTreeMap;
use std::time::Duration;

use bus::Bus;
use contracts::routing;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use saga::machine::{Failure, Saga};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;

/// How many offending rows a failed check lists.
const EXAMPLES: i64 = 5;

/// One invariant and whether it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub holds: bool,
    /// What was found, in a line.
    pub detail: String,
    /// Some of the rows or queues that break it.
    pub examples: Vec<String>,
}

/// Figures for the report: how the run went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub sagas: i64,
    pub completed: i64,
    pub compensated: i64,
    pub failed: i64,
    pub open: i64,
    pub outbox_backlog: i64,
    pub parked: u64,
    /// Duplicate deliveries the inboxes absorbed (each took effect once).
    pub duplicates_absorbed: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub holds: bool,
    pub checks: Vec<Check>,
    pub figures: Figures,
}

/// Reads every invariant once.
pub async fn verify(pool: &PgPool, bus: Option<&Bus>) -> anyhow::Result<Report> {
    let mut figures = Figures::default();
    let mut checks = vec![
        sagas_terminal(pool, &mut figures).await?,
        no_saga_failed(pool).await?,
        stock_conserved(pool).await?,
        reservations_match_stock(pool).await?,
        money_conserved(pool).await?,
        confirmed_orders_charged_once(pool).await?,
        cancelled_orders_keep_nothing(pool).await?,
        sagas_agree_with_orders(pool).await?,
        outboxes_drained(pool, &mut figures).await?,
    ];
    checks.push(match bus {
        Some(bus) => nothing_parked(bus, &mut figures).await?,
        None => Check {
            name: "nothing parked",
            holds: false,
            detail: "the broker was not asked".into(),
            examples: Vec::new(),
        },
    });
    figures.duplicates_absorbed = duplicates_absorbed(pool).await?;
    Ok(Report {
        holds: checks.iter().all(|c| c.holds),
        checks,
        figures,
    })
}

/// Re-reads the invariants until they all hold or `patience` has passed; returns the last
/// report.
pub async fn settle(
    pool: &PgPool,
    bus: Option<&Bus>,
    patience: Duration,
) -> anyhow::Result<Report> {
    let deadline = Instant::now() + patience;
    loop {
        let report = verify(pool, bus).await?;
        if report.holds || Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a query whose rows each describe one violation as text.
async fn violations(pool: &PgPool, sql: &str) -> anyhow::Result<(i64, Vec<String>)> {
    let counted = format!("SELECT count(*) OVER (), v FROM ({sql}) AS found(v) LIMIT {EXAMPLES}");
    let rows: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(counted))
        .fetch_all(pool)
        .await?;
    let total = rows.first().map_or(0, |(n, _)| *n);
    Ok((total, rows.into_iter().map(|(_, v)| v).collect()))
}

async fn rule(pool: &PgPool, name: &'static str, what: &str, sql: &str) -> anyhow::Result<Check> {
    let (count, examples) = violations(pool, sql).await?;
    Ok(Check {
        name,
        holds: count == 0,
        detail: if count == 0 {
            "holds".into()
        } else {
            format!("{count} {what}")
        },
        examples,
    })
}

async fn sagas_terminal(pool: &PgPool, figures: &mut Figures) -> anyhow::Result<Check> {
    let (sagas, completed, compensated, failed, open): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), \
                count(*) FILTER (WHERE status = 'completed'), \
                count(*) FILTER (WHERE status = 'compensated'), \
                count(*) FILTER (WHERE status = 'failed'), \
                count(*) FILTER (WHERE status IN ('running', 'compensating')) \
         FROM sagas.sagas",
    )
    .fetch_one(pool)
    .await?;
    *figures = Figures {
        sagas,
        completed,
        compensated,
        failed,
        open,
        ..Figures::default()
    };
    let examples: Vec<String> = sqlx::query_scalar(
        "SELECT saga_id::text || ' ' || status || ' at ' || coalesce(current_step, '-') \
         FROM sagas.sagas WHERE status IN ('running', 'compensating') \
         ORDER BY created_at LIMIT $1",
    )
    .bind(EXAMPLES)
    .fetch_all(pool)
    .await?;
    Ok(Check {
        name: "every saga terminal",
        holds: open == 0,
        detail: format!(
            "{sagas} sagas: {completed} completed, {compensated} compensated, {failed} failed, {open} open"
        ),
        examples,
    })
}

/// Failed sagas wait for an operator; the detail counts them by why they failed (a compensation
/// that ran out of attempts is not the same problem as a halted saga or a missing field).
async fn no_saga_failed(pool: &PgPool) -> anyhow::Result<Check> {
    const NAME: &str = "no saga waiting for an operator";
    let failed: Vec<Json<Saga>> = sqlx::query_scalar(
        "SELECT state FROM sagas.sagas WHERE status = 'failed' ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?;
    if failed.is_empty() {
        return Ok(Check {
            name: NAME,
            holds: true,
            detail: "holds".into(),
            examples: Vec::new(),
        });
    }
    let mut kinds: BTreeMap<Failure, usize> = BTreeMap::new();
    for Json(saga) in &failed {
        if let Some(kind) = Failure::of(saga) {
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let why: Vec<String> = kinds
        .iter()
        .map(|(kind, n)| format!("{n} {}", kind.describe()))
        .collect();
    let examples = failed
        .iter()
        .take(EXAMPLES as usize)
        .map(|Json(saga)| {
            format!(
                "saga {} ({}) at {}: {}",
                saga.id,
                saga.definition,
                saga.current_step().map_or("-", |step| step.name.as_str()),
                saga.error.as_deref().unwrap_or_default()
            )
        })
        .collect();
    Ok(Check {
        name: NAME,
        holds: false,
        detail: format!(
            "{} failed sagas: {} (see `warren saga show`, then `warren saga retry`)",
            failed.len(),
            why.join(", ")
        ),
        examples,
    })
}

async fn stock_conserved(pool: &PgPool) -> anyhow::Result<Check> {
    rule(
        pool,
        "stock conserved",
        "products where stock set != available + reserved + sold",
        "SELECT format('%s: set %s, available %s + reserved %s + sold %s', \
                       sku, stocked, available, reserved, sold) \
         FROM inventory.products WHERE stocked <> available + reserved + sold",
    )
    .await
}

async fn reservations_match_stock(pool: &PgPool) -> anyhow::Result<Check> {
    rule(
        pool,
        "reservations match stock",
        "products whose reserved or sold units differ from their reservations",
        "WITH held AS ( \
             SELECT l->>'sku' AS sku, \
                    sum((l->>'quantity')::bigint) FILTER (WHERE r.status = 'reserved') AS reserved, \
                    sum((l->>'quantity')::bigint) FILTER (WHERE r.status = 'committed') AS sold \
             FROM inventory.reservations r, jsonb_array_elements(r.lines) l \
             WHERE r.status IN ('reserved', 'committed') GROUP BY 1) \
         SELECT format('%s: reserved %s (reservations hold %s), sold %s (reservations sold %s)', \
                       p.sku, p.reserved, coalesce(h.reserved, 0), p.sold, coalesce(h.sold, 0)) \
         FROM inventory.products p LEFT JOIN held h ON h.sku = p.sku \
         WHERE p.reserved <> coalesce(h.reserved, 0) OR p.sold <> coalesce(h.sold, 0)",
    )
    .await
}

async fn money_conserved(pool: &PgPool) -> anyhow::Result<Check> {
    rule(
        pool,
        "money conserved",
        "accounts where funds set != balance + standing charges",
        "SELECT format('%s: set %s, balance %s + charged %s', \
                       a.customer_id, a.funded_cents, a.balance_cents, coalesce(c.charged, 0)) \
         FROM payments.accounts a LEFT JOIN ( \
             SELECT customer_id, sum(amount_cents) AS charged FROM payments.charges \
             WHERE status = 'charged' GROUP BY customer_id) c USING (customer_id) \
         WHERE a.funded_cents <> a.balance_cents + coalesce(c.charged, 0)",
    )
    .await
}

async fn confirmed_orders_charged_once(pool: &PgPool) -> anyhow::Result<Check> {
    rule(
        pool,
        "confirmed orders charged once, stock sold",
        "confirmed orders without exactly one standing charge of their total and sold stock",
        "SELECT format('order %s: charge %s of %s for a total of %s, reservation %s', \
                       o.order_id, coalesce(c.status, 'none'), c.amount_cents, o.total_cents, \
                       coalesce(r.status, 'none')) \
         FROM orders.orders o \
         LEFT JOIN payments.charges c USING (order_id) \
         LEFT JOIN inventory.reservations r USING (order_id) \
         WHERE o.status = 'confirmed' AND (c.status IS DISTINCT FROM 'charged' \
            OR c.amount_cents <> o.total_cents OR r.status IS DISTINCT FROM 'committed')",
    )
    .await
}

async fn cancelled_orders_keep_nothing(pool: &PgPool) -> anyhow::Result<Check> {
    rule(
        pool,
        "nothing held for orders not confirmed",
        "charges or reservations standing for orders that are not confirmed (failed sagas \
         aside: they wait for an operator)",
        "SELECT format('order %s (%s): charge %s, reservation %s', order_id, \
                       coalesce(o.status, 'unknown'), coalesce(c.status, 'none'), \
                       coalesce(r.status, 'none')) \
         FROM payments.charges c \
         FULL JOIN inventory.reservations r USING (order_id) \
         LEFT JOIN orders.orders o USING (order_id) \
         WHERE o.status IS DISTINCT FROM 'confirmed' \
           AND (c.status = 'charged' OR r.status IN ('reserved', 'committed')) \
           AND NOT EXISTS (SELECT 1 FROM sagas.sagas s \
                           WHERE s.status IN ('running', 'compensating', 'failed') \
                             AND s.state->'context'->>'order_id' = order_id::text)",
    )
    .await
}

async fn sagas_agree_with_orders(pool: &PgPool) -> anyhow::Result<Check> {
    rule(
        pool,
        "sagas agree with orders",
        "checkouts whose order does not match how the saga ended",
        "SELECT format('saga %s %s, order %s %s', s.saga_id, s.status, \
                       s.state->'context'->>'order_id', coalesce(o.status, 'none')) \
         FROM sagas.sagas s \
         LEFT JOIN orders.orders o \
                ON o.order_id = (s.state->'context'->>'order_id')::uuid \
         WHERE s.definition = 'checkout' AND ( \
             (s.status = 'completed' AND o.status IS DISTINCT FROM 'confirmed') \
          OR (s.status = 'compensated' AND o.status = ANY (ARRAY['pending', 'confirmed'])))",
    )
    .await
}

async fn outboxes_drained(pool: &PgPool, figures: &mut Figures) -> anyhow::Result<Check> {
    let mut backlog = 0;
    let mut examples = Vec::new();
    for schema in components::all().iter().filter_map(|c| c.schema) {
        let (waiting, oldest): (i64, Option<f64>) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
             FROM {schema}.outbox WHERE published_at IS NULL"
        )))
        .fetch_one(pool)
        .await?;
        if waiting > 0 {
            backlog += waiting;
            examples.push(format!(
                "{schema}: {waiting} unpublished, oldest {:.1}s",
                oldest.unwrap_or(0.0)
            ));
        }
    }
    figures.outbox_backlog = backlog;
    Ok(Check {
        name: "outboxes drained",
        holds: backlog == 0,
        detail: format!("{backlog} messages waiting to be published"),
        examples,
    })
}

async fn duplicates_absorbed(pool: &PgPool) -> anyhow::Result<i64> {
    let mut total = 0;
    for schema in components::all().iter().filter_map(|c| c.schema) {
        let absorbed: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(sum(duplicates), 0)::bigint FROM {schema}.inbox"
        )))
        .fetch_one(pool)
        .await?;
        total += absorbed;
    }
    Ok(total)
}

async fn nothing_parked(bus: &Bus, figures: &mut Figures) -> anyhow::Result<Check> {
    let channel = bus.channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut parked = 0;
    let mut examples = Vec::new();
    for consumer in components::standard_topology().consumers {
        let queue = routing::parking_queue(&consumer.name);
        let declared = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await?;
        let count = declared.message_count();
        if count > 0 {
            parked += u64::from(count);
            examples.push(format!("{queue}: {count}"));
        }
    }
    let _ = channel.close(200, "verified".into()).await;
    figures.parked = parked;
    Ok(Check {
        name: "nothing parked",
        holds: parked == 0,
        detail: format!("{parked} messages in parking queues (see `warren dlq list`)"),
        examples,
    })
}
