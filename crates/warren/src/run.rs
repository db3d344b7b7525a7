//! `warren run`: long-running components, all in one process or each in its own.
//!
//! Shutdown is an input: a cancellation token every component watches. On SIGTERM or SIGINT
//! the gateway stops accepting, consumers stop taking deliveries and finish the ones in hand,
//! relays finish their batch; then the connections close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus::chaos::{self, Faults};
use bus::rpc::{self, QueryHandler, RpcClient};
use bus::{Bus, ConsumerSpec, Handler, Topology};
use clap::{Args, ValueEnum};
use contracts::Schemas;
use metrics_exporter_prometheus::PrometheusHandle;
use orchestrator::{Engine, SagaQueries};
use saga::Definition;
use sqlx::PgPool;
use store::{Handoff, Relay, RelaySettings, Transactional};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::queries::{Service, ServiceQueries};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to run (several may be named).
    #[arg(value_enum, default_values_t = [Component::All])]
    components: Vec<Component>,
    /// Accept injected faults from `warren chaos set` (failure rehearsals only; never in
    /// production).
    #[arg(long, env = "WARREN_ALLOW_CHAOS")]
    allow_chaos: bool,
}

impl RunArgs {
    /// What the process runs, as its connection and service names show it (`order`,
    /// `gateway+orchestrator`, `all`).
    pub fn label(&self) -> String {
        self.components
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join("+")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Component {
    /// Everything in one process.
    All,
    /// The HTTP gateway.
    Gateway,
    /// The saga orchestrator: replies, starts, timeouts, saga queries.
    Orchestrator,
    /// The order service.
    Order,
    /// The inventory service.
    Inventory,
    /// The payment service.
    Payment,
    /// The notification service: stores and delivers customers' notifications.
    Notification,
    /// The image worker: processes uploads into variants.
    Image,
}

const PARTS: [Component; 7] = [
    Component::Image,
    Component::Orchestrator,
    Component::Order,
    Component::Inventory,
    Component::Payment,
    Component::Notification,
    Component::Gateway,
];

impl Component {
    fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Gateway => "gateway",
            Self::Orchestrator => "orchestrator",
            Self::Order => "order",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Notification => "notification",
            Self::Image => "image",
        }
    }
}

/// The definitions of `sagas/`, built into the binary.
const BUILT_IN: [(&str, &str); 2] = [
    ("checkout", include_str!("../../../sagas/checkout.toml")),
    ("image", include_str!("../../../sagas/image.toml")),
];

/// The saga definitions: the ones built in, or those of `--sagas-dir`.
pub fn definitions(settings: &Settings) -> anyhow::Result<Vec<Definition>> {
    let schemas = Schemas::embedded();
    match &settings.sagas_dir {
        Some(dir) => Ok(Definition::load_dir(dir, &schemas)?),
        None => BUILT_IN
            .iter()
            .map(|(name, text)| {
                let definition = Definition::from_toml(text)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("the built-in {name} definition"))?;
                let errors = definition.check(&schemas);
                anyhow::ensure!(
                    errors.is_empty(),
                    "the built-in {name} definition: {errors:?}"
                );
                Ok(definition)
            })
            .collect(),
    }
}

/// The faults a chaos-allowing process can inject, told which messages are compensations and
/// saga replies by the definitions.
fn faults(settings: &Settings) -> anyhow::Result<Faults> {
    let definitions = definitions(settings)?;
    let compensations = definitions
        .iter()
        .flat_map(|d| &d.steps)
        .filter_map(|step| step.compensation.as_ref())
        .map(|c| c.command.clone());
    let replies: Vec<String> = definitions
        .iter()
        .flat_map(|d| d.reply_types())
        .map(str::to_owned)
        .collect();
    Ok(Faults::new(compensations, replies))
}

type Tasks = JoinSet<anyhow::Result<()>>;

/// Most deliveries one handler commits in a single transaction when they arrive together (the
/// images worker, whose work is long, commits each alone).
const GROUP_COMMIT: usize = 64;
/// Group transactions the orchestrator runs at once. The workers run one at a time: two groups
/// of reservations or charges could lock the same products or accounts in opposite orders.
const ORCHESTRATOR_GROUPS: usize = 4;

