//! `ConsentStart` and `ConsentCallback`: the browser side of onboarding by admin consent.
//! `GET /api/consent/start?link=...` redirects to Microsoft; Microsoft redirects back to
//! `GET /api/consent/callback`, which answers with a small HTML page.

use std::collections::HashMap;

use warp::Reply as _;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use crate::app::App;
use crate::onboarding::{ConsentOutcome, LinkProblem};
use crate::route;
use crate::routes::ApiError;
use crate::routes::html::page;
use crate::routes::router::{Request, Route};

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(GET "/api/consent/start" => start_page),
    route!(GET "/api/consent/callback" => callback_page),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(start_page, callback_page))]
pub struct Api;

/// The query's parameters (a name given twice keeps its last value).
fn params(req: &Request) -> HashMap<String, String> {
    req.query_pairs().into_iter().collect()
}

#[utoipa::path(
    get,
    path = "/api/consent/start",
    operation_id = "startConsent",
    tag = "Onboarding",
    security(()),
    params(("link" = Option<String>, Query, description = "The activation link's `<id>.<secret>`")),
    responses(
        (status = 302, description = "To the cloud's admin consent page", headers(("location" = String, description = "Microsoft's /adminconsent URL"))),
        (status = 400, description = "The link is not valid", content_type = "text/html", body = String),
        (status = 409, description = "The link was already used", content_type = "text/html", body = String),
        (status = 410, description = "The link expired, was revoked or failed", content_type = "text/html", body = String),
        (status = 503, description = "Storage is unavailable; try again", content_type = "text/html", body = String),
    )
)]
async fn start_page(app: &App, req: &Request) -> Result<Response, ApiError> {
    Ok(start(app, &params(req)).await)
}

#[utoipa::path(
    get,
    path = "/api/consent/callback",
    operation_id = "completeConsent",
    tag = "Onboarding",
    security(()),
    params(
        ("state" = Option<String>, Query, description = "The activation link, as sent to Microsoft"),
        ("tenant" = Option<String>, Query, description = "The consenting tenant (never trusted alone)"),
        ("admin_consent" = Option<String>, Query, description = "`True` when consent was granted"),
        ("error" = Option<String>, Query, description = "Microsoft's error when consent was not granted"),
        ("error_description" = Option<String>, Query, description = "Microsoft's description of the error"),
    ),
    responses(
        (status = 200, description = "The organization is connected", content_type = "text/html", body = String),
        (status = 202, description = "Consent recorded; Microsoft has not confirmed it yet", content_type = "text/html", body = String),
        (status = 400, description = "Consent declined, the link unusable, or the organization refused", content_type = "text/html", body = String),
        (status = 409, description = "The link was already used", content_type = "text/html", body = String),
        (status = 410, description = "The link expired, was revoked or failed", content_type = "text/html", body = String),
        (status = 503, description = "A problem on the service's side; try again later", content_type = "text/html", body = String),
    )
)]
async fn callback_page(app: &App, req: &Request) -> Result<Response, ApiError> {
    Ok(callback(app, &params(req)).await)
}

fn link_page(problem: LinkProblem) -> Response {
    let (status, title, text) = match problem {
        LinkProblem::Invalid => (
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "The activation link is incomplete or not one this service issued.",
        ),
        LinkProblem::Expired => (
            StatusCode::GONE,
            "This link has expired",
            "Activation links expire. Ask your contact to generate a new link.",
        ),
        LinkProblem::Used => (
            StatusCode::CONFLICT,
            "This link was already used",
            "Each activation link works once. Ask your contact to generate a new link.",
        ),
        LinkProblem::Revoked => (
            StatusCode::GONE,
            "This link was revoked",
            "Ask your contact to generate a new link.",
        ),
        LinkProblem::Failed => (
            StatusCode::GONE,
            "This link can no longer be used",
            "Microsoft never confirmed the consent given with it. Ask your contact to generate a new link.",
        ),
    };
    page(status, title, &[text.to_string()])
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        &[
            "The service could not complete the request just now. Reload this page in a minute."
                .to_string(),
        ],
    )
}

async fn start(app: &App, params: &HashMap<String, String>) -> Response {
    let token = params.get("link").map(String::as_str).unwrap_or_default();
    match app.onboarding.check(token).await {
        Ok(Ok((link, _))) => {
            let mut response =
                warp::reply::with_status(warp::reply(), StatusCode::FOUND).into_response();
            let target = app.onboarding.consent_url(&link, token);
            match HeaderValue::from_str(&target) {
                Ok(location) => {
                    response.headers_mut().insert("location", location);
                    response
                        .headers_mut()
                        .insert("cache-control", HeaderValue::from_static("no-store"));
                    response
                        .headers_mut()
                        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
                    response
                }
                Err(_) => unavailable(),
            }
        }
        Ok(Err(problem)) => link_page(problem),
        Err(e) => {
            tracing::warn!(error = %e, "consent start: storage unavailable");
            unavailable()
        }
    }
}

