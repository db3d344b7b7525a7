//! The whole system under least privilege: every component its own process, logged into the
//! broker as its own user (with the permissions `rabbitmq/definitions.json` gives it, the
//! password read from a file) and into the database as its own role; the operator's commands
//! as the operator. Checkouts, an image, injected faults, retries, parking and the invariants
//! all work, and nothing is refused.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bus::Access;
use bus::access::OPERATOR;
use image::{ImageFormat, RgbImage};
use support::{PATIENCE, Ran, System, saga_id};
use testkit::TestUser;
use tokio::process::Command;

/// Each component's database role (migration 0010), as it declares it.
fn db_role(name: &str) -> &'static str {
    match components::named(name) {
        Some(component) => component.db_role,
        None => "warren_operator",
    }
}

/// The names of the components, each run in a process of its own.
fn names() -> Vec<&'static str> {
    components::all().iter().map(|c| c.name).collect()
}

/// The permissions the definitions file gives (a unit test holds the two equal).
fn access() -> Access {
    let sagas = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sagas"));
    let definitions = saga::Definition::load_dir(sagas, &contracts::Schemas::embedded()).unwrap();
    components::access(&definitions)
}

struct Users {
    users: Vec<(&'static str, TestUser)>,
    secrets: PathBuf,
}

impl Users {
    async fn create(vhost: &str) -> Self {
        let access = access();
        let prefix = testkit::unique();
        let secrets = std::env::temp_dir().join(format!("warren-secrets-{prefix}"));
        std::fs::create_dir_all(&secrets).unwrap();
        let mut users = Vec::new();
        for role in names().into_iter().chain([OPERATOR]) {
            let name = format!("{prefix}-warren-{role}");
            let user = testkit::create_user(vhost, &name, &access.grant_of(role)).await;
            std::fs::write(secrets.join(&name), format!("{}\n", user.password)).unwrap();
            users.push((role, user));
        }
        Self { users, secrets }
    }

    fn user(&self, role: &str) -> &TestUser {
        &self.users.iter().find(|(r, _)| *r == role).unwrap().1
    }

    /// The settings a process of `role` runs with: its broker user (the password from its file,
    /// none in the URL) and its database role.
    fn env(&self, role: &str, database_url: &str) -> Vec<(String, String)> {
        let user = self.user(role);
        let mut url = reqwest::Url::parse(&user.amqp_url()).unwrap();
        url.set_password(None).unwrap();
        vec![
            ("WARREN_AMQP_URL".into(), url.into()),
            (
                "WARREN_AMQP_PASSWORD_FILE".into(),
                self.secrets.join(&user.name).display().to_string(),
            ),
            // The roles cannot log in here (no password was given them); the owner connects and
            // takes the role at once, which is what `SET ROLE` does.
            (
                "WARREN_DATABASE_URL".into(),
                format!("{database_url}?options=-c%20role%3D{}", db_role(role)),
            ),
            (
                "WARREN_OPERATOR_USER".into(),
                self.user(OPERATOR).name.clone(),
            ),
        ]
    }

    async fn delete(self) {
        for (_, user) in &self.users {
            testkit::delete_user(&user.name).await;
        }
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// `warren <args>` as the operator.
async fn operator(system: &System, users: &Users, args: &[&str]) -> Ran {
    Ran::of(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(args)
            .envs(users.env(OPERATOR, &system.database_url))
            .env("WARREN_CONNECT_TIMEOUT_SECS", "10")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .env_remove("WARREN_SAGAS_DIR"),
    )
    .await
}

fn picture() -> Vec<u8> {
    let image = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[tokio::test]
async fn every_component_does_its_work_as_its_own_user_and_role() {
    let mut system = System::new().await;
    let users = Users::create(&system.vhost).await;
    system.allow_chaos = true;
    let mut processes = Vec::new();
    for role in names() {
        system.env = users.env(role, &system.database_url);
        processes.push(system.spawn(&[role]));
    }
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 100)], &[("c-1", 100_000), ("c-poor", 10)])
        .await;

