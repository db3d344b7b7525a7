//! What a component is, declared once in its own crate and read by everything that deploys it.
//!
//! Each component (`order::COMPONENT`, `orchestrator::COMPONENT`, …) is one constant of
//! [`Component`]. From the list of them (the `components` crate) come the broker topology
//! (`bus::Topology::of_components`), each user's permissions (`bus::Access`), what `warren run`
//! can start, the database role each logs in as, and the metrics ports `scripts/dev-up.sh` and
//! Prometheus use (`warren components`, written to `deploy/components.tsv`).

/// A Warren component as the broker, the database and the deployment see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// As `warren run` takes it; its broker user and connection are `warren-<name>`.
    pub name: &'static str,
    /// The first word of the queues and events it owns (`saga` for the orchestrator); none for
    /// a component that owns none (the gateway).
    pub owns: Option<&'static str>,
    /// The consumer queues it takes deliveries from, each named `<owns>.<something>`.
    pub consumes: &'static [Queue],
    /// Whether it answers reads on `<owns>.queries`.
    pub answers_queries: bool,
    /// Routing keys it publishes on `warren` besides its own events (`<owns>.evt.*`).
    pub publishes: &'static [&'static str],
    /// Whether it publishes the commands the saga definitions send (the orchestrator alone).
    pub sends_saga_commands: bool,
    /// Binding keys of the private queue it watches live events on (the gateway's).
    pub watches: &'static [&'static str],
    /// The PostgreSQL role it logs in as.
    pub db_role: &'static str,
    /// The PostgreSQL schema holding its tables, inbox and outbox, if it has one.
    pub schema: Option<&'static str>,
    /// Where `scripts/dev-up.sh` has it serve `/metrics`, `/healthz` and `/readyz` on this
    /// machine (127.0.0.1); none for the gateway, which serves them on its HTTP address.
    pub metrics_port: Option<u16>,
}

/// A consumer queue and the binding keys that fill it from the `warren` exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub name: &'static str,
    pub bindings: &'static [&'static str],
}

impl Component {
    /// A participant owning `<name>.*`: one command queue `<name>.commands` bound to
    /// `<name>.cmd.*`, a queries queue, its own schema and role. Change what differs with
    /// struct update syntax (`Component { consumes: …, ..Component::participant(…) }`).
    pub const fn participant(
        name: &'static str,
        schema: &'static str,
        db_role: &'static str,
        metrics_port: u16,
    ) -> Self {
        Self {
            name,
            owns: Some(name),
            consumes: &[],
            answers_queries: true,
            publishes: &[],
            sends_saga_commands: false,
            watches: &[],
            db_role,
            schema: Some(schema),
            metrics_port: Some(metrics_port),
        }
    }

    /// The broker user (and connection name) of the component: `warren-<name>`.
    pub fn user(&self) -> String {
        format!("warren-{}", self.name)
    }

    /// The queue it answers reads on, if it answers any.
    pub fn query_queue(&self) -> Option<String> {
        match (self.answers_queries, self.owns) {
            (true, Some(owner)) => Some(format!("{owner}.queries")),
            _ => None,
        }
    }

    /// Every queue it reads: its consumer queues and its queries queue.
    pub fn queues(&self) -> Vec<String> {
        self.consumes
            .iter()
            .map(|q| q.name.to_owned())
            .chain(self.query_queue())
            .collect()
    }
}
