//! The product's side of provisioning, for administrators (Entra app role
//! `Integration.Manage`), under `/api/v1/tenants/{tenant_id}/scim/`:
//!
//! - `settings` (GET, PUT): the tenant's SCIM settings (`ScimSettings`);
//! - `users`, `users/{id}` (GET): provisioned users with status and settings
//!   (`ScimDirectoryUsers`); `users/{id}/settings` (GET, PUT) overrides
//!   (`ScimUserSettings`); `users/{id}/invitation` (POST) invites now (`ScimUserInvitation`);
//! - `groups/{id}/settings` (GET, PUT): group overrides (`ScimGroupSettings`);
//! - `invitations` (GET), `invitations/{id}` (DELETE): the outbox (`ScimInvitations`);
//!   `invitations/{id}/sent` (POST): the mailer took it (`ScimInvitationSent`).
//!
//! And the redemption of an invitation: `POST /api/v1/invitations/redeem` for the product's
//! back end (`InvitationRedeem`), `GET/POST /api/activate` for the user's browser
//! (`Activate`: GET only shows a button, so mail scanners that fetch links burn nothing).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, filters::BoxedFilter};

use crate::app::App;
use crate::auth;
use crate::domain::TenantStatus;
use crate::provisioning::ScimError;
use crate::provisioning::admin::{Overrides, ScimSettings, UserStatus};
use crate::routes::html;
use crate::routes::{
    ApiError, MAX_JSON_BODY, answer, body, guid_segment, json_reply, no_content, parse_json,
    segment,
};

impl From<ScimError> for ApiError {
    fn from(e: ScimError) -> ApiError {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = e.scim_type.unwrap_or(match e.status {
            400 => "invalid_request",
            404 => "not_found",
            409 => "conflict",
            410 => "gone",
            412 => "precondition_failed",
            _ => "temporarily_unavailable",
        });
        ApiError::new(status, code, e.detail)
    }
}

/// This module's part of the document. Its routes are matched inside one filter each
/// (see [`routes`]), so each operation is declared below, after the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    operations::get_scim_settings,
    operations::put_scim_settings,
    operations::list_provisioned_users,
    operations::get_provisioned_user,
    operations::get_provisioned_user_settings,
    operations::put_provisioned_user_settings,
    operations::invite_provisioned_user,
    operations::get_provisioned_group_settings,
    operations::put_provisioned_group_settings,
    operations::list_invitations,
    operations::revoke_invitation,
    operations::mark_invitation_sent,
    operations::redeem_invitation,
    operations::show_activation,
    operations::confirm_activation
))]
pub struct Api;

/// The routes.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let query = warp::query::<HashMap<String, String>>()
        .or(warp::any().map(HashMap::new))
        .unify();
    let a = app.clone();
    let admin = warp::path!("api" / "v1" / "tenants" / String / "scim" / ..)
        .and(warp::path::tail())
        .and(warp::method())
        .and(query)
        .and(warp::header::optional::<String>("authorization"))
        .and(body(MAX_JSON_BODY))
        .then(
            move |tenant: String,
                  tail: warp::path::Tail,
                  method: Method,
                  query: HashMap<String, String>,
                  authorization: Option<String>,
                  body: Result<Bytes, ApiError>| {
                let app = a.clone();
                async move {
                    let request = AdminRequest {
                        tenant: &tenant,
                        tail: tail.as_str(),
                        method: &method,
                        query: &query,
                        authorization: authorization.as_deref(),
                    };
                    answer(match body {
                        Ok(body) => handle(&app, request, &body).await,
                        Err(e) => Err(e),
                    })
                }
            },
        );
    let a = app.clone();
    let redeem = warp::path!("api" / "v1" / "invitations" / "redeem")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(body(MAX_JSON_BODY))
        .then(
            move |authorization: Option<String>, body: Result<Bytes, ApiError>| {
                let app = a.clone();
                async move {
                    answer(match body {
                        Ok(body) => redeem(&app, authorization.as_deref(), &body).await,
                        Err(e) => Err(e),
                    })
                }
            },
        );
    let a = app.clone();
    let show = warp::path!("api" / "activate")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .then(move |query: HashMap<String, String>| {
            let app = a.clone();
            async move { activation_page(&app, query.get("code").map(String::as_str)).await }
        });
    let confirm = warp::path!("api" / "activate")
        .and(warp::post())
        .and(body(4096))
        .then(move |body: Result<Bytes, ApiError>| {
            let app = app.clone();
            async move {
                let code = body.ok().and_then(|b| {
                    url::form_urlencoded::parse(&b)
                        .find(|(k, _)| k == "code")
                        .map(|(_, v)| v.into_owned())
                });
                activate(&app, code.as_deref()).await
            }
        });
    admin
        .or(redeem)
        .unify()
        .or(show)
        .unify()
        .or(confirm)
        .unify()
        .boxed()
}

