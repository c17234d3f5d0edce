//! Certificates for Entra users (`TenantPkiCa`, `PkiPublished`, `EntraProvisionCertificate`,
//! `CertificateRevoke`): the tenant's CA, its published certificate and CRL, issuance to a
//! directory user, revocation. The rules are in the `pki` crate; this module checks the
//! user against the directory and shapes the answers.

use base64::Engine as _;
use directory::{Directory as _, User};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::functions::directory::{certificate_json, tenant_for, user_json};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply};
use crate::trail::{self, Made};
use audit::{Change, Target};

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(POST "/api/v1/tenants/{tenant_id}/pki/ca" => create_ca),
    route!(GET "/api/v1/pki/{tenant_id}/ca.pem" => ca_pem),
    route!(GET "/api/v1/pki/{tenant_id}/ca.crt" => ca_crt),
    route!(GET "/api/v1/pki/{tenant_id}/crl" => crl),
    route!(POST "/api/v1/entra-id/provision-certificate" => provision),
    route!(POST "/api/v1/certificates/{certificate_id}/revoke" => revoke),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_ca, ca_pem, ca_crt, crl, provision, revoke))]
pub struct Api;

impl From<pki::PkiError> for ApiError {
    fn from(e: pki::PkiError) -> ApiError {
        match e {
            pki::PkiError::Invalid(m) => ApiError::bad_request(m),
            pki::PkiError::NotFound(m) => ApiError::not_found(m),
            pki::PkiError::Store(pki::StoreError::Corrupt(m)) => ApiError::internal(m),
            pki::PkiError::Internal(m) => ApiError::internal(m),
            other => ApiError::unavailable(other),
        }
    }
}

fn time(t: time::OffsetDateTime) -> Value {
    Value::String(host::invocation::format_timestamp(t))
}

fn tenant_segment(req: &Request) -> Result<Uuid, ApiError> {
    Uuid::try_parse(req.param("tenant_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("tenant_id must be a GUID"))
}

/// The event of making the tenant's certificate authority.
fn ca_event(req: &Request, tenant: Uuid, admin: audit::Actor, display: &str) -> audit::Event {
    trail::event(
        &req.headers,
        tenant,
        admin,
        "certificate_authority.create",
        Target::new("certificate_authority", tenant).display(display),
    )
    .change(Change::secret("private_key"))
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/pki/ca",
    operation_id = "createTenantCa",
    tag = "Certificates",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The existing CA", body = crate::openapi::schemas::CaBody),
        (status = 201, description = "A new CA, its key made in the vault", body = crate::openapi::schemas::CaBody),
        (status = 404, description = "Unknown tenant, or nothing of that id in it", body = crate::openapi::schemas::ErrorBody),
        (status = 409, description = "The tenant (or user) is not active", body = crate::openapi::schemas::ErrorBody),
    )
)]
async fn create_ca(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let named = tenant_segment(req)?.to_string();
    let tenant_id = tenant_for(app, Some(&named)).await?;
    let tenant = app
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tenant {tenant_id}")))?;
    let existing = app.pki.authority(tenant_id).await?;
    let (authority, created) = match existing {
        Some(authority) => (authority, false),
        None => {
            let event = ca_event(req, tenant_id, admin, &tenant.display_name);
            trail::around(app, event, async {
                let (authority, created) = app
                    .pki
                    .ensure_authority(tenant_id, &tenant.display_name)
                    .await?;
                Ok(Made::report((authority, created), move |event| {
                    // another request made it first: this one changed nothing
                    if created {
                        event
                    } else {
                        event.failed(409, "made by a concurrent request")
                    }
                }))
            })
            .await?
        }
    };
    let info = authority.describe()?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_reply(
        status,
        &json!({
            "tenant_id": tenant_id,
            "subject": info.subject,
            "serial": info.serial,
            "not_before": time(info.not_before),
            "not_after": time(info.not_after),
            "thumbprint_sha256": info.thumbprint,
            "crl_number": authority.crl_number,
            "ca_url": app.pki.ca_url(tenant_id),
            "crl_url": app.pki.crl_url(tenant_id),
            "pem": authority.pem(),
        }),
    ))
}

/// A published file: anonymous, cacheable for a few minutes.
fn published(content_type: &'static str, body: Vec<u8>, max_age: &'static str) -> Response {
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static(max_age));
    response
}