/// What every component needs, and how to start each.
struct Components {
    settings: Settings,
    bus: Bus,
    pool: PgPool,
    shutdown: CancellationToken,
    /// Present only when the process allows chaos.
    faults: Option<Arc<Faults>>,
    metrics: PrometheusHandle,
}

impl Components {
    fn consume<H: Handler>(
        &self,
        tasks: &mut Tasks,
        queue: &str,
        component: &str,
        handler: Arc<H>,
    ) -> anyhow::Result<()> {
        self.consume_with(tasks, queue, component, handler, self.settings.prefetch)
    }

    fn consume_with<H: Handler>(
        &self,
        tasks: &mut Tasks,
        queue: &str,
        component: &str,
        handler: Arc<H>,
        prefetch: u16,
    ) -> anyhow::Result<()> {
        let topology = Topology::standard();
        let queue = topology
            .consumer(queue)
            .with_context(|| format!("no consumer queue {queue} in the topology"))?
            .clone();
        let mut spec = ConsumerSpec::new(queue, component)
            .with_prefetch(prefetch)
            .with_faults(self.faults.clone())
            .with_trusted([self.settings.operator_user.clone()]);
        spec.shutdown_grace = self.settings.shutdown_grace();
        let bus = self.bus.clone();
        let token = self.shutdown.clone();
        tasks.spawn(async move {
            Ok(bus::consumer::run(&bus, spec, Schemas::embedded(), handler, token).await?)
        });
        Ok(())
    }

    /// Starts the outbox relay of a schema; handlers of that schema hand it their messages.
    async fn relay(&self, tasks: &mut Tasks, schema: &'static str) -> anyhow::Result<Handoff> {
        let relay = Relay::new(
            schema,
            self.pool.clone(),
            self.bus.publisher().await?,
            RelaySettings {
                confirm_timeout: Duration::from_millis(self.settings.confirm_timeout_ms),
                ..RelaySettings::default()
            },
        )
        .with_faults(self.faults.clone());
        let handoff = relay.handoff();
        let token = self.shutdown.clone();
        tasks.spawn(async move { Ok(relay.run(token).await?) });
        Ok(handoff)
    }

    fn answer<H: QueryHandler>(&self, tasks: &mut Tasks, queue: &'static str, handler: H) {
        let bus = self.bus.clone();
        let token = self.shutdown.clone();
        let prefetch = self.settings.prefetch;
        tasks.spawn(async move {
            Ok(rpc::serve(&bus, queue, prefetch, Arc::new(handler), token).await?)
        });
    }

