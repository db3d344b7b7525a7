//! `warren dlq` end to end: messages parked for real (by the running consumers, by the broker's
//! own dead-lettering, and by hand exactly as the consumer runner parks them), then listed,
//! shown, redriven selectively and once each, and purged, through the `warren` binary.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::process::Stdio;
use std::time::Duration;

use bus::{Bus, BusSettings, Outgoing, Publisher, amqp};
use contracts::messages::AccountSetBalance;
use contracts::{Envelope, routing};
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use serde_json::{Value, json};
use support::System;
use uuid::Uuid;

/// What one `warren` invocation printed and how it ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:#?}"))
    }

    fn succeeded(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }
}

/// Runs `warren <args>` against a broker URL, with no terminal on standard input.
async fn warren_at(amqp_url: &str, database_url: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_AMQP_URL", amqp_url)
        .env("WARREN_DATABASE_URL", database_url)
        .env("WARREN_CONNECT_TIMEOUT_SECS", "10")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn warren(system: &System, args: &[&str]) -> Run {
    warren_at(
        &testkit::amqp_url_for(&system.vhost),
        &system.database_url,
        args,
    )
    .await
}

/// `dlq list --json`: parked messages per consumer queue.
async fn parked(system: &System) -> Value {
    warren(system, &["--json", "dlq", "list"])
        .await
        .succeeded()
        .json()
}

fn count(listing: &Value, queue: &str) -> u64 {
    queue_of(listing, queue)["count"].as_u64().unwrap()
}

fn queue_of<'a>(listing: &'a Value, queue: &str) -> &'a Value {
    listing["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == queue)
        .unwrap_or_else(|| panic!("{queue} missing from {listing}"))
}

fn message(listing: &Value, id: Uuid) -> &Value {
    listing["queues"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|q| q["messages"].as_array().unwrap())
        .find(|m| m["message_id"] == id.to_string())
        .unwrap_or_else(|| panic!("{id} not listed in {listing}"))
}

