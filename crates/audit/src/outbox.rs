//! Events written in the same transaction as their change, then moved to the trail.
//!
//! A change that commits in one transaction on a partition of its own table (a SCIM user
//! write) cannot share that transaction with the audit table. Instead its event goes into
//! the change's partition as an outbox row ([`entity`], row key [`PREFIX`]...) inside the
//! change's own transaction: the change and its record commit together or not at all, at
//! the cost of one more operation in a transaction that is sent anyway. After the commit
//! the writer hands the event to [`Outbox::moved`], which tells the recorder's observers
//! at once (the event is durable), and a worker copies it to the trail (a turn's events
//! in shared transactions, so concurrent requests share them) and deletes the outbox row
//! or marks the slot moved (below), off the request's path.
//!
//! A process writes its events into slot rows of its own rather than a new row each
//! ([`Outbox::place`]): `audit-slot-{instance}-{n}`, overwritten by a merge (slot `n` is
//! taken again only after its event is in the trail), so moving an event deletes nothing.
//! A delete costs a store like Azurite more than the insert it undoes, and more the larger
//! the table (its in-memory indexes are shifted row by row), so this halves what the
//! outbox costs the change's table. The process's mark row (`audit-mark-{instance}`, one
//! `m{n}` per slot) says which event of each slot was moved: a slot whose `Seq` differs
//! from its mark holds an event still to move. A process that has no free slot (more
//! events in flight than slots, or an event too large for one) writes a row of its own
//! for the event, as before, deleted once moved.
//!
//! Nothing is lost when a process dies between the commit and the move: the rows stay in
//! the partition, and [`Outbox::sweep`] (run by Housekeeping for every tenant, and before
//! every query of a tenant's trail) moves whatever it finds. Moving is idempotent: the
//! trail row is an upsert of the same event, a delete of a row already gone is fine, so
//! two processes moving the same row at once store it once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
/// Slot rows a process keeps in each partition it writes to: about the events in flight
/// between a commit and the end of the turn that moves it, at a few hundred writes a
/// second.
const SLOTS: usize = 96;
/// Slot and mark rows' key prefixes (after [`PREFIX`]; an event's own row follows it with
/// a digit).
const SLOT_PREFIX: &str = "audit-slot-";
const MARK_PREFIX: &str = "audit-mark-";
/// How long after a transaction of unknown outcome its slot is looked at again.
const UNKNOWN_OUTCOME_WAIT: Duration = Duration::from_secs(60);
/// The longest event (as JSON) a slot holds; a string property holds 32K characters.
const MAX_SLOT_CHARS: usize = 30_000;
/// How long the slots of a process must have been left alone, every event in them moved,
/// before Housekeeping deletes them (the process is gone; a live one writes them again), by
/// the row timestamps the store keeps.
const IDLE_SLOTS: Duration = Duration::from_secs(3600);

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

/// Where an event was placed in its change's transaction: a slot row of this process, or
/// a row of its own.
/// Not `Clone`: one placing is handed on once, moved or abandoned.
#[derive(Debug)]
pub struct Placed {
    event: Event,
    slot: Option<Slot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    index: usize,
    seq: i64,
}

impl Placed {
    /// The event placed.
    pub fn event(&self) -> &Event {
        &self.event
    }
}

/// An event in a row of its own ([`entity`]), written by the caller.
impl From<Event> for Placed {
    fn from(event: Event) -> Placed {
        Placed { event, slot: None }
    }
}

fn slot_key(instance: &str, index: usize) -> String {
    format!("{SLOT_PREFIX}{instance}-{index:03}")
}

fn mark_key(instance: &str) -> String {
    format!("{MARK_PREFIX}{instance}")
}

fn mark_property(index: usize) -> String {
    format!("m{index}")
}

/// A slot row's instance and index.
fn parse_slot_key(row_key: &str) -> Option<(&str, usize)> {
    let rest = row_key.strip_prefix(SLOT_PREFIX)?;
    let (instance, index) = rest.rsplit_once('-')?;
    Some((instance, index.parse().ok()?))
}

/// The slots of each (table, partition) this process writes to: the number of the event
/// each holds until it is moved.
type SlotMap = std::collections::HashMap<(String, String), Vec<Option<i64>>>;

/// One committed event whose outbox entry waits to be moved.
struct Job {
    table: Table,
    partition: String,
    placed: Placed,
}