struct AdminRequest<'a> {
    tenant: &'a str,
    tail: &'a str,
    method: &'a Method,
    query: &'a HashMap<String, String>,
    authorization: Option<&'a str>,
}

fn ok(body: &serde_json::Value) -> Result<Response, ApiError> {
    Ok(json_reply(StatusCode::OK, body))
}

fn method_not_allowed(allowed: &str) -> Result<Response, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allowed}"),
    ))
}

/// A user's or group's overrides of the tenant's settings (null: the tenant's).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"settings": {"require_mobile_auth": true}}))]
struct OverridesBody {
    settings: Overrides,
}

async fn handle(app: &App, request: AdminRequest<'_>, body: &[u8]) -> Result<Response, ApiError> {
    let parts: Vec<String> = request
        .tail
        .split('/')
        .filter(|p| !p.is_empty())
        .map(segment)
        .collect::<Result<_, _>>()?;
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    // the Secret Token has its own function (ScimToken)
    if parts.first() == Some(&"token") {
        return Err(ApiError::not_found("no such route"));
    }
    let admin = crate::trail::admin(&auth::admin(app, request.authorization).await?);
    let tenant_id = guid_segment(request.tenant, "tenant_id")?;
    let tenant = app
        .access
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant_id} is not registered")))?;
    let writable = || {
        if tenant.status == TenantStatus::Offboarded {
            Err(ApiError::conflict("the tenant is offboarded"))
        } else {
            Ok(())
        }
    };
    let scim = &app.scim;
    let method = request.method;
    let route = async {
        match (method, parts.as_slice()) {
            (&Method::GET, ["settings"]) => ok(&json!(scim.settings(tenant_id).await?)),
            (&Method::PUT, ["settings"]) => {
                writable()?;
                let settings: ScimSettings = parse_json(body)?;
                settings.validate().map_err(ApiError::bad_request)?;
                scim.put_settings(tenant_id, &settings).await?;
                tracing::info!(%tenant_id, ?settings, "SCIM settings changed");
                ok(&json!(settings))
            }
            (_, ["settings"]) => method_not_allowed("GET or PUT"),
            (&Method::GET, ["users"]) => {
                let status = match request.query.get("status") {
                    None => None,
                    Some(s) => Some(UserStatus::parse(s).ok_or_else(|| {
                        ApiError::bad_request("status must be Staged, Invited or Active")
                    })?),
                };
                let users = scim.admin_users(tenant_id, status).await?;
                ok(&json!({ "users": users }))
            }
            (&Method::GET, ["users", id]) => {
                let id = guid_segment(id, "user id")?;
                ok(&scim.admin_user(tenant_id, id).await?)
            }
            (_, ["users"] | ["users", _]) => method_not_allowed("GET"),
            (&Method::GET, ["users", id, "settings"]) => {
                let id = guid_segment(id, "user id")?;
                ok(&scim.admin_user(tenant_id, id).await?)
            }
            (&Method::PUT, ["users", id, "settings"]) => {
                writable()?;
                let id = guid_segment(id, "user id")?;
                let body: OverridesBody = parse_json(body)?;
                ok(&scim
                    .set_user_overrides(tenant_id, id, body.settings)
                    .await?)
            }
            (_, ["users", _, "settings"]) => method_not_allowed("GET or PUT"),
            (&Method::POST, ["users", id, "invitation"]) => {
                writable()?;
                let id = guid_segment(id, "user id")?;
                let invitation = scim.invite(tenant_id, id).await?;
                tracing::info!(%tenant_id, user = %id, "invitation created");
                Ok(json_reply(StatusCode::CREATED, &invitation))
            }
            (_, ["users", _, "invitation"]) => method_not_allowed("POST"),
            (&Method::GET, ["groups", id, "settings"]) => {
                let id = guid_segment(id, "group id")?;
                ok(&scim.set_group_overrides(tenant_id, id, None).await?)
            }
            (&Method::PUT, ["groups", id, "settings"]) => {
                writable()?;
                let id = guid_segment(id, "group id")?;
                let body: OverridesBody = parse_json(body)?;
                ok(&scim
                    .set_group_overrides(tenant_id, id, Some(body.settings))
                    .await?)
            }
            (_, ["groups", _, "settings"]) => method_not_allowed("GET or PUT"),
            (&Method::GET, ["invitations"]) => {
                let state = request.query.get("state").map(String::as_str);
                if let Some(s) = state
                    && !["pending", "sent", "redeemed", "revoked", "expired"].contains(&s)
                {
                    return Err(ApiError::bad_request(
                        "state must be pending, sent, redeemed, revoked or expired",
                    ));
                }
                ok(&json!({ "invitations": scim.invitations(tenant_id, state).await? }))
            }
            (_, ["invitations"]) => method_not_allowed("GET"),
            (&Method::DELETE, ["invitations", id]) => {
                let id = guid_segment(id, "invitation id")?;
                scim.revoke_invitation(tenant_id, id).await?;
                Ok(no_content())
            }
            (_, ["invitations", _]) => method_not_allowed("DELETE"),
            (&Method::POST, ["invitations", id, "sent"]) => {
                let id = guid_segment(id, "invitation id")?;
                ok(&scim.mark_sent(tenant_id, id).await?)
            }
            (_, ["invitations", _, "sent"]) => method_not_allowed("POST"),
            _ => Err(ApiError::not_found("no such route")),
        }
    };
    // a change is recorded before it is made, and made only when it is recorded
    match admin_change(method, &parts) {
        Some((action, target)) => {
            let changes = serde_json::from_slice::<serde_json::Value>(body)
                .map(|b| audit::diff(&serde_json::Value::Null, &b))
                .unwrap_or_default();
            let event = audit::Event::new(tenant_id, admin, action, target).changes(changes);
            crate::trail::around(app, event, async {
                route.await.map(crate::trail::Made::from)
            })
            .await
        }
        None => route.await,
    }
}

