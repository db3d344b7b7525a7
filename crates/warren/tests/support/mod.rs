//! Runs the whole system as real processes against the local servers: a virtual host and a
//! database of its own per test, `warren run ...` children, HTTP through the gateway.

#![allow(clippy::unwrap_used, dead_code)] // helpers of a test panic to fail it

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::process::{Child, Command};
use uuid::Uuid;

pub const PATIENCE: Duration = Duration::from_secs(120);

pub struct System {
    pub vhost: String,
    pub database: String,
    pub database_url: String,
    pub pool: PgPool,
    pub base: String,
    port: u16,
    pub client: reqwest::Client,
    pub sagas_dir: Option<PathBuf>,
    /// Database connections per process, for work (listeners come on top).
    pub db_pool: u32,
    /// Start processes with `--allow-chaos`.
    pub allow_chaos: bool,
    /// More environment for every process (after the defaults, so it may override them).
    pub env: Vec<(String, String)>,
    children: Vec<Option<Child>>,
    /// Where each process serves `/metrics`, by index.
    metrics_ports: Vec<u16>,
    log_files: Vec<PathBuf>,
    logs: PathBuf,
    /// The gateway's token secret (HS256).
    pub jwt_key: PathBuf,
    /// An operator token (scopes operator and ui), sent by `client` on every request.
    pub token: String,
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/warren".into())
}

/// A gateway token signed with `key` (`warren auth token`).
pub async fn mint(key: &std::path::Path, subject: &str, scope: &str) -> String {
    let ran = Ran::of(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["auth", "token", "--subject", subject, "--scope", scope])
            .args(["--ttl", "2h"])
            .env("WARREN_JWT_KEY_FILE", key),
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    ran.stdout.trim().to_owned()
}

/// A port for a child process to listen on that no other test holds. Tests run as processes of
/// their own, all at once, and a port merely free now can be taken by another test's child
/// before this test's child binds it (the child then fails to start, and a readiness probe may
/// even reach the other one). So each port is claimed with a lock on a file named after it,
/// held until this test process ends (the system drops it then, whatever way the test ends),
/// and taken from below the kernel's ephemeral range, where no `bind(0)` or outgoing
/// connection lands.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("warren-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let start = u16::try_from(std::process::id() % u32::from(COUNT)).unwrap();
    for offset in 0..COUNT {
        let port = FIRST + (start + offset) % COUNT;
        let claim = std::fs::File::create(dir.join(port.to_string())).unwrap();
        if claim.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap().push(claim);
        return port;
    }
    panic!("no free port between {FIRST} and {}", FIRST + COUNT);
}

