//! HR write-back: `HrConnection`, `HrImport`, `HrRules`, `HrPlan`, `HrApply`,
//! `HrResetPassword` under `/api/v1/tenants/{tenant_id}/hr/...`, and the `HrDue` timer that
//! applies dated events (hires, leavers) when they fall due. Adapters only: the rules,
//! plans and the apply engine are in the `hr` crate, the Graph side in `writeback`.

use futures::future::BoxFuture;
use host::{InvocationRequest, InvocationResponse, InvokeError};
use hr::{
    Connection, ConnectionType, CredentialKind, HrRecordStore as _, HrSettingsStore as _, Plan,
    Rules,
};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::openapi::schemas::{
    ErrorBody, HrConnectionBody, HrConnectionTest, HrConsentRequired, HrImportJson, HrImported,
    HrLink, HrLinked, HrRowsRejected, HrTemporaryPassword,
};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply, no_content};
use crate::trail::Made;
use crate::writeback::{APP_PERMISSIONS, WritebackError, refresh_name, secret_name};

/// Largest import body (10,000 rows).
const MAX_IMPORT_BODY: usize = 16 * 1024 * 1024;

/// How long a plan may be applied after it was computed.
const PLAN_TTL: time::Duration = time::Duration::hours(24);

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(PUT "/api/v1/tenants/{tenant_id}/hr/connection" => put_connection),
    route!(GET "/api/v1/tenants/{tenant_id}/hr/connection" => get_connection),
    route!(DELETE "/api/v1/tenants/{tenant_id}/hr/connection" => delete_connection),
    route!(POST "/api/v1/tenants/{tenant_id}/hr/connection/test" => test_connection),
    route!(GET "/api/v1/tenants/{tenant_id}/hr/connection/link" => link),
    route!(GET "/api/v1/hr/connection/callback" => callback),
    Route {
        max_body: MAX_IMPORT_BODY,
        ..route!(POST "/api/v1/tenants/{tenant_id}/hr/import" => import)
    },
    route!(PUT "/api/v1/tenants/{tenant_id}/hr/employees/{employee_id}" => put_employee),
    route!(GET "/api/v1/tenants/{tenant_id}/hr/employees/{employee_id}" => get_employee),
    route!(GET "/api/v1/tenants/{tenant_id}/hr/rules" => get_rules),
    route!(PUT "/api/v1/tenants/{tenant_id}/hr/rules" => put_rules),
    route!(POST "/api/v1/tenants/{tenant_id}/hr/plan" => plan),
    route!(POST "/api/v1/tenants/{tenant_id}/hr/apply" => apply),
    route!(POST "/api/v1/tenants/{tenant_id}/hr/employees/{employee_id}/reset-password" => reset_password),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    put_connection,
    get_connection,
    delete_connection,
    test_connection,
    link,
    callback,
    import,
    put_employee,
    get_employee,
    get_rules,
    put_rules,
    plan,
    apply,
    reset_password
))]
pub struct Api;

/// How long a delegated link's authorize URL works.
const LINK_TTL: time::Duration = time::Duration::minutes(10);

/// The one place write-back errors become HTTP answers.
fn api_error(e: WritebackError) -> ApiError {
    use entra::credentials::TokenError;
    use entra::graph::GraphErrorClass as C;
    match e {
        WritebackError::Graph(entra::graph::GraphError::Token(
            TokenError::GrantRevoked(why) | TokenError::ConsentMissing(why),
        )) => ApiError::new(
            StatusCode::CONFLICT,
            "relink_required",
            format!(
                "the HR connection no longer works ({why}); link it again: GET /api/v1/tenants/{{tenant_id}}/hr/connection/link"
            ),
        ),
        WritebackError::NotConnected | WritebackError::NoRules => {
            ApiError::new(StatusCode::CONFLICT, "not_configured", e.to_string())
        }
        WritebackError::NotConfigured(_) => {
            ApiError::new(StatusCode::CONFLICT, "not_configured", e.to_string())
        }
        WritebackError::InvalidRules(_) => ApiError::bad_request(e.to_string()),
        WritebackError::NoUser(m) => ApiError::not_found(m),
        // sending the same again cannot work: the value must be made smaller
        WritebackError::Store(hr::HrStoreError::TooLarge(m)) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_large",
            format!("too large to store: {m}"),
        ),
        WritebackError::Store(s) => ApiError::unavailable(s),
        WritebackError::Directory(d) => d.into(),
        WritebackError::Vault(v) => match v {
            vault::VaultError::Unavailable(_) => ApiError::unavailable(v),
            _ => ApiError::internal(v),
        },
        WritebackError::Graph(g) => match g.class() {
            C::AccessRevoked { reason } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "tenant_access_refused",
                format!("the tenant refused the HR connection: {reason}"),
            ),
            C::Throttled { .. } | C::Transient | C::ResyncRequired => ApiError::unavailable(g),
            C::NotFound | C::Rejected => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "graph_rejected",
                format!("Microsoft Graph refused the request: {g}"),
            ),
        },
    }
}

