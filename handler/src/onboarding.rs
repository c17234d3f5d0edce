//! Onboarding customer tenants by admin consent: single-use, expiring activation links;
//! the redirect to Microsoft's admin-consent page; and the callback, which never trusts the
//! `tenant` parameter alone but proves it with a client-credentials token and
//! `GET /organization`, waiting (bounded) for consent to propagate.
//!
//! Microsoft's answers fall in three classes (see [`Failure`]): propagation (the app not
//! found in the directory yet, Microsoft unreachable) is waited for and may leave the
//! tenant `pending`; a refusal of the tenant or of our app in it writes nothing and
//! releases the link, the page saying why; our own credential or request refused writes
//! nothing, releases the link, asks to try again later and is logged at error level. A
//! `pending` tenant housekeeping cannot confirm within `CONSENT_PENDING_MINUTES` is
//! dropped, its link marked failed with the reason.

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

/// A link claimed this long ago whose tenant is not registered was used by a callback
/// that never finished (or by a dropped pending tenant): it is marked failed. Longer than
/// any callback runs (`CONSENT_CONFIRM_SECONDS` is at most 120).
const ORPHANED_LINK_MINUTES: i64 = 15;

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
    /// Used by a consent that was never confirmed.
    Failed,
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
    /// Microsoft refuses the tenant, or our app in it: nothing recorded, the link released;
    /// the reason is for the administrator.
    Rejected(String),
    /// Microsoft refused our own credential or request (logged at error level), or the
    /// vault holding our credential could not be read: nothing recorded, the link
    /// released; the administrator is asked to try again later.
    TryLater,
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
    /// `CONSENT_PENDING_MINUTES`: how long a pending tenant waits for confirmation.
    pending_minutes: i64,
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
        pending_limit: Duration,
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
            pending_minutes: i64::try_from(pending_limit.as_secs() / 60).unwrap_or(i64::MAX),
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
            failed_at: None,
            failure_reason: None,
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
            LinkState::Failed => Err(LinkProblem::Failed),
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
    /// mode, else the service's app in its cloud; None when no credential is configured.
    pub async fn registration(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<AppRegistration>, vault::VaultError> {
        self.app(tenant.cloud, Some(tenant)).await
    }

    /// The app that confirms a tenant: its own app registration when the tenant named one
    /// (customer-owned mode), else the service's app in the tenant's cloud.
    /// `Ok(None)` when no credential is configured; `Err` when the vault could not be
    /// read (a passing outage, not a missing configuration).
    async fn app(
        &self,
        cloud: Cloud,
        tenant: Option<&Tenant>,
    ) -> Result<Option<AppRegistration>, vault::VaultError> {
        if let Some(own) = tenant.and_then(|t| t.app_client_id) {
            let names = CredentialNames::tenant(tenant.expect("checked above").tenant_id);
            let credential = self.credentials.certificate_credential(&names).await?;
            return Ok(credential.map(|credential| AppRegistration {
                cloud,
                client_id: own,
                credential,
            }));
        }
        let credential = self.credentials.service_credential(cloud).await?;
        Ok(credential.map(|credential| AppRegistration {
            cloud,
            client_id: self.entra.client_id_in(cloud),
            credential,
        }))
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
        let app = match self.app(link.cloud, None).await {
            Ok(Some(app)) => app,
            Ok(None) => return Ok(ConsentOutcome::NotConfigured),
            Err(e) => {
                // nothing claimed yet: the link stays usable
                tracing::warn!(error = %e, "consent callback: the vault is unavailable for the app credential");
                return Ok(ConsentOutcome::TryLater);
            }
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
            Confirmation::Refused(why) => {
                // the link was not used up by a tenant Microsoft does not confirm
                self.links.release(&link, claimed).await?;
                return Ok(ConsentOutcome::Rejected(why));
            }
            Confirmation::OurSide => {
                self.links.release(&link, claimed).await?;
                return Ok(ConsentOutcome::TryLater);
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
                Err(GraphError::Token(TokenError::InvalidClient(why)))
                    if matches!(app.credential, AppCredential::Certificate { .. }) =>
                {
                    // a certificate not uploaded yet (or just rotated): use the secret if any
                    if let Ok(Some(secret)) = self.credentials.secret_credential().await {
                        tracing::warn!(error = %why, "certificate credential refused; falling back to the client secret");
                        app.credential = secret;
                        continue;
                    }
                    log_our_side(
                        tenant_id,
                        &GraphError::Token(TokenError::InvalidClient(why)),
                    );
                    return Confirmation::OurSide;
                }
                Err(e) => match Failure::of(&e) {
                    Failure::Refused(why) => {
                        tracing::info!(%tenant_id, error = %e, "Microsoft refused the consented tenant");
                        return Confirmation::Refused(why);
                    }
                    Failure::OurSide => {
                        log_our_side(tenant_id, &e);
                        return Confirmation::OurSide;
                    }
                    Failure::NotYet => {
                        // consent still propagating (or Microsoft unreachable): wait, bounded
                        tracing::info!(%tenant_id, error = %e, "tenant not confirmed yet");
                        if tokio::time::Instant::now() + delay > deadline {
                            return Confirmation::NotYet;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                },
            }
        }
    }

    /// Confirms tenants whose consent is pending (called by housekeeping). One that cannot
    /// be confirmed within `CONSENT_PENDING_MINUTES` of its latest consent is dropped from
    /// the registry: the links it used are marked failed with the reason (the record kept
    /// of it) and a warning is logged. Links claimed long ago whose tenant is not
    /// registered are marked failed too, so that no link stays used by nothing.
    pub async fn confirm_pending(&self) -> Result<PendingReport, StoreError> {
        let now = OffsetDateTime::now_utc();
        let cutoff = now - time::Duration::minutes(self.pending_minutes);
        let mut report = PendingReport::default();
        let tenants = self.tenants.list().await?;
        let mut registered: std::collections::HashSet<Uuid> =
            tenants.iter().map(|t| t.tenant_id).collect();
        for tenant in tenants {
            if tenant.status != TenantStatus::Pending || tenant.added_by != "admin_consent" {
                continue;
            }
            let last_attempt = match self.app(tenant.cloud, Some(&tenant)).await {
                Ok(None) => "no app credential to confirm it with".to_string(),
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant.tenant_id, error = %e, "the vault is unavailable for the app credential");
                    format!("the vault was unavailable ({e})")
                }
                Ok(Some(app)) => match self
                    .graph
                    .organization(&app, &tenant.tenant_id.to_string())
                    .await
                {
                    Ok(org) => {
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
                            Ok(_) => {
                                report.confirmed += 1;
                                report.changed.push(tenant.tenant_id);
                            }
                            // offboarded meanwhile: leave it so
                            Err(StoreError::Conflict(_)) => {}
                            Err(e) => return Err(e),
                        }
                        continue;
                    }
                    Err(e) => {
                        if let Failure::OurSide = Failure::of(&e) {
                            // logged; the tenant still waits its time out
                            log_our_side(tenant.tenant_id, &e);
                        }
                        e.to_string()
                    }
                },
            };
            if tenant.consented_at.unwrap_or(tenant.created_at) >= cutoff {
                continue; // still within CONSENT_PENDING_MINUTES
            }
            let reason = format!(
                "consent not confirmed by Microsoft within {} minutes (CONSENT_PENDING_MINUTES); last attempt: {last_attempt}",
                self.pending_minutes
            );
            if self.drop_unconfirmed(&tenant, &reason, cutoff, now).await? {
                registered.remove(&tenant.tenant_id);
                report.dropped += 1;
                report.changed.push(tenant.tenant_id);
            }
        }
        self.fail_orphaned_links(&registered, now).await?;
        Ok(report)
    }

    /// Drops a pending tenant (unless a confirmation or a newer consent landed first) and
    /// marks the links it used failed; false when it was kept.
    async fn drop_unconfirmed(
        &self,
        tenant: &Tenant,
        reason: &str,
        cutoff: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let Some(dropped) = self
            .tenants
            .remove_unconfirmed(tenant.tenant_id, cutoff)
            .await?
        else {
            return Ok(false);
        };
        tracing::warn!(
            tenant_id = %dropped.tenant_id,
            consented_at = ?dropped.consented_at,
            reason,
            "pending tenant dropped from the registry: its consent was never confirmed"
        );
        for link in self.links.list().await? {
            if link.tenant_id == Some(dropped.tenant_id)
                && link.used_at.is_some()
                && link.failed_at.is_none()
            {
                self.links.fail(link.id, reason, now).await?;
            }
        }
        Ok(true)
    }

    /// Marks failed the links claimed over [`ORPHANED_LINK_MINUTES`] ago whose tenant is
    /// not registered: a callback that never recorded its tenant, or a drop whose link
    /// marking did not finish.
    async fn fail_orphaned_links(
        &self,
        registered: &std::collections::HashSet<Uuid>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let before = now - time::Duration::minutes(ORPHANED_LINK_MINUTES);
        for link in self.links.list().await? {
            let orphaned = link.state(now) == LinkState::Used
                && link.used_at.is_some_and(|at| at < before)
                && link.tenant_id.is_none_or(|t| !registered.contains(&t));
            if orphaned {
                let reason = "the consent made with this link recorded no tenant (the callback did not finish, or its pending tenant was dropped)";
                tracing::warn!(link_id = %link.id, tenant_id = ?link.tenant_id, reason, "activation link marked failed");
                self.links.fail(link.id, reason, now).await?;
            }
        }
        Ok(())
    }
}

