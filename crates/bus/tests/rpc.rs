//! Queries over direct reply-to against the real broker (vhost `warren_test`).

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::rpc::{self, QueryError, QueryHandler, RemoteCode, RpcClient, RpcError};
use bus::{Bus, Topology};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Long enough for any answer from a healthy broker, or for a recovery after a forced close.
const PATIENCE: Duration = Duration::from_secs(30);

/// Answers `echo` with its parameters, `missing` with not-found and panics on `panic`; `held`
/// waits until the test lets it go.
struct Echo {
    release: Semaphore,
    holding: AtomicUsize,
    changed: Notify,
}

impl Echo {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            release: Semaphore::new(0),
            holding: AtomicUsize::new(0),
            changed: Notify::new(),
        })
    }
}

impl QueryHandler for Echo {
    async fn query(&self, method: &str, params: Value) -> Result<Value, QueryError> {
        match method {
            "echo" => Ok(json!({"echoed": params})),
            "missing" => Err(QueryError::not_found(format!("no order {}", params["id"]))),
            "panic" => panic!("the handler blew up"),
            "held" => {
                self.holding.fetch_add(1, Ordering::SeqCst);
                self.changed.notify_waiters();
                let _permit = self.release.acquire().await.unwrap();
                Ok(json!({"echoed": params}))
            }
            other => Err(QueryError::bad_request(format!("unknown method {other}"))),
        }
    }
}

/// A query queue of this test's own, declared through the topology.
async fn declare_queue(bus: &Bus, name: &str) -> (String, Topology) {
    let queue = format!("{name}.queries");
    let topology = Topology::of(vec![]).with_query_queue(&queue);
    topology
        .declare(&bus.channel().await.unwrap())
        .await
        .unwrap();
    (queue, topology)
}

fn spawn_server(
    bus: &Bus,
    queue: &str,
    handler: Arc<Echo>,
) -> (CancellationToken, JoinHandle<Result<(), bus::BusError>>) {
    let stop = CancellationToken::new();
    let (bus, queue, token) = (bus.clone(), queue.to_owned(), stop.clone());
    let task = tokio::spawn(async move { rpc::serve(&bus, &queue, 50, handler, token).await });
    (stop, task)
}

