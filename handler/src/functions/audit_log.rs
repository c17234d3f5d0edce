//! `AuditLog` and `ProvisioningLog`: a tenant's audit trail, newest first, filtered and
//! paged by cursor (`?format=ndjson` streams a range), and its SCIM view the way Entra's
//! provisioning logs read.

use std::sync::Arc;

use audit::{AuditQuery, AuditStore, Event, Outcome};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;
use warp::Reply as _;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, guid_segment, json_reply};

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(GET "/api/v1/tenants/{tenant_id}/audit" => audit_log),
    route!(GET "/api/v1/tenants/{tenant_id}/provisioning-log" => provisioning_log),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(audit_log, provisioning_log))]
pub struct Api;

/// Events per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Most events per page.
const MAX_LIMIT: usize = 1000;

fn time_param(req: &Request, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    req.query_param(name)?
        .map(|raw| {
            OffsetDateTime::parse(&raw, &Rfc3339).map_err(|_| {
                ApiError::bad_request(format!("{name} must be an RFC 3339 time ({raw:?})"))
            })
        })
        .transpose()
}

/// The filters every view shares; `outcome_param` is `outcome` or the provisioning log's
/// `status`.
fn query_of(req: &Request, outcome_param: &str) -> Result<AuditQuery, ApiError> {
    let outcome = req.query_param(outcome_param)?;
    if let Some(o) = &outcome
        && o != "success"
        && o != "failure"
        && o != "pending"
    {
        return Err(ApiError::bad_request(format!(
            "{outcome_param} is success, failure or pending"
        )));
    }
    Ok(AuditQuery {
        since: time_param(req, "since")?,
        until: time_param(req, "until")?,
        action_prefix: req.query_param("action")?,
        actor: req.query_param("actor")?,
        target_id: req.query_param("target")?,
        outcome,
    })
}

fn limit_of(req: &Request) -> Result<usize, ApiError> {
    match req.query_param("limit")? {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit is 1-{MAX_LIMIT}"))),
    }
}

fn tenant_of(req: &Request) -> Result<Uuid, ApiError> {
    guid_segment(req.param("tenant_id").unwrap_or_default(), "tenant_id")
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/audit",
    operation_id = "getAuditLog",
    tag = "Audit",
    security(("entra_admin" = [])),
    params(
        ("tenant_id" = uuid::Uuid, Path),
        ("since" = Option<String>, Query, format = DateTime, description = "Events at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Events before this RFC 3339 time"),
        ("action" = Option<String>, Query, description = "Actions starting with this (`scim.user` matches `scim.user.create`)"),
        ("actor" = Option<String>, Query, description = "The actor's id, or its kind (`graph-sync`)"),
        ("target" = Option<String>, Query, description = "Events about this object id only"),
        ("outcome" = Option<crate::openapi::schemas::AuditStatus>, Query),
        ("cursor" = Option<String>, Query, description = "A `next_cursor` of this listing"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Events per page (default 100; not used by `ndjson`)"),
        ("format" = Option<crate::openapi::schemas::AuditFormat>, Query, description = "`json` (default): one page; `ndjson`: every matching event from `cursor` on"),
    ),
    responses(
        (status = 200, description = "A page of events, newest first; with `format=ndjson`, every matching event, one JSON object a line", content(
            (crate::openapi::schemas::AuditPage = "application/json"),
            (crate::openapi::schemas::AuditEvent = "application/x-ndjson"),
        )),
    )
)]
async fn audit_log(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = tenant_of(req)?;
    let query = query_of(req, "outcome")?;
    let cursor = req.query_param("cursor")?;
    crate::trail::settled(app, tenant).await?;
    match req.query_param("format")?.as_deref() {
        None | Some("json") => {}
        Some("ndjson") => {
            // the first page is read before the 200 is sent, so a bad cursor or unreachable
            // storage is an ordinary error answer rather than a stream cut short
            let store = app.audit.store().clone();
            let first = store
                .page(tenant, &query, cursor.as_deref(), MAX_LIMIT)
                .await?;
            return Ok(ndjson(store, tenant, query, first));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?}: json or ndjson"
            )));
        }
    }
    let page = app
        .audit
        .store()
        .page(tenant, &query, cursor.as_deref(), limit_of(req)?)
        .await?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "events": page.events, "next_cursor": page.next }),
    ))
}