/// The event of an HR admin change, recorded around it by [`crate::trail::around`].
fn change_event(
    req: &Request,
    tenant: Uuid,
    actor: audit::Actor,
    action: &str,
    target: audit::Target,
    changes: Vec<audit::Change>,
) -> audit::Event {
    crate::trail::event(&req.headers, tenant, actor, action, target).changes(changes)
}

fn store_error(e: hr::HrStoreError) -> ApiError {
    api_error(WritebackError::Store(e))
}

async fn registered(app: &App, req: &Request) -> Result<crate::domain::Tenant, ApiError> {
    let tenant_id = Uuid::try_parse(req.param("tenant_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("tenant_id must be a GUID"))?;
    app.access
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant_id} is not registered")))
}

/// A customer-owned HR connection: the tenant's own app registration (a delegated one is
/// made by signing in instead).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "customer_owned", "client_id": "6e74172b-be56-4843-9ff4-e66a39bb12e3", "credential": "certificate"}))]
struct ConnectionBody {
    /// `customer_owned` (`delegated` is refused: link it instead).
    #[serde(rename = "type")]
    kind: ConnectionType,
    /// The app registration's client id (required).
    #[schema(format = Uuid)]
    client_id: Option<String>,
    /// The tenant's cloud unless named.
    #[schema(value_type = Option<crate::openapi::schemas::CloudName>)]
    cloud: Option<String>,
    /// `certificate` (default) or `secret`.
    credential: Option<CredentialKind>,
    client_secret: Option<String>,
}

fn connection_json(c: &Connection) -> serde_json::Value {
    let mut v = serde_json::to_value(c).expect("serializes");
    if c.kind == ConnectionType::CustomerOwned {
        v["permissions_needed"] =
            json!(APP_PERMISSIONS.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    }
    v
}

#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant_id}/hr/connection",
    operation_id = "putHrConnection",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = ConnectionBody,
    responses(
        (status = 200, description = "The connection, replacing any earlier one", body = HrConnectionBody),
        (status = 409, description = "No credential certificate for the tenant yet (`no_certificate`)", body = ErrorBody),
    )
)]
async fn put_connection(app: &App, req: &Request) -> Result<Response, ApiError> {
    let caller = auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let body: ConnectionBody = req.json()?;
    if body.kind == ConnectionType::Delegated {
        return Err(ApiError::bad_request(
            "a delegated connection is made by signing in: GET /api/v1/tenants/{tenant_id}/hr/connection/link",
        ));
    }
    let client_id = body
        .client_id
        .as_deref()
        .and_then(|c| Uuid::try_parse(c).ok())
        .ok_or_else(|| ApiError::bad_request("client_id must be a GUID"))?;
    let cloud: entra::Cloud = match body.cloud.as_deref() {
        None => tenant.cloud,
        Some(c) => c.parse().map_err(|e: entra::cloud::UnknownCloud| {
            ApiError::bad_request(format!("cloud: {e}"))
        })?,
    };
    let credential = body.credential.unwrap_or(CredentialKind::Certificate);
    match (credential, &body.client_secret) {
        (CredentialKind::Certificate, Some(_)) => {
            return Err(ApiError::bad_request(
                "client_secret is only taken with \"credential\": \"secret\"",
            ));
        }
        (CredentialKind::Certificate, None) => {
            let names = crate::app_credentials::CredentialNames::tenant(tenant.tenant_id);
            let has = app
                .credentials
                .certificate_credential(&names)
                .await
                .map_err(|e| api_error(e.into()))?
                .is_some();
            if !has {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "no_certificate",
                    "no credential certificate for this tenant: POST /api/v1/tenants/{tenant_id}/credential-certificate, upload it to the app registration, then PUT the connection again",
                ));
            }
        }
        (CredentialKind::Secret, None) => {
            return Err(ApiError::bad_request(
                "\"credential\": \"secret\" needs client_secret",
            ));
        }
        (CredentialKind::Secret, Some(secret)) => {
            if secret.trim().is_empty() {
                return Err(ApiError::bad_request("client_secret is empty"));
            }
        }
    }
    let connection = Connection {
        tenant_id: tenant.tenant_id,
        kind: ConnectionType::CustomerOwned,
        cloud: cloud.as_str().to_string(),
        client_id: Some(client_id),
        credential: Some(credential),
        linked_by: caller
            .object_id()
            .map(|o| format!("admin {o}"))
            .unwrap_or_else(|| "admin".into()),
        linked_at: OffsetDateTime::now_utc(),
        last_success: None,
        last_error: None,
    };
    let mut changes = audit::diff(&serde_json::Value::Null, &connection_json(&connection));
    if credential == CredentialKind::Secret {
        changes.push(audit::Change::secret("client_secret"));
    }
    let event = change_event(
        req,
        tenant.tenant_id,
        crate::trail::admin(&caller),
        "hr.connection.set",
        audit::Target::new("hr_connection", tenant.tenant_id).display("customer_owned"),
        changes,
    );
    crate::trail::around(app, event, async {
        if let Some(secret) = body.client_secret.as_deref() {
            app.vault
                .set_secret(&secret_name(tenant.tenant_id), secret)
                .await
                .map_err(|e| api_error(e.into()))?;
        }
        app.hr
            .save_connection(&app.vault, &connection)
            .await
            .map_err(api_error)?;
        Ok(Made::from(()))
    })
    .await?;
    tracing::info!(tenant_id = %tenant.tenant_id, %client_id, %cloud, "HR connection set (customer-owned)");
    Ok(json_reply(StatusCode::OK, &connection_json(&connection)))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/hr/connection",
    operation_id = "getHrConnection",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The connection", body = HrConnectionBody))
)]
async fn get_connection(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let c = app
        .hr
        .store
        .connection(tenant.tenant_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("the tenant has no HR connection"))?;
    Ok(json_reply(StatusCode::OK, &connection_json(&c)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant_id}/hr/connection",
    operation_id = "deleteHrConnection",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Deleted, with what the vault kept for it"))
)]
async fn delete_connection(app: &App, req: &Request) -> Result<Response, ApiError> {
    let caller = auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let missing = || ApiError::not_found("the tenant has no HR connection");
    app.hr
        .store
        .connection(tenant.tenant_id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    let event = change_event(
        req,
        tenant.tenant_id,
        crate::trail::admin(&caller),
        "hr.connection.delete",
        audit::Target::new("hr_connection", tenant.tenant_id),
        Vec::new(),
    );
    crate::trail::around(app, event, async {
        if !app
            .hr
            .store
            .delete_connection(tenant.tenant_id)
            .await
            .map_err(store_error)?
        {
            // deleted by a concurrent request since it was read
            return Err(missing());
        }
        for name in [
            secret_name(tenant.tenant_id),
            refresh_name(tenant.tenant_id),
        ] {
            app.vault.delete_secret(&name).await.ok();
        }
        Ok(Made::from(()))
    })
    .await?;
    Ok(no_content())
}

fn random_b64(bytes: usize) -> String {
    use base64::Engine as _;
    let mut b = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut b).expect("the system random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn sha256_b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        s.as_bytes(),
    ))
}

