//! Live events for server-sent event streams: saga transitions and new notifications.
//!
//! One subscription per gateway process: an exclusive, auto-deleted queue, read without acks
//! (these are for watching, not work) and fanned out to every open stream through broadcast
//! channels. The queue is bound to `saga.evt.#` only while a saga stream is open, and to
//! `notification.evt.#` only while a notification stream is: with nobody watching, the broker
//! keeps no copy of those events for this process (a checkout's five saga events cost it
//! nothing).
//!
//! One task owns the bindings and makes them match what open streams watch, retrying until the
//! broker takes it: a stream opened while the connection recovers gets its events once the
//! connection is back, instead of an error. A stream waits a moment for its binding before it
//! reads its snapshot, so in the usual case no event falls between the two.
//!
//! The queue is named by the client ([`Bus::watch`]) so lapin's recovery can declare it again;
//! should recovery fail anyway, the subscription is made again from scratch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::{Bus, BusError};
use contracts::messages::{NotificationCreated, SagaUpdated};
use contracts::{Message, routing};
use futures_util::StreamExt;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::{Mutex, Notify, broadcast, watch};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

/// How many events a slow stream may fall behind before it misses some.
const BACKLOG: usize = 4096;
/// How long to wait between attempts to subscribe again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How long to wait before binding again after the broker refused (a connection recovering).
const REBIND: Duration = Duration::from_millis(200);
/// How long a new stream waits for its binding before it goes on without (events reach it
/// once the binding is made).
const BIND_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct LiveEvents {
    sagas: broadcast::Sender<Arc<SagaUpdated>>,
    notifications: broadcast::Sender<Arc<NotificationCreated>>,
    bindings: Arc<Bindings>,
    shutdown: CancellationToken,
}

/// The binding keys of the live event queue on `warren`, one per [`Kind`]: what the gateway's
/// user may bind (`COMPONENT.watches`).
pub const LIVE_EVENT_KEYS: [&str; 2] = ["saga.evt.#", "notification.evt.#"];

/// The two kinds of live events a stream can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sagas = 0,
    Notifications = 1,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Sagas, Kind::Notifications];

    fn key(self) -> &'static str {
        LIVE_EVENT_KEYS[self as usize]
    }
}

/// What open streams watch, and what the live queue is bound to.
#[derive(Debug)]
struct Bindings {
    /// Streams holding each kind (see [`Hold`]).
    watchers: [AtomicUsize; 2],
    /// Wakes the task that binds and unbinds.
    changed: Notify,
    /// The kinds the live queue is bound to now, for streams waiting on their binding.
    bound: watch::Sender<[bool; 2]>,
    /// The live queue and its channel; replaced when the subscription is made anew.
    queue: Mutex<LiveQueue>,
}

#[derive(Debug)]
struct LiveQueue {
    channel: Channel,
    name: String,
    /// What the broker has bound; `None` when unknown (after a recovery or a new queue).
    bound: [Option<bool>; 2],
}

impl Bindings {
    fn wanted(&self, kind: Kind) -> bool {
        self.watchers[kind as usize].load(Ordering::SeqCst) > 0
    }

    /// Binds and unbinds until the live queue matches what is watched; an error leaves the
    /// rest for the next round.
    async fn reconcile(&self) -> Result<(), lapin::Error> {
        let mut queue = self.queue.lock().await;
        for kind in Kind::ALL {
            let wanted = self.wanted(kind);
            if queue.bound[kind as usize] == Some(wanted) {
                continue;
            }
            queue.bound[kind as usize] = None;
            let (name, exchange, key) = (
                queue.name.as_str().into(),
                routing::EXCHANGE.into(),
                kind.key().into(),
            );
            if wanted {
                let options = QueueBindOptions::default();
                queue
                    .channel
                    .queue_bind(name, exchange, key, options, FieldTable::default())
                    .await?;
            } else {
                queue
                    .channel
                    .queue_unbind(name, exchange, key, FieldTable::default())
                    .await?;
            }
            queue.bound[kind as usize] = Some(wanted);
            self.bound
                .send_modify(|bound| bound[kind as usize] = wanted);
        }
        Ok(())
    }

    /// The broker's bindings are unknown again (the channel recovered, or the queue is new):
    /// the next round makes every one of them.
    async fn forget(&self, renewed: Option<(Channel, String)>) {
        let mut queue = self.queue.lock().await;
        if let Some((channel, name)) = renewed {
            queue.channel = channel;
            queue.name = name;
        }
        queue.bound = [None; 2];
        self.bound.send_replace([false; 2]);
        drop(queue);
        self.changed.notify_one();
    }

    /// The task that keeps the bindings matching the open streams until `shutdown`.
    async fn keep(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = match self.reconcile().await {
                Ok(()) => None,
                Err(error) => {
                    debug!(%error, "cannot change the live queue's bindings yet");
                    Some(REBIND)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(wait.unwrap_or(REBIND)), if wait.is_some() => {}
            }
        }
    }
}

/// A stream's hold on one kind of live events: while any is held, the live queue is bound to
/// that kind; the last one dropped unbinds it.
#[derive(Debug)]
pub struct Watching<T> {
    receiver: broadcast::Receiver<Arc<T>>,
    _hold: Hold,
}

