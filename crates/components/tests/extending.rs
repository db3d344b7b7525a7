//! `docs/extending.md` followed by a test: a toy participant (`loyalty/`, outside the shipped
//! system) is added through exactly the documented steps, and then runs on the real broker and
//! database as its own user and role, with everything derived from the list it was added to.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod loyalty;

use std::sync::Arc;
use std::time::Duration;

use bus::rpc::RpcClient;
use contracts::messages::{OrderConfirmed, OrderCreate};
use contracts::{Envelope, routing};
use futures_util::StreamExt;
use host::{Host, HostSettings, Tasks};
use loyalty::PointsAwarded;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(20);

fn confirmed(customer_id: &str, total_cents: i64) -> Envelope {
    let confirmed = OrderConfirmed {
        order_id: Uuid::now_v7(),
        customer_id: customer_id.into(),
        total_cents,
    };
    Envelope::new("order", &confirmed).with_correlation(Uuid::now_v7())
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_participant_added_as_documented_runs_as_its_own_user_and_role(pool: PgPool) {
    // Step 2: its migration (after the shipped ones).
    sqlx::raw_sql(include_str!("loyalty/migration.sql"))
        .execute(&pool)
        .await
        .unwrap();
    // Step 4: one more entry in the list; the layout and the permissions follow from it.
    let mut list = components::all();
    list.push(loyalty::COMPONENT);
    let sagas = components::built_in_sagas();
    let topology = components::topology_of(&list, &sagas);
    let access = components::access_of(list, &sagas);
    assert_eq!(topology.routes("order.evt.confirmed").len(), 4);
    assert!(
        topology
            .routes("order.evt.confirmed")
            .contains(&"loyalty.events")
    );

    // The broker as an operator would set it up: the layout declared, the component's user
    // with its derived grant (the toy's event is watched by this test's own queue).
    let vhost = testkit::create_vhost().await;
    let admin = testkit::admin_bus(&vhost, "test-admin").await;
    topology
        .declare(&admin.channel().await.unwrap())
        .await
        .unwrap();
    let (_watching, mut awards) = admin
        .watch("test", routing::EXCHANGE, &["loyalty.evt.#"])
        .await
        .unwrap();
    let name = format!("{}-warren-loyalty", testkit::unique());
    let user = testkit::create_user(&vhost, &name, &access.grant(&loyalty::COMPONENT)).await;
    let bus = user.bus("warren-loyalty").await;

    // The database as its role, which may use its own schema alone.
    let options = (*pool.connect_options())
        .clone()
        .options([("role", "warren_loyalty")]);
    let as_loyalty = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let refused = sqlx::query("SELECT count(*) FROM orders.orders")
        .execute(&as_loyalty)
        .await;
    assert!(refused.is_err(), "the loyalty role read another schema");

    let host = Host {
        pool: as_loyalty,
        bus: bus.clone(),
        shutdown: CancellationToken::new(),
        faults: None,
        topology: Arc::new(topology),
        settings: HostSettings {
            prefetch: 16,
            group_commit: 8,
            shutdown_grace: Duration::from_secs(2),
            relay: store::RelaySettings::default(),
            trusted: Vec::new(),
            image_store: std::env::temp_dir(),
        },
    };
    let mut tasks = Tasks::new();
    (loyalty::PARTICIPANT.start)(&host, &mut tasks)
        .await
        .unwrap();

    // An order confirmed, as the order service announces it: delivered twice under its message
    // id and once more under another (a re-sent confirmation), then a second order.
    let publisher = admin.publisher().await.unwrap();
    let first = confirmed("c-1", 12_345);
    let resent = Envelope {
        message_id: Uuid::now_v7(),
        ..first.clone()
    };
    let second = confirmed("c-1", 500);
    for message in [&first, &first, &resent, &second] {
        publisher.publish(message).await.unwrap();
    }

    // Each order is awarded once and announced once, in order: a second award of the first
    // order would come before the second order's. (`Bus::watch` consumes without acks: acking
    // a delivery would close the channel, "unknown delivery tag".)
    let mut announced = Vec::new();
    for _ in 0..2 {
        let delivery = testkit::within(PATIENCE, "an award", awards.next())
            .await
            .unwrap()
            .unwrap();
        let envelope = bus::amqp::decode(&delivery.properties, &delivery.data).unwrap();
        announced.push((
            envelope.correlation_id,
            envelope.decode::<PointsAwarded>().unwrap(),
        ));
    }
    let order_of = |m: &Envelope| m.decode::<OrderConfirmed>().unwrap().order_id;
    assert_eq!(announced[0].1.order_id, order_of(&first));
    assert_eq!(announced[0].1.points, 123);
    assert_eq!(
        announced[0].0, first.correlation_id,
        "the saga id travels on"
    );
    assert_eq!(announced[1].1.order_id, order_of(&second));
    assert_eq!(announced[1].1.points, 5);
    let duplicates: i64 = sqlx::query_scalar("SELECT sum(duplicates)::bigint FROM loyalty.inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        duplicates, 1,
        "the redelivery under the same id was absorbed by the inbox"
    );

    // Its reads, through its queries queue.
    let rpc = RpcClient::connect(&admin).await.unwrap();
    let points = rpc
        .request(
            "loyalty.queries",
            "get_points",
            &json!({"customer_id": "c-1"}),
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(points["points"], 128);

    // Its user may publish its own events only.
    let create = Envelope::new(
        "loyalty",
        &OrderCreate {
            order_id: Uuid::now_v7(),
            customer_id: "c-1".into(),
            items: Vec::new(),
        },
    );
    let forged = bus.publisher().await.unwrap().publish(&create).await;
    assert!(forged.is_err(), "the loyalty user sent an order command");

    host.shutdown.cancel();
    while let Some(ended) = tasks.join_next().await {
        ended.unwrap().unwrap();
    }
    bus.close().await;
    admin.close().await;
    testkit::delete_user(&user.name).await;
    testkit::delete_vhost(&vhost).await;
}
