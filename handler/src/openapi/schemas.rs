//! The shapes of the answers the function modules build as JSON, for the document. Request
//! bodies are the modules' own `Deserialize` types (they derive `ToSchema` where they are
//! declared); answers are assembled with `json!` beside the domain types, so their shapes
//! are declared here, one type per shape, and Schemathesis checks every answer it sees
//! against them (`handler/tests/openapi.rs`).
#![allow(dead_code)] // described, never built

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Every error of the admin and Connector APIs.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": "not_found", "message": "tenant 72f988bf-86f1-41af-91ab-2d7cd011db47 is not registered"}))]
pub struct ErrorBody {
    /// A stable code: `invalid_request`, `invalid_token`, `insufficient_role`, `not_found`,
    /// `conflict`, `temporarily_unavailable`, ...
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}

/// The SCIM Error body (RFC 7644 section 3.12).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "409", "scimType": "uniqueness", "detail": "userName is taken"}))]
pub struct ScimErrorBody {
    pub schemas: Vec<String>,
    /// The HTTP status, as a string.
    pub status: String,
    #[serde(rename = "scimType")]
    #[schema(nullable = false)]
    pub scim_type: Option<String>,
    pub detail: String,
}

/// A cloud: where a tenant lives.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloudName {
    Global,
    Usgov,
    Usgovdod,
    China,
}

/// A tenant's place in its life cycle.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Pending,
    Active,
    Offboarded,
}

/// What a certificate is for.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateUse {
    ClientAuth,
    EmailProtection,
    CodeSigning,
}

/// How a private key made here is returned.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    Pkcs8,
    Pkcs12,
}

/// An RFC 5280 revocation reason (case-insensitive; snake_case is taken too).
#[derive(Serialize, ToSchema)]
pub enum RevocationReasonName {
    #[serde(rename = "unspecified")]
    Unspecified,
    #[serde(rename = "keyCompromise")]
    KeyCompromise,
    #[serde(rename = "cACompromise")]
    CaCompromise,
    #[serde(rename = "affiliationChanged")]
    AffiliationChanged,
    #[serde(rename = "superseded")]
    Superseded,
    #[serde(rename = "cessationOfOperation")]
    CessationOfOperation,
    #[serde(rename = "certificateHold")]
    CertificateHold,
    #[serde(rename = "privilegeWithdrawn")]
    PrivilegeWithdrawn,
    #[serde(rename = "aACompromise")]
    AaCompromise,
}

/// Where a provisioned user is on the way to using the product (case-insensitive).
#[derive(Serialize, ToSchema)]
pub enum ProvisioningStatus {
    Staged,
    Invited,
    Active,
}

/// An invitation's state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvitationState {
    Pending,
    Sent,
    Redeemed,
    Revoked,
    Expired,
}

/// A registered tenant.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "display_name": "Contoso", "cloud": "global", "status": "active", "added_by": "admin_api", "created_at": "2026-01-01T00:00:00Z", "consented_at": null, "offboarded_at": null, "app_client_id": null}))]
pub struct TenantBody {
    pub tenant_id: Uuid,
    pub display_name: String,
    pub cloud: CloudName,
    pub status: TenantState,
    /// `admin_api` or `admin_consent`.
    pub added_by: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub consented_at: Option<String>,
    #[schema(format = DateTime)]
    pub offboarded_at: Option<String>,
    /// The tenant's own app registration (customer-owned application mode).
    pub app_client_id: Option<Uuid>,
}

/// The tenant registry.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenants": [{"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "display_name": "Contoso", "cloud": "global", "status": "active", "added_by": "admin_consent", "created_at": "2026-01-05T09:12:44Z", "consented_at": "2026-01-05T09:14:02Z", "offboarded_at": null, "app_client_id": null}]}))]
pub struct TenantList {
    pub tenants: Vec<TenantBody>,
}

/// An offboarded tenant, with what this call revoked.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "display_name": "Contoso", "cloud": "global", "status": "offboarded", "added_by": "admin_api", "created_at": "2026-01-05T09:12:44Z", "consented_at": "2026-01-05T09:14:02Z", "offboarded_at": "2026-11-30T16:00:00Z", "app_client_id": null, "revoked_grants": 2, "revoked_scim_token": true, "revoked_certificates": 1}))]
pub struct OffboardedTenant {
    #[serde(flatten)]
    pub tenant: TenantBody,
    pub revoked_grants: u64,
    pub revoked_scim_token: bool,
    pub revoked_certificates: u64,
}

/// Who a grant is for.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    ServicePrincipal,
}