/// The mover: takes committed events, records them in the trail, deletes their rows or
/// marks their slots moved.
pub struct Outbox {
    audit: Audit,
    /// This process's name in its slot rows' keys.
    instance: String,
    slots: Arc<std::sync::Mutex<SlotMap>>,
    /// The number written with the next event placed in a slot.
    seq: AtomicI64,
    /// How long another process's slots stay unwritten before a tidy deletes them.
    idle_slots: Duration,
    /// Events placed in rows of their own (said now and then: many mean too few slots).
    overflowed: AtomicU64,
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
            instance: Uuid::new_v4().simple().to_string(),
            slots: Arc::default(),
            seq: AtomicI64::new(1),
            idle_slots: IDLE_SLOTS,
            overflowed: AtomicU64::new(0),
            jobs: OnceLock::new(),
            handed: Arc::new(AtomicU64::new(0)),
            finished: watch::channel(0).0,
            hurry: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// This mover with another idle time for [`Outbox::sweep_and_tidy`] (an hour unless
    /// told).
    pub fn with_idle_slots(mut self, idle: Duration) -> Outbox {
        self.idle_slots = idle;
        self
    }

    /// The operation that records `event` in `partition` of `table`, to send in the
    /// change's transaction: a merge into a free slot row of this process, else the insert
    /// of a row of its own. Hand what it answers to [`Outbox::moved`] once the transaction
    /// committed, to [`Outbox::abandoned`] when it certainly did not, and to
    /// [`Outbox::settle`] when that is not known.
    pub fn place(&self, table: &Table, partition: &str, event: Event) -> (Operation, Placed) {
        let json = serde_json::to_string(&event).unwrap_or_default();
        let slot = if json.is_empty() || json.len() > MAX_SLOT_CHARS {
            None
        } else {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let held = slots
                .entry((table.name().to_string(), partition.to_string()))
                .or_insert_with(|| vec![None; SLOTS]);
            held.iter().position(Option::is_none).map(|index| {
                let seq = self.seq.fetch_add(1, Ordering::SeqCst);
                held[index] = Some(seq);
                Slot { index, seq }
            })
        };
        match slot {
            Some(Slot { index, seq }) => {
                // both properties every time: the merge leaves nothing of the slot's last event
                let row = Entity::new(partition, slot_key(&self.instance, index))
                    .with("Seq", seq)
                    .with("Event", json);
                let slot = Some(Slot { index, seq });
                (Operation::UpsertMerge(row), Placed { event, slot })
            }
            None => {
                let n = self.overflowed.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    tracing::info!(
                        events = n + 1,
                        "audit events in rows of their own: no free outbox slot, or too large for one"
                    );
                }
                (
                    Operation::Insert(entity(&event, partition)),
                    Placed::from(event),
                )
            }
        }
    }

    /// `placed`'s transaction certainly did not commit (it was refused): its slot is free.
    pub fn abandoned(&self, table: &Table, partition: &str, placed: Placed) {
        if let Some(slot) = placed.slot {
            free_slots(&self.slots, table, partition, &[slot]);
        }
    }

    /// `placed`'s transaction was refused, or nothing says it committed: its event moves
    /// to the trail if its entry is there after all, else its slot is free. When the
    /// entry cannot be looked at, it is looked at again a minute later.
    pub async fn resolve(&self, table: &Table, partition: &str, placed: Placed) {
        match self.settle(table, partition, &placed).await {
            Ok(true) => {}
            Ok(false) => self.abandoned(table, partition, placed),
            Err(e) => {
                tracing::warn!(error = %e, "audit outbox entry not looked at; again in a minute");
                self.resolve_later(table, partition, placed);
            }
        }
    }

    /// [`Outbox::resolve`] a minute from now, when a transaction whose outcome was not
    /// known (a timeout, a request cut short) has long committed or failed.
    pub fn resolve_later(&self, table: &Table, partition: &str, placed: Placed) {
        let checker = Outbox {
            audit: self.audit.clone(),
            instance: self.instance.clone(),
            slots: self.slots.clone(),
            seq: AtomicI64::new(0),
            idle_slots: self.idle_slots,
            overflowed: AtomicU64::new(0),
            jobs: OnceLock::new(),
            handed: Arc::default(),
            finished: watch::channel(0).0,
            hurry: Arc::default(),
        };
        let (table, partition) = (table.clone(), partition.to_string());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(UNKNOWN_OUTCOME_WAIT).await;
            match checker.settle(&table, &partition, &placed).await {
                Ok(true) => {}
                Ok(false) => checker.abandoned(&table, &partition, placed),
                // the slot stays taken: a sweep moves the event if it is there
                Err(e) => {
                    tracing::warn!(error = %e, "audit outbox entry not looked at; its slot stays taken")
                }
            }
        });
    }

    /// `placed` committed with its change in `partition` of `table` (an event in a row of
    /// its own converts into one): tells the observers and moves it soon. The caller does
    /// not wait; the row is the record until then.
    pub fn moved(&self, table: &Table, partition: &str, placed: impl Into<Placed>) {
        let placed = placed.into();
        let sender = self.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run(
                Mover {
                    audit: self.audit.clone(),
                    instance: self.instance.clone(),
                    slots: self.slots.clone(),
                },
                receiver,
                self.finished.clone(),
                self.hurry.clone(),
            ));
            sender
        });
        // the event is durable (its row committed): observers hear of it now, in the order
        // of the requests, not a turn later; a failure recorded straight to the trail
        // meanwhile would otherwise be counted before the successes that preceded it
        self.audit.tell(&placed.event);
        self.handed.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            table: table.clone(),
            partition: partition.to_string(),
            placed,
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

    /// Moves `placed`'s event to the trail if its outbox entry is there (its transaction
    /// committed, though the request went on to fail); answers whether it was. A slot
    /// that does not hold it stays taken: a transaction whose outcome was not known may
    /// still commit.
    pub async fn settle(
        &self,
        table: &Table,
        partition: &str,
        placed: &Placed,
    ) -> Result<bool, AuditError> {
        // stored without telling the observers: the request is counted by its own outcome
        if let Some(slot) = placed.slot {
            let key = slot_key(&self.instance, slot.index);
            let Some(row) = table.try_get(partition, &key).await? else {
                return Ok(false);
            };
            if row.get_i64("Seq") != Some(slot.seq) {
                return Ok(false);
            }
            self.audit
                .store()
                .append(std::slice::from_ref(&placed.event))
                .await?;
            mark(table, partition, &self.instance, &[slot]).await;
            free_slots(&self.slots, table, partition, &[slot]);
            return Ok(true);
        }
        let key = row_key(&placed.event);
        let Some(row) = table.try_get(partition, &key).await? else {
            return Ok(false);
        };
        self.audit.store().append(&[event_of(&row)?]).await?;
        delete_rows(table, partition, vec![key]).await?;
        Ok(true)
    }

    /// Moves every outbox event of `partition` in `table` to the trail (events another
    /// process committed and did not move, for instance because it died); answers how
    /// many. The observers are not told: the request an event records was counted, or will
    /// be, by the process that served it. An event the trail refuses on its own is logged
    /// and left in its row; the rest move.
    pub async fn sweep(&self, table: &Table, partition: &str) -> Result<usize, AuditError> {
        self.sweep_with(table, partition, false).await
    }

    /// [`Outbox::sweep`], then deletes the slot rows of processes that left them alone
    /// for an hour (see [`Outbox::with_idle_slots`]) with every event moved (they are gone; one that is not writes its
    /// slots again), so that what a sweep reads stays about the processes that run.
    pub async fn sweep_and_tidy(
        &self,
        table: &Table,
        partition: &str,
    ) -> Result<usize, AuditError> {
        self.sweep_with(table, partition, true).await
    }

    async fn sweep_with(
        &self,
        table: &Table,
        partition: &str,
        tidy: bool,
    ) -> Result<usize, AuditError> {
        let mut query = Query::filter(format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            Value::from(partition).filter_literal(),
            Value::from(PREFIX).filter_literal(),
            Value::from(PREFIX_END).filter_literal()
        ));
        query.page_size = Some(MAX_TURN as u32);
        let mut moved = 0;
        let mut continuation = None;
        // mark rows sort before slot rows (`m` < `s`), so a slot's mark is known when it is
        // read; per instance: the marks, and whether every slot read is moved and idle
        let mut marks: std::collections::HashMap<String, Entity> = Default::default();
        let mut idle: std::collections::HashMap<String, Vec<(String, tables::ETag)>> =
            Default::default();
        let mut busy_instances: HashSet<String> = HashSet::new();
        let mut slot_instances: HashSet<String> = HashSet::new();
        let now = time::OffsetDateTime::now_utc();
        let idle_for = time::Duration::try_from(self.idle_slots).unwrap_or(time::Duration::MAX);
        let is_idle = |row: &Entity| row.timestamp.is_some_and(|t| now - t >= idle_for);
        loop {
            let page = match table.query_page(&query, continuation.as_ref()).await {
                Ok(page) => page,
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e.into()),
            };
            let mut entries = Vec::with_capacity(page.entities.len());
            for row in page.entities {
                if let Some(instance) = row.row_key.strip_prefix(MARK_PREFIX) {
                    if !is_idle(&row) {
                        busy_instances.insert(instance.to_string());
                    }
                    marks.insert(instance.to_string(), row);
                    continue;
                }
                if let Some((instance, index)) = parse_slot_key(&row.row_key) {
                    slot_instances.insert(instance.to_string());
                    let Some(seq) = row.get_i64("Seq") else {
                        tracing::error!(row = %row.row_key, "audit slot row without Seq left in place");
                        busy_instances.insert(instance.to_string());
                        continue;
                    };
                    let marked = marks
                        .get(instance)
                        .and_then(|m| m.get_i64(&mark_property(index)));
                    let slot = Slot { index, seq };
                    if marked != Some(seq) {
                        busy_instances.insert(instance.to_string());
                        match row
                            .get_str("Event")
                            .and_then(|j| serde_json::from_str::<Event>(j).ok())
                        {
                            Some(event) => {
                                entries.push((event, Entry::Slot(instance.to_string(), slot)))
                            }
                            None => {
                                tracing::error!(row = %row.row_key, "unreadable audit slot row left in place")
                            }
                        }
                    } else if instance == self.instance {
                        // moved, perhaps by another process's sweep: free here too
                        busy_instances.insert(instance.to_string());
                        free_slots(&self.slots, table, partition, &[slot]);
                    } else if !is_idle(&row) {
                        busy_instances.insert(instance.to_string());
                    } else if let Some(etag) = row.etag.clone() {
                        idle.entry(instance.to_string())
                            .or_default()
                            .push((row.row_key.clone(), etag));
                    }
                    continue;
                }
                match event_of(&row) {
                    Ok(event) => entries.push((event, Entry::Row(row.row_key))),
                    // not an event this code can read: kept (and said) rather than lost
                    Err(e) => {
                        tracing::error!(error = %e, row = %row.row_key, "unreadable audit outbox row left in place")
                    }
                }
            }
            moved += self.move_entries(table, partition, entries).await?;
            match page.continuation {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        if tidy {
            // a mark row left alone without slot rows (its tidy was cut short)
            for (instance, row) in &marks {
                if instance != &self.instance
                    && !busy_instances.contains(instance)
                    && !idle.contains_key(instance)
                    && is_idle(row)
                    && !slot_instances.contains(instance)
                {
                    idle.insert(instance.clone(), Vec::new());
                }
            }
            for (instance, rows) in idle {
                if busy_instances.contains(&instance) {
                    continue;
                }
                tidy_instance(table, partition, &instance, rows).await;
            }
        }
        Ok(moved)
    }

    /// Stores the entries' events, then deletes their rows and marks their slots moved;
    /// when the batch fails, event by event, so that one the trail refuses does not hold
    /// the others back.
    async fn move_entries(
        &self,
        table: &Table,
        partition: &str,
        entries: Vec<(Event, Entry)>,
    ) -> Result<usize, AuditError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let store = self.audit.store();
        let events: Vec<Event> = entries.iter().map(|(e, _)| e.clone()).collect();
        let done: Vec<Entry> = if store.append(&events).await.is_ok() {
            entries.into_iter().map(|(_, entry)| entry).collect()
        } else {
            let mut done = Vec::new();
            for (i, (event, entry)) in entries.into_iter().enumerate() {
                match store.append(std::slice::from_ref(&event)).await {
                    Ok(()) => done.push(entry),
                    // the first fails alone too: the trail is down, not this event
                    Err(e) if i == 0 => return Err(e),
                    Err(e) => {
                        tracing::error!(error = %e, event = %event.id, action = %event.action, "audit event refused by the trail; left in its outbox row")
                    }
                }
            }
            done
        };
        let n = done.len();
        let mut rows = Vec::new();
        let mut slots: std::collections::BTreeMap<String, Vec<Slot>> = Default::default();
        for entry in done {
            match entry {
                Entry::Row(key) => rows.push(key),
                Entry::Slot(instance, slot) => slots.entry(instance).or_default().push(slot),
            }
        }
        for (instance, slots) in slots {
            mark(table, partition, &instance, &slots).await;
            if instance == self.instance {
                free_slots(&self.slots, table, partition, &slots);
            }
        }
        delete_rows(table, partition, rows).await?;
        Ok(n)
    }
}