fn redirect_uri(app: &App) -> String {
    format!(
        "{}/api/v1/hr/connection/callback",
        app.public_base_url.as_str().trim_end_matches('/')
    )
}

/// A new single-use link: Microsoft's authorize URL (auth code + PKCE) in the tenant's cloud.
async fn new_link(
    app: &App,
    tenant: Uuid,
    cloud: entra::Cloud,
) -> Result<(String, OffsetDateTime), ApiError> {
    let state = random_b64(32);
    let verifier = random_b64(32);
    let expires_at = OffsetDateTime::now_utc() + LINK_TTL;
    app.hr
        .store
        .put_link(
            &sha256_b64(&state),
            &hr::DelegatedLink {
                tenant_id: tenant,
                cloud: cloud.as_str().into(),
                verifier: verifier.clone(),
                expires_at,
            },
        )
        .await
        .map_err(store_error)?;
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/authorize?client_id={}&response_type=code&response_mode=query&redirect_uri={}&scope={}&state={}&code_challenge={}&code_challenge_method=S256",
        app.entra.endpoints.login(cloud),
        app.entra.client_id_in(cloud),
        enc(&redirect_uri(app)),
        enc(&crate::writeback::delegated_scope(cloud)),
        enc(&state),
        sha256_b64(&verifier),
    );
    Ok((url, expires_at))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/hr/connection/link",
    operation_id = "getHrConnectionLink",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(
        ("tenant_id" = uuid::Uuid, Path),
        ("cloud" = Option<crate::openapi::schemas::CloudName>, Query, description = "The tenant's cloud unless named"),
    ),
    responses((status = 200, description = "A single-use sign-in link (ten minutes) for a delegated connection", body = HrLink))
)]
async fn link(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let cloud = match req.query_param("cloud")? {
        None => tenant.cloud,
        Some(c) => c.parse().map_err(|e: entra::cloud::UnknownCloud| {
            ApiError::bad_request(format!("cloud: {e}"))
        })?,
    };
    let (url, expires_at) = new_link(app, tenant.tenant_id, cloud).await?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "authorize_url": url,
            "expires_at": host::invocation::format_timestamp(expires_at),
            "scopes": crate::writeback::delegated_scope(cloud),
        }),
    ))
}

/// Consent missing for a scope: said so, with a fresh link to try again.
async fn consent_required(
    app: &App,
    tenant: Uuid,
    cloud: entra::Cloud,
    why: &str,
) -> Result<Response, ApiError> {
    let (url, _) = new_link(app, tenant, cloud).await?;
    Ok(json_reply(
        StatusCode::BAD_REQUEST,
        &json!({
            "error": "consent_required",
            "message": format!("consent is missing for a permission the connection needs ({why}); an administrator must consent, then link again"),
            "relink_url": url,
        }),
    ))
}

