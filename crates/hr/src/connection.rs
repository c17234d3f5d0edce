//! A tenant's HR connection to Entra: one active at a time, either the customer's own app
//! registration (application permissions, certificate preferred over a secret) or the
//! service's app with a linked administrator's delegated access (refresh token in the
//! vault only).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Which kind of connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionType {
    /// The tenant's own app registration, app-only.
    CustomerOwned,
    /// The service's app acting for a signed-in administrator (auth code + PKCE).
    Delegated,
}

/// How a customer-owned app proves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// The certificate of the tenant's credential-certificate endpoint (key in the vault).
    Certificate,
    /// A client secret the admin chose as a fallback (kept in the vault).
    Secret,
}

/// A tenant's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Connection {
    pub tenant_id: Uuid,
    #[serde(rename = "type")]
    pub kind: ConnectionType,
    /// The cloud's API name (`global`, `usgov`, `usgovdod`, `china`).
    pub cloud: String,
    /// Customer-owned: the app's client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialKind>,
    /// Who linked it: the admin API caller, or the signed-in administrator (delegated).
    pub linked_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub linked_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A delegated link in progress: made when an admin asks for the authorize URL, used once
/// by the callback (found by the hash of its `state`), for ten minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedLink {
    pub tenant_id: Uuid,
    pub cloud: String,
    /// The PKCE code verifier the callback redeems the code with.
    pub verifier: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}
