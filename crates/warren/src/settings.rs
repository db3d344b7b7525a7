//! Settings: every knob has a flag and a `WARREN_` environment variable, checked at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bus::BusSettings;
use clap::{Args, ValueEnum};
use store::DbSettings;

/// What every subcommand that reaches the broker or the database takes: where they are, and how
/// to reach them. (`warren auth` and `warren components` reach neither, and take none of it.)
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct Settings {
    /// RabbitMQ URL, with the vhost.
    #[arg(
        long,
        global = true,
        env = "WARREN_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/warren",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// PostgreSQL URL.
    #[arg(
        long,
        global = true,
        env = "WARREN_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/warren",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Database connections per process.
    #[arg(long, global = true, env = "WARREN_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// How long to wait for the broker and the database at start (default: 60 s for
    /// `warren run`, which may start before them; 5 s for operator commands).
    #[arg(long, global = true, env = "WARREN_CONNECT_TIMEOUT_SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// Saga definitions to run instead of the built-in ones (every `*.toml` in the folder).
    #[arg(long, global = true, env = "WARREN_SAGAS_DIR")]
    pub sagas_dir: Option<std::path::PathBuf>,
    /// A file holding the broker password, which replaces the one of the AMQP URL (so it
    /// appears in no environment or command line). Read at start.
    #[arg(long, global = true, env = "WARREN_AMQP_PASSWORD_FILE")]
    pub amqp_password_file: Option<PathBuf>,
    /// A file holding the database password, which replaces the one of the database URL.
    #[arg(long, global = true, env = "WARREN_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
}

/// What `warren run` takes besides: the processes' knobs and the gateway's.
#[derive(Debug, Clone, Args)]
pub struct RunSettings {
    /// Where the gateway listens.
    #[arg(
        long,
        env = "WARREN_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        help_heading = "Gateway"
    )]
    pub http_addr: SocketAddr,
    /// Where a process serves `/metrics`, `/healthz` and `/readyz` for scrapers and
    /// orchestrators (default: on the gateway's address in a process that runs the gateway,
    /// 127.0.0.1:9180 in any other).
    #[arg(long, env = "WARREN_METRICS_ADDR", help_heading = "Processes")]
    pub metrics_addr: Option<SocketAddr>,
    /// How long in-flight work may take to finish on shutdown.
    #[arg(
        long,
        env = "WARREN_SHUTDOWN_GRACE_SECS",
        default_value_t = 10,
        help_heading = "Processes"
    )]
    pub shutdown_grace_secs: u64,
    /// Deliveries each consumer handles at once. Under load the deliveries that wait are what
    /// group commit puts into one transaction: 128 gave 235 checkouts/s against 174 at 32 on the
    /// 2-core development machine (docs/performance.md).
    #[arg(
        long,
        env = "WARREN_PREFETCH",
        default_value_t = 128,
        help_heading = "Processes"
    )]
    pub prefetch: u16,
    /// How often the orchestrator looks for sagas whose deadline passed.
    #[arg(
        long,
        env = "WARREN_SWEEP_INTERVAL_MS",
        default_value_t = 250,
        help_heading = "Processes"
    )]
    pub sweep_interval_ms: u64,
    /// How long an outbox relay waits for the broker's confirms of a batch before it counts
    /// the batch as not published and releases its rows (a broker blocked by a resource
    /// alarm confirms nothing).
    #[arg(
        long,
        env = "WARREN_CONFIRM_TIMEOUT_MS",
        default_value_t = 10_000,
        help_heading = "Processes"
    )]
    pub confirm_timeout_ms: u64,
    /// How long the gateway waits for a service to answer a read.
    #[arg(
        long,
        env = "WARREN_QUERY_TIMEOUT_MS",
        default_value_t = 5000,
        help_heading = "Gateway"
    )]
    pub query_timeout_ms: u64,
    /// Where uploaded images and their variants are kept.
    #[arg(
        long,
        env = "WARREN_IMAGE_STORE",
        default_value = ".warren/images",
        help_heading = "Processes"
    )]
    pub image_store: std::path::PathBuf,
    /// The largest image upload accepted, in bytes.
    #[arg(long, env = "WARREN_IMAGE_UPLOAD_LIMIT", default_value_t = 10 * 1024 * 1024, help_heading = "Gateway")]
    pub image_upload_limit: usize,
    /// The RabbitMQ management UI, which the gateway's `/ui` page links to.
    #[arg(
        long,
        env = "WARREN_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672",
        help_heading = "Gateway"
    )]
    pub management_url: String,
    /// API keys for machines: a TOML file of `[[key]]` tables (name, sha256, scopes).
    #[arg(long, env = "WARREN_API_KEYS_FILE", help_heading = "Gateway")]
    pub api_keys_file: Option<PathBuf>,
    /// Requests per second each client may make to the gateway (a token's subject, an API
    /// key's name)...
    #[arg(
        long,
        env = "WARREN_RATE_LIMIT",
        default_value_t = 50,
        help_heading = "Gateway"
    )]
    pub rate_limit: u32,
    /// ...and how many it may make at once after a quiet spell.
    #[arg(
        long,
        env = "WARREN_RATE_BURST",
        default_value_t = 200,
        help_heading = "Gateway"
    )]
    pub rate_burst: u32,
    /// How long the gateway lets a request take before answering 503.
    #[arg(
        long,
        env = "WARREN_REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        help_heading = "Gateway"
    )]
    pub request_timeout_secs: u64,
    /// Origins whose pages may call the gateway (comma-separated); none by default.
    #[arg(
        long,
        env = "WARREN_CORS_ORIGINS",
        value_delimiter = ',',
        help_heading = "Gateway"
    )]
    pub cors_origins: Vec<String>,
    /// The broker user whose chaos control messages processes take (`warren run
    /// --allow-chaos`); the broker vouches for a message's user.
    #[arg(
        long,
        env = "WARREN_OPERATOR_USER",
        default_value = bus::access::DEFAULT_OPERATOR, help_heading = "Processes")]
    pub operator_user: String,
    #[command(flatten)]
    pub jwt: JwtSettings,
}

