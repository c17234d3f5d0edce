//! Each tenant's sync state and lease, in one partition of a table: a state row
//! `s-<tenant>` written only under the lease, and a request row `r-<tenant>` that the
//! timer and the API write without it, so a request never breaks a running round's ETag.

use std::time::Duration;

use async_trait::async_trait;
use tables::{ETag, Entity, IfMatch, Query, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SyncError;

const PARTITION: &str = "tenants";

/// Where a round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// No round running (the last one finished or was abandoned).
    #[default]
    Idle,
    Users,
    Groups,
    /// After a full round's reads: marking what it did not see.
    Sweep,
}

impl Phase {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Users => "users",
            Phase::Groups => "groups",
            Phase::Sweep => "sweep",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "idle" => Phase::Idle,
            "users" => Phase::Users,
            "groups" => Phase::Groups,
            "sweep" => Phase::Sweep,
            _ => return None,
        })
    }
}

/// A finished (or abandoned) round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRound {
    pub round: i64,
    pub started: OffsetDateTime,
    pub finished: OffsetDateTime,
    /// `success`, `throttled`, `access_revoked` or `failed`.
    pub outcome: String,
    pub full: bool,
    pub pages: i64,
    pub changes: i64,
}

/// One tenant's sync state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    pub tenant: Uuid,
    /// The number of the running or last round (mark and sweep compares with it).
    pub round: i64,
    pub phase: Phase,
    /// The running round reads everything (no deltaLink, or Graph asked for a resync).
    pub full: bool,
    /// The running round inserts without reading (the directory was empty at its start).
    pub optimistic: bool,
    /// The running round's checkpoints: the link to read next (None: the start).
    pub users_link: Option<String>,
    pub groups_link: Option<String>,
    /// deltaLinks this round received, kept until it completes.
    pub users_delta_next: Option<String>,
    pub groups_delta_next: Option<String>,
    /// deltaLinks of the last complete round: where the next round starts.
    pub users_delta: Option<String>,
    pub groups_delta: Option<String>,
    pub round_started: Option<OffsetDateTime>,
    /// Progress of the running round.
    pub pages: i64,
    pub changes: i64,
    pub last: Option<LastRound>,
    pub last_success_started: Option<OffsetDateTime>,
    pub last_full_started: Option<OffsetDateTime>,
    /// Do not try before this (Graph's Retry-After, or an interval after a refusal).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The error that stops this tenant's sync now, as an admin should read it.
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
}

impl SyncState {
    /// A tenant never synced.
    pub fn new(tenant: Uuid) -> SyncState {
        SyncState {
            tenant,
            round: 0,
            phase: Phase::Idle,
            full: false,
            optimistic: false,
            users_link: None,
            groups_link: None,
            users_delta_next: None,
            groups_delta_next: None,
            users_delta: None,
            groups_delta: None,
            round_started: None,
            pages: 0,
            changes: 0,
            last: None,
            last_success_started: None,
            last_full_started: None,
            next_attempt_at: None,
            error: None,
            lease_owner: None,
            lease_until: None,
        }
    }

    /// A round holds the lease now.
    pub fn is_running(&self, now: OffsetDateTime) -> bool {
        self.lease_until.is_some_and(|t| t > now)
    }
}

/// What the timer and the API asked for, written without the lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    pub queued_at: Option<OffsetDateTime>,
    pub full_requested_at: Option<OffsetDateTime>,
}

/// A held lease and the state it guards.
#[derive(Debug)]
pub struct Lease {
    pub state: SyncState,
    pub(crate) owner: String,
    pub(crate) ttl: Duration,
    pub(crate) etag: ETag,
    /// Until when this holder knows the lease is its own (the last successful write + ttl).
    pub(crate) valid_until: std::time::Instant,
}

impl Lease {
    /// The lease has at least `margin` left, as far as this holder knows.
    pub fn holds_for(&self, margin: Duration) -> bool {
        std::time::Instant::now() + margin < self.valid_until
    }
}

