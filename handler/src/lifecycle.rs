//! A tenant's lifecycle across capabilities: offboarding as one idempotent procedure, and
//! giving a tenant access (a grant, its SCIM Secret Token) so that none outlives an
//! offboarding that races it.
//!
//! Offboarding writes the status first: from then on every capability refuses the tenant
//! (the Connector API and SCIM authentication both require `active`). Then each
//! capability's [`OffboardingStep`] takes back what the tenant still holds. A step that
//! fails leaves the tenant offboarded and refused; running the procedure again (a retried
//! `DELETE /api/v1/tenants/{id}`) runs every step again, and steps already done find
//! nothing left to do.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::access::AccessControl;
use crate::domain::{Grant, Tenant, TenantStatus};
use crate::provisioning::ScimService;
use crate::store::StoreError;

/// One capability's part of offboarding. Runs after the tenant's status is `offboarded`,
/// and again on every retry: it must be idempotent.
#[async_trait]
pub trait OffboardingStep: Send + Sync {
    /// The step's name in answers and logs.
    fn name(&self) -> &'static str;
    /// Takes back what the tenant holds through this capability; how many things it took
    /// back this time (0 when a previous run already did).
    async fn run(&self, tenant_id: Uuid, at: OffsetDateTime) -> Result<usize, StoreError>;
}

/// Revokes the tenant's access grants (kept for audit, never matching again).
struct RevokeGrants<'a>(&'a AccessControl);

#[async_trait]
impl OffboardingStep for RevokeGrants<'_> {
    fn name(&self) -> &'static str {
        "grants"
    }

    async fn run(&self, tenant_id: Uuid, at: OffsetDateTime) -> Result<usize, StoreError> {
        let revoked = self.0.grants.revoke_all(tenant_id, at).await;
        // whatever the outcome: some rows may have changed before a failure
        self.0.invalidate_grants(tenant_id);
        revoked
    }
}

/// Revokes the tenant's SCIM Secret Token.
struct RevokeScimToken<'a>(&'a ScimService);

#[async_trait]
impl OffboardingStep for RevokeScimToken<'_> {
    fn name(&self) -> &'static str {
        "scim_token"
    }

    async fn run(&self, tenant_id: Uuid, _at: OffsetDateTime) -> Result<usize, StoreError> {
        Ok(usize::from(self.0.revoke_token(tenant_id).await?))
    }
}

/// Stops the tenant's directory sync: its checkpoint and deltaLinks are forgotten, so no
/// round resumes for it (a running one loses its lease at its next checkpoint) and a
/// tenant registered again starts with a full round. The directory itself is kept.
struct StopSync<'a>(&'a dyn sync::SyncStateStore);

#[async_trait]
impl OffboardingStep for StopSync<'_> {
    fn name(&self) -> &'static str {
        "sync"
    }

    async fn run(&self, tenant_id: Uuid, _at: OffsetDateTime) -> Result<usize, StoreError> {
        self.0.forget(tenant_id).await.map_err(|e| match e {
            sync::SyncError::State(e) => StoreError::from(e),
            other => StoreError::Corrupt(other.to_string()),
        })
    }
}

/// Revokes the tenant's active certificates (reason cessationOfOperation); the CA and its
/// CRL stay published, so relying parties learn of the revocations.
struct RevokeCertificates<'a>(&'a pki::Pki);

#[async_trait]
impl OffboardingStep for RevokeCertificates<'_> {
    fn name(&self) -> &'static str {
        "certificates"
    }

    async fn run(&self, tenant_id: Uuid, _at: OffsetDateTime) -> Result<usize, StoreError> {
        self.0
            .revoke_all(
                tenant_id,
                None,
                pki::RevocationReason::CessationOfOperation,
                "offboarding",
            )
            .await
            .map_err(|e| match e {
                pki::PkiError::Store(pki::StoreError::Unavailable(e)) => StoreError::Unavailable(e),
                other => StoreError::Corrupt(other.to_string()),
            })
    }
}

/// What one offboarding run did.
#[derive(Debug)]
pub struct Offboarded {
    /// The tenant as stored: `offboarded`, with the time of its first offboarding.
    pub tenant: Tenant,
    /// Each step's name and how many things it took back in this run.
    pub steps: Vec<(&'static str, usize)>,
}

impl Offboarded {
    /// What the step called `name` took back in this run.
    pub fn count(&self, name: &str) -> usize {
        self.steps
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| *c)
    }
}

/// Why offboarding did not complete.
#[derive(Debug, thiserror::Error)]
pub enum OffboardError {
    /// The tenant is not registered.
    #[error("tenant {0} is not registered")]
    NotRegistered(Uuid),
    /// The status could not be written: nothing changed.
    #[error("the tenant's status could not be written: {0}")]
    Status(StoreError),
    /// The tenant is offboarded, so refused everywhere, but these steps failed; running
    /// the procedure again completes them.
    #[error("offboarded, but {} did not complete; offboard again to complete", .failed.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Incomplete {
        done: Offboarded,
        failed: Vec<(&'static str, StoreError)>,
    },
}

/// The offboarding procedure over the capabilities of this version.
pub struct Offboarding<'a> {
    access: &'a AccessControl,
    steps: Vec<Box<dyn OffboardingStep + 'a>>,
}

