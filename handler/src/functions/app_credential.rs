//! `AppCredentialCertificate` and `TenantCredentialCertificate`: certificates whose keys
//! stay in the vault. `POST/GET /api/v1/app-credential/certificate` for the service's own
//! app (per cloud); `POST/GET/DELETE /api/v1/tenants/{tenant_id}/credential-certificate` for
//! a tenant that uses its own app registration (customer-owned application mode).

use serde::Deserialize;
use serde_json::json;
use warp::Reply as _;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::app_credentials::{CertificateExport, CredentialNames};
use crate::auth;
use crate::openapi::schemas::CredentialCertificate;
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply, no_content};
use crate::trail::{self, Made};
use audit::{Change, Target};

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(POST "/api/v1/app-credential/certificate" => create_service),
    route!(GET "/api/v1/app-credential/certificate" => get_service),
    route!(POST "/api/v1/tenants/{tenant_id}/credential-certificate" => create_tenant),
    route!(GET "/api/v1/tenants/{tenant_id}/credential-certificate" => get_tenant),
    route!(DELETE "/api/v1/tenants/{tenant_id}/credential-certificate" => delete_tenant),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_service, get_service, create_tenant, get_tenant, delete_tenant))]
pub struct Api;

fn tenant_param(req: &Request) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(req.param("tenant_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("tenant_id must be a GUID"))
}

/// `?format=pem` asks for the PEM itself.
fn wants_pem(req: &Request) -> Result<bool, ApiError> {
    Ok(req.query_param("format")?.as_deref() == Some("pem"))
}

/// Which cloud's app the certificate is for (the body may be empty: `global`).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cloud": "global"}))]
struct CloudBody {
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::schemas::CloudName>)]
    cloud: Option<String>,
}

/// The tenant's own app registration.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"client_id": "6e74172b-be56-4843-9ff4-e66a39bb12e3"}))]
struct TenantAppBody {
    #[schema(format = Uuid)]
    client_id: String,
}

fn cloud_of(raw: Option<&str>) -> Result<entra::Cloud, ApiError> {
    raw.unwrap_or("global")
        .parse()
        .map_err(|e: entra::cloud::UnknownCloud| ApiError::bad_request(format!("cloud: {e}")))
}

/// Only an unreachable vault is worth a retry; every other vault error is a fault here.
fn vault_error(e: vault::VaultError) -> ApiError {
    match e {
        vault::VaultError::Unavailable(_) => ApiError::unavailable(e),
        _ => ApiError::internal(e),
    }
}

/// A new certificate, its event adding its thumbprint (known once it is made).
fn with_thumbprint(export: CertificateExport) -> Made<CertificateExport> {
    let thumbprint = entra::credentials::thumbprint_s256(&export.der);
    Made::report(export, move |event| {
        event.change(Change::new("thumbprint", None, Some(json!(thumbprint))))
    })
}

/// JSON, or the PEM itself with `?format=pem`.
fn export_reply(
    status: StatusCode,
    export: &CertificateExport,
    extra: serde_json::Value,
    pem: bool,
) -> Response {
    if pem {
        let mut response = warp::reply::with_status(export.pem(), status).into_response();
        response.headers_mut().insert(
            "content-type",
            warp::http::HeaderValue::from_static("application/x-pem-file"),
        );
        return response;
    }
    let mut body = export.to_json();
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    json_reply(status, &body)
}

#[utoipa::path(
    post,
    path = "/api/v1/app-credential/certificate",
    operation_id = "createServiceCertificate",
    tag = "App credentials",
    security(("entra_admin" = [])),
    request_body(content = Option<CloudBody>, description = "Optional", example = json!({"cloud": "global"})),
    responses((status = 201, description = "A new key in the vault and its self-signed certificate, to upload to the app registration", body = crate::openapi::schemas::CredentialCertificate))
)]
async fn create_service(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let request: CloudBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        CloudBody::default()
    } else {
        req.json()?
    };
    let cloud = cloud_of(request.cloud.as_deref())?;
    let event = trail::event(
        &req.headers,
        app.entra.admin_tenant_id,
        admin,
        "app_credential.create",
        Target::new("app_credential", cloud.as_str()),
    )
    .change(Change::secret("private_key"));
    let export = trail::around(app, event, async {
        let export = app
            .credentials
            .create_certificate(
                &CredentialNames::service(cloud),
                &format!("entra-connector {cloud}"),
            )
            .await
            .map_err(vault_error)?;
        Ok(with_thumbprint(export))
    })
    .await?;
    let thumbprint = entra::credentials::thumbprint_s256(&export.der);
    tracing::info!(%cloud, %thumbprint, "app credential certificate created");
    let extra = json!({"cloud": cloud.as_str(), "client_id": app.entra.client_id_in(cloud)});
    Ok(export_reply(StatusCode::CREATED, &export, extra, false))
}

