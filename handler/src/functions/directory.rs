//! The directory API (`EntraUsers`, `EntraStatistics`, `EntraHealth`): users mirrored from
//! Entra by Graph sync and SCIM, searched and paged; counters and round outcomes.

use std::collections::BTreeMap;

use directory::{Directory as _, ListFilter, User};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::domain::TenantStatus;
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply};

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(GET "/api/v1/entra-id/users" => list),
    route!(GET "/api/v1/entra-id/users/{user_id}" => show),
    route!(GET "/api/v1/entra-id/statistics" => statistics),
    route!(GET "/api/v1/entra-id/health" => health),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, show, statistics, health))]
pub struct Api;

/// Users per page unless `per_page` says otherwise, and the most it may say.
const DEFAULT_PER_PAGE: usize = 15;
const MAX_PER_PAGE: usize = 100;

/// The tenant a directory call is about: the one named, or the only active one.
pub async fn tenant_for(app: &App, named: Option<&str>) -> Result<Uuid, ApiError> {
    if let Some(named) = named.filter(|n| !n.is_empty()) {
        let id = Uuid::try_parse(named)
            .map_err(|_| ApiError::bad_request("tenant_id must be a GUID"))?;
        return match app.tenants.get(id).await? {
            Some(t) if t.status == TenantStatus::Active => Ok(id),
            Some(_) => Err(ApiError::conflict(format!("tenant {id} is not active"))),
            None => Err(ApiError::not_found(format!("no tenant {id}"))),
        };
    }
    let active: Vec<Uuid> = app
        .tenants
        .list()
        .await?
        .into_iter()
        .filter(|t| t.status == TenantStatus::Active)
        .map(|t| t.tenant_id)
        .collect();
    match active.as_slice() {
        [one] => Ok(*one),
        [] => Err(ApiError::bad_request(
            "tenant_id is required: no tenant is active",
        )),
        many => Err(ApiError::bad_request(format!(
            "tenant_id is required: {} tenants are active ({}{})",
            many.len(),
            many.iter()
                .take(5)
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if many.len() > 5 { ", ..." } else { "" }
        ))),
    }
}

fn time_json(t: Option<OffsetDateTime>) -> Value {
    t.map(host::invocation::format_timestamp)
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// A user as the API shows it.
pub fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "entra_id": u.entra_id,
        "entra_upn": u.upn,
        "is_active": u.is_active(),
        "account_enabled": u.enabled,
        "entra_last_sync": time_json(u.entra_last_sync),
        "deleted_in_entra_at": time_json(u.deleted_in_entra_at),
        "given_name": u.given_name,
        "surname": u.surname,
        "job_title": u.job_title,
        "department": u.department,
        "employee_id": u.employee_id,
        "sources": u.sources.names(),
        "updated_at": host::invocation::format_timestamp(u.updated_at),
    })
}

/// The kind of every certificate this service issues, as user listings name it.
const CATEGORY: &str = "entra_user";

/// A certificate as the API shows it (no key, ever).
pub fn certificate_json(c: &pki::CertificateRecord) -> Value {
    json!({
        "id": c.id,
        "type": CATEGORY,
        "certificate_type": c.kind.as_str(),
        "tenant_id": c.tenant,
        "user_id": c.user_id,
        "serial": c.serial,
        "subject": c.subject,
        "not_before": host::invocation::format_timestamp(c.not_before),
        "not_after": host::invocation::format_timestamp(c.not_after),
        "thumbprint_sha256": c.thumbprint,
        "status": c.status.as_str(),
        "key_source": c.key_source,
        "revoked_at": time_json(c.revoked_at),
        "revocation_reason": c.reason.map(|r| r.as_str()),
        "revoked_by": c.revoked_by,
        "pem": c.pem(),
    })
}

