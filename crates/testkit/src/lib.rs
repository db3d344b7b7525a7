//! Helpers for integration tests: the test vhost, unique names, a collecting handler, the
//! management API (to close connections by force) and awaiting with deadlines.
//!
//! Tests run in the `warren_test` vhost (created by `scripts/test.sh`) and name every queue and
//! routing key after a fresh id, so they never disturb each other or a running stack.
//!
//! For a participant's handler on a fresh database, without a broker:
//! - [`participant`]: delivers messages through its real `store::Transactional`, as its
//!   consumer does, and reads back what each caused from its outbox.
//! - [`grouping`]: checks its group path (`TxHandler::apply_all`) against its one-message
//!   path: same rows, same replies.

// Test support: a panic here is a failing test, which is what it should be.
#![allow(clippy::unwrap_used)]

pub mod grouping;
pub mod participant;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, BusSettings, ConsumerQueue, ConsumerSpec, Handler, HandlerError, Topology};
use contracts::{Envelope, Schemas};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn amqp_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/warren_test".into())
}

pub fn management_url() -> String {
    std::env::var("WARREN_TEST_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// A short unique prefix for names in one test, e.g. `t3f9a1c2d`.
pub fn unique() -> String {
    format!("t{}", &Uuid::now_v7().simple().to_string()[24..])
}

/// Logs to the test output when `TEST_LOG` is set (`TEST_LOG=debug`, say); silent otherwise.
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// A connection of its own, named `name` in the management UI.
pub async fn bus(name: &str) -> Bus {
    init_logging();
    Bus::connect(&BusSettings {
        url: amqp_url(),
        connection_name: name.to_owned(),
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .expect("the test broker is reachable (run scripts/test.sh)")
}

/// Declares the shared exchanges and this test's queues.
pub async fn declare(bus: &Bus, consumers: Vec<ConsumerQueue>) -> Topology {
    let topology = Topology::of(consumers);
    topology
        .declare(&bus.channel().await.unwrap())
        .await
        .unwrap();
    topology
}

/// The embedded schemas plus a permissive one for each test message type.
pub fn schemas(types: &[&str]) -> Schemas {
    types.iter().fold(Schemas::embedded(), |schemas, t| {
        schemas.with(t, &json!({"type": "object"})).unwrap()
    })
}

/// Waits for `condition` to become true, re-checking whenever `notify` fires; panics with
/// `what` after `timeout`.
pub async fn until(
    notify: &Notify,
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    let wait = async {
        loop {
            let notified = notify.notified();
            if condition() {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"));
}

/// Completes `future` or panics with `what` after `timeout`.
pub async fn within<T>(timeout: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Records every message it handles; what it answers is up to `decide`.
pub struct Collector<F> {
    pub seen: Mutex<Vec<Envelope>>,
    pub changed: Notify,
    decide: F,
}

impl<F> std::fmt::Debug for Collector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("seen", &self.seen.lock().map(|s| s.len()))
            .finish()
    }
}

impl<F> Collector<F>
where
    F: Fn(&Envelope, usize) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    /// `decide` gets the message and how many times this id was seen before.
    pub fn new(decide: F) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            changed: Notify::new(),
            decide,
        })
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.message_id)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type Accept = fn(&Envelope, usize) -> Result<(), HandlerError>;

/// A collector that accepts everything.
pub fn accept_all() -> Arc<Collector<Accept>> {
    Collector::new(|_, _| Ok(()))
}

impl<F> Handler for Collector<F>
where
    F: Fn(&Envelope, usize) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    async fn handle(&self, message: Envelope) -> Result<(), HandlerError> {
        let before = {
            let mut seen = self.seen.lock().unwrap();
            let before = seen
                .iter()
                .filter(|e| e.message_id == message.message_id)
                .count();
            seen.push(message.clone());
            before
        };
        self.changed.notify_waiters();
        (self.decide)(&message, before)
    }
}

/// Runs a consumer in the background until the returned token is cancelled.
pub fn spawn_consumer<H: Handler>(
    bus: &Bus,
    queue: ConsumerQueue,
    schemas: Schemas,
    handler: Arc<H>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), bus::BusError>>,
) {
    let token = CancellationToken::new();
    let spec = ConsumerSpec::new(queue, "test").with_prefetch(50);
    let bus = bus.clone();
    let stop = token.clone();
    let task =
        tokio::spawn(async move { bus::consumer::run(&bus, spec, schemas, handler, stop).await });
    (token, task)
}

/// Takes the next delivery from a queue (a parking queue, say), acks it and returns it.
pub async fn next_delivery(bus: &Bus, queue: &str, timeout: Duration) -> Delivery {
    let channel = bus.channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("probe-{}", unique()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = within(timeout, &format!("a message on {queue}"), consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    delivery
}

/// Messages waiting (not yet delivered) in a queue, by a passive declare.
pub async fn ready_messages(bus: &Bus, queue: &str) -> u32 {
    let channel = bus.channel().await.expect("a channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("the queue exists");
    let _ = channel.close(200, "counted".into()).await;
    declared.message_count()
}

/// Closes, through the management API, every connection named `name`; waits until the API
/// lists at least one (the statistics it lists them from lag a few seconds).
pub async fn close_connections(name: &str) -> usize {
    close_connections_where(|c| c["client_properties"]["connection_name"] == name).await
}

/// A list from the management API (`path` such as `/api/bindings/<vhost>`), as guest.
pub async fn management_get(path: &str) -> Vec<Value> {
    reqwest::Client::new()
        .get(format!("{}{path}", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Closes every connection to the virtual host `vhost`, as a network failure would.
pub async fn close_vhost_connections(vhost: &str) -> usize {
    close_connections_where(|c| c["vhost"] == vhost).await
}

async fn close_connections_where(wanted: impl Fn(&Value) -> bool) -> usize {
    let client = reqwest::Client::new();
    let base = management_url();
    let list = || async {
        let connections: Vec<Value> = management_get("/api/connections").await;
        connections
            .into_iter()
            .filter(|c| wanted(c))
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect::<Vec<String>>()
    };
    let names = within(
        Duration::from_secs(30),
        "the management API to list the connection",
        async {
            loop {
                let names = list().await;
                if !names.is_empty() {
                    return names;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        },
    )
    .await;
    for connection in &names {
        client
            .delete(format!("{base}/api/connections/{}", encode(connection)))
            .basic_auth("guest", Some("guest"))
            .header("X-Reason", "closed by a Warren test")
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    names.len()
}

/// Percent-encodes a path segment (connection names hold spaces, colons and arrows).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A virtual host of its own (for tests that run the whole system, whose queue names are
/// fixed), with guest allowed in. Deleted by [`delete_vhost`].
pub async fn create_vhost() -> String {
    let name = format!("warren_{}", unique());
    let client = reqwest::Client::new();
    let base = management_url();
    client
        .put(format!("{base}/api/vhosts/{name}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    client
        .put(format!("{base}/api/permissions/{name}/guest"))
        .basic_auth("guest", Some("guest"))
        .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    name
}

pub async fn delete_vhost(name: &str) {
    let _ = reqwest::Client::new()
        .delete(format!("{}/api/vhosts/{name}", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await;
}

/// The AMQP URL of a vhost on the test broker.
pub fn amqp_url_for(vhost: &str) -> String {
    let base = amqp_url();
    let cut = base.rfind('/').unwrap();
    format!("{}/{vhost}", &base[..cut])
}

/// A broker user made for one test, with a component's permissions in one vhost. Users belong
/// to the whole broker, so each test names its own (`<unique>-warren-payment`, say); delete it
/// with [`delete_user`].
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub password: String,
    pub vhost: String,
}

impl TestUser {
    /// The AMQP URL that logs in as this user, in its vhost.
    pub fn amqp_url(&self) -> String {
        let mut url = reqwest::Url::parse(&amqp_url_for(&self.vhost)).unwrap();
        url.set_username(&self.name).unwrap();
        url.set_password(Some(&self.password)).unwrap();
        url.into()
    }

    /// A connection as this user, named `connection_name` (a component's exclusive queues are
    /// named after its connection, and its permissions name them so).
    pub async fn bus(&self, connection_name: &str) -> Bus {
        init_logging();
        Bus::connect(&BusSettings {
            url: self.amqp_url(),
            connection_name: connection_name.to_owned(),
            connect_timeout: Duration::from_secs(10),
        })
        .await
        .expect("the test user can log in")
    }
}

/// Creates `name` through the management API with `grant` in `vhost` (permissions and topic
/// permissions) and a fresh password.
pub async fn create_user(vhost: &str, name: &str, grant: &bus::Grant) -> TestUser {
    let client = reqwest::Client::new();
    let base = management_url();
    let password = Uuid::now_v7().simple().to_string();
    let put = |path: String, body: Value| {
        let request = client
            .put(format!("{base}/api/{path}"))
            .basic_auth("guest", Some("guest"))
            .json(&body);
        async move {
            request.send().await.unwrap().error_for_status().unwrap();
        }
    };
    put(
        format!("users/{}", encode(name)),
        json!({"password": password, "tags": grant.tags.join(",")}),
    )
    .await;
    put(
        format!("permissions/{}/{}", encode(vhost), encode(name)),
        json!({"configure": grant.configure, "write": grant.write, "read": grant.read}),
    )
    .await;
    for topic in &grant.topics {
        put(
            format!("topic-permissions/{}/{}", encode(vhost), encode(name)),
            json!({"exchange": topic.exchange, "write": topic.write, "read": topic.read}),
        )
        .await;
    }
    TestUser {
        name: name.to_owned(),
        password,
        vhost: vhost.to_owned(),
    }
}

pub async fn delete_user(name: &str) {
    let _ = reqwest::Client::new()
        .delete(format!("{}/api/users/{}", management_url(), encode(name)))
        .basic_auth("guest", Some("guest"))
        .send()
        .await;
}

/// A connection as guest (every permission) to `vhost`.
pub async fn admin_bus(vhost: &str, name: &str) -> Bus {
    init_logging();
    Bus::connect(&BusSettings {
        url: amqp_url_for(vhost),
        connection_name: name.to_owned(),
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .expect("the test broker is reachable (run scripts/test.sh)")
}