impl System {
    /// A fresh vhost and a fresh migrated database; no process yet.
    pub async fn new() -> Self {
        testkit::init_logging();
        let vhost = testkit::create_vhost().await;
        let database = format!("e2e_{}", testkit::unique());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url())
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let cut = admin_url().rfind('/').unwrap();
        let database_url = format!("{}/{database}", &admin_url()[..cut]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&database_url)
            .await
            .unwrap();
        store::migrate(&pool).await.unwrap();
        // What the operator does before any component starts (components only check it).
        let applied = Ran::of(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["topology", "apply"])
                .env("WARREN_AMQP_URL", testkit::amqp_url_for(&vhost))
                .env("WARREN_CONNECT_TIMEOUT_SECS", "10")
                .env("RUST_LOG", "warn"),
        )
        .await;
        assert_eq!(applied.code, 0, "warren topology apply: {applied:?}");
        let port = free_port();
        let logs = std::env::temp_dir().join(format!("warren-{vhost}"));
        std::fs::create_dir_all(&logs).unwrap();
        let jwt_key = logs.join("jwt-secret");
        std::fs::write(&jwt_key, format!("test-secret-{}", Uuid::now_v7())).unwrap();
        let token = mint(&jwt_key, "test-operator", "operator ui").await;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        Self {
            vhost,
            database,
            database_url,
            pool,
            base: format!("http://127.0.0.1:{port}"),
            port,
            client,
            sagas_dir: None,
            db_pool: 8,
            allow_chaos: false,
            env: Vec::new(),
            children: Vec::new(),
            metrics_ports: Vec::new(),
            log_files: Vec::new(),
            logs,
            jwt_key,
            token,
        }
    }

    /// Starts `warren run <components>`; returns its index for [`System::kill`].
    pub fn spawn(&mut self, components: &[&str]) -> usize {
        self.spawn_at(components, self.port)
    }

    /// Starts `warren run <components>` with its gateway (if any) on `http_port`.
    pub fn spawn_at(&mut self, components: &[&str], http_port: u16) -> usize {
        let index = self.children.len();
        let log_path = self
            .logs
            .join(format!("{index}-{}.log", components.join("+")));
        let log = std::fs::File::create(&log_path).unwrap();
        let metrics_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
        command
            .arg("run")
            .args(components)
            .env("WARREN_AMQP_URL", testkit::amqp_url_for(&self.vhost))
            .env("WARREN_DATABASE_URL", &self.database_url)
            .env("WARREN_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("WARREN_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("WARREN_DB_POOL", self.db_pool.to_string())
            .env("WARREN_SWEEP_INTERVAL_MS", "100")
            .env("WARREN_CONNECT_TIMEOUT_SECS", "30")
            .env("WARREN_IMAGE_STORE", self.logs.join("images"))
            .env("WARREN_IMAGE_UPLOAD_LIMIT", "1048576")
            .env("WARREN_JWT_KEY_FILE", &self.jwt_key)
            // Tests hammer one gateway as one client; the limit has a test of its own.
            .env("WARREN_RATE_LIMIT", "100000")
            .env("WARREN_RATE_BURST", "100000")
            // Everything runs as guest here, the operator's commands included.
            .env("WARREN_OPERATOR_USER", "guest")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if let Some(dir) = &self.sagas_dir {
            command.env("WARREN_SAGAS_DIR", dir);
        }
        if self.allow_chaos {
            command.env("WARREN_ALLOW_CHAOS", "true");
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.children.push(Some(command.spawn().unwrap()));
        self.metrics_ports.push(metrics_port);
        self.log_files.push(log_path);
        index
    }

    /// The `/metrics` URL of a process started by [`System::spawn`].
    pub fn metrics_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_ports[index])
    }

    /// The file a process started by [`System::spawn`] logs to.
    pub fn log_file(&self, index: usize) -> &std::path::Path {
        &self.log_files[index]
    }

    /// Whether a process started by [`System::spawn`] is still running.
    pub fn alive(&mut self, index: usize) -> bool {
        self.children[index]
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Waits for a process to end on its own; returns how it ended.
    pub async fn exited(&mut self, index: usize) -> std::process::ExitStatus {
        let mut child = self.children[index].take().unwrap();
        testkit::within(PATIENCE, "the process to exit", child.wait())
            .await
            .unwrap()
    }

    /// Runs `warren <args>` against this system's broker and database (and its saga
    /// definitions, when it has its own).
    pub async fn cli(&self, args: &[&str]) -> Ran {
        let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
        command
            .args(args)
            .env("WARREN_AMQP_URL", testkit::amqp_url_for(&self.vhost))
            .env("WARREN_DATABASE_URL", &self.database_url)
            .env("WARREN_CONNECT_TIMEOUT_SECS", "10")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .env_remove("WARREN_SAGAS_DIR");
        if let Some(dir) = &self.sagas_dir {
            command.env("WARREN_SAGAS_DIR", dir);
        }
        Ran::of(&mut command).await
    }

    /// Writes a checkout definition into a fresh folder of the test's own; returns the file.
    pub fn write_definition(&self, folder: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-{folder}-{}", self.vhost));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("checkout.toml");
        std::fs::write(&file, text).unwrap();
        file
    }

    /// Kills a process the hard way (SIGKILL): what it had not acked comes back to others.
    pub async fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            child.kill().await.unwrap();
        }
    }

    /// Waits until the gateway says it is ready.
    pub async fn ready(&self) {
        self.answers(&format!("{}/readyz", self.base)).await;
    }

    /// Waits until `url` answers with a success (a process coming up).
    pub async fn answers(&self, url: &str) {
        testkit::within(PATIENCE, &format!("{url} to answer"), async {
            loop {
                if let Ok(response) = self.client.get(url).send().await
                    && response.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    pub async fn put(&self, path: &str, body: Value) -> reqwest::StatusCode {
        self.client
            .put(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Seeds products and accounts through the gateway and waits until the services hold them.
    pub async fn seed(&self, products: &[(&str, i64, i64)], accounts: &[(&str, i64)]) {
        for (sku, price, available) in products {
            let body = json!({"name": format!("Product {sku}"), "price_cents": price, "available": available});
            assert_eq!(self.put(&format!("/v1/products/{sku}"), body).await, 202);
        }
        for (customer, balance) in accounts {
            assert_eq!(
                self.put(
                    &format!("/v1/accounts/{customer}"),
                    json!({"balance_cents": balance})
                )
                .await,
                202
            );
        }
        let (products, accounts) = (products.len() as i64, accounts.len() as i64);
        self.until("the seed data to arrive", || async {
            let p: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.products")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            let a: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.accounts")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            p == products && a == accounts
        })
        .await;
    }

    /// Re-checks a condition on the database until it holds (what is awaited is the system
    /// converging, which announces itself nowhere else).
    pub async fn until<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        testkit::within(PATIENCE, what, async {
            while !condition().await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    pub async fn checkout(
        &self,
        customer: &str,
        items: &[(&str, u32)],
        key: Option<&str>,
    ) -> (reqwest::StatusCode, Value) {
        let items: Vec<Value> = items
            .iter()
            .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
            .collect();
        let mut request = self
            .client
            .post(format!("{}/v1/checkouts", self.base))
            .json(&json!({"customer_id": customer, "items": items}));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Follows a saga's server-sent events until it reaches a terminal state; returns the
    /// events' data in order.
    pub async fn follow(&self, saga_id: &str) -> Vec<Value> {
        // The start command may still be on its way to the orchestrator.
        self.until("the saga to exist", || async {
            self.get(&format!("/v1/sagas/{saga_id}")).await.0 == 200
        })
        .await;
        let mut response = self
            .client
            .get(format!("{}/v1/sagas/{saga_id}/events", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut events = Vec::new();
        let mut buffer = String::new();
        testkit::within(PATIENCE, "the saga to end", async {
            while let Some(chunk) = response.chunk().await.unwrap() {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                        events.push(serde_json::from_str::<Value>(data.trim()).unwrap());
                    }
                }
            }
        })
        .await;
        events
    }

    /// Opens a server-sent event stream; the returned reader yields each event's data.
    pub async fn stream(&self, path: &str) -> EventStream {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// Waits until `count` sagas exist and none is running or compensating.
    pub async fn all_terminal(&self, count: i64) {
        self.until(&format!("{count} sagas to end"), || async {
            let (all, open): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE status IN ('running', 'compensating')) FROM sagas.sagas",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            all == count && open == 0
        })
        .await;
    }

    pub async fn stop(mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill().await;
        }
        self.pool.close().await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url())
            .await
            .unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )))
        .execute(&admin)
        .await;
        testkit::delete_vhost(&self.vhost).await;
        let _ = std::fs::remove_dir_all(&self.logs);
    }

    pub fn logs(&self) -> &std::path::Path {
        &self.logs
    }
}

/// What a `warren` command printed and how it exited.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Runs a prepared command to the end.
    pub async fn of(command: &mut Command) -> Self {
        let output = command.output().await.unwrap();
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Fails the test unless the command exited with `code`.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The standard output as JSON (for `--json` commands).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// A saga id from a 202 answer.
pub fn saga_id(answer: &Value) -> String {
    answer["saga_id"].as_str().unwrap().to_owned()
}

pub fn new_order() -> Uuid {
    Uuid::now_v7()
}

/// The data of server-sent events, one at a time.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                    return Some(serde_json::from_str(data.trim()).unwrap());
                }
                continue;
            }
            let chunk = self.response.chunk().await.unwrap()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// The built-in checkout definition.
pub const CHECKOUT: &str = include_str!("../../../../sagas/checkout.toml");

/// Checkout with create_order and reserve_inventory swapped: still passes its checks, but a
/// recorded checkout no longer replays through it.
pub fn swapped_checkout() -> String {
    let parts: Vec<&str> = CHECKOUT.split("[[step]]").collect();
    assert_eq!(parts.len(), 5, "four steps");
    assert!(parts[1].contains("create_order") && parts[2].contains("reserve_inventory"));
    [parts[0], parts[2], parts[1], parts[3], parts[4]].join("[[step]]")
}

/// The inputs a `warren saga show --json` timeline says were applied.
pub fn applied_inputs(shown: &Value) -> Vec<String> {
    shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["applied"] == true)
        .map(|e| e["summary"].as_str().unwrap().to_owned())
        .collect()
}
