//! Live events for server-sent event streams: saga transitions and new notifications.
//!
//! One subscription per gateway process: an exclusive, auto-deleted queue, read without acks
//! (these are for watching, not work) and fanned out to every open stream through broadcast
//! channels. The queue is bound to `saga.evt.#` only while a saga stream is open, and to
//! `notification.evt.#` only while a notification stream is: with nobody watching, the broker
//! stores no copy of those events for this process.
//!
//! The queue is named by the client ([`Bus::watch`]) so lapin's recovery can declare it again;
//! should recovery fail anyway, the subscription is made again from scratch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use bus::{Bus, BusError};
use contracts::messages::{NotificationCreated, SagaUpdated};
use contracts::{Message, routing};
use futures_util::StreamExt;
use lapin::{Channel, Consumer};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

/// How many events a slow stream may fall behind before it misses some.
const BACKLOG: usize = 4096;
/// How long to wait between attempts to subscribe again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LiveEvents {
    sagas: broadcast::Sender<Arc<SagaUpdated>>,
    notifications: broadcast::Sender<Arc<NotificationCreated>>,
    bindings: Arc<Mutex<Bindings>>,
    shutdown: CancellationToken,
}

/// The two kinds of live events a stream can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sagas,
    Notifications,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Self::Sagas => bus::access::LIVE_EVENT_KEYS[0],
            Self::Notifications => bus::access::LIVE_EVENT_KEYS[1],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The live queue's bindings and how many streams watch each kind.
#[derive(Debug)]
struct Bindings {
    channel: Channel,
    queue: String,
    watchers: [usize; 2],
    bound: [bool; 2],
}

impl Bindings {
    async fn set(&mut self, kind: Kind, bound: bool) -> Result<(), lapin::Error> {
        let (queue, exchange, key) = (
            self.queue.as_str().into(),
            routing::EXCHANGE.into(),
            kind.key().into(),
        );
        if bound {
            self.channel
                .queue_bind(
                    queue,
                    exchange,
                    key,
                    lapin::options::QueueBindOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await?;
        } else {
            self.channel
                .queue_unbind(queue, exchange, key, lapin::types::FieldTable::default())
                .await?;
        }
        self.bound[kind.index()] = bound;
        Ok(())
    }

    /// Binds what open streams watch on a queue made anew.
    async fn renew(&mut self, (channel, queue): (Channel, String)) -> Result<(), lapin::Error> {
        self.channel = channel;
        self.queue = queue;
        self.bound = [false; 2];
        for kind in [Kind::Sagas, Kind::Notifications] {
            if self.watchers[kind.index()] > 0 {
                self.set(kind, true).await?;
            }
        }
        Ok(())
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
    bindings: Arc<Mutex<Bindings>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let (kind, bindings) = (self.kind, Arc::clone(&self.bindings));
        tokio::spawn(async move {
            let mut bindings = bindings.lock().await;
            let watchers = &mut bindings.watchers[kind.index()];
            *watchers = watchers.saturating_sub(1);
            if *watchers == 0
                && bindings.bound[kind.index()]
                && let Err(error) = bindings.set(kind, false).await
            {
                // The queue's next renewal binds only what is watched.
                debug!(%error, ?kind, "cannot unbind the live queue");
            }
        });
    }
}

impl LiveEvents {
    /// Subscribes to the live events and starts fanning them out until `shutdown`.
    pub async fn start(bus: &Bus, shutdown: CancellationToken) -> Result<Self, BusError> {
        let (channel, consumer) = subscribe(bus).await?;
        let (sagas, _) = broadcast::channel(BACKLOG);
        let (notifications, _) = broadcast::channel(BACKLOG);
        let bindings = Bindings {
            channel: channel.clone(),
            queue: consumer.queue().to_string(),
            watchers: [0; 2],
            bound: [false; 2],
        };
        let events = Self {
            sagas,
            notifications,
            bindings: Arc::new(Mutex::new(bindings)),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(
            events
                .clone()
                .fan_out(bus.clone(), (channel, consumer), shutdown),
        );
        Ok(events)
    }

    /// Holds one kind of events for a stream: binds the live queue to it first if no other
    /// stream watches it, so every event after this returns reaches the receiver.
    async fn hold(&self, kind: Kind) -> Result<Hold, BusError> {
        let mut bindings = self.bindings.lock().await;
        if !bindings.bound[kind.index()] {
            bindings
                .set(kind, true)
                .await
                .map_err(BusError::amqp("queue.bind"))?;
        }
        bindings.watchers[kind.index()] += 1;
        Ok(Hold {
            kind,
            bindings: Arc::clone(&self.bindings),
        })
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
                let (channel, consumer) = match subscribe(&bus).await {
                    Ok(subscription) => subscription,
                    Err(error) => {
                        warn!(%error, "cannot subscribe to live events yet");
                        continue;
                    }
                };
                // The new queue gets the bindings the open streams need.
                let renewed = (channel.clone(), consumer.queue().to_string());
                match self.bindings.lock().await.renew(renewed).await {
                    Ok(()) => break (channel, consumer),
                    Err(error) => {
                        warn!(%error, "cannot bind the new live queue yet");
                        let _ = channel.close(200, "binding failed".into()).await;
                    }
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
    pub async fn sagas(&self) -> Result<Watching<SagaUpdated>, BusError> {
        let receiver = self.sagas.subscribe();
        let hold = self.hold(Kind::Sagas).await?;
        Ok(Watching {
            receiver,
            _hold: hold,
        })
    }

    /// Every new notification from now on, for as long as the result is held.
    pub async fn notifications(&self) -> Result<Watching<NotificationCreated>, BusError> {
        let receiver = self.notifications.subscribe();
        let hold = self.hold(Kind::Notifications).await?;
        Ok(Watching {
            receiver,
            _hold: hold,
        })
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
