//! Checkouts end to end: HTTP in, sagas across real processes on the real broker and database.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use support::{System, saga_id};
use tokio::sync::Semaphore;

fn states(events: &[Value]) -> Vec<String> {
    let mut states: Vec<String> = events
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect();
    states.dedup();
    states
}

async fn scalar(system: &System, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&system.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_happy_checkout_completes_and_confirms_the_order() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 10)], &[("c-1", 10_000)])
        .await;

    let (status, answer) = system.checkout("c-1", &[("SKU-1", 2)], None).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["state"], "running");
    let events = system.follow(&saga_id(&answer)).await;
    assert_eq!(states(&events).last().unwrap(), "completed", "{events:?}");
    let saga = events.last().unwrap();
    assert!(
        saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "succeeded")
    );

    let order_id = saga["order_id"].as_str().unwrap();
    let (_, order) = system.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["total_cents"], 2500);
    let (_, account) = system.get("/v1/accounts/c-1").await;
    assert_eq!(account["balance_cents"], 7500);
    // The confirmed order's stock moves from reserved to sold.
    system
        .until("the reservation to be sold", || async {
            scalar(
                &system,
                "SELECT sold FROM inventory.products WHERE sku = 'SKU-1'",
            )
            .await
                == 2
        })
        .await;
    let (_, product) = system.get("/v1/products/SKU-1").await;
    assert_eq!(
        (product["available"].as_i64(), product["reserved"].as_i64()),
        (Some(8), Some(0))
    );
    system.stop().await;
}

