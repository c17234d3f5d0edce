//! `Health`: `GET /api/health`, anonymous. Version, whether storage answers, and the last
//! housekeeping run; 200 when storage answers, 503 when it does not.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::App;
use crate::store::{RunOutcome, RunRecord};

/// How long health waits for storage before calling it unreachable.
const STORAGE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// This module's part of the document (the route is in `routes::table`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(report))]
pub struct Api;

/// The health report and whether the service is healthy.
#[utoipa::path(
    get,
    path = "/api/health",
    description = "HEAD answers the same status without the body.",
    operation_id = "getHealth",
    tag = "Service",
    security(()),
    responses(
        (status = 200, description = "Storage answers", body = crate::openapi::schemas::HealthReport),
        (status = 503, description = "Storage does not answer", body = crate::openapi::schemas::HealthReport),
    )
)]
pub async fn report(app: &App) -> (bool, Value) {
    let probe = tokio::time::timeout(
        STORAGE_PROBE_TIMEOUT,
        app.run_log.latest(super::housekeeping::NAME),
    )
    .await;
    let (reachable, housekeeping) = match probe {
        Ok(Ok(latest)) => (true, latest.as_ref().map(run_json)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health: storage probe failed");
            (false, None)
        }
        Err(_) => {
            tracing::warn!(timeout = ?STORAGE_PROBE_TIMEOUT, "health: storage probe timed out");
            (false, None)
        }
    };
    let body = json!({
        "status": if reachable { "healthy" } else { "unhealthy" },
        "version": app.version,
        "mode": app.mode.as_str(),
        "storage": { "reachable": reachable },
        "housekeeping": housekeeping,
    });
    (reachable, body)
}

fn run_json(run: &RunRecord) -> Value {
    // anonymous callers see the outcome, not the error text (it can name storage hosts)
    let outcome = match &run.outcome {
        RunOutcome::Succeeded => "succeeded",
        RunOutcome::Failed(_) => "failed",
    };
    json!({
        "last_run_at": host::invocation::format_timestamp(run.started_at),
        "finished_at": host::invocation::format_timestamp(run.finished_at),
        "outcome": outcome,
        "past_due": run.past_due,
        "summary": run.summary,
    })
}