/// A grant of Connector API scopes to a principal of a tenant.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "kind": "service_principal", "client_id": "6e74172b-be56-4843-9ff4-e66a39bb12e3", "scopes": ["records.read"], "created_at": "2026-02-01T10:00:00Z", "updated_at": "2026-02-01T10:00:00Z", "last_used_at": "2026-11-30T08:21:17Z", "revoked_at": null}))]
pub struct GrantBody {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: PrincipalKind,
    /// For `kind: user`.
    #[schema(nullable = false)]
    pub object_id: Option<Uuid>,
    /// For `kind: service_principal`.
    #[schema(nullable = false)]
    pub client_id: Option<Uuid>,
    pub scopes: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

/// Grants.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"grants": [{"id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "kind": "user", "object_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "scopes": ["records.read", "records.write"], "created_at": "2026-02-01T10:00:00Z", "updated_at": "2026-03-15T12:30:00Z", "last_used_at": null, "revoked_at": null}]}))]
pub struct GrantList {
    pub grants: Vec<GrantBody>,
}

/// An employee record.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "employee_id": "E-10442", "object_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "positions": [{"title": "Engineer", "start": "2024-03-01", "end": "2025-12-31"}, {"title": "Senior Engineer", "start": "2026-01-01"}], "active": true, "updated_at": "2026-01-02T08:00:00Z"}))]
pub struct EmployeeRecord {
    pub tenant_id: Uuid,
    pub employee_id: String,
    pub object_id: Uuid,
    pub positions: Vec<crate::domain::Position>,
    /// A position is active today.
    pub active: bool,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// An activation link's state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Pending,
    Used,
    Expired,
    Revoked,
    Failed,
}

/// An activation link (its secret is shown only when it is created).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "0d4c1f5e-8b6a-4f3e-9d2c-7a1b0e9f8c6d", "cloud": "global", "state": "pending", "created_at": "2026-12-01T09:00:00Z", "expires_at": "2026-12-01T10:00:00Z", "used_at": null, "revoked_at": null, "tenant_id": null, "failed_at": null, "failure_reason": null, "link": "https://connector.contoso.com/api/v1/activate/0d4c1f5e-8b6a-4f3e-9d2c-7a1b0e9f8c6d?secret=q9Vh3mJxR2sT7wYk"}))]
pub struct ActivationLinkBody {
    pub id: Uuid,
    pub cloud: CloudName,
    pub state: LinkState,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime)]
    pub used_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    pub tenant_id: Option<Uuid>,
    #[schema(format = DateTime)]
    pub failed_at: Option<String>,
    pub failure_reason: Option<String>,
    /// Only in the answer that creates it: send it to the customer's administrator.
    #[schema(nullable = false)]
    pub link: Option<String>,
}

/// Activation links.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"activation_links": [{"id": "0d4c1f5e-8b6a-4f3e-9d2c-7a1b0e9f8c6d", "cloud": "global", "state": "used", "created_at": "2026-12-01T09:00:00Z", "expires_at": "2026-12-01T10:00:00Z", "used_at": "2026-12-01T09:20:00Z", "revoked_at": null, "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "failed_at": null, "failure_reason": null}]}))]
pub struct ActivationLinkList {
    pub activation_links: Vec<ActivationLinkBody>,
}

/// An RSA public key as a JWK.
#[derive(Serialize, ToSchema)]
pub struct RsaJwk {
    pub kty: String,
    pub n: String,
    pub e: String,
}

/// A certificate whose key stays in the vault, to upload to an app registration.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"certificate_pem": "-----BEGIN CERTIFICATE-----\nMIIC8jCCAdqgAwIBAgIUB3...\n-----END CERTIFICATE-----\n", "certificate_der_base64": "MIIC8jCCAdqgAwIBAgIUB3...", "thumbprint_sha256": "mQ3k8lZ0yq7Xz2b3v0b5Jc1hQxq6mS1w0Kp9r2YtV8E", "thumbprint_sha1_hex": "2F1A9C3B7D4E5F60718293A4B5C6D7E8F9011223", "public_key_jwk": {"kty": "RSA", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw", "e": "AQAB"}, "client_id": "6e74172b-be56-4843-9ff4-e66a39bb12e3", "cloud": "global"}))]
pub struct CredentialCertificate {
    pub certificate_pem: String,
    pub certificate_der_base64: String,
    /// The `x5t#S256`.
    pub thumbprint_sha256: String,
    /// What the portal shows.
    pub thumbprint_sha1_hex: String,
    pub public_key_jwk: RsaJwk,
    pub client_id: Option<String>,
    pub cloud: CloudName,
    /// For a tenant's own app (customer-owned application mode).
    #[schema(nullable = false)]
    pub tenant_id: Option<Uuid>,
}

/// A valid token's claims (those it has of `sub`, `oid`, `tid`, `upn`, `email`, `name`,
/// `roles`, `groups`, `scp`, `exp`, `iat`, `ver`).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"valid": true, "payload": {"sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "upn": "ada@contoso.com", "name": "Ada Lovelace", "roles": [], "scp": "User.Read", "exp": 1796133600, "iat": 1796130000, "ver": "2.0"}}))]
pub struct TokenAccepted {
    pub valid: bool,
    pub payload: Value,
}

/// Why a token is not valid.
#[derive(Serialize, ToSchema)]
pub struct TokenRejected {
    pub valid: bool,
    pub error: String,
    pub error_description: String,
}

/// A 401 of validate-token: the caller's own token refused, or the checked one invalid.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ValidateTokenRefusal {
    Caller(ErrorBody),
    Checked(TokenRejected),
}

/// The last housekeeping run, without its error text.
#[derive(Serialize, ToSchema)]
pub struct HousekeepingRun {
    #[schema(format = DateTime)]
    pub last_run_at: String,
    #[schema(format = DateTime)]
    pub finished_at: String,
    /// `succeeded` or `failed`.
    pub outcome: String,
    pub past_due: bool,
    pub summary: String,
}

/// Whether storage answers.
#[derive(Serialize, ToSchema)]
pub struct StorageReachable {
    pub reachable: bool,
}

/// The service's health.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "healthy", "version": "0.1.0", "mode": "host", "storage": {"reachable": true}, "housekeeping": {"last_run_at": "2026-12-01T03:00:00Z", "finished_at": "2026-12-01T03:00:04Z", "outcome": "succeeded", "past_due": false, "summary": "expired 2 activation links, 0 invitations"}}))]
pub struct HealthReport {
    /// `healthy` or `unhealthy`.
    pub status: String,
    pub version: String,
    /// `standalone` or `host`.
    pub mode: String,
    pub storage: StorageReachable,
    pub housekeeping: Option<HousekeepingRun>,
}

/// The Connector API's answer to a caller allowed in.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "principal": {"kind": "service_principal", "id": "6e74172b-be56-4843-9ff4-e66a39bb12e3"}, "scopes": ["records.read"]}))]
pub struct PingAnswerBody {
    pub tenant_id: Uuid,
    pub principal: PingPrincipal,
    pub scopes: Vec<String>,
}

