//! Errors of the queue layer, typed so the runtime can tell a lost message from an outage.

use azure_core::error::ErrorKind;

/// What went wrong talking to Queue Storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The account has no queue endpoint, or an endpoint or credential is unusable.
    #[error("queue storage is not configured: {0}")]
    Config(String),
    /// A queue name Queue Storage would refuse (3-63 lowercase letters, digits, single dashes).
    #[error("invalid queue name {0:?}: 3-63 lowercase letters, digits and single dashes")]
    InvalidName(String),
    /// The message text would exceed the service's 64 KiB.
    #[error("the message is {size} bytes once encoded; Queue Storage takes at most 65536")]
    TooLarge { size: usize },
    /// The queue does not exist (it is created on start; someone deleted it).
    #[error("the queue does not exist")]
    QueueNotFound,
    /// The message was deleted, or its pop receipt is no longer current: its invisibility
    /// ran out and another consumer received it.
    #[error("the message is no longer held by this consumer ({0})")]
    MessageGone(String),
    /// A token for the managed identity could not be obtained.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The request did not reach the service, or its answer was not read.
    #[error("transport error: {0}")]
    Transport(String),
    /// Any other answer of the service, after the client's bounded retries.
    #[error("service error ({status}, {code}): {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    /// The service answered with something this client cannot read.
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl Error {
    /// The HTTP status the service answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::QueueNotFound | Error::MessageGone(_) => Some(404),
            Error::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Maps an error of the official client; `message_op` says the request named one message,
    /// so a 404 or a receipt mismatch means the message is no longer ours.
    pub(crate) fn from_azure(e: azure_core::Error, message_op: bool) -> Error {
        match e.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => {
                let status = u16::from(*status);
                let code = error_code.clone().unwrap_or_default();
                match (status, code.as_str()) {
                    (_, "QueueNotFound") => Error::QueueNotFound,
                    (_, "MessageNotFound" | "PopReceiptMismatch") => Error::MessageGone(code),
                    (404, _) if message_op => Error::MessageGone(code),
                    _ => Error::Service {
                        status,
                        code,
                        message: e.to_string(),
                    },
                }
            }
            ErrorKind::Credential => Error::Auth(e.to_string()),
            ErrorKind::Connection | ErrorKind::Io => Error::Transport(e.to_string()),
            ErrorKind::DataConversion => Error::Protocol(e.to_string()),
            _ => Error::Transport(e.to_string()),
        }
    }
}
