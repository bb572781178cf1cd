//! The WRP source: `POST /events`, one WRP SimpleEvent (`msg_type` 4) per request, as Caduceus
//! delivers it: msgpack (`application/msgpack`, `application/wrp`) or WRP JSON
//! (`application/json`, payload base64).
//!
//! With `sources.wrp.secret` set, the body must carry Caduceus's signature (`X-Webpa-Signature:
//! sha1=<hex>` or `Xmidt-Signature: sha256=<hex>`, HMAC over the raw body, compared in constant
//! time); without it, the caller needs the `publish` role. Every refusal is counted by reason.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{authenticate, read_body};
use crate::auth::Role;
use crate::event::{Event, now_ms};
use crate::metrics as m;
use crate::wrp::{self, SIMPLE_EVENT, WrpMessage};

const SOURCE: &str = "wrp";

/// The answer to an accepted event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The event's id (time-ordered).
    pub id: String,
    /// The key it is routed by.
    #[serde(rename = "deviceID")]
    pub device_id: String,
}

enum Encoding {
    Msgpack,
    Json,
}

fn reject(reason: &'static str, error: ApiError) -> ApiError {
    metrics::counter!(m::EVENTS_REJECTED, "source" => SOURCE, "reason" => reason).increment(1);
    error
}

/// Takes one WRP event in.
#[utoipa::path(post, path = "/events", tag = "events",
    request_body(content = Vec<u8>, content_type = "application/msgpack", description = "A WRP SimpleEvent (msg_type 4) as msgpack, or as WRP JSON with Content-Type application/json"),
    responses((status = 202, body = Accepted), (status = 400, description = "Not a WRP SimpleEvent, or no device id"),
              (status = 401), (status = 403, description = "Missing or wrong signature"), (status = 413), (status = 415),
              (status = 429, description = "The ingest queue is full; retry")))]
pub async fn post_events(
    State(state): State<AppState>,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let (parts, body) = request.into_parts();
    // Who is calling comes first: a caller without credentials learns nothing else.
    let secret = state.config.sources.wrp.secret.as_deref();
    if secret.is_none() {
        let principal =
            authenticate(&state, &parts).map_err(|error| reject("unauthorized", error))?;
        if !principal.has_role(Role::Publish) {
            return Err(reject(
                "forbidden",
                ApiError::forbidden(format!("{} lacks the publish role", principal.name)),
            ));
        }
    }
    let encoding = match parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("application/msgpack" | "application/wrp" | "application/x-msgpack") => {
            Encoding::Msgpack
        }
        Some("application/json") => Encoding::Json,
        other => {
            return Err(reject(
                "unsupported_media_type",
                ApiError::unsupported_media_type(format!(
                    "Content-Type {} is not accepted: use application/msgpack, application/wrp or application/json",
                    other.unwrap_or("(none)")
                )),
            ));
        }
    };
    let _admitted = state
        .hub
        .admit()
        .map_err(|busy| reject("busy", busy.into()))?;
    let limit = state.config.sources.wrp.max_body;
    let body = read_body(body, limit, state.config.server.body_timeout)
        .await
        .map_err(|error| {
            let reason = if error.status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable"
            };
            reject(reason, error)
        })?;
    if let Some(secret) = secret {
        verify_signature(&parts.headers, secret, &body)
            .map_err(|detail| reject("bad_signature", ApiError::forbidden(detail)))?;
    }
    let message = match encoding {
        Encoding::Msgpack => WrpMessage::from_msgpack(&body),
        Encoding::Json => WrpMessage::from_json(&body),
    }
    .map_err(|error| {
        reject(
            "invalid_wrp",
            ApiError::bad_request("invalid_wrp", error.to_string()),
        )
    })?;
    if message.msg_type != SIMPLE_EVENT {
        return Err(reject(
            "wrong_msg_type",
            ApiError::bad_request(
                "wrong_msg_type",
                format!(
                    "msg_type is {}; only SimpleEvent (4) is accepted",
                    message.msg_type
                ),
            ),
        ));
    }
    let key = wrp::event_device_id(&message).ok_or_else(|| {
        reject(
            "no_device_id",
            ApiError::bad_request(
                "no_device_id",
                "no device id: source is not a device id and dest is not event:device-status/<id>/…",
            ),
        )
    })?;
    let event = Event {
        id: Event::new_id(),
        kind: wrp::event_kind(&message),
        source: SOURCE,
        time_ms: now_ms(),
        content_type: message
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into()),
        payload: message.payload.clone().unwrap_or_default(),
        key: key.clone(),
        wrp: Some(message),
    };
    let id = event.id.to_string();
    state.hub.publish(event);
    metrics::counter!(m::EVENTS_RECEIVED, "source" => SOURCE).increment(1);
    Ok((StatusCode::ACCEPTED, Json(Accepted { id, device_id: key })))
}

/// Checks `X-Webpa-Signature: sha1=<hex>` or `Xmidt-Signature: sha256=<hex>`.
fn verify_signature(headers: &HeaderMap, secret: &str, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let valid = if let Some(signature) = header("xmidt-signature") {
        let hex = signature
            .strip_prefix("sha256=")
            .ok_or("Xmidt-Signature must be sha256=<hex>")?;
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        mac.update(body);
        mac.verify_slice(&decode_hex(hex).ok_or("the signature is not hex")?)
            .is_ok()
    } else if let Some(signature) = header("x-webpa-signature") {
        let hex = signature
            .strip_prefix("sha1=")
            .ok_or("X-Webpa-Signature must be sha1=<hex>")?;
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        mac.update(body);
        mac.verify_slice(&decode_hex(hex).ok_or("the signature is not hex")?)
            .is_ok()
    } else {
        return Err("a signature is required (X-Webpa-Signature or Xmidt-Signature)".into());
    };
    // verify_slice compares in constant time.
    if valid {
        Ok(())
    } else {
        Err("the signature does not match the body".into())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
