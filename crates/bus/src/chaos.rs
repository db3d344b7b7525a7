//! Failure injection, for rehearsing outages under load.
//!
//! A process takes faults only when it was started with the allow flag (`warren run
//! --allow-chaos`); otherwise it holds no [`Faults`] and none of this code runs. Faults are
//! switched at run time by control messages on the `warren.control` exchange: every allowing
//! process listens on an exclusive queue of its own, applies the message when it is aimed at one
//! of its components, and answers through direct reply-to with what it now injects, so
//! `warren chaos set|clear|show` can list who took it.
//!
//! The faults and where they bite:
//! - `decline_rate`: the payment service declines that share of charges (its domain asks
//!   [`Faults::declines`]).
//! - `latency_ms` / `latency_types`: the consumer runner waits before handling a message.
//! - `fail_compensations_until`: compensation commands fail transiently (retried later).
//! - `crash_rate`: the consumer runner aborts the process after a handler committed and before
//!   the ack, so the broker redelivers a message whose effect is already in the database.
//! - `drop_reply_rate`: the outbox relay marks a saga reply published without publishing it,
//!   as if the network lost it; the saga's step timeout must notice.
//! - `duplicate_rate`: the outbox relay publishes a message twice; inboxes must absorb it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::routing;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::rpc::REPLY_TO;
use crate::topology::topic_matches;
use crate::{Bus, BusError};

/// The routing key of chaos control messages on [`routing::CONTROL_EXCHANGE`].
pub const ROUTING_KEY: &str = "chaos";

/// What a process injects now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Share of payment charges declined (0 to 1).
    pub decline_rate: f64,
    /// Delay before handling a message of `latency_types`.
    pub latency_ms: u64,
    /// Topic patterns of the message types to delay; every type when empty.
    pub latency_types: Vec<String>,
    /// Share of saga replies the relay drops instead of publishing.
    pub drop_reply_rate: f64,
    /// Share of handled messages after whose commit the process aborts, before the ack.
    pub crash_rate: f64,
    /// Share of outgoing messages the relay publishes twice.
    pub duplicate_rate: f64,
    /// Compensation commands fail transiently until then.
    pub fail_compensations_until: Option<DateTime<Utc>>,
}

/// A change to [`FaultSettings`]: the fields given replace the current ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPatch {
    pub decline_rate: Option<f64>,
    pub latency_ms: Option<u64>,
    pub latency_types: Option<Vec<String>>,
    pub drop_reply_rate: Option<f64>,
    pub crash_rate: Option<f64>,
    pub duplicate_rate: Option<f64>,
    /// Counted from when the process receives it, so clocks need not agree.
    pub fail_compensations_ms: Option<u64>,
}

/// Why a patch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPatch(String);

impl FaultPatch {
    /// Rates must be shares, latencies and outages under an hour.
    pub fn validate(&self) -> Result<(), InvalidPatch> {
        let rates = [
            ("decline_rate", self.decline_rate),
            ("drop_reply_rate", self.drop_reply_rate),
            ("crash_rate", self.crash_rate),
            ("duplicate_rate", self.duplicate_rate),
        ];
        for (name, rate) in rates {
            if let Some(rate) = rate
                && !(0.0..=1.0).contains(&rate)
            {
                return Err(InvalidPatch(format!(
                    "{name} must be between 0 and 1, not {rate}"
                )));
            }
        }
        const HOUR_MS: u64 = 3_600_000;
        for (name, ms) in [
            ("latency_ms", self.latency_ms),
            ("fail_compensations_ms", self.fail_compensations_ms),
        ] {
            if ms.is_some_and(|ms| ms > HOUR_MS) {
                return Err(InvalidPatch(format!("{name} must be at most one hour")));
            }
        }
        Ok(())
    }

    fn apply(&self, settings: &mut FaultSettings, now: DateTime<Utc>) {
        let FaultPatch {
            decline_rate,
            latency_ms,
            latency_types,
            drop_reply_rate,
            crash_rate,
            duplicate_rate,
            fail_compensations_ms,
        } = self.clone();
        let set = |target: &mut f64, value: Option<f64>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut settings.decline_rate, decline_rate);
        set(&mut settings.drop_reply_rate, drop_reply_rate);
        set(&mut settings.crash_rate, crash_rate);
        set(&mut settings.duplicate_rate, duplicate_rate);
        if let Some(ms) = latency_ms {
            settings.latency_ms = ms;
        }
        if let Some(types) = latency_types {
            settings.latency_types = types;
        }
        if let Some(ms) = fail_compensations_ms {
            settings.fail_compensations_until = (ms > 0)
                .then(|| now + chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(0)));
        }
    }
}

/// How many faults a process injected since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Injected {
    pub declines: u64,
    pub delays: u64,
    pub failed_compensations: u64,
    pub dropped_replies: u64,
    pub duplicates: u64,
}

