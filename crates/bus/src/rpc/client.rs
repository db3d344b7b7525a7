//! The requesting side: [`RpcClient`] publishes requests on its reply channel (a "lane") and
//! waits for the replies its reader hands out, replacing the lane when the broker closes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::pending::Pending;
use super::protocol::decode_reply;
use super::{JSON, REPLY_TO, RpcError, TRANSIENT};
use crate::{Bus, BusError};

/// AMQP short strings (queue names, `type`) hold at most 255 bytes.
const SHORT_STRING_MAX: usize = 255;
const MANDATORY: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

/// Sends queries and waits for their replies. Cheap to clone; clones share one channel and one
/// reply reader, which stops when the last clone is dropped.
///
/// Confirms: the channel is in confirm mode. Direct reply-to works with confirms on RabbitMQ
/// 3.10 (the reply is delivered to the channel directly, whatever its mode), and confirms are
/// the only way lapin reports a `mandatory` return to the publisher: without them a returned
/// message is only stored for `wait_for_confirms`, so a request to a missing queue could not
/// fail fast. A confirm also turns a full queue (`reject-publish`) into an immediate nack.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    pending: Arc<Pending>,
    lane: Mutex<Arc<Lane>>,
    /// Held while a dead lane is being replaced, so concurrent requests open one channel.
    replacing: tokio::sync::Mutex<()>,
    next_lane: AtomicU64,
    /// Stops every reply reader when the last client is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The reply channel and its reader. lapin recovers it through connection failures; it dies
/// only when the broker closes the channel itself (a channel error) or the connection is lost
/// for good, and is then replaced by a fresh one.
struct Lane {
    id: u64,
    channel: Channel,
    /// Cancelled when the lane is dead: its reader stops and its pending requests are released.
    dead: CancellationToken,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lane = self.inner.current();
        f.debug_struct("RpcClient")
            .field("bus", &self.inner.bus)
            .field("channel", &lane.channel.id())
            .field("pending", &self.inner.pending.len())
            .finish()
    }
}

impl RpcClient {
    /// Opens the reply channel on `bus` and starts reading replies.
    pub async fn connect(bus: &Bus) -> Result<Self, BusError> {
        let pending = Arc::new(Pending::default());
        let stop = CancellationToken::new();
        let lane = open_lane(bus, 0, &pending, &stop).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                bus: bus.clone(),
                pending,
                lane: Mutex::new(lane),
                replacing: tokio::sync::Mutex::new(()),
                next_lane: AtomicU64::new(1),
                stop,
            }),
        })
    }

    /// Asks `method` of the service consuming `queue` and waits up to `timeout` for its answer.
    pub async fn request(
        &self,
        queue: &str,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        // Longer names cannot be queues, and lapin would write a corrupt frame for them.
        for (what, name) in [("queue", queue), ("method", method)] {
            if name.len() > SHORT_STRING_MAX {
                return Err(RpcError::Unavailable(format!(
                    "{what} name longer than {SHORT_STRING_MAX} bytes: {:?}...",
                    name.chars().take(32).collect::<String>()
                )));
            }
        }
        let body = serde_json::to_vec(params).expect("a JSON value always serialises");
        let deadline = Instant::now() + timeout;
        // Set while the broker is out of reach, so running out of time then says so.
        let mut trouble = None;
        let outcome = tokio::time::timeout_at(
            deadline,
            self.inner
                .exchange(queue, method, &body, deadline, &mut trouble),
        )
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(match trouble {
                Some(reason) => RpcError::Unavailable(reason),
                None => RpcError::Timeout {
                    queue: queue.to_owned(),
                    method: method.to_owned(),
                    after: timeout,
                },
            }),
        }
    }

    /// Requests waiting for their reply right now (for metrics and tests).
    pub fn pending(&self) -> usize {
        self.inner.pending.len()
    }
}

