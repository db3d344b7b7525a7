//! Which sagas of the run are under way and how each ended, learnt from `saga.evt.updated`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus::Bus;
use contracts::messages::SagaUpdated;
use contracts::{Message, routing};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use uuid::Uuid;

/// What the bench knows about the sagas it started.
pub struct Tracker {
    total: usize,
    pub slots: Semaphore,
    state: Mutex<Tracked>,
    ended: AtomicUsize,
    all: Notify,
    pub progress: Mutex<Option<ProgressBar>>,
}

#[derive(Default)]
struct Tracked {
    under_way: HashMap<Uuid, Instant>,
    /// Ends heard before the gateway's answer named the saga.
    early: HashMap<Uuid, (Instant, String)>,
    latencies: Vec<Duration>,
    outcomes: HashMap<String, usize>,
    errors: Vec<String>,
    last_end: Option<Instant>,
}

impl Tracker {
    pub fn new(total: usize, concurrency: usize) -> Self {
        Self {
            total,
            slots: Semaphore::new(concurrency),
            state: Mutex::new(Tracked::default()),
            ended: AtomicUsize::new(0),
            all: Notify::new(),
            progress: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn submitted(&self, saga_id: Uuid, at: Instant) {
        let early = {
            let mut state = self.lock();
            match state.early.remove(&saga_id) {
                Some(early) => Some(early),
                None => {
                    state.under_way.insert(saga_id, at);
                    None
                }
            }
        };
        if let Some((ended, outcome)) = early {
            self.record(ended - at, outcome, ended);
        }
    }

    pub fn ended(&self, saga_id: Uuid, outcome: String, at: Instant) {
        let started = {
            let mut state = self.lock();
            let started = state.under_way.remove(&saga_id);
            if started.is_none() {
                state.early.insert(saga_id, (at, outcome.clone()));
            }
            started
        };
        if let Some(started) = started {
            self.record(at - started, outcome, at);
        }
    }

    pub fn failed_submission(&self, error: &anyhow::Error) {
        self.lock().errors.push(format!("{error:#}"));
        self.count_one();
    }

    fn record(&self, latency: Duration, outcome: String, at: Instant) {
        {
            let mut state = self.lock();
            state.latencies.push(latency);
            *state.outcomes.entry(outcome).or_default() += 1;
            state.last_end = Some(at);
        }
        if let Some(progress) = &*self.progress.lock().unwrap_or_else(PoisonError::into_inner) {
            progress.inc(1);
        }
        self.count_one();
    }

    fn count_one(&self) {
        self.slots.add_permits(1);
        if self.ended.fetch_add(1, Ordering::SeqCst) + 1 >= self.total {
            self.all.notify_one();
        }
    }

    pub async fn all_ended(&self) {
        while self.ended.load(Ordering::SeqCst) < self.total {
            self.all.notified().await;
        }
    }

    pub fn last_end(&self) -> Option<Instant> {
        self.lock().last_end
    }

    pub fn results(&self) -> (Vec<Duration>, HashMap<String, usize>, Vec<String>) {
        let state = self.lock();
        (
            state.latencies.clone(),
            state.outcomes.clone(),
            state.errors.clone(),
        )
    }
}

/// Subscribes to saga events (before anything is submitted) and returns the task that reads
/// them.
pub async fn follow(
    bus: Bus,
    tracker: Arc<Tracker>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let (channel, mut events) = bus
        .watch("bench", routing::EXCHANGE, &[SagaUpdated::TYPE])
        .await?;
    Ok(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = events.next().await {
            let at = Instant::now();
            let Ok(envelope) = bus::amqp::decode(&delivery.properties, &delivery.data) else {
                continue;
            };
            let Ok(event) = envelope.decode::<SagaUpdated>() else {
                continue;
            };
            if matches!(
                event.view.state.as_str(),
                "completed" | "compensated" | "failed"
            ) {
                tracker.ended(event.view.saga_id, event.view.state, at);
            }
        }
    })
}
