//! What a run cost, read before and after it from the machine and from the servers' own
//! counters, so a user who tunes Warren sees where the time goes without a profiler:
//! - CPU time of every PostgreSQL, RabbitMQ and Warren process on this machine, from
//!   `/proc/<pid>/stat` (user + system, and for PostgreSQL's postmaster the time of the backends
//!   it reaped during the run);
//! - the database's commits and WAL (`pg_stat_database`, `pg_stat_wal`);
//! - the broker's messages: published to exchanges, and copies enqueued (a message routed to
//!   two queues is stored twice), from its Prometheus endpoint.
//!
//! A part that cannot be read (servers on another machine, no Prometheus plugin) is left out
//! and said so; the rest is still reported.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

/// Linux reports process times in clock ticks of `USER_HZ`, which is 100 on every platform
/// Warren builds for (it is part of the kernel's user ABI, unlike the kernel's own `HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// CPU seconds by process group ("PostgreSQL", "RabbitMQ", each Warren component).
    cpu: BTreeMap<String, f64>,
    database: Option<Database>,
    broker: Option<Broker>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Database {
    commits: i64,
    rollbacks: i64,
    wal_bytes: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Broker {
    published: f64,
    enqueued: f64,
}

/// The difference of two snapshots, per saga.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub sagas: usize,
    /// Milliseconds of CPU per saga by process group, and their sum.
    pub cpu_ms_per_saga: BTreeMap<String, f64>,
    pub cpu_ms_per_saga_total: f64,
    /// The bench's own CPU (the load generator), not part of the total.
    pub bench_cpu_ms_per_saga: f64,
    pub commits_per_saga: Option<f64>,
    pub rollbacks_per_saga: Option<f64>,
    pub wal_bytes_per_saga: Option<f64>,
    pub broker_published_per_saga: Option<f64>,
    pub broker_enqueued_per_saga: Option<f64>,
    /// What could not be read, and why.
    pub missing: Vec<String>,
}

/// The names the bench's own process is reported under.
const BENCH: &str = "bench";

impl Snapshot {
    /// Reads every counter now. `prometheus` is the broker's Prometheus endpoint (its base URL).
    pub async fn take(pool: &PgPool, prometheus: &str) -> Self {
        Self {
            cpu: processes(),
            database: database(pool).await,
            broker: broker(prometheus).await,
        }
    }

    /// Reads the process and broker counters now, and leaves the database's for later
    /// ([`Self::with_database`]): PostgreSQL counts a transaction only when its backend
    /// reports, within [`PG_STATS_LAG`].
    pub async fn without_database(prometheus: &str) -> Self {
        Self {
            cpu: processes(),
            database: None,
            broker: broker(prometheus).await,
        }
    }

    /// Adds the database's counters, read now.
    pub async fn with_database(mut self, pool: &PgPool) -> Self {
        self.database = database(pool).await;
        self
    }

