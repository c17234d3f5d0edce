//! `Tenants`: the tenant registry, for admins. `POST/GET /api/v1/tenants`,
//! `GET/DELETE /api/v1/tenants/{tenant_id}` (DELETE offboards, see [`crate::lifecycle`]:
//! tokens refused, grants and the SCIM token revoked, data kept for audit; a retry
//! completes what a failed attempt left undone).

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::domain::{Tenant, TenantStatus};
use crate::lifecycle::{OffboardError, Offboarding};
use crate::openapi::schemas::{ErrorBody, OffboardedTenant, TenantBody, TenantList};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply};
use crate::trail::{self, Made};
use audit::{Change, Target};

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(GET "/api/v1/tenants" => list),
    route!(POST "/api/v1/tenants" => create),
    route!(GET "/api/v1/tenants/{tenant_id}" => get),
    route!(DELETE "/api/v1/tenants/{tenant_id}" => offboard),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, create, get, offboard))]
pub struct Api;

fn tenant_param(req: &Request) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(req.param("tenant_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("tenant_id must be a GUID"))
}

/// A tenant as the API shows it.
pub fn tenant_json(t: &Tenant) -> Value {
    json!({
        "tenant_id": t.tenant_id,
        "display_name": t.display_name,
        "cloud": t.cloud.as_str(),
        "status": t.status.as_str(),
        "added_by": t.added_by,
        "created_at": host::invocation::format_timestamp(t.created_at),
        "consented_at": t.consented_at.map(host::invocation::format_timestamp),
        "offboarded_at": t.offboarded_at.map(host::invocation::format_timestamp),
        "app_client_id": t.app_client_id,
    })
}

/// A tenant to register.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "display_name": "Contoso", "cloud": "global"}))]
struct NewTenant {
    #[schema(format = Uuid)]
    tenant_id: String,
    /// 1-256 characters.
    #[schema(min_length = 1, max_length = 256)]
    display_name: String,
    /// `global` (default), `usgov`, `usgovdod` or `china`.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::schemas::CloudName>)]
    cloud: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants",
    operation_id = "createTenant",
    tag = "Tenants",
    security(("entra_admin" = [])),
    request_body = NewTenant,
    responses(
        (status = 201, description = "The tenant, registered", body = TenantBody, links(
            ("GetTenant" = (operation_id = "getTenant", parameters(("tenant_id" = "$response.body#/tenant_id"))))
        )),
        (status = 409, description = "Already registered (an offboarded tenant registers again)", body = ErrorBody),
    )
)]
async fn create(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let new: NewTenant = req.json()?;
    let tenant_id = uuid::Uuid::try_parse(&new.tenant_id)
        .map_err(|_| ApiError::bad_request("tenant_id must be a GUID"))?;
    let display_name = new.display_name.trim().to_string();
    if display_name.is_empty() || display_name.chars().count() > 256 {
        return Err(ApiError::bad_request("display_name: 1-256 characters"));
    }
    let cloud =
        new.cloud.as_deref().unwrap_or("global").parse().map_err(
            |e: entra::cloud::UnknownCloud| ApiError::bad_request(format!("cloud: {e}")),
        )?;
    let tenant = Tenant {
        tenant_id,
        display_name,
        cloud,
        status: TenantStatus::Active,
        added_by: "admin_api".into(),
        created_at: OffsetDateTime::now_utc(),
        consented_at: None,
        offboarded_at: None,
        app_client_id: None,
    };
    let event = trail::event(
        &req.headers,
        tenant_id,
        admin,
        "tenant.create",
        Target::new("tenant", tenant_id).display(tenant.display_name.clone()),
    )
    .change(Change::new(
        "display_name",
        None,
        Some(json!(tenant.display_name)),
    ))
    .change(Change::new("cloud", None, Some(json!(cloud.to_string()))));
    let created = trail::around(app, event, async {
        let created = app.access.tenants.create(&tenant).await?;
        app.access.invalidate_tenant(tenant_id);
        Ok(Made::from(created))
    })
    .await?;
    tracing::info!(%tenant_id, cloud = %cloud, "tenant registered");
    Ok(json_reply(StatusCode::CREATED, &tenant_json(&created)))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    operation_id = "listTenants",
    tag = "Tenants",
    security(("entra_admin" = [])),
    responses((status = 200, description = "Every registered tenant", body = TenantList))
)]
async fn list(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let mut tenants = app.access.tenants.list().await?;
    tenants.sort_by_key(|t| t.created_at);
    let tenants: Vec<Value> = tenants.iter().map(tenant_json).collect();
    Ok(json_reply(StatusCode::OK, &json!({ "tenants": tenants })))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}",
    operation_id = "getTenant",
    tag = "Tenants",
    security(("entra_admin" = [])),
    params(("tenant_id" = Uuid, Path, description = "The tenant's Entra id")),
    responses((status = 200, description = "The tenant", body = TenantBody))
)]
async fn get(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant_id = tenant_param(req)?;
    let tenant = app
        .access
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant_id} is not registered")))?;
    Ok(json_reply(StatusCode::OK, &tenant_json(&tenant)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant_id}",
    operation_id = "offboardTenant",
    tag = "Tenants",
    security(("entra_admin" = [])),
    params(("tenant_id" = Uuid, Path, description = "The tenant's Entra id")),
    responses((status = 200, description = "Offboarded (idempotent): refused everywhere, grants, SCIM token and certificates revoked, data kept", body = OffboardedTenant))
)]
async fn offboard(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let tenant_id = tenant_param(req)?;
    // an unknown tenant is refused before anything is written into a trail under its id
    if app.access.tenants.get(tenant_id).await?.is_none() {
        return Err(not_registered(tenant_id));
    }
    let event = trail::event(
        &req.headers,
        tenant_id,
        admin,
        "tenant.offboard",
        Target::new("tenant", tenant_id),
    );
    let done = trail::around(app, event, async {
        let done = Offboarding::new(&app.access, &app.scim, &*app.sync.states)
            .with_certificates(&app.pki)
            .run(tenant_id)
            .await
            .map_err(|e| offboard_error(tenant_id, e))?;
        let counts = (
            done.count("grants"),
            done.count("certificates"),
            done.count("scim_token"),
        );
        Ok(Made::report(done, move |event| {
            let (grants, certificates, scim_token) = counts;
            let event = event
                .change(Change::new("status", None, Some(json!("offboarded"))))
                .change(Change::new("revoked_grants", None, Some(json!(grants))))
                .change(Change::new(
                    "revoked_certificates",
                    None,
                    Some(json!(certificates)),
                ));
            if scim_token > 0 {
                event.change(Change::secret("scim_token"))
            } else {
                event
            }
        }))
    })
    .await?;
    let mut body = tenant_json(&done.tenant);
    body["revoked_grants"] = json!(done.count("grants"));
    body["revoked_scim_token"] = json!(done.count("scim_token") > 0);
    body["revoked_certificates"] = json!(done.count("certificates"));
    Ok(json_reply(StatusCode::OK, &body))
}

fn not_registered(tenant_id: Uuid) -> ApiError {
    ApiError::not_found(format!("tenant {tenant_id} is not registered"))
}

/// What an offboarding that stopped answers.
fn offboard_error(tenant_id: Uuid, e: OffboardError) -> ApiError {
    match e {
        OffboardError::NotRegistered(_) => not_registered(tenant_id),
        OffboardError::Status(e) => e.into(),
        OffboardError::Incomplete { failed, .. } => {
            let steps: Vec<&str> = failed.iter().map(|(name, _)| *name).collect();
            // the status of the first failure (503 unavailable, 500 unreadable data, ...)
            let (_, first) = failed.into_iter().next().expect("at least one failed step");
            let mut error = ApiError::from(first);
            error.message = format!(
                "tenant {tenant_id} is offboarded and refused everywhere, but these steps did not complete: {}; DELETE it again to complete them",
                steps.join(", ")
            );
            error
        }
    }
}
