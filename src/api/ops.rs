//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI description.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

/// 200 while the process lives.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 once the store is open, norns are loaded and the NATS source (if configured) is
/// connected; 503 before that and while shutting down. The NATS sink and the Caduceus
/// registration are reported.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200), (status = 503)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if state
        .nats_source
        .as_ref()
        .is_some_and(|source| !source.is_connected())
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"error": "not_ready", "detail": "the NATS source is not connected"}),
            ),
        );
    }
    if state.ready.load(Ordering::Relaxed) {
        // The NATS sink is reported, not required: its norns buffer, retry and drop on their own.
        let nats = match state.hub.nats_connected() {
            None => "not configured",
            Some(true) => "connected",
            Some(false) => "disconnected",
        };
        (
            StatusCode::OK,
            Json(
                serde_json::json!({"status": "ready", "store": "ok", "nats_sink": nats,
                "nats_source": if state.nats_source.is_some() { "connected" } else { "not configured" },
                "caduceus": caduceus_status(&state)}),
            ),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"error": "not_ready", "detail": "brunnr is starting or stopping"}),
            ),
        )
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This API's OpenAPI 3 description, generated from the handlers.
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
}

/// Where the Caduceus registration stands (reported, not required: Caduceus may come later).
fn caduceus_status(state: &AppState) -> String {
    use crate::source::caduceus::RegistrationState;
    match state
        .caduceus
        .as_ref()
        .map(|registration| registration.state())
    {
        None => "not configured".into(),
        Some(RegistrationState::Pending) => "pending".into(),
        Some(RegistrationState::Registered { .. }) => "registered".into(),
        Some(RegistrationState::Failing { error }) => format!("failing: {error}"),
    }
}