/// A user with its direct groups.
pub async fn user_with_groups(app: &App, tenant: Uuid, u: &User) -> Result<Value, ApiError> {
    let groups = app.directory.groups_of(tenant, u.id).await?;
    let mut value = user_json(u);
    value["entra_groups"] = groups
        .iter()
        .map(|g| json!({"id": g.id, "entra_id": g.entra_id, "name": g.name}))
        .collect();
    Ok(value)
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be true or false"
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/entra-id/users",
    operation_id = "listDirectoryUsers",
    tag = "Directory",
    security(("entra_admin" = [])),
    params(
        ("tenant_id" = Option<uuid::Uuid>, Query, description = "The tenant; may be left out when exactly one tenant is active"),
        ("active" = Option<bool>, Query),
        ("recently_synced" = Option<String>, Query, description = "Synced within this many hours (1-8784; empty: 24)"),
        ("search" = Option<String>, Query, description = "A case-insensitive prefix of the name, e-mail or UPN (at most 256 characters)"),
        ("per_page" = Option<u32>, Query, minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "A `next_cursor` of this listing"),
    ),
    responses(
        (status = 200, description = "A page of users", body = crate::openapi::schemas::DirectoryUserPage),
        (status = 404, description = "Unknown tenant (or no such resource in it)", body = crate::openapi::schemas::ErrorBody),
        (status = 409, description = "The tenant is not active", body = crate::openapi::schemas::ErrorBody),
    )
)]
async fn list(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let known = [
        "tenant_id",
        "active",
        "recently_synced",
        "search",
        "per_page",
        "cursor",
    ];
    if let Some((k, _)) = req
        .query_pairs()
        .into_iter()
        .find(|(k, _)| !known.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?}; known: {}",
            known.join(", ")
        )));
    }
    let tenant = tenant_for(app, req.query_param("tenant_id")?.as_deref()).await?;
    let active = req
        .query_param("active")?
        .map(|v| parse_bool("active", &v))
        .transpose()?;
    let synced_since = match req.query_param("recently_synced")? {
        None => None,
        Some(hours) => {
            let hours: i64 = if hours.is_empty() {
                24
            } else {
                hours
                    .parse()
                    .ok()
                    .filter(|h| (1..=24 * 366).contains(h))
                    .ok_or_else(|| {
                        ApiError::bad_request("recently_synced is a number of hours (1 to 8784)")
                    })?
            };
            Some(OffsetDateTime::now_utc() - time::Duration::hours(hours))
        }
    };
    let per_page = match req.query_param("per_page")? {
        None => DEFAULT_PER_PAGE,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| (1..=MAX_PER_PAGE).contains(p))
            .ok_or_else(|| {
                ApiError::bad_request(format!("per_page is a number from 1 to {MAX_PER_PAGE}"))
            })?,
    };
    let search = req.query_param("search")?;
    if search.as_ref().is_some_and(|s| s.len() > 256) {
        return Err(ApiError::bad_request("search is at most 256 characters"));
    }
    let filter = ListFilter {
        active,
        synced_since,
        search,
        per_page,
        cursor: req.query_param("cursor")?.filter(|c| !c.is_empty()),
    };
    let page = app
        .directory
        .list_users(tenant, &filter)
        .await
        .map_err(|e| match e {
            directory::DirectoryError::Invalid(_) => {
                ApiError::bad_request("cursor is not one this listing gave out")
            }
            other => other.into(),
        })?;
    let ids: Vec<Uuid> = page.items.iter().map(|u| u.id).collect();
    let now = OffsetDateTime::now_utc();
    let mut active: BTreeMap<Uuid, Vec<Value>> = BTreeMap::new();
    for c in app
        .pki
        .certificates(tenant, Some(&ids), Some(pki::CertificateStatus::Active))
        .await?
        .iter()
        .filter(|c| c.is_valid_at(now))
    {
        active
            .entry(c.user_id)
            .or_default()
            .push(certificate_json(c));
    }
    let users: Vec<Value> = page
        .items
        .iter()
        .map(|u| {
            let mut v = user_json(u);
            // active certificates of type entra_user (every certificate issued here is)
            v["certificates"] = json!(active.remove(&u.id).unwrap_or_default());
            v
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "tenant_id": tenant,
            "per_page": per_page,
            "users": users,
            "next_cursor": page.next_cursor,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/entra-id/users/{user_id}",
    operation_id = "getDirectoryUser",
    tag = "Directory",
    security(("entra_admin" = [])),
    params(("user_id" = uuid::Uuid, Path), ("tenant_id" = Option<uuid::Uuid>, Query, description = "The tenant; may be left out when exactly one tenant is active")),
    responses(
        (status = 200, description = "The user with its direct groups and all its certificates", body = crate::openapi::schemas::DirectoryUser),
        (status = 404, description = "Unknown tenant (or no such resource in it)", body = crate::openapi::schemas::ErrorBody),
        (status = 409, description = "The tenant is not active", body = crate::openapi::schemas::ErrorBody),
    )
)]
async fn show(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = tenant_for(app, req.query_param("tenant_id")?.as_deref()).await?;
    let id = req.param("user_id").unwrap_or_default();
    let id = Uuid::try_parse(id).map_err(|_| ApiError::bad_request("user_id must be a GUID"))?;
    let user = app
        .directory
        .user(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id} in tenant {tenant}")))?;
    let mut value = user_with_groups(app, tenant, &user).await?;
    value["certificates"] = app
        .pki
        .certificates(tenant, Some(&[user.id]), None)
        .await?
        .iter()
        .map(certificate_json)
        .collect();
    Ok(json_reply(StatusCode::OK, &value))
}

