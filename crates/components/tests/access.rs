//! Each component's permissions, as derived from its declaration and the built-in sagas: what
//! `rabbitmq/definitions.json` gives each user. (The broker enforcing them is
//! `broker_privilege.rs`.)

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use bus::access::{DEFAULT_OPERATOR, OPERATOR};
use bus::{Access, Grant, access::TopicGrant};
use contracts::routing;

/// The permissions of the built-in sagas' components.
fn access() -> Access {
    components::access(&components::built_in_sagas())
}

/// Whether RabbitMQ would match `name` against a permission (PCRE; these patterns mean the
/// same in the `regex` crate). An empty pattern matches nothing.
fn matches(pattern: &str, name: &str) -> bool {
    !pattern.is_empty() && regex::Regex::new(pattern).unwrap().is_match(name)
}

fn topic(grant: &Grant, exchange: &str) -> TopicGrant {
    grant
        .topics
        .iter()
        .find(|t| t.exchange == exchange)
        .unwrap()
        .clone()
}

const CHAOS_QUEUE: &str = "warren-payment.chaos.0190a1b2c3d4e5f60718293a4b5c6d7e";

#[test]
fn a_worker_publishes_only_its_own_events() {
    let payment = access().grant_of("payment");
    let warren = topic(&payment, routing::EXCHANGE);
    assert!(matches(&warren.write, "payment.evt.charged"));
    assert!(matches(&warren.write, "payment.evt.refunded"));
    assert!(!matches(&warren.write, "order.cmd.create"));
    assert!(!matches(&warren.write, "payment.cmd.charge"));
    assert!(!matches(&warren.write, "payment.evt.charged.x"));
    assert!(!matches(&warren.read, "#"), "it binds nothing on warren");
    assert!(!matches(
        &topic(&payment, routing::CONTROL_EXCHANGE).write,
        "chaos"
    ));
}

#[test]
fn a_worker_reads_only_its_own_queues_and_declares_only_its_control_queue() {
    let payment = access().grant_of("payment");
    for queue in ["payment.commands", "payment.queries", CHAOS_QUEUE] {
        assert!(matches(&payment.read, queue), "{queue}");
    }
    for queue in [
        "order.commands",
        "payment.commands.dead",
        "payment.commands.retry.1",
        "saga.replies",
        "warren.audit",
        "warren-order.chaos.0190a1b2c3d4e5f60718293a4b5c6d7e",
    ] {
        assert!(!matches(&payment.read, queue), "{queue}");
    }
    assert!(matches(&payment.configure, CHAOS_QUEUE));
    for name in ["payment.commands", "warren", "payment.queries"] {
        assert!(!matches(&payment.configure, name), "{name}");
    }
    for exchange in ["warren", "warren.retry", "warren.dlx", "amq.default"] {
        assert!(matches(&payment.write, exchange), "{exchange}");
    }
    assert!(!matches(&payment.write, "warren.control"));
    assert!(
        !matches(&payment.read, "warren"),
        "no binding from warren, so no snooping"
    );
}

#[test]
fn the_orchestrator_sends_the_sagas_commands_and_saga_events() {
    let orchestrator = access().grant_of("orchestrator");
    let warren = topic(&orchestrator, routing::EXCHANGE);
    for key in ["order.cmd.create", "payment.cmd.charge", "saga.evt.updated"] {
        assert!(matches(&warren.write, key), "{key}");
    }
    for key in [
        "payment.cmd.set_balance",
        "order.evt.created",
        "saga.cmd.start",
    ] {
        assert!(!matches(&warren.write, key), "{key}");
    }
    for queue in ["saga.commands", "saga.replies", "saga.queries"] {
        assert!(matches(&orchestrator.read, queue), "{queue}");
    }
}

#[test]
fn the_gateway_sends_starts_and_settings_and_watches_saga_and_notification_events() {
    let gateway = access().grant_of("gateway");
    let warren = topic(&gateway, routing::EXCHANGE);
    for key in [
        "saga.cmd.start",
        "inventory.cmd.upsert_product",
        "payment.cmd.set_balance",
    ] {
        assert!(matches(&warren.write, key), "{key}");
    }
    assert!(!matches(&warren.write, "payment.cmd.charge"));
    assert!(matches(&warren.read, "saga.evt.#"));
    assert!(matches(&warren.read, "notification.evt.#"));
    assert!(!matches(&warren.read, "#"));
    let live = "warren-gateway.live-events.0190a1b2c3d4e5f60718293a4b5c6d7e";
    assert!(matches(&gateway.configure, live));
    assert!(matches(&gateway.read, live));
    assert!(matches(&gateway.write, live));
    assert!(matches(&gateway.read, "warren"));
    assert!(!matches(&gateway.write, "warren.retry"));
    assert!(!matches(&gateway.read, "saga.queries"));
}

#[test]
fn every_consumer_queue_has_one_owner() {
    let access = access();
    let topology = components::standard_topology();
    for queue in topology
        .consumers
        .iter()
        .map(|c| &c.name)
        .chain(&topology.queries)
    {
        let readers: Vec<String> = access
            .users()
            .into_iter()
            .filter(|user| user != DEFAULT_OPERATOR)
            .filter(|user| matches(&access.grant_of(&user["warren-".len()..]).read, queue))
            .collect();
        assert_eq!(readers.len(), 1, "{queue}: {readers:?}");
    }
}

#[test]
fn the_operator_owns_the_vhost_and_the_definitions_list_every_user() {
    let access = access();
    assert_eq!(access.grant_of(OPERATOR).configure, ".*");
    let definitions = access.definitions("warren");
    let users: Vec<&str> = definitions["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 8);
    assert!(users.contains(&"warren-operator") && users.contains(&"warren-payment"));
    assert!(
        definitions["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["password_hash"] == "")
    );
    assert_eq!(
        definitions["topic_permissions"].as_array().unwrap().len(),
        14
    );
}