#[utoipa::path(
    get,
    path = "/api/v1/app-credential/certificate",
    operation_id = "getServiceCertificate",
    tag = "App credentials",
    security(("entra_admin" = [])),
    params(
        ("cloud" = Option<crate::openapi::schemas::CloudName>, Query),
        ("format" = Option<String>, Query, description = "`pem`: the PEM itself (application/x-pem-file)"),
    ),
    responses(
        (status = 200, description = "The certificate", content(
            (CredentialCertificate = "application/json"),
            (String = "application/x-pem-file"),
        )),
        (status = 404, description = "None created yet", body = crate::openapi::schemas::ErrorBody),
    )
)]
async fn get_service(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let cloud = cloud_of(req.query_param("cloud")?.as_deref())?;
    let export = app
        .credentials
        .export(&CredentialNames::service(cloud))
        .await
        .map_err(vault_error)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no certificate for the {cloud} app yet; POST creates one"
            ))
        })?;
    let extra = json!({"cloud": cloud.as_str(), "client_id": app.entra.client_id_in(cloud)});
    Ok(export_reply(
        StatusCode::OK,
        &export,
        extra,
        wants_pem(req)?,
    ))
}

async fn registered(app: &App, req: &Request) -> Result<crate::domain::Tenant, ApiError> {
    let tenant_id = tenant_param(req)?;
    app.access
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant_id} is not registered")))
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/credential-certificate",
    operation_id = "createTenantCertificate",
    tag = "App credentials",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = TenantAppBody,
    responses((status = 201, description = "Customer-owned application mode: the tenant's Graph calls use its own app with this certificate", body = crate::openapi::schemas::CredentialCertificate))
)]
async fn create_tenant(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let tenant = registered(app, req).await?;
    let request: TenantAppBody = req.json()?;
    let client_id = uuid::Uuid::try_parse(&request.client_id)
        .map_err(|_| ApiError::bad_request("client_id must be a GUID"))?;
    let event = trail::event(
        &req.headers,
        tenant.tenant_id,
        admin,
        "app_credential.create",
        Target::new("tenant", tenant.tenant_id).display(tenant.display_name.clone()),
    )
    .change(Change::new(
        "app_client_id",
        tenant.app_client_id.map(|c| json!(c)),
        Some(json!(client_id)),
    ))
    .change(Change::secret("private_key"));
    let export = trail::around(app, event, async {
        let export = app
            .credentials
            .create_certificate(
                &CredentialNames::tenant(tenant.tenant_id),
                &format!("entra-connector {}", tenant.tenant_id),
            )
            .await
            .map_err(vault_error)?;
        // the tenant may have gone since it was read (a pending tenant dropped by housekeeping)
        let switched = app
            .access
            .tenants
            .set_app(tenant.tenant_id, Some(client_id))
            .await?;
        app.access.invalidate_tenant(tenant.tenant_id);
        if switched.is_none() {
            return Err(ApiError::not_found(format!(
                "tenant {} is not registered",
                tenant.tenant_id
            )));
        }
        Ok(with_thumbprint(export))
    })
    .await?;
    tracing::info!(tenant_id = %tenant.tenant_id, %client_id, "tenant switched to its own app registration");
    let extra = json!({"tenant_id": tenant.tenant_id, "client_id": client_id, "cloud": tenant.cloud.as_str()});
    Ok(export_reply(StatusCode::CREATED, &export, extra, false))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/credential-certificate",
    operation_id = "getTenantCertificate",
    tag = "App credentials",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path), ("format" = Option<String>, Query, description = "`pem`: the PEM itself (application/x-pem-file)")),
    responses((status = 200, description = "The certificate", content(
            (CredentialCertificate = "application/json"),
            (String = "application/x-pem-file"),
        )),)
)]
async fn get_tenant(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let Some(client_id) = tenant.app_client_id else {
        return Err(ApiError::not_found(
            "this tenant uses the service's app; POST a client_id to use its own",
        ));
    };
    let export = app
        .credentials
        .export(&CredentialNames::tenant(tenant.tenant_id))
        .await
        .map_err(vault_error)?
        .ok_or_else(|| ApiError::not_found("no certificate for this tenant's app"))?;
    let extra = json!({"tenant_id": tenant.tenant_id, "client_id": client_id, "cloud": tenant.cloud.as_str()});
    Ok(export_reply(
        StatusCode::OK,
        &export,
        extra,
        wants_pem(req)?,
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant_id}/credential-certificate",
    operation_id = "deleteTenantCertificate",
    tag = "App credentials",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Back to the service's app"))
)]
async fn delete_tenant(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let tenant_id = tenant_param(req)?;
    // an unknown tenant is refused before anything is written into a trail under its id
    registered(app, req).await?;
    let event = trail::event(
        &req.headers,
        tenant_id,
        admin,
        "app_credential.delete",
        Target::new("tenant", tenant_id),
    )
    .change(Change::new("app_client_id", None, None));
    trail::around(app, event, async {
        let switched = app.access.tenants.set_app(tenant_id, None).await?;
        app.access.invalidate_tenant(tenant_id);
        if switched.is_none() {
            return Err(ApiError::not_found(format!(
                "tenant {tenant_id} is not registered"
            )));
        }
        Ok(Made::from(()))
    })
    .await?;
    Ok(no_content())
}