/// How the gateway checks tokens, and `warren auth token` signs them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Gateway tokens")]
pub struct JwtSettings {
    /// The one algorithm gateway tokens are signed with (HS256, RS256, ES256, EdDSA, ...).
    #[arg(
        long = "jwt-algorithm",
        env = "WARREN_JWT_ALGORITHM",
        default_value = "HS256"
    )]
    pub algorithm: String,
    /// The gateway's token key: the shared secret for HS*, the public key (PEM) otherwise.
    #[arg(long = "jwt-key-file", env = "WARREN_JWT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The issuer (`iss`) tokens must name.
    #[arg(
        long = "jwt-issuer",
        env = "WARREN_JWT_ISSUER",
        default_value = "warren"
    )]
    pub issuer: String,
    /// The audience (`aud`) tokens must name.
    #[arg(
        long = "jwt-audience",
        env = "WARREN_JWT_AUDIENCE",
        default_value = "warren"
    )]
    pub audience: String,
    /// Clock skew allowed on a token's expiry, in seconds.
    #[arg(
        long = "jwt-leeway-secs",
        env = "WARREN_JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub leeway_secs: u64,
}

/// How long `warren run` waits for the broker and the database unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 60;
/// How long operator commands wait before saying a server is unreachable.
pub const CLI_CONNECT_TIMEOUT_SECS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    pub fn bus(&self, component: &str) -> BusSettings {
        BusSettings {
            url: self.amqp_url.clone(),
            connection_name: format!("warren-{component}"),
            connect_timeout: self.connect_timeout(),
        }
    }

    pub fn db(&self) -> DbSettings {
        DbSettings {
            url: self.database_url.clone(),
            max_connections: self.db_pool,
            connect_timeout: self.connect_timeout(),
        }
    }

    /// The vhost of the AMQP URL, decoded as the connection decodes it; `/` when the URL names
    /// none.
    pub fn vhost(&self) -> String {
        vhost_of(&self.amqp_url)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(
            self.connect_timeout_secs
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
        )
    }

    /// Puts the passwords of the password files into the URLs. Called once at start; a file
    /// that cannot be read, or a URL that names no user, stops the process with the reason.
    pub fn read_password_files(&mut self) -> anyhow::Result<()> {
        if let Some(file) = &self.amqp_password_file {
            self.amqp_url = with_password(&self.amqp_url, &read_secret(file)?)
                .context("WARREN_AMQP_URL (with WARREN_AMQP_PASSWORD_FILE)")?;
        }
        if let Some(file) = &self.database_password_file {
            self.database_url = with_password(&self.database_url, &read_secret(file)?)
                .context("WARREN_DATABASE_URL (with WARREN_DATABASE_PASSWORD_FILE)")?;
        }
        Ok(())
    }
}