/// Microsoft's redirect back (anonymous: the browser of the administrator signing in).
#[utoipa::path(
    get,
    path = "/api/v1/hr/connection/callback",
    operation_id = "hrConnectionCallback",
    tag = "HR write-back",
    security(()),
    params(
        ("state" = Option<String>, Query, description = "The link's state, as sent to Microsoft"),
        ("code" = Option<String>, Query, description = "The authorization code"),
        ("error" = Option<String>, Query, description = "Microsoft's error, instead of a code"),
        ("error_description" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "The delegated connection, linked", body = HrLinked),
        (status = 400, description = "A parameter is missing, the link was used or has expired, or Microsoft answered an error; `consent_required` carries a fresh link", body = HrConsentRequired),
        (status = 403, description = "The signed-in user is not of the tenant being linked (`wrong_tenant`)", body = ErrorBody),
        (status = 409, description = "The service has no credential in the link's cloud (`not_configured`)", body = ErrorBody),
        (status = 502, description = "The tenant refused the connection (`tenant_access_refused`) or Microsoft Graph refused the request (`graph_rejected`)", body = ErrorBody),
    )
)]
async fn callback(app: &App, req: &Request) -> Result<Response, ApiError> {
    let state = req
        .query_param("state")?
        .ok_or_else(|| ApiError::bad_request("state is missing"))?;
    let link = app
        .hr
        .store
        .take_link(&sha256_b64(&state))
        .await
        .map_err(store_error)?
        .filter(|l| OffsetDateTime::now_utc() < l.expires_at)
        .ok_or_else(|| {
            ApiError::bad_request("the link was used or has expired; ask for a new one")
        })?;
    let cloud: entra::Cloud = link
        .cloud
        .parse()
        .map_err(|e: entra::cloud::UnknownCloud| ApiError::internal(e))?;
    if let Some(error) = req.query_param("error")? {
        let description = req.query_param("error_description")?.unwrap_or_default();
        let first = description.lines().next().unwrap_or_default().to_string();
        if description.contains("AADSTS65001") {
            return consent_required(app, link.tenant_id, cloud, &first).await;
        }
        return Err(ApiError::bad_request(format!(
            "Microsoft answered {error}: {first}"
        )));
    }
    let code = req
        .query_param("code")?
        .ok_or_else(|| ApiError::bad_request("code is missing"))?;
    let client = app
        .credentials
        .service_credential(cloud)
        .await
        .map_err(|e| api_error(e.into()))?
        .ok_or_else(|| {
            api_error(WritebackError::NotConfigured(format!(
                "no credential for the service's app in {cloud}"
            )))
        })?;
    let registration = entra::credentials::AppRegistration {
        cloud,
        client_id: app.entra.client_id_in(cloud),
        credential: client,
    };
    let redeemed = app
        .graph
        .tokens()
        .redeem_code(
            &registration,
            &link.tenant_id.to_string(),
            &code,
            &redirect_uri(app),
            &link.verifier,
            &crate::writeback::delegated_scope(cloud),
        )
        .await;
    let redeemed = match redeemed {
        Ok(r) => r,
        Err(entra::credentials::TokenError::ConsentMissing(why)) => {
            return consent_required(app, link.tenant_id, cloud, &why).await;
        }
        Err(e) => return Err(api_error(WritebackError::Graph(e.into()))),
    };
    // the signed-in user must belong to the tenant being linked; nothing is kept otherwise
    if redeemed.tenant_id != Some(link.tenant_id) {
        return Err(ApiError::forbidden(
            "wrong_tenant",
            "the signed-in user does not belong to this tenant; sign in with an administrator of it",
        ));
    }
    let linked_by = format!(
        "user {}{}",
        redeemed
            .object_id
            .map(|o| o.to_string())
            .unwrap_or_default(),
        redeemed
            .username
            .as_deref()
            .map(|u| format!(" ({u})"))
            .unwrap_or_default()
    );
    let connection = Connection {
        tenant_id: link.tenant_id,
        kind: ConnectionType::Delegated,
        cloud: cloud.as_str().into(),
        client_id: Some(registration.client_id),
        credential: None,
        linked_by,
        linked_at: OffsetDateTime::now_utc(),
        last_success: None,
        last_error: None,
    };
    // the tenant's administrator who signed in; the refresh token is only said to change
    let mut changes = audit::diff(&serde_json::Value::Null, &connection_json(&connection));
    changes.push(audit::Change::secret("refresh_token"));
    let event = change_event(
        req,
        link.tenant_id,
        audit::Actor::tenant_admin(
            redeemed
                .object_id
                .map(|o| o.to_string())
                .unwrap_or_else(|| "unknown".into()),
        ),
        "hr.connection.link",
        audit::Target::new("hr_connection", link.tenant_id).display("delegated"),
        changes,
    );
    crate::trail::around(app, event, async {
        app.vault
            .set_secret(&refresh_name(link.tenant_id), &redeemed.refresh_token)
            .await
            .map_err(|e| api_error(e.into()))?;
        app.hr
            .save_connection(&app.vault, &connection)
            .await
            .map_err(api_error)?;
        Ok(Made::from(()))
    })
    .await?;
    tracing::info!(tenant_id = %link.tenant_id, "HR connection linked (delegated)");
    Ok(json_reply(
        StatusCode::OK,
        &json!({"linked": true, "connection": connection_json(&connection)}),
    ))
}