async fn callback(app: &App, params: &HashMap<String, String>) -> Response {
    let outcome = match app.onboarding.complete(params).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "consent callback: storage unavailable");
            return unavailable();
        }
    };
    if record_consent(app, params, &outcome).await.is_err() {
        return unavailable();
    }
    match outcome {
        ConsentOutcome::Confirmed(tenant) => {
            app.access.invalidate_tenant(tenant.tenant_id);
            tracing::info!(tenant_id = %tenant.tenant_id, cloud = %tenant.cloud, "tenant onboarded by admin consent");
            page(
                StatusCode::OK,
                "Your organization is connected",
                &[
                    format!("Organization: {}", tenant.display_name),
                    format!("Tenant ID: {}", tenant.tenant_id),
                    "You can close this page.".to_string(),
                ],
            )
        }
        ConsentOutcome::Pending(tenant) => {
            app.access.invalidate_tenant(tenant.tenant_id);
            tracing::info!(tenant_id = %tenant.tenant_id, "consent recorded; confirmation pending");
            page(
                StatusCode::ACCEPTED,
                "Consent recorded",
                &[
                    format!("Tenant ID: {}", tenant.tenant_id),
                    "Microsoft has not confirmed the consent yet; this can take a few minutes. The connection completes on its own; you can close this page.".to_string(),
                ],
            )
        }
        ConsentOutcome::Declined { error, description } => page(
            StatusCode::BAD_REQUEST,
            "Consent was not granted",
            &[
                format!("Microsoft reported: {error}"),
                description.lines().next().unwrap_or_default().to_string(),
                "The activation link can still be used: open it again to retry.".to_string(),
            ],
        ),
        ConsentOutcome::Link(problem) => link_page(problem),
        ConsentOutcome::Rejected(why) => page(
            StatusCode::BAD_REQUEST,
            "The organization could not be confirmed",
            &[
                why,
                "The activation link can still be used: open it again to retry.".to_string(),
            ],
        ),
        ConsentOutcome::TryLater => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again later",
            &[
                "This service could not confirm your organization because of a problem on our side, not yours. It has been reported to the people who run it.".to_string(),
                "Nothing was recorded, and the activation link can still be used: open it again later.".to_string(),
            ],
        ),
        ConsentOutcome::NotConfigured => {
            tracing::error!(
                "consent callback: no app credential is configured (ENTRA_CLIENT_SECRET)"
            );
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is not ready",
                &["This service is not configured to complete onboarding yet. Please contact your provider.".to_string()],
            )
        }
    }
}

/// Records what a consent callback did: a tenant confirmed or pending, or a decline (in
/// the tenant Entra named, else the service's own trail). Links that do not work are not
/// changes, so they are not recorded.
async fn record_consent(
    app: &App,
    params: &HashMap<String, String>,
    outcome: &ConsentOutcome,
) -> Result<(), audit::AuditError> {
    use audit::{Actor, Change, Event, Target};
    let named = params
        .get("tenant")
        .and_then(|t| uuid::Uuid::try_parse(t).ok());
    let actor = Actor::tenant_admin(
        named
            .map(|t| format!("admin of {t}"))
            .unwrap_or_else(|| "unknown".into()),
    );
    let event = match outcome {
        ConsentOutcome::Confirmed(tenant) => Event::new(
            tenant.tenant_id,
            actor,
            "consent.confirm",
            Target::new("tenant", tenant.tenant_id).display(tenant.display_name.clone()),
        )
        .change(Change::new(
            "status",
            None,
            Some(serde_json::json!(tenant.status.as_str())),
        )),
        ConsentOutcome::Pending(tenant) => Event::new(
            tenant.tenant_id,
            actor,
            "consent.pending",
            Target::new("tenant", tenant.tenant_id),
        )
        .change(Change::new(
            "status",
            None,
            Some(serde_json::json!(tenant.status.as_str())),
        )),
        ConsentOutcome::Declined { error, description } => {
            let tenant = named.unwrap_or(app.entra.admin_tenant_id);
            Event::new(
                tenant,
                actor,
                "consent.decline",
                Target::new("tenant", tenant),
            )
            .failed(
                error,
                description.lines().next().unwrap_or_default().to_string(),
            )
        }
        ConsentOutcome::Rejected(why) => {
            let tenant = named.unwrap_or(app.entra.admin_tenant_id);
            Event::new(
                tenant,
                actor,
                "consent.confirm",
                Target::new("tenant", tenant),
            )
            .failed("rejected", why.clone())
        }
        _ => return Ok(()),
    };
    app.audit.record(event).await
}
