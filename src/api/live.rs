//! Live routes: the notifier WebSocket (`/subscribe_to_events`), monit's SSE (`GET /events`), the
//! generic stream (`/v1/stream`, SSE or WebSocket) and `GET /clients`.
//!
//! Handlers check the caller, the keys and the limits, open a session on the hub (which snapshots
//! the replay) and hand it to a transport in `sink::websocket` or `sink::sse`.

use std::sync::Arc;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{ACCEPT, UPGRADE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::extract::{Admin, ApiQuery, authenticate_or_token, has_credentials, require_role};
use crate::auth::{Authenticator, Principal, Role};
use crate::hub::history::Replay;
use crate::hub::live::{Live, OpenError};
use crate::metrics as m;
use crate::sink::frames::{Format, closes_inbox};
use crate::sink::sse;
use crate::sink::websocket::{self, Heartbeat};

/// Most keys one `/v1/stream` session may follow.
pub const MAX_STREAM_KEYS: usize = 64;
/// Frames from clients are small (announcements, pongs): a small read buffer keeps idle sessions
/// cheap, and anything larger than `WS_MAX_MESSAGE` is refused rather than buffered.
const WS_READ_BUFFER: usize = 2 * 1024;
const WS_MAX_MESSAGE: usize = 64 * 1024;
/// Outgoing frames are written through at once rather than gathered.
const WS_WRITE_BUFFER: usize = 0;

fn count_refusal(reason: &'static str) {
    metrics::counter!(m::LIVE_REFUSED, "reason" => reason).increment(1);
}

fn refused(reason: &'static str, error: ApiError) -> ApiError {
    count_refusal(reason);
    error
}

fn websocket_required(
    rejection: axum::extract::ws::rejection::WebSocketUpgradeRejection,
) -> ApiError {
    ApiError::bad_request("websocket_required", rejection.body_text())
}

fn heartbeat(state: &AppState) -> Heartbeat {
    Heartbeat {
        interval: state.config.live.heartbeat,
        timeout: state.config.live.heartbeat_timeout,
    }
}

fn reserve(live: &Live) -> Result<OwnedSemaphorePermit, ApiError> {
    live.reserve_connection().map_err(|error| {
        refused(
            "connections",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                error.to_string(),
            ),
        )
    })
}

fn open_error(error: OpenError) -> ApiError {
    refused(
        "sessions_per_key",
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            error.to_string(),
        ),
    )
}

/// A live caller: authenticated (401), with the subscribe role (403), allowed to read every key
/// (403).
fn live_principal(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
    keys: &[String],
) -> Result<Principal, ApiError> {
    let principal = authenticate_or_token(state, headers, token)
        .and_then(|principal| require_role(principal, Role::Subscribe))
        .map_err(|error| refused("auth", error))?;
    if let Some(key) = keys.iter().find(|key| !principal.may_read(key)) {
        return Err(refused(
            "forbidden",
            ApiError::forbidden(format!("{} may not read {key}", principal.name)),
        ));
    }
    Ok(principal)
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<uuid::Uuid>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| uuid::Uuid::parse_str(text.trim()).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an event id")
        })
}

fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The first frame of a notifier session.
#[derive(Debug, Deserialize)]
struct Announcement {
    access_id: String,
    /// Replay stored events with `created_at >= timestamp`; absent: no replay.
    timestamp: Option<i64>,
    /// Credentials, when the upgrade request carried none.
    token: Option<String>,
}

/// The notifier WebSocket. First frame `{"access_id", "timestamp"[, "token"]}`; then a JSON array
/// of the stored events since `timestamp`, and one JSON array per push.
#[utoipa::path(get, path = "/subscribe_to_events", tag = "live",
    params(("token" = Option<String>, Query, description = "Credentials, for clients that cannot set headers")),
    responses((status = 101, description = "WebSocket: announce with {\"access_id\", \"timestamp\"[, \"token\"]}"),
              (status = 400, description = "Not a WebSocket upgrade"), (status = 401, description = "Credentials given and not valid"),
              (status = 503, description = "live.max_connections reached")))]
pub async fn subscribe_to_events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TokenQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Credentials at the upgrade are checked now; without any, the announcement must bring them.
    let principal = if has_credentials(&headers, query.token.as_deref()) || !state.auth.is_enabled()
    {
        Some(
            authenticate_or_token(&state, &headers, query.token.as_deref())
                .map_err(|error| refused("auth", error))?,
        )
    } else {
        None
    };
    let upgrade = upgrade.map_err(websocket_required)?;
    let connection = reserve(state.hub.live())?;
    let live = state.hub.live().clone();
    let auth = state.auth.clone();
    let heartbeat = heartbeat(&state);
    Ok(configure(upgrade).on_upgrade(move |socket| {
        live.clone().track(notifier_session(
            socket, principal, auth, live, connection, heartbeat,
        ))
    }))
}