#[tokio::test]
async fn an_out_of_stock_checkout_is_compensated_with_no_stock_held() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 1), ("SKU-2", 100, 5)], &[("c-1", 10_000)])
        .await;

    let (_, answer) = system
        .checkout("c-1", &[("SKU-2", 1), ("SKU-1", 2)], None)
        .await;
    let events = system.follow(&saga_id(&answer)).await;
    let saga = events.last().unwrap();
    assert_eq!(saga["state"], "compensated", "{events:?}");
    assert!(
        saga["error"]
            .as_str()
            .unwrap()
            .contains("SKU-1: 2 requested, 1 available")
    );

    let (_, order) = system
        .get(&format!(
            "/v1/orders/{}",
            saga["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(order["status"], "cancelled");
    // All or nothing: SKU-2, which was in stock, is not held either.
    for (sku, available) in [("SKU-1", 1), ("SKU-2", 5)] {
        let (_, product) = system.get(&format!("/v1/products/{sku}")).await;
        assert_eq!(product["available"], available, "{product}");
        assert_eq!(product["reserved"], 0, "{product}");
    }
    assert_eq!(
        system.get("/v1/accounts/c-1").await.1["balance_cents"],
        10_000
    );
    system.stop().await;
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock_and_cancels_the_order() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system.seed(&[("SKU-1", 1250, 10)], &[("c-1", 1000)]).await;

    let (_, answer) = system.checkout("c-1", &[("SKU-1", 1)], None).await;
    let events = system.follow(&saga_id(&answer)).await;
    let saga = events.last().unwrap();
    assert_eq!(saga["state"], "compensated", "{events:?}");
    assert!(
        saga["error"]
            .as_str()
            .unwrap()
            .contains("insufficient funds"),
        "{saga}"
    );
    let steps: Vec<&str> = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["compensated", "compensated", "failed", "pending"]);

    let (_, order) = system
        .get(&format!(
            "/v1/orders/{}",
            saga["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(order["status"], "cancelled");
    let (_, product) = system.get("/v1/products/SKU-1").await;
    assert_eq!(
        (product["available"].as_i64(), product["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    assert_eq!(
        system.get("/v1/accounts/c-1").await.1["balance_cents"],
        1000
    );
    system.stop().await;
}

#[tokio::test]
async fn a_payment_that_never_answers_times_out_and_is_compensated() {
    let mut system = System::new().await;
    // Checkout with a one-second charge timeout.
    let dir = std::env::temp_dir().join(format!("warren-sagas-{}", system.vhost));
    std::fs::create_dir_all(&dir).unwrap();
    let definition = include_str!("../../../sagas/checkout.toml").replace(
        "timeout = \"10s\"\npivot = true",
        "timeout = \"1s\"\npivot = true",
    );
    assert!(definition.contains("timeout = \"1s\""));
    std::fs::write(dir.join("checkout.toml"), definition).unwrap();
    system.sagas_dir = Some(dir.clone());
    // No payment service: the charge sits in its queue, unanswered.
    system.spawn(&["gateway", "orchestrator", "order", "inventory"]);
    system.ready().await;
    let payment_seed = System::put(
        &system,
        "/v1/accounts/c-1",
        serde_json::json!({"balance_cents": 10_000}),
    )
    .await;
    assert_eq!(payment_seed, 202);
    assert_eq!(
        system
            .put(
                "/v1/products/SKU-1",
                serde_json::json!({"name": "Mug", "price_cents": 1250, "available": 10})
            )
            .await,
        202
    );
    system
        .until("the product to arrive", || async {
            scalar(&system, "SELECT count(*) FROM inventory.products").await == 1
        })
        .await;

    let (_, answer) = system.checkout("c-1", &[("SKU-1", 2)], None).await;
    let id = saga_id(&answer);
    system
        .until("the charge to time out", || async {
            let (_, saga) = system.get(&format!("/v1/sagas/{id}")).await;
            saga["steps"][2]["state"] == "compensating"
        })
        .await;

    // The payment service comes back: it takes the charge, then the refund that undoes it.
    system.spawn(&["payment"]);
    let events = system.follow(&id).await;
    let saga = events.last().unwrap();
    assert_eq!(saga["state"], "compensated", "{events:?}");
    assert!(
        saga["error"]
            .as_str()
            .unwrap()
            .contains("charge_payment timed out"),
        "{saga}"
    );
    assert_eq!(
        system.get("/v1/accounts/c-1").await.1["balance_cents"],
        10_000
    );
    let standing = scalar(
        &system,
        "SELECT count(*) FROM payments.charges WHERE status = 'charged'",
    )
    .await;
    assert_eq!(standing, 0, "no charge left standing");
    let (_, product) = system.get("/v1/products/SKU-1").await;
    assert_eq!(
        (product["available"].as_i64(), product["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    let (_, order) = system
        .get(&format!(
            "/v1/orders/{}",
            saga["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(order["status"], "cancelled");
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_same_idempotency_key_twice_gives_one_saga() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 10)], &[("c-1", 10_000)])
        .await;

    let (first_status, first) = system.checkout("c-1", &[("SKU-1", 1)], Some("key-1")).await;
    let (second_status, second) = system.checkout("c-1", &[("SKU-1", 1)], Some("key-1")).await;
    assert_eq!((first_status.as_u16(), second_status.as_u16()), (202, 202));
    assert_eq!(first["saga_id"], second["saga_id"]);
    system.follow(&saga_id(&first)).await;
    let (third_status, third) = system.checkout("c-1", &[("SKU-1", 1)], Some("key-1")).await;
    assert_eq!(third_status, 202);
    assert_eq!(third["saga_id"], first["saga_id"]);
    assert_eq!(third["state"], "completed");
    // The same key with another body is refused.
    let (conflict, body) = system.checkout("c-1", &[("SKU-1", 3)], Some("key-1")).await;
    assert_eq!(conflict, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    // Another customer's key is another saga.
    let (_, other) = system.checkout("c-2", &[("SKU-1", 1)], Some("key-1")).await;
    assert_ne!(other["saga_id"], first["saga_id"]);

    let sagas_of_c1 = scalar(
        &system,
        "SELECT count(*) FROM sagas.sagas WHERE state->'context'->>'customer_id' = 'c-1'",
    )
    .await;
    assert_eq!(sagas_of_c1, 1);
    assert_eq!(
        system.get("/v1/accounts/c-1").await.1["balance_cents"],
        10_000 - 1250
    );
    system.stop().await;
}

#[tokio::test]
async fn five_hundred_concurrent_checkouts_end_and_keep_stock_and_money() {
    const CHECKOUTS: usize = 500;
    const CUSTOMERS: usize = 20;
    let mut system = System::new().await;
    system.db_pool = 4;
    // Two of every worker and two orchestrators, each its own process, competing for queues.
    system.spawn(&["gateway"]);
    for component in ["orchestrator", "order", "inventory", "payment"] {
        system.spawn(&[component]);
        system.spawn(&[component]);
    }
    system.ready().await;
    let products = [
        ("A", 100, 120),
        ("B", 250, 120),
        ("C", 500, 80),
        ("D", 1000, 60),
        ("E", 50, 200),
    ];
    let customers: Vec<String> = (0..CUSTOMERS).map(|c| format!("c-{c}")).collect();
    let accounts: Vec<(&str, i64)> = customers.iter().map(|c| (c.as_str(), 20_000)).collect();
    system.seed(&products, &accounts).await;

    let started = Instant::now();
    let system = Arc::new(system);
    let gate = Arc::new(Semaphore::new(50));
    let mut tasks = Vec::new();
    for i in 0..CHECKOUTS {
        let system = Arc::clone(&system);
        let gate = Arc::clone(&gate);
        let customer = customers[i % CUSTOMERS].clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let skus = ["A", "B", "C", "D", "E"];
            let lines: Vec<(&str, u32)> = (0..1 + i % 3)
                .map(|l| {
                    (
                        skus[(i + l * 2) % 5],
                        u32::try_from(1 + (i + l) % 3).unwrap(),
                    )
                })
                .collect();
            let (status, answer) = system.checkout(&customer, &lines, None).await;
            assert_eq!(status, 202, "{answer}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let submitted = started.elapsed();
    system.all_terminal(CHECKOUTS as i64).await;
    let drained = started.elapsed();
    // Confirmed orders' stock is sold by choreography, just after their sagas complete.
    system
        .until("every reservation to be sold or released", || async {
            scalar(
                &system,
                "SELECT coalesce(sum(reserved), 0)::bigint FROM inventory.products",
            )
            .await
                == 0
        })
        .await;

    let (completed, compensated, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'compensated'), \
         count(*) FILTER (WHERE status = 'failed') FROM sagas.sagas",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert_eq!(failed, 0);
    assert_eq!(completed + compensated, CHECKOUTS as i64);
    assert!(
        completed > 0 && compensated > 0,
        "both outcomes occur: {completed} / {compensated}"
    );

    // Stock is conserved (never negative: the schema refuses it, see the services' tests).
    for (sku, _, initial) in products {
        let (available, reserved, sold): (i64, i64, i64) = sqlx::query_as(
            "SELECT available, reserved, sold FROM inventory.products WHERE sku = $1",
        )
        .bind(sku)
        .fetch_one(&system.pool)
        .await
        .unwrap();
        assert_eq!(available + reserved + sold, initial, "{sku}");
    }
    // Money is conserved: balance + standing charges = initial, per customer.
    for customer in &customers {
        let (balance, charged): (i64, i64) = sqlx::query_as(
            "SELECT a.balance_cents, coalesce((SELECT sum(amount_cents) FROM payments.charges c \
             WHERE c.customer_id = a.customer_id AND c.status = 'charged'), 0)::bigint \
             FROM payments.accounts a WHERE a.customer_id = $1",
        )
        .bind(customer)
        .fetch_one(&system.pool)
        .await
        .unwrap();
        assert_eq!(balance + charged, 20_000, "{customer}");
    }
    // A confirmed order has exactly one charge, of its total; a cancelled one has none standing.
    let mismatched: i64 = scalar(
        &system,
        "SELECT count(*) FROM orders.orders o LEFT JOIN payments.charges c \
         ON c.order_id = o.order_id AND c.status = 'charged' \
         WHERE (o.status = 'confirmed' AND (c.order_id IS NULL OR c.amount_cents <> o.total_cents)) \
            OR (o.status <> 'confirmed' AND c.order_id IS NOT NULL)",
    )
    .await;
    assert_eq!(mismatched, 0);
    assert_eq!(
        scalar(
            &system,
            "SELECT count(*) FROM orders.orders WHERE status = 'confirmed'"
        )
        .await,
        completed
    );
    assert_eq!(
        scalar(
            &system,
            "SELECT count(*) FROM orders.orders WHERE status = 'pending'"
        )
        .await,
        0
    );

    println!(
        "{CHECKOUTS} checkouts over 9 processes: {completed} completed, {compensated} compensated; \
         submitted in {submitted:?}, all ended after {drained:?}"
    );
    Arc::into_inner(system).unwrap().stop().await;
}

#[tokio::test]
async fn invalid_requests_get_json_errors_and_publish_nothing() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    let post = |body: String| {
        let request = system
            .client
            .post(format!("{}/v1/checkouts", system.base))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let many: Vec<String> = (0..101)
        .map(|i| format!(r#"{{"sku":"S{i}","quantity":1}}"#))
        .collect();
    let cases = [
        (
            r#"{"customer_id":"c-1","items":[{"sku":"A","quantity":1}],"coupon":"x"}"#.to_owned(),
            422,
        ),
        (r#"{"customer_id":"c-1","items":[]}"#.to_owned(), 422),
        (
            format!(r#"{{"customer_id":"c-1","items":[{}]}}"#, many.join(",")),
            422,
        ),
        (
            r#"{"customer_id":"c-1","items":[{"sku":"A","quantity":0}]}"#.to_owned(),
            422,
        ),
        (
            r#"{"customer_id":"c-1","items":[{"sku":"A","quantity":-1}]}"#.to_owned(),
            422,
        ),
        (
            r#"{"customer_id":"c-1","items":[{"sku":"A","quantity":1},{"sku":"A","quantity":2}]}"#
                .to_owned(),
            422,
        ),
        (
            r#"{"customer_id":"c-1","items":[{"sku":"A","quantity":1001}]}"#.to_owned(),
            422,
        ),
        (r#"{"customer_id":"c-1","#.to_owned(), 400),
        (
            format!(r#"{{"customer_id":"{}","items":[]}}"#, "x".repeat(70_000)),
            413,
        ),
    ];
    for (body, expected) in cases {
        let shown: String = body.chars().take(80).collect();
        let (status, answer) = post(body).await;
        assert_eq!(status, expected, "{shown}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{shown}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{shown}: {answer}");
    }
    let no_json = system
        .client
        .post(format!("{}/v1/checkouts", system.base))
        .body("customer_id=c-1")
        .send()
        .await
        .unwrap();
    assert_eq!(no_json.status(), 415);
    let (status, body) = system.get("/v1/nowhere").await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // A query string that does not parse (schemathesis found these answered in plain text).
    for path in [
        "/v1/sagas?limit=-1",
        "/v1/notifications?customer_id=c-1&limit=false",
    ] {
        let (status, body) = system.get(path).await;
        assert_eq!(
            (status.as_u16(), body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{path}: {body}"
        );
    }

    // Nothing reached the orchestrator: a valid checkout afterwards is the only saga.
    system.seed(&[("A", 100, 5)], &[("c-1", 1000)]).await;
    let (_, answer) = system.checkout("c-1", &[("A", 1)], None).await;
    system.follow(&saga_id(&answer)).await;
    assert_eq!(scalar(&system, "SELECT count(*) FROM sagas.sagas").await, 1);
    system.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let mut system = System::new().await;
    system.spawn(&["gateway"]);
    system.ready().await;
    let (status, document) = system.get("/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/v1/checkouts",
        "/v1/sagas",
        "/v1/sagas/{id}",
        "/v1/sagas/{id}/events",
        "/v1/orders/{id}",
        "/v1/products/{sku}",
        "/v1/accounts/{customer_id}",
        "/healthz",
        "/readyz",
        "/v1/images",
        "/v1/images/{id}",
        "/v1/images/{id}/variants/{name}",
        "/v1/notifications",
        "/v1/notifications/stream",
        "/metrics",
        "/ui",
        "/ui/events",
        "/ui/queues",
    ] {
        assert!(document["paths"][path].is_object(), "{path} is missing");
    }
    system.stop().await;
}
