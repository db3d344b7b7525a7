//! The bench's figures as a person reads them.

use super::{Cost, Results, Via};
use crate::output::paint;

pub fn print(results: &Results) {
    let outcome = |name: &str| results.outcomes.get(name).copied().unwrap_or(0);
    println!(
        "warren bench: {} checkouts via {}, {}, {:.0}% declined\n",
        results.checkouts,
        match results.via {
            Via::Broker => "the broker",
            Via::Http => "the HTTP gateway",
        },
        results.mode,
        results.decline_share * 100.0
    );
    println!(
        "  throughput     {} sagas/s ({} ended in {:.2} s)",
        paint(&format!("{:.1}", results.sagas_per_second), "bold"),
        results.outcomes.values().sum::<usize>(),
        results.elapsed_seconds
    );
    let l = &results.latency_ms;
    println!(
        "  latency        p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        l.p50, l.p90, l.p99, l.max
    );
    println!(
        "  outcomes       {} completed, {} compensated, {} failed{}",
        outcome("completed"),
        outcome("compensated"),
        outcome("failed"),
        if results.timed_out > 0 {
            paint(&format!(", {} never ended", results.timed_out), "red")
        } else {
            String::new()
        }
    );
    if let (Some(floor), Some(ratio)) = (
        results.broker_floor_messages_per_second,
        results.saga_to_floor_ratio,
    ) {
        println!(
            "  saga messages  {:.0} msg/s",
            results.saga_messages_per_second
        );
        println!(
            "  broker floor   {floor:.0} msg/s (confirmed persistent publish + acked consume, quorum queue)"
        );
        println!("  ratio          {ratio:.2} of the broker floor");
    }
    print_cost(&results.cost);
    println!(
        "  history        {} finished sagas in the tables{}",
        results.history.finished_sagas,
        if results.history.added > 0 {
            format!(
                " ({} copied in {:.0} s)",
                results.history.added,
                results.history.took.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    let report = &results.invariants;
    let broken: Vec<_> = report.checks.iter().filter(|c| !c.holds).collect();
    if broken.is_empty() {
        println!(
            "  invariants     {}",
            paint(&format!("all {} hold", report.checks.len()), "green")
        );
    } else {
        println!(
            "  invariants     {} (see `warren chaos verify`)",
            paint(&format!("{} broken", broken.len()), "red")
        );
        for check in broken {
            println!("    {}: {}", paint(check.name, "red"), check.detail);
        }
    }
}

/// Where a saga's time went: CPU by process, then what it asked of the servers.
fn print_cost(cost: &Cost) {
    let mut parts: Vec<(&String, &f64)> = cost.cpu_ms_per_saga.iter().collect();
    parts.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> = parts
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.2}"))
        .collect();
    println!(
        "  CPU per saga   {} ms: {}  (the bench itself {:.2})",
        paint(&format!("{:.2}", cost.cpu_ms_per_saga_total), "bold"),
        parts.join(", "),
        cost.bench_cpu_ms_per_saga
    );
    let mut asked = Vec::new();
    if let Some(commits) = cost.commits_per_saga {
        asked.push(format!("{commits:.1} database commits"));
    }
    if let Some(rollbacks) = cost.rollbacks_per_saga.filter(|r| *r >= 0.05) {
        asked.push(format!("{rollbacks:.1} rollbacks"));
    }
    if let Some(wal) = cost.wal_bytes_per_saga {
        asked.push(format!("{:.1} kB WAL", wal / 1000.0));
    }
    if let Some(published) = cost.broker_published_per_saga {
        asked.push(format!("{published:.1} broker messages published"));
    }
    if let Some(enqueued) = cost.broker_enqueued_per_saga {
        asked.push(format!("{enqueued:.1} queue copies"));
    }
    if !asked.is_empty() {
        println!("  per saga       {}", asked.join(", "));
    }
    for missing in &cost.missing {
        println!("  (not counted:  {missing})");
    }
}