impl<'a> Offboarding<'a> {
    /// Every capability's step, in order. A capability that gives a tenant something to
    /// take back adds its step here: directory sync (stop the tenant's runs and drop its
    /// delta links), certificates (retire the tenant's own app credential), ...
    pub fn new(
        access: &'a AccessControl,
        scim: &'a ScimService,
        sync: &'a dyn sync::SyncStateStore,
    ) -> Offboarding<'a> {
        Offboarding {
            access,
            steps: vec![
                Box::new(RevokeGrants(access)),
                Box::new(RevokeScimToken(scim)),
                Box::new(StopSync(sync)),
            ],
        }
    }

    /// Adds the step that revokes the tenant's certificates.
    pub fn with_certificates(mut self, pki: &'a pki::Pki) -> Offboarding<'a> {
        self.steps.push(Box::new(RevokeCertificates(pki)));
        self
    }

    /// Offboards a tenant, or completes an offboarding a failed step left undone. The
    /// status is written (and this instance's caches forgotten) before any step runs;
    /// every step runs even when an earlier one fails.
    pub async fn run(&self, tenant_id: Uuid) -> Result<Offboarded, OffboardError> {
        let now = OffsetDateTime::now_utc();
        let tenant = self
            .access
            .tenants
            .set_status(tenant_id, TenantStatus::Offboarded, now)
            .await
            .map_err(OffboardError::Status)?
            .ok_or(OffboardError::NotRegistered(tenant_id))?;
        // refused on this instance at once; other instances' caches expire within
        // the tenants cache's hard age (cache::limits::TENANTS)
        self.access.invalidate_tenant(tenant_id);
        let mut done = Offboarded {
            tenant,
            steps: Vec::new(),
        };
        let mut failed = Vec::new();
        for step in &self.steps {
            match step.run(tenant_id, now).await {
                Ok(count) => done.steps.push((step.name(), count)),
                Err(e) => {
                    tracing::warn!(%tenant_id, step = step.name(), error = %e, "an offboarding step failed; offboarding again completes it");
                    failed.push((step.name(), e));
                }
            }
        }
        if failed.is_empty() {
            tracing::info!(%tenant_id, steps = ?done.steps, "tenant offboarded");
            Ok(done)
        } else {
            Err(OffboardError::Incomplete { done, failed })
        }
    }
}

/// Why a tenant was not given access.
#[derive(Debug, thiserror::Error)]
pub enum AccessRefusal {
    #[error("tenant {0} is not registered")]
    NotRegistered(Uuid),
    #[error("tenant {0} is offboarded")]
    Offboarded(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Refuses an unregistered or offboarded tenant, reading the store itself rather than the
/// cache: an offboarding on another instance counts too.
async fn may_get_access(access: &AccessControl, tenant_id: Uuid) -> Result<(), AccessRefusal> {
    match access.tenants.get(tenant_id).await? {
        None => Err(AccessRefusal::NotRegistered(tenant_id)),
        Some(t) if t.status == TenantStatus::Offboarded => {
            Err(AccessRefusal::Offboarded(tenant_id))
        }
        Some(_) => Ok(()),
    }
}

/// The check after a write that gave access: `Ok` when the tenant may keep it, the refusal
/// when an offboarding (or a drop) landed meanwhile and what was written must be taken
/// back, `Err` when the registry could not be read (then nothing is taken back: the
/// status checks at use refuse an offboarded tenant anyway).
///
/// Giving access is check, write, check again: an offboarding that revoked the tenant's
/// grants or token before this write landed would miss it. Either the offboarding's
/// revocation comes after this write, or this check sees its status, which it writes
/// before it revokes anything.
async fn still_may_get_access(
    access: &AccessControl,
    tenant_id: Uuid,
) -> Result<Result<(), AccessRefusal>, StoreError> {
    match may_get_access(access, tenant_id).await {
        Err(AccessRefusal::Store(e)) => Err(e),
        outcome => Ok(outcome),
    }
}

/// Issues a tenant's SCIM Secret Token (the previous one stops working), unless the tenant
/// is unregistered or offboarded, also when an offboarding lands meanwhile.
pub async fn issue_scim_token(
    access: &AccessControl,
    scim: &ScimService,
    tenant_id: Uuid,
) -> Result<String, AccessRefusal> {
    may_get_access(access, tenant_id).await?;
    let token = scim.new_token(tenant_id).await?;
    if let Err(refusal) = still_may_get_access(access, tenant_id).await? {
        scim.revoke_token(tenant_id).await?;
        return Err(refusal);
    }
    Ok(token)
}

/// Creates an access grant, unless its tenant is unregistered or offboarded, also when an
/// offboarding lands meanwhile; this instance forgets the tenant's cached grants.
pub async fn create_grant(access: &AccessControl, grant: &Grant) -> Result<(), AccessRefusal> {
    may_get_access(access, grant.tenant_id).await?;
    access.grants.create(grant).await?;
    access.invalidate_grants(grant.tenant_id);
    if let Err(refusal) = still_may_get_access(access, grant.tenant_id).await? {
        access
            .grants
            .revoke_all(grant.tenant_id, OffsetDateTime::now_utc())
            .await?;
        access.invalidate_grants(grant.tenant_id);
        return Err(refusal);
    }
    Ok(())
}
