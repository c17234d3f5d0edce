//! Errors surfaced by the Table Storage client, typed so stores can act on them.

use reqwest::StatusCode;

/// What went wrong talking to Table Storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The entity or table does not exist (404).
    #[error("not found ({code})")]
    NotFound { code: String },
    /// The entity or table already exists (409).
    #[error("conflict ({code}): {message}")]
    Conflict { code: String, message: String },
    /// The ETag sent in `If-Match` no longer matches (412).
    #[error("precondition failed: the entity changed since it was read")]
    PreconditionFailed,
    /// The service rejected the request as malformed (400, 413...).
    #[error("rejected by the service ({status}, {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Any other service answer, including retryable ones after the retry budget ran out.
    #[error("service error ({status}, {code}): {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    /// The request could not be sent or its answer not read.
    #[error("transport error: {0}")]
    Transport(#[source] reqwest::Error),
    /// The request did not complete within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A request Table Storage would refuse for its shape (a forbidden key character, a
    /// reserved property name, a malformed transaction), caught before sending.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A key, property, entity or transaction larger than Table Storage accepts, caught
    /// before sending: usually a value that came from outside is too long to store.
    #[error("too large to store: {0}")]
    TooLarge(String),
    /// A token for bearer authentication could not be obtained.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The service answered with something this client cannot read.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// One operation of a batch failed; the whole batch was rolled back.
    #[error("batch operation {index} failed: {source}")]
    Batch {
        index: usize,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The status code Table Storage answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::NotFound { .. } => Some(404),
            Error::Conflict { .. } => Some(409),
            Error::PreconditionFailed => Some(412),
            Error::Rejected { status, .. } | Error::Service { status, .. } => Some(*status),
            Error::Batch { source, .. } => source.status(),
            _ => None,
        }
    }

    /// True for 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True for 409 (for example `EntityAlreadyExists`).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// True for 409 `TableBeingDeleted`: the table was deleted and Table Storage has not
    /// finished (it takes 40 s or more; the name cannot be used meanwhile).
    pub fn is_table_being_deleted(&self) -> bool {
        matches!(self, Error::Conflict { code, .. } if code == "TableBeingDeleted")
    }

    /// True for 412 (a stale ETag).
    pub fn is_precondition_failed(&self) -> bool {
        self.status() == Some(412)
    }

    /// Builds the typed error from a non-success answer and its body.
    pub(crate) fn from_response(status: StatusCode, body: &[u8]) -> Error {
        let (code, message) = parse_odata_error(body);
        match status.as_u16() {
            404 => Error::NotFound { code },
            409 => Error::Conflict { code, message },
            412 => Error::PreconditionFailed,
            s @ (400 | 405 | 411 | 413 | 415) => Error::Rejected {
                status: s,
                code,
                message,
            },
            s => Error::Service {
                status: s,
                code,
                message,
            },
        }
    }
}

/// Reads `odata.error` from a JSON error body (either metadata flavour), tolerating anything else.
pub(crate) fn parse_odata_error(body: &[u8]) -> (String, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("odata.error"));
    let code = err
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .unwrap_or("Unknown")
        .to_string();
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(|m| m.get("value").or(Some(m)))
        .and_then(|m| m.as_str())
        .map(|m| m.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_error_body_becomes_a_typed_conflict() {
        let body = br#"{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US","value":"The specified entity already exists.\nRequestId:1"}}}"#;
        let err = Error::from_response(StatusCode::CONFLICT, body);
        assert!(err.is_conflict());
        match err {
            Error::Conflict { code, message } => {
                assert_eq!(code, "EntityAlreadyExists");
                assert_eq!(message, "The specified entity already exists.");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unreadable_error_body_still_maps_by_status() {
        let err = Error::from_response(StatusCode::PRECONDITION_FAILED, b"<html>");
        assert!(err.is_precondition_failed());
        let err = Error::from_response(StatusCode::SERVICE_UNAVAILABLE, b"busy");
        assert_eq!(err.status(), Some(503));
    }
}
