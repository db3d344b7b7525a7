//! The live saga page for people: `/ui` is one embedded HTML file (no build step, no external
//! resources) that reads `/v1/sagas`, follows `/ui/events` and polls `/ui/queues`.
//!
//! Queue counts come from passive declares on the gateway's own connection, so the page needs
//! no management API credentials; it only links to the management UI for a closer look.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use bus::ConsumerQueue;
use futures_util::{Stream, StreamExt};
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use crate::auth::{Principal, Scope};
use crate::{ApiError, AppState};

/// Where the page sends people for a closer look at a queue.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// The RabbitMQ management UI, e.g. `http://127.0.0.1:15672`.
    pub management_url: String,
    /// The vhost the gateway's queues live in (decoded, e.g. `warren` or `/`).
    pub vhost: String,
    /// The consumer queues the page shows, with their parking queues.
    pub queues: Vec<ConsumerQueue>,
}

pub async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../ui/index.html"),
    )
}

/// Every saga's transitions as they happen. A stream that falls behind is told how many it
/// missed (a `lagged` event), so the page reloads the list instead of showing stale states.
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    principal.require(Scope::Ui)?;
    let receiver = state.events.sagas().await;
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(update) => crate::sagas::event(&update.view, &update.transition),
            Err(RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Ok(Sse::new(stream.take_until(state.events.stopping()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Serialize)]
pub struct QueuesView {
    pub management_url: String,
    pub vhost: String,
    pub queues: Vec<QueueView>,
}

/// One consumer queue; a count is null when the queue could not be read.
#[derive(Debug, Serialize)]
pub struct QueueView {
    pub name: String,
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
    pub parked: Option<u32>,
    pub parked_queue: String,
    pub url: String,
    pub parked_url: String,
}

pub async fn queues(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<QueuesView>, ApiError> {
    principal.require(Scope::Ui)?;
    let mut counter = Counter {
        state: &state,
        channel: None,
    };
    let mut queues = Vec::new();
    for consumer in state.ui.queues.clone() {
        let parked_queue = consumer.parking_queue();
        let counts = counter.count(&consumer.name).await;
        let parked = counter.count(&parked_queue).await;
        queues.push(QueueView {
            url: queue_url(&state.ui, &consumer.name),
            parked_url: queue_url(&state.ui, &parked_queue),
            messages: counts.map(|(messages, _)| messages),
            consumers: counts.map(|(_, consumers)| consumers),
            parked: parked.map(|(messages, _)| messages),
            name: consumer.name,
            parked_queue,
        });
    }
    Ok(Json(QueuesView {
        management_url: state.ui.management_url.clone(),
        vhost: state.ui.vhost.clone(),
        queues,
    }))
}

/// Counts queues on one channel, opening another after a failure: the broker closes a channel
/// whose passive declare names a missing queue.
struct Counter<'a> {
    state: &'a AppState,
    channel: Option<Channel>,
}

impl Counter<'_> {
    /// Messages ready and consumers of `queue`, or `None` when it cannot be read.
    async fn count(&mut self, queue: &str) -> Option<(u32, u32)> {
        let channel = match self.channel.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => self.state.bus.channel().await.ok()?,
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            self.state.query_timeout,
            channel.queue_declare(queue.into(), passive, FieldTable::default()),
        )
        .await;
        match declared {
            Ok(Ok(declared)) => {
                self.channel = Some(channel);
                Some((declared.message_count(), declared.consumer_count()))
            }
            Ok(Err(error)) => {
                debug!(%queue, %error, "cannot count a queue");
                None
            }
            Err(_) => {
                debug!(%queue, "counting a queue timed out");
                None
            }
        }
    }
}

/// The management UI's page of a queue: `{management}/#/queues/{vhost}/{queue}`.
pub fn queue_url(ui: &UiSettings, queue: &str) -> String {
    format!(
        "{}/#/queues/{}/{}",
        ui.management_url.trim_end_matches('/'),
        encode(&ui.vhost),
        encode(queue)
    )
}

/// Percent-encodes all but unreserved characters, as `encodeURIComponent` does for these names
/// (the default vhost `/` becomes `%2F`).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ui(management_url: &str, vhost: &str) -> UiSettings {
        UiSettings {
            management_url: management_url.into(),
            vhost: vhost.into(),
            queues: Vec::new(),
        }
    }

    #[test]
    fn queue_links_encode_the_vhost_and_the_queue() {
        assert_eq!(
            queue_url(&ui("http://127.0.0.1:15672", "warren"), "order.commands"),
            "http://127.0.0.1:15672/#/queues/warren/order.commands"
        );
        assert_eq!(
            queue_url(&ui("http://rabbit:15672/", "/"), "order.commands.dead"),
            "http://rabbit:15672/#/queues/%2F/order.commands.dead"
        );
        assert_eq!(
            queue_url(&ui("http://h", "my vhost/é"), "q"),
            "http://h/#/queues/my%20vhost%2F%C3%A9/q"
        );
    }
}
