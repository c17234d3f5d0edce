//! `TenantNotifications`, `TenantNotificationsTest` and `NotificationDelivery`: who hears
//! about a tenant's incidents (`GET/PUT /api/v1/tenants/{tenant_id}/notifications`), a
//! test notice (`POST .../notifications/test`), and the queue function that delivers
//! notices (a notice that cannot be delivered is itself an audit event).

use audit::incident::{IncidentKind, NoticeKind, RateThreshold};
use audit::notify::{Notice, NotificationSettings};
use audit::{Actor, Change, Event, Target};
use futures::future::BoxFuture;
use host::{InvocationRequest, InvocationResponse, InvokeError};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::notifications::{DeliveryError, check_webhook_url, webhook_secret_name};
use crate::openapi::schemas::{
    ErrorBody, IncidentKindName, NotificationSettingsBody, TestNoticeOutcome,
};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, guid_segment, json_reply};
use crate::trail;

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(GET "/api/v1/tenants/{tenant_id}/notifications" => get),
    route!(PUT "/api/v1/tenants/{tenant_id}/notifications" => put),
    route!(POST "/api/v1/tenants/{tenant_id}/notifications/test" => test),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(get, put, test))]
pub struct Api;

/// Deliveries tried before a notice is given up (and recorded as undeliverable).
const MAX_DELIVERIES: u32 = 5;

fn tenant_of(req: &Request) -> Result<Uuid, ApiError> {
    guid_segment(req.param("tenant_id").unwrap_or_default(), "tenant_id")
}

fn settings_json(s: &NotificationSettings, secret_set: bool) -> Value {
    json!({
        "emails": s.emails,
        "webhook_url": s.webhook_url,
        "webhook_secret_set": secret_set,
        "notify_on": s.notify_on.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "scim_failure_rate_percent": s.scim_failure_rate.percent,
        "scim_min_requests": s.scim_failure_rate.min_requests,
    })
}

async fn secret_set(app: &App, tenant: Uuid) -> Result<bool, ApiError> {
    Ok(app
        .vault
        .get_secret(&webhook_secret_name(tenant))
        .await
        .map_err(ApiError::unavailable)?
        .is_some())
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/notifications",
    operation_id = "getTenantNotifications",
    tag = "Audit",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "Who hears about the tenant's incidents (nobody, for every kind, until set)", body = NotificationSettingsBody),
    )
)]
async fn get(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = tenant_of(req)?;
    let settings =
        app.notifications
            .store
            .settings(tenant)
            .await?
            .unwrap_or(NotificationSettings {
                emails: Vec::new(),
                webhook_url: None,
                notify_on: IncidentKind::ALL.to_vec(),
                scim_failure_rate: RateThreshold::default(),
            });
    Ok(json_reply(
        StatusCode::OK,
        &settings_json(&settings, secret_set(app, tenant).await?),
    ))
}

/// Who hears about a tenant's incidents; replaces what was set.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"emails": ["ops@contoso.com"], "webhook_url": "https://hooks.contoso.com/entra", "notify_on": ["sync_failing", "scim_failing"]}))]
struct SettingsBody {
    /// Mailboxes (`name <addr>` or `addr`), at most 20.
    #[serde(default)]
    #[schema(max_items = 20)]
    emails: Vec<String>,
    /// https (http only on loopback); notices are POSTed to it, signed with the webhook secret.
    #[serde(default)]
    #[schema(nullable = false)]
    webhook_url: Option<String>,
    /// The kinds to notify of (default: every kind).
    #[serde(default)]
    #[schema(value_type = Option<Vec<IncidentKindName>>, nullable = false)]
    notify_on: Option<Vec<String>>,
    /// Makes a new webhook signing secret even if one exists.
    #[serde(default)]
    rotate_webhook_secret: bool,
    /// `scim_failing` opens when at least this share of the SCIM requests of the last 5
    /// minutes failed (default 10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100, nullable = false)]
    scim_failure_rate_percent: Option<u8>,
    /// ... over at least this many requests (default 10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000, nullable = false)]
    scim_min_requests: Option<u32>,
}