/// The audit action and target of an admin request that changes something.
fn admin_change(method: &Method, parts: &[&str]) -> Option<(&'static str, audit::Target)> {
    use audit::Target;
    Some(match (method, parts) {
        (&Method::PUT, ["settings"]) => (
            "scim_admin.settings.update",
            Target::new("scim_settings", "tenant"),
        ),
        (&Method::PUT, ["users", id, "settings"]) => {
            ("scim_admin.user_settings.update", Target::new("user", id))
        }
        (&Method::POST, ["users", id, "invitation"]) => {
            ("scim_admin.invitation.create", Target::new("user", id))
        }
        (&Method::PUT, ["groups", id, "settings"]) => {
            ("scim_admin.group_settings.update", Target::new("group", id))
        }
        (&Method::DELETE, ["invitations", id]) => (
            "scim_admin.invitation.revoke",
            Target::new("invitation", id),
        ),
        (&Method::POST, ["invitations", id, "sent"]) => {
            ("scim_admin.invitation.sent", Target::new("invitation", id))
        }
        _ => return None,
    })
}

/// The invitation code, as the activation link carries it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "Xw7pQ2rT9vK4mB1n"}))]
struct RedeemBody {
    code: String,
}

/// An offboarded tenant's invitations no longer work.
async fn tenant_allows(app: &App, code: &str) -> Result<(), ScimError> {
    let Some(tenant) = crate::provisioning::admin::code_tenant(code) else {
        return Ok(()); // redeem says what is wrong with it
    };
    match app.access.tenants.get(tenant).await {
        Ok(Some(t)) if t.status != TenantStatus::Offboarded => Ok(()),
        Ok(Some(_)) => Err(ScimError::new(
            410,
            Some("tenant_offboarded"),
            "the organisation no longer uses this service",
        )),
        Ok(None) => Err(ScimError::new(
            404,
            Some("unknown_code"),
            "no such invitation",
        )),
        Err(e) => Err(e.into()),
    }
}

