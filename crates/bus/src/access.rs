//! Who may do what on the broker: one RabbitMQ user per component and one for operators.
//!
//! RabbitMQ checks three permissions per vhost, each a regular expression over resource names:
//! `configure` (declare or delete a queue or exchange), `write` (publish to an exchange, bind a
//! queue as destination) and `read` (consume or purge a queue, bind from an exchange). On a topic
//! exchange it also checks topic permissions: `write` against the routing key of every publish
//! and `read` against the binding key of every bind. A refused operation closes the channel with
//! `ACCESS_REFUSED` (403).
//!
//! What each component needs, worked out from what it does:
//!
//! - publishes its own events on `warren` (`<service>.evt.*`, through its outbox relay); the
//!   orchestrator publishes the commands its saga definitions send and `saga.evt.*`; the gateway
//!   publishes saga starts, product upserts and balance sets;
//! - consumes its own consumer queues and answers its own `<service>.queries` queue (`read`);
//! - sends retry copies to `warren.retry` and parked copies to `warren.dlx`, and answers queries
//!   and chaos controls through direct reply-to on the default exchange (`write`);
//! - declares only what it owns: its exclusive, connection-named queues (the gateway's live
//!   events, the chaos control queue of a process started with `--allow-chaos`), bound to the
//!   keys it listens to. Everything else is the operator's: `warren topology apply` (or the
//!   definitions the broker loads at boot) declares it, and components only check it exists
//!   ([`crate::Topology::check`], passive declares, which need no permission).
//!
//! The operator (`warren topology apply`, `dlq`, `chaos`, `bench`) owns the vhost: every
//! permission in it. Only it may publish on `warren.control`; chaos listeners also check the
//! validated `user_id` of each control message ([`crate::chaos`]).
//!
//! The default exchange is a direct exchange, so topic permissions do not reach it: a user that
//! may publish there (every component, for replies) can put a message into any queue by name.
//! The consumer runner closes that gap: a delivery that did not come through `warren` must carry
//! the `user_id` of the consuming component itself (its retry copies) or of the operator
//! ([`crate::consumer`]).

use contracts::messages::{AccountSetBalance, ProductUpsert, SagaStart};
use contracts::{Message, routing};
use serde_json::{Value, json};

use crate::Topology;

/// The purpose, in [`crate::Bus::watch`] queue names, of the gateway's live event queue.
pub const LIVE_EVENTS: &str = "live-events";
/// The binding keys of the gateway's live event queue on `warren`.
pub const LIVE_EVENT_KEYS: [&str; 2] = ["saga.evt.#", "notification.evt.#"];
/// The purpose of a chaos-allowing process's control queue.
pub const CHAOS: &str = "chaos";
/// The routing key of chaos control messages on `warren.control`.
pub const CHAOS_KEY: &str = crate::chaos::ROUTING_KEY;
/// The default exchange, as permissions name it.
pub const DEFAULT_EXCHANGE: &str = "amq.default";
/// The operator's user unless told otherwise (`WARREN_OPERATOR_USER`).
pub const DEFAULT_OPERATOR: &str = "warren-operator";

/// A user of the broker: each component, and the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway,
    Orchestrator,
    Order,
    Inventory,
    Payment,
    Image,
    Notification,
    Operator,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Gateway,
        Role::Orchestrator,
        Role::Order,
        Role::Inventory,
        Role::Payment,
        Role::Image,
        Role::Notification,
        Role::Operator,
    ];

    /// The component's name, as `warren run` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Orchestrator => "orchestrator",
            Self::Order => "order",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Image => "image",
            Self::Notification => "notification",
            Self::Operator => "operator",
        }
    }

    /// The user's name: `warren-<name>`. (A process running one component also names its
    /// connection so, and its exclusive queues after the connection.)
    pub fn user(self) -> String {
        format!("warren-{}", self.name())
    }

    /// The first word of the queues and messages the component owns (`saga` for the
    /// orchestrator); none for the gateway, which owns none, and the operator.
    pub fn owns(self) -> Option<&'static str> {
        match self {
            Self::Gateway | Self::Operator => None,
            Self::Orchestrator => Some("saga"),
            Self::Order => Some("order"),
            Self::Inventory => Some("inventory"),
            Self::Payment => Some("payment"),
            Self::Image => Some("image"),
            Self::Notification => Some("notification"),
        }
    }
}

/// What one user may do in the vhost: RabbitMQ's regular expressions, anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub configure: String,
    pub write: String,
    pub read: String,
    /// Routing keys it may publish and bind, per topic exchange (none: any key).
    pub topics: Vec<TopicGrant>,
    /// Management tags: the operator may log into the management UI.
    pub tags: Vec<&'static str>,
}

/// Topic permissions on one topic exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGrant {
    pub exchange: &'static str,
    /// Routing keys it may publish with.
    pub write: String,
    /// Binding keys it may bind with.
    pub read: String,
}

/// Every user's grant, worked out from the topology and the commands the saga definitions send
/// (which the orchestrator alone may publish).
#[derive(Debug, Clone)]
pub struct Access {
    topology: Topology,
    saga_commands: Vec<String>,
}

impl Access {
    pub fn new(topology: Topology, saga_commands: impl IntoIterator<Item = String>) -> Self {
        let mut saga_commands: Vec<String> = saga_commands.into_iter().collect();
        saga_commands.sort();
        saga_commands.dedup();
        Self {
            topology,
            saga_commands,
        }
    }

