//! `AccessGrants`: which principals of which tenants may call the Connector API, with which
//! scopes. `POST/GET /api/v1/access/grants`, `GET/PUT/DELETE /api/v1/access/grants/{id}`.

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::domain::{Grant, Principal, parse_scopes};
use crate::lifecycle::{self, AccessRefusal};
use crate::openapi::schemas::{ErrorBody, GrantBody, GrantList};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply, no_content};
use crate::trail::{self, Made};
use audit::{Change, Target};

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(GET "/api/v1/access/grants" => list),
    route!(POST "/api/v1/access/grants" => create),
    route!(GET "/api/v1/access/grants/{grant_id}" => get),
    route!(PUT "/api/v1/access/grants/{grant_id}" => update),
    route!(DELETE "/api/v1/access/grants/{grant_id}" => delete),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, create, get, update, delete))]
pub struct Api;

fn grant_param(req: &Request) -> Result<Uuid, ApiError> {
    Uuid::try_parse(req.param("grant_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("grant id must be a GUID"))
}

/// A grant as the API shows it.
fn grant_json(g: &Grant) -> Value {
    let mut body = json!({
        "id": g.id,
        "tenant_id": g.tenant_id,
        "kind": g.principal.kind(),
        "scopes": g.scopes,
        "created_at": host::invocation::format_timestamp(g.created_at),
        "updated_at": host::invocation::format_timestamp(g.updated_at),
        "last_used_at": g.last_used_at.map(host::invocation::format_timestamp),
        "revoked_at": g.revoked_at.map(host::invocation::format_timestamp),
    });
    match g.principal {
        Principal::User { object_id } => body["object_id"] = json!(object_id),
        Principal::ServicePrincipal { client_id } => body["client_id"] = json!(client_id),
    }
    body
}

/// A grant to make: a user (`object_id`) or a service principal (`client_id`) of a tenant.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "kind": "service_principal", "client_id": "00000003-0000-0000-c000-000000000000", "scopes": ["records.read"]}))]
struct NewGrant {
    #[schema(format = Uuid)]
    tenant_id: String,
    #[schema(value_type = crate::openapi::schemas::PrincipalKind)]
    kind: String,
    /// The user's object id (`kind: user`).
    #[serde(default)]
    #[schema(format = Uuid)]
    object_id: Option<String>,
    /// The application's client id (`kind: service_principal`).
    #[serde(default)]
    #[schema(format = Uuid)]
    client_id: Option<String>,
    /// Among `CONNECTOR_SCOPES`.
    scopes: Vec<String>,
}

/// A grant's new scopes.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"scopes": ["records.read", "records.write"]}))]
struct GrantUpdate {
    scopes: Vec<String>,
}

/// The principal's id as the audit trail shows it.
fn principal_display(p: &Principal) -> String {
    match p {
        Principal::User { object_id } => format!("user {object_id}"),
        Principal::ServicePrincipal { client_id } => format!("service principal {client_id}"),
    }
}

fn guid_field(value: &str, name: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(value).map_err(|_| ApiError::bad_request(format!("{name} must be a GUID")))
}

#[utoipa::path(
    post,
    path = "/api/v1/access/grants",
    operation_id = "createGrant",
    tag = "Access",
    security(("entra_admin" = [])),
    request_body = NewGrant,
    responses(
        (status = 201, description = "The grant", body = GrantBody, links(
            ("GetGrant" = (operation_id = "getGrant", parameters(("grant_id" = "$response.body#/id")))),
            ("UpdateGrant" = (operation_id = "updateGrant", parameters(("grant_id" = "$response.body#/id")))),
            ("DeleteGrant" = (operation_id = "deleteGrant", parameters(("grant_id" = "$response.body#/id"))))
        )),
        (status = 409, description = "The principal has a grant in that tenant already (named), or the tenant is offboarded", body = ErrorBody),
    )
)]
async fn create(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let new: NewGrant = req.json()?;
    let tenant_id = guid_field(&new.tenant_id, "tenant_id")?;
    let principal = match (new.kind.as_str(), &new.object_id, &new.client_id) {
        ("user", Some(oid), None) => Principal::User {
            object_id: guid_field(oid, "object_id")?,
        },
        ("service_principal", None, Some(client)) => Principal::ServicePrincipal {
            client_id: guid_field(client, "client_id")?,
        },
        ("user", _, _) => {
            return Err(ApiError::bad_request(
                "a user grant names object_id (and no client_id)",
            ));
        }
        ("service_principal", _, _) => {
            return Err(ApiError::bad_request(
                "a service_principal grant names client_id (and no object_id)",
            ));
        }
        (other, _, _) => {
            return Err(ApiError::bad_request(format!(
                "kind {other:?}: expected user or service_principal"
            )));
        }
    };
    let scopes = parse_scopes(&new.scopes, &app.connector_scopes).map_err(ApiError::bad_request)?;
    let now = OffsetDateTime::now_utc();
    let grant = Grant {
        id: Uuid::new_v4(),
        tenant_id,
        principal,
        scopes,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    let event = trail::event(
        &req.headers,
        tenant_id,
        admin,
        "grant.create",
        Target::new("grant", grant.id).display(principal_display(&grant.principal)),
    )
    .change(Change::new(
        "kind",
        None,
        Some(json!(grant.principal.kind())),
    ))
    .change(Change::new(
        "principal",
        None,
        Some(json!(principal_display(&grant.principal))),
    ))
    .change(Change::new("scopes", None, Some(json!(grant.scopes))));
    trail::around(app, event, async {
        lifecycle::create_grant(&app.access, &grant)
            .await
            .map(Made::from)
            .map_err(|refusal| match refusal {
                AccessRefusal::NotRegistered(_) => ApiError::bad_request(refusal.to_string()),
                AccessRefusal::Offboarded(_) => ApiError::conflict(refusal.to_string()),
                AccessRefusal::Store(e) => e.into(),
            })
    })
    .await?;
    tracing::info!(grant_id = %grant.id, %tenant_id, kind = grant.principal.kind(), "grant created");
    Ok(json_reply(StatusCode::CREATED, &grant_json(&grant)))
}

#[utoipa::path(
    get,
    path = "/api/v1/access/grants",
    operation_id = "listGrants",
    tag = "Access",
    security(("entra_admin" = [])),
    params(("tenant_id" = Option<uuid::Uuid>, Query, description = "Only this tenant's grants")),
    responses((status = 200, description = "The grants", body = GrantList))
)]
async fn list(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = req
        .query_param("tenant_id")?
        .map(|t| guid_field(&t, "tenant_id"))
        .transpose()?;
    let mut grants = app.access.grants.list(tenant).await?;
    grants.sort_by_key(|g| g.created_at);
    let grants: Vec<Value> = grants.iter().map(grant_json).collect();
    Ok(json_reply(StatusCode::OK, &json!({ "grants": grants })))
}