async fn notifier_session(
    mut socket: WebSocket,
    principal: Option<Principal>,
    auth: Arc<Authenticator>,
    live: Arc<Live>,
    connection: OwnedSemaphorePermit,
    heartbeat: Heartbeat,
) {
    let refuse = count_refusal;
    // One deadline for the whole wait: pings do not extend it.
    let deadline = tokio::time::Instant::now() + heartbeat.timeout;
    let announcement = loop {
        let message = tokio::select! {
            message = tokio::time::timeout_at(deadline, socket.recv()) => message,
            _ = live.shutdown_started() => {
                websocket::close(&mut socket, close_code::AWAY, "server shutting down").await;
                return;
            }
        };
        match message {
            Ok(Some(Ok(Message::Text(text)))) => {
                break serde_json::from_str::<Announcement>(&text)
                    .ok()
                    .filter(|announcement| !announcement.access_id.is_empty());
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => break None,
            Ok(_) => return, // gone
            Err(_) => {
                refuse("announcement");
                websocket::close(&mut socket, close_code::POLICY, "no announcement").await;
                return;
            }
        }
    };
    let Some(announcement) = announcement else {
        refuse("announcement");
        let _ = socket
            .send(Message::Text("Wrong JSON announcement".into()))
            .await;
        websocket::close(&mut socket, close_code::POLICY, "wrong announcement").await;
        return;
    };
    let principal = match principal {
        Some(principal) => Ok(principal),
        None => auth
            .authenticate(
                announcement
                    .token
                    .as_deref()
                    .map(crate::auth::Credentials::Bearer),
            )
            .map_err(|_| "unauthorized"),
    };
    let principal = principal.and_then(|principal| {
        if principal.has_role(Role::Subscribe) && principal.may_read(&announcement.access_id) {
            Ok(principal)
        } else {
            Err("forbidden")
        }
    });
    if let Err(reason) = principal {
        refuse(if reason == "unauthorized" {
            "auth"
        } else {
            "forbidden"
        });
        websocket::close(&mut socket, close_code::POLICY, reason).await;
        return;
    }
    let replay = announcement.timestamp.map_or(Replay::None, Replay::Since);
    match live.open(
        vec![announcement.access_id],
        &replay,
        "websocket",
        connection,
    ) {
        Ok(session) => websocket::run(socket, session, Format::Notifier, heartbeat).await,
        Err(error) => {
            refuse("sessions_per_key");
            tracing::debug!(%error, "Refused a notifier session.");
            websocket::close(&mut socket, close_code::POLICY, "too many sessions").await;
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct MonitQuery {
    stream: Option<String>,
    token: Option<String>,
}

/// monit's SSE stream of one inbox: `id:`, `event: monitor.user`, `data: {"body", "level"}`;
/// `: ping` comments; `event: done` (or `error`) when the inbox closes, then the response ends.
#[utoipa::path(get, path = "/events", tag = "live",
    params(("stream" = String, Query, description = "The inbox (monitor) id"),
           ("Last-Event-ID" = Option<String>, Header, description = "Replay what followed this event")),
    responses((status = 200, content_type = "text/event-stream", description = "The inbox's events"),
              (status = 400, description = "Please specify a stream!"), (status = 401), (status = 403),
              (status = 429, description = "live.max_sessions_per_key reached"), (status = 503, description = "live.max_connections reached")))]
pub async fn monit_events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<MonitQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let keys: Vec<String> = query.stream.into_iter().filter(|s| !s.is_empty()).collect();
    live_principal(&state, &headers, query.token.as_deref(), &keys)?;
    if keys.is_empty() {
        return Err(ApiError::bad_request(
            "missing_stream",
            "Please specify a stream!",
        ));
    }
    // Without Last-Event-ID only the latest event is looked at: if it closed the inbox, the
    // client learns so at once instead of waiting on an inbox that is over.
    let replay = last_event_id(&headers)?.map_or(Replay::Latest, Replay::After);
    let connection = reserve(state.hub.live())?;
    let live = state.hub.live();
    let inbox = keys[0].clone();
    let mut session = live
        .open(keys, &replay, "sse", connection)
        .map_err(open_error)?;
    if replay == Replay::Latest {
        session.missed.retain(|event| closes_inbox(event));
    } else if session.missed.is_empty() && live.latest(&inbox).is_some_and(|e| closes_inbox(&e)) {
        // A client that saw the close comes back (EventSource reconnects by itself): 204 tells
        // it to stop.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(sse::response(
        session,
        Format::SseMonit,
        state.config.live.heartbeat,
    ))
}

