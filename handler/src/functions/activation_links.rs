//! `ActivationLinks`: admin management of onboarding links.
//! `POST/GET /api/v1/tenants/activation-links`, `DELETE /api/v1/tenants/activation-links/{id}`.

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::domain::ActivationLink;
use crate::onboarding::MAX_LINK_MINUTES;
use crate::openapi::schemas::{ActivationLinkBody, ActivationLinkList};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply, no_content};
use crate::trail::{self, Made};
use audit::{Change, Target};

/// The routes (served before the tenant routes, whose `{tenant_id}` would match too).
pub const ROUTES: &[Route] = &[
    route!(POST "/api/v1/tenants/activation-links" => create),
    route!(GET "/api/v1/tenants/activation-links" => list),
    route!(DELETE "/api/v1/tenants/activation-links/{link_id}" => revoke),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, revoke))]
pub struct Api;

/// A link to make (the body may be empty: every field has a default).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cloud": "global", "expires_in_minutes": 60}))]
struct NewLink {
    /// `global` (default), `usgov`, `usgovdod` or `china`.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::schemas::CloudName>)]
    cloud: Option<String>,
    /// 1-10080, default 60.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10080)]
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

#[utoipa::path(
    post,
    path = "/api/v1/tenants/activation-links",
    operation_id = "createActivationLink",
    tag = "Onboarding",
    security(("entra_admin" = [])),
    request_body(content = Option<NewLink>, description = "Optional", example = json!({"cloud": "global", "expires_in_minutes": 60})),
    responses((status = 201, description = "The link; `link` is shown only here", body = ActivationLinkBody, links(
        ("RevokeLink" = (operation_id = "revokeActivationLink", parameters(("link_id" = "$response.body#/id"))))
    )))
)]
async fn create(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let new: NewLink = if req.body.iter().all(u8::is_ascii_whitespace) {
        NewLink::default()
    } else {
        req.json()?
    };
    let cloud: entra::Cloud =
        new.cloud.as_deref().unwrap_or("global").parse().map_err(
            |e: entra::cloud::UnknownCloud| ApiError::bad_request(format!("cloud: {e}")),
        )?;
    let minutes = new.expires_in_minutes.unwrap_or(60);
    if !(1..=MAX_LINK_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(format!(
            "expires_in_minutes: 1-{MAX_LINK_MINUTES} (7 days)"
        )));
    }
    // a link belongs to no tenant yet: it is recorded in the service's own (admin) tenant
    let event = trail::event(
        &req.headers,
        app.entra.admin_tenant_id,
        admin,
        "activation_link.create",
        Target::new("activation_link", ""),
    )
    .change(Change::new("cloud", None, Some(json!(cloud.as_str()))));
    let (link, url) = trail::around(app, event, async {
        let (link, url) = app.onboarding.create_link(cloud, minutes).await?;
        let (id, expires_at) = (link.id, link.expires_at);
        Ok(Made::report((link, url), move |mut event| {
            event.target.id = id.to_string();
            event.change(Change::new(
                "expires_at",
                None,
                Some(json!(host::invocation::format_timestamp(expires_at))),
            ))
        }))
    })
    .await?;
    let mut body = link_json(&link);
    body["link"] = json!(url);
    Ok(json_reply(StatusCode::CREATED, &body))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/activation-links",
    operation_id = "listActivationLinks",
    tag = "Onboarding",
    security(("entra_admin" = [])),
    responses((status = 200, description = "Every link, oldest first", body = ActivationLinkList))
)]
async fn list(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let mut links = app.onboarding.list_links().await?;
    links.sort_by_key(|l| l.created_at);
    let links: Vec<Value> = links.iter().map(link_json).collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "activation_links": links }),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/activation-links/{link_id}",
    operation_id = "revokeActivationLink",
    tag = "Onboarding",
    security(("entra_admin" = [])),
    params(("link_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Revoked"))
)]
async fn revoke(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let id = uuid::Uuid::try_parse(req.param("link_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("link id must be a GUID"))?;
    let event = trail::event(
        &req.headers,
        app.entra.admin_tenant_id,
        admin,
        "activation_link.revoke",
        Target::new("activation_link", id),
    );
    trail::around(app, event, async {
        if !app.onboarding.revoke_link(id).await? {
            return Err(ApiError::not_found(format!("no activation link {id}")));
        }
        Ok(Made::from(()))
    })
    .await?;
    Ok(no_content())
}