    async fn service(&self, tasks: &mut Tasks, component: Component) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        let (queue, queries, schema, service) = match component {
            Component::Order => (
                "order.commands",
                "order.queries",
                services::order::SCHEMA,
                Service::Order,
            ),
            Component::Inventory => (
                "inventory.commands",
                "inventory.queries",
                services::inventory::SCHEMA,
                Service::Inventory,
            ),
            Component::Payment => (
                "payment.commands",
                "payment.queries",
                services::payment::SCHEMA,
                Service::Payment,
            ),
            _ => unreachable!("only services"),
        };
        let handoff = self.relay(tasks, schema).await?;
        let name = component.name();
        match component {
            Component::Order => {
                let handler = services::order::handler(pool.clone())
                    .with_handoff(handoff)
                    .with_group_commit(GROUP_COMMIT, 1);
                self.consume(tasks, queue, name, Arc::new(handler))?;
            }
            Component::Inventory => {
                let handler = services::inventory::handler(pool.clone())
                    .with_handoff(handoff)
                    .with_group_commit(GROUP_COMMIT, 1);
                self.consume(tasks, queue, name, Arc::new(handler))?;
            }
            _ => {
                let handler = services::payment::handler(pool.clone(), self.faults.clone())
                    .with_handoff(handoff)
                    .with_group_commit(GROUP_COMMIT, 1);
                self.consume(tasks, queue, name, Arc::new(handler))?;
            }
        }
        self.answer(tasks, queries, ServiceQueries { service, pool });
        Ok(())
    }

    async fn image(&self, tasks: &mut Tasks) -> anyhow::Result<()> {
        let store = images::store::ImageStore::new(&self.settings.image_store);
        let handoff = self.relay(tasks, images::worker::SCHEMA).await?;
        let handler =
            images::worker::handler(self.pool.clone(), store, images::process::Limits::default())
                .with_handoff(handoff);
        // Image work is CPU-bound: take no more at once than there are cores to do it.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let prefetch = u16::try_from(cores).unwrap_or(u16::MAX);
        self.consume_with(
            tasks,
            "image.commands",
            "image",
            Arc::new(handler),
            prefetch,
        )?;
        self.answer(
            tasks,
            "image.queries",
            ServiceQueries {
                service: Service::Image,
                pool: self.pool.clone(),
            },
        );
        Ok(())
    }

    async fn notification(&self, tasks: &mut Tasks) -> anyhow::Result<()> {
        use notifications::delivery::{self, AnyChannel, SmtpSettings};
        let smtp = SmtpSettings::from_env()?;
        let channel = AnyChannel::configured(smtp.as_ref())?;
        let handoff = self.relay(tasks, notifications::SCHEMA).await?;
        self.consume(
            tasks,
            "notification.events",
            "notification",
            Arc::new(
                notifications::handler(self.pool.clone())
                    .with_handoff(handoff)
                    .with_group_commit(GROUP_COMMIT, 1),
            ),
        )?;
        self.answer(
            tasks,
            "notification.queries",
            ServiceQueries {
                service: Service::Notification,
                pool: self.pool.clone(),
            },
        );
        let (pool, token) = (self.pool.clone(), self.shutdown.clone());
        tasks.spawn(async move { Ok(delivery::run(pool, channel, token).await?) });
        Ok(())
    }

    async fn orchestrator(&self, tasks: &mut Tasks) -> anyhow::Result<()> {
        let engine = Engine::new(self.pool.clone(), definitions(&self.settings)?);
        // Before the first delivery: the current versions are stored, and the older ones that
        // sagas still run on are read back.
        for definition in engine.versions().current_all() {
            info!(version = %definition.version_name(), "new sagas start on this definition");
        }
        for version in engine.versions().register(&self.pool).await? {
            info!(%version, "sagas still run on this older definition");
        }
        // Deadlines are written and compared on the database's clock (the sweeper measures it
        // again every 10 s).
        let offset = engine.clock().sync(&self.pool).await?;
        info!(
            offset_ms = offset.num_milliseconds(),
            "the database's clock against this machine's"
        );
        let handoff = self.relay(tasks, orchestrator::SCHEMA).await?;
        let handler = Arc::new(
            Transactional::new(
                self.pool.clone(),
                orchestrator::SCHEMA,
                orchestrator::COMPONENT,
                engine.clone(),
            )
            .with_handoff(handoff)
            // Replies of different sagas lock different rows: groups may overlap.
            .with_group_commit(GROUP_COMMIT, ORCHESTRATOR_GROUPS),
        );
        self.consume(tasks, "saga.commands", "orchestrator", Arc::clone(&handler))?;
        self.consume(tasks, "saga.replies", "orchestrator", handler)?;
        self.answer(tasks, "saga.queries", SagaQueries::new(self.pool.clone()));
        let token = self.shutdown.clone();
        let interval = Duration::from_millis(self.settings.sweep_interval_ms);
        tasks.spawn(async move {
            orchestrator::sweeper::run(engine, interval, token).await;
            Ok(())
        });
        Ok(())
    }

    async fn gateway(&self, tasks: &mut Tasks) -> anyhow::Result<()> {
        let state = gateway::AppState {
            bus: self.bus.clone(),
            publisher: self.bus.publisher().await?,
            rpc: RpcClient::connect(&self.bus).await?,
            events: gateway::LiveEvents::start(&self.bus, self.shutdown.clone()).await?,
            pool: Some(self.pool.clone()),
            query_timeout: Duration::from_millis(self.settings.query_timeout_ms),
            images: gateway::ImageSettings {
                store: images::store::ImageStore::new(&self.settings.image_store),
                upload_limit: self.settings.image_upload_limit,
            },
            metrics: Some(self.metrics.clone()),
            auth: self.settings.auth()?,
            limits: gateway::Limits::new(
                self.settings.rate_limit,
                self.settings.rate_burst,
                Duration::from_secs(self.settings.request_timeout_secs),
            ),
            cors: gateway::guard::cors(&self.settings.cors_origins).map_err(anyhow::Error::msg)?,
            ui: gateway::UiSettings {
                management_url: self.settings.management_url.clone(),
                vhost: self.settings.vhost(),
            },
        };
        let addr = self.settings.http_addr;
        let token = self.shutdown.clone();
        tasks.spawn(async move {
            gateway::serve(addr, state, async move { token.cancelled().await })
                .await
                .with_context(|| format!("serving HTTP on {addr}"))
        });
        Ok(())
    }

    /// `/metrics`, `/healthz` and `/readyz` on their own address: always in a process without
    /// the gateway (which serves them itself), and in any process told where.
    fn ops(&self, tasks: &mut Tasks, components: &[Component]) {
        let addr = match self.settings.metrics_addr {
            Some(addr) => addr,
            None if components.contains(&Component::Gateway) => return,
            None => DEFAULT_METRICS_ADDR,
        };
        let (metrics, bus, pool) = (self.metrics.clone(), self.bus.clone(), self.pool.clone());
        let token = self.shutdown.clone();
        tasks.spawn(async move {
            crate::ops::serve(addr, metrics, bus, pool, async move {
                token.cancelled().await;
            })
            .await
            .with_context(|| format!("serving metrics on {addr}"))
        });
    }
}

