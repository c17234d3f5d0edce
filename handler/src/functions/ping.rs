//! `Ping`: `GET /api/ping` with a bearer token. Answers who the caller is and which scopes
//! its grant gives, or why it may not call: 401 for tokens that are not valid here, 403 with
//! a reason for everything else that is refused.

use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, filters::BoxedFilter};

use crate::access::Refusal;
use crate::app::App;
use crate::auth::bearer;
use crate::routes::{ApiError, answer, json_reply};

/// The route.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "ping")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .then(move |authorization: Option<String>| {
            let app = app.clone();
            async move { answer(ping(&app, authorization.as_deref()).await) }
        })
        .boxed()
}

async fn ping(app: &App, authorization: Option<&str>) -> Result<Response, ApiError> {
    let token = bearer(authorization)
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
