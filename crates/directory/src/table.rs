//! [`Directory`] on Table Storage: one partition per tenant, laid out by [`crate::layout`].
//!
//! Writes are entity group transactions of at most 100 operations. Each transaction carries
//! the writer's counter row, conditioned on its ETag, so counters change exactly when the
//! rows they count change, even when a page is replayed after a crash. A user's record and
//! its index rows always change in one transaction.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use tables::{ETag, Entity, Error as TableError, IfMatch, Operation, Query, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{
    Counters, Field, Group, GroupChange, ListFilter, MemberChange, Page, Sources, User, UserChange,
    UserFields, Writer,
};
use crate::{BeforeCommit, Directory, DirectoryError, layout, search};

/// How a page of changes finds what already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Read every row a change touches first (incremental rounds, SCIM).
    Read,
    /// Assume none exists yet (a first full round into an empty directory): insert without
    /// reading, and fall back to reading the page on the first conflict.
    Optimistic,
}

/// What a page of changes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub members_added: u64,
    pub members_removed: u64,
    /// Entities written (inserted, replaced, merged or deleted), counters included.
    pub entities: u64,
    pub transactions: u64,
    /// Users the changes touched that are inactive (disabled or deleted) afterwards, even
    /// when nothing changed: a page replayed after a crash names them again, so whatever
    /// must follow a deactivation (revoking certificates) can be done idempotently.
    pub inactive: Vec<Uuid>,
    /// Each object the changes created, updated, disabled or deleted, with the attributes
    /// that changed (for the audit trail).
    pub objects: Vec<ObjectChange>,
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectChangeKind {
    Created,
    Updated,
    /// Updated so that it is no longer active (disabled, or soft-deleted in Entra).
    Disabled,
    Deleted,
}

impl ObjectChangeKind {
    /// `create`, `update`, `disable` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectChangeKind::Created => "create",
            ObjectChangeKind::Updated => "update",
            ObjectChangeKind::Disabled => "disable",
            ObjectChangeKind::Deleted => "delete",
        }
    }
}

/// One object's change: `(attribute, old, new)` for each attribute that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectChange {
    /// `user` or `group`.
    pub object: &'static str,
    pub id: Uuid,
    pub display: Option<String>,
    pub kind: ObjectChangeKind,
    pub attributes: Vec<(&'static str, Option<String>, Option<String>)>,
}

/// The attributes of a user the audit trail shows.
fn user_attributes(u: &User) -> [(&'static str, Option<String>); 9] {
    [
        ("upn", Some(u.upn.clone())),
        ("name", u.name.clone()),
        ("email", u.email.clone()),
        ("given_name", u.given_name.clone()),
        ("surname", u.surname.clone()),
        ("job_title", u.job_title.clone()),
        ("department", u.department.clone()),
        ("employee_id", u.employee_id.clone()),
        ("enabled", Some(u.enabled.to_string())),
    ]
}

fn user_change(before: Option<&User>, after: Option<&User>) -> Option<ObjectChange> {
    let kind = match (before, after) {
        (None, Some(_)) => ObjectChangeKind::Created,
        (Some(_), None) => ObjectChangeKind::Deleted,
        (Some(old), Some(new)) if old.is_active() && !new.is_active() => ObjectChangeKind::Disabled,
        (Some(_), Some(_)) => ObjectChangeKind::Updated,
        (None, None) => return None,
    };
    let old = before.map(user_attributes);
    let new = after.map(user_attributes);
    let attributes = (0..9)
        .filter_map(|i| {
            let name = old.as_ref().or(new.as_ref()).map(|a| a[i].0)?;
            let o = old.as_ref().and_then(|a| a[i].1.clone());
            let n = new.as_ref().and_then(|a| a[i].1.clone());
            (o != n).then_some((name, o, n))
        })
        .collect();
    let shown = after.or(before)?;
    Some(ObjectChange {
        object: "user",
        id: shown.id,
        display: Some(shown.upn.clone()),
        kind,
        attributes,
    })
}

impl Applied {
    /// Adds another page's figures.
    pub fn add(&mut self, o: &Applied) {
        self.created += o.created;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.members_added += o.members_added;
        self.members_removed += o.members_removed;
        self.entities += o.entities;
        self.transactions += o.transactions;
        self.inactive.extend(o.inactive.iter().copied());
        self.objects.extend(o.objects.iter().cloned());
    }

    /// Objects changed in any way.
    pub fn changes(&self) -> u64 {
        self.created + self.updated + self.deleted + self.members_added + self.members_removed
    }
}

const MAX_OPERATIONS: usize = 100;
const READ_CONCURRENCY: usize = 32;
const ATTEMPTS: u32 = 10;

/// A random pause before attempt `attempt` (from 1) after a lost race: concurrent writers
/// that collided on a row (a counter shard, a first insert) would collide again if they
/// retried at once. Up to 10 ms after the first collision, doubling, at most 320 ms.
async fn back_off(attempt: u32) {
    let most = 5u64 << attempt.min(6);
    let pause = (Uuid::new_v4().as_u128() % u128::from(most)) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
}

/// [`Directory`] on a table.
#[derive(Clone)]
pub struct TableDirectory {
    table: Table,
    /// The search rows (`s-…`), in a table of their own beside `table` (`{table}Search`):
    /// a store that evaluates a range query against every row of its table (Azurite) then
    /// reads only search rows for a search, not the records and memberships too. A page's
    /// new rows are written before its records and its old rows deleted after them, so a
    /// user is always found under the terms its record has; a row whose record lacks its
    /// term (a crash between, a write that lost a race) is skipped when read.
    search: Table,
    /// The Graph writer's counter row per tenant as its last successful page left it, so
    /// that the next page of a round does not read it again (its ETag guards any write
    /// made meanwhile: a stale copy fails the page's transaction, which reads again).
    graph_rows: std::sync::Arc<std::sync::Mutex<HashMap<String, CounterRow>>>,
    /// Tenants whose directory table was found to hold no search rows of the layout before
    /// the search table ([`TableDirectory::move_search_rows`]), and when: believed for
    /// [`NO_OLD_ROWS_FOR`] (this code writes none there, but an instance of an older
    /// release still running during a rolling upgrade may).
    no_old_search_rows: std::sync::Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
    /// Tenants whose Graph counter row is known to say `ScimSeen`: set once, never unset.
    scim_marked: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Tenants whose Graph counter row says Graph wrote there: SCIM writes look users up
    /// by UPN (Graph may have found the person first). Set once, never unset; a tenant
    /// not in it has its Graph row read on each SCIM write.
    graph_users: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The SCIM counter shards this process's writers hold, per tenant.
    shards: std::sync::Arc<ShardPool>,
}

/// Hands each concurrent SCIM write of this process its own counter shard, so that they
/// never race each other for one row (with random picks, 16 writers on 8 shards collided on
/// most attempts); a write waits when all are held. Each process starts at its own random
/// shard, so that instances at low load tend to write different rows too.
struct ShardPool {
    held: std::sync::Mutex<HashMap<String, u32>>,
    freed: tokio::sync::Notify,
    start: u32,
}

/// A shard held until dropped.
struct HeldShard<'a> {
    pool: &'a ShardPool,
    tenant: String,
    shard: u32,
}

impl ShardPool {
    fn new() -> ShardPool {
        ShardPool {
            held: Default::default(),
            freed: tokio::sync::Notify::new(),
            start: (Uuid::new_v4().as_u128() % u128::from(layout::SCIM_COUNTER_SHARDS)) as u32,
        }
    }

    fn try_take(&self, tenant: &str) -> Option<u32> {
        let mut held = self.held.lock().expect("shards");
        let bits = held.get(tenant).copied().unwrap_or(0);
        let shard = (0..layout::SCIM_COUNTER_SHARDS)
            .map(|i| (self.start + i) % layout::SCIM_COUNTER_SHARDS)
            .find(|s| bits & (1 << s) == 0)?;
        held.insert(tenant.to_string(), bits | (1 << shard));
        Some(shard)
    }

    async fn take(&self, tenant: &str) -> HeldShard<'_> {
        loop {
            // registered before looking, so a release in between is not missed
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(shard) = self.try_take(tenant) {
                return HeldShard {
                    pool: self,
                    tenant: tenant.to_string(),
                    shard,
                };
            }
            freed.await;
        }
    }
}

impl Drop for HeldShard<'_> {
    fn drop(&mut self) {
        let mut held = self.pool.held.lock().expect("shards");
        if let Some(bits) = held.get_mut(&self.tenant) {
            *bits &= !(1 << self.shard);
            if *bits == 0 {
                held.remove(&self.tenant);
            }
        }
        drop(held);
        self.pool.freed.notify_waiters();
    }
}

/// Tenants whose rows are remembered at most (beyond, the memory starts afresh).
const REMEMBERED_TENANTS: usize = 10_000;

/// Operations that must commit together, and what they count for.
#[derive(Default)]
struct OpGroup {
    ops: Vec<Operation>,
    /// Writes of the search table (its rows for the same user), made before `ops`.
    search_ops: Vec<Operation>,
    delta: Counters,
    applied: Applied,
}

/// Every slice of one group in a page: its name (if reported), member changes, round, and
/// whether it was removed.
type FoldedGroup = (Option<Field<String>>, Vec<MemberChange>, i64, bool);

/// The writer's counter row as read: where a transaction's counter update goes.
#[derive(Clone)]
struct CounterRow {
    key: String,
    values: Counters,
    etag: Option<ETag>,
    /// On the Graph row: whether a SCIM user was ever written to this directory (SCIM marks
    /// it in the transaction of its first write, guarded by the row's ETag), so that Graph
    /// pages know whether to look users up by UPN without reading SCIM's counter shards.
    /// `None` on rows written before the mark existed.
    scim_seen: Option<bool>,
    /// On the Graph row: whether Graph sync ever wrote to this directory (set by its first
    /// transaction, never unset). SCIM looks users up by UPN unless it is `Some(false)`
    /// (the row SCIM's mark made) or the row is absent; `None` on rows from before it
    /// existed, which count as written. The row's counts cannot say it: a Graph user merged
    /// from a SCIM-first record counts nothing on the Graph row.
    graph_wrote: Option<bool>,
}

enum Failure {
    /// Rows changed under us (409, 412, 404 in a transaction): read again and redo.
    Conflict,
    Fatal(DirectoryError),
}

impl From<DirectoryError> for Failure {
    fn from(e: DirectoryError) -> Failure {
        Failure::Fatal(e)
    }
}

impl From<TableError> for Failure {
    fn from(e: TableError) -> Failure {
        match &e {
            TableError::Batch { source, .. }
                if source.is_conflict()
                    || source.is_precondition_failed()
                    || source.is_not_found() =>
            {
                Failure::Conflict
            }
            _ if e.is_conflict() || e.is_precondition_failed() => Failure::Conflict,
            _ => Failure::Fatal(e.into()),
        }
    }
}

fn corrupt(row: &str, what: &str) -> DirectoryError {
    DirectoryError::Corrupt(format!("{row}: {what}"))
}

