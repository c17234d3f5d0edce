//! One sync round of one tenant, under its lease, checkpointed after every page.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use directory::{Applied, ApplyMode, Directory, DirectoryError, Writer};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::schedule::Schedule;
use crate::state::{LastRound, Lease, Phase, SyncStateStore};
use crate::{DirectorySource, Next, SourceError, SyncError};

/// What must follow the changes a round applies.
#[async_trait::async_trait]
pub trait RoundObserver: Send + Sync {
    /// Users a page (or a batch of the sweep) left inactive (disabled, soft- or
    /// hard-deleted), replays included. Called as soon as that write commits, before the
    /// next one and the page's checkpoint: a round that stops in between calls it again
    /// for the same users (a page replayed reports them again), so it must be idempotent.
    /// An error stops the round (retried).
    async fn users_inactive(&self, tenant: Uuid, users: &[Uuid]) -> Result<(), String>;

    /// The objects a page (or a batch of the sweep) of `round` is about to change, before
    /// any of its writes commits, so a record kept here is never lost to a crash between
    /// the commit and the record; a retried or replayed page names them again (record
    /// idempotently). An error stops the round before the page is written.
    /// `page` is the page's number in the round (the same when it is replayed), None for
    /// the sweep's batches (an object is in one of them at most); `started` is when the
    /// round started (the same on every instance that resumes it).
    async fn page_changing(
        &self,
        _tenant: Uuid,
        _round: i64,
        _page: Option<i64>,
        _started: OffsetDateTime,
        _objects: &[directory::ObjectChange],
    ) -> Result<(), String> {
        Ok(())
    }

    /// Changes [`RoundObserver::page_changing`] announced for a page (or a batch of the
    /// sweep) of `round` that its write did not make: the transaction lost a race and its
    /// retry no longer made them, or the retries gave up (see
    /// [`directory::BeforeCommit::not_made`]). A record of the announcement is corrected
    /// here, idempotently. An error stops the round.
    async fn page_not_made(
        &self,
        _tenant: Uuid,
        _round: i64,
        _page: Option<i64>,
        _started: OffsetDateTime,
        _objects: &[directory::ObjectChange],
    ) -> Result<(), String> {
        Ok(())
    }
}

/// Nothing follows.
pub struct NoObserver;

#[async_trait::async_trait]
impl RoundObserver for NoObserver {
    async fn users_inactive(&self, _tenant: Uuid, _users: &[Uuid]) -> Result<(), String> {
        Ok(())
    }
}

/// How a round runs.
#[derive(Debug, Clone)]
pub struct RoundOptions {
    /// This instance's name in the lease.
    pub owner: String,
    /// How long a lease lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// How long to wait for a lease another instance holds before giving the round up to
    /// it (a dead holder's lease expires within `lease_ttl`).
    pub lease_wait: Duration,
    /// Start a round even when none is due (an admin asked for one).
    pub force: bool,
    /// Read everything and sweep what was not seen.
    pub full: bool,
    pub schedule: Schedule,
    /// After a refusal (consent revoked), the next attempt waits this long.
    pub refused_backoff: Duration,
    /// When Graph throttles without a Retry-After.
    pub throttled_backoff: Duration,
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Read to the deltaLinks and applied.
    Completed,
    /// Another instance holds the lease and is alive: the round is its.
    Busy,
    /// Nothing to do: the tenant's round for this slot already ran.
    NotDue,
    /// Graph throttled: the checkpoint is kept and the round resumes after `retry_at`.
    Throttled { retry_at: OffsetDateTime },
    /// The tenant refused access; skipped until it works again.
    AccessRevoked { reason: String },
    /// A transient failure: the checkpoint is kept; retry later (the queue does).
    Failed { reason: String },
}

impl Outcome {
    /// The stored name of a finished round's outcome.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed => "success",
            Outcome::Busy => "busy",
            Outcome::NotDue => "not_due",
            Outcome::Throttled { .. } => "throttled",
            Outcome::AccessRevoked { .. } => "access_revoked",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// What a round did.
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub outcome: Outcome,
    pub round: i64,
    pub full: bool,
    /// Pages read by this run (a resumed round counts only its own).
    pub pages: i64,
    pub applied: Applied,
    pub elapsed: Duration,
}

fn after(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(d).unwrap_or(time::Duration::MINUTE)
}