#[derive(Debug, Default)]
struct Counters {
    declines: AtomicU64,
    delays: AtomicU64,
    failed_compensations: AtomicU64,
    dropped_replies: AtomicU64,
    duplicates: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the relay does with one outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Publish,
    /// Published twice.
    Duplicate,
    /// Marked published, never sent.
    Drop,
}

/// The faults of one process: shared by its consumers and relays, changed by [`listen`].
#[derive(Debug)]
pub struct Faults {
    settings: RwLock<FaultSettings>,
    compensations: HashSet<String>,
    replies: HashSet<String>,
    counters: Counters,
}

impl Faults {
    /// `compensations` and `replies` name the message types that are compensation commands and
    /// saga replies (from the saga definitions).
    pub fn new(
        compensations: impl IntoIterator<Item = String>,
        replies: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            settings: RwLock::new(FaultSettings::default()),
            compensations: compensations.into_iter().collect(),
            replies: replies.into_iter().collect(),
            counters: Counters::default(),
        }
    }

    pub fn settings(&self) -> FaultSettings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn injected(&self) -> Injected {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Injected {
            declines: load(&c.declines),
            delays: load(&c.delays),
            failed_compensations: load(&c.failed_compensations),
            dropped_replies: load(&c.dropped_replies),
            duplicates: load(&c.duplicates),
        }
    }

    pub fn patch(&self, patch: &FaultPatch) {
        let mut settings = self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        patch.apply(&mut settings, Utc::now());
    }

    pub fn clear(&self) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = FaultSettings::default();
    }

    fn with<T>(&self, read: impl FnOnce(&FaultSettings) -> T) -> T {
        read(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether to decline this charge.
    pub fn declines(&self) -> bool {
        let hit = chance(self.with(|s| s.decline_rate));
        if hit {
            count(&self.counters.declines);
        }
        hit
    }

    /// How long to wait before handling a message of this type.
    pub fn delay(&self, message_type: &str) -> Option<Duration> {
        let delay = self.with(|s| {
            let delayed = s.latency_ms > 0
                && (s.latency_types.is_empty()
                    || s.latency_types
                        .iter()
                        .any(|pattern| topic_matches(pattern, message_type)));
            delayed.then(|| Duration::from_millis(s.latency_ms))
        });
        if delay.is_some() {
            count(&self.counters.delays);
        }
        delay
    }

    /// Whether this message is a compensation command during a compensation outage.
    pub fn fails_compensation(&self, message_type: &str) -> bool {
        let hit = self.compensations.contains(message_type)
            && self.with(|s| s.fail_compensations_until.is_some_and(|t| Utc::now() < t));
        if hit {
            count(&self.counters.failed_compensations);
        }
        hit
    }

    /// Whether to crash now, after a commit and before its ack.
    pub fn crashes(&self) -> bool {
        chance(self.with(|s| s.crash_rate))
    }

    /// What the relay does with an outgoing message of this type.
    pub fn fate(&self, message_type: &str) -> Fate {
        let (drop, duplicate) = self.with(|s| (s.drop_reply_rate, s.duplicate_rate));
        if self.replies.contains(message_type) && chance(drop) {
            count(&self.counters.dropped_replies);
            Fate::Drop
        } else if chance(duplicate) {
            count(&self.counters.duplicates);
            Fate::Duplicate
        } else {
            Fate::Publish
        }
    }
}

fn chance(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

/// What an operator asks of the allowing processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Set,
    Clear,
    Show,
}

/// A control message on `warren.control`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub action: Action,
    /// Only processes running this component take it (`payment`, `orchestrator`, ...); all when
    /// absent.
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub faults: FaultPatch,
}

/// A process's answer to a control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessFaults {
    /// The connection name (`warren-payment`, `warren-order+inventory`, ...).
    pub process: String,
    pub pid: u32,
    pub components: Vec<String>,
    pub settings: FaultSettings,
    pub injected: Injected,
}

/// Who a process is, for the control messages it answers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub components: Vec<String>,
    /// The only user whose control messages are taken.
    pub operator: String,
}

impl Identity {
    fn takes(&self, target: Option<&str>) -> bool {
        target.is_none_or(|target| self.components.iter().any(|c| c == target))
    }

    /// Whether a control message comes from the operator, by its broker-checked `user_id`.
    fn trusts(&self, user_id: Option<&str>) -> bool {
        user_id == Some(self.operator.as_str())
    }
}