/// Graph access of a tenant's connection. Only an active tenant is written to: an
/// offboarded (or still pending) one is refused.
async fn connection_of(
    app: &App,
    tenant: Uuid,
) -> Result<(Connection, entra::credentials::AppRegistration), ApiError> {
    let record = app
        .tenants
        .get(tenant)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant} is not registered")))?;
    if record.status != crate::domain::TenantStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_not_active",
            format!(
                "tenant {tenant} is {}: nothing is written to it",
                record.status.as_str()
            ),
        ));
    }
    let c = app
        .hr
        .store
        .connection(tenant)
        .await
        .map_err(store_error)?
        .ok_or_else(|| api_error(WritebackError::NotConnected))?;
    let r = app
        .hr
        .registration(&app.credentials, &app.vault, &c)
        .await
        .map_err(api_error)?;
    Ok((c, r))
}

/// Notes a Graph call's outcome on the connection (best effort).
async fn note(app: &App, tenant: Uuid, error: Option<String>) {
    if let Err(e) = app.hr.store.note_outcome(tenant, error).await {
        tracing::warn!(%tenant, error = %e, "the HR connection's last outcome was not recorded");
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/hr/connection/test",
    operation_id = "testHrConnection",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "Graph answered: the organisation, and the permissions granted and missing", body = HrConnectionTest),
        (status = 409, description = "The tenant is not active (`tenant_not_active`), has no HR connection (`not_configured`), or its delegated connection must be linked again (`relink_required`)", body = ErrorBody),
        (status = 502, description = "The tenant refused the connection (`tenant_access_refused`) or Microsoft Graph refused the request (`graph_rejected`)", body = ErrorBody),
    )
)]
async fn test_connection(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let (_, registration) = connection_of(app, tenant.tenant_id).await?;
    let t = tenant.tenant_id.to_string();
    let outcome = async {
        let org = app.graph.organization(&registration, &t).await?;
        let roles = app.graph.app_roles(&registration, &t).await?;
        Ok::<_, entra::graph::GraphError>((org, roles))
    }
    .await;
    match outcome {
        Ok((org, roles)) => {
            let missing: Vec<serde_json::Value> = APP_PERMISSIONS
                .iter()
                .filter(|(p, _)| !roles.iter().any(|r| r.eq_ignore_ascii_case(p)))
                .map(|(p, why)| json!({"permission": p, "needed_to": why}))
                .collect();
            note(app, tenant.tenant_id, None).await;
            Ok(json_reply(
                StatusCode::OK,
                &json!({
                    "ok": missing.is_empty(),
                    "organization": {"id": org["id"], "display_name": org["displayName"]},
                    "granted_permissions": roles,
                    "missing_permissions": missing,
                }),
            ))
        }
        Err(e) => {
            note(app, tenant.tenant_id, Some(e.to_string())).await;
            Err(api_error(e.into()))
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/hr/import",
    operation_id = "importHrRecords",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body(
        description = "At most 10,000 records (16 MiB): a JSON array (or `{\"employees\": [...]}`), or CSV with a header of the record's field names",
        content(
            (HrImportJson = "application/json"),
            (String = "text/csv", example = "employee_id,given_name,surname,start_date\nE1001,Ada,Lovelace,2026-02-01\n"),
        )
    ),
    responses(
        (status = 200, description = "Every row was imported", body = HrImported),
        (status = 503, description = "Storage failed: nothing was imported (the rows are staged apart and committed by one write); send the same file again", body = ErrorBody),
        (status = 415, description = "Neither JSON nor CSV", body = ErrorBody),
        (status = 422, description = "Rows were rejected (`rows_rejected`), or a record is too large to store (`record_too_large`, over 32K characters as JSON); nothing was imported", body = HrRowsRejected),
    )
)]
async fn import(app: &App, req: &Request) -> Result<Response, ApiError> {
    let caller = auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let content_type = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let format = if content_type.starts_with("text/csv") {
        hr::import::Format::Csv
    } else if content_type.starts_with("application/json") {
        hr::import::Format::Json
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json or text/csv",
        ));
    };
    let records = match hr::import::parse(format, &req.body) {
        Ok(r) => r,
        Err(hr::import::ImportError::Rejected(rows)) => {
            return Ok(json_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({
                    "error": "rows_rejected",
                    "message": format!("{} rows were rejected; nothing was imported", rows.len()),
                    "rejected": rows,
                }),
            ));
        }
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    // all or nothing: on a storage failure nothing is imported, and sending the same
    // file again converges
    let import_id = Uuid::new_v4();
    let event = change_event(
        req,
        tenant.tenant_id,
        crate::trail::admin(&caller),
        "hr.import",
        audit::Target::new("hr_import", import_id),
        vec![audit::Change::new(
            "records",
            None,
            Some(json!(records.len())),
        )],
    );
    crate::trail::around(app, event, async {
        app.hr
            .store
            .import_records(tenant.tenant_id, import_id, &records)
            .await
            .map_err(|e| {
                tracing::warn!(tenant_id = %tenant.tenant_id, %import_id, error = %e, "HR import not committed");
                match e {
                    hr::HrStoreError::TooLarge(m) => ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "record_too_large",
                        format!("{m}; nothing was imported: shorten that record"),
                    ),
                    _ => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "storage is unavailable; nothing was imported: send the same file again",
                    ),
                }
            })
            .map(Made::from)
    })
    .await?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"imported": records.len(), "import_id": import_id}),
    ))
}

