//! What a component runs on, and how a participant says what it runs.
//!
//! A participant (order, inventory, payment, image, notification) is declared in its own
//! crate by one [`Participant`]: its [`Component`] (queues, bindings, permissions, database
//! role and schema, metrics port) and a [`Start`] function that, given a [`Host`], starts its
//! outbox relay, its consumers and its query server. The `components` crate lists them; `warren
//! run`, the topology, the access rules and the deployment files are derived from that list.
//!
//! A [`Host`] is what `warren run` hands every component: the pool, the bus connection, the
//! shutdown token, the faults of a chaos-allowing process, and the settings every participant
//! shares. Its helpers start each kind of task the same way for everyone.
//!
//! What participants' handlers do alike lives here too (the order, inventory and payment crates
//! use it):
//! - [`handling`]: decoding a payload, mapping a database failure, parking a message that can
//!   never be handled, [`handling::Lock`], and cutting a group commit into runs.
//! - [`status!`] (in [`status`](mod@status)): a status enum stored as lowercase text, with its
//!   SQL spelling and parser ([`status::UnknownStatus`] for a spelling the code does not know).

pub mod handling;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus::chaos::Faults;
use bus::rpc::{self, QueryHandler};
use bus::{Bus, ConsumerSpec, Handler, Topology};
use contracts::component::Queue;
use contracts::{Component, Schemas};
use futures_util::future::BoxFuture;
use sqlx::PgPool;
use store::{Handoff, Relay, RelaySettings, Transactional, TxHandler};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The tasks of a running process: each runs until shutdown, and one ending early (with an
/// error or not) stops the process.
pub type Tasks = JoinSet<anyhow::Result<()>>;

/// Starts a participant's tasks on a host.
pub type Start = for<'a> fn(&'a Host, &'a mut Tasks) -> BoxFuture<'a, anyhow::Result<()>>;

/// A participant: what it is, and how it starts.
#[derive(Debug, Clone, Copy)]
pub struct Participant {
    pub component: Component,
    /// Connections it holds apart from the pool's work (one per outbox relay's `LISTEN`, say),
    /// added to the pool size asked for.
    pub listeners: u32,
    pub start: Start,
}

/// The settings every participant shares.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Deliveries a consumer holds at once.
    pub prefetch: u16,
    /// Most deliveries a handler commits in one transaction when they arrive together.
    pub group_commit: usize,
    /// How long a stopping consumer waits for the deliveries in hand.
    pub shutdown_grace: Duration,
    pub relay: RelaySettings,
    /// Users (the operator's) whose messages a consumer takes from the default exchange.
    pub trusted: Vec<String>,
    /// Where uploaded images and their variants are kept (the gateway writes uploads, the
    /// image worker their variants).
    pub image_store: PathBuf,
}

/// What a component runs on.
#[derive(Debug, Clone)]
pub struct Host {
    pub pool: PgPool,
    pub bus: Bus,
    /// Cancelled when the components are to stop.
    pub shutdown: CancellationToken,
    /// Present only when the process allows chaos.
    pub faults: Option<Arc<Faults>>,
    /// The broker layout, for each consumer queue's delivery limit and retry tiers.
    pub topology: Arc<Topology>,
    pub settings: HostSettings,
}

impl Host {
    /// Starts the outbox relay of `schema`; the handlers of that schema hand it their messages.
    pub async fn relay(&self, tasks: &mut Tasks, schema: &'static str) -> anyhow::Result<Handoff> {
        let relay = Relay::new(
            schema,
            self.pool.clone(),
            self.bus.publisher().await?,
            self.settings.relay.clone(),
        )
        .with_faults(self.faults.clone());
        let handoff = relay.handoff();
        let token = self.shutdown.clone();
        tasks.spawn(async move { Ok(relay.run(token).await?) });
        Ok(handoff)
    }

    /// Consumes `queue` of `component` with `handler`, holding the shared prefetch.
    pub fn consume<H: Handler>(
        &self,
        tasks: &mut Tasks,
        component: &Component,
        queue: &Queue,
        handler: Arc<H>,
    ) -> anyhow::Result<()> {
        self.consume_with(tasks, component, queue, handler, self.settings.prefetch)
    }

    /// Consumes `queue` holding at most `prefetch` deliveries at once.
    pub fn consume_with<H: Handler>(
        &self,
        tasks: &mut Tasks,
        component: &Component,
        queue: &Queue,
        handler: Arc<H>,
        prefetch: u16,
    ) -> anyhow::Result<()> {
        let queue = self
            .topology
            .consumer(queue.name)
            .with_context(|| format!("no consumer queue {} in the topology", queue.name))?
            .clone();
        let mut spec = ConsumerSpec::new(queue, component.name)
            .with_prefetch(prefetch)
            .with_faults(self.faults.clone())
            .with_trusted(self.settings.trusted.clone());
        spec.shutdown_grace = self.settings.shutdown_grace;
        let bus = self.bus.clone();
        let token = self.shutdown.clone();
        tasks.spawn(async move {
            Ok(bus::consumer::run(&bus, spec, Schemas::embedded(), handler, token).await?)
        });
        Ok(())
    }

    /// The usual participant: its outbox relay, every consumer queue of `component` handled by
    /// `handler` with group commits (one group at a time: two groups could lock the same rows
    /// in opposite orders), and its queries.
    pub async fn run_transactional<T: TxHandler>(
        &self,
        tasks: &mut Tasks,
        component: &Component,
        handler: Transactional<T>,
        queries: impl QueryHandler,
    ) -> anyhow::Result<()> {
        let schema = component
            .schema
            .with_context(|| format!("{} has no schema for its outbox", component.name))?;
        let handoff = self.relay(tasks, schema).await?;
        let handler = Arc::new(
            handler
                .with_handoff(handoff)
                .with_group_commit(self.settings.group_commit, 1),
        );
        for queue in component.consumes {
            self.consume(tasks, component, queue, Arc::clone(&handler))?;
        }
        self.answer(tasks, component, queries)
    }

    /// Answers the reads of `component` on its queries queue.
    pub fn answer<H: QueryHandler>(
        &self,
        tasks: &mut Tasks,
        component: &Component,
        handler: H,
    ) -> anyhow::Result<()> {
        let queue = component
            .query_queue()
            .with_context(|| format!("{} answers no queries", component.name))?;
        let bus = self.bus.clone();
        let token = self.shutdown.clone();
        let prefetch = self.settings.prefetch;
        tasks.spawn(async move {
            Ok(rpc::serve(&bus, &queue, prefetch, Arc::new(handler), token).await?)
        });
        Ok(())
    }
}