fn opt_uuid(e: &Entity, name: &str) -> Result<Option<Uuid>, DirectoryError> {
    e.get_str(name)
        .map(|s| Uuid::try_parse(s).map_err(|_| corrupt(&e.row_key, name)))
        .transpose()
}

fn opt_string(e: &Entity, name: &str) -> Option<String> {
    e.get_str(name).map(str::to_string)
}

fn user_entity(tenant: &str, u: &User) -> Entity {
    let mut e = Entity::new(tenant, layout::user(u.id))
        .with("Upn", u.upn.as_str())
        .with("Enabled", u.enabled)
        .with("Active", u.is_active())
        .with("FromGraph", u.sources.graph)
        .with("FromScim", u.sources.scim)
        .with("SeenRound", u.seen_round)
        .with("UpdatedAt", u.updated_at);
    if let Some(id) = u.entra_id {
        e.set("EntraId", id.to_string());
    }
    if let Some(id) = u.scim_id {
        e.set("ScimId", id.to_string());
    }
    for (name, value) in [
        ("Name", &u.name),
        ("Email", &u.email),
        ("GivenName", &u.given_name),
        ("Surname", &u.surname),
        ("JobTitle", &u.job_title),
        ("Department", &u.department),
        ("EmployeeId", &u.employee_id),
    ] {
        if let Some(v) = value {
            e.set(name, v.as_str());
        }
    }
    if let Some(t) = u.entra_last_sync {
        e.set("EntraLastSync", t);
    }
    if let Some(t) = u.deleted_in_entra_at {
        e.set("DeletedInEntraAt", t);
    }
    e
}

fn user_from(e: &Entity) -> Result<User, DirectoryError> {
    let id = e
        .row_key
        .strip_prefix(layout::USER)
        .and_then(|s| Uuid::try_parse(s).ok())
        .ok_or_else(|| corrupt(&e.row_key, "not a user row"))?;
    Ok(User {
        id,
        entra_id: opt_uuid(e, "EntraId")?,
        scim_id: opt_uuid(e, "ScimId")?,
        upn: e
            .get_str("Upn")
            .ok_or_else(|| corrupt(&e.row_key, "Upn"))?
            .to_string(),
        name: opt_string(e, "Name"),
        email: opt_string(e, "Email"),
        given_name: opt_string(e, "GivenName"),
        surname: opt_string(e, "Surname"),
        job_title: opt_string(e, "JobTitle"),
        department: opt_string(e, "Department"),
        employee_id: opt_string(e, "EmployeeId"),
        enabled: e.get_bool("Enabled").unwrap_or(true),
        sources: Sources {
            scim: e.get_bool("FromScim").unwrap_or(false),
            graph: e.get_bool("FromGraph").unwrap_or(false),
        },
        entra_last_sync: e.get_datetime("EntraLastSync"),
        deleted_in_entra_at: e.get_datetime("DeletedInEntraAt"),
        seen_round: e.get_i64("SeenRound").unwrap_or(0),
        updated_at: e
            .get_datetime("UpdatedAt")
            .ok_or_else(|| corrupt(&e.row_key, "UpdatedAt"))?,
    })
}

fn group_entity(tenant: &str, g: &Group) -> Entity {
    let mut e = Entity::new(tenant, layout::group(g.id))
        .with("FromGraph", g.sources.graph)
        .with("FromScim", g.sources.scim)
        .with("SeenRound", g.seen_round)
        .with("UpdatedAt", g.updated_at);
    if let Some(id) = g.entra_id {
        e.set("EntraId", id.to_string());
    }
    if let Some(name) = &g.name {
        e.set("Name", name.as_str());
    }
    e
}

fn group_from(e: &Entity) -> Result<Group, DirectoryError> {
    let id = e
        .row_key
        .strip_prefix(layout::GROUP)
        .and_then(|s| Uuid::try_parse(s).ok())
        .ok_or_else(|| corrupt(&e.row_key, "not a group row"))?;
    Ok(Group {
        id,
        entra_id: opt_uuid(e, "EntraId")?,
        name: opt_string(e, "Name"),
        sources: Sources {
            scim: e.get_bool("FromScim").unwrap_or(false),
            graph: e.get_bool("FromGraph").unwrap_or(false),
        },
        seen_round: e.get_i64("SeenRound").unwrap_or(0),
        updated_at: e
            .get_datetime("UpdatedAt")
            .ok_or_else(|| corrupt(&e.row_key, "UpdatedAt"))?,
    })
}

fn counters_from(e: &Entity) -> Counters {
    let n = |name| e.get_i64(name).unwrap_or(0);
    Counters {
        users: n("Users"),
        active_users: n("ActiveUsers"),
        scim_users: n("ScimUsers"),
        groups: n("Groups"),
        memberships: n("Memberships"),
    }
}

fn counters_entity(tenant: &str, row: &CounterRow, c: &Counters) -> Entity {
    let mut e = Entity::new(tenant, row.key.as_str())
        .with("Users", c.users)
        .with("ActiveUsers", c.active_users)
        .with("ScimUsers", c.scim_users)
        .with("Groups", c.groups)
        .with("Memberships", c.memberships);
    if let Some(seen) = row.scim_seen {
        e.set("ScimSeen", seen);
    }
    if let Some(wrote) = row.graph_wrote {
        e.set("GraphWrote", wrote);
    }
    e
}

fn delete(tenant: &str, row_key: String, if_match: IfMatch) -> Operation {
    Operation::Delete {
        partition_key: tenant.to_string(),
        row_key,
        if_match,
    }
}

/// What a user counts for.
fn user_counts(u: &User) -> Counters {
    Counters {
        users: 1,
        active_users: i64::from(u.is_active()),
        scim_users: i64::from(u.sources.scim),
        ..Counters::default()
    }
}

fn difference(new: &Counters, old: &Counters) -> Counters {
    Counters {
        users: new.users - old.users,
        active_users: new.active_users - old.active_users,
        scim_users: new.scim_users - old.scim_users,
        groups: new.groups - old.groups,
        memberships: new.memberships - old.memberships,
    }
}

/// Equal but for the times a write stamps.
fn same_user(a: &User, b: &User) -> bool {
    let mut b = b.clone();
    b.updated_at = a.updated_at;
    b.entra_last_sync = a.entra_last_sync;
    *a == b
}

/// Applies reported fields to a user.
fn apply_fields(u: &mut User, f: &UserFields) {
    if let Field::Set(upn) = &f.upn {
        u.upn = upn.clone();
    }
    u.name = f.name.apply(u.name.take());
    u.email = f.email.apply(u.email.take());
    u.given_name = f.given_name.apply(u.given_name.take());
    u.surname = f.surname.apply(u.surname.take());
    u.job_title = f.job_title.apply(u.job_title.take());
    u.department = f.department.apply(u.department.take());
    u.employee_id = f.employee_id.apply(u.employee_id.take());
    if let Some(enabled) = f.enabled {
        u.enabled = enabled;
    }
}

fn new_user(id: Uuid, now: OffsetDateTime) -> User {
    User {
        id,
        entra_id: None,
        scim_id: None,
        upn: id.to_string(),
        name: None,
        email: None,
        given_name: None,
        surname: None,
        job_title: None,
        department: None,
        employee_id: None,
        enabled: true,
        sources: Sources::default(),
        entra_last_sync: None,
        deleted_in_entra_at: None,
        seen_round: 0,
        updated_at: now,
    }
}

/// The state after a change, from the state before it.
fn next_state(current: Option<User>, change: &UserChange, now: OffsetDateTime) -> Option<User> {
    match change {
        UserChange::Graph {
            entra_id,
            fields,
            round,
        } => {
            let mut u = current.unwrap_or_else(|| new_user(*entra_id, now));
            apply_fields(&mut u, fields);
            u.entra_id = Some(*entra_id);
            u.sources.graph = true;
            // returned by delta without @removed: it exists (restored if it was deleted)
            u.deleted_in_entra_at = None;
            u.entra_last_sync = Some(now);
            u.seen_round = u.seen_round.max(*round);
            u.updated_at = now;
            Some(u)
        }
        UserChange::GraphSoftDeleted { round, .. } | UserChange::GraphUnseen { round, .. } => {
            let mut u = current?;
            u.deleted_in_entra_at.get_or_insert(now);
            u.entra_last_sync = Some(now);
            // an on-demand write with an older round must not move it back (see sweep)
            u.seen_round = u.seen_round.max(*round);
            u.updated_at = now;
            Some(u)
        }
        UserChange::GraphDeleted { .. } => {
            let mut u = current?;
            if u.sources.scim {
                // still provisioned over SCIM: keep the record, no longer backed by Graph
                u.sources.graph = false;
                u.deleted_in_entra_at.get_or_insert(now);
                Some(u)
            } else {
                None
            }
        }
        UserChange::Scim { id, fields } => {
            let mut u = current.unwrap_or_else(|| new_user(*id, now));
            apply_fields(&mut u, fields);
            u.sources.scim = true;
            u.scim_id = Some(*id);
            u.updated_at = now;
            Some(u)
        }
        UserChange::ScimDeleted { .. } => {
            let mut u = current?;
            if u.sources.graph {
                u.sources.scim = false;
                u.scim_id = None;
                Some(u)
            } else {
                None
            }
        }
    }
}

/// How a change names its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum UserKey {
    Entra(Uuid),
    /// A SCIM id (the local id, or found through the SCIM-id index or the UPN).
    Local(Uuid),
    /// A record's own local id, nothing else.
    Record(Uuid),
}

fn key_of(change: &UserChange) -> UserKey {
    match change {
        UserChange::Graph { entra_id, .. }
        | UserChange::GraphSoftDeleted { entra_id, .. }
        | UserChange::GraphDeleted { entra_id } => UserKey::Entra(*entra_id),
        UserChange::Scim { id, .. } | UserChange::ScimDeleted { id } => UserKey::Local(*id),
        UserChange::GraphUnseen { id, .. } => UserKey::Record(*id),
    }
}

fn upn_of(change: &UserChange) -> Option<&str> {
    match change {
        UserChange::Graph { fields, .. } | UserChange::Scim { fields, .. } => match &fields.upn {
            Field::Set(upn) => Some(upn),
            _ => None,
        },
        _ => None,
    }
}

/// The index rows a user has: its Entra-id row (when its id is another) and search rows.
fn index_rows(tenant: &str, u: &User) -> Vec<Entity> {
    let mut rows = Vec::new();
    if let Some(entra) = u.entra_id.filter(|e| *e != u.id) {
        rows.push(Entity::new(tenant, layout::entra_index(entra)).with("Id", u.id.to_string()));
    }
    if let Some(scim) = u.scim_id.filter(|s| *s != u.id) {
        rows.push(Entity::new(tenant, layout::scim_index(scim)).with("Id", u.id.to_string()));
    }
    let terms = search::terms(u);
    let upn = layout::term(&u.upn);
    let joined = terms.join("\n");
    for term in &terms {
        rows.push(
            Entity::new(tenant, layout::search(term, u.id))
                .with("Id", u.id.to_string())
                .with("Term", term.as_str())
                .with("Terms", joined.as_str())
                .with("IsUpn", *term == upn),
        );
    }
    rows
}

