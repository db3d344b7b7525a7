//! The operations listener of a process without the gateway: `/metrics` for Prometheus,
//! `/healthz` and `/readyz` for whatever restarts or routes to it (compose, Kubernetes).

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bus::Bus;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tracing::info;

#[derive(Debug, Clone)]
struct Ops {
    metrics: PrometheusHandle,
    bus: Bus,
    pool: PgPool,
}

/// Serves until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    bus: Bus,
    pool: PgPool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "metrics and health listening");
    let router = Router::new()
        .route("/metrics", get(render))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .with_state(Ops { metrics, bus, pool });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
}

/// Ready when the broker connection is up and the database answers.
async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    let broker = ops.bus.is_connected();
    let database = sqlx::query("SELECT 1").execute(&ops.pool).await.is_ok();
    let up = |ok: bool| if ok { "up" } else { "down" };
    let status = if broker && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
            "broker": up(broker),
            "database": up(database),
        })),
    )
}