/// Keeps a lease alive in the background while a round runs.
struct Renewal {
    lease: Arc<Mutex<Lease>>,
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewal {
    fn start(states: Arc<dyn SyncStateStore>, lease: Lease) -> Renewal {
        let every = lease.ttl / 3;
        let lease = Arc::new(Mutex::new(lease));
        let lost = Arc::new(AtomicBool::new(false));
        let task = {
            let (lease, lost) = (lease.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let mut held = lease.lock().await;
                    match states.save(&mut held).await {
                        Ok(()) => {}
                        Err(SyncError::LeaseLost) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // storage hiccup: the next renewal (or checkpoint) tries again
                        Err(e) => tracing::warn!(error = %e, "sync lease renewal failed"),
                    }
                }
            })
        };
        Renewal { lease, lost, task }
    }

    /// Renews the lease now (a storage failure is tried again, four times in all):
    /// `LeaseLost` when another instance has taken it (then also remembered, so the round
    /// stops).
    async fn confirm(&self, states: &dyn SyncStateStore) -> Result<(), SyncError> {
        let mut attempt = 0;
        loop {
            let saved = states.save(&mut *self.lease.lock().await).await;
            match saved {
                Err(SyncError::LeaseLost) => {
                    self.lost.store(true, Ordering::SeqCst);
                    return Err(SyncError::LeaseLost);
                }
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "sync lease not renewed before a correction; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn stop(self) -> Result<Lease, SyncError> {
        {
            // never in the middle of a renewal: its write would land with our ETag unknown
            let _held = self.lease.lock().await;
            self.task.abort();
        }
        let _ = self.task.await;
        if self.lost.load(Ordering::SeqCst) {
            return Err(SyncError::LeaseLost);
        }
        Arc::try_unwrap(self.lease)
            .map(Mutex::into_inner)
            .map_err(|_| SyncError::LeaseLost)
    }
}

/// Runs (or resumes) the tenant's round. Storage failures are errors, so the caller fails
/// its invocation and the queue retries from the checkpoint; Graph's answers are outcomes.
pub async fn run_round(
    tenant: Uuid,
    source: &dyn DirectorySource,
    directory: &dyn Directory,
    states: Arc<dyn SyncStateStore>,
    options: &RoundOptions,
    observer: &dyn RoundObserver,
) -> Result<RoundReport, SyncError> {
    let clock = Instant::now();
    let Some(mut lease) = acquire(tenant, &*states, options).await? else {
        return Ok(RoundReport {
            outcome: Outcome::Busy,
            round: 0,
            full: false,
            pages: 0,
            applied: Applied::default(),
            elapsed: clock.elapsed(),
        });
    };
    let now = OffsetDateTime::now_utc();
    if lease.state.phase == Phase::Idle {
        let (_, requests) = states.get(tenant).await?;
        let full_requested = requests
            .full_requested_at
            .is_some_and(|at| lease.state.last_full_started.is_none_or(|last| at > last));
        if !options.force && !full_requested && !options.schedule.still_due(&lease.state, now) {
            let round = lease.state.round;
            states.release(lease).await?;
            return Ok(RoundReport {
                outcome: Outcome::NotDue,
                round,
                full: false,
                pages: 0,
                applied: Applied::default(),
                elapsed: clock.elapsed(),
            });
        }
        let s = &mut lease.state;
        s.round += 1;
        s.full =
            options.full || full_requested || s.users_delta.is_none() || s.groups_delta.is_none();
        s.optimistic = false;
        if s.full {
            let c = directory.counters(tenant).await?;
            s.optimistic = c.users == 0 && c.groups == 0;
        }
        s.users_link = if s.full { None } else { s.users_delta.clone() };
        s.groups_link = if s.full { None } else { s.groups_delta.clone() };
        s.users_delta_next = None;
        s.groups_delta_next = None;
        s.phase = Phase::Users;
        s.round_started = Some(now);
        s.pages = 0;
        s.changes = 0;
        s.next_attempt_at = None;
        states.save(&mut lease).await?;
        tracing::info!(%tenant, round = lease.state.round, full = lease.state.full, "sync round started");
    } else {
        // throttled: Graph said when to come back, whoever asks
        if let Some(retry_at) = lease.state.next_attempt_at.filter(|t| *t > now) {
            let round = lease.state.round;
            let full = lease.state.full;
            states.release(lease).await?;
            return Ok(RoundReport {
                outcome: Outcome::Throttled { retry_at },
                round,
                full,
                pages: 0,
                applied: Applied::default(),
                elapsed: clock.elapsed(),
            });
        }
        tracing::info!(%tenant, round = lease.state.round, phase = lease.state.phase.as_str(), "sync round resumed at its checkpoint");
    }
    let renewal = Renewal::start(states.clone(), lease);
    let result = pages(
        tenant, source, directory, &*states, &renewal, options, observer,
    )
    .await;
    let mut lease = renewal.stop().await?;
    let (outcome, pages, applied) = result?;
    let now = OffsetDateTime::now_utc();
    let s = &mut lease.state;
    let finished = |s: &mut crate::state::SyncState, outcome: &Outcome| {
        s.last = Some(LastRound {
            round: s.round,
            started: s.round_started.unwrap_or(now),
            finished: now,
            outcome: outcome.name().to_string(),
            full: s.full,
            pages: s.pages,
            changes: s.changes,
        });
    };
    match &outcome {
        // recorded by the final checkpoint itself (see `complete`)
        Outcome::Completed => {
            tracing::info!(%tenant, round = s.round, pages = s.pages, changes = s.changes, "sync round completed");
        }
        Outcome::Throttled { retry_at } => {
            s.next_attempt_at = Some(*retry_at);
            s.error = Some("Graph is throttling this tenant's requests".into());
            tracing::warn!(%tenant, round = s.round, "sync round throttled; resumes after Retry-After");
        }
        Outcome::AccessRevoked { reason } => {
            // abandoned: the next round starts again from the last complete deltaLinks
            s.phase = Phase::Idle;
            s.users_link = None;
            s.groups_link = None;
            s.error = Some(reason.clone());
            s.next_attempt_at = Some(after(now, options.refused_backoff));
            finished(s, &outcome);
            tracing::warn!(%tenant, round = s.round, reason = %reason, "sync refused by the tenant; skipped until it works again");
        }
        Outcome::Failed { reason } => {
            s.error = Some(reason.clone());
            tracing::warn!(%tenant, round = s.round, reason = %reason, "sync round failed; resumes from its checkpoint");
        }
        Outcome::Busy | Outcome::NotDue => {}
    }
    let report = RoundReport {
        outcome,
        round: lease.state.round,
        full: lease.state.full,
        pages,
        applied,
        elapsed: clock.elapsed(),
    };
    states.release(lease).await?;
    Ok(report)
}

/// A page of either collection.
enum Fetched {
    Users(crate::SourcePage<directory::UserChange>),
    Groups(crate::SourcePage<directory::GroupChange>),
}

impl Fetched {
    fn next(&self) -> &Next {
        match self {
            Fetched::Users(p) => &p.next,
            Fetched::Groups(p) => &p.next,
        }
    }
}

async fn fetch(
    source: &dyn DirectorySource,
    phase: Phase,
    link: Option<&str>,
    round: i64,
) -> Result<Fetched, SourceError> {
    match phase {
        Phase::Groups => source.groups(link, round).await.map(Fetched::Groups),
        _ => source.users(link, round).await.map(Fetched::Users),
    }
}

/// Records a completed round in the state its final checkpoint writes, so a stop right
/// after it never loses the new deltaLinks.
fn complete(s: &mut crate::state::SyncState, now: OffsetDateTime) {
    s.users_delta = s.users_delta_next.take();
    s.groups_delta = s.groups_delta_next.take();
    s.users_link = None;
    s.groups_link = None;
    s.phase = Phase::Idle;
    s.last_success_started = s.round_started;
    if s.full {
        s.last_full_started = s.round_started;
    }
    s.error = None;
    s.next_attempt_at = None;
    s.last = Some(LastRound {
        round: s.round,
        started: s.round_started.unwrap_or(now),
        finished: now,
        outcome: Outcome::Completed.name().to_string(),
        full: s.full,
        pages: s.pages,
        changes: s.changes,
    });
}

/// Takes the lease, waiting a while for one another instance holds: if that instance
/// died, its lease expires and this one resumes the round.
async fn acquire(
    tenant: Uuid,
    states: &dyn SyncStateStore,
    options: &RoundOptions,
) -> Result<Option<Lease>, SyncError> {
    let deadline = Instant::now() + options.lease_wait;
    loop {
        if let Some(lease) = states
            .acquire(tenant, &options.owner, options.lease_ttl)
            .await?
        {
            return Ok(Some(lease));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500).min(options.lease_ttl / 4)).await;
    }
}