/// The `invitation.redeem` event of a redemption by `actor`: the user activated, or why
/// the code was refused. None for a code that names no tenant (nothing to record it in).
fn redemption_event(
    actor: audit::Actor,
    code: &str,
    outcome: &Result<crate::provisioning::admin::Redeemed, ScimError>,
) -> Option<audit::Event> {
    let (tenant, invitation) = crate::provisioning::admin::parse_code(code)?;
    let event = match outcome {
        Ok(done) => audit::Event::new(
            done.tenant,
            actor,
            "invitation.redeem",
            audit::Target::new("user", done.user).display(done.user_name.clone()),
        )
        .change(audit::Change::new(
            "status",
            Some(json!(UserStatus::Invited.as_str())),
            Some(json!(UserStatus::Active.as_str())),
        )),
        Err(e) => audit::Event::new(
            tenant,
            actor,
            "invitation.redeem",
            audit::Target::new("invitation", invitation),
        )
        .failed(
            e.scim_type
                .map(str::to_string)
                .unwrap_or_else(|| e.status.to_string()),
            e.detail.clone(),
        ),
    };
    Some(event.correlation(format!("invitation {invitation}")))
}

async fn redeem(app: &App, authorization: Option<&str>, body: &[u8]) -> Result<Response, ApiError> {
    let admin = crate::trail::admin(&auth::admin(app, authorization).await?);
    let body: RedeemBody = parse_json(body)?;
    let redeemed = match tenant_allows(app, &body.code).await {
        Ok(()) => app.scim.redeem(&body.code, false).await,
        Err(e) => Err(e),
    };
    // the product's back end relays codes its users typed: made-up ones are not recorded
    // here either
    if recordable(app, &body.code, &redeemed).await
        && let Some(event) = redemption_event(admin, &body.code, &redeemed)
    {
        crate::trail::record(app, event).await?;
    }
    let redeemed = redeemed?;
    tracing::info!(tenant_id = %redeemed.tenant, user = %redeemed.user, "invitation redeemed");
    ok(&json!({
        "tenant_id": redeemed.tenant,
        "user_id": redeemed.user,
        "user_name": redeemed.user_name,
        "status": UserStatus::Active.as_str(),
    }))
}

fn refusal(e: &ScimError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = match e.status {
        503 => "Please try again",
        _ => "This link cannot be used",
    };
    html::page(status, title, std::slice::from_ref(&e.detail))
}

fn incomplete_link() -> Response {
    html::page(
        StatusCode::BAD_REQUEST,
        "This link is incomplete",
        &["Open the whole link from your invitation e-mail.".into()],
    )
}

/// GET: checks the code and shows the button that redeems it.
async fn activation_page(app: &App, code: Option<&str>) -> Response {
    let Some(code) = code else {
        return incomplete_link();
    };
    let checked = match tenant_allows(app, code).await {
        Ok(()) => app.scim.redeem(code, true).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(found) => html::form(
            "Activate your account",
            &[format!("Activate the account {}?", found.user_name)],
            "/api/activate",
            &[("code", code)],
            "Activate",
        ),
        Err(e) => refusal(&e),
    }
}

/// Refusals that come only after the code matched a stored invitation of its tenant.
const REAL_INVITATION_REFUSALS: [&str; 5] = [
    "used",
    "revoked",
    "expired",
    "user_deleted",
    "user_inactive",
];

/// Whether a redemption is recorded: a success, or the refusal of a real invitation of a
/// registered tenant (an invitation row found, the code matching it). Anyone can post a
/// made-up code naming any tenant to the activation page (or to a back end that relays it),
/// so `malformed_code`, `unknown_code` (no such invitation, or an unregistered tenant) and
/// store failures (no decision about the code) are never written into a trail.
async fn recordable(
    app: &App,
    code: &str,
    redeemed: &Result<crate::provisioning::admin::Redeemed, ScimError>,
) -> bool {
    let real = |e: &ScimError| {
        e.scim_type
            .is_some_and(|t| REAL_INVITATION_REFUSALS.contains(&t))
    };
    match redeemed {
        Ok(_) => true,
        Err(e) if real(e) => true,
        // refused before its invitation was looked at: record it only when the code
        // matches one (checked, changing nothing)
        Err(e) if e.scim_type == Some("tenant_offboarded") => {
            match app.scim.redeem(code, true).await {
                Ok(_) => true,
                Err(e) => real(&e),
            }
        }
        Err(_) => false,
    }
}