/// One HR record, as in an import of one row (the path names the employee).
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant_id}/hr/employees/{employee_id}",
    operation_id = "putHrEmployee",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path), ("employee_id" = String, Path, description = "The HR system's employee id")),
    request_body(content = hr::HrRecord, description = "The record; `employee_id` may be left out, else it is the path's"),
    responses(
        (status = 200, description = "The record, replaced", body = hr::HrRecord),
        (status = 201, description = "The record, new", body = hr::HrRecord),
    )
)]
async fn put_employee(app: &App, req: &Request) -> Result<Response, ApiError> {
    let caller = auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let employee_id = req.param("employee_id").unwrap_or_default().to_string();
    // an object, checked before it is indexed: indexing an array or a string panics, and
    // the release build aborts on a panic, taking every other request with it
    let mut body: serde_json::Map<String, serde_json::Value> = req.json()?;
    match body.get("employee_id") {
        None => {
            body.insert("employee_id".into(), json!(employee_id));
        }
        Some(v) if v.as_str() == Some(employee_id.as_str()) => {}
        Some(_) => return Err(ApiError::bad_request("employee_id differs from the path's")),
    }
    let record: hr::HrRecord = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = record.check().map_err(ApiError::bad_request)?;
    let before = app
        .hr
        .store
        .record(tenant.tenant_id, &record.employee_id)
        .await
        .map_err(store_error)?;
    let existed = before.is_some();
    let old = before
        .map(|b| serde_json::to_value(b).expect("serializes"))
        .unwrap_or_default();
    let new = serde_json::to_value(&record).expect("serializes");
    let event = change_event(
        req,
        tenant.tenant_id,
        crate::trail::admin(&caller),
        if existed {
            "hr.employee.update"
        } else {
            "hr.employee.create"
        },
        audit::Target::new("hr_employee", &record.employee_id),
        audit::diff(&old, &new),
    );
    crate::trail::around(app, event, async {
        app.hr
            .store
            .put_records(tenant.tenant_id, std::slice::from_ref(&record))
            .await
            .map_err(store_error)
            .map(Made::from)
    })
    .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_reply(status, &record))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/hr/employees/{employee_id}",
    operation_id = "getHrEmployee",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path), ("employee_id" = String, Path, description = "The HR system's employee id")),
    responses((status = 200, description = "The record", body = hr::HrRecord))
)]
async fn get_employee(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let employee_id = req.param("employee_id").unwrap_or_default();
    let record = app
        .hr
        .store
        .record(tenant.tenant_id, employee_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no HR record for employee {employee_id:?}")))?;
    Ok(json_reply(StatusCode::OK, &record))
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/hr/rules",
    operation_id = "getHrRules",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The rules", body = hr::Rules))
)]
async fn get_rules(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let rules = app
        .hr
        .store
        .rules(tenant.tenant_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("the tenant has no HR rules"))?;
    Ok(json_reply(StatusCode::OK, &rules))
}

#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant_id}/hr/rules",
    operation_id = "putHrRules",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = hr::Rules,
    responses((status = 200, description = "The rules as kept, defaults filled in", body = hr::Rules))
)]
async fn put_rules(app: &App, req: &Request) -> Result<Response, ApiError> {
    let caller = auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let rules: Rules = req.json()?;
    let compiled = rules.clone().compile().map_err(ApiError::bad_request)?;
    let before = app
        .hr
        .store
        .rules(tenant.tenant_id)
        .await
        .map_err(store_error)?
        .map(|r| serde_json::to_value(r).expect("serializes"))
        .unwrap_or_default();
    let event = change_event(
        req,
        tenant.tenant_id,
        crate::trail::admin(&caller),
        "hr.rules.set",
        audit::Target::new("hr_rules", tenant.tenant_id),
        audit::diff(
            &before,
            &serde_json::to_value(&compiled.rules).expect("serializes"),
        ),
    );
    crate::trail::around(app, event, async {
        app.hr
            .store
            .put_rules(tenant.tenant_id, &compiled.rules)
            .await
            .map_err(store_error)
            .map(Made::from)
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &compiled.rules))
}