/// The caller.
#[derive(Serialize, ToSchema)]
pub struct PingPrincipal {
    pub kind: PrincipalKind,
    pub id: Uuid,
}

/// A certificate issued to a directory user (never its key).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "type": "entra_user", "certificate_type": "client_auth", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "user_id": "5b8f0c3e-2d1a-4e6b-9f7c-8a9b0c1d2e3f", "serial": "4f2a91c07d3e5b68", "subject": "CN=Ada Lovelace,E=ada@contoso.com", "not_before": "2026-12-01T09:00:00Z", "not_after": "2027-12-01T09:00:00Z", "thumbprint_sha256": "b5d7e0c2a9f14e6b8d3c7a1f0e9b2d4c6a8f1e3b5d7c9a0e2f4b6d8c1a3e5f70", "status": "revoked", "key_source": "server", "revoked_at": "2026-12-01T11:30:00Z", "revocation_reason": "keyCompromise", "revoked_by": "admin 9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "pem": "-----BEGIN CERTIFICATE-----\nMIIC+zCCAeOgAwIBAgIITypJwH0+W2gw...\n-----END CERTIFICATE-----\n"}))]
pub struct UserCertificate {
    pub id: Uuid,
    /// Always `entra_user`.
    #[serde(rename = "type")]
    pub category: String,
    /// `client_auth`, `email_protection` or `code_signing`.
    pub certificate_type: String,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub serial: String,
    pub subject: String,
    #[schema(format = DateTime)]
    pub not_before: String,
    #[schema(format = DateTime)]
    pub not_after: String,
    pub thumbprint_sha256: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// `server` or `csr`.
    pub key_source: String,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    pub revocation_reason: Option<String>,
    pub revoked_by: Option<String>,
    pub pem: String,
    /// The certificate and its CA, PEM (in the answer that issues it).
    #[schema(nullable = false)]
    pub chain: Option<Vec<String>>,
}

/// A direct group of a user.
#[derive(Serialize, ToSchema)]
pub struct UserGroup {
    pub id: Uuid,
    pub entra_id: Option<Uuid>,
    pub name: Option<String>,
}

/// A user of a tenant's directory.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "5b8f0c3e-2d1a-4e6b-9f7c-8a9b0c1d2e3f", "name": "Ada Lovelace", "email": "ada@contoso.com", "entra_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "entra_upn": "ada@contoso.com", "is_active": true, "account_enabled": true, "entra_last_sync": "2026-12-01T08:00:00Z", "deleted_in_entra_at": null, "given_name": "Ada", "surname": "Lovelace", "job_title": "Engineer", "department": "Research", "employee_id": "E-10442", "sources": ["graph"], "updated_at": "2026-12-01T08:00:00Z", "entra_groups": [{"id": "7e1c2b3a-4d5f-4a6b-8c7d-9e0f1a2b3c4d", "entra_id": "d4c3b2a1-0f9e-4d8c-b7a6-5f4e3d2c1b0a", "name": "Research"}]}))]
pub struct DirectoryUser {
    pub id: Uuid,
    pub name: Option<String>,
    pub email: Option<String>,
    pub entra_id: Option<Uuid>,
    pub entra_upn: Option<String>,
    pub is_active: bool,
    pub account_enabled: Option<bool>,
    #[schema(format = DateTime)]
    pub entra_last_sync: Option<String>,
    #[schema(format = DateTime)]
    pub deleted_in_entra_at: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub employee_id: Option<String>,
    /// `graph`, `scim`.
    pub sources: Vec<String>,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// In a listing, the active unexpired ones; for one user, all.
    #[schema(nullable = false)]
    pub certificates: Option<Vec<UserCertificate>>,
    /// For one user: its direct groups.
    #[schema(nullable = false)]
    pub entra_groups: Option<Vec<UserGroup>>,
    /// In an issuance's answer.
    #[schema(nullable = false)]
    pub tenant_id: Option<Uuid>,
}

