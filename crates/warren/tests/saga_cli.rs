//! `warren saga ...` end to end: the real binary against a real system's database, after
//! real checkouts completed, were compensated, or failed for want of an order service.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{CHECKOUT, Ran, System, applied_inputs, saga_id, swapped_checkout};

/// Runs `warren <args>` against the system's database (and its saga definitions, when it has
/// its own).
async fn warren(system: &System, args: &[&str]) -> Ran {
    run(args, &system.database_url, system.sagas_dir.as_deref()).await
}

/// Runs `warren <args>` against a database, with no broker.
async fn run(args: &[&str], database_url: &str, sagas_dir: Option<&Path>) -> Ran {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    command
        .args(args)
        .env("WARREN_DATABASE_URL", database_url)
        .env("WARREN_CONNECT_TIMEOUT_SECS", "10")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .env_remove("WARREN_SAGAS_DIR");
    if let Some(dir) = sagas_dir {
        command.env("WARREN_SAGAS_DIR", dir);
    }
    Ran::of(&mut command).await
}

/// Checkout for a compensation outage: one-second timeouts and only two compensation attempts,
/// so a silent order service leaves the saga `failed` within seconds.
fn short_fuses(text: &str) -> String {
    let text = text
        .replace("timeout = \"10s\"", "timeout = \"1s\"")
        .replace("attempts = 8", "attempts = 2")
        .replace("backoff = \"1s\"", "backoff = \"2s\"")
        .replace("max_backoff = \"30s\"", "max_backoff = \"2s\"");
    assert!(!text.contains("\"10s\"") && text.contains("attempts = 2\nbackoff = \"2s\""));
    text
}

