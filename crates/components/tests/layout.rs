//! Warren's own layout, checked without a broker: every message reaches whom it must, and every
//! file that deploys the components agrees with their declarations (each failure says how to
//! bring the file up to date).

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use contracts::messages::Delivery;
use contracts::routing;
use serde_json::Value;

/// A file of the repository, as text.
fn file(path: &str) -> String {
    let full = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

#[test]
fn every_command_reaches_a_consumer() {
    // While the audit queue is tapped every key is routable on `warren`, so a misspelt
    // routing key would not come back as unroutable: this check catches it regardless.
    // (Live events may have no consumer: people watch them.)
    let topology = components::standard_topology();
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
    let topology = components::standard_topology();
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
fn every_reply_a_saga_waits_for_reaches_the_orchestrator_alone() {
    let topology = components::standard_topology();
    for definition in components::built_in_sagas() {
        for reply in definition.reply_types() {
            assert!(
                topology.routes(reply).contains(&"saga.replies"),
                "{reply} does not reach saga.replies"
            );
        }
    }
    assert!(
        !topology
            .routes("order.evt.created")
            .contains(&"notification.events"),
        "a reply nobody else listens to reaches only the orchestrator"
    );
}

#[test]
fn names_queues_and_ports_are_each_declared_by_one_component() {
    let all = components::all();
    let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
    let mut queues: Vec<String> = all.iter().flat_map(|c| c.queues()).collect();
    let mut ports: Vec<u16> = all.iter().filter_map(|c| c.metrics_port).collect();
    let mut roles: Vec<&str> = all.iter().map(|c| c.db_role).collect();
    for list in [&mut names, &mut roles] {
        let count = list.len();
        list.sort_unstable();
        list.dedup();
        assert_eq!(list.len(), count, "{list:?}");
    }
    let count = queues.len();
    queues.sort();
    queues.dedup();
    assert_eq!(queues.len(), count, "a queue declared twice: {queues:?}");
    let count = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        count,
        "a metrics port declared twice: {ports:?}"
    );
    for component in &all {
        for queue in component.queues() {
            assert_eq!(
                queue.split('.').next(),
                component.owns,
                "{} reads {queue}, which it does not own",
                component.name
            );
        }
    }
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
    let file: Value = serde_json::from_str(&file("rabbitmq/definitions.json")).unwrap();
    let generated = components::standard_topology().definitions(routing::VHOST);
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
             `scripts/generate.sh`, which runs `warren topology export --into rabbitmq/definitions.json`)\n\
             missing from the file: {missing:#?}\nonly in the file: {extra:#?}"
        );
        assert_eq!(
            in_file.len(),
            in_code.len(),
            "{section}: duplicates in the file"
        );
    }
}

#[test]
fn the_components_table_is_current() {
    assert_eq!(
        file("deploy/components.tsv"),
        components::table(),
        "deploy/components.tsv differs from the components' declarations (regenerate with \
         `scripts/generate.sh`, which runs `warren components > deploy/components.tsv`)"
    );
}

#[test]
fn docker_compose_runs_every_component_as_its_own_user_and_role() {
    let compose = file("docker-compose.yml");
    for component in components::all() {
        let (name, user, role) = (component.name, component.user(), component.db_role);
        for expected in [
            format!("command: [\"run\", \"{name}\"]"),
            format!("WARREN_AMQP_URL: amqp://{user}@rabbitmq:5672/warren"),
            format!("WARREN_DATABASE_URL: postgres://{role}@postgres:5432/warren"),
            format!("- {{ source: {user}, target: amqp-password }}"),
            format!("- {{ source: {role}, target: db-password }}"),
            format!("  {user}: {{ file: .warren/compose-secrets/rabbitmq/{user} }}"),
            format!("  {role}: {{ file: .warren/compose-secrets/postgres/{role} }}"),
            format!("      - {user}\n"),
            format!("      - {role}\n"),
        ] {
            assert!(
                compose.contains(&expected),
                "docker-compose.yml has no `{expected}`: add a service for {name} like the others"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_every_component() {
    let local = file("deploy/prometheus/prometheus.local.yml");
    let containers = file("deploy/prometheus/prometheus.yml");
    for component in components::all() {
        let job = format!("job_name: {}\n", component.name);
        assert!(
            containers.contains(&job),
            "deploy/prometheus/prometheus.yml has no {job}"
        );
        let Some(port) = component.metrics_port else {
            continue;
        };
        let target = format!("{job}    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]");
        assert!(
            local.contains(&target),
            "deploy/prometheus/prometheus.local.yml does not scrape {} on 127.0.0.1:{port}",
            component.name
        );
    }
}
