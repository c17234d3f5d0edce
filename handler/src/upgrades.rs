//! What an upgrade from an older release leaves to be done to its data, done by Housekeeping.
//!
//! The move of the directory's search rows out of the directory's table: once a day,
//! Housekeeping moves those a release before `{prefix}DirectorySearch` left there into that
//! table, where searches read them.
//!
//! Releases before the search table kept each user's search rows in the directory's own
//! table, and the search table was introduced without moving them: after an upgrade, a
//! user whose rows stayed behind was not found by `?search=` until a change rewrote them.
//! The move is idempotent (copy first, then delete), so a run that stops half-way is
//! finished by the next.

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::app::App;
use crate::store::{RunOutcome, RunRecord};

/// The run log's name for the move.
pub const RUN_NAME: &str = "DirectorySearchRows";
/// How often the move runs, whatever the last one found (an older release still running
/// beside a newer one during an upgrade may leave rows behind after it).
const EVERY: Duration = Duration::days(1);
/// How soon a run that failed for some tenant is tried again.
const AFTER_FAILURE: Duration = Duration::hours(1);

/// What a run did.
#[derive(Debug, Default)]
pub struct Moved {
    pub tenants: usize,
    pub rows: u64,
    /// Tenants whose rows could not be moved, and why (the others' were).
    pub failed: Vec<(Uuid, String)>,
}

/// Moves every registered tenant's old-layout search rows (whatever its status) if a day
/// has passed since the last run, an hour since one that failed, or none ran; `None` when
/// it was not due.
pub async fn move_if_due(app: &App, now: OffsetDateTime) -> Result<Option<Moved>, String> {
    let last = app
        .run_log
        .latest(RUN_NAME)
        .await
        .map_err(|e| format!("run log: {e}"))?;
    // a run that failed for some tenant is tried again within the hour (until moved, that
    // tenant's users are not found by a search), not at every Housekeeping
    if last.is_some_and(|run| {
        let wait = match run.outcome {
            RunOutcome::Succeeded => EVERY,
            RunOutcome::Failed(_) => AFTER_FAILURE,
        };
        now - run.started_at < wait
    }) {
        return Ok(None);
    }
    let tenants = app
        .tenants
        .list()
        .await
        .map_err(|e| format!("tenant registry: {e}"))?;
    let mut moved = Moved::default();
    for tenant in tenants {
        moved.tenants += 1;
        // one tenant's failure does not keep the others' rows where they are
        match app.directory.move_search_rows(tenant.tenant_id).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(tenant = %tenant.tenant_id, moved = n, "search rows an older release left in the directory table moved to the search table");
                moved.rows += n;
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant.tenant_id, error = %e, "search rows an older release left in the directory table not moved");
                moved.failed.push((tenant.tenant_id, e.to_string()));
            }
        }
    }
    let outcome = if moved.failed.is_empty() {
        RunOutcome::Succeeded
    } else {
        let each: Vec<String> = moved
            .failed
            .iter()
            .map(|(t, e)| format!("{t}: {e}"))
            .collect();
        RunOutcome::Failed(format!(
            "{} tenants' search rows not moved: {}",
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
            "{} tenants looked at, {} search rows moved from the directory table",
            moved.tenants, moved.rows
        ),
    };
    app.run_log
        .record(RUN_NAME, &run)
        .await
        .map_err(|e| format!("run log: {e}"))?;
    Ok(Some(moved))
}
