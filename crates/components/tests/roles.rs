//! Least privilege in the database (migration 0010): each component's role uses its own schema
//! and is refused everywhere else, with SQLSTATE 42501 (insufficient privilege). The roles and
//! schemas are those the components declare (`components::all()`).
//!
//! The roles cannot log in (a deployment gives them passwords), so the tests connect as the
//! test database's owner and take the role at connection start (`-c role=...`), which is what
//! `SET ROLE` does: every statement is then checked against the role's privileges alone.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use bus::Handler;
use contracts::messages::{LineItem, OrderCreate};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::participant::send;
use uuid::Uuid;

/// SQLSTATE `insufficient_privilege`.
const PERMISSION_DENIED: &str = "42501";

/// Each component with a schema: (its database role, its schema).
fn schemas() -> Vec<(&'static str, &'static str)> {
    let schemas: Vec<_> = components::all()
        .into_iter()
        .filter_map(|c| Some((c.db_role, c.schema?)))
        .collect();
    assert!(!schemas.is_empty(), "no component declares a schema");
    schemas
}

/// The roles of the components without a schema of their own (the gateway's).
fn schemaless_roles() -> Vec<&'static str> {
    components::all()
        .into_iter()
        .filter(|c| c.schema.is_none())
        .map(|c| c.db_role)
        .collect()
}

/// A pool on the same database whose every connection acts as `role`.
async fn as_role(pool: &PgPool, role: &str) -> PgPool {
    let options = (*pool.connect_options()).clone().options([("role", role)]);
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap()
}

/// Runs one statement; `Err` holds its SQLSTATE.
async fn run(pool: &PgPool, sql: &str) -> Result<(), String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|error| {
            error
                .as_database_error()
                .and_then(|e| e.code())
                .map_or_else(|| error.to_string(), |code| code.into_owned())
        })
}

async fn refused(pool: &PgPool, sql: &str) {
    assert_eq!(
        run(pool, sql).await,
        Err(PERMISSION_DENIED.to_owned()),
        "{sql}"
    );
}

async fn allowed(pool: &PgPool, sql: &str) {
    assert_eq!(run(pool, sql).await, Ok(()), "{sql}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_order_services_role_cannot_write_payment_accounts(pool: PgPool) {
    let orders = as_role(&pool, order::COMPONENT.db_role).await;
    // What the order service does, as its role: inbox row, order row and outbox row in one
    // transaction, through the same code the consumer runs.
    let order_id = Uuid::now_v7();
    let create = send(&OrderCreate {
        order_id,
        customer_id: "c-1".into(),
        items: vec![LineItem {
            sku: "SKU-1".into(),
            quantity: 1,
        }],
    });
    order::handler(orders.clone()).handle(create).await.unwrap();
    let (orders_made, messages): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders.orders), (SELECT count(*) FROM orders.outbox)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((orders_made, messages), (1, 1));

    refused(
        &orders,
        "INSERT INTO payments.accounts (customer_id, balance_cents, funded_cents) \
         VALUES ('c-1', 1000000, 1000000)",
    )
    .await;
    refused(&orders, "UPDATE payments.accounts SET balance_cents = 0").await;
    refused(&orders, "DELETE FROM payments.charges").await;
    refused(&orders, "SELECT count(*) FROM payments.accounts").await;
    refused(&orders, "INSERT INTO payments.outbox (message_id, exchange, routing_key, message_type, producer, schema_version, payload) VALUES (gen_random_uuid(), 'warren', 'payment.evt.charged', 'payment.evt.charged', 'order', 1, '{}')").await;
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(accounts, 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn each_role_reaches_its_own_schema_and_no_other(pool: PgPool) {
    let schemas = schemas();
    for &(role, own) in &schemas {
        let as_it = as_role(&pool, role).await;
        for &(_, schema) in &schemas {
            let inbox = format!(
                "INSERT INTO {schema}.inbox (consumer, message_id) VALUES ('t', gen_random_uuid())"
            );
            let outbox = format!("DELETE FROM {schema}.outbox");
            if schema == own {
                allowed(&as_it, &inbox).await;
                allowed(&as_it, &outbox).await;
            } else {
                refused(&as_it, &inbox).await;
                refused(&as_it, &format!("SELECT count(*) FROM {schema}.outbox")).await;
            }
        }
        // Nothing of the schema's shape either.
        refused(&as_it, &format!("CREATE TABLE {own}.extra (id int)")).await;
        as_it.close().await;
    }

    for role in schemaless_roles() {
        let as_it = as_role(&pool, role).await;
        allowed(&as_it, "SELECT 1").await;
        for &(_, schema) in &schemas {
            refused(&as_it, &format!("SELECT count(*) FROM {schema}.inbox")).await;
        }
        as_it.close().await;
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_operator_reads_everything_and_repairs_only_sagas(pool: PgPool) {
    let operator = as_role(&pool, "warren_operator").await;
    for (_, schema) in schemas() {
        allowed(&operator, &format!("SELECT count(*) FROM {schema}.inbox")).await;
        allowed(&operator, &format!("SELECT count(*) FROM {schema}.outbox")).await;
    }
    allowed(&operator, "SELECT count(*) FROM payments.accounts").await;
    allowed(&operator, "UPDATE sagas.sagas SET version = version").await;
    allowed(&operator, "DELETE FROM sagas.outbox").await;
    refused(&operator, "UPDATE payments.accounts SET balance_cents = 0").await;
    refused(&operator, "DELETE FROM orders.orders").await;
}