/// A page of a tenant's directory users.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "per_page": 50, "users": [{"id": "5b8f0c3e-2d1a-4e6b-9f7c-8a9b0c1d2e3f", "name": "Ada Lovelace", "email": "ada@contoso.com", "entra_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "entra_upn": "ada@contoso.com", "is_active": true, "account_enabled": true, "entra_last_sync": "2026-12-01T08:00:00Z", "deleted_in_entra_at": null, "given_name": "Ada", "surname": "Lovelace", "job_title": "Engineer", "department": "Research", "employee_id": "E-10442", "sources": ["graph", "scim"], "updated_at": "2026-12-01T08:00:00Z", "certificates": []}], "next_cursor": null}))]
pub struct DirectoryUserPage {
    pub tenant_id: Uuid,
    pub per_page: u32,
    pub users: Vec<DirectoryUser>,
    /// Pass it back as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// One name of a bulk sync.
#[derive(Serialize, ToSchema)]
pub struct BulkSyncResult {
    pub user_principal_name: String,
    /// `success` or `failed`.
    pub status: String,
    #[schema(nullable = false)]
    pub user: Option<DirectoryUser>,
    #[schema(nullable = false)]
    pub error: Option<ErrorBody>,
}

/// What a bulk sync did.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "total": 2, "successful": 1, "failed": 1, "results": [{"user_principal_name": "ada@contoso.com", "status": "success", "user": {"id": "5b8f0c3e-2d1a-4e6b-9f7c-8a9b0c1d2e3f", "name": "Ada Lovelace", "email": "ada@contoso.com", "entra_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "entra_upn": "ada@contoso.com", "is_active": true, "account_enabled": true, "entra_last_sync": "2026-12-01T08:00:00Z", "deleted_in_entra_at": null, "given_name": "Ada", "surname": "Lovelace", "job_title": null, "department": null, "employee_id": null, "sources": ["graph"], "updated_at": "2026-12-01T08:00:00Z"}}, {"user_principal_name": "nobody@contoso.com", "status": "failed", "error": {"error": "not_found", "message": "no user nobody@contoso.com in Microsoft Graph"}}]}))]
pub struct BulkSyncAnswer {
    pub tenant_id: Uuid,
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub results: Vec<BulkSyncResult>,
}

/// A round under way.
#[derive(Serialize, ToSchema)]
pub struct RunningRound {
    pub round: i64,
    pub phase: String,
    pub full: bool,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    pub pages: u64,
    pub changes: u64,
}

/// The last finished round.
#[derive(Serialize, ToSchema)]
pub struct FinishedRound {
    pub round: i64,
    #[schema(format = DateTime)]
    pub started_at: String,
    #[schema(format = DateTime)]
    pub finished_at: String,
    pub duration_ms: i64,
    /// `success`, `access_revoked`, ...
    pub outcome: String,
    pub full: bool,
    pub pages: u64,
    pub changes: u64,
}

/// A tenant's directory sync.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "status": "idle", "round": null, "last_round": {"round": 42, "started_at": "2026-12-01T08:00:00Z", "finished_at": "2026-12-01T08:00:07Z", "duration_ms": 7120, "outcome": "success", "full": false, "pages": 3, "changes": 5}, "next_due_at": "2026-12-01T08:15:00Z", "error": null}))]
pub struct SyncStatus {
    pub tenant_id: Uuid,
    /// `idle`, `queued` or `running`.
    pub status: String,
    pub round: Option<RunningRound>,
    pub last_round: Option<FinishedRound>,
    #[schema(format = DateTime)]
    pub next_due_at: String,
    pub error: Option<String>,
}

/// User counters.
#[derive(Serialize, ToSchema)]
pub struct UserCounts {
    pub total: u64,
    pub active: u64,
    pub inactive: u64,
}

/// Totals over the active tenants.
#[derive(Serialize, ToSchema)]
pub struct StatisticsTotal {
    pub tenants: u64,
    pub users: UserCounts,
    pub groups: u64,
    pub memberships: u64,
}

/// One active tenant's directory and sync.
#[derive(Serialize, ToSchema)]
pub struct TenantStatistics {
    #[serde(flatten)]
    pub sync: SyncStatus,
    pub display_name: String,
    pub users: UserCounts,
    pub groups: u64,
    pub memberships: u64,
}

/// Directory statistics.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"total": {"tenants": 1, "users": {"total": 120, "active": 112, "inactive": 8}, "groups": 14, "memberships": 310}, "tenants": [{"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "display_name": "Contoso", "status": "idle", "round": null, "last_round": null, "next_due_at": "2026-12-01T08:15:00Z", "error": null, "users": {"total": 120, "active": 112, "inactive": 8}, "groups": 14, "memberships": 310}]}))]
pub struct Statistics {
    pub total: StatisticsTotal,
    pub tenants: Vec<TenantStatistics>,
}

/// Directory sync health (no tenant ids, no user data).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "up", "storage": "reachable", "last_rounds": {"success": 3, "access_revoked": 1}}))]
pub struct DirectoryHealth {
    /// `up` or `degraded`.
    pub status: String,
    /// `reachable` or `unreachable`.
    pub storage: String,
    /// Tenants by their last round's outcome.
    pub last_rounds: std::collections::BTreeMap<String, u64>,
}

/// A tenant's issuing CA.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "subject": "CN=Contoso Issuing CA", "serial": "01", "not_before": "2026-01-05T09:20:00Z", "not_after": "2036-01-05T09:20:00Z", "thumbprint_sha256": "c3a1e5f70b5d7e0c2a9f14e6b8d3c7a1f0e9b2d4c6a8f1e3b5d7c9a0e2f4b6d8", "crl_number": 3, "ca_url": "https://connector.contoso.com/api/v1/pki/72f988bf-86f1-41af-91ab-2d7cd011db47/ca.crt", "crl_url": "https://connector.contoso.com/api/v1/pki/72f988bf-86f1-41af-91ab-2d7cd011db47/crl", "pem": "-----BEGIN CERTIFICATE-----\nMIIDBTCCAe2gAwIBAgIBATAN...\n-----END CERTIFICATE-----\n"}))]
pub struct CaBody {
    pub tenant_id: Uuid,
    pub subject: String,
    pub serial: String,
    #[schema(format = DateTime)]
    pub not_before: String,
    #[schema(format = DateTime)]
    pub not_after: String,
    pub thumbprint_sha256: String,
    pub crl_number: u64,
    pub ca_url: String,
    pub crl_url: String,
    pub pem: String,
}

/// An issued private key, shown once.
#[derive(Serialize, ToSchema)]
pub struct IssuedKey {
    /// `pkcs8` or `pkcs12`.
    pub format: String,
    /// For `pkcs8`.
    #[schema(nullable = false)]
    pub pem: Option<String>,
    /// For `pkcs12`: the file, base64.
    #[schema(nullable = false)]
    pub pkcs12: Option<String>,
    /// For `pkcs12`: its one-time password.
    #[schema(nullable = false)]
    pub password: Option<String>,
}

/// A certificate issued to a directory user.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"certificate": {"id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "type": "entra_user", "certificate_type": "client_auth", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "user_id": "5b8f0c3e-2d1a-4e6b-9f7c-8a9b0c1d2e3f", "serial": "4f2a91c07d3e5b68", "subject": "CN=Ada Lovelace,E=ada@contoso.com", "not_before": "2026-12-01T09:00:00Z", "not_after": "2027-12-01T09:00:00Z", "thumbprint_sha256": "b5d7e0c2a9f14e6b8d3c7a1f0e9b2d4c6a8f1e3b5d7c9a0e2f4b6d8c1a3e5f70", "status": "active", "key_source": "server", "revoked_at": null, "revocation_reason": null, "revoked_by": null, "pem": "-----BEGIN CERTIFICATE-----\nMIIC+zCCAeOgAwIBAgIITypJwH0+W2gw...\n-----END CERTIFICATE-----\n", "chain": ["-----BEGIN CERTIFICATE-----\nMIIC+zCCAeOgAwIBAgIITypJwH0+W2gw...\n-----END CERTIFICATE-----\n", "-----BEGIN CERTIFICATE-----\nMIIDBTCCAe2gAwIBAgIBATAN...\n-----END CERTIFICATE-----\n"]}, "private_key": {"format": "pkcs8", "pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC...\n-----END PRIVATE KEY-----\n"}, "user": {"id": "5b8f0c3e-2d1a-4e6b-9f7c-8a9b0c1d2e3f", "name": "Ada Lovelace", "email": "ada@contoso.com", "entra_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "entra_upn": "ada@contoso.com", "is_active": true, "account_enabled": true, "entra_last_sync": "2026-12-01T08:00:00Z", "deleted_in_entra_at": null, "given_name": "Ada", "surname": "Lovelace", "job_title": "Engineer", "department": "Research", "employee_id": "E-10442", "sources": ["graph"], "updated_at": "2026-12-01T08:00:00Z", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47"}}))]
pub struct ProvisionedCertificate {
    pub certificate: UserCertificate,
    /// Null when the request carried a CSR.
    pub private_key: Option<IssuedKey>,
    pub user: DirectoryUser,
}

/// The SCIM Secret Token and the Tenant URL to paste beside it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"token": "scim_4q7Z2m9XkP1vR8tY3wB6nC5dF0gH", "tenant_url": "https://connector.contoso.com/api/scim/72f988bf-86f1-41af-91ab-2d7cd011db47/v2"}))]
pub struct ScimTokenBody {
    /// Shown once.
    pub token: String,
    pub tenant_url: String,
}

/// A setting's override and the value in force.
#[derive(Serialize, ToSchema)]
pub struct SettingView {
    #[serde(rename = "override")]
    pub overridden: Option<bool>,
    pub effective: bool,
}

/// The settings of a provisioned user or group.
#[derive(Serialize, ToSchema)]
pub struct ResourceSettings {
    pub require_mobile_auth: SettingView,
}

/// A provisioned user as the product sees it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "2819c223-7f76-453a-919d-413861904646", "user_name": "bjensen@contoso.com", "external_id": "bjensen", "display_name": "Barbara Jensen", "email": "bjensen@contoso.com", "active": true, "source": "scim", "status": "Invited", "invitation_id": "e3b0c442-98fc-4c14-9afb-f4c8996fb924", "activated_at": null, "settings": {"require_mobile_auth": {"override": true, "effective": true}}}))]
pub struct ProvisionedUser {
    pub id: Uuid,
    pub user_name: Value,
    pub external_id: Value,
    pub display_name: Value,
    pub email: Option<String>,
    pub active: Value,
    /// `scim`.
    pub source: String,
    /// `Staged`, `Invited` or `Active`.
    pub status: String,
    pub invitation_id: Value,
    pub activated_at: Value,
    pub settings: ResourceSettings,
}

/// Provisioned users.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"users": [{"id": "2819c223-7f76-453a-919d-413861904646", "user_name": "bjensen@contoso.com", "external_id": "bjensen", "display_name": "Barbara Jensen", "email": "bjensen@contoso.com", "active": true, "source": "scim", "status": "Staged", "invitation_id": null, "activated_at": null, "settings": {"require_mobile_auth": {"override": null, "effective": false}}}]}))]
pub struct ProvisionedUserList {
    pub users: Vec<ProvisionedUser>,
}

/// A provisioned group as the product sees it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "e9e30dba-f08f-4109-8486-d5c6a331660a", "display_name": "Sales", "external_id": "sales", "settings": {"require_mobile_auth": {"override": true, "effective": true}}}))]
pub struct ProvisionedGroup {
    pub id: Uuid,
    pub display_name: Value,
    pub external_id: Value,
    pub settings: ResourceSettings,
}

/// An invitation of the outbox.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "e3b0c442-98fc-4c14-9afb-f4c8996fb924", "user_id": "2819c223-7f76-453a-919d-413861904646", "user_name": "bjensen@contoso.com", "email": "bjensen@contoso.com", "display_name": "Barbara Jensen", "state": "pending", "created_at": "2026-12-01T09:00:00Z", "expires_at": "2026-12-08T09:00:00Z", "sent_at": null, "redeemed_at": null, "link": "https://connector.contoso.com/api/v1/invitations/activate?code=Xw7pQ2rT9vK4mB1n"}))]
pub struct InvitationBody {
    pub id: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// `pending`, `sent`, `redeemed`, `revoked` or `expired`.
    pub state: String,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub sent_at: Option<String>,
    #[schema(format = DateTime)]
    pub redeemed_at: Option<String>,
    /// While pending: the link to mail.
    pub link: Option<String>,
}

/// The invitation outbox.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"invitations": [{"id": "e3b0c442-98fc-4c14-9afb-f4c8996fb924", "user_id": "2819c223-7f76-453a-919d-413861904646", "user_name": "bjensen@contoso.com", "email": "bjensen@contoso.com", "display_name": "Barbara Jensen", "state": "sent", "created_at": "2026-12-01T09:00:00Z", "expires_at": "2026-12-08T09:00:00Z", "sent_at": "2026-12-01T09:05:00Z", "redeemed_at": null, "link": "https://connector.contoso.com/api/v1/invitations/activate?code=Xw7pQ2rT9vK4mB1n"}]}))]
pub struct InvitationList {
    pub invitations: Vec<InvitationBody>,
}

/// A redeemed invitation.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "user_id": "2819c223-7f76-453a-919d-413861904646", "user_name": "bjensen@contoso.com", "status": "Active"}))]
pub struct RedeemedInvitation {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub user_name: String,
    /// `Active`.
    pub status: String,
}

/// A SCIM resource (User or Group, RFC 7643); its attributes are those of its schemas,
/// which `/Schemas` describes.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "2819c223-7f76-453a-919d-413861904646", "userName": "bjensen@contoso.com", "active": true, "meta": {"resourceType": "User", "version": "W/\"1\""}}))]
pub struct ScimResource {
    pub schemas: Vec<String>,
    #[schema(nullable = false)]
    pub id: Option<String>,
    #[schema(nullable = false)]
    pub meta: Option<Value>,
}

/// A User to create or replace (RFC 7643 section 4.1; every attribute of `/Schemas` is
/// taken, the enterprise extension included).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "bjensen@contoso.com", "externalId": "bjensen", "active": true, "displayName": "Barbara Jensen", "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "bjensen@contoso.com", "type": "work", "primary": true}]}))]
pub struct ScimUserRequest {
    pub schemas: Vec<String>,
    #[serde(rename = "userName")]
    #[schema(min_length = 1)]
    pub user_name: String,
    #[serde(rename = "externalId")]
    #[schema(nullable = false)]
    pub external_id: Option<String>,
    #[schema(nullable = false)]
    pub active: Option<bool>,
    #[serde(rename = "displayName")]
    #[schema(nullable = false)]
    pub display_name: Option<String>,
    #[schema(nullable = false)]
    pub name: Option<ScimName>,
    #[schema(nullable = false)]
    pub emails: Option<Vec<ScimEmail>>,
}

/// A user's name.
#[derive(Serialize, ToSchema)]
pub struct ScimName {
    #[serde(rename = "givenName")]
    #[schema(nullable = false)]
    pub given_name: Option<String>,
    #[serde(rename = "familyName")]
    #[schema(nullable = false)]
    pub family_name: Option<String>,
}

/// One e-mail address.
#[derive(Serialize, ToSchema)]
pub struct ScimEmail {
    pub value: String,
    #[serde(rename = "type")]
    #[schema(nullable = false)]
    pub kind: Option<String>,
    #[schema(nullable = false)]
    pub primary: Option<bool>,
}

/// A Group to create or replace (RFC 7643 section 4.2).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Sales", "externalId": "sales", "members": []}))]
pub struct ScimGroupRequest {
    pub schemas: Vec<String>,
    #[serde(rename = "displayName")]
    #[schema(min_length = 1)]
    pub display_name: String,
    #[serde(rename = "externalId")]
    #[schema(nullable = false)]
    pub external_id: Option<String>,
    #[schema(nullable = false)]
    pub members: Option<Vec<ScimMember>>,
}

/// A member of a group: a user's `id`.
#[derive(Serialize, ToSchema)]
pub struct ScimMember {
    pub value: String,
}

/// A SCIM ListResponse (RFC 7644 section 3.4.2).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": 1, "startIndex": 1, "itemsPerPage": 1, "Resources": [{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "2819c223-7f76-453a-919d-413861904646", "userName": "bjensen@contoso.com", "externalId": "bjensen", "active": true, "meta": {"resourceType": "User", "version": "W/\"3\"", "location": "https://connector.contoso.com/api/scim/72f988bf-86f1-41af-91ab-2d7cd011db47/v2/Users/2819c223-7f76-453a-919d-413861904646"}}]}))]
pub struct ScimListResponse {
    pub schemas: Vec<String>,
    #[serde(rename = "totalResults")]
    pub total_results: u64,
    #[serde(rename = "startIndex")]
    pub start_index: u64,
    #[serde(rename = "itemsPerPage")]
    pub items_per_page: u64,
    #[serde(rename = "Resources")]
    pub resources: Vec<Value>,
}

/// A SCIM PATCH request (RFC 7644 section 3.5.2).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}))]
pub struct ScimPatchOp {
    pub schemas: Vec<String>,
    #[serde(rename = "Operations")]
    pub operations: Vec<ScimPatchOperation>,
}

/// One PATCH operation.
#[derive(Serialize, ToSchema)]
pub struct ScimPatchOperation {
    /// `add`, `replace` or `remove`, in any case.
    #[schema(pattern = "^([Aa][Dd][Dd]|[Rr][Ee][Pp][Ll][Aa][Cc][Ee]|[Rr][Ee][Mm][Oo][Vv][Ee])$")]
    pub op: String,
    #[schema(nullable = false)]
    pub path: Option<String>,
    #[schema(nullable = false)]
    pub value: Option<Value>,
}

/// A SCIM search request (RFC 7644 section 3.4.3).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName eq \"bjensen@contoso.com\"", "startIndex": 1, "count": 10, "attributes": ["userName", "active"]}))]
pub struct ScimSearchRequest {
    pub schemas: Vec<String>,
    #[schema(nullable = false)]
    pub filter: Option<String>,
    #[serde(rename = "startIndex")]
    #[schema(nullable = false)]
    pub start_index: Option<u64>,
    #[schema(nullable = false)]
    pub count: Option<u64>,
    #[schema(nullable = false)]
    pub attributes: Option<Vec<String>>,
    #[serde(rename = "excludedAttributes")]
    #[schema(nullable = false)]
    pub excluded_attributes: Option<Vec<String>>,
}

/// A tenant's HR connection; a customer-owned one also says which application
/// permissions its app needs.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "type": "customer_owned", "cloud": "global", "client_id": "6e74172b-be56-4843-9ff4-e66a39bb12e3", "credential": "certificate", "linked_by": "admin 9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "linked_at": "2026-01-01T00:00:00Z", "last_success": null, "last_error": null, "permissions_needed": ["User.ReadWrite.All", "GroupMember.ReadWrite.All"]}))]
pub struct HrConnectionBody {
    #[serde(flatten)]
    pub connection: hr::Connection,
    /// Customer-owned only.
    #[schema(nullable = false)]
    pub permissions_needed: Option<Vec<String>>,
}

/// The tenant's organisation as the HR connection sees it.
#[derive(Serialize, ToSchema)]
pub struct HrOrganization {
    pub id: Option<String>,
    pub display_name: Option<String>,
}

/// An application permission the HR connection lacks, and what it is needed for.
#[derive(Serialize, ToSchema)]
pub struct HrMissingPermission {
    pub permission: String,
    pub needed_to: String,
}

/// The outcome of trying the HR connection.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ok": false, "organization": {"id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "display_name": "Contoso"}, "granted_permissions": ["User.ReadWrite.All"], "missing_permissions": [{"permission": "GroupMember.ReadWrite.All", "needed_to": "add and remove group members"}]}))]
pub struct HrConnectionTest {
    /// No permission is missing.
    pub ok: bool,
    pub organization: HrOrganization,
    pub granted_permissions: Vec<String>,
    pub missing_permissions: Vec<HrMissingPermission>,
}

/// Microsoft's sign-in page for linking a delegated HR connection (single use).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"authorize_url": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/authorize?client_id=6e74172b-be56-4843-9ff4-e66a39bb12e3&response_type=code&state=k3Jq9", "expires_at": "2026-12-01T09:10:00Z", "scopes": "User.ReadWrite.All GroupMember.ReadWrite.All offline_access"}))]
pub struct HrLink {
    pub authorize_url: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The delegated scopes asked for, space-separated.
    pub scopes: String,
}

/// A delegated HR connection, linked.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"linked": true, "connection": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "type": "delegated", "cloud": "global", "client_id": null, "credential": null, "linked_by": "ada@contoso.com", "linked_at": "2026-12-01T09:04:00Z", "last_success": null, "last_error": null}}))]
pub struct HrLinked {
    pub linked: bool,
    pub connection: HrConnectionBody,
}

/// A refused callback: an error body, and with `consent_required` (consent is missing for
/// a permission the delegated connection needs) a fresh sign-in link.
#[derive(Serialize, ToSchema)]
pub struct HrConsentRequired {
    pub error: String,
    pub message: String,
    /// With `consent_required`: the link to try again with after consenting.
    #[schema(nullable = false)]
    pub relink_url: Option<String>,
}

/// HR records imported, all of them.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"imported": 120, "import_id": "8d3f2a1b-6c5e-4f7a-9b8c-0d1e2f3a4b5c"}))]
pub struct HrImported {
    pub imported: u64,
    /// This import's id (its rows were staged under it, then committed at once).
    #[schema(format = Uuid)]
    pub import_id: String,
}

/// An import refused as a whole, with every rejected row and why.
#[derive(Serialize, ToSchema)]
pub struct HrRowsRejected {
    /// `rows_rejected`.
    pub error: String,
    pub message: String,
    pub rejected: Vec<hr::import::RejectedRow>,
}

/// A temporary password, shown once (the answer is `Cache-Control: no-store`).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"employee_id": "E-10442", "user_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "temporary_password": "Tq8#vL2m!Rz5wK9p", "force_change_password_next_sign_in": true, "shown_once": true}))]
pub struct HrTemporaryPassword {
    pub employee_id: String,
    pub user_id: Uuid,
    pub temporary_password: String,
    pub force_change_password_next_sign_in: bool,
    pub shown_once: bool,
}

/// The JSON form of an HR import: the records, or an object with them as `employees`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(example = json!([{"employee_id": "E-10442", "given_name": "Ada", "surname": "Lovelace", "work_email": "ada.lovelace@contoso.com", "department": "Research", "usage_location": "GB", "start_date": "2026-12-02"}, {"employee_id": "E-09120", "given_name": "Charles", "surname": "Babbage", "start_date": "2019-04-01", "end_date": "2026-11-30"}]))]
pub enum HrImportJson {
    Records(Vec<hr::HrRecord>),
    Wrapped { employees: Vec<hr::HrRecord> },
}

/// Who made an audited change.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuditActorKind {
    Admin,
    EntraProvisioning,
    GraphSync,
    TenantAdmin,
    Principal,
    System,
}

