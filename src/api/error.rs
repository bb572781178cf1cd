//! The one error shape of the API: a status and `{"error": "<code>", "detail": "<text>"}`.
//! Every error answer is counted (`brunnr_api_errors_total{error}`); codes are a fixed set.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::hub::norns::RegistryError;
use crate::metrics as m;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable snake_case code.
    pub code: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such norn")
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn too_large(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {limit} bytes"),
        )
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            detail,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!(m::API_ERRORS, "error" => self.code).increment(1);
        if self.status.is_server_error() {
            tracing::error!(code = self.code, detail = %self.detail, "Request failed.");
        }
        let body = serde_json::json!({"error": self.code, "detail": self.detail});
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        match error {
            RegistryError::Invalid(error) => {
                let code = match error {
                    crate::norn::NornError::Invalid(_) => "invalid_norn",
                    crate::norn::NornError::Destination(_) => "invalid_destination",
                    crate::norn::NornError::Duration(_) => "invalid_duration",
                    crate::norn::NornError::Filter(_) => "invalid_filter",
                };
                ApiError::bad_request(code, error.to_string())
            }
            RegistryError::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            RegistryError::NotFound => ApiError::not_found(),
            RegistryError::Forbidden(_) => ApiError::forbidden(error.to_string()),
            RegistryError::Store(error) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                error.to_string(),
            ),
        }
    }
}

impl From<crate::hub::HubBusy> for ApiError {
    fn from(busy: crate::hub::HubBusy) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", busy.to_string())
    }
}