/// Streams every matching event, one JSON object per line, a page at a time, so a long
/// range is never held in memory; `first` is the page read before answering.
fn ndjson(
    store: Arc<dyn AuditStore>,
    tenant: Uuid,
    query: AuditQuery,
    first: audit::AuditPage,
) -> Response {
    let (send, receive) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut page = first;
        loop {
            let mut chunk = Vec::new();
            for event in &page.events {
                serde_json::to_writer(&mut chunk, event).expect("an event serializes");
                chunk.push(b'\n');
            }
            if send.send(Ok(chunk.into())).await.is_err() {
                return; // the client went away
            }
            let Some(next) = page.next else {
                return;
            };
            page = match store.page(tenant, &query, Some(&next), MAX_LIMIT).await {
                Ok(page) => page,
                Err(e) => {
                    // the status is sent already: cut the stream so the client sees it end early
                    tracing::warn!(error = %e, "audit export stopped");
                    let _ = send.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
        }
    });
    let stream = futures::stream::unfold(receive, |mut receive| async move {
        receive.recv().await.map(|item| (item, receive))
    });
    let mut response = warp::reply::stream(stream).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// A SCIM event as a provisioning log row: the request Entra made and what came of it.
fn provisioning_row(event: &Event) -> Value {
    let operation = match event.action.rsplit('.').next() {
        Some("create") => "Create",
        Some("update") => "Update",
        Some("replace") => "Replace",
        Some("delete") => "Delete",
        _ => "Other",
    };
    let mut row = json!({
        "id": event.id,
        "time": event.time.format(&Rfc3339).unwrap_or_default(),
        "action": event.action,
        "operation": operation,
        "target": event.target,
        "status": event.outcome.as_str(),
        "correlation": event.correlation,
    });
    match &event.outcome {
        Outcome::Success => row["modified_properties"] = json!(event.changes),
        Outcome::Failure { code, reason } => {
            row["error"] = json!({ "code": code, "reason": reason });
        }
        Outcome::Pending => {}
    }
    row
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/provisioning-log",
    operation_id = "getProvisioningLog",
    tag = "Audit",
    security(("entra_admin" = [])),
    params(
        ("tenant_id" = uuid::Uuid, Path),
        ("since" = Option<String>, Query, format = DateTime, description = "Entries at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Entries before this RFC 3339 time"),
        ("action" = Option<String>, Query, pattern = "^scim\\.", description = "Actions starting with this; must start with `scim.` (default: every SCIM action)"),
        ("actor" = Option<String>, Query, description = "The actor's id, or its kind (`entra-provisioning`)"),
        ("target" = Option<String>, Query, description = "Entries about this object id only"),
        ("status" = Option<crate::openapi::schemas::AuditStatus>, Query),
        ("cursor" = Option<String>, Query, description = "A `next_cursor` of this listing"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Entries per page (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of the SCIM requests Entra made, newest first", body = crate::openapi::schemas::ProvisioningLogPage),
    )
)]
async fn provisioning_log(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = tenant_of(req)?;
    let mut query = query_of(req, "status")?;
    query.action_prefix = Some(match query.action_prefix {
        Some(p) if p.starts_with("scim.") => p,
        Some(_) => return Err(ApiError::bad_request("action must start with scim.")),
        None => "scim.".to_string(),
    });
    let cursor = req.query_param("cursor")?;
    crate::trail::settled(app, tenant).await?;
    let page = app
        .audit
        .store()
        .page(tenant, &query, cursor.as_deref(), limit_of(req)?)
        .await?;
    let rows: Vec<Value> = page.events.iter().map(provisioning_row).collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "entries": rows, "next_cursor": page.next }),
    ))
}