/// Applies control messages to `faults` until `shutdown`. Survives broker restarts: when the
/// control queue goes away with the connection, it is declared again.
pub async fn listen(
    bus: Bus,
    faults: std::sync::Arc<Faults>,
    identity: Identity,
    shutdown: CancellationToken,
) {
    warn!(components = ?identity.components, "this process accepts injected faults (--allow-chaos)");
    while !shutdown.is_cancelled() {
        match listen_once(&bus, &faults, &identity, &shutdown).await {
            Ok(()) => {}
            Err(error) => warn!(%error, "chaos control interrupted; listening again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn listen_once(
    bus: &Bus,
    faults: &Faults,
    identity: &Identity,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let (channel, mut deliveries) = bus
        .watch(
            crate::access::CHAOS,
            routing::CONTROL_EXCHANGE,
            &[ROUTING_KEY],
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(BusError::Amqp { operation: "basic.consume", source: error }),
                None => return Ok(()),
            },
        };
        let sender = delivery.properties.user_id().as_ref().map(|u| u.as_str());
        if !identity.trusts(sender) {
            warn!(
                user_id = sender.unwrap_or("(none)"),
                operator = %identity.operator,
                "chaos control message not from the operator ignored"
            );
            continue;
        }
        let control: Control = match serde_json::from_slice(&delivery.data) {
            Ok(control) => control,
            Err(error) => {
                warn!(%error, "unreadable chaos control message ignored");
                continue;
            }
        };
        if !identity.takes(control.target.as_deref()) {
            continue;
        }
        match control.action {
            Action::Set => match control.faults.validate() {
                Ok(()) => faults.patch(&control.faults),
                Err(error) => {
                    warn!(%error, "chaos control refused");
                    continue;
                }
            },
            Action::Clear => faults.clear(),
            Action::Show => {}
        }
        let answer = ProcessFaults {
            process: bus.name().to_owned(),
            pid: std::process::id(),
            components: identity.components.clone(),
            settings: faults.settings(),
            injected: faults.injected(),
        };
        if control.action != Action::Show {
            info!(settings = ?answer.settings, "injected faults changed");
        }
        if let Some(reply_to) = delivery.properties.reply_to().clone() {
            reply(&channel, reply_to.as_str(), &answer).await;
        }
    }
}

async fn reply(channel: &Channel, reply_to: &str, answer: &ProcessFaults) {
    let body = match serde_json::to_vec(answer) {
        Ok(body) => body,
        Err(error) => return error!(%error, "cannot encode the chaos answer"),
    };
    let published = channel
        .basic_publish(
            "".into(),
            reply_to.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    match published {
        Ok(confirm) => {
            let _ = confirm.await;
        }
        Err(error) => warn!(%error, "cannot answer a chaos control message"),
    }
}

/// Sends `control` to every allowing process and gathers their answers: it waits up to
/// `first` for one, then until `quiet` passes without another. An empty list means no process
/// takes chaos controls.
pub async fn send(
    bus: &Bus,
    control: &Control,
    first: Duration,
    quiet: Duration,
) -> Result<Vec<ProcessFaults>, BusError> {
    let channel = bus.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BusError::amqp("confirm.select"))?;
    let mut answers = channel
        .basic_consume(
            REPLY_TO.into(),
            format!("{}@{REPLY_TO}", bus.name()).as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BusError::amqp("basic.consume"))?;
    let body = serde_json::to_vec(control).unwrap_or_default();
    let confirmation = channel
        .basic_publish(
            routing::CONTROL_EXCHANGE.into(),
            ROUTING_KEY.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_reply_to(REPLY_TO.into())
                // Checked by the broker against this connection's user; listeners take control
                // messages from the operator's user only.
                .with_user_id(bus.user().into()),
        )
        .await
        .map_err(BusError::amqp("basic.publish"))?
        .await
        .map_err(BusError::amqp("basic.publish"))?;
    let mut gathered = Vec::new();
    // Returned: no process listens.
    if matches!(confirmation, Confirmation::Ack(None)) {
        let mut wait = first;
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(wait, answers.next()).await {
            match serde_json::from_slice::<ProcessFaults>(&delivery.data) {
                Ok(answer) => gathered.push(answer),
                Err(error) => warn!(%error, "unreadable chaos answer ignored"),
            }
            wait = quiet;
        }
    }
    let _ = channel.close(200, "chaos control sent".into()).await;
    gathered.sort_by(|a, b| a.process.cmp(&b.process).then(a.pid.cmp(&b.pid)));
    Ok(gathered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults() -> Faults {
        Faults::new(
            ["payment.cmd.refund".to_owned()],
            ["payment.evt.charged".to_owned()],
        )
    }

    #[test]
    fn a_process_starts_with_no_faults() {
        let faults = faults();
        assert_eq!(faults.settings(), FaultSettings::default());
        for _ in 0..1000 {
            assert!(!faults.declines());
            assert!(!faults.crashes());
            assert_eq!(faults.fate("payment.evt.charged"), Fate::Publish);
            assert_eq!(faults.delay("payment.cmd.charge"), None);
            assert!(!faults.fails_compensation("payment.cmd.refund"));
        }
        assert_eq!(faults.injected(), Injected::default());
    }

    #[test]
    fn a_patch_changes_only_the_fields_it_names() {
        let faults = faults();
        faults.patch(&FaultPatch {
            decline_rate: Some(1.0),
            latency_ms: Some(250),
            ..FaultPatch::default()
        });
        faults.patch(&FaultPatch {
            latency_types: Some(vec!["payment.cmd.*".into()]),
            ..FaultPatch::default()
        });
        let settings = faults.settings();
        assert_eq!(settings.decline_rate, 1.0);
        assert_eq!(settings.latency_ms, 250);
        assert_eq!(settings.latency_types, ["payment.cmd.*"]);
        assert!(faults.declines());
        assert_eq!(
            faults.delay("payment.cmd.charge"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(faults.delay("order.cmd.create"), None);
        assert_eq!(faults.injected().declines, 1);
        faults.clear();
        assert_eq!(faults.settings(), FaultSettings::default());
    }

    #[test]
    fn a_compensation_outage_hits_only_compensations_and_ends() {
        let faults = faults();
        let mut settings = FaultSettings::default();
        let now = Utc::now();
        FaultPatch {
            fail_compensations_ms: Some(60_000),
            ..FaultPatch::default()
        }
        .apply(&mut settings, now);
        assert_eq!(
            settings.fail_compensations_until,
            Some(now + chrono::Duration::seconds(60))
        );
        faults.patch(&FaultPatch {
            fail_compensations_ms: Some(60_000),
            ..FaultPatch::default()
        });
        assert!(faults.fails_compensation("payment.cmd.refund"));
        assert!(!faults.fails_compensation("payment.cmd.charge"));
        *faults.settings.write().unwrap() = FaultSettings {
            fail_compensations_until: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..FaultSettings::default()
        };
        assert!(!faults.fails_compensation("payment.cmd.refund"));
        assert_eq!(faults.injected().failed_compensations, 1);
    }

    #[test]
    fn only_replies_are_dropped_and_anything_may_be_doubled() {
        let faults = faults();
        faults.patch(&FaultPatch {
            drop_reply_rate: Some(1.0),
            duplicate_rate: Some(1.0),
            ..FaultPatch::default()
        });
        assert_eq!(faults.fate("payment.evt.charged"), Fate::Drop);
        assert_eq!(faults.fate("order.evt.confirmed"), Fate::Duplicate);
        let injected = faults.injected();
        assert_eq!((injected.dropped_replies, injected.duplicates), (1, 1));
    }

    #[test]
    fn rates_hit_about_their_share() {
        let faults = faults();
        faults.patch(&FaultPatch {
            decline_rate: Some(0.25),
            ..FaultPatch::default()
        });
        let hits = (0..10_000).filter(|_| faults.declines()).count();
        assert!((2_000..3_000).contains(&hits), "{hits} of 10000");
    }

    #[test]
    fn nonsense_patches_are_refused() {
        for patch in [
            FaultPatch {
                decline_rate: Some(1.5),
                ..FaultPatch::default()
            },
            FaultPatch {
                crash_rate: Some(-0.1),
                ..FaultPatch::default()
            },
            FaultPatch {
                latency_ms: Some(7_200_000),
                ..FaultPatch::default()
            },
        ] {
            assert!(patch.validate().is_err(), "{patch:?}");
        }
        assert!(FaultPatch::default().validate().is_ok());
    }

    #[test]
    fn control_messages_are_strict_json() {
        let control: Control = serde_json::from_str(
            r#"{"action": "set", "target": "payment", "faults": {"decline_rate": 0.5}}"#,
        )
        .unwrap();
        assert_eq!(control.action, Action::Set);
        assert_eq!(control.faults.decline_rate, Some(0.5));
        assert!(serde_json::from_str::<Control>(r#"{"action": "explode"}"#).is_err());
        assert!(
            serde_json::from_str::<Control>(r#"{"action": "set", "faults": {"typo": 1}}"#).is_err()
        );
    }

    #[test]
    fn a_target_picks_processes_by_component() {
        let identity = Identity {
            components: vec!["order".into(), "payment".into()],
            operator: "warren-operator".into(),
        };
        assert!(identity.takes(None));
        assert!(identity.takes(Some("payment")));
        assert!(!identity.takes(Some("inventory")));
    }

    #[test]
    fn only_the_operator_is_trusted() {
        let identity = Identity {
            components: vec!["payment".into()],
            operator: "warren-operator".into(),
        };
        assert!(identity.trusts(Some("warren-operator")));
        assert!(!identity.trusts(Some("warren-payment")));
        assert!(!identity.trusts(Some("guest")));
        assert!(!identity.trusts(None));
    }
}