/// POST: redeems the code once.
async fn activate(app: &App, code: Option<&str>) -> Response {
    let Some(code) = code else {
        return incomplete_link();
    };
    let redeemed = match tenant_allows(app, code).await {
        Ok(()) => app.scim.redeem(code, false).await,
        Err(e) => Err(e),
    };
    // the holder of the link is known by nothing but the link: the actor is the function
    let actor = audit::Actor {
        name: Some("holder of the activation link".into()),
        ..audit::Actor::system("Activate")
    };
    if recordable(app, code, &redeemed).await
        && let Some(event) = redemption_event(actor, code, &redeemed)
        && let Err(e) = app.audit.record(event).await
    {
        // an activation that cannot be recorded is not reported as done
        tracing::error!(error = %e, "activation not recorded");
        return refusal(&ScimError::new(
            503,
            None,
            "the service is busy; try the link again in a minute",
        ));
    }
    match redeemed {
        Ok(done) => {
            tracing::info!(tenant_id = %done.tenant, user = %done.user, "invitation redeemed");
            html::page(
                StatusCode::OK,
                "Your account is active",
                &[format!("{} can now sign in.", done.user_name)],
            )
        }
        Err(e) => refusal(&e),
    }
}

/// The activation page's form.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // described: the form is read as pairs
struct ActivationForm {
    code: String,
}

// The operations of the document, one per method and path the handlers above serve.
#[allow(dead_code)]
mod operations {
    use super::{ActivationForm, OverridesBody, RedeemBody};