/// Sync states and leases.
#[async_trait]
pub trait SyncStateStore: Send + Sync {
    /// One tenant's state and requests (a never-synced tenant's state is [`SyncState::new`]).
    async fn get(&self, tenant: Uuid) -> Result<(SyncState, Requests), SyncError>;
    /// Every tenant that has a state or a request, in one query.
    async fn all(&self) -> Result<Vec<(SyncState, Requests)>, SyncError>;
    /// Takes the tenant's lease for `ttl` if it is free or expired; None when another
    /// instance holds it.
    async fn acquire(
        &self,
        tenant: Uuid,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, SyncError>;
    /// Writes the lease's state and extends the lease; `LeaseLost` when another instance
    /// has taken it.
    async fn save(&self, lease: &mut Lease) -> Result<(), SyncError>;
    /// Writes the state and gives the lease up.
    async fn release(&self, lease: Lease) -> Result<(), SyncError>;
    /// Records that a round was queued (and whether a full one was asked for).
    async fn request(&self, tenant: Uuid, at: OffsetDateTime, full: bool) -> Result<(), SyncError>;
    /// Forgets a tenant's state and requests (offboarding); how many rows it removed.
    async fn forget(&self, tenant: Uuid) -> Result<usize, SyncError>;
}

/// [`SyncStateStore`] on a table.
#[derive(Clone)]
pub struct TableSyncStates {
    table: Table,
}

fn state_key(tenant: Uuid) -> String {
    format!("s-{tenant}")
}

fn request_key(tenant: Uuid) -> String {
    format!("r-{tenant}")
}

fn put_opt_str(e: &mut Entity, name: &str, v: &Option<String>) {
    if let Some(v) = v {
        e.set(name, v.as_str());
    }
}

fn put_opt_time(e: &mut Entity, name: &str, v: Option<OffsetDateTime>) {
    if let Some(v) = v {
        e.set(name, v);
    }
}

fn to_entity(s: &SyncState) -> Entity {
    let mut e = Entity::new(PARTITION, state_key(s.tenant))
        .with("Round", s.round)
        .with("Phase", s.phase.as_str())
        .with("Full", s.full)
        .with("Optimistic", s.optimistic)
        .with("Pages", s.pages)
        .with("Changes", s.changes);
    put_opt_str(&mut e, "UsersLink", &s.users_link);
    put_opt_str(&mut e, "GroupsLink", &s.groups_link);
    put_opt_str(&mut e, "UsersDeltaNext", &s.users_delta_next);
    put_opt_str(&mut e, "GroupsDeltaNext", &s.groups_delta_next);
    put_opt_str(&mut e, "UsersDelta", &s.users_delta);
    put_opt_str(&mut e, "GroupsDelta", &s.groups_delta);
    put_opt_time(&mut e, "RoundStarted", s.round_started);
    put_opt_time(&mut e, "LastSuccessStarted", s.last_success_started);
    put_opt_time(&mut e, "LastFullStarted", s.last_full_started);
    put_opt_time(&mut e, "NextAttemptAt", s.next_attempt_at);
    put_opt_str(&mut e, "Error", &s.error);
    put_opt_str(&mut e, "LeaseOwner", &s.lease_owner);
    put_opt_time(&mut e, "LeaseUntil", s.lease_until);
    if let Some(last) = &s.last {
        e.set("LastRound", last.round);
        e.set("LastStarted", last.started);
        e.set("LastFinished", last.finished);
        e.set("LastOutcome", last.outcome.as_str());
        e.set("LastFull", last.full);
        e.set("LastPages", last.pages);
        e.set("LastChanges", last.changes);
    }
    e
}

fn from_entity(tenant: Uuid, e: &Entity) -> Result<SyncState, SyncError> {
    let s = |name: &str| e.get_str(name).map(str::to_string);
    let phase = e
        .get_str("Phase")
        .and_then(Phase::parse)
        .ok_or_else(|| SyncError::Corrupt(format!("{}: Phase", e.row_key)))?;
    let last = match (
        e.get_datetime("LastStarted"),
        e.get_datetime("LastFinished"),
        e.get_str("LastOutcome"),
    ) {
        (Some(started), Some(finished), Some(outcome)) => Some(LastRound {
            round: e.get_i64("LastRound").unwrap_or(0),
            started,
            finished,
            outcome: outcome.to_string(),
            full: e.get_bool("LastFull").unwrap_or(false),
            pages: e.get_i64("LastPages").unwrap_or(0),
            changes: e.get_i64("LastChanges").unwrap_or(0),
        }),
        _ => None,
    };
    Ok(SyncState {
        tenant,
        round: e.get_i64("Round").unwrap_or(0),
        phase,
        full: e.get_bool("Full").unwrap_or(false),
        optimistic: e.get_bool("Optimistic").unwrap_or(false),
        users_link: s("UsersLink"),
        groups_link: s("GroupsLink"),
        users_delta_next: s("UsersDeltaNext"),
        groups_delta_next: s("GroupsDeltaNext"),
        users_delta: s("UsersDelta"),
        groups_delta: s("GroupsDelta"),
        round_started: e.get_datetime("RoundStarted"),
        pages: e.get_i64("Pages").unwrap_or(0),
        changes: e.get_i64("Changes").unwrap_or(0),
        last,
        last_success_started: e.get_datetime("LastSuccessStarted"),
        last_full_started: e.get_datetime("LastFullStarted"),
        next_attempt_at: e.get_datetime("NextAttemptAt"),
        error: s("Error"),
        lease_owner: s("LeaseOwner"),
        lease_until: e.get_datetime("LeaseUntil"),
    })
}

fn requests_from(e: &Entity) -> Requests {
    Requests {
        queued_at: e.get_datetime("QueuedAt"),
        full_requested_at: e.get_datetime("FullRequestedAt"),
    }
}

fn ttl_after(now: OffsetDateTime, ttl: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(ttl).unwrap_or(time::Duration::MINUTE)
}

impl TableSyncStates {
    /// States in `table`.
    pub fn new(table: Table) -> TableSyncStates {
        TableSyncStates { table }
    }
}

#[async_trait]
impl SyncStateStore for TableSyncStates {
    async fn get(&self, tenant: Uuid) -> Result<(SyncState, Requests), SyncError> {
        let state = match self.table.try_get(PARTITION, &state_key(tenant)).await? {
            Some(e) => from_entity(tenant, &e)?,
            None => SyncState::new(tenant),
        };
        let requests = self
            .table
            .try_get(PARTITION, &request_key(tenant))
            .await?
            .map(|e| requests_from(&e))
            .unwrap_or_default();
        Ok((state, requests))
    }

