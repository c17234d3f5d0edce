//! `POST /{FunctionName}`: non-HTTP invocations in the host's `Data`/`Metadata` shape.

use std::sync::Arc;

use host::{InvocationRequest, InvocationResponse, InvokeError, Invoker, Standalone};
use serde_json::json;
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use super::json_error;
use crate::functions::Dispatcher;

/// Where invocations go: straight to the functions under the host, or through the
/// standalone runtime (which also writes queue outputs to their Storage queues).
pub enum Invocations {
    Host(Dispatcher),
    Standalone(Arc<Standalone>),
}

impl Invocations {
    async fn invoke(
        &self,
        function: &str,
        request: InvocationRequest,
    ) -> Result<InvocationResponse, InvokeError> {
        match self {
            Invocations::Host(dispatcher) => dispatcher.invoke(function, request).await,
            Invocations::Standalone(runtime) => runtime.invoke(function, request).await,
        }
    }

    /// Parses the body, invokes, and answers as the host expects: 200 with
    /// `Outputs`/`Logs`/`ReturnValue`, or a JSON error (a non-2xx fails the invocation).
    pub async fn handle(&self, function: &str, body: &[u8]) -> Response {
        let request = match InvocationRequest::from_slice(body) {
            Ok(r) => r,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_payload", e.0),
        };
        match self.invoke(function, request).await {
            Ok(response) => warp::reply::json(&response).into_response(),
            Err(InvokeError::UnknownFunction(name)) => json_error(
                StatusCode::NOT_FOUND,
                "unknown_function",
                format!("no function named {name:?}"),
            ),
            Err(InvokeError::BadPayload(message)) => {
                json_error(StatusCode::BAD_REQUEST, "bad_payload", message)
            }
            Err(InvokeError::Failed { message, mut logs }) => {
                logs.push(message.clone());
                let body = json!({
                    "Outputs": {},
                    "Logs": logs,
                    "ReturnValue": null,
                    "error": "function_failed",
                    "message": message,
                });
                warp::reply::with_status(
                    warp::reply::json(&body),
                    StatusCode::INTERNAL_SERVER_ERROR,
                )
                .into_response()
            }
        }
    }
}