async fn authority_of(app: &App, req: &Request) -> Result<pki::Authority, ApiError> {
    let tenant = tenant_segment(req)?;
    app.pki
        .authority(tenant)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant} has no certificate authority")))
}

#[utoipa::path(
    get,
    path = "/api/v1/pki/{tenant_id}/ca.pem",
    operation_id = "getCaPem",
    tag = "Certificates",
    security(()),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The CA certificate, PEM", content_type = "application/x-pem-file", body = Vec<u8>))
)]
async fn ca_pem(app: &App, req: &Request) -> Result<Response, ApiError> {
    let authority = authority_of(app, req).await?;
    Ok(published(
        "application/x-pem-file",
        authority.pem().into_bytes(),
        "public, max-age=300",
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/pki/{tenant_id}/ca.crt",
    operation_id = "getCaDer",
    tag = "Certificates",
    security(()),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The CA certificate, DER", content_type = "application/pkix-cert", body = Vec<u8>))
)]
async fn ca_crt(app: &App, req: &Request) -> Result<Response, ApiError> {
    let authority = authority_of(app, req).await?;
    Ok(published(
        "application/pkix-cert",
        authority.der,
        "public, max-age=300",
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/pki/{tenant_id}/crl",
    operation_id = "getCrl",
    tag = "Certificates",
    security(()),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The DER CRL signed by the tenant's CA", content_type = "application/pkix-crl", body = Vec<u8>))
)]
async fn crl(app: &App, req: &Request) -> Result<Response, ApiError> {
    let tenant = tenant_segment(req)?;
    let der = app.pki.crl(tenant).await?.ok_or_else(|| {
        ApiError::not_found(format!("tenant {tenant} has no certificate authority"))
    })?;
    // short: a revocation must reach relying parties quickly
    Ok(published("application/pkix-crl", der, "public, max-age=60"))
}

/// A certificate to issue to a directory user.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user_id": "2819c223-7f76-453a-919d-413861904646", "certificate_type": "client_auth", "validity_days": 365}))]
struct ProvisionBody {
    #[schema(format = Uuid)]
    user_id: String,
    /// `client_auth` (default), `email_protection` or `code_signing`.
    #[schema(value_type = Option<crate::openapi::schemas::CertificateUse>)]
    certificate_type: Option<String>,
    /// 1-3650 (default `CERT_DEFAULT_VALIDITY_DAYS`).
    #[schema(minimum = 1, maximum = 3650)]
    validity_days: Option<i64>,
    /// 2048, 3072 or 4096 (default `CERT_DEFAULT_KEY_SIZE`).
    #[schema(minimum = 2048, maximum = 4096, multiple_of = 1024)]
    key_size: Option<i64>,
    /// A PEM PKCS#10 request: only its public key is used.
    csr: Option<String>,
    /// `pkcs8` (default) or `pkcs12` (not with a CSR).
    #[schema(value_type = Option<crate::openapi::schemas::KeyFormat>)]
    key_format: Option<String>,
    /// May be left out when exactly one tenant is active (or given in the query).
    #[schema(format = Uuid)]
    tenant_id: Option<String>,
}

/// The user a certificate may be issued to: in this tenant's directory, from Entra, active.
async fn eligible_user(app: &App, tenant: Uuid, user_id: &str) -> Result<User, ApiError> {
    let id =
        Uuid::try_parse(user_id).map_err(|_| ApiError::bad_request("user_id must be a GUID"))?;
    let user = app
        .directory
        .user(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id} in tenant {tenant}")))?;
    if !(user.sources.graph || user.sources.scim) {
        return Err(ApiError::conflict(format!(
            "user {id} did not come from Entra (Graph sync or SCIM)"
        )));
    }
    if !user.is_active() {
        return Err(ApiError::conflict(format!(
            "user {id} is not active (disabled or deleted in Entra)"
        )));
    }
    Ok(user)
}

#[utoipa::path(
    post,
    path = "/api/v1/entra-id/provision-certificate",
    operation_id = "provisionCertificate",
    tag = "Certificates",
    security(("entra_admin" = [])),
    params(("tenant_id" = Option<uuid::Uuid>, Query)),
    request_body = ProvisionBody,
    responses(
        (status = 201, description = "The certificate, and its private key once when made here (`Cache-Control: no-store`)", body = crate::openapi::schemas::ProvisionedCertificate, links(
            ("RevokeCertificate" = (operation_id = "revokeCertificate", parameters(("certificate_id" = "$response.body#/certificate/id"), ("tenant_id" = "$response.body#/certificate/tenant_id"))))
        )),
        (status = 404, description = "Unknown tenant, or nothing of that id in it", body = crate::openapi::schemas::ErrorBody),
        (status = 409, description = "The tenant (or user) is not active", body = crate::openapi::schemas::ErrorBody),
    )
)]
async fn provision(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let body: ProvisionBody = req.json()?;
    let named = match (req.query_param("tenant_id")?, &body.tenant_id) {
        (Some(q), Some(b)) if !q.eq_ignore_ascii_case(b) => {
            return Err(ApiError::bad_request(
                "tenant_id differs between the query and the body",
            ));
        }
        (q, b) => q.or_else(|| b.clone()),
    };
    let tenant_id = tenant_for(app, named.as_deref()).await?;
    let kind = match body.certificate_type.as_deref() {
        None => pki::CertificateType::ClientAuth,
        Some(t) => pki::CertificateType::parse(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "certificate_type {t:?} is not offered: client_auth, email_protection or code_signing"
            ))
        })?,
    };
    let validity_days = match body.validity_days {
        None => app.certificates.default_validity_days,
        Some(d) => u32::try_from(d)
            .ok()
            .filter(|d| (1..=pki::MAX_VALIDITY_DAYS).contains(d))
            .ok_or_else(|| ApiError::bad_request("validity_days must be 1 to 3650"))?,
    };
    let key_size = match body.key_size {
        None => None,
        Some(k) => Some(
            u32::try_from(k)
                .ok()
                .filter(|k| pki::KEY_SIZES.contains(k))
                .ok_or_else(|| ApiError::bad_request("key_size must be 2048, 3072 or 4096"))?,
        ),
    };
    let key_format = match body.key_format.as_deref() {
        None | Some("pkcs8") => pki::KeyFormat::Pkcs8,
        Some("pkcs12") => pki::KeyFormat::Pkcs12,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "key_format {other:?} is not offered: pkcs8 or pkcs12"
            )));
        }
    };
    let csr = body.csr.filter(|c| !c.trim().is_empty());
    let user = eligible_user(app, tenant_id, &body.user_id).await?;
    let tenant = app
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tenant {tenant_id}")))?;
    let request = pki::IssueRequest {
        holder: pki::Holder {
            tenant: tenant_id,
            user_id: user.id,
            entra_id: user.entra_id,
            upn: user.upn.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
        },
        kind,
        validity_days,
        // a CSR brings its own key; without one, the default size applies
        key_size: if csr.is_some() {
            key_size
        } else {
            Some(key_size.unwrap_or(app.certificates.default_key_size))
        },
        csr,
        key_format,
    };
    let event = trail::event(
        &req.headers,
        tenant_id,
        admin.clone(),
        "certificate.issue",
        Target::new("certificate", ""),
    );
    let issue = trail::around(app, event, async {
        let issued = app.pki.issue(request, &tenant.display_name).await?;
        // a disable, delete or offboarding that ran while the certificate was made did not
        // see it: check again now that it is stored, and take it back if so
        let still_active = app
            .directory
            .user(tenant_id, user.id)
            .await?
            .is_some_and(|u| u.is_active())
            && app
                .tenants
                .get(tenant_id)
                .await?
                .is_some_and(|t| t.status == crate::domain::TenantStatus::Active);
        if !still_active {
            app.pki
                .revoke_inactive_users(tenant_id, &[user.id], "issuance_recheck")
                .await?;
            return Err(ApiError::conflict(
                "the user or tenant stopped being active while the certificate was made; it was revoked",
            ));
        }
        let r = &issued.record;
        let mut changes = vec![
            Change::new("user_id", None, Some(json!(r.user_id))),
            Change::new("serial", None, Some(json!(r.serial))),
            Change::new("thumbprint", None, Some(json!(r.thumbprint))),
            Change::new(
                "not_after",
                None,
                Some(json!(host::invocation::format_timestamp(r.not_after))),
            ),
        ];
        if issued.private_key.is_some() {
            changes.push(Change::secret("private_key"));
        }
        let target = Target::new("certificate", r.id).display(r.subject.clone());
        Ok(Made::report(issued, move |mut event| {
            event.target = target;
            event.changes(changes)
        }))
    });
    // the first issuance makes the tenant's CA (once its checks pass), a change of its own:
    // recorded around the issuance, and as made whenever the CA exists afterwards, even if
    // the issuance itself then failed
    let issued = if app.pki.authority(tenant_id).await?.is_some() {
        issue.await?
    } else {
        let event = ca_event(req, tenant_id, admin, &tenant.display_name);
        trail::around(app, event, async {
            match issue.await {
                Ok(issued) => Ok(Made::from(Ok(issued))),
                Err(e) if app.pki.authority(tenant_id).await?.is_some() => Ok(Made::from(Err(e))),
                Err(e) => Err(e),
            }
        })
        .await??
    };
    let mut certificate = certificate_json(&issued.record);
    certificate["chain"] = json!(issued.chain);
    let private_key = match issued.private_key {
        None => Value::Null,
        Some(pki::PrivateKey::Pkcs8Pem(pem)) => json!({"format": "pkcs8", "pem": pem}),
        Some(pki::PrivateKey::Pkcs12 { der, password }) => json!({
            "format": "pkcs12",
            "pkcs12": base64::engine::general_purpose::STANDARD.encode(der),
            "password": password,
        }),
    };
    let mut user_value = user_json(&user);
    user_value["tenant_id"] = json!(tenant_id);
    // the key is in this answer only: no cache may keep it
    Ok(no_store(json_reply(
        StatusCode::CREATED,
        &json!({
            "certificate": certificate,
            "private_key": private_key,
            "user": user_value,
        }),
    )))
}

