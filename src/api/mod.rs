//! The HTTP API (axum): routes, shared state and the error shape. Handlers are thin: extract the
//! caller and a validated body, call the hub, map errors to `{"error", "detail"}`.

pub mod error;
pub mod extract;
pub mod live;
pub mod norns;
pub mod ops;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    pub ready: Arc<AtomicBool>,
    pub openapi: Arc<String>,
    /// The NATS sources, when configured: not ready until connected.
    pub nats_source: Option<crate::source::nats::NatsSource>,
    /// Registration with Caduceus, when configured (reported by `/readyz`).
    pub caduceus: Option<Arc<crate::source::caduceus::Registration>>,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "brunnr",
    description = "Event fan-out hub: events in by key, out to every current subscription for that key."
))]
struct ApiDoc;

/// Every route, and the OpenAPI description built from the same list (so the two cannot drift).
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(norns::create, norns::list))
        .routes(routes!(norns::get, norns::replace, norns::delete))
        .routes(routes!(crate::source::wrp::post_events, live::monit_events))
        .routes(routes!(crate::source::notifier::push_events))
        .routes(routes!(crate::source::notifier::drop_user))
        .routes(routes!(live::subscribe_to_events))
        .routes(routes!(live::stream))
        .routes(routes!(live::clients))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .split_for_parts()
}

/// The OpenAPI description as JSON.
pub fn openapi_json() -> String {
    routes()
        .1
        .to_pretty_json()
        .expect("the OpenAPI description always encodes")
}

/// CORS for `server.cors_origins` (browsers' `EventSource` and `fetch` from other origins).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|origin| origin.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::PUT,
                axum::http::Method::DELETE,
            ])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("last-event-id"),
                axum::http::HeaderName::from_static("x-auth-token"),
            ]),
    )
}

/// The app, ready to serve.
pub fn app(state: AppState) -> Router {
    let (router, _) = routes();
    let cors = cors(&state.config.server.cors_origins);
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .route("/openapi.json", axum::routing::get(ops::openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(state)
}