    // Each process really is logged in as its own user, and acts as its own role.
    let connections = format!(
        "{}/api/vhosts/{}/connections",
        testkit::management_url(),
        system.vhost
    );
    system
        .until("every process to show in the management API", || async {
            let listed: Vec<serde_json::Value> = system
                .client
                .get(&connections)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            names().into_iter().all(|role| {
                listed.iter().any(|c| {
                    c["client_properties"]["connection_name"] == format!("warren-{role}")
                        && c["user"] == users.user(role).name.as_str()
                })
            })
        })
        .await;
    let as_orders = sqlx::PgPool::connect(&users.env("order", &system.database_url)[2].1)
        .await
        .unwrap();
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&as_orders)
        .await
        .unwrap();
    assert_eq!(role, "warren_orders");
    as_orders.close().await;

    // Checkouts through every worker, compensation included.
    let (status, answer) = system.checkout("c-1", &[("SKU-1", 2)], None).await;
    assert_eq!(status, 202, "{answer}");
    let events = system.follow(&saga_id(&answer)).await;
    assert_eq!(events.last().unwrap()["state"], "completed", "{events:?}");
    let (_, declined) = system.checkout("c-poor", &[("SKU-1", 1)], None).await;
    let events = system.follow(&saga_id(&declined)).await;
    assert_eq!(events.last().unwrap()["state"], "compensated", "{events:?}");
    let (status, order) = system
        .get(&format!(
            "/v1/orders/{}",
            events.last().unwrap()["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (status.as_u16(), &order["status"]),
        (200, &"cancelled".into())
    );

    // An image: the image worker and the notifications.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(picture()).file_name("p.png"),
        )
        .text("variants", r#"["thumbnail:16", "grayscale"]"#)
        .text("customer_id", "c-1");
    let uploaded: serde_json::Value = system
        .client
        .post(format!("{}/v1/images", system.base))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = system.follow(&saga_id(&uploaded)).await;
    assert_eq!(events.last().unwrap()["state"], "completed", "{events:?}");
    system
        .until("the image notification", || async {
            let (_, list) = system.get("/v1/notifications?customer_id=c-1").await;
            list.as_array()
                .is_some_and(|l| l.iter().any(|n| n["kind"] == "image_completed"))
        })
        .await;

    // The operator injects faults: a declined charge whose compensations fail for a while, so
    // they go through the retry queues.
    let set = operator(
        &system,
        &users,
        &[
            "--json",
            "chaos",
            "set",
            "--decline-rate",
            "1",
            "--fail-compensations-for",
            "2s",
        ],
    )
    .await;
    assert_eq!(set.code, 0, "{set:?}");
    assert_eq!(
        set.json()["processes"].as_array().unwrap().len(),
        7,
        "{set:?}"
    );
    let (_, retried) = system.checkout("c-1", &[("SKU-1", 1)], None).await;
    let events = system.follow(&saga_id(&retried)).await;
    assert_eq!(events.last().unwrap()["state"], "compensated", "{events:?}");
    let cleared = operator(&system, &users, &["chaos", "clear"]).await;
    assert_eq!(cleared.code, 0, "{cleared:?}");
    // ... and a chaos control from a component's user is not even delivered.
    let mut as_payment = users.env("payment", &system.database_url);
    as_payment.retain(|(k, _)| k != "WARREN_OPERATOR_USER");
    let forged = Ran::of(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["chaos", "set", "--decline-rate", "1"])
            .envs(as_payment)
            .env("WARREN_CONNECT_TIMEOUT_SECS", "10"),
    )
    .await;
    assert_ne!(forged.code, 0, "{forged:?}");
    assert!(forged.stderr.contains("refused"), "{forged:?}");

    // Poison is parked by the worker, listed and purged by the operator.
    let poison = operator(
        &system,
        &users,
        &["chaos", "poison", "--queue", "payment.commands"],
    )
    .await;
    assert_eq!(poison.code, 0, "{poison:?}");
    system
        .until("the poison to be parked", || async {
            let list = operator(&system, &users, &["--json", "dlq", "list"]).await;
            list.code == 0 && list.json()["total"] == 2
        })
        .await;
    let purge = operator(
        &system,
        &users,
        &["dlq", "purge", "--queue", "payment.commands", "--yes"],
    )
    .await;
    assert_eq!(purge.code, 0, "{purge:?}");

    // The invariants, read across every schema as the operator's role.
    let verify = operator(
        &system,
        &users,
        &["--json", "chaos", "verify", "--wait", "60s"],
    )
    .await;
    assert_eq!(verify.code, 0, "{verify:?}");
    assert_eq!(verify.json()["holds"], true, "{verify:?}");

    for (index, role) in processes.iter().zip(names()) {
        assert!(system.alive(*index), "{} died", role);
        let log = std::fs::read_to_string(system.log_file(*index)).unwrap();
        for refusal in ["ACCESS_REFUSED", "permission denied"] {
            assert!(
                !log.contains(refusal),
                "{} was refused something:\n{log}",
                role
            );
        }
    }
    testkit::within(PATIENCE, "stopping", async {
        system.stop().await;
    })
    .await;
    users.delete().await;
}

#[tokio::test]
async fn rendered_definitions_let_each_user_in_with_the_password_of_its_file() {
    let vhost = testkit::create_vhost().await;
    let prefix = testkit::unique();
    let dir = std::env::temp_dir().join(format!("warren-render-{prefix}"));
    std::fs::create_dir_all(dir.join("passwords")).unwrap();
    let (with, without) = (format!("{prefix}-with"), format!("{prefix}-without"));
    let user = |name: &str| {
        serde_json::json!({"name": name, "password_hash": "", "tags": [],
            "hashing_algorithm": "rabbit_password_hashing_sha256", "limits": {}})
    };
    let permissions = |name: &str| serde_json::json!({"user": name, "vhost": vhost, "configure": "", "write": "", "read": ""});
    let definitions = serde_json::json!({
        "users": [user(&with), user(&without)],
        "permissions": [permissions(&with), permissions(&without)],
    });
    std::fs::write(dir.join("from.json"), definitions.to_string()).unwrap();
    std::fs::write(dir.join("passwords").join(&with), "s3cret-Ø\n").unwrap();
    let rendered = Ran::of(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["topology", "render", "--from"])
            .arg(dir.join("from.json"))
            .arg("--passwords")
            .arg(dir.join("passwords"))
            .arg("--out")
            .arg(dir.join("out.json")),
    )
    .await;
    assert_eq!(rendered.code, 0, "{rendered:?}");
    let out = std::fs::read_to_string(dir.join("out.json")).unwrap();
    assert!(!out.contains("s3cret"), "{out}");
    reqwest::Client::new()
        .post(format!("{}/api/definitions", testkit::management_url()))
        .basic_auth("guest", Some("guest"))
        .header("content-type", "application/json")
        .body(out)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let login = |name: &str, password: &str| {
        let mut url = reqwest::Url::parse(&testkit::amqp_url_for(&vhost)).unwrap();
        url.set_username(name).unwrap();
        url.set_password(Some(password)).unwrap();
        let settings = bus::BusSettings {
            url: url.into(),
            connection_name: "render-test".into(),
            connect_timeout: std::time::Duration::from_secs(5),
        };
        async move { bus::Bus::connect(&settings).await }
    };
    let bus = login(&with, "s3cret-Ø").await.unwrap();
    bus.close().await;
    assert!(login(&with, "guessed").await.is_err());
    assert!(login(&without, "").await.is_err());

    for name in [&with, &without] {
        testkit::delete_user(name).await;
    }
    testkit::delete_vhost(&vhost).await;
    let _ = std::fs::remove_dir_all(&dir);
}