    #[utoipa::path(
        get,
        path = "/api/v1/tenants/{tenant_id}/scim/settings",
        operation_id = "getScimSettings",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "The settings (all false and 168 until set)", body = crate::provisioning::admin::ScimSettings),
        )
    )]
    pub(super) fn get_scim_settings() {}

    #[utoipa::path(
        put,
        path = "/api/v1/tenants/{tenant_id}/scim/settings",
        operation_id = "putScimSettings",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        request_body = crate::provisioning::admin::ScimSettings,
        responses(
            (status = 200, description = "The settings, applied to what is provisioned from now on", body = crate::provisioning::admin::ScimSettings),
            (status = 409, description = "The tenant is offboarded", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn put_scim_settings() {}

    #[utoipa::path(
        get,
        path = "/api/v1/tenants/{tenant_id}/scim/users",
        operation_id = "listProvisionedUsers",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("status" = Option<crate::openapi::schemas::ProvisioningStatus>, Query)),
        responses(
            (status = 200, description = "Provisioned users", body = crate::openapi::schemas::ProvisionedUserList),
        )
    )]
    pub(super) fn list_provisioned_users() {}

    #[utoipa::path(
        get,
        path = "/api/v1/tenants/{tenant_id}/scim/users/{user_id}",
        operation_id = "getProvisionedUser",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "The user with its status and settings", body = crate::openapi::schemas::ProvisionedUser),
        )
    )]
    pub(super) fn get_provisioned_user() {}

    #[utoipa::path(
        get,
        path = "/api/v1/tenants/{tenant_id}/scim/users/{user_id}/settings",
        operation_id = "getProvisionedUserSettings",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "The user with its settings", body = crate::openapi::schemas::ProvisionedUser),
        )
    )]
    pub(super) fn get_provisioned_user_settings() {}

    #[utoipa::path(
        put,
        path = "/api/v1/tenants/{tenant_id}/scim/users/{user_id}/settings",
        operation_id = "putProvisionedUserSettings",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = uuid::Uuid, Path)),
        request_body = OverridesBody,
        responses(
            (status = 200, description = "The user with its new overrides", body = crate::openapi::schemas::ProvisionedUser),
            (status = 409, description = "The tenant is offboarded", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn put_provisioned_user_settings() {}

    #[utoipa::path(
        post,
        path = "/api/v1/tenants/{tenant_id}/scim/users/{user_id}/invitation",
        operation_id = "inviteProvisionedUser",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = uuid::Uuid, Path)),
        responses(
            (status = 201, description = "The invitation (a single-use activation link)", body = crate::openapi::schemas::InvitationBody, links(
                ("MarkSent" = (operation_id = "markInvitationSent", parameters(("tenant_id" = "$request.path.tenant_id"), ("invitation_id" = "$response.body#/id")))),
                ("Revoke" = (operation_id = "revokeInvitation", parameters(("tenant_id" = "$request.path.tenant_id"), ("invitation_id" = "$response.body#/id"))))
            )),
            (status = 409, description = "The tenant is offboarded, or the user cannot be invited (disabled, already active)", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn invite_provisioned_user() {}

    #[utoipa::path(
        get,
        path = "/api/v1/tenants/{tenant_id}/scim/groups/{group_id}/settings",
        operation_id = "getProvisionedGroupSettings",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("group_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "The group with its settings", body = crate::openapi::schemas::ProvisionedGroup),
        )
    )]
    pub(super) fn get_provisioned_group_settings() {}

    #[utoipa::path(
        put,
        path = "/api/v1/tenants/{tenant_id}/scim/groups/{group_id}/settings",
        operation_id = "putProvisionedGroupSettings",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("group_id" = uuid::Uuid, Path)),
        request_body = OverridesBody,
        responses(
            (status = 200, description = "The group with its new overrides", body = crate::openapi::schemas::ProvisionedGroup),
            (status = 409, description = "The tenant is offboarded", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn put_provisioned_group_settings() {}

    #[utoipa::path(
        get,
        path = "/api/v1/tenants/{tenant_id}/scim/invitations",
        operation_id = "listInvitations",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("state" = Option<crate::openapi::schemas::InvitationState>, Query)),
        responses(
            (status = 200, description = "The outbox", body = crate::openapi::schemas::InvitationList),
        )
    )]
    pub(super) fn list_invitations() {}

    #[utoipa::path(
        delete,
        path = "/api/v1/tenants/{tenant_id}/scim/invitations/{invitation_id}",
        operation_id = "revokeInvitation",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("invitation_id" = uuid::Uuid, Path)),
        responses(
            (status = 204, description = "Revoked"),
            (status = 409, description = "Already redeemed", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn revoke_invitation() {}

    #[utoipa::path(
        post,
        path = "/api/v1/tenants/{tenant_id}/scim/invitations/{invitation_id}/sent",
        operation_id = "markInvitationSent",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("invitation_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "The invitation, sent", body = crate::openapi::schemas::InvitationBody),
            (status = 409, description = "Not pending", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn mark_invitation_sent() {}

    #[utoipa::path(
        post,
        path = "/api/v1/invitations/redeem",
        operation_id = "redeemInvitation",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        request_body = RedeemBody,
        responses(
            (status = 200, description = "Redeemed: the user is Active", body = crate::openapi::schemas::RedeemedInvitation),
            (status = 404, description = "No such invitation", body = crate::openapi::schemas::ErrorBody),
            (status = 409, description = "Already redeemed or revoked", body = crate::openapi::schemas::ErrorBody),
            (status = 410, description = "Expired, or the tenant is offboarded", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn redeem_invitation() {}

    #[utoipa::path(
        get,
        path = "/api/activate",
        operation_id = "showActivation",
        tag = "Onboarding",
        security(()),
        params(("code" = Option<String>, Query, description = "The invitation code from the e-mail")),
        responses(
            (status = 200, description = "A button that redeems the code (GET burns nothing)", content_type = "text/html", body = String),
            (status = 400, description = "The link is incomplete", content_type = "text/html", body = String),
            (status = 404, description = "No such invitation", content_type = "text/html", body = String),
            (status = 409, description = "Already used", content_type = "text/html", body = String),
            (status = 410, description = "Expired or no longer usable", content_type = "text/html", body = String),
            (status = 503, description = "Try again", content_type = "text/html", body = String),
        )
    )]
    pub(super) fn show_activation() {}

    #[utoipa::path(
        post,
        path = "/api/activate",
        operation_id = "confirmActivation",
        tag = "Onboarding",
        security(()),
        request_body(content = ActivationForm, content_type = "application/x-www-form-urlencoded"),
        responses(
            (status = 200, description = "The account is active", content_type = "text/html", body = String),
            (status = 400, description = "The link is incomplete", content_type = "text/html", body = String),
            (status = 404, description = "No such invitation", content_type = "text/html", body = String),
            (status = 409, description = "Already used", content_type = "text/html", body = String),
            (status = 410, description = "Expired or no longer usable", content_type = "text/html", body = String),
            (status = 503, description = "Try again", content_type = "text/html", body = String),
        )
    )]
    pub(super) fn confirm_activation() {}
}
