//! `warren bench`: how many checkout sagas per second the running system completes, and how long
//! each takes from submission to its final state, next to what the broker alone can do.
//!
//! It seeds products and customers of its own (a chosen share of the customers cannot pay),
//! submits checkouts with bounded concurrency (closed loop) or at a fixed rate (open loop),
//! through the gateway or straight to the broker, and learns that a saga ended from the
//! `saga.evt.updated` events, as the gateway's live streams do. Then it checks the invariants
//! and measures the broker floor: confirmed, persistent publish-and-consume on a quorum queue.
//! Next to the figures it says what a saga cost: CPU per process, database commits and broker
//! messages per saga ([`cost`]).
//!
//! Modules: [`track`] follows the sagas, [`floor`] measures the broker alone, [`cost`] reads
//! the counters, [`report`] prints.

mod cost;
mod floor;
mod report;
mod track;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bus::{Bus, Outgoing, Publisher};
use clap::{Args, ValueEnum};
use contracts::Envelope;
use contracts::messages::{AccountSetBalance, ProductUpsert, SagaStart};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use self::cost::{Cost, Snapshot};
use self::track::Tracker;
use crate::history::{self, Grown};
use crate::output;
use crate::settings::Settings;
use crate::verify::{self, Report};
use crate::{broker, exit};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many checkouts to run.
    #[arg(long, default_value_t = 2_000)]
    checkouts: usize,
    /// Closed loop: at most this many sagas under way at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: submit this many checkouts per second, whatever the system's pace.
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Share of the checkouts that must be declined (their customers cannot pay).
    #[arg(long, default_value_t = 0.1, value_name = "SHARE")]
    decline_share: f64,
    /// Submit through the HTTP gateway or publish the saga starts on the broker.
    #[arg(long, value_enum, default_value_t = Via::Broker)]
    via: Via,
    /// The gateway, for `--via http`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// A gateway token allowed to check out for any customer (`customers` or `operator`
    /// scope), for `--via http`; `scripts/dev-up.sh` writes one to `.warren/dev-token`.
    #[arg(long, env = "WARREN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Messages for the broker floor measurement (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    floor_messages: usize,
    /// Give up waiting for the sagas after this long, e.g. `300s`.
    #[arg(long, value_parser = saga::duration::parse, default_value = "300s")]
    timeout: Duration,
    /// RabbitMQ's Prometheus endpoint, for the broker's message counts.
    #[arg(
        long,
        env = "WARREN_RABBITMQ_PROMETHEUS_URL",
        default_value = "http://127.0.0.1:15692"
    )]
    prometheus_url: String,
    /// First grow the tables to at least this many finished sagas (copies of finished ones),
    /// to measure throughput with a long history.
    #[arg(long, value_name = "SAGAS")]
    history: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Broker,
    Http,
}

/// Customers per run; `decline_share` of them have no money, spread so that any run of
/// consecutive checkouts (which take customers in turn) holds that share of declines.
const CUSTOMERS: usize = 100;
const PRODUCTS: usize = 20;

fn cannot_pay(customer: usize, share: f64) -> bool {
    ((customer + 1) as f64 * share).floor() > (customer as f64 * share).floor()
}

pub async fn execute(
    settings: &Settings,
    args: BenchArgs,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    if args.checkouts == 0 || args.concurrency == 0 || !(0.0..=1.0).contains(&args.decline_share) {
        eprintln!("error: --checkouts and --concurrency must be positive, --decline-share 0 to 1");
        return Ok(std::process::ExitCode::from(2));
    }
    if args
        .rate
        .is_some_and(|rate| !rate.is_finite() || rate <= 0.0)
    {
        eprintln!("error: --rate must be positive");
        return Ok(std::process::ExitCode::from(2));
    }
    let Some(bus) = broker::connect_or_report(settings).await? else {
        return Ok(std::process::ExitCode::from(exit::UNREACHABLE));
    };
    let mut db = settings.db();
    db.max_connections = 2;
    let pool = store::connect(&db)
        .await
        .context("connecting to PostgreSQL")?;
    let outcome = bench(&bus, &pool, &args, json).await;
    bus.close().await;
    pool.close().await;
    let results = outcome?;
    if json {
        output::json(&results)?;
    } else {
        report::print(&results);
    }
    Ok(if results.invariants.holds && results.timed_out == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(exit::PROBLEM)
    })
}

