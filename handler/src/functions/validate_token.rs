//! `ValidateToken`: `POST /api/v1/entra-id/validate-token` (admin). Checks any token as
//! the service would (a registered tenant's, or the operator's) and shows its identity claims.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use entra::{Cloud, TenantLookup};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, filters::BoxedFilter};

use crate::access::RegistryLookup;
use crate::app::App;
use crate::auth;
use crate::routes::{ApiError, MAX_JSON_BODY, answer, body, json_reply, parse_json};

/// Claims shown in the answer, when present.
const SHOWN_CLAIMS: &[&str] = &[
    "sub", "oid", "tid", "upn", "email", "name", "roles", "groups", "scp", "exp", "iat", "ver",
];

/// The route.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "entra-id" / "validate-token")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(body(MAX_JSON_BODY))
        .then(
            move |authorization: Option<String>, body: Result<Bytes, ApiError>| {
                let app = app.clone();
                async move {
                    answer(match body {
                        Ok(body) => validate(&app, authorization.as_deref(), &body).await,
                        Err(e) => Err(e),
                    })
                }
            },
        )
        .boxed()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
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

async fn validate(
    app: &App,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let request: Request = parse_json(body)?;
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
