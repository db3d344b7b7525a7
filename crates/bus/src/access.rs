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

use contracts::{Component, routing};
use serde_json::{Value, json};

/// The purpose, in [`crate::Bus::watch`] queue names, of a component's live event queue (the
/// gateway's: a component that [`Component::watches`] keys).
pub const LIVE_EVENTS: &str = "live-events";
/// The purpose of a chaos-allowing process's control queue.
pub const CHAOS: &str = "chaos";
/// The routing key of chaos control messages on `warren.control`.
pub const CHAOS_KEY: &str = crate::chaos::ROUTING_KEY;
/// The default exchange, as permissions name it.
pub const DEFAULT_EXCHANGE: &str = "amq.default";
/// The operator's user unless told otherwise (`WARREN_OPERATOR_USER`).
pub const DEFAULT_OPERATOR: &str = "warren-operator";
/// The operator's name in [`Access::users`]; its user is `warren-operator`.
pub const OPERATOR: &str = "operator";

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

/// Every user's grant, worked out from the components' declarations, the topology and the
/// commands the saga definitions send (which the orchestrator alone may publish).
#[derive(Debug, Clone)]
pub struct Access {
    components: Vec<Component>,
    saga_commands: Vec<String>,
}

impl Access {
    pub fn new(
        components: impl IntoIterator<Item = Component>,
        saga_commands: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut saga_commands: Vec<String> = saga_commands.into_iter().collect();
        saga_commands.sort();
        saga_commands.dedup();
        Self {
            components: components.into_iter().collect(),
            saga_commands,
        }
    }

    /// Every user: each component's, then the operator's.
    pub fn users(&self) -> Vec<String> {
        self.components
            .iter()
            .map(Component::user)
            .chain([DEFAULT_OPERATOR.to_owned()])
            .collect()
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The grant of the component called `name`, or of the operator ([`OPERATOR`]).
    ///
    /// # Panics
    /// When no component has that name: a caller names components it declared.
    pub fn grant_of(&self, name: &str) -> Grant {
        if name == OPERATOR {
            return Self::operator();
        }
        let component = self
            .component(name)
            .unwrap_or_else(|| panic!("no component {name}"));
        self.grant(component)
    }

    /// The operator owns the vhost: every permission in it, and the management UI.
    pub fn operator() -> Grant {
        Grant {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
            topics: Vec::new(),
            tags: vec!["monitoring"],
        }
    }

    pub fn grant(&self, component: &Component) -> Grant {
        let watches = !component.watches.is_empty();
        let mut purposes = vec![CHAOS];
        if watches {
            purposes.insert(0, LIVE_EVENTS);
        }
        // `<connection>.<purpose>.<uuid>`, as `Bus::watch` names them.
        let private = format!(
            r"{}\.{}\.[0-9a-f]{{32}}",
            escape(&component.user()),
            group(&purposes.iter().map(|p| escape(p)).collect::<Vec<_>>())
        );
        let queues = component.queues();
        let consumes = !queues.is_empty();

        let mut write = vec![escape(routing::EXCHANGE), escape(DEFAULT_EXCHANGE)];
        if consumes {
            write.push(escape(routing::RETRY_EXCHANGE));
            write.push(escape(routing::DEAD_LETTER_EXCHANGE));
        }
        write.push(private.clone());

        let mut read: Vec<String> = queues.iter().map(|q| escape(q)).collect();
        if watches {
            read.push(escape(routing::EXCHANGE));
        }
        read.push(escape(routing::CONTROL_EXCHANGE));
        read.push(private.clone());

        let mut publishes: Vec<String> = component
            .owns
            .map(|owner| format!(r"{}\.evt\.[a-z0-9_]+", escape(owner)))
            .into_iter()
            .chain(component.publishes.iter().map(|k| escape(k)))
            .collect();
        if component.sends_saga_commands {
            publishes.extend(self.saga_commands.iter().map(|c| escape(c)));
        }
        let binds: Vec<String> = component.watches.iter().map(|k| escape(k)).collect();
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
        let grants = self
            .components
            .iter()
            .map(|c| (c.user(), self.grant(c)))
            .chain([(DEFAULT_OPERATOR.to_owned(), Self::operator())]);
        for (user, grant) in grants {
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