/// Where a process without the gateway serves its metrics unless told otherwise.
const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9180);

pub async fn run(settings: &Settings, args: RunArgs) -> anyhow::Result<()> {
    let mut components = args.components;
    if components.contains(&Component::All) {
        components = PARTS.to_vec();
    }
    components.dedup();
    let label = components
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join("+");
    // Each outbox relay and the notification deliverer hold a connection for LISTEN; the
    // pool size asked for is what is left for work.
    let listeners: u32 = components
        .iter()
        .map(|c| match c {
            Component::Gateway => 0,
            Component::Notification => 2,
            _ => 1,
        })
        .sum();
    let mut db = settings.db();
    db.max_connections += listeners;
    let pool = store::connect(&db).await?;
    // Faults outlive a reconnection: what an operator set stays set.
    let faults = if args.allow_chaos {
        Some(Arc::new(faults(settings)?))
    } else {
        None
    };
    let stop = CancellationToken::new();
    let metrics = crate::telemetry::metrics(stop.clone())?;
    tokio::spawn({
        let stop = stop.clone();
        async move {
            signal().await;
            stop.cancel();
        }
    });

    let mut bus = Bus::connect(&settings.bus(&label)).await?;
    let outcome = loop {
        let started = start(settings, &components, &bus, &pool, &faults, &metrics).await;
        let (context, mut tasks) = match started {
            Ok(started) => started,
            Err(error) if !bus.is_connected() => {
                warn!(error = %format!("{error:#}"), "cannot start the components while the broker is away");
                bus = reconnect(settings, &label, &bus, &stop).await?;
                continue;
            }
            Err(error) => break Err(error),
        };
        info!(components = %label, "warren running");
        let ended = tokio::select! {
            () = stop.cancelled() => Ended::Stopped,
            Some(finished) = tasks.join_next() => Ended::Failed(finished),
            () = bus.lost(LOST_AFTER) => Ended::BrokerLost,
        };
        context.shutdown.cancel();
        // Without a connection nothing in hand can be acked: no use waiting long for it.
        let grace = match ended {
            Ended::BrokerLost => Duration::from_secs(2),
            _ => settings.shutdown_grace() + Duration::from_secs(1),
        };
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            error!("components did not stop within the grace period");
        }
        match ended {
            Ended::Stopped => break Ok(()),
            // A component that fails while the connection is down is one more sign of it.
            Ended::BrokerLost | Ended::Failed(_) if !bus.is_connected() => {
                error!(
                    "the broker connection did not recover; reconnecting and restarting the components"
                );
                bus = reconnect(settings, &label, &bus, &stop).await?;
                metrics::counter!("warren_broker_reconnects_total").increment(1);
            }
            Ended::BrokerLost => {}
            Ended::Failed(finished) => {
                error!(?finished, "a component stopped on its own; shutting down");
                break match finished {
                    Ok(Err(error)) => Err(error),
                    Err(join) => Err(join.into()),
                    Ok(Ok(())) => Ok(()),
                };
            }
        }
    };
    bus.close().await;
    pool.close().await;
    info!("warren stopped");
    outcome
}

