//! `/norns`: durable subscriptions, owned by the principal that made them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, NornId, Subscriber};
use crate::norn::{NornRequest, NornView};

/// Creates a norn, or updates the caller's norn with the same device and destination.
#[utoipa::path(post, path = "/norns", tag = "norns", request_body = NornRequest,
    responses((status = 201, body = NornView, description = "Created"),
              (status = 200, body = NornView, description = "Updated the caller's norn with the same deviceID and destination"),
              (status = 400, description = "Invalid norn"), (status = 401), (status = 403),
              (status = 409, description = "Another principal has a norn for this deviceID and destination")))]
pub async fn create(
    State(state): State<AppState>,
    Subscriber(principal): Subscriber,
    ApiJson(request): ApiJson<NornRequest>,
) -> Result<(StatusCode, Json<NornView>), ApiError> {
    let (norn, created) = state.hub.create_norn(&principal, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(norn.view())))
}

/// The caller's norns (every norn, for an admin).
#[utoipa::path(get, path = "/norns", tag = "norns",
    responses((status = 200, body = Vec<NornView>), (status = 401), (status = 403)))]
pub async fn list(
    State(state): State<AppState>,
    Subscriber(principal): Subscriber,
) -> Result<Json<Vec<NornView>>, ApiError> {
    Ok(Json(
        state
            .hub
            .list_norns(&principal)
            .iter()
            .map(|norn| norn.view())
            .collect(),
    ))
}

/// One of the caller's norns.
#[utoipa::path(get, path = "/norns/{id}", tag = "norns", params(("id" = String, Path)),
    responses((status = 200, body = NornView), (status = 404, description = "No such norn, or not the caller's")))]
pub async fn get(
    State(state): State<AppState>,
    Subscriber(principal): Subscriber,
    NornId(id): NornId,
) -> Result<Json<NornView>, ApiError> {
    let norn = state
        .hub
        .get_norn(&principal, id)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(norn.view()))
}

/// Replaces one of the caller's norns with a whole new body.
#[utoipa::path(put, path = "/norns/{id}", tag = "norns", params(("id" = String, Path)), request_body = NornRequest,
    responses((status = 200, body = NornView), (status = 400), (status = 404), (status = 409)))]
pub async fn replace(
    State(state): State<AppState>,
    Subscriber(principal): Subscriber,
    NornId(id): NornId,
    ApiJson(request): ApiJson<NornRequest>,
) -> Result<Json<NornView>, ApiError> {
    let norn = state.hub.replace_norn(&principal, id, request).await?;
    Ok(Json(norn.view()))
}

/// Deletes one of the caller's norns.
#[utoipa::path(delete, path = "/norns/{id}", tag = "norns", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    Subscriber(principal): Subscriber,
    NornId(id): NornId,
) -> Result<StatusCode, ApiError> {
    state.hub.delete_norn(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