#[derive(Debug, Serialize)]
struct Results {
    checkouts: usize,
    via: Via,
    mode: String,
    decline_share: f64,
    sagas_per_second: f64,
    elapsed_seconds: f64,
    latency_ms: Percentiles,
    outcomes: HashMap<String, usize>,
    timed_out: usize,
    broker_floor_messages_per_second: Option<f64>,
    /// Messages of this run's saga flows (starts, commands, replies, saga events) per second.
    saga_messages_per_second: f64,
    /// Saga messages per second over the broker floor (the target: at least 0.5).
    saga_to_floor_ratio: Option<f64>,
    /// What the run cost per saga: CPU by process, commits, WAL, broker messages.
    cost: Cost,
    /// Finished sagas in the tables when the run started.
    history: Grown,
    invariants: Report,
}

#[derive(Debug, Default, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut latencies: Vec<Duration>) -> Self {
        if latencies.is_empty() {
            return Self::default();
        }
        latencies.sort();
        let at = |q: f64| {
            let rank = ((latencies.len() as f64) * q).ceil() as usize;
            latencies[rank.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

async fn bench(bus: &Bus, pool: &PgPool, args: &BenchArgs, json: bool) -> anyhow::Result<Results> {
    let run = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let publisher = bus.publisher().await?;
    let history = history::grow(pool, args.history.unwrap_or(0)).await?;
    seed(&publisher, pool, &run, args.decline_share).await?;
    let declining = (0..CUSTOMERS)
        .filter(|&c| cannot_pay(c, args.decline_share))
        .count();

    let tracker = Arc::new(Tracker::new(args.checkouts, args.concurrency));
    let events = tokio::spawn(track::follow(bus.clone(), Arc::clone(&tracker)).await?);
    let progress = if json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.checkouts as u64)
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} sagas ended  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    *tracker
        .progress
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(progress.clone());

    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .context("the token is not a valid header value")?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .context("building the HTTP client")?;
    let before = Snapshot::take(pool, &args.prometheus_url).await;
    let started = Instant::now();
    let mut ticks = args.rate.map(|rate| {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticks
    });
    for i in 0..args.checkouts {
        match ticks.as_mut() {
            Some(ticks) => {
                ticks.tick().await;
            }
            None => tracker.slots.acquire().await?.forget(),
        }
        let customer = format!("bench-{run}-{}", i % CUSTOMERS);
        let sku = format!("BENCH-{run}-{}", i % PRODUCTS);
        let (tracker, publisher, client) =
            (Arc::clone(&tracker), publisher.clone(), client.clone());
        let (via, gateway) = (args.via, args.gateway.clone());
        tokio::spawn(async move {
            let submitted = Instant::now();
            let outcome = match via {
                Via::Broker => {
                    let saga_id = Uuid::now_v7();
                    tracker.submitted(saga_id, submitted);
                    publish_start(&publisher, saga_id, &customer, &sku).await
                }
                Via::Http => post_checkout(&client, &gateway, &customer, &sku)
                    .await
                    .map(|saga_id| tracker.submitted(saga_id, submitted)),
            };
            if let Err(error) = outcome {
                tracker.failed_submission(&error);
            }
        });
    }
    let all_ended = tokio::time::timeout(args.timeout, tracker.all_ended()).await;
    let after = Snapshot::without_database(&args.prometheus_url).await;
    let finished = Instant::now();
    let elapsed = tracker.last_end().unwrap_or_else(Instant::now) - started;
    progress.finish_and_clear();
    events.abort();
    let (latencies, outcomes, errors) = tracker.results();
    if let Some(error) = errors.first() {
        eprintln!(
            "warning: {} submissions failed, the first: {error}",
            errors.len()
        );
    }
    let ended: usize = outcomes.values().sum();
    let timed_out = if all_ended.is_err() {
        args.checkouts - ended
    } else {
        0
    };
    let sagas_per_second = ended as f64 / elapsed.as_secs_f64().max(f64::EPSILON);

    let invariants = verify::settle(pool, Some(bus), Duration::from_secs(30)).await?;
    let saga_messages_per_second =
        saga_messages(pool, &run).await? as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    // The invariant check's few queries count as well; the floor's messages must not.
    tokio::time::sleep_until(finished + cost::PG_STATS_LAG).await;
    let cost = before.cost(&after.with_database(pool).await, ended);
    let floor = if args.floor_messages > 0 {
        Some(floor::broker_floor(bus, &run, args.floor_messages).await?)
    } else {
        None
    };
    Ok(Results {
        checkouts: args.checkouts,
        via: args.via,
        mode: match args.rate {
            Some(rate) => format!("open loop at {rate}/s"),
            None => format!("closed loop, {} in flight", args.concurrency),
        },
        decline_share: declining as f64 / CUSTOMERS as f64,
        sagas_per_second,
        elapsed_seconds: elapsed.as_secs_f64(),
        latency_ms: Percentiles::of(latencies),
        outcomes,
        timed_out,
        broker_floor_messages_per_second: floor,
        saga_messages_per_second,
        saga_to_floor_ratio: floor.map(|floor| saga_messages_per_second / floor),
        cost,
        history,
        invariants,
    })
}