/// What `/v1/stream` takes: `key` (repeated), `since`, `token`.
#[derive(Debug, Default)]
struct StreamQuery {
    keys: Vec<String>,
    since: Option<i64>,
    token: Option<String>,
}

impl StreamQuery {
    fn parse(query: Option<&str>) -> Result<StreamQuery, ApiError> {
        let mut parsed = StreamQuery::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*name {
                "key" if !value.is_empty() => parsed.keys.push(
                    crate::wrp::canonical_device_id(&value).unwrap_or_else(|| value.into_owned()),
                ),
                "since" => {
                    parsed.since = Some(value.parse().map_err(|_| {
                        ApiError::bad_request("invalid_since", "since must be ms since the epoch")
                    })?)
                }
                "token" => parsed.token = Some(value.into_owned()),
                _ => {}
            }
        }
        if parsed.keys.is_empty() {
            return Err(ApiError::bad_request(
                "missing_key",
                "give at least one key=…",
            ));
        }
        if parsed.keys.len() > MAX_STREAM_KEYS {
            return Err(ApiError::bad_request(
                "too_many_keys",
                format!("at most {MAX_STREAM_KEYS} keys per stream"),
            ));
        }
        parsed.keys.sort();
        parsed.keys.dedup();
        Ok(parsed)
    }
}

/// Any keys' events as JSON envelopes: SSE (`Accept: text/event-stream`) or WebSocket (one
/// envelope per text frame), with replay from `since` (ms) or `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/stream", tag = "live",
    params(("key" = Vec<String>, Query, description = "Keys to follow (repeat for several)"),
           ("since" = Option<i64>, Query, description = "Replay events since this time (ms since the epoch)"),
           ("token" = Option<String>, Query, description = "Credentials, for clients that cannot set headers"),
           ("Last-Event-ID" = Option<String>, Header, description = "Replay what followed this event")),
    responses((status = 200, content_type = "text/event-stream", description = "Envelopes {id, key, kind, source, time_ms, content_type, payload}"),
              (status = 101, description = "WebSocket: one envelope per text frame"),
              (status = 400), (status = 401), (status = 403, description = "A key the caller may not read"),
              (status = 406, description = "Neither an event-stream request nor a WebSocket upgrade"),
              (status = 429), (status = 503)))]
pub async fn stream(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let query = StreamQuery::parse(parts.uri.query())?;
    live_principal(&state, &parts.headers, query.token.as_deref(), &query.keys)?;
    let replay = match (last_event_id(&parts.headers)?, query.since) {
        (Some(id), _) => Replay::After(id),
        (None, Some(since)) => Replay::Since(since),
        (None, None) => Replay::None,
    };
    let is_upgrade = parts
        .headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let wants_sse = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let upgrade = if is_upgrade {
        Some(
            WebSocketUpgrade::from_request_parts(&mut parts, &state)
                .await
                .map_err(websocket_required)?,
        )
    } else if wants_sse {
        None
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "ask for Accept: text/event-stream, or upgrade to a WebSocket",
        ));
    };
    let live = state.hub.live();
    let connection = reserve(live)?;
    let transport = if upgrade.is_some() {
        "websocket"
    } else {
        "sse"
    };
    let session = live
        .open(query.keys, &replay, transport, connection)
        .map_err(open_error)?;
    match upgrade {
        Some(upgrade) => {
            let heartbeat = heartbeat(&state);
            let live = live.clone();
            Ok(configure(upgrade).on_upgrade(move |socket| {
                live.track(websocket::run(socket, session, Format::Envelope, heartbeat))
            }))
        }
        None => Ok(sse::response(
            session,
            Format::SseEnvelope,
            state.config.live.heartbeat,
        )),
    }
}

/// A key with live sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct Client {
    pub key: String,
    pub sessions: usize,
}

/// Keys with live sessions, and how many each has (admin).
#[utoipa::path(get, path = "/clients", tag = "live",
    responses((status = 200, body = Vec<Client>), (status = 401), (status = 403)))]
pub async fn clients(State(state): State<AppState>, _admin: Admin) -> Json<Vec<Client>> {
    Json(
        state
            .hub
            .live()
            .clients()
            .into_iter()
            .map(|(key, sessions)| Client { key, sessions })
            .collect(),
    )
}
