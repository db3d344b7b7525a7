//! The topology's layout checked without a broker: routes, definitions, access.

use super::*;

use contracts::messages::Delivery;

#[test]
fn topic_patterns_match_like_rabbitmq() {
    assert!(topic_matches("order.cmd.*", "order.cmd.create"));
    assert!(!topic_matches("order.cmd.*", "order.cmd.create.now"));
    assert!(topic_matches("#", "anything.at.all"));
    assert!(topic_matches("order.#", "order"));
    assert!(topic_matches("*.evt.#", "image.evt.variant.done"));
    assert!(!topic_matches("order.evt.confirmed", "order.evt.cancelled"));
}

#[test]
fn every_command_reaches_a_consumer() {
    // While the audit queue is tapped every key is routable on `warren`, so a misspelt
    // routing key would not come back as unroutable: this check catches it regardless.
    // (Live events may have no consumer: people watch them.)
    let topology = Topology::standard();
    let schemas = contracts::Schemas::embedded();
    for message_type in schemas.types().filter(|t| t.contains(".cmd.")) {
        assert!(
            !topology.routes(message_type).is_empty(),
            "{message_type} reaches no consumer queue"
        );
    }
}

#[test]
fn an_event_is_live_exactly_when_no_consumer_queue_takes_it() {
    // Live events are transient and not `mandatory` (contracts::messages::Delivery): one
    // that a consumer depended on could be lost, and a durable one that no queue takes
    // would come back unroutable and wait in its outbox for ever.
    let topology = Topology::standard();
    for message_type in contracts::Schemas::embedded().types() {
        let consumed = !topology.routes(message_type).is_empty();
        let live = contracts::messages::delivery(message_type) == Delivery::Live;
        assert!(
            consumed != live,
            "{message_type}: consumed {consumed}, live {live}"
        );
    }
}

#[test]
fn every_consumer_queue_has_parking_and_retry_queues() {
    let topology = Topology::standard();
    let queues = topology.queues();
    for consumer in &topology.consumers {
        let main = queues.iter().find(|q| q.name == consumer.name).unwrap();
        assert_eq!(main.kind, QueueType::Quorum);
        assert!(
            main.arguments
                .contains(&("x-dead-letter-strategy", Arg::Text("at-least-once".into())))
        );
        assert!(queues.iter().any(|q| q.name == consumer.parking_queue()));
        for tier in 0..consumer.retry.delays.len() {
            let retry = queues
                .iter()
                .find(|q| q.name == consumer.retry_queue(tier))
                .unwrap();
            assert!(retry.arguments.contains(&(
                "x-dead-letter-routing-key",
                Arg::Text(consumer.name.clone())
            )));
        }
    }
}

#[test]
fn every_service_has_a_capped_query_queue_without_bindings() {
    let topology = Topology::standard();
    let queues = topology.queues();
    for service in QUERY_SERVICES {
        let name = query_queue(service);
        let queue = queues.iter().find(|q| q.name == name).unwrap();
        assert_eq!(queue.kind, QueueType::Classic);
        assert!(
            queue
                .arguments
                .contains(&("x-overflow", Arg::Text("reject-publish".into())))
        );
        assert!(
            queue
                .arguments
                .contains(&("x-message-ttl", Arg::Number(10_000)))
        );
        assert!(topology.bindings().iter().all(|b| b.queue != name));
    }
    assert!(Topology::of(vec![]).queues().is_empty());
}

/// JSON text with object keys sorted, whatever map order serde_json was built with.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let fields: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), canonical(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

#[test]
fn the_definitions_file_matches_the_code() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../rabbitmq/definitions.json"
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let generated = Topology::standard().definitions(routing::VHOST);
    for section in ["exchanges", "queues", "bindings"] {
        let in_file: Vec<String> = file[section]
            .as_array()
            .unwrap_or_else(|| panic!("definitions.json has no {section}"))
            .iter()
            .map(canonical)
            .collect();
        let in_code: Vec<String> = generated[section]
            .as_array()
            .unwrap()
            .iter()
            .map(canonical)
            .collect();
        let missing: Vec<&String> = in_code.iter().filter(|e| !in_file.contains(e)).collect();
        let extra: Vec<&String> = in_file.iter().filter(|e| !in_code.contains(e)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "rabbitmq/definitions.json {section} differ from the code (regenerate with \
             `warren topology export --into rabbitmq/definitions.json`)\n\
             missing from the file: {missing:#?}\nonly in the file: {extra:#?}"
        );
        assert_eq!(
            in_file.len(),
            in_code.len(),
            "{section}: duplicates in the file"
        );
    }
}