impl<T: Clone> Watching<T> {
    pub async fn recv(&mut self) -> Result<Arc<T>, broadcast::error::RecvError> {
        self.receiver.recv().await
    }
}

#[derive(Debug)]
struct Hold {
    kind: Kind,
    bindings: Arc<Bindings>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.bindings.watchers[self.kind as usize].fetch_sub(1, Ordering::SeqCst);
        self.bindings.changed.notify_one();
    }
}

impl LiveEvents {
    /// Subscribes to the live events and starts fanning them out until `shutdown`.
    pub async fn start(bus: &Bus, shutdown: CancellationToken) -> Result<Self, BusError> {
        let (channel, consumer) = subscribe(bus).await?;
        let (sagas, _) = broadcast::channel(BACKLOG);
        let (notifications, _) = broadcast::channel(BACKLOG);
        let bindings = Arc::new(Bindings {
            watchers: [AtomicUsize::new(0), AtomicUsize::new(0)],
            changed: Notify::new(),
            bound: watch::Sender::new([false; 2]),
            queue: Mutex::new(LiveQueue {
                channel: channel.clone(),
                name: consumer.queue().to_string(),
                bound: [Some(false); 2],
            }),
        });
        tokio::spawn(Arc::clone(&bindings).keep(shutdown.clone()));
        let events = Self {
            sagas,
            notifications,
            bindings,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(
            events
                .clone()
                .fan_out(bus.clone(), (channel, consumer), shutdown),
        );
        Ok(events)
    }

    /// Holds one kind of events for a stream, and waits (a moment at most) until the live
    /// queue is bound to it, so every event after this returns reaches the stream.
    async fn hold(&self, kind: Kind) -> Hold {
        self.bindings.watchers[kind as usize].fetch_add(1, Ordering::SeqCst);
        self.bindings.changed.notify_one();
        let hold = Hold {
            kind,
            bindings: Arc::clone(&self.bindings),
        };
        let mut bound = self.bindings.bound.subscribe();
        let waited = tokio::time::timeout(BIND_WAIT, bound.wait_for(|b| b[kind as usize])).await;
        if waited.is_err() {
            debug!(
                ?kind,
                "the live queue is not bound yet; the stream's events follow once it is"
            );
        }
        hold
    }

    async fn fan_out(
        self,
        bus: Bus,
        mut subscription: (Channel, Consumer),
        shutdown: CancellationToken,
    ) {
        loop {
            let (channel, mut consumer) = subscription;
            let lost = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => self.dispatch(&delivery.properties, &delivery.data),
                        Some(Err(error)) => {
                            if let Err(error) = channel.wait_for_recovery(error).await {
                                break error.to_string();
                            }
                            // A binding asked for during the recovery may not have been made.
                            self.bindings.forget(None).await;
                        }
                        None => break "the broker cancelled the consumer".to_owned(),
                    }
                }
            };
            warn!(%lost, "live event subscription lost; subscribing again");
            subscription = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RESUBSCRIBE) => {}
                }
                match subscribe(&bus).await {
                    Ok((channel, consumer)) => {
                        // The new queue gets the bindings the open streams need.
                        let renewed = (channel.clone(), consumer.queue().to_string());
                        self.bindings.forget(Some(renewed)).await;
                        break (channel, consumer);
                    }
                    Err(error) => warn!(%error, "cannot subscribe to live events yet"),
                }
            };
            info!("live events subscribed again");
        }
    }

    fn dispatch(&self, properties: &lapin::BasicProperties, body: &[u8]) {
        let Ok(envelope) = bus::amqp::decode(properties, body) else {
            debug!("ignored a live event that does not decode");
            return;
        };
        // No receiver is fine: nobody is watching.
        match envelope.message_type.as_str() {
            SagaUpdated::TYPE => {
                if let Ok(event) = envelope.decode::<SagaUpdated>() {
                    let _ = self.sagas.send(Arc::new(event));
                }
            }
            NotificationCreated::TYPE => {
                if let Ok(event) = envelope.decode::<NotificationCreated>() {
                    let _ = self.notifications.send(Arc::new(event));
                }
            }
            _ => {}
        }
    }

    /// Every saga transition from now on, for as long as the result is held.
    pub async fn sagas(&self) -> Watching<SagaUpdated> {
        let receiver = self.sagas.subscribe();
        Watching {
            receiver,
            _hold: self.hold(Kind::Sagas).await,
        }
    }

    /// Every new notification from now on, for as long as the result is held.
    pub async fn notifications(&self) -> Watching<NotificationCreated> {
        let receiver = self.notifications.subscribe();
        Watching {
            receiver,
            _hold: self.hold(Kind::Notifications).await,
        }
    }

    /// Completes when the process stops. Streams end on it: graceful shutdown waits for open
    /// connections, and a page left open would otherwise hold it for the whole grace period.
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.shutdown.clone().cancelled_owned()
    }
}

/// This process's private live event queue, bound to nothing yet.
async fn subscribe(bus: &Bus) -> Result<(Channel, Consumer), BusError> {
    bus.watch(bus::access::LIVE_EVENTS, routing::EXCHANGE, &[])
        .await
}
