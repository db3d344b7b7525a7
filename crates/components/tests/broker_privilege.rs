//! Least privilege on the real broker: each test gets a vhost of its own with the topology
//! declared, and users with exactly the permissions `rabbitmq/definitions.json` gives the
//! components ([`bus::access`]), made through the management API and deleted afterwards.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::sync::Arc;
use std::time::Duration;

use bus::access::OPERATOR;
use bus::chaos::{self, Action, Control, FaultPatch, Faults, Identity};
use bus::{Bus, BusError, Outgoing, PublishError};
use contracts::messages::{OrderCreate, PaymentCharged, SagaStart};
use contracts::{Envelope, routing};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use testkit::TestUser;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A vhost with Warren's topology, and users of the given roles in it.
struct Broker {
    vhost: String,
    users: Vec<(&'static str, TestUser)>,
}

impl Broker {
    async fn with(roles: &[&'static str]) -> Self {
        let vhost = testkit::create_vhost().await;
        let admin = testkit::admin_bus(&vhost, "test-admin").await;
        components::standard_topology()
            .declare(&admin.channel().await.unwrap())
            .await
            .unwrap();
        admin.close().await;
        let access = components::access(&components::built_in_sagas());
        let prefix = testkit::unique();
        let mut users = Vec::new();
        for role in roles {
            let name = format!("{prefix}-warren-{role}");
            let user = testkit::create_user(&vhost, &name, &access.grant_of(role)).await;
            users.push((*role, user));
        }
        Self { vhost, users }
    }

    fn user(&self, role: &str) -> &TestUser {
        &self.users.iter().find(|(r, _)| *r == role).unwrap().1
    }

    /// A connection as the component's user, named as `warren run <component>` names it.
    async fn bus(&self, role: &str) -> Bus {
        self.user(role).bus(&format!("warren-{role}")).await
    }

    async fn drop(self) {
        for (_, user) in &self.users {
            testkit::delete_user(&user.name).await;
        }
        testkit::delete_vhost(&self.vhost).await;
    }
}

fn is_refusal(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)))
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, lapin::Error>) {
    match result {
        Err(error) => assert!(is_refusal(&error), "{what}: {error}"),
        Ok(ok) => panic!("{what} was allowed: {ok:?}"),
    }
}

#[track_caller]
fn assert_bus_refused<T: std::fmt::Debug>(what: &str, result: Result<T, BusError>) {
    match result {
        Err(BusError::Amqp { source, .. }) => assert!(is_refusal(&source), "{what}: {source}"),
        other => panic!("{what}: {other:?}"),
    }
}

fn charged() -> Envelope {
    Envelope::new(
        "payment",
        &PaymentCharged {
            order_id: Uuid::now_v7(),
            customer_id: "c-1".into(),
            amount_cents: 1250,
        },
    )
}

fn create_order() -> Envelope {
    Envelope::new(
        "payment",
        &OrderCreate {
            order_id: Uuid::now_v7(),
            customer_id: "c-1".into(),
            items: vec![contracts::messages::LineItem {
                sku: "SKU-1".into(),
                quantity: 1,
            }],
        },
    )
}

#[tokio::test]
async fn the_broker_refuses_a_worker_publishing_another_services_command() {
    let broker = Broker::with(&["payment"]).await;
    let payment = broker.bus("payment").await;

    // Its own event goes through (to the orchestrator's replies).
    let publisher = payment.publisher().await.unwrap();
    publisher.publish(&charged()).await.unwrap();

    // Another service's command is refused by the broker itself.
    let refused = publisher.publish(&create_order()).await;
    match refused {
        Err(PublishError::Refused(error)) => {
            assert!(is_refusal(&error), "{error}");
            assert!(error.to_string().contains("order.cmd.create"), "{error}");
        }
        other => panic!("order.cmd.create from the payment user: {other:?}"),
    }
    // So is a command of its own service (only the orchestrator sends those) and a chaos
    // control.
    let publisher = payment.publisher().await.unwrap();
    let own_command = Envelope::new(
        "payment",
        &contracts::messages::PaymentCharge {
            order_id: Uuid::now_v7(),
            customer_id: "c-1".into(),
            amount_cents: 1,
        },
    );
    assert!(matches!(
        publisher.publish(&own_command).await,
        Err(PublishError::Refused(_))
    ));
    let publisher = payment.publisher().await.unwrap();
    let control = Outgoing::to(routing::CONTROL_EXCHANGE, chaos::ROUTING_KEY, &charged());
    assert!(matches!(
        publisher.send(&control).await,
        Err(PublishError::Refused(_))
    ));

    let admin = testkit::admin_bus(&broker.vhost, "test-admin").await;
    assert_eq!(testkit::ready_messages(&admin, "order.commands").await, 0);
    assert_eq!(testkit::ready_messages(&admin, "payment.commands").await, 0);
    assert_eq!(testkit::ready_messages(&admin, "saga.replies").await, 1);
    admin.close().await;
    payment.close().await;
    broker.drop().await;
}

