//! Reaching the broker from operator commands: a plain "not reachable" within the connect
//! timeout instead of lapin's endless retries against a broker that is down.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use bus::Bus;

use crate::settings::Settings;

/// How long one attempt to reach the broker's address may take, and the pause between them.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Connects, or prints why the broker is unreachable and returns `None` (exit code 4 for the
/// caller); other errors pass through.
pub async fn connect_or_report(settings: &Settings) -> anyhow::Result<Option<Bus>> {
    match connect(settings).await {
        Ok(bus) => Ok(Some(bus)),
        Err(error) if error.downcast_ref::<Unreachable>().is_some() => {
            eprintln!("error: {error}");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Connects within the connect timeout, or says plainly that the broker is not there.
///
/// A refused first connection is retried for ever by the connection's own recovery, so
/// `Bus::connect` alone would never give up on a broker that is down: first wait (within the
/// same timeout) for something to accept TCP connections at the URL's address.
pub async fn connect(settings: &Settings) -> anyhow::Result<Bus> {
    let settings = settings.bus("cli");
    let unreachable = || Unreachable {
        url: bus::connection::redact(&settings.url),
        patience: settings.connect_timeout,
    };
    if let Ok(uri) = settings.url.parse::<lapin::uri::AMQPUri>() {
        let (host, port) = (uri.authority.host, uri.authority.port);
        let listening = async {
            loop {
                let (host, port) = (host.clone(), port);
                let answered = tokio::task::spawn_blocking(move || {
                    (host.as_str(), port)
                        .to_socket_addrs()
                        .into_iter()
                        .flatten()
                        .any(|address| TcpStream::connect_timeout(&address, PROBE_TIMEOUT).is_ok())
                })
                .await
                .unwrap_or(false);
                if answered {
                    return;
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        };
        tokio::time::timeout(settings.connect_timeout, listening)
            .await
            .map_err(|_| unreachable())?;
    }
    tokio::time::timeout(settings.connect_timeout, Bus::connect(&settings))
        .await
        .map_err(|_| unreachable())?
        .context("connecting to RabbitMQ (see --amqp-url or WARREN_AMQP_URL)")
}

/// Nothing answered at the broker's address within the connect timeout.
#[derive(Debug)]
pub struct Unreachable {
    url: String,
    patience: Duration,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RabbitMQ is not reachable at {} (waited {:?}); is it running? The URL comes from \
             --amqp-url or WARREN_AMQP_URL, the wait from --connect-timeout-secs",
            self.url, self.patience
        )
    }
}

impl std::error::Error for Unreachable {}
