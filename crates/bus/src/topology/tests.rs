//! The topology's layout checked without a broker: routes, queues and their arguments. (The
//! layout of Warren's own components is checked in the `components` crate.)

use super::*;

/// A layout as components declare one: two consumer queues and two queries queues.
fn example() -> Topology {
    const ORDER: Component = Component {
        consumes: &[contracts::component::Queue {
            name: "order.commands",
            bindings: &["order.cmd.*"],
        }],
        ..Component::participant("order", "orders", "warren_orders", 9182)
    };
    const SAGA: Component = Component {
        owns: Some("saga"),
        consumes: &[contracts::component::Queue {
            name: "saga.replies",
            bindings: &[],
        }],
        ..Component::participant("orchestrator", "sagas", "warren_sagas", 9181)
    };
    Topology::of_components(&[ORDER, SAGA]).with_saga_replies(["order.evt.created"])
}

#[test]
fn a_layout_is_what_its_components_declare() {
    let topology = example();
    assert_eq!(topology.routes("order.cmd.create"), ["order.commands"]);
    assert_eq!(topology.routes("order.evt.created"), ["saga.replies"]);
    assert!(topology.routes("order.evt.confirmed").is_empty());
    assert_eq!(topology.queries, ["order.queries", "saga.queries"]);
}

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
fn every_consumer_queue_has_parking_and_retry_queues() {
    let topology = example();
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
    let topology = example();
    let queues = topology.queues();
    for name in ["order.queries", "saga.queries"] {
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
