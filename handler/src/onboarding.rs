//! Onboarding customer tenants by admin consent: single-use, expiring activation links;
//! the redirect to Microsoft's admin-consent page; and the callback, which never trusts the
//! `tenant` parameter alone but proves it with a client-credentials token and
//! `GET /organization`, waiting (bounded) for consent to propagate.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entra::credentials::{AppCredential, AppRegistration, TokenError};
use entra::graph::{GraphClient, GraphError};
use entra::{Cloud, Endpoints};
use tables::ETag;
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;

use crate::app_credentials::{AppCredentials, CredentialNames};
use crate::config::EntraSettings;
use crate::domain::{ActivationLink, LinkState, Tenant, TenantStatus};
use crate::store::{LinkStore, StoreError, TenantStore};

/// Longest a link may live.
pub const MAX_LINK_MINUTES: i64 = 7 * 24 * 60;

/// Why a link cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProblem {
    /// Unknown, malformed, or the secret does not match (a forged `state`).
    Invalid,
    Expired,
    Used,
    Revoked,
}

/// How a consent callback ended.
#[derive(Debug)]
pub enum ConsentOutcome {
    /// Microsoft confirmed the tenant: it is active.
    Confirmed(Tenant),
    /// Consent recorded, but Microsoft did not confirm in time: housekeeping will.
    Pending(Tenant),
    /// The administrator declined, or Microsoft reported an error.
    Declined {
        error: String,
        description: String,
    },
    Link(LinkProblem),
    /// The `tenant` parameter is not a tenant Microsoft would give our app a token for.
    Rejected(String),
    /// The service has no credential to confirm tenants with.
    NotConfigured,
}

/// The onboarding service.
pub struct Onboarding {
    links: Arc<dyn LinkStore>,
    tenants: Arc<dyn TenantStore>,
    graph: Arc<GraphClient>,
    endpoints: Endpoints,
    entra: EntraSettings,
    credentials: Arc<AppCredentials>,
    public_base_url: Url,
    confirm_budget: Duration,
}

/// A new link's secret and its stored hash.
fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_secret(&secret);
    (secret, hash)
}

