//! `Ping`: `GET /api/ping` with a bearer token. Answers who the caller is and which scopes
//! its grant gives, or why it may not call: 401 for tokens that are not valid here, 403 with
//! a reason for everything else that is refused.

use serde::Serialize;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::access::Refusal;
use crate::app::App;
use crate::auth::bearer;
use crate::openapi::schemas::{ErrorBody, PingAnswerBody};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply};

/// The route.
pub const ROUTES: &[Route] = &[route!(GET "/api/ping" => ping)];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(ping))]
pub struct Api;

#[utoipa::path(
    get,
    path = "/api/ping",
    operation_id = "ping",
    tag = "Access",
    security(("connector_token" = [])),
    responses(
        (status = 200, description = "Who the caller is and the scopes its grant gives", body = PingAnswerBody),
        (status = 401, description = "Not a valid token for this service (including unregistered tenants)", body = ErrorBody),
        (status = 403, description = "`tenant_inactive`, `no_grant`, `no_active_employment` or `unsupported_token`", body = ErrorBody),
    )
)]
async fn ping(app: &App, req: &Request) -> Result<Response, ApiError> {
    let token = bearer(req.authorization())
        .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    let decision = app
        .access
        .authorize(&app.validator, token)
        .await
        .map_err(|refusal| match refusal {
            Refusal::InvalidToken(_) => {
                ApiError::unauthorized("the token is not valid for this service")
            }
            Refusal::Forbidden(reason) => ApiError::forbidden(reason, refusal_message(reason)),
            Refusal::Unavailable(why) => ApiError::unavailable(why),
            Refusal::Internal(why) => ApiError::internal(why),
        })?;
    let answer = PingAnswer {
        tenant_id: decision.tenant_id,
        principal: PrincipalRef {
            kind: decision.principal.kind(),
            id: decision.principal.id(),
        },
        scopes: &decision.scopes,
    };
    Ok(json_reply(StatusCode::OK, &answer))
}

/// The answer's shape, serialized straight from borrowed values.
#[derive(Serialize)]
struct PingAnswer<'a> {
    tenant_id: Uuid,
    principal: PrincipalRef,
    scopes: &'a [String],
}

#[derive(Serialize)]
struct PrincipalRef {
    kind: &'static str,
    id: Uuid,
}

fn refusal_message(reason: &str) -> &'static str {
    match reason {
        "tenant_inactive" => "the tenant is not active",
        "no_grant" => "no access has been granted to this caller",
        "no_active_employment" => "the user has no active employee record",
        _ => "this kind of token is not accepted",
    }
}