#[utoipa::path(
    get,
    path = "/api/v1/access/grants/{grant_id}",
    operation_id = "getGrant",
    tag = "Access",
    security(("entra_admin" = [])),
    params(("grant_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The grant", body = GrantBody))
)]
async fn get(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let id = grant_param(req)?;
    let grant = app
        .access
        .grants
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no grant {id}")))?;
    Ok(json_reply(StatusCode::OK, &grant_json(&grant)))
}

#[utoipa::path(
    put,
    path = "/api/v1/access/grants/{grant_id}",
    operation_id = "updateGrant",
    tag = "Access",
    security(("entra_admin" = [])),
    params(("grant_id" = uuid::Uuid, Path)),
    request_body = GrantUpdate,
    responses((status = 200, description = "The grant, with its new scopes", body = GrantBody))
)]
async fn update(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let id = grant_param(req)?;
    let change: GrantUpdate = req.json()?;
    let before = app.access.grants.get(id).await?;
    let scopes =
        parse_scopes(&change.scopes, &app.connector_scopes).map_err(ApiError::bad_request)?;
    let Some(before) = before else {
        return Err(ApiError::not_found(format!("no grant {id}")));
    };
    let event = trail::event(
        &req.headers,
        before.tenant_id,
        admin,
        "grant.update",
        Target::new("grant", id).display(principal_display(&before.principal)),
    )
    .change(Change::new(
        "scopes",
        Some(json!(before.scopes)),
        Some(json!(scopes)),
    ));
    let grant = trail::around(app, event, async {
        let grant = app
            .access
            .grants
            .update_scopes(id, &scopes, OffsetDateTime::now_utc())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no grant {id}")))?;
        app.access.invalidate_grants(grant.tenant_id);
        Ok(Made::from(grant))
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &grant_json(&grant)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/access/grants/{grant_id}",
    operation_id = "deleteGrant",
    tag = "Access",
    security(("entra_admin" = [])),
    params(("grant_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Deleted"))
)]
async fn delete(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let id = grant_param(req)?;
    let grant = app
        .access
        .grants
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no grant {id}")))?;
    let event = trail::event(
        &req.headers,
        grant.tenant_id,
        admin,
        "grant.delete",
        Target::new("grant", grant.id).display(principal_display(&grant.principal)),
    )
    .change(Change::new("scopes", Some(json!(grant.scopes)), None));
    trail::around(app, event, async {
        app.access.grants.delete(id).await?;
        app.access.invalidate_grants(grant.tenant_id);
        Ok(Made::from(()))
    })
    .await?;
    tracing::info!(grant_id = %id, tenant_id = %grant.tenant_id, "grant deleted");
    Ok(no_content())
}