/// The actor of an audit event.
#[derive(Serialize, ToSchema)]
pub struct AuditActor {
    pub kind: AuditActorKind,
    /// The admin's or principal's object id, or the task's name.
    pub id: String,
    #[schema(nullable = false)]
    pub name: Option<String>,
}

/// What an audit event is about.
#[derive(Serialize, ToSchema)]
pub struct AuditTarget {
    /// `tenant`, `grant`, `user`, `notifications`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[schema(nullable = false)]
    pub display: Option<String>,
}

/// How an audited change ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditStatus {
    Success,
    Failure,
    /// Recorded before the change; one that stays pending never recorded its end.
    Pending,
}

/// How the audit trail is answered: one page (`json`) or an export of every matching
/// event, one a line (`ndjson`, `application/x-ndjson`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    Json,
    Ndjson,
}

/// An event's outcome: a failure carries its code and reason.
#[derive(Serialize, ToSchema)]
pub struct AuditOutcome {
    pub status: AuditStatus,
    /// An HTTP status, a SCIM type or an error code (failures).
    #[schema(nullable = false)]
    pub code: Option<String>,
    /// For people (failures).
    #[schema(nullable = false)]
    pub reason: Option<String>,
}

/// One attribute's change; a secret's old and new values read `changed`.
#[derive(Serialize, ToSchema)]
pub struct AuditChange {
    pub attribute: String,
    pub old: Value,
    pub new: Value,
}

