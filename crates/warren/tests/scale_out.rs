//! Scale-out: two of every component, each its own process, on one broker and one database.
//! Replicas of a worker compete for its queue's messages; the checkout invariants still hold,
//! every process answers `/metrics`, and one checkout keeps one trace id in every log line of
//! every component it touched.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use support::{System, free_port, saga_id};

/// Every component, as `warren run` names them.
fn components() -> Vec<&'static str> {
    components::all().iter().map(|c| c.name).collect()
}
/// Where each replica's messages come from, for the components that consume during checkouts.
const QUEUES: [(&str, &str); 5] = [
    ("orchestrator", "saga.replies"),
    ("order", "order.commands"),
    ("inventory", "inventory.commands"),
    ("payment", "payment.commands"),
    ("notification", "notification.events"),
];
const CHECKOUTS: usize = 60;
/// A trace the client brings; the gateway must join it.
const TRACE_ID: &str = "5ca1e0000000000000000000000000ed";

#[tokio::test]
async fn two_of_every_component_share_the_work_and_keep_the_invariants_and_the_trace() {
    let mut system = System::new().await;
    // Fourteen processes share PostgreSQL's connections.
    system.db_pool = 2;
    system.env = vec![
        ("WARREN_LOG_FORMAT".into(), "json".into()),
        // Every handled message logs one line (at debug) inside its span.
        ("RUST_LOG".into(), "info,bus::consumer=debug".into()),
    ];
    let second_gateway = free_port();
    let mut replicas: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for replica in 0..2 {
        for component in components() {
            let index = if component == "gateway" && replica == 1 {
                system.spawn_at(&[component], second_gateway)
            } else {
                system.spawn(&[component])
            };
            replicas.entry(component).or_default().push(index);
        }
    }
    let gateways = [
        system.base.clone(),
        format!("http://127.0.0.1:{second_gateway}"),
    ];
    for gateway in &gateways {
        system.answers(&format!("{gateway}/readyz")).await;
    }
    for indexes in replicas.values() {
        for &index in indexes {
            system
                .answers(&system.metrics_url(index).replace("/metrics", "/readyz"))
                .await;
        }
    }

    // Stock for 40 of the 60 units asked for; one customer who cannot pay.
    system
        .seed(
            &[("SKU-1", 700, 40), ("SKU-2", 300, 1_000)],
            &[("c-0", 0), ("c-1", 1_000_000), ("c-2", 1_000_000)],
        )
        .await;

    // The first checkout brings its own trace.
    let traced = system
        .client
        .post(format!("{}/v1/checkouts", gateways[1]))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({"customer_id": "c-1", "items": [{"sku": "SKU-2", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 202);
    let answered = traced.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(
        answered.starts_with(&format!("00-{TRACE_ID}-")),
        "the gateway joins the caller's trace: {answered}"
    );
    assert_ne!(answered, format!("00-{TRACE_ID}-00f067aa0ba902b7-01"));
    let traced_saga = saga_id(&traced.json::<Value>().await.unwrap());

    for i in 1..CHECKOUTS {
        let gateway = &gateways[i % 2];
        let customer = format!("c-{}", i % 3);
        let response = system
            .client
            .post(format!("{gateway}/v1/checkouts"))
            .json(&json!({"customer_id": customer, "items": [{"sku": "SKU-1", "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    system.all_terminal(CHECKOUTS as i64).await;
    let traced_state = system.follow(&traced_saga).await.pop().unwrap();
    assert_eq!(traced_state["state"], "completed", "{traced_state}");

    let verify = system
        .cli(&["--json", "chaos", "verify", "--wait", "30s"])
        .await;
    let report = verify.json();
    assert_eq!(report["holds"], true, "invariants broken: {report:#}");
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM sagas.sagas GROUP BY status ORDER BY 1")
            .fetch_all(&system.pool)
            .await
            .unwrap();
    let states: BTreeMap<String, i64> = states.into_iter().collect();
    assert!(
        states.get("completed").copied().unwrap_or(0) > 0
            && states.get("compensated").copied().unwrap_or(0) > 0,
        "both outcomes happen: {states:?}"
    );

    // Both replicas of each consumer took a share, as their own metrics say.
    for (component, queue) in QUEUES {
        for &index in &replicas[component] {
            let text = metrics(&system, index).await;
            let consumed = sum(&text, "warren_messages_consumed_total", &[("queue", queue)]);
            assert!(
                consumed > 0.0,
                "{component} replica {index} consumed nothing from {queue}"
            );
            assert!(text.contains("warren_handler_duration_seconds_bucket"));
        }
    }
    let mut started = 0.0;
    for &index in &replicas["orchestrator"] {
        let text = metrics(&system, index).await;
        started += sum(&text, "warren_sagas_started_total", &[("saga", "checkout")]);
    }
    assert_eq!(
        started, CHECKOUTS as f64,
        "sagas started, over both orchestrators"
    );
    for &index in &replicas["gateway"] {
        let text = metrics(&system, index).await;
        let posted = sum(
            &text,
            "warren_http_requests_total",
            &[("route", "/v1/checkouts"), ("status", "202")],
        );
        assert!(posted > 0.0, "gateway {index} counted no checkout");
        assert!(
            sum(
                &text,
                "warren_messages_published_total",
                &[("type", "saga.cmd.start")]
            ) > 0.0
        );
    }
    for &index in &replicas["image"] {
        assert!(metrics(&system, index).await.contains("warren_build_info"));
    }

    // The traced checkout: every line about it names its trace, in every component it touched.
    let mut touched = BTreeSet::new();
    let mut steps = BTreeSet::new();
    let mut hops = BTreeSet::new();
    for (component, indexes) in &replicas {
        for &index in indexes {
            let text = std::fs::read_to_string(system.log_file(index)).unwrap();
            for line in text.lines().filter(|l| l.contains(&traced_saga)) {
                let entry: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{component}: not a JSON log line ({e}): {line}"));
                assert_eq!(
                    field(&entry, "trace_id").as_deref(),
                    Some(TRACE_ID),
                    "{component}: a line about the saga without its trace id: {line}"
                );
                if let Some(step) = field(&entry, "step") {
                    steps.insert(step);
                }
                if let Some(span) = field(&entry, "span_id") {
                    hops.insert(span);
                }
                touched.insert(*component);
            }
        }
    }
    // Every component but the image worker, which a checkout never reaches.
    for component in components().into_iter().filter(|c| *c != "image") {
        assert!(
            touched.contains(component),
            "no {component} line about the traced saga; touched: {touched:?}"
        );
    }
    // Each message handled is a hop of its own: the start, four commands, four replies, and
    // the confirmed order's event at inventory and notification.
    assert!(hops.len() >= 11, "hops of the traced saga: {hops:?}");
    for step in [
        "create_order",
        "reserve_inventory",
        "charge_payment",
        "confirm_order",
    ] {
        assert!(steps.contains(step), "no line names step {step}: {steps:?}");
    }
    system.stop().await;
}

async fn metrics(system: &System, index: usize) -> String {
    let response = system
        .client
        .get(system.metrics_url(index))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The sum of a metric's samples whose labels include all of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A field of a JSON log line: the event's own, or its innermost span's that has it.
fn field(entry: &Value, name: &str) -> Option<String> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    if let Some(value) = entry.get(name).and_then(text) {
        return Some(value);
    }
    entry["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .chain(std::iter::once(&entry["span"]))
        .find_map(|span| span.get(name).and_then(text))
}