/// A swept event's outbox entry.
enum Entry {
    /// A row of its own, by key.
    Row(String),
    /// A slot of a process (by its instance).
    Slot(String, Slot),
}

/// Frees this process's `slots` of `partition` in `table`, each only if it still holds the
/// event moved (a sweep and the worker may both move one).
fn free_slots(map: &std::sync::Mutex<SlotMap>, table: &Table, partition: &str, slots: &[Slot]) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(busy) = map.get_mut(&(table.name().to_string(), partition.to_string())) {
        for slot in slots {
            if busy.get(slot.index) == Some(&Some(slot.seq)) {
                busy[slot.index] = None;
            }
        }
    }
}

/// Marks `slots` of `instance` moved. A mark that is not written costs only a second move
/// of the same event by a later sweep (the trail stores it once), so a failure is said
/// and left.
async fn mark(table: &Table, partition: &str, instance: &str, slots: &[Slot]) {
    let mut row = Entity::new(partition, mark_key(instance));
    for slot in slots {
        row.set(mark_property(slot.index), slot.seq);
    }
    if let Err(e) = table.transact(&[Operation::UpsertMerge(row)]).await {
        tracing::warn!(error = %e, "audit slots not marked moved; a sweep moves their events again");
    }
}

/// Deletes a gone process's slot rows (each only as it was read, so a slot written since
/// stays) and then its mark row.
async fn tidy_instance(
    table: &Table,
    partition: &str,
    instance: &str,
    rows: Vec<(String, tables::ETag)>,
) {
    for chunk in rows.chunks(tables::batch::MAX_OPERATIONS) {
        let ops: Vec<Operation> = chunk
            .iter()
            .map(|(row_key, etag)| Operation::Delete {
                partition_key: partition.to_string(),
                row_key: row_key.clone(),
                if_match: IfMatch::ETag(etag.clone()),
            })
            .collect();
        if let Err(e) = table.transact_tolerant(&ops).await {
            tracing::info!(error = %e, instance, "audit slots of an idle process kept");
            return;
        }
    }
    if let Err(e) = delete_rows(table, partition, vec![mark_key(instance)]).await {
        tracing::info!(error = %e, instance, "audit mark row of an idle process kept");
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

/// What the worker needs of its [`Outbox`].
struct Mover {
    audit: Audit,
    instance: String,
    slots: Arc<std::sync::Mutex<SlotMap>>,
}

/// The worker: each turn takes every job waiting (up to [`MAX_TURN`]; when fewer than
/// [`FULL_TURN`], those that arrive within [`LINGER`] too), records their events together
/// and deletes their rows or marks their slots, so the more requests in flight, the fewer
/// transactions each costs.
async fn run(
    mover: Mover,
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
        let moving = std::panic::AssertUnwindSafe(move_turn(&mover, &turn));
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

/// One turn: the events stored together, then their rows deleted and their slots marked
/// and freed. Events the trail does not take keep their rows and slots (a sweep moves
/// them, and frees the slots when it runs in this process).
async fn move_turn(mover: &Mover, turn: &[Job]) {
    let events: Vec<Event> = turn.iter().map(|j| j.placed.event.clone()).collect();
    let mut recorded = false;
    for attempt in 0..ATTEMPTS {
        // observers were told when the job was handed in
        match mover.audit.store().append(&events).await {
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
    if !recorded {
        tracing::error!(
            events = events.len(),
            "audit events left in their outbox rows; Housekeeping or the next query of their trail moves them"
        );
        return;
    }
    // by table and partition: rows deleted in as few transactions as fit, slots marked in one
    let mut groups: Vec<(&Table, &str, Vec<String>, Vec<Slot>)> = Vec::new();
    for job in turn {
        let i = match groups
            .iter()
            .position(|(t, p, _, _)| t.name() == job.table.name() && *p == job.partition)
        {
            Some(i) => i,
            None => {
                groups.push((&job.table, &job.partition, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        match job.placed.slot {
            Some(slot) => groups[i].3.push(slot),
            None => groups[i].2.push(row_key(&job.placed.event)),
        }
    }
    for (table, partition, keys, slots) in groups {
        if !slots.is_empty() {
            mark(table, partition, &mover.instance, &slots).await;
            // the events are in the trail: their slots may take others
            free_slots(&mover.slots, table, partition, &slots);
        }
        if let Err(e) = delete_rows(table, partition, keys).await {
            // the events are in the trail; a sweep removes the rows later
            tracing::warn!(error = %e, "audit outbox rows not deleted after their move");
        }
    }
}