async fn compute_plan(app: &App, tenant: Uuid) -> Result<Plan, ApiError> {
    let (_, registration) = connection_of(app, tenant).await?;
    let today = OffsetDateTime::now_utc().date();
    let outcome = app
        .hr
        .plan(&app.graph, &registration, &app.directory, tenant, today)
        .await;
    if let Err(WritebackError::Graph(g)) = &outcome {
        note(app, tenant, Some(g.to_string())).await;
    }
    outcome.map_err(api_error)
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/hr/plan",
    operation_id = "computeHrPlan",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The plan (kept for 24 hours for apply): each write, what waits, what is left alone", body = hr::Plan, links(
            ("ApplyPlan" = (operation_id = "applyHrPlan", parameters(("tenant_id" = "$request.path.tenant_id")), request_body = json!({"plan_id": "{$response.body#/id}"})))
        )),
        (status = 409, description = "The tenant is not active (`tenant_not_active`), has no HR connection (`not_configured`), or its delegated connection must be linked again (`relink_required`)", body = ErrorBody),
        (status = 502, description = "The tenant refused the connection (`tenant_access_refused`) or Microsoft Graph refused the request (`graph_rejected`)", body = ErrorBody),
    )
)]
async fn plan(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let plan = compute_plan(app, tenant.tenant_id).await?;
    Ok(json_reply(StatusCode::OK, &plan))
}

/// The plan to apply.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plan_id": "c0ffee00-1234-4abc-9def-0123456789ab", "confirm": false}))]
struct ApplyBody {
    #[schema(format = Uuid)]
    plan_id: String,
    /// Needed when the plan disables more users than `HR_MAX_DISABLE_PERCENT` allows.
    #[serde(default)]
    confirm: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/hr/apply",
    operation_id = "applyHrPlan",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = ApplyBody,
    responses(
        (status = 200, description = "What each step did (a step an earlier apply did is not done again)", body = hr::ApplyReport),
        (status = 409, description = "The plan is older than 24 hours (`plan_expired`) or needs `confirm` (`confirmation_required`); or the tenant is not active, not connected, or must be linked again", body = ErrorBody),
        (status = 502, description = "The tenant refused the connection (`tenant_access_refused`) or Microsoft Graph refused the request (`graph_rejected`)", body = ErrorBody),
    )
)]
async fn apply(app: &App, req: &Request) -> Result<Response, ApiError> {
    let caller = auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let body: ApplyBody = req.json()?;
    let plan_id = Uuid::try_parse(&body.plan_id)
        .map_err(|_| ApiError::bad_request("plan_id must be a GUID"))?;
    let plan = app
        .hr
        .store
        .plan(tenant.tenant_id, plan_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no plan {plan_id} for this tenant")))?;
    if OffsetDateTime::now_utc() - plan.created_at > PLAN_TTL {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "plan_expired",
            "the plan is older than 24 hours; compute a new one",
        ));
    }
    if plan.needs_confirmation && !body.confirm {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "confirmation_required",
            format!(
                "the plan disables {} of {} users, more than HR_MAX_DISABLE_PERCENT ({} %); apply with \"confirm\": true",
                plan.disables, plan.directory_users, plan.max_disable_percent
            ),
        ));
    }
    let (_, registration) = connection_of(app, tenant.tenant_id).await?;
    let report = app
        .hr
        .apply(
            &app.graph,
            registration,
            &plan,
            &|_| true,
            crate::trail::admin(&caller),
        )
        .await
        .map_err(api_error)?;
    let error = report
        .results
        .iter()
        .find(|r| r.error.is_some())
        .and_then(|r| r.error.clone());
    note(app, tenant.tenant_id, error).await;
    Ok(json_reply(StatusCode::OK, &report))
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/hr/employees/{employee_id}/reset-password",
    operation_id = "resetHrEmployeePassword",
    tag = "HR write-back",
    security(("entra_admin" = [])),
    params(("tenant_id" = uuid::Uuid, Path), ("employee_id" = String, Path, description = "The HR system's employee id")),
    responses(
        (status = 200, description = "A temporary password, changed at the next sign-in; shown once, never kept", body = HrTemporaryPassword,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 403, description = "Entra refused the reset: a permission or role is missing (`permission_missing`)", body = ErrorBody),
        (status = 409, description = "The tenant is not active (`tenant_not_active`), has no HR connection (`not_configured`), or its delegated connection must be linked again (`relink_required`)", body = ErrorBody),
        (status = 502, description = "The tenant refused the connection (`tenant_access_refused`) or Microsoft Graph refused the request (`graph_rejected`)", body = ErrorBody),
    )
)]
async fn reset_password(app: &App, req: &Request) -> Result<Response, ApiError> {
    let caller = auth::admin(app, req.authorization()).await?;
    let tenant = registered(app, req).await?;
    let employee_id = req.param("employee_id").unwrap_or_default().to_string();
    let (connection, registration) = connection_of(app, tenant.tenant_id).await?;
    let user = app
        .hr
        .user_of(&app.directory, tenant.tenant_id, &employee_id)
        .await
        .map_err(api_error)?;
    // the password itself is never a value of the event, only that it changed
    let event = change_event(
        req,
        tenant.tenant_id,
        crate::trail::admin(&caller),
        "hr.user.reset_password",
        audit::Target::new("user", user).display(format!("employee {employee_id}")),
        vec![audit::Change::secret("password")],
    );
    let password = crate::writeback::temporary_password();
    crate::trail::around(app, event, async {
        let request = entra::writes::reset_password(user, &password);
        let answer = app
            .graph
            .batch(
                &registration,
                &tenant.tenant_id.to_string(),
                std::slice::from_ref(&request),
            )
            .await
            .map(|a| a.into_iter().next().expect("one answer"));
        let outcome = match answer {
            Ok(answer) => entra::writes::write_answer(&request, answer),
            Err(e) => entra::writes::WriteAnswer::Failed(e),
        };
        match outcome {
            entra::writes::WriteAnswer::Done(_) => Ok(Made::from(())),
            entra::writes::WriteAnswer::Failed(entra::graph::GraphError::Forbidden(m)) => {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_missing",
                    format!(
                        "Entra refused the reset ({m}); a {} connection needs {}",
                        match connection.kind {
                            ConnectionType::CustomerOwned => "customer-owned",
                            ConnectionType::Delegated => "delegated",
                        },
                        match connection.kind {
                            ConnectionType::CustomerOwned =>
                                "Directory.ReadWrite.All (or User.ReadWrite.All) and the User Administrator role for the app; resetting an admin needs Privileged Authentication Administrator",
                            ConnectionType::Delegated =>
                                "Directory.AccessAsUser.All with a signed-in administrator",
                        }
                    ),
                ))
            }
            entra::writes::WriteAnswer::Failed(e) => Err(api_error(e.into())),
            entra::writes::WriteAnswer::UpnInUse(m) => Err(ApiError::conflict(m)),
        }
    })
    .await?;
    tracing::info!(tenant_id = %tenant.tenant_id, %user, "temporary password set (not logged)");
    let mut response = json_reply(
        StatusCode::OK,
        &json!({
            "employee_id": employee_id,
            "user_id": user,
            "temporary_password": password,
            "force_change_password_next_sign_in": true,
            "shown_once": true,
        }),
    );
    response.headers_mut().insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `HrDue`'s entry point.
