//! The notifier source: `POST /push_events` (connectors push events for users) and
//! `POST /drop_user` (close a user's live sessions), as the notifier service had them.
//!
//! A pushed event is keyed by its `accessid`; its `created_at` becomes the event's time (what a
//! session's announcement `timestamp` is compared with) and its `payload` is kept as given. Events
//! for users with nobody connected stay in the key's history, for replay.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Admin, ApiJson, Publisher};
use crate::event::Event;
use crate::metrics as m;

const SOURCE: &str = "notifier";
/// The event kind of pushed events.
pub const KIND: &str = "notifier";

/// One pushed event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushedEvent {
    /// The user it is for.
    pub accessid: String,
    /// The producer's time, ms since the epoch.
    pub created_at: i64,
    /// What the user receives: a string (kept as text), or any JSON value (kept as JSON).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl PushedEvent {
    fn into_event(self) -> Event {
        let (content_type, payload) = match self.payload {
            serde_json::Value::String(text) => ("text/plain; charset=utf-8", Bytes::from(text)),
            other => (
                "application/json",
                Bytes::from(serde_json::to_vec(&other).expect("JSON always encodes")),
            ),
        };
        Event {
            id: Event::new_id(),
            key: self.accessid,
            kind: KIND.into(),
            source: SOURCE,
            time_ms: self.created_at,
            content_type: content_type.into(),
            payload,
            wrp: None,
        }
    }
}

/// What `/drop_user` takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DropUser {
    pub drop_access_id: String,
}

/// Pushes events to users' live sessions (and their norns and history).
#[utoipa::path(post, path = "/push_events", tag = "events", request_body = Vec<PushedEvent>,
    responses((status = 200, body = bool, description = "Always true once accepted"),
              (status = 400, description = "Not an array of {accessid, created_at, payload}"),
              (status = 401), (status = 403), (status = 413), (status = 415), (status = 429)))]
pub async fn push_events(
    State(state): State<AppState>,
    _publisher: Publisher,
    body: Result<ApiJson<Vec<PushedEvent>>, ApiError>,
) -> Result<Json<bool>, ApiError> {
    let _admitted = state
        .hub
        .admit()
        .map_err(|busy| reject("busy", busy.into()))?;
    let ApiJson(pushed) = body.map_err(|error| reject("invalid", error))?;
    if let Some(index) = pushed.iter().position(|event| event.accessid.is_empty()) {
        return Err(reject(
            "invalid",
            ApiError::bad_request(
                "invalid_json",
                format!("[{index}].accessid: must not be empty"),
            ),
        ));
    }
    metrics::counter!(m::EVENTS_RECEIVED, "source" => SOURCE).increment(pushed.len() as u64);
    state
        .hub
        .publish_all(pushed.into_iter().map(PushedEvent::into_event).collect());
    Ok(Json(true))
}

/// Closes a user's live sessions (WebSocket close 1000 "close").
#[utoipa::path(post, path = "/drop_user", tag = "events", request_body = DropUser,
    responses((status = 200, body = bool, description = "Always true"), (status = 400), (status = 401), (status = 403)))]
pub async fn drop_user(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(request): ApiJson<DropUser>,
) -> Json<bool> {
    let closed = state.hub.live().drop_key(&request.drop_access_id);
    tracing::info!(sessions = closed, "Dropped a user's live sessions.");
    Json(true)
}

fn reject(reason: &'static str, error: ApiError) -> ApiError {
    metrics::counter!(m::EVENTS_REJECTED, "source" => SOURCE, "reason" => reason).increment(1);
    error
}
