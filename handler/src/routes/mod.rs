//! The route table: forwarded HTTP functions under `/api`, host invocations at
//! `POST /{FunctionName}`, and JSON errors for everything else.

mod error;
pub mod html;
mod invoke;
pub mod router;

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::app::App;
pub use error::ApiError;
pub use invoke::Invocations;

/// Largest JSON body the API accepts.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// The request body, read up to `max` bytes whether it comes with a Content-Length or
/// chunked (the Functions host may forward either); larger bodies are a 413.
pub fn body(
    max: usize,
) -> impl Filter<Extract = (Result<bytes::Bytes, ApiError>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |length: Option<u64>, stream| collect_body(length, stream, max))
}

pub(crate) async fn collect_body<S, B>(
    length: Option<u64>,
    stream: S,
    max: usize,
) -> Result<bytes::Bytes, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt as _;
    if length.is_some_and(|l| l > max as u64) {
        return Err(ApiError::too_large(max));
    }
    let mut stream = std::pin::pin!(stream);
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|_| ApiError::bad_request("the body could not be read"))?;
        if collected.len() + chunk.remaining() > max {
            return Err(ApiError::too_large(max));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

/// Parses a JSON request body into `T`, answering 400 with serde's reason otherwise.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("a JSON body is required"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// A percent-decoded path segment (warp hands segments over encoded).
pub fn segment(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("a path segment is not UTF-8"))
}

/// A path segment that must be a GUID.
pub fn guid_segment(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(&segment(raw)?)
        .map_err(|_| ApiError::bad_request(format!("{what} must be a GUID")))
}

/// A JSON answer with a status.
pub fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// 204 No Content.
pub fn no_content() -> Response {
    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
}

/// The answer of a handler that may fail.
pub fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// Largest invocation body accepted from the host (queue messages are at most 64 KiB).
const MAX_INVOCATION_BODY: usize = 4 * 1024 * 1024;

/// Every route of the handler, traced with the host's invocation id.
pub fn table(
    app: Arc<App>,
    invocations: Arc<Invocations>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let health = warp::path!("api" / "health")
        .and(warp::get().or(warp::head()).unify())
        .and(with_app.clone())
        .then(|app: Arc<App>| async move {
            let (healthy, body) = crate::functions::health::report(&app).await;
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            no_store(warp::reply::with_status(warp::reply::json(&body), status).into_response())
        });

    // path before method, so an unknown path is a 404 rather than a 405
    let invoke = warp::path::param::<String>()
        .and(warp::path::end())
        .and(warp::post())
        .and(body(MAX_INVOCATION_BODY))
        .and(warp::any().map(move || invocations.clone()))
        .then(
            |function: String,
             body: Result<bytes::Bytes, ApiError>,
             invocations: Arc<Invocations>| async move {
                match body {
                    Ok(body) => invocations.handle(&function, &body).await,
                    Err(e) => e.into_response(),
                }
            },
        );

    let api = router::serve(app.clone(), crate::functions::ping::ROUTES)
        .or(router::serve(
            app.clone(),
            crate::functions::openapi::ROUTES,
        ))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::activation_links::ROUTES,
        ))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::consent::ROUTES,
        ))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::app_credential::ROUTES,
        ))
        .unify()
        .or(crate::functions::scim::routes(app.clone()))
        .unify()
        .or(crate::functions::scim_admin::routes(app.clone()))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::tenants::ROUTES,
        ))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::employees::ROUTES,
        ))
        .unify()
        .or(router::serve(app.clone(), crate::functions::grants::ROUTES))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::audit_log::ROUTES,
        ))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::notifications::ROUTES,
        ))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::validate_token::ROUTES,
        ))
        .unify()
        .or(router::serve(
            app.clone(),
            crate::functions::directory::ROUTES,
        ))
        .unify()
        .or(router::serve(app.clone(), crate::functions::sync::ROUTES))
        .unify()
        .or(router::serve(app.clone(), crate::functions::pki::ROUTES))
        .unify()
        .or(router::serve(app.clone(), crate::functions::hr::ROUTES))
        .unify();

    health
        .map(Reply::into_response)
        .or(api)
        .unify()
        .or(invoke.map(Reply::into_response))
        .unify()
        .recover(|rejection| async move { Ok::<_, Infallible>(rejected(rejection)) })
        .unify()
        .with(warp::trace(|info| {
            // Only invocations the host forwards carry an id; the span is what ties the
            // handler's events to the host's invocation, so it holds just that field.
            match info
                .request_headers()
                .get("x-azure-functions-invocationid")
                .and_then(|v| v.to_str().ok())
            {
                Some(id) => tracing::info_span!("invocation", invocation_id = id),
                None => tracing::Span::none(),
            }
        }))
        .map(Reply::into_response)
}

/// A JSON error body: `{"error": code, "message": ...}`.
pub fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": code, "message": message.into() });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// The answer with `Cache-Control: no-store` (it carries a secret or per-request state).
pub fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-store"),
    );
    response
}

fn rejected(rejection: warp::Rejection) -> Response {
    if rejection.is_not_found() {
        json_error(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than this route accepts",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some()
        || rejection.find::<router::WrongMethod>().is_some()
    {
        json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        json_error(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length",
        )
    } else {
        json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be read",
        )
    }
}
