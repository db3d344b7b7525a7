//! Changing saga definitions from the CLI, end to end: the replay gate before a deploy
//! (`warren saga check --against-history`) and moving running sagas onto another version
//! (`warren saga migrate`), with the real binary against a real system's database.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::path::PathBuf;

use serde_json::json;
use support::{CHECKOUT, System, applied_inputs, saga_id, swapped_checkout};

/// The replay gate before a deploy: a change every recorded checkout replays through passes
/// (exit 0), and one that would move them onto other steps fails (exit 1), saying where they
/// part, how many, and what the change does to the version they ran on.
#[tokio::test]
async fn check_against_history_passes_a_timeout_change_and_flags_reorders_and_removals() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 10)], &[("rich", 10_000), ("poor", 1000)])
        .await;
    for (customer, end) in [
        ("rich", "completed"),
        ("rich", "completed"),
        ("poor", "compensated"),
    ] {
        let (_, answer) = system.checkout(customer, &[("SKU-1", 1)], None).await;
        let last = system.follow(&saga_id(&answer)).await.pop().unwrap();
        assert_eq!(last["state"], end, "{last}");
    }
    let gate = |file: PathBuf| {
        let system = &system;
        async move {
            let file = file.display().to_string();
            system
                .cli(&["saga", "check", "--against-history", "--json", &file])
                .await
        }
    };

    let same = gate(system.write_definition("gate-same", CHECKOUT)).await;
    let report = same.expect(0).json();
    assert_eq!(
        (&report[0]["sagas"], &report[0]["unchanged"]),
        (&json!(3), &json!(3))
    );
    assert_eq!(report[0]["versions"][0]["changes"], json!([]), "{report:#}");

    // A longer timeout: no recorded checkout timed out, so none would go otherwise.
    let patient = CHECKOUT.replacen("timeout = \"10s\"", "timeout = \"30s\"", 1);
    let report = gate(system.write_definition("gate-patient", &patient))
        .await
        .expect(0)
        .json();
    assert_eq!(report[0]["unchanged"], 3, "{report:#}");
    let listed = report[0]["versions"][0]["changes"].to_string();
    assert!(listed.contains("step create_order: timeout"), "{listed}");

    // Reordered: every history parts at its start.
    let ran = gate(system.write_definition("gate-swapped", &swapped_checkout())).await;
    let report = ran.expect(1).json();
    let forks = report[0]["forks"].as_array().unwrap();
    assert_eq!(forks.len(), 1, "{report:#}");
    assert_eq!(forks[0]["sagas"], 3);
    assert_eq!(forks[0]["fork"]["kind"], "sends");
    assert_eq!(forks[0]["fork"]["input"], "start");
    assert_eq!(forks[0]["examples"].as_array().unwrap().len(), 3);
    assert!(
        report[0]["versions"][0]["changes"][0]
            .as_str()
            .unwrap()
            .starts_with("steps reordered"),
        "{report:#}"
    );

    // The confirmation removed: the two completed checkouts part after their charge; the
    // declined one never got that far.
    let parts: Vec<&str> = CHECKOUT.split("[[step]]").collect();
    let shortened = parts[..4].join("[[step]]");
    let file = system.write_definition("gate-shortened", &shortened);
    let report = gate(file.clone()).await.expect(1).json();
    assert_eq!(report[0]["unchanged"], 1, "{report:#}");
    assert_eq!(report[0]["forks"][0]["sagas"], 2, "{report:#}");
    assert_eq!(
        report[0]["forks"][0]["fork"]["input"],
        "reply payment.evt.charged"
    );
    // For people: where, how many, and the verdict.
    let file = file.display().to_string();
    let text = system
        .cli(&["saga", "check", "--against-history", &file])
        .await
        .expect(1)
        .stdout;
    assert!(text.contains("- step confirm_order removed"), "{text}");
    assert!(
        text.contains("2 would take another path (0 of them running)"),
        "{text}"
    );
    assert!(text.contains("FAIL"), "{text}");
    system.stop().await;
}

