//! Certificates about to expire: each active tenant's issuing CA, its own app credential
//! (customer-owned application mode) and, for a tenant whose Graph calls use the service's
//! app, the service's app credential certificate in the tenant's cloud. One within
//! [`WARN_WITHIN`] of its expiry is a `certificate.expiring` failure event in the tenant's
//! trail (which opens the tenant's `certificate_expiring` incident); once none of the
//! tenant's is, or the tenant is no longer active, a `certificate.expiring` success event
//! closes it.
//!
//! Housekeeping runs every 15 minutes; certificates change rarely, so the check runs once
//! a day, and at every run while one was found expiring or a tenant could not be checked
//! (a renewal then closes the incident within 15 minutes). One tenant that cannot be
//! checked does not keep the others from being checked.

use std::collections::HashMap;

use audit::incident::IncidentKind;
use audit::{Actor, Event, Target};
use entra::Cloud;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::app::App;
use crate::app_credentials::CredentialNames;
use crate::domain::{Tenant, TenantStatus};
use crate::store::{RunOutcome, RunRecord};

/// How long before its expiry a certificate is reported.
pub const WARN_WITHIN: Duration = Duration::days(30);
/// How often certificates are checked while none is expiring.
pub const CHECK_EVERY: Duration = Duration::days(1);
/// The run log entry of the checks.
pub const RUN_NAME: &str = "CertificateExpiry";
/// The actor of the events.
const ACTOR: &str = "Housekeeping";

/// A certificate a tenant depends on.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Serial number (hex): the event's target id.
    pub serial: String,
    /// What it is, for a person: `issuing CA`, `app credential (global)`, ...
    pub what: String,
    pub not_after: OffsetDateTime,
}

impl Watched {
    /// Whether it expires within [`WARN_WITHIN`] of `now` (or has expired).
    pub fn expiring(&self, now: OffsetDateTime) -> bool {
        self.not_after - now <= WARN_WITHIN
    }

    /// The failure's reason: the expiry date and the days left.
    pub fn reason(&self, now: OffsetDateTime) -> String {
        let days = (self.not_after - now).whole_days();
        let date = self.not_after.date();
        if self.not_after <= now {
            format!("the {} certificate expired on {date}", self.what)
        } else {
            format!(
                "the {} certificate expires on {date} ({days} days left)",
                self.what
            )
        }
    }
}

/// Whether a check is due after the `last` one: never checked, checked a day ago, or
/// the last check found a certificate expiring.
pub fn due(last: Option<&RunRecord>, now: OffsetDateTime) -> bool {
    match last {
        None => true,
        Some(run) => {
            now - run.started_at >= CHECK_EVERY
                || run.outcome != RunOutcome::Succeeded
                || expiring_in(&run.summary) != Some(0)
        }
    }
}

/// The summary a check records; [`expiring_in`] reads it back.
fn summary(expiring: usize, checked: usize) -> String {
    format!("{expiring} expiring of {checked} certificates checked")
}

