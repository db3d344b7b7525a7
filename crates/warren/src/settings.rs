//! Settings: every knob has a flag and a `WARREN_` environment variable, checked at start.

use std::net::SocketAddr;
use std::time::Duration;

use bus::BusSettings;
use clap::{Args, ValueEnum};
use store::DbSettings;

#[derive(Debug, Clone, Args)]
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
    /// Where the gateway listens.
    #[arg(
        long,
        global = true,
        env = "WARREN_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// Where a process serves `/metrics`, `/healthz` and `/readyz` for scrapers and
    /// orchestrators (default: on the gateway's address in a process that runs the gateway,
    /// 127.0.0.1:9180 in any other).
    #[arg(long, global = true, env = "WARREN_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Database connections per process.
    #[arg(long, global = true, env = "WARREN_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// How long to wait for the broker and the database at start (default: 60 s for
    /// `warren run`, which may start before them; 5 s for operator commands).
    #[arg(long, global = true, env = "WARREN_CONNECT_TIMEOUT_SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// How long in-flight work may take to finish on shutdown.
    #[arg(
        long,
        global = true,
        env = "WARREN_SHUTDOWN_GRACE_SECS",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,
    /// Saga definitions to run instead of the built-in ones (every `*.toml` in the folder).
    #[arg(long, global = true, env = "WARREN_SAGAS_DIR")]
    pub sagas_dir: Option<std::path::PathBuf>,
    /// Deliveries each consumer handles at once.
    #[arg(long, global = true, env = "WARREN_PREFETCH", default_value_t = 32)]
    pub prefetch: u16,
    /// How often the orchestrator looks for sagas whose deadline passed.
    #[arg(
        long,
        global = true,
        env = "WARREN_SWEEP_INTERVAL_MS",
        default_value_t = 250
    )]
    pub sweep_interval_ms: u64,
    /// How long the gateway waits for a service to answer a read.
    #[arg(
        long,
        global = true,
        env = "WARREN_QUERY_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub query_timeout_ms: u64,
    /// Where uploaded images and their variants are kept.
    #[arg(
        long,
        global = true,
        env = "WARREN_IMAGE_STORE",
        default_value = ".warren/images"
    )]
    pub image_store: std::path::PathBuf,
    /// The largest image upload accepted, in bytes.
    #[arg(long, global = true, env = "WARREN_IMAGE_UPLOAD_LIMIT", default_value_t = 10 * 1024 * 1024)]
    pub image_upload_limit: usize,
    /// The RabbitMQ management UI, which the gateway's `/ui` page links to.
    #[arg(
        long,
        global = true,
        env = "WARREN_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// Log format.
    #[arg(long, global = true, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
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
    use super::vhost_of;

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
