//! The audit trail: one event for every change (and every failed attempt), kept in Table
//! Storage by tenant and day, read newest first with filters and a cursor, and trimmed by
//! whole days.
//!
//! # Recording an event
//!
//! A capability builds an [`Event`] and hands it to [`Audit::record`] before it answers;
//! when recording fails the capability fails too (the HTTP layer answers 503). Recorded
//! after its change, a change whose record fails stays made: changes record write-ahead
//! or in their own transaction instead (below), and `record` is for refusals and for
//! work that cannot know its event before it runs:
//!
//! ```ignore
//! use audit::{Actor, Change, Event, Target};
//!
//! let event = Event::new(tenant, Actor::admin(oid, name), "grant.create", Target::new("grant", grant.id))
//!     .change(Change::new("scopes", None, Some(json!(grant.scopes))))
//!     .invocation(invocation_id);
//! app.audit.record(event).await?;                  // AuditError on failure
//! app.audit.record(event.failed(409, "the tenant is offboarded")).await?;
//! ```
//!
//! - actions are dotted, most general first (`scim.user.create`, `hr.employee.update`), so
//!   a query by prefix (`scim.user`) finds a family;
//! - secrets are never values: use [`Change::secret`] (shown as `"changed"`);
//! - writers that may repeat work (sync pages, queue retries) use [`Event::idempotent`] so
//!   writing the same event again stores it once;
//! - a change that commits in one transaction of its own table writes its event in that
//!   transaction as an outbox row, moved to the trail after the commit ([`outbox`]: SCIM
//!   user writes do this);
//! - a change in a store the audit table cannot share a transaction with may be recorded
//!   write-ahead: [`Audit::begin`] stores it as pending before the change (no change
//!   when that fails), [`Pending::finish`] records how it ended (SCIM group writes, which
//!   may take several transactions, and the handler's admin API changes through its
//!   `trail::around` do this);
//! - [`Audit::record_all`] writes many events in transactions of up to 50 events (the
//!   event row and its per-target copy share a partition and a transaction);
//! - writes made at the same time (concurrent SCIM requests) share transactions: each
//!   waits until its own events are stored, so a request costs about one transaction
//!   between all of those in flight rather than one each (group commit, `commit.rs`).

mod commit;
pub mod event;
pub mod incident;
pub mod notify;
pub mod outbox;
pub mod store;

use std::sync::Arc;

pub use event::{Actor, ActorKind, Change, Event, Outcome, SECRET_CHANGED, Target, diff};
pub use store::{AuditError, AuditPage, AuditQuery, AuditStore, TableAuditStore, Trimmed};

/// Told about every event recorded (incident tracking for notifications listens here).
pub trait EventObserver: Send + Sync {
    /// Called once `event` is durable: stored in the trail, or committed in an outbox row
    /// with its change (told then, moved to the trail later).
    fn recorded(&self, event: &Event);
}

/// The recorder every capability calls.
#[derive(Clone)]
pub struct Audit {
    store: Arc<dyn AuditStore>,
    observers: Vec<Arc<dyn EventObserver>>,
}

impl Audit {
    /// A recorder over a store.
    pub fn new(store: Arc<dyn AuditStore>) -> Audit {
        Audit {
            store,
            observers: Vec::new(),
        }
    }

    /// The same recorder, also telling `observer` about each event.
    pub fn with_observer(mut self, observer: Arc<dyn EventObserver>) -> Audit {
        self.observers.push(observer);
        self
    }

    /// The store behind it (queries, retention).
    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.store
    }

    /// Stores one event; an error means it is not stored and the change must not be
    /// reported as done.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        self.record_all(std::slice::from_ref(&event)).await
    }

    /// Records `event` as pending before its change is made (write-ahead): when this
    /// fails, make no change. Finish the returned [`Pending`] with how the change ended.
    pub async fn begin(&self, mut event: Event) -> Result<Pending<'_>, AuditError> {
        event.outcome = Outcome::Pending;
        self.store.append(std::slice::from_ref(&event)).await?;
        Ok(Pending { audit: self, event })
    }

    /// Stores events in as few transactions as their partitions allow.
    pub async fn record_all(&self, events: &[Event]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.append(events).await {
            tracing::error!(error = %e, events = events.len(), first_action = %events[0].action, "audit events could not be stored");
            return Err(e);
        }
        for event in events {
            self.tell(event);
        }
        Ok(())
    }

    /// Tells the observers about `event`, durable already where this recorder did not
    /// store it (an outbox row committed with its change): they hear of it when it
    /// happened, not when it reaches the trail.
    pub(crate) fn tell(&self, event: &Event) {
        for observer in &self.observers {
            observer.recorded(event);
        }
    }
}

/// An event recorded before its change; [`Pending::finish`] records how it ended.
pub struct Pending<'a> {
    audit: &'a Audit,
    event: Event,
}

impl Pending<'_> {
    /// The event as recorded so far (outcome pending).
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Replaces the pending event by `done(event)`: the same event with its outcome,
    /// changes and (for a create) its target's id. An error leaves it pending.
    pub async fn finish(self, done: impl FnOnce(Event) -> Event) -> Result<(), AuditError> {
        let (time, id, tenant) = (self.event.time, self.event.id.clone(), self.event.tenant);
        // success unless `done` says otherwise
        let mut started = self.event.clone();
        started.outcome = Outcome::Success;
        let mut finished = done(started);
        // the row it replaces is addressed by these
        finished.time = time;
        finished.id = id;
        finished.tenant = tenant;
        if let Err(e) = self.audit.store.complete(&self.event, &finished).await {
            tracing::error!(error = %e, action = %finished.action, "audit event left pending");
            return Err(e);
        }
        for observer in &self.audit.observers {
            observer.recorded(&finished);
        }
        Ok(())
    }
}