    /// The queues a component consumes: its consumer queues and its queries queue.
    pub fn queues(&self, role: Role) -> Vec<String> {
        let Some(owner) = role.owns() else {
            return Vec::new();
        };
        let mine = |name: &str| name.split('.').next() == Some(owner);
        self.topology
            .consumers
            .iter()
            .map(|c| c.name.clone())
            .chain(self.topology.queries.iter().cloned())
            .filter(|name| mine(name))
            .collect()
    }

    pub fn grant(&self, role: Role) -> Grant {
        if role == Role::Operator {
            return Grant {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
                topics: Vec::new(),
                tags: vec!["monitoring"],
            };
        }
        let mut purposes = vec![CHAOS];
        if role == Role::Gateway {
            purposes.insert(0, LIVE_EVENTS);
        }
        // `<connection>.<purpose>.<uuid>`, as `Bus::watch` names them.
        let private = format!(
            r"{}\.{}\.[0-9a-f]{{32}}",
            escape(&role.user()),
            group(&purposes.iter().map(|p| escape(p)).collect::<Vec<_>>())
        );
        let consumes = !self.queues(role).is_empty();

        let mut write = vec![escape(routing::EXCHANGE), escape(DEFAULT_EXCHANGE)];
        if consumes {
            write.push(escape(routing::RETRY_EXCHANGE));
            write.push(escape(routing::DEAD_LETTER_EXCHANGE));
        }
        write.push(private.clone());

        let mut read: Vec<String> = self.queues(role).iter().map(|q| escape(q)).collect();
        if role == Role::Gateway {
            read.push(escape(routing::EXCHANGE));
        }
        read.push(escape(routing::CONTROL_EXCHANGE));
        read.push(private.clone());

        let (publishes, binds): (Vec<String>, Vec<String>) = match role {
            Role::Gateway => (
                [
                    SagaStart::TYPE,
                    ProductUpsert::TYPE,
                    AccountSetBalance::TYPE,
                ]
                .iter()
                .map(|t| escape(t))
                .collect(),
                LIVE_EVENT_KEYS.iter().map(|k| escape(k)).collect(),
            ),
            _ => {
                let owner = role.owns().unwrap_or_default();
                let mut keys = vec![format!(r"{}\.evt\.[a-z0-9_]+", escape(owner))];
                if role == Role::Orchestrator {
                    keys.extend(self.saga_commands.iter().map(|c| escape(c)));
                }
                (keys, Vec::new())
            }
        };
        Grant {
            configure: anchored(&[private]),
            write: anchored(&write),
            read: anchored(&read),
            topics: vec![
                TopicGrant {
                    exchange: routing::EXCHANGE,
                    write: anchored(&publishes),
                    read: anchored(&binds),
                },
                TopicGrant {
                    exchange: routing::CONTROL_EXCHANGE,
                    write: String::new(),
                    read: anchored(&[escape(CHAOS_KEY)]),
                },
            ],
            tags: Vec::new(),
        }
    }

    /// The `users`, `permissions` and `topic_permissions` sections of RabbitMQ definitions for
    /// `vhost`. Users have no password (`password_hash` empty: nobody can log in as them) until
    /// one is set: `scripts/lib.sh` and the containers set each from its secret file.
    pub fn definitions(&self, vhost: &str) -> Value {
        let mut users = Vec::new();
        let mut permissions = Vec::new();
        let mut topic_permissions = Vec::new();
        for role in Role::ALL {
            let user = role.user();
            let grant = self.grant(role);
            users.push(json!({
                "name": user, "password_hash": "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": grant.tags, "limits": {},
            }));
            permissions.push(json!({
                "user": user, "vhost": vhost, "configure": grant.configure,
                "write": grant.write, "read": grant.read,
            }));
            for topic in &grant.topics {
                topic_permissions.push(json!({
                    "user": user, "vhost": vhost, "exchange": topic.exchange,
                    "write": topic.write, "read": topic.read,
                }));
            }
        }
        json!({"users": users, "permissions": permissions, "topic_permissions": topic_permissions})
    }
}

/// A name as a regular expression that matches it alone.
fn escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if r"\.^$|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn group(alternatives: &[String]) -> String {
    match alternatives {
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    }
}

/// Matches exactly one of `alternatives`; an empty string (RabbitMQ: nothing) when there are
/// none.
fn anchored(alternatives: &[String]) -> String {
    if alternatives.is_empty() {
        String::new()
    } else {
        format!("^({})$", alternatives.join("|"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new(
            Topology::standard(),
            [
                "order.cmd.create".to_owned(),
                "payment.cmd.charge".to_owned(),
            ],
        )
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
        let payment = access().grant(Role::Payment);
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
        let payment = access().grant(Role::Payment);
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
        let orchestrator = access().grant(Role::Orchestrator);
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
        let gateway = access().grant(Role::Gateway);
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
        let topology = Topology::standard();
        for queue in topology
            .consumers
            .iter()
            .map(|c| &c.name)
            .chain(&topology.queries)
        {
            let owners: Vec<Role> = Role::ALL
                .into_iter()
                .filter(|r| access.queues(*r).contains(queue))
                .collect();
            assert_eq!(owners.len(), 1, "{queue}: {owners:?}");
        }
    }

    #[test]
    fn the_operator_owns_the_vhost_and_the_definitions_list_every_user() {
        let access = access();
        assert_eq!(access.grant(Role::Operator).configure, ".*");
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
}
