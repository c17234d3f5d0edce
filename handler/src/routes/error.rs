//! API errors and how each maps to a status code and JSON body, in one place.

use serde_json::json;
use warp::Reply as _;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use crate::store::StoreError;

/// An error answer: `{"error": code, "message": ...}` with a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `invalid_token`, with the Bearer challenge.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
    }

    /// 403 with a reason code.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 503 `temporarily_unavailable`; the detail is logged, not shown.
    pub fn unavailable(detail: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %detail, "dependency unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "a dependency is unavailable; try again shortly",
        )
    }

    /// 500 `internal_error`; the detail is logged, not shown.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred",
        )
    }

    /// The HTTP answer.
    pub fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

impl From<directory::DirectoryError> for ApiError {
    fn from(e: directory::DirectoryError) -> ApiError {
        use directory::DirectoryError as E;
        match e {
            E::Invalid(message) => ApiError::bad_request(message),
            E::Contended => ApiError::conflict("the directory changed concurrently; try again"),
            E::Unavailable(e) => ApiError::unavailable(e),
            E::Corrupt(e) => ApiError::internal(e),
            // its record could not be stored: nothing was written (or, after a write,
            // what must follow it or the correction of its record failed); try again
            E::Unrecorded(reason) => ApiError::unavailable(reason),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::Contended => {
                ApiError::conflict("the record changed concurrently; try again")
            }
            StoreError::Unavailable(e) => ApiError::unavailable(e),
            StoreError::Invalid(why) => {
                ApiError::bad_request(format!("a value is too long to store ({why})"))
            }
            StoreError::Corrupt(e) => ApiError::internal(format!("stored data is unreadable: {e}")),
            StoreError::Internal(e) => ApiError::internal(e),
        }
    }
}