/// `warren saga migrate`: sagas waiting at their charge (no payment service runs) move to a
/// version whose only change is later in the saga, one at a time or after a dry run; none moves
/// onto steps in another order.
#[tokio::test]
async fn migrate_moves_waiting_sagas_whose_history_fits_and_leaves_the_rest() {
    let mut system = System::new().await;
    let slow = |text: &str| text.replace("timeout = \"10s\"", "timeout = \"60s\"");
    let v1 = system.write_definition("migrate-v1", &slow(CHECKOUT));
    system.sagas_dir = Some(v1.parent().unwrap().to_owned());
    system.spawn(&["gateway", "orchestrator", "order", "inventory"]);
    system.ready().await;
    let product = json!({"name": "Mug", "price_cents": 1250, "available": 10});
    assert_eq!(system.put("/v1/products/SKU-1", product).await, 202);
    system
        .until("the product to arrive", || async {
            system.get("/v1/products/SKU-1").await.0 == 200
        })
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, answer) = system.checkout("c-1", &[("SKU-1", 1)], None).await;
        ids.push(saga_id(&answer));
    }
    system
        .until("both sagas to wait for their charge", || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sagas.sagas WHERE current_step = 'charge_payment'",
            )
            .fetch_one(&system.pool)
            .await
            .unwrap()
                == 2
        })
        .await;
    let version = |id: String| {
        let pool = system.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT definition_version FROM sagas.sagas WHERE saga_id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let from = version(ids[0].clone()).await;

    // Steps in another order: both histories part from it at their start; both stay.
    let swapped = system.write_definition("migrate-swapped", &slow(&swapped_checkout()));
    let swapped = swapped.display().to_string();
    let ran = system
        .cli(&[
            "saga", "migrate", "--from", &from, "--to", &swapped, "--json",
        ])
        .await;
    let report = ran.expect(1).json();
    let sagas = report["sagas"].as_array().unwrap();
    assert_eq!(sagas.len(), 2, "{report:#}");
    assert!(
        sagas
            .iter()
            .all(|s| s["moved"] == false && s["reason"].as_str().unwrap().contains("another path"))
    );

    // Only the confirmation's timeout changes: what the sagas did so far fits it.
    let last = slow(CHECKOUT).rfind("timeout = \"60s\"").unwrap();
    let mut v2 = slow(CHECKOUT);
    v2.replace_range(last..last + "timeout = \"60s\"".len(), "timeout = \"90s\"");
    let v2 = system
        .write_definition("migrate-v2", &v2)
        .display()
        .to_string();
    let dry = system
        .cli(&[
            "saga",
            "migrate",
            "--from",
            &from,
            "--to",
            &v2,
            "--saga",
            &ids[0],
            "--dry-run",
        ])
        .await
        .expect(0);
    assert!(dry.stdout.contains("would move 1 of 1"), "{}", dry.stdout);
    assert_eq!(
        version(ids[0].clone()).await,
        from,
        "a dry run moves nothing"
    );
    system
        .cli(&[
            "saga", "migrate", "--from", &from, "--to", &v2, "--saga", &ids[0],
        ])
        .await
        .expect(0);
    let moved = version(ids[0].clone()).await;
    assert_ne!(moved, from);
    assert_eq!(version(ids[1].clone()).await, from, "only the one named");
    let shown = system
        .cli(&["saga", "show", &ids[0], "--json"])
        .await
        .expect(0)
        .json();
    assert!(
        applied_inputs(&shown)
            .last()
            .unwrap()
            .contains("moved to version"),
        "{shown:#}"
    );
    // The moved saga's log replays through the version it is on now.
    system.cli(&["saga", "replay", &ids[0]]).await.expect(0);

    let unknown = system
        .cli(&["saga", "migrate", "--from", "0000000000000000", "--to", &v2])
        .await;
    unknown.expect(3);
    system.stop().await;
}