#[tokio::test]
async fn show_and_replay_explain_completed_and_compensated_checkouts() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 10)], &[("rich", 10_000), ("poor", 1000)])
        .await;
    let (_, answer) = system.checkout("rich", &[("SKU-1", 1)], None).await;
    let completed = saga_id(&answer);
    let (_, answer) = system.checkout("poor", &[("SKU-1", 1)], None).await;
    let declined = saga_id(&answer);
    let last = system.follow(&completed).await.pop().unwrap();
    assert_eq!(last["state"], "completed", "{last}");
    let last = system.follow(&declined).await.pop().unwrap();
    assert_eq!(last["state"], "compensated", "{last}");

    // The declined checkout's timeline: every step, then the compensations in reverse.
    let shown = warren(&system, &["saga", "show", &declined, "--json"])
        .await
        .expect(0)
        .json();
    let mut sent: Vec<(String, String, bool)> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["commands"].as_array().unwrap().clone())
        .map(|c| {
            (
                c["message_type"].as_str().unwrap().to_owned(),
                c["step"].as_str().unwrap().to_owned(),
                c["compensation"].as_bool().unwrap(),
            )
        })
        .collect();
    sent.dedup(); // a step re-sent after a slow answer is still the same step
    let expected = [
        ("order.cmd.create", "create_order", false),
        ("inventory.cmd.reserve", "reserve_inventory", false),
        ("payment.cmd.charge", "charge_payment", false),
        ("inventory.cmd.release", "reserve_inventory", true),
        ("order.cmd.cancel", "create_order", true),
    ];
    assert_eq!(
        sent,
        expected
            .iter()
            .map(|(t, s, c)| ((*t).to_owned(), (*s).to_owned(), *c))
            .collect::<Vec<_>>(),
        "{shown:#}"
    );
    assert_eq!(
        applied_inputs(&shown),
        [
            "start",
            "reply order.evt.created",
            "reply inventory.evt.reserved",
            "reply payment.evt.declined",
            "reply inventory.evt.released",
            "reply order.evt.cancelled",
        ],
        "{shown:#}"
    );
    let decline = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["summary"] == "reply payment.evt.declined")
        .unwrap();
    assert!(decline["message_id"].is_string(), "{decline}");
    assert!(
        decline["note"]
            .as_str()
            .unwrap()
            .contains("charge_payment failed"),
        "{decline}"
    );
    assert_eq!(shown["saga"]["state"], "compensated");
    let steps: Vec<(&str, &str)> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("create_order", "compensated"),
            ("reserve_inventory", "compensated"),
            ("charge_payment", "failed"),
            ("confirm_order", "pending"),
        ]
    );

    // The same for people.
    let human = warren(&system, &["saga", "show", &declined])
        .await
        .expect(0);
    for text in [
        "create_order",
        "reserve_inventory",
        "charge_payment",
        "confirm_order",
        "inventory.cmd.release  compensation of reserve_inventory",
        "order.cmd.cancel  compensation of create_order",
        "reply payment.evt.declined (message ",
        "final state: compensated",
        "error: charge_payment failed: insufficient funds",
    ] {
        assert!(
            human.stdout.contains(text),
            "no {text:?} in\n{}",
            human.stdout
        );
    }

    // Replay reproduces both from their logs.
    let replayed = warren(&system, &["saga", "replay", &completed, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(replayed["divergence"], Value::Null, "{replayed:#}");
    assert_eq!(replayed["replayed_state"], "completed");
    let human = warren(&system, &["saga", "replay", &declined])
        .await
        .expect(0);
    assert!(
        human
            .stdout
            .contains("ok: replay reproduces the log and the stored state (compensated)"),
        "{}",
        human.stdout
    );
    let all = warren(
        &system,
        &["saga", "replay", "--all", "--since", "1h", "--json"],
    )
    .await
    .expect(0)
    .json();
    assert_eq!(
        (all["replayed"].as_u64(), all["diverging"].as_u64()),
        (Some(2), Some(0)),
        "{all:#}"
    );

    // A definition with two steps swapped does not reproduce the recorded checkout.
    let swapped = system.write_definition("swapped", &swapped_checkout());
    let swapped = swapped.to_str().unwrap();
    let diverged = warren(
        &system,
        &[
            "saga",
            "replay",
            &declined,
            "--definition",
            swapped,
            "--json",
        ],
    )
    .await
    .expect(1)
    .json();
    assert_eq!(diverged["divergence"]["seq"], 2, "{diverged:#}");
    assert!(
        diverged["divergence"]["reason"]
            .as_str()
            .unwrap()
            .contains("reply order.evt.created was applied in the log but ignored on replay"),
        "{diverged:#}"
    );
    let human = warren(
        &system,
        &["saga", "replay", "--all", "--definition", swapped],
    )
    .await
    .expect(1);
    assert!(
        human.stdout.contains("diverges at seq 2"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("2 sagas replayed, 2 diverge"),
        "{}",
        human.stdout
    );

    // Both ran on one version of checkout, the current one, and nothing can be retired. Seen
    // from a folder where checkout has changed, that version is no longer the one new sagas
    // start on, and with no saga left to advance on it, it could be retired.
    let version = shown["definition_version"].as_str().unwrap().to_owned();
    let checkout_versions = |all: Value| -> Vec<Value> {
        all.as_array()
            .unwrap()
            .iter()
            .filter(|v| v["saga"] == "checkout")
            .cloned()
            .collect()
    };
    let versions = checkout_versions(
        warren(&system, &["saga", "versions", "--json"])
            .await
            .expect(0)
            .json(),
    );
    assert_eq!(versions.len(), 1, "{versions:?}");
    let v = &versions[0];
    assert_eq!(v["digest"], version.as_str(), "{v}");
    assert_eq!(
        (&v["completed"], &v["compensated"], &v["running"]),
        (&json!(1), &json!(1), &json!(0))
    );
    assert_eq!(
        (&v["current"], &v["retirable"]),
        (&json!(true), &json!(false)),
        "{v}"
    );
    let changed = run(
        &["saga", "versions", "--json"],
        &system.database_url,
        Path::new(swapped).parent(),
    )
    .await
    .expect(0)
    .json();
    let v = &checkout_versions(changed)[0];
    assert_eq!(v["digest"], version.as_str(), "{v}");
    assert_eq!(
        (&v["current"], &v["retirable"]),
        (&json!(false), &json!(true)),
        "{v}"
    );
    let human = warren(&system, &["saga", "list", "--saga", "checkout"])
        .await
        .expect(0);
    assert!(human.stdout.contains(&version), "{}", human.stdout);

    // Listing, newest first; retrying a completed saga changes nothing; unknown ids are 3.
    let listed = warren(&system, &["saga", "list", "--json"])
        .await
        .expect(0)
        .json();
    let listed = listed.as_array().unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&completed.as_str()) && ids.contains(&declined.as_str()));
    let created: Vec<&str> = listed
        .iter()
        .map(|s| s["created_at"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    let human = warren(&system, &["saga", "list", "--saga", "checkout"])
        .await
        .expect(0);
    assert!(human.stdout.contains(&completed) && human.stdout.contains(&declined));
    let ignored = warren(&system, &["saga", "retry", &completed])
        .await
        .expect(1);
    assert!(
        ignored
            .stdout
            .contains("retry ignored: the saga is already completed"),
        "{}",
        ignored.stdout
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let missing = warren(&system, &["saga", "show", &unknown]).await.expect(3);
    assert!(
        missing.stderr.contains(&format!("no saga {unknown}")),
        "{}",
        missing.stderr
    );
    warren(&system, &["saga", "replay", &unknown])
        .await
        .expect(3);
    warren(&system, &["saga", "retry", &unknown])
        .await
        .expect(3);

    let _ = std::fs::remove_dir_all(Path::new(swapped).parent().unwrap());
    system.stop().await;
}

#[tokio::test]
async fn a_saga_failed_by_a_compensation_outage_is_found_replayed_and_retried_to_compensated() {
    let mut system = System::new().await;
    let definition = system.write_definition("sagas", &short_fuses(CHECKOUT));
    system.sagas_dir = Some(definition.parent().unwrap().to_owned());
    // No order service: the order is never created, and neither is its cancel answered.
    system.spawn(&["gateway", "orchestrator", "inventory", "payment"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 10)], &[("c-1", 10_000)])
        .await;
    let (_, answer) = system.checkout("c-1", &[("SKU-1", 1)], None).await;
    let id = saga_id(&answer);
    let last = system.follow(&id).await.pop().unwrap();
    assert_eq!(last["state"], "failed", "{last}");

    let failed = warren(&system, &["saga", "list", "--state", "failed", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed:#}");
    assert_eq!(failed[0]["saga_id"], id.as_str());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("compensation of create_order did not succeed after 2 attempts"),
        "{failed:#}"
    );
    let none = warren(&system, &["saga", "list", "--state", "completed", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(none, serde_json::json!([]));
    let human = warren(&system, &["saga", "list", "--state", "failed"])
        .await
        .expect(0);
    assert!(
        human.stdout.contains(&id) && human.stdout.contains("failed"),
        "{}",
        human.stdout
    );

    // The recorded timeouts replay to the same failure through the definition that ran them...
    let replayed = warren(&system, &["saga", "replay", &id, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(replayed["divergence"], Value::Null, "{replayed:#}");
    assert_eq!(replayed["replayed_state"], "failed");
    // ...but not through one that gives create_order a single attempt: the first timeout
    // compensates at once instead of sending the order again.
    let one_attempt = CHECKOUT.replacen("attempts = 2", "attempts = 1", 1);
    assert!(one_attempt.contains("attempts = 1\ncompensation = { command = \"order.cmd.cancel\""));
    let changed = system.write_definition("changed", &short_fuses(&one_attempt));
    let changed = changed.to_str().unwrap();
    let diverged = warren(
        &system,
        &["saga", "replay", &id, "--definition", changed, "--json"],
    )
    .await
    .expect(1)
    .json();
    let seq = diverged["divergence"]["seq"].as_i64().unwrap();
    let at = &diverged["transitions"][usize::try_from(seq - 1).unwrap()];
    assert_eq!(at["input"], "timeout", "{diverged:#}");
    assert_eq!(
        (&at["logged_state"], &at["replayed_state"]),
        (&Value::from("running"), &Value::from("compensating")),
        "{diverged:#}"
    );
    let human = warren(&system, &["saga", "replay", &id, "--definition", changed])
        .await
        .expect(1);
    assert!(
        human.stdout.contains(&format!(
            "diverges at seq {seq}: after timeout the log says running but replay says compensating"
        )),
        "{}",
        human.stdout
    );

    // A failed saga cannot be cancelled: it is no longer running.
    let cancel = warren(
        &system,
        &["saga", "cancel", &id, "--reason", "test", "--json"],
    )
    .await
    .expect(1)
    .json();
    assert_eq!(cancel["applied"], false);
    assert!(
        cancel["note"]
            .as_str()
            .unwrap()
            .contains("only a running saga"),
        "{cancel:#}"
    );

    // The fault goes away: the order service comes back and works off what waited for it.
    system.spawn(&["order"]);
    let order_id = last["order_id"].as_str().unwrap().to_owned();
    system
        .until("the order service to cancel the order", || async {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM orders.orders WHERE order_id = $1::uuid")
                    .bind(&order_id)
                    .fetch_optional(&system.pool)
                    .await
                    .unwrap();
            status.as_deref() == Some("cancelled")
        })
        .await;
    let retried = warren(&system, &["saga", "retry", &id, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(retried["applied"], true, "{retried:#}");
    assert!(
        retried["note"]
            .as_str()
            .unwrap()
            .contains("compensation of create_order sent again"),
        "{retried:#}"
    );
    let last = system.follow(&id).await.pop().unwrap();
    assert_eq!(last["state"], "compensated", "{last}");

    // The whole story, operator retry included, still replays.
    warren(&system, &["saga", "replay", "--all", "--since", "1h"])
        .await
        .expect(0);
    let human = warren(&system, &["saga", "show", &id]).await.expect(0);
    for text in [
        "operator retry",
        "timeout",
        "create_order",
        "final state: compensated",
    ] {
        assert!(
            human.stdout.contains(text),
            "no {text:?} in\n{}",
            human.stdout
        );
    }

    let _ = std::fs::remove_dir_all(definition.parent().unwrap());
    let _ = std::fs::remove_dir_all(Path::new(changed).parent().unwrap());
    system.stop().await;
}

#[tokio::test]
async fn check_and_graph_need_no_database_and_the_rest_say_when_it_is_unreachable() {
    // Nothing listens on port 1.
    let nowhere = "postgres://postgres:postgres@127.0.0.1:1/warren";
    let check = run(&["saga", "check"], nowhere, None).await.expect(0);
    assert!(
        check.stdout.contains("ok built-in checkout"),
        "{}",
        check.stdout
    );
    let graph = run(&["saga", "graph", "checkout"], nowhere, None)
        .await
        .expect(0);
    assert!(graph.stdout.starts_with("flowchart TD"), "{}", graph.stdout);
    let unknown = run(&["saga", "graph", "nope"], nowhere, None)
        .await
        .expect(3);
    assert!(
        unknown.stderr.contains("known: checkout, image"),
        "{}",
        unknown.stderr
    );

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    let output = command
        .args(["saga", "list"])
        .env("WARREN_DATABASE_URL", nowhere)
        .env("WARREN_CONNECT_TIMEOUT_SECS", "1")
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("cannot reach PostgreSQL at postgres://postgres:***@127.0.0.1:1/warren"),
        "{stderr}"
    );
}