#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant_id}/notifications",
    operation_id = "setTenantNotifications",
    tag = "Audit",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = SettingsBody,
    responses(
        (status = 200, description = "The settings; `webhook_secret` when this call made one (shown once)", body = NotificationSettingsBody),
        (status = 404, description = "The tenant is not registered", body = ErrorBody),
    )
)]
async fn put(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let tenant = tenant_of(req)?;
    if app.access.tenants.get(tenant).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "tenant {tenant} is not registered"
        )));
    }
    let body: SettingsBody = req.json()?;
    for email in &body.emails {
        email
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| ApiError::bad_request(format!("emails: {email:?}: {e}")))?;
    }
    if body.emails.len() > 20 {
        return Err(ApiError::bad_request("emails: at most 20 recipients"));
    }
    let webhook_url = body
        .webhook_url
        .as_deref()
        .map(check_webhook_url)
        .transpose()
        .map_err(ApiError::bad_request)?
        .map(|u| u.to_string());
    let notify_on = match body.notify_on {
        None => IncidentKind::ALL.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| {
                IncidentKind::parse(n).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "notify_on: {n:?}; one of {}",
                        IncidentKind::ALL.map(|k| k.as_str()).join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let defaults = RateThreshold::default();
    let percent = body.scim_failure_rate_percent.unwrap_or(defaults.percent);
    if !(1..=100).contains(&percent) {
        return Err(ApiError::bad_request(
            "scim_failure_rate_percent must be 1 to 100",
        ));
    }
    let min_requests = body.scim_min_requests.unwrap_or(defaults.min_requests);
    if !(1..=100_000).contains(&min_requests) {
        return Err(ApiError::bad_request(
            "scim_min_requests must be 1 to 100000",
        ));
    }
    let settings = NotificationSettings {
        emails: body.emails,
        webhook_url,
        notify_on,
        scim_failure_rate: RateThreshold {
            percent,
            min_requests,
        },
    };
    let before = app.notifications.store.settings(tenant).await?;
    // the signing secret is shown once, when it is made
    let mut new_secret = None;
    if settings.webhook_url.is_some()
        && (body.rotate_webhook_secret || !secret_set(app, tenant).await?)
    {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| ApiError::unavailable("no randomness"))?;
        new_secret = Some(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    let old = before
        .as_ref()
        .map(|b| settings_json(b, false))
        .unwrap_or(Value::Null);
    let mut changes = audit::diff(&old, &settings_json(&settings, false));
    changes.retain(|c| c.attribute != "webhook_secret_set");
    if new_secret.is_some() {
        changes.push(Change::secret("webhook_secret"));
    }
    let event = trail::event(
        &req.headers,
        tenant,
        admin,
        "notifications.update",
        Target::new("notifications", tenant),
    )
    .changes(changes);
    trail::around(app, event, async {
        if let Some(secret) = &new_secret {
            app.vault
                .set_secret(&webhook_secret_name(tenant), secret)
                .await
                .map_err(ApiError::unavailable)?;
        }
        app.notifications
            .store
            .put_settings(tenant, &settings)
            .await?;
        app.notifications.forget(tenant);
        Ok(trail::Made::from(()))
    })
    .await?;
    let mut answer = settings_json(&settings, settings.webhook_url.is_some());
    if let Some(secret) = new_secret {
        answer["webhook_secret"] = json!(secret);
    }
    Ok(crate::routes::no_store(json_reply(StatusCode::OK, &answer)))
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/notifications/test",
    operation_id = "testTenantNotifications",
    tag = "Audit",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "Whether a test notice reached every channel: `delivered: false` with why when the mail server or the webhook refused it, or e-mail is not set up (SMTP_HOST)", body = TestNoticeOutcome),
    )
)]
async fn test(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = tenant_of(req)?;
    let notice = Notice {
        id: Uuid::new_v4().to_string(),
        tenant,
        notice: NoticeKind::Test,
        kind: None,
        incident: None,
    };
    match app.notifications.deliver(&notice).await {
        Ok(()) => Ok(json_reply(
            StatusCode::OK,
            &json!({"delivered": true, "id": notice.id}),
        )),
        // the connector's own storage failing is its error; a channel refusing the notice
        // is the test's finding, answered as such (a 5xx would alarm as an outage of ours)
        Err(e @ (DeliveryError::Store(_) | DeliveryError::Vault(_))) => {
            Err(ApiError::unavailable(e))
        }
        Err(e) => Ok(json_reply(
            StatusCode::OK,
            &json!({"delivered": false, "error": e.to_string()}),
        )),
    }
}

/// `NotificationDelivery`'s entry point.
pub fn invoke(
    app: &App,
    request: InvocationRequest,
) -> BoxFuture<'_, Result<InvocationResponse, InvokeError>> {
    Box::pin(deliver(app, request))
}

async fn deliver(app: &App, request: InvocationRequest) -> Result<InvocationResponse, InvokeError> {
    let trigger = request
        .queue_trigger("msg")
        .map_err(|e| InvokeError::BadPayload(e.0))?;
    let notice: Notice = serde_json::from_value(trigger.message.clone())
        .map_err(|e| InvokeError::BadPayload(format!("a notifications message: {e}")))?;
    let mut response = InvocationResponse::new();
    let what = notice.kind.map(|k| k.as_str()).unwrap_or("test");
    let event = |e: Event| e.correlation(notice.id.clone());
    let base = Event::new(
        notice.tenant,
        Actor::system("NotificationDelivery"),
        "notification.deliver",
        Target::new("notification", &notice.id).display(notice.subject()),
    );
    match app.notifications.deliver(&notice).await {
        Ok(()) => {
            let _ = app.audit.record(event(base)).await;
            response.log(format!("notice {} ({what}) delivered", notice.id));
            Ok(response)
        }
        Err(e) if trigger.dequeue_count < MAX_DELIVERIES => Err(InvokeError::Failed {
            // the queue delivers it again after its visibility timeout: the back-off
            message: format!("notice {} not delivered yet: {e}", notice.id),
            logs: Vec::new(),
        }),
        Err(e) => {
            let failed = event(base).failed("undeliverable", e.to_string());
            app.audit
                .record(failed)
                .await
                .map_err(|e| InvokeError::Failed {
                    message: format!("undeliverable notice not recorded: {e}"),
                    logs: Vec::new(),
                })?;
            response.log(format!("notice {} given up: {e}", notice.id));
            Ok(response)
        }
    }
}