/// Messages the run's sagas caused, from their logs: each input that came as a message (the
/// start, the replies), each command sent, and one `saga.evt.updated` per applied transition.
async fn saga_messages(pool: &PgPool, run: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum((l.message_id IS NOT NULL)::int + jsonb_array_length(l.commands) \
                + l.applied::int), 0)::bigint \
         FROM sagas.sagas s JOIN sagas.saga_log l USING (saga_id) \
         WHERE s.state->'context'->>'customer_id' LIKE $1",
    )
    .bind(format!("bench-{run}-%"))
    .fetch_one(pool)
    .await?)
}

/// Products with stock for any run, and customers of whom a `decline_share` cannot pay.
async fn seed(
    publisher: &Publisher,
    pool: &PgPool,
    run: &str,
    decline_share: f64,
) -> anyhow::Result<()> {
    let mut messages = Vec::new();
    for i in 0..PRODUCTS {
        let product = ProductUpsert {
            sku: format!("BENCH-{run}-{i}"),
            name: format!("Bench product {i}"),
            price_cents: 100 + 50 * i as i64,
            available: 1_000_000_000,
        };
        messages.push(Outgoing::event(&Envelope::new("bench", &product)));
    }
    for i in 0..CUSTOMERS {
        let account = AccountSetBalance {
            customer_id: format!("bench-{run}-{i}"),
            balance_cents: if cannot_pay(i, decline_share) {
                0
            } else {
                1 << 50
            },
        };
        messages.push(Outgoing::event(&Envelope::new("bench", &account)));
    }
    for result in publisher.send_all(&messages).await {
        result.context("seeding products and customers")?;
    }
    let pattern = format!("%{run}-%");
    let arrived = async {
        loop {
            let (products, customers): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM inventory.products WHERE sku LIKE $1), \
                        (SELECT count(*) FROM payments.accounts WHERE customer_id LIKE $1)",
            )
            .bind(&pattern)
            .fetch_one(pool)
            .await?;
            if products as usize == PRODUCTS && customers as usize == CUSTOMERS {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), arrived)
        .await
        .context("the seed data did not arrive within 60 s: are the services running?")?
}

async fn publish_start(
    publisher: &Publisher,
    saga_id: Uuid,
    customer: &str,
    sku: &str,
) -> anyhow::Result<()> {
    let input = json!({
        "order_id": Uuid::now_v7(),
        "customer_id": customer,
        "items": [{"sku": sku, "quantity": 1}],
    });
    let serde_json::Value::Object(input) = input else {
        unreachable!("a JSON object literal")
    };
    let start = SagaStart {
        saga_id,
        saga: "checkout".into(),
        input,
        request_hash: None,
    };
    publisher
        .publish(&Envelope::new("bench", &start).with_correlation(saga_id))
        .await?;
    Ok(())
}

async fn post_checkout(
    client: &reqwest::Client,
    gateway: &str,
    customer: &str,
    sku: &str,
) -> anyhow::Result<Uuid> {
    let answer = client
        .post(format!("{gateway}/v1/checkouts"))
        .json(&json!({"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}))
        .send()
        .await?
        .error_for_status()?
        .json::<serde_json::Value>()
        .await?;
    answer["saga_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .context("the gateway's answer has no saga_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declining_customers_are_spread_evenly() {
        for share in [0.0, 0.1, 0.25, 0.5, 1.0] {
            for window in [10, 20, 100] {
                let declined = (0..window).filter(|&c| cannot_pay(c, share)).count();
                assert_eq!(
                    declined,
                    (window as f64 * share).floor() as usize,
                    "{share} {window}"
                );
            }
        }
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(latencies);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(Vec::new()).max, 0.0);
    }
}