fn expiring_in(summary: &str) -> Option<usize> {
    summary.split_once(' ')?.0.parse().ok()
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Checked {
    pub checked: usize,
    pub expiring: usize,
    /// Tenants whose incident was closed.
    pub recovered: usize,
    /// Tenants that could not be checked, and why (the others were checked all the same).
    pub failed: Vec<(Uuid, CheckError)>,
}

/// Why a check could not finish.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("tenant registry: {0}")]
    Tenants(String),
    #[error("vault: {0}")]
    Vault(String),
    #[error("PKI: {0}")]
    Pki(String),
    #[error("{0}")]
    Audit(#[from] audit::AuditError),
    #[error("run log: {0}")]
    RunLog(String),
    /// The service's app credential could not be read (read once per cloud and check).
    #[error("service's app credential: {0}")]
    ServiceCredential(String),
}

fn read(der: &[u8], what: String) -> Result<Watched, CheckError> {
    let info = pki::CertificateInfo::of(der).map_err(|e| CheckError::Pki(e.to_string()))?;
    Ok(Watched {
        serial: info.serial,
        what,
        not_after: info.not_after,
    })
}

/// Checks every active tenant's certificates if a check is due; `None` when it was not.
/// A tenant that cannot be checked is in [`Checked::failed`] and the run is recorded as
/// failed, so the next run (15 minutes later) checks again.
pub async fn check_if_due(app: &App, now: OffsetDateTime) -> Result<Option<Checked>, CheckError> {
    let last = app
        .run_log
        .latest(RUN_NAME)
        .await
        .map_err(|e| CheckError::RunLog(e.to_string()))?;
    if !due(last.as_ref(), now) {
        return Ok(None);
    }
    let checked = check(app, now).await?;
    let outcome = match checked.failed.as_slice() {
        [] => RunOutcome::Succeeded,
        failed => RunOutcome::Failed(failures(failed)),
    };
    let run = RunRecord {
        started_at: now,
        finished_at: OffsetDateTime::now_utc(),
        outcome,
        past_due: false,
        summary: summary(checked.expiring, checked.checked),
    };
    app.run_log
        .record(RUN_NAME, &run)
        .await
        .map_err(|e| CheckError::RunLog(e.to_string()))?;
    Ok(Some(checked))
}

/// The tenants that could not be checked, for the run log: `n tenants not checked: ...`.
pub fn failures(failed: &[(Uuid, CheckError)]) -> String {
    let each: Vec<String> = failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
    format!("{} tenants not checked: {}", failed.len(), each.join("; "))
}

/// The service's app credential of a cloud, read once per check (an error too, so a
/// failing vault is asked once, not once per tenant).
type ServiceCredentials = HashMap<Cloud, Result<Option<Watched>, String>>;

async fn check(app: &App, now: OffsetDateTime) -> Result<Checked, CheckError> {
    let tenants = app
        .tenants
        .list()
        .await
        .map_err(|e| CheckError::Tenants(e.to_string()))?;
    let mut service = ServiceCredentials::new();
    let mut found = Checked::default();
    for tenant in &tenants {
        // one tenant's failure does not keep the others unchecked
        let checked = match tenant.status {
            TenantStatus::Active => check_tenant(app, tenant, now, &mut service, &mut found).await,
            // an incident opened while it was active would never close otherwise
            _ => close_incident(app, tenant, &mut found).await,
        };
        if let Err(e) = checked {
            tracing::warn!(tenant = %tenant.tenant_id, error = %e, "certificates of a tenant not checked for their expiry");
            found.failed.push((tenant.tenant_id, e));
        }
    }
    Ok(found)
}

async fn check_tenant(
    app: &App,
    tenant: &Tenant,
    now: OffsetDateTime,
    service: &mut ServiceCredentials,
    found: &mut Checked,
) -> Result<(), CheckError> {
    let mut watched = Vec::new();
    if let Some(ca) = app
        .pki
        .authority(tenant.tenant_id)
        .await
        .map_err(|e| CheckError::Pki(e.to_string()))?
    {
        watched.push(read(&ca.der, "tenant's issuing CA".into())?);
    }
    let (names, what) = match tenant.app_client_id {
        Some(_) => (
            CredentialNames::tenant(tenant.tenant_id),
            "tenant's own app credential".to_string(),
        ),
        None => (
            CredentialNames::service(tenant.cloud),
            format!("service's app credential ({})", tenant.cloud.as_str()),
        ),
    };
    let credential = match (tenant.app_client_id, service.get(&tenant.cloud)) {
        (None, Some(known)) => known.clone().map_err(CheckError::ServiceCredential)?,
        _ => {
            let read_now = match app.vault.get_certificate(&names.certificate).await {
                Ok(der) => der.map(|der| read(&der, what)).transpose(),
                Err(e) => Err(CheckError::Vault(e.to_string())),
            };
            if tenant.app_client_id.is_none() {
                let known = read_now.as_ref().cloned();
                service.insert(tenant.cloud, known.map_err(|e| e.to_string()));
            }
            read_now?
        }
    };
    watched.extend(credential);
    let expiring: Vec<&Watched> = watched.iter().filter(|w| w.expiring(now)).collect();
    if expiring.is_empty() {
        found.checked += watched.len();
        // renewed: close the incident the earlier checks opened
        return close_incident(app, tenant, found).await;
    }
    let date = now.date().to_string();
    let events: Vec<Event> = expiring
        .iter()
        .map(|w| {
            Event::new(
                tenant.tenant_id,
                Actor::system(ACTOR),
                "certificate.expiring",
                Target::new("certificate", &w.serial).display(w.what.clone()),
            )
            .failed("expiring", w.reason(now))
            // one event per certificate and day, however often it is checked
            .idempotent(
                now.replace_time(time::Time::MIDNIGHT),
                &[
                    "certificate.expiring",
                    &tenant.tenant_id.to_string(),
                    &w.serial,
                    &date,
                ],
            )
        })
        .collect();
    app.audit.record_all(&events).await?;
    found.checked += watched.len();
    found.expiring += expiring.len();
    Ok(())
}

/// Records the success event that closes the tenant's open `certificate_expiring`
/// incident, if it has one.
async fn close_incident(app: &App, tenant: &Tenant, found: &mut Checked) -> Result<(), CheckError> {
    let open = app
        .notifications
        .store
        .incident(tenant.tenant_id, IncidentKind::CertificateExpiring)
        .await?;
    if open.is_some() {
        app.audit
            .record(Event::new(
                tenant.tenant_id,
                Actor::system(ACTOR),
                "certificate.expiring",
                Target::new("tenant", tenant.tenant_id).display(tenant.display_name.clone()),
            ))
            .await?;
        found.recovered += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn run(at: OffsetDateTime, expiring: usize) -> RunRecord {
        RunRecord {
            started_at: at,
            finished_at: at,
            outcome: RunOutcome::Succeeded,
            past_due: false,
            summary: summary(expiring, 3),
        }
    }

    #[test]
    fn certificates_are_checked_daily_and_at_every_run_while_one_is_expiring() {
        let now = datetime!(2026-12-01 10:00 UTC);
        assert!(due(None, now));
        assert!(!due(Some(&run(now - Duration::minutes(15), 0)), now));
        assert!(due(Some(&run(now - Duration::hours(24), 0)), now));
        assert!(due(Some(&run(now - Duration::minutes(15), 1)), now));
    }

    #[test]
    fn a_certificate_within_thirty_days_is_expiring_and_says_when() {
        let now = datetime!(2026-12-01 10:00 UTC);
        let soon = Watched {
            serial: "01".into(),
            what: "tenant's issuing CA".into(),
            not_after: now + Duration::days(10),
        };
        assert!(soon.expiring(now));
        assert_eq!(
            soon.reason(now),
            "the tenant's issuing CA certificate expires on 2026-12-11 (10 days left)"
        );
        let later = Watched {
            not_after: now + Duration::days(31),
            ..soon.clone()
        };
        assert!(!later.expiring(now));
        let gone = Watched {
            not_after: now - Duration::days(1),
            ..soon
        };
        assert!(gone.reason(now).contains("expired on 2026-11-30"));
    }
}
