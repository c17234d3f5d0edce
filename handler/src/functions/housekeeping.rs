//! `Housekeeping`: a timer every 15 minutes that trims old records, confirms pending
//! consents (dropping those never confirmed within `CONSENT_PENDING_MINUTES`), checks
//! certificates for their expiry once a day (see `certificates::expiry`), revokes once a day
//! the certificates whose owed revocation never ran (see `certificates::backstop`), moves
//! once a day the directory search rows an older release left in the directory's table
//! (see `upgrades`) and records its run. Later capabilities add their purge work here.

use futures::future::BoxFuture;
use host::{InvocationRequest, InvocationResponse, InvokeError};
use time::OffsetDateTime;

use crate::app::App;
use crate::store::{RunOutcome, RunRecord, StoreError};

/// The function's name, as in `functions/Housekeeping`.
pub const NAME: &str = "Housekeeping";
/// How long run history is kept.
pub const RUN_HISTORY_DAYS: i64 = 30;

/// Entry point for the dispatcher.
pub fn invoke(
    app: &App,
    request: InvocationRequest,
) -> BoxFuture<'_, Result<InvocationResponse, InvokeError>> {
    Box::pin(run(app, request))
}

async fn run(app: &App, request: InvocationRequest) -> Result<InvocationResponse, InvokeError> {
    let timer = request
        .timer("timer")
        .map_err(|e| InvokeError::BadPayload(e.0))?;
    let started_at = OffsetDateTime::now_utc();
    let mut response = InvocationResponse::new();
    if timer.is_past_due {
        response.log("housekeeping is running late (past due)");
    }

    let cutoff = started_at - time::Duration::days(RUN_HISTORY_DAYS);
    // the runs of Housekeeping and of the daily jobs it runs
    let mut purged = Ok(0);
    for name in [
        NAME,
        crate::certificates::expiry::RUN_NAME,
        crate::certificates::backstop::RUN_NAME,
        crate::upgrades::RUN_NAME,
    ] {
        match app.run_log.purge_history(name, cutoff).await {
            Ok(n) => purged = purged.map(|total| total + n),
            Err(e) => {
                purged = Err(e);
                break;
            }
        }
    }
    let pending = app.onboarding.confirm_pending().await;
    if let Ok(pending) = &pending {
        // this instance sees the new status at once, others within the tenants cache's hard age (cache::limits::TENANTS)
        for tenant_id in &pending.changed {
            app.access.invalidate_tenant(*tenant_id);
            let status = app
                .access
                .tenants
                .get(*tenant_id)
                .await
                .ok()
                .flatten()
                .map(|t| t.status.as_str().to_string());
            let event = audit::Event::new(
                *tenant_id,
                audit::Actor::system(NAME),
                "tenant.status.update",
                audit::Target::new("tenant", tenant_id),
            )
            .change(audit::Change::new(
                "status",
                Some(serde_json::json!("pending")),
                Some(serde_json::json!(
                    status.unwrap_or_else(|| "removed".into())
                )),
            ));
            if let Err(e) = app.audit.record(event).await {
                tracing::warn!(tenant = %tenant_id, error = %e, "tenant status change not recorded");
            }
        }
    }
    let finished = finish_scim_deletions(app).await;
    match record_revocations(app).await {
        Ok(0) => {}
        Ok(n) => {
            response.log(format!(
                "audit: recorded {n} certificate revocations whose events had failed"
            ));
        }
        Err(e) => tracing::warn!(error = %e, "certificate revocations not recorded"),
    }
    match move_audit_outbox(app).await {
        Ok(0) => {}
        Ok(n) => {
            response.log(format!(
                "audit: moved {n} SCIM events whose writer stopped before moving them to the trail"
            ));
        }
        // the rows stay where they are (the next run or a query of the trail moves them)
        Err(e) => tracing::warn!(error = %e, "audit outbox rows not moved"),
    }
    let trimmed = trim_audit(app, started_at).await;
    let certificates = crate::certificates::expiry::check_if_due(app, started_at).await;
    match &certificates {
        Ok(None) => {}
        Ok(Some(c)) => {
            response.log(format!(
                "certificates: {} checked, {} expire within 30 days, {} tenants' incidents closed",
                c.checked, c.expiring, c.recovered
            ));
        }
        Err(e) => tracing::warn!(error = %e, "certificates not checked for their expiry"),
    }
    // a failure fails the run (its own run record names the tenants); the next day's
    // sweep tries again
    let backstop = match crate::certificates::backstop::sweep_if_due(app, started_at).await {
        Ok(None) => Ok(()),
        Ok(Some(s)) => {
            response.log(format!(
                "certificates: {} tenants swept for owed revocations, {} revoked, {} not swept",
                s.tenants,
                s.revoked,
                s.failed.len()
            ));
            match s.failed.len() {
                0 => Ok(()),
                n => Err(format!("certificate backstop: {n} tenants not swept")),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "certificates not swept for owed revocations");
            Err(format!("certificate backstop: {e}"))
        }
    };
    // likewise: a tenant whose rows could not be moved fails the run (its run record names
    // it), the others' rows were moved; a run within the hour tries again
    let search_rows = match crate::upgrades::move_if_due(app, started_at).await {
        Ok(None) => Ok(()),
        Ok(Some(m)) => {
            if m.rows > 0 {
                response.log(format!(
                    "directory: moved {} search rows an older release left in the directory table",
                    m.rows
                ));
            }
            match m.failed.len() {
                0 => Ok(()),
                n => Err(format!(
                    "directory search rows: {n} tenants' rows not moved from the directory table"
                )),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "directory search rows not moved");
            Err(format!("directory search rows: {e}"))
        }
    };
    // a tenant that could not be checked fails the run (the others were checked)
    let certificates = match certificates {
        Ok(Some(c)) if !c.failed.is_empty() => Err(format!(
            "certificate expiry check: {}",
            crate::certificates::expiry::failures(&c.failed)
        )),
        other => other.map_err(|e| format!("certificate expiry check: {e}")),
    };
    let certificates = certificates
        .and_then(|c| backstop.map(|()| c))
        .and_then(|c| search_rows.map(|()| c));
    let (outcome, summary) = match (&purged, &pending, &finished, &trimmed, &certificates) {
        (Ok(purged), Ok(pending), Ok(finished), Ok(trimmed), Ok(_)) => (
            RunOutcome::Succeeded,
            format!(
                "purged {purged} run records older than {RUN_HISTORY_DAYS} days; confirmed {} pending tenants; dropped {} pending tenants not confirmed within CONSENT_PENDING_MINUTES; finished {finished} SCIM deletions; dropped {} days of audit events older than {} days",
                pending.confirmed, pending.dropped, trimmed.days, app.audit_retention_days
            ),
        ),
        (_, _, _, Err(e), _) => (
            RunOutcome::Failed(e.to_string()),
            "housekeeping work failed".to_string(),
        ),
        (Err(e), _, _, _, _) | (_, Err(e), _, _, _) | (_, _, Err(e), _, _) => (
            RunOutcome::Failed(e.to_string()),
            "housekeeping work failed".to_string(),
        ),
        (_, _, _, _, Err(e)) => (
            RunOutcome::Failed(e.clone()),
            "housekeeping work failed".to_string(),
        ),
    };
    response.log(format!("housekeeping: {summary}"));

    let record = RunRecord {
        started_at,
        finished_at: OffsetDateTime::now_utc(),
        outcome: outcome.clone(),
        past_due: timer.is_past_due,
        summary,
    };
    let recorded = app.run_log.record(NAME, &record).await;
    match (outcome, recorded) {
        (RunOutcome::Succeeded, Ok(())) => Ok(response),
        (RunOutcome::Failed(message), _) => Err(InvokeError::Failed {
            message: format!("housekeeping failed: {message}"),
            logs: response.logs,
        }),
        (RunOutcome::Succeeded, Err(e)) => Err(InvokeError::Failed {
            message: format!("housekeeping could not record its run: {e}"),
            logs: response.logs,
        }),
    }
}

