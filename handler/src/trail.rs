//! What the function adapters need to record audit events: the actor from an admin token,
//! the invocation id from the request, the 503 a failed recording answers, and [`around`],
//! which records an admin change write-ahead so that none is made without its record.

use audit::{Actor, AuditError, Event};
use entra::ValidatedToken;
use warp::http::HeaderMap;

use crate::app::App;
use crate::routes::ApiError;

/// The admin who holds `token`: object id (or client app) and display name.
pub fn admin(token: &std::sync::Arc<ValidatedToken>) -> Actor {
    let id = token
        .object_id()
        .or_else(|| token.client_app())
        .unwrap_or("unknown")
        .to_string();
    let name = ["name", "preferred_username", "upn", "app_displayname"]
        .iter()
        .find_map(|c| token.claims.get(*c).and_then(|v| v.as_str()))
        .map(str::to_string);
    Actor::admin(id, name)
}

/// The Functions host's invocation id (`X-Azure-Functions-InvocationId`), when forwarded.
pub fn invocation_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> ApiError {
        match e {
            AuditError::BadCursor => ApiError::bad_request("cursor is not one this API gave"),
            // a change that cannot be recorded is not reported as done
            other => ApiError::unavailable(other),
        }
    }
}

/// Records one event; a failure is the 503 the request answers. For a change, use
/// [`around`]: this is for events of what changed nothing (a refusal before any write).
pub async fn record(app: &App, event: Event) -> Result<(), ApiError> {
    app.audit.record(event).await.map_err(ApiError::from)
}

/// An event by `actor` in the request's invocation.
pub fn event(
    headers: &HeaderMap,
    tenant: uuid::Uuid,
    actor: Actor,
    action: &str,
    target: audit::Target,
) -> Event {
    Event::new(tenant, actor, action, target).invocation(invocation_id(headers))
}

/// Brings the tenant's trail up to date before it is read: this process's moves finish,
/// and outbox rows any process left behind are moved (a query then sees every change
/// committed before it, whichever instance made it).
pub async fn settled(app: &App, tenant: uuid::Uuid) -> Result<(), ApiError> {
    app.outbox.flush().await;
    app.outbox
        .sweep(app.scim.table(), &tenant.to_string())
        .await
        .map(|_| ())
        .map_err(ApiError::from)
}

/// Records every automatic certificate revocation (a user disabled or deleted by sync or
/// SCIM, a tenant offboarded) as its own `certificate.revoke` event, by whoever triggered
/// it. The event's time is the revocation's and its id comes from the certificate, so a
/// revocation told twice (a crash before the certificate row noted it) is stored once.
pub struct RevocationTrail(pub audit::Audit);

#[async_trait::async_trait]
impl pki::RevocationJournal for RevocationTrail {
    async fn revoked(&self, record: &pki::CertificateRecord) -> Result<(), String> {
        let by = record.revoked_by.as_deref().unwrap_or("system");
        let actor = match by {
            "graph_sync" => audit::Actor::graph_sync(),
            "scim" => audit::Actor::entra_provisioning(),
            crate::certificates::backstop::TRIGGER => audit::Actor::system("Housekeeping"),
            other => audit::Actor::system(other),
        };
        let id = record.id.to_string();
        let at = record
            .revoked_at
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        let event = Event::new(
            record.tenant,
            actor,
            "certificate.revoke",
            audit::Target::new("certificate", &id).display(record.subject.clone()),
        )
        .change(audit::Change::new(
            "status",
            Some(serde_json::json!("active")),
            Some(serde_json::json!("revoked")),
        ))
        .change(audit::Change::new(
            "reason",
            None,
            record.reason.map(|r| serde_json::json!(r.as_str())),
        ))
        .correlation(format!("revoked by {by}"))
        .idempotent(at, &[&id, "certificate.revoke"]);
        self.0
            .record(event)
            .await
            .map_err(|e| format!("recording the revocation in the audit trail: {e}"))
    }
}

/// What a change made: the value it answers with, and what its event learns only from the
/// change (changes seen in the result, a display name, an outcome other than success).
pub struct Made<T> {
    value: T,
    report: Box<dyn FnOnce(Event) -> Event + Send>,
}

impl<T> Made<T> {
    /// `value`, its event completed by `report` (given the event as begun, with outcome
    /// success).
    pub fn report(value: T, report: impl FnOnce(Event) -> Event + Send + 'static) -> Made<T> {
        Made {
            value,
            report: Box::new(report),
        }
    }
}

impl<T> From<T> for Made<T> {
    /// `value`, its event as it was begun.
    fn from(value: T) -> Made<T> {
        Made::report(value, |event| event)
    }
}

/// Makes a change write-ahead: `event` is stored as pending before `change` runs (when it
/// cannot be, the change is not run and the answer is 503), then replaced by how the change
/// ended: success completed by the change's [`Made`] report, or a failure with the error's
/// status and message. When that last write fails after a change that was made, the
/// answer is still the change's (it may carry what is shown only once: a temporary
/// password, a token, a key) and the event stays pending, which says the change may have
/// been made; after a failed change it is 503.
pub async fn around<T>(
    app: &App,
    event: Event,
    change: impl std::future::Future<Output = Result<Made<T>, ApiError>>,
) -> Result<T, ApiError> {
    let pending = app.audit.begin(event).await?;
    match change.await {
        Ok(made) => {
            // the change is made and its pending event says it may have been: the answer
            // still carries what only it shows (a temporary password, a new token, a key)
            if let Err(e) = pending.finish(made.report).await {
                tracing::error!(error = %e, "a change was made but its outcome not recorded: its event stays pending");
            }
            Ok(made.value)
        }
        Err(e) => {
            let (status, message) = (e.status.as_u16(), e.message.clone());
            pending
                .finish(move |event| event.failed(status, message))
                .await?;
            Err(e)
        }
    }
}
