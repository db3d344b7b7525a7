//! Changing a saga definition while sagas run, with real processes on the real broker and
//! database: the orchestrator is restarted on a changed file in the middle of a load, and every
//! saga finishes on the version it started under.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::System;
use tokio::sync::{Semaphore, watch};

const CHECKOUT: &str = include_str!("../../../sagas/checkout.toml");

/// Checkout with its first two steps swapped (reserve the stock, then create the order), and
/// a label for the new version. Run on the old version's sagas, this is the change that made
/// them fail before sagas were pinned to their version ("the saga's context has no
/// total_cents").
fn reordered() -> String {
    let mut parts: Vec<&str> = CHECKOUT.split("\n[[step]]\n").collect();
    assert_eq!(parts.len(), 5, "a header and four steps");
    parts.swap(1, 2);
    let swapped = parts.join("\n[[step]]\n");
    let reordered = swapped.replacen(
        "name = \"checkout\"\n",
        "name = \"checkout\"\nversion = \"reordered\"\n",
        1,
    );
    assert_ne!(reordered, CHECKOUT);
    reordered
}

async fn scalar(system: &System, sql: &str, digest: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(digest)
        .fetch_one(&system.pool)
        .await
        .unwrap()
}

fn write(dir: &Path, definition: &str) {
    std::fs::write(dir.join("checkout.toml"), definition).unwrap();
}