/// Finishes the SCIM deletions (users, groups) that stopped after their commit but before
/// their membership rows were all gone, in every tenant's partition.
async fn finish_scim_deletions(app: &App) -> Result<usize, StoreError> {
    let mut finished = 0;
    let mut failed = None;
    for tenant in app.access.tenants.list().await? {
        // one tenant's failure does not keep the others waiting
        match app.scim.finish_deletions(tenant.tenant_id).await {
            Ok(n) => finished += n,
            Err(e) => {
                tracing::warn!(tenant = %tenant.tenant_id, error = %e, "SCIM deletions stay unfinished");
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        None => Ok(finished),
        Some(e) => Err(e),
    }
}

/// Records the automatic certificate revocations whose events failed (the audit trail
/// was unavailable), in every tenant.
async fn record_revocations(app: &App) -> Result<usize, String> {
    let tenants = app
        .access
        .tenants
        .list()
        .await
        .map_err(|e| format!("tenants not listed: {e}"))?;
    let mut told = 0;
    let mut failed = None;
    for tenant in tenants {
        match app.pki.record_unrecorded(tenant.tenant_id).await {
            Ok(n) => told += n,
            Err(e) => {
                tracing::warn!(tenant = %tenant.tenant_id, error = %e, "certificate revocations not recorded");
                failed.get_or_insert(e.to_string());
            }
        }
    }
    match failed {
        None => Ok(told),
        Some(e) => Err(e),
    }
}

/// Moves to the trail the SCIM user events still in their outbox rows (their writer
/// stopped between the commit and the move), in every tenant's partition.
async fn move_audit_outbox(app: &App) -> Result<usize, audit::AuditError> {
    let tenants = app
        .access
        .tenants
        .list()
        .await
        .map_err(|e| audit::AuditError::Malformed(format!("tenants not listed: {e}")))?;
    let mut moved = 0;
    let mut failed = None;
    for tenant in tenants {
        // one tenant's failure does not keep the others waiting
        match app
            .outbox
            .sweep(app.scim.table(), &tenant.tenant_id.to_string())
            .await
        {
            Ok(n) => moved += n,
            Err(e) => {
                tracing::warn!(tenant = %tenant.tenant_id, error = %e, "audit outbox rows not moved");
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        None => Ok(moved),
        Some(e) => Err(e),
    }
}

/// Deletes audit events older than `AUDIT_RETENTION_DAYS`, whole days at a time (every
/// tenant's, even one since removed, and the service's own), and the registered tenants'
/// records of those days.
async fn trim_audit(app: &App, now: OffsetDateTime) -> Result<audit::Trimmed, audit::AuditError> {
    let keep_from = (now - time::Duration::days(i64::from(app.audit_retention_days))).date();
    let mut tenants: Vec<uuid::Uuid> = app
        .access
        .tenants
        .list()
        .await
        .map_err(|e| audit::AuditError::Malformed(format!("tenant list: {e}")))?
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    tenants.push(app.entra.admin_tenant_id);
    app.audit.store().trim(keep_from, &tenants).await
}
