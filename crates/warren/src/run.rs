//! `warren run`: long-running components, all in one process or each in its own.
//!
//! Shutdown is an input: a cancellation token every component watches. On SIGTERM or SIGINT
//! the gateway stops accepting, consumers stop taking deliveries and finish the ones in hand,
//! relays finish their batch; then the connections close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus::Bus;
use bus::chaos::{self, Faults};
use bus::rpc::RpcClient;
use clap::Args;
use contracts::Schemas;
use host::{Host, Tasks};
use metrics_exporter_prometheus::PrometheusHandle;
use orchestrator::{Engine, SagaQueries};
use saga::Definition;
use sqlx::PgPool;
use store::Transactional;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::settings::{RunSettings, Settings};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to run (several may be named): `all`, `gateway`, `orchestrator`, or a participant
    /// (`order`, `inventory`, `payment`, `image`, `notification`).
    #[arg(default_values_t = [ALL.to_owned()], value_parser = names())]
    components: Vec<String>,
    /// Accept injected faults from `warren chaos set` (failure rehearsals only; never in
    /// production).
    #[arg(long, env = "WARREN_ALLOW_CHAOS")]
    allow_chaos: bool,
    #[command(flatten)]
    settings: RunSettings,
}

impl RunArgs {
    /// What the process runs, as its connection and service names show it (`order`,
    /// `gateway+orchestrator`, `all`).
    pub fn label(&self) -> String {
        self.components.join("+")
    }
}

/// Everything in one process.
const ALL: &str = "all";

/// The names `warren run` takes: `all` and every component's.
fn names() -> clap::builder::PossibleValuesParser {
    let names: Vec<&'static str> = components::all().iter().map(|c| c.name).collect();
    clap::builder::PossibleValuesParser::new([ALL].into_iter().chain(names))
}

