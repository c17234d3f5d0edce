//! Events written in the same transaction as their change, then moved to the trail.
//!
//! A change that commits in one transaction on a partition of its own table (a SCIM user
//! write) cannot share that transaction with the audit table. Instead its event goes into
//! the change's partition as an outbox row ([`entity`], row key [`PREFIX`]...) inside the
//! change's own transaction: the change and its record commit together or not at all, at
//! the cost of one more operation in a transaction that is sent anyway. After the commit
//! the writer hands the event to [`Outbox::moved`], which tells the recorder's observers
//! at once (the event is durable), and a worker copies it to the trail (a turn's events
//! in shared transactions, so concurrent requests share them) and deletes the outbox row,
//! off the request's path.
//!
//! Nothing is lost when a process dies between the commit and the move: the rows stay in
//! the partition, and [`Outbox::sweep`] (run by Housekeeping for every tenant, and before
//! every query of a tenant's trail) moves whatever it finds. Moving is idempotent: the
//! trail row is an upsert of the same event, a delete of a row already gone is fine, so
//! two processes moving the same row at once store it once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tables::{Entity, IfMatch, Operation, Query, Table, Value};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::store::AuditError;
use crate::{Audit, Event};

/// Row keys of outbox rows start with this; a partition that holds them leaves the
/// prefix to them.
pub const PREFIX: &str = "audit-";
/// The first row key after every outbox row (`.` follows `-`).
const PREFIX_END: &str = "audit.";
/// Events moved in one turn of the worker.
const MAX_TURN: usize = 200;
/// A turn with fewer events than this waits a little for more ([`LINGER`]): a turn costs
/// two transactions (the trail's, up to 50 events, and the deletes') however few events it
/// moves, so under load fuller turns take less of the store's time per request.
const FULL_TURN: usize = 50;
/// How long a turn that is not full waits for more events; a query waiting for the moves
/// ([`Outbox::flush`]) cuts it short.
const LINGER: Duration = Duration::from_millis(250);
/// Attempts at moving one turn's events before they are left to the sweep.
const ATTEMPTS: u32 = 4;
/// How long a query waits for this process's moves to finish before it reads.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The outbox row key of `event`: oldest first, unique by the event's id.
pub fn row_key(event: &Event) -> String {
    let micros = (event.time.unix_timestamp_nanos() / 1000).max(0) as u64;
    format!("{PREFIX}{micros:020}-{}", event.id)
}

/// True for an outbox row's key.
pub fn is_outbox_row(row_key: &str) -> bool {
    row_key.starts_with(PREFIX)
}

/// The outbox row of `event` in `partition`, to write in the change's transaction.
pub fn entity(event: &Event, partition: &str) -> Entity {
    crate::store::to_entity(event, partition, row_key(event))
        .with("Tenant", event.tenant.to_string())
}

/// The event an outbox row holds.
pub fn event_of(row: &Entity) -> Result<Event, AuditError> {
    let tenant = row
        .get_str("Tenant")
        .and_then(|t| Uuid::try_parse(t).ok())
        .ok_or_else(|| AuditError::Malformed("outbox row without Tenant".into()))?;
    crate::store::from_entity(tenant, row)
}

/// One committed event whose outbox row waits to be moved.
struct Job {
    table: Table,
    partition: String,
    event: Event,
}

/// The mover: takes committed events, records them in the trail, deletes their rows.
pub struct Outbox {
    audit: Audit,
    jobs: OnceLock<mpsc::UnboundedSender<Job>>,
    /// Jobs handed in, and (from the worker) jobs finished, so a query can wait for the
    /// moves handed in before it.
    handed: Arc<AtomicU64>,
    finished: watch::Sender<u64>,
    /// Told by [`Outbox::flush`]: the worker stops lingering and moves what it holds.
    hurry: Arc<tokio::sync::Notify>,
}

