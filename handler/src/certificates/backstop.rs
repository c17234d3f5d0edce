//! The backstop of automatic revocation: once a day, Housekeeping revokes the active
//! certificates that the writes which owed their revocation left behind.
//!
//! Graph sync and SCIM revoke a user's certificates as their write leaves the user
//! disabled or deleted, and offboarding revokes a tenant's. A process that stops between
//! such a write's commit and the revocation leaves the certificates active, and nothing
//! comes back for them: a replay of a Graph page no longer sees a user deleted for good,
//! Entra does not repeat a SCIM request that was answered, an offboarded tenant's status
//! is already set. So this sweep revokes, with `CERT_REVOKE_ON_DISABLE` on, the active
//! certificates of an active tenant's users who hold one still valid and whom the
//! directory does not have active, and, whatever the setting (as offboarding does), every
//! active certificate of an offboarded tenant; each as the write would have (reason
//! `cessationOfOperation`, audited as every automatic revocation).
//!
//! It also means that turning `CERT_REVOKE_ON_DISABLE` on revokes, within a day, the
//! certificates of every user who is inactive at that moment, not only of those disabled
//! from then on (docs/settings.md says so).

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::app::App;
use crate::domain::TenantStatus;
use crate::store::{RunOutcome, RunRecord};

/// The run log's name for the sweep.
pub const RUN_NAME: &str = "CertificateBackstop";
/// What a revocation made by the sweep records as its trigger (`revoked_by`).
pub const TRIGGER: &str = "housekeeping";
/// How often the sweep runs, whatever the last one found.
const EVERY: Duration = Duration::days(1);
/// Users read, then revoked together: the fewer, the less time between reading a user and
/// revoking its certificates (a user enabled again and issued a certificate in between,
/// a window of a few reads, would lose it).
const USERS_AT_ONCE: usize = 20;

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    pub tenants: usize,
    pub revoked: usize,
    /// Tenants that could not be swept, and why (the others were).
    pub failed: Vec<(Uuid, String)>,
}

/// Sweeps every tenant if a day has passed since the last sweep (or none ran); `None`
/// when it was not due. Users' certificates are swept only with `CERT_REVOKE_ON_DISABLE`
/// on; an offboarded tenant's always, as offboarding revokes them whatever the setting.
pub async fn sweep_if_due(app: &App, now: OffsetDateTime) -> Result<Option<Swept>, String> {
    let last = app
        .run_log
        .latest(RUN_NAME)
        .await
        .map_err(|e| format!("run log: {e}"))?;
    if last.is_some_and(|run| now - run.started_at < EVERY) {
        return Ok(None);
    }
    let tenants = app
        .tenants
        .list()
        .await
        .map_err(|e| format!("tenant registry: {e}"))?;
    let mut swept = Swept::default();
    for tenant in tenants {
        // one tenant's failure does not keep the others from being swept
        let revoked = match tenant.status {
            TenantStatus::Active if app.certificates.revoke_on_disable => {
                inactive_users(app, tenant.tenant_id, now).await
            }
            TenantStatus::Active => continue,
            TenantStatus::Offboarded => offboarded(app, tenant.tenant_id).await,
            TenantStatus::Pending => continue,
        };
        swept.tenants += 1;
        match revoked {
            Ok(n) => swept.revoked += n,
            Err(e) => {
                tracing::warn!(tenant = %tenant.tenant_id, error = %e, "certificates of a tenant not swept for owed revocations");
                swept.failed.push((tenant.tenant_id, e));
            }
        }
    }
    if swept.revoked > 0 {
        tracing::warn!(
            revoked = swept.revoked,
            "certificates revoked by Housekeeping: their users or tenants were no longer active"
        );
    }
    let outcome = if swept.failed.is_empty() {
        RunOutcome::Succeeded
    } else {
        let each: Vec<String> = swept
            .failed
            .iter()
            .map(|(t, e)| format!("{t}: {e}"))
            .collect();
        RunOutcome::Failed(format!(
            "{} tenants not swept: {}",
            each.len(),
            each.join("; ")
        ))
    };
    let run = RunRecord {
        started_at: now,
        finished_at: OffsetDateTime::now_utc(),
        outcome,
        past_due: false,
        summary: format!(
            "{} tenants swept, {} certificates revoked",
            swept.tenants, swept.revoked
        ),
    };
    app.run_log
        .record(RUN_NAME, &run)
        .await
        .map_err(|e| format!("run log: {e}"))?;
    Ok(Some(swept))
}

/// Revokes the valid certificates of the tenant's users the directory does not have
/// active (disabled, deleted in Entra, gone).
async fn inactive_users(app: &App, tenant: Uuid, now: OffsetDateTime) -> Result<usize, String> {
    use directory::Directory as _;
    let active = app
        .pki
        .certificates(tenant, None, Some(pki::CertificateStatus::Active))
        .await
        .map_err(|e| format!("PKI: {e}"))?;
    // an expired certificate needs no revocation (a CRL need not list it)
    let mut holders: Vec<Uuid> = active
        .iter()
        .filter(|c| c.is_valid_at(now))
        .map(|c| c.user_id)
        .collect();
    holders.sort();
    holders.dedup();
    let mut revoked = 0;
    for some in holders.chunks(USERS_AT_ONCE) {
        let mut inactive = Vec::new();
        for user in some {
            let known = app
                .directory
                .user(tenant, *user)
                .await
                .map_err(|e| format!("directory: {e}"))?;
            if !known.is_some_and(|u| u.is_active()) {
                inactive.push(*user);
            }
        }
        if !inactive.is_empty() {
            revoked += app
                .pki
                .revoke_inactive_users(tenant, &inactive, TRIGGER)
                .await
                .map_err(|e| format!("PKI: {e}"))?;
        }
    }
    Ok(revoked)
}

/// Revokes every active certificate of an offboarded tenant, as offboarding does, if it
/// still is (a tenant registered again since the sweep listed the tenants keeps the
/// certificates it was issued).
async fn offboarded(app: &App, tenant: Uuid) -> Result<usize, String> {
    let now = app
        .tenants
        .get(tenant)
        .await
        .map_err(|e| format!("tenant registry: {e}"))?;
    if !now.is_some_and(|t| t.status == TenantStatus::Offboarded) {
        return Ok(0);
    }
    app.pki
        .revoke_all(
            tenant,
            None,
            pki::RevocationReason::CessationOfOperation,
            TRIGGER,
        )
        .await
        .map_err(|e| format!("PKI: {e}"))
}