    async fn all(&self) -> Result<Vec<(SyncState, Requests)>, SyncError> {
        let rows = self.table.query_all(Query::partition(PARTITION)).await?;
        let mut by_tenant: std::collections::BTreeMap<Uuid, (Option<SyncState>, Requests)> =
            Default::default();
        for row in &rows {
            let (kind, id) = row.row_key.split_at(2.min(row.row_key.len()));
            let Ok(tenant) = Uuid::try_parse(id) else {
                continue;
            };
            let entry = by_tenant.entry(tenant).or_default();
            match kind {
                "s-" => entry.0 = Some(from_entity(tenant, row)?),
                "r-" => entry.1 = requests_from(row),
                _ => {}
            }
        }
        Ok(by_tenant
            .into_iter()
            .map(|(tenant, (state, requests))| {
                (state.unwrap_or_else(|| SyncState::new(tenant)), requests)
            })
            .collect())
    }

    async fn acquire(
        &self,
        tenant: Uuid,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, SyncError> {
        let now = OffsetDateTime::now_utc();
        let existing = self.table.try_get(PARTITION, &state_key(tenant)).await?;
        let (mut state, etag) = match &existing {
            Some(e) => (from_entity(tenant, e)?, e.etag.clone()),
            None => (SyncState::new(tenant), None),
        };
        if state.is_running(now) && state.lease_owner.as_deref() != Some(owner) {
            return Ok(None);
        }
        state.lease_owner = Some(owner.to_string());
        state.lease_until = Some(ttl_after(now, ttl));
        let entity = to_entity(&state);
        let sent = std::time::Instant::now();
        let written = match etag {
            Some(etag) => self.table.replace(&entity, IfMatch::ETag(etag)).await,
            None => self.table.insert(&entity).await,
        };
        match written {
            Ok(etag) => Ok(Some(Lease {
                state,
                owner: owner.to_string(),
                ttl,
                etag,
                valid_until: sent + ttl,
            })),
            // another instance got there first
            Err(e) if e.is_precondition_failed() || e.is_conflict() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn save(&self, lease: &mut Lease) -> Result<(), SyncError> {
        lease.state.lease_owner = Some(lease.owner.clone());
        lease.state.lease_until = Some(ttl_after(OffsetDateTime::now_utc(), lease.ttl));
        let sent = std::time::Instant::now();
        match self
            .table
            .replace(&to_entity(&lease.state), IfMatch::ETag(lease.etag.clone()))
            .await
        {
            Ok(etag) => {
                lease.etag = etag;
                lease.valid_until = sent + lease.ttl;
                Ok(())
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Err(SyncError::LeaseLost),
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, mut lease: Lease) -> Result<(), SyncError> {
        lease.state.lease_owner = None;
        lease.state.lease_until = None;
        match self
            .table
            .replace(&to_entity(&lease.state), IfMatch::ETag(lease.etag.clone()))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Err(SyncError::LeaseLost),
            Err(e) => Err(e.into()),
        }
    }

    async fn request(&self, tenant: Uuid, at: OffsetDateTime, full: bool) -> Result<(), SyncError> {
        let mut e = Entity::new(PARTITION, request_key(tenant)).with("QueuedAt", at);
        if full {
            e.set("FullRequestedAt", at);
        }
        self.table.upsert_merge(&e).await?;
        Ok(())
    }

    async fn forget(&self, tenant: Uuid) -> Result<usize, SyncError> {
        let mut removed = 0;
        for key in [state_key(tenant), request_key(tenant)] {
            match self.table.delete(PARTITION, &key, IfMatch::Any).await {
                Ok(()) => removed += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }
}
