//! Extractors: the caller's identity ([`Subscriber`], [`Publisher`], [`Admin`]), norn ids ([`NornId`]) and JSON bodies
//! ([`ApiJson`]), whose rejections
//! use the API's error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::auth::{AuthError, Authenticator, Principal, Role};

/// A caller with the `subscribe` role (admins have every role), checked before any body is read.
pub struct Subscriber(pub Principal);

/// A caller with the `publish` role.
pub struct Publisher(pub Principal);

/// A caller with the `admin` role.
pub struct Admin(pub Principal);

/// Reads the request's credentials and authenticates them.
pub fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    authenticate_or_token(state, &parts.headers, None)
}

/// Authenticates the request's headers or, when they carry no credentials, `token` (a `?token=`
/// query parameter: browsers cannot set headers on an `EventSource` or a WebSocket).
pub fn authenticate_or_token(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Principal, ApiError> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let credentials = Authenticator::credentials(
        header(AUTHORIZATION.as_str()),
        header(X_AUTH_TOKEN).or(token),
    );
    state
        .auth
        .authenticate(credentials)
        .map_err(|error| match error {
            AuthError::Missing => {
                ApiError::unauthorized("credentials are required (Authorization or X-Auth-Token)")
            }
            AuthError::Invalid => ApiError::unauthorized("the credentials are not valid"),
        })
}

/// Whether the request carries credentials at all (headers or a `?token=`).
pub fn has_credentials(headers: &HeaderMap, token: Option<&str>) -> bool {
    headers.contains_key(AUTHORIZATION) || headers.contains_key(X_AUTH_TOKEN) || token.is_some()
}

/// monit's header for tokens.
const X_AUTH_TOKEN: &str = "x-auth-token";

/// The caller, if it has `role`.
pub fn require_role(principal: Principal, role: Role) -> Result<Principal, ApiError> {
    if principal.has_role(role) {
        Ok(principal)
    } else {
        Err(ApiError::forbidden(format!(
            "{} lacks the {} role",
            principal.name,
            role.as_str()
        )))
    }
}

macro_rules! role_extractor {
    ($name:ident, $role:expr) => {
        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                require_role(authenticate(state, parts)?, $role).map($name)
            }
        }
    };
}

role_extractor!(Subscriber, Role::Subscribe);
role_extractor!(Publisher, Role::Publish);
role_extractor!(Admin, Role::Admin);

/// A norn id from the path; one that is not a UUID is a norn that does not exist (404).
pub struct NornId(pub uuid::Uuid);

impl FromRequestParts<AppState> for NornId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::not_found())?;
        uuid::Uuid::parse_str(&id)
            .map(NornId)
            .map_err(|_| ApiError::not_found())
    }
}

/// A query string, refused with 400 `invalid_query` in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(query)| ApiQuery(query))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

/// A JSON body, refused with 415 (not JSON), 413 (too large) or 400 (naming the bad field).
pub struct ApiJson<T>(pub T);

/// Whether the request says its body is JSON.
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(crate::event::is_json_content_type)
}

/// Reads a whole body of at most `limit` bytes, arriving within `timeout` (so that slow senders
/// cannot hold ingest slots for long).
pub async fn read_body(
    body: axum::body::Body,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit as usize))
        .await
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {}",
                    crate::duration::format_duration(timeout)
                ),
            )
        })?;
    read.map_err(|error| {
        let mut source: Option<&dyn std::error::Error> = Some(&error);
        while let Some(cause) = source {
            if cause.is::<http_body_util::LengthLimitError>() {
                return ApiError::too_large(limit);
            }
            source = cause.source();
        }
        ApiError::bad_request(
            "invalid_body",
            format!("the body could not be read: {error}"),
        )
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json(content_type) {
            return Err(ApiError::unsupported_media_type(
                "the body must be application/json",
            ));
        }
        let bytes = read_body(
            request.into_body(),
            state.config.server.max_body,
            state.config.server.body_timeout,
        )
        .await?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let detail = if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            };
            ApiError::bad_request("invalid_json", detail)
        })?;
        deserializer
            .end()
            .map_err(|error| ApiError::bad_request("invalid_json", error.to_string()))?;
        Ok(ApiJson(value))
    }
}