fn hash_secret(secret: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Onboarding {
    /// The service over its stores and Graph.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        links: Arc<dyn LinkStore>,
        tenants: Arc<dyn TenantStore>,
        graph: Arc<GraphClient>,
        endpoints: Endpoints,
        entra: EntraSettings,
        credentials: Arc<AppCredentials>,
        public_base_url: Url,
        confirm_budget: Duration,
    ) -> Onboarding {
        Onboarding {
            links,
            tenants,
            graph,
            endpoints,
            entra,
            credentials,
            public_base_url,
            confirm_budget,
        }
    }

    fn public(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.public_base_url.as_str().trim_end_matches('/')
        )
    }

    /// Creates a link; returns it with the URL to send (the only place the secret appears).
    pub async fn create_link(
        &self,
        cloud: Cloud,
        minutes: i64,
    ) -> Result<(ActivationLink, String), StoreError> {
        let (secret, secret_hash) = new_secret();
        let now = OffsetDateTime::now_utc();
        let link = ActivationLink {
            id: Uuid::new_v4(),
            cloud,
            secret_hash,
            created_at: now,
            expires_at: now + time::Duration::minutes(minutes),
            used_at: None,
            revoked_at: None,
            tenant_id: None,
        };
        self.links.create(&link).await?;
        let url = self.public(&format!("/api/consent/start?link={}.{secret}", link.id));
        Ok((link, url))
    }

    /// All links.
    pub async fn list_links(&self) -> Result<Vec<ActivationLink>, StoreError> {
        self.links.list().await
    }

    /// Revokes a link.
    pub async fn revoke_link(&self, id: Uuid) -> Result<bool, StoreError> {
        self.links.revoke(id, OffsetDateTime::now_utc()).await
    }

    /// Checks a link token (`<id>.<secret>`): it must exist, match, and be pending.
    pub async fn check(
        &self,
        token: &str,
    ) -> Result<Result<(ActivationLink, ETag), LinkProblem>, StoreError> {
        let Some((id, secret)) = token.split_once('.') else {
            return Ok(Err(LinkProblem::Invalid));
        };
        let Ok(id) = Uuid::try_parse(id) else {
            return Ok(Err(LinkProblem::Invalid));
        };
        let Some((link, etag)) = self.links.get(id).await? else {
            return Ok(Err(LinkProblem::Invalid));
        };
        if verify_slices_are_equal(hash_secret(secret).as_bytes(), link.secret_hash.as_bytes())
            .is_err()
        {
            return Ok(Err(LinkProblem::Invalid));
        }
        Ok(match link.state(OffsetDateTime::now_utc()) {
            LinkState::Pending => Ok((link, etag)),
            LinkState::Used => Err(LinkProblem::Used),
            LinkState::Expired => Err(LinkProblem::Expired),
            LinkState::Revoked => Err(LinkProblem::Revoked),
        })
    }

    /// Microsoft's v2 admin-consent URL for a checked link.
    pub fn consent_url(&self, link: &ActivationLink, token: &str) -> String {
        let graph_scope = format!("{}/.default", link.cloud.graph());
        format!(
            "{}/organizations/v2.0/adminconsent?client_id={}&scope={}&redirect_uri={}&state={}",
            self.endpoints.login(link.cloud),
            self.entra.client_id_in(link.cloud),
            encode(&graph_scope),
            encode(&self.public("/api/consent/callback")),
            encode(token),
        )
    }

    /// The app registration that reads a tenant's directory: its own app in customer-owned
    /// mode, else the service's app in its cloud; None without a usable credential.
    pub async fn registration(&self, tenant: &Tenant) -> Option<AppRegistration> {
        self.app(tenant.cloud, Some(tenant)).await
    }

    /// The app that confirms a tenant: its own app registration when the tenant named one
    /// (customer-owned mode), else the service's app in the tenant's cloud.
    async fn app(&self, cloud: Cloud, tenant: Option<&Tenant>) -> Option<AppRegistration> {
        if let Some(own) = tenant.and_then(|t| t.app_client_id) {
            let names = CredentialNames::tenant(tenant.expect("checked above").tenant_id);
            return match self.credentials.certificate_credential(&names).await {
                Ok(Some(credential)) => Some(AppRegistration {
                    cloud,
                    client_id: own,
                    credential,
                }),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "vault unavailable for a tenant's own app credential");
                    None
                }
            };
        }
        match self.credentials.service_credential(cloud).await {
            Ok(credential) => Some(AppRegistration {
                cloud,
                client_id: self.entra.client_id_in(cloud),
                credential: credential?,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "vault unavailable for the app credential");
                None
            }
        }
    }

    /// Handles Microsoft's redirect back: `error` first, then `state`, then the tenant.
    pub async fn complete(
        &self,
        params: &std::collections::HashMap<String, String>,
    ) -> Result<ConsentOutcome, StoreError> {
        if let Some(error) = params.get("error") {
            return Ok(ConsentOutcome::Declined {
                error: error.clone(),
                description: params.get("error_description").cloned().unwrap_or_default(),
            });
        }
        let state = params.get("state").map(String::as_str).unwrap_or_default();
        let (link, etag) = match self.check(state).await? {
            Ok(found) => found,
            Err(problem) => return Ok(ConsentOutcome::Link(problem)),
        };
        let Some(tenant_id) = params.get("tenant").and_then(|t| Uuid::try_parse(t).ok()) else {
            return Ok(ConsentOutcome::Rejected(
                "the callback did not name a tenant id".into(),
            ));
        };
        let Some(app) = self.app(link.cloud, None).await else {
            return Ok(ConsentOutcome::NotConfigured);
        };
        // exactly one of many concurrent callbacks gets past this point
        let Some(claimed) = self
            .links
            .claim(&link, etag, tenant_id, OffsetDateTime::now_utc())
            .await?
        else {
            return Ok(ConsentOutcome::Link(LinkProblem::Used));
        };
        let consented_at = OffsetDateTime::now_utc();
        let (status, name) = match self.confirm(&app, tenant_id).await {
            Confirmation::Confirmed(name) => (TenantStatus::Active, name),
            Confirmation::NotYet => (
                TenantStatus::Pending,
                format!("Tenant {tenant_id} (awaiting confirmation)"),
            ),
            Confirmation::Rejected(why) => {
                // the link was not used up by a tenant Microsoft does not confirm
                self.links.release(&link, claimed).await?;
                return Ok(ConsentOutcome::Rejected(why));
            }
        };
        match self
            .record(tenant_id, link.cloud, name, status, consented_at)
            .await
        {
            // the page reports what Microsoft confirmed now, whatever was stored before
            Ok(tenant) if status == TenantStatus::Active => Ok(ConsentOutcome::Confirmed(tenant)),
            Ok(tenant) => Ok(ConsentOutcome::Pending(tenant)),
            Err(StoreError::Conflict(why)) => {
                self.links.release(&link, claimed).await?;
                Ok(ConsentOutcome::Rejected(why))
            }
            Err(e) => {
                // nothing recorded: keep the link usable so the administrator can retry
                if let Err(release) = self.links.release(&link, claimed).await {
                    tracing::warn!(error = %release, "could not release an activation link after a failure");
                }
                Err(e)
            }
        }
    }

    async fn record(
        &self,
        tenant_id: Uuid,
        cloud: Cloud,
        display_name: String,
        status: TenantStatus,
        at: OffsetDateTime,
    ) -> Result<Tenant, StoreError> {
        let tenant = Tenant {
            tenant_id,
            display_name,
            cloud,
            status,
            added_by: "admin_consent".into(),
            created_at: at,
            consented_at: Some(at),
            offboarded_at: None,
            app_client_id: None,
        };
        self.tenants.record_consent(&tenant).await
    }

    /// Proves the tenant: a token for it and its organization, retried with back-off while
    /// consent propagates, within the budget.
    async fn confirm(&self, app: &AppRegistration, tenant_id: Uuid) -> Confirmation {
        let deadline = tokio::time::Instant::now() + self.confirm_budget;
        let mut delay = Duration::from_millis(500);
        let mut app = app.clone();
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(
                remaining,
                self.graph.organization(&app, &tenant_id.to_string()),
            )
            .await;
            let Ok(attempt) = attempt else {
                return Confirmation::NotYet;
            };
            match attempt {
                Ok(org) => {
                    let name = org["displayName"]
                        .as_str()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    return Confirmation::Confirmed(if name.is_empty() {
                        format!("Tenant {tenant_id}")
                    } else {
                        name
                    });
                }
                Err(GraphError::Token(TokenError::TenantNotFound(why))) => {
                    return Confirmation::Rejected(why);
                }
                Err(GraphError::Token(TokenError::InvalidClient(why))) => {
                    // a certificate not uploaded yet (or just rotated): use the secret if any
                    if matches!(app.credential, AppCredential::Certificate { .. })
                        && let Ok(Some(secret)) = self.credentials.secret_credential().await
                    {
                        tracing::warn!(error = %why, "certificate credential refused; falling back to the client secret");
                        app.credential = secret;
                        continue;
                    }
                    tracing::error!(error = %why, "the service's own app credential was refused");
                    return Confirmation::Rejected(
                        "this service could not authenticate to Microsoft".into(),
                    );
                }
                Err(e) => {
                    // consent still propagating (or Microsoft unreachable): wait, bounded
                    tracing::info!(%tenant_id, error = %e, "tenant not confirmed yet");
                    if tokio::time::Instant::now() + delay > deadline {
                        return Confirmation::NotYet;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Confirms tenants whose consent is pending (called by housekeeping); returns how many
    /// became active.
    pub async fn confirm_pending(&self) -> Result<usize, StoreError> {
        let mut confirmed = 0;
        for tenant in self.tenants.list().await? {
            if tenant.status != TenantStatus::Pending || tenant.added_by != "admin_consent" {
                continue;
            }
            let Some(app) = self.app(tenant.cloud, Some(&tenant)).await else {
                continue;
            };
            if let Ok(org) = self
                .graph
                .organization(&app, &tenant.tenant_id.to_string())
                .await
            {
                let name = org["displayName"]
                    .as_str()
                    .unwrap_or(&tenant.display_name)
                    .to_string();
                let active = Tenant {
                    display_name: name,
                    status: TenantStatus::Active,
                    ..tenant.clone()
                };
                match self.tenants.record_consent(&active).await {
                    Ok(_) => confirmed += 1,
                    // offboarded meanwhile: leave it so
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(confirmed)
    }
}

enum Confirmation {
    Confirmed(String),
    NotYet,
    Rejected(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_only_their_hash_is_kept() {
        let (a, hash_a) = new_secret();
        let (b, _) = new_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_a, hash_secret(&a));
        assert!(!hash_a.contains(&a));
    }
}