    /// What happened between `self` (before) and `after`, for `sagas` sagas.
    pub fn cost(&self, after: &Snapshot, sagas: usize) -> Cost {
        let per = |x: f64| x / sagas.max(1) as f64;
        let mut cpu = BTreeMap::new();
        let mut bench = 0.0;
        for (name, &seconds) in &after.cpu {
            let spent = seconds - self.cpu.get(name).copied().unwrap_or(0.0);
            if name == BENCH {
                bench = per(spent * 1000.0);
            } else if spent > 0.0 {
                cpu.insert(name.clone(), per(spent * 1000.0));
            }
        }
        let mut missing = Vec::new();
        for (server, name) in [("postgres", "PostgreSQL"), ("beam.smp", "RabbitMQ")] {
            if !after.cpu.contains_key(name) {
                missing.push(format!(
                    "no {server} process on this machine: {name}'s CPU is not counted"
                ));
            }
        }
        let database = match (self.database, after.database) {
            (Some(before), Some(after)) => Some((before, after)),
            _ => {
                missing.push("PostgreSQL's statistics (pg_stat_database) could not be read".into());
                None
            }
        };
        let broker = match (self.broker, after.broker) {
            (Some(before), Some(after)) => Some((before, after)),
            _ => {
                missing.push(
                    "RabbitMQ's Prometheus endpoint did not answer: no broker message counts"
                        .into(),
                );
                None
            }
        };
        Cost {
            sagas,
            cpu_ms_per_saga_total: cpu.values().sum(),
            cpu_ms_per_saga: cpu,
            bench_cpu_ms_per_saga: bench,
            commits_per_saga: database.map(|(b, a)| per((a.commits - b.commits) as f64)),
            rollbacks_per_saga: database.map(|(b, a)| per((a.rollbacks - b.rollbacks) as f64)),
            wal_bytes_per_saga: database.and_then(|(b, a)| Some(per(a.wal_bytes? - b.wal_bytes?))),
            broker_published_per_saga: broker.map(|(b, a)| per(a.published - b.published)),
            broker_enqueued_per_saga: broker.map(|(b, a)| per(a.enqueued - b.enqueued)),
            missing,
        }
    }
}

/// How long PostgreSQL may take to count a finished transaction in `pg_stat_database`: a
/// backend that goes idle reports its counts within ten seconds (`PGSTAT_IDLE_INTERVAL`).
pub const PG_STATS_LAG: Duration = Duration::from_millis(10_500);

/// CPU seconds of the processes that make up the system, by group.
fn processes() -> BTreeMap<String, f64> {
    let mut cpu = BTreeMap::new();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(times) = Times::parse(&stat) else {
            continue;
        };
        let group = if pid == me {
            Some(BENCH.to_owned())
        } else {
            match times.command.as_str() {
                "postgres" => Some("PostgreSQL".to_owned()),
                "beam.smp" => Some("RabbitMQ".to_owned()),
                "warren" => std::fs::read(format!("/proc/{pid}/cmdline"))
                    .ok()
                    .and_then(|cmdline| component(&cmdline)),
                _ => None,
            }
        };
        if let Some(group) = group {
            *cpu.entry(group).or_default() += times.seconds();
        }
    }
    cpu
}

/// A process's name and CPU ticks, from its `/proc/<pid>/stat` line.
#[derive(Debug, PartialEq)]
struct Times {
    command: String,
    /// utime + stime of the process, plus cutime + cstime of the children it waited for
    /// (PostgreSQL's postmaster reaps backends that ended during the run).
    ticks: u64,
}

impl Times {
    fn parse(stat: &str) -> Option<Self> {
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so it ends at the
        // last ')'. utime, stime, cutime, cstime are fields 14 to 17.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let command = stat.get(open + 1..close)?.to_owned();
        let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = field(14)? + field(15)? + field(16)? + field(17)?;
        Some(Self { command, ticks })
    }

    fn seconds(&self) -> f64 {
        self.ticks as f64 / TICKS_PER_SECOND
    }
}

/// The component group of a `warren run ...` process, from its command line; other warren
/// commands (an operator's CLI running meanwhile) are not part of the system.
fn component(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&str> = cmdline
        .split(|&b| b == 0)
        .filter_map(|arg| std::str::from_utf8(arg).ok())
        .filter(|arg| !arg.is_empty())
        .collect();
    let run = args.iter().position(|&arg| arg == "run")?;
    let components: Vec<&str> = args[run + 1..]
        .iter()
        .copied()
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    Some(if components.is_empty() {
        "all".to_owned()
    } else {
        components.join("+")
    })
}

