//! One bad saga never stalls the others, and deadlines mean the same on every machine: halts
//! in the sweep and the reply path, and clock skew.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::sync::Arc;

use contracts::Envelope;
use orchestrator::{Clock, Engine, repo};
use saga::machine::{Input, SagaStatus};
use serde_json::json;
use sqlx::PgPool;
use support::*;
use uuid::Uuid;

/// One saga whose definition version cannot be found and one whose transition panics (its
/// current step is past its definition's) are halted with the reason; the 98 others in the
/// same sweep time out as they should, and nothing is left due.
#[sqlx::test(migrations = "../../migrations")]
async fn one_bad_saga_is_halted_and_the_rest_of_the_sweep_goes_on(pool: PgPool) {
    let engine = overdue(Engine::new(pool.clone(), vec![checkout()]));
    let ids: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        handle(&engine, &pool, &start_message(*id)).await;
    }
    let (lost, broken) = (ids[17], ids[60]);
    tamper(&pool, lost, "definition_version", json!("0000000000000000")).await;
    tamper(&pool, broken, "current", json!(7)).await;

    assert_eq!(engine.sweep(100).await.unwrap(), 100);

    let (status, error) = status_of(&pool, lost).await;
    assert_eq!(status, SagaStatus::Failed);
    let error = error.unwrap();
    assert!(error.starts_with("halted: cannot apply timeout"), "{error}");
    assert!(error.contains("0000000000000000"), "{error}");
    let (status, error) = status_of(&pool, broken).await;
    assert_eq!(status, SagaStatus::Failed);
    let error = error.unwrap();
    assert!(
        error.starts_with("halted: the state machine failed on timeout"),
        "{error}"
    );
    // The halt is logged in place of the timeout it could not apply.
    let logged = repo::log(&pool, broken).await.unwrap();
    assert!(matches!(logged.last().unwrap().input.0, Input::Halt { .. }));
    assert!(logged.last().unwrap().applied);

    for id in ids.iter().filter(|id| ![lost, broken].contains(id)) {
        let saga = repo::get(&pool, *id).await.unwrap().unwrap();
        assert_eq!(saga.status, SagaStatus::Running, "saga {id}");
        assert_eq!(
            saga.steps[0].attempts, 2,
            "saga {id}: the create was sent again"
        );
    }
    // The sweep's own messages (the test wrote no start's to the outbox): the 98 retries.
    let retried: Vec<Uuid> = sqlx::query_scalar(
        "SELECT correlation_id FROM sagas.outbox WHERE message_type = 'order.cmd.create'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(retried.len(), 98);
    assert!(!retried.contains(&lost) && !retried.contains(&broken));
    // The retried steps' deadlines are on the database's clock now: nothing is due.
    assert_eq!(engine.sweep(100).await.unwrap(), 0);
}

/// The reply path: a group with a reply for a saga whose version cannot be found commits, the
/// other sagas in it advance, and the one saga is halted.
#[sqlx::test(migrations = "../../migrations")]
async fn one_bad_saga_is_halted_and_the_rest_of_the_group_goes_on(pool: PgPool) {
    let engine = Engine::new(pool.clone(), vec![checkout()]);
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        handle(&engine, &pool, &start_message(*id)).await;
    }
    tamper(
        &pool,
        ids[1],
        "definition_version",
        json!("0000000000000000"),
    )
    .await;
    let group: Vec<Envelope> = ids
        .iter()
        .map(|id| reply(*id, "order.evt.created", json!({})))
        .collect();
    let messages: Vec<&Envelope> = group.iter().collect();
    let sent = handle_group(&engine, &pool, &messages).await;
    let reserves = sent
        .iter()
        .filter(|m| m.message_type == "inventory.cmd.reserve")
        .map(|m| m.correlation_id.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(reserves, [ids[0], ids[2]]);
    let (status, error) = status_of(&pool, ids[1]).await;
    assert_eq!(status, SagaStatus::Failed);
    assert!(
        error
            .unwrap()
            .starts_with("halted: cannot apply reply order.evt.created")
    );
    // The halted saga's log ends with the halt, tied to the message it could not apply.
    let logged = repo::log(&pool, ids[1]).await.unwrap();
    let last = logged.last().unwrap();
    assert!(matches!(last.input.0, Input::Halt { .. }));
    assert_eq!(last.message_id, Some(group[1].message_id));
    // An operator's input to a halted saga is taken as for any failed one: a second halt, say,
    // is ignored.
    let again = Input::Halt {
        reason: "again".into(),
    };
    let (_, changed) = engine.operate(ids[1], again).await.unwrap();
    assert!(!changed);
}

/// Orchestrators whose clocks are ten minutes off either way write deadlines on the database's
/// clock once synced; and a sweep by one that never synced compares deadlines with the
/// database's clock, so it handles each due saga once instead of claiming it over and over.
#[sqlx::test(migrations = "../../migrations")]
async fn clock_skew_neither_times_steps_out_early_nor_makes_the_sweeper_spin(pool: PgPool) {
    let skewed = |minutes: i64| {
        let clock = Clock::skewed(chrono::Duration::minutes(minutes));
        Engine::new(pool.clone(), vec![checkout()]).with_clock(Arc::new(clock))
    };
    // Never synced, ten minutes behind: every deadline it writes has passed for the database.
    let behind = skewed(-10);
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        handle(&behind, &pool, &start_message(*id)).await;
    }
    assert_eq!(behind.sweep(100).await.unwrap(), 20, "one pass handles all");
    assert_eq!(
        behind.sweep(100).await.unwrap(),
        0,
        "and nothing is due after"
    );
    let idle: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas.saga_log WHERE note = 'no deadline has passed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        idle, 0,
        "no saga was claimed only to be told it was not due"
    );

    for minutes in [-10, 10] {
        let engine = skewed(minutes);
        let offset = engine.clock().sync(&pool).await.unwrap();
        assert!(
            (offset + chrono::Duration::minutes(minutes))
                .num_seconds()
                .abs()
                <= 1,
            "measured {offset} for a clock {minutes} min off"
        );
        let saga_id = Uuid::now_v7();
        handle(&engine, &pool, &start_message(saga_id)).await;
        // The step's 10 s timeout counted on the database's clock.
        let left: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM deadline - now())::float8 FROM sagas.sagas \
             WHERE saga_id = $1",
        )
        .bind(saga_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        // The offset is measured to within a round trip: a millisecond or so either way.
        assert!(
            (5.0..=10.5).contains(&left),
            "{left} s left of a 10 s timeout"
        );
        assert_eq!(engine.sweep(100).await.unwrap(), 0, "no early timeout");
    }
}