impl Outbox {
    /// A mover recording through `audit`; its worker starts on first use.
    pub fn new(audit: Audit) -> Outbox {
        Outbox {
            audit,
            jobs: OnceLock::new(),
            handed: Arc::new(AtomicU64::new(0)),
            finished: watch::channel(0).0,
            hurry: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// `event` committed with its outbox row in `partition` of `table`: tells the
    /// observers and moves it soon. The caller does not wait; the row is the record until
    /// then.
    pub fn moved(&self, table: &Table, partition: &str, event: Event) {
        let sender = self.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run(
                self.audit.clone(),
                receiver,
                self.finished.clone(),
                self.hurry.clone(),
            ));
            sender
        });
        // the event is durable (its row committed): observers hear of it now, in the order
        // of the requests, not a turn later; a failure recorded straight to the trail
        // meanwhile would otherwise be counted before the successes that preceded it
        self.audit.tell(&event);
        self.handed.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            table: table.clone(),
            partition: partition.to_string(),
            event,
        };
        if sender.send(job).is_err() {
            // no worker (its runtime is shutting down): the sweep moves the row later
            tracing::error!("audit outbox mover gone: an event waits in its row for a sweep");
            self.finished.send_modify(|n| *n += 1);
        }
    }

    /// Waits (a few seconds at most) until every event handed to [`Outbox::moved`] before
    /// this call is in the trail or left to the sweep.
    pub async fn flush(&self) {
        let target = self.handed.load(Ordering::SeqCst);
        let mut finished = self.finished.subscribe();
        if *finished.borrow() < target {
            self.hurry.notify_one();
        }
        let _ = tokio::time::timeout(FLUSH_WAIT, finished.wait_for(|n| *n >= target)).await;
    }

    /// Moves `event`'s outbox row to the trail if it is there (its transaction committed,
    /// though the request went on to fail); answers whether it was.
    pub async fn settle(
        &self,
        table: &Table,
        partition: &str,
        event: &Event,
    ) -> Result<bool, AuditError> {
        let key = row_key(event);
        let Some(row) = table.try_get(partition, &key).await? else {
            return Ok(false);
        };
        // stored without telling the observers: the request is counted by its own outcome
        self.audit.store().append(&[event_of(&row)?]).await?;
        delete_rows(table, partition, vec![key]).await?;
        Ok(true)
    }

    /// Moves every outbox row of `partition` in `table` to the trail (rows another process
    /// committed and did not move, for instance because it died); answers how many. The
    /// observers are not told: the request a row records was counted, or will be, by the
    /// process that served it. An event the trail refuses on its own is logged and left in
    /// its row; the rest move.
    pub async fn sweep(&self, table: &Table, partition: &str) -> Result<usize, AuditError> {
        let mut query = Query::filter(format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            Value::from(partition).filter_literal(),
            Value::from(PREFIX).filter_literal(),
            Value::from(PREFIX_END).filter_literal()
        ));
        query.page_size = Some(MAX_TURN as u32);
        let mut moved = 0;
        let mut continuation = None;
        loop {
            let page = match table.query_page(&query, continuation.as_ref()).await {
                Ok(page) => page,
                Err(e) if e.is_not_found() => return Ok(moved),
                Err(e) => return Err(e.into()),
            };
            let mut rows = Vec::with_capacity(page.entities.len());
            for row in page.entities {
                match event_of(&row) {
                    Ok(event) => rows.push((event, row.row_key)),
                    // not an event this code can read: kept (and said) rather than lost
                    Err(e) => {
                        tracing::error!(error = %e, row = %row.row_key, "unreadable audit outbox row left in place")
                    }
                }
            }
            moved += self.move_rows(table, partition, rows).await?;
            match page.continuation {
                Some(next) => continuation = Some(next),
                None => return Ok(moved),
            }
        }
    }

    /// Stores `rows`' events and deletes the rows; when the batch fails, event by event,
    /// so that one the trail refuses does not hold the others back.
    async fn move_rows(
        &self,
        table: &Table,
        partition: &str,
        rows: Vec<(Event, String)>,
    ) -> Result<usize, AuditError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let store = self.audit.store();
        let events: Vec<Event> = rows.iter().map(|(e, _)| e.clone()).collect();
        if store.append(&events).await.is_ok() {
            let n = rows.len();
            delete_rows(table, partition, rows.into_iter().map(|(_, k)| k).collect()).await?;
            return Ok(n);
        }
        let mut moved = Vec::new();
        for (i, (event, key)) in rows.into_iter().enumerate() {
            match store.append(std::slice::from_ref(&event)).await {
                Ok(()) => moved.push(key),
                // the first fails alone too: the trail is down, not this event
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, event = %event.id, action = %event.action, "audit event refused by the trail; left in its outbox row")
                }
            }
        }
        let n = moved.len();
        delete_rows(table, partition, moved).await?;
        Ok(n)
    }
}