async fn database(pool: &PgPool) -> Option<Database> {
    let (commits, rollbacks): (i64, i64) = sqlx::query_as(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    // pg_stat_wal exists from PostgreSQL 14 on.
    let wal_bytes = sqlx::query_scalar::<_, f64>("SELECT wal_bytes::float8 FROM pg_stat_wal")
        .fetch_one(pool)
        .await
        .ok();
    Some(Database {
        commits,
        rollbacks,
        wal_bytes,
    })
}

/// The broker's totals since it started, from its Prometheus endpoint: messages received from
/// publishers, and copies routed to queues (one per queue a message reached).
async fn broker(prometheus: &str) -> Option<Broker> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let text = client
        .get(format!("{}/metrics", prometheus.trim_end_matches('/')))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Broker {
        // Node totals since boot (the channel and queue families count open channels only).
        published: sum(&text, "rabbitmq_global_messages_received_total")?,
        enqueued: sum(&text, "rabbitmq_global_messages_routed_total")?,
    })
}

/// The sum of a metric over all its label sets in Prometheus text.
fn sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            total += value;
            found = true;
        }
    }
    found.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_command_and_every_tick() {
        let stat = "4242 (warren run) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 30 7 3 20 0 6 0 99 1000 200 18446744073709551615";
        let times = Times::parse(stat).expect("parses");
        assert_eq!(times.command, "warren run");
        assert_eq!(times.ticks, 150 + 30 + 7 + 3);
        assert!((times.seconds() - 1.9).abs() < 1e-9);
        assert_eq!(Times::parse("garbage"), None);
    }

    #[test]
    fn a_warren_command_line_names_its_components() {
        let line = |args: &[&str]| args.join("\0").into_bytes();
        assert_eq!(
            component(&line(&[
                "/x/warren",
                "run",
                "orchestrator",
                "--allow-chaos"
            ])),
            Some("orchestrator".into())
        );
        assert_eq!(
            component(&line(&["warren", "--json", "run", "order", "payment"])),
            Some("order+payment".into())
        );
        assert_eq!(component(&line(&["warren", "run"])), Some("all".into()));
        assert_eq!(component(&line(&["warren", "dlq", "list"])), None);
    }

    #[test]
    fn prometheus_sums_cover_every_label_set_and_nothing_else() {
        let text = "# HELP rabbitmq_queue_messages_published_total x\n\
                    rabbitmq_queue_messages_published_total 10\n\
                    rabbitmq_queue_messages_published_total_other 99\n\
                    rabbitmq_queue_messages_published_total{vhost=\"a b\"} 5.5\n";
        assert_eq!(
            sum(text, "rabbitmq_queue_messages_published_total"),
            Some(15.5)
        );
        assert_eq!(sum(text, "rabbitmq_nothing"), None);
    }

    #[test]
    fn cost_is_per_saga_and_leaves_the_bench_out_of_the_total() {
        let snapshot = |pg: f64, orchestrator: f64, bench: f64, commits: i64| Snapshot {
            cpu: [
                ("PostgreSQL".to_owned(), pg),
                ("RabbitMQ".to_owned(), 1.0),
                ("orchestrator".to_owned(), orchestrator),
                (BENCH.to_owned(), bench),
            ]
            .into(),
            database: Some(Database {
                commits,
                rollbacks: 0,
                wal_bytes: Some(0.0),
            }),
            broker: None,
        };
        let cost = snapshot(1.0, 2.0, 0.0, 100).cost(&snapshot(3.0, 2.5, 1.0, 500), 100);
        assert_eq!(cost.cpu_ms_per_saga["PostgreSQL"], 20.0);
        assert_eq!(cost.cpu_ms_per_saga["orchestrator"], 5.0);
        assert!(
            !cost.cpu_ms_per_saga.contains_key("RabbitMQ"),
            "spent nothing"
        );
        assert_eq!(cost.cpu_ms_per_saga_total, 25.0);
        assert_eq!(cost.bench_cpu_ms_per_saga, 10.0);
        assert_eq!(cost.commits_per_saga, Some(4.0));
        assert_eq!(cost.broker_enqueued_per_saga, None);
        assert_eq!(cost.missing.len(), 1, "{:?}", cost.missing);
    }
}
