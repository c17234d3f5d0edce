//! `ActivationLinks`: admin management of onboarding links.
//! `POST/GET /api/v1/tenants/activation-links`, `DELETE /api/v1/tenants/activation-links/{id}`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, filters::BoxedFilter};

use crate::app::App;
use crate::auth;
use crate::domain::ActivationLink;
use crate::onboarding::MAX_LINK_MINUTES;
use crate::routes::{
    ApiError, MAX_JSON_BODY, answer, body, guid_segment, json_reply, no_content, parse_json,
};

/// The routes (listed before the tenant routes, whose `{tenant_id}` would match too).
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let auth = warp::header::optional::<String>("authorization");
    let a = app.clone();
    let create = warp::path!("api" / "v1" / "tenants" / "activation-links")
        .and(warp::post())
        .and(auth)
        .and(body(MAX_JSON_BODY))
        .then(
            move |authorization: Option<String>, body: Result<Bytes, ApiError>| {
                let app = a.clone();
                async move {
                    answer(match body {
                        Ok(body) => create(&app, authorization.as_deref(), &body).await,
                        Err(e) => Err(e),
                    })
                }
            },
        );
    let a = app.clone();
    let list = warp::path!("api" / "v1" / "tenants" / "activation-links")
        .and(warp::get())
        .and(auth)
        .then(move |authorization: Option<String>| {
            let app = a.clone();
            async move { answer(list(&app, authorization.as_deref()).await) }
        });
    let revoke = warp::path!("api" / "v1" / "tenants" / "activation-links" / String)
        .and(warp::delete())
        .and(auth)
        .then(move |id: String, authorization: Option<String>| {
            let app = app.clone();
            async move { answer(revoke(&app, authorization.as_deref(), &id).await) }
        });
    create.or(list).unify().or(revoke).unify().boxed()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewLink {
    #[serde(default)]
    cloud: Option<String>,
    #[serde(default)]
    expires_in_minutes: Option<i64>,
}

fn link_json(link: &ActivationLink) -> Value {
    json!({
        "id": link.id,
        "cloud": link.cloud.as_str(),
        "state": link.state(OffsetDateTime::now_utc()).as_str(),
        "created_at": host::invocation::format_timestamp(link.created_at),
        "expires_at": host::invocation::format_timestamp(link.expires_at),
        "used_at": link.used_at.map(host::invocation::format_timestamp),
        "revoked_at": link.revoked_at.map(host::invocation::format_timestamp),
        "tenant_id": link.tenant_id,
        "failed_at": link.failed_at.map(host::invocation::format_timestamp),
        "failure_reason": link.failure_reason,
    })
}

async fn create(app: &App, authorization: Option<&str>, body: &[u8]) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let new: NewLink = if body.iter().all(u8::is_ascii_whitespace) {
        NewLink::default()
    } else {
        parse_json(body)?
    };
    let cloud =
        new.cloud.as_deref().unwrap_or("global").parse().map_err(
            |e: entra::cloud::UnknownCloud| ApiError::bad_request(format!("cloud: {e}")),
        )?;
    let minutes = new.expires_in_minutes.unwrap_or(60);
    if !(1..=MAX_LINK_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(format!(
            "expires_in_minutes: 1-{MAX_LINK_MINUTES} (7 days)"
        )));
    }
    let (link, url) = app.onboarding.create_link(cloud, minutes).await?;
    let mut body = link_json(&link);
    body["link"] = json!(url);
    Ok(json_reply(StatusCode::CREATED, &body))
}

async fn list(app: &App, authorization: Option<&str>) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let mut links = app.onboarding.list_links().await?;
    links.sort_by_key(|l| l.created_at);
    let links: Vec<Value> = links.iter().map(link_json).collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "activation_links": links }),
    ))
}

async fn revoke(app: &App, authorization: Option<&str>, id: &str) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let id = guid_segment(id, "link id")?;
    if !app.onboarding.revoke_link(id).await? {
        return Err(ApiError::not_found(format!("no activation link {id}")));
    }
    Ok(no_content())
}