/// Deletes outbox rows of one partition; rows already gone (moved by another process)
/// are fine.
async fn delete_rows(table: &Table, partition: &str, keys: Vec<String>) -> Result<(), AuditError> {
    for chunk in keys.chunks(tables::batch::MAX_OPERATIONS) {
        let ops: Vec<Operation> = chunk
            .iter()
            .map(|row_key| Operation::Delete {
                partition_key: partition.to_string(),
                row_key: row_key.clone(),
                if_match: IfMatch::Any,
            })
            .collect();
        table.transact_tolerant(&ops).await?;
    }
    Ok(())
}

/// The worker: each turn takes every job waiting (up to [`MAX_TURN`]; when fewer than
/// [`FULL_TURN`], those that arrive within [`LINGER`] too), records their events together
/// and deletes their rows, so the more requests in flight, the fewer transactions each
/// costs.
async fn run(
    audit: Audit,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    finished: watch::Sender<u64>,
    hurry: Arc<tokio::sync::Notify>,
) {
    let mut turn: Vec<Job> = Vec::with_capacity(MAX_TURN);
    while jobs.recv_many(&mut turn, MAX_TURN).await > 0 {
        if turn.len() < FULL_TURN {
            let deadline = tokio::time::Instant::now() + LINGER;
            while turn.len() < FULL_TURN {
                let room = MAX_TURN - turn.len();
                // recv_many is cancel safe: a branch that loses took nothing
                tokio::select! {
                    n = jobs.recv_many(&mut turn, room) => if n == 0 { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = hurry.notified() => break,
                }
            }
        }
        // a turn that panics loses nothing (its rows wait for a sweep); where panics unwind
        // it also stops nothing: it is counted, said, and the worker goes on (a release
        // build aborts the process instead, and its rows wait for the sweep all the same)
        let moving = std::panic::AssertUnwindSafe(move_turn(&audit, &turn));
        if futures::FutureExt::catch_unwind(moving).await.is_err() {
            tracing::error!(
                events = turn.len(),
                "audit outbox move panicked; its events wait in their rows for a sweep"
            );
        }
        let n = turn.len() as u64;
        turn.clear();
        finished.send_modify(|done| *done += n);
    }
}

/// One turn: the events stored together, then their rows deleted.
async fn move_turn(audit: &Audit, turn: &[Job]) {
    {
        let events: Vec<Event> = turn.iter().map(|j| j.event.clone()).collect();
        let mut recorded = false;
        for attempt in 0..ATTEMPTS {
            // observers were told when the job was handed in
            match audit.store().append(&events).await {
                Ok(()) => {
                    recorded = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = events.len(), attempt, "audit outbox move failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        if recorded {
            // rows by table and partition, each deleted in as few transactions as fit
            let mut groups: Vec<(&Table, &str, Vec<String>)> = Vec::new();
            for job in turn {
                let key = row_key(&job.event);
                match groups
                    .iter_mut()
                    .find(|(t, p, _)| t.name() == job.table.name() && *p == job.partition)
                {
                    Some((_, _, keys)) => keys.push(key),
                    None => groups.push((&job.table, &job.partition, vec![key])),
                }
            }
            for (table, partition, keys) in groups {
                if let Err(e) = delete_rows(table, partition, keys).await {
                    // the events are in the trail; a sweep removes the rows later
                    tracing::warn!(error = %e, "audit outbox rows not deleted after their move");
                }
            }
        } else {
            tracing::error!(
                events = events.len(),
                "audit events left in their outbox rows; Housekeeping or the next query of their trail moves them"
            );
        }
    }
}
