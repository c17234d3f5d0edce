//! `OpenApi`: `GET /api/openapi.json`, anonymous. The OpenAPI 3.1 document of every HTTP
//! route (see [`crate::openapi`]), built once per process.

use std::sync::OnceLock;

use warp::Reply as _;
use warp::http::HeaderValue;
use warp::reply::Response;

use crate::app::App;
use crate::route;
use crate::routes::ApiError;
use crate::routes::router::{Request, Route};

/// The route.
pub const ROUTES: &[Route] = &[route!(GET "/api/openapi.json" => serve)];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(serve))]
pub struct Api;

#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "getOpenApiDocument",
    tag = "Service",
    security(()),
    responses((status = 200, description = "This document", content_type = "application/json", body = serde_json::Value, example = json!({"openapi": "3.1.0", "info": {"title": "entra-connector", "version": "0.1.0"}, "paths": {}})))
)]
async fn serve(_app: &App, _req: &Request) -> Result<Response, ApiError> {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(crate::openapi::json).clone();
    let mut response = warp::reply::Response::new(text.into());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(response.into_response())
}