impl Inner {
    fn current(&self) -> Arc<Lane> {
        Arc::clone(&self.lane.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The live lane, replacing a dead one.
    async fn lane(&self) -> Result<Arc<Lane>, RpcError> {
        let lane = self.current();
        if !lane.dead.is_cancelled() {
            return Ok(lane);
        }
        let _replacing = self.replacing.lock().await;
        let lane = self.current();
        if !lane.dead.is_cancelled() {
            return Ok(lane); // another request replaced it meanwhile
        }
        let id = self.next_lane.fetch_add(1, Ordering::Relaxed);
        let fresh = open_lane(&self.bus, id, &self.pending, &self.stop)
            .await
            .map_err(|error| RpcError::Unavailable(error.to_string()))?;
        info!(channel = fresh.channel.id(), "reply channel replaced");
        *self.lane.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Publishes the request and waits for its reply, sending it again after a connection
    /// failure. The caller bounds this with the deadline.
    async fn exchange(
        &self,
        queue: &str,
        method: &str,
        body: &[u8],
        deadline: Instant,
        trouble: &mut Option<String>,
    ) -> Result<Value, RpcError> {
        loop {
            let lane = self.lane().await?;
            // A fresh id per attempt: a late reply to an earlier attempt is simply unknown.
            let correlation_id = Uuid::now_v7().to_string();
            let (reply, replied) = oneshot::channel();
            let _waiting = self.pending.insert(&correlation_id, lane.id, reply);
            let expiration = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1);
            let properties = BasicProperties::default()
                .with_correlation_id(correlation_id.as_str().into())
                .with_reply_to(REPLY_TO.into())
                .with_type(method.into())
                .with_expiration(expiration.to_string().as_str().into())
                .with_delivery_mode(TRANSIENT)
                .with_content_type(JSON.into());
            let confirmed = match lane
                .channel
                .basic_publish("".into(), queue.into(), MANDATORY, body, properties)
                .await
            {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            };
            match confirmed {
                Ok(Confirmation::Ack(None)) => *trouble = None,
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(RpcError::Unavailable(format!(
                        "no queue {queue:?} takes queries ({})",
                        returned.reply_text
                    )));
                }
                Ok(Confirmation::Nack(_)) => {
                    return Err(RpcError::Unavailable(format!(
                        "{queue} refused the request (full?)"
                    )));
                }
                Ok(Confirmation::NotRequested) => {
                    return Err(RpcError::Unavailable(
                        "the reply channel is not in confirm mode".into(),
                    ));
                }
                Err(error) => {
                    warn!(%error, %queue, %method, "query not sent; waiting for the connection");
                    *trouble = Some(format!("connection to the broker lost: {error}"));
                    self.recover(&lane, error).await?;
                    continue;
                }
            }
            match replied.await {
                Ok(body) => return decode_reply(&body),
                // The lane died: its channel, and with it the reply's address, is gone.
                Err(_) => {
                    *trouble = Some("the reply channel was closed".into());
                }
            }
        }
    }

    /// After a failed publish: waits until `lane` is usable again, declares it dead so the
    /// next attempt opens a fresh one, or gives up if the request itself is at fault.
    async fn recover(&self, lane: &Lane, error: lapin::Error) -> Result<(), RpcError> {
        if lane.channel.wait_for_recovery(error.clone()).await.is_ok() {
            // lapin reports the channel recovered as soon as it is open again, before it has
            // re-registered the reply consumer; a request published in that instant makes
            // RabbitMQ close the channel ("fast reply consumer does not exist"). A round trip
            // first lets the re-registration go out ahead of the request. (`confirm.select` is
            // idempotent and, unlike `basic.qos`, adds nothing that lapin replays later.)
            let _ = lane
                .channel
                .confirm_select(ConfirmSelectOptions::default())
                .await;
            return Ok(());
        }
        let status = lane.channel.status();
        if status.reconnecting() {
            // The error carried no way to wait; the next publish returns one that does.
            return Ok(());
        }
        if status.connected() {
            // The channel is fine: the request itself could not be sent.
            return Err(RpcError::Unavailable(format!(
                "cannot send the request: {error}"
            )));
        }
        // Closed by a channel error (such as the one above, should the round trip not have
        // been enough), or the connection is lost for good.
        lane.dead.cancel();
        Ok(())
    }
}

async fn open_lane(
    bus: &Bus,
    id: u64,
    pending: &Arc<Pending>,
    stop: &CancellationToken,
) -> Result<Arc<Lane>, BusError> {
    let channel = bus.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BusError::amqp("confirm.select"))?;
    let replies = channel
        .basic_consume(
            REPLY_TO.into(),
            format!("{}@{REPLY_TO}", bus.name()).as_str().into(),
            BasicConsumeOptions {
                no_ack: true, // direct reply-to requires it
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BusError::amqp("basic.consume"))?;
    let lane = Arc::new(Lane {
        id,
        channel,
        dead: CancellationToken::new(),
    });
    tokio::spawn(read_replies(
        Arc::clone(&lane),
        replies,
        Arc::clone(pending),
        stop.clone(),
    ));
    Ok(lane)
}

/// Hands each reply to its waiting request until the client is dropped or the lane dies.
async fn read_replies(
    lane: Arc<Lane>,
    mut replies: Consumer,
    pending: Arc<Pending>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = lane.dead.cancelled() => break,
            next = replies.next() => match next {
                Some(Ok(delivery)) => pending.complete(delivery),
                Some(Err(error)) => {
                    warn!(%error, "reply consumer interrupted; waiting for recovery");
                    let recovered = tokio::select! {
                        () = stop.cancelled() => break,
                        recovered = lane.channel.wait_for_recovery(error) => recovered,
                    };
                    if let Err(error) = recovered {
                        warn!(%error, "reply channel lost; the next request opens another");
                        break;
                    }
                }
                None => {
                    warn!("reply consumer cancelled; the next request opens another channel");
                    break;
                }
            }
        }
    }
    lane.dead.cancel();
    let released = pending.release_lane(lane.id);
    if released > 0 {
        debug!(released, "requests released from a dead reply channel");
    }
    if lane.channel.status().connected() {
        let _ = lane.channel.close(200, "reply channel done".into()).await;
    }
}