/// What the records a round's page (`None`: its sweep) writes carry as the write's name
/// ([`directory::BeforeCommit::write_tag`]): the same for every instance that runs the page,
/// since a round is known by its number and start (both in the tenant's sync state; the
/// number alone starts again at 0 for a tenant registered again) and its pages are
/// numbered from its checkpoint.
pub fn write_tag(round: i64, started: OffsetDateTime, page: Option<i64>) -> String {
    let started = started.unix_timestamp_nanos() / 1000;
    match page {
        Some(page) => format!("round {round} of {started} page {page}"),
        None => format!("round {round} of {started} sweep"),
    }
}

/// Hands what a page is about to change to the round's observer, before it commits.
struct Changing<'a> {
    observer: &'a dyn RoundObserver,
    tenant: Uuid,
    round: i64,
    /// The page's number in the round; None in the sweep.
    page: Option<i64>,
    started: OffsetDateTime,
    /// The round's lease, confirmed before any correction.
    renewal: &'a Renewal,
    states: &'a dyn SyncStateStore,
}

#[async_trait::async_trait]
impl directory::BeforeCommit for Changing<'_> {
    async fn changing(&self, objects: &[directory::ObjectChange]) -> Result<(), String> {
        self.observer
            .page_changing(self.tenant, self.round, self.page, self.started, objects)
            .await
    }

    async fn not_made(&self, objects: &[directory::ObjectChange]) -> Result<(), String> {
        // an instance that lost the lease (it stalled past it) may run the same page as
        // the one that took it, announcing the same changes under the same event ids:
        // what it did not make, the other may have, so only the holder corrects them (a
        // stall of a whole lease between this renewal and the correction still could)
        self.renewal
            .confirm(self.states)
            .await
            .map_err(|e| format!("not correcting the page's audit events: {e}"))?;
        self.observer
            .page_not_made(self.tenant, self.round, self.page, self.started, objects)
            .await
    }

    fn write_tag(&self) -> Option<String> {
        Some(write_tag(self.round, self.started, self.page))
    }

    async fn committed(&self, applied: &Applied) -> Result<(), String> {
        if applied.inactive.is_empty() {
            return Ok(());
        }
        self.observer
            .users_inactive(self.tenant, &applied.inactive)
            .await
    }
}