/// The saga definitions: the ones built in, or those of `--sagas-dir`.
pub fn definitions(settings: &Settings) -> anyhow::Result<Vec<Definition>> {
    let schemas = Schemas::embedded();
    match &settings.sagas_dir {
        Some(dir) => Ok(Definition::load_dir(dir, &schemas)?),
        None => components::BUILT_IN_SAGAS
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

/// Most deliveries one handler commits in a single transaction when they arrive together (the
/// images worker, whose work is long, commits each alone).
const GROUP_COMMIT: usize = 64;
/// Group transactions the orchestrator runs at once. The workers run one at a time: two groups
/// of reservations or charges could lock the same products or accounts in opposite orders.
const ORCHESTRATOR_GROUPS: usize = 4;

/// What every component needs: the [`Host`] participants run on, and the settings and metrics
/// the gateway and the orchestrator take besides.
struct Components {
    settings: Settings,
    run: RunSettings,
    host: Host,
    metrics: PrometheusHandle,
}

impl Components {
    async fn orchestrator(&self, tasks: &mut Tasks) -> anyhow::Result<()> {
        let engine = Engine::new(self.host.pool.clone(), definitions(&self.settings)?);
        // Before the first delivery: the current versions are stored, and the older ones that
        // sagas still run on are read back.
        for definition in engine.versions().current_all() {
            info!(version = %definition.version_name(), "new sagas start on this definition");
        }
        for version in engine.versions().register(&self.host.pool).await? {
            info!(%version, "sagas still run on this older definition");
        }
        // Deadlines are written and compared on the database's clock (the sweeper measures it
        // again every 10 s).
        let offset = engine.clock().sync(&self.host.pool).await?;
        info!(
            offset_ms = offset.num_milliseconds(),
            "the database's clock against this machine's"
        );
        let handoff = self.host.relay(tasks, orchestrator::SCHEMA).await?;
        let handler = Arc::new(
            Transactional::new(
                self.host.pool.clone(),
                orchestrator::SCHEMA,
                orchestrator::PRODUCER,
                engine.clone(),
            )
            .with_handoff(handoff)
            // Replies of different sagas lock different rows: groups may overlap.
            .with_group_commit(GROUP_COMMIT, ORCHESTRATOR_GROUPS),
        );
        let component = orchestrator::COMPONENT;
        for queue in component.consumes {
            self.host
                .consume(tasks, &component, queue, Arc::clone(&handler))?;
        }
        self.host
            .answer(tasks, &component, SagaQueries::new(self.host.pool.clone()))?;
        let token = self.host.shutdown.clone();
        let interval = Duration::from_millis(self.run.sweep_interval_ms);
        tasks.spawn(async move {
            orchestrator::sweeper::run(engine, interval, token).await;
            Ok(())
        });
        Ok(())
    }

    async fn gateway(&self, tasks: &mut Tasks) -> anyhow::Result<()> {
        let state = gateway::AppState {
            bus: self.host.bus.clone(),
            publisher: self.host.bus.publisher().await?,
            rpc: RpcClient::connect(&self.host.bus).await?,
            events: gateway::LiveEvents::start(&self.host.bus, self.host.shutdown.clone()).await?,
            pool: Some(self.host.pool.clone()),
            query_timeout: Duration::from_millis(self.run.query_timeout_ms),
            images: gateway::ImageSettings {
                store: images::store::ImageStore::new(&self.run.image_store),
                upload_limit: self.run.image_upload_limit,
            },
            metrics: Some(self.metrics.clone()),
            auth: self.run.auth()?,
            limits: gateway::Limits::new(
                self.run.rate_limit,
                self.run.rate_burst,
                Duration::from_secs(self.run.request_timeout_secs),
            ),
            cors: gateway::guard::cors(&self.run.cors_origins).map_err(anyhow::Error::msg)?,
            ui: gateway::UiSettings {
                management_url: self.run.management_url.clone(),
                vhost: self.settings.vhost(),
                queues: self.host.topology.consumers.clone(),
            },
        };
        let addr = self.run.http_addr;
        let token = self.host.shutdown.clone();
        tasks.spawn(async move {
            gateway::serve(addr, state, async move { token.cancelled().await })
                .await
                .with_context(|| format!("serving HTTP on {addr}"))
        });
        Ok(())
    }

    /// `/metrics`, `/healthz` and `/readyz` on their own address: always in a process without
    /// the gateway (which serves them itself), and in any process told where.
    fn ops(&self, tasks: &mut Tasks, components: &[String]) {
        let addr = match self.run.metrics_addr {
            Some(addr) => addr,
            None if components.iter().any(|c| c == GATEWAY) => return,
            None => DEFAULT_METRICS_ADDR,
        };
        let (metrics, bus, pool) = (
            self.metrics.clone(),
            self.host.bus.clone(),
            self.host.pool.clone(),
        );
        let token = self.host.shutdown.clone();
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

/// The components that are not participants.
const GATEWAY: &str = "gateway";
const ORCHESTRATOR: &str = "orchestrator";

pub async fn run(settings: &Settings, args: RunArgs) -> anyhow::Result<()> {
    let mut components = args.components;
    if components.iter().any(|c| c == ALL) {
        // Participants first, so that the gateway takes requests once they can be served.
        components = std::iter::once(ORCHESTRATOR.to_owned())
            .chain(
                components::PARTICIPANTS
                    .iter()
                    .map(|p| p.component.name.to_owned()),
            )
            .chain([GATEWAY.to_owned()])
            .collect();
    }
    components.dedup();
    let label = components.join("+");
    // Each outbox relay (the orchestrator's too) and the notification deliverer hold a
    // connection for LISTEN; the pool size asked for is what is left for work.
    let listeners: u32 = components
        .iter()
        .map(|c| match components::participant(c) {
            Some(participant) => participant.listeners,
            None if c == ORCHESTRATOR => 1,
            None => 0,
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
        let started = start(
            settings,
            &args.settings,
            &components,
            &bus,
            &pool,
            &faults,
            &metrics,
        )
        .await;
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
        context.host.shutdown.cancel();
        // Without a connection nothing in hand can be acked: no use waiting long for it.
        let grace = match ended {
            Ended::BrokerLost => Duration::from_secs(2),
            _ => args.settings.shutdown_grace() + Duration::from_secs(1),
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
    run: &RunSettings,
    components: &[String],
    bus: &Bus,
    pool: &PgPool,
    faults: &Option<Arc<Faults>>,
    metrics: &PrometheusHandle,
) -> anyhow::Result<(Components, Tasks)> {
    // The operator declares the topology (`warren topology apply`, or the definitions the
    // broker loads); a component's user may not, so it only checks the layout is there.
    let topology = components::topology(&definitions(settings)?);
    topology
        .check(bus)
        .await
        .context("checking the broker topology")?;
    let context = Components {
        settings: settings.clone(),
        run: run.clone(),
        host: Host {
            pool: pool.clone(),
            bus: bus.clone(),
            shutdown: CancellationToken::new(),
            faults: faults.clone(),
            topology: Arc::new(topology),
            settings: run.host(GROUP_COMMIT),
        },
        metrics: metrics.clone(),
    };
    let mut tasks: Tasks = JoinSet::new();
    context.ops(&mut tasks, components);
    if let Some(faults) = faults.clone() {
        let identity = chaos::Identity {
            components: components.to_vec(),
            operator: run.operator_user.clone(),
        };
        let (bus, token) = (bus.clone(), context.host.shutdown.clone());
        tasks.spawn(async move {
            chaos::listen(bus, faults, identity, token).await;
            Ok(())
        });
    }
    for component in components {
        let started = match component.as_str() {
            ORCHESTRATOR => context.orchestrator(&mut tasks).await,
            GATEWAY => context.gateway(&mut tasks).await,
            name => match components::participant(name) {
                Some(participant) => (participant.start)(&context.host, &mut tasks).await,
                None => Err(anyhow::anyhow!("no component {name}")),
            },
        };
        if let Err(error) = started {
            context.host.shutdown.cancel();
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