/// Why a certificate is revoked (the body may be empty).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "keyCompromise", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47"}))]
struct RevokeBody {
    /// An RFC 5280 reason name; `unspecified` by default.
    #[schema(value_type = Option<crate::openapi::schemas::RevocationReasonName>)]
    reason: Option<String>,
    tenant_id: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/certificates/{certificate_id}/revoke",
    operation_id = "revokeCertificate",
    tag = "Certificates",
    security(("entra_admin" = [])),
    params(("certificate_id" = uuid::Uuid, Path), ("tenant_id" = Option<uuid::Uuid>, Query)),
    request_body(content = Option<RevokeBody>, description = "Optional", example = json!({"reason": "keyCompromise", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47"})),
    responses(
        (status = 200, description = "The certificate, revoked (again: the first revocation, unchanged)", body = crate::openapi::schemas::UserCertificate),
        (status = 404, description = "Unknown tenant, or nothing of that id in it", body = crate::openapi::schemas::ErrorBody),
        (status = 409, description = "The tenant (or user) is not active", body = crate::openapi::schemas::ErrorBody),
    )
)]
async fn revoke(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let body: RevokeBody = if req.body.is_empty() {
        RevokeBody::default()
    } else {
        req.json()?
    };
    let named = req.query_param("tenant_id")?.or(body.tenant_id);
    let tenant = tenant_for(app, named.as_deref()).await?;
    let id = Uuid::try_parse(req.param("certificate_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("certificate_id must be a GUID"))?;
    let reason = match body.reason.as_deref() {
        None => pki::RevocationReason::Unspecified,
        Some(r) => pki::RevocationReason::parse(r).ok_or_else(|| {
            ApiError::bad_request(format!(
                "reason {r:?} is not an RFC 5280 reason: {}",
                pki::RevocationReason::names().join(", ")
            ))
        })?,
    };
    let event = trail::event(
        &req.headers,
        tenant,
        admin,
        "certificate.revoke",
        Target::new("certificate", id),
    );
    let shown = trail::around(app, event, async {
        let record = app.pki.revoke(tenant, id, reason, "admin").await?;
        let shown = certificate_json(&record);
        let (status, reason) = (shown["status"].clone(), shown.get("reason").cloned());
        Ok(Made::report(shown, move |mut event| {
            event.target = event.target.display(record.subject);
            event
                .change(Change::new("status", Some(json!("active")), Some(status)))
                .change(Change::new("reason", None, reason))
        }))
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &shown))
}