/// One apply call's hook, with what its attempts announced to it: a conflicted attempt's
/// retry may no longer make a change it announced.
struct Announcer<'a> {
    hook: Option<&'a dyn BeforeCommit>,
    /// Announced changes of what was read, by the attempts before the current one (each
    /// lost a race: nothing of its failed transaction committed).
    told: Vec<ObjectChange>,
    /// Announced changes of what was read, by the current attempt.
    current: Vec<ObjectChange>,
    /// Users announced as created without reading whether they exist (an optimistic
    /// attempt): a record found later with the same id may be this write's own, from an
    /// earlier run of the page (a replay after a crash), so they count as not made only
    /// when no attempt found one.
    unread: Vec<ObjectChange>,
    /// Ids of the records the attempts found.
    found: HashSet<Uuid>,
    /// The hook's name for this write ([`BeforeCommit::write_tag`]).
    tag: Option<String>,
}

/// The property naming the write that last wrote a user or group record and the kind of
/// change it made there ([`written_by`]).
const WRITTEN_BY: &str = "WrittenBy";

/// What a record written by a write named `tag` carries in [`WRITTEN_BY`]: the name and the
/// kind of change, empty for a write without a name (so that the next writer's clears the
/// last one's).
fn written_by(tag: &str, kind: Option<ObjectChangeKind>) -> String {
    match kind {
        Some(kind) if !tag.is_empty() => format!("{tag}|{}", kind.as_str()),
        _ => String::new(),
    }
}

impl<'a> Announcer<'a> {
    fn new(hook: Option<&'a dyn BeforeCommit>) -> Announcer<'a> {
        Announcer {
            hook,
            told: Vec::new(),
            current: Vec::new(),
            unread: Vec::new(),
            found: HashSet::new(),
            tag: hook.and_then(|h| h.write_tag()),
        }
    }

    /// What this write's records carry as its name (empty when it has none).
    fn tag(&self) -> &str {
        self.tag.as_deref().unwrap_or("")
    }

    /// `objects` (changes about to be named not made) without those another run of the same
    /// write made: each one's record carries this write's name and that kind of change,
    /// which no other write leaves. Read only when this write has a name and something to
    /// correct, concurrently; a record that cannot be read leaves its change to the
    /// correction.
    async fn unclaimed(
        &self,
        directory: Option<(&TableDirectory, &str)>,
        objects: Vec<ObjectChange>,
    ) -> Vec<ObjectChange> {
        let (Some((directory, tenant)), Some(tag)) =
            (directory, self.tag.as_deref().filter(|t| !t.is_empty()))
        else {
            return objects;
        };
        if objects.is_empty() {
            return objects;
        }
        let kept: Vec<Option<ObjectChange>> = stream::iter(objects)
            .map(|o| async move {
                let key = match o.object {
                    "user" => layout::user(o.id),
                    "group" => layout::group(o.id),
                    _ => return Some(o),
                };
                match directory.get(tenant, &key).await {
                    Ok(Some(row))
                        if row.get_str(WRITTEN_BY) == Some(&written_by(tag, Some(o.kind))) =>
                    {
                        None
                    }
                    Ok(_) => Some(o),
                    Err(e) => {
                        tracing::warn!(error = %e, "whether another run made a change left unknown; corrected as not made");
                        Some(o)
                    }
                }
            })
            .buffered(READ_CONCURRENCY)
            .collect()
            .await;
        kept.into_iter().flatten().collect()
    }

    /// Tells the hook what `groups` will change, before any of them commits; its refusal
    /// stops the write. What it was told is kept; with `unread`, the creations among it
    /// were not read first.
    async fn tell(&mut self, groups: &[OpGroup], unread: bool) -> Result<(), Failure> {
        let Some(hook) = self.hook else {
            return Ok(());
        };
        let objects: Vec<ObjectChange> = groups
            .iter()
            .flat_map(|g| g.applied.objects.iter().cloned())
            .collect();
        if objects.is_empty() {
            return Ok(());
        }
        hook.changing(&objects)
            .await
            .map_err(|reason| Failure::Fatal(DirectoryError::Unrecorded(reason)))?;
        for o in objects {
            if unread && o.kind == ObjectChangeKind::Created {
                self.unread.push(o);
            } else {
                self.current.push(o);
            }
        }
        Ok(())
    }

    /// The current attempt lost a race: what it announced and did not commit was not made
    /// by it.
    fn lost(&mut self) {
        self.told.append(&mut self.current);
    }

    /// An attempt found the record `id`.
    fn found(&mut self, id: Uuid) {
        if self.hook.is_some() {
            self.found.insert(id);
        }
    }

    /// Unread creations no attempt found a record of.
    fn unread_unfound(&self) -> impl Iterator<Item = &ObjectChange> {
        self.unread.iter().filter(|o| !self.found.contains(&o.id))
    }

    /// The write committed, or gave up after conflicts: what must follow its commits first
    /// (a failed correction of the record must not keep it from happening: a replay may not
    /// name those users), then the record's corrections ([`Announcer::settle`]).
    async fn ended(
        &self,
        directory: &TableDirectory,
        tenant: &str,
        applied: &Applied,
    ) -> Result<(), DirectoryError> {
        let committed = committed(self.hook, applied).await;
        let settled = self.settle(applied, Some((directory, tenant))).await;
        committed.and(settled)
    }

    /// The write failed otherwise: transactions of it that committed before the failure
    /// are followed up now (their users may be gone when the page is replayed), and the
    /// lost attempts' announcements corrected ([`Announcer::settle_failed`]); either
    /// failing is logged, the write's own error being the one to report.
    async fn failed(&self, directory: &TableDirectory, tenant: &str, applied: &Applied) {
        if !applied.inactive.is_empty()
            && let Err(e) = committed(self.hook, applied).await
        {
            tracing::error!(error = %e, "what follows a partly committed write failed");
        }
        if let Err(e) = self.settle_failed(applied, Some((directory, tenant))).await {
            tracing::error!(error = %e, "announced changes not made left uncorrected");
        }
    }

    /// The write ended (committed, or gave up after conflicts): tells the hook of the
    /// announced changes that no transaction of `applied` made, and announces again each
    /// made change whose last announcement (an attempt that then lost a race) described it
    /// otherwise than the transaction that made it. Changes another run of the write made
    /// are not named (with `directory`, [`Announcer::unclaimed`]).
    async fn settle(
        &self,
        applied: &Applied,
        directory: Option<(&TableDirectory, &str)>,
    ) -> Result<(), DirectoryError> {
        let Some(hook) = self.hook else {
            return Ok(());
        };
        let told: Vec<ObjectChange> = self
            .unread_unfound()
            .chain(&self.told)
            .chain(&self.current)
            .cloned()
            .collect();
        // the last made version of each change (a change made twice, by two attempts
        // between which another writer changed the object, is recorded as the later)
        let mut last_made: Vec<&ObjectChange> = Vec::new();
        for made in applied.objects.iter().rev() {
            if !last_made.iter().any(|m| same_change(m, made)) {
                last_made.push(made);
            }
        }
        let restated: Vec<ObjectChange> = last_made
            .into_iter()
            .filter(|made| {
                let last = told.iter().rev().find(|o| same_change(o, made));
                last.is_some_and(|o| o != *made)
            })
            .cloned()
            .collect();
        // both are tried whatever the other's outcome: no replay announces these again
        let mut restating = Ok(());
        if !restated.is_empty() {
            for attempt in 0..4u32 {
                restating = hook.changing(&restated).await;
                if restating.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
            }
        }
        let objects = self.unclaimed(directory, not_made(&told, applied)).await;
        let correcting = if objects.is_empty() {
            Ok(())
        } else {
            hook.not_made(&objects).await
        };
        restating
            .and(correcting)
            .map_err(DirectoryError::Unrecorded)
    }

    /// The write failed otherwise (its last transaction may or may not have committed):
    /// tells the hook of the changes earlier attempts announced (of what they read), lost
    /// a race on, and the failing attempt did not announce again (it found them made, or no
    /// longer wanted), unless a transaction of `applied` made them. A replay that makes one
    /// after all announces it again, under the same record. Creations announced without
    /// reading are left: whether an ambiguous failure made them cannot be told here.
    async fn settle_failed(
        &self,
        applied: &Applied,
        directory: Option<(&TableDirectory, &str)>,
    ) -> Result<(), DirectoryError> {
        let Some(hook) = self.hook else {
            return Ok(());
        };
        let told: Vec<ObjectChange> = self
            .told
            .iter()
            .filter(|o| !self.current.iter().any(|c| same_change(c, o)))
            .cloned()
            .collect();
        let objects = self.unclaimed(directory, not_made(&told, applied)).await;
        if objects.is_empty() {
            return Ok(());
        }
        hook.not_made(&objects)
            .await
            .map_err(DirectoryError::Unrecorded)
    }
}

/// Whether two announcements name the same change: object, id and kind, which is what
/// names their record (an audit event).
fn same_change(a: &ObjectChange, b: &ObjectChange) -> bool {
    a.object == b.object && a.id == b.id && a.kind == b.kind
}

/// The changes `told` names that no transaction of `applied` made, each once (its last
/// announcement).
fn not_made(told: &[ObjectChange], applied: &Applied) -> Vec<ObjectChange> {
    let mut out: Vec<ObjectChange> = Vec::new();
    for o in told.iter().rev() {
        if !applied.objects.iter().any(|m| same_change(m, o))
            && !out.iter().any(|n| same_change(n, o))
        {
            out.push(o.clone());
        }
    }
    out.reverse();
    out
}

/// Tells `hook` that transactions of a write committed with `applied`.
async fn committed(
    hook: Option<&dyn BeforeCommit>,
    applied: &Applied,
) -> Result<(), DirectoryError> {
    match hook {
        Some(hook) => hook
            .committed(applied)
            .await
            .map_err(DirectoryError::Unrecorded),
        None => Ok(()),
    }
}

impl TableDirectory {
    /// The directory in `table`.
    pub fn new(table: Table) -> TableDirectory {
        let search = table.client().table(format!("{}Search", table.name()));
        TableDirectory {
            table,
            search,
            graph_rows: Default::default(),
            no_old_search_rows: Default::default(),
            scim_marked: Default::default(),
            graph_users: Default::default(),
            shards: std::sync::Arc::new(ShardPool::new()),
        }
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The table of search rows.
    pub fn search_table(&self) -> &Table {
        &self.search
    }

    async fn get(&self, tenant: &str, row_key: &str) -> Result<Option<Entity>, DirectoryError> {
        Ok(self.table.try_get(tenant, row_key).await?)
    }

    async fn read_user(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<(User, ETag)>, DirectoryError> {
        match self.get(tenant, &layout::user(id)).await? {
            Some(e) => {
                let etag = e
                    .etag
                    .clone()
                    .ok_or_else(|| corrupt(&e.row_key, "no ETag"))?;
                Ok(Some((user_from(&e)?, etag)))
            }
            None => Ok(None),
        }
    }

    /// All rows of a range, pages streamed; `select` limits the properties read.
    fn range<'a>(
        &'a self,
        tenant: &str,
        range: (String, String),
        extra: &[String],
        select: Option<&[&str]>,
    ) -> impl futures::Stream<Item = Result<Vec<Entity>, DirectoryError>> + Send + 'a {
        let table = if range.0.starts_with(layout::SEARCH) {
            &self.search
        } else {
            &self.table
        };
        Self::range_in(table, tenant, range, extra, select)
    }

