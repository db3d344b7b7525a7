//! `warren bench` against real processes: it seeds, runs the checkouts it was asked for with
//! the share of declines it was asked for, and reports figures and the invariants.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use support::System;

#[tokio::test]
async fn the_bench_runs_every_checkout_through_the_gateway_and_reports_figures() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;

    let ran = system
        .cli(&[
            "--json",
            "bench",
            "--checkouts",
            "40",
            "--concurrency",
            "8",
            "--decline-share",
            "0.1",
            "--via",
            "http",
            "--gateway",
            &system.base,
            "--token",
            &system.token,
            "--floor-messages",
            "500",
        ])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let results = ran.json();
    assert_eq!(results["outcomes"]["completed"], 36, "{results:#}");
    assert_eq!(results["outcomes"]["compensated"], 4, "{results:#}");
    assert_eq!(results["timed_out"], 0);
    assert_eq!(results["invariants"]["holds"], true, "{results:#}");
    assert!(results["sagas_per_second"].as_f64().unwrap() > 0.0);
    let latency = &results["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() > 0.0);
    assert!(latency["p50"].as_f64() <= latency["p99"].as_f64());
    assert!(latency["p99"].as_f64() <= latency["max"].as_f64());
    assert!(
        results["broker_floor_messages_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Every checkout saga is at least a start, four commands, four replies and their events.
    assert!(
        results["saga_messages_per_second"].as_f64().unwrap()
            > 9.0 * results["sagas_per_second"].as_f64().unwrap(),
        "{results:#}"
    );
    assert_eq!(results["history"]["finished_sagas"], 0);
    // What a saga cost, read from this machine's processes and the servers' own counters
    // (the broker's are node-wide, so other tests' messages only add to them).
    let cost = &results["cost"];
    for part in ["PostgreSQL", "RabbitMQ", "all"] {
        assert!(
            cost["cpu_ms_per_saga"][part].as_f64().unwrap() > 0.0,
            "{part}: {cost:#}"
        );
    }
    assert!(
        cost["commits_per_saga"].as_f64().unwrap() >= 1.0,
        "{cost:#}"
    );
    assert!(
        cost["wal_bytes_per_saga"].as_f64().unwrap() > 0.0,
        "{cost:#}"
    );
    // A start, four commands and four replies at the least.
    let published = cost["broker_published_per_saga"].as_f64().unwrap();
    assert!(published >= 9.0, "{cost:#}");
    assert!(cost["broker_enqueued_per_saga"].as_f64().unwrap() >= published);
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas.sagas")
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(sagas, 40);

    // A long history, copied from the finished sagas, leaves every invariant standing.
    let grown = system
        .cli(&[
            "--json",
            "bench",
            "--checkouts",
            "20",
            "--concurrency",
            "8",
            "--floor-messages",
            "0",
            "--history",
            "200",
        ])
        .await;
    assert_eq!(grown.code, 0, "{grown:?}");
    let results = grown.json();
    assert_eq!(results["history"]["finished_sagas"], 200, "{results:#}");
    assert_eq!(results["history"]["added"], 160, "{results:#}");
    assert_eq!(results["invariants"]["holds"], true, "{results:#}");
    let (sagas, logs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sagas.sagas), \
                (SELECT count(DISTINCT saga_id) FROM sagas.saga_log)",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert_eq!((sagas, logs), (220, 220));
    system.stop().await;
}

#[tokio::test]
async fn the_bench_refuses_nonsense_and_an_absent_broker() {
    let system = System::new().await;
    let nonsense = system.cli(&["bench", "--decline-share", "1.5"]).await;
    assert_eq!(nonsense.code, 2, "{nonsense:?}");
    let absent = support::Ran::of(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["bench", "--checkouts", "1"])
            .env("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/warren")
            .env("WARREN_CONNECT_TIMEOUT_SECS", "1"),
    )
    .await;
    assert_eq!(absent.code, 4, "{absent:?}");
    system.stop().await;
}
