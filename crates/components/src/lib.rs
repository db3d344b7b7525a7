//! Warren's components, listed once.
//!
//! Each component declares itself in its own crate (a [`Component`]: queues, bindings, what it
//! publishes, database role and schema, metrics port); each participant adds how it starts (a
//! [`Participant`]). Everything that deploys them is derived from the lists here:
//!
//! - the broker layout ([`topology`]) and every user's permissions ([`access`]), which `warren
//!   topology apply|export` declare or write to `rabbitmq/definitions.json`;
//! - what `warren run` can start ([`participant`], [`named`]);
//! - the table of names, users, database roles and metrics ports ([`table`]) that `warren
//!   components` prints into `deploy/components.tsv`, which `scripts/lib.sh` reads; tests hold
//!   `docker-compose.yml` and the Prometheus configurations to it.
//!
//! Adding a participant adds one line to [`PARTICIPANTS`] (see `docs/extending.md`).

use bus::{Access, Topology};
use contracts::Component;
use host::Participant;
use saga::Definition;

/// The components every deployment has: the HTTP gateway and the saga orchestrator.
pub const CORE: [Component; 2] = [gateway::COMPONENT, orchestrator::COMPONENT];

/// The participants: each consumes its commands (or the events it reacts to), keeps its own
/// schema, and answers its own reads.
pub const PARTICIPANTS: [Participant; 5] = [
    order::PARTICIPANT,
    inventory::PARTICIPANT,
    payment::PARTICIPANT,
    images::PARTICIPANT,
    notifications::PARTICIPANT,
];

/// The saga definitions of `sagas/`, built into the binary: (file stem, TOML text).
pub const BUILT_IN_SAGAS: [(&str, &str); 2] = [
    ("checkout", include_str!("../../../sagas/checkout.toml")),
    ("image", include_str!("../../../sagas/image.toml")),
];

/// Every component: the core ones, then the participants.
pub fn all() -> Vec<Component> {
    CORE.into_iter()
        .chain(PARTICIPANTS.iter().map(|p| p.component))
        .collect()
}

/// The component called `name`.
pub fn named(name: &str) -> Option<Component> {
    all().into_iter().find(|c| c.name == name)
}

/// The participant called `name`.
pub fn participant(name: &str) -> Option<&'static Participant> {
    PARTICIPANTS.iter().find(|p| p.component.name == name)
}

/// Warren's broker layout, with `saga.replies` bound to every reply these definitions wait for.
pub fn topology(definitions: &[Definition]) -> Topology {
    topology_of(&all(), definitions)
}

/// The broker layout of these components (Warren's and one being added, say).
pub fn topology_of(components: &[Component], definitions: &[Definition]) -> Topology {
    Topology::of_components(components)
        .with_saga_replies(definitions.iter().flat_map(|d| d.reply_types()))
}

/// The built-in saga definitions, parsed.
///
/// # Panics
/// When one does not parse: a test (and `warren run`, which checks them) catches that first.
pub fn built_in_sagas() -> Vec<Definition> {
    BUILT_IN_SAGAS
        .iter()
        .map(|(name, text)| {
            Definition::from_toml(text)
                .unwrap_or_else(|e| panic!("the built-in {name} definition: {e}"))
        })
        .collect()
}

/// Warren's broker layout for the built-in saga definitions: for what does not depend on the
/// definitions at hand (queue names, parking and retry queues).
pub fn standard_topology() -> Topology {
    topology(&built_in_sagas())
}

/// Who may do what on the broker, for these saga definitions: the orchestrator may send their
/// commands and compensations, no other.
pub fn access(definitions: &[Definition]) -> Access {
    access_of(all(), definitions)
}

/// Who may do what on the broker, for these components and saga definitions.
pub fn access_of(components: Vec<Component>, definitions: &[Definition]) -> Access {
    let commands = definitions.iter().flat_map(|d| &d.steps).flat_map(|step| {
        std::iter::once(step.command.clone())
            .chain(step.compensation.as_ref().map(|c| c.command.clone()))
    });
    Access::new(components, commands)
}

/// One line per component (and one for the operator), tab-separated: name, broker user,
/// database role, metrics port (`-` for the gateway, which serves metrics on its HTTP
/// address). `deploy/components.tsv` holds it; a test checks it is current.
pub fn table() -> String {
    let mut table = String::from("# name\tbroker_user\tdb_role\tmetrics_port\n");
    let rows = all().into_iter().map(|c| {
        let port = c.metrics_port.map_or("-".to_owned(), |p| p.to_string());
        (c.name, c.user(), c.db_role, port)
    });
    let operator = (
        bus::access::OPERATOR,
        bus::access::DEFAULT_OPERATOR.to_owned(),
        "warren_operator",
        "-".to_owned(),
    );
    for (name, user, role, port) in rows.chain([operator]) {
        table.push_str(&format!("{name}\t{user}\t{role}\t{port}\n"));
    }
    table
}