    /// [`TableDirectory::range`] in `table`, whatever the range.
    fn range_in<'a>(
        table: &'a Table,
        tenant: &str,
        range: (String, String),
        extra: &[String],
        select: Option<&[&str]>,
    ) -> impl futures::Stream<Item = Result<Vec<Entity>, DirectoryError>> + Send + 'a {
        let query = Query {
            filter: Some(layout::range_filter(tenant, range, extra)),
            select: select.map(|s| s.iter().map(|f| f.to_string()).collect()),
            page_size: Some(1000),
            limit: None,
        };
        table
            .query(query)
            .map_ok(|page| page.entities)
            .map_err(DirectoryError::from)
    }

    /// The writer's counter row and whether the other writer's users may exist (then
    /// changes are looked up by UPN too: for Graph, SCIM users; for SCIM, users Graph
    /// created), plus, for SCIM, the write that marks the Graph row on its first write.
    async fn read_counters(
        &self,
        tenant: &str,
        writer: Writer,
        shard: Option<u32>,
    ) -> Result<(bool, CounterRow, Option<Operation>), DirectoryError> {
        match writer {
            Writer::Graph => {
                let cached = self.graph_rows.lock().expect("graph rows").remove(tenant);
                let row = match cached {
                    Some(row) => row,
                    None => {
                        self.read_counter_row(tenant, layout::counter_graph())
                            .await?
                    }
                };
                let (seen, row) = match row.scim_seen {
                    Some(seen) => (seen, row),
                    // a row from before the mark: SCIM's shards say, and the next counter
                    // write records it
                    None => {
                        let (total, mut row) = self.read_totals(tenant).await?;
                        // never unsays a mark SCIM made between the reads
                        row.scim_seen = Some(row.scim_seen == Some(true) || total.scim_users > 0);
                        (total.scim_users > 0, row)
                    }
                };
                Ok((seen, row, None))
            }
            Writer::Scim => {
                // SCIM always reads before writing, so it needs no totals: its own row will do
                let shard = shard.unwrap_or_else(|| {
                    (Uuid::new_v4().as_u128() % u128::from(layout::SCIM_COUNTER_SHARDS)) as u32
                });
                let own = self
                    .read_counter_row(tenant, layout::counter_scim(shard))
                    .await?;
                let marked = self
                    .scim_marked
                    .lock()
                    .expect("scim marked")
                    .contains(tenant);
                let graph_known = self
                    .graph_users
                    .lock()
                    .expect("graph users")
                    .contains(tenant);
                if marked && graph_known {
                    return Ok((true, own, None));
                }
                // one point read tells both: whether SCIM's mark is there, and whether Graph
                // has created users (a by-UPN lookup is a range query, which Azurite answers
                // by scanning the whole table: skipped where Graph never wrote a user)
                let mut graph = self
                    .read_counter_row(tenant, layout::counter_graph())
                    .await?;
                let graph_users = graph.etag.is_some() && graph.graph_wrote != Some(false);
                if graph_users {
                    self.remember(&self.graph_users, tenant);
                }
                if marked || graph.scim_seen == Some(true) {
                    self.remember_scim_mark(tenant);
                    return Ok((graph_users, own, None));
                }
                graph.scim_seen = Some(true);
                if graph.etag.is_none() {
                    // SCIM makes the row: Graph has not written here yet
                    graph.graph_wrote = Some(false);
                }
                let entity = counters_entity(tenant, &graph, &graph.values);
                let mark = match graph.etag {
                    Some(etag) => Operation::Merge(entity, IfMatch::ETag(etag)),
                    None => Operation::Insert(entity),
                };
                Ok((graph_users, own, Some(mark)))
            }
        }
    }

    async fn read_counter_row(
        &self,
        tenant: &str,
        key: String,
    ) -> Result<CounterRow, DirectoryError> {
        let row = self.get(tenant, &key).await?;
        Ok(CounterRow {
            key,
            values: row.as_ref().map(counters_from).unwrap_or_default(),
            scim_seen: row.as_ref().and_then(|r| r.get_bool("ScimSeen")),
            graph_wrote: row.as_ref().and_then(|r| r.get_bool("GraphWrote")),
            etag: row.and_then(|r| r.etag),
        })
    }

    fn remember_scim_mark(&self, tenant: &str) {
        self.remember(&self.scim_marked, tenant);
    }

    fn remember(&self, set: &std::sync::Mutex<std::collections::HashSet<String>>, tenant: &str) {
        let mut set = set.lock().expect("remembered tenants");
        if set.len() >= REMEMBERED_TENANTS {
            set.clear();
        }
        set.insert(tenant.to_string());
    }

    fn remember_graph_row(&self, tenant: &str, row: CounterRow) {
        let mut rows = self.graph_rows.lock().expect("graph rows");
        if rows.len() >= REMEMBERED_TENANTS {
            rows.clear();
        }
        rows.insert(tenant.to_string(), row);
    }

    /// Every counter row by point reads (a range query is a scan of the table in Azurite,
    /// which made a 100,000-user round quadratic): the totals and the Graph row.
    async fn read_totals(&self, tenant: &str) -> Result<(Counters, CounterRow), DirectoryError> {
        let keys: Vec<String> = std::iter::once(layout::counter_graph())
            .chain((0..layout::SCIM_COUNTER_SHARDS).map(layout::counter_scim))
            .collect();
        let rows: Vec<Option<Entity>> = stream::iter(keys)
            .map(|key| async move { self.get(tenant, &key).await })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut total = Counters::default();
        let mut graph = CounterRow {
            key: layout::counter_graph(),
            values: Counters::default(),
            etag: None,
            scim_seen: None,
            graph_wrote: None,
        };
        for row in rows.iter().flatten() {
            let values = counters_from(row);
            total.add(&values);
            if row.row_key == graph.key {
                graph.values = values;
                graph.etag = row.etag.clone();
                graph.scim_seen = row.get_bool("ScimSeen");
                graph.graph_wrote = row.get_bool("GraphWrote");
            }
        }
        Ok((total, graph))
    }

    /// Commits a page's op groups (after SCIM's mark of the Graph row, when it has one to
    /// make), then remembers what the next page can skip reading.
    async fn commit_page(
        &self,
        tenant: &str,
        writer: Writer,
        mut groups: Vec<OpGroup>,
        mut counter: CounterRow,
        mark: Option<Operation>,
        applied: &mut Applied,
    ) -> Result<(), Failure> {
        let marking = mark.is_some();
        if let Some(mark) = mark {
            groups.insert(
                0,
                OpGroup {
                    ops: vec![mark],
                    ..OpGroup::default()
                },
            );
        }
        self.commit(tenant, groups, &mut counter, applied).await?;
        match writer {
            Writer::Graph => self.remember_graph_row(tenant, counter),
            Writer::Scim if marking => self.remember_scim_mark(tenant),
            Writer::Scim => {}
        }
        Ok(())
    }

    /// Commits op groups in order, packed into transactions, each with the counter row.
    async fn commit(
        &self,
        tenant: &str,
        mut groups: Vec<OpGroup>,
        counter: &mut CounterRow,
        applied: &mut Applied,
    ) -> Result<(), Failure> {
        // new search rows before the records, old ones removed after them: a search never
        // loses a user that has its term, and a row whose user lacks the term (a crash, a
        // lost race) is skipped when read
        let (removed, added): (Vec<Operation>, Vec<Operation>) = groups
            .iter_mut()
            .flat_map(|g| std::mem::take(&mut g.search_ops))
            .partition(|op| matches!(op, Operation::Delete { .. }));
        self.write_search(&added, applied).await?;
        let mut pending: Vec<OpGroup> = Vec::new();
        let mut size = 0;
        for group in groups {
            if group.ops.is_empty() && group.delta.is_zero() {
                applied.add(&group.applied);
                continue;
            }
            if size + group.ops.len() + 1 > MAX_OPERATIONS && !pending.is_empty() {
                self.commit_one(tenant, std::mem::take(&mut pending), counter, applied)
                    .await?;
                size = 0;
            }
            size += group.ops.len();
            pending.push(group);
        }
        if !pending.is_empty() {
            self.commit_one(tenant, pending, counter, applied).await?;
        }
        self.write_search(&removed, applied).await?;
        Ok(())
    }

    /// Deletes a search row whose user is gone or lacks its term, unless it changed since
    /// it was read (a write that gave the user that term again rewrote it). Best effort: a
    /// row left is skipped again by the next read.
    async fn drop_stale_search_row(&self, row: &Entity) {
        let Some(etag) = row.etag.clone() else {
            return;
        };
        let deleted = self
            .search
            .delete(&row.partition_key, &row.row_key, IfMatch::ETag(etag))
            .await;
        if let Err(e) = deleted
            && !e.is_not_found()
            && !e.is_precondition_failed()
        {
            tracing::debug!(error = %e, "stale search row left");
        }
    }

    /// Writes search rows, 100 to a transaction (deletes of rows gone already are fine).
    async fn write_search(&self, ops: &[Operation], applied: &mut Applied) -> Result<(), Failure> {
        for chunk in ops.chunks(MAX_OPERATIONS) {
            self.search.transact_tolerant(chunk).await?;
            applied.entities += chunk.len() as u64;
            applied.transactions += 1;
        }
        Ok(())
    }

    async fn commit_one(
        &self,
        tenant: &str,
        groups: Vec<OpGroup>,
        counter: &mut CounterRow,
        applied: &mut Applied,
    ) -> Result<(), Failure> {
        let mut ops = Vec::new();
        let mut delta = Counters::default();
        let mut done = Applied::default();
        for g in groups {
            ops.extend(g.ops);
            delta.add(&g.delta);
            done.add(&g.applied);
        }
        let mut values = counter.values;
        let counted = !delta.is_zero();
        // a Graph write that counts nothing (a create and a delete in one transaction, or
        // updates) still carries the Graph row while it says no SCIM user exists, so that
        // its ETag fails the transaction if SCIM marked the row meanwhile
        let guarded = !counted && !ops.is_empty() && counter.scim_seen == Some(false);
        // Graph's first write says so on its row, in the same transaction
        let first_graph_write = !ops.is_empty()
            && counter.key == layout::counter_graph()
            && counter.graph_wrote != Some(true);
        let wrote_before = counter.graph_wrote;
        if first_graph_write {
            counter.graph_wrote = Some(true);
        }
        if counted || guarded || first_graph_write {
            values.add(&delta);
            let row = counters_entity(tenant, counter, &values);
            ops.push(match &counter.etag {
                Some(etag) => Operation::Merge(row, IfMatch::ETag(etag.clone())),
                None => Operation::Insert(row),
            });
        }
        if ops.is_empty() {
            applied.add(&done);
            return Ok(());
        }
        let etags = match self.table.transact(&ops).await {
            Ok(etags) => etags,
            Err(e) => {
                counter.graph_wrote = wrote_before;
                return Err(e.into());
            }
        };
        if counted || guarded || first_graph_write {
            counter.values = values;
            counter.etag = etags.last().cloned().flatten();
        }
        done.entities += ops.len() as u64;
        done.transactions += 1;
        applied.add(&done);
        Ok(())
    }

    /// Finds the record each user change applies to.
    async fn resolve_users(
        &self,
        tenant: &str,
        changes: &[UserChange],
        lookups: bool,
    ) -> Result<HashMap<UserKey, Option<(User, ETag)>>, DirectoryError> {
        let mut keys: Vec<(UserKey, Option<String>)> = Vec::new();
        for change in changes {
            let key = key_of(change);
            match keys.iter_mut().find(|(k, _)| *k == key) {
                Some((_, upn)) => {
                    if upn.is_none() {
                        *upn = upn_of(change).map(str::to_string);
                    }
                }
                None => keys.push((key, upn_of(change).map(str::to_string))),
            }
        }
        let found: Vec<(UserKey, Option<(User, ETag)>)> = stream::iter(keys)
            .map(|(key, upn)| async move {
                let found = self.find_user(tenant, key, upn.as_deref(), lookups).await?;
                Ok::<_, DirectoryError>((key, found))
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        // two keys that found one record (a UPN match): the first keeps it
        let mut taken = std::collections::HashSet::new();
        Ok(found
            .into_iter()
            .map(|(key, f)| match f {
                Some((u, e)) if taken.insert(u.id) => (key, Some((u, e))),
                Some(_) => (key, None),
                None => (key, None),
            })
            .collect())
    }

    async fn find_user(
        &self,
        tenant: &str,
        key: UserKey,
        upn: Option<&str>,
        lookups: bool,
    ) -> Result<Option<(User, ETag)>, DirectoryError> {
        match key {
            UserKey::Entra(oid) => {
                if let Some(found) = self.read_user(tenant, oid).await? {
                    return Ok(Some(found));
                }
                // linked to a SCIM-first record: checked whatever the counters say, since
                // the link outlives the SCIM source
                if let Some(row) = self.get(tenant, &layout::entra_index(oid)).await? {
                    let id = opt_uuid(&row, "Id")?.ok_or_else(|| corrupt(&row.row_key, "Id"))?;
                    if let Some(found) = self.read_user(tenant, id).await? {
                        return Ok(Some(found));
                    }
                }
                if !lookups {
                    return Ok(None);
                }
                // a user provisioned over SCIM first, not yet tied to Entra
                let Some(upn) = upn else { return Ok(None) };
                Ok(self
                    .by_upn(tenant, upn)
                    .await?
                    .into_iter()
                    .find(|(u, _)| u.entra_id.is_none() && u.sources.scim))
            }
            UserKey::Record(id) => self.read_user(tenant, id).await,
            UserKey::Local(id) => {
                if let Some(found) = self.read_user(tenant, id).await? {
                    return Ok(Some(found));
                }
                // provisioned over SCIM after Graph sync found the user: one record
                if let Some(row) = self.get(tenant, &layout::scim_index(id)).await? {
                    let local = opt_uuid(&row, "Id")?.ok_or_else(|| corrupt(&row.row_key, "Id"))?;
                    if let Some(found) = self.read_user(tenant, local).await? {
                        return Ok(Some(found));
                    }
                }
                if !lookups {
                    // Graph has created no user here: none can be this person
                    return Ok(None);
                }
                let Some(upn) = upn else { return Ok(None) };
                // a user Graph sync found first
                Ok(self
                    .by_upn(tenant, upn)
                    .await?
                    .into_iter()
                    .find(|(u, _)| u.sources.graph && !u.sources.scim))
            }
        }
    }

    /// Every user whose UPN is `upn`, case-insensitively.
    async fn by_upn(&self, tenant: &str, upn: &str) -> Result<Vec<(User, ETag)>, DirectoryError> {
        let term = layout::term(upn);
        if term.len() > 512 {
            return Ok(Vec::new());
        }
        let select = Some(&["Id", "Term", "IsUpn"][..]);
        let mut rows: Vec<Vec<Entity>> = self
            .range(tenant, layout::search_exact(&term), &[], select)
            .try_collect()
            .await?;
        // until Housekeeping has moved them, rows an older release wrote are in the
        // directory's table: a user they name is still this person's record
        if self.old_search_rows_may_remain(tenant).await? {
            let old: Vec<Vec<Entity>> = Self::range_in(
                &self.table,
                tenant,
                layout::search_exact(&term),
                &[],
                select,
            )
            .try_collect()
            .await?;
            rows.extend(old);
        }
        let mut users: Vec<(User, ETag)> = Vec::new();
        for row in rows.iter().flatten() {
            if row.get_str("Term") != Some(term.as_str()) {
                continue;
            }
            let Some(id) = opt_uuid(row, "Id")? else {
                continue;
            };
            if users.iter().any(|(u, _)| u.id == id) {
                continue;
            }
            // the record decides, not the row (a stale row may say IsUpn either way)
            match self.read_user(tenant, id).await? {
                Some(found) if layout::term(&found.0.upn) == term => users.push(found),
                Some((user, _)) if search::terms(&user).contains(&term) => {}
                _ => self.drop_stale_search_row(row).await,
            }
        }
        Ok(users)
    }

    async fn try_apply_users(
        &self,
        tenant: &str,
        writer: Writer,
        changes: &[UserChange],
        mode: ApplyMode,
        applied: &mut Applied,
        announcer: &mut Announcer<'_>,
    ) -> Result<(), Failure> {
        // the shard is held from its read to the transaction that writes it
        let held = match writer {
            Writer::Scim => Some(self.shards.take(tenant).await),
            Writer::Graph => None,
        };
        let (others_seen, counter, mark) = self
            .read_counters(tenant, writer, held.as_ref().map(|h| h.shard))
            .await?;
        // the other writer's user may be the same person: only reading can tell
        let lookups = others_seen;
        let mode = if lookups || writer == Writer::Scim {
            ApplyMode::Read
        } else {
            mode
        };
        let mut existing = match mode {
            ApplyMode::Read => self.resolve_users(tenant, changes, lookups).await?,
            // nothing to read for what is new; a removal must find what it removes (an
            // object can be returned and removed within one first round)
            ApplyMode::Optimistic => {
                let removed: Vec<UserKey> = changes
                    .iter()
                    .filter(|c| {
                        matches!(
                            c,
                            UserChange::GraphSoftDeleted { .. }
                                | UserChange::GraphDeleted { .. }
                                | UserChange::GraphUnseen { .. }
                        )
                    })
                    .map(key_of)
                    .collect();
                let wanted: Vec<UserChange> = changes
                    .iter()
                    .filter(|c| removed.contains(&key_of(c)))
                    .cloned()
                    .collect();
                self.resolve_users(tenant, &wanted, lookups).await?
            }
        };
        let now = OffsetDateTime::now_utc();
        // fold every change of one user, in order
        let mut order: Vec<UserKey> = Vec::new();
        let mut state: HashMap<UserKey, Option<User>> = HashMap::new();
        for change in changes {
            let key = key_of(change);
            let current = match state.remove(&key) {
                Some(s) => s,
                None => {
                    order.push(key);
                    existing.get(&key).cloned().flatten().map(|(u, _)| u)
                }
            };
            state.insert(key, next_state(current, change, now));
        }
        let mut groups = Vec::new();
        for key in order {
            let before = existing.remove(&key).flatten();
            if let Some((u, _)) = &before {
                announcer.found(u.id);
            }
            let after = state.remove(&key).flatten();
            groups.extend(
                self.user_ops(tenant, before, after, announcer.tag())
                    .await?,
            );
        }
        announcer
            .tell(&groups, mode == ApplyMode::Optimistic)
            .await?;
        self.commit_page(tenant, writer, groups, counter, mark, applied)
            .await
    }

    /// The writes that take a user from `before` to `after`.
    async fn user_ops(
        &self,
        tenant: &str,
        before: Option<(User, ETag)>,
        after: Option<User>,
        tag: &str,
    ) -> Result<Vec<OpGroup>, DirectoryError> {
        let mut out = Vec::new();
        let mut group = OpGroup::default();
        let old_rows = before
            .as_ref()
            .map(|(u, _)| index_rows(tenant, u))
            .unwrap_or_default();
        let new_rows = after
            .as_ref()
            .map(|u| index_rows(tenant, u))
            .unwrap_or_default();
        match (&before, &after) {
            (_, Some(u)) if !u.is_active() => group.applied.inactive.push(u.id),
            (Some((old, _)), None) => group.applied.inactive.push(old.id),
            _ => {}
        }
        let same = matches!((&before, &after), (Some((old, _)), Some(u)) if same_user(old, u));
        let change = if same {
            None
        } else {
            user_change(before.as_ref().map(|(u, _)| u), after.as_ref())
        };
        let mark = written_by(tag, change.as_ref().map(|c| c.kind));
        group.applied.objects.extend(change);
        match (&before, &after) {
            (None, None) => return Ok(out),
            (None, Some(u)) => {
                group.ops.push(Operation::Insert(
                    user_entity(tenant, u).with(WRITTEN_BY, mark.as_str()),
                ));
                group.delta = user_counts(u);
                group.applied.created = 1;
            }
            (Some((old, etag)), Some(u)) => {
                if same_user(old, u) {
                    group.applied.unchanged = 1;
                    out.push(group);
                    return Ok(out);
                }
                group.ops.push(Operation::update(
                    &user_entity(tenant, old),
                    user_entity(tenant, u).with(WRITTEN_BY, mark.as_str()),
                    IfMatch::ETag(etag.clone()),
                ));
                group.delta = difference(&user_counts(u), &user_counts(old));
                group.applied.updated = 1;
            }
            (Some((old, etag)), None) => {
                // its memberships go first, in transactions of their own; the record last,
                // so a replay after a crash finds it and finishes the job
                out.extend(self.membership_removals(tenant, old.id).await?);
                group.ops.push(delete(
                    tenant,
                    layout::user(old.id),
                    IfMatch::ETag(etag.clone()),
                ));
                group.delta = difference(&Counters::default(), &user_counts(old));
                group.applied.deleted = 1;
            }
        }
        let new_keys: Vec<&str> = new_rows.iter().map(|r| r.row_key.as_str()).collect();
        for old in &old_rows {
            if !new_keys.contains(&old.row_key.as_str()) {
                let op = delete(tenant, old.row_key.clone(), IfMatch::Any);
                if !layout::is_search(&old.row_key) {
                    group.ops.push(op);
                } else if after.is_none() {
                    // a user deleted: its search rows go after its record
                    group.search_ops.push(op);
                }
                // a term the user no longer has keeps its row until a read finds it stale
                // and deletes it unless rewritten since: deleting it here, unconditionally,
                // could remove the row of a concurrent write that gave the term back
            }
        }
        for row in new_rows {
            let unchanged = old_rows
                .iter()
                .any(|o| o.row_key == row.row_key && o.properties == row.properties);
            if !unchanged {
                if layout::is_search(&row.row_key) {
                    group.search_ops.push(Operation::UpsertReplace(row));
                } else {
                    group.ops.push(Operation::UpsertReplace(row));
                }
            }
        }
        out.push(group);
        Ok(out)
    }

    /// Deletes of every membership of a user, both sides, in pairs.
    async fn membership_removals(
        &self,
        tenant: &str,
        user: Uuid,
    ) -> Result<Vec<OpGroup>, DirectoryError> {
        let rows: Vec<Vec<Entity>> = self
            .range(tenant, layout::groups_of(user), &[], Some(&["Group"]))
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for row in rows.iter().flatten() {
            let group = opt_uuid(row, "Group")?.ok_or_else(|| corrupt(&row.row_key, "Group"))?;
            out.push(OpGroup {
                search_ops: Vec::new(),
                ops: vec![
                    delete(tenant, layout::group_member(group, user), IfMatch::Any),
                    delete(tenant, row.row_key.clone(), IfMatch::Any),
                ],
                delta: Counters {
                    memberships: -1,
                    ..Counters::default()
                },
                applied: Applied {
                    members_removed: 1,
                    ..Applied::default()
                },
            });
        }
        Ok(out)
    }

    /// The local id of the user an Entra object id names (itself when not known).
    async fn local_id(
        &self,
        tenant: &str,
        entra_id: Uuid,
        lookups: bool,
    ) -> Result<Uuid, DirectoryError> {
        if !lookups || self.get(tenant, &layout::user(entra_id)).await?.is_some() {
            return Ok(entra_id);
        }
        match self.get(tenant, &layout::entra_index(entra_id)).await? {
            Some(row) => Ok(opt_uuid(&row, "Id")?.unwrap_or(entra_id)),
            None => Ok(entra_id),
        }
    }

    async fn try_apply_groups(
        &self,
        tenant: &str,
        writer: Writer,
        changes: &[GroupChange],
        mode: ApplyMode,
        applied: &mut Applied,
        announcer: &mut Announcer<'_>,
    ) -> Result<(), Failure> {
        // the shard is held from its read to the transaction that writes it
        let held = match writer {
            Writer::Scim => Some(self.shards.take(tenant).await),
            Writer::Graph => None,
        };
        let (scim_seen, counter, mark) = self
            .read_counters(tenant, writer, held.as_ref().map(|h| h.shard))
            .await?;
        // members named by Entra id may be linked to SCIM-first records (o- rows, which
        // outlive the SCIM source): resolved whenever anything may exist
        let lookups = scim_seen || mode == ApplyMode::Read;
        let now = OffsetDateTime::now_utc();
        // fold the slices of each group, in order
        let mut order: Vec<Uuid> = Vec::new();
        let mut folded: HashMap<Uuid, FoldedGroup> = HashMap::new();
        for change in changes {
            match change {
                GroupChange::Graph {
                    entra_id,
                    name,
                    members,
                    round,
                } => {
                    let entry = folded.entry(*entra_id).or_insert_with(|| {
                        order.push(*entra_id);
                        (None, Vec::new(), *round, false)
                    });
                    if *name != Field::Keep {
                        entry.0 = Some(name.clone());
                    }
                    entry.1.extend(members.iter().copied());
                    entry.2 = *round;
                    entry.3 = false;
                }
                GroupChange::GraphDeleted { entra_id } => {
                    let entry = folded.entry(*entra_id).or_insert_with(|| {
                        order.push(*entra_id);
                        (None, Vec::new(), 0, true)
                    });
                    entry.1.clear();
                    entry.3 = true;
                }
            }
        }
        // group records are read in every mode (one per group and page): a group spans
        // pages, and a removal must find what it removes; members are read only in Read mode
        let to_read: Vec<Uuid> = order.clone();
        let existing: HashMap<Uuid, Option<(Group, ETag)>> = match to_read.is_empty() {
            true => HashMap::new(),
            false => {
                stream::iter(to_read)
                    .map(|id| async move {
                        let found = match self.get(tenant, &layout::group(id)).await? {
                            Some(e) => {
                                let etag = e
                                    .etag
                                    .clone()
                                    .ok_or_else(|| corrupt(&e.row_key, "no ETag"))?;
                                Some((group_from(&e)?, etag))
                            }
                            None => None,
                        };
                        Ok::<_, DirectoryError>((id, found))
                    })
                    .buffer_unordered(READ_CONCURRENCY)
                    .try_collect()
                    .await?
            }
        };
        let mut groups = Vec::new();
        for id in order {
            let (name, members, round, deleted) = folded.remove(&id).expect("folded");
            let before = existing.get(&id).cloned().flatten();
            if deleted {
                if let Some((old, etag)) = before {
                    groups.extend(self.group_removal(tenant, &old, etag).await?);
                }
                continue;
            }
            let mut record = OpGroup::default();
            let mut after = before.as_ref().map(|(g, _)| g.clone()).unwrap_or(Group {
                id,
                entra_id: Some(id),
                name: None,
                sources: Sources::default(),
                seen_round: 0,
                updated_at: now,
            });
            if let Some(name) = name {
                after.name = name.apply(after.name.take());
            }
            after.sources.graph = true;
            after.seen_round = after.seen_round.max(round);
            match &before {
                None => {
                    record
                        .ops
                        .push(Operation::Insert(group_entity(tenant, &after).with(
                            WRITTEN_BY,
                            written_by(announcer.tag(), Some(ObjectChangeKind::Created)),
                        )));
                    record.delta.groups = 1;
                    record.applied.created = 1;
                    record.applied.objects.push(ObjectChange {
                        object: "group",
                        id,
                        display: after.name.clone(),
                        kind: ObjectChangeKind::Created,
                        attributes: vec![("name", None, after.name.clone())],
                    });
                }
                Some((old, etag)) => {
                    let mut compare = after.clone();
                    compare.updated_at = old.updated_at;
                    if compare == *old {
                        record.applied.unchanged = 1;
                    } else {
                        after.updated_at = now;
                        record.ops.push(Operation::update(
                            &group_entity(tenant, old),
                            group_entity(tenant, &after).with(
                                WRITTEN_BY,
                                written_by(announcer.tag(), Some(ObjectChangeKind::Updated)),
                            ),
                            IfMatch::ETag(etag.clone()),
                        ));
                        record.applied.updated = 1;
                        record.applied.objects.push(ObjectChange {
                            object: "group",
                            id,
                            display: after.name.clone(),
                            kind: ObjectChangeKind::Updated,
                            attributes: vec![("name", old.name.clone(), after.name.clone())],
                        });
                    }
                }
            }
            groups.push(record);
            // members of a group that did not exist cannot exist: its record commits
            // before any of them, and a removal deletes them before the record. In a first
            // round into an empty directory, a later slice's members are new too (Graph
            // sends each once a round; a replay conflicts and the page is read instead).
            let read_members = before.is_some() && mode == ApplyMode::Read;
            groups.extend(
                self.member_ops(tenant, id, &members, round, read_members, lookups)
                    .await?,
            );
        }
        // group records are read in every mode
        announcer.tell(&groups, false).await?;
        self.commit_page(tenant, writer, groups, counter, mark, applied)
            .await
    }

    async fn member_ops(
        &self,
        tenant: &str,
        group: Uuid,
        members: &[MemberChange],
        round: i64,
        read_members: bool,
        lookups: bool,
    ) -> Result<Vec<OpGroup>, DirectoryError> {
        // the last change of each member wins
        let mut order: Vec<Uuid> = Vec::new();
        let mut last: HashMap<Uuid, bool> = HashMap::new();
        for m in members {
            if last.insert(m.entra_id, m.removed).is_none() {
                order.push(m.entra_id);
            }
        }
        let resolved: Vec<(Uuid, Uuid, Option<Entity>)> = stream::iter(order)
            .map(|entra_id| async move {
                let user = self.local_id(tenant, entra_id, lookups).await?;
                let row = if read_members {
                    self.get(tenant, &layout::group_member(group, user)).await?
                } else {
                    None
                };
                Ok::<_, DirectoryError>((entra_id, user, row))
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for (entra_id, user, row) in resolved {
            let removed = last[&entra_id];
            let mut g = OpGroup::default();
            match (row, removed) {
                (None, false) => {
                    let member = Entity::new(tenant, layout::group_member(group, user))
                        .with("User", user.to_string())
                        .with("EntraId", entra_id.to_string())
                        .with("FromGraph", true)
                        .with("SeenRound", round);
                    let side = Entity::new(tenant, layout::user_group(user, group))
                        .with("Group", group.to_string());
                    g.ops = vec![Operation::Insert(member), Operation::Insert(side)];
                    g.delta.memberships = 1;
                    g.applied.members_added = 1;
                }
                (Some(row), false) => {
                    if row.get_i64("SeenRound") != Some(round) {
                        let seen =
                            Entity::new(tenant, row.row_key.clone()).with("SeenRound", round);
                        g.ops = vec![Operation::Merge(seen, IfMatch::Any)];
                    }
                }
                (Some(_), true) => {
                    g.ops = vec![
                        delete(tenant, layout::group_member(group, user), IfMatch::Any),
                        delete(tenant, layout::user_group(user, group), IfMatch::Any),
                    ];
                    g.delta.memberships = -1;
                    g.applied.members_removed = 1;
                }
                (None, true) => continue,
            }
            out.push(g);
        }
        Ok(out)
    }

    /// Deletes a group's memberships, then its record.
    async fn group_removal(
        &self,
        tenant: &str,
        group: &Group,
        etag: ETag,
    ) -> Result<Vec<OpGroup>, DirectoryError> {
        let rows: Vec<Vec<Entity>> = self
            .range(tenant, layout::members_of(group.id), &[], Some(&["User"]))
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for row in rows.iter().flatten() {
            let user = opt_uuid(row, "User")?.ok_or_else(|| corrupt(&row.row_key, "User"))?;
            out.push(OpGroup {
                search_ops: Vec::new(),
                ops: vec![
                    delete(tenant, row.row_key.clone(), IfMatch::Any),
                    delete(tenant, layout::user_group(user, group.id), IfMatch::Any),
                ],
                delta: Counters {
                    memberships: -1,
                    ..Counters::default()
                },
                applied: Applied {
                    members_removed: 1,
                    ..Applied::default()
                },
            });
        }
        out.push(OpGroup {
            search_ops: Vec::new(),
            ops: vec![delete(tenant, layout::group(group.id), IfMatch::ETag(etag))],
            delta: Counters {
                groups: -1,
                ..Counters::default()
            },
            applied: Applied {
                deleted: 1,
                ..Applied::default()
            },
        });
        Ok(out)
    }

    async fn list_all(
        &self,
        tenant: &str,
        filter: &ListFilter,
        per_page: usize,
    ) -> Result<Page<User>, DirectoryError> {
        let mut conditions = Vec::new();
        if let Some(active) = filter.active {
            conditions.push(format!("Active eq {active}"));
        }
        if let Some(since) = filter.synced_since {
            conditions.push(format!(
                "EntraLastSync ge {}",
                tables::Value::DateTime(since).filter_literal()
            ));
        }
        let range = layout::prefix_range(layout::USER);
        if let Some(cursor) = &filter.cursor {
            let after = search::decode_cursor(cursor, layout::USER)
                .ok_or_else(|| DirectoryError::Invalid("the cursor is not one of ours".into()))?;
            conditions.push(format!(
                "RowKey gt {}",
                tables::Value::from(after.as_str()).filter_literal()
            ));
        }
        let query = Query {
            filter: Some(layout::range_filter(tenant, range, &conditions)),
            select: None,
            page_size: Some((per_page + 1) as u32),
            limit: Some(per_page + 1),
        };
        let rows = self.table.query_all(query).await?;
        let more = rows.len() > per_page;
        let items = rows
            .iter()
            .take(per_page)
            .map(user_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if more {
            items
                .last()
                .map(|u| search::encode_cursor(&layout::user(u.id)))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn list_search(
        &self,
        tenant: &str,
        filter: &ListFilter,
        query_text: &str,
        per_page: usize,
    ) -> Result<Page<User>, DirectoryError> {
        let query_term = layout::term(query_text);
        let (from, to) = layout::search_prefix(&query_term);
        // rows strictly after the last one a previous page used
        let mut after: Option<String> = match &filter.cursor {
            Some(cursor) => Some(search::decode_cursor(cursor, &from).ok_or_else(|| {
                DirectoryError::Invalid("the cursor is not one of this search".into())
            })?),
            None => None,
        };
        let mut items: Vec<User> = Vec::new();
        let mut last_key: Option<String> = None;
        let mut more = false;
        let batch = ((per_page + 1) * 2).min(1000);
        'pages: loop {
            let extra: Vec<String> = after
                .iter()
                .map(|k| {
                    format!(
                        "RowKey gt {}",
                        tables::Value::from(k.as_str()).filter_literal()
                    )
                })
                .collect();
            let query = Query {
                filter: Some(layout::range_filter(
                    tenant,
                    (from.clone(), to.clone()),
                    &extra,
                )),
                select: Some(vec!["Id".into(), "Term".into(), "Terms".into()]),
                page_size: Some(batch as u32),
                limit: Some(batch),
            };
            let rows = self.search.query_all(query).await?;
            if rows.is_empty() {
                break;
            }
            let full = rows.len() >= batch;
            // each user read once, whatever rows name it; what the rows say of the user's
            // terms is not trusted (a write that failed after its search rows went in
            // leaves them stale): the record decides
            let mut ids: Vec<Uuid> = rows
                .iter()
                .filter_map(|r| Uuid::try_parse(r.get_str("Id")?).ok())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let read: HashMap<Uuid, User> = stream::iter(ids)
                .map(|id| async move {
                    Ok::<_, DirectoryError>(self.read_user(tenant, id).await?.map(|(u, _)| (id, u)))
                })
                .buffered(READ_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await?
                .into_iter()
                .flatten()
                .collect();
            let mut users: Vec<(String, Option<User>)> = Vec::new();
            for row in &rows {
                let (Some(term), Some(id)) = (
                    row.get_str("Term"),
                    row.get_str("Id").and_then(|i| Uuid::try_parse(i).ok()),
                ) else {
                    continue;
                };
                let user = read.get(&id);
                let terms = user.map(search::terms).unwrap_or_default();
                if !terms.iter().any(|t| t == term) {
                    // the user is gone or no longer has this term: the row is stale
                    self.drop_stale_search_row(row).await;
                    continue;
                }
                if search::shown_under(term, &terms, &query_term) {
                    users.push((row.row_key.clone(), user.cloned()));
                }
            }
            for (key, user) in users {
                let Some(user) = user else { continue };
                let wanted = filter.active.is_none_or(|a| user.is_active() == a)
                    && filter
                        .synced_since
                        .is_none_or(|s| user.entra_last_sync.is_some_and(|t| t >= s));
                if !wanted {
                    last_key = Some(key);
                    continue;
                }
                if items.len() == per_page {
                    more = true;
                    break 'pages;
                }
                items.push(user);
                last_key = Some(key);
            }
            if !full {
                break;
            }
            after = rows.last().map(|r| r.row_key.clone());
        }
        let next_cursor = if more {
            last_key.map(|k| search::encode_cursor(&k))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

#[async_trait]
impl Directory for TableDirectory {
    async fn apply_users_noting(
        &self,
        tenant: Uuid,
        writer: Writer,
        changes: Vec<UserChange>,
        mode: ApplyMode,
        hook: Option<&dyn BeforeCommit>,
    ) -> Result<Applied, DirectoryError> {
        let tenant = tenant.to_string();
        let mut applied = Applied::default();
        let mut mode = mode;
        let mut announcer = Announcer::new(hook);
        for attempt in 1..=ATTEMPTS {
            match self
                .try_apply_users(
                    &tenant,
                    writer,
                    &changes,
                    mode,
                    &mut applied,
                    &mut announcer,
                )
                .await
            {
                Ok(()) => {
                    announcer.ended(self, &tenant, &applied).await?;
                    return Ok(applied);
                }
                Err(Failure::Conflict) => {
                    announcer.lost();
                    mode = ApplyMode::Read;
                    if attempt < ATTEMPTS {
                        back_off(attempt).await;
                    }
                }
                Err(Failure::Fatal(e)) => {
                    announcer.failed(self, &tenant, &applied).await;
                    return Err(e);
                }
            }
        }
        announcer.ended(self, &tenant, &applied).await?;
        Err(DirectoryError::Contended)
    }

    async fn apply_groups_noting(
        &self,
        tenant: Uuid,
        writer: Writer,
        changes: Vec<GroupChange>,
        mode: ApplyMode,
        hook: Option<&dyn BeforeCommit>,
    ) -> Result<Applied, DirectoryError> {
        let tenant = tenant.to_string();
        let mut applied = Applied::default();
        let mut mode = mode;
        let mut announcer = Announcer::new(hook);
        for attempt in 1..=ATTEMPTS {
            match self
                .try_apply_groups(
                    &tenant,
                    writer,
                    &changes,
                    mode,
                    &mut applied,
                    &mut announcer,
                )
                .await
            {
                Ok(()) => {
                    announcer.ended(self, &tenant, &applied).await?;
                    return Ok(applied);
                }
                Err(Failure::Conflict) => {
                    announcer.lost();
                    mode = ApplyMode::Read;
                    if attempt < ATTEMPTS {
                        back_off(attempt).await;
                    }
                }
                Err(Failure::Fatal(e)) => {
                    announcer.failed(self, &tenant, &applied).await;
                    return Err(e);
                }
            }
        }
        announcer.ended(self, &tenant, &applied).await?;
        Err(DirectoryError::Contended)
    }

    async fn sweep(
        &self,
        tenant: Uuid,
        round: i64,
        hook: Option<&dyn BeforeCommit>,
    ) -> Result<Applied, DirectoryError> {
        let pk = tenant.to_string();
        let unseen = vec![
            "FromGraph eq true".to_string(),
            format!(
                "SeenRound lt {}",
                tables::Value::Int64(round).filter_literal()
            ),
        ];
        let mut applied = Applied::default();
        // groups first (their members go with them), then memberships of groups still there
        let mut pages = std::pin::pin!(self.range(
            &pk,
            layout::prefix_range(layout::GROUP),
            &unseen,
            Some(&["EntraId"])
        ));
        while let Some(rows) = pages.try_next().await? {
            let changes = rows
                .iter()
                .filter_map(|r| opt_uuid(r, "EntraId").ok().flatten())
                .map(|entra_id| GroupChange::GraphDeleted { entra_id })
                .collect();
            applied.add(
                &self
                    .apply_groups_noting(tenant, Writer::Graph, changes, ApplyMode::Read, hook)
                    .await?,
            );
        }
        let mut pages = std::pin::pin!(self.range(
            &pk,
            layout::prefix_range("gm-"),
            &unseen,
            Some(&["EntraId"])
        ));
        while let Some(rows) = pages.try_next().await? {
            let mut changes = Vec::new();
            for row in &rows {
                let group = row
                    .row_key
                    .strip_prefix("gm-")
                    .and_then(|k| k.split('.').next())
                    .and_then(|g| Uuid::try_parse(g).ok())
                    .ok_or_else(|| corrupt(&row.row_key, "not a membership row"))?;
                let entra_id =
                    opt_uuid(row, "EntraId")?.ok_or_else(|| corrupt(&row.row_key, "EntraId"))?;
                changes.push(GroupChange::Graph {
                    entra_id: group,
                    name: Field::Keep,
                    members: vec![MemberChange {
                        entra_id,
                        removed: true,
                    }],
                    round,
                });
            }
            applied.add(
                &self
                    .apply_groups_noting(tenant, Writer::Graph, changes, ApplyMode::Read, hook)
                    .await?,
            );
        }
        let mut pages = std::pin::pin!(self.range(
            &pk,
            layout::prefix_range(layout::USER),
            &unseen,
            Some(&["Upn"])
        ));
        while let Some(rows) = pages.try_next().await? {
            let changes = rows
                .iter()
                .filter_map(|r| r.row_key.strip_prefix(layout::USER))
                .filter_map(|id| Uuid::try_parse(id).ok())
                .map(|id| UserChange::GraphUnseen { id, round })
                .collect();
            applied.add(
                &self
                    .apply_users_noting(tenant, Writer::Graph, changes, ApplyMode::Read, hook)
                    .await?,
            );
        }
        Ok(applied)
    }

    async fn user(&self, tenant: Uuid, id: Uuid) -> Result<Option<User>, DirectoryError> {
        Ok(self
            .read_user(&tenant.to_string(), id)
            .await?
            .map(|(u, _)| u))
    }

    async fn user_by_entra_id(
        &self,
        tenant: Uuid,
        entra_id: Uuid,
    ) -> Result<Option<User>, DirectoryError> {
        let pk = tenant.to_string();
        if let Some((u, _)) = self.read_user(&pk, entra_id).await?
            && u.entra_id == Some(entra_id)
        {
            return Ok(Some(u));
        }
        let Some(row) = self.get(&pk, &layout::entra_index(entra_id)).await? else {
            return Ok(None);
        };
        let Some(id) = opt_uuid(&row, "Id")? else {
            return Ok(None);
        };
        Ok(self.read_user(&pk, id).await?.map(|(u, _)| u))
    }

    async fn user_by_upn(&self, tenant: Uuid, upn: &str) -> Result<Option<User>, DirectoryError> {
        let mut found = self.by_upn(&tenant.to_string(), upn).await?;
        // a UPN reused after a deletion: the active holder first
        found.sort_by_key(|(u, _)| !u.is_active());
        Ok(found.into_iter().next().map(|(u, _)| u))
    }

    async fn groups_of(&self, tenant: Uuid, user: Uuid) -> Result<Vec<Group>, DirectoryError> {
        let pk = tenant.to_string();
        let rows: Vec<Vec<Entity>> = self
            .range(&pk, layout::groups_of(user), &[], Some(&["Group"]))
            .try_collect()
            .await?;
        let ids: Vec<Uuid> = rows
            .iter()
            .flatten()
            .filter_map(|r| opt_uuid(r, "Group").ok().flatten())
            .collect();
        let pk = &pk;
        let groups: Vec<Option<Group>> = stream::iter(ids)
            .map(|id| async move {
                match self.get(pk, &layout::group(id)).await? {
                    Some(e) => Ok::<_, DirectoryError>(Some(group_from(&e)?)),
                    None => Ok(None),
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(groups.into_iter().flatten().collect())
    }

    async fn list_users(
        &self,
        tenant: Uuid,
        filter: &ListFilter,
    ) -> Result<Page<User>, DirectoryError> {
        let per_page = filter.per_page.clamp(1, 100);
        let pk = tenant.to_string();
        match filter
            .search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(q) => self.list_search(&pk, filter, q, per_page).await,
            None => self.list_all(&pk, filter, per_page).await,
        }
    }

    async fn counters(&self, tenant: Uuid) -> Result<Counters, DirectoryError> {
        Ok(self.read_totals(&tenant.to_string()).await?.0)
    }
}

/// Bulk reads for whole-tenant comparisons (HR write-back plans).
impl TableDirectory {
    /// Every user record of a tenant, in local-id order (1,000 rows per page).
    pub async fn all_users(&self, tenant: Uuid) -> Result<Vec<User>, DirectoryError> {
        let pk = tenant.to_string();
        let pages: Vec<Vec<Entity>> = self
            .range(&pk, layout::prefix_range(layout::USER), &[], None)
            .try_collect()
            .await?;
        pages.iter().flatten().map(user_from).collect()
    }

    /// The local ids of a group's direct members.
    pub async fn group_members(
        &self,
        tenant: Uuid,
        group: Uuid,
    ) -> Result<Vec<Uuid>, DirectoryError> {
        let pk = tenant.to_string();
        let pages: Vec<Vec<Entity>> = self
            .range(&pk, layout::members_of(group), &[], Some(&["RowKey"]))
            .try_collect()
            .await?;
        Ok(pages
            .iter()
            .flatten()
            .filter_map(|e| e.row_key.rsplit('.').next())
            .filter_map(|id| Uuid::try_parse(id).ok())
            .collect())
    }
}

/// How long a directory table found without old-layout search rows is believed to stay so
/// (an older release's instance may still write them during a rolling upgrade).
const NO_OLD_ROWS_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Upgrades from the layout before the search table had its own table.
impl TableDirectory {
    /// Moves the tenant's search rows that a release before `{table}Search` left in the
    /// directory's table (where nothing reads them: their users were not found by a search
    /// until changed) into the search table; returns how many it moved. A page of at most
    /// 100 at a time, so memory stays bounded: copied first (a row the search table has
    /// already, written since by a change of its user, is kept as it is), then deleted from
    /// the directory's table if unchanged since read; a crash between the two loses
    /// nothing, and running it again finishes the move. A copied row its user no longer
    /// matches (renamed or gone since) is skipped and dropped by the search that reads it,
    /// as any stale row.
    pub async fn move_search_rows(&self, tenant: Uuid) -> Result<u64, DirectoryError> {
        let pk = tenant.to_string();
        let range = layout::prefix_range(layout::SEARCH);
        let mut after: Option<String> = None;
        let mut moved = 0;
        loop {
            // past the last row of the previous page: a row that could not be deleted
            // (changed meanwhile) is not read again and again
            let extra: Vec<String> = after
                .iter()
                .map(|k| {
                    format!(
                        "RowKey gt {}",
                        tables::Value::from(k.as_str()).filter_literal()
                    )
                })
                .collect();
            let query = Query {
                filter: Some(layout::range_filter(&pk, range.clone(), &extra)),
                select: None,
                page_size: Some(MAX_OPERATIONS as u32),
                limit: Some(MAX_OPERATIONS),
            };
            // the directory's own table: `range` would read the search table
            let rows = self.table.query_all(query).await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = Some(last.row_key.clone());
            self.copy_to_search(&rows).await?;
            moved += self.delete_moved(&pk, &rows).await?;
            if rows.len() < MAX_OPERATIONS {
                break;
            }
        }
        Ok(moved)
    }

    /// Whether the tenant's directory table may still hold search rows of the layout before
    /// the search table: asked of the table (one row at most), an answer of none believed
    /// for [`NO_OLD_ROWS_FOR`].
    async fn old_search_rows_may_remain(&self, tenant: &str) -> Result<bool, DirectoryError> {
        if self
            .no_old_search_rows
            .lock()
            .expect("not poisoned")
            .get(tenant)
            .is_some_and(|found| found.elapsed() < NO_OLD_ROWS_FOR)
        {
            return Ok(false);
        }
        let query = Query {
            filter: Some(layout::range_filter(
                tenant,
                layout::prefix_range(layout::SEARCH),
                &[],
            )),
            select: Some(vec!["RowKey".into()]),
            page_size: Some(1),
            limit: Some(1),
        };
        let remain = !self.table.query_all(query).await?.is_empty();
        if !remain {
            self.no_old_search_rows
                .lock()
                .expect("not poisoned")
                .insert(tenant.to_string(), std::time::Instant::now());
        }
        Ok(remain)
    }

    /// Inserts copies of `rows` (one partition) into the search table, keeping any row
    /// already there.
    async fn copy_to_search(&self, rows: &[Entity]) -> Result<(), DirectoryError> {
        let copies: Vec<Entity> = rows
            .iter()
            .map(|r| {
                let mut copy = Entity::new(r.partition_key.as_str(), r.row_key.as_str());
                copy.properties = r.properties.clone();
                copy
            })
            .collect();
        let inserts: Vec<Operation> = copies.iter().cloned().map(Operation::Insert).collect();
        match self.search.transact(&inserts).await {
            Ok(_) => return Ok(()),
            // some row is there already: each is then inserted alone, which does not rely
            // on which operation the service named
            Err(TableError::Batch { source, .. }) if source.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        for copy in &copies {
            match self.search.insert(copy).await {
                Ok(_) => {}
                Err(e) if already_exists(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes `rows` from the directory's table unless changed since read; how many it
    /// deleted (a row gone or changed was moved or removed by someone else).
    async fn delete_moved(&self, tenant: &str, rows: &[Entity]) -> Result<u64, DirectoryError> {
        let guarded: Vec<(String, IfMatch)> = rows
            .iter()
            .map(|r| {
                // the key is a user's name or address: never in the error
                let etag = r.etag.clone().ok_or_else(|| {
                    DirectoryError::Corrupt("a search row was read without its ETag".into())
                })?;
                Ok((r.row_key.clone(), IfMatch::ETag(etag)))
            })
            .collect::<Result<_, DirectoryError>>()?;
        let deletes: Vec<Operation> = guarded
            .iter()
            .map(|(key, if_match)| delete(tenant, key.clone(), if_match.clone()))
            .collect();
        match self.table.transact(&deletes).await {
            Ok(_) => return Ok(deletes.len() as u64),
            Err(TableError::Batch { source, .. })
                if source.is_not_found() || source.is_precondition_failed() => {}
            Err(e) => return Err(e.into()),
        }
        let mut deleted = 0;
        for (key, if_match) in guarded {
            match self.table.delete(tenant, &key, if_match).await {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() || e.is_precondition_failed() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }
}

/// True when an insert found its row there already (not another conflict, such as a table
/// being deleted, which must not count as copied).
fn already_exists(e: &TableError) -> bool {
    matches!(e, TableError::Conflict { code, .. } if code == "EntityAlreadyExists")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is told.
    #[derive(Default)]
    struct Told {
        changing: std::sync::Mutex<Vec<ObjectChange>>,
        not_made: std::sync::Mutex<Vec<ObjectChange>>,
    }

    #[async_trait::async_trait]
    impl BeforeCommit for Told {
        async fn changing(&self, objects: &[ObjectChange]) -> Result<(), String> {
            self.changing
                .lock()
                .unwrap()
                .extend(objects.iter().cloned());
            Ok(())
        }

        async fn not_made(&self, objects: &[ObjectChange]) -> Result<(), String> {
            self.not_made
                .lock()
                .unwrap()
                .extend(objects.iter().cloned());
            Ok(())
        }
    }

    fn renamed(id: Uuid, old: &str, new: &str) -> ObjectChange {
        ObjectChange {
            object: "user",
            id,
            display: Some(new.into()),
            kind: ObjectChangeKind::Updated,
            attributes: vec![("name", Some(old.into()), Some(new.into()))],
        }
    }

    // Found in review (issue 12): a change committed by one attempt and announced again,
    // otherwise, by a later attempt that lost its race kept the later announcement's values
    // in its record, values no write made. The made version is announced again.
    #[tokio::test]
    async fn a_made_change_last_announced_otherwise_is_announced_again_as_made() {
        let hook = Told::default();
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let made = renamed(ada, "Ada Lovelace", "Ada Byron");
        let mut announcer = Announcer::new(Some(&hook));
        // attempt 1 made Ada's change (its first transaction), then lost on another
        announcer.current.push(made.clone());
        announcer.lost();
        // attempt 2 announced Ada's change described from other values, and Bob's; lost
        announcer
            .current
            .push(renamed(ada, "Ada King", "Ada Byron"));
        announcer
            .current
            .push(renamed(bob, "Bob Smith", "Bob Jones"));
        announcer.lost();
        let applied = Applied {
            objects: vec![made.clone()],
            ..Applied::default()
        };
        announcer.settle(&applied, None).await.unwrap();
        assert_eq!(*hook.changing.lock().unwrap(), vec![made]);
        let not_made: Vec<Uuid> = hook.not_made.lock().unwrap().iter().map(|o| o.id).collect();
        assert_eq!(not_made, vec![bob]);
    }

    // Found in review: with one change made twice (two attempts, another writer changing the
    // object between them), the earlier made version was announced again over the later.
    #[tokio::test]
    async fn a_change_made_twice_keeps_its_later_version() {
        let hook = Told::default();
        let ada = Uuid::new_v4();
        let first = renamed(ada, "Ada Lovelace", "Ada Byron");
        let second = renamed(ada, "Ada King", "Ada Byron");
        let mut announcer = Announcer::new(Some(&hook));
        announcer.current.push(first.clone());
        announcer.lost();
        announcer.current.push(second.clone());
        let applied = Applied {
            objects: vec![first, second],
            ..Applied::default()
        };
        announcer.settle(&applied, None).await.unwrap();
        assert!(hook.changing.lock().unwrap().is_empty());
        assert!(hook.not_made.lock().unwrap().is_empty());
    }

    // Found in review: after an ambiguous failure (a timeout that may have committed), a
    // creation announced without reading first was named not made, though it may exist.
    #[tokio::test]
    async fn an_ambiguous_failure_never_names_an_unread_creation_not_made() {
        let hook = Told::default();
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut announcer = Announcer::new(Some(&hook));
        announcer.unread.push(ObjectChange {
            object: "user",
            id: ada,
            display: None,
            kind: ObjectChangeKind::Created,
            attributes: vec![],
        });
        announcer
            .current
            .push(renamed(bob, "Bob Smith", "Bob Jones"));
        announcer.lost();
        announcer
            .settle_failed(&Applied::default(), None)
            .await
            .unwrap();
        let named: Vec<Uuid> = hook.not_made.lock().unwrap().iter().map(|o| o.id).collect();
        assert_eq!(named, vec![bob]);
    }
}