/// One audit event (also one line of the NDJSON export).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "01JDX5K3M8Q2R7T9V4W6Y8Z0AB", "time": "2026-12-01T09:00:00Z", "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47", "actor": {"kind": "admin", "id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "name": "ada@contoso.com"}, "action": "grant.update", "target": {"type": "grant", "id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301"}, "outcome": {"status": "success"}, "changes": [{"attribute": "scopes", "old": ["records.read"], "new": ["records.read", "records.write"]}], "invocation_id": "b9f1c6a2-3d4e-4f5a-8b6c-7d8e9f0a1b2c", "correlation": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"}))]
pub struct AuditEvent {
    pub id: String,
    #[schema(format = DateTime)]
    pub time: String,
    pub tenant: Uuid,
    pub actor: AuditActor,
    /// Dotted, e.g. `grant.create`, `scim.user.update`.
    pub action: String,
    pub target: AuditTarget,
    pub outcome: AuditOutcome,
    /// Left out when nothing changed.
    #[schema(nullable = false)]
    pub changes: Option<Vec<AuditChange>>,
    /// The Functions invocation that made the change.
    #[schema(nullable = false)]
    pub invocation_id: Option<String>,
    /// Ties events of one request or notice together.
    #[schema(nullable = false)]
    pub correlation: Option<String>,
}