impl RunSettings {
    /// What every participant shares, committing at most `group_commit` deliveries at once.
    pub fn host(&self, group_commit: usize) -> host::HostSettings {
        host::HostSettings {
            prefetch: self.prefetch,
            group_commit,
            shutdown_grace: self.shutdown_grace(),
            relay: store::RelaySettings {
                confirm_timeout: Duration::from_millis(self.confirm_timeout_ms),
                ..store::RelaySettings::default()
            },
            trusted: vec![self.operator_user.clone()],
            image_store: self.image_store.clone(),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The gateway's checker of credentials, from the key and API-key files.
    pub fn auth(&self) -> anyhow::Result<gateway::Auth> {
        let jwt = match &self.jwt.key_file {
            None => None,
            Some(path) => Some(gateway::JwtSettings {
                algorithm: self.jwt.algorithm()?,
                key: std::fs::read(path)
                    .with_context(|| format!("reading the JWT key {}", path.display()))?,
                issuer: self.jwt.issuer.clone(),
                audience: self.jwt.audience.clone(),
                leeway_secs: self.jwt.leeway_secs,
            }),
        };
        let api_keys = match &self.api_keys_file {
            None => Vec::new(),
            Some(path) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct KeysFile {
                    #[serde(default)]
                    key: Vec<gateway::ApiKey>,
                }
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the API keys {}", path.display()))?;
                toml::from_str::<KeysFile>(&text)
                    .with_context(|| format!("the API keys file {}", path.display()))?
                    .key
            }
        };
        gateway::Auth::new(jwt, api_keys).map_err(anyhow::Error::msg)
    }
}

impl JwtSettings {
    pub fn algorithm(&self) -> anyhow::Result<jsonwebtoken::Algorithm> {
        self.algorithm
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown JWT algorithm {:?}", self.algorithm))
    }
}

/// A secret file's content, without its final line break.
pub fn read_secret(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the password file {}", file.display()))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    anyhow::ensure!(
        !secret.is_empty(),
        "the password file {} is empty",
        file.display()
    );
    Ok(secret.to_owned())
}

/// `url` with `password` in place of its password (percent-encoded).
fn with_password(url: &str, password: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).map_err(|error| {
        anyhow::anyhow!("not a URL ({error}): {}", bus::connection::redact(url))
    })?;
    anyhow::ensure!(
        !parsed.username().is_empty(),
        "the URL names no user for the password: {}",
        bus::connection::redact(url)
    );
    parsed.set_password(Some(password)).map_err(|()| {
        anyhow::anyhow!("cannot hold a password: {}", bus::connection::redact(url))
    })?;
    Ok(parsed.into())
}

fn vhost_of(amqp_url: &str) -> String {
    // An unparsable URL fails the connection with its own message; the vhost only labels links.
    match amqp_url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) if !uri.vhost.is_empty() => uri.vhost,
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{read_secret, vhost_of, with_password};

    #[test]
    fn a_password_file_fills_in_the_url() {
        assert_eq!(
            with_password("amqp://warren-payment@127.0.0.1:5672/warren", "p@ss:w/rd").unwrap(),
            "amqp://warren-payment:p%40ss%3Aw%2Frd@127.0.0.1:5672/warren"
        );
        assert_eq!(
            bus::connection::user_of(
                &with_password(
                    "amqp://warren-payment:old@broker/warren?heartbeat=10",
                    "new"
                )
                .unwrap()
            ),
            "warren-payment"
        );
        let url =
            with_password("postgres://warren_orders@127.0.0.1:5432/warren", "s3cret").unwrap();
        assert_eq!(url, "postgres://warren_orders:s3cret@127.0.0.1:5432/warren");
        let decoded: lapin::uri::AMQPUri = with_password("amqp://u@h/v", "a b%c")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(decoded.authority.userinfo.password, "a b%c");
        assert!(with_password("amqp://127.0.0.1:5672/warren", "x").is_err());
    }

    #[test]
    fn a_secret_file_loses_its_final_line_break_only() {
        let dir = std::env::temp_dir().join(format!("warren-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "s3cret \n").unwrap();
        assert_eq!(read_secret(&file).unwrap(), "s3cret ");
        std::fs::write(&file, "").unwrap();
        assert!(read_secret(&file).is_err());
        assert!(read_secret(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_vhost_is_the_decoded_path_of_the_amqp_url() {
        let cases = [
            ("amqp://guest:guest@127.0.0.1:5672/warren", "warren"),
            (
                "amqp://guest:guest@127.0.0.1:5672/warren_test?heartbeat=10",
                "warren_test",
            ),
            ("amqp://127.0.0.1:5672/%2F", "/"),
            ("amqp://127.0.0.1/my%20vhost", "my vhost"),
            ("amqps://user:p%40ss@rabbit.example:5671/a%2Fb", "a/b"),
            ("amqp://127.0.0.1:5672", "/"),
            ("amqp://127.0.0.1:5672/", "/"),
            ("not a url", "/"),
        ];
        for (url, vhost) in cases {
            assert_eq!(vhost_of(url), vhost, "{url}");
        }
    }
}