#[tokio::test]
async fn a_worker_cannot_declare_purge_or_read_another_services_queue() {
    let broker = Broker::with(&["payment", "gateway", OPERATOR]).await;
    let payment = broker.bus("payment").await;

    // What a component does at start works: the layout is checked without permissions.
    components::standard_topology()
        .check(&payment)
        .await
        .unwrap();

    let quorum = {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        arguments
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    // Every refusal closes its channel: a fresh one each time.
    let channel = payment.channel().await.unwrap();
    assert_refused(
        "declaring order.commands",
        channel
            .queue_declare("order.commands".into(), durable, quorum.clone())
            .await,
    );
    let channel = payment.channel().await.unwrap();
    assert_refused(
        "declaring a queue of its own choosing",
        channel
            .queue_declare("payment.side-channel".into(), durable, quorum.clone())
            .await,
    );
    let channel = payment.channel().await.unwrap();
    assert_refused(
        "purging order.commands",
        channel
            .queue_purge("order.commands".into(), QueuePurgeOptions::default())
            .await,
    );
    let channel = payment.channel().await.unwrap();
    assert_refused(
        "deleting order.commands",
        channel
            .queue_delete("order.commands".into(), QueueDeleteOptions::default())
            .await,
    );
    let channel = payment.channel().await.unwrap();
    assert_refused(
        "consuming order.commands",
        channel
            .basic_consume(
                "order.commands".into(),
                "thief".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    let channel = payment.channel().await.unwrap();
    assert_refused(
        "binding its queue to order commands",
        channel
            .queue_bind(
                "payment.commands".into(),
                routing::EXCHANGE.into(),
                "order.cmd.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    let channel = payment.channel().await.unwrap();
    assert_refused(
        "declaring an exchange",
        channel
            .exchange_declare(
                "warren.side-channel".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    // Its own exclusive control queue it may declare and bind, but not a queue bound to every
    // event on `warren`.
    payment
        .watch(
            bus::access::CHAOS,
            routing::CONTROL_EXCHANGE,
            &[chaos::ROUTING_KEY],
        )
        .await
        .unwrap();
    assert_bus_refused(
        "watching every event",
        payment
            .watch(bus::access::CHAOS, routing::EXCHANGE, &["#"])
            .await,
    );
    // Its own queue it consumes.
    let channel = payment.channel().await.unwrap();
    channel
        .basic_consume(
            "payment.commands".into(),
            "payment".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    payment.close().await;

    // The gateway watches saga and notification events, and no more.
    let gateway = broker.bus("gateway").await;
    gateway
        .watch(
            bus::access::LIVE_EVENTS,
            routing::EXCHANGE,
            &gateway::events::LIVE_EVENT_KEYS,
        )
        .await
        .unwrap();
    assert_bus_refused(
        "the gateway watching every command",
        gateway
            .watch(bus::access::LIVE_EVENTS, routing::EXCHANGE, &["#"])
            .await,
    );
    let start = Envelope::new(
        "gateway",
        &SagaStart {
            saga_id: Uuid::now_v7(),
            saga: "checkout".into(),
            input: serde_json::Map::new(),
            request_hash: None,
        },
    );
    gateway
        .publisher()
        .await
        .unwrap()
        .publish(&start)
        .await
        .unwrap();
    gateway.close().await;

    // The operator applies the topology; nobody else may.
    let operator = broker.bus(OPERATOR).await;
    components::standard_topology()
        .declare(&operator.channel().await.unwrap())
        .await
        .unwrap();
    operator.close().await;
    broker.drop().await;
}

#[tokio::test]
async fn a_command_put_straight_into_another_services_queue_is_parked_unhandled() {
    let broker = Broker::with(&["payment", "order", OPERATOR]).await;
    let operator_user = broker.user(OPERATOR).name.clone();
    // The order service's consumer, as `warren run order` runs it: it fails each message once,
    // so its own retries come back straight into the queue too.
    let order = broker.bus("order").await;
    let handled = testkit::Collector::new(|_, seen| {
        if seen == 0 {
            Err(bus::HandlerError::Transient("once".into()))
        } else {
            Ok(())
        }
    });
    let spec = bus::ConsumerSpec::new(
        components::standard_topology()
            .consumer("order.commands")
            .unwrap()
            .clone(),
        "order",
    )
    .with_trusted([operator_user.clone()]);
    let stop = CancellationToken::new();
    let consumer = tokio::spawn({
        let (order, handled, stop) = (order.clone(), Arc::clone(&handled), stop.clone());
        async move {
            bus::consumer::run(&order, spec, contracts::Schemas::embedded(), handled, stop).await
        }
    });

    // The default exchange routes by queue name and has no topic permissions: the broker lets
    // the payment worker put an order command into order.commands, named or not...
    let payment = broker.bus("payment").await;
    let publisher = payment.publisher().await.unwrap();
    let anonymous = create_order();
    publisher
        .send(&Outgoing::to("", "order.commands", &anonymous))
        .await
        .unwrap();
    let mut signed = Outgoing::to("", "order.commands", &create_order());
    signed.properties = signed
        .properties
        .with_user_id(broker.user("payment").name.as_str().into());
    publisher.send(&signed).await.unwrap();
    // ... but the consumer parks both unhandled, saying why.
    let admin = testkit::admin_bus(&broker.vhost, "test-admin").await;
    for _ in 0..2 {
        let parked =
            testkit::next_delivery(&admin, "order.commands.dead", Duration::from_secs(10)).await;
        let headers = parked.properties.headers().clone().unwrap();
        let reason = bus::amqp::header_text(&headers, routing::HEADER_PARKED_REASON).unwrap();
        assert!(reason.starts_with("untrusted sender"), "{reason}");
    }
    assert_eq!(handled.count(), 0);

    // The operator's redrive is taken, and so is the consumer's own retry of it.
    let operator = broker.bus(OPERATOR).await;
    let mut redriven = Outgoing::to("", "order.commands", &create_order());
    redriven.properties = redriven
        .properties
        .with_user_id(operator_user.as_str().into());
    operator
        .publisher()
        .await
        .unwrap()
        .send(&redriven)
        .await
        .unwrap();
    testkit::until(
        &handled.changed,
        Duration::from_secs(20),
        "the redrive and its retry",
        || handled.count() == 2,
    )
    .await;
    assert_eq!(
        testkit::ready_messages(&admin, "order.commands.dead").await,
        0
    );

    stop.cancel();
    consumer.await.unwrap().unwrap();
    for bus in [order, payment, operator, admin] {
        bus.close().await;
    }
    broker.drop().await;
}

/// A chaos listener as the payment worker runs it, taking control messages from `operator`.
fn listen(bus: &Bus, operator: &str) -> (Arc<Faults>, CancellationToken) {
    let faults = Arc::new(Faults::new(Vec::new(), Vec::new()));
    let stop = CancellationToken::new();
    let identity = Identity {
        components: vec!["payment".into()],
        operator: operator.to_owned(),
    };
    tokio::spawn(chaos::listen(
        bus.clone(),
        Arc::clone(&faults),
        identity,
        stop.clone(),
    ));
    (faults, stop)
}

fn decline_all() -> Control {
    Control {
        action: Action::Set,
        target: None,
        faults: FaultPatch {
            decline_rate: Some(1.0),
            ..FaultPatch::default()
        },
    }
}

#[tokio::test]
async fn chaos_controls_from_anyone_but_the_operator_are_ignored() {
    let broker = Broker::with(&["payment", OPERATOR]).await;
    let payment = broker.bus("payment").await;
    let operator_user = &broker.user(OPERATOR).name;
    let (faults, stop) = listen(&payment, operator_user);
    let operator = broker.bus(OPERATOR).await;
    let show = Control {
        action: Action::Show,
        target: None,
        faults: FaultPatch::default(),
    };
    // The listener is up once it answers the operator.
    testkit::within(Duration::from_secs(30), "the listener to answer", async {
        while chaos::send(&operator, &show, Duration::from_secs(1), Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
        {}
    })
    .await;

    // guest may publish anything in the test vhost: its control names guest as its user,
    // so it is not taken.
    let guest = testkit::admin_bus(&broker.vhost, "test-guest").await;
    let answers = chaos::send(
        &guest,
        &decline_all(),
        Duration::from_secs(2),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(answers.is_empty(), "{answers:?}");
    // Nor one that names no user at all (confirmed: it is in the listener's queue before the
    // operator's next control).
    let channel = guest.channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            routing::CONTROL_EXCHANGE.into(),
            chaos::ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&decline_all()).unwrap(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // A message naming another user than its connection's is refused by the broker.
    let channel = guest.channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let forged = channel
        .basic_publish(
            routing::CONTROL_EXCHANGE.into(),
            chaos::ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&decline_all()).unwrap(),
            BasicProperties::default().with_user_id(operator_user.as_str().into()),
        )
        .await
        .unwrap()
        .await;
    assert!(forged.is_err(), "a forged user_id: {forged:?}");
    // The listener takes its queue in order: once it has answered the operator's next control,
    // it has seen (and ignored) the ones before.
    let answers = chaos::send(&operator, &show, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(faults.settings(), chaos::FaultSettings::default());

    // The operator's is taken.
    let answers = chaos::send(
        &operator,
        &decline_all(),
        Duration::from_secs(5),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(faults.settings().decline_rate, 1.0);

    stop.cancel();
    for bus in [payment, operator, guest] {
        bus.close().await;
    }
    broker.drop().await;
}