/// How long the broker connection may stay down, recovering by itself, before the components
/// are restarted on a new one. lapin gives up for good when its recovery meets an error it
/// does not retry (a queue not yet back after a broker restart, say), and its consumers then
/// wait for ever.
const LOST_AFTER: Duration = Duration::from_secs(15);

enum Ended {
    Stopped,
    Failed(Result<anyhow::Result<()>, tokio::task::JoinError>),
    BrokerLost,
}

/// Starts every component on `bus`; the returned context's token stops them.
async fn start(
    settings: &Settings,
    components: &[Component],
    bus: &Bus,
    pool: &PgPool,
    faults: &Option<Arc<Faults>>,
    metrics: &PrometheusHandle,
) -> anyhow::Result<(Components, Tasks)> {
    // The operator declares the topology (`warren topology apply`, or the definitions the
    // broker loads); a component's user may not, so it only checks the layout is there.
    Topology::standard()
        .check(bus)
        .await
        .context("checking the broker topology")?;
    let context = Components {
        settings: settings.clone(),
        bus: bus.clone(),
        pool: pool.clone(),
        shutdown: CancellationToken::new(),
        faults: faults.clone(),
        metrics: metrics.clone(),
    };
    let mut tasks: Tasks = JoinSet::new();
    context.ops(&mut tasks, components);
    if let Some(faults) = faults.clone() {
        let identity = chaos::Identity {
            components: components.iter().map(|c| c.name().to_owned()).collect(),
            operator: settings.operator_user.clone(),
        };
        let (bus, token) = (bus.clone(), context.shutdown.clone());
        tasks.spawn(async move {
            chaos::listen(bus, faults, identity, token).await;
            Ok(())
        });
    }
    for component in components {
        let started = match component {
            Component::Orchestrator => context.orchestrator(&mut tasks).await,
            Component::Gateway => context.gateway(&mut tasks).await,
            Component::Notification => context.notification(&mut tasks).await,
            Component::Image => context.image(&mut tasks).await,
            service => context.service(&mut tasks, *service).await,
        };
        if let Err(error) = started {
            context.shutdown.cancel();
            while tasks.join_next().await.is_some() {}
            return Err(error);
        }
    }
    Ok((context, tasks))
}

/// A new connection in place of a lost one, tried until it works or the process is stopped.
async fn reconnect(
    settings: &Settings,
    label: &str,
    lost: &Bus,
    stop: &CancellationToken,
) -> anyhow::Result<Bus> {
    lost.close().await;
    let bus_settings = settings.bus(label);
    loop {
        tokio::select! {
            () = stop.cancelled() => anyhow::bail!("stopped while reconnecting to the broker"),
            connected = Bus::connect(&bus_settings) => match connected {
                Ok(bus) => return Ok(bus),
                Err(error) => warn!(%error, "the broker is still away; trying again"),
            },
        }
        tokio::select! {
            () = stop.cancelled() => anyhow::bail!("stopped while reconnecting to the broker"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn every_reply_a_saga_waits_for_reaches_the_orchestrator() {
        let settings = crate::Cli::parse_from(["warren", "migrate"]).settings;
        let topology = Topology::standard();
        for definition in definitions(&settings).unwrap() {
            for reply in definition.reply_types() {
                assert!(
                    topology.routes(reply).contains(&"saga.replies"),
                    "{reply} does not reach saga.replies"
                );
            }
        }
    }
}