/// A page of a tenant's audit trail, newest first.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"events": [{"id": "01JDX5K3M8Q2R7T9V4W6Y8Z0AB", "time": "2026-12-01T09:00:00Z", "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47", "actor": {"kind": "entra-provisioning", "id": "entra-provisioning"}, "action": "scim.user.update", "target": {"type": "user", "id": "2819c223-7f76-453a-919d-413861904646", "display": "bjensen@contoso.com"}, "outcome": {"status": "success"}, "changes": [{"attribute": "active", "old": true, "new": false}], "correlation": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"}], "next_cursor": "MjAyNi0xMi0wMVQwOTowMDowMFo"}))]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass it back as `cursor` for the next (older) page.
    pub next_cursor: Option<String>,
}

/// The SCIM operation a provisioning log row records.
#[derive(Serialize, ToSchema)]
pub enum ProvisioningOperation {
    Create,
    Update,
    Replace,
    Delete,
    Other,
}

/// Why a provisioning request failed.
#[derive(Serialize, ToSchema)]
pub struct ProvisioningError {
    pub code: String,
    pub reason: String,
}

/// A SCIM request of Entra's and what came of it.
#[derive(Serialize, ToSchema)]
pub struct ProvisioningLogEntry {
    pub id: String,
    #[schema(format = DateTime)]
    pub time: String,
    pub action: String,
    pub operation: ProvisioningOperation,
    pub target: AuditTarget,
    pub status: AuditStatus,
    pub correlation: Option<String>,
    /// On success.
    #[schema(nullable = false)]
    pub modified_properties: Option<Vec<AuditChange>>,
    /// On failure.
    #[schema(nullable = false)]
    pub error: Option<ProvisioningError>,
}

