//! Warren's HTTP gateway (axum). It owns no tables: commands go out over the bus with
//! confirms, queries are answered by the owning service over request/reply.
//!
//! - [`checkouts`]: starting checkout sagas, with idempotency keys.
//! - [`sagas`]: reading sagas and streaming their transitions (server-sent events).
//! - [`resources`]: orders, products and accounts.
//! - [`images`]: uploads, image status and variant downloads.
//! - [`events`]: the one live-event subscription each gateway process fans out.
//! - [`notifications`]: customers' notifications, listed and streamed.
//! - [`error`], [`extract`]: the JSON error every route answers with.
//! - [`auth`], [`guard`]: who is calling and what they may do; rate limits and deadlines.
//! - [`health`]: liveness and readiness.
//! - [`http_metrics`]: `/metrics`, and request counts and latency by route.
//! - [`trace`]: the W3C trace a request runs in, passed on to what it publishes.
//! - [`ui`]: the live saga page for people, with its event stream and queue counts.

pub mod auth;
pub mod checkouts;
pub mod error;
pub mod events;
pub mod extract;
pub mod guard;
pub mod health;
pub mod http_metrics;
pub mod images;
pub mod notifications;
pub mod resources;
pub mod sagas;
pub mod trace;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bus::rpc::{RpcClient, RpcError};
use bus::{Bus, Publisher};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use sqlx::PgPool;
use tracing::info;

pub use auth::{ApiKey, Auth, JwtSettings, Principal, Scope};
pub use error::ApiError;
pub use events::LiveEvents;
pub use guard::Limits;
pub use ui::UiSettings;

/// The name the gateway publishes under.
pub const PRODUCER: &str = "gateway";

/// The gateway as the broker and the database see it: it owns no queue, publishes saga starts
/// and settings, and watches saga and notification events live.
pub const COMPONENT: contracts::Component = contracts::Component {
    name: "gateway",
    owns: None,
    consumes: &[],
    answers_queries: false,
    publishes: &[
        <contracts::messages::SagaStart as contracts::Message>::TYPE,
        <contracts::messages::ProductUpsert as contracts::Message>::TYPE,
        <contracts::messages::AccountSetBalance as contracts::Message>::TYPE,
    ],
    sends_saga_commands: false,
    watches: &events::LIVE_EVENT_KEYS,
    db_role: "warren_gateway",
    schema: None,
    metrics_port: None,
};
/// JSON bodies larger than this get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the routes need.
#[derive(Debug, Clone)]
pub struct AppState {
    pub bus: Bus,
    pub publisher: Publisher,
    pub rpc: RpcClient,
    pub events: LiveEvents,
    /// For readiness only: the gateway reads no table.
    pub pool: Option<PgPool>,
    pub query_timeout: Duration,
    pub images: ImageSettings,
    /// The process's metrics, served at `/metrics` (none in tests that do not install them).
    pub metrics: Option<PrometheusHandle>,
    pub ui: UiSettings,
    /// Who may call (see [`auth`]).
    pub auth: Auth,
    pub limits: Limits,
    /// Cross-origin requests: refused unless origins are configured.
    pub cors: Option<tower_http::cors::CorsLayer>,
}

/// Where uploads go and how large they may be.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub store: ::images::store::ImageStore,
    pub upload_limit: usize,
}

impl AppState {
    /// Asks the service behind `queue` and waits up to the query timeout.
    pub async fn query(&self, queue: &str, method: &str, params: Value) -> Result<Value, RpcError> {
        self.rpc
            .request(queue, method, &params, self.query_timeout)
            .await
    }
}

/// Request bodies of the small writes (a product, a balance).
const SMALL_BODY_LIMIT: usize = 4 * 1024;

pub fn router(state: AppState) -> Router {
    let small = DefaultBodyLimit::max(SMALL_BODY_LIMIT);
    let v1 = Router::new()
        .route("/checkouts", post(checkouts::create))
        .route("/sagas", get(sagas::list))
        .route("/sagas/{id}", get(sagas::get))
        .route("/sagas/{id}/events", get(sagas::events))
        .route("/orders/{id}", get(resources::get_order))
        .route(
            "/products/{sku}",
            get(resources::get_product).put(resources::put_product.layer(small)),
        )
        .route(
            "/accounts/{customer_id}",
            get(resources::get_account).put(resources::put_account.layer(small)),
        )
        .route(
            "/images",
            post(images::upload)
                .layer(DefaultBodyLimit::max(state.images.upload_limit + 64 * 1024)),
        )
        .route("/images/{id}", get(images::get))
        .route("/images/{id}/variants/{name}", get(images::variant))
        .route("/notifications", get(notifications::list))
        .route("/notifications/stream", get(notifications::stream));
    let ui_data = Router::new()
        .route("/ui/events", get(ui::events))
        .route("/ui/queues", get(ui::queues));
    let guarded = middleware::from_fn_with_state(state.clone(), guard::guard);
    let router = Router::new()
        .nest("/v1", v1.route_layer(guarded.clone()))
        .merge(ui_data.route_layer(guarded))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(http_metrics::render))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(ui::page))
        .route_layer(middleware::from_fn(http_metrics::record))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let cors = state.cors.clone();
    let router = router.with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}

/// Serves until `shutdown` completes, then lets open requests finish.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "gateway listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