/// Reads and applies pages until the round completes or Graph stops it.
async fn pages(
    tenant: Uuid,
    source: &dyn DirectorySource,
    directory: &dyn Directory,
    states: &dyn SyncStateStore,
    renewal: &Renewal,
    options: &RoundOptions,
    observer: &dyn RoundObserver,
) -> Result<(Outcome, i64, Applied), SyncError> {
    let mut applied = Applied::default();
    let mut pages = 0;
    let mut resyncs = 0;
    // the page after the last one applied, read while that one was written
    let mut ahead: Option<Result<Fetched, SourceError>> = None;
    loop {
        if renewal.lost.load(Ordering::SeqCst) {
            return Err(SyncError::LeaseLost);
        }
        // renewals failing (storage down): stop before the lease may be someone else's
        if !renewal.lease.lock().await.holds_for(options.lease_ttl / 3) {
            return Err(SyncError::LeaseLost);
        }
        let (phase, round, link, mode, started, page) = {
            let held = renewal.lease.lock().await;
            let s = &held.state;
            let mode = if s.optimistic {
                ApplyMode::Optimistic
            } else {
                ApplyMode::Read
            };
            let link = match s.phase {
                Phase::Users => s.users_link.clone(),
                Phase::Groups => s.groups_link.clone(),
                _ => None,
            };
            (
                s.phase,
                s.round,
                link,
                mode,
                s.round_started.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                // checkpointed with the page before it: a replay has the same number
                (s.phase != Phase::Sweep).then_some(s.pages),
            )
        };
        let changing = Changing {
            observer,
            tenant,
            round,
            page,
            started,
            renewal,
            states,
        };
        let step = match phase {
            Phase::Users | Phase::Groups => {
                let fetched = match ahead.take() {
                    Some(page) => page,
                    None => fetch(source, phase, link.as_deref(), round).await,
                };
                match fetched {
                    Ok(page) => {
                        let next = page.next().clone();
                        // the next page is read while this one is written
                        let read_ahead = async {
                            match &next {
                                Next::More(l) => Some(fetch(source, phase, Some(l), round).await),
                                Next::Done(_) => None,
                            }
                        };
                        let items = match &page {
                            Fetched::Users(p) => p.items.len(),
                            Fetched::Groups(p) => p.items.len(),
                        };
                        let started = Instant::now();
                        let write = async {
                            match page {
                                Fetched::Users(p) => {
                                    directory
                                        .apply_users_noting(
                                            tenant,
                                            Writer::Graph,
                                            p.items,
                                            mode,
                                            Some(&changing),
                                        )
                                        .await
                                }
                                Fetched::Groups(p) => {
                                    directory
                                        .apply_groups_noting(
                                            tenant,
                                            Writer::Graph,
                                            p.items,
                                            mode,
                                            Some(&changing),
                                        )
                                        .await
                                }
                            }
                        };
                        let (written, read) = tokio::join!(write, read_ahead);
                        tracing::debug!(
                            %tenant,
                            phase = phase.as_str(),
                            items,
                            ms = started.elapsed().as_millis() as u64,
                            "sync page written (the next one read meanwhile)"
                        );
                        ahead = read;
                        match written {
                            Ok(n) => Ok((n, next)),
                            Err(DirectoryError::Unrecorded(reason)) => {
                                return Ok((Outcome::Failed { reason }, pages, applied));
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Phase::Sweep => {
                let mut n = match directory.sweep(tenant, round, Some(&changing)).await {
                    Ok(n) => n,
                    Err(DirectoryError::Unrecorded(reason)) => {
                        return Ok((Outcome::Failed { reason }, pages, applied));
                    }
                    Err(e) => return Err(e.into()),
                };
                // the round's report keeps counts, not every object
                n.objects.clear();
                applied.add(&n);
                let mut held = renewal.lease.lock().await;
                held.state.changes += n.changes() as i64;
                complete(&mut held.state, OffsetDateTime::now_utc());
                states.save(&mut held).await?;
                return Ok((Outcome::Completed, pages, applied));
            }
            Phase::Idle => return Ok((Outcome::Completed, pages, applied)),
        };
        let now = OffsetDateTime::now_utc();
        match step {
            Ok((mut n, next)) => {
                n.objects.clear();
                applied.add(&n);
                pages += 1;
                let mut held = renewal.lease.lock().await;
                let s = &mut held.state;
                s.pages += 1;
                s.changes += n.changes() as i64;
                match (phase, next) {
                    (Phase::Users, Next::More(l)) => s.users_link = Some(l),
                    (Phase::Users, Next::Done(d)) => {
                        s.users_delta_next = Some(d);
                        s.phase = Phase::Groups;
                    }
                    (Phase::Groups, Next::More(l)) => s.groups_link = Some(l),
                    (Phase::Groups, Next::Done(d)) => {
                        s.groups_delta_next = Some(d);
                        s.phase = if s.full { Phase::Sweep } else { Phase::Idle };
                    }
                    _ => {}
                }
                let done = s.phase == Phase::Idle;
                if done {
                    complete(s, now);
                }
                // the checkpoint: this page is committed, the next starts here
                states.save(&mut held).await?;
                if done {
                    return Ok((Outcome::Completed, pages, applied));
                }
            }
            Err(SourceError::ResyncRequired(why)) => {
                resyncs += 1;
                if resyncs > 2 {
                    return Ok((
                        Outcome::Failed {
                            reason: format!("Graph kept asking for a resync: {why}"),
                        },
                        pages,
                        applied,
                    ));
                }
                tracing::warn!(%tenant, reason = %why, "delta state gone; running a full round");
                let mut held = renewal.lease.lock().await;
                let s = &mut held.state;
                // a new round number: what the abandoned part touched is swept if unseen
                s.round += 1;
                s.full = true;
                s.optimistic = false;
                s.users_link = None;
                s.groups_link = None;
                s.users_delta_next = None;
                s.groups_delta_next = None;
                s.phase = Phase::Users;
                states.save(&mut held).await?;
            }
            Err(SourceError::Throttled(retry_after)) => {
                let wait = retry_after.unwrap_or(options.throttled_backoff);
                return Ok((
                    Outcome::Throttled {
                        retry_at: after(now, wait),
                    },
                    pages,
                    applied,
                ));
            }
            Err(SourceError::AccessRevoked(reason)) => {
                return Ok((Outcome::AccessRevoked { reason }, pages, applied));
            }
            Err(SourceError::Transient(reason)) => {
                return Ok((Outcome::Failed { reason }, pages, applied));
            }
        }
    }
}