async fn clean_up(bus: &Bus, topology: &Topology) {
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_query_returns_the_handlers_value_or_its_error() {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let (queue, topology) = declare_queue(&bus, &name).await;
    let (stop, server) = spawn_server(&bus, &queue, Echo::new());
    let client = RpcClient::connect(&bus).await.unwrap();

    let params = json!({"id": 7, "tags": ["a", "b"]});
    let answer = client
        .request(&queue, "echo", &params, PATIENCE)
        .await
        .unwrap();
    assert_eq!(answer, json!({"echoed": params}));

    let bad = client
        .request(&queue, "frobnicate", &json!({}), PATIENCE)
        .await;
    assert!(
        matches!(&bad, Err(RpcError::Remote { code: RemoteCode::BadRequest, message }) if message.contains("frobnicate")),
        "{bad:?}"
    );
    let panicked = client.request(&queue, "panic", &json!({}), PATIENCE).await;
    assert!(
        matches!(
            panicked,
            Err(RpcError::Remote {
                code: RemoteCode::Internal,
                ..
            })
        ),
        "{panicked:?}"
    );
    assert_eq!(client.pending(), 0);

    stop.cancel();
    server.await.unwrap().unwrap();
    clean_up(&bus, &topology).await;
}

#[tokio::test]
async fn not_found_arrives_as_a_remote_not_found() {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let (queue, topology) = declare_queue(&bus, &name).await;
    let (stop, server) = spawn_server(&bus, &queue, Echo::new());
    let client = RpcClient::connect(&bus).await.unwrap();

    let missing = client
        .request(&queue, "missing", &json!({"id": 42}), PATIENCE)
        .await;
    assert_eq!(
        missing,
        Err(RpcError::Remote {
            code: RemoteCode::NotFound,
            message: "no order 42".into()
        })
    );

    stop.cancel();
    server.await.unwrap().unwrap();
    clean_up(&bus, &topology).await;
}

#[tokio::test]
async fn two_hundred_concurrent_queries_each_get_their_own_answer() {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let (queue, topology) = declare_queue(&bus, &name).await;
    let (stop, server) = spawn_server(&bus, &queue, Echo::new());
    let client = RpcClient::connect(&bus).await.unwrap();

    let mut requests = JoinSet::new();
    for n in 0..200 {
        let (client, queue) = (client.clone(), queue.clone());
        requests.spawn(async move {
            let params = json!({"n": n});
            let answer = client.request(&queue, "echo", &params, PATIENCE).await;
            (params, answer)
        });
    }
    let mut answered = 0;
    while let Some(joined) = requests.join_next().await {
        let (params, answer) = joined.unwrap();
        assert_eq!(answer.unwrap(), json!({"echoed": params}));
        answered += 1;
    }
    assert_eq!(answered, 200);
    assert_eq!(client.pending(), 0);

    stop.cancel();
    server.await.unwrap().unwrap();
    clean_up(&bus, &topology).await;
}

#[tokio::test]
async fn a_query_nobody_answers_times_out_and_leaves_nothing_pending() {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let (queue, topology) = declare_queue(&bus, &name).await;
    let client = RpcClient::connect(&bus).await.unwrap();

    let timeout = Duration::from_millis(300);
    let outcome = client
        .request(&queue, "echo", &json!({"n": 1}), timeout)
        .await;
    assert_eq!(
        outcome,
        Err(RpcError::Timeout {
            queue: queue.clone(),
            method: "echo".into(),
            after: timeout
        })
    );
    assert_eq!(client.pending(), 0);

    clean_up(&bus, &topology).await;
}

#[tokio::test]
async fn a_query_to_a_queue_that_does_not_exist_fails_fast() {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let client = RpcClient::connect(&bus).await.unwrap();

    // With this much time, only the broker's return can end the request early.
    let outcome = client
        .request(&format!("{name}.nowhere"), "echo", &json!({}), PATIENCE)
        .await;
    assert!(
        matches!(&outcome, Err(RpcError::Unavailable(reason)) if reason.contains("nowhere")),
        "{outcome:?}"
    );
    assert_eq!(client.pending(), 0);
    // The client is still usable after a return.
    let again = client
        .request(&format!("{name}.nowhere"), "echo", &json!({}), PATIENCE)
        .await;
    assert!(matches!(again, Err(RpcError::Unavailable(_))), "{again:?}");
    // A name no queue can have is refused before it reaches the wire.
    let too_long = client
        .request(&"q".repeat(256), "echo", &json!({}), PATIENCE)
        .await;
    assert!(
        matches!(too_long, Err(RpcError::Unavailable(_))),
        "{too_long:?}"
    );
    assert!(bus.is_connected());
}

#[tokio::test]
async fn the_client_keeps_working_after_its_connection_is_closed_by_force() {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let (queue, topology) = declare_queue(&bus, &name).await;
    // The server shares the connection: the forced close hits both sides.
    let echo = Echo::new();
    let (stop, server) = spawn_server(&bus, &queue, Arc::clone(&echo));
    let client = RpcClient::connect(&bus).await.unwrap();

    let before = client
        .request(&queue, "echo", &json!({"n": "before"}), PATIENCE)
        .await
        .unwrap();
    assert_eq!(before, json!({"echoed": {"n": "before"}}));

    // Queries in the server's hands while the connection goes: their replies are lost with the
    // connection, so they may fail, but must neither hang nor leak.
    let mut in_flight = JoinSet::new();
    for n in 0..5 {
        let (client, queue) = (client.clone(), queue.clone());
        in_flight.spawn(async move {
            client
                .request(&queue, "held", &json!({"n": n}), Duration::from_secs(3))
                .await
        });
    }
    testkit::until(
        &echo.changed,
        PATIENCE,
        "the server to hold 5 queries",
        || echo.holding.load(Ordering::SeqCst) >= 5,
    )
    .await;
    assert_eq!(testkit::close_connections(&name).await, 1);
    echo.release.add_permits(1_000);

    for n in 0..5 {
        let params = json!({"n": format!("after {n}")});
        let answer = client.request(&queue, "echo", &params, PATIENCE).await;
        assert_eq!(answer.unwrap(), json!({"echoed": params}));
    }
    while let Some(joined) = in_flight.join_next().await {
        match joined.unwrap() {
            Ok(answer) => assert!(answer["echoed"]["n"].is_number(), "{answer}"),
            Err(RpcError::Timeout { .. } | RpcError::Unavailable(_)) => {}
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    }
    assert_eq!(client.pending(), 0);
    assert!(!server.is_finished(), "the server must not have stopped");

    stop.cancel();
    server.await.unwrap().unwrap();
    clean_up(&bus, &topology).await;
}

#[tokio::test]
async fn requests_without_a_direct_reply_address_are_dropped() {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};

    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let (queue, topology) = declare_queue(&bus, &name).await;
    // An ordinary queue a forged `reply_to` points at: no reply may land there.
    let (trap, trap_topology) = declare_queue(&bus, &format!("{name}.trap")).await;
    let echo = Echo::new();
    let (stop, server) = spawn_server(&bus, &queue, Arc::clone(&echo));

    let channel = bus.channel().await.unwrap();
    let base = BasicProperties::default().with_type("echo".into());
    for properties in [
        base.clone().with_correlation_id("1".into()),
        base.clone().with_reply_to(trap.as_str().into()),
        base.with_correlation_id("2".into())
            .with_reply_to(trap.as_str().into()),
    ] {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                properties,
            )
            .await
            .unwrap();
    }
    // Answered after those three were delivered: the server is still well.
    let client = RpcClient::connect(&bus).await.unwrap();
    let answer = client
        .request(&queue, "echo", &json!({"n": 1}), PATIENCE)
        .await
        .unwrap();
    assert_eq!(answer, json!({"echoed": {"n": 1}}));
    stop.cancel();
    server.await.unwrap().unwrap();

    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    for (name, what) in [
        (&queue, "the dropped requests were acked"),
        (&trap, "no reply went to an ordinary queue"),
    ] {
        let declared = channel
            .queue_declare(name.as_str().into(), passive, Default::default())
            .await
            .unwrap();
        assert_eq!(declared.message_count(), 0, "{what}");
    }
    clean_up(&bus, &topology).await;
    clean_up(&bus, &trap_topology).await;
}
