//! `ValidateToken`: `POST /api/v1/entra-id/validate-token` (admin). Checks any token as
//! the service would (a registered tenant's, or the operator's) and shows its identity claims.

use async_trait::async_trait;
use entra::{Cloud, TenantLookup};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::access::RegistryLookup;
use crate::app::App;
use crate::auth;
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply};

/// Claims shown in the answer, when present.
const SHOWN_CLAIMS: &[&str] = &[
    "sub", "oid", "tid", "upn", "email", "name", "roles", "groups", "scp", "exp", "iat", "ver",
];

/// The route.
pub const ROUTES: &[Route] = &[route!(POST "/api/v1/entra-id/validate-token" => validate)];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(validate))]
pub struct Api;

/// The token to check.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsImtpZCI6ImV4YW1wbGUifQ.eyJhdWQiOiJhcGk6Ly9jb25uZWN0b3IiLCJ0aWQiOiI3MmY5ODhiZi04NmYxLTQxYWYtOTFhYi0yZDdjZDAxMWRiNDcifQ.c2lnbmF0dXJl"}))]
struct TokenBody {
    token: String,
}

/// Registered tenants plus the operator's own.
struct KnownTenants<'a>(&'a App);

#[async_trait]
impl TenantLookup for KnownTenants<'_> {
    async fn cloud_of(&self, tenant_id: Uuid) -> Result<Option<Cloud>, String> {
        if tenant_id == self.0.entra.admin_tenant_id {
            return Ok(Some(self.0.entra.admin_cloud));
        }
        RegistryLookup(&self.0.access).cloud_of(tenant_id).await
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/entra-id/validate-token",
    operation_id = "validateToken",
    tag = "Tokens",
    security(("entra_admin" = [])),
    request_body = TokenBody,
    responses(
        (status = 200, description = "Valid: its claims", body = crate::openapi::schemas::TokenAccepted),
        (status = 401, description = "The checked token is not valid (`valid: false`), or the caller's own token is refused", body = crate::openapi::schemas::ValidateTokenRefusal),
    )
)]
async fn validate(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let request: TokenBody = req.json()?;
    match app
        .validator
        .validate(request.token.trim(), &KnownTenants(app))
        .await
    {
        Ok(token) => {
            let payload: Map<String, Value> = SHOWN_CLAIMS
                .iter()
                .filter_map(|name| {
                    token
                        .claims
                        .get(*name)
                        .map(|v| (name.to_string(), v.clone()))
                })
                .collect();
            Ok(json_reply(
                StatusCode::OK,
                &json!({ "valid": true, "payload": payload }),
            ))
        }
        Err(rejection) if rejection.is_unavailable() => Err(ApiError::unavailable(rejection)),
        Err(rejection) => Ok(json_reply(
            StatusCode::UNAUTHORIZED,
            &json!({ "valid": false, "error": rejection.code(), "error_description": rejection.to_string() }),
        )),
    }
}
