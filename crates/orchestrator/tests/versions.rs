//! Sagas pinned to their definition version: a changed definition moves no saga that started
//! before it.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use orchestrator::{Engine, repo};
use saga::Definition;
use saga::machine::{self, SagaStatus};
use serde_json::json;
use sqlx::PgPool;
use support::*;
use uuid::Uuid;

/// Checkout with its first two steps swapped: reserve the stock, then create the order.
fn reordered_checkout() -> Definition {
    let mut definition = checkout();
    definition.steps.swap(0, 1);
    definition.version = Some("reordered".into());
    definition
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_saga_keeps_the_definition_version_it_started_under(pool: PgPool) {
    let (v1, v2) = (checkout(), reordered_checkout());
    assert_ne!(v1.digest(), v2.digest());
    let old = Uuid::now_v7();
    let before = Engine::new(pool.clone(), vec![v1.clone()]);
    let sent = handle(&before, &pool, &start_message(old)).await;
    assert_eq!(types(&sent), ["order.cmd.create", "saga.evt.updated"]);
    let order_id = sent[0].payload["order_id"].clone();

    // The orchestrator restarts on the reordered definition: a new engine, which has never
    // seen the first version and must read it back from the database.
    let after = Engine::new(pool.clone(), vec![v2.clone()]);
    let new = Uuid::now_v7();
    let sent = handle(&after, &pool, &start_message(new)).await;
    assert_eq!(types(&sent), ["inventory.cmd.reserve", "saga.evt.updated"]);

    // The old saga's order is created: by its own version the stock comes next (by the new
    // one, the order would have been its second step and payment would come next).
    let created = reply(old, "order.evt.created", json!({"order_id": order_id}));
    let sent = handle_group(&after, &pool, &[&created]).await;
    assert_eq!(types(&sent), ["inventory.cmd.reserve", "saga.evt.updated"]);
    let total = json!({"order_id": order_id, "total_cents": 1200});
    let reserved = reply(old, "inventory.evt.reserved", total);
    let sent = handle(&after, &pool, &reserved).await;
    assert_eq!(types(&sent), ["payment.cmd.charge", "saga.evt.updated"]);

    let versions: Vec<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT saga_id, definition_version FROM sagas.sagas ORDER BY created_at, saga_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        [(old, Some(v1.digest())), (new, Some(v2.digest()))]
    );
    let logged: Vec<Option<String>> =
        sqlx::query_scalar("SELECT definition_version FROM sagas.saga_log WHERE saga_id = $1")
            .bind(old)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(logged, vec![Some(v1.digest()); 3]);
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT digest, label FROM sagas.definitions ORDER BY first_used_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        [(v1.digest(), None), (v2.digest(), Some("reordered".into()))]
    );

    // The old saga's log replays through its own version to its stored state.
    let log = repo::log(&pool, old).await.unwrap();
    let (replayed, _) = machine::replay(&v1, old, log.iter().map(|e| (&e.input.0, e.at))).unwrap();
    assert_eq!(replayed, repo::get(&pool, old).await.unwrap().unwrap());
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_restarted_orchestrator_reads_back_the_versions_sagas_still_run_on(pool: PgPool) {
    let before = Engine::new(pool.clone(), vec![checkout()]);
    handle(&before, &pool, &start_message(Uuid::now_v7())).await;
    let after = Engine::new(pool.clone(), vec![reordered_checkout()]);
    let loaded = after.versions().register(&pool).await.unwrap();
    assert_eq!(loaded, [checkout().version_name()]);
    // Both versions' replies are bound, and the new current one is stored.
    assert_eq!(after.versions().known().len(), 2);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas.definitions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

/// Checkout with a step added at the end (what it sends does not matter here: what is under
/// test is which steps each saga runs).
fn extended_checkout() -> Definition {
    let mut definition = checkout();
    let mut notify = definition.steps[3].clone();
    notify.name = "notify_customer".into();
    notify.command = "notification.cmd.send".into();
    notify.fields = vec!["order_id".into()];
    notify.success = "notification.evt.sent".into();
    notify.failure = vec![];
    definition.steps.push(notify);
    definition.version = Some("extended".into());
    definition
}

/// Checkout without its last step (the order is never confirmed).
fn shortened_checkout() -> Definition {
    let mut definition = checkout();
    definition.steps.pop();
    definition.version = Some("shortened".into());
    definition
}

/// Feeds a saga the replies named (one per step), one at a time, and
/// returns what the last one sent.
async fn replies(engine: &Engine, pool: &PgPool, saga_id: Uuid, steps: &[&str]) -> Vec<String> {
    let mut sent = Vec::new();
    for step in steps {
        let (message_type, payload) = match *step {
            "created" => ("order.evt.created", json!({})),
            "reserved" => ("inventory.evt.reserved", json!({"total_cents": 1200})),
            "charged" => ("payment.evt.charged", json!({})),
            "confirmed" => ("order.evt.confirmed", json!({})),
            "notified" => ("notification.evt.sent", json!({})),
            other => panic!("no reply for {other}"),
        };
        let message = reply(saga_id, message_type, payload);
        sent = types(&handle(engine, pool, &message).await)
            .into_iter()
            .map(str::to_owned)
            .collect();
    }
    sent
}

/// A step added, then one removed, each by restarting on a changed definition, while sagas
/// are at every point of the old ones: each saga runs the steps of the version it started
/// under, to its end.
#[sqlx::test(migrations = "../../migrations")]
async fn steps_added_or_removed_move_no_saga_that_started_before(pool: PgPool) {
    let status = |saga_id: Uuid| {
        let pool = pool.clone();
        async move { repo::get(&pool, saga_id).await.unwrap().unwrap().status }
    };
    let v1 = Engine::new(pool.clone(), vec![checkout()]);
    let (a, d) = (Uuid::now_v7(), Uuid::now_v7());
    for saga in [a, d] {
        handle(&v1, &pool, &start_message(saga)).await;
        replies(&v1, &pool, saga, &["created", "reserved"]).await;
    }

    // Restarted with a fifth step: the old sagas end after four, a new one runs five.
    let v2 = Engine::new(pool.clone(), vec![extended_checkout()]);
    let b = Uuid::now_v7();
    handle(&v2, &pool, &start_message(b)).await;
    let sent = replies(&v2, &pool, a, &["charged", "confirmed"]).await;
    assert_eq!(
        sent,
        ["saga.evt.updated"],
        "no fifth step for a saga of the first version"
    );
    assert_eq!(status(a).await, SagaStatus::Completed);
    let sent = replies(
        &v2,
        &pool,
        b,
        &["created", "reserved", "charged", "confirmed"],
    )
    .await;
    assert_eq!(sent, ["notification.cmd.send", "saga.evt.updated"]);

    // Restarted without the confirmation: the sagas of both older versions still get theirs.
    let v3 = Engine::new(pool.clone(), vec![shortened_checkout()]);
    let c = Uuid::now_v7();
    handle(&v3, &pool, &start_message(c)).await;
    let sent = replies(&v3, &pool, d, &["charged"]).await;
    assert_eq!(sent, ["order.cmd.confirm", "saga.evt.updated"]);
    replies(&v3, &pool, d, &["confirmed"]).await;
    replies(&v3, &pool, b, &["notified"]).await;
    let sent = replies(&v3, &pool, c, &["created", "reserved", "charged"]).await;
    assert_eq!(
        sent,
        ["saga.evt.updated"],
        "the new version ends at the charge"
    );
    for saga in [a, b, c, d] {
        assert_eq!(status(saga).await, SagaStatus::Completed, "saga {saga}");
    }
    let labels: Vec<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT s.saga_id, d.label FROM sagas.sagas s \
         JOIN sagas.definitions d ON d.digest = s.definition_version ORDER BY s.saga_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected = vec![
        (a, None),
        (b, Some("extended".to_owned())),
        (c, Some("shortened".to_owned())),
        (d, None),
    ];
    expected.sort();
    assert_eq!(labels, expected);
}

/// An operator moves running sagas onto a new version where their history replays through it
/// unchanged; a saga whose history would part from it, or one that has ended, stays.
#[sqlx::test(migrations = "../../migrations")]
async fn a_running_saga_moves_only_to_a_version_its_history_replays_through(pool: PgPool) {
    use orchestrator::migrate::{Moved, migrate};
    let v1 = Engine::new(pool.clone(), vec![checkout()]);
    let (moving, early, done) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for saga in [moving, early, done] {
        handle(&v1, &pool, &start_message(saga)).await;
    }
    replies(&v1, &pool, moving, &["created"]).await;
    replies(
        &v1,
        &pool,
        done,
        &["created", "reserved", "charged", "confirmed"],
    )
    .await;
    let version_of = |saga: Uuid| {
        let pool = pool.clone();
        async move {
            repo::get(&pool, saga)
                .await
                .unwrap()
                .unwrap()
                .definition_version
        }
    };

    // A minute to charge instead of ten seconds: every history so far goes the same way.
    let mut patient = checkout();
    patient.steps[2].timeout = Some(std::time::Duration::from_secs(60));
    patient.version = Some("patient".into());
    let v2 = Engine::new(pool.clone(), vec![patient.clone()]);
    let from = Some(checkout().digest());
    let dry = migrate(&v2, moving, &patient, true).await.unwrap();
    assert_eq!(dry, Moved::Moved { from: from.clone() });
    assert_eq!(version_of(moving).await, from, "a dry run moves nothing");
    let moved = migrate(&v2, moving, &patient, false).await.unwrap();
    assert_eq!(moved, Moved::Moved { from: from.clone() });
    assert_eq!(version_of(moving).await, Some(patient.digest()));
    let log = repo::log(&pool, moving).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        last.input.0,
        machine::Input::Migrate {
            to: patient.digest()
        }
    );
    assert_eq!(last.definition_version, Some(patient.digest()));

    // It goes on under the new version: the charge gets a minute.
    let sent = replies(&v2, &pool, moving, &["reserved"]).await;
    assert_eq!(sent, ["payment.cmd.charge", "saga.evt.updated"]);
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM deadline - now())::float8 FROM sagas.sagas WHERE saga_id = $1",
    )
    .bind(moving)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(left > 30.0, "{left} s left: the old 10 s timeout");
    let log = repo::log(&pool, moving).await.unwrap();
    let (replayed, _) =
        machine::replay(&patient, moving, log.iter().map(|e| (&e.input.0, e.at))).unwrap();
    assert_eq!(replayed, repo::get(&pool, moving).await.unwrap().unwrap());

    // A finished saga, and one whose history would part from the target, stay.
    let Moved::Refused(why) = migrate(&v2, done, &patient, false).await.unwrap() else {
        panic!("a completed saga moved");
    };
    assert!(why.contains("completed"), "{why}");
    let Moved::Refused(why) = migrate(&v2, early, &reordered_checkout(), false)
        .await
        .unwrap()
    else {
        panic!("a saga moved onto steps in another order");
    };
    assert!(why.contains("another path"), "{why}");
    assert_eq!(version_of(early).await, from);
}