/// What housekeeping did with pending tenants.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PendingReport {
    /// Confirmed by Microsoft: now active.
    pub confirmed: usize,
    /// Not confirmed within `CONSENT_PENDING_MINUTES`: dropped, their links failed.
    pub dropped: usize,
    /// The tenants whose registry entry changed (whose cached status is now wrong).
    pub changed: Vec<Uuid>,
}

enum Confirmation {
    Confirmed(String),
    /// Not confirmed within the budget: consent still propagating, or Microsoft unreachable.
    NotYet,
    /// Microsoft refuses the tenant or our app in it; why, for the administrator.
    Refused(String),
    /// Microsoft refused our own credential or request.
    OurSide,
}

/// What a failed confirmation attempt means, by Microsoft's answer.
enum Failure {
    /// Consent still propagating (the app not found in the directory yet: AADSTS700016),
    /// Graph not seeing the consent yet, or Microsoft unreachable: try again.
    NotYet,
    /// The tenant does not exist (AADSTS90002, AADSTS900023), or its administrator
    /// disabled our app (AADSTS7000112): why, for the administrator.
    Refused(String),
    /// Our credential (AADSTS7000215, AADSTS700027, ...) or request refused: nothing the
    /// customer can change.
    OurSide,
}

impl Failure {
    fn of(e: &GraphError) -> Failure {
        match e {
            GraphError::Token(TokenError::TenantNotFound(why)) => Failure::Refused(format!(
                "Microsoft does not know this organization in this cloud ({why})."
            )),
            GraphError::Token(TokenError::AppDisabled(why)) => Failure::Refused(format!(
                "This service's application is disabled in your organization ({why}). An administrator can enable it again (Microsoft Entra admin center: Enterprise applications, this application, Properties, \"Enabled for users to sign in\")."
            )),
            // our credential or token request refused, or Graph refusing our request itself
            // (a 4xx other than 401/403/404/429, which look like propagation or throttling)
            GraphError::Token(TokenError::InvalidClient(_) | TokenError::Refused(_))
            | GraphError::Rejected { .. } => Failure::OurSide,
            // AADSTS700016 and the like, Microsoft unreachable, Graph not seeing the consent
            // (403/401/404) or failing: what propagation and outages look like
            _ => Failure::NotYet,
        }
    }
}

/// Logs, loudly, that Microsoft refused our own credential or request: an operator must
/// fix the app registration or its credential. Microsoft's error names codes and ids, never
/// the credential.
fn log_our_side(tenant_id: Uuid, e: &GraphError) {
    tracing::error!(
        %tenant_id,
        error = %e,
        "Microsoft refused this service's own app credential or request while confirming a consent: check the app registration, its certificate and ENTRA_CLIENT_SECRET"
    );
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
