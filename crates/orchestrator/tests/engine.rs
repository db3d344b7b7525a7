//! The engine against real PostgreSQL: rows, logs, outbox, replay, concurrent orchestrators.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use contracts::{Envelope, Schemas};
use orchestrator::{Engine, repo};
use saga::machine::{self, Input, SagaStatus};
use serde_json::json;
use sqlx::PgPool;
use support::*;
use uuid::Uuid;

#[sqlx::test(migrations = "../../migrations")]
async fn a_checkout_is_stored_logged_and_replayable(pool: PgPool) {
    let engine = Engine::new(pool.clone(), vec![checkout()]);
    let saga_id = Uuid::now_v7();
    let start = start_message(saga_id);

    let sent = handle(&engine, &pool, &start).await;
    assert_eq!(types(&sent), ["order.cmd.create", "saga.evt.updated"]);
    assert!(sent.iter().all(|m| m.correlation_id == Some(saga_id)));
    assert!(
        sent.iter()
            .all(|m| m.causation_id == Some(start.message_id))
    );
    // A repeated start (same saga id) changes nothing.
    assert!(
        handle(&engine, &pool, &start_message(saga_id))
            .await
            .is_empty()
    );

    let order_id = sent[0].payload["order_id"].clone();
    let sent = handle(
        &engine,
        &pool,
        &reply(saga_id, "order.evt.created", json!({"order_id": order_id})),
    )
    .await;
    assert_eq!(types(&sent), ["inventory.cmd.reserve", "saga.evt.updated"]);
    // A duplicate reply is logged as ignored and sends nothing.
    assert!(
        handle(
            &engine,
            &pool,
            &reply(saga_id, "order.evt.created", json!({}))
        )
        .await
        .is_empty()
    );
    let sent = handle(
        &engine,
        &pool,
        &reply(
            saga_id,
            "inventory.evt.reservation_failed",
            json!({"order_id": order_id, "reason": "no stock"}),
        ),
    )
    .await;
    assert_eq!(types(&sent), ["order.cmd.cancel", "saga.evt.updated"]);
    handle(
        &engine,
        &pool,
        &reply(
            saga_id,
            "order.evt.cancelled",
            json!({"order_id": order_id}),
        ),
    )
    .await;

    let stored = repo::get(&pool, saga_id).await.unwrap().unwrap();
    assert_eq!(stored.status, SagaStatus::Compensated);
    let log = repo::log(&pool, saga_id).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.applied).collect::<Vec<_>>(),
        [true, true, false, true, true]
    );
    let (replayed, applied) =
        machine::replay(&checkout(), saga_id, log.iter().map(|e| (&e.input.0, e.at))).unwrap();
    assert_eq!(replayed, stored);
    assert_eq!(applied, log.iter().map(|e| e.applied).collect::<Vec<_>>());

    // Everything the engine sent validates against its schema.
    let schemas = Schemas::embedded();
    for message in sent {
        schemas
            .validate(&message.message_type, &message.payload)
            .unwrap();
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_orchestrators_apply_each_reply_once(pool: PgPool) {
    let engines = [
        Engine::new(pool.clone(), vec![checkout()]),
        Engine::new(pool.clone(), vec![checkout()]),
    ];
    let saga_id = Uuid::now_v7();
    handle(&engines[0], &pool, &start_message(saga_id)).await;
    // The same reply, re-sent ten times with new ids, reaches both orchestrators at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let engine = engines[i % 2].clone();
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let message = reply(saga_id, "order.evt.created", json!({}));
            handle(&engine, &pool, &message).await.len()
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    assert_eq!(
        sent, 2,
        "one transition: the reserve command and its saga event"
    );
    let saga = repo::get(&pool, saga_id).await.unwrap().unwrap();
    assert_eq!(saga.version, 2);
    assert_eq!(saga.steps[1].attempts, 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_sweepers_time_each_saga_out_once(pool: PgPool) {
    // The deadlines have passed as the sagas start; what is under test is who handles them.
    let engine = overdue(Engine::new(pool.clone(), vec![hasty_checkout()]));
    let mut ids = Vec::new();
    for _ in 0..50 {
        let saga_id = Uuid::now_v7();
        handle(&engine, &pool, &start_message(saga_id)).await;
        ids.push(saga_id);
    }
    let (a, b) = tokio::join!(engine.sweep(25), engine.sweep(25));
    a.unwrap();
    b.unwrap();
    let running = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sagas.sagas WHERE status = 'running'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    while running().await > 0 {
        assert!(
            engine.sweep(100).await.unwrap() > 0,
            "a due saga is left unclaimed"
        );
    }
    for saga_id in ids {
        let log = repo::log(&pool, saga_id).await.unwrap();
        let create_timeouts = log
            .iter()
            .filter(|e| {
                matches!(e.input.0, Input::Timeout) && e.note.starts_with("create_order timed out")
            })
            .count();
        assert_eq!(
            create_timeouts, 1,
            "saga {saga_id}: the create timed out once"
        );
        let saga = repo::get(&pool, saga_id).await.unwrap().unwrap();
        // The create timed out: the order (whose outcome is unknown) is being cancelled.
        assert_ne!(saga.status, SagaStatus::Running);
        assert_eq!(saga.steps[0].attempts, 1);
    }
    let cancels: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT correlation_id) FROM sagas.outbox WHERE message_type = 'order.cmd.cancel'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(cancels, 50);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_operator_cancel_compensates_and_is_logged(pool: PgPool) {
    let engine = Engine::new(pool.clone(), vec![checkout()]);
    let saga_id = Uuid::now_v7();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sent = handle(
        &engine,
        &pool,
        &start_message(saga_id).with_traceparent(traceparent),
    )
    .await;
    let create = sent
        .iter()
        .find(|m| m.message_type == "order.cmd.create")
        .unwrap();
    assert_eq!(create.step.as_deref(), Some("create_order"));
    assert_eq!(create.traceparent.as_deref(), Some(traceparent));
    let (saga, changed) = engine
        .operate(
            saga_id,
            Input::Cancel {
                reason: "customer called".into(),
            },
        )
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(saga.status, SagaStatus::Compensating);
    let log = repo::log(&pool, saga_id).await.unwrap();
    assert!(log.last().unwrap().note.contains("customer called"));
    // No message caused the cancel: its compensation goes on in the trace the saga began in.
    let (trace, step): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT traceparent, step FROM sagas.outbox \
         WHERE correlation_id = $1 AND message_type = 'order.cmd.cancel'",
    )
    .bind(saga_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(trace.as_deref(), Some(traceparent));
    assert_eq!(step.as_deref(), Some("create_order"));
    let (_, changed) = engine
        .operate(
            saga_id,
            Input::Cancel {
                reason: "again".into(),
            },
        )
        .await
        .unwrap();
    assert!(!changed, "a second cancel is ignored");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_group_of_inputs_ends_where_one_at_a_time_would(pool: PgPool) {
    let engine = Engine::new(pool.clone(), vec![checkout()]);
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let mut orders = Vec::new();
    for id in &ids {
        let sent = handle(&engine, &pool, &start_message(*id)).await;
        orders.push(sent[0].payload["order_id"].clone());
    }
    let (late, later) = (Uuid::now_v7(), Uuid::now_v7());
    let created = |i: usize| reply(ids[i], "order.evt.created", json!({"order_id": orders[i]}));
    let group = [
        created(0),
        created(1),
        // Re-sent: ignored, and logged as such.
        created(0),
        // Two transitions of one saga in one group.
        reply(
            ids[1],
            "inventory.evt.reservation_failed",
            json!({"order_id": orders[1], "reason": "no stock"}),
        ),
        // Starts are inserted together; a saga started twice in the group, or started before,
        // starts once.
        start_message(late),
        start_message(later),
        start_message(late),
        start_message(ids[3]),
        // A reply for no saga passes by.
        reply(Uuid::now_v7(), "order.evt.created", json!({})),
        created(2),
    ];
    let messages: Vec<&Envelope> = group.iter().collect();
    let mut tx = pool.begin().await.unwrap();
    let sent = store::TxHandler::apply_all(&engine, &mut tx, &messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut sent_types = types(&sent);
    sent_types.sort_unstable();
    assert_eq!(
        sent_types,
        [
            "inventory.cmd.reserve",
            "inventory.cmd.reserve",
            "inventory.cmd.reserve",
            "order.cmd.cancel",
            "order.cmd.create",
            "order.cmd.create",
            "saga.evt.updated",
            "saga.evt.updated",
            "saga.evt.updated",
            "saga.evt.updated",
            "saga.evt.updated",
            "saga.evt.updated",
        ]
    );
    let expected_log: [(Uuid, &[bool], i64); 6] = [
        (ids[0], &[true, true, false], 2),
        (ids[1], &[true, true, true], 3),
        (ids[2], &[true, true], 2),
        (ids[3], &[true], 1),
        (late, &[true], 1),
        (later, &[true], 1),
    ];
    for (saga_id, applied, version) in expected_log {
        let stored = repo::get(&pool, saga_id).await.unwrap().unwrap();
        assert_eq!(stored.version, version, "saga {saga_id}");
        let log = repo::log(&pool, saga_id).await.unwrap();
        assert_eq!(log.iter().map(|e| e.applied).collect::<Vec<_>>(), applied);
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=applied.len() as i32).collect::<Vec<_>>()
        );
        let (replayed, _) =
            machine::replay(&checkout(), saga_id, log.iter().map(|e| (&e.input.0, e.at))).unwrap();
        assert_eq!(replayed, stored, "saga {saga_id} replays to its row");
    }
    let compensating = repo::get(&pool, ids[1]).await.unwrap().unwrap();
    assert_eq!(compensating.status, SagaStatus::Compensating);
}

/// A step's update of a saga row touches no index (PostgreSQL's HOT update): no index holds
/// the deadline that every step moves (migration 0012). The counters are this transaction's.
#[sqlx::test(migrations = "../../migrations")]
async fn a_step_rewrites_the_saga_row_without_touching_its_indexes(pool: PgPool) {
    let engine = Engine::new(pool.clone(), vec![checkout()]);
    let saga_id = Uuid::now_v7();
    let sent = handle(&engine, &pool, &start_message(saga_id)).await;
    let order_id = sent[0].payload["order_id"].clone();

    let created = reply(saga_id, "order.evt.created", json!({"order_id": order_id}));
    let mut tx = pool.begin().await.unwrap();
    let sent = store::TxHandler::apply_all(&engine, &mut tx, &[&created])
        .await
        .unwrap();
    assert_eq!(
        types(&sent)[0],
        "inventory.cmd.reserve",
        "the step moved on"
    );
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('sagas.sagas'::regclass), \
                pg_stat_get_xact_tuples_hot_updated('sagas.sagas'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((updated, hot), (1, 1), "one update, and it was HOT");
}

/// Groups that reply to the same sagas at once wait for each other's locks; each then appends
/// after what the other logged (the log position is read after the lock, never from an older
/// snapshot), so every group commits and the logs have no gap and no clash.
#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_groups_on_the_same_sagas_log_in_turn(pool: PgPool) {
    let engine = Engine::new(pool.clone(), vec![checkout()]);
    let ids = [Uuid::now_v7(), Uuid::now_v7()];
    for id in ids {
        handle(&engine, &pool, &start_message(id)).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (engine, pool) = (engine.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let group: Vec<Envelope> = ids
                .iter()
                .map(|id| reply(*id, "order.evt.created", json!({})))
                .collect();
            let messages: Vec<&Envelope> = group.iter().collect();
            let mut tx = pool.begin().await.unwrap();
            store::TxHandler::apply_all(&engine, &mut tx, &messages)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for id in ids {
        let log = repo::log(&pool, id).await.unwrap();
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=11).collect::<Vec<_>>()
        );
        assert_eq!(
            log.iter().filter(|e| e.applied).count(),
            2,
            "the start and one reply"
        );
        assert_eq!(repo::get(&pool, id).await.unwrap().unwrap().version, 2);
    }
}