pub fn invoke_due(
    app: &App,
    request: InvocationRequest,
) -> BoxFuture<'_, Result<InvocationResponse, InvokeError>> {
    Box::pin(run_due(app, request))
}

/// For each connected tenant: a plan for today, and its dated steps (hires and leavers
/// whose date has come) applied; a plan over the disable threshold waits for an admin.
async fn run_due(app: &App, request: InvocationRequest) -> Result<InvocationResponse, InvokeError> {
    request
        .timer("timer")
        .map_err(|e| InvokeError::BadPayload(e.0))?;
    let mut response = InvocationResponse::new();
    let tenants = app
        .hr
        .store
        .connected_tenants()
        .await
        .map_err(|e| InvokeError::Failed {
            message: format!("HR connections could not be read: {e}"),
            logs: Vec::new(),
        })?;
    let today = OffsetDateTime::now_utc().date();
    for tenant in tenants {
        let outcome: Result<String, String> = async {
            let plan = compute_plan(app, tenant).await.map_err(|e| e.message)?;
            let due = plan
                .steps
                .iter()
                .filter(|s| s.due_on.is_some_and(|d| d <= today))
                .count();
            if due == 0 {
                return Ok("nothing due".into());
            }
            if plan.needs_confirmation {
                return Ok(format!(
                    "{due} due steps wait: the plan disables more than HR_MAX_DISABLE_PERCENT and needs an admin's confirmation"
                ));
            }
            let (_, registration) = connection_of(app, tenant).await.map_err(|e| e.message)?;
            let report = app
                .hr
                .apply(
                    &app.graph,
                    registration,
                    &plan,
                    &|s| s.due_on.is_some_and(|d| d <= today),
                    audit::Actor::system("HrDue"),
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{} due steps done, {} failed",
                report.done, report.failed
            ))
        }
        .await;
        match outcome {
            Ok(summary) => {
                response.log(format!("HR due events of {tenant}: {summary}"));
            }
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "HR due events not applied");
                response.log(format!("HR due events of {tenant} failed: {e}"));
            }
        }
    }
    Ok(response)
}