/// 500 checkouts; after 150 are accepted, the orchestrator is killed and started again on the
/// reordered definition. Sagas that started before keep the old version to their end, those
/// after start on the new one; none fails, none is parked, and the invariants hold.
#[tokio::test]
async fn a_definition_changed_under_load_leaves_every_saga_on_its_own_version() {
    const CHECKOUTS: usize = 500;
    const RESTART_AT: usize = 150;
    const HOLD_FROM: usize = 300;
    const CUSTOMERS: usize = 10;
    let mut system = System::new().await;
    let dir = std::env::temp_dir().join(format!("warren-sagas-{}", system.vhost));
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, CHECKOUT);
    system.sagas_dir = Some(dir.clone());
    system.spawn(&["gateway", "order", "inventory", "payment", "notification"]);
    let mut orchestrator = system.spawn(&["orchestrator"]);
    system.ready().await;
    let products: Vec<(&str, i64, i64)> = vec![("A", 100, 100_000), ("B", 250, 100_000)];
    let customers: Vec<String> = (0..CUSTOMERS).map(|c| format!("c-{c}")).collect();
    let accounts: Vec<(&str, i64)> = customers
        .iter()
        .map(|c| (c.as_str(), 100_000_000))
        .collect();
    system.seed(&products, &accounts).await;

    let system = Arc::new(tokio::sync::Mutex::new(system));
    let (client, base) = {
        let system = system.lock().await;
        (system.client.clone(), system.base.clone())
    };
    let (progress, mut watched) = watch::channel(0usize);
    let (restarted, restart_done) = watch::channel(false);
    let accepted = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(16));
    let mut submissions = tokio::task::JoinSet::new();
    for i in 0..CHECKOUTS {
        let permits = Arc::clone(&permits);
        let (client, base) = (client.clone(), base.clone());
        let (accepted, progress) = (Arc::clone(&accepted), progress.clone());
        let mut restart_done = restart_done.clone();
        submissions.spawn(async move {
            // The checkouts past HOLD_FROM come after the restart, so both versions get sagas
            // however fast the first ones go; those before it keep sagas in flight across it.
            if i >= HOLD_FROM {
                restart_done.wait_for(|done| *done).await.unwrap();
            }
            let permit = permits.acquire_owned().await.unwrap();
            let body = serde_json::json!({
                "customer_id": format!("c-{}", i % CUSTOMERS),
                "items": [{"sku": if i % 2 == 0 { "A" } else { "B" }, "quantity": 1 + i % 3}],
            });
            // The same key until accepted, as a careful client does.
            loop {
                let answer = client
                    .post(format!("{base}/v1/checkouts"))
                    .header("Idempotency-Key", format!("versions-{i}"))
                    .json(&body)
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status() == 202) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            progress.send_replace(accepted.fetch_add(1, Ordering::SeqCst) + 1);
            drop(permit);
        });
    }
    drop(progress);

    watched.wait_for(|n| *n >= RESTART_AT).await.unwrap();
    let restarted_at: chrono::DateTime<chrono::Utc> = {
        let mut system = system.lock().await;
        system.kill(orchestrator).await;
        write(&dir, &reordered());
        orchestrator = system.spawn(&["orchestrator"]);
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&system.pool)
            .await
            .unwrap()
    };
    restarted.send_replace(true);
    watched.wait_for(|n| *n == CHECKOUTS).await.unwrap();
    while submissions.join_next().await.is_some() {}

    let mut system = Arc::into_inner(system).unwrap().into_inner();
    let ran = system
        .cli(&["--json", "chaos", "verify", "--wait", "180s"])
        .await;
    let report = ran.json();
    assert_eq!(report["holds"], true, "{report:#}\n{}", ran.stderr);
    assert_eq!(report["figures"]["sagas"], CHECKOUTS, "{report:#}");
    assert_eq!(report["figures"]["failed"], 0, "{report:#}");
    assert_eq!(report["figures"]["parked"], 0, "{report:#}");
    assert!(system.alive(orchestrator));

    let new: String =
        sqlx::query_scalar("SELECT digest FROM sagas.definitions WHERE label = 'reordered'")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    let old: String = sqlx::query_scalar(
        "SELECT digest FROM sagas.definitions WHERE label IS DISTINCT FROM 'reordered'",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();
    let on = |digest: &str| {
        let system = &system;
        let digest = digest.to_owned();
        async move {
            scalar(
                system,
                "SELECT count(*) FROM sagas.sagas WHERE definition_version = $1",
                &digest,
            )
            .await
        }
    };
    let (on_old, on_new) = (on(&old).await, on(&new).await);
    assert_eq!(
        on_old + on_new,
        CHECKOUTS as i64,
        "every saga on one of the two"
    );
    assert!(
        // A checkout accepted before the restart starts on the version of whichever
        // orchestrator takes its start message.
        on_new >= (CHECKOUTS - HOLD_FROM) as i64 && on_old > 0,
        "{on_old} old, {on_new} new"
    );
    // No saga changed version on the way: every log entry is on its saga's version.
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas.saga_log l JOIN sagas.sagas s USING (saga_id) \
         WHERE l.definition_version IS DISTINCT FROM s.definition_version",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert_eq!(strays, 0);
    // The old version's sagas in flight at the restart went on after it, on the old steps:
    // the stock after the order (the new version reserves first).
    let carried_on: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT saga_id) FROM sagas.saga_log \
         WHERE definition_version = $1 AND at > $2",
    )
    .bind(&old)
    .bind(restarted_at)
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert!(carried_on > 0, "no saga of the old version was in flight");
    let first_steps: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT definition_version, state->'steps'->0->>'name' FROM sagas.sagas",
    )
    .fetch_all(&system.pool)
    .await
    .unwrap();
    let mut first_steps = first_steps;
    first_steps.sort();
    let mut expected = vec![
        (old.clone(), "create_order".to_owned()),
        (new.clone(), "reserve_inventory".to_owned()),
    ];
    expected.sort();
    assert_eq!(first_steps, expected);
    eprintln!(
        "definition changed under load: {CHECKOUTS} checkouts, orchestrator restarted on the \
         reordered definition after {RESTART_AT}; {on_old} sagas on the old version ({carried_on} \
         of them went on after the restart), {on_new} on the new; {} completed, {} compensated, \
         0 failed, 0 parked",
        report["figures"]["completed"], report["figures"]["compensated"],
    );
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
