//! Notifications end to end: events in, one notification per fact, streamed and listed.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use support::{PATIENCE, System, saga_id};

#[tokio::test]
async fn the_stream_delivers_an_order_confirmation_while_a_checkout_runs() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 10)], &[("c-1", 10_000), ("c-2", 10)])
        .await;

    let mut stream = system
        .stream("/v1/notifications/stream?customer_id=c-1")
        .await;
    // Another customer's declined checkout must not show up on c-1's stream.
    let (_, other) = system.checkout("c-2", &[("SKU-1", 1)], None).await;
    let (_, answer) = system.checkout("c-1", &[("SKU-1", 2)], None).await;
    let notification = testkit::within(PATIENCE, "c-1's notification", stream.next())
        .await
        .unwrap();
    assert_eq!(notification["customer_id"], "c-1", "{notification}");
    assert_eq!(notification["kind"], "order_confirmed", "{notification}");
    assert!(
        notification["message"].as_str().unwrap().contains("$25.00"),
        "{notification}"
    );

    let events = system.follow(&saga_id(&answer)).await;
    assert_eq!(events.last().unwrap()["state"], "completed");
    system.follow(&saga_id(&other)).await;
    let (status, list) = system.get("/v1/notifications?customer_id=c-1").await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["notification_id"], notification["notification_id"]);
    // c-2's order was cancelled: one notification saying so.
    system
        .until("c-2's cancellation notice", || async {
            let (_, list) = system.get("/v1/notifications?customer_id=c-2").await;
            list.as_array()
                .is_some_and(|l| l.len() == 1 && l[0]["kind"] == "order_cancelled")
        })
        .await;
    system.stop().await;
}

/// The gateway's live queue takes notification events only while a stream watches them: with
/// nobody watching, the broker keeps no copy of them for the gateway.
#[tokio::test]
async fn the_live_queue_is_bound_only_while_a_stream_is_open() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    let key = "notification.evt.#";
    assert!(
        !live_keys(&system.vhost).await.iter().any(|k| k == key),
        "bound before any stream opened"
    );

    let stream = system.stream("/v1/notifications/stream").await;
    let keys = live_keys(&system.vhost).await;
    assert!(keys.iter().any(|k| k == key), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k == "saga.evt.#"),
        "no saga stream is open: {keys:?}"
    );

    drop(stream);
    system
        .until("the live queue unbound once the stream closed", || async {
            !live_keys(&system.vhost).await.iter().any(|k| k == key)
        })
        .await;
    system.stop().await;
}

/// The routing keys the gateway's live queue is bound with, from the management API.
async fn live_keys(vhost: &str) -> Vec<String> {
    testkit::management_get(&format!("/api/bindings/{vhost}"))
        .await
        .iter()
        .filter(|b| {
            b["destination"]
                .as_str()
                .is_some_and(|d| d.contains(".live-events."))
        })
        .filter_map(|b| b["routing_key"].as_str().map(str::to_owned))
        .collect()
}