/// A page of a tenant's provisioning log, newest first.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"entries": [{"id": "01JDX5K3M8Q2R7T9V4W6Y8Z0AC", "time": "2026-12-01T09:01:00Z", "action": "scim.user.create", "operation": "Create", "target": {"type": "user", "id": "bjensen", "display": "bjensen@contoso.com"}, "status": "failure", "correlation": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9", "error": {"code": "uniqueness", "reason": "userName is taken"}}], "next_cursor": null}))]
pub struct ProvisioningLogPage {
    pub entries: Vec<ProvisioningLogEntry>,
    /// Pass it back as `cursor` for the next (older) page.
    pub next_cursor: Option<String>,
}

/// A kind of incident a tenant can be notified of.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKindName {
    SyncFailing,
    ScimFailing,
    ConsentRevoked,
    CertificateExpiring,
    PoisonMessage,
}

/// Who hears about a tenant's incidents.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"emails": ["it-ops@contoso.com"], "webhook_url": "https://hooks.contoso.com/entra-connector", "webhook_secret_set": true, "notify_on": ["sync_failing", "scim_failing", "consent_revoked"], "scim_failure_rate_percent": 20, "scim_min_requests": 10}))]
pub struct NotificationSettingsBody {
    #[schema(format = Email)]
    pub emails: Vec<String>,
    pub webhook_url: Option<String>,
    /// A signing secret for the webhook exists.
    pub webhook_secret_set: bool,
    pub notify_on: Vec<IncidentKindName>,
    /// `scim_failing` opens when at least this share (%) of the SCIM requests of the last
    /// 5 minutes failed...
    #[schema(minimum = 1, maximum = 100)]
    pub scim_failure_rate_percent: u8,
    /// ... over at least this many requests.
    #[schema(minimum = 1, maximum = 100000)]
    pub scim_min_requests: u32,
    /// The webhook signing secret, only in the answer of the `PUT` that made it (shown once).
    #[schema(nullable = false)]
    pub webhook_secret: Option<String>,
}

/// A test notice that was delivered.
#[derive(Serialize, ToSchema)]
pub struct TestNoticeDelivered {
    /// Always `true`.
    pub delivered: bool,
    /// The notice's id (as the webhook and e-mail show it).
    pub id: String,
}

/// A test notice that could not be delivered.
#[derive(Serialize, ToSchema)]
pub struct TestNoticeFailed {
    /// Always `false`.
    pub delivered: bool,
    /// Why, from the mail server or the webhook.
    pub error: String,
}

/// What came of a test notice.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(example = json!({"delivered": true, "id": "notice-8f7e6d5c"}))]
pub enum TestNoticeOutcome {
    Delivered(TestNoticeDelivered),
    Failed(TestNoticeFailed),
}
