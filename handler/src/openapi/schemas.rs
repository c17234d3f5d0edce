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
pub struct TenantList {
    pub tenants: Vec<TenantBody>,
}

/// An offboarded tenant, with what this call revoked.
#[derive(Serialize, ToSchema)]
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
pub struct GrantList {
    pub grants: Vec<GrantBody>,
}

/// An employee record.
#[derive(Serialize, ToSchema)]
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
pub struct Statistics {
    pub total: StatisticsTotal,
    pub tenants: Vec<TenantStatistics>,
}

/// Directory sync health (no tenant ids, no user data).
#[derive(Serialize, ToSchema)]
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
pub struct ProvisionedCertificate {
    pub certificate: UserCertificate,
    /// Null when the request carried a CSR.
    pub private_key: Option<IssuedKey>,
    pub user: DirectoryUser,
}

/// The SCIM Secret Token and the Tenant URL to paste beside it.
#[derive(Serialize, ToSchema)]
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
pub struct ProvisionedUserList {
    pub users: Vec<ProvisionedUser>,
}

/// A provisioned group as the product sees it.
#[derive(Serialize, ToSchema)]
pub struct ProvisionedGroup {
    pub id: Uuid,
    pub display_name: Value,
    pub external_id: Value,
    pub settings: ResourceSettings,
}

/// An invitation of the outbox.
#[derive(Serialize, ToSchema)]
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
pub struct InvitationList {
    pub invitations: Vec<InvitationBody>,
}

/// A redeemed invitation.
#[derive(Serialize, ToSchema)]
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
pub struct HrConnectionTest {
    /// No permission is missing.
    pub ok: bool,
    pub organization: HrOrganization,
    pub granted_permissions: Vec<String>,
    pub missing_permissions: Vec<HrMissingPermission>,
}

/// Microsoft's sign-in page for linking a delegated HR connection (single use).
#[derive(Serialize, ToSchema)]
pub struct HrLink {
    pub authorize_url: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The delegated scopes asked for, space-separated.
    pub scopes: String,
}

/// A delegated HR connection, linked.
#[derive(Serialize, ToSchema)]
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
pub enum TestNoticeOutcome {
    Delivered(TestNoticeDelivered),
    Failed(TestNoticeFailed),
}