async fn connect(system: &System) -> Bus {
    Bus::connect(&BusSettings {
        url: testkit::amqp_url_for(&system.vhost),
        connection_name: "dlq-test".into(),
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap()
}

fn set_balance(customer: &str, balance_cents: i64) -> Envelope {
    Envelope::new(
        "dlq-test",
        &AccountSetBalance {
            customer_id: customer.into(),
            balance_cents,
        },
    )
    .with_correlation(Uuid::now_v7())
}

/// Exactly what the consumer runner publishes when it parks a message it took from `queue`.
fn parked_copy(envelope: &Envelope, queue: &str, reason: &str) -> Outgoing {
    Outgoing {
        exchange: routing::DEAD_LETTER_EXCHANGE.into(),
        routing_key: queue.into(),
        properties: amqp::parked_properties(&amqp::properties(envelope), queue, reason),
        body: amqp::body(envelope),
    }
}

async fn balance(system: &System, customer: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT balance_cents FROM payments.accounts WHERE customer_id = $1")
        .bind(customer)
        .fetch_optional(&system.pool)
        .await
        .unwrap()
}

async fn inbox_rows(system: &System) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments.inbox")
        .fetch_one(&system.pool)
        .await
        .unwrap()
}

/// Has the broker dead-letter one message the way it does on a delivery limit: the message
/// is taken from its consumer queue and rejected without requeue (no consumer runs yet).
async fn dead_letter_by_broker(bus: &Bus, publisher: &Publisher, envelope: &Envelope) {
    let queue = "payment.commands";
    publisher
        .send(&Outgoing::to("", queue, envelope))
        .await
        .unwrap();
    let channel = bus.channel().await.unwrap();
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the message just published");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        envelope.message_id.to_string()
    );
    got.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    channel.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn parked_messages_are_listed_shown_redriven_once_and_purged() {
    let mut system = System::new().await;

    // The broker dead-letters one balance command before any consumer runs.
    warren(&system, &["topology", "apply"]).await.succeeded();
    let bus = connect(&system).await;
    let publisher = bus.publisher().await.unwrap();
    let by_broker = set_balance("c-dlq-3", 910);
    dead_letter_by_broker(&bus, &publisher, &by_broker).await;

    system.spawn(&["all"]);
    system.ready().await;

    // The order service parks what it cannot read: a body that is not JSON...
    let not_json = Envelope::raw("dlq-test", "order.cmd.create", json!({}));
    let mut outgoing = Outgoing::event(&not_json);
    outgoing.body = b"{not json".to_vec();
    publisher.send(&outgoing).await.unwrap();
    // ...and a payload that fails its schema.
    let off_schema = Envelope::raw("dlq-test", "order.cmd.create", json!({"order_id": "nope"}));
    publisher.publish(&off_schema).await.unwrap();
    // Two valid balance commands parked the way the consumer runner parks a message that
    // failed for good after its retries.
    let mut first = set_balance("c-dlq-1", 1234);
    first.attempt = 4;
    let second = set_balance("c-dlq-2", 5678);
    for envelope in [&first, &second] {
        let copy = parked_copy(envelope, "payment.commands", "database unavailable (test)");
        publisher.send(&copy).await.unwrap();
    }

    system
        .until("the messages to be parked", || async {
            let listing = parked(&system).await;
            count(&listing, "order.commands") == 2 && count(&listing, "payment.commands") == 3
        })
        .await;

    // list: every parked message with why and from where; peeking leaves them in place.
    let listing = parked(&system).await;
    assert_eq!(listing["total"], 5, "{listing:#}");
    let reason = |id| message(&listing, id)["reason"].as_str().unwrap().to_owned();
    assert!(reason(not_json.message_id).starts_with("cannot decode"));
    assert!(reason(off_schema.message_id).contains("fails its schema"));
    assert_eq!(reason(first.message_id), "database unavailable (test)");
    let parked_first = message(&listing, first.message_id);
    assert_eq!(parked_first["parked_from"], "payment.commands");
    assert_eq!(parked_first["parked_by"], "warren");
    assert_eq!(parked_first["type"], "payment.cmd.set_balance");
    assert_eq!(parked_first["attempt"], 4);
    assert_eq!(
        parked_first["saga_id"],
        first.correlation_id.unwrap().to_string()
    );
    let parked_by_broker = message(&listing, by_broker.message_id);
    assert_eq!(parked_by_broker["parked_by"], "broker");
    assert_eq!(parked_by_broker["parked_from"], "payment.commands");
    assert!(parked_by_broker["parked_at"].is_string());
    assert!(
        parked_by_broker["reason"]
            .as_str()
            .unwrap()
            .contains("rejected")
    );
    assert_eq!(parked(&system).await["total"], 5, "peeking removed nothing");
    let table = warren(&system, &["dlq", "list"]).await;
    table.succeeded();
    assert!(
        table.stdout.contains(&off_schema.message_id.to_string()),
        "{}",
        table.stdout
    );

    // show: all of one message, payload pretty or raw.
    let shown = warren(
        &system,
        &["--json", "dlq", "show", &off_schema.message_id.to_string()],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(shown["parking_queue"], "order.commands.dead");
    assert_eq!(shown["payload"], json!({"order_id": "nope"}));
    assert_eq!(shown["properties"]["type"], "order.cmd.create");
    assert_eq!(
        shown["headers"][routing::HEADER_PARKED_FROM],
        "order.commands"
    );
    let shown = warren(
        &system,
        &["--json", "dlq", "show", &not_json.message_id.to_string()],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(shown["payload"], Value::Null);
    assert_eq!(shown["body"], "{not json");
    let shown = warren(
        &system,
        &["--json", "dlq", "show", &by_broker.message_id.to_string()],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(shown["x_death"][0]["queue"], "payment.commands");
    assert_eq!(shown["x_death"][0]["reason"], "rejected");
    let human = warren(&system, &["dlq", "show", &first.message_id.to_string()]).await;
    human.succeeded();
    assert!(
        human.stdout.contains("\"balance_cents\": 1234"),
        "{human:#?}"
    );
    let unknown = warren(&system, &["dlq", "show", &Uuid::now_v7().to_string()]).await;
    assert_eq!(unknown.code, Some(3), "{unknown:#?}");
    assert!(unknown.stderr.contains("no parked message"), "{unknown:#?}");

    // redrive --dry-run: says what would move, moves nothing.
    let dry = warren(
        &system,
        &[
            "--json",
            "dlq",
            "redrive",
            "--type",
            "payment.cmd.set_balance",
            "--dry-run",
        ],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(dry["summary"]["would_move"], 3, "{dry:#}");
    assert_eq!(count(&parked(&system).await, "payment.commands"), 3);
    let dry_table = warren(
        &system,
        &["dlq", "redrive", "--queue", "payment.commands", "--dry-run"],
    )
    .await;
    dry_table.succeeded();
    assert!(
        dry_table.stdout.contains("would move") && dry_table.stdout.contains("→ payment.commands"),
        "{dry_table:#?}"
    );

    // redrive by type: only the balance commands go back, to their queue, and take effect.
    let inbox_before = inbox_rows(&system).await;
    let moved = warren(
        &system,
        &[
            "--json",
            "dlq",
            "redrive",
            "--type",
            "payment.cmd.set_balance",
        ],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(moved["summary"]["moved"], 3, "{moved:#}");
    assert_eq!(moved["summary"]["left_parked"], 2, "{moved:#}");
    for entry in moved["messages"].as_array().unwrap() {
        assert_eq!(entry["outcome"], "moved");
        assert_eq!(entry["from"], "payment.commands.dead");
        assert_eq!(entry["to"], "payment.commands");
    }
    system
        .until("the redriven balances to be applied", || async {
            balance(&system, "c-dlq-1").await == Some(1234)
                && balance(&system, "c-dlq-2").await == Some(5678)
                && balance(&system, "c-dlq-3").await == Some(910)
        })
        .await;
    let listing = parked(&system).await;
    assert_eq!(count(&listing, "payment.commands"), 0);
    assert_eq!(count(&listing, "order.commands"), 2, "the order ones stay");
    let inbox_after = inbox_rows(&system).await;
    assert_eq!(inbox_after, inbox_before + 3);

    // A second redrive finds nothing to move and changes nothing.
    let again = warren(
        &system,
        &[
            "--json",
            "dlq",
            "redrive",
            "--type",
            "payment.cmd.set_balance",
        ],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(again["messages"], json!([]), "{again:#}");
    assert_eq!(again["summary"]["left_parked"], 2);
    assert_eq!(balance(&system, "c-dlq-1").await, Some(1234));
    assert_eq!(inbox_rows(&system).await, inbox_after);

    // The same message parked again (a duplicate delivery, say) and redriven after it was
    // processed: it goes back, and the inbox skips it by its id. Its body asks for another
    // balance, so applying it twice would show.
    let mut replay = first.clone();
    replay.payload = json!({"customer_id": "c-dlq-1", "balance_cents": 9999});
    let copy = parked_copy(&replay, "payment.commands", "parked twice (test)");
    publisher.send(&copy).await.unwrap();
    let replayed = warren(
        &system,
        &[
            "--json",
            "dlq",
            "redrive",
            "--message-id",
            &first.message_id.to_string(),
        ],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(replayed["summary"]["moved"], 1, "{replayed:#}");
    // Once its queue is empty the consumer holds it; a command published after that is
    // delivered after it, and an inbox skip is quicker than an applied change, so by the time
    // that one is applied the replay has been handled (skipped, or c-dlq-1 would read 9999).
    // Handlers run concurrently, so this could miss a double application but never fails
    // falsely.
    system
        .until("the replayed message to be delivered", || async {
            testkit::ready_messages(&bus, "payment.commands").await == 0
        })
        .await;
    publisher
        .publish(&set_balance("c-dlq-4", 42))
        .await
        .unwrap();
    system
        .until("a later balance command to be applied", || async {
            balance(&system, "c-dlq-4").await == Some(42)
        })
        .await;
    assert_eq!(balance(&system, "c-dlq-1").await, Some(1234));
    assert_eq!(
        inbox_rows(&system).await,
        inbox_after + 1,
        "only the later one"
    );

    // A parked message that names no queue to go back to is skipped and stays.
    let orphan = set_balance("c-dlq-5", 1);
    publisher
        .send(&Outgoing::to(
            routing::DEAD_LETTER_EXCHANGE,
            "payment.commands",
            &orphan,
        ))
        .await
        .unwrap();
    system
        .until("the orphan to be parked", || async {
            count(&parked(&system).await, "payment.commands") == 1
        })
        .await;
    let skipped = warren(
        &system,
        &["--json", "dlq", "redrive", "--queue", "payment.commands"],
    )
    .await;
    assert_eq!(skipped.code, Some(1), "{skipped:#?}");
    let skipped = skipped.json();
    assert_eq!(skipped["summary"]["skipped"], 1, "{skipped:#}");
    assert_eq!(
        skipped["messages"][0]["message_id"],
        orphan.message_id.to_string()
    );
    assert_eq!(count(&parked(&system).await, "payment.commands"), 1);
    assert_eq!(balance(&system, "c-dlq-5").await, None);

    // purge: refuses without a terminal unless told --yes; then deletes just that queue's.
    let refused = warren(&system, &["dlq", "purge", "--queue", "order.commands"]).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(refused.stderr.contains("--yes"), "{refused:#?}");
    assert_eq!(count(&parked(&system).await, "order.commands"), 2);
    let purged = warren(
        &system,
        &[
            "--json",
            "dlq",
            "purge",
            "--queue",
            "order.commands",
            "--yes",
        ],
    )
    .await
    .succeeded()
    .json();
    assert_eq!(purged["summary"]["purged"], 2, "{purged:#}");
    let listing = parked(&system).await;
    assert_eq!(count(&listing, "order.commands"), 0);
    assert_eq!(
        count(&listing, "payment.commands"),
        1,
        "other queues untouched"
    );
    assert!(
        queue_of(&listing, "order.commands")["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // An unknown queue is bad usage, with the queues there are.
    let unknown = warren(&system, &["dlq", "list", "--queue", "orders"]).await;
    assert_eq!(unknown.code, Some(2), "{unknown:#?}");
    assert!(unknown.stderr.contains("order.commands"), "{unknown:#?}");

    bus.close().await;
    system.stop().await;
}

#[tokio::test]
async fn an_unreachable_broker_is_reported_with_exit_code_4() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there any more.
    let run = warren_at(
        &format!("amqp://guest:guest@127.0.0.1:{port}/warren"),
        "postgres://postgres:postgres@127.0.0.1:1/warren",
        &["dlq", "list", "--connect-timeout-secs", "1"],
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:#?}");
    assert!(run.stderr.contains("RabbitMQ"), "{run:#?}");
    assert!(
        !run.stderr.contains("guest:guest"),
        "the password is not shown"
    );
}

#[tokio::test]
async fn a_broker_without_the_topology_is_told_to_apply_it() {
    let vhost = testkit::create_vhost().await;
    let run = warren_at(
        &testkit::amqp_url_for(&vhost),
        "postgres://postgres:postgres@127.0.0.1:1/warren",
        &["dlq", "list"],
    )
    .await;
    testkit::delete_vhost(&vhost).await;
    assert_eq!(run.code, Some(3), "{run:#?}");
    assert!(run.stderr.contains("warren topology apply"), "{run:#?}");
}
