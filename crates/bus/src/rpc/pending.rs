//! The requests waiting for a reply, by correlation id, each tagged with the lane it was sent
//! on so a dead lane's requests can be released to try again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use lapin::message::Delivery;
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// Requests waiting for a reply, by correlation id.
#[derive(Default)]
pub(super) struct Pending(Mutex<HashMap<String, Waiter>>);

struct Waiter {
    lane: u64,
    reply: oneshot::Sender<Vec<u8>>,
}

/// Removes its entry when the request finishes, fails, times out or is dropped.
pub(super) struct Waiting<'a> {
    pending: &'a Pending,
    correlation_id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(self.correlation_id);
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Waiter>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn insert<'a>(
        &'a self,
        correlation_id: &'a str,
        lane: u64,
        reply: oneshot::Sender<Vec<u8>>,
    ) -> Waiting<'a> {
        self.lock()
            .insert(correlation_id.to_owned(), Waiter { lane, reply });
        Waiting {
            pending: self,
            correlation_id,
        }
    }

    pub(super) fn complete(&self, delivery: Delivery) {
        let Some(correlation_id) = delivery.properties.correlation_id().as_ref() else {
            warn!("reply without a correlation id dropped");
            return;
        };
        match self.lock().remove(correlation_id.as_str()) {
            // The requester may have given up since; nothing to do then.
            Some(waiter) => {
                let _ = waiter.reply.send(delivery.data);
            }
            None => debug!(%correlation_id, "late reply dropped"),
        }
    }

    /// Drops the waiters of a dead lane, so their requests try again on a fresh one.
    pub(super) fn release_lane(&self, lane: u64) -> usize {
        let mut waiting = self.lock();
        let before = waiting.len();
        waiting.retain(|_, waiter| waiter.lane != lane);
        before - waiting.len()
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}
