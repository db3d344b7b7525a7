//! The engine against real PostgreSQL: rows, logs, outbox, replay, concurrent orchestrators.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::sync::Arc;
use std::time::Duration;

use contracts::messages::SagaStart;
use contracts::{Envelope, Schemas};
use orchestrator::{Clock, Engine, repo};
use saga::Definition;
use saga::machine::{self, Input, SagaStatus};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

fn checkout() -> Definition {
    Definition::from_toml(include_str!("../../../sagas/checkout.toml")).unwrap()
}

/// Checkout with timeouts short enough to pass during a test.
fn hasty_checkout() -> Definition {
    let mut definition = checkout();
    for step in &mut definition.steps {
        step.timeout = Some(Duration::from_millis(20));
        step.attempts = 1;
    }
    definition
}

/// An engine on a machine whose clock runs an hour behind the database's and was never
/// synced: every deadline it writes has passed already, so sweeps find work without waiting.
fn overdue(engine: Engine) -> Engine {
    engine.with_clock(Arc::new(Clock::skewed(chrono::Duration::hours(-1))))
}

fn start_message(saga_id: Uuid) -> Envelope {
    let Value::Object(input) = json!({"order_id": Uuid::now_v7(), "customer_id": "c-1",
                                      "items": [{"sku": "SKU-1", "quantity": 1}]})
    else {
        unreachable!()
    };
    Envelope::new(
        "gateway",
        &SagaStart {
            saga_id,
            saga: "checkout".into(),
            input,
            request_hash: Some("h1".into()),
        },
    )
}

fn reply(saga_id: Uuid, message_type: &str, payload: Value) -> Envelope {
    Envelope::raw("test", message_type, payload).with_correlation(saga_id)
}

async fn handle(engine: &Engine, pool: &PgPool, message: &Envelope) -> Vec<Envelope> {
    let mut tx = pool.begin().await.unwrap();
    let out = store::TxHandler::apply(engine, &mut tx, message)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    out
}

fn types(messages: &[Envelope]) -> Vec<&str> {
    messages.iter().map(|m| m.message_type.as_str()).collect()
}

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

/// Checkout with its first two steps swapped: reserve the stock, then create the order.
fn reordered_checkout() -> Definition {
    let mut definition = checkout();
    definition.steps.swap(0, 1);
    definition.version = Some("reordered".into());
    definition
}

async fn handle_group(engine: &Engine, pool: &PgPool, messages: &[&Envelope]) -> Vec<Envelope> {
    let mut tx = pool.begin().await.unwrap();
    let out = store::TxHandler::apply_all(engine, &mut tx, messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    out
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

/// Sets a field of a saga's stored state, as a hand edit or an old bug might have.
async fn tamper(pool: &PgPool, saga_id: Uuid, field: &str, value: Value) {
    sqlx::query("UPDATE sagas.sagas SET state = jsonb_set(state, $2, $3) WHERE saga_id = $1")
        .bind(saga_id)
        .bind(vec![field.to_owned()])
        .bind(value)
        .execute(pool)
        .await
        .unwrap();
}

async fn status_of(pool: &PgPool, saga_id: Uuid) -> (SagaStatus, Option<String>) {
    let saga = repo::get(pool, saga_id).await.unwrap().unwrap();
    (saga.status, saga.error)
}

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
        assert!(
            (5.0..=10.0).contains(&left),
            "{left} s left of a 10 s timeout"
        );
        assert_eq!(engine.sweep(100).await.unwrap(), 0, "no early timeout");
    }
}