fn round_json(state: &sync::SyncState) -> Value {
    match &state.last {
        None => Value::Null,
        Some(last) => json!({
            "round": last.round,
            "started_at": host::invocation::format_timestamp(last.started),
            "finished_at": host::invocation::format_timestamp(last.finished),
            "duration_ms": (last.finished - last.started).whole_milliseconds(),
            "outcome": last.outcome,
            "full": last.full,
            "pages": last.pages,
            "changes": last.changes,
        }),
    }
}

/// A tenant's sync status: idle, queued or running, with the running round's progress.
pub fn sync_json(app: &App, state: &sync::SyncState, requests: &sync::Requests) -> Value {
    let now = OffsetDateTime::now_utc();
    let started = state
        .round_started
        .or(state.last.as_ref().map(|l| l.started));
    let status = if state.is_running(now) {
        "running"
    } else if requests
        .queued_at
        .is_some_and(|q| started.is_none_or(|s| s < q))
        || state.phase != sync::Phase::Idle
    {
        "queued"
    } else {
        "idle"
    };
    let running = state.phase != sync::Phase::Idle;
    json!({
        "tenant_id": state.tenant,
        "status": status,
        "round": if running { json!({
            "round": state.round,
            "phase": state.phase.as_str(),
            "full": state.full,
            "started_at": time_json(state.round_started),
            "pages": state.pages,
            "changes": state.changes,
        }) } else { Value::Null },
        "last_round": round_json(state),
        "next_due_at": host::invocation::format_timestamp(app.sync.schedule.next_due(state, now)),
        "error": state.error,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/entra-id/statistics",
    operation_id = "getDirectoryStatistics",
    tag = "Directory",
    security(("entra_admin" = [])),
    responses((status = 200, description = "Counters kept at write time", body = crate::openapi::schemas::Statistics))
)]
async fn statistics(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenants = app.tenants.list().await?;
    let states: BTreeMap<Uuid, (sync::SyncState, sync::Requests)> = app
        .sync
        .states
        .all()
        .await
        .map_err(ApiError::unavailable)?
        .into_iter()
        .map(|(s, r)| (s.tenant, (s, r)))
        .collect();
    let mut total = directory::Counters::default();
    let mut rows = Vec::new();
    for tenant in tenants.iter().filter(|t| t.status == TenantStatus::Active) {
        let c = app.directory.counters(tenant.tenant_id).await?;
        total.users += c.users;
        total.active_users += c.active_users;
        total.groups += c.groups;
        total.memberships += c.memberships;
        let (state, requests) = states
            .get(&tenant.tenant_id)
            .cloned()
            .unwrap_or_else(|| (sync::SyncState::new(tenant.tenant_id), Default::default()));
        let mut row = sync_json(app, &state, &requests);
        row["display_name"] = json!(tenant.display_name);
        row["users"] =
            json!({"total": c.users, "active": c.active_users, "inactive": c.inactive_users()});
        row["groups"] = json!(c.groups);
        row["memberships"] = json!(c.memberships);
        rows.push(row);
    }
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "total": {
                "tenants": rows.len(),
                "users": {"total": total.users, "active": total.active_users, "inactive": total.inactive_users()},
                "groups": total.groups,
                "memberships": total.memberships,
            },
            "tenants": rows,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/entra-id/health",
    operation_id = "getDirectoryHealth",
    tag = "Directory",
    security(()),
    responses(
        (status = 200, description = "`up`, or `degraded` when a tenant's last round did not succeed", body = crate::openapi::schemas::DirectoryHealth),
        (status = 503, description = "Storage unreachable", body = crate::openapi::schemas::DirectoryHealth),
    )
)]
async fn health(app: &App, _req: &Request) -> Result<Response, ApiError> {
    let (storage, outcomes) = match app.sync.states.all().await {
        Ok(states) => {
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            for (state, _) in &states {
                let name = state
                    .last
                    .as_ref()
                    .map(|l| l.outcome.clone())
                    .unwrap_or_else(|| "never".into());
                *outcomes.entry(name).or_default() += 1;
            }
            (true, outcomes)
        }
        Err(e) => {
            tracing::warn!(error = %e, "health: sync state unreadable");
            (false, BTreeMap::new())
        }
    };
    let failing: u64 = outcomes
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "success" | "never"))
        .map(|(_, n)| n)
        .sum();
    let up = storage && failing == 0;
    let status = if storage {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = json_reply(
        status,
        &json!({
            "status": if up { "up" } else { "degraded" },
            "storage": if storage { "reachable" } else { "unreachable" },
            "last_rounds": outcomes,
        }),
    );
    response.headers_mut().insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
