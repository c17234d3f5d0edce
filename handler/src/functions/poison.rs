//! `SyncTenantPoison` and `NotificationDeliveryPoison`: the functions triggered by the
//! poison queues (`sync-tenants-poison`, `notifications-poison`) the Functions host (or the
//! standalone runtime) moves a message to once it failed every attempt. Each poisoned
//! message becomes a `queue.poison` audit event (a failure whose code is the original
//! queue), which for a `sync-tenants` message naming its tenant opens the tenant's
//! `poison_message` incident. A poisoned notice is only recorded: notifying about notices
//! failing would loop; so is a message naming no tenant (recorded in the admin tenant's
//! trail, whose sync rounds would never clear an incident about it).
//!
//! These functions must not poison themselves: a message they cannot read is recorded as
//! far as it can be and taken off the queue.

use audit::{Actor, Event, Target};
use futures::future::BoxFuture;
use host::{InvocationRequest, InvocationResponse, InvokeError};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::app::App;

/// A queue whose poison messages are recorded.
struct Poisoned {
    /// The function reading `<queue>-poison`.
    function: &'static str,
    /// The original queue.
    queue: &'static str,
    /// The message's field naming its tenant.
    tenant_field: &'static str,
    /// What did not happen because of it, for a person.
    lost: &'static str,
}

const SYNC: Poisoned = Poisoned {
    function: "SyncTenantPoison",
    queue: super::sync::QUEUE,
    tenant_field: "tenant_id",
    lost: "the tenant's directory sync round did not run (the next scheduled round resumes from its checkpoint)",
};

const NOTICES: Poisoned = Poisoned {
    function: "NotificationDeliveryPoison",
    queue: crate::notifications::QUEUE,
    tenant_field: "tenant",
    lost: "an incident notice was not delivered",
};

/// `SyncTenantPoison`'s entry point.
pub fn invoke_sync(
    app: &App,
    request: InvocationRequest,
) -> BoxFuture<'_, Result<InvocationResponse, InvokeError>> {
    Box::pin(record(app, request, &SYNC))
}

/// `NotificationDeliveryPoison`'s entry point.
pub fn invoke_notifications(
    app: &App,
    request: InvocationRequest,
) -> BoxFuture<'_, Result<InvocationResponse, InvokeError>> {
    Box::pin(record(app, request, &NOTICES))
}

/// The tenant a message names, if it is a GUID.
fn tenant_named(message: &Value, field: &str) -> Option<Uuid> {
    message
        .get(field)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::try_parse(s).ok())
}

async fn record(
    app: &App,
    request: InvocationRequest,
    from: &Poisoned,
) -> Result<InvocationResponse, InvokeError> {
    let mut response = InvocationResponse::new();
    let poison_queue = host::poison_queue_name(from.queue);
    let trigger = request.queue_trigger("msg");
    let (message, id, dequeue_count, inserted) = match &trigger {
        Ok(t) => (
            t.message.clone(),
            t.id.clone(),
            t.dequeue_count,
            t.insertion_time,
        ),
        Err(_) => (Value::Null, String::new(), 1, None),
    };
    let named = tenant_named(&message, from.tenant_field);
    // a message naming no tenant is the deployment's: recorded where deployment-wide
    // changes are (the admin tenant)
    let tenant = named.unwrap_or(app.entra.admin_tenant_id);
    let what = match (&trigger, named) {
        (Err(e), _) => format!("a message in {poison_queue} could not be read ({e})"),
        (Ok(_), Some(_)) => format!(
            "a {} message failed every attempt and was moved to {poison_queue}: {}",
            from.queue, from.lost
        ),
        (Ok(_), None) => format!(
            "a {} message that names no tenant (`{}` missing or not a GUID) failed every attempt and was moved to {poison_queue}",
            from.queue, from.tenant_field
        ),
    };
    let reason = format!("{what} (poison message {id}, dequeue count {dequeue_count})");
    let target = match named {
        Some(t) => Target::new("tenant", t),
        None => Target::new("queue", &poison_queue),
    };
    let mut event = Event::new(tenant, Actor::system(from.function), "queue.poison", target)
        .failed(from.queue, &reason)
        .correlation(format!("{poison_queue} message {id}"));
    if !id.is_empty() {
        // a retry of this function stores the same event once: its id comes from the
        // message's, its time from the message's insertion
        let parts = ["queue.poison", from.queue, id.as_str()];
        event = match inserted {
            Some(at) => event.idempotent(at, &parts),
            // without an insertion time no time is the same on a retry (the event is kept
            // by time): the message id alone says whether an attempt recorded it already
            None => {
                let event = event.idempotent(OffsetDateTime::now_utc(), &parts);
                if recorded_before(app, &event).await {
                    response.log(format!("already recorded: {reason}"));
                    return Ok(response);
                }
                event
            }
        };
    }
    match app.audit.record(event).await {
        Ok(()) => {
            tracing::error!(tenant = %tenant, queue = from.queue, message_id = %id, "{reason}");
            response.log(reason);
            Ok(response)
        }
        // the store may be back on a later attempt; the last one gives up rather than
        // poisoning the poison queue
        Err(e) if trigger.is_ok() && dequeue_count < host::MAX_DEQUEUE_COUNT => {
            Err(InvokeError::Failed {
                message: format!("poison message not recorded yet: {e}"),
                logs: Vec::new(),
            })
        }
        Err(e) => {
            tracing::error!(tenant = %tenant, queue = from.queue, message_id = %id, error = %e, "poison message not recorded: {reason}");
            response.log(format!("poison message not recorded ({e}): {reason}"));
            Ok(response)
        }
    }
}

/// How far back an earlier attempt's event is looked for (retries come minutes apart).
const RETRIES_WITHIN: time::Duration = time::Duration::days(1);

/// Whether an event with `event`'s id is in its tenant's trail already (recorded by an
/// earlier attempt at another time). A store that cannot say is taken as no: the record
/// that follows fails too and is retried.
async fn recorded_before(app: &App, event: &Event) -> bool {
    let query = audit::AuditQuery {
        since: Some(event.time - RETRIES_WITHIN),
        action_prefix: Some(event.action.clone()),
        target_id: Some(event.target.id.clone()),
        ..audit::AuditQuery::default()
    };
    let mut cursor: Option<String> = None;
    loop {
        let page = match app
            .audit
            .store()
            .page(event.tenant, &query, cursor.as_deref(), 200)
            .await
        {
            Ok(page) => page,
            Err(_) => return false,
        };
        if page.events.iter().any(|e| e.id == event.id) {
            return true;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_tenant_of_a_poisoned_message_is_read_only_from_a_guid() {
        let t = Uuid::new_v4();
        assert_eq!(
            tenant_named(&json!({"tenant_id": t.to_string()}), "tenant_id"),
            Some(t)
        );
        assert_eq!(tenant_named(&json!({"tenant_id": "x"}), "tenant_id"), None);
        assert_eq!(tenant_named(&json!("not json"), "tenant_id"), None);
        assert_eq!(tenant_named(&json!({"tenant": t}), "tenant_id"), None);
    }
}
